//! Unreliable datagrams inside a connection: what carries a UDP flow through the tunnel.
//!
//! A datagram is queued by the application with a flow id and leaves in the next packets as a
//! DATAGRAM frame, before any stream data (a game's input never waits behind a download), but
//! within the congestion window and the pacer like everything else. It is never retransmitted:
//! a lost datagram is lost, as it would be on the path itself. Each gets a sequence number per
//! connection and direction, and the receiver delivers each number at most once.
//!
//! Loss protection, chosen per datagram ([`Protection`]): `Duplicate` sends every datagram a
//! second time a few milliseconds later, in another packet, so one random loss does not take
//! it (at 5% loss the delivered share goes from 95% to about 99.75%); `Adaptive` does so only
//! while the path's measured loss ([`crate::loss_rate`]) is at least 1%, so a clean path pays
//! nothing. The copy carries the same sequence number and the receiver suppresses it. `Fec`
//! makes the packets that carry the datagram sources of forward error correction groups
//! ([`crate::fec`]), whose repairs are sized by the measured loss and shared by every datagram
//! of the group: at high datagram rates a fraction of duplication's cost. Where FEC is not in
//! use on the connection (either end has it off) it falls back to `Adaptive`.
//!
//! A datagram too large for one packet is split into at most
//! [`MAX_DATAGRAM_FRAGMENTS`] fragments that the receiver reassembles (bounded memory, a
//! timeout; see `receive`); with fragmentation off, or beyond that, it is refused with
//! [`DatagramError::TooBig`], which names the size, and counted. Nothing is truncated.
//!
//! Bounds: the send queue holds at most [`MAX_QUEUED`] datagrams and drops what waited longer
//! than [`MAX_QUEUE_DELAY`] (stale real-time data is worse than none, and a queue is latency);
//! the receive queue holds at most [`receive::MAX_UNREAD`] unread datagrams, dropping the
//! oldest. Every drop is counted in [`DatagramStats`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::recovery::SentFrame;
use crate::wire::coding::VARINT_MAX;
use crate::wire::frame::{DatagramFrame, Fragment, MAX_DATAGRAM_FRAGMENTS};

pub(crate) mod receive;

/// Most datagrams (or fragments) waiting to be sent; beyond, the oldest is dropped.
pub const MAX_QUEUED: usize = 1024;
/// A datagram that could not leave within this long (a full congestion window) is dropped:
/// real-time traffic would rather lose it than have every later datagram wait behind it.
pub const MAX_QUEUE_DELAY: Duration = Duration::from_millis(200);
/// Copies leave this long after the original at least...
const MIN_COPY_SPACING: Duration = Duration::from_millis(1);
/// ...and at most: an eighth of the RTT in between (a burst of loss is usually shorter).
const MAX_COPY_SPACING: Duration = Duration::from_millis(5);

/// Loss protection of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protection {
    /// Sent once.
    #[default]
    None,
    /// Sent twice, a few milliseconds apart.
    Duplicate,
    /// Sent twice while the path has been losing at least 1% of packets, else once.
    Adaptive,
    /// Carried in forward error correction groups (repairs sized by the measured loss, at
    /// least one per group); `Adaptive` where the connection does not use FEC.
    Fec,
}

/// What the connection knows of its path when a datagram is queued.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PathState {
    /// The path has been losing 1% of packets or more lately.
    pub lossy: bool,
    /// Forward error correction is in use (both ends decode it).
    pub fec: bool,
}

/// A datagram received, with its flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The flow the sender gave it.
    pub flow: u64,
    /// The bytes, whole.
    pub data: Vec<u8>,
}

