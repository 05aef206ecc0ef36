//! Live reload on SIGHUP, shared by the agent and the gateway.
//!
//! Operators run Ferry for months, and a restart resets every open stream. So SIGHUP re-reads
//! the configuration (the command line again, with the `--config` file and the certificates
//! and keys it names read anew; the binary's `load` does that) and applies what changed to the
//! running process, without touching what is established:
//!
//! - A configuration that does not parse or validate is refused whole: one error line says
//!   why, and everything keeps running as it was.
//! - What can change live changes for what starts from then on (new sessions, new streams,
//!   new handshakes); sessions and streams already open keep what they were made with. The
//!   binary's [`Reload::apply`] (the gateway's and the agent's `reload` modules) decides
//!   which settings those are; its [`Changes`] lists them.
//! - What cannot change live (listen addresses, sockets, the monitor) stays as it is and is
//!   named in one warning line, "needs a restart": never silently ignored.
//!
//! Around each reload, systemd is told `RELOADING=1` then `READY=1` (sd_notify), and the
//! monitor counts it ([`ReloadStatus`]: `ferry_config_reloads_total{result}`,
//! `ferry_config_last_reload_timestamp_seconds`). The log filter (`--log-filter`) is the
//! process's, not the agent's or the gateway's, so it is applied here.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tracing::{info, warn};

/// A value replaced as a whole by a reload and read as a whole by each new session or stream:
/// a reader takes an `Arc` of the current value and keeps it for as long as it needs, so a
/// stream never sees half of an old configuration and half of a new one.
#[derive(Debug)]
pub struct Live<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Live<T> {
    /// A live value, starting as `value`.
    pub fn new(value: T) -> Self {
        Self {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The value now.
    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the value for every later [`Live::get`].
    pub fn set(&self, value: T) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

/// What a reload changed: the settings applied, and those that differ but need a restart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Settings (flag names, or a description) applied to the running process.
    pub applied: Vec<String>,
    /// Settings that differ from the running ones but cannot change live; left as they are.
    pub needs_restart: Vec<String>,
}

impl Changes {
    /// Notes `flag` as applied if `old` and `new` differ; says whether they do.
    pub fn live<T: PartialEq + ?Sized>(&mut self, flag: &str, old: &T, new: &T) -> bool {
        let differs = old != new;
        if differs {
            self.applied.push(flag.to_owned());
        }
        differs
    }

    /// Notes `flag` as needing a restart if `old` and `new` differ.
    pub fn restart<T: PartialEq + ?Sized>(&mut self, flag: &str, old: &T, new: &T) {
        if old != new {
            self.needs_restart.push(flag.to_owned());
        }
    }

    /// Logs what was applied (info) and, in one warning line, what needs a restart.
    fn log(&self) {
        let applied = match self.applied.is_empty() {
            true => "nothing changed".to_owned(),
            false => self.applied.join(", "),
        };
        info!(applied = %applied, "configuration reloaded");
        if !self.needs_restart.is_empty() {
            warn!(
                settings = %self.needs_restart.join(", "),
                "configuration reloaded, but changed settings that need a restart keep their running values"
            );
        }
    }
}

/// How a binary takes a new configuration: the agent's or the gateway's reload handle.
pub trait Reload: Send + Sync + 'static {
    /// The binary's configuration (`AgentConfig`, `GatewayConfig`).
    type Config;

    /// Checks `config` and, if it can be used, applies what changed. An `Err` (one line)
    /// means nothing was applied: the check comes before any change.
    fn apply(&self, config: Self::Config) -> Result<Changes, String>;

    /// The reloads' counts and times the monitor shows.
    fn status(&self) -> &ReloadStatus;
}

/// What a reload reads: the binary's configuration, and the process's logging settings.
#[derive(Debug)]
pub struct Loaded<C> {
    /// The agent's or the gateway's configuration.
    pub config: C,
    /// The `--log-filter` flag (`None`: `RUST_LOG`, else `info`); applied live.
    pub log_filter: Option<String>,
    /// The `--log-format` flag; changing it needs a restart.
    pub log_format: crate::process::LogFormat,
}

/// The configuration's loads as the monitor shows them.
#[derive(Debug)]
pub struct ReloadStatus {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The last successful load, and the last reload's result (`ok` or why it was refused).
    last: Mutex<(SystemTime, Option<String>)>,
}

impl Default for ReloadStatus {
    fn default() -> Self {
        Self::new()
    }
}

impl ReloadStatus {
    /// The status of a configuration loaded now, at start-up.
    pub fn new() -> Self {
        Self {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last: Mutex::new((SystemTime::now(), None)),
        }
    }

    fn succeeded(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) =
            (SystemTime::now(), Some("ok".into()));
    }

    fn failed(&self, reason: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.last.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(reason.to_owned());
    }

    /// The figures the monitor serves.
    pub fn snapshot(&self) -> ferry_monitor::ConfigLoads {
        let (loaded, last_reload) = self.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ferry_monitor::ConfigLoads {
            last_load_unix_seconds: loaded
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            reloads_ok: self.ok.load(Ordering::Relaxed),
            reloads_failed: self.failed.load(Ordering::Relaxed),
            last_reload,
        }
    }
}

