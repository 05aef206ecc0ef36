//! The receiving side of [`crate::fec`]: copies of recent source packets, the repair symbols
//! of groups still missing a source, and the packets rebuilt from them.
//!
//! Memory is bounded whatever the peer sends: at most [`KEPT_SOURCES`] source copies and
//! [`PENDING_GROUPS`] groups (oldest dropped first), each symbol no longer than the largest
//! packet this end accepts.

use std::collections::VecDeque;

use super::{code, copy_from_spare, FecStats};
use crate::ranges::RangeSet;
use crate::wire::frame::RepairFrame;

/// Source packets whose payload is kept for groups still to be decoded.
pub const KEPT_SOURCES: usize = 64;
/// Groups whose repairs are kept while a source is missing.
pub const PENDING_GROUPS: usize = 16;

/// A group heard of through its repairs.
#[derive(Debug)]
struct PendingGroup {
    first_pn: u64,
    members: u32,
    symbol_len: usize,
    /// Repair symbols by index; as many slots as the group has repairs.
    repairs: Vec<Option<Vec<u8>>>,
}

impl PendingGroup {
    fn pns(&self) -> impl Iterator<Item = u64> + '_ {
        (0..32u64)
            .filter(|i| self.members & (1 << i) != 0)
            .map(|i| self.first_pn + i)
    }
}

/// Source copies, pending groups, rebuilt packets.
#[derive(Debug, Default)]
pub(crate) struct FecReceiver {
    sources: VecDeque<(u64, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    groups: VecDeque<PendingGroup>,
    rebuilt: VecDeque<(u64, Vec<u8>)>,
    stats: FecStats,
}

impl FecReceiver {
    /// Source packet `pn` (plaintext `payload`) arrived and was processed.
    pub(crate) fn on_source(&mut self, pn: u64, payload: &[u8], received: &RangeSet) {
        if self.sources.len() >= KEPT_SOURCES {
            if let Some((_, old)) = self.sources.pop_front() {
                self.spare.push(old);
            }
        }
        let copy = copy_from_spare(&mut self.spare, payload);
        self.sources.push_back((pn, copy));
        if !self.groups.is_empty() {
            self.decode(received);
        }
    }

    /// A repair symbol arrived. Symbols longer than `max_symbol`, or disagreeing with the
    /// group's earlier ones, are ignored.
    pub(crate) fn on_repair(
        &mut self,
        repair: &RepairFrame<'_>,
        received: &RangeSet,
        max_symbol: usize,
    ) {
        self.stats.repair_packets_received += 1;
        if repair.symbol.len() > max_symbol {
            return;
        }
        let found = self
            .groups
            .iter()
            .position(|g| g.first_pn == repair.first_pn && g.members == repair.members);
        let at = match found {
            Some(at) => at,
            None => {
                if self.groups.len() >= PENDING_GROUPS {
                    self.groups.pop_front();
                }
                self.groups.push_back(PendingGroup {
                    first_pn: repair.first_pn,
                    members: repair.members,
                    symbol_len: repair.symbol.len(),
                    repairs: vec![None; usize::from(repair.repairs)],
                });
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[at];
        if group.symbol_len != repair.symbol.len()
            || group.repairs.len() != usize::from(repair.repairs)
        {
            return;
        }
        group.repairs[usize::from(repair.index)] = Some(repair.symbol.to_vec());
        self.decode(received);
    }

    /// Decodes every group that can be: rebuilt packets join the queue; groups with nothing
    /// missing, or that can never be decoded, are dropped.
    fn decode(&mut self, received: &RangeSet) {
        let mut i = 0;
        while i < self.groups.len() {
            match self.try_group(i, received) {
                Outcome::Wait => i += 1,
                Outcome::Done => {
                    self.groups.remove(i);
                }
                Outcome::Unrecoverable => {
                    self.stats.groups_unrecoverable += 1;
                    self.groups.remove(i);
                }
            }
        }
    }

    fn try_group(&mut self, at: usize, received: &RangeSet) -> Outcome {
        let group = &self.groups[at];
        let mut shards: Vec<Option<Vec<u8>>> = Vec::with_capacity(32);
        let mut missing = Vec::new();
        for pn in group.pns() {
            if received.contains(pn) {
                match self.sources.iter().find(|(p, _)| *p == pn) {
                    Some((_, payload)) if code::symbol_len(payload.len()) <= group.symbol_len => {
                        let mut s = Vec::with_capacity(group.symbol_len);
                        code::to_symbol(payload, group.symbol_len, &mut s);
                        shards.push(Some(s));
                    }
                    // Received but not kept (or not a source, or longer than the group's
                    // symbols): the group cannot be decoded.
                    _ => return Outcome::Unrecoverable,
                }
            } else {
                missing.push((shards.len(), pn));
                shards.push(None);
            }
        }
        if missing.is_empty() {
            return Outcome::Done;
        }
        let arrived = group.repairs.iter().filter(|r| r.is_some()).count();
        if missing.len() > arrived {
            return Outcome::Wait;
        }
        let sources = shards.len();
        shards.extend(group.repairs.iter().cloned());
        if !code::reconstruct(&mut shards, sources) {
            return Outcome::Unrecoverable;
        }
        for (index, pn) in missing {
            let Some(payload) = shards[index].as_deref().and_then(code::from_symbol) else {
                return Outcome::Unrecoverable;
            };
            let copy = copy_from_spare(&mut self.spare, payload);
            self.rebuilt.push_back((pn, copy));
            self.stats.packets_recovered += 1;
        }
        Outcome::Done
    }

    /// A packet rebuilt from repairs, to be processed as if it had arrived.
    pub(crate) fn take_rebuilt(&mut self) -> Option<(u64, Vec<u8>)> {
        self.rebuilt.pop_front()
    }

    /// Returns a buffer [`take_rebuilt`](Self::take_rebuilt) handed out.
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < KEPT_SOURCES {
            self.spare.push(buf);
        }
    }

    pub(crate) fn stats(&self) -> FecStats {
        self.stats
    }
}

enum Outcome {
    Wait,
    Done,
    Unrecoverable,
}

#[cfg(test)]
mod tests {
    use super::super::FecSender;
    use super::*;
    use crate::fec::{FecMode, PathLoss};
    use crate::wire::frame::{Frame, FrameIter};
    use std::time::{Duration, Instant};

