//! The default controller: a simplified BBR (v1), after Cardwell et al., "BBR: Congestion-Based
//! Congestion Control" (ACM Queue, 2016) and draft-cardwell-iccrg-bbr-congestion-control.
//!
//! BBR models the path by two numbers, the bottleneck bandwidth (the windowed maximum of recent
//! delivery-rate samples) and the round-trip propagation delay (the windowed minimum RTT), and
//! sends at the bandwidth with about two bandwidth-delay products in flight. Loss does not enter
//! the model, so random loss (radio, congested peering) costs only the lost bytes, where Reno and
//! CUBIC halve their window at each loss and collapse on a 5%-loss path.
//!
//! Phases: STARTUP doubles the rate each round until the bandwidth stops growing (three rounds
//! under +25%), DRAIN empties the queue STARTUP built, PROBE_BW cycles the pacing gain through
//! 1.25, 0.75 and six rounds of 1 to probe for more bandwidth and give it back, and PROBE_RTT
//! (when the minimum RTT is 10 s old) shrinks the window for 200 ms to measure it again.
//! Simplifications: no long-term ("policer") model and no loss-based bound on in-flight data.

use std::time::{Duration, Instant};

use super::delivery_rate::DeliveryRateEstimator;
use super::{AckedPacket, Controller, DeliveryState};
use crate::rtt::RttEstimator;

/// 2/ln(2): the smallest gain that doubles the delivery rate each round in STARTUP.
const HIGH_GAIN: f64 = 2.885;
/// Window gain in PROBE_BW: two bandwidth-delay products absorb delayed and stretched ACKs.
const CWND_GAIN: f64 = 2.0;
/// PROBE_BW pacing gains, one phase per minimum RTT.
const PACING_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Round trips the bandwidth filter remembers.
const BW_WINDOW_ROUNDS: u64 = 10;
/// Age after which the minimum RTT is measured again.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// Time spent in PROBE_RTT.
const PROBE_RTT_TIME: Duration = Duration::from_millis(200);
/// Initial window, in datagrams: enough for low-latency bursts on a fresh connection (QUIC
/// allows 10, KCP's default window is 32).
const INITIAL_WINDOW_DATAGRAMS: u64 = 32;
/// Smallest window, in datagrams.
const MIN_WINDOW_DATAGRAMS: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

/// Simplified BBR v1.
#[derive(Debug, Clone)]
pub struct Bbr {
    mode: Mode,
    max_datagram: u64,
    rate: DeliveryRateEstimator,
    /// Per-round maximum bandwidth samples (bytes/s), the last `BW_WINDOW_ROUNDS` rounds.
    bw_samples: [(u64, u64); BW_WINDOW_ROUNDS as usize],
    round: u64,
    next_round_delivered: u64,
    round_start: bool,
    min_rtt: Option<Duration>,
    min_rtt_stamp: Instant,
    full_bw: u64,
    full_bw_rounds: u32,
    filled_pipe: bool,
    cycle_index: usize,
    cycle_stamp: Instant,
    probe_rtt_done: Option<Instant>,
    pacing_gain: f64,
    cwnd_gain: f64,
    cwnd: u64,
    /// Window to restore after PROBE_RTT or persistent congestion.
    prior_cwnd: u64,
}

impl Bbr {
    /// A controller for datagrams of at most `max_datagram` bytes.
    pub fn new(now: Instant, max_datagram: u64) -> Self {
        Self {
            mode: Mode::Startup,
            max_datagram,
            rate: DeliveryRateEstimator::new(now),
            bw_samples: [(0, 0); BW_WINDOW_ROUNDS as usize],
            round: 0,
            next_round_delivered: 0,
            round_start: false,
            min_rtt: None,
            min_rtt_stamp: now,
            full_bw: 0,
            full_bw_rounds: 0,
            filled_pipe: false,
            cycle_index: 0,
            cycle_stamp: now,
            probe_rtt_done: None,
            pacing_gain: HIGH_GAIN,
            cwnd_gain: HIGH_GAIN,
            cwnd: INITIAL_WINDOW_DATAGRAMS * max_datagram,
            prior_cwnd: 0,
        }
    }

