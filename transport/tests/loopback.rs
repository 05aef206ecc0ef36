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

/// An echo server, a client endpoint, and a connection between them (keep all three alive).
async fn connected_to_echo_server() -> (Endpoint, Endpoint, ferry_transport::Connection) {
    let server = echo_server();
    let client = Endpoint::client(loopback()).unwrap();
    let conn = client
        .connect(server.local_addr(), TransportConfig::default())
        .await
        .unwrap();
    (server, client, conn)
}

/// Starts a server that echoes every stream back to its sender.
fn echo_server() -> Endpoint {
    let server = Endpoint::server(loopback(), ServerConfig::default()).unwrap();
    tokio::spawn(ferry_transport::echo::serve(server.clone()));
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_are_echoed_back_intact_over_real_udp() {
    let (_server, _client, conn) = connected_to_echo_server().await;
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
    let (_server, _client, conn) = connected_to_echo_server().await;
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

/// The load the tunnel pair will put on one session: 200 concurrent streams, each echoing 1 MiB
/// of its own bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_each_echo_one_mib_intact() {
    let (_server, _client, conn) = connected_to_echo_server().await;
    echo_concurrently(&conn, 200, 1 << 20, 0, Duration::from_secs(120)).await;
}

/// Opens `streams` streams on `conn`, echoes `bytes` seeded random bytes through each at once,
/// and checks every byte that comes back, within `limit`.
async fn echo_concurrently(
    conn: &ferry_transport::Connection,
    streams: u64,
    bytes: usize,
    seed: u64,
    limit: Duration,
) {
    let mut tasks = Vec::new();
    for i in 0..streams {
        let stream = conn.open_stream().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(stream);
            let mut data = vec![0u8; bytes];
            rand_chacha::ChaCha8Rng::seed_from_u64(seed + i).fill_bytes(&mut data);
            let expected = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::with_capacity(bytes);
            r.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            assert!(
                back == expected,
                "stream {i}: echo differs ({} bytes back)",
                back.len()
            );
        }));
    }
    let all = tokio::time::timeout(limit, async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    assert!(all.is_ok(), "{streams} streams did not finish in {limit:?}");
}

/// A UDP relay on loopback between one client and a server: drops `loss` of the datagrams
/// (seeded) and delays the rest by `delay`, both ways. Returns the address clients should use.
async fn lossy_relay(server: SocketAddr, loss: f64, delay: Duration, seed: u64) -> SocketAddr {
    use std::sync::{Arc, Mutex};
    let front = Arc::new(tokio::net::UdpSocket::bind(loopback()).await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind(loopback()).await.unwrap());
    let addr = front.local_addr().unwrap();
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    let rng = Arc::new(Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
    let drop_it = move || (rng.lock().unwrap().next_u64() % 10_000) as f64 / 10_000.0 < loss;
    // Client -> server.
    {
        let (front, back, client, drop_it) =
            (front.clone(), back.clone(), client.clone(), drop_it.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                if drop_it() {
                    continue;
                }
                let (back, d) = (back.clone(), buf[..n].to_vec());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = back.send_to(&d, server).await;
                });
            }
        });
    }
    // Server -> client.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, _)) = back.recv_from(&mut buf).await {
            let Some(to) = *client.lock().unwrap() else {
                continue;
            };
            if drop_it() {
                continue;
            }
            let (front, d) = (front.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = front.send_to(&d, to).await;
            });
        }
    });
    addr
}

/// Real time, real sockets, 10% loss each way: the driver's timers (RTO, pacing, keepalive)
/// must repair what the simulator only tests in virtual time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_survive_ten_percent_loss_over_real_udp() {
    let server = echo_server();
    let relay = lossy_relay(server.local_addr(), 0.10, Duration::from_millis(10), 7).await;
    let client = Endpoint::client(loopback()).unwrap();
    let conn = client
        .connect(relay, TransportConfig::default())
        .await
        .unwrap();
    echo_concurrently(&conn, 8, 512 << 10, 100, Duration::from_secs(120)).await;
    let stats = conn.stats().unwrap();
    assert!(
        stats.packets_lost > 0,
        "the relay must have dropped packets: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_cross_real_udp_both_ways_whole_and_in_fragments() {
    use ferry_transport::datagrams::Protection;
    let server = Endpoint::server(loopback(), ServerConfig::default()).unwrap();
    let client = Endpoint::client(loopback()).unwrap();
    let conn = client
        .connect(server.local_addr(), TransportConfig::default())
        .await
        .unwrap();
    let accepted = server.accept().await.unwrap();
    // The server echoes every datagram on its flow, with the flow number added to each byte.
    let echo = tokio::spawn(async move {
        while let Some(d) = accepted.recv_datagram().await {
            let reply: Vec<u8> = d
                .data
                .iter()
                .map(|b| b.wrapping_add(d.flow as u8))
                .collect();
            accepted
                .send_datagram(d.flow, &reply, Protection::None)
                .unwrap();
        }
    });
    for (flow, size) in [(1u64, 60usize), (2, 1400), (3, 5000)] {
        let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
        conn.send_datagram(flow, &data, Protection::Duplicate)
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), conn.recv_datagram())
            .await
            .expect("a reply within 10 s")
            .expect("connection alive");
        assert_eq!(reply.flow, flow);
        let expected: Vec<u8> = data.iter().map(|b| b.wrapping_add(flow as u8)).collect();
        assert_eq!(reply.data, expected, "flow {flow}");
    }
    let stats = conn.stats().unwrap().datagrams;
    assert_eq!(stats.sent, 3);
    assert_eq!(stats.received, 3);
    conn.close(0, "done");
    tokio::time::timeout(Duration::from_secs(10), echo)
        .await
        .expect("the echo task ends with the connection")
        .unwrap();
}
