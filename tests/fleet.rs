//! A fleet of gateways behind an existing UDP load balancer: three real `ferry-gateway`s behind
//! nginx's stream module (`listen ... udp`, `hash $remote_addr:$remote_port consistent`), with
//! real agents in front of it. The test checks that the agents spread over the fleet; that a
//! NAT rebinding which the balancer sends to another gateway ends in a stateless reset and a
//! reconnect within a second (not a stall until the idle timeout); and that killing the busiest
//! gateway with SIGKILL resets exactly its clients' connections, leaves the others' alone, and
//! lets its agents work again through another gateway within 3 s.
//!
//! Needs nginx with the stream module (Debian: `nginx-light` and `libnginx-mod-stream`, which
//! `.ci/run` installs). Without them the test fails, or with `FERRY_ALLOW_SKIP=nginx` passes
//! as skipped, saying so.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ferry_test_support::nginx;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Writes a line to the test's stderr past the harness's capture, so the measurements show in
/// every run, not only with `--nocapture`.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Gateways in the fleet.
const GATEWAYS: usize = 3;
/// Agents in front of the balancer, one link (one UDP source port) each.
const AGENTS: usize = 6;
/// Echo transfers per agent while the busiest gateway is killed.
const TRANSFERS_PER_AGENT: usize = 2;
/// Each transfer: this many bytes, written in chunks a pause apart, so it lasts about 2 s.
const TRANSFER_BYTES: usize = 3 << 20;
const CHUNK: usize = 16 << 10;
const PACE: Duration = Duration::from_millis(10);
/// Bytes every transfer must have had echoed before the kill, so all are mid-flight.
const ECHOED_BEFORE_KILL: usize = 256 << 10;
/// Bounds the test asserts.
const FAILOVER_BOUND: Duration = Duration::from_secs(3);
const REBIND_BOUND: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// nginx

/// The balancer's configuration: what the README's "Running a fleet" section shows.
///
/// - `hash $remote_addr:$remote_port consistent`: each agent link has its own UDP socket, so
///   hashing the source port too spreads the links of one agent, and agents behind one NAT
///   address, over the fleet (`$remote_addr` alone would put them all on one gateway). The
///   price: a NAT rebinding (new source port) may land on another gateway, which answers with
///   a stateless reset, and the agent reconnects (that is what the test measures).
///   `consistent` (ketama) moves only the flows of a gateway that fails or is added.
/// - `proxy_responses` is left unset: a Ferry session is a long bidirectional flow, not
///   request/response, so nginx must not end the UDP session after N replies.
/// - `proxy_timeout 60s`: how long an idle UDP session keeps its gateway. Longer than the
///   agent's keepalive (5 s) and the session idle timeout (30 s); a session that lapses anyway
///   hashes to the same gateway again, which follows the new source port.
/// - `max_fails=1 fail_timeout=10s`: when a gateway is down, nginx's connected upstream socket
///   gets ICMP port unreachable; nginx ends that UDP session and counts a failure against the
///   gateway, so with `max_fails=1` the next datagrams of the flow hash to the next live
///   gateway, which resets the session it does not know. After `fail_timeout` nginx tries the
///   gateway again for new flows.
/// - `zone` shares those failure marks between worker processes, and `reuseport` keeps each
///   flow on one worker (the kernel picks the worker by the 4-tuple), which matters with more
///   than the one worker the test runs.
fn nginx_conf(module: Option<&Path>, dir: &Path, listen: SocketAddr, gws: &[SocketAddr]) -> String {
    let load = module
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    let servers: String = gws
        .iter()
        .map(|g| format!("        server {g} max_fails=1 fail_timeout=10s;\n"))
        .collect();
    format!(
        "{load}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{
    worker_connections 1024;
}}
stream {{
    upstream ferry_gateways {{
        hash $remote_addr:$remote_port consistent;
        zone ferry_gateways 64k;
{servers}    }}
    server {{
        listen {listen} udp reuseport;
        proxy_pass ferry_gateways;
        proxy_timeout 60s;
    }}
}}
",
        dir = dir.display()
    )
}

