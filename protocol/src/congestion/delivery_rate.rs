//! Delivery-rate estimation: how fast the network is actually delivering this connection's bytes.
//!
//! A model-based controller ([`Bbr`](super::bbr::Bbr)) needs bandwidth samples that measure the
//! path, not the sender's own window or the application's appetite. This module implements the
//! algorithm of the IETF draft "Delivery Rate Estimation" (Y. Cheng, N. Cardwell, S. Hassas
//! Yeganeh, V. Jacobson; draft-cheng-iccrg-delivery-rate-estimation):
//!
//! - the connection keeps `delivered` (bytes acknowledged so far), `delivered_time` (when that
//!   count last grew) and `first_sent_time` (send time of the packet most recently acknowledged,
//!   which starts the current "send flight");
//! - each packet snapshots those three into a [`DeliveryState`] when it is sent;
//! - when an ACK arrives, the newest packet it acknowledges yields one [`RateSample`]: the bytes
//!   delivered since that packet was sent, divided by the *longer* of the send interval (how long
//!   the flight took to send) and the ACK interval (how long it took to be acknowledged). Taking
//!   the longer one keeps ACK compression and send bursts from inflating the estimate;
//! - a sample whose interval is shorter than the minimum RTT is not trusted (the draft's rule: it
//!   can only come from a compressed or spuriously acknowledged flight);
//! - when the sender runs out of data while the window is open, the bytes up to the end of what is
//!   in flight are marked *application-limited*; samples from those packets measure the
//!   application, so a controller must only let them raise its estimate, never lower it.
//!
//! Lost packets are never acknowledged, so they never count as delivered: under random loss the
//! samples read `(1 - loss)` of the sending rate, which is what the receiver really got.

use std::time::{Duration, Instant};

use super::AckedPacket;

/// Per-packet delivery state captured when a packet is sent, handed back when it is acknowledged.
///
/// It is `Copy` and small so the loss-recovery layer can store one per packet in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryState {
    /// Bytes the connection had seen delivered (acknowledged) when the packet was sent.
    pub delivered_bytes: u64,
    /// When that delivered count last grew, as of the send (the draft's `P.delivered_time`).
    pub delivered_time: Instant,
    /// Send time of the first packet of the flight this packet belongs to (the draft's
    /// `P.first_sent_time`).
    pub first_sent_time: Instant,
    /// The sender was application-limited when the packet was sent.
    pub app_limited: bool,
}

impl DeliveryState {
    /// State for a packet sent at `now` by a controller that does not estimate delivery rates
    /// (for example [`Fixed`](super::fixed::Fixed)).
    pub fn untracked(now: Instant) -> Self {
        Self {
            delivered_bytes: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited: false,
        }
    }
}

/// What one ACK taught about the delivery rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSample {
    /// Delivery rate over the sample's interval, in bytes per second; `None` when the interval
    /// was too short (below the minimum RTT, or zero) to be trusted.
    pub delivery_rate_bytes_per_s: Option<u64>,
    /// The newest acknowledged packet was sent while application-limited: the rate measures the
    /// application, and may only raise a bandwidth estimate.
    pub is_app_limited: bool,
    /// Bytes delivered when the newest acknowledged packet was sent; a controller compares it
    /// with the delivered count at the start of a round to count round trips.
    pub prior_delivered_bytes: u64,
    /// Bytes delivered over the sample's interval.
    pub delivered_bytes: u64,
    /// The sample's interval: the longer of the send and ACK intervals.
    pub interval: Duration,
    /// Bytes newly acknowledged by this ACK.
    pub acked_bytes: u64,
}

/// The connection-wide counters of the draft, fed by every send and ACK.
#[derive(Debug, Clone)]
pub struct DeliveryRateEstimator {
    /// Total bytes acknowledged (`C.delivered`).
    delivered_bytes: u64,
    /// When `delivered_bytes` last grew (`C.delivered_time`).
    delivered_time: Instant,
    /// Send time of the most recently acknowledged packet, or of the first packet sent after the
    /// pipe was empty (`C.first_sent_time`).
    first_sent_time: Instant,
    /// Delivered count past which the current application-limited period ends; 0 when not
    /// application-limited (`C.app_limited`).
    app_limited_until_bytes: u64,
}

