//! The send side of one stream: bytes the application wrote that the peer has not yet
//! acknowledged, and what must be sent (new bytes, bytes to send again, the FIN).
//!
//! Bytes live in a ring buffer whose front is the lowest unacknowledged offset, so memory is
//! released as soon as the acknowledged prefix grows, and is bounded by the capacity whatever the
//! peer does. Ranges acknowledged out of order and ranges declared lost are kept as [`RangeSet`]s:
//! retransmissions are taken lowest first, before any new byte.
//!
//! Once everything written is acknowledged the buffer gives its allocations back (the ring's
//! capacity, and the range sets' emptied tree nodes, which a `BTreeMap` otherwise keeps): a
//! stream that is open but quiet holds no memory here beyond the struct itself.

use std::collections::VecDeque;

use crate::ranges::RangeSet;

/// A piece of the stream to put in a STREAM frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// First byte's offset.
    pub offset: u64,
    /// Number of bytes (0 for a FIN-only chunk).
    pub len: usize,
    /// The chunk ends the stream.
    pub fin: bool,
}

/// Unacknowledged bytes of one stream, bounded by a capacity.
#[derive(Debug)]
pub struct SendBuffer {
    data: VecDeque<u8>,
    /// Offset of `data[0]`: everything below is acknowledged.
    base: u64,
    capacity: usize,
    /// Next offset never sent.
    unsent: u64,
    /// Ranges to send again.
    lost: RangeSet,
    /// Ranges acknowledged above `base`.
    acked: RangeSet,
    finished: bool,
    fin_sent: bool,
    fin_lost: bool,
    fin_acked: bool,
}

