//! The default controller: a simplified BBR v1.
//!
//! After N. Cardwell, Y. Cheng, C. S. Gunn, S. Hassas Yeganeh, V. Jacobson, "BBR:
//! Congestion-Based Congestion Control" (ACM Queue 14(5), 2016) and the IETF draft
//! draft-cardwell-iccrg-bbr-congestion-control (the BBR v1 text). The code is written from those
//! descriptions.
//!
//! # Why
//!
//! Ferry tunnels traffic over paths with random (non-congestive) loss: radio links, congested
//! peering, lossy last miles. Loss-based controllers (Reno, CUBIC) read every loss as congestion
//! and halve their window, so at a few percent of random loss they use a small fraction of the
//! link. BBR instead *models* the path by two numbers, estimated from what the ACKs say:
//!
//! - the bottleneck bandwidth `BtlBw`: the maximum delivery rate (see
//!   [`delivery_rate`](super::delivery_rate)) seen over the last 10 round trips;
//! - the round-trip propagation delay `RTprop`: the minimum RTT seen over the last 10 seconds.
//!
//! It paces at `gain x BtlBw` and keeps at most `2 x BtlBw x RTprop` (two bandwidth-delay
//! products, at least 4 datagrams) in flight. Loss does not enter the model, so 5% random loss
//! costs roughly the lost bytes, not the link.
//!
//! # Phases
//!
//! - STARTUP paces at 2/ln 2 (~2.885) times the estimate, which doubles the delivery rate every
//!   round trip, until three rounds in a row grow the estimate by less than 25%: the pipe is full.
//! - DRAIN paces at the inverse gain until what is in flight is down to one BDP, emptying the
//!   queue STARTUP built.
//! - PROBE_BW cycles the pacing gain through 1.25 (probe for more bandwidth), 0.75 (drain what the
//!   probe queued) and six phases of 1, each one minimum RTT long, starting at a random phase
//!   other than 0.75 so that competing flows do not probe in lockstep.
//! - PROBE_RTT: when the minimum RTT has not been seen again for 10 seconds, the window drops to
//!   half a BDP (at least 4 datagrams) for 200 ms and at least one round trip, so that queues
//!   drain and the true propagation delay can be measured again (a route may have changed).
//!   BBR v1 dropped to 4 datagrams; half a BDP is what BBR v2 and v3 use
//!   (draft-cardwell-iccrg-bbr-congestion-control-02, `ProbeRTTCwndGain`): it empties the queue
//!   just the same, but keeps half the rate, and a burst of requests that arrives during the
//!   probe (64 connections' 1 KB requests at once) is not held to 4 datagrams per round trip.
//!
//! # Simplifications and choices
//!
//! - No loss-recovery window reduction ("packet conservation"), no long-term bandwidth
//!   ("policer") model and no BBRv2 loss-driven inflight bounds: the one loss signal is that a
//!   round trip losing more than 20% of its bytes (and at least 8 datagrams) ends STARTUP, whose
//!   2.885x overshoot would otherwise flood a shallow buffer for two more round trips. Random loss
//!   at 5% is far from that threshold; even at higher random loss nothing shrinks the model.
//!   Note that delivery-rate samples only count delivered bytes, so random loss of `p` makes the
//!   1.25 probes read `1.25 x (1 - p)` of the estimate: the estimate holds up to ~20% random loss
//!   (the limit the BBR paper reports), past which it slowly decays.
//! - App-limited samples (the application had nothing to send) only ever raise the bandwidth
//!   estimate. Samples taken in PROBE_RTT are marked app-limited too, for the same reason.
//! - In STARTUP the pacing rate never decreases, and before the first bandwidth sample it is
//!   2.885 x the initial window (32 datagrams) per smoothed RTT.
//! - Pacing runs 1% below `gain x BtlBw`, as the draft does, so that noise in the samples does
//!   not build a standing queue.
//! - The window target adds 3 datagrams of headroom to the gain x BDP (the draft's
//!   "quantization budget"), for ACK aggregation and pacing bursts.
//! - Persistent congestion (nothing acknowledged for several timeouts) drops the window to 4
//!   datagrams but keeps the model: once ACKs flow again the window grows by what each ACK
//!   acknowledges (doubling per round trip) back to its target, while pacing stays at the
//!   estimated bandwidth.
//! - Round trips, the bandwidth filter and PROBE_BW phases follow the draft. There is no special
//!   handling for restarting after idle.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use super::delivery_rate::{DeliveryRateEstimator, RateSample};
use super::{AckedPacket, Controller, DeliveryState, LossKind};
use crate::rtt::RttEstimator;