impl DeliveryRateEstimator {
    /// A fresh estimator for a connection starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            delivered_bytes: 0,
            delivered_time: now,
            first_sent_time: now,
            app_limited_until_bytes: 0,
        }
    }

    /// Total bytes acknowledged so far.
    pub fn delivered_bytes(&self) -> u64 {
        self.delivered_bytes
    }

    /// True while packets being sent are marked application-limited.
    pub fn is_app_limited(&self) -> bool {
        self.app_limited_until_bytes != 0
    }

    /// A packet is being sent at `now` with `bytes_in_flight` already in flight; returns the state
    /// to store with it.
    pub fn on_sent(&mut self, now: Instant, bytes_in_flight: u64) -> DeliveryState {
        if bytes_in_flight == 0 {
            // A new flight after an idle pipe: neither the idle time nor the old ACK clock may
            // stretch the next sample's interval.
            self.first_sent_time = now;
            self.delivered_time = now;
        }
        DeliveryState {
            delivered_bytes: self.delivered_bytes,
            delivered_time: self.delivered_time,
            first_sent_time: self.first_sent_time,
            app_limited: self.is_app_limited(),
        }
    }

    /// The sender has nothing to send although the window would allow it, with `bytes_in_flight`
    /// in flight: everything sent until those bytes are delivered is application-limited.
    pub fn on_app_limited(&mut self, bytes_in_flight: u64) {
        // Never 0, which means "not application-limited".
        self.app_limited_until_bytes = self.delivered_bytes.saturating_add(bytes_in_flight).max(1);
    }

    /// One ACK newly acknowledged `acked` at `now`. Returns `None` only when `acked` is empty;
    /// otherwise a sample whose rate is `None` when its interval is shorter than `min_rtt`.
    pub fn on_ack(
        &mut self,
        now: Instant,
        acked: &[AckedPacket],
        min_rtt: Duration,
    ) -> Option<RateSample> {
        // The newest packet acknowledged: (sent time, its delivery state).
        let mut newest: Option<(Instant, DeliveryState)> = None;
        let mut acked_bytes = 0u64;
        for packet in acked {
            acked_bytes = acked_bytes.saturating_add(packet.bytes);
            self.delivered_bytes = self.delivered_bytes.saturating_add(packet.bytes);
            self.delivered_time = now;
            // The draft's IsNewestPacket: sent no earlier than the previous newest. Packets come
            // in packet-number (hence send) order, so ties go to the later one.
            let is_newest = match newest {
                None => true,
                Some(_) => packet.sent_time >= self.first_sent_time,
            };
            if is_newest {
                newest = Some((packet.sent_time, packet.delivery));
                self.first_sent_time = packet.sent_time;
            }
        }
        if self.app_limited_until_bytes != 0 && self.delivered_bytes > self.app_limited_until_bytes
        {
            self.app_limited_until_bytes = 0;
        }
        let (sent_time, state) = newest?;
        let send_elapsed = sent_time.saturating_duration_since(state.first_sent_time);
        let ack_elapsed = now.saturating_duration_since(state.delivered_time);
        let interval = send_elapsed.max(ack_elapsed);
        let delivered_bytes = self.delivered_bytes.saturating_sub(state.delivered_bytes);
        let delivery_rate_bytes_per_s = if interval.is_zero() || interval < min_rtt {
            None
        } else {
            Some(bytes_per_second(delivered_bytes, interval))
        };
        Some(RateSample {
            delivery_rate_bytes_per_s,
            is_app_limited: state.app_limited,
            prior_delivered_bytes: state.delivered_bytes,
            delivered_bytes,
            interval,
            acked_bytes,
        })
    }
}

