//! Streams: many independent, ordered byte streams in one connection, with flow control.
//!
//! Each stream is bidirectional and ordered on its own: a lost packet delays only the streams
//! whose bytes it carried (no cross-stream head-of-line blocking). Either end may open streams,
//! up to the count the other end allows (MAX_STREAMS). A stream buffers at most
//! `stream_send_buffer` bytes the application wrote, and no more than the peer's credit allows,
//! and at most its receive window of bytes the peer sent. Which stream's bytes go into the
//! next packet is [`schedule`]'s concern: quiet streams first, then a round robin.
//!
//! [`StreamSet`]'s code is split by direction: `incoming` (frames the peer sends, the credit we
//! give it), `outgoing` (frames we send, the credit the peer gave us) and `api` (the calls made
//! on the application's behalf); [`send`] and [`recv`] are one stream's two buffers.
//!
//! # Flow control: stalled streams cannot starve the others
//!
//! Head-of-line blocking must not come back through flow control. With fixed windows (4 MiB per
//! stream, 16 MiB per connection) four streams whose reader never reads held the whole
//! connection window, and every other stream froze: on loopback, 50 clients that never read
//! their replies took four echo clients from 80.7 MiB/s to 1.1 MiB/s. The design, with the
//! defaults (I = `stream_initial_receive_window` = 64 KiB, M = `stream_receive_window` = 4 MiB,
//! C = `connection_receive_window` = 16 MiB, N = `max_concurrent_streams` = 1024):
//!
//! - **Windows start small and grow while the reader keeps up** (receive-window auto-tuning, as
//!   Chromium's QUIC does). Every stream starts with I. Credit is renewed (MAX_STREAM_DATA to
//!   read offset + window) once the reader has consumed half the window; if that renewal comes
//!   less than [`WINDOW_GROWTH_RTTS`] (4) round trips after the previous one, the reader drains
//!   faster than the window refills and the window doubles, up to M. A stream moving at rate R
//!   renews every window/(2R), so it settles near 8 x R x RTT (eight bandwidth-delay products:
//!   room to repair losses, even lost repairs, without stalling; the constant says why 4 and
//!   not Chromium's 2), a slow reader gets a window in proportion to its own rate, and a stream
//!   nobody reads never renews: it holds I and no more.
//! - **Growth is paid from a shared budget**, C. Each stream is charged with the credit it was
//!   given and has not consumed, beyond I: what it may still be sent or holds unread (up to its
//!   final size once the peer's FIN fixed it). The charges never sum above C: reading lowers a
//!   stream's charge at once, and a renewal raises it only by what is free (the window is cut
//!   to the stream's charge plus what is free, never below I). So the budget flows back as
//!   streams are read, closed or reset, and a window a stream would renew at costs nothing
//!   until it is granted. C = 16 MiB lets four streams hold the full 4 MiB at once.
//! - **A stall gives the growth back.** A renewal that comes [`WINDOW_RESET_RTTS`] (16) round
//!   trips or more after the previous one renews at I: the reader stalled or slowed down. What
//!   it had earned returns to the budget as it reads its backlog; a reader that comes back fast
//!   regrows in a few round trips, a slow one keeps a window that fits its rate.
//! - **What a stalled stream pins, precisely.** Credit given cannot be taken back, so a stream
//!   whose reader stops keeps the credit its peer holds: between half and all of its window (it
//!   is renewed at half), at most M - I, 3.94 MiB, of the budget. Four such streams holding
//!   full windows, or up to nine holding half windows, can pin all of C while they stay unread;
//!   the other streams then renew at I and move I per round trip (1.6 MB/s at 40 ms, 650 MB/s
//!   on loopback), slowed but never frozen, until the stalled readers read, or their streams
//!   close or are reset. A
//!   stream whose sender went quiet after a burst pins likewise the credit it was last given
//!   until bytes flow again. Streams that never grew (a stalled client's, typically) pin none.
//! - **A sender holds no more than the peer's credit.** A stream accepts the application's bytes
//!   only up to the offset the peer's MAX_STREAM_DATA allows (within its send buffer), so for a
//!   peer that does not read it holds that peer's window, I, on the sending side too; the rest
//!   waits where it came from (a tunnel's splice stops reading its socket: the back-pressure a
//!   TCP proxy gives). When each stalled stream could fill its 2 MiB send buffer instead, 1,000
//!   never-reading clients cost the agent 1.1 GiB of RSS (1,103 KiB each; about 175 KiB now:
//!   `tests/slow_readers.rs`).
//! - **The connection credit (MAX_DATA) covers every stream's initial window**, so it never
//!   binds before the stream windows do: its window is
//!   `I x (N + streams we opened) + C + C/4` = 84 MiB with no streams of our own. Each of the
//!   N streams the peer may open reserves I; each stream our application opens reserves I more;
//!   C covers growth; and C/4 ([`CONNECTION_CREDIT_SLACK_DIVISOR`]) is slack: MAX_DATA is
//!   renewed (to read + window) only once it could rise by the slack, i.e. once per 4 MiB read or
//!   per 64 streams opened, so the credit never falls below read + I x (N + L) + C, above all
//!   that the streams may hold. Stalled streams hold at most I x N = 64 MiB of it; streams that
//!   drain always find the rest.
//!
//! Memory bound, whatever the peer does: the receive side holds at most the connection credit
//! window, `I x (N + L) + 5C/4` bytes, where L is the most streams our own application had open at
//! once: 84 MiB per connection with the defaults and L = 0 (the gateway opens no streams; an agent
//! with 1,024 streams of its own: 148 MiB). Tighter, it holds at most
//! `I x (streams open) + C` (each stream I and its charge, the charges at most C):
//! 80 MiB with 1,024 streams, 16.06 MiB with one. The peer's frames beyond the credit it was
//! given close the connection with a flow-control error. The send side holds, per stream, at
//! most the credit the peer gave it and at most `stream_send_buffer`.
//!
//! A RESET aborts a stream in both directions (a tunnel maps it to a TCP reset). Its sender
//! states how many bytes it had sent; the receiver answers with its own RESET carrying its own
//! count, so both ends can settle connection-level flow-control credit for bytes that will never
//! be read. Until that answer arrives the resetting end keeps a small tombstone of the stream.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use crate::wire::ids::{Side, StreamId};

