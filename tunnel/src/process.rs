//! Process plumbing both binaries share: logging set-up, the shutdown signal, draining, flag
//! parsing, rate-limited warnings, and the open-files limit (RLIMIT_NOFILE).

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter of the global logger, replaceable while the process runs (a reload), and the
/// text it was made from.
struct LogFilter {
    handle: tracing_subscriber::reload::Handle<
        tracing_subscriber::EnvFilter,
        tracing_subscriber::Registry,
    >,
    text: std::sync::Mutex<String>,
    /// The output format, which cannot change while the process runs.
    format: LogFormat,
}

static LOG_FILTER: std::sync::OnceLock<LogFilter> = std::sync::OnceLock::new();

/// The filter a `--log-filter` value (or, without one, `RUST_LOG`, else `info`) stands for.
fn log_filter_text(flag: Option<&str>) -> String {
    flag.map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "info".to_owned())
}

/// Parses a `--log-filter` value (`info`, `warn,ferry_tunnel=debug`: tracing's `EnvFilter`
/// syntax), so that a bad one is a flag error, at start-up and on a reload alike.
pub fn parse_log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a log filter: {e}"))
}

/// Installs the global logger: `filter` (the `--log-filter` flag) or else `RUST_LOG` says
/// what is logged (default `info`), output to stderr. The filter can be replaced later
/// ([`set_log_filter`]).
pub fn init_logging(format: LogFormat, filter: Option<&str>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let text = log_filter_text(filter);
    let env_filter = tracing_subscriber::EnvFilter::try_new(&text)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter_layer, handle) = tracing_subscriber::reload::Layer::new(env_filter);
    // Colour only for a terminal: logs piped to files or journald stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter_layer);
    let installed = match format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    };
    if installed.is_ok() {
        let _ = LOG_FILTER.set(LogFilter {
            handle,
            text: std::sync::Mutex::new(text),
            format,
        });
    }
}

/// The format of the logger [`init_logging`] installed, if it did.
pub fn log_format() -> Option<LogFormat> {
    LOG_FILTER.get().map(|l| l.format)
}

/// Replaces the global logger's filter with what `flag` (or else `RUST_LOG`, else `info`)
/// says. `Ok(Some(text))` if it changed to `text`, `Ok(None)` if it was the same already or
/// no logger was installed by [`init_logging`].
pub fn set_log_filter(flag: Option<&str>) -> Result<Option<String>, String> {
    let Some(current) = LOG_FILTER.get() else {
        return Ok(None);
    };
    let text = log_filter_text(flag);
    let mut shown = current.text.lock().unwrap_or_else(|e| e.into_inner());
    if *shown == text {
        return Ok(None);
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&text)
        .map_err(|e| format!("{text:?} is not a log filter: {e}"))?;
    current
        .handle
        .reload(filter)
        .map_err(|e| format!("the log filter cannot be replaced: {e}"))?;
    *shown = text.clone();
    Ok(Some(text))
}

/// Completes on SIGINT or SIGTERM (the first one received). SIGHUP is a reload
/// ([`crate::reload`]), not a stop.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Counts work in progress (open streams) so a shutdown can wait for it to drain.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    inner: std::sync::Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>,
}

/// Held while one unit of work runs.
#[derive(Debug)]
pub struct DrainGuard {
    drain: Drain,
}

impl Drain {
    /// Registers one unit of work until the guard is dropped.
    pub fn enter(&self) -> DrainGuard {
        self.inner
            .0
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        DrainGuard {
            drain: self.clone(),
        }
    }

    /// Work in progress.
    pub fn active(&self) -> usize {
        self.inner.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no work is in progress, or `timeout`; returns what is left.
    pub async fn wait(&self, timeout: std::time::Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.1.notified();
            if self.active() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.active();
            }
        }
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self
            .drain
            .inner
            .0
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.drain.inner.1.notify_waiters();
        }
    }
}

