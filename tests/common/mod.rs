//! Shared by the end-to-end tests: the real binaries on loopback, their certificates, backends,
//! clients, and an impairment relay. Each test crate uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port for a process under test to bind, free for both TCP and UDP.
///
/// Three things keep two binds from meeting. Ports come from 20000-31999, below Linux's
/// ephemeral range (32768-60999), so no `bind(0)` or outgoing connection can be handed one
/// between this check and the child's bind. A process-wide counter keeps tests running in
/// parallel in this process from picking the same one. And a lock on
/// `$TMPDIR/ferry-test-ports/PORT`, held until this process ends, keeps every other test
/// process (the next test binary, a second `cargo test`, a helper's worktree) off a port this
/// one handed out, which the check alone cannot: it sees a port free until the child binds it.
pub fn free_port() -> u16 {
    free_ports_apart(0)
}

/// A port `p` such that `p` and the monitor port a binary started without `--monitor` (the
/// demo) takes for it, `p` + 1000, are both free and held as [`free_port`] holds one. Without
/// it the monitor's port could be another test's, or an ephemeral one.
pub fn free_port_and_its_monitor() -> u16 {
    free_ports_apart(ferry_tunnel::process::MONITOR_PORT_OFFSET)
}

/// A free port `p` with `p + apart` free too (the same port when `apart` is 0), both locked.
fn free_ports_apart(apart: u16) -> u16 {
    const FIRST: usize = 20_000;
    const LAST: usize = 31_999;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let count = LAST + 1 - FIRST - usize::from(apart);
    let start = (std::process::id() as usize * 97) % count;
    loop {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::SeqCst)) % count) as u16;
        let wanted: &[u16] = if apart == 0 {
            &[port]
        } else {
            &[port, port + apart]
        };
        let locks: Vec<_> = wanted.iter().map_while(|&p| lock_port(p)).collect();
        if locks.len() < wanted.len() {
            continue;
        }
        let free = wanted.iter().all(|&p| {
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        });
        if free {
            HELD.lock().unwrap().extend(locks);
            return port;
        }
    }
}

/// An exclusive lock on `port`'s file, or `None` if another process holds it. The lock goes
/// with the file's last descriptor, that is when this process ends, however it ends.
fn lock_port(port: u16) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dir = std::env::temp_dir().join("ferry-test-ports");
    std::fs::create_dir_all(&dir).expect("a directory for port locks");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))
        .expect("a port lock file");
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

pub fn free_udp_port() -> u16 {
    free_port()
}

pub fn free_tcp_port() -> u16 {
    free_port()
}

