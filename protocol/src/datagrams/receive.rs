//! The receiving side of datagrams: duplicate suppression by sequence number, reassembly of
//! fragments, and the queue of datagrams the application has not read yet.
//!
//! Duplicates: a window of the last [`WINDOW`] sequence numbers remembers which were
//! delivered (a bitmap, 512 bytes per connection); a number seen again is a copy and is
//! dropped, one older than the window is dropped as late, since it could not be told from a
//! copy. Reassembly: at most [`MAX_REASSEMBLIES`] datagrams in pieces and [`MAX_PIECE_BYTES`]
//! of pieces at once; the oldest gives way to a newer one, and one not whole within
//! [`REASSEMBLY_TIMEOUT`] is dropped. Both are counted as reassembly failures.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::{Datagram, DatagramStats};
use crate::wire::frame::DatagramFrame;

/// Sequence numbers remembered for duplicate suppression.
pub const WINDOW: u64 = 4096;
/// Datagrams being reassembled at once, at most.
pub const MAX_REASSEMBLIES: usize = 64;
/// Bytes of fragments held for reassembly, at most.
pub const MAX_PIECE_BYTES: usize = 512 << 10;
/// A datagram whose fragments have not all come within this long is dropped.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Datagrams received and not yet read, at most; beyond, the oldest is dropped.
pub const MAX_UNREAD: usize = 1024;
/// Bytes received and not yet read, at most.
pub const MAX_UNREAD_BYTES: usize = 4 << 20;

/// Which sequence numbers of the last [`WINDOW`] were delivered.
#[derive(Debug)]
struct SeenWindow {
    top: Option<u64>,
    bits: Box<[u64; (WINDOW / 64) as usize]>,
}

