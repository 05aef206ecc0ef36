//! The protocol's behaviour through a simulated network, in virtual time, from seeds.
//!
//! Every test is deterministic: a failure names its seed, and rerunning that seed replays the very
//! same packets.

use std::time::Duration;

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::connection::{ConnectionError, Event};
use ferry_protocol::sim::transfer::{verify, BulkSide};
use ferry_protocol::sim::{Direction, LinkConfig, Pair};
use ferry_protocol::streams::ReadOutcome;
use ferry_protocol::wire::frame::{Frame, FrameIter};
use ferry_protocol::wire::packet::Packet;
use ferry_protocol::StreamId;

const MS: Duration = Duration::from_millis(1);

/// Runs a bulk transfer of `streams` streams with `bytes` each way and checks every byte.
fn bulk_transfer(
    pair: &mut Pair,
    config: TransportConfig,
    streams: usize,
    bytes: u64,
    seed: u64,
    limit: Duration,
) -> Result<(), String> {
    let (ch, sh) = pair
        .establish(config)
        .ok_or(format!("seed {seed}: handshake failed"))?;
    let mut client = BulkSide::new(ch, true, seed, streams, bytes);
    let mut server = BulkSide::new(sh, false, seed, 0, bytes);
    let done = pair.run_until(limit, |p| {
        client.pump(p.now, &mut p.client);
        server.pump(p.now, &mut p.server);
        client.is_done() && server.is_done() && server.streams.len() == streams
    });
    if !done {
        return Err(format!(
            "seed {seed}: transfer incomplete after {:?}: client received {} bytes, server received {} bytes, client closed: {:?}, server closed: {:?}",
            pair.elapsed(),
            client.received_bytes(),
            server.received_bytes(),
            client.closed,
            server.closed
        ));
    }
    verify(&client, &server).map_err(|e| format!("seed {seed}: {e}"))
}

fn impaired_link() -> LinkConfig {
    LinkConfig::default()
        .with_delay(20 * MS)
        .with_jitter(5 * MS)
        .with_loss(0.10)
        .with_reorder(0.05)
        .with_duplicate(0.02)
}

