//! The sending side of [`crate::fec`]: the window of recent source packets, the repairs owed
//! on it (by a steady rate, and for the newest sources when the sender goes quiet), and the
//! repair frames waiting to leave.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{
    code, copy_from_spare, repair_rate, repairs_needed, FecMode, FecStats, PathLoss, WINDOW_HOLDS,
};
use crate::wire::frame::{RepairFrame, MAX_GROUP_REPAIRS, MAX_GROUP_SOURCES, MAX_GROUP_SPAN};

/// A source packet that repairs may still cover.
#[derive(Debug)]
struct Source {
    pn: u64,
    at: Instant,
    payload: Vec<u8>,
    /// The id of the first repair computed after it joined.
    first_repair: u64,
}

/// Source packets by number: the first one's, and a bitmap of the numbers from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupSources {
    pub(crate) first_pn: u64,
    pub(crate) members: u32,
}

/// A repair frame to send.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Repair {
    /// The encoded FEC_REPAIR frame.
    pub(crate) frame: Vec<u8>,
    /// The sources whose loss detection counts from this repair, if it is the first of those
    /// computed together: all those it covers. A source missing at the receiver may need
    /// the last repair over it, not the first (two losses in a window wait for a second
    /// repair); counted from the first, nearly every one rebuilt after a later repair had
    /// been declared lost and sent again by then.
    pub(crate) covers: Option<GroupSources>,
}

/// A repair frame waiting to be sent, and when it was computed.
#[derive(Debug)]
struct QueuedRepair {
    at: Instant,
    repair: Repair,
}

/// The window of recent sources and the repair frames computed on it.
#[derive(Debug, Default)]
pub(crate) struct FecSender {
    /// Sources that the next repair covers, oldest first: those sent within the last
    /// [`WINDOW_HOLDS`] holds, at most [`MAX_GROUP_SOURCES`] and [`MAX_GROUP_SPAN`] packet
    /// numbers (a `K/N` code: those since its last repairs).
    window: VecDeque<Source>,
    /// How many of the newest sources in the window no repair covers yet.
    uncovered: u32,
    /// When the oldest uncovered source must have its repairs.
    tail_deadline: Option<Instant>,
    /// Repairs owed by the steady rate, in fractions of one.
    credit: f64,
    /// The next repair's id (its coefficients' seed).
    next_id: u64,
    /// Repairs to send, oldest first.
    repairs: VecDeque<QueuedRepair>,
    /// Payload buffers of sources that left the window, for the next ones.
    spare: Vec<Vec<u8>>,
    stats: FecStats,
}