    /// Bottleneck bandwidth estimate, bytes per second (0 before any sample).
    pub fn bandwidth(&self) -> u64 {
        self.bw_samples
            .iter()
            .filter(|(round, _)| round + BW_WINDOW_ROUNDS > self.round)
            .map(|(_, bw)| *bw)
            .max()
            .unwrap_or(0)
    }

    fn min_window(&self) -> u64 {
        MIN_WINDOW_DATAGRAMS * self.max_datagram
    }

    fn bdp(&self, gain: f64) -> u64 {
        let bw = self.bandwidth();
        match self.min_rtt {
            Some(rtt) if bw > 0 => (bw as f64 * rtt.as_secs_f64() * gain) as u64,
            _ => (INITIAL_WINDOW_DATAGRAMS * self.max_datagram) as f64 as u64,
        }
    }

    fn record_bandwidth(&mut self, bw: u64) {
        let slot = &mut self.bw_samples[(self.round % BW_WINDOW_ROUNDS) as usize];
        if slot.0 != self.round {
            *slot = (self.round, 0);
        }
        slot.1 = slot.1.max(bw);
    }

    fn check_full_pipe(&mut self, app_limited: bool) {
        if self.filled_pipe || !self.round_start || app_limited {
            return;
        }
        let bw = self.bandwidth();
        if bw as f64 >= self.full_bw as f64 * 1.25 {
            self.full_bw = bw;
            self.full_bw_rounds = 0;
            return;
        }
        self.full_bw_rounds += 1;
        if self.full_bw_rounds >= 3 {
            self.filled_pipe = true;
        }
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw;
        self.pacing_gain = 1.0;
        self.cwnd_gain = CWND_GAIN;
        // Start at a random-ish but deterministic phase other than the 0.75 drain phase.
        self.cycle_index = 2 + (self.round as usize % 6);
        self.cycle_stamp = now;
    }

    fn update_mode(&mut self, now: Instant, bytes_in_flight: u64) {
        match self.mode {
            Mode::Startup if self.filled_pipe => {
                self.mode = Mode::Drain;
                self.pacing_gain = 1.0 / HIGH_GAIN;
                self.cwnd_gain = HIGH_GAIN;
            }
            Mode::Drain if bytes_in_flight <= self.bdp(1.0) => self.enter_probe_bw(now),
            Mode::ProbeBw => {
                let rtt = self.min_rtt.unwrap_or(Duration::from_millis(100));
                let gain = PACING_GAINS[self.cycle_index];
                let elapsed = now.saturating_duration_since(self.cycle_stamp) > rtt;
                let advance = if gain > 1.0 {
                    elapsed && bytes_in_flight >= self.bdp(gain)
                } else if gain < 1.0 {
                    elapsed || bytes_in_flight <= self.bdp(1.0)
                } else {
                    elapsed
                };
                if advance {
                    self.cycle_index = (self.cycle_index + 1) % PACING_GAINS.len();
                    self.cycle_stamp = now;
                }
                self.pacing_gain = PACING_GAINS[self.cycle_index];
            }
            _ => {}
        }
        // PROBE_RTT: the minimum RTT is stale.
        if self.mode != Mode::ProbeRtt
            && now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_WINDOW
        {
            self.mode = Mode::ProbeRtt;
            self.pacing_gain = 1.0;
            self.prior_cwnd = self.prior_cwnd.max(self.cwnd);
            self.probe_rtt_done = None;
        }
        if self.mode == Mode::ProbeRtt {
            if self.probe_rtt_done.is_none() && bytes_in_flight <= self.min_window() {
                self.probe_rtt_done = Some(now + PROBE_RTT_TIME);
            }
            if self.probe_rtt_done.is_some_and(|t| now >= t) {
                self.min_rtt_stamp = now;
                self.cwnd = self.cwnd.max(self.prior_cwnd);
                self.prior_cwnd = 0;
                if self.filled_pipe {
                    self.enter_probe_bw(now);
                } else {
                    self.mode = Mode::Startup;
                    self.pacing_gain = HIGH_GAIN;
                    self.cwnd_gain = HIGH_GAIN;
                }
            }
        }
    }