impl Default for SeenWindow {
    fn default() -> Self {
        Self {
            top: None,
            bits: Box::new([0; (WINDOW / 64) as usize]),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    New,
    Already,
    TooOld,
}

impl SeenWindow {
    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn check(&self, seq: u64) -> Seen {
        match self.top {
            None => Seen::New,
            Some(top) if seq > top => Seen::New,
            Some(top) if top - seq >= WINDOW => Seen::TooOld,
            Some(_) => {
                let (word, mask) = Self::bit(seq);
                if self.bits[word] & mask != 0 {
                    Seen::Already
                } else {
                    Seen::New
                }
            }
        }
    }

    /// Marks `seq` delivered (it must be [`Seen::New`]).
    fn mark(&mut self, seq: u64) {
        match self.top {
            Some(top) if seq <= top => {}
            Some(top) if seq - top < WINDOW => {
                for s in top + 1..seq {
                    let (word, mask) = Self::bit(s);
                    self.bits[word] &= !mask;
                }
                self.top = Some(seq);
            }
            _ => {
                self.bits.fill(0);
                self.top = Some(seq);
            }
        }
        let (word, mask) = Self::bit(seq);
        self.bits[word] |= mask;
    }
}

/// A datagram arriving in pieces.
#[derive(Debug)]
struct Partial {
    flow: u64,
    started: Instant,
    pieces: Vec<Option<Vec<u8>>>,
    bytes: usize,
}

#[derive(Debug, Default)]
pub(super) struct Receive {
    seen: SeenWindow,
    partial: BTreeMap<u64, Partial>,
    piece_bytes: usize,
    unread: VecDeque<Datagram>,
    unread_bytes: usize,
}

impl Receive {
    /// A frame received; true when it made the unread queue non-empty.
    pub(super) fn on_frame(
        &mut self,
        now: Instant,
        frame: &DatagramFrame<'_>,
        max: u32,
        stats: &mut DatagramStats,
    ) -> bool {
        self.expire(now, stats);
        match self.seen.check(frame.seq) {
            Seen::Already => {
                stats.duplicates_suppressed += 1;
                return false;
            }
            Seen::TooOld => {
                stats.dropped_late += 1;
                return false;
            }
            Seen::New => {}
        }
        let max = max as usize;
        let Some(fragment) = frame.fragment else {
            if frame.data.len() > max {
                stats.dropped_oversized += 1;
                return false;
            }
            self.seen.mark(frame.seq);
            return self.deliver(frame.flow, frame.data.to_vec(), stats);
        };
        let count = usize::from(fragment.count);
        if frame.data.len() > max {
            // No piece can be larger than the whole (the sum is checked once complete).
            stats.dropped_oversized += 1;
            return false;
        }
        let entry = self.partial.entry(frame.seq).or_insert_with(|| Partial {
            flow: frame.flow,
            started: now,
            pieces: vec![None; count],
            bytes: 0,
        });
        if entry.pieces.len() != count || entry.flow != frame.flow {
            // Pieces that disagree on what they belong to: the whole datagram is suspect.
            let gone = self.partial.remove(&frame.seq).expect("entry exists");
            self.piece_bytes -= gone.bytes;
            stats.reassembly_failures += 1;
            return false;
        }
        let slot = &mut entry.pieces[usize::from(fragment.index)];
        if slot.is_some() {
            stats.duplicates_suppressed += 1;
            return false;
        }
        *slot = Some(frame.data.to_vec());
        entry.bytes += frame.data.len();
        self.piece_bytes += frame.data.len();
        if entry.pieces.iter().all(Option::is_some) {
            let whole = self.partial.remove(&frame.seq).expect("entry exists");
            self.piece_bytes -= whole.bytes;
            if whole.bytes > max {
                stats.dropped_oversized += 1;
                return false;
            }
            self.seen.mark(frame.seq);
            let data = whole.pieces.into_iter().flatten().flatten().collect();
            return self.deliver(whole.flow, data, stats);
        }
        // Within bounds, the oldest datagrams in pieces give way (never the one just touched
        // unless it is alone and too large, which the size check above rules out).
        while self.partial.len() > MAX_REASSEMBLIES || self.piece_bytes > MAX_PIECE_BYTES {
            let oldest = self
                .partial
                .iter()
                .filter(|(seq, _)| **seq != frame.seq)
                .min_by_key(|(_, p)| p.started)
                .map(|(seq, _)| *seq);
            let Some(oldest) = oldest else { break };
            let gone = self.partial.remove(&oldest).expect("entry exists");
            self.piece_bytes -= gone.bytes;
            stats.reassembly_failures += 1;
        }
        false
    }

    fn deliver(&mut self, flow: u64, data: Vec<u8>, stats: &mut DatagramStats) -> bool {
        stats.received += 1;
        stats.received_bytes += data.len() as u64;
        let was_empty = self.unread.is_empty();
        self.unread_bytes += data.len();
        self.unread.push_back(Datagram { flow, data });
        while self.unread.len() > MAX_UNREAD || self.unread_bytes > MAX_UNREAD_BYTES {
            let gone = self.unread.pop_front().expect("not empty");
            self.unread_bytes -= gone.data.len();
            stats.dropped_unread += 1;
        }
        was_empty
    }

    pub(super) fn pop(&mut self) -> Option<Datagram> {
        let d = self.unread.pop_front()?;
        self.unread_bytes -= d.data.len();
        Some(d)
    }

    pub(super) fn expire(&mut self, now: Instant, stats: &mut DatagramStats) {
        let before = self.partial.len();
        let piece_bytes = &mut self.piece_bytes;
        self.partial.retain(|_, p| {
            let keep = now.saturating_duration_since(p.started) < REASSEMBLY_TIMEOUT;
            if !keep {
                *piece_bytes -= p.bytes;
            }
            keep
        });
        stats.reassembly_failures += (before - self.partial.len()) as u64;
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.partial
            .values()
            .map(|p| p.started + REASSEMBLY_TIMEOUT)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::Fragment;

    fn whole(seq: u64, data: &[u8]) -> DatagramFrame<'_> {
        DatagramFrame {
            flow: 1,
            seq,
            fragment: None,
            data,
        }
    }

    fn piece(seq: u64, index: u8, count: u8, data: &[u8]) -> DatagramFrame<'_> {
        DatagramFrame {
            flow: 1,
            seq,
            fragment: Some(Fragment { index, count }),
            data,
        }
    }

    #[test]
    fn each_sequence_number_is_delivered_once_and_old_ones_are_late() {
        let now = Instant::now();
        let mut r = Receive::default();
        let mut stats = DatagramStats::default();
        assert!(r.on_frame(now, &whole(5, b"a"), 100, &mut stats));
        assert!(!r.on_frame(now, &whole(5, b"a"), 100, &mut stats));
        assert!(!r.on_frame(now, &whole(3, b"b"), 100, &mut stats));
        assert!(!r.on_frame(now, &whole(3, b"b"), 100, &mut stats));
        assert_eq!(stats.duplicates_suppressed, 2);
        r.on_frame(now, &whole(5 + WINDOW, b"c"), 100, &mut stats);
        r.on_frame(now, &whole(5, b"a"), 100, &mut stats);
        assert_eq!(stats.dropped_late, 1);
        // Numbers between the old top and the new one were cleared, not inherited.
        r.on_frame(now, &whole(6 + WINDOW / 2, b"d"), 100, &mut stats);
        let got: Vec<Vec<u8>> = std::iter::from_fn(|| r.pop()).map(|d| d.data).collect();
        assert_eq!(
            got,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(stats.received, 4);
    }

    #[test]
    fn fragments_reassemble_in_any_order_once() {
        let now = Instant::now();
        let mut r = Receive::default();
        let mut stats = DatagramStats::default();
        assert!(!r.on_frame(now, &piece(1, 2, 3, b"ef"), 100, &mut stats));
        assert!(!r.on_frame(now, &piece(1, 0, 3, b"ab"), 100, &mut stats));
        assert!(!r.on_frame(now, &piece(1, 0, 3, b"ab"), 100, &mut stats));
        assert!(r.on_frame(now, &piece(1, 1, 3, b"cd"), 100, &mut stats));
        assert!(!r.on_frame(now, &piece(1, 1, 3, b"cd"), 100, &mut stats));
        assert_eq!(r.pop().unwrap().data, b"abcdef");
        assert_eq!(stats.duplicates_suppressed, 2);
        assert_eq!(r.piece_bytes, 0);
    }

    #[test]
    fn incomplete_datagrams_time_out_and_memory_stays_bounded() {
        let now = Instant::now();
        let mut r = Receive::default();
        let mut stats = DatagramStats::default();
        let big = vec![0u8; 8000];
        for seq in 0..(MAX_REASSEMBLIES as u64 * 4) {
            r.on_frame(now, &piece(seq, 0, 8, &big), 65_535, &mut stats);
            assert!(r.partial.len() <= MAX_REASSEMBLIES);
            assert!(r.piece_bytes <= MAX_PIECE_BYTES);
        }
        let held = r.partial.len() as u64;
        assert_eq!(
            stats.reassembly_failures,
            MAX_REASSEMBLIES as u64 * 4 - held
        );
        assert!(r.next_expiry().is_some());
        r.expire(now + REASSEMBLY_TIMEOUT, &mut stats);
        assert!(r.partial.is_empty());
        assert_eq!(r.piece_bytes, 0);
        assert_eq!(stats.reassembly_failures, MAX_REASSEMBLIES as u64 * 4);
    }

    #[test]
    fn oversized_and_inconsistent_pieces_are_dropped() {
        let now = Instant::now();
        let mut r = Receive::default();
        let mut stats = DatagramStats::default();
        r.on_frame(now, &whole(0, &[0; 101]), 100, &mut stats);
        r.on_frame(now, &piece(1, 0, 2, &[0; 60]), 100, &mut stats);
        r.on_frame(now, &piece(1, 1, 2, &[0; 60]), 100, &mut stats);
        assert_eq!(stats.dropped_oversized, 2);
        assert_eq!(r.piece_bytes, 0);
        r.on_frame(now, &piece(2, 0, 2, b"x"), 100, &mut stats);
        r.on_frame(now, &piece(2, 1, 3, b"y"), 100, &mut stats);
        assert_eq!(stats.reassembly_failures, 1);
        assert!(r.pop().is_none());
        assert_eq!(r.piece_bytes, 0);
    }

    #[test]
    fn unread_datagrams_are_bounded_dropping_the_oldest() {
        let now = Instant::now();
        let mut r = Receive::default();
        let mut stats = DatagramStats::default();
        for seq in 0..(MAX_UNREAD as u64 + 10) {
            r.on_frame(now, &whole(seq, &seq.to_be_bytes()), 100, &mut stats);
        }
        assert_eq!(stats.dropped_unread, 10);
        assert_eq!(r.pop().unwrap().data, 10u64.to_be_bytes());
    }
}
