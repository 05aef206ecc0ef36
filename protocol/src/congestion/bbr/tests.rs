//! Tests of the BBR controller: against a simulated bottleneck path in virtual time (goodput and
//! queueing with deep and shallow buffers, random loss, a route change, persistent congestion)
//! and unit by unit (STARTUP's end, app-limited samples, the first window, extreme inputs).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::congestion::pacing::Pacer;

const MS: Duration = Duration::from_millis(1);
const MTU: u64 = 1350;
/// 50 Mbit/s.
const LINK_BYTES_PER_S: u64 = 6_250_000;

/// A bottleneck path for the test model.
#[derive(Clone)]
struct Path {
    link_bytes_per_s: u64,
    /// One-way propagation delay, each direction.
    one_way: Duration,
    /// Extra one-way delay from the given time on (a route change).
    route_change: Option<(Duration, Duration)>,
    /// Drop-tail queue at the bottleneck.
    buffer_bytes: u64,
    /// Probability that a packet is lost on the wire after the bottleneck (it still used
    /// link time), independent of everything else.
    random_loss: f64,
    /// Everything sent in this interval is lost.
    blackout: Option<(Duration, Duration)>,
    /// The receiver sends ACKs on a timer of this granularity (ACK aggregation).
    ack_tick: Duration,
}

impl Path {
    /// 50 Mbit/s, 40 ms RTT, one BDP of buffer.
    fn standard(random_loss: f64) -> Self {
        Self {
            link_bytes_per_s: LINK_BYTES_PER_S,
            one_way: 20 * MS,
            route_change: None,
            buffer_bytes: 250_000,
            random_loss,
            blackout: None,
            ack_tick: MS,
        }
    }
}

/// What a model run measured.
struct Run {
    /// Bytes delivered to the receiver in each 100 ms of the run.
    delivered_per_100ms: Vec<u64>,
    /// Bottleneck queueing delay seen by each packet after the first `warmup`.
    max_queue_after_warmup: Duration,
    mean_queue_after_warmup: Duration,
    /// Packets dropped by the full bottleneck queue.
    congestive_drops: u64,
    /// Mode changes: (time since start, mode).
    modes: Vec<(Duration, Mode)>,
    bbr: Bbr,
}

impl Run {
    /// Delivered bytes over `[from, to)` as a fraction of the link rate.
    fn goodput(&self, from: Duration, to: Duration, link_bytes_per_s: u64) -> f64 {
        let a = (from.as_millis() / 100) as usize;
        let b = (to.as_millis() / 100) as usize;
        let bytes: u64 = self.delivered_per_100ms[a..b].iter().sum();
        bytes as f64 / (link_bytes_per_s as f64 * (to - from).as_secs_f64())
    }
}

/// `t` rounded up to a multiple of `tick` after `t0`, like a coarse timer.
fn ceil_tick(t0: Instant, t: Instant, tick: Duration) -> Instant {
    if tick.is_zero() {
        return t;
    }
    let ticks = t.duration_since(t0).as_nanos().div_ceil(tick.as_nanos());
    t0 + Duration::from_nanos((ticks * tick.as_nanos()) as u64)
}