    fn update_cwnd(&mut self, acked_bytes: u64) {
        if self.mode == Mode::ProbeRtt {
            self.cwnd = self.min_window();
            return;
        }
        // Three datagrams of headroom for ACK aggregation, as BBR's "quantum".
        let target = self.bdp(self.cwnd_gain) + 3 * self.max_datagram;
        self.cwnd = if self.filled_pipe {
            (self.cwnd + acked_bytes).min(target)
        } else if self.cwnd < target
            || self.rate.delivered() < INITIAL_WINDOW_DATAGRAMS * self.max_datagram
        {
            self.cwnd + acked_bytes
        } else {
            self.cwnd
        };
        self.cwnd = self.cwnd.max(self.min_window());
    }
}

impl Controller for Bbr {
    fn on_sent(&mut self, now: Instant, _bytes: u64, bytes_in_flight: u64) -> DeliveryState {
        self.rate.on_sent(now, bytes_in_flight)
    }

    fn on_app_limited(&mut self, bytes_in_flight: u64) {
        self.rate.on_app_limited(bytes_in_flight);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        acked: &[AckedPacket],
        rtt: &RttEstimator,
        bytes_in_flight: u64,
    ) {
        if acked.is_empty() {
            return;
        }
        // Minimum RTT, with its age.
        let latest = rtt.latest();
        if self.min_rtt.is_none_or(|m| latest <= m) {
            self.min_rtt = Some(latest);
            self.min_rtt_stamp = now;
        }
        let acked_bytes: u64 = acked.iter().map(|p| p.bytes).sum();
        let newest_delivered = acked
            .iter()
            .map(|p| p.delivery.delivered)
            .max()
            .unwrap_or(0);
        let sample = self.rate.on_ack(now, acked, Duration::ZERO);
        // Round trips: a round ends when a packet sent after the previous round's end is acked.
        self.round_start = false;
        if newest_delivered >= self.next_round_delivered {
            self.next_round_delivered = self.rate.delivered();
            self.round += 1;
            self.round_start = true;
        }
        let mut app_limited = false;
        if let Some(s) = sample {
            app_limited = s.is_app_limited;
            if !s.is_app_limited || s.delivery_rate >= self.bandwidth() {
                self.record_bandwidth(s.delivery_rate);
            }
        }
        self.check_full_pipe(app_limited);
        self.update_mode(now, bytes_in_flight);
        self.update_cwnd(acked_bytes);
    }

    fn on_loss(
        &mut self,
        _now: Instant,
        _lost_bytes: u64,
        _largest_lost_sent: Instant,
        _bytes_in_flight: u64,
    ) {
        // The model ignores loss: random loss must not shrink the sending rate.
    }

    fn on_persistent_congestion(&mut self, _now: Instant) {
        // Nothing was acknowledged for several timeouts: restart from a small window; the
        // bandwidth model is kept, so the window grows back within a round trip once ACKs flow.
        self.prior_cwnd = self.prior_cwnd.max(self.cwnd);
        self.cwnd = self.min_window();
    }

    fn window(&self) -> u64 {
        self.cwnd
    }

    fn pacing_rate(&self, rtt: &RttEstimator) -> u64 {
        let bw = self.bandwidth();
        if bw == 0 {
            // No sample yet: the initial window per smoothed RTT, with the startup gain.
            let rtt = rtt.smoothed().max(Duration::from_millis(1));
            return ((self.cwnd as f64 / rtt.as_secs_f64()) * HIGH_GAIN) as u64;
        }
        (bw as f64 * self.pacing_gain) as u64
    }