/// Parses a binary's flags, with `--config FILE` expanded first; prints a one-line error (named
/// after `program`) and returns `None` when the configuration file cannot be used. Flag errors
/// are reported by clap itself, which exits.
pub fn parse_args<A: clap::Parser>(program: &str) -> Option<A> {
    match crate::config::expand(std::env::args_os().collect()) {
        Ok(argv) => Some(A::parse_from(argv)),
        Err(e) => {
            eprintln!("{program}: {e}");
            None
        }
    }
}

/// Parses the process's command line again, with the `--config FILE` it names read again: what
/// a reload starts from. Every error, the file's or a flag's, is one line; nothing exits.
pub fn reparse_args<A: clap::Parser>() -> Result<A, String> {
    let argv = crate::config::expand(std::env::args_os().collect()).map_err(|e| e.to_string())?;
    A::try_parse_from(argv).map_err(|e| {
        let text = e.to_string();
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        line.trim_start_matches("error: ").to_owned()
    })
}

/// The process exit code for `result`, printing a failure as one line named after `program`.
pub fn exit_code<E: std::fmt::Display>(
    program: &str,
    result: Result<(), E>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A `--monitor` flag that names no address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MonitorFlagError {
    /// Neither `IP:PORT` nor `off`.
    #[error("invalid --monitor {0:?}: expected IP:PORT (e.g. 127.0.0.1:10000) or off")]
    Invalid(String),
    /// No `--monitor`, and the default (the listener's port + 1000) is not a port.
    #[error("port {0} + 1000 is not a port: give --monitor ADDR or --monitor off")]
    NoDefaultPort(u16),
}

/// How far above its listener's port a binary's monitor listens unless `--monitor` says
/// otherwise (RTT Proxy's convention).
pub const MONITOR_PORT_OFFSET: u16 = 1000;

/// Where the monitor listens: `--monitor` if given (`off` disables it), else 127.0.0.1 on
/// `port` + [`MONITOR_PORT_OFFSET`], or an ephemeral port when `port` is 0.
pub fn monitor_address(
    flag: Option<&str>,
    port: u16,
) -> Result<Option<std::net::SocketAddr>, MonitorFlagError> {
    match flag {
        Some("off") => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| MonitorFlagError::Invalid(v.to_owned())),
        None => {
            let monitor_port = match port {
                0 => 0,
                p => p
                    .checked_add(MONITOR_PORT_OFFSET)
                    .ok_or(MonitorFlagError::NoDefaultPort(p))?,
            };
            Ok(Some((std::net::Ipv4Addr::LOCALHOST, monitor_port).into()))
        }
    }
}

/// `--max-packet-size BYTES`: the largest UDP payload a session's packets may grow to by path
/// MTU discovery, and the largest this end accepts. Below the 1,350-byte start, packets start
/// there and never grow; at it, discovery is off.
pub fn apply_max_packet_size(transport: &mut ferry_transport::TransportConfig, bytes: u16) {
    transport.max_probed_datagram_size = bytes;
    transport.max_datagram_size = transport.max_datagram_size.min(bytes);
    transport.path_mtu_discovery = bytes > transport.max_datagram_size;
}

/// Parses a `--max-packet-size` value: 1200 to 65527.
pub fn parse_packet_size(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if (1200..=65527).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a packet size: give bytes of UDP payload from 1200 (every IPv6 path) to 65527"
        )),
    }
}

#[cfg(test)]
mod packet_size_tests {
    use super::*;

    #[test]
    fn the_ceiling_moves_the_start_down_and_turns_discovery_off_at_or_below_it() {
        let mut t = ferry_transport::TransportConfig::default();
        apply_max_packet_size(&mut t, 9000);
        assert!(t.path_mtu_discovery && t.max_datagram_size == 1350);
        assert_eq!(t.largest_datagram(), 9000);
        apply_max_packet_size(&mut t, 1280);
        assert!(!t.path_mtu_discovery && t.max_datagram_size == 1280);
        assert!(t.validate().is_ok());
        assert!(parse_packet_size("1199").is_err() && parse_packet_size("65528").is_err());
        assert_eq!(parse_packet_size("1452"), Ok(1452));
    }
}

#[cfg(test)]
mod monitor_address_tests {
    use super::monitor_address;