/// 2/ln(2): the smallest pacing gain that still doubles the delivery rate each round in STARTUP.
const HIGH_GAIN: f64 = 2.885;
/// Pacing runs this much below `gain x BtlBw` (the draft's 1% pacing margin): the windowed
/// maximum of noisy samples sits slightly above the true bottleneck rate, and pacing at it exactly
/// would grow a standing queue that the gain cycle never drains.
const PACING_MARGIN: f64 = 0.99;
/// Window gain in PROBE_BW: two BDPs absorb delayed and aggregated ACKs.
const PROBE_BW_CWND_GAIN: f64 = 2.0;
/// PROBE_BW pacing gains, one phase per minimum RTT.
const PROBE_BW_GAINS: [f64; 8] = [1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
/// Index of the 0.75 phase, never chosen as the first phase.
const DRAIN_PHASE: usize = 1;
/// Round trips the windowed-maximum bandwidth filter spans.
const BW_FILTER_ROUNDS: usize = 10;
/// How long a minimum RTT stays valid without being seen again.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// Time spent at the minimum window in PROBE_RTT.
const PROBE_RTT_DURATION: Duration = Duration::from_millis(200);
/// STARTUP continues while each round grows the bandwidth estimate by at least this factor...
const FULL_BW_GROWTH: f64 = 1.25;
/// ...and ends after this many rounds without such growth.
const FULL_BW_ROUNDS: u32 = 3;
/// Initial window, in datagrams.
const INITIAL_WINDOW_DATAGRAMS: u64 = 32;
/// Smallest window, in datagrams (also the smallest PROBE_RTT window).
const MIN_WINDOW_DATAGRAMS: u64 = 4;
/// Window in PROBE_RTT, as a fraction of the BDP.
const PROBE_RTT_CWND_GAIN: f64 = 0.5;
/// Headroom added to the window target, in datagrams.
const WINDOW_HEADROOM_DATAGRAMS: u64 = 3;
/// Shortest RTT the window is sized for (see `Bbr::inflight_target_bytes`).
const MIN_WINDOW_RTT: Duration = Duration::from_millis(1);
/// Fraction of a round's bytes lost above which the round counts as heavily lossy.
const HIGH_LOSS_RATE: f64 = 0.2;
/// A heavily lossy round must also lose at least this many datagrams, so a handful of random
/// losses in a small round do not count.
const HIGH_LOSS_MIN_DATAGRAMS: u64 = 8;

/// The state machine's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
}

/// Windowed maximum of bandwidth samples over the last [`BW_FILTER_ROUNDS`] round trips: one slot
/// per round holds that round's largest sample.
///
/// The filter only ages when fed: rounds without (non-app-limited) samples leave it untouched, so
/// an idle or application-limited connection keeps its last estimate.
#[derive(Debug, Clone)]
struct MaxBandwidthFilter {
    per_round_bytes_per_s: [u64; BW_FILTER_ROUNDS],
    latest_round: u64,
}

impl MaxBandwidthFilter {
    fn new() -> Self {
        Self {
            per_round_bytes_per_s: [0; BW_FILTER_ROUNDS],
            latest_round: 0,
        }
    }

    fn update(&mut self, round: u64, rate_bytes_per_s: u64) {
        if round > self.latest_round {
            let gap = round - self.latest_round;
            if gap >= BW_FILTER_ROUNDS as u64 {
                self.per_round_bytes_per_s = [0; BW_FILTER_ROUNDS];
            } else {
                for r in self.latest_round + 1..=round {
                    self.per_round_bytes_per_s[slot(r)] = 0;
                }
            }
            self.latest_round = round;
        }
        let best = &mut self.per_round_bytes_per_s[slot(self.latest_round)];
        *best = (*best).max(rate_bytes_per_s);
    }