/// nginx (master and worker), stopped when dropped, also when the test panics.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(install: &nginx::Install, dir: &Path, listen: SocketAddr, gws: &[SocketAddr]) -> Self {
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            nginx_conf(install.module.as_deref(), dir, listen, gws),
        )
        .unwrap();
        let prefix = format!("{}/", dir.display());
        let errors = dir.join("error.log").display().to_string();
        let args = |cmd: &mut Command| {
            cmd.arg("-c")
                .arg(&conf)
                .args(["-p", &prefix, "-e", &errors]);
        };
        let mut check = Command::new(&install.bin);
        args(&mut check);
        let checked = check.arg("-t").output().expect("nginx -t runs");
        assert!(
            checked.status.success(),
            "nginx rejects the configuration:\n{}\n{}",
            String::from_utf8_lossy(&checked.stderr),
            std::fs::read_to_string(&conf).unwrap()
        );
        let mut cmd = Command::new(&install.bin);
        args(&mut cmd);
        let child = cmd
            .args(["-g", "daemon off; master_process on;"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nginx.stderr")).unwrap())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Self {
            child,
            dir: dir.to_owned(),
        };
        // Up once it holds the UDP port (the master binds it before starting the worker, and
        // the socket queues what arrives meanwhile).
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::UdpSocket::bind(listen).is_ok() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.log());
            }
            assert!(Instant::now() < deadline, "nginx never bound {listen}");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("nginx.stderr"), read("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Fast shutdown: the master ends its worker, reaps it and exits. If it has not within
        // 3 s, SIGKILL the whole process group (process_group(0) made the master its leader,
        // and the worker belongs to it), so no worker outlives the test holding the port.
        let pid = self.child.id() as libc::pid_t;
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("ferry-fleet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fleet, agents, clients

/// An echo backend that first writes `tag` (one byte: its gateway's index), so every client
/// learns which gateway its connection crossed.
async fn tagged_echo(tag: u8) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(&[tag]).await.is_ok() {
                    echo(s).await;
                }
            });
        }
    });
    addr
}

