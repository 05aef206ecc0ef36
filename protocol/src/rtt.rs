//! Round-trip time estimation: smoothed RTT, its variation, and the minimum seen.
//!
//! The estimator follows RFC 6298 / RFC 9002 section 5 (EWMA with gains 1/8 and 1/4), and
//! subtracts the peer's reported ACK delay when that does not push the sample below the minimum.
//! Loss detection (time threshold, retransmission timeout) and congestion control read it.

use std::time::Duration;

/// Round-trip time statistics for one path.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    latest: Duration,
    smoothed: Option<Duration>,
    var: Duration,
    min: Duration,
    initial: Duration,
}

impl RttEstimator {
    /// A fresh estimator that reports `initial` until the first sample arrives.
    pub fn new(initial: Duration) -> Self {
        Self {
            latest: initial,
            smoothed: None,
            var: initial / 2,
            min: initial,
            initial,
        }
    }

    /// Feeds one RTT sample (time from sending a packet to receiving its ACK) and the delay the
    /// peer reported holding that ACK.
    pub fn update(&mut self, sample: Duration, ack_delay: Duration) {
        self.latest = sample;
        if self.smoothed.is_none() {
            self.min = sample;
            self.smoothed = Some(sample);
            self.var = sample / 2;
            return;
        }
        self.min = self.min.min(sample);
        // Subtract the ACK delay only when that keeps the sample plausible.
        let adjusted = if sample >= self.min + ack_delay {
            sample - ack_delay
        } else {
            sample
        };
        let smoothed = self.smoothed.unwrap_or(adjusted);
        let deviation = smoothed.abs_diff(adjusted);
        self.var = (self.var * 3 + deviation) / 4;
        self.smoothed = Some((smoothed * 7 + adjusted) / 8);
    }

    /// Smoothed RTT (the initial guess before any sample).
    pub fn smoothed(&self) -> Duration {
        self.smoothed.unwrap_or(self.initial)
    }

    /// RTT variation.
    pub fn var(&self) -> Duration {
        self.var
    }

    /// Smallest RTT seen (the initial guess before any sample).
    pub fn min(&self) -> Duration {
        self.min
    }

    /// Most recent sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// True once at least one sample arrived.
    pub fn has_sample(&self) -> bool {
        self.smoothed.is_some()
    }

    /// Base retransmission timeout: smoothed RTT plus four deviations (at least `granularity`),
    /// never below `floor`. Backoff is applied by the caller.
    pub fn rto(&self, floor: Duration, granularity: Duration) -> Duration {
        (self.smoothed() + (self.var * 4).max(granularity)).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn converges_to_a_steady_rtt_and_tracks_the_minimum() {
        let mut rtt = RttEstimator::new(333 * MS);
        for _ in 0..50 {
            rtt.update(40 * MS, Duration::ZERO);
        }
        assert!(rtt.smoothed().abs_diff(40 * MS) < MS);
        assert!(rtt.var() < MS);
        rtt.update(25 * MS, Duration::ZERO);
        assert_eq!(rtt.min(), 25 * MS);
        assert!(rtt.rto(10 * MS, MS) >= 40 * MS);
    }

    #[test]
    fn ack_delay_is_not_subtracted_below_the_minimum() {
        let mut rtt = RttEstimator::new(100 * MS);
        rtt.update(20 * MS, Duration::ZERO);
        rtt.update(21 * MS, 10 * MS);
        assert!(rtt.smoothed() > 19 * MS);
    }
}
