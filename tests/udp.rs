//! UDP flows through the real binaries on loopback: a UDP echo backend behind the gateway, UDP
//! clients before the agent. DNS-sized and 1,400-byte datagrams come back whole, many flows at
//! once each get only their own replies, idle flows are forgotten on both ends (and a client
//! that speaks again gets a new flow), and a flow over the gateway's limit is refused with a
//! reason on both sides.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use ferry_test_support::udp_echo_backend;
use tokio::net::UdpSocket;

/// A pair before a UDP echo backend: the gateway's and the agent's monitors, the agent's UDP
/// listener, and the processes (keep them alive).
struct Pair {
    listener: SocketAddr,
    gateway_monitor: SocketAddr,
    agent_monitor: SocketAddr,
    agent_log: std::path::PathBuf,
    _procs: (Proc, Proc),
}

async fn pair(gateway_extra: &[&str], agent_extra: &[&str]) -> Pair {
    let backend = udp_echo_backend().await;
    let gateway_monitor: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut args = vec![
        "--backend".to_owned(),
        format!("udp://{backend}"),
        "--monitor".to_owned(),
        gateway_monitor.to_string(),
    ];
    args.extend(gateway_extra.iter().map(|s| s.to_string()));
    let (gateway, gateway_addr) =
        common::gateway(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let listener: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let agent_monitor: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let agent_log = std::env::temp_dir().join(format!(
        "ferry-udp-{}-{}.log",
        std::process::id(),
        listener.port()
    ));
    let mut args = vec![
        "--listen".to_owned(),
        format!("udp://{listener}"),
        "--gateway".to_owned(),
        gateway_addr.to_string(),
        "--monitor".to_owned(),
        agent_monitor.to_string(),
    ];
    args.extend(agent_extra.iter().map(|s| s.to_string()));
    let agent = spawn_logged(env!("CARGO_BIN_EXE_ferry-agent"), &args, &agent_log);
    wait_ready(agent_monitor).await;
    Pair {
        listener,
        gateway_monitor,
        agent_monitor,
        agent_log,
        _procs: (gateway, agent),
    }
}

/// Checks `condition` every 20 ms until it holds (`Ok`); fails the test with its last `Err`
/// if it does not within `timeout`.
async fn eventually<F, Fut>(timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let why = match condition().await {
            Ok(()) => return,
            Err(why) => why,
        };
        assert!(std::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the agent's `/ready` answers 200: its gateway session is up.
async fn wait_ready(monitor: SocketAddr) {
    eventually(Duration::from_secs(20), || async move {
        let up = tokio::net::TcpStream::connect(monitor).await.is_ok()
            && http_get(monitor, "/ready").await.0 == 200;
        up.then_some(())
            .ok_or("the agent never became ready".to_owned())
    })
    .await;
}

/// Sends `payload` from `socket` until a reply comes (UDP: a datagram may be lost, though on
/// loopback it is not); returns the backend socket's address and the echoed bytes.
async fn ask(socket: &UdpSocket, payload: &[u8]) -> (String, Vec<u8>) {
    let mut buf = vec![0u8; 65536];
    for _ in 0..10 {
        socket.send(payload).await.unwrap();
        if let Ok(n) = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await {
            let reply = &buf[..n.unwrap()];
            let bar = reply
                .iter()
                .position(|b| *b == b'|')
                .expect("a prefixed reply");
            let seen = String::from_utf8(reply[..bar].to_vec()).unwrap();
            return (seen, reply[bar + 1..].to_vec());
        }
    }
    panic!("no reply to a {}-byte datagram in 20 s", payload.len());
}

async fn client(listener: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(listener).await.unwrap();
    socket
}

async fn metric_of(monitor: SocketAddr, name: &str, label: Option<(&str, &str)>) -> f64 {
    let (_, _, body) = http_get(monitor, "/metrics").await;
    metric(&body, name, label)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_udp_clients_get_their_own_replies_whole_through_the_binaries() {
    let pair = pair(&[], &["--udp-protect", "dup"]).await;
    let listener = pair.listener;
    let mut tasks = Vec::new();
    for i in 0..40u8 {
        tasks.push(tokio::spawn(async move {
            let socket = client(listener).await;
            let mut flow = None;
            for size in [48usize, 512, 1400, 4000] {
                let payload: Vec<u8> = (0..size).map(|j| (j as u8) ^ i).collect();
                let (seen, echoed) = ask(&socket, &payload).await;
                assert_eq!(echoed, payload, "client {i}: {size} bytes");
                assert_eq!(
                    *flow.get_or_insert(seen.clone()),
                    seen,
                    "client {i}: one flow"
                );
            }
            flow.unwrap()
        }));
    }
    let mut flows = std::collections::HashSet::new();
    for t in tasks {
        assert!(flows.insert(t.await.unwrap()), "two clients shared a flow");
    }
    let active = metric_of(pair.gateway_monitor, "ferry_udp_flows_active", None).await;
    assert_eq!(active, 40.0);
    let copies = metric_of(pair.agent_monitor, "ferry_udp_copies_sent_total", None).await;
    assert!(
        copies >= 160.0,
        "--udp-protect dup sent {copies} copies for 160 datagrams"
    );
    // Each copy that arrived after its datagram was suppressed: the clients above checked
    // every reply, and none came twice (a second reply would have been read as the next).
    let suppressed = metric_of(
        pair.gateway_monitor,
        "ferry_udp_duplicates_suppressed_total",
        None,
    )
    .await;
    assert!(suppressed > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_flows_are_forgotten_on_both_ends_and_a_client_that_speaks_again_gets_a_new_one() {
    let pair = pair(
        &["--udp-idle-timeout", "60s"],
        &["--udp-idle-timeout", "400ms"],
    )
    .await;
    let socket = client(pair.listener).await;
    let (first, _) = ask(&socket, b"hello").await;
    assert_eq!(
        metric_of(pair.gateway_monitor, "ferry_udp_flows_active", None).await,
        1.0
    );
    // The agent ends the flow after 400 ms of silence, and the gateway closes its backend
    // socket with it.
    let (agent_monitor, gateway_monitor) = (pair.agent_monitor, pair.gateway_monitor);
    eventually(Duration::from_secs(10), || async move {
        let agent = metric_of(agent_monitor, "ferry_udp_flows_active", None).await;
        let gateway = metric_of(gateway_monitor, "ferry_udp_flows_active", None).await;
        (agent == 0.0 && gateway == 0.0)
            .then_some(())
            .ok_or(format!(
                "idle flow still open: agent {agent}, gateway {gateway}"
            ))
    })
    .await;
    let (second, echoed) = ask(&socket, b"again").await;
    assert_eq!(echoed, b"again");
    assert_ne!(first, second, "a new flow, with a new backend socket");
    assert_eq!(
        metric_of(pair.gateway_monitor, "ferry_udp_flows_total", None).await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_over_the_gateways_limit_is_refused_with_a_reason_on_both_ends() {
    let pair = pair(&["--max-udp-flows", "2"], &[]).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let socket = client(pair.listener).await;
        ask(&socket, b"fits").await;
        open.push(socket);
    }
    let third = client(pair.listener).await;
    third.send(b"over the limit").await.unwrap();
    let line = wait_for_log(
        &pair.agent_log,
        &["UDP flow ended by the gateway", "a gateway limit"],
        Duration::from_secs(10),
    )
    .await;
    assert!(line.contains("127.0.0.1:"), "names the client: {line}");
    let refused = metric_of(
        pair.gateway_monitor,
        "ferry_udp_flows_refused_total",
        Some(("reason", "limit")),
    )
    .await;
    assert_eq!(refused, 1.0);
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.recv(&mut buf))
            .await
            .is_err(),
        "the refused client got a reply"
    );
    // The flows that fit are unharmed.
    for socket in &open {
        assert_eq!(ask(socket, b"still here").await.1, b"still here");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_client_outside_the_allow_list_is_refused_and_counted() {
    let pair = pair(&[], &["--allow-ip", "10.0.0.0/8"]).await;
    let socket = client(pair.listener).await;
    socket.send(b"let me in").await.unwrap();
    wait_for_log(
        &pair.agent_log,
        &["UDP datagram dropped", "not in --allow-ip", "127.0.0.1:"],
        Duration::from_secs(10),
    )
    .await;
    let refused = metric_of(
        pair.agent_monitor,
        "ferry_udp_flows_refused_total",
        Some(("reason", "allow-list")),
    )
    .await;
    assert_eq!(refused, 1.0);
    assert_eq!(
        metric_of(pair.gateway_monitor, "ferry_udp_flows_total", None).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_gateway_restart_a_udp_client_is_carried_again_within_seconds() {
    let backend = udp_echo_backend().await;
    let gateway_addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let gateway_args = vec![
        "--listen".to_owned(),
        gateway_addr.to_string(),
        "--backend".to_owned(),
        format!("udp://{backend}"),
    ];
    let gateway_bin = env!("CARGO_BIN_EXE_ferry-gateway");
    let mut gateway = spawn(gateway_bin, &gateway_args);
    let listener: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let agent_monitor: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let _agent = spawn(
        env!("CARGO_BIN_EXE_ferry-agent"),
        &[
            "--listen".to_owned(),
            format!("udp://{listener}"),
            "--gateway".to_owned(),
            gateway_addr.to_string(),
            "--monitor".to_owned(),
            agent_monitor.to_string(),
        ],
    );
    wait_ready(agent_monitor).await;
    let socket = client(listener).await;
    let (before, _) = ask(&socket, b"before").await;
    gateway.0.kill().unwrap();
    gateway.0.wait().unwrap();
    let _gateway = spawn(gateway_bin, &gateway_args);
    // The client keeps asking, as a DNS resolver or a game would; the flow on the dead session
    // ends, and a new one on the new session carries it.
    let started = std::time::Instant::now();
    let (after, echoed) = ask(&socket, b"after").await;
    assert_eq!(echoed, b"after");
    assert_ne!(before, after, "a new flow");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// The packet size each session of a monitor reports, once every session reports `want`.
async fn packet_sizes_reach(monitor: SocketAddr, want: u64) {
    eventually(Duration::from_secs(10), || async move {
        let (_, _, body) = http_get(monitor, "/connections?format=json").await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        let sizes: Vec<u64> = doc["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["datagram_size"].as_u64().unwrap())
            .collect();
        (!sizes.is_empty() && sizes.iter().all(|s| *s == want))
            .then_some(())
            .ok_or(format!("packet sizes {sizes:?}, not {want}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_discover_the_packet_size_the_path_carries_up_to_max_packet_size() {
    // Loopback carries any size: both ends grow to the default ceiling, one probe away.
    let default = pair(&[], &[]).await;
    packet_sizes_reach(default.agent_monitor, 1452).await;
    packet_sizes_reach(default.gateway_monitor, 1452).await;
    // An agent that asks for less keeps both ends there: the gateway is told.
    let small = pair(
        &["--max-packet-size", "9000"],
        &["--max-packet-size", "1300"],
    )
    .await;
    packet_sizes_reach(small.agent_monitor, 1300).await;
    packet_sizes_reach(small.gateway_monitor, 1300).await;
    // A 1,400-byte datagram then travels in two fragments, whole.
    let socket = client(small.listener).await;
    let payload = vec![7u8; 1400];
    assert_eq!(ask(&socket, &payload).await.1, payload);
}