mod api;
mod incoming;
mod outgoing;
pub mod recv;
mod schedule;
pub mod send;

use recv::RecvAssembler;
use schedule::SendQueue;
use send::SendBuffer;

/// Bytes of the smallest stream frame worth writing: type, stream ID, offset and length at
/// their widest, and one byte of data. A packet with less room than this left is full.
pub const SMALLEST_USEFUL_STREAM_FRAME: usize = 1 + 8 + 8 + 4 + 1;

/// A stream's receive window doubles when its credit is renewed sooner than this many smoothed
/// round trips after the previous renewal: the reader drains half the window in less than four
/// round trips, so a larger window would carry more. Renewals come every window / (2 x rate),
/// so windows settle near 8 bandwidth-delay products. Chromium's QUIC uses 2 (4 BDPs); under
/// loss, holes stall the reader and space renewals out, and with 2 a single stream through a
/// 50 Mbit/s, 40 ms path at 10% loss reached 82.5-88.2% of the link (three seeds) against
/// 88.5-88.7% with fixed 16 MiB windows; with 4 it reaches 88.7-89.0%.
pub const WINDOW_GROWTH_RTTS: u32 = 4;

/// A stream's receive window goes back to the initial window when its credit is renewed this
/// many smoothed round trips or more after the previous renewal (16): its reader stalled, or
/// slowed down by more than half, so the growth it earned is returned to the budget as it
/// reads. A reader that keeps a steady pace never gets here: growth stops once renewals come
/// 4 round trips apart, and a doubled window renews at most 8 apart. A reader that comes back
/// fast regrows in a few round trips.
pub const WINDOW_RESET_RTTS: u32 = 16;

/// The connection credit keeps a slack of the growth budget divided by this (4: a quarter, 4 MiB
/// by default) above what the streams may hold, and MAX_DATA is renewed once that much has been
/// read: often enough never to bind, rarely enough to cost nothing (one 9-byte frame per 4 MiB).
pub const CONNECTION_CREDIT_SLACK_DIVISOR: u64 = 4;

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such stream: never opened, or already closed and forgotten.
    #[error("unknown or closed stream {0}")]
    UnknownStream(StreamId),
    /// The stream was reset (by either end) with this code.
    #[error("stream reset with code {0}")]
    Reset(u64),
    /// Write after `finish`.
    #[error("stream already finished")]
    Finished,
    /// The peer allows no more streams now; wait for a stream to close.
    #[error("stream limit reached")]
    StreamLimit,
    /// The connection is closed or closing.
    #[error("connection closed")]
    ConnectionClosed,
}

