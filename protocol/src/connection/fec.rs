//! The connection's side of forward error correction (see [`crate::fec`]): whether this
//! packet is a source, the window's hold, rebuilt packets processed as received, the loss this
//! end sees in the peer's packet numbers (reported to it), and the peer's report of ours, which
//! the repair count follows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::receive::Arrival;
use super::{Connection, State};
use crate::fec::{group_hold, FecMode, FecStats, GroupSources, PathLoss, Repair};
use crate::recovery::FecCover;
use crate::wire::frame::{LossReport, RepairFrame};

/// Stream data queued, in full packets, from which `auto` takes the sender for a bulk transfer
/// and protects nothing: retransmission serves bulk well, and repairs would take its bandwidth.
const BULK_PACKETS: u64 = 16;

/// Gaps in the peer's packet numbers waiting for the reordering allowance; beyond, a gap
/// counts as lost at once.
const MAX_ARRIVAL_GAPS: usize = 256;

/// The loss rate the repair count assumes at least, once the path counts as lossy: the
/// measurement is coarse at first, and a repair too few costs a round trip.
const ASSUMED_LOSS_FLOOR: f64 = 0.01;
/// `auto` protects from this loss (per mille) up...
const PROTECT_FROM_PER_MILLE: u16 = 3;
/// ...until the loss falls below this. Lower than datagram duplication's 1%: a request and its
/// reply are two packets, so at 0.5% loss one exchange in a hundred would wait a round trip,
/// and the p99 with it (on the impaired link at 1% loss, with a 1% threshold that the measured
/// loss crossed back and forth, 64 clients' p99 was 72 ms; with this one, 46 ms).
const PROTECT_UNTIL_PER_MILLE: u16 = 1;

/// The peer's last LOSS_REPORT and the verdicts taken from it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerLoss {
    report: LossReport,
    /// Whether `auto` protects (from 0.3%, until below 0.1%).
    lossy: bool,
    /// Whether the path loses enough for datagram duplication, by the thresholds of our own
    /// measure ([`LossRate::is_lossy`](crate::loss_rate::LossRate::is_lossy)).
    lossy_for_datagrams: bool,
}

impl Connection {
    /// Whether we send repairs on this connection: our mode is not `off` and the peer decodes.
    pub(super) fn fec_negotiated(&self) -> bool {
        self.config.fec != FecMode::Off
            && self.state == State::Established
            && self.peer_settings.as_ref().is_some_and(|s| s.fec)
    }

    /// Whether the path to the peer loses enough for `auto` to protect: by the peer's reports
    /// when it sends them (what repairs rebuilt never looks lost here), else by our own loss
    /// detection.
    fn path_lossy(&self) -> bool {
        match self.peer_loss {
            Some(peer) => peer.lossy,
            // Before the first report: our own verdict, which needs two losses and 1% (a
            // single early loss among few packets is no rate).
            None => self.loss_rate.is_lossy(),
        }
    }

    /// Whether the packet being built is a FEC source (repairs will cover it): FEC is in use,
    /// and (in `auto`) the path is lossy and the sender is not in a bulk transfer (more than
    /// [`BULK_PACKETS`] full packets' worth of stream data queued).
    pub(super) fn fec_protects(&self) -> bool {
        if !self.fec_negotiated() {
            return false;
        }
        match self.config.fec {
            FecMode::Off => false,
            FecMode::Fixed { .. } => true,
            FecMode::Auto => {
                let bulk = BULK_PACKETS * self.max_datagram as u64;
                self.path_lossy() && !self.streams.pending_data_at_least(bulk)
            }
        }
    }

    /// The loss the repair count is chosen for: the peer's report, else our own measure (which
    /// cannot tell bursts: taken as independent).
    fn fec_loss(&self) -> PathLoss {
        let (per_mille, mean_run_tenths) = match self.peer_loss {
            Some(peer) => (
                u32::from(peer.report.per_mille),
                peer.report.mean_run_tenths,
            ),
            None => (self.loss_rate.per_mille(), 10),
        };
        PathLoss {
            rate: (f64::from(per_mille) / 1000.0).max(ASSUMED_LOSS_FLOOR),
            mean_run: f64::from(mean_run_tenths) / 10.0,
        }
    }

