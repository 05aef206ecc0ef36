//! Pacing: spreads packets over time at the congestion controller's rate.
//!
//! Sending a whole window back to back would overflow shallow router queues and cause the very
//! losses Ferry exists to avoid, and BBR's model (see [`Bbr`](super::bbr::Bbr)) assumes packets
//! leave at the pacing rate. [`Pacer`] is a token bucket: credit (bytes) accrues at the pacing
//! rate up to a burst capacity, and a packet may leave once the bucket holds enough credit for it.
//!
//! # Burst capacity
//!
//! The capacity is the larger of two datagrams and 2 ms at the pacing rate, capped at 64
//! datagrams (and never below the packet being paced, or it could never leave):
//!
//! - the tokio driver's timers have a resolution of about 1 ms and fire late, never early. When
//!   the pacer says "not before t", the driver wakes up to ~1 ms after t, by which time an extra
//!   millisecond of credit has accrued. If the bucket could not hold it, that credit would be
//!   thrown away at every wake-up and the achieved rate would fall well short of the configured
//!   one (at 1 Gbit/s a 1-packet bucket would cap the rate at one packet per timer tick). Two
//!   milliseconds of credit is one packet plus a full timer tick at every rate from
//!   ~11 Mbit/s (where a 1350-byte datagram is 1 ms) up to the cap, with a 2x margin above that;
//! - two datagrams is the floor for slow rates: one packet plus the late-wake-up credit, which is
//!   under one packet below ~11 Mbit/s;
//! - 64 datagrams (~86 KB at 1350 bytes) bounds the line-rate burst a router queue must absorb.
//!   With 1 ms timers the full rate is still reached up to about 680 Mbit/s (64 datagrams minus
//!   one per millisecond); past that, rates are reached only with finer timers.
//!
//! Rates of 0 and `u64::MAX` mean "no pacing": a controller with no rate must not deadlock the
//! connection, so [`Pacer::delay`] lets the packet go.

use std::time::{Duration, Instant};

/// How much sending time the bucket may save up (see the module docs).
const BURST_TIME: Duration = Duration::from_millis(2);
/// Smallest burst capacity, in datagrams.
const MIN_BURST_DATAGRAMS: u64 = 2;
/// Largest burst capacity, in datagrams.
const MAX_BURST_DATAGRAMS: u64 = 64;
/// Credit is kept in byte-nanoseconds per second (bytes x 10^9) so no fraction of a byte is lost
/// between calls, whatever the rate.
const SCALE: u128 = 1_000_000_000;

/// A token-bucket pacer.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Credit in bytes x [`SCALE`].
    credit: u128,
    /// When credit was last brought up to date.
    last_update: Instant,
    max_datagram: u64,
}

impl Pacer {
    /// A pacer for datagrams of at most `max_datagram` bytes. The bucket starts full, so a fresh
    /// connection may send one burst (the capacity at the first rate asked for) at once.
    pub fn new(now: Instant, max_datagram: u64) -> Self {
        Self {
            // Clamped to the capacity on the first call to `delay`.
            credit: u128::from(max_datagram.max(1))
                .saturating_mul(u128::from(MAX_BURST_DATAGRAMS))
                .saturating_mul(SCALE),
            last_update: now,
            max_datagram: max_datagram.max(1),
        }
    }

    /// Burst capacity in bytes at `rate_bytes_per_s` for a packet of `packet_bytes`.
    fn capacity_bytes(&self, rate_bytes_per_s: u64, packet_bytes: u64) -> u64 {
        let burst = u128::from(rate_bytes_per_s).saturating_mul(BURST_TIME.as_nanos()) / SCALE;
        let burst = u64::try_from(burst).unwrap_or(u64::MAX);
        burst
            .clamp(
                self.max_datagram.saturating_mul(MIN_BURST_DATAGRAMS),
                self.max_datagram.saturating_mul(MAX_BURST_DATAGRAMS),
            )
            .max(packet_bytes)
    }