/// SIGHUP, caught. Install it first thing in `main`: until a handler is installed, SIGHUP's
/// default action ends the process.
#[derive(Debug)]
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Catches SIGHUP from now on (within a tokio runtime). If the handler cannot be
    /// installed, says so once and never reports a hangup.
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|e| warn!(error = %e, "SIGHUP cannot be caught: no live reload"))
                .ok();
            Self { signal }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// The next SIGHUP (pending for ever without a handler).
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.signal {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// Runs `serving` (the agent's or the gateway's `run`) to its end and returns what it
/// returns; meanwhile, at each SIGHUP, calls `load` for the configuration and hands it to
/// `target` (see the module's documentation). One reload at a time, on this task.
pub async fn serve<F: Future, C>(
    serving: F,
    mut hangups: Hangups,
    mut load: impl FnMut() -> Result<Loaded<C>, String>,
    target: impl Reload<Config = C>,
) -> F::Output {
    tokio::pin!(serving);
    let notifier = crate::systemd::Notifier::from_env();
    loop {
        tokio::select! {
            out = &mut serving => return out,
            () = hangups.recv() => {
                notifier.reloading("reloading the configuration");
                info!("SIGHUP: reloading the configuration");
                let status = match reload(&mut load, &target) {
                    Ok(()) => "configuration reloaded".to_owned(),
                    Err(e) => format!("configuration reload refused: {e}"),
                };
                notifier.ready(&status);
            }
        }
    }
}

/// One reload: load, check (the log filter with the rest), apply, count, log.
fn reload<C>(
    load: &mut impl FnMut() -> Result<Loaded<C>, String>,
    target: &impl Reload<Config = C>,
) -> Result<(), String> {
    let result = load_and_apply(load, target);
    match &result {
        Ok(changes) => {
            target.status().succeeded();
            changes.log();
        }
        Err(e) => {
            target.status().failed(e);
            warn!(error = %e, "configuration reload refused; the running configuration stays");
        }
    }
    result.map(|_| ())
}

fn load_and_apply<C>(
    load: &mut impl FnMut() -> Result<Loaded<C>, String>,
    target: &impl Reload<Config = C>,
) -> Result<Changes, String> {
    let loaded = load()?;
    if let Some(filter) = &loaded.log_filter {
        crate::process::parse_log_filter(filter).map_err(|e| format!("--log-filter {e}"))?;
    }
    let mut changes = target.apply(loaded.config)?;
    let running = crate::process::log_format();
    if running.is_some_and(|f| f != loaded.log_format) {
        changes.needs_restart.push("log-format".into());
    }
    // Checked above: replacing it fails only without a logger of ours, which is no change.
    if let Ok(Some(filter)) = crate::process::set_log_filter(loaded.log_filter.as_deref()) {
        changes.applied.push(format!("log-filter ({filter})"));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Target {
        status: ReloadStatus,
        applied: Mutex<Vec<u32>>,
    }

    impl Reload for &'static Target {
        type Config = u32;
        fn apply(&self, config: u32) -> Result<Changes, String> {
            if config == 0 {
                return Err("zero is not a configuration".into());
            }
            self.applied.lock().unwrap().push(config);
            Ok(Changes {
                applied: vec!["n".into()],
                needs_restart: Vec::new(),
            })
        }
        fn status(&self) -> &ReloadStatus {
            &self.status
        }
    }

    #[test]
    fn a_refused_configuration_is_counted_and_applies_nothing() {
        let target: &'static Target = Box::leak(Box::new(Target {
            status: ReloadStatus::new(),
            applied: Mutex::default(),
        }));
        let started = target.status.snapshot().last_load_unix_seconds;
        assert!(started > 0.0, "the start-up load has a time");
        let mut next = [
            Ok(3),
            Err("cannot read config x.toml".to_owned()),
            Ok(0),
            Ok(4),
        ]
        .into_iter();
        let mut load = || {
            next.next().unwrap().map(|config| Loaded {
                config,
                log_filter: None,
                log_format: crate::process::LogFormat::Text,
            })
        };
        assert!(reload(&mut load, &target).is_ok());
        let e = reload(&mut load, &target).unwrap_err();
        assert!(e.contains("x.toml"), "{e}");
        assert!(reload(&mut load, &target).is_err());
        let s = target.status.snapshot();
        assert_eq!((s.reloads_ok, s.reloads_failed), (1, 2));
        assert_eq!(
            s.last_reload.as_deref(),
            Some("zero is not a configuration")
        );
        assert!(reload(&mut load, &target).is_ok());
        assert_eq!(*target.applied.lock().unwrap(), vec![3, 4]);
        assert_eq!(target.status.snapshot().last_reload.as_deref(), Some("ok"));
    }

    #[test]
    fn a_bad_log_filter_refuses_the_whole_reload() {
        let target: &'static Target = Box::leak(Box::new(Target {
            status: ReloadStatus::new(),
            applied: Mutex::default(),
        }));
        let mut load = || {
            Ok(Loaded {
                config: 5,
                log_filter: Some("ferry=notalevel[".to_owned()),
                log_format: crate::process::LogFormat::Text,
            })
        };
        let e = reload(&mut load, &target).unwrap_err();
        assert!(e.starts_with("--log-filter"), "{e}");
        assert!(target.applied.lock().unwrap().is_empty());
    }

    #[test]
    fn changes_name_only_what_differs() {
        let mut c = Changes::default();
        assert!(c.live("allow-ip", "10.0.0.0/8", "10.0.0.0/16"));
        assert!(!c.live("max-connections", &5, &5));
        c.restart("listen", &1, &2);
        c.restart("monitor", &1, &1);
        assert_eq!(c.applied, vec!["allow-ip"]);
        assert_eq!(c.needs_restart, vec!["listen"]);
    }
}
