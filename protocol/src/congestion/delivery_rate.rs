//! Delivery-rate estimation: how fast the network actually delivers this connection's bytes.
//!
//! Model-based congestion control (BBR) needs bandwidth samples that do not depend on the
//! sender's window. Following the IETF draft "Delivery Rate Estimation"
//! (draft-cheng-iccrg-delivery-rate-estimation), each packet remembers, when sent, how many bytes
//! had been delivered so far and when; when it is acknowledged, the bytes delivered since divided
//! by the longer of the send interval and the ACK interval is a delivery-rate sample. Samples taken
//! while the application had nothing to send are marked app-limited, so they can only raise an
//! estimate, never lower it.

use std::time::{Duration, Instant};

use super::AckedPacket;

/// Per-packet delivery state captured when it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryState {
    /// Bytes delivered (acknowledged) when the packet was sent.
    pub delivered: u64,
    /// When `delivered` last grew, as of the send.
    pub delivered_time: Instant,
    /// Send time of the first packet of the current flight, as of the send.
    pub first_sent_time: Instant,
    /// When the packet was sent.
    pub sent_time: Instant,
    /// The sender was application-limited.
    pub app_limited: bool,
}

impl DeliveryState {
    /// State for a packet sent at `now` by a sender that tracks nothing.
    pub fn at(now: Instant) -> Self {
        Self {
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            sent_time: now,
            app_limited: false,
        }
    }
}

/// One delivery-rate sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSample {
    /// Bytes per second delivered over the interval.
    pub delivery_rate: u64,
    /// The sample was taken while application-limited.
    pub is_app_limited: bool,
    /// Bytes delivered when the newest acknowledged packet was sent (marks round trips).
    pub prior_delivered: u64,
    /// Bytes delivered over the sample's interval.
    pub delivered: u64,
    /// The sample's interval.
    pub interval: Duration,
}

/// The connection-wide counters of the draft.
#[derive(Debug, Clone)]
pub struct DeliveryRateEstimator {
    delivered: u64,
    delivered_time: Instant,
    first_sent_time: Instant,
    /// Delivered count at which the current app-limited period ends (0: not app-limited).
    app_limited_until: u64,
}

impl DeliveryRateEstimator {
    /// A fresh estimator.
    pub fn new(now: Instant) -> Self {
        Self {
            delivered: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited_until: 0,
        }
    }

    /// Total bytes delivered.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// A packet is being sent with `bytes_in_flight` already in flight.
    pub fn on_sent(&mut self, now: Instant, bytes_in_flight: u64) -> DeliveryState {
        if bytes_in_flight == 0 {
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        DeliveryState {
            delivered: self.delivered,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            sent_time: now,
            app_limited: self.app_limited_until != 0,
        }
    }

    /// The sender ran out of data with `bytes_in_flight` in flight.
    pub fn on_app_limited(&mut self, bytes_in_flight: u64) {
        self.app_limited_until = (self.delivered + bytes_in_flight).max(1);
    }

    /// Packets acknowledged by one ACK; returns a sample unless the interval is too short to be
    /// meaningful (below `min_rtt`, as the draft prescribes) or nothing was acknowledged.
    pub fn on_ack(
        &mut self,
        now: Instant,
        acked: &[AckedPacket],
        min_rtt: Duration,
    ) -> Option<RateSample> {
        let mut newest: Option<DeliveryState> = None;
        for p in acked {
            self.delivered += p.bytes;
            self.delivered_time = now;
            let d = p.delivery;
            if newest.is_none_or(|n| {
                d.delivered > n.delivered
                    || (d.delivered == n.delivered && d.sent_time > n.sent_time)
            }) {
                newest = Some(d);
                self.first_sent_time = d.sent_time;
            }
        }
        if self.app_limited_until != 0 && self.delivered > self.app_limited_until {
            self.app_limited_until = 0;
        }
        let n = newest?;
        let send_elapsed = n.sent_time.saturating_duration_since(n.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(n.delivered_time);
        let interval = send_elapsed.max(ack_elapsed);
        let delivered = self.delivered - n.delivered;
        if interval.is_zero() || interval < min_rtt {
            return None;
        }
        let rate =
            (delivered as u128 * 1_000_000_000 / interval.as_nanos()).min(u64::MAX as u128) as u64;
        Some(RateSample {
            delivery_rate: rate,
            is_app_limited: n.app_limited,
            prior_delivered: n.delivered,
            delivered,
            interval,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_acks_measure_the_delivery_rate() {
        let t0 = Instant::now();
        let mut e = DeliveryRateEstimator::new(t0);
        let rtt = Duration::from_millis(10);
        // 1000-byte packets every millisecond, each acknowledged 10 ms later: 1 MB/s.
        let mut sent = std::collections::VecDeque::new();
        let mut last = None;
        for ms in 0..200u64 {
            let now = t0 + Duration::from_millis(ms);
            let inflight = sent.len() as u64 * 1000;
            sent.push_back((now, e.on_sent(now, inflight)));
            if ms >= 10 {
                let (st, d) = sent.pop_front().unwrap();
                let p = AckedPacket {
                    sent_time: st,
                    bytes: 1000,
                    delivery: d,
                };
                last = e.on_ack(now, &[p], rtt).or(last);
            }
        }
        let s = last.expect("samples");
        assert!((950_000..=1_050_000).contains(&s.delivery_rate), "{s:?}");
        assert!(!s.is_app_limited);
    }
}