/// Waits until some process holds UDP `addr`.
async fn wait_udp_bound(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(addr).is_ok() {
        assert!(Instant::now() < deadline, "nothing bound UDP {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Agent {
    proc: Proc,
    listen: SocketAddr,
    log: PathBuf,
}

async fn start_agent(gateway: SocketAddr, log: PathBuf) -> Agent {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let args: Vec<String> = [
        "--listen",
        &format!("tcp://{listen}"),
        "--gateway",
        &gateway.to_string(),
        "--crypto",
        "none",
        "--monitor",
        "off",
    ]
    .map(str::to_owned)
    .to_vec();
    let proc = spawn_logged(env!("CARGO_BIN_EXE_ferry-agent"), &args, &log);
    wait_listening(listen).await;
    Agent { proc, listen, log }
}

/// The agent's log lines that report a lost session.
fn session_losses(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("session lost"))
        .map(str::to_owned)
        .collect()
}

/// One small echo through the agent at `listen`; the gateway it crossed.
async fn probe(listen: SocketAddr, timeout: Duration) -> Result<u8, String> {
    let data = b"which gateway?".to_vec();
    let exchange = async {
        let s = TcpStream::connect(listen).await?;
        round_trip(s, data.clone()).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(format!("no answer in {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(back)) if back.len() == data.len() + 1 && back[1..] == data[..] => Ok(back[0]),
        Ok(Ok(back)) => Err(format!("wrong echo: {back:?}")),
    }
}

/// Probes until one works; the gateway it crossed and how long after `since` that was.
async fn works_again(listen: SocketAddr, since: Instant) -> (u8, Duration) {
    let deadline = since + Duration::from_secs(40);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match probe(listen, left.min(Duration::from_secs(5))).await {
            Ok(gw) => return (gw, since.elapsed()),
            Err(e) => assert!(
                Instant::now() < deadline,
                "{listen}: no connection worked in 40 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How a long transfer ended, as its client saw it.
struct Transfer {
    agent: usize,
    gateway: u8,
    /// What reading the echo gave: all of it, or the error.
    read: std::io::Result<Vec<u8>>,
    /// Whether writing (and the half-close) went through.
    write: std::io::Result<()>,
    expected: Vec<u8>,
    ended: Instant,
}

/// Starts a paced echo transfer through `listen`: reports its gateway on `started` once known,
/// counts echoed bytes in `echoed`.
fn start_transfer(
    agent: usize,
    listen: SocketAddr,
    seed: u64,
    started: tokio::sync::mpsc::UnboundedSender<u8>,
    echoed: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Transfer> {
    tokio::spawn(async move {
        let data = payload(seed, TRANSFER_BYTES);
        let s = TcpStream::connect(listen).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let out = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in out.chunks(CHUNK) {
                w.write_all(chunk).await?;
                tokio::time::sleep(PACE).await;
            }
            w.shutdown().await
        });
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)
            .await
            .unwrap_or_else(|e| panic!("agent {agent}: no gateway tag: {e}"));
        let _ = started.send(tag[0]);
        let mut back = Vec::with_capacity(TRANSFER_BYTES);
        let mut buf = vec![0u8; 64 << 10];
        let read = loop {
            match r.read(&mut buf).await {
                Ok(0) => break Ok(back),
                Ok(n) => {
                    back.extend_from_slice(&buf[..n]);
                    echoed.store(back.len(), Ordering::SeqCst);
                }
                Err(e) => break Err(e),
            }
        };
        let ended = Instant::now();
        let write = writer.await.expect("writer task");
        Transfer {
            agent,
            gateway: tag[0],
            read,
            write,
            expected: data,
            ended,
        }
    })
}

/// A UDP relay between one agent and the balancer, standing in for a NAT: `rebind` replaces
/// its upstream socket, so the balancer sees the agent's packets come from a new source port.
struct Rebinder {
    addr: SocketAddr,
    upstream: Arc<Mutex<(Arc<UdpSocket>, tokio::task::JoinHandle<()>)>>,
    agent: Arc<Mutex<Option<SocketAddr>>>,
    front: Arc<UdpSocket>,
    to: SocketAddr,
    forward: tokio::task::JoinHandle<()>,
}

impl Rebinder {
    async fn start(to: SocketAddr) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let agent: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let first = Self::upstream(&front, &agent, to).await;
        let upstream = Arc::new(Mutex::new(first));
        let forward = {
            let (front, agent, upstream) = (front.clone(), agent.clone(), upstream.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *agent.lock().unwrap() = Some(from);
                    let up = upstream.lock().unwrap().0.clone();
                    let _ = up.send_to(&buf[..n], to).await;
                }
            })
        };
        Self {
            addr: front.local_addr().unwrap(),
            upstream,
            agent,
            front,
            to,
            forward,
        }
    }

    /// A new upstream socket and the task that carries its replies back to the agent.
    async fn upstream(
        front: &Arc<UdpSocket>,
        agent: &Arc<Mutex<Option<SocketAddr>>>,
        to: SocketAddr,
    ) -> (Arc<UdpSocket>, tokio::task::JoinHandle<()>) {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (s, front, agent) = (socket.clone(), front.clone(), agent.clone());
        let back = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let agent = *agent.lock().unwrap();
                if let (true, Some(agent)) = (from == to, agent) {
                    let _ = front.send_to(&buf[..n], agent).await;
                }
            }
        });
        (socket, back)
    }

    /// Moves the agent's traffic to a new source port (the old one is closed); returns it.
    async fn rebind(&self) -> u16 {
        let new = Self::upstream(&self.front, &self.agent, self.to).await;
        let port = new.0.local_addr().unwrap().port();
        let (_old_socket, old_back) = std::mem::replace(&mut *self.upstream.lock().unwrap(), new);
        old_back.abort();
        port
    }
}

