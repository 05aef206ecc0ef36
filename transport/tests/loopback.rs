//! Real UDP on loopback through the tokio driver.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_transport::{Endpoint, ServerConfig, TransportConfig};
use rand_chacha::rand_core::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPBACK: &str = "127.0.0.1:0";

fn loopback() -> SocketAddr {
    LOOPBACK.parse().unwrap()
}

/// Starts a server that echoes every stream back to its sender.
fn echo_server() -> Endpoint {
    let server = Endpoint::server(loopback(), ServerConfig::default()).unwrap();
    tokio::spawn(ferry_transport::echo::serve(server.clone()));
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_are_echoed_back_intact_over_real_udp() {
    let server = echo_server();
    let client = Endpoint::client(loopback()).unwrap();
    let conn = client
        .connect(server.local_addr(), TransportConfig::default())
        .await
        .unwrap();
    let stream = conn.open_stream().await.unwrap();
    let (mut reader, mut writer) = tokio::io::split(stream);

    const TOTAL: usize = 64 << 20;
    let writer_task = tokio::spawn(async move {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(64);
        let mut chunk = vec![0u8; 256 << 10];
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut sent = 0;
        while sent < TOTAL {
            rng.fill_bytes(&mut chunk);
            writer.write_all(&chunk).await.unwrap();
            hash.update(&chunk);
            sent += chunk.len();
        }
        writer.shutdown().await.unwrap();
        hash.finish()
    });
    let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 256 << 10];
    let mut received = 0;
    let read = tokio::time::timeout(Duration::from_secs(240), async {
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            received += n;
        }
    })
    .await;
    assert!(read.is_ok(), "echo timed out after {received} bytes");
    let sent_hash = writer_task.await.unwrap();
    assert_eq!(received, TOTAL);
    assert_eq!(
        hash.finish().as_ref(),
        sent_hash.as_ref(),
        "echoed bytes differ"
    );
}

#[tokio::test]
async fn handshake_to_a_silent_port_times_out_with_a_reason() {
    // A bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind(loopback()).unwrap();
    let client = Endpoint::client(loopback()).unwrap();
    let config = TransportConfig {
        handshake_timeout: Duration::from_millis(300),
        ..TransportConfig::default()
    };
    let err = client
        .connect(silent.local_addr().unwrap(), config)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("handshake timed out"), "{err}");
}

#[tokio::test]
async fn many_streams_each_way_on_one_connection() {
    let server = echo_server();
    let client = Endpoint::client(loopback()).unwrap();
    let conn = client
        .connect(server.local_addr(), TransportConfig::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..50u8 {
        let stream = conn.open_stream().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(stream);
            let msg = vec![i; 10_000 + i as usize];
            w.write_all(&msg).await.unwrap();
            w.shutdown().await.unwrap();
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