/// What a read returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes were copied.
    Data(usize),
    /// Nothing to read yet; a `StreamReadable` event follows when there is.
    Blocked,
    /// The peer finished the stream and every byte was read.
    Finished,
}

/// Stream happenings the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened a stream.
    Opened(StreamId),
    /// A stream has bytes (or its end) to read.
    Readable(StreamId),
    /// A stream whose writer was refused has room again.
    Writable(StreamId),
    /// Everything written on the stream, and its FIN, was acknowledged.
    Acknowledged(StreamId),
    /// The peer reset a stream.
    Reset {
        /// The stream.
        id: StreamId,
        /// The peer's error code.
        code: u64,
    },
}

/// A peer misbehaviour found while applying a frame; the connection closes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowViolation {
    /// Transport close code.
    pub code: u64,
    /// What happened.
    pub reason: String,
}

/// Tunables of a stream set (see the module documentation for how they combine).
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Receive window every stream starts with, bytes (at most `stream_window`).
    pub initial_stream_window: u64,
    /// Largest receive window of one stream, bytes.
    pub stream_window: u64,
    /// What all streams together may hold beyond their initial windows, bytes.
    pub growth_budget: u64,
    /// Send buffer per stream, bytes.
    pub send_buffer: usize,
    /// Streams the peer may have open at once.
    pub max_concurrent: u64,
}

impl StreamLimits {
    /// Slack of connection credit above what the streams may hold, bytes.
    pub fn credit_slack(&self) -> u64 {
        self.growth_budget / CONNECTION_CREDIT_SLACK_DIVISOR
    }

    /// Connection credit window, bytes, with `local_streams` streams of our own open: an initial
    /// window for each of those and of the peer's `max_concurrent`, the growth budget and the
    /// slack. Saturating, so no configuration can overflow it.
    pub fn connection_window(&self, local_streams: u64) -> u64 {
        self.initial_stream_window
            .saturating_mul(self.max_concurrent.saturating_add(local_streams))
            .saturating_add(self.growth_budget)
            .saturating_add(self.credit_slack())
    }
}

#[derive(Debug)]
struct Stream {
    send: SendBuffer,
    recv: RecvAssembler,
    /// Highest offset the peer lets us send (its MAX_STREAM_DATA).
    send_limit: u64,
    /// Highest offset we allow the peer to send (our last MAX_STREAM_DATA).
    recv_limit: u64,
    /// Receive window: credit is renewed to the read offset plus this. Starts at the initial
    /// window, grows while the reader keeps up, goes back to the initial window after a stall.
    recv_window: u64,
    /// What this stream is charged to the connection's growth budget: the credit it was given
    /// and has not consumed, beyond the initial window (see [`StreamSet::recharge`]).
    charged: u64,
    /// When credit was last renewed (for window growth).
    last_credit_at: Option<Instant>,
    /// The application's write was refused for lack of room.
    write_blocked: bool,
    /// A Readable event is outstanding (cleared when the application reads until blocked).
    readable_signalled: bool,
    /// The Acknowledged event was sent.
    acked_signalled: bool,
    /// In the send queue.
    queued: bool,
    /// Reset by us; waiting for the peer's RESET with its final size.
    tombstone: bool,
    /// Reset by the peer (code), reported to the application on its next call.
    reset_by_peer: Option<u64>,
    /// The application will never read again: received bytes are discarded on arrival (and
    /// credit granted), so the peer can still finish.
    discard: bool,
    /// The application was told the receive side finished (a read returned `Finished`). Until
    /// then the stream is kept, even with every byte read and our side acknowledged: forgetting
    /// it earlier would turn the application's next read into an unknown-stream error.
    fin_delivered: bool,
}

