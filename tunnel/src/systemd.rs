//! Telling systemd how the daemon is doing, by its notification protocol (sd_notify(3)): with
//! `Type=notify`, the unit counts as started only once the binary says `READY=1` (the gateway:
//! listening; the agent: a gateway session up, or `--session-wait` passed), it shows
//! `RELOADING=1` then `READY=1` around a reload on SIGHUP (`Type=notify-reload` waits for that
//! pair, and `ExecReload=` with `Type=notify` reads it too), `STOPPING=1` while the binary drains, and with `WatchdogSec=` it restarts a binary that
//! stops saying `WATCHDOG=1`, every half of `WATCHDOG_USEC`, from its event loop (a wedged
//! runtime stops saying it).
//!
//! The protocol is one datagram per message on the Unix socket named by `NOTIFY_SOCKET` (a
//! path, or `@name` in the abstract namespace). Without that variable (not under systemd, or
//! not `Type=notify`) every call does nothing, so tests and other embedders are unaffected. A
//! message that cannot be sent is logged at debug level: systemd's own timeout tells the
//! operator, and a daemon must not stop serving because its manager went away.

use std::time::Duration;

use tracing::debug;

/// Where notifications go, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names (none when it is unset or empty).
    pub fn from_env() -> Self {
        Self {
            socket: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|s| !s.is_empty()),
        }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` pairs).
    pub fn notify(&self, state: &str) {
        let Some(path) = &self.socket else {
            return;
        };
        if let Err(e) = send(path, state.as_bytes()) {
            debug!(socket = %path, error = %e, "systemd notification not sent");
        }
    }

    /// Serving: the unit is started.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// Reloading the configuration: `READY=1` follows once it is done (applied or refused).
    /// `MONOTONIC_USEC` is when the reload started on `CLOCK_MONOTONIC`, which systemd's
    /// `Type=notify-reload` requires to tell this reload from an earlier one.
    pub fn reloading(&self, status: &str) {
        let usec = monotonic_usec();
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={status}"
        ));
    }

    /// Draining: the unit is stopping.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={status}"));
    }

    /// Starts the watchdog keep-alive if systemd asked for one (`WATCHDOG_USEC`, for this
    /// process if `WATCHDOG_PID` says so): `WATCHDOG=1` every half of the interval.
    pub fn start_watchdog(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.socket.as_ref()?;
        let interval = watchdog_interval()?;
        let notifier = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                notifier.notify("WATCHDOG=1");
            }
        }))
    }
}

/// Now on `CLOCK_MONOTONIC` (the clock systemd compares `MONOTONIC_USEC` with), microseconds.
fn monotonic_usec() -> u64 {
    #[cfg(unix)]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        (t.tv_sec as u64)
            .saturating_mul(1_000_000)
            .saturating_add(t.tv_nsec as u64 / 1_000)
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// The watchdog interval systemd set for this process, if any.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(target_os = "linux")]
fn send(path: &str, message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let socket = UnixDatagram::unbound()?;
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    socket.send_to_addr(message, &addr)?;
    Ok(())
}

#[cfg(all(unix, not(target_os = "linux")))]
fn send(path: &str, message: &[u8]) -> std::io::Result<()> {
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    socket.send_to(message, path)?;
    Ok(())
}

#[cfg(not(unix))]
fn send(_path: &str, _message: &[u8]) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("ferry-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = std::os::unix::net::UnixDatagram::bind(&dir).unwrap();
        let notifier = Notifier {
            socket: Some(dir.display().to_string()),
        };
        notifier.ready("serving");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        let _ = std::fs::remove_file(&dir);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("ferry-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier {
            socket: Some(format!("@{name}")),
        };
        notifier.stopping("draining");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining");
    }

    #[test]
    fn a_reload_says_when_it_started_on_the_monotonic_clock() {
        let name = format!("ferry-notify-reload-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier {
            socket: Some(format!("@{name}")),
        };
        let before = monotonic_usec();
        notifier.reloading("reloading");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {text:?}"));
        assert!(usec >= before && usec <= monotonic_usec(), "{usec}");
        assert_eq!(lines.next(), Some("STATUS=reloading"));
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier::default();
        notifier.ready("x");
        assert!(notifier.start_watchdog().is_none());
    }
}
