//! End to end: the limits of a default pair agree, and every limit that is reached is told. A
//! default agent and gateway carry 1,500 clients at once (the gateway's streams per session
//! cover what the agent accepts); a client over a limit (the gateway's `--max-streams`,
//! `--backend-max-streams`, either binary's open-files limit) sees a TCP reset, ECONNRESET and
//! not an end of file, at once rather than after a hang; the binary logs which limit and flag;
//! its monitor counts the refusal by reason; and once clients leave, new ones work again.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tokio::net::{TcpSocket, TcpStream};

/// Longest a refused client may wait for its reset before the test calls it a hang. Refusals
/// take milliseconds; the bound is generous for a busy shared machine, and far below the 20 s
/// a client used to wait before giving up.
const RESET_WITHIN: Duration = Duration::from_secs(5);

/// Longest any one client may take before the test calls it a hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Raises this test process's open-files soft limit to its hard limit, and checks that
/// `needed` descriptors fit (each client here costs two: its socket and the backend's).
fn raise_own_open_files(needed: u64) {
    let limit = ferry_tunnel::process::raise_open_files_limit();
    if let Some(soft) = limit.soft {
        assert!(
            soft >= needed,
            "this test needs {needed} file descriptors; the hard open-files limit is {soft} \
             (raise it: ulimit -Hn)"
        );
    }
}

/// An echo backend whose listen backlog takes a burst of connections (tokio's `bind` asks
/// for 1,024; a burst beyond it costs connects a one-second SYN retransmission).
async fn echo_backend_for_bursts() -> SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(4096).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
    addr
}

fn monitor_address() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// How a client fared: its message echoed (the connection stays open, holding its stream), or
/// its connection failed with this error kind after this long.
enum Outcome {
    Echoed(TcpStream),
    Failed(std::io::ErrorKind, Duration),
}

/// Connects to `listen`, sends a message of its own and reads it back, within
/// [`CLIENT_TIMEOUT`] (a hang fails the test).
async fn client(listen: SocketAddr, seed: u64) -> Outcome {
    let started = Instant::now();
    let attempt = async {
        let mut s = TcpStream::connect(listen).await?;
        let data = payload(seed, 1000);
        // An end of file here is `UnexpectedEof`, told apart from a reset.
        let back = exchange(&mut s, &data).await?;
        assert!(back == data, "client {seed}: the echo differs");
        Ok::<_, std::io::Error>(s)
    };
    match tokio::time::timeout(CLIENT_TIMEOUT, attempt).await {
        Ok(Ok(s)) => Outcome::Echoed(s),
        Ok(Err(e)) => Outcome::Failed(e.kind(), started.elapsed()),
        Err(_) => panic!("client {seed} hung for {CLIENT_TIMEOUT:?}: neither served nor reset"),
    }
}

/// `n` clients at once; their outcomes in order.
async fn clients_at_once(listen: SocketAddr, n: u64, seed: u64) -> Vec<Outcome> {
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(client(listen, seed + i)))
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("client task"));
    }
    outcomes
}