    fn name(&self) -> &'static str {
        "bbr"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the controller through a packet-level bottleneck model: fixed rate, one-way delay,
    /// drop-tail queue, seeded random loss. Returns the delivered fraction of the link.
    fn bottleneck_goodput(loss: f64, seconds: u64) -> (f64, u64) {
        use rand_chacha::rand_core::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        let t0 = Instant::now();
        let mtu = 1350u64;
        let link = 6_250_000u64; // 50 Mbit/s
        let one_way = Duration::from_millis(20);
        let mut bbr = Bbr::new(t0, mtu);
        let mut rtt = RttEstimator::new(Duration::from_millis(100));
        let mut in_flight: std::collections::VecDeque<(Instant, Instant, DeliveryState, bool)> =
            Default::default();
        let mut bytes_in_flight = 0;
        let mut link_free = t0;
        let mut now = t0;
        let mut delivered = 0u64;
        let mut max_queue = Duration::ZERO;
        let step = Duration::from_micros(100);
        let mut next_send = t0;
        while now < t0 + Duration::from_secs(seconds) {
            // Acks due.
            while let Some(&(sent, ack_at, d, lost)) = in_flight.front() {
                if ack_at > now {
                    break;
                }
                in_flight.pop_front();
                bytes_in_flight -= mtu;
                if lost {
                    bbr.on_loss(now, mtu, sent, bytes_in_flight);
                    continue;
                }
                delivered += mtu;
                rtt.update(now - sent, Duration::ZERO);
                let p = AckedPacket {
                    sent_time: sent,
                    bytes: mtu,
                    delivery: d,
                };
                bbr.on_ack(now, &[p], &rtt, bytes_in_flight);
            }
            // Send while window and pacing allow.
            while bytes_in_flight + mtu <= bbr.window() && now >= next_send {
                let d = bbr.on_sent(now, mtu, bytes_in_flight);
                bytes_in_flight += mtu;
                let start = link_free.max(now);
                max_queue = max_queue.max(start - now);
                link_free = start + Duration::from_nanos(mtu * 1_000_000_000 / link);
                let lost = (rng.next_u64() % 10_000) as f64 / 10_000.0 < loss;
                // Lost packets are detected about one RTT later, like a reorder threshold would.
                in_flight.push_back((now, link_free + 2 * one_way, d, lost));
                let rate = bbr.pacing_rate(&rtt).max(1);
                next_send = now + Duration::from_nanos(mtu * 1_000_000_000 / rate);
            }
            now += step;
        }
        let fraction = delivered as f64 / (link as f64 * seconds as f64);
        (fraction, max_queue.as_millis() as u64)
    }

    #[test]
    fn converges_to_the_link_rate_without_a_standing_queue() {
        let (fraction, max_queue_ms) = bottleneck_goodput(0.0, 10);
        assert!(
            fraction > 0.80,
            "goodput {fraction} (10 s including startup)"
        );
        assert!(max_queue_ms < 200, "queue reached {max_queue_ms} ms");
    }

    #[test]
    fn random_loss_does_not_shrink_the_bandwidth_estimate() {
        let (fraction, _) = bottleneck_goodput(0.05, 10);
        assert!(fraction > 0.6, "goodput {fraction} at 5% loss");
    }

    #[test]
    fn persistent_congestion_shrinks_the_window_but_keeps_the_model() {
        let now = Instant::now();
        let mut bbr = Bbr::new(now, 1000);
        bbr.record_bandwidth(1_000_000);
        bbr.on_persistent_congestion(now);
        assert_eq!(bbr.window(), 4000);
        assert_eq!(bbr.bandwidth(), 1_000_000);
    }
}