impl Drop for Rebinder {
    fn drop(&mut self) {
        self.forward.abort();
        self.upstream.lock().unwrap().1.abort();
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_nginx_spreads_agents_fails_over_and_survives_rebinding() {
    let install = match nginx::find() {
        Ok(install) => install,
        Err(why) => {
            return ferry_test_support::skip("nginx", &why);
        }
    };
    let dir = TempDir::new();
    let started = Instant::now();

    // Three gateways sharing one reset key file (created by whichever starts first), each
    // with its own server ID and a backend that tags connections with the gateway's index.
    let key_file = dir.0.join("reset-key").display().to_string();
    let mut gateways = Vec::new();
    for i in 0..GATEWAYS {
        let backend = tagged_echo(i as u8).await;
        let (proc, addr) = gateway(&[
            "--backend",
            &format!("tcp://{backend}"),
            "--crypto",
            "none",
            "--reset-key-file",
            &key_file,
            "--server-id",
            &(i + 1).to_string(),
            "--monitor",
            "off",
        ]);
        gateways.push((Some(proc), addr));
    }
    for (_, addr) in &gateways {
        wait_udp_bound(*addr).await;
    }
    let lb: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let gw_addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.1).collect();
    let nginx = Nginx::start(&install, &dir.0, lb, &gw_addrs);
    say!(
        "fleet: nginx ({}) on UDP {lb} -> gateways {gw_addrs:?}; logs in {} (kept on failure)",
        install.bin.display(),
        dir.0.display()
    );

    // 1. Agents spread over the fleet: each link's source port hashes to a gateway.
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        agents.push(start_agent(lb, dir.0.join(format!("agent-{i}.log"))).await);
    }
    let mut on = Vec::new();
    for a in &agents {
        on.push(works_again(a.listen, Instant::now()).await.0);
    }
    // Six flows all on one gateway happens once in 243 runs: then replace an agent (a new
    // source port) until they are on at least two, so the test does not depend on luck.
    let mut replaced = 0;
    while on.iter().all(|g| *g == on[0]) {
        replaced += 1;
        assert!(replaced <= 10, "every agent hashed to gateway {}", on[0]);
        agents[0] = start_agent(lb, dir.0.join(format!("agent-0-{replaced}.log"))).await;
        on[0] = works_again(agents[0].listen, Instant::now()).await.0;
    }
    let spread: Vec<usize> = (0..GATEWAYS)
        .map(|g| on.iter().filter(|x| **x as usize == g).count())
        .collect();
    say!("fleet: {AGENTS} agents per gateway: {spread:?} (agent -> gateway {on:?})");
    assert!(spread.iter().filter(|n| **n > 0).count() >= 2);

    // 2. NAT rebinding: an agent behind a relay whose upstream port changes. When nginx sends
    // the new port to another gateway, that gateway resets the session it does not know; the
    // agent reconnects. Either way the next connection works within a second.
    {
        let relay = Rebinder::start(lb).await;
        let log = dir.0.join("agent-rebinding.log");
        let agent = start_agent(relay.addr, log.clone()).await;
        let (mut current, _) = works_again(agent.listen, Instant::now()).await;
        let (mut moves, mut stays) = (0, 0);
        // Until two rebindings moved and one stayed (a migration the same gateway follows
        // after validating the new path), or 12 rounds: a third of new ports hash back.
        for round in 1..=12 {
            if moves >= 2 && stays >= 1 {
                break;
            }
            let port = relay.rebind().await;
            let at = Instant::now();
            let (now_on, took) = works_again(agent.listen, at).await;
            let moved = now_on != current;
            say!(
                "fleet: rebinding {round}: new source port {port}, gateway {current} -> {now_on}: \
                 next connection worked after {} ms",
                took.as_millis()
            );
            assert!(
                took < REBIND_BOUND,
                "rebinding {round} ({current} -> {now_on}): the next connection took {took:?}"
            );
            if moved {
                moves += 1;
            } else {
                stays += 1;
            }
            current = now_on;
            // Every move, and only a move, ended the session, by a stateless reset.
            let losses = session_losses(&log);
            assert_eq!(losses.len(), moves, "session losses: {losses:#?}");
            assert!(
                losses.iter().all(|l| l.contains("reset the session")),
                "a session ended otherwise than by a stateless reset: {losses:#?}"
            );
        }
        say!("fleet: {moves} rebindings moved to another gateway, {stays} stayed");
        assert!(moves >= 1, "no rebinding hashed to another gateway");
        drop(agent);
    }