/// Waits until a full round trip through the agent at `listen` (to an echo backend) works:
/// the agent listens, its session is up, and the probe's connection has finished.
pub async fn ready(listen: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = TcpStream::connect(listen).await {
            if let Ok(back) = round_trip(s, b"ready".to_vec()).await {
                if back == b"ready" {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "the tunnel at {listen} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes a development set into `dir` with `ferry-certs`: `ca.pem`, `gateway.pem`/`.key`
/// (for localhost, 127.0.0.1 and ::1) and `agent.pem`/`.key`, all issued by that CA.
pub fn write_dev_certs(dir: &std::path::Path) {
    ferry_certs::generate(&ferry_certs::Options::default())
        .unwrap()
        .write(dir, true)
        .unwrap();
}

/// The development set the binaries run with in these tests, written once per test process.
pub fn certs() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferry-e2e-certs-{}", std::process::id()));
        write_dev_certs(&dir);
        dir
    })
}

/// Flags each binary runs with unless the test gave its own: TLS with the test CA (TLS is the
/// binaries' default too), and no monitor (its default port, the listen port + 1000, could be
/// another test's).
pub fn default_args(bin: &str, args: &[String]) -> Vec<String> {
    let given = |flag: &str| args.iter().any(|a| a == flag);
    let mut out = Vec::new();
    if !given("--monitor") && (bin.ends_with("ferry-gateway") || bin.ends_with("ferry-agent")) {
        out.extend(["--monitor".to_owned(), "off".to_owned()]);
    }
    if !given("--crypto") {
        out.extend(tls_args(bin, &given));
    }
    out
}

fn tls_args(bin: &str, given: &dyn Fn(&str) -> bool) -> Vec<String> {
    let file = |name: &str| certs().join(name).display().to_string();
    if bin.ends_with("ferry-gateway") && !given("--tls-cert") {
        vec![
            "--tls-cert".into(),
            file("gateway.pem"),
            "--tls-key".into(),
            file("gateway.key"),
        ]
    } else if bin.ends_with("ferry-agent") && !given("--tls-ca") {
        vec!["--tls-ca".into(), file("ca.pem")]
    } else {
        Vec::new()
    }
}

/// The binaries' log filter: `warn`, or `FERRY_TEST_LOG` (e.g. `debug`) to investigate.
fn log_filter() -> String {
    std::env::var("FERRY_TEST_LOG").unwrap_or_else(|_| "warn".into())
}

pub fn spawn(bin: &str, args: &[String]) -> Proc {
    let child = Command::new(bin)
        .args(args)
        .args(default_args(bin, args))
        .env("RUST_LOG", log_filter())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    Proc(child)
}

/// Like [`spawn`], with the process's log (stderr) written to `log`, to check what it said.
pub fn spawn_logged(bin: &str, args: &[String], log: &std::path::Path) -> Proc {
    spawn_logged_at(bin, args, log, &log_filter())
}

/// Like [`spawn_logged`], logging what `filter` (a `RUST_LOG` value) lets through.
pub fn spawn_logged_at(bin: &str, args: &[String], log: &std::path::Path, filter: &str) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    let child = Command::new(bin)
        .args(args)
        .args(default_args(bin, args))
        .env("RUST_LOG", filter)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    Proc(child)
}

/// Waits up to `timeout` for `log` to contain every one of `words` on one line; returns it.
pub async fn wait_for_log(log: &std::path::Path, words: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| words.iter().all(|w| l.contains(w))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {words:?} in {}:\n{text}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn gateway(extra: &[&str]) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let mut args = vec!["--listen".to_owned(), addr.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    (spawn(env!("CARGO_BIN_EXE_ferry-gateway"), &args), addr)
}

/// Starts an agent listening on a fresh loopback TCP port for `gateway`; waits until it accepts.
pub async fn agent(gateway: SocketAddr, extra: &[&str]) -> (Proc, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut args = vec![
        "--listen".to_owned(),
        format!("tcp://{listen}"),
        "--gateway".to_owned(),
        gateway.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proc = spawn(env!("CARGO_BIN_EXE_ferry-agent"), &args);
    wait_listening(listen).await;
    (proc, listen)
}

/// Waits until `condition` holds, looking every 5 ms; fails the test, naming `what`, if it
/// does not within `timeout`. For a test that must wait for something to happen, not guess
/// how long it takes.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} never started listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP echo backend; counts the connections it accepted.
pub async fn echo_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    echo_backend_on("127.0.0.1").await
}

/// [`echo_backend`] on another loopback address (`127.0.0.x`): a test that counts its backends'
/// connections exactly uses one, since a port another test freed and still connects to (a
/// backend it took down on purpose, probed by its gateway) can be handed to a new listener
/// on 127.0.0.1, whose count would then include that test's connection.
pub async fn echo_backend_on(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(echo(s));
        }
    });
    (addr, accepted)
}

pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) {
    let (mut r, mut w) = tokio::io::split(s);
    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
        let _ = w.shutdown().await;
    }
}

/// Sends `data` through `s`, half-closes, and returns everything read back.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    s: S,
    data: Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await?;
    writer.await.expect("writer task")?;
    Ok(back)
}

/// Writes `data` on `s`, which stays open, and reads back as many bytes: what came back (an
/// end of file first is `UnexpectedEof`).
pub async fn exchange(s: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(data).await?;
    let mut back = vec![0; data.len()];
    s.read_exact(&mut back).await?;
    Ok(back)
}