    /// May a packet of `packet_bytes` leave at `now` at `rate_bytes_per_s`? `None`: yes, now.
    /// `Some(t)`: not before `t`, which is always later than `now`. Call [`Pacer::on_sent`]
    /// when the packet does leave.
    pub fn delay(
        &mut self,
        now: Instant,
        rate_bytes_per_s: u64,
        packet_bytes: u64,
    ) -> Option<Instant> {
        let elapsed = now.saturating_duration_since(self.last_update);
        self.last_update = self.last_update.max(now);
        if rate_bytes_per_s == 0 || rate_bytes_per_s == u64::MAX {
            return None;
        }
        let capacity =
            u128::from(self.capacity_bytes(rate_bytes_per_s, packet_bytes)).saturating_mul(SCALE);
        let earned = elapsed
            .as_nanos()
            .saturating_mul(u128::from(rate_bytes_per_s));
        self.credit = self.credit.saturating_add(earned).min(capacity);
        let needed = u128::from(packet_bytes).saturating_mul(SCALE);
        if self.credit >= needed {
            return None;
        }
        let wait_ns = (needed - self.credit).div_ceil(u128::from(rate_bytes_per_s));
        let wait = Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX).max(1));
        // An `Instant` that far ahead may not exist; then a second is as good as forever, since
        // the caller asks again when it wakes.
        now.checked_add(wait)
            .or_else(|| now.checked_add(Duration::from_secs(1)))
    }

    /// A packet of `bytes` left at `now`.
    ///
    /// Credit does not go below zero: a packet sent without asking (a probe) does not delay the
    /// ones after it.
    pub fn on_sent(&mut self, _now: Instant, bytes: u64) {
        self.credit = self
            .credit
            .saturating_sub(u128::from(bytes).saturating_mul(SCALE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Sends `packet_bytes` packets as fast as the pacer allows for `duration`, waking at exactly
    /// the instant it names, or rounded up to the next `tick` like a coarse timer. Returns the
    /// bytes sent and the largest back-to-back burst in packets.
    fn drive(
        rate_bytes_per_s: u64,
        packet_bytes: u64,
        duration: Duration,
        tick: Option<Duration>,
    ) -> (u64, u64) {
        let start = Instant::now();
        let mut p = Pacer::new(start, packet_bytes);
        let mut now = start;
        let mut sent = 0u64;
        let mut burst = 0u64;
        let mut max_burst = 0u64;
        while now < start + duration {
            match p.delay(now, rate_bytes_per_s, packet_bytes) {
                None => {
                    p.on_sent(now, packet_bytes);
                    sent += packet_bytes;
                    burst += 1;
                    max_burst = max_burst.max(burst);
                }
                Some(at) => {
                    assert!(at > now, "never a time in the past or present");
                    burst = 0;
                    now = match tick {
                        None => at,
                        Some(tick) => {
                            let ticks = at
                                .duration_since(start)
                                .as_nanos()
                                .div_ceil(tick.as_nanos());
                            start + tick * u32::try_from(ticks).expect("small")
                        }
                    };
                }
            }
        }
        (sent, max_burst)
    }

    #[test]
    fn pacer_spreads_a_burst_at_the_configured_rate() {
        // 1 MB/s with 1000-byte packets: one packet per millisecond after the initial burst.
        let (sent, _) = drive(1_000_000, 1000, Duration::from_secs(1), None);
        // One second's worth plus the initial (2-datagram) burst.
        assert!((1_000_000..=1_003_000).contains(&sent), "sent {sent}");
    }

    #[test]
    fn one_millisecond_timers_still_reach_the_full_rate() {
        for rate_bps in [5_000_000u64, 50_000_000, 200_000_000, 500_000_000] {
            let rate = rate_bps / 8;
            let (sent, _) = drive(rate, 1350, Duration::from_secs(2), Some(MS));
            let achieved = sent as f64 / 2.0 / rate as f64;
            assert!(
                achieved > 0.99,
                "{rate_bps} bit/s with 1 ms timers reached only {achieved:.3} of the rate"
            );
        }
    }

    #[test]
    fn bursts_are_capped_at_sixty_four_datagrams() {
        // At 10 Gbit/s, 2 ms of credit would be 2.5 MB: the cap keeps bursts at 64 datagrams.
        let (_, max_burst) = drive(1_250_000_000, 1350, 100 * MS, Some(MS));
        assert!(max_burst <= 64, "burst of {max_burst}");
        // At slow rates a burst is two datagrams (a timer tick is worth less than one).
        let (_, max_burst) = drive(100_000, 1350, Duration::from_secs(1), Some(MS));
        assert!(max_burst <= 2, "burst of {max_burst}");
    }

    #[test]
    fn idle_time_earns_at_most_one_burst() {
        let start = Instant::now();
        let mut p = Pacer::new(start, 1000);
        let rate = 10_000_000; // 10 MB/s: 2 ms is 20 packets
        let later = start + Duration::from_secs(10);
        let mut sent = 0;
        while p.delay(later, rate, 1000).is_none() {
            p.on_sent(later, 1000);
            sent += 1;
        }
        assert_eq!(sent, 20);
    }

    #[test]
    fn a_packet_larger_than_the_burst_still_leaves() {
        let start = Instant::now();
        let mut p = Pacer::new(start, 1000);
        p.on_sent(start, u64::MAX);
        let at = p.delay(start, 1000, 5000).expect("must wait for credit");
        assert_eq!(at, start + Duration::from_secs(5));
        assert_eq!(p.delay(at, 1000, 5000), None);
    }

    #[test]
    fn zero_and_unbounded_rates_do_not_block_or_panic() {
        let now = Instant::now();
        let mut p = Pacer::new(now, 1350);
        assert_eq!(p.delay(now, 0, 1350), None);
        assert_eq!(p.delay(now, u64::MAX, 1350), None);
        p.on_sent(now, u64::MAX);
        let at = p.delay(now, 1, 1350).expect("1 byte/s must wait");
        assert!(at > now);
        assert!(p.delay(now, 1, u64::MAX).is_some_and(|t| t > now));
        assert!(p
            .delay(now, u64::MAX - 1, u64::MAX)
            .is_some_and(|t| t > now));
        // Time going backwards is treated as no time passing.
        let mut p = Pacer::new(now + MS, 1350);
        assert_eq!(p.delay(now, 1_000_000, 1350), None);
    }
}
