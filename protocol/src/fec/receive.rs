//! The receiving side of [`crate::fec`]: copies of recent source packets, the repairs still
//! waiting on missing sources (each an equation over them), and the packets rebuilt by solving
//! those equations together.
//!
//! A repair arrives as the sum of its sources times their coefficients; the sources that
//! arrived are subtracted at once, leaving an equation over the missing ones. Repairs of a
//! sliding window overlap, so the equations are solved together (Gauss-Jordan elimination of
//! their small coefficient matrix, then only the symbols of what it determines are computed):
//! two losses under three overlapping repairs come back even where no single repair holds
//! fewer than two of them.
//!
//! Memory and work are bounded whatever the peer sends: at most [`KEPT_SOURCES`] source
//! copies and [`PENDING_REPAIRS`] equations (oldest dropped first) over at most
//! [`MAX_UNKNOWNS`] missing packets, each symbol no longer than the largest packet this end
//! accepts.

use std::collections::VecDeque;

use super::{code, copy_from_spare, FecStats};
use crate::ranges::RangeSet;
use crate::wire::frame::{RepairFrame, MAX_GROUP_SPAN};

/// Source packets whose payload is kept for repairs still to come.
pub const KEPT_SOURCES: usize = 64;
/// Repairs kept while a source they cover is missing.
pub const PENDING_REPAIRS: usize = 32;
/// Most missing packets the kept repairs may cover between them; the oldest repairs go first.
pub const MAX_UNKNOWNS: usize = 64;

/// A repair with the sources that arrived subtracted: `symbol` is the sum of `terms`'
/// coefficients times their missing sources' symbols.
#[derive(Debug)]
struct Equation {
    /// Missing packet numbers, ascending, and their coefficients.
    terms: Vec<(u64, u8)>,
    symbol: Vec<u8>,
}

/// Source copies, pending equations, rebuilt packets.
#[derive(Debug, Default)]
pub(crate) struct FecReceiver {
    sources: VecDeque<(u64, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    equations: VecDeque<Equation>,
    rebuilt: VecDeque<(u64, Vec<u8>)>,
    stats: FecStats,
}

impl FecReceiver {
    /// Source packet `pn` (plaintext `payload`) arrived, or was rebuilt, and was processed.
    pub(crate) fn on_source(&mut self, pn: u64, payload: &[u8], received: &RangeSet) {
        if self.sources.len() >= KEPT_SOURCES {
            if let Some((_, old)) = self.sources.pop_front() {
                self.spare.push(old);
            }
        }
        let copy = copy_from_spare(&mut self.spare, payload);
        self.sources.push_back((pn, copy));
        if self.substitute(pn, payload) {
            self.solve(received);
        }
    }

    /// A repair symbol arrived. Symbols longer than `max_symbol` are ignored.
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
        // Repairs far behind this one cover sources the peer has stopped protecting: those
        // still missing wait for their retransmission.
        let horizon = repair.first_pn.saturating_sub(2 * MAX_GROUP_SPAN);
        let before = self.equations.len();
        self.equations
            .retain(|e| e.terms.last().is_some_and(|(pn, _)| *pn >= horizon));
        self.stats.repairs_unusable += (before - self.equations.len()) as u64;
        // Many repairs cover no missing source (at 5% loss one in four over 26 sources, one in
        // two over 13): those cost this look and nothing more.
        let missing =
            |pn: u64| !received.contains(pn) && self.rebuilt.iter().all(|(p, _)| *p != pn);
        if !repair.pns().any(missing) {
            return;
        }
        let mut symbol = repair.symbol.to_vec();
        let mut terms = Vec::new();
        for pn in repair.pns() {
            let c = code::coefficient(repair.id, pn);
            let rebuilt = self.rebuilt.iter().find(|(p, _)| *p == pn);
            if !received.contains(pn) && rebuilt.is_none() {
                terms.push((pn, c));
                continue;
            }
            match rebuilt.or_else(|| self.sources.iter().find(|(p, _)| *p == pn)) {
                Some((_, payload)) if code::symbol_len(payload.len()) <= symbol.len() => {
                    code::add_payload(&mut symbol, c, payload);
                }
                // Received but not kept (or longer than the symbol): of no use.
                _ => {
                    self.stats.repairs_unusable += 1;
                    return;
                }
            }
        }
        if terms.is_empty() {
            return;
        }
        if self.equations.len() >= PENDING_REPAIRS {
            self.equations.pop_front();
            self.stats.repairs_unusable += 1;
        }
        self.equations.push_back(Equation { terms, symbol });
        self.solve(received);
    }

