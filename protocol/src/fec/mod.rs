//! Forward error correction: repair packets that let the receiver rebuild a lost packet of a
//! recent group without waiting a round trip for the retransmission.
//!
//! Under random loss a lost request or reply costs a retransmission round trip; for a small
//! message that is most of its latency. Retransmission stays the guarantee; FEC takes the round
//! trip out of the common case, at a cost in bytes that is chosen from the measured loss.
//!
//! **The code.** A sliding window of random linear combinations over GF(2^8), in the spirit
//! of RFC 8681's sliding-window codes: each repair is the sum of the recent source packets
//! (those of the last two holds, [`WINDOW_HOLDS`], at most 32 packet numbers) times
//! coefficients both ends derive from the repair's id, and the receiver solves the
//! overlapping repairs together (Gauss-Jordan elimination over the missing sources). In
//! `auto` a repair leaves every few sources, at a steady rate ([`repair_rate`]: what a block
//! of twice the window's sources, at most [`RATE_BLOCK`], would need), so a lone loss in a
//! busy flow is rebuilt by the next repair, a few packets later, and the bytes are what a
//! block of sixteen costs. An earlier version closed *groups* (a fifth of the RTT, or sixteen
//! sources) and sent a systematic Reed-Solomon code's repairs at the close: a loss waited for
//! its group to close, up to the whole hold, and larger groups that would have cost less
//! waited longer. Measured in the simulator with `ferry-bench`'s
//! traffic (1,000 sequential exchanges, then 64 clients starting together, 50 Mbit/s, 40 ms
//! round trip), the window against the groups: p99 46.3 against 48.8 ms at 5% loss and 47.4
//! against 50.0 ms at 10%, for 1.49 against 1.53 bytes sent per payload byte (1.73 against
//! 1.82 at 10%). XOR parity alone rebuilds one loss per repair, too few at 10% loss. Random
//! coefficients make a square system singular about once in 256, which costs a
//! retransmission, not a wrong packet; the field arithmetic is `reed-solomon-erasure`'s.
//!
//! **What is protected.** Whole packets, as sent: a source packet carries a one-byte FEC_SOURCE
//! frame so that the receiver keeps a copy of its payload (and only of those); its symbol is
//! its plaintext payload prefixed with its length, zero-padded to the longest a repair covers. A repair
//! is a FEC_REPAIR frame in a packet of its own, sealed like any other: a rebuilt payload is
//! as authentic as the packets it was computed from. A rebuilt packet is processed as if it
//! had arrived and acknowledged as received, and the sender's loss detection counts a source
//! from the last repair computed over it (its reorder and time thresholds and its timeout;
//! see [`FecCover`](crate::recovery::FecCover)), so a rebuilt packet is not sent again:
//! counted from the packet, the thresholds had declared nearly every lost source lost before
//! its rebuilt copy was acknowledged, and 5% of the stream bytes at 5% loss went twice;
//! counted from the first repair over it, 1.5% still did, as two losses in a window wait for
//! a later repair. Since
//! rebuilt packets never look lost to the sender, the receiver measures the
//! path's loss itself, from gaps in the packet numbers it sees (before repair; a gap counts
//! once it has stayed open a quarter of a round trip, so reordering is not loss), and reports
//! it (LOSS_REPORT: per mille, and the mean run of consecutive missing packet numbers, when
//! either changes and at least once a round trip); the sender sizes its repairs by that report.
//!
//! **When and how much** ([`FecMode`]): `auto` protects while the path's measured loss is at
//! least 0.3% (until it is below 0.1%) and the sender is not in a bulk transfer (sixteen full
//! packets' worth of stream data queued: bulk throughput is what retransmission is good at,
//! and redundancy would only take bandwidth from it). A repair over the window is computed
//! each time the steady rate adds up to one; sources that no repair covers yet get theirs at
//! once when the connection goes quiet (nothing queued, at most three packets besides repairs
//! in flight), so that a lone request's repair follows it immediately, and at the latest a
//! hold after the oldest of them ([`group_hold`]: a fifth of the RTT, 1 to 15 ms). Those
//! get as many repairs as a group of them needs to be lost with probability at most
//! [`GROUP_FAILURE_TARGET`] at the measured loss rate and run length ([`repairs_needed`]),
//! or as the window as a whole needs, less the repairs already computed over it. In `auto`,
//! stream data waiting to be sent goes before owed repairs: it is other messages, which the
//! repairs exist to speed up.
//!
//! **Bursts.** Repairs leave right behind their sources, so a path that loses packets in runs
//! takes a lost source's repairs with it more often than independent loss would: with runs of
//! mean 3 at 5% a repair is lost after a lost packet two times in three, and a lone message
//! needs seven repairs to keep its loss with them below 0.3%, against one; the steady rate
//! on such a path is fourteen repairs per sixteen sources, against four. That is what the
//! count gives, up to sixteen at once (measured in the simulator, bursty 5% with runs of 3:
//! 1.5 to 1.8% of exchanges wait for a retransmission, sequential or 64 clients, against 4 to
//! 11% without FEC), and it is expensive for lone messages (about six repair bytes per other
//! byte) and about one for one in a busy flow; `--fec K/N` bounds it where bytes matter more
//! than the tail. `K/N` protects every packet with `N - K` repairs per `K` sources (fewer for
//! a tail sent when the connection goes quiet, in proportion), whatever the loss. `off` sends
//! no repairs; either end announcing that it does not decode turns repairs off on the
//! connection; a peer of a version with the earlier block code announces nothing this version
//! reads, and gets tail duplication instead.

