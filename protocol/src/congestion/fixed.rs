//! The `fixed` controller: send at a configured rate whatever the loss.
//!
//! On a dedicated link whose capacity is known and whose loss is not caused by congestion (a
//! leased line, a radio hop with a fixed allocation), backing off on loss only wastes the link.
//! This is what KCP's `nc=1` ("no congestion control") and Hysteria's "Brutal" do. On a shared
//! link it is unfair to other traffic and can congest the path for everyone: it is opt-in, via
//! [`CongestionConfig::Fixed`](super::CongestionConfig::Fixed).
//!
//! The pacing rate is the configured rate, always. The window only has to be large enough that
//! pacing, not the window, sets the pace: 2.5 round trips at the configured rate, so that the
//! bytes still in flight for lost packets (not yet declared lost), retransmissions and RTT spikes
//! do not stall the sender.

use std::time::{Duration, Instant};

use super::{AckedPacket, Controller, DeliveryState, LossKind};
use crate::rtt::RttEstimator;

/// RTT assumed for the window before the first RTT sample.
const DEFAULT_RTT: Duration = Duration::from_millis(200);
/// The window covers this many smoothed round trips at the configured rate, in tenths.
const WINDOW_RTT_TENTHS: u128 = 25;
/// Smallest window, in datagrams.
const MIN_WINDOW_DATAGRAMS: u64 = 16;

/// A constant-rate sender.
#[derive(Debug, Clone)]
pub struct Fixed {
    rate_bytes_per_s: u64,
    max_datagram: u64,
    /// Smoothed RTT as of the last ACK; `None` before the first RTT sample.
    srtt: Option<Duration>,
}

impl Fixed {
    /// Sends at `rate_bps` bits per second of UDP payload, in datagrams of at most
    /// `max_datagram` bytes.
    pub fn new(rate_bps: u64, max_datagram: u64) -> Self {
        Self {
            // At least 1 byte/s: a pacing rate of 0 would mean "unpaced" to the pacer.
            rate_bytes_per_s: (rate_bps / 8).max(1),
            max_datagram,
            srtt: None,
        }
    }

    /// The configured rate in bytes per second.
    pub fn rate_bytes_per_s(&self) -> u64 {
        self.rate_bytes_per_s
    }
}

impl Controller for Fixed {
    fn on_sent(&mut self, now: Instant, _bytes: u64, _bytes_in_flight: u64) -> DeliveryState {
        DeliveryState::untracked(now)
    }

    fn on_app_limited(&mut self, _bytes_in_flight: u64) {}

    fn on_ack(
        &mut self,
        _now: Instant,
        _acked: &[AckedPacket],
        rtt: &RttEstimator,
        _bytes_in_flight: u64,
    ) {
        if rtt.has_sample() {
            self.srtt = Some(rtt.smoothed());
        }
    }

    fn on_loss(
        &mut self,
        _now: Instant,
        _lost_bytes: u64,
        _largest_lost_sent: Instant,
        _bytes_in_flight: u64,
        _kind: LossKind,
    ) {
        // Loss is not a congestion signal on a dedicated link.
    }

    fn on_persistent_congestion(&mut self, _now: Instant) {
        // Neither is a blackout: keep the rate, the link is the link.
    }

    fn window(&self) -> u64 {
        let rtt_ns = self.srtt.unwrap_or(DEFAULT_RTT).as_nanos();
        let window = u128::from(self.rate_bytes_per_s)
            .saturating_mul(rtt_ns)
            .saturating_mul(WINDOW_RTT_TENTHS)
            / (10 * 1_000_000_000);
        u64::try_from(window)
            .unwrap_or(u64::MAX)
            .max(self.max_datagram.saturating_mul(MIN_WINDOW_DATAGRAMS))
    }

    fn pacing_rate(&self, _rtt: &RttEstimator) -> u64 {
        self.rate_bytes_per_s
    }

    fn name(&self) -> &'static str {
        "fixed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn loss_and_persistent_congestion_never_change_the_rate_or_window() {
        let now = Instant::now();
        let mut f = Fixed::new(50_000_000, 1350);
        let mut rtt = RttEstimator::new(100 * MS);
        rtt.update(40 * MS, Duration::ZERO);
        f.on_ack(now, &[], &rtt, 0);
        let window = f.window();
        f.on_loss(now, 1_000_000, now, 0, LossKind::Detected);
        f.on_persistent_congestion(now);
        assert_eq!(f.pacing_rate(&rtt), 6_250_000);
        assert_eq!(f.window(), window);
        assert_eq!(f.name(), "fixed");
    }

    #[test]
    fn window_is_two_and_a_half_smoothed_rtts_at_the_rate() {
        let now = Instant::now();
        let mut f = Fixed::new(50_000_000, 1350);
        let mut rtt = RttEstimator::new(100 * MS);
        rtt.update(40 * MS, Duration::ZERO);
        f.on_ack(now, &[], &rtt, 0);
        assert_eq!(f.window(), 625_000, "2.5 x 6.25 MB/s x 40 ms");
    }

    #[test]
    fn window_assumes_200_ms_before_any_rtt_sample() {
        let now = Instant::now();
        let mut f = Fixed::new(80_000_000, 1350);
        assert_eq!(f.window(), 5_000_000, "2.5 x 10 MB/s x 200 ms");
        // An estimator without a sample does not replace the default with its initial guess.
        f.on_ack(now, &[], &RttEstimator::new(10 * MS), 0);
        assert_eq!(f.window(), 5_000_000);
    }

    #[test]
    fn window_is_never_below_sixteen_datagrams() {
        let f = Fixed::new(8_000, 1350); // 1 KB/s
        assert_eq!(f.window(), 16 * 1350);
        let f = Fixed::new(0, 1350);
        assert_eq!(f.pacing_rate(&RttEstimator::new(MS)), 1);
        assert_eq!(f.window(), 16 * 1350);
    }

    #[test]
    fn extreme_rates_do_not_overflow() {
        let now = Instant::now();
        let mut f = Fixed::new(u64::MAX, u64::MAX);
        let mut rtt = RttEstimator::new(MS);
        rtt.update(Duration::from_secs(3600), Duration::ZERO);
        f.on_ack(now, &[], &rtt, 0);
        assert_eq!(f.window(), u64::MAX);
        assert_eq!(f.pacing_rate(&rtt), u64::MAX / 8);
        assert_eq!(
            f.on_sent(now, u64::MAX, u64::MAX),
            DeliveryState::untracked(now)
        );
    }
}
