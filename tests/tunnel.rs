//! End to end: the real `ferry-agent` and `ferry-gateway` binaries on loopback, between a TCP
//! (or Unix-socket) client and in-test backends.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_each_echo_one_mib_through_the_pair() {
    let (backend, _) = echo_backend().await;
    let (_gw, gw_addr) = gateway(&["--backend", &format!("tcp://{backend}")]);
    let (_agent, listen) = agent(gw_addr, &[]).await;
    echo_concurrently(listen, 200, 1 << 20, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_resets_the_client_within_a_second_and_recovery_needs_no_restart() {
    let port = free_tcp_port();
    let backend: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_gw, gw_addr) = gateway(&["--backend", &format!("tcp://{backend}")]);
    let (_agent, listen) = agent(gw_addr, &[]).await;

    // Nothing listens on the backend port: the client must see a reset, quickly.
    let started = Instant::now();
    expect_reset(listen, "backend down").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "reset took {:?}",
        started.elapsed()
    );

    // The backend comes back on the same port: traffic resumes without restarting anything.
    let listener = TcpListener::bind(backend).await.unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = TcpStream::connect(listen).await.unwrap();
        match round_trip(s, b"ping".to_vec()).await {
            Ok(back) => {
                assert_eq!(back, b"ping");
                break;
            }
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "backend never came back into use"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_equal_backends_share_the_streams_evenly() {
    // On their own loopback address: their connections are counted exactly (see
    // `echo_backend_on`).
    let (b1, c1) = echo_backend_on("127.0.0.3").await;
    let (b2, c2) = echo_backend_on("127.0.0.3").await;
    let (b3, c3) = echo_backend_on("127.0.0.3").await;
    let list = format!("tcp://{b1},tcp://{b2},tcp://{b3}");
    let (_gw, gw_addr) = gateway(&["--backend", &list]);
    let (_agent, listen) = agent(gw_addr, &[]).await;
    ready(listen).await;
    let counters = [c1, c2, c3];
    let base: Vec<usize> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    // Concurrent, and every stream stays open (its echo came back: it reached its backend)
    // until all 150 have, so each was chosen while all the earlier ones were open.
    let all_open = Arc::new(tokio::sync::Barrier::new(150));
    let mut tasks = Vec::new();
    for i in 0..150u64 {
        let all_open = all_open.clone();
        tasks.push(tokio::spawn(async move {
            let s = TcpStream::connect(listen).await.unwrap();
            let (mut r, mut w) = tokio::io::split(s);
            w.write_all(&payload(i, 1000)).await.unwrap();
            let mut buf = vec![0u8; 1000];
            r.read_exact(&mut buf).await.unwrap();
            all_open.wait().await;
            w.shutdown().await.unwrap();
        }));
    }
    // A client that failed never reaches the barrier: the others would wait for it forever.
    tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("150 streams open at once within 60 s");
    let shares: Vec<usize> = counters
        .iter()
        .zip(&base)
        .map(|(c, b)| c.load(Ordering::SeqCst) - b)
        .collect();
    assert_eq!(shares.iter().sum::<usize>(), 150);
    for s in &shares {
        assert!(
            (40..=60).contains(s),
            "shares {shares:?} not within +-20% of 50"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_named_services_reach_their_own_pools_and_an_unknown_one_is_reset() {
    let web = tagged_echo_backend(b"web:").await;
    let db = tagged_echo_backend(b"db:").await;
    let (_gw, gw_addr) = gateway(&[
        "--service",
        &format!("web=tcp://{web}"),
        "--service",
        &format!("db=tcp://{db}"),
    ]);
    let web_port = free_tcp_port();
    let db_port = free_tcp_port();
    let other_port = free_tcp_port();
    let args = [
        "--listen".to_owned(),
        format!("tcp://127.0.0.1:{web_port}=web,tcp://127.0.0.1:{db_port}=db"),
        "--listen".to_owned(),
        format!("tcp://127.0.0.1:{other_port}=cache"),
        "--gateway".to_owned(),
        gw_addr.to_string(),
    ];
    let _agent = spawn(env!("CARGO_BIN_EXE_ferry-agent"), &args);
    for port in [web_port, db_port, other_port] {
        wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).await;
    }
    for _ in 0..3 {
        let s = TcpStream::connect(("127.0.0.1", web_port)).await.unwrap();
        assert_eq!(
            round_trip(s, b"hello".to_vec()).await.unwrap(),
            b"web:hello"
        );
    }
    let s = TcpStream::connect(("127.0.0.1", db_port)).await.unwrap();
    assert_eq!(round_trip(s, b"hello".to_vec()).await.unwrap(), b"db:hello");
    expect_reset(
        format!("127.0.0.1:{other_port}").parse().unwrap(),
        "unknown service",
    )
    .await;
}

/// A TCP backend that answers every connection with `tag` followed by the echo.
async fn tagged_echo_backend(tag: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if s.write_all(tag).await.is_ok() {
                    echo(s).await;
                }
            });
        }
    });
    addr
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_work_on_both_ends() {
    let dir = std::env::temp_dir().join(format!("ferry-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let backend_path: PathBuf = dir.join("backend.sock");
    let client_path: PathBuf = dir.join("client.sock");
    let _ = std::fs::remove_file(&backend_path);
    let listener = tokio::net::UnixListener::bind(&backend_path).unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
    let (_gw, gw_addr) = gateway(&["--backend", &format!("unix:{}", backend_path.display())]);
    let args = [
        "--listen".to_owned(),
        format!("unix:{}", client_path.display()),
        "--gateway".to_owned(),
        gw_addr.to_string(),
    ];
    let _agent = spawn(env!("CARGO_BIN_EXE_ferry-agent"), &args);
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        match tokio::net::UnixStream::connect(&client_path).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("agent's unix listener never came up: {e}"),
        }
    };
    let data = payload(9, 256 << 10);
    assert!(round_trip(s, data.clone()).await.unwrap() == data);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_is_found_again_without_restarting_the_agent() {
    let (backend, _) = echo_backend().await;
    let port = free_udp_port();
    let gw_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let gw_args = [
        "--listen".to_owned(),
        gw_addr.to_string(),
        "--backend".to_owned(),
        format!("tcp://{backend}"),
    ];
    let gw = spawn(env!("CARGO_BIN_EXE_ferry-gateway"), &gw_args);
    let (_agent, listen) = agent(gw_addr, &["--idle-timeout", "2s", "--session-wait", "10s"]).await;
    let s = TcpStream::connect(listen).await.unwrap();
    assert_eq!(round_trip(s, b"before".to_vec()).await.unwrap(), b"before");

    drop(gw); // killed
    let _gw = spawn(env!("CARGO_BIN_EXE_ferry-gateway"), &gw_args);
    // The agent notices (idle timeout), reconnects with backoff; new clients wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = TcpStream::connect(listen).await.unwrap();
        match round_trip(s, b"after".to_vec()).await {
            Ok(back) => {
                assert_eq!(back, b"after");
                break;
            }
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "agent never reconnected to the restarted gateway"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_transfer_to_completion() {
    let (backend, _) = echo_backend().await;
    // A short drain timeout: whichever process stops first, the other must not wait 30 s for
    // acknowledgements that will never come.
    let (gw, gw_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--drain-timeout",
        "5s",
    ]);
    let (agent_proc, listen) = agent(gw_addr, &["--drain-timeout", "5s"]).await;
    ready(listen).await;
    let s = TcpStream::connect(listen).await.unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let data = payload(5, 8 << 20);
    let expected = data.clone();
    w.write_all(&data[..1 << 20]).await.unwrap();
    // The transfer is in flight end to end once echoed bytes come back.
    let mut back = vec![0u8; 64 << 10];
    r.read_exact(&mut back).await.unwrap();
    // Both ends are asked to stop while most of the 8 MiB are still to come.
    for pid in [agent_proc.0.id(), gw.0.id()] {
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
    }
    let writer = tokio::spawn(async move {
        w.write_all(&data[1 << 20..]).await.unwrap();
        w.shutdown().await.unwrap();
    });
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert!(
        back == expected,
        "drained transfer intact ({} of {} bytes)",
        back.len(),
        expected.len()
    );
    // Both processes exit by themselves, successfully, once drained.
    for mut p in [agent_proc, gw] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = p.0.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit after draining"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_the_extra_client_with_a_reset() {
    let (backend, _) = echo_backend().await;
    let (_gw, gw_addr) = gateway(&["--backend", &format!("tcp://{backend}")]);
    let (_agent, listen) = agent(gw_addr, &["--max-connections", "2"]).await;
    ready(listen).await;
    // Hold two fully established connections (retrying while a probe's permit is released).
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        let mut held = Vec::new();
        for _ in 0..2 {
            let Ok(mut s) = TcpStream::connect(listen).await else {
                break;
            };
            let mut one = [0u8; 1];
            if s.write_all(b"x").await.is_ok() && s.read_exact(&mut one).await.is_ok() {
                held.push(s);
            }
        }
        if held.len() == 2 {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "could not establish two connections under the limit"
        );
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    expect_reset(listen, "third client over --max-connections 2").await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_ip_refuses_ipv4_and_ipv6_clients_outside_the_list() {
    let (backend, _) = echo_backend().await;
    let (_gw, gw_addr) = gateway(&["--backend", &format!("tcp://{backend}")]);
    // IPv4 loopback allowed only as 127.0.0.2; the client connects from 127.0.0.1.
    let port = free_tcp_port();
    let args = [
        "--listen".to_owned(),
        format!("tcp://127.0.0.1:{port}"),
        "--gateway".to_owned(),
        gw_addr.to_string(),
        "--allow-ip".to_owned(),
        "127.0.0.2/32,10.0.0.0/8".to_owned(),
    ];
    let _agent = spawn(env!("CARGO_BIN_EXE_ferry-agent"), &args);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).await;
    expect_reset(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "IPv4 client outside the list",
    )
    .await;

    // An IPv6 listener with an IPv4-only list: ::1 must not slip past.
    let Ok(probe) = std::net::TcpListener::bind("[::1]:0") else {
        return ferry_test_support::skip("ipv6", "no IPv6 loopback for the test's IPv6 half");
    };
    let v6_port = probe.local_addr().unwrap().port();
    drop(probe);
    let args = [
        "--listen".to_owned(),
        format!("tcp://[::1]:{v6_port}"),
        "--gateway".to_owned(),
        gw_addr.to_string(),
        "--allow-ip".to_owned(),
        "127.0.0.0/8".to_owned(),
    ];
    let _agent6 = spawn(env!("CARGO_BIN_EXE_ferry-agent"), &args);
    let addr6: SocketAddr = format!("[::1]:{v6_port}").parse().unwrap();
    wait_listening(addr6).await;
    expect_reset(addr6, "IPv6 client against an IPv4 list").await;
}

/// The README's quick start: the demo brings up a real pair and proves it with a 16 MiB echo.
#[test]
fn the_quick_start_demo_brings_up_a_working_pair() {
    // The demo's monitors listen at these ports + 1000: held too.
    let client = format!("127.0.0.1:{}", free_port_and_its_monitor());
    let gateway = format!("127.0.0.1:{}", free_port_and_its_monitor());
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-demo"))
        .args(["--check-only", "--client", &client, "--gateway", &gateway])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("16 MiB echoed intact"), "{stdout}");
}

/// The quick start's "try it" line without `nc`: `ferry-demo --send` in another terminal sends a
/// line through the running pair and prints the echo; with no pair running it says to start
/// one.
#[test]
fn the_demo_sends_a_line_through_a_running_pair_without_nc() {
    use std::io::BufRead;
    // The demo's monitors listen at these ports + 1000: held too.
    let client = format!("127.0.0.1:{}", free_port_and_its_monitor());
    let gateway = format!("127.0.0.1:{}", free_port_and_its_monitor());
    let demo = env!("CARGO_BIN_EXE_ferry-demo");
    let send = || {
        Command::new(demo)
            .args(["--client", &client, "--send", "hello through ferry"])
            .output()
            .unwrap()
    };
    let before = send();
    assert!(!before.status.success());
    let why = String::from_utf8_lossy(&before.stderr);
    assert!(why.contains("start the pair first"), "{why}");

    let mut pair = Command::new(demo)
        .args(["--client", &client, "--gateway", &gateway])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = pair.stdout.take().unwrap();
    let mut pair = Proc(pair);
    // The demo prints its "Try it" lines once its own 16 MiB check has passed.
    let mut lines = std::io::BufReader::new(stdout).lines();
    let try_it = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.starts_with("Try it"))
        .expect("the demo printed what to try");
    assert!(try_it.contains("--send"), "{try_it}");
    let out = send();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello through ferry\n"
    );

    // Ctrl-C stops the demo and both of its processes (a kill would leave them running).
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pair.0.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while pair.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    while std::net::TcpStream::connect(&client).is_ok() {
        assert!(Instant::now() < deadline, "the demo's agent outlived it");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_tells_the_backend_the_real_client_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                // Read the header line, report it, then echo the rest.
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while !line.ends_with(b"\r\n") && line.len() < 108 {
                    if s.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    line.push(byte[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                echo(s).await;
            });
        }
    });
    let (_gw, gw_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--proxy-protocol",
        "v1",
    ]);
    let (_agent, listen) = agent(gw_addr, &[]).await;
    ready(listen).await;
    while rx.try_recv().is_ok() {} // headers of the readiness probes
    let s = TcpStream::connect(listen).await.unwrap();
    let client = s.local_addr().unwrap();
    assert_eq!(
        round_trip(s, b"payload".to_vec()).await.unwrap(),
        b"payload"
    );
    // Source: the client as the agent saw it; destination: the agent address it connected to.
    // A readiness probe that gave up before the session was up may still reach the backend
    // after this client's stream: skip headers of other clients.
    let expected = format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        client.ip(),
        listen.ip(),
        client.port(),
        listen.port()
    );
    let mut seen = Vec::new();
    loop {
        let header = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no header {expected:?} among {seen:?}"))
            .unwrap();
        if header == expected {
            break;
        }
        seen.push(header);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_read_their_settings_from_a_toml_config_file() {
    let (backend, _) = echo_backend().await;
    let dir = std::env::temp_dir().join(format!("ferry-e2e-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gw_addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let gw_file = dir.join("gateway.toml");
    let agent_file = dir.join("agent.toml");
    std::fs::write(
        &gw_file,
        format!("listen = \"{gw_addr}\"\nbackend = [\"tcp://{backend}\"]\nmax-streams = 64\nconnect-timeout = \"2s\"\n"),
    )
    .unwrap();
    // `links = 2` in the file, `--links 1` on the command line: flags override the file.
    std::fs::write(
        &agent_file,
        format!("listen = [\"tcp://{listen}\"]\ngateway = [\"{gw_addr}\"]\nlinks = 2\n"),
    )
    .unwrap();
    let _gw = spawn(
        env!("CARGO_BIN_EXE_ferry-gateway"),
        &["--config".to_owned(), gw_file.display().to_string()],
    );
    let _agent = spawn(
        env!("CARGO_BIN_EXE_ferry-agent"),
        &[
            "--config".to_owned(),
            agent_file.display().to_string(),
            "--links".to_owned(),
            "1".to_owned(),
        ],
    );
    wait_listening(listen).await;
    ready(listen).await;
    let s = TcpStream::connect(listen).await.unwrap();
    assert_eq!(
        round_trip(s, b"configured".to_vec()).await.unwrap(),
        b"configured"
    );
    // A bad key fails at start with a clear error.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "no-such-flag = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-gateway"))
        .args(["--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gets_fewer_streams() {
    let (fast, fast_count) = echo_backend().await;
    // The slow backend answers each connection 300 ms late, so its streams stay open longer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = listener.local_addr().unwrap();
    let slow_count = Arc::new(AtomicUsize::new(0));
    let counter = slow_count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                echo(s).await;
            });
        }
    });
    let (_gw, gw_addr) = gateway(&["--backend", &format!("tcp://{slow},tcp://{fast}")]);
    let (_agent, listen) = agent(gw_addr, &[]).await;
    ready(listen).await;
    let (slow0, fast0) = (
        slow_count.load(Ordering::SeqCst),
        fast_count.load(Ordering::SeqCst),
    );
    // Clients arrive one after another, each making one request: the next comes once this
    // one's stream has reached a backend and, if that was the fast one, its echo is done.
    // So at each arrival the fast backend has no stream open and the slow one has those of
    // the last 300 ms: only the load decides, however fast or slow this machine is.
    let fast_done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let done = fast_done.clone();
        let to_slow = slow_count.clone();
        tasks.push(tokio::spawn(async move {
            let before = to_slow.load(Ordering::SeqCst);
            let s = TcpStream::connect(listen).await.unwrap();
            assert_eq!(
                round_trip(s, payload(i, 100)).await.unwrap(),
                payload(i, 100)
            );
            if to_slow.load(Ordering::SeqCst) == before {
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
        let placed = i as usize + 1;
        wait_until(
            &format!("client {i} placed, and served if it went to the fast backend"),
            Duration::from_secs(10),
            || {
                let slow = slow_count.load(Ordering::SeqCst) - slow0;
                let fast = fast_count.load(Ordering::SeqCst) - fast0;
                slow + fast == placed && fast_done.load(Ordering::SeqCst) == fast
            },
        )
        .await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let slow_share = slow_count.load(Ordering::SeqCst) - slow0;
    let fast_share = fast_count.load(Ordering::SeqCst) - fast0;
    assert_eq!(slow_share + fast_share, 60);
    assert!(
        slow_share * 3 < fast_share,
        "slow {slow_share} vs fast {fast_share}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_connections_arrive_intact_through_loss_delay_and_reordering() {
    let (backend, _) = echo_backend().await;
    let (_gw, gw_addr) = gateway(&["--backend", &format!("tcp://{backend}")]);
    let (relay, counts) = impairment_relay(
        gw_addr,
        Impairment {
            loss: 0.10,
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(10),
            seed: 0xfe11_0001,
            ..Impairment::default()
        },
    )
    .await;
    let (_agent, listen) = agent(relay, &[]).await;
    ready(listen).await;
    echo_concurrently(listen, 20, 256 << 10, 1000).await;
    // The link really was impaired: about a tenth dropped, and some datagrams overtaken.
    let forwarded = counts.forwarded.load(Ordering::Relaxed) as f64;
    let dropped = counts.dropped.load(Ordering::Relaxed) as f64;
    let loss = dropped / (forwarded + dropped);
    assert!((0.07..0.13).contains(&loss), "relay loss rate {loss:.3}");
    assert!(
        counts.reordered.load(Ordering::Relaxed) > 100,
        "too little reordering to test anything"
    );
}
