//! Pacing: spreads packets over time at the congestion controller's rate instead of sending a
//! whole window at once, which would overflow shallow router queues and cause the very losses
//! Ferry is built to avoid.
//!
//! A token bucket: tokens (bytes) accrue at the pacing rate up to a burst capacity; a packet may
//! leave when enough tokens are present. The capacity is the rate times 2 ms (between 2 and 64
//! datagrams): tokio's timers have a resolution of about 1 ms, so a bucket smaller than a
//! couple of milliseconds' worth would cap the rate at one packet per timer tick.

use std::time::{Duration, Instant};

/// Burst window: how much sending time the bucket may save up.
const BURST_TIME: Duration = Duration::from_millis(2);
/// Smallest burst, in datagrams.
const MIN_BURST_DATAGRAMS: u64 = 2;
/// Largest burst, in datagrams.
const MAX_BURST_DATAGRAMS: u64 = 64;

/// A token-bucket pacer.
#[derive(Debug, Clone)]
pub struct Pacer {
    tokens: u64,
    last_refill: Instant,
    max_datagram: u64,
}

impl Pacer {
    /// A pacer whose bucket starts with a full minimal burst.
    pub fn new(now: Instant, max_datagram: u64) -> Self {
        Self {
            tokens: 10 * max_datagram,
            last_refill: now,
            max_datagram,
        }
    }

    fn capacity(&self, rate_bytes_per_s: u64) -> u64 {
        let burst = (rate_bytes_per_s as u128 * BURST_TIME.as_nanos() / 1_000_000_000) as u64;
        burst.clamp(
            MIN_BURST_DATAGRAMS * self.max_datagram,
            MAX_BURST_DATAGRAMS * self.max_datagram,
        )
    }

    /// When a packet of `packet_bytes` may be sent at `rate_bytes_per_s`: `None` for now, or the
    /// instant enough tokens will have accrued (always in the future).
    pub fn delay(
        &mut self,
        now: Instant,
        rate_bytes_per_s: u64,
        packet_bytes: u64,
    ) -> Option<Instant> {
        if rate_bytes_per_s == 0 || rate_bytes_per_s == u64::MAX {
            return None;
        }
        let elapsed = now.saturating_duration_since(self.last_refill);
        let earned = (elapsed.as_nanos() * rate_bytes_per_s as u128 / 1_000_000_000)
            .min(u64::MAX as u128) as u64;
        // Only move the refill time forward by what was credited, so fractions are not lost.
        if earned > 0 {
            self.tokens = self
                .tokens
                .saturating_add(earned)
                .min(self.capacity(rate_bytes_per_s));
            self.last_refill = now;
        }
        if self.tokens >= packet_bytes {
            return None;
        }
        let missing = packet_bytes - self.tokens;
        let wait_ns = (missing as u128 * 1_000_000_000).div_ceil(rate_bytes_per_s as u128);
        Some(now + Duration::from_nanos(wait_ns.clamp(1, u64::MAX as u128) as u64))
    }

    /// A packet of `bytes` was sent.
    pub fn on_sent(&mut self, _now: Instant, bytes: u64) {
        self.tokens = self.tokens.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_a_burst_at_the_configured_rate() {
        let start = Instant::now();
        let mut p = Pacer::new(start, 1000);
        let rate = 1_000_000; // 1 MB/s: one 1000-byte packet per millisecond
        let mut now = start;
        let mut sent = 0u64;
        while now < start + Duration::from_secs(1) {
            match p.delay(now, rate, 1000) {
                None => {
                    p.on_sent(now, 1000);
                    sent += 1000;
                }
                Some(at) => {
                    assert!(at > now, "never a time in the past");
                    now = at;
                }
            }
        }
        // One second at 1 MB/s plus the initial burst.
        assert!((1_000_000..=1_012_000).contains(&sent), "sent {sent}");
    }

    #[test]
    fn zero_and_unbounded_rates_do_not_block_or_panic() {
        let now = Instant::now();
        let mut p = Pacer::new(now, 1350);
        assert_eq!(p.delay(now, 0, 1350), None);
        assert_eq!(p.delay(now, u64::MAX, 1350), None);
        p.on_sent(now, u64::MAX);
        assert!(p.delay(now, 1, 1350).is_some());
    }
}