mod code;
mod receive;
mod send;

use std::time::Duration;

pub(crate) use receive::FecReceiver;
pub(crate) use send::{FecSender, GroupSources, Repair};

use crate::wire::frame::{RepairFrame, MAX_GROUP_REPAIRS};

/// When a connection sends repair packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FecMode {
    /// Never (and tell the peer we do not decode, so it sends none either).
    Off,
    /// While the path's measured loss is at least 0.3% and the traffic is not bulk.
    #[default]
    Auto,
    /// Always: groups of `sources` packets with `total - sources` repairs each.
    Fixed {
        /// Source packets per group (1 to 16).
        sources: u8,
        /// Sources plus repairs (more than `sources`, at most `sources + 8`).
        total: u8,
    },
}

impl FecMode {
    /// Parses `off`, `auto` or `K/N` (the flag's syntax).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "off" => return Ok(FecMode::Off),
            "auto" => return Ok(FecMode::Auto),
            _ => {}
        }
        let bad = || format!("`{text}`: expected off, auto or K/N (for example 4/6)");
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let k: u8 = k.trim().parse().map_err(|_| bad())?;
        let n: u8 = n.trim().parse().map_err(|_| bad())?;
        if !(1..=MAX_FIXED_SOURCES).contains(&k) {
            return Err(format!(
                "`{text}`: a group has 1 to {MAX_FIXED_SOURCES} source packets"
            ));
        }
        if n <= k || n - k > MAX_GROUP_REPAIRS {
            return Err(format!(
                "`{text}`: N is K plus 1 to {MAX_GROUP_REPAIRS} repair packets"
            ));
        }
        Ok(FecMode::Fixed {
            sources: k,
            total: n,
        })
    }
}

impl std::fmt::Display for FecMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FecMode::Off => f.write_str("off"),
            FecMode::Auto => f.write_str("auto"),
            FecMode::Fixed { sources, total } => write!(f, "{sources}/{total}"),
        }
    }
}

/// Most source packets per group of a `K/N` code.
pub const MAX_FIXED_SOURCES: u8 = 16;

/// Forward error correction on one connection, each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FecStats {
    /// Times repairs were computed over the window (one or more at once).
    pub repair_batches: u64,
    /// Source packets that those repairs were the first to cover.
    pub source_packets: u64,
    /// Repair packets sent.
    pub repair_packets_sent: u64,
    /// Bytes of those repair packets (UDP payload).
    pub repair_bytes_sent: u64,
    /// Repair symbols dropped unsent: they waited for the congestion window past their use
    /// (the retransmission was as near), or no longer fit a packet (the path's size fell).
    pub repairs_dropped: u64,
    /// Repair packets received.
    pub repair_packets_received: u64,
    /// Lost packets of the peer's rebuilt here from its repairs.
    pub packets_recovered: u64,
    /// Repairs received that were of no use: dropped with a source still missing that they
    /// covered (too few others arrived, or the peer stopped protecting those packets), or
    /// covering a source that arrived but whose copy was no longer kept. Those packets wait for
    /// their retransmission.
    pub repairs_unusable: u64,
}

