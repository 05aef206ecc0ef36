//! The incoming side of the streams: what the peer sends and the credit we give it. STREAM and
//! RESET frames are checked against the credit given (a violation closes the connection) and
//! reassembled; reads consume them and renew credit: a stream's window grows while its reader
//! keeps up and is paid from the shared growth budget, and the connection credit (MAX_DATA)
//! follows what was consumed (the [`streams`](super) documentation says why and how much).

use std::time::{Duration, Instant};

use super::recv::RecvAssembler;
use super::send::SendBuffer;
use super::{
    FlowViolation, ReadOutcome, Stream, StreamError, StreamEvent, StreamSet, WINDOW_GROWTH_RTTS,
    WINDOW_RESET_RTTS,
};
use crate::wire::close::close_code;
use crate::wire::frame::StreamFrame;
use crate::wire::ids::StreamId;

impl StreamSet {
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
    pub(super) fn ensure_peer_stream(&mut self, id: StreamId) -> Result<(), FlowViolation> {
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

    /// [`StreamSet::read`]; with `tuning` `None` (bytes discarded, not read by the
    /// application) the window keeps its size.
    pub(super) fn read_tuned(
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

    pub(super) fn discard_readable(&mut self, id: StreamId) {
        let mut scratch = [0u8; 4096];
        loop {
            match self.read_tuned(id, &mut scratch, None) {
                Ok(ReadOutcome::Data(_)) => continue,
                _ => return,
            }
        }
    }

    /// Renews the connection credit once it could rise by the slack: it then never falls more
    /// than the slack below read + window, which is above everything the streams may hold.
    pub(super) fn update_conn_credit(&mut self) {
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
    pub(super) fn release_growth(growth_used: &mut u64, initial: u64, s: &mut Stream) {
        *growth_used = growth_used.saturating_sub(s.charged);
        s.charged = 0;
        s.recv_window = initial;
    }
}
