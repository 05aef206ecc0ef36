//! Sent-packet bookkeeping and loss detection.
//!
//! Every ack-eliciting packet sent is remembered with the frames it carried, until it is
//! acknowledged or declared lost. Loss is declared three ways, tuned for latency (KCP-class) while
//! keeping QUIC-class rules:
//!
//! - *reorder threshold*: a packet is lost once a packet sent `reorder_threshold` numbers later
//!   (default 2, KCP's fast resend) is acknowledged;
//! - *time threshold*: once a later packet is acknowledged and it is older than
//!   `time_threshold x max(smoothed RTT, latest RTT)` (RFC 9002 section 6.1.2);
//! - *retransmission timeout*: a packet unacknowledged for an RTO (with gentle backoff) is lost
//!   whether or not anything later was acknowledged: this repairs tail losses.
//!
//! A forward error correction source packet ([`FecCover`]) is rebuilt by the receiver when
//! enough of the repairs over it arrive, which leave up to a hold after it: once a repair
//! over it has left, the thresholds and the timeout count from the latest such repair
//! instead, as if the packet had been sent again then. Counted from the packet, they declared
//! nearly every lost source lost before its rebuilt copy was acknowledged (64 clients'
//! messages, 5% loss: 5% of the stream bytes sent twice, and protected again); counted from
//! the first repair over it, 1.5% still were, since two losses in a window wait for a later
//! repair. (When repairs went in groups, all at once, the first was as good as the last: a
//! lone message's last of seven repairs under bursty loss might leave a pacing interval
//! later, and waiting for it delayed the groups that failed.)
//!
//! What is lost is the frames, not the packet: the connection requeues the stream ranges and
//! control frames of a lost packet, and they go out again in new packets with new numbers.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::congestion::DeliveryState;
use crate::wire::ids::StreamId;

/// A retransmittable record of what a packet carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SentFrame {
    /// Stream bytes `[offset, offset + len)`, and the FIN if `fin`.
    Stream {
        /// Stream.
        id: StreamId,
        /// First byte.
        offset: u64,
        /// Byte count.
        len: u32,
        /// Whether the FIN was carried.
        fin: bool,
    },
    /// A stream reset.
    Reset {
        /// Stream.
        id: StreamId,
        /// Error code.
        code: u64,
        /// Final size sent.
        final_size: u64,
    },
    /// Connection credit (the current value is resent, not the old one).
    MaxData,
    /// Stream credit.
    MaxStreamData(StreamId),
    /// Stream-count credit.
    MaxStreams,
    /// A keepalive or probe.
    Ping,
    /// An unreliable datagram (or a fragment or a copy of one): never sent again.
    Datagram,
    /// A forward error correction repair symbol: never sent again (the retransmission of what
    /// it protected is the fallback).
    FecRepair,
    /// The handshake HELLO.
    Hello,
    /// Server to client: the reset token and the address token (RESET_TOKEN, NEW_TOKEN).
    PeerTokens,
    /// TLS handshake bytes `[offset, offset + len)`.
    Crypto {
        /// First byte.
        offset: u64,
        /// Byte count.
        len: u32,
    },
    /// An ACK frame acknowledging packets up to `largest`. Recorded only in ack-eliciting
    /// packets (it does not make a packet one); once the peer acknowledges such a packet, those
    /// packets need no acknowledging again.
    Ack {
        /// Largest packet number the frame acknowledged.
        largest: u64,
    },
}

/// An ack-eliciting packet in flight.
#[derive(Debug, Clone)]
pub struct SentPacket {
    /// Packet number.
    pub pn: u64,
    /// When it was sent.
    pub time: Instant,
    /// UDP payload bytes.
    pub size: u32,
    /// What it carried.
    pub frames: Vec<SentFrame>,
    /// Congestion controller's delivery-rate state.
    pub delivery: DeliveryState,
    /// Whether repairs may rebuild it at the receiver.
    pub cover: FecCover,
}