/// Repairs per source that `auto` sends on a steady flow at `loss` while `window` sources
/// are in the window: what a block of twice that many would need ([`repairs_needed`]; a
/// source shares the repairs over it with those before and after it), at most
/// [`RATE_BLOCK`], spread one repair at a time. With 64 clients' messages (about 26 in a
/// window of two holds, or as many as 32 packet numbers hold) at 5% independent loss a
/// quarter: one repair every fourth source, each covering the window. A sparse flow pays
/// more per source: a datagram every 4 ms on a 40 ms path (four in the window) five repairs
/// per eight at 10% loss. Sixteen sources' rate (seven per sixteen) for every flow left
/// 0.85% of such datagrams lost (measured with a window of one hold, a datagram every 2 ms).
pub fn repair_rate(window: u32, loss: PathLoss) -> f64 {
    let block = (2 * window).clamp(1, RATE_BLOCK);
    f64::from(repairs_needed(block, loss, MAX_GROUP_REPAIRS)) / f64::from(block)
}

/// The block of sources the steady repair rate is taken from: what 64 clients on a 40 ms path
/// send in a little more than a hold (a fifth of the RTT).
pub const RATE_BLOCK: u32 = 16;

/// Chance that a group loses more packets (sources and repairs together) than its repairs
/// can make up for, that the repair count aims below: 0.3%. Per group rather than per packet
/// because a group's failure is several messages' failure at once (64 clients' requests share
/// a group), and a message often straddles two packets. Under independent loss a group of 16
/// gets four repairs at 5% (25%), which is the steady rate [`repair_rate`] spreads; a lone
/// packet one at 5% (both lost: 0.25%) and two at 10% (0.1%). Bursty loss takes a packet's
/// repairs with it more often, and needs more.
pub const GROUP_FAILURE_TARGET: f64 = 0.003;

/// The loss a repair count is chosen for: its rate, and how it clusters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathLoss {
    /// Share of packets lost, 0 to 1.
    pub rate: f64,
    /// Mean length of a run of consecutive lost packets. Independent losses at rate p make
    /// runs of 1 / (1 - p); anything up to that (1 included) is taken as independent.
    pub mean_run: f64,
}

impl PathLoss {
    /// Independent losses at `rate`.
    pub fn independent(rate: f64) -> Self {
        PathLoss {
            rate,
            mean_run: 1.0,
        }
    }
}

/// Repairs for a group of `sources` at `loss`: the least count `r` for which more than `r` of
/// the `sources + r` packets are lost with probability at most [`GROUP_FAILURE_TARGET`]; at
/// most `max_repairs` (at most [`MAX_GROUP_REPAIRS`]). Repairs leave right after their sources, so a burst that takes a
/// source tends to take the repairs behind it: with runs of mean 3 at 5% loss a lone packet
/// needs seven repairs (each is lost after a lost one two times in three), against one for
/// independent losses, and sixteen sources fourteen, against four.
pub fn repairs_needed(sources: u32, loss: PathLoss, max_repairs: u8) -> u8 {
    let max_repairs = max_repairs.clamp(1, MAX_GROUP_REPAIRS);
    for r in 1..max_repairs {
        if more_lost_than(sources + u32::from(r), r, loss) <= GROUP_FAILURE_TARGET {
            return r;
        }
    }
    max_repairs
}

