//! What the outer sockets see when a session dies, and how soon the tunnel works again, with
//! the real binaries on loopback: a gateway killed and restarted, an agent killed, a link down
//! for longer than the idle timeout, and a shorter outage that must cost nothing.
//!
//! A download (the client sends one byte, the backend streams until the socket fails) lets
//! the client be a pure reader, so what it sees is exactly what the agent did to its socket: a
//! reset is `ConnectionReset`, a clean close would be end-of-file. (With a reader and a writer
//! on one socket, Linux reports a reset once, to whichever call comes first; the other then
//! sees end-of-file or a broken pipe.) An upload to a backend that only reads does the same
//! for the gateway's side.

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A backend that, on each connection, answers "pong\n" to a first byte `p`, and to any
/// other first byte streams data until the socket fails.
async fn source_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if s.read_exact(&mut first).await.is_err() {
                    return;
                }
                if first[0] == b'p' {
                    let _ = s.write_all(b"pong\n").await;
                    let _ = s.shutdown().await;
                    return;
                }
                let chunk = vec![0x5au8; 64 << 10];
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

/// A backend that reads each connection to its end and reports how it ended; the counter
/// is every byte it has read so far, of all connections.
async fn sink_backend() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(u64, std::io::Result<()>)>,
    Arc<AtomicU64>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let progress = Arc::new(AtomicU64::new(0));
    let seen = progress.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (tx, seen) = (tx.clone(), seen.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut total = 0u64;
                let end = loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            total += n as u64;
                            seen.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => break Err(e),
                    }
                };
                let _ = tx.send((total, end));
            });
        }
    });
    (addr, rx, progress)
}

/// Waits until `progress` has counted some bytes.
async fn some_bytes_arrived(progress: &AtomicU64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no byte reached the backend");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next connection end `ends` reports, skipping empty connections (the agent's start-up
/// probe, `wait_listening`, makes one).
async fn next_upload_end(
    ends: &mut mpsc::UnboundedReceiver<(u64, std::io::Result<()>)>,
) -> (u64, std::io::Result<()>) {
    let upload_end = async {
        loop {
            match ends.recv().await {
                Some((0, Ok(()))) => continue,
                Some(end) => return end,
                None => panic!("the backend stopped"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), upload_end)
        .await
        .expect("the backend connection ended")
}

/// Starts a download through `listen`; returns once `min_bytes` arrived, with the task that
/// reads the rest and returns (bytes, how the read ended, when).
async fn start_download(
    listen: SocketAddr,
    min_bytes: u64,
) -> tokio::task::JoinHandle<(u64, std::io::Result<()>, Instant)> {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"d").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        let mut tx = Some(tx);
        let end = loop {
            match s.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => total += n as u64,
                Err(e) => break Err(e),
            }
            if total >= min_bytes {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(());
                }
            }
        };
        (total, end, Instant::now())
    });
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("the download started")
        .expect("the download task runs");
    task
}

/// One short request/response through `listen`, with a deadline.
async fn ping(listen: SocketAddr) -> bool {
    let attempt = async {
        let s = TcpStream::connect(listen).await.ok()?;
        round_trip(s, b"p".to_vec()).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(back)) if back == b"pong\n"
    )
}