/// All streams of a connection.
#[derive(Debug)]
pub struct StreamSet {
    side: Side,
    limits: StreamLimits,
    streams: BTreeMap<StreamId, Stream>,
    /// Streams we opened so far.
    local_opened: u64,
    /// How many streams the peer lets us open (its MAX_STREAMS).
    local_limit: u64,
    /// Streams the peer opened so far (highest index + 1).
    peer_opened: u64,
    /// Peer-opened streams now closed.
    peer_closed: u64,
    /// How many streams we let the peer open (our last MAX_STREAMS).
    peer_limit: u64,
    /// Peer's initial per-stream credit for streams we send on.
    peer_initial_stream_data: u64,
    /// Connection credit the peer gave us (its MAX_DATA).
    conn_send_limit: u64,
    /// Bytes of new stream data sent, all streams.
    conn_sent: u64,
    /// Connection credit we gave the peer (our last MAX_DATA).
    conn_recv_limit: u64,
    /// Bytes the peer sent us (highest offsets), all streams.
    conn_received: u64,
    /// Bytes read by the application or discarded by resets.
    conn_consumed: u64,
    /// Growth budget in use: the sum of the streams' charges.
    growth_used: u64,
    /// Streams we opened that are still kept (each reserves an initial window of credit).
    local_live: u64,
    /// Streams that may have something to send, in the order they are served.
    send_queue: SendQueue,
    /// Control frames owed to the peer.
    pending_max_data: bool,
    pending_max_streams: bool,
    pending_max_stream_data: BTreeSet<StreamId>,
    pending_resets: VecDeque<(StreamId, u64, u64)>,
    events: VecDeque<StreamEvent>,
    /// Stream bytes sent again after a loss.
    retransmitted: u64,
}

impl StreamSet {
    /// Streams for one end of a connection. The peer's credits are given later by
    /// [`StreamSet::apply_peer_settings`].
    pub fn new(side: Side, limits: StreamLimits) -> Self {
        Self {
            side,
            limits,
            streams: BTreeMap::new(),
            local_opened: 0,
            local_limit: 0,
            peer_opened: 0,
            peer_closed: 0,
            peer_limit: limits.max_concurrent,
            peer_initial_stream_data: 0,
            conn_send_limit: 0,
            conn_sent: 0,
            conn_recv_limit: limits.connection_window(0),
            conn_received: 0,
            conn_consumed: 0,
            growth_used: 0,
            local_live: 0,
            send_queue: SendQueue::default(),
            pending_max_data: false,
            pending_max_streams: false,
            pending_max_stream_data: BTreeSet::new(),
            pending_resets: VecDeque::new(),
            events: VecDeque::new(),
            retransmitted: 0,
        }
    }

    fn new_stream(&self) -> Stream {
        Stream {
            send: SendBuffer::new(self.limits.send_buffer),
            recv: RecvAssembler::new(),
            send_limit: self.peer_initial_stream_data,
            recv_limit: self.limits.initial_stream_window,
            recv_window: self.limits.initial_stream_window,
            charged: 0,
            last_credit_at: None,
            write_blocked: false,
            readable_signalled: false,
            acked_signalled: false,
            queued: false,
            tombstone: false,
            reset_by_peer: None,
            discard: false,
            fin_delivered: false,
        }
    }

    fn live(
        streams: &mut BTreeMap<StreamId, Stream>,
        id: StreamId,
    ) -> Result<&mut Stream, StreamError> {
        match streams.get_mut(&id) {
            None => Err(StreamError::UnknownStream(id)),
            Some(s) if s.tombstone => Err(StreamError::UnknownStream(id)),
            Some(s) => match s.reset_by_peer {
                Some(code) => Err(StreamError::Reset(code)),
                None => Ok(s),
            },
        }
    }

    fn maybe_close(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get(&id) {
            if s.send.is_fully_acked() && s.recv.is_finished() && s.fin_delivered {
                self.remove(id);
            }
        }
    }

    fn remove(&mut self, id: StreamId) {
        if let Some(mut s) = self.streams.remove(&id) {
            Self::release_growth(
                &mut self.growth_used,
                self.limits.initial_stream_window,
                &mut s,
            );
            self.pending_max_stream_data.remove(&id);
            if id.initiator() == self.side {
                self.local_live = self.local_live.saturating_sub(1);
            } else {
                self.peer_closed += 1;
                self.peer_limit = self.peer_closed + self.limits.max_concurrent;
                self.pending_max_streams = true;
            }
        }
    }

    /// Resets every stream (the connection is going away); no frames are sent.
    pub fn abandon_all(&mut self) {
        self.streams.clear();
        self.growth_used = 0;
        self.local_live = 0;
        self.send_queue.clear();
        self.pending_resets.clear();
        self.pending_max_stream_data.clear();
    }
}

#[cfg(test)]
mod tests;
