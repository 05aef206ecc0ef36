//! The receive side of one stream: reassembles bytes that arrive out of order, duplicated or
//! overlapping into the ordered byte stream the application reads.
//!
//! Bytes that arrive in order (nearly all of them) join a queue of segments, which the
//! application reads from the front: no tree operation per packet. Bytes ahead of a gap wait in
//! segments kept by offset, and join the queue when the gap fills. The first copy of any byte
//! wins and later copies are trimmed away, so duplicates cost nothing. Flow control (how far the
//! peer may send) is enforced by the caller before inserting, which bounds what this holds. A
//! segment's memory goes as soon as it is read, the queue's when it is empty, and when the last
//! out-of-order segment goes so does the map's tree node (a `BTreeMap` emptied by removals keeps
//! it): a stream whose bytes were all read holds no memory here.
//!
//! (A single ring buffer for the in-order bytes was tried: faster on bulk, but pipelined
//! responses paid for its growth copies and for freeing it each time it was read empty.)

use std::collections::{BTreeMap, VecDeque};

/// The peer broke a final-size rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// A FIN at a different offset than a previous FIN, or below bytes already received.
    #[error("final size changed")]
    FinalSizeChanged,
    /// Bytes beyond a known final size.
    #[error("data beyond the final size")]
    DataBeyondFinalSize,
}

/// Out-of-order bytes of one stream and the read position.
#[derive(Debug, Default)]
pub struct RecvAssembler {
    /// The bytes contiguous from `read`, in order, as they arrived (the first one partly read
    /// when `front_read` is nonzero).
    ordered: VecDeque<Vec<u8>>,
    front_read: usize,
    /// Bytes in `ordered` not yet read.
    ordered_len: usize,
    /// Non-overlapping segments beyond the ordered bytes and a gap, by offset.
    segments: BTreeMap<u64, Vec<u8>>,
    read: u64,
    highest: u64,
    final_size: Option<u64>,
    buffered: usize,
}

impl RecvAssembler {
    /// Nothing received yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `data` at `offset`; `fin` ends the stream after it. Returns how much the highest
    /// received offset grew (for connection-level flow control).
    pub fn insert(&mut self, offset: u64, data: &[u8], fin: bool) -> Result<u64, RecvError> {
        let end = offset + data.len() as u64;
        if let Some(f) = self.final_size {
            if fin && end != f {
                return Err(RecvError::FinalSizeChanged);
            }
            if end > f {
                return Err(RecvError::DataBeyondFinalSize);
            }
        }
        if fin {
            if end < self.highest {
                return Err(RecvError::FinalSizeChanged);
            }
            self.final_size = Some(end);
        }
        let grew = end.saturating_sub(self.highest);
        self.highest = self.highest.max(end);
        let mut at = offset.max(self.contiguous_end());
        while at < end {
            // Skip what an existing segment already covers.
            if let Some((&s, seg)) = self.segments.range(..=at).next_back() {
                let seg_end = s + seg.len() as u64;
                if seg_end > at {
                    at = seg_end;
                    continue;
                }
            }
            let next = self
                .segments
                .range(at..)
                .next()
                .map_or(end, |(s, _)| (*s).min(end));
            let piece = &data[(at - offset) as usize..(next - offset) as usize];
            self.buffered += piece.len();
            if at == self.contiguous_end() {
                self.ordered_len += piece.len();
                self.ordered.push_back(piece.to_vec());
            } else {
                self.segments.insert(at, piece.to_vec());
            }
            at = next;
        }
        // Segments the new bytes made contiguous join the ordered bytes (nothing to look up
        // when none wait past a gap, the usual case).
        if !self.segments.is_empty() {
            while let Some(seg) = self.segments.remove(&self.contiguous_end()) {
                self.ordered_len += seg.len();
                self.ordered.push_back(seg);
            }
            if self.segments.is_empty() {
                self.segments = BTreeMap::new();
            }
        }
        Ok(grew)
    }