/// P(more than `repairs` of `sent` consecutive packets lost) on a path losing `loss.rate` in
/// runs of mean `loss.mean_run`, modelled as a two-state Markov chain (Gilbert-Elliott, as
/// the simulator's link): after a lost packet the next is lost with probability
/// 1 - 1/mean_run, after one that arrived with the probability that keeps the long-run rate.
/// With runs of 1 / (1 - p) both probabilities are p, and this is the binomial tail.
fn more_lost_than(sent: u32, repairs: u8, loss: PathLoss) -> f64 {
    const CAP: usize = MAX_GROUP_REPAIRS as usize + 1;
    let p = loss.rate.clamp(0.0, 0.9);
    if p == 0.0 || sent == 0 {
        return 0.0;
    }
    let run = loss.mean_run.max(1.0 / (1.0 - p));
    let lost_after_lost = 1.0 - 1.0 / run;
    let lost_after_kept = p / (run * (1.0 - p));
    // Probability that the packets so far lost `j` of them (`cap`: more than `repairs`), the
    // last one lost (`lost[j]`) or arrived (`kept[j]`).
    let cap = usize::from(repairs) + 1;
    let (mut lost, mut kept) = ([0.0f64; CAP + 1], [0.0f64; CAP + 1]);
    lost[1.min(cap)] = p;
    kept[0] = 1.0 - p;
    for _ in 1..sent {
        let (mut next_lost, mut next_kept) = ([0.0f64; CAP + 1], [0.0f64; CAP + 1]);
        for j in 0..=cap {
            let up = (j + 1).min(cap);
            next_lost[up] += lost[j] * lost_after_lost + kept[j] * lost_after_kept;
            next_kept[j] += lost[j] * (1.0 - lost_after_lost) + kept[j] * (1.0 - lost_after_kept);
        }
        (lost, kept) = (next_lost, next_kept);
    }
    lost[cap] + kept[cap]
}

/// The longest a source waits for its first repair, and the unit of the window that repairs
/// cover ([`WINDOW_HOLDS`] of them): a fifth of the smoothed RTT, 1 to 15 ms. Long enough
/// that many connections' small messages share repairs (64 clients on a 40 ms path send
/// about 13 requests in 8 ms), short enough that a rebuilt packet still beats its
/// retransmission by most of a round trip.
/// A lone message does not wait: its repairs follow as soon as nothing else is queued (see
/// [`FecSender::add_source`]).
pub fn group_hold(srtt: Duration) -> Duration {
    (srtt / 5).clamp(Duration::from_millis(1), Duration::from_millis(15))
}

/// How many holds ([`group_hold`]) a source stays in the window that repairs cover, within
/// the window's bounds ([`MAX_GROUP_SPAN`](crate::wire::frame::MAX_GROUP_SPAN) packet
/// numbers, [`MAX_GROUP_SOURCES`](crate::wire::frame::MAX_GROUP_SOURCES) sources).
/// A source's first repair leaves within one hold; the repairs of the next hold cover it too,
/// so a run of losses that takes several sources and the repairs right behind them still
/// leaves enough equations over them (with one hold, the waits for a retransmission came in
/// clusters of 6 to 11 exchanges, each such a run). Simulator, 64 closed-loop clients on a
/// 40 ms path, 20 seeds of 3,000 exchanges: under bursty 5% loss (runs of mean 3) 0.91% of
/// exchanges waited for a retransmission and the p99 was 55.6 ms, against 1.23% and 82.0 ms
/// with a window of one hold; under random loss 0.44% against 0.53% at 5%, and 0.74%
/// against 1.03% at 10% (p99 53.8 against 81.2 ms); 4-8% fewer repair bytes, as the rate's
/// block reaches sixteen sources sooner. Its price: a repair is as long as the longest
/// source it covers, and a wider window holds a full packet more often (through a 50 Mbit/s
/// bottleneck, where messages share packets, 1,351 bytes per repair against 1,257: 0.352
/// repair bytes per other byte against 0.330). Four holds (10 seeds, exchanges over 58 ms)
/// waited less at 10% random loss (0.69% against 0.78%) and more under bursty loss (0.93%
/// against 0.88%), and declare a source no repair rebuilt lost later: its loss counts from
/// the latest repair over it.
pub const WINDOW_HOLDS: u32 = 2;

/// `bytes` in a buffer taken from `spare` (a new one if none is left): sources and rebuilt
/// packets reuse the buffers of earlier ones.
fn copy_from_spare(spare: &mut Vec<Vec<u8>>, bytes: &[u8]) -> Vec<u8> {
    let mut copy = spare.pop().unwrap_or_default();
    copy.clear();
    copy.extend_from_slice(bytes);
    copy
}

