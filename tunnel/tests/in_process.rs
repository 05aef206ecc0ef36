//! An agent and a gateway run in this process, as library code, before an echo backend on
//! loopback: what `run(config, shutdown)` is for. A client's bytes go through and come back,
//! and on shutdown each side stops accepting, lets the connection still open finish, and
//! returns.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_transport::{ServerConfig, TransportConfig};
use ferry_tunnel::address::Address;
use ferry_tunnel::agent::{Agent, AgentConfig, Listen};
use ferry_tunnel::compress::Codec;
use ferry_tunnel::gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
        compress: Codec::None,
        monitor: None,
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
        compress: Codec::None,
        monitor: None,
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