/// `bytes / interval` in bytes per second, saturating; 0 for an empty interval.
fn bytes_per_second(bytes: u64, interval: Duration) -> u64 {
    let nanos = interval.as_nanos();
    if nanos == 0 {
        return 0;
    }
    let rate = u128::from(bytes).saturating_mul(1_000_000_000) / nanos;
    u64::try_from(rate).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ack(sent_time: Instant, bytes: u64, delivery: DeliveryState) -> AckedPacket {
        AckedPacket {
            sent_time,
            bytes,
            delivery,
        }
    }

    /// Sends a 1000-byte packet every `gap`, each acknowledged `rtt` later; returns the last
    /// valid sample.
    fn steady_flow(gap: Duration, rtt: Duration, packets: u32) -> RateSample {
        let t0 = Instant::now();
        let mut e = DeliveryRateEstimator::new(t0);
        let mut in_flight: VecDeque<(Instant, DeliveryState)> = VecDeque::new();
        let mut last = None;
        let mut now = t0;
        for _ in 0..packets {
            while in_flight
                .front()
                .is_some_and(|(sent, _)| *sent + rtt <= now)
            {
                let (sent, d) = in_flight.pop_front().expect("non-empty");
                let s = e.on_ack(sent + rtt, &[ack(sent, 1000, d)], rtt);
                if s.is_some_and(|s| s.delivery_rate_bytes_per_s.is_some()) {
                    last = s;
                }
            }
            let inflight = in_flight.len() as u64 * 1000;
            in_flight.push_back((now, e.on_sent(now, inflight)));
            now += gap;
        }
        last.expect("at least one valid sample")
    }

    #[test]
    fn steady_acks_measure_the_sending_rate() {
        // One 1000-byte packet per millisecond: 1 MB/s.
        let s = steady_flow(MS, 10 * MS, 200);
        let rate = s.delivery_rate_bytes_per_s.expect("valid");
        assert!((950_000..=1_050_000).contains(&rate), "{s:?}");
        assert!(!s.is_app_limited);
        assert!(s.interval >= 10 * MS);
    }

    #[test]
    fn samples_shorter_than_the_minimum_rtt_are_not_trusted() {
        let t0 = Instant::now();
        let mut e = DeliveryRateEstimator::new(t0);
        let d = e.on_sent(t0, 0);
        // Acknowledged after 5 ms while the minimum RTT is 10 ms: a compressed ACK, no rate.
        let s = e
            .on_ack(t0 + 5 * MS, &[ack(t0, 1000, d)], 10 * MS)
            .expect("sample");
        assert_eq!(s.delivery_rate_bytes_per_s, None);
        assert_eq!(s.acked_bytes, 1000);
        assert_eq!(e.delivered_bytes(), 1000);
    }

    #[test]
    fn ack_compression_does_not_inflate_the_rate() {
        // Packet 0 at 0 ms, acknowledged at 10 ms; packets 1..=10 sent one per millisecond
        // (1 MB/s), and all their ACKs bunched into one at 11 ms. The ACK interval (1 ms) would
        // claim 10 MB/s; the send interval (10 ms) bounds the sample to the real 1 MB/s.
        let t0 = Instant::now();
        let mut e = DeliveryRateEstimator::new(t0);
        let first = e.on_sent(t0, 0);
        let mut later = Vec::new();
        for i in 1..10u32 {
            let now = t0 + MS * i;
            later.push(ack(now, 1000, e.on_sent(now, u64::from(i) * 1000)));
        }
        e.on_ack(t0 + 10 * MS, &[ack(t0, 1000, first)], Duration::ZERO);
        let now = t0 + 10 * MS;
        later.push(ack(now, 1000, e.on_sent(now, 9_000)));
        let s = e
            .on_ack(t0 + 11 * MS, &later, Duration::ZERO)
            .expect("sample");
        assert_eq!(s.delivered_bytes, 10_000);
        assert_eq!(s.interval, 10 * MS);
        assert_eq!(s.delivery_rate_bytes_per_s, Some(1_000_000));
    }

    #[test]
    fn app_limited_marks_packets_until_the_flight_is_delivered() {
        let t0 = Instant::now();
        let mut e = DeliveryRateEstimator::new(t0);
        let a = e.on_sent(t0, 0);
        e.on_app_limited(1000);
        let b = e.on_sent(t0 + MS, 1000);
        assert!(!a.app_limited);
        assert!(b.app_limited);
        assert!(e.is_app_limited());
        e.on_ack(t0 + 10 * MS, &[ack(t0, 1000, a)], Duration::ZERO);
        assert!(e.is_app_limited(), "only the bytes in flight are delivered");
        let s = e
            .on_ack(t0 + 11 * MS, &[ack(t0 + MS, 1000, b)], Duration::ZERO)
            .expect("sample");
        assert!(s.is_app_limited);
        assert!(!e.is_app_limited(), "the app-limited period ended");
        assert!(!e.on_sent(t0 + 12 * MS, 0).app_limited);
    }

    #[test]
    fn idle_time_does_not_stretch_the_next_sample() {
        let t0 = Instant::now();
        let mut e = DeliveryRateEstimator::new(t0);
        let a = e.on_sent(t0, 0);
        e.on_ack(t0 + 10 * MS, &[ack(t0, 1000, a)], Duration::ZERO);
        // One second idle, then a new flight from an empty pipe.
        let restart = t0 + Duration::from_secs(1);
        let b = e.on_sent(restart, 0);
        let s = e
            .on_ack(restart + 10 * MS, &[ack(restart, 1000, b)], Duration::ZERO)
            .expect("sample");
        assert_eq!(s.interval, 10 * MS);
        assert_eq!(s.delivery_rate_bytes_per_s, Some(100_000));
    }

    #[test]
    fn empty_acks_and_extreme_values_do_not_panic() {
        let t0 = Instant::now();
        let mut e = DeliveryRateEstimator::new(t0);
        assert_eq!(e.on_ack(t0, &[], Duration::ZERO), None);
        e.on_app_limited(u64::MAX);
        let d = e.on_sent(t0, u64::MAX);
        let huge = [ack(t0, u64::MAX, d), ack(t0, u64::MAX, d)];
        let s = e
            .on_ack(t0 + Duration::from_nanos(1), &huge, Duration::ZERO)
            .expect("sample");
        assert_eq!(s.delivery_rate_bytes_per_s, Some(u64::MAX));
        // An ACK time before the send time (a confused caller) yields no rate, not a panic.
        let d = e.on_sent(t0 + MS, 0);
        let s = e
            .on_ack(t0, &[ack(t0 + MS, 1, d)], Duration::ZERO)
            .expect("sample");
        assert_eq!(s.delivery_rate_bytes_per_s, None);
    }
}
