//! Forward error correction: repair packets that let the receiver rebuild a lost packet of a
//! recent group without waiting a round trip for the retransmission.
//!
//! Under random loss a lost request or reply costs a retransmission round trip; for a small
//! message that is most of its latency. Retransmission stays the guarantee; FEC takes the round
//! trip out of the common case, at a cost in bytes that is chosen from the measured loss.
//!
//! **The code.** A systematic Reed-Solomon erasure code over GF(2^8) (`reed-solomon-erasure`):
//! `k` source packets and `r` repair symbols rebuild any `r` missing sources. XOR parity alone
//! rebuilds one loss per group, which at 10% loss leaves a group of four about 3% of its packets
//! to retransmit, three times too many for a p99 within one round trip; Reed-Solomon with two or
//! three repairs takes that below 0.3%. Groups are small (at most
//! [`MAX_GROUP_SOURCES`](crate::wire::frame::MAX_GROUP_SOURCES) sources and
//! [`MAX_GROUP_REPAIRS`](crate::wire::frame::MAX_GROUP_REPAIRS) repairs), where the classic
//! matrix code is fast: on the development machine (2 EPYC vCPUs), 1,200-byte symbols encode
//! in 1 us for 4+1, 4 us for 8+2 and 17 us for 16+4, and one lost source is rebuilt in 0.4 to
//! 5 us. `reed-solomon-simd` encodes 7 to 13 times faster but every decode costs at least
//! 125 us (a fixed transform over 65,536 entries), 25 to 300 times slower where it matters:
//! each rebuild is on a lost packet's path. A sliding-window code's advantage (no group
//! boundary) buys little here: groups close after a few milliseconds anyway.
//!
//! **What is protected.** Whole packets, as sent: a source packet carries a one-byte FEC_SOURCE
//! frame so that the receiver keeps a copy of its payload (and only of those); its symbol is
//! its plaintext payload prefixed with its length, zero-padded to the group's longest. A repair
//! is a FEC_REPAIR frame in a packet of its own, sealed like any other: a rebuilt payload is
//! as authentic as the packets it was computed from. A rebuilt packet is processed as if it
//! had arrived and acknowledged as received, so the sender's loss detection never retransmits
//! it (unless it declared it lost before the repair arrived: then the copy is redundant, not
//! late). Since rebuilt packets never look lost to the sender, the receiver measures the
//! path's loss itself, from gaps in the packet numbers it sees (before repair; a gap counts
//! once it has stayed open a quarter of a round trip, so reordering is not loss), and reports
//! it (LOSS_REPORT, per mille, when it changes and at least once a round trip); the sender
//! sizes its repairs by that report.
//!
//! **When and how much** ([`FecMode`]): `auto` protects while the path's measured loss is at
//! least 0.3% (until it is below 0.1%) and the sender is not in a bulk transfer (more than a
//! group's worth of stream data queued: bulk throughput is what retransmission is good at, and
//! redundancy would only take bandwidth from it). A group closes when it holds
//! [`MAX_GROUP_SOURCES`](crate::wire::frame::MAX_GROUP_SOURCES) sources, a short while after
//! its first ([`group_hold`]: a fifth of the RTT, 1 to 15 ms) so that many connections' small
//! messages share repairs, or at once when the connection goes quiet (nothing queued, at most
//! three packets in flight) so that a lone request's repair follows it immediately. The repair count is the least
//! that leaves a group unrecoverable with probability at most [`GROUP_FAILURE_TARGET`] at the
//! measured loss ([`repairs_needed`]). `K/N` protects every packet with `N - K` repairs per `K`
//! sources (fewer for a group closed early, in proportion), whatever the loss. `off` sends no
//! repairs; either end announcing that it does not decode turns repairs off on the connection.

mod code;
mod receive;
mod send;

use std::time::Duration;

pub(crate) use receive::FecReceiver;
pub(crate) use send::FecSender;

