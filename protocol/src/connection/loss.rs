//! What becomes of the packets we sent: ACK frames received release their frames' bytes and
//! feed the RTT estimator and the congestion controller; packets are declared lost by the
//! reorder or time threshold, or by the retransmission timeout, and the frames they carried are
//! owed again (never the packets themselves). The loss and keepalive timers are armed here.

use std::time::{Duration, Instant};

use tracing::{debug, trace};

use super::{close_code, Connection, State, Timer, GRANULARITY};
use crate::congestion::{AckedPacket, LossKind};
use crate::recovery::{SentFrame, SentPacket};
use crate::wire::frame::AckFrame;
use crate::wire::ids::Side;

/// Largest ACK delay believed from a peer. Ferry acknowledges at once, so a reported delay
/// means the ACK was lost and the acknowledgement rode on a later packet: the delay is real and
/// must be subtracted, or the RTT estimate (and so the retransmission timeout) would inflate.
/// The estimator never subtracts below the minimum RTT, which bounds what a lying peer can do.
const MAX_ACK_DELAY: Duration = Duration::from_secs(10);
/// Consecutive RTO expiries after which the congestion controller is told of persistent congestion.
const PERSISTENT_CONGESTION_RTOS: u32 = 3;

impl Connection {
    pub(super) fn on_ack_frame(&mut self, now: Instant, ack: &AckFrame) {
        if ack.largest >= self.next_pn {
            self.protocol_error(
                now,
                close_code::PROTOCOL_VIOLATION,
                format!("acknowledged packet {} that was never sent", ack.largest),
            );
            return;
        }
        if let Some(probe) = self.mtud.probe_pn() {
            if ack.ranges.iter().any(|r| r.contains(&probe)) {
                if let Some(size) = self.mtud.on_acked(probe) {
                    self.set_datagram_size(size);
                }
            }
        }
        let acked = self.sent.on_ack(&ack.ranges);
        self.largest_acked = Some(
            self.largest_acked
                .map_or(ack.largest, |l| l.max(ack.largest)),
        );
        if acked.is_empty() {
            return;
        }
        if let Some(last) = acked.last() {
            if last.pn == ack.largest {
                let delay = Duration::from_micros(ack.delay_us).min(MAX_ACK_DELAY);
                self.rtt
                    .update(now.saturating_duration_since(last.time), delay);
            }
        }
        self.loss_rate
            .on_resolved(acked.len().min(u32::MAX as usize) as u32, 0);
        let mut samples = Vec::with_capacity(acked.len());
        for p in &acked {
            samples.push(AckedPacket {
                sent_time: p.time,
                bytes: u64::from(p.size),
                delivery: p.delivery,
            });
            self.mtud.on_packet_acked(p.size as usize);
            for f in &p.frames {
                self.on_frame_acked(f);
            }
        }
        self.cc
            .on_ack(now, &samples, &self.rtt, self.sent.bytes_in_flight());
        self.rto_count = 0;
        self.detect_lost(now);
        self.drain_stream_events();
    }

    fn on_frame_acked(&mut self, frame: &SentFrame) {
        match *frame {
            SentFrame::Stream {
                id,
                offset,
                len,
                fin,
            } => self.streams.on_stream_acked(id, offset, len, fin),
            SentFrame::Reset { id, .. } => self.streams.on_reset_acked(id),
            SentFrame::Hello if self.side == Side::Server && !self.config.crypto.is_tls() => {
                self.handshake_confirmed = true
            }
            SentFrame::Crypto { offset, len } => {
                if let Some(tls) = &mut self.tls {
                    tls.on_acked(offset, len);
                }
            }
            SentFrame::Ack { largest } => {
                self.ack_floor = Some(self.ack_floor.map_or(largest, |f| f.max(largest)));
            }
            _ => {}
        }
    }

    fn loss_delay(&self) -> Duration {
        let base = self.rtt.smoothed().max(self.rtt.latest());
        base.mul_f64(self.config.time_threshold).max(GRANULARITY)
    }

