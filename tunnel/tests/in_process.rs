//! An agent and a gateway run in this process, as library code, before an echo backend on
//! loopback: what `run(config, shutdown)` is for. A client's bytes go through and come back,
//! and on shutdown each side stops accepting, lets the connection still open finish, and
//! returns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_test_support::udp_echo_backend;
use ferry_transport::datagrams::Protection;
use ferry_transport::{ServerConfig, TransportConfig};
use ferry_tunnel::address::Address;
use ferry_tunnel::agent::{Agent, AgentConfig, Listen};
use ferry_tunnel::compress::Compression;
use ferry_tunnel::gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;

/// A TCP echo backend on loopback.
async fn echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn gateway_config(backend: SocketAddr) -> GatewayConfig {
    let backend = format!("tcp://{backend}").parse().unwrap();
    GatewayConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        services: HashMap::from([(String::new(), vec![backend])]),
        backend_max_streams: 0,
        server: ServerConfig::new(TransportConfig::default()),
        allow: None,
        connect_timeout: Duration::from_secs(3),
        drain_timeout: Duration::from_secs(20),
        proxy_protocol: None,
        compress: Compression::default(),
        monitor: None,
        udp_idle_timeout: Duration::from_secs(60),
        max_udp_flows: 1000,
        max_udp_flows_per_session: 1000,
    }
}

fn agent_config(gateway: SocketAddr) -> AgentConfig {
    AgentConfig {
        // Port 0, which the --listen flag refuses, asks for a free one.
        listen: vec![Listen {
            address: Address::Tcp {
                host: "127.0.0.1".into(),
                port: 0,
            },
            service: String::new(),
        }],
        gateways: vec![(gateway, TransportConfig::default())],
        links: 1,
        allow: None,
        max_connections: 100,
        session_wait: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(20),
        compress: Compression::default(),
        monitor: None,
        udp_idle_timeout: Duration::from_secs(60),
        udp_protect: Protection::Adaptive,
    }
}

/// A shutdown future and the sender that resolves it.
fn shutdown() -> (oneshot::Sender<()>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_and_a_gateway_run_in_process_and_drain_on_shutdown() {
    let backend = echo_backend().await;
    let gateway = Gateway::start(gateway_config(backend)).await.unwrap();
    let gateway_addr = gateway.local_addr();
    let (stop_gateway, gateway_shutdown) = shutdown();
    let gateway = tokio::spawn(gateway.run(gateway_shutdown));
    let agent = Agent::start(agent_config(gateway_addr)).await.unwrap();
    let listen = agent.tcp_addresses()[0];
    let (stop_agent, agent_shutdown) = shutdown();
    let agent = tokio::spawn(agent.run(agent_shutdown));

    let mut client = TcpStream::connect(listen).await.unwrap();
    client.write_all(b"through the tunnel").await.unwrap();
    client.shutdown().await.unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"through the tunnel");

    // A client still open when the agent is told to stop finishes its exchange.
    let mut open = TcpStream::connect(listen).await.unwrap();
    open.write_all(b"first half, ").await.unwrap();
    let mut echoed = [0; 12];
    open.read_exact(&mut echoed).await.unwrap();
    stop_agent.send(()).unwrap();
    // Once the listener is closed, no new client gets in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(listen).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent kept accepting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    open.write_all(b"second half").await.unwrap();
    open.shutdown().await.unwrap();
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"second half");

    let bound = Duration::from_secs(20);
    let agent_result = tokio::time::timeout(bound, agent)
        .await
        .expect("agent drained");
    agent_result.unwrap().expect("the agent drained cleanly");
    stop_gateway.send(()).unwrap();
    let gateway_result = tokio::time::timeout(bound, gateway)
        .await
        .expect("gateway drained");
    gateway_result
        .unwrap()
        .expect("the gateway drained cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_clients_are_carried_as_flows_each_getting_only_its_own_replies() {
    let tcp_backend = echo_backend().await;
    let udp_backend = udp_echo_backend().await;
    let mut gateway_config = gateway_config(tcp_backend);
    gateway_config.services.insert(
        String::new(),
        vec![
            format!("tcp://{tcp_backend}").parse().unwrap(),
            format!("udp://{udp_backend}").parse().unwrap(),
        ],
    );
    let gateway = Gateway::start(gateway_config).await.unwrap();
    let mut agent_config = agent_config(gateway.local_addr());
    agent_config.listen.push(Listen {
        address: Address::Udp {
            host: "127.0.0.1".into(),
            port: 0,
        },
        service: String::new(),
    });
    let agent = Agent::start(agent_config).await.unwrap();
    let listener = agent.udp_addresses()[0];
    let (stop_gateway, gateway_shutdown) = shutdown();
    let (stop_agent, agent_shutdown) = shutdown();
    let gateway_task = tokio::spawn(gateway.run(gateway_shutdown));
    let agent_task = tokio::spawn(agent.run(agent_shutdown));

    // 20 clients, each with a DNS-sized and a 1,400-byte datagram (two fragments at the
    // default packet size), all at once.
    let mut clients = Vec::new();
    for i in 0..20u8 {
        clients.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.connect(listener).await.unwrap();
            let mut backend_saw = None;
            for size in [60usize, 1400] {
                let payload: Vec<u8> = (0..size).map(|j| (j as u8).wrapping_add(i)).collect();
                let mut buf = vec![0u8; 4096];
                // UDP: a datagram may be lost (it is not here, on loopback, but a test
                // must not hang on it): resend until the reply comes.
                let n = loop {
                    socket.send(&payload).await.unwrap();
                    match tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await
                    {
                        Ok(r) => break r.unwrap(),
                        Err(_) => continue,
                    }
                };
                let reply = &buf[..n];
                let bar = reply.iter().position(|b| *b == b'|').unwrap();
                assert_eq!(&reply[bar + 1..], &payload[..], "client {i}, {size} bytes");
                let seen = String::from_utf8(reply[..bar].to_vec()).unwrap();
                // One flow per client: the backend sees one socket for both datagrams.
                assert_eq!(*backend_saw.get_or_insert(seen.clone()), seen, "client {i}");
            }
            backend_saw.unwrap()
        }));
    }
    let mut backend_sockets = std::collections::HashSet::new();
    for c in clients {
        let seen = tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("every client answered within 30 s")
            .unwrap();
        assert!(
            backend_sockets.insert(seen),
            "two clients shared a backend socket"
        );
    }
    let _ = stop_agent.send(());
    let _ = stop_gateway.send(());
    tokio::time::timeout(Duration::from_secs(30), agent_task)
        .await
        .expect("the agent stops")
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), gateway_task)
        .await
        .expect("the gateway stops")
        .unwrap()
        .unwrap();
}
