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
//!   An app-limited flow skips the probe when an RTT sample of the expiring window came within
//!   1/8 of the minimum (the minimum is kept and counts as seen): with nothing to send at times
//!   it builds no standing queue of its own, and such a sample shows the path's delay has not
//!   grown. Without the skip, 64 connections exchanging 1 KB messages saw a probe every 10
//!   seconds, and about 1% of their exchanges (those of the 200 ms and the round trips after
//!   it) took two round trips instead of one, on the simulator's 50 Mbit/s link as on
//!   ferry-bench's: the 1% tail is what the latency goal is about. Their samples never matched
//!   the minimum exactly, as a flow whose bursts are paced sees a little queueing in each. A
//!   flow that was never app-limited probes as before (it may be the one keeping a queue), and
//!   so does one whose samples all stayed above 1/8 (the route may have grown longer). Chromium's
//!   QUIC BBR has the same pair of conditions as an option (`ShouldExtendMinRttExpiry`, its
//!   `kSimilarMinRttThreshold` of 1.125).
//!
//! # Simplifications and choices
//!
//! - No loss-recovery window reduction ("packet conservation"), no long-term bandwidth
//!   ("policer") model and no BBRv2 loss-driven inflight bounds: the one loss signal is that two
//!   round trips in a row losing more than 20% of their bytes (and at least 8 datagrams each)
//!   end STARTUP, whose 2.885x overshoot would otherwise flood a shallow buffer for more round
//!   trips. Random loss at 5% is far from that threshold, and one round that a burst of losses
//!   pushes over it is not enough; even at higher random loss nothing shrinks the model.
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
//! - Round trips, the bandwidth filter (`max_bandwidth`) and PROBE_BW phases follow the draft.
//!   There is no special handling for restarting after idle.
//!
//! The tests, a simulated bottleneck path among them, are in `bbr/tests.rs`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use super::delivery_rate::{DeliveryRateEstimator, RateSample};
use super::{AckedPacket, Controller, DeliveryState, LossKind};
use crate::rtt::RttEstimator;

mod max_bandwidth;
use max_bandwidth::MaxBandwidthFilter;

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
/// How long a minimum RTT stays valid without being seen again.
const MIN_RTT_WINDOW: Duration = Duration::from_secs(10);
/// An RTT sample at most this factor above the minimum counts as seeing it again for a flow
/// that was app-limited (see the module docs on PROBE_RTT).
const SIMILAR_MIN_RTT: f64 = 1.125;
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
/// Heavily lossy rounds in a row that end STARTUP. STARTUP's overshoot overflows a shallow
/// buffer in every round, while a path that loses packets in bursts makes one lossy round now
/// and then: with runs of mean 3 at 5%, 64 clients' first requests (a round of about 45
/// datagrams) lost 8 or more in one round in two simulator seeds of twelve, which ended
/// STARTUP at a fraction of the rate the clients needed, and their exchanges queued behind the
/// pacer: 6.0 and 5.1% of them took over one and a half round trips, against 1 to 2% in the
/// other seeds (2.6 and 1.9% with two rounds).
const HIGH_LOSS_ROUNDS_TO_EXIT: u32 = 2;

/// The state machine's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Startup,
    Drain,
    ProbeBw,
    ProbeRtt,
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
    /// Rounds in a row, up to the one that just ended, that lost more than [`HIGH_LOSS_RATE`]
    /// of their bytes.
    high_loss_rounds: u32,
    /// Windowed minimum RTT (`RTprop`); `None` before the first sample.
    min_rtt: Option<Duration>,
    /// When `min_rtt` was last set or seen again.
    min_rtt_stamp: Instant,
    /// Smallest RTT sample since `min_rtt_stamp`.
    window_min_rtt: Option<Duration>,
    /// The sender ran out of data with room in its window since `min_rtt_stamp`.
    app_limited_in_window: bool,
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
            high_loss_rounds: 0,
            min_rtt: None,
            min_rtt_stamp: now,
            window_min_rtt: None,
            app_limited_in_window: false,
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
        let high_loss = lost >= self.max_datagram.saturating_mul(HIGH_LOSS_MIN_DATAGRAMS)
            && lost as f64 > HIGH_LOSS_RATE * (lost as f64 + delivered_in_round as f64);
        self.high_loss_rounds = if high_loss {
            self.high_loss_rounds.saturating_add(1)
        } else {
            0
        };
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
        if self.high_loss_rounds >= HIGH_LOSS_ROUNDS_TO_EXIT && self.mode == Mode::Startup {
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
        let mut expired = now.saturating_duration_since(self.min_rtt_stamp) > MIN_RTT_WINDOW;
        let window_min = self
            .window_min_rtt
            .map_or(rtt_sample, |m| m.min(rtt_sample));
        self.window_min_rtt = Some(window_min);
        if expired && self.mode != Mode::ProbeRtt && self.seen_min_rtt_again(window_min) {
            self.restart_min_rtt_window(now);
            expired = false;
        }
        if expired || self.min_rtt.is_none_or(|min| rtt_sample <= min) {
            self.min_rtt = Some(rtt_sample);
            self.restart_min_rtt_window(now);
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

    /// Whether an app-limited flow's smallest sample of the expiring window, `window_min`,
    /// counts as seeing the minimum RTT again (see the module docs on PROBE_RTT).
    fn seen_min_rtt_again(&self, window_min: Duration) -> bool {
        self.app_limited_in_window
            && self
                .min_rtt
                .is_some_and(|min| window_min <= min.mul_f64(SIMILAR_MIN_RTT))
    }

    fn restart_min_rtt_window(&mut self, now: Instant) {
        self.min_rtt_stamp = now;
        self.window_min_rtt = None;
        self.app_limited_in_window = false;
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
                    self.restart_min_rtt_window(now);
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
            self.app_limited_in_window = true;
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
mod tests;