    #[test]
    fn the_monitor_defaults_to_loopback_on_the_port_plus_1000() {
        assert_eq!(
            monitor_address(None, 9000),
            Ok(Some("127.0.0.1:10000".parse().unwrap()))
        );
        assert_eq!(monitor_address(Some("off"), 9000), Ok(None));
        assert_eq!(
            monitor_address(Some("[::1]:8000"), 9000),
            Ok(Some("[::1]:8000".parse().unwrap()))
        );
        assert!(monitor_address(Some("nonsense"), 9000)
            .unwrap_err()
            .to_string()
            .contains("--monitor"));
        assert!(monitor_address(None, 65000)
            .unwrap_err()
            .to_string()
            .contains("--monitor"));
    }
}

/// Rate limit for a warning that a flood could repeat (a refused client, a bad stream): at
/// most [`WarnLimiter::PER_SECOND`] a second; the next one let through says how many were
/// suppressed in between. One per kind of warning, usually a `static`.
#[derive(Debug)]
pub struct WarnLimiter {
    /// Start of the current one-second window, warnings in it, and suppressed since the last.
    state: std::sync::Mutex<Option<(std::time::Instant, u32, u64)>>,
}

impl Default for WarnLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl WarnLimiter {
    /// Warnings allowed per second.
    pub const PER_SECOND: u32 = 10;

    /// A limiter that has let nothing through yet.
    pub const fn new() -> Self {
        Self {
            state: std::sync::Mutex::new(None),
        }
    }

    /// `Some(suppressed)` if this warning may be logged (with the count of those that were
    /// not since the last one logged), `None` if it must be dropped.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(std::time::Instant::now())
    }

    fn allow_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, count, suppressed) = state.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= std::time::Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        if *count < Self::PER_SECOND {
            *count += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod warn_limiter_tests {
    use super::WarnLimiter;
    use std::time::{Duration, Instant};

    #[test]
    fn a_flood_is_cut_to_the_limit_and_the_next_warning_counts_what_was_dropped() {
        let limiter = WarnLimiter::new();
        let t0 = Instant::now();
        let passed = (0..100).filter(|_| limiter.allow_at(t0).is_some()).count();
        assert_eq!(passed, WarnLimiter::PER_SECOND as usize);
        assert_eq!(limiter.allow_at(t0 + Duration::from_millis(1001)), Some(90));
        assert_eq!(limiter.allow_at(t0 + Duration::from_millis(1002)), Some(0));
    }
}

/// `warn!` through a [`WarnLimiter`] of its own: at most [`WarnLimiter::PER_SECOND`] of this
/// warning a second, each carrying a `suppressed` count of those dropped since the last.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::process::WarnLimiter = $crate::process::WarnLimiter::new();
        if let Some(suppressed) = LIMIT.allow() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

/// File descriptors a binary needs besides its sockets to clients (agent) or backends (gateway):
/// standard streams, the runtime's epoll and wake-up descriptors, the UDP sockets (one per
/// link), the listeners, the monitor (a listener and up to 64 connections at once), the files
/// read at start-up (certificates, configuration) and the agent's spare descriptor. 128 covers
/// them with room to spare; see [`OpenFilesLimit::room`].
pub const RESERVED_FILES: u64 = 128;

/// The process's open-files limit (RLIMIT_NOFILE), as [`raise_open_files_limit`] left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit found at start-up (`None`: unlimited, or unknown on this platform).
    pub was: Option<u64>,
    /// The soft limit now, which the kernel enforces: the hard limit unless raising failed.
    pub soft: Option<u64>,
    /// The hard limit, the most an unprivileged process may raise its soft limit to.
    pub hard: Option<u64>,
    /// Why the soft limit could not be raised, if it could not.
    pub error: Option<String>,
}

impl OpenFilesLimit {
    /// Sockets to clients or backends that fit under the soft limit beside
    /// [`RESERVED_FILES`]; `None` when there is no limit.
    pub fn room(&self) -> Option<u64> {
        self.soft.map(|s| s.saturating_sub(RESERVED_FILES))
    }
}