    /// Takes a source that arrived or was rebuilt out of every equation; whether any had it.
    fn substitute(&mut self, pn: u64, payload: &[u8]) -> bool {
        let mut found = false;
        let len = code::symbol_len(payload.len());
        self.equations.retain_mut(|e| {
            let Ok(at) = e.terms.binary_search_by_key(&pn, |(p, _)| *p) else {
                return true;
            };
            found = true;
            if len > e.symbol.len() {
                // Not the source this repair was computed from: drop the equation.
                return false;
            }
            code::add_payload(&mut e.symbol, e.terms[at].1, payload);
            e.terms.remove(at);
            !e.terms.is_empty()
        });
        found
    }

    /// Solves the pending equations for every missing source they determine; those are
    /// rebuilt, queued, and taken out of the equations (which may determine more).
    fn solve(&mut self, received: &RangeSet) {
        loop {
            let unknowns = self.bound_unknowns();
            let rows = self.equations.len();
            if rows == 0 {
                return;
            }
            // The coefficient matrix, and the row operations applied to it (starting as the
            // identity), both brought to reduced row echelon form together.
            let mut matrix: Vec<Vec<u8>> = self
                .equations
                .iter()
                .map(|e| {
                    let mut row = vec![0u8; unknowns.len()];
                    for (pn, c) in &e.terms {
                        if let Ok(col) = unknowns.binary_search(pn) {
                            row[col] = *c;
                        }
                    }
                    row
                })
                .collect();
            let mut ops: Vec<Vec<u8>> = (0..rows)
                .map(|i| (0..rows).map(|j| u8::from(i == j)).collect())
                .collect();
            let mut pivots = Vec::new();
            let mut next_row = 0;
            for col in 0..unknowns.len() {
                let Some(found) = (next_row..rows).find(|&r| matrix[r][col] != 0) else {
                    continue;
                };
                matrix.swap(next_row, found);
                ops.swap(next_row, found);
                let inv = code::inverse(matrix[next_row][col]);
                scale_row(&mut matrix[next_row], inv);
                scale_row(&mut ops[next_row], inv);
                for r in 0..rows {
                    let factor = matrix[r][col];
                    if r != next_row && factor != 0 {
                        let (pivot_m, row_m) = two_rows(&mut matrix, next_row, r);
                        code::add_scaled(row_m, factor, pivot_m);
                        let (pivot_o, row_o) = two_rows(&mut ops, next_row, r);
                        code::add_scaled(row_o, factor, pivot_o);
                    }
                }
                pivots.push((next_row, col));
                next_row += 1;
                if next_row == rows {
                    break;
                }
            }
            // A pivot row with nothing else in it gives its unknown: the combination of the
            // equations' symbols that its row operations name.
            let mut solved = Vec::new();
            for (row, col) in pivots {
                if matrix[row].iter().filter(|c| **c != 0).count() != 1 {
                    continue;
                }
                let len = (0..rows)
                    .filter(|&i| ops[row][i] != 0)
                    .map(|i| self.equations[i].symbol.len())
                    .max()
                    .unwrap_or(0);
                let mut symbol = vec![0u8; len];
                for (i, e) in self.equations.iter().enumerate() {
                    let c = ops[row][i];
                    if c != 0 {
                        code::add_scaled(&mut symbol[..e.symbol.len()], c, &e.symbol);
                    }
                }
                solved.push((unknowns[col], symbol));
            }
            if solved.is_empty() {
                return;
            }
            for (pn, symbol) in solved {
                let Some(payload) = code::from_symbol(&symbol) else {
                    // Inconsistent repairs (not computed from the sources that arrived).
                    self.stats.repairs_unusable += 1;
                    self.equations
                        .retain(|e| e.terms.iter().all(|(p, _)| *p != pn));
                    continue;
                };
                if received.contains(pn) {
                    // Named as missing though it arrived (it was no source): the equations
                    // that name it cannot be taken apart.
                    self.stats.repairs_unusable += 1;
                    self.equations
                        .retain(|e| e.terms.iter().all(|(p, _)| *p != pn));
                    continue;
                }
                if let Some(at) = self.rebuilt.iter().position(|(p, _)| *p == pn) {
                    // Rebuilt already, and named again by a repair since.
                    let (_, known) = std::mem::take(&mut self.rebuilt[at]);
                    self.substitute(pn, &known);
                    self.rebuilt[at] = (pn, known);
                    continue;
                }
                let copy = copy_from_spare(&mut self.spare, payload);
                self.substitute(pn, &copy);
                self.rebuilt.push_back((pn, copy));
                self.stats.packets_recovered += 1;
            }
        }
    }