/// Drives a [`Bbr`] and the real [`Pacer`] over `path` for `duration` with a sender that
/// always has data. Loss detection is RFC 9002-like (3 packets or 9/8 RTT after a later
/// packet was acknowledged; a backed-off timeout for tails, with persistent congestion at the
/// second one in a row). The sender's timers fire on a 1 ms grid, like tokio's.
fn simulate(path: &Path, duration: Duration, warmup: Duration, seed: u64) -> Run {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t0 = Instant::now();
    let end = t0 + duration;
    let mut bbr = Bbr::new(t0, MTU, 1);
    let mut rtt = RttEstimator::new(100 * MS);
    let mut pacer = Pacer::new(t0, MTU);
    // pn -> (sent time, delivery state)
    let mut in_flight: BTreeMap<u64, (Instant, DeliveryState)> = BTreeMap::new();
    let mut bytes_in_flight = 0u64;
    // (ACK arrival at the sender, pn)
    let mut acks: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut next_pn = 0u64;
    let mut largest_acked: Option<u64> = None;
    let mut link_free = t0;
    let mut timeouts_in_a_row = 0u32;
    let mut run = Run {
        delivered_per_100ms: vec![0; (duration.as_millis() / 100) as usize + 1],
        max_queue_after_warmup: Duration::ZERO,
        mean_queue_after_warmup: Duration::ZERO,
        congestive_drops: 0,
        modes: vec![(Duration::ZERO, Mode::Startup)],
        bbr: bbr.clone(),
    };
    let mut queue_sum = Duration::ZERO;
    let mut queue_samples = 0u32;
    let mut now = t0;
    let tick = MS;
    while now < end {
        // ACKs that have arrived, as one ACK frame.
        let mut acked = Vec::new();
        let mut newest_sent = None;
        while let Some(&Reverse((at, pn))) = acks.peek() {
            if at > now {
                break;
            }
            acks.pop();
            if let Some((sent, delivery)) = in_flight.remove(&pn) {
                bytes_in_flight -= MTU;
                acked.push(AckedPacket {
                    sent_time: sent,
                    bytes: MTU,
                    delivery,
                });
                largest_acked = largest_acked.max(Some(pn));
                newest_sent = newest_sent.max(Some(sent));
            }
        }
        if let Some(sent) = newest_sent {
            acked.sort_by_key(|p| p.sent_time);
            rtt.update(now - sent, Duration::ZERO);
            bbr.on_ack(now, &acked, &rtt, bytes_in_flight);
            timeouts_in_a_row = 0;
        }
        // Loss detection.
        let loss_delay = rtt.smoothed().max(rtt.latest()).mul_f64(1.125);
        let mut next_loss_check = None;
        if let Some(largest) = largest_acked {
            let mut lost = Vec::new();
            for (&pn, &(sent, _)) in in_flight.range(..largest) {
                if pn + 3 <= largest || sent + loss_delay <= now {
                    lost.push((pn, sent));
                } else {
                    next_loss_check = Some(sent + loss_delay);
                    break;
                }
            }
            if let Some(&(_, last_sent)) = lost.last() {
                for (pn, _) in &lost {
                    in_flight.remove(pn);
                }
                bytes_in_flight -= MTU * lost.len() as u64;
                bbr.on_loss(
                    now,
                    MTU * lost.len() as u64,
                    last_sent,
                    bytes_in_flight,
                    LossKind::Detected,
                );
            }
        }
        // Retransmission timeout.
        let rto = rtt.rto(200 * MS, MS) * 2u32.pow(timeouts_in_a_row.min(6));
        let oldest = in_flight.values().next().map(|&(sent, _)| sent);
        if oldest.is_some_and(|sent| sent + rto <= now) {
            let last_sent = in_flight.values().last().map_or(now, |&(s, _)| s);
            let lost = bytes_in_flight;
            in_flight.clear();
            bytes_in_flight = 0;
            timeouts_in_a_row += 1;
            bbr.on_loss(now, lost, last_sent, 0, LossKind::Timeout);
            if timeouts_in_a_row >= 2 {
                bbr.on_persistent_congestion(now);
            }
        }
        // Send while the window and the pacer allow.
        let mut pacer_wake = None;
        while bytes_in_flight + MTU <= bbr.window() {
            if let Some(at) = pacer.delay(now, bbr.pacing_rate(&rtt), MTU) {
                pacer_wake = Some(at);
                break;
            }
            let delivery = bbr.on_sent(now, MTU, bytes_in_flight);
            pacer.on_sent(now, MTU);
            bytes_in_flight += MTU;
            let pn = next_pn;
            next_pn += 1;
            in_flight.insert(pn, (now, delivery));
            // The bottleneck: drop-tail queue, then the link.
            let queue = link_free.saturating_duration_since(now);
            if now - t0 >= warmup {
                run.max_queue_after_warmup = run.max_queue_after_warmup.max(queue);
                queue_sum += queue;
                queue_samples += 1;
            }
            let queued_bytes =
                (queue.as_nanos() * u128::from(path.link_bytes_per_s) / 1_000_000_000) as u64;
            if queued_bytes + MTU > path.buffer_bytes {
                run.congestive_drops += 1;
                continue;
            }
            let depart = link_free.max(now)
                + Duration::from_nanos(MTU * 1_000_000_000 / path.link_bytes_per_s);
            link_free = depart;
            let since_start = now - t0;
            let blacked_out = path
                .blackout
                .is_some_and(|(a, b)| since_start >= a && since_start < b);
            let unlucky = ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < path.random_loss;
            if blacked_out || unlucky {
                continue;
            }
            let mut one_way = path.one_way;
            if let Some((at, extra)) = path.route_change {
                if since_start >= at {
                    one_way += extra;
                }
            }
            let arrive = depart + one_way;
            if let Some(bucket) = run
                .delivered_per_100ms
                .get_mut((arrive - t0).as_millis() as usize / 100)
            {
                *bucket += MTU;
            }
            acks.push(Reverse((
                ceil_tick(t0, arrive, path.ack_tick) + one_way,
                pn,
            )));
        }
        if run.modes.last().is_none_or(|&(_, m)| m != bbr.mode) {
            run.modes.push((now - t0, bbr.mode));
        }
        // Sleep until the next ACK or timer.
        let mut next = end;
        if let Some(&Reverse((at, _))) = acks.peek() {
            next = next.min(at);
        }
        for timer in [pacer_wake, next_loss_check, oldest.map(|s| s + rto)]
            .into_iter()
            .flatten()
        {
            next = next.min(ceil_tick(t0, timer, tick));
        }
        now = next.max(now + Duration::from_micros(1));
    }
    run.mean_queue_after_warmup = queue_sum / queue_samples.max(1);
    run.bbr = bbr;
    run
}