/// Room a source packet leaves unused, so that a repair of it fits a packet of the same size:
/// the repair frame's fields, the symbol's length prefix, and the FEC_SOURCE frame itself.
pub const SOURCE_RESERVE: usize = RepairFrame::MAX_OVERHEAD + 2 + 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print_back() {
        for text in ["off", "auto", "1/2", "4/6", "16/24"] {
            assert_eq!(FecMode::parse(text).unwrap().to_string(), text);
        }
        for bad in ["", "on", "4", "4/4", "0/1", "17/18", "2/19", "a/b", "4/3"] {
            assert!(FecMode::parse(bad).is_err(), "{bad}");
        }
    }

    const MAX: u8 = MAX_GROUP_REPAIRS;

    fn independent(rate: f64) -> PathLoss {
        PathLoss::independent(rate)
    }

    fn bursty(rate: f64, mean_run: f64) -> PathLoss {
        PathLoss { rate, mean_run }
    }

    #[test]
    fn repairs_grow_with_loss_and_shrink_per_source_with_group_size() {
        // A lone packet: one repair at 5% (0.25% residual), two at 10%.
        assert_eq!(repairs_needed(1, independent(0.05), MAX), 1);
        assert_eq!(repairs_needed(1, independent(0.10), MAX), 2);
        assert_eq!(repairs_needed(1, independent(0.20), MAX), 3);
        // Sixteen sources at 5%: four repairs, 25%.
        assert_eq!(repairs_needed(16, independent(0.05), MAX), 4);
        assert!(repairs_needed(16, independent(0.10), MAX) <= MAX);
        assert_eq!(repairs_needed(16, independent(0.0), MAX), 1);
    }

    #[test]
    fn bursts_take_more_repairs_and_runs_of_independent_loss_change_nothing() {
        // Runs of mean 3 at 5%: a lone packet and its r repairs all lost with probability
        // 0.05 (2/3)^r, below 0.3% from r = 7.
        assert_eq!(repairs_needed(1, bursty(0.05, 3.0), MAX), 7);
        // Sixteen sources: fourteen repairs (the steady rate on such a path: 14/16), never
        // more than asked for.
        assert_eq!(repairs_needed(16, bursty(0.05, 3.0), MAX), 14);
        assert_eq!(repairs_needed(16, bursty(0.05, 3.0), 8), 8);
        // The run length independent losses make is no burst.
        for p in [0.01, 0.05, 0.1, 0.2] {
            for k in [1, 4, 16] {
                assert_eq!(
                    repairs_needed(k, bursty(p, 1.0 / (1.0 - p)), MAX),
                    repairs_needed(k, independent(p), MAX)
                );
            }
        }
    }

    /// P(X >= at_least) for X ~ Binomial(n, p), summed term by term.
    fn binomial_at_least(n: u32, at_least: u32, p: f64) -> f64 {
        let mut below = 0.0;
        let mut term = (1.0 - p).powi(n as i32); // P(X = 0)
        for i in 0..at_least.min(n + 1) {
            below += term;
            term *= f64::from(n - i) / f64::from(i + 1) * p / (1.0 - p);
        }
        (1.0 - below).max(0.0)
    }

    #[test]
    fn the_chain_is_the_binomial_tail_for_independent_loss_and_matches_a_burst_by_hand() {
        for (n, r, p) in [(2, 1, 0.05), (5, 1, 0.1), (12, 4, 0.05), (24, 8, 0.2)] {
            let chain = more_lost_than(n, r, independent(p));
            let binomial = binomial_at_least(n, u32::from(r) + 1, p);
            assert!(
                (chain - binomial).abs() < 1e-12,
                "{n} {r} {p}: {chain} {binomial}"
            );
        }
        // Two packets, runs of mean 3 at 5%: both lost = 0.05 * 2/3.
        let both = more_lost_than(2, 1, bursty(0.05, 3.0));
        assert!((both - 0.05 * 2.0 / 3.0).abs() < 1e-12, "{both}");
    }

    #[test]
    fn the_hold_is_a_fifth_of_the_rtt_within_bounds() {
        assert_eq!(
            group_hold(Duration::from_millis(40)),
            Duration::from_millis(8)
        );
        assert_eq!(
            group_hold(Duration::from_micros(100)),
            Duration::from_millis(1)
        );
        assert_eq!(
            group_hold(Duration::from_secs(1)),
            Duration::from_millis(15)
        );
    }
}