    fn get(&self) -> u64 {
        self.per_round_bytes_per_s
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

/// The filter slot of round `round`.
fn slot(round: u64) -> usize {
    (round % BW_FILTER_ROUNDS as u64) as usize
}

/// `value x gain`, saturating (float-to-integer casts saturate; a negative or NaN gain gives 0).
fn mul_gain(value: u64, gain: f64) -> u64 {
    (value as f64 * gain) as u64
}

/// Simplified BBR v1 (see the module docs).
#[derive(Debug, Clone)]
pub struct Bbr {
    mode: Mode,
    max_datagram: u64,
    rate: DeliveryRateEstimator,
    bw_filter: MaxBandwidthFilter,
    /// Round trips counted so far.
    round_count: u64,
    /// Delivered count that ends the current round: a packet sent after it was reached starts
    /// the next one.
    next_round_delivered_bytes: u64,
    /// This ACK started a new round.
    round_start: bool,
    /// Bytes declared lost during the current round.
    round_lost_bytes: u64,
    /// Delivered count when the current round started.
    round_start_delivered_bytes: u64,
    /// The round that just ended lost more than [`HIGH_LOSS_RATE`] of its bytes.
    high_loss_round: bool,
    /// Windowed minimum RTT (`RTprop`); `None` before the first sample.
    min_rtt: Option<Duration>,
    /// When `min_rtt` was last set.
    min_rtt_stamp: Instant,
    /// STARTUP's full-pipe detector: the estimate at the last 25% growth, and rounds since.
    full_bw_bytes_per_s: u64,
    full_bw_rounds: u32,
    filled_pipe: bool,
    /// PROBE_BW phase and when it began.
    cycle_index: usize,
    cycle_stamp: Instant,
    /// Losses were declared since the current PROBE_BW phase began.
    loss_in_phase: bool,
    /// When PROBE_RTT may end (set once in flight reached the minimum window).
    probe_rtt_done: Option<Instant>,
    /// A round trip has passed since `probe_rtt_done` was set.
    probe_rtt_round_done: bool,
    pacing_gain: f64,
    cwnd_gain: f64,
    window_bytes: u64,
    /// Window to restore when PROBE_RTT ends.
    prior_window_bytes: u64,
    /// Pacing rate from the model; 0 before the first bandwidth sample.
    pacing_rate_bytes_per_s: u64,
    /// State of a small xorshift generator for the PROBE_BW starting phase.
    random: u64,
}

impl Bbr {
    /// A controller for a connection starting at `now` whose datagrams are at most
    /// `max_datagram` bytes. `seed` picks the PROBE_BW starting phase: connections get
    /// different seeds so that their cycles do not line up, and a simulation that replays a
    /// seed replays the phase too (a start time would not: simulations start at the real now).
    pub fn new(now: Instant, max_datagram: u64, seed: u64) -> Self {
        let max_datagram = max_datagram.max(1);
        let mut hasher = DefaultHasher::new();
        seed.hash(&mut hasher);
        Self {
            mode: Mode::Startup,
            max_datagram,
            rate: DeliveryRateEstimator::new(now),
            bw_filter: MaxBandwidthFilter::new(),
            round_count: 0,
            next_round_delivered_bytes: 0,
            round_start: false,
            round_lost_bytes: 0,
            round_start_delivered_bytes: 0,
            high_loss_round: false,
            min_rtt: None,
            min_rtt_stamp: now,
            full_bw_bytes_per_s: 0,
            full_bw_rounds: 0,
            filled_pipe: false,
            cycle_index: 0,
            cycle_stamp: now,
            loss_in_phase: false,
            probe_rtt_done: None,
            probe_rtt_round_done: false,
            pacing_gain: HIGH_GAIN,
            cwnd_gain: HIGH_GAIN,
            window_bytes: max_datagram.saturating_mul(INITIAL_WINDOW_DATAGRAMS),
            prior_window_bytes: 0,
            pacing_rate_bytes_per_s: 0,
            random: hasher.finish() | 1,
        }
    }

    /// Bottleneck bandwidth estimate (`BtlBw`) in bytes per second; 0 before the first sample.
    pub fn bandwidth_bytes_per_s(&self) -> u64 {
        self.bw_filter.get()
    }

    /// Round-trip propagation delay estimate (`RTprop`); `None` before the first RTT sample.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// The current phase: "startup", "drain", "probe_bw" or "probe_rtt" (for logs and metrics).
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Startup => "startup",
            Mode::Drain => "drain",
            Mode::ProbeBw => "probe_bw",
            Mode::ProbeRtt => "probe_rtt",
        }
    }

    fn min_window_bytes(&self) -> u64 {
        self.max_datagram.saturating_mul(MIN_WINDOW_DATAGRAMS)
    }

