//! The sending side of [`crate::fec`]: the open group of source packets, closed when full or
//! when its hold ends, and the repair frames it leaves to send.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{code, copy_from_spare, repairs_needed, FecMode, FecStats, PathLoss};
use crate::wire::frame::{RepairFrame, MAX_GROUP_REPAIRS, MAX_GROUP_SOURCES, MAX_GROUP_SPAN};
use crate::wire::settings::UNANNOUNCED_FEC_MAX_REPAIRS;

/// Source packets gathering into a group.
#[derive(Debug)]
struct OpenGroup {
    first_pn: u64,
    members: u32,
    payloads: Vec<Vec<u8>>,
    longest: usize,
    closes_at: Instant,
}

/// A group's source packets: the first one's number, and a bitmap of the numbers from it.
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
    /// Its group's sources, if it is the group's first repair (loss detection counts their
    /// loss from it).
    pub(crate) first_of: Option<GroupSources>,
}

/// A repair frame waiting to be sent, and when it was computed.
#[derive(Debug)]
struct QueuedRepair {
    at: Instant,
    repair: Repair,
}

/// Groups being formed and the repair frames they left to send.
#[derive(Debug, Default)]
pub(crate) struct FecSender {
    group: Option<OpenGroup>,
    /// Repairs to send, oldest first.
    repairs: VecDeque<QueuedRepair>,
    /// Payload buffers of closed groups, for the next ones.
    spare: Vec<Vec<u8>>,
    /// Most repairs per group the peer decodes, as it announced; `None` before its settings.
    peer_max_repairs: Option<u8>,
    stats: FecStats,
}

impl FecSender {
    /// The peer's settings say it decodes at most `max` repairs per group.
    pub(crate) fn set_peer_max_repairs(&mut self, max: u8) {
        self.peer_max_repairs = Some(max);
    }

    /// Most repairs a group may have: what the peer decodes, within this version's limit.
    fn max_repairs(&self) -> u8 {
        self.peer_max_repairs
            .unwrap_or(UNANNOUNCED_FEC_MAX_REPAIRS)
            .min(MAX_GROUP_REPAIRS)
    }