/// Whether a packet's loss may be made up by forward error correction repairs, which loss
/// detection gives their chance before it declares the packet lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FecCover {
    /// Not a source, or one that no repair over it has left for yet (one may never: repairs
    /// wait behind stream data and are dropped when stale): the thresholds count from the
    /// packet itself.
    #[default]
    Uncovered,
    /// A source the latest repair over which left as packet `repair_pn` at `at`: the
    /// thresholds count from that repair, which the receiver may need before it can rebuild.
    Repaired {
        /// Packet number of that repair.
        repair_pn: u64,
        /// When it was sent.
        at: Instant,
    },
}

impl SentPacket {
    /// When the loss thresholds and the timeout count from: when it was sent, or for a FEC
    /// source when the latest repair over it was ([`FecCover`]).
    pub fn counted_from(&self) -> Instant {
        match self.cover {
            FecCover::Repaired { at, .. } => at.max(self.time),
            _ => self.time,
        }
    }

    /// Whether the packet holds a FEC repair (a repair travels in a packet of its own).
    pub fn is_repair(&self) -> bool {
        self.frames
            .iter()
            .any(|f| matches!(f, SentFrame::FecRepair))
    }
}

/// Packets in flight, indexed by packet number.
#[derive(Debug, Default)]
pub struct SentPackets {
    /// Packet number of `slots[0]`.
    base: u64,
    /// One slot per packet number from `base`; `None` once acknowledged or lost, or for packets
    /// that are not tracked (ACK-only).
    slots: VecDeque<Option<SentPacket>>,
    bytes_in_flight: u64,
    /// The part of `bytes_in_flight` in packets holding a FEC repair.
    repair_bytes_in_flight: u64,
    count: usize,
}

impl SentPackets {
    /// Nothing in flight; the first packet number will be `first_pn`.
    pub fn new(first_pn: u64) -> Self {
        Self {
            base: first_pn,
            ..Default::default()
        }
    }

    /// Records packet `pn` (which must follow the previous one). `None` reserves the number of
    /// a packet that needs no acknowledgement.
    pub fn push(&mut self, pn: u64, packet: Option<SentPacket>) {
        debug_assert_eq!(pn, self.base + self.slots.len() as u64);
        if let Some(p) = &packet {
            self.bytes_in_flight += u64::from(p.size);
            if p.is_repair() {
                self.repair_bytes_in_flight += u64::from(p.size);
            }
            self.count += 1;
        }
        if self.slots.is_empty() && packet.is_none() {
            self.base = pn + 1;
            return;
        }
        self.slots.push_back(packet);
    }