    fn detect_lost(&mut self, now: Instant) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        let delay = self.loss_delay();
        let deadline = now.checked_sub(delay);
        let (lost, next) =
            self.sent
                .detect_lost(largest, self.config.reorder_threshold, deadline, delay);
        self.loss_time = next;
        self.on_packets_lost(now, lost, LossKind::Detected);
    }

    fn on_packets_lost(&mut self, now: Instant, lost: Vec<SentPacket>, kind: LossKind) {
        if lost.is_empty() {
            return;
        }
        let mut bytes = 0;
        let mut latest = None;
        for p in &lost {
            bytes += u64::from(p.size);
            latest = Some(p.time);
            for f in &p.frames {
                match *f {
                    SentFrame::Stream {
                        id,
                        offset,
                        len,
                        fin,
                    } => self.streams.on_stream_lost(id, offset, len, fin),
                    SentFrame::Hello => self.hello_pending = true,
                    SentFrame::PeerTokens => self.tokens_pending = true,
                    SentFrame::Crypto { offset, len } => {
                        if let Some(tls) = &mut self.tls {
                            tls.on_lost(offset, len);
                        }
                    }
                    // An ACK is never resent: later packets carry newer ones.
                    SentFrame::Ping | SentFrame::Ack { .. } | SentFrame::FecRepair => {}
                    SentFrame::Datagram => self.datagrams.on_frame_lost(),
                    ref other => self.streams.on_control_lost(other),
                }
            }
        }
        let sizes = lost.iter().map(|p| (p.size as usize, p.time));
        if let Some(size) = self.mtud.on_packets_lost(now, sizes) {
            debug!(side = %self.side, size, "path MTU black hole: large packets lost, none acknowledged");
            self.set_datagram_size(size);
        }
        self.stats.packets_lost += lost.len() as u64;
        self.loss_rate
            .on_resolved(0, lost.len().min(u32::MAX as usize) as u32);
        if !lost.is_empty() {
            self.last_loss = Some(now);
        }
        trace!(side = %self.side, count = lost.len(), "packets lost");
        if let Some(t) = latest {
            self.cc
                .on_loss(now, bytes, t, self.sent.bytes_in_flight(), kind);
        }
    }

    pub(super) fn current_rto(&self) -> Duration {
        // The peer may hold its ACK back for its announced delay: that is not a loss.
        let peer_ack_delay = self
            .peer_settings
            .as_ref()
            .map_or(Duration::ZERO, |s| s.max_ack_delay);
        let base = self.rtt.rto(self.config.rto_floor, GRANULARITY) + peer_ack_delay;
        let factor = self.config.rto_backoff.powi(self.rto_count.min(64) as i32);
        base.mul_f64(factor.min(1e6))
            .min(self.config.rto_ceiling.max(base))
    }

    pub(super) fn update_loss_timer(&mut self) {
        let rto = self.sent.oldest_sent_time().map(|t| t + self.current_rto());
        let t = match (self.loss_time, rto) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match t {
            Some(t) => self.timers.set(Timer::Loss, t),
            None => self.timers.stop(Timer::Loss),
        }
        // While a PING is already owed (it may be held back by the congestion window), the
        // keepalive must not fire again: it would spin at a deadline in the past.
        let keepalive = self.config.keepalive_interval.map(|i| self.last_sent + i);
        // A client with open streams probes a silent peer sooner (see `liveness_probe`).
        let probe = match self.config.liveness_probe {
            Some(silence) if self.side == Side::Client && self.streams.open_count() > 0 => {
                let heard = self.last_received.unwrap_or(self.last_sent);
                Some(self.last_sent.max(heard) + silence)
            }
            _ => None,
        };
        let deadline = match (keepalive, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (deadline, self.state) {
            (Some(at), State::Established) if !self.ping_pending => {
                self.timers.set(Timer::Keepalive, at)
            }
            _ => self.timers.stop(Timer::Keepalive),
        }
    }

    pub(super) fn on_loss_timer(&mut self, now: Instant) {
        if self.loss_time.is_some_and(|t| t <= now) {
            self.detect_lost(now);
            return;
        }
        // Packets unacknowledged for a whole timeout are lost; two probes may leave whatever
        // the congestion window says, so a timeout always puts packets on the wire, and their
        // acknowledgement lets the reorder threshold settle everything older.
        let rto = self.current_rto();
        let Some(deadline) = now.checked_sub(rto) else {
            return;
        };
        let lost = self.sent.drain_sent_before(deadline);
        if lost.is_empty() {
            return;
        }
        self.probe_credit = 2;
        self.stats.rto_expiries += 1;
        self.rto_count += 1;
        if self.rto_count >= PERSISTENT_CONGESTION_RTOS {
            self.cc.on_persistent_congestion(now);
        }
        self.on_packets_lost(now, lost, LossKind::Timeout);
    }
}
