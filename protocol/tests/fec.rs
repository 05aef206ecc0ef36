//! Forward error correction (`ferry_protocol::fec`) in virtual time: small request/response
//! exchanges through random loss keep their tail within about one round trip (bursty loss within
//! one retransmission), at a bounded cost in repair bytes; a clean path pays nothing; bulk
//! transfers are unharmed and intact; and either end turning FEC off turns it off.

use std::time::Duration;

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::connection::ConnectionStats;
use ferry_protocol::endpoint::ConnectionHandle;
use ferry_protocol::fec::FecMode;
use ferry_protocol::sim::exchange::{quantile, request_response, Exchanges};
use ferry_protocol::sim::transfer::{verify, BulkSide};
use ferry_protocol::sim::{LinkConfig, Pair};
use ferry_protocol::streams::ReadOutcome;
use ferry_protocol::StreamId;

const MS: Duration = Duration::from_millis(1);
/// The path: 20 ms each way, so one round trip is 40 ms.
const ONE_WAY: Duration = Duration::from_millis(20);
const RTT: Duration = Duration::from_millis(40);

fn link(loss: f64, burst: f64) -> LinkConfig {
    LinkConfig::default()
        .with_delay(ONE_WAY)
        .with_loss(loss)
        .with_loss_burst(burst)
}

/// Repair bytes over all other bytes sent, both ends together.
fn overhead(stats: &[ConnectionStats]) -> f64 {
    let repair: u64 = stats.iter().map(|s| s.fec.repair_bytes_sent).sum();
    let all: u64 = stats.iter().map(|s| s.bytes_sent).sum();
    repair as f64 / (all - repair).max(1) as f64
}

/// An established pair over a 40 ms round trip losing `loss` each way (in bursts of mean
/// length `burst`), both ends using `fec`.
fn established(
    fec: FecMode,
    loss: f64,
    burst: f64,
    seed: u64,
) -> (Pair, ConnectionHandle, ConnectionHandle) {
    let config = TransportConfig::default().fec(fec);
    let mut pair = Pair::symmetric(seed, ServerConfig::new(config.clone()), link(loss, burst));
    let (ch, sh) = pair.establish(config).expect("handshake");
    (pair, ch, sh)
}

/// Both ends' counters: client, server.
fn both_stats(pair: &mut Pair, ch: ConnectionHandle, sh: ConnectionHandle) -> [ConnectionStats; 2] {
    [
        pair.client.connection(ch).unwrap().stats(),
        pair.server.connection(sh).unwrap().stats(),
    ]
}

/// Sequential 1 KB exchanges (an interactive client: 20 ms between them) on one connection;
/// the latencies, sorted, and both ends' counters.
fn sequential(
    fec: FecMode,
    loss: f64,
    burst: f64,
    seed: u64,
    count: usize,
) -> (Vec<Duration>, [ConnectionStats; 2]) {
    sequential_pausing(fec, loss, burst, seed, count, 20 * MS)
}

/// [`sequential`] with `pause` between an answer and the next request (zero: back to back,
/// as `ferry-bench`'s sequential client).
fn sequential_pausing(
    fec: FecMode,
    loss: f64,
    burst: f64,
    seed: u64,
    count: usize,
    pause: Duration,
) -> (Vec<Duration>, [ConnectionStats; 2]) {
    let (mut pair, ch, sh) = established(fec, loss, burst, seed);
    let mut latencies =
        request_response(&mut pair, ch, sh, one_kb(count, pause)).expect("every exchange ends");
    latencies.sort();
    let stats = both_stats(&mut pair, ch, sh);
    (latencies, stats)
}

/// `count` sequential 1 KB exchanges, `pause` between an answer and the next request, the
/// server answering 200 us after a request is whole.
fn one_kb(count: usize, pause: Duration) -> Exchanges {
    Exchanges {
        count,
        size: 1024,
        pause,
        think: Duration::from_micros(200),
    }
}

/// `streams` closed-loop clients on one connection (as the agent carries many client
/// connections on one session), each sending a 1 KB request as soon as its previous response
/// is whole, until `total` exchanges ended; latencies sorted, and both ends' counters.
fn concurrent(
    fec: FecMode,
    loss: f64,
    burst: f64,
    seed: u64,
    streams: usize,
    total: usize,
) -> (Vec<Duration>, [ConnectionStats; 2]) {
    let (mut pair, ch, sh) = established(fec, loss, burst, seed);
    concurrent_on(&mut pair, ch, sh, streams, total)
}