/// Raises the soft open-files limit to the hard limit, and says what it is now.
///
/// Each client connection costs the agent a descriptor and each stream costs the gateway one
/// (its backend connection), while distributions start processes with a soft limit of 1,024
/// (kept low for programs that still use `select`, which tokio does not) under a hard limit
/// of 4,096 to over 500,000 (systemd: 524,288). Raising the soft limit to the hard one is
/// what an unprivileged process may do by itself; beyond that the operator raises the hard
/// limit (`ulimit -Hn`, systemd's `LimitNOFILE=`).
pub fn raise_open_files_limit() -> OpenFilesLimit {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let found = getrlimit(Resource::Nofile);
        let mut limit = OpenFilesLimit {
            was: found.current,
            soft: found.current,
            hard: found.maximum,
            error: None,
        };
        if found.current != found.maximum {
            let raised = Rlimit {
                current: found.maximum,
                maximum: found.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => limit.soft = found.maximum,
                Err(e) => limit.error = Some(std::io::Error::from(e).to_string()),
            }
        }
        limit
    }
    #[cfg(not(unix))]
    {
        OpenFilesLimit {
            was: None,
            soft: None,
            hard: None,
            error: None,
        }
    }
}

/// Raises the open-files limit ([`raise_open_files_limit`]), logs it at info level, and warns
/// when `wanted` descriptors for clients or backends, what the flag `flag` allows, do not fit
/// beside [`RESERVED_FILES`]: past the limit, new clients or streams are reset and counted as
/// `open-files` refusals. `each` says what one descriptor is for, e.g. "client connection".
pub fn raise_and_check_open_files(wanted: u64, flag: &str, each: &str) -> OpenFilesLimit {
    let limit = raise_open_files_limit();
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
    if let Some(error) = &limit.error {
        tracing::warn!(soft = %show(limit.soft), hard = %show(limit.hard), %error, "cannot raise the open-files soft limit (RLIMIT_NOFILE) to the hard limit");
    }
    tracing::info!(
        soft = %show(limit.soft),
        was = %show(limit.was),
        hard = %show(limit.hard),
        "open-files limit (RLIMIT_NOFILE)"
    );
    if let Some(room) = limit.room().filter(|room| wanted > *room) {
        tracing::warn!(
            flag,
            value = wanted,
            open_files = %show(limit.soft),
            room,
            each,
            "{flag} {wanted} is more than the open-files limit allows: about {room} at once (one descriptor each, {} kept for the process); beyond that new ones are reset and counted as open-files refusals. Raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower {flag}",
            RESERVED_FILES
        );
    }
    limit
}

/// True if `error` says the process (EMFILE) or the system (ENFILE) is out of file
/// descriptors: a limit reached, not a fault of the peer or the backend.
pub fn is_out_of_files(error: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        matches!(
            Errno::from_io_error(error),
            Some(Errno::MFILE) | Some(Errno::NFILE)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = error;
        false
    }
}

#[cfg(all(test, unix))]
mod open_files_tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        // Start below the hard limit (as a distribution's 1,024 would), when there is one.
        let found = getrlimit(Resource::Nofile);
        let lowered = found.maximum.map(|hard| hard.min(1024) / 2);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lowered,
                maximum: found.maximum,
            },
        )
        .unwrap();
        let limit = raise_open_files_limit();
        assert_eq!(limit.error, None);
        assert_eq!(limit.was, lowered);
        assert_eq!(limit.soft, limit.hard);
        assert_eq!(getrlimit(Resource::Nofile).current, limit.hard);
        assert_eq!(
            limit.room(),
            limit.soft.map(|s| s.saturating_sub(RESERVED_FILES))
        );
    }

    #[test]
    fn running_out_of_descriptors_is_told_apart_from_other_errors() {
        let emfile = std::io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        let enfile = std::io::Error::from_raw_os_error(rustix::io::Errno::NFILE.raw_os_error());
        let refused =
            std::io::Error::from_raw_os_error(rustix::io::Errno::CONNREFUSED.raw_os_error());
        assert!(is_out_of_files(&emfile));
        assert!(is_out_of_files(&enfile));
        assert!(!is_out_of_files(&refused));
        assert!(!is_out_of_files(&std::io::Error::other("x")));
    }
}
