//! The binaries as systemd services: the notifications they send (a datagram socket stands in
//! for systemd's `NOTIFY_SOCKET`), and the unit files in `contrib/systemd/`, checked by
//! `systemd-analyze verify`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A socket standing in for systemd's notification socket.
struct FakeSystemd {
    socket: UnixDatagram,
    path: PathBuf,
}

impl FakeSystemd {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("ferry-notify-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self { socket, path }
    }

    /// Waits up to `timeout` for a message containing `what`; returns it.
    fn expect(&self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 1024];
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.contains(what) {
                    return message;
                }
                seen.push(message);
            }
        }
        panic!("no {what:?} within {timeout:?}; got {seen:?}");
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn spawn_notifying(bin: &str, args: &[String], systemd: &FakeSystemd, watchdog_usec: u64) -> Proc {
    let child = Command::new(bin)
        .args(args)
        .args(default_args(bin, args))
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("WATCHDOG_USEC", watchdog_usec.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    Proc(child)
}

fn terminate(proc: &mut Proc) {
    let pid = proc.0.id() as i32;
    // SAFETY: a plain kill(2) of our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

#[test]
fn the_gateway_says_ready_keeps_the_watchdog_fed_and_says_when_it_stops() {
    let systemd = FakeSystemd::new("gateway");
    let addr = format!("127.0.0.1:{}", free_udp_port());
    let args = vec![
        "--listen".to_owned(),
        addr.clone(),
        "--backend".to_owned(),
        "tcp://127.0.0.1:9".to_owned(),
    ];
    let mut gateway = spawn_notifying(
        env!("CARGO_BIN_EXE_ferry-gateway"),
        &args,
        &systemd,
        200_000,
    );
    let ready = systemd.expect("READY=1", Duration::from_secs(20));
    assert!(ready.contains(&addr), "{ready}");
    // Every half of the 200 ms watchdog interval.
    systemd.expect("WATCHDOG=1", Duration::from_secs(5));
    systemd.expect("WATCHDOG=1", Duration::from_secs(5));
    terminate(&mut gateway);
    systemd.expect("STOPPING=1", Duration::from_secs(10));
    let status = gateway.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

fn hang_up(proc: &mut Proc) {
    let pid = proc.0.id() as i32;
    // SAFETY: a plain kill(2) of our own child.
    unsafe {
        libc::kill(pid, libc::SIGHUP);
    }
}

/// The `MONOTONIC_USEC` of a `RELOADING=1` message.
fn monotonic_usec(message: &str) -> u64 {
    message
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {message:?}"))
}

#[test]
fn a_reload_is_told_to_systemd_as_reloading_then_ready_even_when_refused() {
    let systemd = FakeSystemd::new("reload");
    let config =
        std::env::temp_dir().join(format!("ferry-reload-notify-{}.toml", std::process::id()));
    std::fs::write(&config, "backend = \"tcp://127.0.0.1:9\"\n").unwrap();
    let args = vec![
        "--listen".to_owned(),
        format!("127.0.0.1:{}", free_udp_port()),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    let mut gateway = spawn_notifying(env!("CARGO_BIN_EXE_ferry-gateway"), &args, &systemd, 0);
    systemd.expect("READY=1", Duration::from_secs(20));
    std::fs::write(
        &config,
        "backend = [\"tcp://127.0.0.1:9\", \"tcp://127.0.0.1:10\"]\n",
    )
    .unwrap();
    hang_up(&mut gateway);
    let first = monotonic_usec(&systemd.expect("RELOADING=1", Duration::from_secs(10)));
    let ready = systemd.expect("READY=1", Duration::from_secs(10));
    assert!(ready.contains("STATUS=configuration reloaded"), "{ready}");
    // Refused (a flag's value that is no number): systemd hears READY=1 all the same, with why.
    std::fs::write(&config, "max-connections = \"lots\"\n").unwrap();
    hang_up(&mut gateway);
    let second = monotonic_usec(&systemd.expect("RELOADING=1", Duration::from_secs(10)));
    assert!(second > first, "{second} after {first}");
    let ready = systemd.expect("READY=1", Duration::from_secs(10));
    assert!(
        ready.contains("refused") && ready.contains("lots"),
        "{ready}"
    );
    terminate(&mut gateway);
    systemd.expect("STOPPING=1", Duration::from_secs(10));
    assert!(gateway.0.wait().unwrap().success(), "SIGHUP never ended it");
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_says_ready_once_its_gateway_session_is_up() {
    let (_gateway, gateway_addr) = gateway(&["--backend", "tcp://127.0.0.1:9"]);
    let systemd = FakeSystemd::new("agent");
    let listen = format!("127.0.0.1:{}", free_tcp_port());
    let args = vec![
        "--listen".to_owned(),
        format!("tcp://{listen}"),
        "--gateway".to_owned(),
        gateway_addr.to_string(),
    ];
    let mut agent = spawn_notifying(env!("CARGO_BIN_EXE_ferry-agent"), &args, &systemd, 0);
    let ready = systemd.expect("READY=1", Duration::from_secs(20));
    assert!(ready.contains("1 gateway session(s) up"), "{ready}");
    terminate(&mut agent);
    systemd.expect("STOPPING=1", Duration::from_secs(10));
    assert!(agent.0.wait().unwrap().success());
}

#[test]
fn an_agent_without_a_gateway_says_ready_once_session_wait_passed() {
    let systemd = FakeSystemd::new("lonely-agent");
    // Nothing listens on this UDP port.
    let args = vec![
        "--listen".to_owned(),
        format!("tcp://127.0.0.1:{}", free_tcp_port()),
        "--gateway".to_owned(),
        format!("127.0.0.1:{}", free_udp_port()),
        "--session-wait".to_owned(),
        "300ms".to_owned(),
    ];
    let mut agent = spawn_notifying(env!("CARGO_BIN_EXE_ferry-agent"), &args, &systemd, 0);
    let ready = systemd.expect("READY=1", Duration::from_secs(20));
    assert!(ready.contains("no gateway session yet"), "{ready}");
    terminate(&mut agent);
    let _ = agent.0.wait();
}

#[test]
fn the_unit_files_pass_systemd_analyze_verify() {
    let Ok(output) = Command::new("systemd-analyze").arg("--version").output() else {
        ferry_test_support::skip(
            "systemd-analyze",
            "systemd-analyze is not installed (apt-get install systemd)",
        );
        return;
    };
    assert!(output.status.success());
    let dir = std::env::temp_dir().join(format!("ferry-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (unit, bin) in [
        ("ferry-gateway.service", env!("CARGO_BIN_EXE_ferry-gateway")),
        ("ferry-agent.service", env!("CARGO_BIN_EXE_ferry-agent")),
    ] {
        let text = std::fs::read_to_string(format!(
            "{}/contrib/systemd/{unit}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert!(text.contains("Type=notify") && text.contains("DynamicUser=yes"));
        assert!(
            text.contains("ExecReload=/bin/kill -HUP $MAINPID"),
            "{unit}"
        );
        // verify checks that ExecStart's program exists: the binary just built stands in for
        // the installed one.
        let installed = format!("/usr/local/bin/{}", unit.trim_end_matches(".service"));
        let local = dir.join(unit);
        std::fs::write(&local, text.replace(&installed, bin)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&local)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{unit}: {said}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