/// [`concurrent`] on an established pair.
fn concurrent_on(
    pair: &mut Pair,
    ch: ConnectionHandle,
    sh: ConnectionHandle,
    streams: usize,
    total: usize,
) -> (Vec<Duration>, [ConnectionStats; 2]) {
    let ids: Vec<StreamId> = (0..streams)
        .map(|_| pair.client.connection(ch).unwrap().open_stream().unwrap())
        .collect();
    let message = [0x5au8; 1024];
    let mut buf = [0u8; 4096];
    // Per stream: when its request left (None: not yet), bytes at the server, bytes back.
    let mut sent_at = vec![None; streams];
    let mut at_server = vec![0usize; streams];
    let mut back = vec![0usize; streams];
    let mut latencies = Vec::new();
    let start = pair.now;
    let tick = Duration::from_micros(250);
    let mut t = Duration::ZERO;
    while latencies.len() < total {
        assert!(t < Duration::from_secs(120), "exchanges stalled");
        pair.advance_to(start + t);
        let now = pair.now;
        for (i, id) in ids.iter().enumerate() {
            // Clients start spread over one round trip.
            if sent_at[i].is_none() && t >= RTT * i as u32 / streams as u32 {
                let c = pair.client.connection(ch).unwrap();
                assert_eq!(c.write(*id, &message).unwrap(), message.len());
                sent_at[i] = Some(now);
            }
            let s = pair.server.connection(sh).unwrap();
            while let Ok(ReadOutcome::Data(n)) = s.read(now, *id, &mut buf) {
                at_server[i] += n;
                if at_server[i] == message.len() {
                    at_server[i] = 0;
                    s.write(*id, &message).unwrap();
                }
            }
            let c = pair.client.connection(ch).unwrap();
            while let Ok(ReadOutcome::Data(n)) = c.read(now, *id, &mut buf) {
                back[i] += n;
                if back[i] == message.len() {
                    back[i] = 0;
                    latencies.push(now - sent_at[i].unwrap());
                    assert_eq!(c.write(*id, &message).unwrap(), message.len());
                    sent_at[i] = Some(now);
                }
            }
        }
        t += tick;
    }
    latencies.sort();
    let stats = both_stats(pair, ch, sh);
    (latencies, stats)
}