/// Why a datagram was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    /// The peer announced that it takes no datagrams (or the handshake has not told yet).
    #[error("the peer does not accept datagrams")]
    Unsupported,
    /// Larger than the peer accepts, or than fits the packets it may be split into.
    #[error("datagram of {size} bytes is larger than the {max} bytes that can be carried")]
    TooBig {
        /// The datagram's size.
        size: usize,
        /// The largest that can be carried now.
        max: usize,
    },
    /// The connection is not established.
    #[error("connection closed")]
    Closed,
    /// A flow id must fit a varint (below 2^62).
    #[error("flow id {0} is not below 2^62")]
    FlowOutOfRange(u64),
}

/// Datagram counters of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatagramStats {
    /// Datagrams queued by the application.
    pub sent: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Fragments sent (first copies), for datagrams split in several.
    pub fragments_sent: u64,
    /// Frames sent a second time for loss protection.
    pub copies_sent: u64,
    /// Bytes of those copies: the protection's cost.
    pub copy_bytes: u64,
    /// Refused at the sender: too big to carry.
    pub dropped_too_big: u64,
    /// Dropped at the sender: the queue was full or the datagram waited too long.
    pub dropped_congested: u64,
    /// Datagram frames in packets declared lost (copies included).
    pub frames_lost: u64,
    /// Datagrams delivered to the application.
    pub received: u64,
    /// Their bytes.
    pub received_bytes: u64,
    /// Copies (or repeated fragments) dropped because their datagram had already come.
    pub duplicates_suppressed: u64,
    /// Dropped at the receiver: older than the duplicate-detection window.
    pub dropped_late: u64,
    /// Dropped at the receiver: larger than this end accepts.
    pub dropped_oversized: u64,
    /// Dropped at the receiver: the application did not read them in time.
    pub dropped_unread: u64,
    /// Datagrams whose fragments did not all arrive in time (or were pushed out by newer ones).
    pub reassembly_failures: u64,
    /// Whether adaptive protection is duplicating now (the path is lossy).
    pub adaptive_duplicating: bool,
    /// Largest datagram that leaves in one packet now, unfragmented (for a flow id below
    /// 2^30).
    pub unfragmented_max: u64,
}

/// Largest datagram of a flow below 2^30 that fits a frame of `room` bytes whole.
pub(crate) fn unfragmented_max(room: usize) -> usize {
    let flow = (1 << 30) - 1;
    room.saturating_sub(DatagramFrame::encoded_len(flow, VARINT_MAX, false, room) - room)
}

/// One frame's worth of a datagram, waiting to be sent (or to be sent again as a copy).
#[derive(Debug)]
struct Queued {
    flow: u64,
    seq: u64,
    fragment: Option<Fragment>,
    data: Vec<u8>,
    /// When it was queued (fresh) or when the copy is due (repeats).
    at: Instant,
    /// Whether a copy is to follow once this one leaves.
    copy: bool,
    /// Whether the packet that carries it is to be a FEC source.
    fec: bool,
}

/// The datagrams of one connection: the send queue, the copies owed, and the receive side.
#[derive(Debug, Default)]
pub(crate) struct DatagramSet {
    next_seq: u64,
    fresh: VecDeque<Queued>,
    /// Copies owed, in order of the time they are due.
    copies: VecDeque<Queued>,
    /// When the datagram timer last fired: copies due by then wait for the congestion window
    /// or the pacer (which wake the connection themselves), not for the timer again.
    woken: Option<Instant>,
    receive: receive::Receive,
    stats: DatagramStats,
}