    /// The window in PROBE_RTT: half a BDP, at least the smallest window.
    fn probe_rtt_window_bytes(&self) -> u64 {
        self.bdp_bytes(PROBE_RTT_CWND_GAIN)
            .max(self.min_window_bytes())
    }

    fn initial_window_bytes(&self) -> u64 {
        self.max_datagram.saturating_mul(INITIAL_WINDOW_DATAGRAMS)
    }

    /// `gain x BtlBw x RTprop`, or the initial window while either is unknown.
    fn bdp_bytes(&self, gain: f64) -> u64 {
        let bw = self.bandwidth_bytes_per_s();
        match self.min_rtt {
            Some(rtt) if bw > 0 => (bw as f64 * rtt.as_secs_f64() * gain) as u64,
            _ => self.initial_window_bytes(),
        }
    }

    /// In-flight target for `gain`: the BDP plus headroom for aggregation and bursts.
    ///
    /// The BDP uses an RTT of at least [`MIN_WINDOW_RTT`]: a driver sends and receives in
    /// batches, so on sub-millisecond paths (loopback, a LAN) ACKs come back in bursts up to a
    /// timer tick apart, and a window of two 30-microsecond BDPs would stall the sender between
    /// them (measured: 125 MiB/s instead of about 190 MiB/s on loopback). This is BBR's
    /// ACK-aggregation allowance in its simplest form; on paths of 1 ms or more it changes
    /// nothing.
    fn inflight_target_bytes(&self, gain: f64) -> u64 {
        let bw = self.bandwidth_bytes_per_s();
        let aggregation = (bw as f64 * MIN_WINDOW_RTT.as_secs_f64() * gain) as u64;
        self.bdp_bytes(gain)
            .max(aggregation)
            .saturating_add(self.max_datagram.saturating_mul(WINDOW_HEADROOM_DATAGRAMS))
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }

    fn update_round(&mut self, sample: &RateSample) {
        self.round_start = false;
        if sample.prior_delivered_bytes < self.next_round_delivered_bytes {
            return;
        }
        let delivered = self.rate.delivered_bytes();
        self.next_round_delivered_bytes = delivered;
        self.round_count = self.round_count.saturating_add(1);
        self.round_start = true;
        // Loss rate of the round that just ended.
        let delivered_in_round = delivered.saturating_sub(self.round_start_delivered_bytes);
        let lost = self.round_lost_bytes;
        self.high_loss_round = lost >= self.max_datagram.saturating_mul(HIGH_LOSS_MIN_DATAGRAMS)
            && lost as f64 > HIGH_LOSS_RATE * (lost as f64 + delivered_in_round as f64);
        self.round_lost_bytes = 0;
        self.round_start_delivered_bytes = delivered;
    }

    fn update_bandwidth(&mut self, sample: &RateSample) {
        let Some(rate) = sample.delivery_rate_bytes_per_s else {
            return;
        };
        // An app-limited sample measures the application: it may raise the estimate, never
        // lower it.
        if !sample.is_app_limited || rate >= self.bandwidth_bytes_per_s() {
            self.bw_filter.update(self.round_count, rate);
        }
    }

    fn enter_probe_bw(&mut self, now: Instant) {
        self.mode = Mode::ProbeBw;
        self.cwnd_gain = PROBE_BW_CWND_GAIN;
        // Any phase but the 0.75 one: 7 choices, the phases after it.
        let offset = (self.next_random() % (PROBE_BW_GAINS.len() as u64 - 1)) as usize;
        self.cycle_index = (DRAIN_PHASE + 1 + offset) % PROBE_BW_GAINS.len();
        self.cycle_stamp = now;
        self.loss_in_phase = false;
        self.pacing_gain = PROBE_BW_GAINS[self.cycle_index];
    }

    fn update_cycle_phase(&mut self, now: Instant, prior_inflight: u64, bytes_in_flight: u64) {
        if self.mode != Mode::ProbeBw {
            return;
        }
        let gain = PROBE_BW_GAINS[self.cycle_index];
        let min_rtt = self.min_rtt.unwrap_or(Duration::ZERO);
        let full_length = now.saturating_duration_since(self.cycle_stamp) > min_rtt;
        let advance = if gain > 1.0 {
            // Probe for a whole min RTT, and until the extra data is actually in flight (or the
            // path starts dropping it).
            full_length
                && (self.loss_in_phase || prior_inflight >= self.inflight_target_bytes(gain))
        } else if gain < 1.0 {
            // Drain for a min RTT, or until the probe's queue is gone.
            full_length || bytes_in_flight <= self.inflight_target_bytes(1.0)
        } else {
            full_length
        };
        if advance {
            self.cycle_index = (self.cycle_index + 1) % PROBE_BW_GAINS.len();
            self.cycle_stamp = now;
            self.loss_in_phase = false;
            self.pacing_gain = PROBE_BW_GAINS[self.cycle_index];
        }
    }