    /// Packet `pn`, whose plaintext payload is `payload`, left as a source. Its repairs are
    /// computed at once if the connection is quiet (nothing queued, at most three packets in
    /// flight besides repairs): a lone message's repair follows it without waiting for the
    /// steady rate or the hold. Repairs do not count: a lone message's predecessor leaves up
    /// to eight behind it, which tell of no data to come, and a client that sends its next
    /// request as soon as the answer arrives would otherwise find them unacknowledged and
    /// wait out the hold.
    pub(super) fn on_fec_source_sent(
        &mut self,
        now: Instant,
        pn: u64,
        payload: &[u8],
        lone_allowed: bool,
    ) {
        let (mode, loss) = (self.config.fec, self.fec_loss());
        let hold = group_hold(self.rtt.smoothed());
        let quiet = lone_allowed
            && !self.streams.has_pending_data()
            && self.sent.bytes_in_flight() - self.sent.repair_bytes_in_flight()
                <= 3 * self.max_datagram as u64;
        self.fec_tx
            .add_source(now, pn, payload, mode, loss, hold, quiet);
    }

    /// The FEC timer fired: sources that no repair covers get theirs if their hold is over.
    pub(super) fn fec_hold_ended(&mut self, now: Instant) {
        let (mode, loss) = (self.config.fec, self.fec_loss());
        self.fec_tx.on_timer(now, mode, loss);
    }

    /// Whether the next packet is to carry an owed repair. In `auto`, stream data waiting goes
    /// first: it is other messages (a bulk transfer is not protected), whose latency is what
    /// the repairs are for, and a group's repairs sent ahead of it (up to
    /// [`MAX_GROUP_REPAIRS`](crate::wire::frame::MAX_GROUP_REPAIRS) packets) held every
    /// message behind them (simulator, 64 clients at 5% loss in runs of 3, twelve seeds: 2.1%
    /// of exchanges took over one and a half round trips with repairs first, 1.7% with data
    /// first). A `K/N` code protects bulk transfers too, whose data would hold their repairs
    /// back until stale: there repairs go first.
    pub(super) fn repair_due(&self) -> bool {
        self.fec_tx.has_repairs()
            && (self.config.fec != FecMode::Auto || !self.streams.has_pending_data())
    }

    /// The next repair frame owed, if one fits `room`. A repair older than half the RTT (at
    /// least 10 ms) is dropped: by then the retransmission is as near.
    pub(super) fn next_fec_repair(&mut self, now: Instant, room: usize) -> Option<Repair> {
        let stale = (self.rtt.smoothed() / 2).max(Duration::from_millis(10));
        self.fec_tx.next_repair(now, room, stale)
    }

    /// Packet `pn`, sent at `now`, carried a repair over `sources`: their loss counts from it
    /// now.
    pub(super) fn cover_fec_sources(&mut self, now: Instant, pn: u64, sources: GroupSources) {
        let cover = FecCover::Repaired {
            repair_pn: pn,
            at: now,
        };
        self.sent
            .cover_fec_sources(sources.first_pn, sources.members, cover);
    }

    /// A FEC_REPAIR frame arrived.
    pub(super) fn on_fec_repair(&mut self, repair: &RepairFrame<'_>) {
        let max_symbol = usize::from(self.config.largest_datagram());
        self.fec_rx.on_repair(repair, &self.received, max_symbol);
    }

    /// A packet arrived, the highest number yet, having skipped `skipped`: those are
    /// missing, and count as lost only if still missing after the reordering allowance
    /// ([`expire_arrival_gaps`](Self::expire_arrival_gaps)); a path that reorders must not look
    /// lossy (on the tests' reordering relay, gaps alone read as 16-90% loss).
    pub(super) fn on_arrival(&mut self, now: Instant, skipped: std::ops::Range<u64>) {
        self.arrival_loss.on_resolved(1, 0);
        let mut lost_at_once = 0;
        for gap in skipped {
            if self.arrival_gaps.len() >= MAX_ARRIVAL_GAPS {
                lost_at_once += 1;
                self.arrival_runs.on_lost(gap);
            } else {
                self.arrival_gaps.push_back((gap, now));
            }
        }
        if lost_at_once > 0 {
            self.arrival_loss
                .on_resolved(0, lost_at_once.min(u32::MAX as usize) as u32);
        }
        self.expire_arrival_gaps(now);
    }