/// Asserts that a client connecting to `addr` is refused with a reset: either at connect (the
/// RST can arrive before `connect` returns) or on its first exchange.
pub async fn expect_reset(addr: SocketAddr, what: &str) {
    let err = match TcpStream::connect(addr).await {
        Err(e) => e,
        Ok(s) => round_trip(s, b"refuse me".to_vec()).await.expect_err(what),
    };
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "{what}: {err}"
    );
}

#[allow(unused_imports)] // Not every suite sends a payload.
pub use ferry_test_support::payload;

/// An in-test UDP impairment relay between the agent and the gateway: every datagram, in both
/// directions, is dropped with probability `loss`, or else delivered after `delay` plus a
/// uniform jitter of up to `jitter`. Jitter wider than the gap between datagrams reorders them.
/// Decisions come from a seeded generator, so the pattern of drops repeats from run to run
/// (timings still depend on the machine). Each agent source address gets its own upstream
/// socket, so the gateway sees one peer per agent link, as through a NAT.
#[derive(Default)]
pub struct Impairment {
    pub loss: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub seed: u64,
    /// An on-path attacker, off by default.
    pub attack: Attack,
    /// While set, the link is down: every datagram, both ways, is dropped (an outage).
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

/// What an on-path attacker in the relay does, every Nth datagram (0: never). It acts only on
/// short-header packets (the handshake is spared) of at least `min_len` bytes.
#[derive(Default, Clone, Copy)]
pub struct Attack {
    /// Flip one bit past the first 13 bytes (the short header).
    pub flip_every: usize,
    /// Also send a forgery: the datagram's first 13 bytes (a valid connection ID) and garbage.
    pub forge_every: usize,
    /// Toward the agent only: also send a forged stateless reset (a short header with a
    /// random connection ID, random bytes, a random 16-byte "token"), 40 bytes long: it passes
    /// the packet parser and must be told apart by its token.
    pub forge_reset_every: usize,
    /// Also send the datagram again, later (a replay).
    pub replay_every: usize,
    pub min_len: usize,
    /// Keep a copy of every datagram in `RelayCounts::captured`.
    pub capture: bool,
}

/// Counts of what the relay did, both directions together.
#[derive(Default)]
pub struct RelayCounts {
    pub forwarded: AtomicUsize,
    /// UDP payload bytes of the datagrams forwarded.
    pub forwarded_bytes: AtomicUsize,
    pub dropped: AtomicUsize,
    pub reordered: AtomicUsize,
    pub flipped: AtomicUsize,
    pub forged: AtomicUsize,
    pub forged_resets: AtomicUsize,
    pub replayed: AtomicUsize,
    pub captured: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// Starts the relay in front of `gateway`; returns the address agents should use.
pub async fn impairment_relay(
    gateway: SocketAddr,
    imp: Impairment,
) -> (SocketAddr, Arc<RelayCounts>) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use tokio::net::UdpSocket;