    /// Packet `pn` with plaintext `payload` (a FEC_SOURCE frame in it) left: it joins the open
    /// group, or opens one that closes after `hold`. A group that is full closes at once, and
    /// so does one whose sender went `quiet` (a lone message: no more sources are coming soon,
    /// and its repair should follow it at once).
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
        if self
            .group
            .as_ref()
            .is_some_and(|g| pn.saturating_sub(g.first_pn) >= MAX_GROUP_SPAN || pn < g.first_pn)
        {
            self.close(now, mode, loss);
        }
        let spare = &mut self.spare;
        let group = self.group.get_or_insert_with(|| OpenGroup {
            first_pn: pn,
            members: 0,
            payloads: Vec::new(),
            longest: 0,
            closes_at: now + hold,
        });
        group.members |= 1 << (pn - group.first_pn);
        group.payloads.push(copy_from_spare(spare, payload));
        group.longest = group.longest.max(payload.len());
        let full = match mode {
            FecMode::Fixed { sources, .. } => u32::from(sources),
            _ => MAX_GROUP_SOURCES,
        };
        if quiet || group.members.count_ones() >= full {
            self.close(now, mode, loss);
        }
    }

    /// When the open group's hold ends.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.group.as_ref().map(|g| g.closes_at)
    }

    /// Closes the open group if its hold has ended.
    pub(crate) fn on_timer(&mut self, now: Instant, mode: FecMode, loss: PathLoss) {
        if self.deadline().is_some_and(|at| at <= now) {
            self.close(now, mode, loss);
        }
    }

    /// Closes the open group: its repair frames join the queue.
    fn close(&mut self, now: Instant, mode: FecMode, loss: PathLoss) {
        let Some(group) = self.group.take() else {
            return;
        };
        let sources = group.members.count_ones();
        let repairs = match mode {
            FecMode::Off => 0,
            FecMode::Auto => repairs_needed(sources, loss, self.max_repairs()),
            FecMode::Fixed {
                sources: k,
                total: n,
            } => {
                // In proportion for a group closed before it was full, rounding up.
                let per_group = u32::from(n - k);
                let r = (sources * per_group).div_ceil(u32::from(k));
                r.clamp(1, u32::from(self.max_repairs())) as u8
            }
        };
        if repairs > 0 {
            let len = code::symbol_len(group.longest);
            let symbols: Vec<Vec<u8>> = group
                .payloads
                .iter()
                .map(|p| {
                    let mut s = Vec::with_capacity(len);
                    code::to_symbol(p, len, &mut s);
                    s
                })
                .collect();
            if let Some(parity) = code::encode(&symbols, usize::from(repairs)) {
                for (index, symbol) in parity.iter().enumerate() {
                    let frame = RepairFrame {
                        first_pn: group.first_pn,
                        members: group.members,
                        repairs,
                        index: index as u8,
                        symbol,
                    };
                    let mut encoded = Vec::with_capacity(RepairFrame::MAX_OVERHEAD + len);
                    frame.encode(&mut encoded);
                    let sources = GroupSources {
                        first_pn: group.first_pn,
                        members: group.members,
                    };
                    self.repairs.push_back(QueuedRepair {
                        at: now,
                        repair: Repair {
                            frame: encoded,
                            first_of: (index == 0).then_some(sources),
                        },
                    });
                }
                self.stats.groups += 1;
                self.stats.source_packets += u64::from(sources);
            }
        }
        self.spare.extend(group.payloads);
        self.spare.truncate(MAX_GROUP_SOURCES as usize);
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

    /// The repairs sent, each as (first source, bitmap, repairs, index, symbol length); each
    /// group's first one, and only that, names its sources for loss detection.
    fn repairs_of(sender: &mut FecSender, now: Instant) -> Vec<(u64, u32, u8, u8, usize)> {
        let mut out = Vec::new();
        while let Some(repair) = sender.next_repair(now, usize::MAX, Duration::from_secs(1)) {
            match FrameIter::new(&repair.frame).next() {
                Some(Ok(Frame::FecRepair(r))) => {
                    let first = r.index == 0;
                    let sources = GroupSources {
                        first_pn: r.first_pn,
                        members: r.members,
                    };
                    assert_eq!(repair.first_of, first.then_some(sources));
                    out.push((r.first_pn, r.members, r.repairs, r.index, r.symbol.len()))
                }
                other => panic!("not a repair frame: {other:?}"),
            }
        }
        out
    }

    #[test]
    fn a_lone_packet_gets_its_repairs_when_the_hold_ends() {
        let t0 = Instant::now();
        let hold = Duration::from_millis(5);
        let mut s = FecSender::default();
        s.add_source(
            t0,
            7,
            b"request",
            FecMode::Auto,
            PathLoss::independent(0.10),
            hold,
            false,
        );
        assert!(!s.has_repairs());
        assert_eq!(s.deadline(), Some(t0 + hold));
        s.on_timer(
            t0 + Duration::from_millis(4),
            FecMode::Auto,
            PathLoss::independent(0.10),
        );
        assert!(!s.has_repairs());
        s.on_timer(t0 + hold, FecMode::Auto, PathLoss::independent(0.10));
        // Two repairs for a lone packet at 10% loss, each a symbol of 7 + 2 bytes.
        assert_eq!(
            repairs_of(&mut s, t0 + hold),
            [(7, 1, 2, 0, 9), (7, 1, 2, 1, 9)]
        );
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn a_peer_is_sent_no_more_repairs_per_group_than_it_announced_or_an_older_one_decodes() {
        let t0 = Instant::now();
        let hold = Duration::from_millis(5);
        let bursty = PathLoss {
            rate: 0.05,
            mean_run: 3.0,
        };
        // Twelve sources under bursts want twelve repairs: a peer of this version gets them,
        // one that announced four gets four, and one that announced nothing (an older
        // version) the eight it decodes.
        for (announced, expected) in [(Some(MAX_GROUP_REPAIRS), 12), (Some(4), 4), (None, 8)] {
            let mut s = FecSender::default();
            if let Some(max) = announced {
                s.set_peer_max_repairs(max);
            }
            for pn in 0..12 {
                s.add_source(t0, pn, b"request", FecMode::Auto, bursty, hold, false);
            }
            s.on_timer(t0 + hold, FecMode::Auto, bursty);
            let repairs = repairs_of(&mut s, t0 + hold);
            assert_eq!(repairs.len(), expected, "{announced:?}");
            assert!(repairs.iter().all(|r| r.2 == expected as u8));
        }
        // A fixed code's repairs too: 4/20 to a peer decoding eight is 4/12.
        let mut s = FecSender::default();
        s.set_peer_max_repairs(8);
        let fixed = FecMode::Fixed {
            sources: 4,
            total: 20,
        };
        for pn in 0..4 {
            s.add_source(t0, pn, b"x", fixed, bursty, hold, false);
        }
        assert_eq!(repairs_of(&mut s, t0).len(), 8);
    }

    #[test]
    fn a_fixed_group_closes_when_full_and_a_short_one_gets_repairs_in_proportion() {
        let t0 = Instant::now();
        let hold = Duration::from_millis(5);
        let mode = FecMode::Fixed {
            sources: 4,
            total: 6,
        };
        let mut s = FecSender::default();
        for pn in [10, 11, 13, 14] {
            s.add_source(
                t0,
                pn,
                &[1; 100],
                mode,
                PathLoss::independent(0.0),
                hold,
                false,
            );
        }
        let full = repairs_of(&mut s, t0);
        assert_eq!(full.len(), 2);
        assert_eq!(full[0].1, 0b11011);
        s.add_source(
            t0,
            20,
            &[1; 100],
            mode,
            PathLoss::independent(0.0),
            hold,
            false,
        );
        s.on_timer(t0 + hold, mode, PathLoss::independent(0.0));
        assert_eq!(repairs_of(&mut s, t0 + hold).len(), 1);
    }

    #[test]
    fn a_group_never_spans_more_packet_numbers_than_its_bitmap() {
        let t0 = Instant::now();
        let mut s = FecSender::default();
        let hold = Duration::from_millis(5);
        s.add_source(
            t0,
            100,
            b"a",
            FecMode::Auto,
            PathLoss::independent(0.05),
            hold,
            false,
        );
        s.add_source(
            t0,
            100 + MAX_GROUP_SPAN,
            b"b",
            FecMode::Auto,
            PathLoss::independent(0.05),
            hold,
            false,
        );
        let first = repairs_of(&mut s, t0);
        assert!(first.iter().all(|r| r.0 == 100 && r.1 == 1));
        assert_eq!(s.deadline(), Some(t0 + hold));
    }

    #[test]
    fn stale_or_oversized_repairs_are_dropped() {
        let t0 = Instant::now();
        let mut s = FecSender::default();
        s.add_source(
            t0,
            1,
            &[0; 1000],
            FecMode::Auto,
            PathLoss::independent(0.05),
            Duration::ZERO,
            false,
        );
        s.on_timer(t0, FecMode::Auto, PathLoss::independent(0.05));
        assert!(s.has_repairs());
        assert_eq!(s.next_repair(t0, 100, Duration::from_secs(1)), None);
        s.add_source(
            t0,
            2,
            b"x",
            FecMode::Auto,
            PathLoss::independent(0.05),
            Duration::ZERO,
            false,
        );
        s.on_timer(t0, FecMode::Auto, PathLoss::independent(0.05));
        let late = t0 + Duration::from_millis(50);
        assert_eq!(s.next_repair(late, 2000, Duration::from_millis(20)), None);
    }
}
