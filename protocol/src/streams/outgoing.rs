//! The outgoing side of the streams: what we send and the credit the peer gave us. The peer's
//! credit (its HELLO, MAX_DATA, MAX_STREAM_DATA, MAX_STREAMS) bounds what a stream accepts from
//! the application and what it may send; STREAM frames are cut from the send queue's streams in
//! its order, with the control frames we owe (RESET, credit); acknowledgements and losses of
//! what was sent come back here.

use std::collections::VecDeque;

use super::schedule::SendQueue;
use super::{FlowViolation, Stream, StreamEvent, StreamSet, SMALLEST_USEFUL_STREAM_FRAME};
use crate::recovery::SentFrame;
use crate::wire::coding::{varint_len, BufMutExt};
use crate::wire::frame::types;
use crate::wire::ids::StreamId;

impl StreamSet {
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

    /// Bytes the application may write to `s` now: what its send buffer has room for, up to
    /// the offset the peer's credit reaches. Bytes beyond the credit could not be sent anyway;
    /// held here they would only cost memory while the peer does not read.
    pub(super) fn write_room(s: &Stream) -> usize {
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
    /// [`schedule`](super::schedule) for the order).
    pub(super) fn enqueue(queue: &mut SendQueue, id: StreamId, s: &mut Stream) {
        if !s.queued {
            s.queued = true;
            queue.activate(id);
        }
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
    /// round robin (see [`schedule`](super::schedule)), so that every stream with data progresses.
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
}
