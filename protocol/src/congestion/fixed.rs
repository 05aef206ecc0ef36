//! The `fixed` controller: send at a configured rate whatever the loss, for dedicated links whose
//! capacity is known and whose loss is not caused by congestion (KCP's `nc=1`, Hysteria's
//! "Brutal"). On a shared link it would be unfair to other traffic: it is opt-in.

use std::time::{Duration, Instant};

use super::{AckedPacket, Controller, DeliveryState};
use crate::rtt::RttEstimator;

/// RTT assumed for the window before any sample.
const DEFAULT_RTT: Duration = Duration::from_millis(200);
/// The window covers this many round trips at the configured rate, so that pacing, not the
/// window, sets the pace even when retransmissions and ACK losses stretch the round trip.
const WINDOW_RTTS: f64 = 2.5;
/// Smallest window, in datagrams.
const MIN_WINDOW_DATAGRAMS: u64 = 16;

/// Constant-rate sender.
#[derive(Debug, Clone)]
pub struct Fixed {
    rate_bytes_per_s: u64,
    max_datagram: u64,
    srtt: Option<Duration>,
}

impl Fixed {
    /// Sends at `rate_bps` bits per second of UDP payload.
    pub fn new(rate_bps: u64, max_datagram: u64) -> Self {
        Self {
            rate_bytes_per_s: (rate_bps / 8).max(1),
            max_datagram,
            srtt: None,
        }
    }
}

impl Controller for Fixed {
    fn on_sent(&mut self, now: Instant, _bytes: u64, _bytes_in_flight: u64) -> DeliveryState {
        DeliveryState::at(now)
    }

    fn on_app_limited(&mut self, _bytes_in_flight: u64) {}

    fn on_ack(
        &mut self,
        _now: Instant,
        _acked: &[AckedPacket],
        rtt: &RttEstimator,
        _bytes_in_flight: u64,
    ) {
        self.srtt = Some(rtt.smoothed());
    }

    fn on_loss(
        &mut self,
        _now: Instant,
        _lost_bytes: u64,
        _largest_lost_sent: Instant,
        _bytes_in_flight: u64,
    ) {
    }

    fn on_persistent_congestion(&mut self, _now: Instant) {}

    fn window(&self) -> u64 {
        let rtt = self.srtt.unwrap_or(DEFAULT_RTT).as_secs_f64();
        let bdp = (self.rate_bytes_per_s as f64 * rtt * WINDOW_RTTS) as u64;
        bdp.max(MIN_WINDOW_DATAGRAMS * self.max_datagram)
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

    #[test]
    fn loss_never_changes_the_rate_and_the_window_follows_the_rtt() {
        let now = Instant::now();
        let mut f = Fixed::new(50_000_000, 1350);
        let mut rtt = RttEstimator::new(Duration::from_millis(100));
        rtt.update(Duration::from_millis(40), Duration::ZERO);
        f.on_ack(now, &[], &rtt, 0);
        f.on_loss(now, 1_000_000, now, 0);
        f.on_persistent_congestion(now);
        assert_eq!(f.pacing_rate(&rtt), 6_250_000);
        assert_eq!(f.window(), 625_000, "2.5 x 6.25 MB/s x 40 ms");
    }
}