impl SendBuffer {
    /// An empty buffer holding at most `capacity` unacknowledged bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            data: VecDeque::new(),
            base: 0,
            capacity,
            unsent: 0,
            lost: RangeSet::new(),
            acked: RangeSet::new(),
            finished: false,
            fin_sent: false,
            fin_lost: false,
            fin_acked: false,
        }
    }

    /// Accepts as much of `data` as fits; returns the count (0 after [`SendBuffer::finish`]).
    pub fn write(&mut self, data: &[u8]) -> usize {
        if self.finished {
            return 0;
        }
        let n = data.len().min(self.free());
        self.data.extend(&data[..n]);
        n
    }

    /// Ends the stream after everything written so far.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// True once [`SendBuffer::finish`] was called.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Total bytes ever written (the final size once finished).
    pub fn written(&self) -> u64 {
        self.base + self.data.len() as u64
    }

    /// Bytes held (written, not yet acknowledged).
    pub fn buffered(&self) -> usize {
        self.data.len()
    }

    /// Room left.
    pub fn free(&self) -> usize {
        self.capacity.saturating_sub(self.data.len())
    }

    fn fin_owed(&self) -> bool {
        self.finished && !self.fin_acked && (!self.fin_sent || self.fin_lost)
    }

    /// Bytes that could be sent now below `max_offset`: lost ranges and new bytes (a FIN alone
    /// counts as one, so that it is never held back for want of bytes).
    pub fn pending_bytes(&self, max_offset: u64) -> u64 {
        let lost: u64 = self.lost.iter().map(|r| r.end - r.start).sum();
        let new = self.written().min(max_offset).saturating_sub(self.unsent);
        let fin = u64::from(self.unsent == self.written() && self.fin_owed());
        lost + new + fin
    }

    /// True if something can be sent now: lost ranges, new bytes below `max_offset` (the peer's
    /// flow-control limit), or an owed FIN.
    pub fn has_pending(&self, max_offset: u64) -> bool {
        !self.lost.is_empty()
            || (self.unsent < self.written() && self.unsent < max_offset)
            || (self.unsent == self.written() && self.fin_owed())
    }

    /// The next chunk to send, at most `max_len` bytes, marked as in flight: lost ranges first,
    /// then new bytes below `max_offset`, then a FIN-only chunk if the FIN is owed.
    pub fn next_chunk(&mut self, max_len: usize, max_offset: u64) -> Option<Chunk> {
        let end = self.written();
        if max_len > 0 {
            if let Some(r) = self.lost.pop_min_bounded(max_len as u64) {
                let fin = r.end == end && self.fin_owed();
                if fin {
                    self.fin_sent = true;
                    self.fin_lost = false;
                }
                return Some(Chunk {
                    offset: r.start,
                    len: (r.end - r.start) as usize,
                    fin,
                });
            }
            let limit = end.min(max_offset);
            if self.unsent < limit {
                let len = (limit - self.unsent).min(max_len as u64);
                let offset = self.unsent;
                self.unsent += len;
                let fin = self.unsent == end && self.fin_owed();
                if fin {
                    self.fin_sent = true;
                    self.fin_lost = false;
                }
                return Some(Chunk {
                    offset,
                    len: len as usize,
                    fin,
                });
            }
        }
        if self.unsent == end && self.fin_owed() {
            self.fin_sent = true;
            self.fin_lost = false;
            return Some(Chunk {
                offset: end,
                len: 0,
                fin: true,
            });
        }
        None
    }

    /// Appends the held bytes `[offset, offset + len)` to `out`. Bytes already acknowledged (a
    /// caller bug) append nothing rather than panic.
    pub fn copy_to(&self, offset: u64, len: usize, out: &mut Vec<u8>) {
        let Some(start) = offset.checked_sub(self.base).map(|s| s as usize) else {
            debug_assert!(false, "copy_to below the acknowledged prefix");
            return;
        };
        let Some(end) = start.checked_add(len).filter(|e| *e <= self.data.len()) else {
            debug_assert!(false, "copy_to beyond the buffered bytes");
            return;
        };
        let (a, b) = self.data.as_slices();
        if start < a.len() {
            out.extend_from_slice(&a[start..end.min(a.len())]);
        }
        if end > a.len() {
            out.extend_from_slice(&b[start.saturating_sub(a.len())..end - a.len()]);
        }
    }

    /// Bytes `[offset, offset + len)` (and the FIN if `fin`) were acknowledged.
    pub fn on_ack(&mut self, offset: u64, len: usize, fin: bool) {
        if fin {
            self.fin_acked = true;
            self.fin_lost = false;
        }
        let end = offset + len as u64;
        if end <= self.base {
            return;
        }
        let range = offset.max(self.base)..end;
        self.acked.insert(range.clone());
        self.lost.remove(range);
        if let Some(first) = self.acked.first() {
            if first.start <= self.base {
                let released = (first.end - self.base) as usize;
                self.data.drain(..released.min(self.data.len()));
                self.base = first.end;
                self.acked.pop_min();
            }
        }
        self.release_if_drained();
    }

    /// Frees the allocations of a buffer with nothing left to send or acknowledge: the ring's
    /// capacity and the range sets' empty tree nodes.
    fn release_if_drained(&mut self) {
        if !self.data.is_empty() {
            return;
        }
        if self.data.capacity() > 0 {
            self.data = VecDeque::new();
        }
        if self.acked.is_empty() {
            self.acked = RangeSet::new();
        }
        if self.lost.is_empty() {
            self.lost = RangeSet::new();
        }
    }

    /// Bytes of memory allocated for the buffered bytes (the ring's capacity).
    pub fn allocated(&self) -> usize {
        self.data.capacity()
    }

    /// Bytes `[offset, offset + len)` (and the FIN if `fin`) were lost: owe the parts not
    /// acknowledged since.
    pub fn on_lost(&mut self, offset: u64, len: usize, fin: bool) {
        if fin && !self.fin_acked {
            self.fin_lost = true;
        }
        let start = offset.max(self.base);
        let end = offset + len as u64;
        if start >= end {
            return;
        }
        let mut owed = RangeSet::new();
        owed.insert(start..end);
        for r in self.acked.iter() {
            if r.start >= end {
                break;
            }
            owed.remove(r);
        }
        for r in owed.iter() {
            self.lost.insert(r);
        }
    }

    /// True when finished and every byte and the FIN were acknowledged.
    pub fn is_fully_acked(&self) -> bool {
        self.finished && self.fin_acked && self.data.is_empty()
    }

    /// End of the highest byte ever handed out by [`SendBuffer::next_chunk`].
    pub fn max_sent_offset(&self) -> u64 {
        self.unsent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(buf: &SendBuffer, c: Chunk) -> Vec<u8> {
        let mut out = Vec::new();
        buf.copy_to(c.offset, c.len, &mut out);
        out
    }

    #[test]
    fn sends_in_order_and_releases_memory_once_the_prefix_is_acknowledged() {
        let mut b = SendBuffer::new(100);
        assert_eq!(b.write(&[7; 150]), 100, "capacity bounds writes");
        let c1 = b.next_chunk(40, u64::MAX).unwrap();
        let c2 = b.next_chunk(40, u64::MAX).unwrap();
        assert_eq!((c1.offset, c1.len, c2.offset, c2.len), (0, 40, 40, 40));
        b.on_ack(40, 40, false);
        assert_eq!(b.buffered(), 100, "out-of-order ack keeps the prefix");
        b.on_ack(0, 40, false);
        assert_eq!(b.buffered(), 20);
        assert_eq!(b.free(), 80);
    }

    #[test]
    fn lost_ranges_go_before_new_data_except_what_was_acknowledged_meanwhile() {
        let mut b = SendBuffer::new(1000);
        b.write(&(0..=255u8).cycle().take(300).collect::<Vec<_>>());
        let c1 = b.next_chunk(100, u64::MAX).unwrap();
        let _c2 = b.next_chunk(100, u64::MAX).unwrap();
        b.on_ack(50, 20, false); // part of c1 arrived in another packet
        b.on_lost(0, 100, false);
        let r1 = b.next_chunk(1000, u64::MAX).unwrap();
        assert_eq!((r1.offset, r1.len), (0, 50));
        assert_eq!(bytes(&b, r1), bytes(&b, Chunk { len: 50, ..c1 }));
        let r2 = b.next_chunk(1000, u64::MAX).unwrap();
        assert_eq!((r2.offset, r2.len), (70, 30));
        let new = b.next_chunk(1000, u64::MAX).unwrap();
        assert_eq!((new.offset, new.len), (200, 100));
    }

    #[test]
    fn flow_control_limit_holds_new_data_but_not_retransmissions() {
        let mut b = SendBuffer::new(1000);
        b.write(&[1; 500]);
        let c = b.next_chunk(1000, 100).unwrap();
        assert_eq!(c.len, 100);
        assert!(!b.has_pending(100));
        b.on_lost(0, 100, false);
        assert!(b.has_pending(100));
        assert_eq!(b.next_chunk(1000, 100).unwrap().len, 100);
    }

    #[test]
    fn fin_only_chunk_and_lost_fin_are_sent_again() {
        let mut b = SendBuffer::new(100);
        b.write(b"abc");
        let c = b.next_chunk(10, u64::MAX).unwrap();
        assert!(!c.fin);
        b.finish();
        let fin = b.next_chunk(10, u64::MAX).unwrap();
        assert_eq!((fin.offset, fin.len, fin.fin), (3, 0, true));
        assert!(b.next_chunk(10, u64::MAX).is_none());
        b.on_lost(3, 0, true);
        assert!(b.next_chunk(10, u64::MAX).unwrap().fin);
        b.on_ack(0, 3, false);
        b.on_ack(3, 0, true);
        assert!(b.is_fully_acked());
    }

    #[test]
    fn a_drained_buffer_holds_no_capacity() {
        let mut b = SendBuffer::new(1 << 20);
        b.write(&[9; 5000]);
        assert!(b.allocated() >= 5000);
        let c1 = b.next_chunk(3000, u64::MAX).unwrap();
        let c2 = b.next_chunk(3000, u64::MAX).unwrap();
        b.on_lost(c1.offset, c1.len, false);
        let again = b.next_chunk(3000, u64::MAX).unwrap();
        b.on_ack(c2.offset, c2.len, false);
        assert!(b.allocated() >= 5000, "bytes still unacknowledged are kept");
        b.on_ack(again.offset, again.len, false);
        assert_eq!(b.buffered(), 0);
        assert_eq!(
            b.allocated(),
            0,
            "all acknowledged: the ring's memory is given back"
        );
        // And it works as before afterwards.
        assert_eq!(b.write(b"more"), 4);
        let c = b.next_chunk(100, u64::MAX).unwrap();
        assert_eq!((c.offset, c.len), (5000, 4));
    }

    #[test]
    fn copy_handles_the_ring_buffer_wrapping() {
        let mut b = SendBuffer::new(8);
        b.write(b"01234567");
        let c = b.next_chunk(6, u64::MAX).unwrap();
        b.on_ack(c.offset, c.len, false);
        b.write(b"89abcd");
        let c = b.next_chunk(8, u64::MAX).unwrap();
        assert_eq!(bytes(&b, c), b"6789abcd");
    }
}