/// Opens clients one at a time until `n` of them echo and stay open, retrying refused ones:
/// right after earlier clients closed, their streams take a round trip to be released.
async fn hold(listen: SocketAddr, n: usize, seed: u64) -> Vec<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut held = Vec::new();
    let mut attempt = 0;
    while held.len() < n {
        attempt += 1;
        match client(listen, seed + attempt).await {
            Outcome::Echoed(s) => held.push(s),
            Outcome::Failed(kind, _) => {
                assert!(
                    Instant::now() < deadline,
                    "only {} of {n} clients could be opened (last: {kind:?})",
                    held.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    held
}

/// The count of refusals for `reason` on the monitor at `addr`.
async fn refusals(monitor: SocketAddr, reason: &str) -> f64 {
    let (_, _, body) = http_get(monitor, "/metrics").await;
    metric(
        &body,
        "ferry_connections_rejected_total",
        Some(("reason", reason)),
    )
}

/// Starts a binary with its log in `log`, and with `open_files` as its open-files limit (soft
/// and hard, through the shell's `ulimit`) if given.
fn spawn_limited(bin: &str, args: &[String], log: &Path, open_files: Option<u64>) -> Proc {
    let mut command = match open_files {
        Some(n) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let child = command
        .args(args)
        .args(default_args(bin, args))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    Proc(child)
}

/// A gateway before `backend` with its monitor at `monitor`, logging to `log`.
fn logged_gateway(
    backend: SocketAddr,
    monitor: SocketAddr,
    extra: &[&str],
    log: &Path,
    open_files: Option<u64>,
) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args: Vec<String> = [
        "--listen",
        &addr.to_string(),
        "--backend",
        &format!("tcp://{backend}"),
        "--monitor",
        &monitor.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let bin = env!("CARGO_BIN_EXE_ferry-gateway");
    (spawn_limited(bin, &args, log, open_files), addr)
}

/// An agent for `gateway` with its monitor at `monitor`, logging to `log`; waits until it
/// listens.
async fn logged_agent(
    gateway: SocketAddr,
    monitor: SocketAddr,
    extra: &[&str],
    log: &Path,
    open_files: Option<u64>,
) -> (Proc, SocketAddr) {
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args: Vec<String> = [
        "--listen",
        &format!("tcp://{listen}"),
        "--gateway",
        &gateway.to_string(),
        "--monitor",
        &monitor.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let bin = env!("CARGO_BIN_EXE_ferry-agent");
    let proc = spawn_limited(bin, &args, log, open_files);
    wait_listening(listen).await;
    (proc, listen)
}

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ferry-limits-{}-{name}.log", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_pair_carries_1500_clients_at_once() {
    const CLIENTS: u64 = 1500;
    // The clients' sockets and the echo backend's, and some to spare.
    raise_own_open_files(2 * CLIENTS + 200);
    let backend = echo_backend_for_bursts().await;
    let agent_monitor = monitor_address();
    let (_gateway, gw_addr) = gateway(&["--backend", &format!("tcp://{backend}")]);
    let (_agent, listen) = agent(gw_addr, &["--monitor", &agent_monitor.to_string()]).await;
    ready(listen).await;

    let started = Instant::now();
    let outcomes = clients_at_once(listen, CLIENTS, 0).await;
    let elapsed = started.elapsed();
    let mut held = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Outcome::Echoed(s) => held.push(s),
            Outcome::Failed(kind, after) => panic!("client {i} failed after {after:?}: {kind:?}"),
        }
    }
    // Every one of them is open at once: the agent carries 1,500 streams on its one session.
    let (_, _, body) = http_get(agent_monitor, "/metrics").await;
    let active = metric(&body, "ferry_streams_active", None);
    println!(
        "{CLIENTS} clients connected at once with the defaults: all echoed in {:.2} s; the \
         agent holds {active} open streams on one session",
        elapsed.as_secs_f64()
    );
    assert!(active >= CLIENTS as f64, "{active} streams active");
    for reason in ["stream-limit", "limit", "open-files", "no-session"] {
        assert_eq!(refusals(agent_monitor, reason).await, 0.0, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_gateways_stream_limit_clients_are_reset_at_once_and_counted() {
    const LIMIT: usize = 8;
    let backend = echo_backend_for_bursts().await;
    let (gw_monitor, agent_monitor) = (monitor_address(), monitor_address());
    let (gw_log, agent_log) = (log_path("streams-gw"), log_path("streams-agent"));
    let (_gateway, gw_addr) = logged_gateway(
        backend,
        gw_monitor,
        &["--max-streams", &LIMIT.to_string()],
        &gw_log,
        None,
    );
    let (_agent, listen) = logged_agent(gw_addr, agent_monitor, &[], &agent_log, None).await;
    ready(listen).await;

    let held = hold(listen, LIMIT, 100).await;
    let before = refusals(agent_monitor, "stream-limit").await;
    let mut slowest = Duration::ZERO;
    for seed in 0..LIMIT as u64 {
        match client(listen, 1000 + seed).await {
            Outcome::Failed(std::io::ErrorKind::ConnectionReset, after) => {
                slowest = slowest.max(after)
            }
            Outcome::Failed(kind, _) => panic!(
                "client {} over the limit: {kind:?}, not a reset",
                LIMIT + 1 + seed as usize
            ),
            Outcome::Echoed(_) => panic!(
                "client {} was served over --max-streams {LIMIT}",
                LIMIT + 1 + seed as usize
            ),
        }
    }
    println!(
        "--max-streams {LIMIT}: clients {}..{} reset, the slowest after {:.1} ms",
        LIMIT + 1,
        2 * LIMIT,
        slowest.as_secs_f64() * 1e3
    );
    assert!(slowest < RESET_WITHIN, "a reset took {slowest:?}");
    assert_eq!(
        refusals(agent_monitor, "stream-limit").await - before,
        LIMIT as f64
    );
    let line = wait_for_log(
        &agent_log,
        &["client reset", "stream limit", "--max-streams"],
        Duration::from_secs(5),
    )
    .await;
    println!("agent: {line}");
    let line = wait_for_log(&gw_log, &["--max-streams"], Duration::from_secs(5)).await;
    println!("gateway: {line}");

    // The first clients leave: the streams come back, and as many new clients work again.
    drop(held);
    let again = hold(listen, LIMIT, 200).await;
    assert_eq!(again.len(), LIMIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_backend_stream_limit_clients_are_reset_and_counted() {
    let backend = echo_backend_for_bursts().await;
    let (gw_monitor, agent_monitor) = (monitor_address(), monitor_address());
    let (gw_log, agent_log) = (log_path("backend-gw"), log_path("backend-agent"));
    let (_gateway, gw_addr) = logged_gateway(
        backend,
        gw_monitor,
        &["--backend-max-streams", "2"],
        &gw_log,
        None,
    );
    let (_agent, listen) = logged_agent(gw_addr, agent_monitor, &[], &agent_log, None).await;
    ready(listen).await;

    let held = hold(listen, 2, 100).await;
    let before = refusals(gw_monitor, "backend-limit").await;
    match client(listen, 1000).await {
        Outcome::Failed(std::io::ErrorKind::ConnectionReset, after) => {
            println!(
                "--backend-max-streams 2: the third client reset after {:.1} ms",
                after.as_secs_f64() * 1e3
            );
            assert!(after < RESET_WITHIN, "the reset took {after:?}");
        }
        Outcome::Failed(kind, _) => panic!("third client: {kind:?}, not a reset"),
        Outcome::Echoed(_) => panic!("third client served over --backend-max-streams 2"),
    }
    assert_eq!(refusals(gw_monitor, "backend-limit").await - before, 1.0);
    wait_for_log(
        &gw_log,
        &["stream refused", "--backend-max-streams"],
        Duration::from_secs(5),
    )
    .await;
    drop(held);
    hold(listen, 2, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_the_gateway_refuses_resets_its_clients_after_the_session_wait() {
    let backend = echo_backend_for_bursts().await;
    let (gw_monitor, agent_monitor) = (monitor_address(), monitor_address());
    let (gw_log, agent_log) = (log_path("sessions-gw"), log_path("sessions-agent"));
    let (_gateway, gw_addr) = logged_gateway(
        backend,
        gw_monitor,
        &["--max-connections", "1"],
        &gw_log,
        None,
    );
    // The first agent takes the gateway's one session.
    let (_first, first_listen) = agent(gw_addr, &[]).await;
    ready(first_listen).await;
    let (_second, listen) = logged_agent(
        gw_addr,
        agent_monitor,
        &["--session-wait", "1s"],
        &agent_log,
        None,
    )
    .await;
    match client(listen, 0).await {
        Outcome::Failed(std::io::ErrorKind::ConnectionReset, after) => {
            println!(
                "gateway --max-connections 1, a second agent with --session-wait 1s: its \
                 client reset after {:.2} s",
                after.as_secs_f64()
            );
            assert!(
                after >= Duration::from_millis(900)
                    && after < Duration::from_secs(1) + RESET_WITHIN,
                "reset after {after:?}"
            );
        }
        Outcome::Failed(kind, _) => panic!("{kind:?}, not a reset"),
        Outcome::Echoed(_) => panic!("served through a gateway at --max-connections 1"),
    }
    // Two clients were refused: ours and the start-up probe that checked the agent listens.
    let deadline = Instant::now() + Duration::from_secs(5);
    while refusals(agent_monitor, "no-session").await < 2.0 {
        assert!(Instant::now() < deadline, "the refusals were not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refusals(agent_monitor, "no-session").await, 2.0);
    assert!(refusals(gw_monitor, "limit").await >= 1.0);
    let why = wait_for_log(
        &agent_log,
        &[
            "cannot reach gateway",
            "server at its limit of 1 connections",
        ],
        Duration::from_secs(5),
    )
    .await;
    println!("agent: {why}");
    wait_for_log(
        &agent_log,
        &["client reset", "--session-wait"],
        Duration::from_secs(5),
    )
    .await;
    let line = wait_for_log(
        &gw_log,
        &["agent sessions refused", "--max-connections"],
        Duration::from_secs(5),
    )
    .await;
    println!("gateway: {line}");
}

/// Clients at once against a binary whose open-files limit is far below what its flags
/// allow; it must warn at start-up, and each client must be served or reset, none left
/// waiting. Returns (served, reset, slowest reset).
async fn flood_under_open_files_limit(listen: SocketAddr, clients: u64) -> (u64, u64, Duration) {
    let outcomes = clients_at_once(listen, clients, 0).await;
    let (mut served, mut reset, mut slowest) = (0, 0, Duration::ZERO);
    let mut held = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Outcome::Echoed(s) => {
                served += 1;
                held.push(s);
            }
            Outcome::Failed(std::io::ErrorKind::ConnectionReset, after) => {
                reset += 1;
                slowest = slowest.max(after);
            }
            Outcome::Failed(kind, _) => panic!("client {i}: {kind:?}, neither served nor reset"),
        }
    }
    (served, reset, slowest)
}

/// Enough clients to run a binary limited to [`FEW_FILES`] descriptors out of them.
const FLOOD: u64 = 400;
/// The open-files limit of the binary under test in the open-files tests.
const FEW_FILES: u64 = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_out_of_descriptors_resets_clients_at_once_and_counts_them() {
    raise_own_open_files(2 * FLOOD + 200);
    let backend = echo_backend_for_bursts().await;
    let (gw_monitor, agent_monitor) = (monitor_address(), monitor_address());
    let (gw_log, agent_log) = (log_path("fd-agent-gw"), log_path("fd-agent"));
    let (_gateway, gw_addr) = logged_gateway(backend, gw_monitor, &[], &gw_log, None);
    let (_agent, listen) =
        logged_agent(gw_addr, agent_monitor, &[], &agent_log, Some(FEW_FILES)).await;
    let warning = wait_for_log(
        &agent_log,
        &["--max-connections 10000 is more than the open-files limit allows"],
        Duration::from_secs(5),
    )
    .await;
    println!("agent: {warning}");
    ready(listen).await;

    let (served, reset, slowest) = flood_under_open_files_limit(listen, FLOOD).await;
    println!(
        "agent limited to {FEW_FILES} open files, {FLOOD} clients at once: {served} served, \
         {reset} reset (the slowest after {:.1} ms)",
        slowest.as_secs_f64() * 1e3
    );
    assert!(
        reset > 0,
        "every client was served: the limit was never reached"
    );
    assert!(served >= FEW_FILES / 2, "only {served} served");
    assert!(slowest < RESET_WITHIN, "a reset took {slowest:?}");
    wait_for_log(
        &agent_log,
        &["client reset", "out of file descriptors"],
        Duration::from_secs(5),
    )
    .await;
    // The monitor counted each reset (it answers once those clients are gone and descriptors
    // are free again), and new clients work again.
    assert_eq!(refusals(agent_monitor, "open-files").await, reset as f64);
    hold(listen, 1, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_out_of_descriptors_refuses_streams_and_keeps_its_backend_up() {
    raise_own_open_files(2 * FLOOD + 200);
    let backend = echo_backend_for_bursts().await;
    let (gw_monitor, agent_monitor) = (monitor_address(), monitor_address());
    let (gw_log, agent_log) = (log_path("fd-gw"), log_path("fd-gw-agent"));
    let (_gateway, gw_addr) = logged_gateway(backend, gw_monitor, &[], &gw_log, Some(FEW_FILES));
    let warning = wait_for_log(
        &gw_log,
        &["--max-streams 10000 is more than the open-files limit allows"],
        Duration::from_secs(5),
    )
    .await;
    println!("gateway: {warning}");
    let (_agent, listen) = logged_agent(gw_addr, agent_monitor, &[], &agent_log, None).await;
    ready(listen).await;

    let (served, reset, slowest) = flood_under_open_files_limit(listen, FLOOD).await;
    println!(
        "gateway limited to {FEW_FILES} open files, {FLOOD} clients at once: {served} served, \
         {reset} reset (the slowest after {:.1} ms)",
        slowest.as_secs_f64() * 1e3
    );
    assert!(
        reset > 0,
        "every client was served: the limit was never reached"
    );
    assert!(served >= FEW_FILES / 2, "only {served} served");
    assert!(slowest < RESET_WITHIN, "a reset took {slowest:?}");
    wait_for_log(
        &gw_log,
        &["stream refused", "out of file descriptors"],
        Duration::from_secs(5),
    )
    .await;
    let (_, _, body) = http_get(gw_monitor, "/metrics").await;
    assert_eq!(
        metric(
            &body,
            "ferry_connections_rejected_total",
            Some(("reason", "open-files"))
        ),
        reset as f64
    );
    // Running out of descriptors is the gateway's limit, not the backend's fault.
    let label = format!("tcp://{backend}");
    assert_eq!(
        metric(&body, "ferry_backend_up", Some(("address", &label))),
        1.0
    );
    hold(listen, 1, 10_000).await;
}
