//! Streams: many independent, ordered byte streams in one connection, with flow control.
//!
//! Each stream is bidirectional and ordered on its own: a lost packet delays only the streams
//! whose bytes it carried (no cross-stream head-of-line blocking). Either end may open streams,
//! up to the count the other end allows (MAX_STREAMS). A stream buffers at most
//! `stream_send_buffer` bytes the application wrote, and no more than the peer's credit allows,
//! and at most its receive window of bytes the peer sent. Which stream's bytes go into the
//! next packet is [`schedule`]'s concern: quiet streams first, then a round robin.
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
use std::time::{Duration, Instant};

use crate::recovery::SentFrame;
use crate::wire::close::close_code;
use crate::wire::coding::{varint_len, BufMutExt};
use crate::wire::frame::{types, StreamFrame};
use crate::wire::ids::{Side, StreamId};

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

    /// Applies the peer's handshake credits.
    pub fn apply_peer_settings(&mut self, max_data: u64, max_stream_data: u64, max_streams: u64) {
        self.conn_send_limit = self.conn_send_limit.max(max_data);
        self.peer_initial_stream_data = max_stream_data;
        self.local_limit = self.local_limit.max(max_streams);
        for (id, s) in &mut self.streams {
            if s.send_limit < max_stream_data {
                s.send_limit = max_stream_data;
                Self::enqueue(&mut self.send_queue, *id, s);
                Self::signal_writable(&mut self.events, *id, s);
            }
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

    /// Next stream event for the application.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// Number of open streams (including reset ones awaiting the peer's answer).
    pub fn open_count(&self) -> usize {
        self.streams.len()
    }

    /// Opens a stream of our own.
    pub fn open(&mut self) -> Result<StreamId, StreamError> {
        if self.local_opened >= self.local_limit {
            return Err(StreamError::StreamLimit);
        }
        let id = StreamId::new(self.side, self.local_opened);
        self.local_opened += 1;
        let stream = self.new_stream();
        self.streams.insert(id, stream);
        // The new stream's initial window must not come out of the credit the others rely on:
        // it is added to the connection window. The slack covers it until a MAX_DATA is due
        // (one per slack / initial window = 64 opens by default, so opening streams does not
        // defeat batching), and that MAX_DATA leaves before the peer can answer the stream.
        self.local_live += 1;
        self.update_conn_credit();
        Ok(id)
    }

    /// True if we may open another stream now.
    pub fn can_open(&self) -> bool {
        self.local_opened < self.local_limit
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

    /// Bytes the application may write to `s` now: what its send buffer has room for, up to
    /// the offset the peer's credit reaches. Bytes beyond the credit could not be sent anyway;
    /// held here they would only cost memory while the peer does not read.
    fn write_room(s: &Stream) -> usize {
        let credit = s.send_limit.saturating_sub(s.send.written());
        s.send
            .free()
            .min(usize::try_from(credit).unwrap_or(usize::MAX))
    }

    /// Tells a writer refused for lack of room that there is some now.
    fn signal_writable(events: &mut VecDeque<StreamEvent>, id: StreamId, s: &mut Stream) {
        if s.write_blocked && Self::write_room(s) > 0 {
            s.write_blocked = false;
            events.push_back(StreamEvent::Writable(id));
        }
    }

    /// Queues a stream that has something to send, unless it is queued already (see
    /// [`schedule`] for the order).
    fn enqueue(queue: &mut SendQueue, id: StreamId, s: &mut Stream) {
        if !s.queued {
            s.queued = true;
            queue.activate(id);
        }
    }

    /// Buffers application bytes; returns how many were accepted (0: no room, a `Writable`
    /// event follows when there is). A stream accepts bytes only up to the credit the peer gave
    /// it, so what it holds for a peer that does not read is bounded by that peer's window, not
    /// by the send buffer (see the module documentation).
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        let s = Self::live(&mut self.streams, id)?;
        if s.send.is_finished() {
            return Err(StreamError::Finished);
        }
        let room = Self::write_room(s);
        let n = s.send.write(&data[..data.len().min(room)]);
        if n < data.len() {
            s.write_blocked = true;
        }
        if n > 0 {
            Self::enqueue(&mut self.send_queue, id, s);
        }
        Ok(n)
    }

    /// Ends our direction of the stream after the bytes written so far.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = Self::live(&mut self.streams, id)?;
        if !s.send.is_finished() {
            s.send.finish();
            Self::enqueue(&mut self.send_queue, id, s);
        }
        Ok(())
    }

    /// Copies received bytes into `buf`. `now` and the smoothed round-trip time `rtt` decide
    /// whether the stream's receive window grows (see the module documentation).
    pub fn read(
        &mut self,
        now: Instant,
        rtt: Duration,
        id: StreamId,
        buf: &mut [u8],
    ) -> Result<ReadOutcome, StreamError> {
        self.read_tuned(id, buf, Some((now, rtt)))
    }

    /// [`StreamSet::read`]; with `tuning` `None` (bytes discarded, not read by the
    /// application) the window keeps its size.
    fn read_tuned(
        &mut self,
        id: StreamId,
        buf: &mut [u8],
        tuning: Option<(Instant, Duration)>,
    ) -> Result<ReadOutcome, StreamError> {
        let limits = self.limits;
        let s = Self::live(&mut self.streams, id)?;
        let n = s.recv.read(buf);
        if n == 0 {
            if s.recv.is_finished() {
                s.fin_delivered = true;
                self.maybe_close(id);
                return Ok(ReadOutcome::Finished);
            }
            if !buf.is_empty() {
                s.readable_signalled = false;
            }
            return Ok(ReadOutcome::Blocked);
        }
        // What was read no longer needs credit: its share of the budget goes back at once.
        Self::recharge(&mut self.growth_used, limits.initial_stream_window, s);
        // Renew credit once half the window has been consumed. The window doubles first if the
        // previous renewal was less than WINDOW_GROWTH_RTTS round trips ago, and goes back to
        // the initial window if it was WINDOW_RESET_RTTS or more ago (the reader stalled or
        // slowed down); it is then cut to what the budget allows: the stream's own charge and
        // what is free, never less than the initial window.
        let read_offset = s.recv.read_offset();
        if s.recv.final_size().is_none()
            && s.recv_limit.saturating_sub(read_offset) < s.recv_window / 2
        {
            let initial = limits.initial_stream_window;
            let mut window = s.recv_window;
            if let Some((now, rtt)) = tuning {
                match s.last_credit_at.map(|at| now.saturating_duration_since(at)) {
                    Some(gap) if gap < rtt * WINDOW_GROWTH_RTTS => {
                        window = window.saturating_mul(2).min(limits.stream_window);
                    }
                    Some(gap) if gap >= rtt * WINDOW_RESET_RTTS => window = initial,
                    _ => {}
                }
            }
            let free = limits.growth_budget.saturating_sub(self.growth_used);
            s.recv_window = window.min(initial.saturating_add(s.charged).saturating_add(free));
            let limit = read_offset.saturating_add(s.recv_window);
            if limit > s.recv_limit {
                s.recv_limit = limit;
                self.pending_max_stream_data.insert(id);
                if let Some((now, _)) = tuning {
                    s.last_credit_at = Some(now);
                }
                Self::recharge(&mut self.growth_used, initial, s);
            }
        }
        self.conn_consumed += n as u64;
        self.update_conn_credit();
        Ok(ReadOutcome::Data(n))
    }

    /// The application will not read `id` again: bytes already received and any that arrive
    /// later are discarded, credit keeps flowing, and the stream closes once the peer finishes and
    /// our own direction is acknowledged.
    pub fn stop_reading(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = Self::live(&mut self.streams, id)?;
        s.discard = true;
        self.discard_readable(id);
        Ok(())
    }

    fn discard_readable(&mut self, id: StreamId) {
        let mut scratch = [0u8; 4096];
        loop {
            match self.read_tuned(id, &mut scratch, None) {
                Ok(ReadOutcome::Data(_)) => continue,
                _ => return,
            }
        }
    }

    /// The receive window `id`'s credit is renewed at: the initial window, grown while the
    /// reader keeps up, cut to what the growth budget allows (`None` for an unknown stream).
    pub fn receive_window(&self, id: StreamId) -> Option<u64> {
        self.streams.get(&id).map(|s| s.recv_window)
    }

    /// Contiguous bytes ready to read on `id`.
    pub fn readable_len(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.recv.readable_len())
    }

    /// Renews the connection credit once it could rise by the slack: it then never falls more
    /// than the slack below read + window, which is above everything the streams may hold.
    fn update_conn_credit(&mut self) {
        let target = self
            .conn_consumed
            .saturating_add(self.limits.connection_window(self.local_live));
        if target.saturating_sub(self.conn_recv_limit) >= self.limits.credit_slack().max(1) {
            self.conn_recv_limit = target;
            self.pending_max_data = true;
        }
    }

    /// Charges a live stream to the growth budget with what it may still hold beyond the
    /// initial window: the credit it was given and has not consumed, up to its final size once
    /// the peer's FIN fixed it. Reading lowers the charge at once; only a renewal raises it,
    /// and only by what is free. A window the stream would renew at is not charged: a stalled
    /// stream pins only the credit its peer holds, and a finished stream not yet read to its
    /// end only its unread bytes.
    fn recharge(growth_used: &mut u64, initial: u64, s: &mut Stream) {
        let end = s
            .recv
            .final_size()
            .map_or(s.recv_limit, |f| f.min(s.recv_limit));
        let charge = end
            .saturating_sub(s.recv.read_offset())
            .saturating_sub(initial);
        *growth_used = growth_used.saturating_sub(s.charged) + charge;
        s.charged = charge;
    }

    /// Gives a stream's charge back to the budget (it will never be granted credit again: it
    /// was reset or is being forgotten).
    fn release_growth(growth_used: &mut u64, initial: u64, s: &mut Stream) {
        *growth_used = growth_used.saturating_sub(s.charged);
        s.charged = 0;
        s.recv_window = initial;
    }

    /// Aborts the stream in both directions with `code`.
    pub fn reset(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        let s = match self.streams.get_mut(&id) {
            Some(s) if !s.tombstone => s,
            _ => return Err(StreamError::UnknownStream(id)),
        };
        if s.reset_by_peer.is_some() {
            // The peer already reset it and we already answered: just forget it.
            self.remove(id);
            return Ok(());
        }
        let final_size = s.send.max_sent_offset();
        s.tombstone = true;
        Self::release_growth(&mut self.growth_used, self.limits.initial_stream_window, s);
        // Free the buffers now; only flow-control offsets are still needed.
        s.send = SendBuffer::new(0);
        let received = s.recv.highest();
        let read = s.recv.read_offset();
        s.recv = RecvAssembler::new();
        // A tombstone keeps only the offset the peer's bytes reached, in `recv_limit`.
        s.recv_limit = received;
        // Bytes received but never to be read count as consumed now.
        self.conn_consumed += received - read;
        self.update_conn_credit();
        self.pending_resets.push_back((id, code, final_size));
        self.pending_max_stream_data.remove(&id);
        Ok(())
    }

    /// Applies a STREAM frame.
    pub fn on_stream_frame(&mut self, frame: &StreamFrame<'_>) -> Result<(), FlowViolation> {
        let id = frame.id;
        self.ensure_peer_stream(id)?;
        let end = frame.offset + frame.data.len() as u64;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(()); // closed stream: a late retransmission
        };
        if s.tombstone {
            // Count the peer's new bytes against connection credit and discard them at once.
            if end > s.recv_limit {
                let grew = end - s.recv_limit;
                s.recv_limit = end;
                self.conn_received += grew;
                self.conn_consumed += grew;
                self.update_conn_credit();
            }
            return Ok(());
        }
        if s.reset_by_peer.is_some() {
            return Ok(());
        }
        if end > s.recv_limit {
            return Err(FlowViolation {
                code: close_code::FLOW_CONTROL,
                reason: format!(
                    "stream {id} data to offset {end} beyond the granted {}",
                    s.recv_limit
                ),
            });
        }
        let before = s.recv.readable_len();
        let finished_before = s.recv.is_finished();
        let grew = s
            .recv
            .insert(frame.offset, frame.data, frame.fin)
            .map_err(|e| FlowViolation {
                code: close_code::FINAL_SIZE,
                reason: format!("stream {id}: {e}"),
            })?;
        if self.conn_received + grew > self.conn_recv_limit {
            return Err(FlowViolation {
                code: close_code::FLOW_CONTROL,
                reason: format!(
                    "connection data {} beyond the granted {}",
                    self.conn_received + grew,
                    self.conn_recv_limit
                ),
            });
        }
        self.conn_received += grew;
        Self::recharge(&mut self.growth_used, self.limits.initial_stream_window, s);
        if s.discard {
            self.discard_readable(id);
            return Ok(());
        }
        let readable = s.recv.readable_len() > before || (s.recv.is_finished() && !finished_before);
        if readable && !s.readable_signalled {
            s.readable_signalled = true;
            self.events.push_back(StreamEvent::Readable(id));
        }
        Ok(())
    }

    /// Opens (implicitly) every peer stream up to `id`; checks that `id` may exist.
    fn ensure_peer_stream(&mut self, id: StreamId) -> Result<(), FlowViolation> {
        if id.initiator() == self.side {
            if id.index() >= self.local_opened {
                return Err(FlowViolation {
                    code: close_code::PROTOCOL_VIOLATION,
                    reason: format!("frame for stream {id} that we never opened"),
                });
            }
            return Ok(());
        }
        if id.index() < self.peer_opened {
            return Ok(());
        }
        if id.index() >= self.peer_limit {
            return Err(FlowViolation {
                code: close_code::STREAM_LIMIT,
                reason: format!(
                    "peer opened stream {id} beyond its limit of {} streams",
                    self.peer_limit
                ),
            });
        }
        while self.peer_opened <= id.index() {
            let new_id = StreamId::new(self.side.peer(), self.peer_opened);
            self.peer_opened += 1;
            let stream = self.new_stream();
            self.streams.insert(new_id, stream);
            self.events.push_back(StreamEvent::Opened(new_id));
        }
        Ok(())
    }

    /// Applies a RESET from the peer.
    pub fn on_reset(
        &mut self,
        id: StreamId,
        code: u64,
        final_size: u64,
    ) -> Result<(), FlowViolation> {
        self.ensure_peer_stream(id)?;
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let reached = if s.tombstone {
            s.recv_limit
        } else {
            s.recv.highest()
        };
        if final_size < reached || s.recv.final_size().is_some_and(|f| f != final_size) {
            return Err(FlowViolation {
                code: close_code::FINAL_SIZE,
                reason: format!(
                    "stream {id} reset at {final_size} but {reached} bytes were received"
                ),
            });
        }
        let grew = final_size - reached;
        if self.conn_received + grew > self.conn_recv_limit {
            return Err(FlowViolation {
                code: close_code::FLOW_CONTROL,
                reason: format!("stream {id} reset final size exceeds connection credit"),
            });
        }
        self.conn_received += grew;
        if s.tombstone {
            // Our reset's answer: settle and forget.
            self.conn_consumed += grew;
            self.update_conn_credit();
            self.remove(id);
            return Ok(());
        }
        if s.reset_by_peer.is_some() {
            return Ok(());
        }
        // Everything not yet read is discarded.
        let unread = final_size - s.recv.read_offset();
        let our_final = s.send.max_sent_offset();
        s.reset_by_peer = Some(code);
        Self::release_growth(&mut self.growth_used, self.limits.initial_stream_window, s);
        s.send = SendBuffer::new(0);
        s.recv = RecvAssembler::new();
        self.conn_consumed += unread;
        self.update_conn_credit();
        self.pending_resets.push_back((id, code, our_final));
        self.pending_max_stream_data.remove(&id);
        self.events.push_back(StreamEvent::Reset { id, code });
        Ok(())
    }

    /// Applies MAX_DATA.
    pub fn on_max_data(&mut self, max: u64) {
        if max > self.conn_send_limit {
            self.conn_send_limit = max;
            // Streams blocked on connection credit can go again.
            let ids: Vec<StreamId> = self.streams.keys().copied().collect();
            for id in ids {
                if let Some(s) = self.streams.get_mut(&id) {
                    Self::enqueue(&mut self.send_queue, id, s);
                }
            }
        }
    }

    /// Applies MAX_STREAM_DATA.
    pub fn on_max_stream_data(&mut self, id: StreamId, max: u64) -> Result<(), FlowViolation> {
        self.ensure_peer_stream(id)?;
        if let Some(s) = self.streams.get_mut(&id) {
            if max > s.send_limit {
                s.send_limit = max;
                Self::enqueue(&mut self.send_queue, id, s);
                Self::signal_writable(&mut self.events, id, s);
            }
        }
        Ok(())
    }

    /// Applies MAX_STREAMS.
    pub fn on_max_streams(&mut self, max: u64) {
        self.local_limit = self.local_limit.max(max);
    }

    /// How many streams the peer lets us open in total (its MAX_STREAMS).
    pub fn local_limit(&self) -> u64 {
        self.local_limit
    }

    /// Stream bytes `[offset, offset+len)` (and FIN) were acknowledged.
    pub fn on_stream_acked(&mut self, id: StreamId, offset: u64, len: u32, fin: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.tombstone || s.reset_by_peer.is_some() {
            return;
        }
        s.send.on_ack(offset, len as usize, fin);
        Self::signal_writable(&mut self.events, id, s);
        if s.send.is_fully_acked() && !s.acked_signalled {
            s.acked_signalled = true;
            self.events.push_back(StreamEvent::Acknowledged(id));
            self.maybe_close(id);
        }
    }

    /// Bytes written to stream `id` and not yet acknowledged (none for an unknown stream).
    pub fn unacknowledged(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.send.buffered())
    }

    /// Stream bytes were lost: queue them again.
    pub fn on_stream_lost(&mut self, id: StreamId, offset: u64, len: u32, fin: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.tombstone || s.reset_by_peer.is_some() {
            return;
        }
        s.send.on_lost(offset, len as usize, fin);
        Self::enqueue(&mut self.send_queue, id, s);
    }

    /// A frame carrying credit or a reset was lost: owe it again.
    pub fn on_control_lost(&mut self, frame: &SentFrame) {
        match *frame {
            SentFrame::Reset {
                id,
                code,
                final_size,
            } if self.streams.contains_key(&id) => {
                self.pending_resets.push_back((id, code, final_size));
            }
            SentFrame::MaxData => self.pending_max_data = true,
            SentFrame::MaxStreams => self.pending_max_streams = true,
            SentFrame::MaxStreamData(id)
                if self.streams.get(&id).is_some_and(|s| {
                    !s.tombstone && s.reset_by_peer.is_none() && s.recv.final_size().is_none()
                }) =>
            {
                self.pending_max_stream_data.insert(id);
            }
            _ => {}
        }
    }

    /// Our RESET was acknowledged; a stream the peer reset first can now be forgotten.
    pub fn on_reset_acked(&mut self, id: StreamId) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.reset_by_peer.is_some())
        {
            // Keep it until the application saw the reset (its next call), but at most briefly:
            // the application has the Reset event already.
            self.remove(id);
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

    /// True if stream data can be sent now (within flow control).
    pub fn has_pending_data(&self) -> bool {
        let conn_credit = self.conn_send_limit.saturating_sub(self.conn_sent);
        self.send_queue.iter().any(|id| {
            self.streams.get(id).is_some_and(|s| {
                let limit = s.send_limit.min(s.send.max_sent_offset() + conn_credit);
                s.send.has_pending(limit)
            })
        })
    }

    /// True if at least `bytes` of stream data (or a FIN) could be sent now.
    pub fn pending_data_at_least(&self, bytes: u64) -> bool {
        let conn_credit = self.conn_send_limit.saturating_sub(self.conn_sent);
        let mut total = 0u64;
        for id in self.send_queue.iter() {
            if let Some(s) = self.streams.get(id) {
                let limit = s.send_limit.min(s.send.max_sent_offset() + conn_credit);
                total += s.send.pending_bytes(limit);
                if total >= bytes {
                    return true;
                }
            }
        }
        false
    }

    /// True if control frames are owed.
    pub fn has_pending_control(&self) -> bool {
        self.pending_max_data
            || self.pending_max_streams
            || !self.pending_max_stream_data.is_empty()
            || !self.pending_resets.is_empty()
    }

    /// Writes owed control frames into `buf` while they fit below `limit` bytes.
    pub fn write_control(&mut self, buf: &mut Vec<u8>, limit: usize, sent: &mut Vec<SentFrame>) {
        while let Some(&(id, code, final_size)) = self.pending_resets.front() {
            if buf.len() + 1 + 3 * 8 > limit {
                return;
            }
            self.pending_resets.pop_front();
            buf.put_varint(types::RESET);
            buf.put_varint(id.0);
            buf.put_varint(code);
            buf.put_varint(final_size);
            sent.push(SentFrame::Reset {
                id,
                code,
                final_size,
            });
        }
        if self.pending_max_data && buf.len() + 9 <= limit {
            self.pending_max_data = false;
            buf.put_varint(types::MAX_DATA);
            buf.put_varint(self.conn_recv_limit);
            sent.push(SentFrame::MaxData);
        }
        if self.pending_max_streams && buf.len() + 9 <= limit {
            self.pending_max_streams = false;
            buf.put_varint(types::MAX_STREAMS);
            buf.put_varint(self.peer_limit);
            sent.push(SentFrame::MaxStreams);
        }
        while let Some(&id) = self.pending_max_stream_data.first() {
            if buf.len() + 17 > limit {
                return;
            }
            self.pending_max_stream_data.remove(&id);
            if let Some(s) = self.streams.get(&id) {
                buf.put_varint(types::MAX_STREAM_DATA);
                buf.put_varint(id.0);
                buf.put_varint(s.recv_limit);
                sent.push(SentFrame::MaxStreamData(id));
            }
        }
    }

    /// Writes stream frames into `buf` while they fit below `limit` bytes, a chunk of each
    /// stream in the send queue's order: streams that just became active first, then the
    /// round robin (see [`schedule`]), so that every stream with data progresses.
    pub fn write_data(&mut self, buf: &mut Vec<u8>, limit: usize, sent: &mut Vec<SentFrame>) {
        let mut visited = 0;
        let queued = self.send_queue.len();
        while visited < queued {
            if buf.len() + SMALLEST_USEFUL_STREAM_FRAME > limit {
                return;
            }
            let Some((id, turn)) = self.send_queue.pop() else {
                return;
            };
            visited += 1;
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            s.queued = false;
            if s.tombstone || s.reset_by_peer.is_some() {
                continue;
            }
            let conn_credit = self.conn_send_limit.saturating_sub(self.conn_sent);
            let max_offset = s.send_limit.min(s.send.max_sent_offset() + conn_credit);
            let room = limit - buf.len();
            // Header size with the largest offset this chunk can have (new data starts at the
            // highest offset sent; repairs lie below it) and the largest length: exact enough
            // that a packet limited by room ends within a few bytes of the limit.
            let before = s.send.max_sent_offset();
            let header = 1 + varint_len(id.0) + varint_len(before) + varint_len(room as u64);
            let Some(chunk) = s.send.next_chunk(room.saturating_sub(header), max_offset) else {
                continue;
            };
            let mut ty = types::STREAM | types::STREAM_LEN;
            if chunk.offset > 0 {
                ty |= types::STREAM_OFF;
            }
            if chunk.fin {
                ty |= types::STREAM_FIN;
            }
            buf.put_varint(ty);
            buf.put_varint(id.0);
            if chunk.offset > 0 {
                buf.put_varint(chunk.offset);
            }
            buf.put_varint(chunk.len as u64);
            s.send.copy_to(chunk.offset, chunk.len, buf);
            let fresh = s.send.max_sent_offset() - before;
            self.conn_sent += fresh;
            self.retransmitted += (chunk.len as u64).saturating_sub(fresh);
            sent.push(SentFrame::Stream {
                id,
                offset: chunk.offset,
                len: chunk.len as u32,
                fin: chunk.fin,
            });
            let limit_now = s.send_limit.min(
                s.send.max_sent_offset() + self.conn_send_limit.saturating_sub(self.conn_sent),
            );
            if s.send.has_pending(limit_now) {
                s.queued = true;
                let packet_full = buf.len() + SMALLEST_USEFUL_STREAM_FRAME > limit;
                self.send_queue.requeue(id, turn, packet_full);
            }
        }
    }

    /// Stream bytes sent again after a loss, in total.
    pub fn retransmitted_bytes(&self) -> u64 {
        self.retransmitted
    }

    /// Bytes buffered for sending on all streams (unacknowledged).
    pub fn send_buffered(&self) -> usize {
        self.streams.values().map(|s| s.send.buffered()).sum()
    }

    /// Bytes buffered as received on all streams (not yet read).
    pub fn recv_buffered(&self) -> usize {
        self.streams.values().map(|s| s.recv.buffered()).sum()
    }

    /// True when every stream is closed (used by graceful shutdown).
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
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