    /// Copies contiguous bytes from the read position into `buf`; returns the count.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            let Some(seg) = self.ordered.front() else {
                break;
            };
            let rest = &seg[self.front_read..];
            let k = rest.len().min(buf.len() - n);
            buf[n..n + k].copy_from_slice(&rest[..k]);
            n += k;
            if k == rest.len() {
                self.ordered.pop_front();
                self.front_read = 0;
            } else {
                self.front_read += k;
            }
        }
        self.read += n as u64;
        self.buffered -= n;
        self.ordered_len -= n;
        if self.ordered.is_empty() {
            self.ordered = VecDeque::new();
        }
        n
    }

    /// End of the bytes contiguous from the read position.
    fn contiguous_end(&self) -> u64 {
        self.read + self.ordered_len as u64
    }

    /// Contiguous bytes ready to read.
    pub fn readable_len(&self) -> usize {
        self.ordered_len
    }

    /// Bytes consumed by the application.
    pub fn read_offset(&self) -> u64 {
        self.read
    }

    /// End of the highest byte received.
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// The stream's length, once the FIN arrived.
    pub fn final_size(&self) -> Option<u64> {
        self.final_size
    }

    /// True once the FIN arrived and every byte was read.
    pub fn is_finished(&self) -> bool {
        self.final_size == Some(self.read)
    }

    /// Bytes held, in order or not.
    pub fn buffered(&self) -> usize {
        self.buffered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut RecvAssembler) -> Vec<u8> {
        let mut out = vec![0; 1000];
        let n = r.read(&mut out);
        out.truncate(n);
        out
    }

    #[test]
    fn out_of_order_overlapping_and_duplicate_data_reassemble_once() {
        let mut r = RecvAssembler::new();
        assert_eq!(r.insert(5, b"56789", false), Ok(10));
        assert_eq!(r.readable_len(), 0);
        assert_eq!(r.insert(3, b"34567", false), Ok(0));
        assert_eq!(r.insert(0, b"012", false), Ok(0));
        assert_eq!(r.insert(5, b"XXXXX", false), Ok(0), "first copy wins");
        assert_eq!(r.buffered(), 10);
        assert_eq!(read_all(&mut r), b"0123456789");
        assert_eq!(r.buffered(), 0);
        assert_eq!(
            r.insert(2, b"late", false),
            Ok(0),
            "below the read offset: dropped"
        );
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn fin_is_finished_only_after_every_byte_is_read() {
        let mut r = RecvAssembler::new();
        r.insert(3, b"def", true).unwrap();
        assert!(!r.is_finished());
        r.insert(0, b"abc", false).unwrap();
        assert_eq!(read_all(&mut r), b"abcdef");
        assert!(r.is_finished());
        assert_eq!(r.insert(3, b"def", true), Ok(0), "a duplicate FIN is fine");
    }

    #[test]
    fn final_size_cannot_change_and_nothing_may_follow_it() {
        let mut r = RecvAssembler::new();
        r.insert(0, b"abcdef", false).unwrap();
        assert_eq!(r.insert(0, b"abc", true), Err(RecvError::FinalSizeChanged));
        r.insert(6, b"", true).unwrap();
        assert_eq!(
            r.insert(6, b"x", false),
            Err(RecvError::DataBeyondFinalSize)
        );
        assert_eq!(r.insert(0, b"a", true), Err(RecvError::FinalSizeChanged));
    }

    #[test]
    fn partial_reads_keep_the_rest() {
        let mut r = RecvAssembler::new();
        r.insert(0, b"hello world", false).unwrap();
        let mut buf = [0u8; 5];
        assert_eq!(r.read(&mut buf), 5);
        assert_eq!(&buf, b"hello");
        assert_eq!(r.readable_len(), 6);
        assert_eq!(read_all(&mut r), b" world");
    }

    #[test]
    fn readiness_and_content_match_a_naive_model_under_random_arrival() {
        use rand_chacha::rand_core::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let stream: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut r = RecvAssembler::new();
        let mut have = vec![false; stream.len()];
        let mut out = Vec::new();
        while out.len() < stream.len() {
            let start = (rng.next_u32() as usize) % stream.len();
            let end = (start + 1 + (rng.next_u32() as usize) % 1500).min(stream.len());
            r.insert(start as u64, &stream[start..end], end == stream.len())
                .unwrap();
            have[start..end].iter_mut().for_each(|h| *h = true);
            let expected = have[out.len()..].iter().take_while(|h| **h).count();
            assert_eq!(r.readable_len(), expected);
            if rng.next_u32() % 3 == 0 {
                let mut buf = vec![0; (rng.next_u32() % 4000) as usize];
                let n = r.read(&mut buf);
                out.extend_from_slice(&buf[..n]);
            }
            if have.iter().all(|h| *h) {
                let mut buf = vec![0; stream.len()];
                let n = r.read(&mut buf);
                out.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(out, stream);
        assert!(r.is_finished());
    }
}