    /// Missing packet numbers the pending equations name, ascending.
    fn unknowns(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .equations
            .iter()
            .flat_map(|e| e.terms.iter().map(|(pn, _)| *pn))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Drops the oldest equations while they name more than [`MAX_UNKNOWNS`] missing packets;
    /// returns those the rest name, ascending.
    fn bound_unknowns(&mut self) -> Vec<u64> {
        loop {
            let unknowns = self.unknowns();
            if unknowns.len() <= MAX_UNKNOWNS {
                return unknowns;
            }
            self.equations.pop_front();
            self.stats.repairs_unusable += 1;
        }
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

/// `row *= c` over GF(2^8).
fn scale_row(row: &mut [u8], c: u8) {
    for x in row {
        *x = code::mul(*x, c);
    }
}

/// Rows `pivot` and `other` (distinct) of `rows`, the first shared and the second mutable.
fn two_rows(rows: &mut [Vec<u8>], pivot: usize, other: usize) -> (&[u8], &mut [u8]) {
    if pivot < other {
        let (low, high) = rows.split_at_mut(other);
        (&low[pivot], &mut high[0])
    } else {
        let (low, high) = rows.split_at_mut(pivot);
        (&high[0], &mut low[other])
    }
}

#[cfg(test)]
mod tests {
    use super::super::FecSender;
    use super::*;
    use crate::fec::{FecMode, PathLoss};
    use crate::wire::frame::{Frame, FrameIter};
    use std::time::{Duration, Instant};

    /// Sends `payloads` as packets 0.. through a sender at a steady 10% loss rate (about one
    /// repair per two sources, each covering all of them) and, quiet at the end, the repairs
    /// the tail needs; returns the encoded repair frames in order.
    fn window(payloads: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let t0 = Instant::now();
        let mut s = FecSender::default();
        for (pn, p) in payloads.iter().enumerate() {
            let quiet = pn + 1 == payloads.len();
            s.add_source(
                t0,
                pn as u64,
                p,
                FecMode::Auto,
                PathLoss::independent(0.10),
                Duration::from_millis(5),
                quiet,
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

    fn payloads(count: u8) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| vec![i; 100 + usize::from(i) * 50])
            .collect()
    }

    /// Feeds the sources not `lost` and then the repairs in `order`; returns what was rebuilt,
    /// sorted.
    fn deliver(
        payloads: &[Vec<u8>],
        repairs: &[Vec<u8>],
        lost: &[u64],
        order: &[usize],
    ) -> Vec<(u64, Vec<u8>)> {
        let mut rx = FecReceiver::default();
        let mut received = RangeSet::default();
        for (pn, p) in payloads.iter().enumerate() {
            let pn = pn as u64;
            if !lost.contains(&pn) {
                received.insert_one(pn);
                rx.on_source(pn, p, &received);
            }
        }
        for &i in order {
            rx.on_repair(&repair(&repairs[i]), &received, 2000);
        }
        let mut rebuilt: Vec<_> = std::iter::from_fn(|| rx.take_rebuilt()).collect();
        rebuilt.sort();
        rebuilt
    }

    #[test]
    fn lost_sources_are_rebuilt_from_overlapping_repairs_in_any_order() {
        let payloads = payloads(8);
        let repairs = window(&payloads);
        assert!(repairs.len() >= 4, "{}", repairs.len());
        let all: Vec<usize> = (0..repairs.len()).collect();
        let reversed: Vec<usize> = all.iter().rev().copied().collect();
        for lost in [vec![0u64], vec![1, 6], vec![0, 3, 7]] {
            for order in [&all, &reversed] {
                let rebuilt = deliver(&payloads, &repairs, &lost, order);
                let expected: Vec<_> = lost
                    .iter()
                    .map(|&pn| (pn, payloads[pn as usize].clone()))
                    .collect();
                assert_eq!(rebuilt, expected, "lost {lost:?}");
            }
        }
    }

    #[test]
    fn a_source_arriving_after_its_repair_completes_the_equation() {
        let payloads = payloads(2);
        let t0 = Instant::now();
        let mut s = FecSender::default();
        let loss = PathLoss::independent(0.05);
        let hold = Duration::from_millis(5);
        s.add_source(t0, 0, &payloads[0], FecMode::Auto, loss, hold, false);
        s.add_source(t0, 1, &payloads[1], FecMode::Auto, loss, hold, true);
        // The last repair covers both.
        let frame = std::iter::from_fn(|| s.next_repair(t0, usize::MAX, hold))
            .last()
            .unwrap()
            .frame;
        // Packet 1's repair overtakes packet 0, which comes late; packet 1 is lost.
        let mut rx = FecReceiver::default();
        let mut received = RangeSet::default();
        rx.on_repair(&repair(&frame), &received, 2000);
        assert!(rx.take_rebuilt().is_none());
        received.insert_one(0);
        rx.on_source(0, &payloads[0], &received);
        assert_eq!(rx.take_rebuilt(), Some((1, payloads[1].clone())));
        assert_eq!(rx.stats().packets_recovered, 1);
    }

    #[test]
    fn more_losses_than_repairs_rebuild_nothing_wrong_and_a_lost_copy_counts_as_unusable() {
        let payloads = payloads(8);
        let repairs = window(&payloads);
        let lost: Vec<u64> = (0..8).collect();
        let last_two = [repairs.len() - 2, repairs.len() - 1];
        let rebuilt = deliver(&payloads, &repairs, &lost, &last_two);
        assert!(rebuilt.is_empty());
        // Packet 1 is missing, and packet 0 arrived but its copy is gone: a repair over both is
        // of no use.
        let mut rx = FecReceiver::default();
        let mut received = RangeSet::default();
        received.insert_one(0);
        let symbol = [0x11u8; 40];
        let over_both = RepairFrame {
            first_pn: 0,
            members: 0b11,
            id: 3,
            symbol: &symbol,
        };
        rx.on_repair(&over_both, &received, 2000);
        assert!(rx.take_rebuilt().is_none());
        assert_eq!(rx.stats().repairs_unusable, 1);
        // A repair over packets that all arrived is not needed, and not counted.
        received.insert_one(1);
        rx.on_repair(&over_both, &received, 2000);
        assert_eq!(rx.stats().repairs_unusable, 1);
        assert!(rx.equations.is_empty());
    }

    #[test]
    fn memory_and_work_stay_bounded_against_a_flood_of_repairs_and_sources() {
        let mut rx = FecReceiver::default();
        let received = RangeSet::default();
        let symbol = vec![0x55u8; 1400];
        for i in 0..5_000u64 {
            let frame = RepairFrame {
                first_pn: 1_000_000 + i * 3,
                members: 0xffff_ffff,
                id: i,
                symbol: &symbol,
            };
            rx.on_repair(&frame, &received, 1500);
            rx.on_source(i, &symbol, &received);
            assert!(rx.equations.len() <= PENDING_REPAIRS);
            assert!(rx.unknowns().len() <= MAX_UNKNOWNS);
        }
        assert!(rx.sources.len() <= KEPT_SOURCES);
        // Oversized symbols are ignored.
        let big = vec![0u8; 1600];
        let frame = RepairFrame {
            first_pn: 1 << 40,
            members: 1,
            id: 0,
            symbol: &big,
        };
        rx.on_repair(&frame, &received, 1500);
        assert!(rx
            .equations
            .iter()
            .all(|e| e.terms.iter().all(|(pn, _)| *pn != 1 << 40)));
    }
}
