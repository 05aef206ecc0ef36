//! What the connection asks of its streams on the application's behalf: open, write, finish,
//! read, stop reading, reset, and the counts and sizes it reports. Each call checks the stream
//! and hands the work to the incoming side (reads, which give credit) or the outgoing side
//! (writes, bounded by the credit the peer gave).

use std::time::{Duration, Instant};

use super::recv::RecvAssembler;
use super::send::SendBuffer;
use super::{ReadOutcome, StreamError, StreamEvent, StreamSet};
use crate::wire::ids::StreamId;

impl StreamSet {
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

    /// Buffers application bytes; returns how many were accepted (0: no room, a `Writable`
    /// event follows when there is). A stream accepts bytes only up to the credit the peer gave
    /// it, so what it holds for a peer that does not read is bounded by that peer's window, not
    /// by the send buffer (see the [`streams`](super) documentation).
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
    /// whether the stream's receive window grows (see the [`streams`](super) documentation).
    pub fn read(
        &mut self,
        now: Instant,
        rtt: Duration,
        id: StreamId,
        buf: &mut [u8],
    ) -> Result<ReadOutcome, StreamError> {
        self.read_tuned(id, buf, Some((now, rtt)))
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

    /// The receive window `id`'s credit is renewed at: the initial window, grown while the
    /// reader keeps up, cut to what the growth budget allows (`None` for an unknown stream).
    pub fn receive_window(&self, id: StreamId) -> Option<u64> {
        self.streams.get(&id).map(|s| s.recv_window)
    }

    /// Contiguous bytes ready to read on `id`.
    pub fn readable_len(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.recv.readable_len())
    }

    /// How many streams the peer lets us open in total (its MAX_STREAMS).
    pub fn local_limit(&self) -> u64 {
        self.local_limit
    }

    /// Bytes written to stream `id` and not yet acknowledged (none for an unknown stream).
    pub fn unacknowledged(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.send.buffered())
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
}