    fn check_full_pipe(&mut self, sample: &RateSample) {
        if self.filled_pipe || !self.round_start {
            return;
        }
        if self.high_loss_round && self.mode == Mode::Startup {
            // STARTUP's overshoot is overflowing the bottleneck's buffer.
            self.filled_pipe = true;
            return;
        }
        if sample.is_app_limited {
            return;
        }
        let bw = self.bandwidth_bytes_per_s();
        if bw as f64 >= self.full_bw_bytes_per_s as f64 * FULL_BW_GROWTH {
            self.full_bw_bytes_per_s = bw;
            self.full_bw_rounds = 0;
            return;
        }
        self.full_bw_rounds = self.full_bw_rounds.saturating_add(1);
        if self.full_bw_rounds >= FULL_BW_ROUNDS {
            self.filled_pipe = true;
        }
    }

    fn check_drain(&mut self, now: Instant, bytes_in_flight: u64) {
        if self.mode == Mode::Startup && self.filled_pipe {
            self.mode = Mode::Drain;
            self.pacing_gain = 1.0 / HIGH_GAIN;
            self.cwnd_gain = HIGH_GAIN;
        }
        if self.mode == Mode::Drain && bytes_in_flight <= self.inflight_target_bytes(1.0) {
            self.enter_probe_bw(now);
        }
    }

    fn update_min_rtt(&mut self, now: Instant, rtt_sample: Duration, bytes_in_flight: u64) {
        let expired = now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_WINDOW;
        if expired || self.min_rtt.is_none_or(|min| rtt_sample <= min) {
            self.min_rtt = Some(rtt_sample);
            self.min_rtt_stamp = now;
        }
        if expired && self.mode != Mode::ProbeRtt {
            self.mode = Mode::ProbeRtt;
            self.pacing_gain = 1.0;
            self.prior_window_bytes = self.window_bytes;
            self.probe_rtt_done = None;
            self.probe_rtt_round_done = false;
        }
        if self.mode == Mode::ProbeRtt {
            self.handle_probe_rtt(now, bytes_in_flight);
        }
    }