    // 3. Long transfers through every agent; kill -9 the gateway that carries the most.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut transfers = Vec::new();
    let mut echoed = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        for k in 0..TRANSFERS_PER_AGENT {
            let count = Arc::new(AtomicUsize::new(0));
            echoed.push(count.clone());
            let seed = (i * TRANSFERS_PER_AGENT + k) as u64;
            transfers.push(start_transfer(i, a.listen, seed, tx.clone(), count));
        }
    }
    let mut load = [0usize; GATEWAYS];
    for _ in 0..transfers.len() {
        let gw = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("every transfer reaches a backend")
            .unwrap();
        load[gw as usize] += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while echoed
        .iter()
        .any(|e| e.load(Ordering::SeqCst) < ECHOED_BEFORE_KILL)
    {
        assert!(Instant::now() < deadline, "transfers too slow to get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let victim = (0..GATEWAYS).max_by_key(|g| load[*g]).unwrap();
    let affected: Vec<usize> = (0..agents.len())
        .filter(|i| on[*i] as usize == victim)
        .collect();
    say!("fleet: transfers per gateway {load:?}; killing gateway {victim} (agents {affected:?})");
    let killed_at = Instant::now();
    let mut proc = gateways[victim].0.take().unwrap();
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
    drop(proc);

    // New connections through the affected agents work again, through another gateway.
    let recoveries: Vec<_> = affected
        .iter()
        .map(|&i| {
            let listen = agents[i].listen;
            tokio::spawn(async move { (i, works_again(listen, killed_at).await) })
        })
        .collect();
    let mut worst_recovery = Duration::ZERO;
    for r in recoveries {
        let (i, (gw, took)) = r.await.unwrap();
        say!(
            "fleet: agent {i}: a new connection worked {} ms after the kill, via gateway {gw}",
            took.as_millis()
        );
        assert_ne!(
            gw as usize, victim,
            "agent {i} still reaches the dead gateway"
        );
        assert!(
            took < FAILOVER_BOUND,
            "agent {i}: no new connection worked for {took:?} after the kill"
        );
        worst_recovery = worst_recovery.max(took);
    }

    // Transfers through the dead gateway end in a reset, never a clean short EOF; the others
    // complete intact.
    let mut worst_reset = Duration::ZERO;
    let (mut reset, mut intact) = (0, 0);
    for t in transfers {
        let t = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("transfer ends")
            .unwrap();
        if t.gateway as usize == victim {
            let saw_reset = match (&t.read, &t.write) {
                (Err(e), _) => e.kind() == ErrorKind::ConnectionReset,
                // The writer can take the reset first; the reader then sees only the end.
                (Ok(back), Err(e)) => {
                    e.kind() == ErrorKind::ConnectionReset && back.len() < t.expected.len()
                }
                (Ok(back), Ok(())) => panic!(
                    "agent {}: a transfer through the killed gateway ended cleanly with {} of {} bytes",
                    t.agent,
                    back.len(),
                    t.expected.len()
                ),
            };
            assert!(
                saw_reset,
                "agent {}: transfer through the killed gateway ended with read {:?}, write {:?}",
                t.agent,
                t.read.as_ref().map(Vec::len),
                t.write
            );
            worst_reset = worst_reset.max(t.ended.saturating_duration_since(killed_at));
            reset += 1;
        } else {
            let back = t.read.unwrap_or_else(|e| {
                panic!(
                    "agent {}: transfer via gateway {} broke: {e}",
                    t.agent, t.gateway
                )
            });
            t.write.unwrap_or_else(|e| {
                panic!(
                    "agent {}: transfer via gateway {} broke: {e}",
                    t.agent, t.gateway
                )
            });
            assert!(
                back == t.expected,
                "agent {}: {} of {} bytes back via gateway {}, or different",
                t.agent,
                back.len(),
                t.expected.len(),
                t.gateway
            );
            intact += 1;
        }
    }
    say!(
        "fleet: {reset} transfers through the killed gateway were reset (the last {} ms after \
         the kill); {intact} through the others completed intact",
        worst_reset.as_millis()
    );

    // Nothing else was disturbed: the other agents kept their sessions and their gateways.
    for (i, a) in agents.iter().enumerate() {
        let losses = session_losses(&a.log);
        if affected.contains(&i) {
            assert!(
                losses.iter().all(|l| l.contains("reset the session")),
                "agent {i}: {losses:#?}"
            );
        } else {
            assert!(losses.is_empty(), "agent {i} was disturbed: {losses:#?}");
            let gw = probe(a.listen, Duration::from_secs(5)).await.unwrap();
            assert_eq!(gw, on[i], "agent {i} moved from gateway {}", on[i]);
        }
    }
    say!(
        "fleet: failover: every affected agent worked again within {} ms of the kill; \
         whole test {} ms",
        worst_recovery.as_millis(),
        started.elapsed().as_millis()
    );
    for a in agents {
        drop(a.proc);
    }
    drop(nginx);
}