impl DatagramSet {
    /// Queues `data` on `flow`. `room` is what one packet holds for a frame, `peer_max` what
    /// the peer accepts (zero: none); `path` says whether the path is lossy (see
    /// [`LossRate`](crate::loss_rate::LossRate)), which adaptive protection follows, and
    /// whether FEC is in use.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn send(
        &mut self,
        now: Instant,
        flow: u64,
        data: &[u8],
        protection: Protection,
        room: usize,
        peer_max: u32,
        fragmentation: bool,
        path: PathState,
    ) -> Result<(), DatagramError> {
        if peer_max == 0 {
            return Err(DatagramError::Unsupported);
        }
        if flow > VARINT_MAX {
            return Err(DatagramError::FlowOutOfRange(flow));
        }
        let whole_overhead = DatagramFrame::encoded_len(flow, VARINT_MAX, false, room) - room;
        let piece_overhead = DatagramFrame::encoded_len(flow, VARINT_MAX, true, room) - room;
        let whole_room = room.saturating_sub(whole_overhead);
        let piece_room = room.saturating_sub(piece_overhead);
        let carried = if fragmentation {
            piece_room * usize::from(MAX_DATAGRAM_FRAGMENTS)
        } else {
            whole_room
        }
        .max(whole_room);
        let max = carried.min(peer_max as usize);
        if data.len() > max {
            self.stats.dropped_too_big += 1;
            return Err(DatagramError::TooBig {
                size: data.len(),
                max,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let fec = protection == Protection::Fec && path.fec;
        let copy = match protection {
            Protection::None => false,
            Protection::Duplicate => true,
            Protection::Adaptive => path.lossy,
            Protection::Fec => !path.fec && path.lossy,
        };
        self.stats.sent += 1;
        self.stats.sent_bytes += data.len() as u64;
        if data.len() <= whole_room {
            self.push(Queued {
                flow,
                seq,
                fragment: None,
                data: data.to_vec(),
                at: now,
                copy,
                fec,
            });
        } else {
            let count = data.len().div_ceil(piece_room);
            // Equal pieces, not full ones and a runt: every fragment packet has room to spare.
            let size = data.len().div_ceil(count);
            for (index, piece) in data.chunks(size).enumerate() {
                self.stats.fragments_sent += 1;
                self.push(Queued {
                    flow,
                    seq,
                    fragment: Some(Fragment {
                        index: index as u8,
                        count: count as u8,
                    }),
                    data: piece.to_vec(),
                    at: now,
                    copy,
                    fec,
                });
            }
        }
        Ok(())
    }

    fn push(&mut self, queued: Queued) {
        if self.fresh.len() >= MAX_QUEUED {
            self.fresh.pop_front();
            self.stats.dropped_congested += 1;
        }
        self.fresh.push_back(queued);
    }

    /// Drops what waited too long to be sent.
    fn drop_stale(&mut self, now: Instant) {
        while self
            .fresh
            .front()
            .is_some_and(|q| now.saturating_duration_since(q.at) > MAX_QUEUE_DELAY)
        {
            self.fresh.pop_front();
            self.stats.dropped_congested += 1;
        }
        while self
            .copies
            .front()
            .is_some_and(|q| now.saturating_duration_since(q.at) > MAX_QUEUE_DELAY)
        {
            self.copies.pop_front();
        }
    }

    /// Whether the next fresh datagram to leave wants its packet to be a FEC source.
    pub(crate) fn fec_due(&self) -> bool {
        self.fresh.front().is_some_and(|q| q.fec)
    }

    /// Bytes of the frame that leaves next, if one is due: a copy due, else the oldest fresh
    /// datagram (the order of [`write`](Self::write)).
    pub(crate) fn next_frame_len(&self, now: Instant) -> Option<usize> {
        self.copies
            .front()
            .filter(|q| q.at <= now)
            .or(self.fresh.front())
            .map(frame_len)
    }

    /// Whether a frame is ready to leave now.
    pub(crate) fn has_due(&self, now: Instant) -> bool {
        !self.fresh.is_empty() || self.copies.front().is_some_and(|q| q.at <= now)
    }

    /// When the next copy falls due that the timer has not woken the connection for yet.
    pub(crate) fn next_copy_due(&self) -> Option<Instant> {
        self.copies
            .iter()
            .map(|q| q.at)
            .find(|at| self.woken.is_none_or(|w| *at > w))
    }

    /// Appends the frames that are due and fit before `limit`: copies first (they are older),
    /// then fresh datagrams in order. Stops at the first that does not fit, so order holds.
    /// A frame larger than `room`, what an empty packet holds (the packet size shrank since
    /// it was queued: a path MTU black hole), can never leave and is dropped. Returns whether
    /// a datagram that wants FEC was written (the packet is then a source).
    pub(crate) fn write(
        &mut self,
        now: Instant,
        rtt: Duration,
        room: usize,
        buf: &mut Vec<u8>,
        limit: usize,
        frames: &mut Vec<SentFrame>,
    ) -> bool {
        self.drop_stale(now);
        // Checked at the front, every time: comparing with the room of the last write missed a
        // datagram queued while packets were briefly larger (a path MTU probe succeeded, then
        // a black hole shrank them before anything was written), which then waited at the front
        // for ever, and every packet built for it left empty (found by a simulator test).
        while self.copies.front().is_some_and(|q| frame_len(q) > room) {
            self.copies.pop_front();
        }
        while self.fresh.front().is_some_and(|q| frame_len(q) > room) {
            self.fresh.pop_front();
            self.stats.dropped_too_big += 1;
        }
        while let Some(q) = self.copies.front() {
            if q.at > now || !fits(q, buf, limit) {
                break;
            }
            let q = self.copies.pop_front().expect("front exists");
            let len = encode(&q, buf);
            frames.push(SentFrame::Datagram);
            self.stats.copies_sent += 1;
            self.stats.copy_bytes += len as u64;
        }
        let spacing = (rtt / 8).clamp(MIN_COPY_SPACING, MAX_COPY_SPACING);
        let mut wants_fec = false;
        while let Some(q) = self.fresh.front() {
            if !fits(q, buf, limit) {
                break;
            }
            let mut q = self.fresh.pop_front().expect("front exists");
            encode(&q, buf);
            frames.push(SentFrame::Datagram);
            wants_fec |= q.fec;
            if q.copy {
                q.at = now + spacing;
                q.copy = false;
                if self.copies.len() >= MAX_QUEUED {
                    self.copies.pop_front();
                }
                self.copies.push_back(q);
            }
        }
        wants_fec
    }

    /// A datagram frame was in a packet declared lost. It is not sent again.
    pub(crate) fn on_frame_lost(&mut self) {
        self.stats.frames_lost += 1;
    }

    /// A frame received; true when a datagram became readable with the queue empty before.
    pub(crate) fn on_frame(&mut self, now: Instant, frame: &DatagramFrame<'_>, max: u32) -> bool {
        self.receive.on_frame(now, frame, max, &mut self.stats)
    }

    /// The datagram timer fired: forgets reassemblies that timed out, and notes that copies
    /// due by now need no further timer.
    pub(crate) fn on_timer(&mut self, now: Instant) {
        self.woken = Some(now);
        self.receive.expire(now, &mut self.stats);
    }

    /// When the oldest unfinished reassembly times out.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.receive.next_expiry()
    }

    /// The next datagram received.
    pub(crate) fn recv(&mut self) -> Option<Datagram> {
        self.receive.pop()
    }

    /// Counters; `lossy` as for [`send`](Self::send).
    pub(crate) fn stats(&self, lossy: bool) -> DatagramStats {
        let mut s = self.stats.clone();
        s.adaptive_duplicating = lossy;
        s
    }
}

fn frame_of(q: &Queued) -> DatagramFrame<'_> {
    DatagramFrame {
        flow: q.flow,
        seq: q.seq,
        fragment: q.fragment,
        data: &q.data,
    }
}

fn frame_len(q: &Queued) -> usize {
    DatagramFrame::encoded_len(q.flow, q.seq, q.fragment.is_some(), q.data.len())
}

fn fits(q: &Queued, buf: &[u8], limit: usize) -> bool {
    buf.len() + frame_len(q) <= limit
}

fn encode(q: &Queued, buf: &mut Vec<u8>) -> usize {
    let before = buf.len();
    frame_of(q).encode(buf);
    buf.len() - before
}