    /// One seeded decision per datagram: `None` drops it, `Some(d)` delivers it after `d`.
    struct Dice {
        state: u64,
        imp: Impairment,
    }
    impl Dice {
        fn next(&mut self) -> f64 {
            // xorshift64*: plenty for a test's coin flips.
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn roll(&mut self) -> Option<Duration> {
            if self.next() < self.imp.loss {
                return None;
            }
            Some(self.imp.delay + self.imp.jitter.mul_f64(self.next()))
        }
    }

    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let counts = Arc::new(RelayCounts::default());
    let dice = Arc::new(Mutex::new(Dice {
        state: imp.seed | 1,
        imp,
    }));
    // Sends `data` to `to` through `via` after the dice's delay, unless the dice drop it.
    // `last` is the latest delivery time scheduled in this direction, to count reorderings.
    let attack = dice.lock().unwrap().imp.attack;
    let down = dice.lock().unwrap().imp.down.clone();
    let seen = Arc::new(AtomicUsize::new(0));
    let schedule = {
        let counts = counts.clone();
        move |via: Arc<UdpSocket>,
              to: SocketAddr,
              mut data: Vec<u8>,
              last: &Mutex<Instant>,
              toward_agent: bool| {
            if down.load(Ordering::SeqCst) {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
            if attack.capture {
                counts.captured.lock().unwrap().push(data.clone());
            }
            // Only short-header packets (after the handshake) are attacked.
            let every = |k: usize| {
                k > 0 && n % k == 0 && data[0] & 0x80 == 0 && data.len() >= attack.min_len.max(14)
            };
            if every(attack.replay_every) {
                counts.replayed.fetch_add(1, Ordering::Relaxed);
                let (via, copy) = (via.clone(), data.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(80)).await;
                    let _ = via.send_to(&copy, to).await;
                });
            }
            if every(attack.forge_every) {
                counts.forged.fetch_add(1, Ordering::Relaxed);
                let mut forged = data[..13].to_vec();
                forged.extend((0..data.len() - 13).map(|i| (i * 7 + n) as u8));
                let via = via.clone();
                tokio::spawn(async move {
                    let _ = via.send_to(&forged, to).await;
                });
            }
            if toward_agent && every(attack.forge_reset_every) {
                counts.forged_resets.fetch_add(1, Ordering::Relaxed);
                let mut forged = payload(n as u64, 40);
                forged[0] = 0x40;
                let via = via.clone();
                tokio::spawn(async move {
                    let _ = via.send_to(&forged, to).await;
                });
            }
            if every(attack.flip_every) {
                counts.flipped.fetch_add(1, Ordering::Relaxed);
                let i = 13 + (n * 31) % (data.len() - 13);
                data[i] ^= 1 << (n % 8);
            }
            let Some(delay) = dice.lock().unwrap().roll() else {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let at = Instant::now() + delay;
            {
                let mut last = last.lock().unwrap();
                if at < *last {
                    counts.reordered.fetch_add(1, Ordering::Relaxed);
                }
                *last = (*last).max(at);
            }
            counts.forwarded.fetch_add(1, Ordering::Relaxed);
            counts
                .forwarded_bytes
                .fetch_add(data.len(), Ordering::Relaxed);
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let _ = via.send_to(&data, to).await;
            });
        }
    };
    let schedule = Arc::new(schedule);
    let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let to_gateway = Arc::new(Mutex::new(Instant::now()));
    let to_agent = Arc::new(Mutex::new(Instant::now()));
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, agent)) = front.recv_from(&mut buf).await else {
                return;
            };
            let known = upstreams.lock().unwrap().get(&agent).cloned();
            let upstream = match known {
                Some(u) => u,
                None => {
                    let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    upstreams.lock().unwrap().insert(agent, u.clone());
                    // The return path: gateway -> this upstream socket -> the agent.
                    let (u2, front2, schedule2, to_agent2) =
                        (u.clone(), front.clone(), schedule.clone(), to_agent.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok((n, _)) = u2.recv_from(&mut buf).await {
                            schedule2(front2.clone(), agent, buf[..n].to_vec(), &to_agent2, true);
                        }
                    });
                    u
                }
            };
            schedule(upstream, gateway, buf[..n].to_vec(), &to_gateway, false);
        }
    });
    (addr, counts)
}

/// `connections` clients at once each echo `bytes` of their own data (seeded from `seed` and
/// their index) through `listen`; every byte must come back, within two minutes.
pub async fn echo_concurrently(listen: SocketAddr, connections: u64, bytes: usize, seed: u64) {
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            tokio::spawn(async move {
                let data = payload(seed + i, bytes);
                let s = TcpStream::connect(listen).await.unwrap();
                let back = round_trip(s, data.clone())
                    .await
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                assert!(
                    back == data,
                    "connection {i}: {} of {bytes} bytes back, or content differs",
                    back.len()
                );
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(120), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{connections} connections did not finish in time"));
}

/// One sample of a metric (with a label, if given) from a `/metrics` body, parsed for real.
pub fn metric(body: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("{name} not in\n{body}"));
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

/// GET `path` from a monitor at `addr`; returns status, content type and body.
#[allow(unused_imports)] // Not every suite reads a monitor.
pub use ferry_test_support::http_get;