use crate::wire::frame::{RepairFrame, MAX_GROUP_REPAIRS, MAX_GROUP_SOURCES};

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
        if !(1..=MAX_GROUP_SOURCES as u8).contains(&k) {
            return Err(format!(
                "`{text}`: a group has 1 to {MAX_GROUP_SOURCES} source packets"
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

/// Forward error correction on one connection, each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FecStats {
    /// Groups closed with repairs.
    pub groups: u64,
    /// Source packets sent in those groups.
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
    /// Groups whose missing sources could not be rebuilt (too few repairs arrived, or a
    /// source's copy was no longer kept): those packets wait for their retransmission.
    pub groups_unrecoverable: u64,
}

/// Chance that a group loses more packets (sources and repairs together) than its repairs
/// can make up for, that the repair count aims below: 0.3%. Per group rather than per packet
/// because a group's failure is several messages' failure at once (64 clients' requests share
/// a group), and a message often straddles two packets. A lone packet gets one repair at 5%
/// loss (both lost: 0.25%) and two at 10% (0.1%); a group of 16 four at 5% (25%).
pub const GROUP_FAILURE_TARGET: f64 = 0.003;

/// Repairs for a group of `sources` at loss rate `loss` (0 to 1): the least count `r` for which
/// more than `r` of the `sources + r` packets are lost with probability at most
/// [`GROUP_FAILURE_TARGET`]; at most [`MAX_GROUP_REPAIRS`].
pub fn repairs_needed(sources: u32, loss: f64) -> u8 {
    let p = loss.clamp(0.0, 0.9);
    for r in 1..MAX_GROUP_REPAIRS {
        let sent = sources + u32::from(r);
        if binomial_at_least(sent, u32::from(r) + 1, p) <= GROUP_FAILURE_TARGET {
            return r;
        }
    }
    MAX_GROUP_REPAIRS
}

/// P(X >= at_least) for X ~ Binomial(n, p).
fn binomial_at_least(n: u32, at_least: u32, p: f64) -> f64 {
    let mut below = 0.0;
    let mut term = (1.0 - p).powi(n as i32); // P(X = 0)
    for i in 0..at_least.min(n + 1) {
        below += term;
        // P(X = i + 1) from P(X = i).
        term *= f64::from(n - i) / f64::from(i + 1) * p / (1.0 - p);
    }
    (1.0 - below).max(0.0)
}

/// How long a group stays open for more sources after its first: a fifth of the smoothed RTT,
/// 1 to 15 ms. Long enough that many connections' small messages share a group (64 clients on
/// a 40 ms path put about 13 requests in 8 ms, which three repairs protect at 5% loss: 23%),
/// short enough that a rebuilt packet still beats its retransmission by most of a round trip.
/// A lone message does not wait: its group closes as soon as nothing else is queued (see
/// [`FecSender::add_source`]).
pub fn group_hold(srtt: Duration) -> Duration {
    (srtt / 5).clamp(Duration::from_millis(1), Duration::from_millis(15))
}

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
        for bad in ["", "on", "4", "4/4", "0/1", "17/18", "2/11", "a/b", "4/3"] {
            assert!(FecMode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repairs_grow_with_loss_and_shrink_per_source_with_group_size() {
        // A lone packet: one repair at 5% (0.25% residual), two at 10%.
        assert_eq!(repairs_needed(1, 0.05), 1);
        assert_eq!(repairs_needed(1, 0.10), 2);
        assert_eq!(repairs_needed(1, 0.20), 3);
        // Sixteen sources at 5%: four repairs, 25%.
        assert_eq!(repairs_needed(16, 0.05), 4);
        assert!(repairs_needed(16, 0.10) <= MAX_GROUP_REPAIRS);
        assert_eq!(repairs_needed(16, 0.0), 1);
    }

    #[test]
    fn binomial_tail_matches_a_hand_computation() {
        // n = 4, p = 0.1: P(X >= 1) = 1 - 0.9^4.
        let p = binomial_at_least(4, 1, 0.1);
        assert!((p - (1.0 - 0.9f64.powi(4))).abs() < 1e-12, "{p}");
        assert_eq!(binomial_at_least(3, 4, 0.5), 0.0);
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
