//! Batching (`TransportConfig::batch_delay`) in virtual time: small messages of many streams
//! share packets, and no message waits longer than the delay.

use std::time::Duration;

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::sim::{LinkConfig, Pair};
use ferry_protocol::streams::ReadOutcome;

const US: Duration = Duration::from_micros(1);
const MS: Duration = Duration::from_millis(1);

/// One 120-byte message on a new stream every `gap`, `count` times; returns the client's
/// packets per message and the longest time from a write to the server reading it.
fn messages(batch: Duration, count: usize, gap: Duration) -> (f64, Duration) {
    let config = TransportConfig::default().batch_delay(batch);
    let mut pair = Pair::symmetric(
        11,
        ServerConfig::new(config.clone()),
        LinkConfig::default().with_delay(10 * MS),
    );
    let (ch, sh) = pair.establish(config).unwrap();
    // Let the handshake's last packets settle.
    let settle = pair.now + 100 * MS;
    pair.advance_to(settle);
    let sent0 = pair.client.connection_ref(ch).unwrap().stats().packets_sent;
    let start = pair.now;
    let mut written_at = Vec::new();
    let mut worst = Duration::ZERO;
    let mut received = 0;
    let mut open = Vec::new();
    let mut finished = Vec::new();
    for i in 0..count {
        pair.advance_to(start + gap * i as u32);
        let c = pair.client.connection(ch).unwrap();
        let id = c.open_stream().unwrap();
        assert_eq!(c.write(id, &[i as u8; 120]).unwrap(), 120);
        c.finish(id).unwrap();
        written_at.push(pair.now);
        open.push(id);
        finished.push(false);
        // The server reads whatever arrived.
        received += read_all(&mut pair, sh, &open, &written_at, &mut finished, &mut worst);
    }
    let deadline = pair.now + Duration::from_secs(5);
    while received < count && pair.now < deadline {
        let next = pair.now + 100 * US;
        pair.advance_to(next);
        received += read_all(&mut pair, sh, &open, &written_at, &mut finished, &mut worst);
    }
    assert_eq!(received, count, "every message arrived");
    let sent = pair.client.connection_ref(ch).unwrap().stats().packets_sent - sent0;
    (sent as f64 / count as f64, worst)
}

/// Reads every finished message; returns how many completed now and updates the worst delay.
fn read_all(
    pair: &mut Pair,
    sh: ferry_protocol::endpoint::ConnectionHandle,
    ids: &[ferry_protocol::StreamId],
    written_at: &[std::time::Instant],
    finished: &mut [bool],
    worst: &mut Duration,
) -> usize {
    let now = pair.now;
    let conn = pair.server.connection(sh).unwrap();
    let mut done = 0;
    let mut buf = [0u8; 256];
    for (i, id) in ids.iter().enumerate() {
        if finished[i] {
            continue;
        }
        loop {
            match conn.read(now, *id, &mut buf) {
                Ok(ReadOutcome::Data(n)) if n > 0 => continue,
                Ok(ReadOutcome::Finished) => {
                    finished[i] = true;
                    done += 1;
                    *worst = (*worst).max(now - written_at[i]);
                    break;
                }
                _ => break,
            }
        }
    }
    done
}

#[test]
fn batching_puts_many_small_messages_in_fewer_packets_and_delays_none_beyond_the_delay() {
    let gap = 200 * US;
    let (plain_ppm, plain_worst) = messages(Duration::ZERO, 300, gap);
    let (batched_ppm, batched_worst) = messages(5 * MS, 300, gap);
    eprintln!("packets per message {plain_ppm:.2} -> {batched_ppm:.2}, worst delay {plain_worst:?} -> {batched_worst:?}");
    // Without batching every message leaves in its own packet.
    assert!(
        plain_ppm >= 0.9,
        "packets per message without batching: {plain_ppm:.2}"
    );
    assert!(
        batched_ppm * 4.0 < plain_ppm,
        "packets per message: {batched_ppm:.2} batched vs {plain_ppm:.2}"
    );
    // One-way delay 10 ms; batching may add at most its 5 ms (plus a read-poll step).
    assert!(plain_worst <= 11 * MS, "{plain_worst:?}");
    assert!(batched_worst <= 16 * MS, "{batched_worst:?}");
}

#[test]
fn a_lone_message_leaves_within_the_batch_delay() {
    let (_, worst) = messages(5 * MS, 1, MS);
    assert!(worst >= 10 * MS && worst <= 16 * MS, "{worst:?}");
}