impl FecSender {
    /// Packet `pn` with plaintext `payload` (a FEC_SOURCE frame in it) left: it joins the
    /// window, and the repairs it makes due are computed. In `auto` a repair covering the
    /// window is due each time the steady rate ([`repair_rate`]) adds up to one; when the
    /// sender went `quiet` (a lone message: nothing more is coming soon) the newest sources
    /// get all the repairs they need at once instead. A `K/N` code computes `N - K` repairs
    /// on every `K` sources. Sources that no repair covers get theirs at the latest `hold`
    /// after the oldest of them left ([`deadline`](Self::deadline)).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_source(
        &mut self,
        now: Instant,
        pn: u64,
        payload: &[u8],
        mode: FecMode,
        loss: PathLoss,
        hold: Duration,
        quiet: bool,
    ) {
        self.on_timer(now, mode, loss);
        self.make_room(now, pn, hold, mode, loss);
        let copy = copy_from_spare(&mut self.spare, payload);
        self.window.push_back(Source {
            pn,
            at: now,
            payload: copy,
            first_repair: self.next_id,
        });
        self.uncovered += 1;
        if self.uncovered == 1 {
            self.tail_deadline = Some(now + hold);
        }
        match mode {
            FecMode::Off => {}
            FecMode::Fixed { sources, total } => {
                if self.uncovered >= u32::from(sources) {
                    self.compute(now, total - sources);
                    self.clear_window();
                } else if quiet {
                    self.flush(now, mode, loss);
                }
            }
            FecMode::Auto if quiet => self.flush(now, mode, loss),
            FecMode::Auto => {
                self.credit += repair_rate(self.window.len() as u32, loss);
                while self.credit >= 1.0 {
                    self.credit -= 1.0;
                    self.compute(now, 1);
                }
            }
        }
    }

    /// Drops from the window the sources older than [`WINDOW_HOLDS`] holds, and as many more
    /// as keep the window within its bounds with `pn` added; sources not yet covered get their
    /// repairs first.
    fn make_room(&mut self, now: Instant, pn: u64, hold: Duration, mode: FecMode, loss: PathLoss) {
        let too_far = |s: &Source, len: usize| {
            now.saturating_duration_since(s.at) > hold * WINDOW_HOLDS
                || pn < s.pn
                || pn - s.pn >= MAX_GROUP_SPAN
                || len >= MAX_GROUP_SOURCES as usize
        };
        while let Some(oldest) = self.window.front() {
            if !too_far(oldest, self.window.len()) {
                break;
            }
            if self.window.len() <= self.uncovered as usize {
                self.flush(now, mode, loss);
            }
            if let Some(old) = self.window.pop_front() {
                self.spare.push(old.payload);
            }
        }
        self.spare.truncate(MAX_GROUP_SOURCES as usize);
    }

    /// When the oldest uncovered source's repairs are due.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.tail_deadline
    }

    /// Computes the uncovered sources' repairs if their deadline has come.
    pub(crate) fn on_timer(&mut self, now: Instant, mode: FecMode, loss: PathLoss) {
        if self.tail_deadline.is_some_and(|at| at <= now) {
            self.flush(now, mode, loss);
        }
    }

    /// The repairs the uncovered sources lack: as many as a group of them needs to be lost
    /// with them with at most the target probability, or as the window needs as a whole less
    /// those already computed over it (a `K/N` code: its share). A version that also topped
    /// the window up when the flow paused for a hold cost more and helped nothing (simulator,
    /// 64 clients under bursty 5% loss: 2.0% of exchanges waited for a retransmission,
    /// against 1.4%).
    fn flush(&mut self, now: Instant, mode: FecMode, loss: PathLoss) {
        if self.uncovered == 0 {
            return;
        }
        let repairs = match mode {
            FecMode::Off => 0,
            FecMode::Auto => {
                let tail = repairs_needed(self.uncovered, loss, MAX_GROUP_REPAIRS);
                let whole = repairs_needed(self.window.len() as u32, loss, MAX_GROUP_REPAIRS);
                let sent = self
                    .window
                    .front()
                    .map_or(0, |s| self.next_id - s.first_repair);
                tail.max(whole.saturating_sub(sent.min(255) as u8))
            }
            FecMode::Fixed { sources, total } => {
                let r = (self.uncovered * u32::from(total - sources)).div_ceil(u32::from(sources));
                r.clamp(1, u32::from(MAX_GROUP_REPAIRS)) as u8
            }
        };
        self.compute(now, repairs);
        self.credit = 0.0;
        if matches!(mode, FecMode::Fixed { .. }) {
            self.clear_window();
        }
    }

    /// Computes `count` repairs covering the whole window; they join the queue.
    fn compute(&mut self, now: Instant, count: u8) {
        let Some(first) = self.window.front() else {
            return;
        };
        let first_pn = first.pn;
        let members = self
            .window
            .iter()
            .fold(0u32, |m, s| m | 1 << (s.pn - first_pn));
        let longest = self.window.iter().map(|s| s.payload.len()).max();
        let len = code::symbol_len(longest.unwrap_or(0));
        let covers = GroupSources { first_pn, members };
        for j in 0..count {
            let id = self.next_id;
            self.next_id += 1;
            let mut symbol = vec![0u8; len];
            for s in &self.window {
                code::add_payload(&mut symbol, code::coefficient(id, s.pn), &s.payload);
            }
            let frame = RepairFrame {
                first_pn,
                members,
                id,
                symbol: &symbol,
            };
            let mut encoded = Vec::with_capacity(RepairFrame::MAX_OVERHEAD + len);
            frame.encode(&mut encoded);
            self.repairs.push_back(QueuedRepair {
                at: now,
                repair: Repair {
                    frame: encoded,
                    covers: (j == 0).then_some(covers),
                },
            });
        }
        if count > 0 {
            self.stats.repair_batches += 1;
            self.stats.source_packets += u64::from(self.uncovered);
            self.uncovered = 0;
            self.tail_deadline = None;
        }
    }

    /// Empties the window (a `K/N` code starts each group afresh).
    fn clear_window(&mut self) {
        self.spare
            .extend(self.window.drain(..).map(|source| source.payload));
        self.spare.truncate(MAX_GROUP_SOURCES as usize);
        self.uncovered = 0;
        self.tail_deadline = None;
    }

    /// Whether repair frames wait to be sent.
    pub(crate) fn has_repairs(&self) -> bool {
        !self.repairs.is_empty()
    }

    /// The next repair frame to send, if one fits `room` bytes. Frames computed more than
    /// `stale_after` ago are dropped: by then the retransmission is under way.
    pub(crate) fn next_repair(
        &mut self,
        now: Instant,
        room: usize,
        stale_after: Duration,
    ) -> Option<Repair> {
        while let Some(QueuedRepair { at, repair }) = self.repairs.pop_front() {
            if now.saturating_duration_since(at) <= stale_after && repair.frame.len() <= room {
                return Some(repair);
            }
            self.stats.repairs_dropped += 1;
        }
        None
    }

    /// A repair packet of `len` bytes left.
    pub(crate) fn on_repair_sent(&mut self, len: usize) {
        self.stats.repair_packets_sent += 1;
        self.stats.repair_bytes_sent += len as u64;
    }

    pub(crate) fn stats(&self) -> FecStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{Frame, FrameIter};

    /// The repairs queued, each as (first source, bitmap, symbol length, covers).
    fn repairs_of(
        sender: &mut FecSender,
        now: Instant,
    ) -> Vec<(u64, u32, usize, Option<GroupSources>)> {
        let mut out = Vec::new();
        while let Some(repair) = sender.next_repair(now, usize::MAX, Duration::from_secs(1)) {
            match FrameIter::new(&repair.frame).next() {
                Some(Ok(Frame::FecRepair(r))) => {
                    out.push((r.first_pn, r.members, r.symbol.len(), repair.covers))
                }
                other => panic!("not a repair frame: {other:?}"),
            }
        }
        out
    }

    const HOLD: Duration = Duration::from_millis(5);

    fn auto(s: &mut FecSender, now: Instant, pn: u64, loss: f64, quiet: bool) {
        let loss = PathLoss::independent(loss);
        s.add_source(now, pn, b"request", FecMode::Auto, loss, HOLD, quiet);
    }

    #[test]
    fn a_lone_packet_gets_its_repairs_at_once_when_quiet_or_by_the_end_of_the_hold() {
        let t0 = Instant::now();
        let mut s = FecSender::default();
        auto(&mut s, t0, 7, 0.10, true);
        // Two repairs for a lone packet at 10% loss, each a symbol of 7 + 2 bytes; its loss
        // counts from the first.
        let lone = Some(GroupSources {
            first_pn: 7,
            members: 1,
        });
        assert_eq!(repairs_of(&mut s, t0), [(7, 1, 9, lone), (7, 1, 9, None)]);
        s.on_timer(t0 + HOLD, FecMode::Auto, PathLoss::independent(0.10));
        assert!(!s.has_repairs(), "nothing more once the hold ends");
        // Not quiet: alone in its window it is charged as a block of two would be (three
        // repairs for two sources at 10%), so one leaves at once and it is covered.
        let mut s = FecSender::default();
        auto(&mut s, t0, 7, 0.10, false);
        assert_eq!(repairs_of(&mut s, t0), [(7, 1, 9, lone)]);
        assert_eq!(s.deadline(), None);
        // At 1% the rate is lower: the repair waits for the hold.
        let mut s = FecSender::default();
        auto(&mut s, t0, 7, 0.01, false);
        assert!(!s.has_repairs());
        assert_eq!(s.deadline(), Some(t0 + HOLD));
        s.on_timer(t0 + HOLD, FecMode::Auto, PathLoss::independent(0.01));
        assert_eq!(repairs_of(&mut s, t0 + HOLD), [(7, 1, 9, lone)]);
    }

    #[test]
    fn a_steady_flow_gets_repairs_at_the_rate_each_covering_the_recent_window() {
        // One source every half millisecond with a 5 ms hold: twenty in the window (two
        // holds), charged as a block of sixteen, which at 5% loss needs four repairs: one
        // every fourth source.
        assert_eq!(repair_rate(20, PathLoss::independent(0.05)), 0.25);
        let t0 = Instant::now();
        let mut s = FecSender::default();
        let mut steady = Vec::new();
        for i in 0..100u64 {
            let now = t0 + Duration::from_micros(500 * i);
            auto(&mut s, now, 1000 + i, 0.05, false);
            let repairs = repairs_of(&mut s, now);
            if i >= 20 {
                steady.extend(repairs.into_iter().map(|r| (i, r)));
            }
        }
        assert_eq!(steady.len(), 20, "{steady:?}");
        for (i, (first_pn, members, len, covers)) in steady {
            // Each covers the sources of the last two holds, up to the newest, and their loss
            // counts from it.
            assert_eq!(first_pn + 31 - u64::from(members.leading_zeros()), 1000 + i);
            assert!((20..=21).contains(&members.count_ones()), "{members:b}");
            assert_eq!(members.count_ones(), 32 - members.leading_zeros());
            assert_eq!(len, 9);
            assert_eq!(covers, Some(GroupSources { first_pn, members }));
        }
    }

    #[test]
    fn the_window_never_spans_more_packet_numbers_than_a_bitmap() {
        let t0 = Instant::now();
        let mut s = FecSender::default();
        auto(&mut s, t0, 100, 0.05, false);
        assert!(repairs_of(&mut s, t0)
            .iter()
            .all(|r| (r.0, r.1) == (100, 1)));
        auto(&mut s, t0, 100 + MAX_GROUP_SPAN, 0.05, false);
        s.on_timer(t0 + HOLD, FecMode::Auto, PathLoss::independent(0.05));
        let second = repairs_of(&mut s, t0 + HOLD);
        assert!(!second.is_empty());
        assert!(second
            .iter()
            .all(|r| r.0 == 100 + MAX_GROUP_SPAN && r.1 == 1));
    }

    #[test]
    fn a_fixed_code_repairs_every_k_sources_and_a_short_tail_in_proportion() {
        let t0 = Instant::now();
        let mode = FecMode::Fixed {
            sources: 4,
            total: 6,
        };
        let none = PathLoss::independent(0.0);
        let mut s = FecSender::default();
        for pn in [10, 11, 13, 14] {
            s.add_source(t0, pn, &[1; 100], mode, none, HOLD, false);
        }
        let full = repairs_of(&mut s, t0);
        assert_eq!(full.len(), 2);
        assert_eq!(full[0].1, 0b11011);
        s.add_source(t0, 20, &[1; 100], mode, none, HOLD, false);
        s.on_timer(t0 + HOLD, mode, none);
        let tail = repairs_of(&mut s, t0 + HOLD);
        assert_eq!(tail.len(), 1);
        assert_eq!((tail[0].0, tail[0].1), (20, 1));
    }

    #[test]
    fn stale_or_oversized_repairs_are_dropped() {
        let t0 = Instant::now();
        let mut s = FecSender::default();
        let loss = PathLoss::independent(0.05);
        s.add_source(t0, 1, &[0; 1000], FecMode::Auto, loss, HOLD, true);
        assert!(s.has_repairs());
        assert_eq!(s.next_repair(t0, 100, Duration::from_secs(1)), None);
        s.add_source(t0, 2, b"x", FecMode::Auto, loss, HOLD, true);
        let late = t0 + Duration::from_millis(50);
        assert_eq!(s.next_repair(late, 2000, Duration::from_millis(20)), None);
        assert_eq!(s.stats().repairs_dropped, 2);
    }
}