    /// A packet below the highest number arrived late (reordered): it fills its gap. A packet
    /// rebuilt from repairs was lost on the way: its gap stays, to be counted lost with its
    /// neighbours when the allowance ends (counted now, before the gaps in front of it, it
    /// would cut their run in pieces).
    pub(super) fn on_gap_filled(&mut self, pn: u64, rebuilt: bool) {
        if rebuilt {
            return;
        }
        if let Some(at) = self.arrival_gaps.iter().position(|(gap, _)| *gap == pn) {
            self.arrival_gaps.remove(at);
            self.arrival_loss.on_resolved(1, 0);
        }
    }

    /// Gaps older than the reordering allowance (a quarter of the RTT, 2 to 25 ms) count as
    /// lost.
    fn expire_arrival_gaps(&mut self, now: Instant) {
        let allowance =
            (self.rtt.smoothed() / 4).clamp(Duration::from_millis(2), Duration::from_millis(25));
        let mut lost = 0;
        while let Some(&(pn, at)) = self.arrival_gaps.front() {
            if now.saturating_duration_since(at) < allowance {
                break;
            }
            self.arrival_gaps.pop_front();
            self.arrival_runs.on_lost(pn);
            lost += 1;
        }
        if lost > 0 {
            self.arrival_loss.on_resolved(0, lost);
        }
    }

    /// The loss to report to the peer in the ACK being written, if it changed since the last
    /// report; only while we decode its repairs (it sizes them by the report).
    pub(super) fn loss_report_owed(&mut self, now: Instant) -> Option<LossReport> {
        if self.config.fec == FecMode::Off || self.state != State::Established {
            return None;
        }
        self.expire_arrival_gaps(now);
        let report = LossReport {
            per_mille: self.arrival_loss.per_mille().min(1000) as u16,
            mean_run_tenths: self.arrival_runs.mean_tenths(),
        };
        // Also once a round trip unchanged: a report may be lost, or arrive before the peer
        // counts itself established, and the next change may be long in coming.
        let fresh = self
            .loss_reported
            .is_some_and(|(reported, at)| reported == report && now < at + self.rtt.smoothed());
        if fresh {
            return None;
        }
        self.loss_reported = Some((report, now));
        Some(report)
    }

    /// The peer reports how many of our packets it saw missing lately, and how they cluster.
    pub(super) fn on_loss_report(&mut self, report: LossReport) {
        let was = self.peer_loss.is_some_and(|peer| peer.lossy);
        let lossy = if was {
            report.per_mille >= PROTECT_UNTIL_PER_MILLE
        } else {
            report.per_mille >= PROTECT_FROM_PER_MILLE
        };
        let was = self.peer_loss.is_some_and(|peer| peer.lossy_for_datagrams);
        let lossy_for_datagrams = crate::loss_rate::verdict(u32::from(report.per_mille), was);
        self.peer_loss = Some(PeerLoss {
            report,
            lossy,
            lossy_for_datagrams,
        });
    }

    /// Whether the path loses enough packets for datagrams to be duplicated: by our own loss
    /// detection, or by the peer's report. Our own no longer sees the packets that repairs
    /// rebuilt (they are not declared lost), which a datagram without FEC would not have had.
    pub(super) fn path_lossy_for_datagrams(&self) -> bool {
        self.loss_rate.is_lossy() || self.peer_loss.is_some_and(|p| p.lossy_for_datagrams)
    }

    /// Processes the packets rebuilt from repairs as if they had arrived from `remote`.
    pub(super) fn process_rebuilt(&mut self, now: Instant, remote: SocketAddr) {
        while let Some((pn, payload)) = self.fec_rx.take_rebuilt() {
            if !self.is_closed() && !self.received.contains(pn) {
                let len = payload.len();
                self.process_packet(now, remote, pn, &payload, len, Arrival::Rebuilt);
            }
            self.fec_rx.recycle(payload);
        }
    }

    /// Both directions' counters.
    pub(super) fn fec_stats(&self) -> FecStats {
        let tx = self.fec_tx.stats();
        let rx = self.fec_rx.stats();
        FecStats {
            repair_packets_received: rx.repair_packets_received,
            packets_recovered: rx.packets_recovered,
            repairs_unusable: rx.repairs_unusable,
            ..tx
        }
    }
}