    /// Sends `payloads` as packets 0.. in one group with `repairs` fixed repairs; returns the
    /// encoded repair frames.
    fn group(payloads: &[Vec<u8>], repairs: u8) -> Vec<Vec<u8>> {
        let t0 = Instant::now();
        let mode = FecMode::Fixed {
            sources: payloads.len() as u8,
            total: payloads.len() as u8 + repairs,
        };
        let mut s = FecSender::default();
        for (pn, p) in payloads.iter().enumerate() {
            s.add_source(
                t0,
                pn as u64,
                p,
                mode,
                PathLoss::independent(0.0),
                Duration::from_millis(5),
                false,
            );
        }
        std::iter::from_fn(|| s.next_repair(t0, usize::MAX, Duration::from_secs(1)))
            .map(|repair| repair.frame)
            .collect()
    }

    fn repair(frame: &[u8]) -> RepairFrame<'_> {
        match FrameIter::new(frame).next() {
            Some(Ok(Frame::FecRepair(r))) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lost_sources_are_rebuilt_once_enough_repairs_arrive_in_any_order() {
        let payloads: Vec<Vec<u8>> = (0..5u8)
            .map(|i| vec![i; 100 + usize::from(i) * 50])
            .collect();
        let repairs = group(&payloads, 2);
        let mut rx = FecReceiver::default();
        let mut received = RangeSet::default();
        // Packets 1 and 3 lost; the first repair arrives before the last source.
        for pn in [0u64, 2] {
            received.insert_one(pn);
            rx.on_source(pn, &payloads[pn as usize], &received);
        }
        rx.on_repair(&repair(&repairs[1]), &received, 2000);
        assert!(rx.take_rebuilt().is_none());
        received.insert_one(4);
        rx.on_source(4, &payloads[4], &received);
        assert!(rx.take_rebuilt().is_none());
        rx.on_repair(&repair(&repairs[0]), &received, 2000);
        let mut rebuilt: Vec<_> = std::iter::from_fn(|| rx.take_rebuilt()).collect();
        rebuilt.sort();
        assert_eq!(
            rebuilt,
            vec![(1, payloads[1].clone()), (3, payloads[3].clone())]
        );
        assert_eq!(rx.stats().packets_recovered, 2);
    }

    #[test]
    fn a_complete_group_or_one_whose_source_was_not_kept_is_dropped() {
        let payloads: Vec<Vec<u8>> = (0..2u8).map(|i| vec![i; 10]).collect();
        let repairs = group(&payloads, 1);
        let mut rx = FecReceiver::default();
        let mut received = RangeSet::default();
        for pn in [0u64, 1] {
            received.insert_one(pn);
            rx.on_source(pn, &payloads[pn as usize], &received);
        }
        rx.on_repair(&repair(&repairs[0]), &received, 2000);
        assert!(rx.groups.is_empty());
        // Packet 0 arrived but its copy is gone: nothing can be rebuilt.
        let mut rx = FecReceiver::default();
        let mut received = RangeSet::default();
        received.insert_one(0);
        rx.on_repair(&repair(&repairs[0]), &received, 2000);
        assert!(rx.take_rebuilt().is_none());
        assert_eq!(rx.stats().groups_unrecoverable, 1);
    }

    #[test]
    fn memory_stays_bounded_against_a_flood_of_groups_and_sources() {
        let mut rx = FecReceiver::default();
        let received = RangeSet::default();
        let symbol = vec![0u8; 1400];
        for first_pn in 0..10_000u64 {
            let frame = RepairFrame {
                first_pn: first_pn * 40,
                members: 0b11,
                repairs: 2,
                index: 0,
                symbol: &symbol,
            };
            rx.on_repair(&frame, &received, 1500);
            rx.on_source(first_pn, &symbol, &received);
        }
        assert!(rx.groups.len() <= PENDING_GROUPS);
        assert!(rx.sources.len() <= KEPT_SOURCES);
        // Oversized or inconsistent symbols are ignored.
        let big = vec![0u8; 1600];
        let frame = RepairFrame {
            first_pn: 1 << 40,
            members: 1,
            repairs: 1,
            index: 0,
            symbol: &big,
        };
        rx.on_repair(&frame, &received, 1500);
        assert!(rx.groups.iter().all(|g| g.first_pn != 1 << 40));
    }
}
