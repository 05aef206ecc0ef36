//! One direction of a simulated path, impaired deterministically from a seed.
//!
//! # Why
//!
//! Ferry's reliability, loss recovery and congestion control only matter on bad networks, and bad
//! networks are hard to test against: real impairment (netem, lossy Wi-Fi) is slow, flaky and not
//! replayable. A [`Link`] is the bad network as a pure data structure. It never reads a clock and
//! never touches a socket: the caller passes virtual time in as [`Instant`]s, offers datagrams with
//! [`Link::send`], asks [`Link::next_delivery`] when to advance time to, and pops arrivals with
//! [`Link::deliver`]. All randomness comes from a ChaCha8 generator seeded by the caller, so a run
//! is a function of `(config, seed, sequence of calls)`: a failing seed replays exactly, and a
//! minute of impaired transfer costs only the CPU to process it.
//!
//! # What it models
//!
//! A datagram offered at `now` goes through these stages, in order:
//!
//! 1. **Blackout**: if `now` (measured from the link's creation) falls in one of
//!    [`LinkConfig::blackouts`], it is dropped. Models an outage, a route flap, a tunnel through a
//!    mountain.
//! 2. **Random loss** with probability [`LinkConfig::loss`], independently per datagram, or in
//!    bursts of mean length [`LinkConfig::loss_burst`] (a two-state Gilbert-Elliott chain whose
//!    bad state drops everything, tuned so the long-run loss is still `loss`). It happens
//!    before the bottleneck, so lost datagrams do not use its capacity.
//! 3. **Bottleneck** (only when [`LinkConfig::rate_bps`] is set): a single serializing server with
//!    a drop-tail buffer. Each datagram occupies the bottleneck for `len * 8 / rate` seconds,
//!    starting when the previous one finishes (or at once if it is idle). The backlog is the
//!    payload not yet serialized at `now`; a datagram that would take it over
//!    [`LinkConfig::queue_bytes`] is dropped, except that an idle bottleneck always accepts one
//!    (so a datagram larger than the buffer still gets through an empty link). The rate counts
//!    UDP payload only: no IP/UDP header overhead.
//! 4. **Propagation**: the datagram arrives at `serialization end + delay + U[0, jitter]`, plus
//!    [`LinkConfig::reorder_delay`] with probability [`LinkConfig::reorder`] (so later datagrams
//!    overtake it). Jitter alone also reorders datagrams sent closer together than the jitter,
//!    as real paths with multiple routes do.
//! 5. **Duplication** with probability [`LinkConfig::duplicate`]: a second copy arrives at the
//!    same instant, right after the original. It happens past the bottleneck, so the copy does not
//!    use capacity.
//!
//! Arrivals are ordered by delivery time, ties in the order they were scheduled, so the output
//! order is deterministic too.
//!
//! Each datagram carries a tag of type `T` through the link untouched (by default a
//! [`SocketAddr`]: the simulator tags the client's direction with the source address and the
//! server's with the destination, so an address change mid-flight is modelled faithfully: packets
//! already on the wire keep the address they were sent with). Use `()` when no tag is needed.
//!
//! # Robustness
//!
//! No input makes a link panic. Probabilities are clamped to `0.0..=1.0` when used (NaN counts as
//! 0), a rate of zero means unlimited, and a datagram whose delivery instant would not be
//! representable (an absurd delay) is treated as lost and counted in
//! [`LinkStats::dropped_loss`].

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Impairments of one direction of a path. See the [module documentation](self) for the model.
///
/// The [`Default`] is a perfect link: no delay, no jitter, no loss, no reordering, no duplication,
/// unlimited rate, no blackouts (with a 10 ms `reorder_delay` ready for [`with_reorder`]).
///
/// [`with_reorder`]: LinkConfig::with_reorder
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` for each datagram.
    pub jitter: Duration,
    /// Probability that a datagram is dropped (clamped to `0.0..=1.0`; NaN means 0).
    pub loss: f64,
    /// Mean length of a loss burst, in datagrams. 1 (or less, or NaN): losses are independent.
    /// Above 1 the losses come in bursts whose mean length is this, with the same long-run rate.
    pub loss_burst: f64,
    /// Probability that a datagram is held back by `reorder_delay`, so later ones overtake it
    /// (clamped like `loss`).
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_delay: Duration,
    /// Probability that a datagram is delivered twice (clamped like `loss`).
    pub duplicate: f64,
    /// Bottleneck rate in bits per second of UDP payload. `None` or `Some(0)`: unlimited.
    pub rate_bps: Option<u64>,
    /// Bottleneck buffer in bytes (drop-tail); only used when `rate_bps` limits the rate.
    pub queue_bytes: usize,
    /// Windows `[start, end)`, measured from the link's creation, during which every datagram
    /// offered is dropped. A window with `end <= start` is empty.
    pub blackouts: Vec<(Duration, Duration)>,
    /// Largest datagram the path carries (its MTU less IP and UDP headers); larger ones are
    /// dropped, as a router drops a packet with "don't fragment" set. `None`: any size.
    pub max_datagram: Option<usize>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            loss_burst: 1.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(10),
            duplicate: 0.0,
            rate_bps: None,
            queue_bytes: 0,
            blackouts: Vec::new(),
            max_datagram: None,
        }
    }
}

impl LinkConfig {
    /// Sets the largest datagram the path carries.
    #[must_use]
    pub fn with_max_datagram(mut self, bytes: usize) -> Self {
        self.max_datagram = Some(bytes);
        self
    }

    /// Sets the one-way propagation delay.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the jitter: each datagram gets an extra delay uniform in `[0, jitter]`.
    #[must_use]
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Sets the loss probability (clamped to `0.0..=1.0`; NaN means 0).
    #[must_use]
    pub fn with_loss(mut self, p: f64) -> Self {
        self.loss = clamp_probability(p);
        self
    }

    /// Makes losses come in bursts of mean length `datagrams` (1: independent losses).
    #[must_use]
    pub fn with_loss_burst(mut self, datagrams: f64) -> Self {
        self.loss_burst = datagrams;
        self
    }

    /// Sets the probability that a datagram is held back by `reorder_delay` (10 ms unless changed
    /// with [`with_reorder_delay`](Self::with_reorder_delay)).
    #[must_use]
    pub fn with_reorder(mut self, p: f64) -> Self {
        self.reorder = clamp_probability(p);
        self
    }

    /// Sets how long a reordered datagram is held back.
    #[must_use]
    pub fn with_reorder_delay(mut self, delay: Duration) -> Self {
        self.reorder_delay = delay;
        self
    }

    /// Sets the probability that a datagram is delivered twice.
    #[must_use]
    pub fn with_duplicate(mut self, p: f64) -> Self {
        self.duplicate = clamp_probability(p);
        self
    }

    /// Limits the rate to `rate_bps` bits per second of payload, behind a drop-tail buffer of
    /// `queue_bytes`. A zero rate means unlimited.
    #[must_use]
    pub fn with_rate(mut self, rate_bps: u64, queue_bytes: usize) -> Self {
        self.rate_bps = (rate_bps > 0).then_some(rate_bps);
        self.queue_bytes = queue_bytes;
        self
    }

    /// Adds a blackout of `length` starting `start` after the link's creation.
    #[must_use]
    pub fn with_blackout(mut self, start: Duration, length: Duration) -> Self {
        self.blackouts.push((start, start.saturating_add(length)));
        self
    }
}

/// Clamps a probability to `0.0..=1.0`, NaN to 0.
fn clamp_probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

/// What a link did with the datagrams offered to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Datagrams offered with [`Link::send`].
    pub offered: u64,
    /// Datagrams handed out by [`Link::deliver`] (a duplicated datagram counts twice).
    pub delivered: u64,
    /// Dropped by random loss (or because their delivery instant was not representable).
    pub dropped_loss: u64,
    /// Dropped because the bottleneck buffer was full.
    pub dropped_queue: u64,
    /// Dropped during a blackout.
    pub dropped_blackout: u64,
    /// Datagrams scheduled for delivery twice.
    pub duplicated: u64,
    /// Datagrams held back by `reorder_delay`.
    pub reordered: u64,
    /// Dropped for being larger than `max_datagram`.
    pub dropped_too_big: u64,
    /// Payload bytes handed out by [`Link::deliver`].
    pub bytes_delivered: u64,
}

/// A datagram on its way, ordered so that the max-heap pops the earliest `(at, seq)` first.
#[derive(Debug)]
struct InFlight<T> {
    at: Instant,
    seq: u64,
    tag: T,
    datagram: Vec<u8>,
}

impl<T> PartialEq for InFlight<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<T> Eq for InFlight<T> {}

impl<T> PartialOrd for InFlight<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for InFlight<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap, and we want the earliest first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// One direction of a simulated path: datagrams (each with a tag `T`) go in with
/// [`send`](Self::send) and come out with [`deliver`](Self::deliver), impaired according to a
/// [`LinkConfig`]. See the [module documentation](self).
#[derive(Debug)]
pub struct Link<T = SocketAddr> {
    config: LinkConfig,
    rng: ChaCha8Rng,
    start: Instant,
    in_flight: BinaryHeap<InFlight<T>>,
    /// Scheduling order, to break delivery-time ties.
    next_seq: u64,
    /// When the bottleneck finishes serializing everything it has accepted.
    busy_until: Instant,
    /// Sub-nanosecond remainder of serialization time, in units of 1/rate ns.
    busy_carry: u128,
    /// Gilbert-Elliott state: in a loss burst.
    in_burst: bool,
    stats: LinkStats,
}

impl<T: Clone> Link<T> {
    /// A link created at `start` (blackouts are measured from it), its randomness from `seed`.
    pub fn new(config: LinkConfig, seed: u64, start: Instant) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            start,
            in_flight: BinaryHeap::new(),
            next_seq: 0,
            busy_until: start,
            busy_carry: 0,
            in_burst: false,
            stats: LinkStats::default(),
        }
    }

    /// The impairments in force.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Replaces the impairments. Takes effect for datagrams sent from now on; datagrams already
    /// scheduled keep their delivery time, and the bottleneck's backlog carries over.
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Counters of what the link did so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Number of datagrams scheduled but not yet delivered (duplicates count separately).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// How long a datagram offered at `now` waits at the bottleneck before it starts to be
    /// serialized: the backlog of what it already accepted (zero without a rate limit).
    pub fn queue_delay(&self, now: Instant) -> Duration {
        self.busy_until.saturating_duration_since(now)
    }

    /// Offers a datagram at time `now`, with `tag` travelling along with it: it is dropped, or
    /// scheduled for delivery (possibly twice). Calls should come with non-decreasing `now`; an
    /// earlier `now` is accepted but treated as if the bottleneck's state were current.
    pub fn send(&mut self, now: Instant, tag: T, datagram: Vec<u8>) {
        self.stats.offered += 1;

        let since_start = now.saturating_duration_since(self.start);
        if self
            .config
            .blackouts
            .iter()
            .any(|&(from, until)| from <= since_start && since_start < until)
        {
            self.stats.dropped_blackout += 1;
            return;
        }

        if self
            .config
            .max_datagram
            .is_some_and(|max| datagram.len() > max)
        {
            self.stats.dropped_too_big += 1;
            return;
        }

        if self.lost() {
            self.stats.dropped_loss += 1;
            return;
        }

        let departed = match self.config.rate_bps {
            Some(rate) if rate > 0 => match self.serialize(now, rate, datagram.len()) {
                Some(end) => end,
                None => {
                    self.stats.dropped_queue += 1;
                    return;
                }
            },
            _ => now,
        };

        let mut extra = self.config.delay;
        if !self.config.jitter.is_zero() {
            extra = extra.saturating_add(self.uniform_up_to(self.config.jitter));
        }
        if self.chance(self.config.reorder) {
            self.stats.reordered += 1;
            extra = extra.saturating_add(self.config.reorder_delay);
        }
        let duplicate = self.chance(self.config.duplicate);

        let Some(at) = departed.checked_add(extra) else {
            // Not representable: it would never arrive.
            self.stats.dropped_loss += 1;
            return;
        };
        if duplicate {
            self.stats.duplicated += 1;
            self.schedule(at, tag.clone(), datagram.clone());
        }
        self.schedule(at, tag, datagram);
    }

    /// Earliest pending delivery time, if anything is in flight.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.in_flight.peek().map(|d| d.at)
    }

    /// Pops a datagram, with its tag, whose delivery time is `<= now`: in delivery-time order,
    /// ties in the order they were sent.
    pub fn deliver(&mut self, now: Instant) -> Option<(T, Vec<u8>)> {
        if self.in_flight.peek()?.at > now {
            return None;
        }
        let d = self.in_flight.pop()?;
        self.stats.delivered += 1;
        self.stats.bytes_delivered += d.datagram.len() as u64;
        Some((d.tag, d.datagram))
    }

    /// Puts a datagram of `len` bytes through the bottleneck at `now`; returns when it finishes
    /// serializing, or `None` if the buffer is full.
    fn serialize(&mut self, now: Instant, rate: u64, len: usize) -> Option<Instant> {
        let rate = u128::from(rate);
        let start = if self.busy_until > now {
            // Bytes not yet serialized: what the remaining busy time carries at this rate.
            let backlog_ns = (self.busy_until - now).as_nanos();
            let backlog_bytes = (backlog_ns.saturating_mul(rate) / (8 * NANOS_PER_SEC)) as usize;
            if backlog_bytes.saturating_add(len) > self.config.queue_bytes {
                return None;
            }
            self.busy_until
        } else {
            // Idle: it starts serializing at once, whatever its size.
            self.busy_carry = 0;
            now
        };
        // len * 8 * 1e9 / rate nanoseconds, keeping the remainder so that rounding never drifts.
        let numerator = (len as u128)
            .saturating_mul(8 * NANOS_PER_SEC)
            .saturating_add(self.busy_carry);
        let nanos = numerator / rate;
        self.busy_carry = numerator % rate;
        let time = Duration::new(
            u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX),
            (nanos % NANOS_PER_SEC) as u32,
        );
        let Some(end) = start.checked_add(time) else {
            // Would occupy the link forever: it can never get through.
            return None;
        };
        self.busy_until = end;
        Some(end)
    }

    fn schedule(&mut self, at: Instant, tag: T, datagram: Vec<u8>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.in_flight.push(InFlight {
            at,
            seq,
            tag,
            datagram,
        });
    }

    /// Whether the datagram offered now is lost: independently, or by the burst chain.
    fn lost(&mut self) -> bool {
        let p = clamp_probability(self.config.loss);
        let burst = self.config.loss_burst;
        // `burst` NaN counts as 1 (independent losses).
        let bursty = burst > 1.0;
        if !bursty || p <= 0.0 || p >= 1.0 {
            return self.chance(p);
        }
        // Leaving a burst with probability 1/burst gives bursts of mean length `burst`; entering
        // one with q = p / (burst * (1 - p)) makes the stationary share of burst time p.
        let leave = 1.0 / burst;
        let enter = p * leave / (1.0 - p);
        self.in_burst = if self.in_burst {
            !self.chance(leave)
        } else {
            self.chance(enter)
        };
        self.in_burst
    }

    /// A uniform float in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (clamped). Draws nothing for `p <= 0`, so a knob left at zero
    /// does not shift the random sequence of the others.
    fn chance(&mut self, p: f64) -> bool {
        let p = clamp_probability(p);
        if p <= 0.0 {
            return false;
        }
        self.unit() < p
    }

    /// A duration uniform in `[0, max]` (at nanosecond granularity; `max` capped at ~584 years).
    fn uniform_up_to(&mut self, max: Duration) -> Duration {
        let span = max.as_nanos().min(u128::from(u64::MAX - 1)) + 1;
        let nanos = (span * u128::from(self.rng.next_u64())) >> 64;
        Duration::from_nanos(nanos as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Offers `count` datagrams of `size` bytes, one every `every`, each tagged with its index;
    /// delivers as time goes, then drains. Returns the link and the `(arrival time since the
    /// start, index)` of every delivery, in delivery order.
    fn run(
        config: LinkConfig,
        seed: u64,
        count: u32,
        every: Duration,
        size: usize,
    ) -> (Link<u32>, Vec<(Duration, u32)>) {
        let t0 = Instant::now();
        let mut link = Link::new(config, seed, t0);
        let mut out = Vec::new();
        for i in 0..count {
            let now = t0 + every * i;
            while let Some(due) = link.next_delivery().filter(|&t| t <= now) {
                let (tag, _) = link.deliver(due).expect("due");
                out.push((due - t0, tag));
            }
            link.send(now, i, vec![0; size]);
        }
        while let Some(due) = link.next_delivery() {
            let (tag, _) = link.deliver(due).expect("due");
            out.push((due - t0, tag));
        }
        (link, out)
    }

    fn messy() -> LinkConfig {
        LinkConfig::default()
            .with_delay(5 * MS)
            .with_jitter(5 * MS)
            .with_loss(0.1)
            .with_reorder(0.1)
            .with_duplicate(0.1)
            .with_rate(6_000_000, 20_000)
    }

    #[test]
    fn same_seed_gives_identical_delivery_sequences() {
        let (a_link, a) = run(messy(), 7, 5_000, Duration::from_micros(300), 300);
        let (b_link, b) = run(messy(), 7, 5_000, Duration::from_micros(300), 300);
        let (_, c) = run(messy(), 8, 5_000, Duration::from_micros(300), 300);
        // Every impairment took part.
        let s = a_link.stats();
        assert!(a.len() > 3_000, "{s:?}");
        assert!(s.dropped_loss > 0 && s.dropped_queue > 0, "{s:?}");
        assert!(s.reordered > 0 && s.duplicated > 0, "{s:?}");
        assert_eq!(a, b);
        assert_eq!(s, b_link.stats());
        assert_ne!(
            a.iter().map(|x| x.1).collect::<Vec<_>>(),
            c.iter().map(|x| x.1).collect::<Vec<_>>(),
            "another seed should give another sequence"
        );
    }

    #[test]
    fn loss_rate_over_100k_datagrams_is_within_one_percent() {
        for p in [0.01, 0.1, 0.3] {
            let (link, out) = run(
                LinkConfig::default().with_loss(p),
                1,
                100_000,
                Duration::from_micros(10),
                1,
            );
            let s = link.stats();
            let rate = s.dropped_loss as f64 / 100_000.0;
            assert!((rate - p).abs() < 0.01, "configured {p}, measured {rate}");
            assert_eq!(s.delivered as usize, out.len());
            assert_eq!(s.delivered + s.dropped_loss, 100_000);
        }
    }

    #[test]
    fn bursty_loss_keeps_the_rate_and_lengthens_the_bursts() {
        for (p, burst) in [(0.05, 1.0), (0.05, 4.0), (0.1, 10.0)] {
            let n = 200_000u32;
            let (link, out) = run(
                LinkConfig::default().with_loss(p).with_loss_burst(burst),
                3,
                n,
                Duration::from_micros(10),
                1,
            );
            let rate = link.stats().dropped_loss as f64 / f64::from(n);
            assert!(
                (rate - p).abs() < 0.15 * p,
                "loss {p} x{burst}: measured {rate}"
            );
            // Runs of consecutive missing indices are the bursts.
            let (mut runs, mut lost, mut expected) = (0u64, 0u64, 0u32);
            for &(_, i) in &out {
                if i > expected {
                    runs += 1;
                    lost += u64::from(i - expected);
                }
                expected = i + 1;
            }
            let mean = lost as f64 / runs as f64;
            assert!(
                (mean - burst.max(1.0 / (1.0 - p))).abs() < 0.15 * burst,
                "loss {p} x{burst}: mean burst {mean}"
            );
        }
    }

    #[test]
    fn rate_limit_delivers_the_link_rate_and_drops_the_excess_at_the_queue() {
        // Offer 100 Mbit/s (1250-byte datagrams every 100 µs) for 1 s to a 50 Mbit/s link with a
        // 10 ms buffer (62 500 bytes = 50 datagrams).
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig::default().with_rate(50_000_000, 62_500), 1, t0);
        let mut bytes_in_first_second = 0u64;
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(100) * i;
            link.send(now, (), vec![0; 1250]);
            while let Some((_, d)) = link.deliver(now) {
                bytes_in_first_second += d.len() as u64;
            }
        }
        let one_second = t0 + Duration::from_secs(1);
        while let Some((_, d)) = link.deliver(one_second) {
            bytes_in_first_second += d.len() as u64;
        }
        let mbps = bytes_in_first_second as f64 * 8.0 / 1e6;
        assert!((mbps - 50.0).abs() < 0.5, "delivered {mbps} Mbit/s");
        let s = link.stats();
        // Half the offered datagrams cannot fit; all but the buffer's worth are dropped.
        assert!((4_900..=5_000).contains(&s.dropped_queue), "{s:?}");
        assert_eq!(s.dropped_loss + s.dropped_blackout, 0);
        // What is left drains at the link rate: nothing else is lost.
        while link.deliver(t0 + Duration::from_secs(2)).is_some() {}
        let s = link.stats();
        assert_eq!(s.delivered + s.dropped_queue, 10_000);
    }

    #[test]
    fn rate_limit_spaces_deliveries_by_serialization_time() {
        // 8 Mbit/s: a 1000-byte datagram takes exactly 1 ms.
        let t0 = Instant::now();
        let config = LinkConfig::default()
            .with_rate(8_000_000, 10_000)
            .with_delay(10 * MS);
        let mut link = Link::new(config, 1, t0);
        for i in 0..5u32 {
            link.send(t0, i, vec![0; 1000]);
        }
        for i in 0..5u32 {
            let expected = t0 + 10 * MS + MS * (i + 1);
            assert_eq!(link.next_delivery(), Some(expected));
            assert_eq!(link.deliver(expected).map(|d| d.0), Some(i));
        }
    }

    #[test]
    fn idle_bottleneck_accepts_a_datagram_larger_than_its_buffer() {
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig::default().with_rate(8_000_000, 0), 1, t0);
        link.send(t0, (), vec![0; 1000]);
        link.send(t0, (), vec![0; 1000]);
        assert_eq!(link.stats().dropped_queue, 1);
        // Once it has drained, the next one is accepted again.
        link.send(t0 + MS, (), vec![0; 1000]);
        assert_eq!(link.stats().dropped_queue, 1);
        assert_eq!(link.in_flight(), 2);
    }

    #[test]
    fn blackout_drops_everything_inside_the_window_and_nothing_outside() {
        // One datagram per ms for 300 ms; blackout over [100 ms, 200 ms).
        let config = LinkConfig::default()
            .with_delay(3 * MS)
            .with_blackout(100 * MS, 100 * MS);
        let (link, out) = run(config, 1, 300, MS, 1);
        let s = link.stats();
        assert_eq!(s.dropped_blackout, 100);
        assert_eq!(s.delivered, 200);
        let got: Vec<u32> = out.iter().map(|x| x.1).collect();
        let expected: Vec<u32> = (0..100).chain(200..300).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn duplicate_and_reorder_counts_are_near_their_probabilities() {
        let config = LinkConfig::default()
            .with_delay(MS)
            .with_reorder(0.05)
            .with_duplicate(0.02);
        let n = 100_000;
        let (link, out) = run(config, 3, n, Duration::from_micros(100), 1);
        let s = link.stats();
        let reordered = s.reordered as f64 / f64::from(n);
        let duplicated = s.duplicated as f64 / f64::from(n);
        assert!((reordered - 0.05).abs() < 0.005, "{reordered}");
        assert!((duplicated - 0.02).abs() < 0.005, "{duplicated}");
        assert_eq!(s.delivered, u64::from(n) + s.duplicated);
        assert_eq!(out.len() as u64, s.delivered);
    }

    #[test]
    fn reordered_datagrams_are_overtaken_by_later_ones() {
        let config = LinkConfig::default()
            .with_delay(MS)
            .with_reorder(1.0)
            .with_reorder_delay(10 * MS);
        let t0 = Instant::now();
        let mut link = Link::new(config, 1, t0);
        link.send(t0, 0u32, vec![0]);
        link.set_config(LinkConfig::default().with_delay(MS));
        link.send(t0 + MS, 1, vec![1]);
        assert_eq!(link.deliver(t0 + 2 * MS).map(|d| d.0), Some(1));
        assert!(link.deliver(t0 + 10 * MS).is_none());
        assert_eq!(link.deliver(t0 + 11 * MS).map(|d| d.0), Some(0));
        assert_eq!(link.stats().reordered, 1);
    }

    #[test]
    fn duplicates_arrive_together_right_after_the_original() {
        let config = LinkConfig::default().with_delay(MS).with_duplicate(1.0);
        let t0 = Instant::now();
        let mut link = Link::new(config, 1, t0);
        link.send(t0, 0u32, vec![7, 7]);
        link.send(t0, 1u32, vec![8]);
        let got: Vec<_> = std::iter::from_fn(|| link.deliver(t0 + MS)).collect();
        assert_eq!(
            got,
            vec![(0, vec![7, 7]), (0, vec![7, 7]), (1, vec![8]), (1, vec![8])]
        );
        let s = link.stats();
        assert_eq!((s.duplicated, s.delivered, s.bytes_delivered), (2, 4, 6));
    }

    #[test]
    fn delay_is_respected_exactly_without_jitter() {
        let t0 = Instant::now();
        let delay = Duration::from_micros(20_345);
        let mut link = Link::new(LinkConfig::default().with_delay(delay), 1, t0);
        for i in 0..100u32 {
            let sent = t0 + Duration::from_micros(137) * i;
            link.send(sent, i, vec![0]);
            assert_eq!(link.next_delivery(), Some(t0 + delay));
        }
        for i in 0..100u32 {
            let due = t0 + Duration::from_micros(137) * i + delay;
            assert_eq!(link.next_delivery(), Some(due));
            assert!(link.deliver(due - Duration::from_nanos(1)).is_none());
            assert_eq!(link.deliver(due).map(|d| d.0), Some(i));
        }
        assert_eq!(link.next_delivery(), None);
    }

    #[test]
    fn perfect_link_delivers_at_once_in_order() {
        let (link, out) = run(LinkConfig::default(), 1, 1000, Duration::ZERO, 3);
        assert_eq!(
            out.iter().map(|x| x.1).collect::<Vec<_>>(),
            (0..1000).collect::<Vec<_>>()
        );
        let s = link.stats();
        assert_eq!(
            (s.offered, s.delivered, s.bytes_delivered),
            (1000, 1000, 3000)
        );
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_spreads_over_them() {
        let t0 = Instant::now();
        let config = LinkConfig::default()
            .with_delay(10 * MS)
            .with_jitter(4 * MS);
        let mut link = Link::new(config, 5, t0);
        let mut sent = Vec::new();
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(50) * i;
            sent.push(now);
            link.send(now, i, vec![0]);
        }
        let (mut min, mut max) = (Duration::MAX, Duration::ZERO);
        let mut overtaken = false;
        let mut last = 0;
        while let Some(at) = link.next_delivery() {
            let (i, _) = link.deliver(at).expect("due");
            let latency = at - sent[i as usize];
            min = min.min(latency);
            max = max.max(latency);
            overtaken |= i < last;
            last = last.max(i);
        }
        assert!(min >= 10 * MS && max <= 14 * MS, "{min:?}..{max:?}");
        assert!(min < 10 * MS + Duration::from_micros(50), "{min:?}");
        assert!(max > 14 * MS - Duration::from_micros(50), "{max:?}");
        assert!(
            overtaken,
            "jitter wider than the spacing should reorder naturally"
        );
    }

    #[test]
    fn set_config_applies_to_later_sends_only() {
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig::default().with_delay(5 * MS), 1, t0);
        link.send(t0, 0u32, vec![0]);
        link.set_config(LinkConfig::default().with_loss(1.0));
        assert_eq!(link.config().loss, 1.0);
        link.send(t0, 1, vec![0]);
        assert_eq!(link.deliver(t0 + 5 * MS).map(|d| d.0), Some(0));
        assert!(link.deliver(t0 + Duration::from_secs(1)).is_none());
        assert_eq!(link.stats().dropped_loss, 1);
    }

    #[test]
    fn out_of_range_and_extreme_configurations_do_not_panic() {
        let t0 = Instant::now();
        let configs = [
            LinkConfig {
                loss: 7.0,
                ..LinkConfig::default()
            },
            LinkConfig {
                loss: f64::NAN,
                reorder: -3.0,
                duplicate: f64::INFINITY,
                ..LinkConfig::default()
            },
            LinkConfig {
                rate_bps: Some(0),
                queue_bytes: usize::MAX,
                ..LinkConfig::default()
            },
            LinkConfig {
                rate_bps: Some(1),
                queue_bytes: usize::MAX,
                ..LinkConfig::default()
            },
            LinkConfig {
                rate_bps: Some(u64::MAX),
                ..LinkConfig::default()
            },
            LinkConfig::default()
                .with_delay(Duration::MAX)
                .with_jitter(Duration::MAX)
                .with_reorder(1.0)
                .with_reorder_delay(Duration::MAX),
            LinkConfig::default().with_blackout(Duration::MAX, Duration::MAX),
            LinkConfig::default().with_blackout(Duration::ZERO, Duration::MAX),
        ];
        for config in configs {
            let mut link = Link::new(config, u64::MAX, t0);
            // Times before the link's creation, repeated, and far ahead.
            for now in [
                t0,
                t0.checked_sub(MS).unwrap_or(t0),
                t0 + Duration::from_secs(1_000_000),
            ] {
                for len in [0, 1, 65_535, 1 << 20] {
                    link.send(now, (), vec![0; len]);
                }
            }
            while let Some(at) = link.next_delivery() {
                link.deliver(at);
            }
            let s = link.stats();
            assert_eq!(s.offered, 12);
            assert_eq!(
                s.delivered,
                s.offered + s.duplicated - s.dropped_loss - s.dropped_queue - s.dropped_blackout
            );
        }
        // The clamping is visible through the builders.
        let c = LinkConfig::default()
            .with_loss(1.5)
            .with_reorder(f64::NAN)
            .with_duplicate(-1.0)
            .with_rate(0, 10);
        assert_eq!(
            (c.loss, c.reorder, c.duplicate, c.rate_bps),
            (1.0, 0.0, 0.0, None)
        );
    }

    #[test]
    fn full_loss_and_zero_loss_are_exact() {
        let (all, _) = run(LinkConfig::default().with_loss(1.0), 1, 1000, MS, 1);
        assert_eq!(all.stats().dropped_loss, 1000);
        let (none, _) = run(LinkConfig::default().with_loss(0.0), 1, 1000, MS, 1);
        assert_eq!(none.stats().delivered, 1000);
    }
}