    fn handle_probe_rtt(&mut self, now: Instant, bytes_in_flight: u64) {
        // What is delivered now measures the reduced window, not the path.
        self.rate.on_app_limited(bytes_in_flight);
        match self.probe_rtt_done {
            None => {
                if bytes_in_flight <= self.probe_rtt_window_bytes() {
                    self.probe_rtt_done = Some(now.checked_add(PROBE_RTT_DURATION).unwrap_or(now));
                    self.probe_rtt_round_done = false;
                    self.next_round_delivered_bytes = self.rate.delivered_bytes();
                }
            }
            Some(done) => {
                if self.round_start {
                    self.probe_rtt_round_done = true;
                }
                if self.probe_rtt_round_done && now >= done {
                    self.min_rtt_stamp = now;
                    self.window_bytes = self.window_bytes.max(self.prior_window_bytes);
                    self.probe_rtt_done = None;
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
    }

    fn update_pacing_rate(&mut self) {
        let bw = self.bandwidth_bytes_per_s();
        if bw == 0 {
            return;
        }
        let rate = mul_gain(bw, self.pacing_gain * PACING_MARGIN);
        // STARTUP never slows down on a low early sample.
        if self.filled_pipe || rate > self.pacing_rate_bytes_per_s {
            self.pacing_rate_bytes_per_s = rate;
        }
    }

    fn update_window(&mut self, acked_bytes: u64) {
        let target = self.inflight_target_bytes(self.cwnd_gain);
        let grown = self.window_bytes.saturating_add(acked_bytes);
        if self.filled_pipe {
            self.window_bytes = grown.min(target);
        } else if self.window_bytes < target
            || self.rate.delivered_bytes() < self.initial_window_bytes()
        {
            self.window_bytes = grown;
        }
        self.window_bytes = self.window_bytes.max(self.min_window_bytes());
        if self.mode == Mode::ProbeRtt {
            self.window_bytes = self.window_bytes.min(self.probe_rtt_window_bytes());
        }
    }
}

impl Controller for Bbr {
    fn on_sent(&mut self, now: Instant, _bytes: u64, bytes_in_flight: u64) -> DeliveryState {
        self.rate.on_sent(now, bytes_in_flight)
    }

    fn on_app_limited(&mut self, bytes_in_flight: u64) {
        // Only if the window really had room: a full window means the network is the limit.
        if bytes_in_flight.saturating_add(self.max_datagram) <= self.window_bytes {
            self.rate.on_app_limited(bytes_in_flight);
        }
    }

    fn on_ack(
        &mut self,
        now: Instant,
        acked: &[AckedPacket],
        _rtt: &RttEstimator,
        bytes_in_flight: u64,
    ) {
        let min_rtt = self.min_rtt.unwrap_or(Duration::ZERO);
        let Some(sample) = self.rate.on_ack(now, acked, min_rtt) else {
            return;
        };
        // RTT sample from the newest packet acknowledged (includes the peer's ACK delay, which
        // only ever makes it larger: harmless for a minimum).
        let newest_sent = acked.iter().map(|p| p.sent_time).max().unwrap_or(now);
        let rtt_sample = now.saturating_duration_since(newest_sent);
        let prior_inflight = bytes_in_flight.saturating_add(sample.acked_bytes);

        self.update_round(&sample);
        self.update_bandwidth(&sample);
        self.update_cycle_phase(now, prior_inflight, bytes_in_flight);
        self.check_full_pipe(&sample);
        self.check_drain(now, bytes_in_flight);
        self.update_min_rtt(now, rtt_sample, bytes_in_flight);
        self.update_pacing_rate();
        self.update_window(sample.acked_bytes);
    }

    fn on_loss(
        &mut self,
        _now: Instant,
        lost_bytes: u64,
        _largest_lost_sent: Instant,
        _bytes_in_flight: u64,
        kind: LossKind,
    ) {
        // Loss does not touch the model (see the module docs); it is only counted for the
        // heavy-loss STARTUP exit and to end a bandwidth probe that has reached the bottleneck.
        // Timeouts are not counted: when the other direction's STARTUP queues up this one's
        // ACKs, timers fire on packets that arrived, and counting them ended STARTUP at a small
        // fraction of the link (seconds of 1.25x probing to climb back; ferry-bench, 5% loss).
        if kind == LossKind::Timeout {
            return;
        }
        self.round_lost_bytes = self.round_lost_bytes.saturating_add(lost_bytes);
        self.loss_in_phase = true;
    }

    fn on_persistent_congestion(&mut self, _now: Instant) {
        // Nothing got through for several timeouts: restart from the smallest window. The
        // bandwidth and RTT model are kept, so the window grows back to two BDPs within a few
        // round trips once ACKs flow, and pacing never drops below the estimate.
        self.window_bytes = self.min_window_bytes();
    }

    fn window(&self) -> u64 {
        self.window_bytes
    }

    fn pacing_rate(&self, rtt: &RttEstimator) -> u64 {
        if self.filled_pipe && self.pacing_rate_bytes_per_s > 0 {
            return self.pacing_rate_bytes_per_s;
        }
        // STARTUP: at least 2.885 x the initial window per smoothed RTT (the initial guess
        // before any sample), which is also the rate before the first bandwidth sample.
        let srtt = rtt.smoothed().max(Duration::from_millis(1));
        let initial = (self.initial_window_bytes() as f64 * HIGH_GAIN / srtt.as_secs_f64()) as u64;
        self.pacing_rate_bytes_per_s.max(initial).max(1)
    }

    fn name(&self) -> &'static str {
        "bbr"
    }
}

#[cfg(test)]
mod tests {
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
                let unlucky =
                    ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < path.random_loss;
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
    fn startup_round(
        bbr: &mut Bbr,
        now: &mut Instant,
        rtt: &RttEstimator,
        lost: u64,
        kind: LossKind,
    ) {
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
    fn bandwidth_filter_forgets_after_ten_rounds() {
        let mut f = MaxBandwidthFilter::new();
        f.update(1, 100);
        f.update(5, 50);
        assert_eq!(f.get(), 100);
        f.update(10, 40);
        assert_eq!(
            f.get(),
            100,
            "round 1 is still within 10 rounds of round 10"
        );
        f.update(11, 30);
        assert_eq!(f.get(), 50);
        f.update(100, 10);
        assert_eq!(f.get(), 10);
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
}