fn report(label: &str, run: &Run, from: Duration, to: Duration) -> f64 {
    let g = run.goodput(from, to, LINK_BYTES_PER_S);
    println!(
        "{label}: goodput {:.1}% of the link over {from:?}..{to:?}, whole run {:.1}%, \
         estimate {:.1} Mbit/s, min RTT {:?}, queue max {:?} mean {:?}, {} drops, modes {:?}",
        g * 100.0,
        run.goodput(Duration::ZERO, to, LINK_BYTES_PER_S) * 100.0,
        run.bbr.bandwidth_bytes_per_s() as f64 * 8.0 / 1e6,
        run.bbr.min_rtt(),
        run.max_queue_after_warmup,
        run.mean_queue_after_warmup,
        run.congestive_drops,
        run.modes.iter().take(6).collect::<Vec<_>>(),
    );
    g
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn converges_to_the_link_rate_without_a_standing_queue() {
    let run = simulate(&Path::standard(0.0), 20 * SECOND, 3 * SECOND, 1);
    let steady = report("0% loss", &run, 3 * SECOND, 20 * SECOND);
    assert!(steady > 0.90, "steady goodput {steady}");
    let whole = run.goodput(Duration::ZERO, 20 * SECOND, LINK_BYTES_PER_S);
    assert!(whole > 0.85, "goodput {whole} including startup");
    let bw = run.bbr.bandwidth_bytes_per_s();
    assert!(
        (LINK_BYTES_PER_S * 9 / 10..=LINK_BYTES_PER_S * 11 / 10).contains(&bw),
        "estimate {bw}"
    );
    assert_eq!(run.bbr.mode, Mode::ProbeBw);
    // After STARTUP, only the 1.25 probes queue anything, about a quarter of the RTT.
    assert!(
        run.max_queue_after_warmup < 25 * MS,
        "{:?}",
        run.max_queue_after_warmup
    );
    assert!(
        run.mean_queue_after_warmup < 5 * MS,
        "{:?}",
        run.mean_queue_after_warmup
    );
}

#[test]
fn random_loss_does_not_shrink_the_bandwidth_estimate() {
    for seed in 1..=3 {
        let run = simulate(&Path::standard(0.05), 20 * SECOND, 3 * SECOND, seed);
        let steady = report("5% loss", &run, 3 * SECOND, 20 * SECOND);
        // At most 95% can arrive: the lost 5% used the link too.
        assert!(
            steady > 0.80,
            "seed {seed}: steady goodput {steady} at 5% loss"
        );
        let whole = run.goodput(Duration::ZERO, 20 * SECOND, LINK_BYTES_PER_S);
        assert!(whole > 0.60, "seed {seed}: goodput {whole} at 5% loss");
        let bw = run.bbr.bandwidth_bytes_per_s();
        assert!(bw > LINK_BYTES_PER_S * 8 / 10, "seed {seed}: estimate {bw}");
    }
}

#[test]
fn heavier_random_loss_still_keeps_most_of_the_link() {
    for loss in [0.01, 0.10, 0.15] {
        let run = simulate(&Path::standard(loss), 20 * SECOND, 3 * SECOND, 7);
        let steady = report(
            &format!("{}% loss", loss * 100.0),
            &run,
            3 * SECOND,
            20 * SECOND,
        );
        assert!(steady > 0.6, "goodput {steady} at {loss} loss");
    }
}

#[test]
fn deep_buffers_do_not_fill_up() {
    let mut path = Path::standard(0.0);
    path.buffer_bytes = 10 * 250_000; // 10 BDPs: the queue is never bounded by drops
    let run = simulate(&path, 20 * SECOND, 3 * SECOND, 2);
    report("deep buffer", &run, 3 * SECOND, 20 * SECOND);
    assert_eq!(run.congestive_drops, 0);
    assert!(
        run.max_queue_after_warmup < 25 * MS,
        "{:?}",
        run.max_queue_after_warmup
    );
    assert!(run.goodput(3 * SECOND, 20 * SECOND, LINK_BYTES_PER_S) > 0.9);
}

#[test]
fn shallow_buffer_ends_startup_and_keeps_the_link_busy() {
    let mut path = Path::standard(0.0);
    path.buffer_bytes = 30_000; // an eighth of a BDP
    let run = simulate(&path, 20 * SECOND, 3 * SECOND, 3);
    let steady = report("shallow buffer", &run, 3 * SECOND, 20 * SECOND);
    assert!(steady > 0.85, "goodput {steady}");
    // STARTUP ended on loss (at about 6 round trips) rather than after three more rounds of
    // flooding the buffer.
    let drain = run
        .modes
        .iter()
        .find(|(_, m)| *m == Mode::Drain)
        .map(|(t, _)| *t)
        .expect("STARTUP ended");
    assert!(drain < 300 * MS, "STARTUP lasted {drain:?}");
}

#[test]
fn min_rtt_follows_a_longer_route_within_about_ten_seconds() {
    let mut path = Path::standard(0.0);
    // At 5 s the RTT grows from 40 to 80 ms.
    path.route_change = Some((5 * SECOND, 20 * MS));
    let run = simulate(&path, 18 * SECOND, 3 * SECOND, 4);
    report("route change", &run, 3 * SECOND, 18 * SECOND);
    let min = run.bbr.min_rtt().expect("measured");
    assert!(min >= 80 * MS && min < 90 * MS, "min RTT {min:?}");
    // PROBE_RTT ran, briefly: about 200 ms plus a round trip...
    let (start, end) = run
        .modes
        .windows(2)
        .find(|w| w[0].1 == Mode::ProbeRtt)
        .map(|w| (w[0].0, w[1].0))
        .expect("PROBE_RTT ran and ended");
    let probe = end - start;
    assert!(
        probe >= 200 * MS && probe < 500 * MS,
        "PROBE_RTT took {probe:?}"
    );
    // ...at half a BDP, so a good part of the rate (a 4-datagram window would deliver 2%).
    let during = run.goodput(start + 100 * MS, end, LINK_BYTES_PER_S);
    assert!(during > 0.25, "goodput {during} during PROBE_RTT");
    assert!(run.goodput(12 * SECOND, 18 * SECOND, LINK_BYTES_PER_S) > 0.85);
}

#[test]
fn persistent_congestion_recovers_the_rate_quickly() {
    let mut path = Path::standard(0.0);
    path.blackout = Some((5 * SECOND, 7 * SECOND));
    let run = simulate(&path, 12 * SECOND, 3 * SECOND, 5);
    report("blackout 5-7 s", &run, 8 * SECOND, 12 * SECOND);
    // The first packet through after the blackout (the model's backed-off timeout decides
    // when that is)...
    let first = (70..)
        .find(|&i| run.delivered_per_100ms[i] > 0)
        .expect("traffic resumed");
    let back = Duration::from_millis(first as u64 * 100);
    assert!(back < 9 * SECOND, "resumed at {back:?}");
    // ...and from half a second later, the link is full again.
    let after = run.goodput(back + 500 * MS, back + 2 * SECOND, LINK_BYTES_PER_S);
    assert!(after > 0.95, "goodput {after} after the blackout");
}

#[test]
fn app_limited_samples_do_not_lower_the_bandwidth_estimate() {
    let t0 = Instant::now();
    let mut bbr = Bbr::new(t0, 1000, 1);
    let rtt = RttEstimator::new(10 * MS);
    bbr.bw_filter.update(1, 1_000_000);
    bbr.min_rtt = Some(10 * MS);
    // Two rounds of a trickle: one packet per 10 ms RTT, sent app-limited.
    let mut now = t0;
    for _ in 0..30 {
        bbr.on_app_limited(0);
        let d = bbr.on_sent(now, 1000, 0);
        let sent = now;
        now += 10 * MS;
        let p = AckedPacket {
            sent_time: sent,
            bytes: 1000,
            delivery: d,
        };
        bbr.on_ack(now, &[p], &rtt, 0);
    }
    assert!(bbr.round_count >= 20, "rounds {}", bbr.round_count);
    assert_eq!(bbr.bandwidth_bytes_per_s(), 1_000_000);
    assert!(!bbr.filled_pipe, "app-limited rounds do not end STARTUP");
}

#[test]
fn app_limited_is_ignored_when_the_window_is_full() {
    let t0 = Instant::now();
    let mut bbr = Bbr::new(t0, 1000, 1);
    bbr.on_app_limited(bbr.window());
    assert!(!bbr.rate.is_app_limited());
    bbr.on_app_limited(0);
    assert!(bbr.rate.is_app_limited());
}

#[test]
fn startup_ends_after_three_rounds_without_growth() {
    let t0 = Instant::now();
    let mut bbr = Bbr::new(t0, 1000, 1);
    let rtt = RttEstimator::new(10 * MS);
    // A flat 1 MB/s: ten 1000-byte packets per 10 ms round.
    let mut now = t0;
    let mut rounds_in_startup = 0;
    while bbr.mode == Mode::Startup && rounds_in_startup < 20 {
        let mut flight = Vec::new();
        for i in 0..10u64 {
            let at = now + MS * i as u32;
            flight.push(AckedPacket {
                sent_time: at,
                bytes: 1000,
                delivery: bbr.on_sent(at, 1000, i * 1000),
            });
        }
        now += 10 * MS;
        for (i, p) in flight.iter().enumerate() {
            let at = now + MS * i as u32;
            bbr.on_ack(at, std::slice::from_ref(p), &rtt, (9 - i as u64) * 1000);
        }
        now += 10 * MS;
        rounds_in_startup += 1;
    }
    assert!(bbr.filled_pipe);
    assert!(rounds_in_startup <= 5, "{rounds_in_startup} rounds");
    assert_ne!(bbr.mode, Mode::Startup);
}

/// One STARTUP round: ten 1000-byte packets sent 1 ms apart, then `lost` of them declared
/// lost as `kind` and the rest acknowledged.
fn startup_round(bbr: &mut Bbr, now: &mut Instant, rtt: &RttEstimator, lost: u64, kind: LossKind) {
    let mut flight = Vec::new();
    for i in 0..10u64 {
        let at = *now + MS * i as u32;
        flight.push(AckedPacket {
            sent_time: at,
            bytes: 1000,
            delivery: bbr.on_sent(at, 1000, i * 1000),
        });
    }
    *now += 10 * MS;
    if lost > 0 {
        bbr.on_loss(*now, lost * 1000, *now, (10 - lost) * 1000, kind);
    }
    for (i, p) in flight.iter().enumerate().skip(lost as usize) {
        let at = *now + MS * i as u32 / 8;
        bbr.on_ack(at, std::slice::from_ref(p), rtt, (9 - i as u64) * 1000);
    }
    *now += 10 * MS;
}

#[test]
fn timeouts_do_not_end_startup_but_heavy_detected_loss_does() {
    let rtt = RttEstimator::new(10 * MS);
    for (kind, ends) in [(LossKind::Timeout, false), (LossKind::Detected, true)] {
        let t0 = Instant::now();
        let mut now = t0;
        let mut bbr = Bbr::new(t0, 1000, 1);
        bbr.min_rtt = Some(10 * MS);
        startup_round(&mut bbr, &mut now, &rtt, 0, kind);
        // Nine of ten declared lost, in two rounds running.
        startup_round(&mut bbr, &mut now, &rtt, 9, kind);
        startup_round(&mut bbr, &mut now, &rtt, 9, kind);
        startup_round(&mut bbr, &mut now, &rtt, 0, kind);
        assert_eq!(bbr.filled_pipe, ends, "{kind:?}");
        assert_eq!(
            bbr.mode == Mode::Startup,
            !ends,
            "{kind:?}: {}",
            bbr.mode_name()
        );
    }
}

#[test]
fn one_heavily_lossy_round_between_clean_ones_does_not_end_startup() {
    // A burst of random loss, not a buffer that STARTUP keeps overflowing.
    let rtt = RttEstimator::new(10 * MS);
    let t0 = Instant::now();
    let mut now = t0;
    let mut bbr = Bbr::new(t0, 1000, 1);
    bbr.min_rtt = Some(10 * MS);
    for lost in [0, 9, 0, 0] {
        startup_round(&mut bbr, &mut now, &rtt, lost, LossKind::Detected);
    }
    assert!(!bbr.filled_pipe);
    assert_eq!(bbr.mode, Mode::Startup);
}

#[test]
fn starts_with_a_32_datagram_window_and_startup_pacing() {
    let t0 = Instant::now();
    let bbr = Bbr::new(t0, 1350, 1);
    assert_eq!(bbr.window(), 32 * 1350);
    assert_eq!(bbr.name(), "bbr");
    assert_eq!(bbr.mode_name(), "startup");
    // 2.885 x 43 200 bytes per 100 ms.
    let rate = bbr.pacing_rate(&RttEstimator::new(100 * MS));
    assert!((1_240_000..=1_250_000).contains(&rate), "{rate}");
}

#[test]
fn persistent_congestion_shrinks_the_window_but_keeps_the_model() {
    let now = Instant::now();
    let mut bbr = Bbr::new(now, 1000, 1);
    bbr.bw_filter.update(1, 1_000_000);
    bbr.min_rtt = Some(40 * MS);
    bbr.filled_pipe = true;
    bbr.pacing_rate_bytes_per_s = 1_000_000;
    bbr.on_persistent_congestion(now);
    assert_eq!(bbr.window(), 4000);
    assert_eq!(bbr.bandwidth_bytes_per_s(), 1_000_000);
    assert_eq!(bbr.min_rtt(), Some(40 * MS));
    assert_eq!(bbr.pacing_rate(&RttEstimator::new(MS)), 1_000_000);
}

#[test]
fn extreme_inputs_do_not_panic() {
    let t0 = Instant::now();
    let rtt = RttEstimator::new(MS);
    for mtu in [0, 1, u64::MAX] {
        let mut bbr = Bbr::new(t0, mtu, 1);
        let d = bbr.on_sent(t0, u64::MAX, u64::MAX);
        let huge = AckedPacket {
            sent_time: t0,
            bytes: u64::MAX,
            delivery: d,
        };
        bbr.on_ack(t0 + MS, &[huge, huge], &rtt, u64::MAX);
        bbr.on_ack(t0, &[huge], &rtt, 0); // time going backwards
        bbr.on_ack(t0 + 2 * MS, &[], &rtt, 0);
        bbr.on_loss(t0, u64::MAX, t0, u64::MAX, LossKind::Detected);
        bbr.on_loss(t0, u64::MAX, t0, u64::MAX, LossKind::Timeout);
        bbr.on_app_limited(u64::MAX);
        bbr.on_persistent_congestion(t0);
        assert!(bbr.window() > 0);
        assert!(bbr.pacing_rate(&rtt) > 0);
        for s in 0..30u32 {
            let now = t0 + SECOND * s;
            let d = bbr.on_sent(now, u64::MAX, 0);
            let p = AckedPacket {
                sent_time: now,
                bytes: u64::MAX,
                delivery: d,
            };
            bbr.on_ack(now + MS, &[p], &rtt, 0);
        }
        assert!(bbr.window() > 0);
    }
}

/// Twelve seconds of one 1000-byte packet per 40 ms round trip whose RTT samples are
/// `rtt(i)` for the `i`-th, the sender app-limited (nothing else to send) if `app_limited`;
/// whether PROBE_RTT ran, and the minimum RTT at the end.
fn twelve_seconds_of_samples(app_limited: bool, rtt: impl Fn(u32) -> Duration) -> (bool, Duration) {
    let t0 = Instant::now();
    let mut bbr = Bbr::new(t0, 1000, 1);
    let estimator = RttEstimator::new(40 * MS);
    bbr.bw_filter.update(1, 1_000_000);
    bbr.filled_pipe = true;
    bbr.enter_probe_bw(t0);
    let mut now = t0;
    let mut probed = false;
    for i in 0..300 {
        if app_limited {
            bbr.on_app_limited(0);
        }
        let d = bbr.on_sent(now, 1000, 0);
        let sent = now;
        now += rtt(i);
        let p = AckedPacket {
            sent_time: sent,
            bytes: 1000,
            delivery: d,
        };
        bbr.on_ack(now, &[p], &estimator, 0);
        probed |= bbr.mode == Mode::ProbeRtt;
    }
    (probed, bbr.min_rtt().expect("measured"))
}

#[test]
fn an_app_limited_flow_that_sees_about_its_minimum_rtt_skips_probe_rtt() {
    // 40 ms once, then 41 to 44 ms: never the minimum again, always within an eighth of it
    // (a request/response flow whose paced bursts queue a little).
    let jittered = |i: u32| if i == 0 { 40 * MS } else { (41 + i % 4) * MS };
    let (probed, min) = twelve_seconds_of_samples(true, jittered);
    assert!(!probed, "an app-limited flow near its minimum probed");
    assert_eq!(min, 40 * MS, "the minimum is kept");
    // A sender that always had more to send than its window may be the one keeping a queue:
    // it probes as before, and takes the probe's sample as its minimum.
    let (probed, _) = twelve_seconds_of_samples(false, jittered);
    assert!(probed, "a window-limited flow skipped PROBE_RTT");
    // So does an app-limited flow whose path grew longer by more than an eighth.
    let longer = |i: u32| if i == 0 { 40 * MS } else { 46 * MS };
    let (probed, min) = twelve_seconds_of_samples(true, longer);
    assert!(probed, "a longer route went unprobed");
    assert_eq!(min, 46 * MS);
}