/// 16 streams x 1 MiB each way through 20 ms +-5 ms, 10% loss, 5% reordering, 2% duplication,
/// for 200 seeds. Optimised builds move the full 1 MiB per stream on every seed. Debug builds
/// (whose protocol code runs ~20x slower) move 64 KiB per stream on most seeds and the full
/// 1 MiB on every 25th seed, so that full-size runs are always part of the suite.
#[test]
fn sixteen_streams_arrive_intact_through_loss_jitter_reordering_and_duplication() {
    let full = 1 << 20;
    let mut failures = Vec::new();
    for seed in 0..200u64 {
        let bytes = if cfg!(debug_assertions) && seed % 25 != 0 {
            64 << 10
        } else {
            full
        };
        let mut pair = Pair::symmetric(seed, ServerConfig::default(), impaired_link());
        let result = bulk_transfer(
            &mut pair,
            TransportConfig::default(),
            16,
            bytes,
            seed,
            Duration::from_secs(300),
        );
        if let Err(e) = result {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn thirty_percent_loss_still_completes() {
    for seed in 0..5 {
        let link = LinkConfig::default().with_delay(20 * MS).with_loss(0.30);
        let mut pair = Pair::symmetric(seed, ServerConfig::default(), link);
        bulk_transfer(
            &mut pair,
            TransportConfig::default(),
            4,
            256 << 10,
            seed,
            Duration::from_secs(600),
        )
        .unwrap();
    }
}

fn blackout_pair(seed: u64, idle: Duration) -> (Pair, TransportConfig) {
    // 20 Mbit/s, blackout from 1 s to 6 s of the simulation, both ways.
    let link = LinkConfig::default()
        .with_delay(20 * MS)
        .with_rate(20_000_000, 100_000)
        .with_blackout(Duration::from_secs(1), Duration::from_secs(5));
    let config = TransportConfig::default()
        .idle_timeout(idle)
        .keepalive_interval(Some(Duration::from_millis(500)));
    let server = ServerConfig::new(config.clone());
    (Pair::symmetric(seed, server, link), config)
}

#[test]
fn five_second_blackout_is_survived_when_the_idle_timeout_is_longer() {
    let (mut pair, config) = blackout_pair(1, Duration::from_secs(10));
    // About 3 s of transfer at the start, so the blackout hits it mid-flight.
    bulk_transfer(&mut pair, config, 2, 4 << 20, 1, Duration::from_secs(120)).unwrap();
    assert!(
        pair.elapsed() > Duration::from_secs(6),
        "the transfer must have crossed the blackout"
    );
}

#[test]
fn five_second_blackout_is_reported_as_idle_timeout_on_both_ends_when_it_is_shorter() {
    let idle = Duration::from_secs(2);
    let (mut pair, config) = blackout_pair(2, idle);
    let (ch, sh) = pair.establish(config).unwrap();
    let mut client = BulkSide::new(ch, true, 2, 1, 64 << 20);
    let mut server = BulkSide::new(sh, false, 2, 0, 64 << 20);
    pair.run_until(Duration::from_secs(30), |p| {
        client.pump(p.now, &mut p.client);
        server.pump(p.now, &mut p.server);
        client.closed.is_some() && server.closed.is_some()
    });
    assert_eq!(client.closed, Some(ConnectionError::IdleTimeout(idle)));
    assert_eq!(server.closed, Some(ConnectionError::IdleTimeout(idle)));
    assert!(
        pair.elapsed() < Duration::from_secs(6),
        "timed out during the blackout"
    );
    assert_eq!(
        pair.client.connection_count(),
        0,
        "closed connections are forgotten"
    );
    assert_eq!(pair.server.connection_count(), 0);
}

fn stream_ids_in(datagram: &[u8]) -> Vec<StreamId> {
    let Ok(packet) = Packet::decode(datagram) else {
        return Vec::new();
    };
    FrameIter::new(packet.payload)
        .filter_map(|f| match f {
            Ok(Frame::Stream(s)) if !s.data.is_empty() => Some(s.id),
            _ => None,
        })
        .collect()
}

#[test]
fn lost_packet_stalls_only_its_own_stream() {
    let link = LinkConfig::default().with_delay(20 * MS);
    let mut pair = Pair::symmetric(3, ServerConfig::default(), link);
    // Tail duplication would deliver A's data despite the drop: this test is about the repair.
    let (ch, sh) = pair
        .establish(TransportConfig::default().tail_duplication(false))
        .unwrap();
    let conn = pair.client.connection(ch).unwrap();
    let a = conn.open_stream().unwrap();
    let b = conn.open_stream().unwrap();
    conn.write(a, b"stream A's first message").unwrap();
    // Drop the first packet carrying stream A's data; let everything else through.
    let mut dropped = false;
    pair.filter = Some(Box::new(move |dir, d| {
        if dir == Direction::ToServer && !dropped && stream_ids_in(d).contains(&a) {
            dropped = true;
            return true;
        }
        false
    }));
    pair.flush();
    // B's data leaves after A's lost packet.
    let conn = pair.client.connection(ch).unwrap();
    conn.write(b, b"stream B's later message").unwrap();
    pair.flush();

    let mut buf = [0u8; 64];
    let mut b_delivered_at = None;
    let mut a_delivered_at = None;
    pair.run_until(Duration::from_secs(5), |p| {
        let now = p.now;
        let server = p.server.connection(sh).unwrap();
        if b_delivered_at.is_none() {
            if let Ok(ReadOutcome::Data(n)) = server.read(now, b, &mut buf) {
                assert_eq!(&buf[..n], b"stream B's later message");
                // At this moment A's data has not arrived: its retransmission is still due.
                assert_eq!(server.read(now, a, &mut buf), Ok(ReadOutcome::Blocked));
                b_delivered_at = Some(p.now);
            }
        }
        if let Ok(ReadOutcome::Data(n)) = server.read(now, a, &mut buf) {
            assert_eq!(&buf[..n], b"stream A's first message");
            a_delivered_at = Some(p.now);
        }
        a_delivered_at.is_some()
    });
    let (b_at, a_at) = (
        b_delivered_at.expect("B delivered"),
        a_delivered_at.expect("A delivered"),
    );
    assert!(
        b_at < a_at,
        "B ({b_at:?}) must be delivered before A's retransmission ({a_at:?})"
    );
}

/// A stream nobody reads never renews its credit, so its window never grows: the receiver holds
/// only the initial window, however large the stream's largest window is, and the sender holds
/// no more than that credit either (writes beyond it are refused), however large its send
/// buffer is.
#[test]
fn receiver_that_never_reads_keeps_sender_buffers_under_the_flow_control_bound() {
    let largest_window = 256 << 10;
    let window = 32 << 10;
    let send_buffer = 128 << 10;
    let config = TransportConfig::default()
        .receive_windows(largest_window, 4 * largest_window)
        .stream_initial_receive_window(window)
        .stream_send_buffer(send_buffer);
    let link = LinkConfig::default().with_delay(10 * MS);
    let mut pair = Pair::symmetric(4, ServerConfig::new(config.clone()), link);
    let (ch, sh) = pair.establish(config).unwrap();
    let mut client = BulkSide::new(ch, true, 4, 1, 64 << 20);
    let mut server = BulkSide::new(sh, false, 4, 0, 0);
    server.read_enabled = false;
    let mut max_sender_buffered = 0;
    let mut max_receiver_buffered = 0;
    pair.run_until(Duration::from_secs(20), |p| {
        client.pump(p.now, &mut p.client);
        server.pump(p.now, &mut p.server);
        let (sent_buf, _) = p.client.connection_ref(ch).unwrap().buffered_bytes();
        let (_, recv_buf) = p.server.connection_ref(sh).unwrap().buffered_bytes();
        max_sender_buffered = max_sender_buffered.max(sent_buf);
        max_receiver_buffered = max_receiver_buffered.max(recv_buf);
        false
    });
    let sent: u64 = client.streams.values().map(|s| s.sent).sum();
    assert!(
        max_sender_buffered as u64 <= window,
        "sender buffered {max_sender_buffered}"
    );
    assert!(
        max_receiver_buffered as u64 <= window,
        "receiver buffered {max_receiver_buffered}"
    );
    assert_eq!(
        sent, window,
        "the application wrote exactly the credit into a stalled stream"
    );
}

#[test]
fn mismatched_required_settings_fail_the_handshake_with_the_same_line_on_both_ends() {
    let client_config = TransportConfig::default().require("compress", "none");
    let server_config = TransportConfig::default().require("compress", "snappy");
    let mut pair = Pair::symmetric(
        5,
        ServerConfig::new(server_config),
        LinkConfig::default().with_delay(5 * MS),
    );
    let ch = pair.connect(client_config);
    let (client_error, server_error) = pair.run_until_both_closed(Duration::from_secs(5));
    let expected = ConnectionError::HandshakeFailed(
        "settings differ: compress: server snappy, client none".into(),
    );
    assert_eq!(client_error.as_ref(), Some(&expected));
    assert_eq!(server_error.as_ref(), Some(&expected));
    assert!(!expected.to_string().contains('\n'));
    assert!(pair.client.connection_ref(ch).is_none_or(|c| c.is_closed()));
}

#[test]
fn client_address_change_is_validated_before_the_server_follows_it() {
    let link = LinkConfig::default()
        .with_delay(10 * MS)
        .with_rate(20_000_000, 100_000);
    let mut pair = Pair::symmetric(6, ServerConfig::default(), link);
    let (ch, sh) = pair.establish(TransportConfig::default()).unwrap();
    let mut client = BulkSide::new(ch, true, 6, 2, 2 << 20);
    let mut server = BulkSide::new(sh, false, 6, 0, 2 << 20);
    let mut rebound = false;
    let done = pair.run_until(Duration::from_secs(60), |p| {
        if !rebound && p.elapsed() > Duration::from_millis(300) {
            // NAT rebinding: the client's packets now come from another port.
            p.client_addr = "127.0.0.2:40001".parse().unwrap();
            rebound = true;
        }
        client.pump(p.now, &mut p.client);
        server.pump(p.now, &mut p.server);
        client.is_done() && server.is_done()
    });
    assert!(done, "transfer across the rebinding completed");
    verify(&client, &server).unwrap();
    assert!(rebound);
    assert_eq!(
        pair.server.connection_ref(sh).unwrap().remote(),
        pair.client_addr
    );
    assert_eq!(
        pair.server.connection_ref(sh).unwrap().stats().migrations,
        1
    );
}

#[test]
fn graceful_close_and_abort_are_reported_with_their_reasons() {
    let mut pair = Pair::symmetric(
        7,
        ServerConfig::default(),
        LinkConfig::default().with_delay(5 * MS),
    );
    let (ch, sh) = pair.establish(TransportConfig::default()).unwrap();
    let now = pair.now;
    pair.client
        .connection(ch)
        .unwrap()
        .close_gracefully(now, "agent shutting down");
    let mut client_error = None;
    let mut server_error = None;
    pair.run_until(Duration::from_secs(5), |p| {
        while let Some((h, ev)) = p.client.poll_event() {
            if let (true, Event::Closed(e)) = (h == ch, ev) {
                client_error = Some(e);
            }
        }
        while let Some((h, ev)) = p.server.poll_event() {
            if let (true, Event::Closed(e)) = (h == sh, ev) {
                server_error = Some(e);
            }
        }
        client_error.is_some() && server_error.is_some()
    });
    assert_eq!(
        client_error,
        Some(ConnectionError::LocallyClosed {
            code: 0,
            reason: "agent shutting down".into()
        })
    );
    assert_eq!(
        server_error,
        Some(ConnectionError::PeerClosed {
            code: 0,
            reason: "agent shutting down".into()
        })
    );
}

/// Found by the `established_session` fuzz target: when both ends close at once, their CLOSE
/// frames cross, and each end, closing, answered every packet it received with its CLOSE again,
/// so each answered the other's answers: a ping-pong for the whole closing period (with no time
/// passing, as in the fuzz target, without end). Now the 1st, 2nd, 4th, 8th... packet received
/// while closing is answered, and the exchange dies out in a few packets.
#[test]
fn two_ends_closing_at_once_do_not_answer_each_other_for_the_closing_period() {
    let mut pair = Pair::symmetric(
        11,
        ServerConfig::default(),
        LinkConfig::default().with_delay(MS),
    );
    let (ch, sh) = pair.establish(TransportConfig::default()).unwrap();
    let now = pair.now;
    pair.client
        .connection(ch)
        .unwrap()
        .close(now, 1, "client stops");
    pair.server
        .connection(sh)
        .unwrap()
        .close(now, 2, "server stops");
    pair.capture = Some(Vec::new());
    let closed = pair.run_until(Duration::from_secs(10), |p| {
        while p.client.poll_event().is_some() {}
        while p.server.poll_event().is_some() {}
        p.client.connection_count() == 0 && p.server.connection_count() == 0
    });
    assert!(closed, "both ends forgot their connection");
    // Each end's first CLOSE, then at most the answers to the 1st, 2nd and 4th packets of the
    // other: before, about 2 per millisecond of the closing period (hundreds).
    let sent = pair.capture.map_or(0, |c| c.len());
    assert!(sent <= 8, "{sent} datagrams while closing");
}

/// Full packets are all exactly `max_datagram_size` long, so a bulk sender's packets leave in
/// GSO batches (a batch ends at its first shorter packet), and batches cut at their segment size
/// still deliver every byte, repairs of lost packets included. The stream frame header was once
/// sized for an 8-byte offset, which left every full packet 4 bytes short: each datagram then
/// went alone, one system call apiece, and loopback throughput halved.
#[test]
fn bulk_data_leaves_in_full_gso_batches() {
    for (seed, loss) in [(1, 0.0), (2, 0.01), (3, 0.05)] {
        let link = LinkConfig::default().with_delay(5 * MS).with_loss(loss);
        let server = ServerConfig::new(TransportConfig::default());
        let mut pair = Pair::symmetric(seed, server, link);
        pair.max_batch = 16;
        pair.tick = Some(MS);
        let limit = Duration::from_secs(120);
        bulk_transfer(
            &mut pair,
            TransportConfig::default(),
            4,
            2 << 20,
            seed,
            limit,
        )
        .unwrap();
        let per_transmit = pair.datagrams_per_transmit();
        assert!(
            per_transmit > 3.0,
            "seed {seed}, loss {loss}: {per_transmit:.2} datagrams per transmit"
        );
    }
}

/// Goodput of a bulk transfer through a 50 Mbit/s, 40 ms RTT bottleneck at `loss`, as a
/// fraction of the link rate, measured from 2 s to 8 s (virtual time: deterministic).
fn bottleneck_goodput(cc: ferry_protocol::congestion::CongestionConfig, loss: f64) -> f64 {
    let rate = 50_000_000;
    let link = LinkConfig::default()
        .with_delay(20 * MS)
        .with_rate(rate, 250_000)
        .with_loss(loss);
    let config = TransportConfig::default()
        .congestion(cc)
        .receive_windows(16 << 20, 64 << 20)
        .stream_send_buffer(16 << 20);
    let mut pair = Pair::symmetric(9, ServerConfig::new(config.clone()), link);
    let (ch, sh) = pair.establish(config).unwrap();
    let mut sender = BulkSide::new(ch, true, 9, 1, 1 << 40);
    let mut receiver = BulkSide::new(sh, false, 9, 0, 0);
    let mut mark = None;
    let start = pair.now;
    pair.run_until(Duration::from_secs(8), |p| {
        sender.pump(p.now, &mut p.client);
        receiver.pump(p.now, &mut p.server);
        if mark.is_none() && p.now - start >= Duration::from_secs(2) {
            mark = Some((p.now, receiver.received_bytes()));
        }
        false
    });
    let (t0, b0) = mark.unwrap();
    (receiver.received_bytes() - b0) as f64 * 8.0 / (pair.now - t0).as_secs_f64() / rate as f64
}

#[test]
fn default_controller_keeps_half_the_link_under_five_percent_random_loss() {
    let g = bottleneck_goodput(ferry_protocol::congestion::CongestionConfig::Bbr, 0.05);
    assert!(g >= 0.5, "bbr goodput {g:.3} of the link at 5% loss");
}

#[test]
fn fixed_controller_keeps_most_of_the_link_under_loss() {
    let fixed = ferry_protocol::congestion::CongestionConfig::Fixed {
        rate_bps: 50_000_000,
    };
    let g1 = bottleneck_goodput(fixed, 0.01);
    let g5 = bottleneck_goodput(fixed, 0.05);
    assert!(g1 >= 0.9, "fixed goodput {g1:.3} at 1% loss");
    assert!(g5 >= 0.8, "fixed goodput {g5:.3} at 5% loss");
}

/// Share of 1 KB messages echoed on 32 streams at once (each stream a client of its own,
/// writing 1 ms after the previous one; 40 ms RTT, 5% loss both ways) that took longer than
/// 1.5 round trips, i.e. needed a repair.
fn many_small_messages_repaired(tail_duplication: bool) -> f64 {
    let link = LinkConfig::default()
        .with_delay(Duration::from_millis(20))
        .with_loss(0.05);
    // Forward error correction off: it would replace tail duplication (tests/fec.rs).
    let config = TransportConfig::default()
        .tail_duplication(tail_duplication)
        .fec(ferry_protocol::fec::FecMode::Off);
    let mut pair = Pair::symmetric(11, ServerConfig::new(config.clone()), link);
    let (ch, sh) = pair.establish(config).expect("handshake");
    let ids: Vec<StreamId> = (0..32)
        .map(|_| pair.client.connection(ch).unwrap().open_stream().unwrap())
        .collect();
    let message = [0x5au8; 1024];
    let mut buf = [0u8; 4096];
    let mut latencies = Vec::new();
    for _round in 0..15 {
        let start = pair.now;
        // Per stream: when its message left, bytes the server has, bytes echoed back.
        let mut sent_at = vec![None; ids.len()];
        let mut at_server = vec![0usize; ids.len()];
        let mut back = vec![0usize; ids.len()];
        let mut tick = 0u32;
        while back.iter().any(|b| *b < message.len()) {
            assert!(tick < 5_000, "a message was never echoed");
            pair.advance_to(start + Duration::from_millis(u64::from(tick)));
            for (i, id) in ids.iter().enumerate() {
                if sent_at[i].is_none() && tick as usize == i {
                    let c = pair.client.connection(ch).unwrap();
                    assert_eq!(c.write(*id, &message).unwrap(), message.len());
                    sent_at[i] = Some(pair.now);
                }
                let now = pair.now;
                let s = pair.server.connection(sh).unwrap();
                while let Ok(ReadOutcome::Data(n)) = s.read(now, *id, &mut buf) {
                    at_server[i] += n;
                    if at_server[i] == message.len() {
                        s.write(*id, &message).unwrap();
                    }
                }
                let c = pair.client.connection(ch).unwrap();
                while let Ok(ReadOutcome::Data(n)) = c.read(now, *id, &mut buf) {
                    back[i] += n;
                    if back[i] == message.len() {
                        latencies.push(pair.now - sent_at[i].unwrap());
                    }
                }
            }
            tick += 1;
        }
    }
    let slow = latencies
        .iter()
        .filter(|l| **l > Duration::from_millis(60))
        .count();
    slow as f64 / latencies.len() as f64
}

#[test]
fn small_messages_of_many_streams_at_once_are_repaired_without_a_round_trip() {
    // Each stream's message is the tail of its own small burst, though 32 are in flight
    // together: each is sent twice, so only losing both copies costs a repair round trip
    // (about 0.5% of exchanges at 5% loss, against about 10% without the copies).
    let with = many_small_messages_repaired(true);
    let without = many_small_messages_repaired(false);
    assert!(with < 0.025, "repaired with duplication: {with}");
    assert!(without > 0.06, "repaired without: {without}");
}

/// Mean and largest number of ranges in the ACK frames each direction sends late in a bulk
/// transfer at 3% random loss: (to the server, to the client).
fn ack_ranges_in_a_lossy_transfer(both_ways: bool) -> [(f64, usize); 2] {
    let link = LinkConfig::default()
        .with_delay(20 * MS)
        .with_rate(20_000_000, 100_000)
        .with_loss(0.03);
    let mut pair = Pair::symmetric(17, ServerConfig::default(), link);
    let (ch, sh) = pair.establish(TransportConfig::default()).unwrap();
    let back = if both_ways { u64::MAX / 4 } else { 0 };
    let mut client = BulkSide::new(ch, true, 17, 1, u64::MAX / 4);
    let mut server = BulkSide::new(sh, false, 17, 0, back);
    // Long enough for hundreds of gaps; only the last seconds are looked at.
    pair.run_until(Duration::from_secs(3), |p| {
        client.pump(p.now, &mut p.client);
        server.pump(p.now, &mut p.server);
        false
    });
    pair.capture = Some(Vec::new());
    pair.run_until(Duration::from_secs(2), |p| {
        client.pump(p.now, &mut p.client);
        server.pump(p.now, &mut p.server);
        false
    });
    assert!(client.closed.is_none() && server.closed.is_none());
    let mut ranges = [Vec::new(), Vec::new()];
    for c in pair.capture.take().unwrap() {
        let Ok(packet) = Packet::decode(&c.datagram) else {
            continue;
        };
        for f in FrameIter::new(packet.payload) {
            if let Ok(Frame::Ack(ack)) = f {
                let way = usize::from(c.direction == Direction::ToClient);
                ranges[way].push(ack.ranges.len());
            }
        }
    }
    ranges.map(|r| {
        assert!(r.len() > 50, "too few ACK frames: {}", r.len());
        let mean = r.iter().sum::<usize>() as f64 / r.len() as f64;
        (mean, r.into_iter().max().unwrap_or(0))
    })
}

#[test]
fn ack_frames_stop_repeating_gaps_the_peer_has_already_seen() {
    // Otherwise every gap that loss leaves in the packet numbers would ride in every later ACK
    // frame (up to 32 ranges, some 60-100 bytes of each data packet) for the whole connection.
    // Once the peer acknowledges a packet carrying an ACK, the gaps below it are dropped; a
    // receiver that only acknowledges makes one ACK per round trip ack-eliciting to learn the
    // same (without that, its ACKs carry 32 ranges here).
    for both_ways in [true, false] {
        for (way, (mean, max)) in ack_ranges_in_a_lossy_transfer(both_ways)
            .into_iter()
            .enumerate()
        {
            assert!(
                mean < 20.0,
                "both ways {both_ways}, direction {way}: mean {mean:.2} ranges, max {max}"
            );
        }
    }
}