    /// UDP payload bytes of tracked packets in flight.
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight
    }

    /// The part of [`bytes_in_flight`](Self::bytes_in_flight) in packets that hold a FEC
    /// repair: sent for packets already in flight, never a sign of more data to come.
    pub fn repair_bytes_in_flight(&self) -> u64 {
        self.repair_bytes_in_flight
    }

    /// Number of packets in flight.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn take(&mut self, pn: u64) -> Option<SentPacket> {
        let idx = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        let packet = self.slots.get_mut(idx)?.take()?;
        self.bytes_in_flight -= u64::from(packet.size);
        if packet.is_repair() {
            self.repair_bytes_in_flight -= u64::from(packet.size);
        }
        self.count -= 1;
        Some(packet)
    }

    fn trim_front(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Removes and returns the packets of `ranges` still in flight, in increasing order.
    /// Work is bounded by the number of packets tracked, whatever the ranges claim.
    pub fn on_ack(&mut self, ranges: &[Range<u64>]) -> Vec<SentPacket> {
        let mut acked = Vec::new();
        let end = self.base + self.slots.len() as u64;
        for range in ranges.iter().rev() {
            let lo = range.start.max(self.base);
            let hi = range.end.min(end);
            for pn in lo..hi {
                if let Some(p) = self.take(pn) {
                    acked.push(p);
                }
            }
        }
        self.trim_front();
        acked
    }

    /// The sources `first_pn + i` for each bit `i` of `members` still in flight take `cover`:
    /// the latest repair over them left.
    pub fn cover_fec_sources(&mut self, first_pn: u64, members: u32, cover: FecCover) {
        for pn in crate::wire::frame::member_pns(first_pn, members) {
            let Some(idx) = pn
                .checked_sub(self.base)
                .and_then(|idx| usize::try_from(idx).ok())
            else {
                continue;
            };
            if let Some(Some(p)) = self.slots.get_mut(idx) {
                p.cover = cover;
            }
        }
    }

    /// Declares lost every packet below `largest_acked` that is `reorder_threshold` or more
    /// numbers older, or sent at or before `sent_deadline`, counting a FEC source's number and
    /// time from the latest repair over it ([`FecCover`]). Returns them and the earliest time
    /// another packet below `largest_acked` will pass the time threshold (given `loss_delay`).
    pub fn detect_lost(
        &mut self,
        largest_acked: u64,
        reorder_threshold: u64,
        sent_deadline: Option<Instant>,
        loss_delay: Duration,
    ) -> (Vec<SentPacket>, Option<Instant>) {
        let mut lost = Vec::new();
        let mut next_time = None;
        let mut idx = 0;
        while idx < self.slots.len() {
            let pn = self.base + idx as u64;
            if pn >= largest_acked {
                break;
            }
            if let Some(p) = &self.slots[idx] {
                let counted_from = match p.cover {
                    FecCover::Uncovered => pn,
                    FecCover::Repaired { repair_pn, .. } => repair_pn,
                };
                let time = p.counted_from();
                let by_count = largest_acked.saturating_sub(counted_from) >= reorder_threshold;
                let by_time = sent_deadline.is_some_and(|d| time <= d);
                if by_count || by_time {
                    if let Some(p) = self.take(pn) {
                        lost.push(p);
                    }
                } else {
                    let t = time + loss_delay;
                    next_time = Some(next_time.map_or(t, |n: Instant| n.min(t)));
                }
            }
            idx += 1;
        }
        self.trim_front();
        (lost, next_time)
    }

    /// Removes every packet sent at or before `deadline` (retransmission timeout; a FEC
    /// source's time is the latest repair's over it).
    pub fn drain_sent_before(&mut self, deadline: Instant) -> Vec<SentPacket> {
        let mut lost = Vec::new();
        for idx in 0..self.slots.len() {
            let pn = self.base + idx as u64;
            if self.slots[idx]
                .as_ref()
                .is_some_and(|p| p.counted_from() <= deadline)
            {
                if let Some(p) = self.take(pn) {
                    lost.push(p);
                }
            }
        }
        self.trim_front();
        lost
    }

    /// Removes everything (connection closing, or Retry restarting the handshake).
    pub fn drain_all(&mut self) -> Vec<SentPacket> {
        self.base += self.slots.len() as u64;
        let packets: Vec<SentPacket> = self.slots.drain(..).flatten().collect();
        self.bytes_in_flight = 0;
        self.repair_bytes_in_flight = 0;
        self.count = 0;
        packets
    }

    /// Frames of packet `pn`, if it is in flight.
    pub fn frames_of(&self, pn: u64) -> Option<&[SentFrame]> {
        let idx = usize::try_from(pn.checked_sub(self.base)?).ok()?;
        self.slots.get(idx)?.as_ref().map(|p| p.frames.as_slice())
    }

    /// The earliest time a packet in flight counts from for the timeout
    /// ([`SentPacket::counted_from`]): the oldest packet's send time, unless it is a FEC
    /// source counted from a later repair. Packets are sent in order, so the search ends at
    /// the first one sent no earlier than the best time so far: a few packets, not the flight.
    pub fn oldest_sent_time(&self) -> Option<Instant> {
        let mut oldest: Option<Instant> = None;
        for p in self.slots.iter().flatten() {
            if oldest.is_some_and(|t| p.time >= t) {
                break;
            }
            let t = p.counted_from();
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
        oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pn: u64, time: Instant) -> SentPacket {
        SentPacket {
            pn,
            time,
            size: 1000,
            frames: vec![SentFrame::Ping],
            delivery: {
                use crate::congestion::Controller;
                crate::congestion::fixed::Fixed::new(1_000_000, 1350).on_sent(time, 1000, 0)
            },
            cover: FecCover::Uncovered,
        }
    }

    #[test]
    fn a_fec_source_is_counted_lost_from_the_latest_repair_over_it() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut sent = SentPackets::new(0);
        // Sources 0 and 1, 2 and 3 other packets, 4 a repair over 0 and 1 8 ms later, 5 and
        // 6 after it.
        for pn in 0..4 {
            sent.push(pn, Some(packet(pn, t)));
        }
        sent.push(4, Some(packet(4, t + ms(8))));
        let repaired = FecCover::Repaired {
            repair_pn: 4,
            at: t + ms(8),
        };
        sent.cover_fec_sources(0, 0b11, repaired);
        // The repair and 1 acknowledged, 57 ms after the start: 2 is lost to the count; 0, not
        // acknowledged with its repair, only once a packet two past the repair is (as if it had
        // been sent again as the repair), or 50 ms after the repair.
        sent.on_ack(&[1..2, 3..5]);
        let (lost, next) = sent.detect_lost(4, 2, Some(t + ms(7)), ms(50));
        assert_eq!(lost.iter().map(|p| p.pn).collect::<Vec<_>>(), vec![2]);
        assert_eq!(next, Some(t + ms(58)));
        for pn in 5..7 {
            sent.push(pn, Some(packet(pn, t + ms(9))));
        }
        sent.on_ack(&[6..7, 0..0]);
        let (lost, _) = sent.detect_lost(6, 2, None, ms(50));
        assert_eq!(lost.iter().map(|p| p.pn).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn the_timeout_counts_a_fec_source_from_the_latest_repair_over_it() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut sent = SentPackets::new(0);
        // 0 a source at t, 1 another packet at t + 1 ms, 2 the repair of 0 at t + 8 ms.
        for (pn, at) in [(0, t), (1, t + ms(1)), (2, t + ms(8))] {
            sent.push(pn, Some(packet(pn, at)));
        }
        assert_eq!(sent.oldest_sent_time(), Some(t));
        let repaired = FecCover::Repaired {
            repair_pn: 2,
            at: t + ms(8),
        };
        sent.cover_fec_sources(0, 1, repaired);
        assert_eq!(sent.oldest_sent_time(), Some(t + ms(1)));
        let lost = sent.drain_sent_before(t + ms(5));
        assert_eq!(lost.iter().map(|p| p.pn).collect::<Vec<_>>(), vec![1]);
        assert_eq!(sent.oldest_sent_time(), Some(t + ms(8)));
    }

    #[test]
    fn reorder_threshold_declares_only_packets_far_enough_behind() {
        let t = Instant::now();
        let mut sent = SentPackets::new(0);
        for pn in 0..6 {
            sent.push(pn, Some(packet(pn, t)));
        }
        let acked = sent.on_ack(&[3..4, 0..0]);
        assert_eq!(acked.len(), 1);
        let (lost, next) = sent.detect_lost(3, 2, None, Duration::from_millis(50));
        assert_eq!(lost.iter().map(|p| p.pn).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(
            next,
            Some(t + Duration::from_millis(50)),
            "packet 2 waits for the time threshold"
        );
        assert_eq!(sent.len(), 3);
        assert_eq!(sent.bytes_in_flight(), 3000);
    }

    #[test]
    fn absurd_ack_ranges_cost_no_more_than_what_is_tracked() {
        let t = Instant::now();
        let mut sent = SentPackets::new(0);
        sent.push(0, Some(packet(0, t)));
        sent.push(1, None);
        sent.push(2, Some(packet(2, t)));
        let acked = sent.on_ack(&[0..(1 << 62), 0..0]);
        assert_eq!(acked.len(), 2);
        assert!(sent.is_empty());
    }

    #[test]
    fn rto_drains_packets_sent_before_the_deadline() {
        let t = Instant::now();
        let mut sent = SentPackets::new(0);
        for pn in 0..4 {
            sent.push(pn, Some(packet(pn, t + Duration::from_millis(pn * 10))));
        }
        let lost = sent.drain_sent_before(t + Duration::from_millis(15));
        assert_eq!(lost.len(), 2);
        assert_eq!(sent.oldest_sent_time(), Some(t + Duration::from_millis(20)));
    }
}