/// Polls [`ping`] until it works; returns how long that took from `since`.
async fn first_working_connection(listen: SocketAddr, since: Instant, limit: Duration) -> Duration {
    loop {
        if ping(listen).await {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "no working connection within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A gateway before `backend` on a fixed UDP port, and how to start it (again, after a kill).
fn restartable_gateway(backend: SocketAddr) -> (SocketAddr, impl Fn() -> Proc) {
    let gw_addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let args = [
        "--listen".to_owned(),
        gw_addr.to_string(),
        "--backend".to_owned(),
        format!("tcp://{backend}"),
    ];
    (gw_addr, move || {
        spawn(env!("CARGO_BIN_EXE_ferry-gateway"), &args)
    })
}

/// Kills a process with SIGKILL, as a crash would, and reaps it.
fn kill(mut proc: Proc) {
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
}

fn expect_reset(what: &str, end: &std::io::Result<()>, bytes: u64) {
    match end {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{what}: {e}"),
        Ok(()) => {
            panic!("{what}: a clean end-of-file after {bytes} bytes of an unfinished transfer")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_resets_its_clients_and_its_restart_serves_within_a_second() {
    let (gw_addr, start_gateway) = restartable_gateway(source_backend().await);
    let gw = start_gateway();
    let (_agent, listen) = agent(gw_addr, &[]).await;
    ready_ping(listen).await;

    let download = start_download(listen, 4 << 20).await;
    let killed = Instant::now();
    kill(gw);
    let (bytes, end, at) = download.await.unwrap();
    expect_reset("client of a killed gateway", &end, bytes);
    let noticed = at - killed;
    eprintln!("client reset {noticed:?} after the gateway was killed ({bytes} bytes read)");
    assert!(noticed < Duration::from_secs(3), "{noticed:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Instant::now();
    let _gw = start_gateway();
    let took = first_working_connection(listen, restarted, Duration::from_secs(10)).await;
    eprintln!("first working connection {took:?} after the gateway restarted");
    // The target is one second; a loaded CI machine gets a little slack.
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_behind_a_live_link_resets_the_old_session_statelessly() {
    // Through a relay, the agent's socket hears no ICMP from the dead gateway: only the
    // restarted gateway's stateless reset can end the old session before its idle timeout.
    let (gw_addr, start_gateway) = restartable_gateway(source_backend().await);
    let gw = start_gateway();
    let (relay, _) = impairment_relay(gw_addr, Impairment::default()).await;
    let (_agent, listen) = agent(relay, &[]).await;
    ready_ping(listen).await;
    let download = start_download(listen, 4 << 20).await;
    kill(gw);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarted = Instant::now();
    let _gw = start_gateway();
    let (bytes, end, at) = download.await.unwrap();
    expect_reset("client of a restarted gateway", &end, bytes);
    eprintln!(
        "client reset {:?} after the restart (stateless reset)",
        at.saturating_duration_since(restarted)
    );
    assert!(at.saturating_duration_since(restarted) < Duration::from_secs(3));
    let took = first_working_connection(listen, restarted, Duration::from_secs(10)).await;
    eprintln!("first working connection {took:?} after the gateway restarted");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

/// Waits until a ping through `listen` works.
async fn ready_ping(listen: SocketAddr) {
    first_working_connection(listen, Instant::now(), Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_resets_the_backend_connection_once_the_gateway_gives_up() {
    let (backend, mut ends, progress) = sink_backend().await;
    let (_gw, gw_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--idle-timeout",
        "2s",
    ]);
    let (agent_proc, listen) = agent(gw_addr, &["--idle-timeout", "2s"]).await;
    let mut s = TcpStream::connect(listen).await.unwrap();
    let chunk = vec![7u8; 64 << 10];
    for _ in 0..32 {
        s.write_all(&chunk).await.unwrap();
    }
    // Kill the agent mid-upload, once the backend has some of it.
    some_bytes_arrived(&progress).await;
    let killed = Instant::now();
    kill(agent_proc);
    let (bytes, end) = next_upload_end(&mut ends).await;
    expect_reset("backend of a killed agent", &end, bytes);
    eprintln!(
        "backend reset {:?} after the agent was killed (idle timeout 2 s)",
        killed.elapsed()
    );
}

/// A pair through a relay whose link can be cut; both ends' idle timeouts `idle`.
async fn pair_through_relay(
    idle: &str,
) -> (
    Vec<Proc>,
    SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let backend = source_backend().await;
    let (gw, gw_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--idle-timeout",
        idle,
    ]);
    let link = Impairment::default();
    let down = link.down.clone();
    let (relay, _) = impairment_relay(gw_addr, link).await;
    let (agent_proc, listen) = agent(relay, &["--idle-timeout", idle]).await;
    ready_ping(listen).await;
    (vec![gw, agent_proc], listen, down)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_idle_timeout_resets_the_client_and_recovers_within_a_second() {
    let (_procs, listen, down) = pair_through_relay("2s").await;
    let download = start_download(listen, 1 << 20).await;
    let cut = Instant::now();
    down.store(true, Ordering::SeqCst);
    let (bytes, end, at) = download.await.unwrap();
    expect_reset("client during an outage", &end, bytes);
    eprintln!(
        "client reset {:?} into the outage (idle timeout 2 s)",
        at - cut
    );
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(cut.elapsed())).await;
    let back = Instant::now();
    down.store(false, Ordering::SeqCst);
    let took = first_working_connection(listen, back, Duration::from_secs(10)).await;
    eprintln!("first working connection {took:?} after the link came back");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_outage_costs_no_byte() {
    let (backend, _) = echo_backend().await;
    let (_gw, gw_addr) = gateway(&["--backend", &format!("tcp://{backend}")]);
    let link = Impairment::default();
    let down = link.down.clone();
    let (relay, counts) = impairment_relay(gw_addr, link).await;
    let (_agent, listen) = agent(relay, &[]).await;
    ready(listen).await;
    let data = payload(5, 16 << 20);
    let s = TcpStream::connect(listen).await.unwrap();
    let before = counts.forwarded_bytes.load(Ordering::SeqCst);
    let echo = tokio::spawn(round_trip(s, data.clone()));
    // The outage begins mid-transfer: once 1 MiB of it has crossed the link.
    wait_until("the transfer under way", Duration::from_secs(20), || {
        counts.forwarded_bytes.load(Ordering::SeqCst) - before >= 1 << 20
    })
    .await;
    down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let back = Instant::now();
    down.store(false, Ordering::SeqCst);
    let got = tokio::time::timeout(Duration::from_secs(60), echo)
        .await
        .expect("the echo finished after the outage")
        .unwrap()
        .expect("no error");
    assert!(
        got == data,
        "{} of {} bytes, or content differs",
        got.len(),
        data.len()
    );
    eprintln!(
        "16 MiB echo finished intact {:?} after a 5 s outage ended",
        back.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_resets_its_own_clients() {
    // The client only reads, so the agent's socket holds nothing unread: without a zero
    // linger set in advance, the kernel would close it with a FIN when the agent dies.
    let (_gw, gw_addr) = gateway(&["--backend", &format!("tcp://{}", source_backend().await)]);
    let (agent_proc, listen) = agent(gw_addr, &[]).await;
    ready_ping(listen).await;
    let download = start_download(listen, 4 << 20).await;
    kill(agent_proc);
    let (bytes, end, _) = tokio::time::timeout(Duration::from_secs(10), download)
        .await
        .expect("the client's read ended")
        .unwrap();
    expect_reset("client of a killed agent", &end, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_resets_its_own_backend_connections() {
    // The backend only reads, so the gateway's socket holds nothing unread (as above).
    let (backend, mut ends, progress) = sink_backend().await;
    let (gw_addr, start_gateway) = restartable_gateway(backend);
    let gw = start_gateway();
    let (_agent, listen) = agent(gw_addr, &[]).await;
    let mut s = TcpStream::connect(listen).await.unwrap();
    let chunk = vec![7u8; 64 << 10];
    // The upload runs until the tunnel fails; the gateway dies once the backend has some.
    let upload = tokio::spawn(async move { while s.write_all(&chunk).await.is_ok() {} });
    some_bytes_arrived(&progress).await;
    kill(gw);
    let (bytes, end) = next_upload_end(&mut ends).await;
    expect_reset("backend of a killed gateway", &end, bytes);
    upload.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_still_open_when_the_drain_timeout_ends_are_reset_on_both_sides() {
    // Two transfers that never finish by themselves: a download from a backend that streams
    // forever, an upload into a backend that reads forever.
    let source = source_backend().await;
    let (sink, mut ends, progress) = sink_backend().await;
    let (gw, gw_addr) = gateway(&[
        "--service",
        &format!("down=tcp://{source}"),
        "--service",
        &format!("up=tcp://{sink}"),
        "--drain-timeout",
        "1s",
    ]);
    let down_port = free_tcp_port();
    let up_port = free_tcp_port();
    let agent_monitor: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let (_agent, _) = agent(
        gw_addr,
        &[
            "--monitor",
            &agent_monitor.to_string(),
            "--listen",
            &format!("tcp://127.0.0.1:{down_port}=down"),
            "--listen",
            &format!("tcp://127.0.0.1:{up_port}=up"),
        ],
    )
    .await;
    let down: SocketAddr = format!("127.0.0.1:{down_port}").parse().unwrap();
    let up: SocketAddr = format!("127.0.0.1:{up_port}").parse().unwrap();
    ready_ping(down).await;
    let download = start_download(down, 1 << 20).await;
    let mut s = TcpStream::connect(up).await.unwrap();
    let chunk = vec![7u8; 64 << 10];
    let upload = tokio::spawn(async move { while s.write_all(&chunk).await.is_ok() {} });
    some_bytes_arrived(&progress).await;

    let asked = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &gw.0.id().to_string()])
        .status()
        .unwrap();
    let (bytes, end, at) = tokio::time::timeout(Duration::from_secs(10), download)
        .await
        .expect("the download ended")
        .unwrap();
    expect_reset("client of a gateway whose drain timed out", &end, bytes);
    let (up_bytes, up_end) = next_upload_end(&mut ends).await;
    expect_reset(
        "backend of a gateway whose drain timed out",
        &up_end,
        up_bytes,
    );
    eprintln!(
        "drain timeout 1 s: client reset {:?} after SIGTERM",
        at - asked
    );
    assert!(
        at - asked >= Duration::from_millis(900),
        "reset before the drain timeout"
    );
    upload.abort();
    // The gateway said so in the session (not left to ICMP, which a NAT may not pass, or to
    // the agent's idle timeout). The agent records the closed session as it ends it, which may
    // come just after the streams' resets reached their sockets: wait for the record.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, body) = http_get(agent_monitor, "/stats-history?format=json").await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(reason) = doc["closed"][0]["reason"].as_str() {
            assert!(reason.contains("drain timeout passed"), "{doc}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no closed session recorded: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An agent started before its gateway is reachable says at once that it is connecting, and why
/// it cannot as soon as it knows: a closed port answers with ICMP port unreachable, which fails
/// the attempt at once; a silent address (a socket that never reads, so no ICMP either) is
/// reported after two seconds, long before the handshake's 10 s timeout.
#[tokio::test]
async fn an_agent_says_at_once_that_its_gateway_cannot_be_reached() {
    let log = |name: &str| {
        std::env::temp_dir().join(format!("ferry-recovery-{}-{name}.log", std::process::id()))
    };
    let args = |gateway: SocketAddr| -> Vec<String> {
        [
            "--listen",
            &format!("tcp://127.0.0.1:{}", free_tcp_port()),
            "--gateway",
            &gateway.to_string(),
            "--session-wait",
            "100ms",
        ]
        .map(String::from)
        .to_vec()
    };

    // A closed port: refused at once.
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let closed_log = log("closed-gateway");
    let start = Instant::now();
    let _agent = spawn_logged_at(
        env!("CARGO_BIN_EXE_ferry-agent"),
        &args(closed),
        &closed_log,
        "info",
    );
    let line = wait_for_log(
        &closed_log,
        &["connecting to gateway", &closed.to_string()],
        Duration::from_secs(5),
    )
    .await;
    println!("closed port: {line}");
    let line = wait_for_log(
        &closed_log,
        &["cannot reach gateway", &closed.to_string()],
        Duration::from_secs(5),
    )
    .await;
    let refused_after = start.elapsed();
    println!("closed port, after {refused_after:?}: {line}");
    assert!(refused_after < Duration::from_secs(2), "{refused_after:?}");

    // A silent address: reported after two seconds, not at the handshake timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let silent_log = log("silent-gateway");
    let start = Instant::now();
    let _agent = spawn_logged(
        env!("CARGO_BIN_EXE_ferry-agent"),
        &args(silent_addr),
        &silent_log,
    );
    let line = wait_for_log(
        &silent_log,
        &["no answer from the gateway yet", &silent_addr.to_string()],
        Duration::from_secs(6),
    )
    .await;
    let reported_after = start.elapsed();
    println!("silent address, after {reported_after:?}: {line}");
    assert!(
        reported_after >= Duration::from_secs(2) && reported_after < Duration::from_secs(6),
        "{reported_after:?}"
    );
    let _ = std::fs::remove_file(closed_log);
    let _ = std::fs::remove_file(silent_log);
}