/// The share of exchanges that took more than one and a half round trips: those that waited
/// for a retransmission, which the simulator's p99 cannot tell from a recovery once more than
/// 1% do (a retransmission there takes two round trips, as long as the goal's bound).
fn retransmitted(latencies: &[Duration]) -> f64 {
    let slow = latencies.iter().filter(|l| **l > RTT * 3 / 2).count();
    slow as f64 / latencies.len().max(1) as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
fn sequential_exchanges_stay_within_a_quarter_round_trip_of_the_limit_at_5_and_10_percent() {
    for loss in [0.05, 0.10] {
        let (mut auto, mut off) = (Vec::new(), Vec::new());
        let mut stats = Vec::new();
        for seed in 1..=3 {
            let (lat, s) = sequential(FecMode::Auto, loss, 1.0, seed, 400);
            auto.extend(lat);
            stats.extend(s);
            off.extend(sequential(FecMode::Off, loss, 1.0, seed, 400).0);
        }
        auto.sort();
        off.sort();
        let (p99, p99_off) = (quantile(&auto, 0.99), quantile(&off, 0.99));
        let recovered: u64 = stats.iter().map(|s| s.fec.packets_recovered).sum();
        eprintln!(
            "sequential, {:.0}% loss: p50 {:.1} ms, p99 {:.1} ms (off: {:.1} ms), overhead {:.2}, {recovered} packets rebuilt",
            loss * 100.0,
            ms(quantile(&auto, 0.5)),
            ms(p99),
            ms(p99_off),
            overhead(&stats),
        );
        assert!(p99 <= RTT * 5 / 4, "{:.0}% loss: p99 {p99:?}", loss * 100.0);
        eprintln!("  (off: tail duplication instead)");
        assert!(recovered > 0);
    }
}

#[test]
fn sixty_four_concurrent_clients_keep_the_tail_near_the_limit() {
    for loss in [0.01, 0.05, 0.10] {
        let (mut lat, mut stats) = (Vec::new(), Vec::new());
        for seed in 5..=7 {
            let (l, s) = concurrent(FecMode::Auto, loss, 1.0, seed, 64, 4000);
            lat.extend(l);
            stats.extend(s);
        }
        lat.sort();
        let (off, _) = concurrent(FecMode::Off, loss, 1.0, 5, 64, 4000);
        let cost = overhead(&stats);
        let sent: u64 = stats.iter().map(|s| s.stream_bytes_sent).sum();
        let again: u64 = stats.iter().map(|s| s.stream_bytes_retransmitted).sum();
        let again = again as f64 / sent as f64;
        eprintln!(
            "64 concurrent, {:.0}% loss: p50 {:.1} ms, p99 {:.1} ms (off {:.1} ms), overhead {cost:.2}, \
             {:.2}% of stream bytes sent again, {:.2}% waited for a retransmission",
            loss * 100.0,
            ms(quantile(&lat, 0.5)),
            ms(quantile(&lat, 0.99)),
            ms(quantile(&off, 0.99)),
            100.0 * again,
            100.0 * retransmitted(&lat),
        );
        let p99 = quantile(&lat, 0.99);
        // At 1% and 5% within a quarter round trip of the limit. At 10% about 1% of exchanges
        // here wait for a retransmission, most of them at the start, before the first loss
        // report turns protection on, and the 1% tail sits at that edge: 54 to 80 ms across
        // seeds and revisions of this code, against 120 ms without FEC (on the impaired link,
        // where a sequential phase comes first, 49.6 ms). Bound there: no worse than one
        // retransmission round trip.
        let bound = if loss < 0.06 { RTT * 5 / 4 } else { RTT * 2 } + 2 * MS;
        assert!(p99 <= bound, "{:.0}% loss: p99 {p99:?}", loss * 100.0);
        assert!(quantile(&off, 0.99) > RTT * 3 / 2);
        // Repair bytes over all other bytes: about 0.34 at 5% (a repair every fourth source,
        // and the repairs a quiet tail needs), more at 10%.
        assert!(
            cost <= if loss < 0.06 { 0.45 } else { 0.8 },
            "overhead {cost:.2}"
        );
        // A rebuilt packet is not sent again: only those of windows that lost more than their
        // repairs are. When loss detection counted from the packet rather than a repair over
        // it, as many bytes went twice as the path lost (5.1% at 5%, 10% at 10%); from the
        // first repair over it rather than the latest, 1.5% at 5%.
        assert!(
            again < loss / 4.0,
            "{:.2}% of stream bytes sent again",
            100.0 * again
        );
    }
}

/// Latencies through bursty loss, each sorted: sequential exchanges paused between them,
/// sequential back to back, and 64 concurrent clients; and the path MTU black holes that both
/// ends of all those connections thought they saw.
fn bursty(fec: FecMode) -> ([Vec<Duration>; 3], u64) {
    let (mut paused, mut back_to_back, mut stats) = (Vec::new(), Vec::new(), Vec::new());
    for seed in 1..=3 {
        let (lat, s) = sequential(fec, 0.05, 3.0, seed, 400);
        paused.extend(lat);
        stats.extend(s);
        let (lat, s) = sequential_pausing(fec, 0.05, 3.0, seed + 3, 400, Duration::ZERO);
        back_to_back.extend(lat);
        stats.extend(s);
    }
    let (concurrent, s) = concurrent(fec, 0.05, 3.0, 7, 64, 3000);
    stats.extend(s);
    let mut parts = [paused, back_to_back, concurrent];
    for part in &mut parts {
        part.sort();
    }
    (parts, stats.iter().map(|s| s.mtu_black_holes).sum())
}

#[test]
fn bursty_loss_keeps_the_tail_within_one_retransmission() {
    // Bursts of three packets on average take a lone message's repairs with it: the receiver
    // reports the runs it sees, and the sender sends enough repairs to outlast them (seven for
    // a lone packet at 5%, fourteen per sixteen sources in a busy flow). What is left above one
    // round trip is the start, before the runs are measured, and the losses that outlast their
    // repairs anyway: 1.5 to 1.6% of sequential exchanges and 0.5% of 64 clients' wait for one
    // retransmission, where without FEC 4 to 11% do. Here a
    // retransmission takes two round trips or a little more, the goal's bound, so the p99 says
    // little once 1% wait: the share that waits is what is checked.
    //
    // A client that asks again as soon as it has its answer finds the last answer's repairs
    // still in flight: they must not hold its next request's repairs back (its p99 was 100 ms
    // and 1.8% waited when they did). With 64 clients, 2.1% waited when a group's repairs
    // went out ahead of the messages waiting behind them, and when STARTUP ended at one round
    // that a burst made look like an overflowing buffer; 0.9% with repairs in groups. With a
    // sliding window of one hold 1.4% waited, in clusters of 6 to 11 exchanges: a long run of
    // losses took several sources and the repairs right behind them, and too few repairs
    // covered them afterwards. A window of two holds lets the next hold's repairs cover them
    // too: 0.5%.
    let ((auto, black_holes), (off, _)) = (bursty(FecMode::Auto), bursty(FecMode::Off));
    let names = [
        "sequential, paused",
        "sequential, back to back",
        "64 clients",
    ];
    for (fec, parts) in [("auto", &auto), ("off", &off)] {
        for (name, lat) in names.iter().zip(parts) {
            eprintln!(
                "bursty 5% (mean burst 3), fec {fec}, {name}: p50 {:.1} ms, p90 {:.1} ms, \
                 p99 {:.1} ms, {:.2}% waited for a retransmission",
                ms(quantile(lat, 0.5)),
                ms(quantile(lat, 0.9)),
                ms(quantile(lat, 0.99)),
                100.0 * retransmitted(lat)
            );
        }
    }
    // A run of losses is one loss event, not the several that its packets' declarations one
    // by one made, which fell back from 1,452 bytes to 1,200 once in these runs.
    eprintln!("path MTU black holes seen: {black_holes}");
    assert_eq!(black_holes, 0);
    let many = retransmitted(&auto[2]);
    assert!(many <= 0.01, "64 clients: {:.2}% waited", 100.0 * many);
    for ((name, lat), without) in names.iter().zip(&auto).zip(&off) {
        let p90 = quantile(lat, 0.9);
        assert!(p90 <= RTT * 5 / 4, "{name}: p90 {:.1} ms", ms(p90));
        let (waited, waited_without) = (retransmitted(lat), retransmitted(without));
        assert!(
            waited <= 0.02 && waited <= waited_without / 2.0,
            "{name}: {:.2}% waited for a retransmission ({:.2}% without FEC)",
            100.0 * waited,
            100.0 * waited_without
        );
    }
}

#[test]
fn heavy_loss_is_survived_with_every_exchange_complete() {
    // 20%: the repair count is capped, so the tail is longer, but every exchange ends.
    let (lat, stats) = sequential(FecMode::Auto, 0.20, 1.0, 3, 200);
    eprintln!(
        "sequential, 20% loss: p50 {:.1} ms, p99 {:.1} ms, overhead {:.2}",
        ms(quantile(&lat, 0.5)),
        ms(quantile(&lat, 0.99)),
        overhead(&stats)
    );
    assert_eq!(lat.len(), 200);
    assert!(quantile(&lat, 0.9) <= RTT * 5 / 4);
}

#[test]
fn a_clean_path_pays_nothing_in_auto_and_a_fixed_code_always_pays() {
    let (_, auto) = sequential(FecMode::Auto, 0.0, 1.0, 1, 200);
    assert_eq!(
        auto[0].fec.repair_packets_sent + auto[1].fec.repair_packets_sent,
        0
    );
    let fixed = FecMode::Fixed {
        sources: 1,
        total: 2,
    };
    let (_, stats) = sequential(fixed, 0.0, 1.0, 1, 200);
    // Each request and each response is a group of one with one repair.
    assert!(
        stats[0].fec.repair_packets_sent >= 200,
        "{:?}",
        stats[0].fec
    );
    assert!(
        stats[1].fec.repair_packets_sent >= 200,
        "{:?}",
        stats[1].fec
    );
}

#[test]
fn reordering_alone_is_not_taken_for_loss() {
    // A path that reorders a fifth of its packets by up to 5 ms and loses none: the receiver
    // counts a gap as missing until its packet arrives late, so the loss it reports stays near
    // zero and no repairs are sent (found on the tests' loopback relay, which reorders: the
    // gaps alone read as 16 to 90% loss and every lone message got three to eight repairs).
    let config = TransportConfig::default();
    let link = LinkConfig::default()
        .with_delay(ONE_WAY)
        .with_reorder(0.2)
        .with_reorder_delay(5 * MS);
    let mut pair = Pair::symmetric(4, ServerConfig::new(config.clone()), link);
    let (ch, sh) = pair.establish(config).expect("handshake");
    let ids: Vec<StreamId> = (0..16)
        .map(|_| pair.client.connection(ch).unwrap().open_stream().unwrap())
        .collect();
    for round in 0..50u32 {
        let now = pair.now;
        for id in &ids {
            let c = pair.client.connection(ch).unwrap();
            c.write(*id, &[round as u8; 700]).unwrap();
        }
        let until = now + 20 * MS;
        pair.run_until(Duration::from_secs(1), |p| p.now >= until);
    }
    let c = pair.client.connection(ch).unwrap().stats();
    let s = pair.server.connection(sh).unwrap().stats();
    assert_eq!(
        c.fec.repair_packets_sent + s.fec.repair_packets_sent,
        0,
        "{:?}",
        c.fec
    );
}

#[test]
fn an_end_that_turns_fec_off_gets_no_repairs_and_sends_none() {
    let fixed = TransportConfig::default().fec(FecMode::Fixed {
        sources: 2,
        total: 4,
    });
    let off = TransportConfig::default().fec(FecMode::Off);
    for (client, server) in [(fixed.clone(), off.clone()), (off, fixed)] {
        let mut pair = Pair::symmetric(1, ServerConfig::new(server), link(0.05, 1.0));
        let (ch, sh) = pair.establish(client).expect("handshake");
        let shape = Exchanges {
            count: 50,
            size: 1024,
            pause: 10 * MS,
            think: Duration::ZERO,
        };
        request_response(&mut pair, ch, sh, shape).expect("exchanges end");
        let c = pair.client.connection(ch).unwrap().stats();
        let s = pair.server.connection(sh).unwrap().stats();
        assert_eq!(c.fec.repair_packets_sent + s.fec.repair_packets_sent, 0);
    }
}

/// Goodput through a 50 Mbit/s bottleneck (40 ms RTT) at `loss`, with every byte checked.
fn bulk_goodput(fec: FecMode, loss: f64) -> (f64, ConnectionStats) {
    let rate = 50_000_000;
    let link = LinkConfig::default()
        .with_delay(ONE_WAY)
        .with_rate(rate, 250_000)
        .with_loss(loss);
    let config = TransportConfig::default()
        .fec(fec)
        .receive_windows(16 << 20, 64 << 20)
        .stream_send_buffer(16 << 20);
    let mut pair = Pair::symmetric(9, ServerConfig::new(config.clone()), link);
    let (ch, sh) = pair.establish(config).unwrap();
    let size = 16 << 20;
    let mut sender = BulkSide::new(ch, true, 9, 1, size);
    let mut receiver = BulkSide::new(sh, false, 9, 0, 0);
    let start = pair.now;
    let done = pair.run_until(Duration::from_secs(60), |p| {
        sender.pump(p.now, &mut p.client);
        receiver.pump(p.now, &mut p.server);
        receiver.received_bytes() >= size && sender.is_done() || receiver.is_done()
    });
    assert!(done, "transfer did not finish");
    verify(&sender, &receiver).expect("every byte intact");
    let secs = (pair.now - start).as_secs_f64();
    let stats = pair.client.connection(ch).unwrap().stats();
    (size as f64 * 8.0 / secs / rate as f64, stats)
}

#[test]
fn bulk_transfers_are_neither_slowed_nor_padded_with_repairs() {
    for loss in [0.05, 0.10] {
        let (auto, stats) = bulk_goodput(FecMode::Auto, loss);
        let (off, _) = bulk_goodput(FecMode::Off, loss);
        let cost = stats.fec.repair_bytes_sent as f64 / stats.bytes_sent as f64;
        eprintln!(
            "bulk 16 MiB, {:.0}% loss: goodput auto {auto:.3}, off {off:.3} of the link; repair share {cost:.4}",
            loss * 100.0
        );
        assert!(auto >= off * 0.9, "auto {auto:.3} vs off {off:.3}");
        // Only the transfer's start (while less than a group's worth is ready to send) and its
        // tail are sources: 1.9% of the bytes at 5%, 2.6 to 4.3% at 10% across five seeds
        // (1.9 to 3.0% while rebuilt packets were still sent again; goodput 0.782 against
        // 0.787 on average, within the seeds' spread).
        assert!(cost < 0.05, "repairs in bulk: {cost:.4}");
    }
}

#[test]
fn sixty_four_clients_keep_the_tail_past_the_ten_second_min_rtt_window() {
    // A clean 50 Mbit/s path, as ferry-bench's, and 64 closed-loop clients for some 15 s
    // after a sequential phase: longer than BBR's 10 s minimum-RTT window. The clients' bursts
    // are paced, so their RTT samples never quite match the minimum; PROBE_RTT then held the
    // window at half a BDP every 10 s, and about 1% of exchanges (those of its 200 ms and the
    // round trips after) took two round trips: p99 73 ms, max 103 ms, FEC or not. An
    // app-limited flow that sees about its minimum no longer probes.
    for fec in [FecMode::Auto, FecMode::Off] {
        let config = TransportConfig::default().fec(fec);
        let path = link(0.0, 1.0).with_rate(50_000_000, 250_000);
        let mut pair = Pair::symmetric(5, ServerConfig::new(config.clone()), path);
        let (ch, sh) = pair.establish(config).expect("handshake");
        request_response(&mut pair, ch, sh, one_kb(300, Duration::ZERO))
            .expect("every exchange ends");
        let (lat, _) = concurrent_on(&mut pair, ch, sh, 64, 24_000);
        let (p99, max) = (quantile(&lat, 0.99), *lat.last().unwrap());
        eprintln!(
            "{fec:?}, 64 clients for {:.1} s on a clean 50 Mbit/s path: p99 {:.1} ms, max {:.1} ms",
            ms(lat.iter().sum::<Duration>() / 64) / 1000.0,
            ms(p99),
            ms(max)
        );
        assert!(p99 <= RTT + 2 * MS, "{fec:?}: p99 {p99:?}");
        assert!(max < RTT * 5 / 4, "{fec:?}: max {max:?}");
    }
}

#[test]
fn in_a_busy_flow_a_loss_is_rebuilt_by_the_next_repair_not_when_a_group_closes() {
    // ferry-bench's shape: sequential exchanges, then 64 closed-loop clients through a 50
    // Mbit/s bottleneck, 5% loss each way. Repairs over a sliding window of recent sources
    // leave every fourth source, so a lone loss comes back a few packets later. When repairs
    // went in groups (closed a fifth of the RTT after their first source, Reed-Solomon
    // repairs at the close), a loss waited for its group to close: in this run p95 46.0 ms,
    // p99 49.0 ms, 0.370 repair bytes per other byte; now 41.8 ms, 45.5 ms and 0.352 (0.330
    // with a window of one hold, whose repairs were shorter: here messages share packets, and
    // a repair is as long as the longest packet it covers).
    let config = TransportConfig::default();
    let path = link(0.05, 1.0).with_rate(50_000_000, 250_000);
    let mut pair = Pair::symmetric(11, ServerConfig::new(config.clone()), path);
    let (ch, sh) = pair.establish(config).expect("handshake");
    request_response(&mut pair, ch, sh, one_kb(300, Duration::ZERO)).expect("every exchange ends");
    let before = both_stats(&mut pair, ch, sh);
    let (lat, after) = concurrent_on(&mut pair, ch, sh, 64, 12_000);
    let sum = |stats: &[ConnectionStats; 2], f: fn(&ConnectionStats) -> u64| {
        stats.iter().map(f).sum::<u64>()
    };
    let repair =
        sum(&after, |s| s.fec.repair_bytes_sent) - sum(&before, |s| s.fec.repair_bytes_sent);
    let all = sum(&after, |s| s.bytes_sent) - sum(&before, |s| s.bytes_sent);
    let cost = repair as f64 / (all - repair) as f64;
    let (p95, p99) = (quantile(&lat, 0.95), quantile(&lat, 0.99));
    eprintln!(
        "64 clients after a sequential phase, 5% loss: p90 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, \
         {:.2}% waited for a retransmission, overhead {cost:.3}",
        ms(quantile(&lat, 0.9)),
        ms(p95),
        ms(p99),
        100.0 * retransmitted(&lat)
    );
    assert!(p95 <= RTT + 3 * MS, "p95 {p95:?}");
    assert!(p99 <= RTT * 5 / 4, "p99 {p99:?}");
    assert!(cost <= 0.36, "overhead {cost:.3}");
}
