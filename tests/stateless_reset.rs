//! End to end: what the real gateway answers to datagrams for sessions it does not know (a
//! flood of them, as a restarted gateway sees from its old agents or an attacker can send),
//! and what forged stateless resets do to a live agent (nothing but a counted drop).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::{TcpStream, UdpSocket};

/// Longest stateless reset the protocol sends (`stateless_reset::MAX_RESET_LEN`).
const MAX_RESET_LEN: usize = 46;
/// Datagrams this short cannot hold a reset smaller than themselves and are never answered.
const SHORTEST_ANSWERED: usize = 31;
/// The gateway's default reset rate (`ServerConfig::stateless_reset_rate`), per second, and
/// its burst.
const RESET_RATE: f64 = 1000.0;

/// A short-header datagram of `len` bytes for a random, unknown connection ID.
fn unknown_short(seed: u64, len: usize) -> Vec<u8> {
    let mut d = payload(seed, len);
    d[0] = 0x40;
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_datagrams_gets_few_small_resets_and_forged_resets_change_nothing() {
    let (backend, _) = echo_backend().await;
    let gw_monitor: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent_monitor: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_gw, gw_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--monitor",
        &gw_monitor.to_string(),
    ]);
    // Every 8th short packet toward the agent comes with a forged reset beside it.
    let link = Impairment {
        attack: Attack {
            forge_reset_every: 8,
            ..Attack::default()
        },
        ..Impairment::default()
    };
    let (relay, relay_counts) = impairment_relay(gw_addr, link).await;
    let (_agent, listen) = agent(relay, &["--monitor", &agent_monitor.to_string()]).await;
    ready(listen).await;

    // One at a time: every answer is a reset shorter than what caused it; datagrams too short
    // to be real get none.
    let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    probe.connect(gw_addr).await.unwrap();
    let mut buf = vec![0u8; 2048];
    for (i, len) in [20, 30, 31, 32, 35, 40, 46, 47, 64, 100, 1200]
        .into_iter()
        .enumerate()
    {
        probe.send(&unknown_short(i as u64, len)).await.unwrap();
        let wait = if len < SHORTEST_ANSWERED {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        };
        match tokio::time::timeout(wait, probe.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                assert!(len >= SHORTEST_ANSWERED, "{len}-byte datagram answered");
                assert!(n < len, "{n}-byte reset for a {len}-byte datagram");
                assert!(n <= MAX_RESET_LEN, "{n}-byte reset");
                assert_eq!(buf[0] & 0xc0, 0x40, "a reset looks like a short packet");
            }
            Ok(Err(e)) => panic!("probe socket: {e}"),
            Err(_) => assert!(
                len < SHORTEST_ANSWERED,
                "no reset for a {len}-byte datagram"
            ),
        }
    }

    // A transfer runs through the pair (and past the forged resets) while the flood lasts.
    let data = payload(7, 8 << 20);
    let client = TcpStream::connect(listen).await.unwrap();
    let transfer = tokio::spawn(round_trip(client, data.clone()));

    // The flood: 5,000 datagrams a second for 2 s, of every size from 31 to 1,200 bytes.
    let flood = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    flood.connect(gw_addr).await.unwrap();
    let (replies, reply_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (flood, replies, reply_bytes, stop) = (
            flood.clone(),
            replies.clone(),
            reply_bytes.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(50), flood.recv(&mut buf)).await
                {
                    assert!(n <= MAX_RESET_LEN, "{n}-byte reply to the flood");
                    replies.fetch_add(1, Ordering::Relaxed);
                    reply_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };
    let (mut sent, mut sent_bytes) = (0u64, 0u64);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while started.elapsed() < Duration::from_secs(2) {
        tick.tick().await;
        // Keep to 5,000/s on average even when a tick comes late.
        let due = (started.elapsed().as_secs_f64() * 5000.0) as u64;
        while sent < due.min(10_000) {
            let len = SHORTEST_ANSWERED + (sent as usize * 7919) % (1200 - SHORTEST_ANSWERED);
            // A send the kernel refuses for a full buffer is not sent, so not counted.
            if flood.send(&unknown_short(1000 + sent, len)).await.is_ok() {
                sent_bytes += len as u64;
            }
            sent += 1;
        }
    }
    let flood_time = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    receiver.await.unwrap();
    let (replies, reply_bytes) = (
        replies.load(Ordering::SeqCst),
        reply_bytes.load(Ordering::SeqCst),
    );
    let per_second = replies as f64 / flood_time.as_secs_f64();
    eprintln!(
        "flood: {sent} datagrams ({sent_bytes} bytes) in {flood_time:.2?}; {replies} resets \
         ({reply_bytes} bytes, {:.1}% of the flood's bytes), {per_second:.0} resets/s",
        100.0 * reply_bytes as f64 / sent_bytes as f64
    );
    // The limiter: a burst of one second's worth, then its rate.
    let most = RESET_RATE * (1.0 + flood_time.as_secs_f64() + 0.3) * 1.05;
    assert!(
        (replies as f64) <= most,
        "{replies} resets, at most {most:.0}"
    );
    assert!(replies > 0, "no reset at all");
    assert!(
        reply_bytes < sent_bytes / 10,
        "{reply_bytes} of {sent_bytes}"
    );

    // The transfer is whole; the agent's session lived through every forged reset.
    let echoed = tokio::time::timeout(Duration::from_secs(60), transfer)
        .await
        .expect("transfer stalled")
        .unwrap()
        .unwrap();
    assert!(echoed == data, "the transfer came back different");
    let forged = relay_counts.forged_resets.load(Ordering::SeqCst) as f64;
    assert!(forged > 0.0, "the relay forged no reset");

    let (_, _, gw) = http_get(gw_monitor, "/metrics").await;
    let (_, _, agent) = http_get(agent_monitor, "/metrics").await;
    let sent_resets = metric(&gw, "ferry_stateless_resets_total", Some(("event", "sent")));
    let limited = metric(
        &gw,
        "ferry_stateless_resets_total",
        Some(("event", "rate-limited")),
    );
    eprintln!("gateway: {sent_resets} resets sent, {limited} not sent (rate limit); {forged} forged resets at the agent");
    assert!(sent_resets >= replies as f64, "{sent_resets} < {replies}");
    assert!(limited > 0.0, "the flood never met the rate limit");
    assert_eq!(
        metric(
            &agent,
            "ferry_stateless_resets_total",
            Some(("event", "received"))
        ),
        0.0,
        "a forged reset was believed"
    );
    assert!(metric(&agent, "ferry_unknown_session_packets_dropped_total", None) >= forged);
    assert_eq!(
        metric(&agent, "ferry_sessions_total", None),
        1.0,
        "the session was replaced"
    );
}
