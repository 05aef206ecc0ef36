//! Path MTU discovery, after RFC 8899 (DPLPMTUD): how large the packets of a connection may be.
//!
//! A connection starts at its configured size (1,350 bytes by default, which crosses nearly
//! every path) and, once established, probes upward with packets that carry only a PING and
//! padding: the peer acknowledges a probe that arrived, so an acknowledged probe proves the
//! path carries that size. The first probe asks for the ceiling at once (the smaller of this
//! end's `max_probed_datagram_size` and what the peer accepts: 1,452 bytes by default, what an
//! Ethernet MTU of 1,500 leaves under IPv6 and UDP), since a path that carries it is the common
//! case; a probe lost [`MAX_PROBES`] times marks its size too large, and a binary search between
//! the largest good and the smallest bad size follows, until they are [`SEARCH_DONE_WITHIN`]
//! bytes apart. A completed search starts again after [`RAISE_INTERVAL`] (RFC 8899's
//! PMTU_RAISE_TIMER), as paths change.
//!
//! Probes stay out of loss recovery and congestion control: they are tracked here, not as
//! packets in flight, so a lost probe is neither retransmitted nor read as congestion (RFC 8899
//! section 3, requirement 7). A probe counts as lost once [`probe_timeout`] passes unanswered.
//!
//! Black holes: a path that stops carrying the current size (a route change, a tunnel added)
//! shows up as large packets lost while nothing large is acknowledged. After
//! [`BLACK_HOLE_EVENTS`] such loss events in a row, the size falls back to the base (1,200
//! bytes, which every IPv6 path carries) and a new search starts from there. Under random loss
//! the acknowledgements of large packets between two losses reset the count, so bulk transfers
//! through lossy paths do not fall back. A loss event is counted once per burst, as congestion
//! control counts one per recovery: a loss of packets all sent before the last counted event
//! was detected belongs to it. A path that loses packets in runs (mean 3 in the simulator's
//! bursty 5%) has a run's packets declared lost one by one as the acknowledgements after them
//! come in; counted one event each, they made a black hole out of one run in the simulator's
//! bursty FEC test (about 5,400 exchanges). A black hole loses what is sent after each
//! detection too, so its events still follow one another a round trip apart.

use std::time::{Duration, Instant};

/// Size every path is assumed to carry (RFC 8899's BASE_PLPMTU; IPv6's minimum MTU less its
/// and UDP's headers).
pub const BASE_DATAGRAM_SIZE: u16 = 1200;
/// A size is too large once a probe of it is lost this many times (RFC 8899's MAX_PROBES).
pub const MAX_PROBES: u8 = 3;
/// The search ends when the largest good and the smallest bad size are this close.
pub const SEARCH_DONE_WITHIN: u16 = 8;
/// A completed search starts again after this long.
pub const RAISE_INTERVAL: Duration = Duration::from_secs(600);
/// Loss events of large packets, with none acknowledged in between, that mean a black hole.
pub const BLACK_HOLE_EVENTS: u8 = 3;

/// How long a probe may go unanswered before it counts as lost: two round trips and the
/// peer's acknowledgement delay, at least 50 ms.
pub fn probe_timeout(srtt: Duration, peer_ack_delay: Duration) -> Duration {
    (srtt * 2 + peer_ack_delay).max(Duration::from_millis(50))
}

/// A probe in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probe {
    pn: u64,
    size: u16,
    deadline: Instant,
}

/// One connection's path MTU state.
#[derive(Debug, Clone)]
pub struct Mtud {
    /// The size packets are built at now.
    current: u16,
    /// Largest size probing may reach.
    ceiling: u16,
    /// Smallest size known (or assumed) too large; `ceiling + 1` until a probe fails.
    too_large: u16,
    probe: Option<Probe>,
    /// Times a probe of the size being tried was lost.
    losses_at_size: u8,
    /// While the search is done: when it starts again.
    raise_at: Option<Instant>,
    /// Loss events of large packets since one was last acknowledged.
    large_loss_events: u8,
    /// When the last loss event of large packets was counted.
    large_loss_event_at: Option<Instant>,
    /// Black holes detected, for statistics.
    black_holes: u64,
}

impl Mtud {
    /// Starts at `initial` bytes; probes up to `ceiling` (equal to `initial`: no probing).
    pub fn new(initial: u16, ceiling: u16) -> Self {
        let ceiling = ceiling.max(initial);
        Self {
            current: initial,
            ceiling,
            too_large: ceiling.saturating_add(1),
            probe: None,
            losses_at_size: 0,
            raise_at: None,
            large_loss_events: 0,
            large_loss_event_at: None,
            black_holes: 0,
        }
    }

    /// The size packets are built at now.
    pub fn current(&self) -> u16 {
        self.current
    }

    /// Black holes detected so far.
    pub fn black_holes(&self) -> u64 {
        self.black_holes
    }

    /// The size the next probe should have, if one is due at `now` (none in flight, the
    /// search not done).
    pub fn next_probe(&mut self, now: Instant) -> Option<u16> {
        if self.probe.is_some() || self.raise_at.is_some() {
            return None;
        }
        if self.too_large.saturating_sub(self.current) <= SEARCH_DONE_WITHIN
            || self.current >= self.ceiling
        {
            self.raise_at = Some(now + RAISE_INTERVAL);
            return None;
        }
        // The ceiling first (most paths carry it), then halfway between good and bad.
        Some(if self.too_large > self.ceiling {
            self.ceiling
        } else {
            self.current + (self.too_large - self.current) / 2
        })
    }

    /// A probe of `size` bytes left as packet `pn`; it must be answered by `deadline`.
    pub fn on_probe_sent(&mut self, pn: u64, size: u16, deadline: Instant) {
        self.probe = Some(Probe { pn, size, deadline });
    }

    /// The packet number of the probe in flight.
    pub fn probe_pn(&self) -> Option<u64> {
        self.probe.map(|p| p.pn)
    }

    /// An ACK frame covered `pn`: if it is the probe's, the path carries its size, which
    /// becomes the current size (returned).
    pub fn on_acked(&mut self, pn: u64) -> Option<u16> {
        let probe = self.probe.filter(|p| p.pn == pn)?;
        self.probe = None;
        self.losses_at_size = 0;
        self.large_loss_events = 0;
        if probe.size > self.current {
            self.current = probe.size;
        }
        Some(self.current)
    }

    /// When the probe in flight counts as lost, or the search starts again.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.probe.map(|p| p.deadline).or(self.raise_at)
    }

    /// Time passed: a probe unanswered by its deadline is lost (its third loss marks its size
    /// as too large); a completed search starts again once its raise interval is over.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.raise_at.is_some_and(|at| now >= at) {
            self.raise_at = None;
            self.too_large = self.ceiling.saturating_add(1);
            self.losses_at_size = 0;
        }
        let Some(probe) = self.probe.filter(|p| now >= p.deadline) else {
            return;
        };
        self.probe = None;
        self.losses_at_size += 1;
        if self.losses_at_size >= MAX_PROBES {
            self.losses_at_size = 0;
            self.too_large = self.too_large.min(probe.size);
        }
    }

    /// A packet of `size` bytes (not a probe) was acknowledged.
    pub fn on_packet_acked(&mut self, size: usize) {
        if size > usize::from(BASE_DATAGRAM_SIZE) {
            self.large_loss_events = 0;
        }
    }

    /// Packets were declared lost at `now` at once, each as its size and when it was sent
    /// (probes excluded). Returns the new current size when this looks like a black hole.
    pub fn on_packets_lost(
        &mut self,
        now: Instant,
        lost: impl IntoIterator<Item = (usize, Instant)>,
    ) -> Option<u16> {
        if self.current <= BASE_DATAGRAM_SIZE {
            return None;
        }
        let newest_large = lost
            .into_iter()
            .filter(|&(size, _)| size > usize::from(BASE_DATAGRAM_SIZE))
            .map(|(_, sent)| sent)
            .max()?;
        if self
            .large_loss_event_at
            .is_some_and(|at| newest_large <= at)
        {
            // Sent before the last event was seen: the same burst.
            return None;
        }
        self.large_loss_event_at = Some(now);
        self.large_loss_events += 1;
        if self.large_loss_events < BLACK_HOLE_EVENTS {
            return None;
        }
        // The path no longer carries what it did: back to the base, and search again, below
        // the size that failed.
        self.black_holes += 1;
        self.large_loss_events = 0;
        self.large_loss_event_at = None;
        self.too_large = self.current;
        self.current = BASE_DATAGRAM_SIZE;
        self.probe = None;
        self.losses_at_size = 0;
        self.raise_at = None;
        Some(self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs probes against a path that carries `path` bytes; returns the size reached and
    /// the probes sent.
    fn search(m: &mut Mtud, now: &mut Instant, path: u16) -> usize {
        let mut probes = 0;
        let mut pn = 0;
        while let Some(size) = m.next_probe(*now) {
            probes += 1;
            assert!(probes < 64, "the search does not end");
            pn += 1;
            m.on_probe_sent(pn, size, *now + Duration::from_millis(100));
            if size <= path {
                m.on_acked(pn);
            } else {
                *now += Duration::from_millis(100);
                m.on_timeout(*now);
            }
        }
        probes
    }

    #[test]
    fn a_path_that_carries_the_ceiling_is_found_with_one_probe() {
        let mut now = Instant::now();
        let mut m = Mtud::new(1350, 1452);
        assert_eq!(search(&mut m, &mut now, 1500), 1);
        assert_eq!(m.current(), 1452);
    }

    #[test]
    fn a_smaller_path_is_found_by_binary_search_within_a_few_bytes() {
        let mut now = Instant::now();
        let mut m = Mtud::new(1350, 1452);
        let probes = search(&mut m, &mut now, 1420);
        assert!(
            (1420 - SEARCH_DONE_WITHIN..=1420).contains(&m.current()),
            "{}",
            m.current()
        );
        // Three losses at the ceiling, then a handful of halvings.
        assert!(probes <= 3 + 8, "{probes} probes");
        // Done: no probe until the raise interval has passed, then the search starts over.
        assert_eq!(m.next_probe(now), None);
        assert_eq!(m.next_deadline(), Some(now + RAISE_INTERVAL));
        m.on_timeout(now + RAISE_INTERVAL);
        assert_eq!(m.next_deadline(), None);
        assert_eq!(m.next_probe(now + RAISE_INTERVAL), Some(1452));
    }

    #[test]
    fn no_probing_without_room_above() {
        let mut m = Mtud::new(1350, 1350);
        assert_eq!(m.next_probe(Instant::now()), None);
    }

    /// `m` after its probe of 1,452 bytes was acknowledged.
    fn at_1452(now: Instant) -> Mtud {
        let mut m = Mtud::new(1350, 1452);
        m.on_probe_sent(1, 1452, now);
        m.on_acked(1);
        assert_eq!(m.current(), 1452);
        m
    }

    #[test]
    fn large_packets_lost_with_none_acknowledged_mean_a_black_hole() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut m = at_1452(t0);
        // Random loss: a large packet acknowledged between loss events, a round trip apart.
        // Small lost packets are no sign.
        for round in 0..10 {
            let now = t0 + ms(50 * round);
            assert_eq!(m.on_packets_lost(now, [(1452, now - ms(40))]), None);
            assert_eq!(m.on_packets_lost(now, [(300, now)]), None);
            m.on_packet_acked(1452);
        }
        // Small packets (ACKs, PINGs) still get through; large ones sent after each loss was
        // seen are lost too.
        let t1 = t0 + ms(1000);
        assert_eq!(m.on_packets_lost(t1, [(1452, t1 - ms(40))]), None);
        m.on_packet_acked(60);
        let t2 = t1 + ms(50);
        assert_eq!(m.on_packets_lost(t2, [(1452, t1 + ms(5))]), None);
        let t3 = t2 + ms(50);
        let lost = [(60, t3), (1452, t2 + ms(5)), (1452, t1)];
        assert_eq!(m.on_packets_lost(t3, lost), Some(BASE_DATAGRAM_SIZE));
        assert_eq!(m.black_holes(), 1);
        // The search starts again, below the size that failed.
        let probe = m.next_probe(t3).unwrap();
        assert!(probe < 1452 && probe > BASE_DATAGRAM_SIZE, "{probe}");
    }

    #[test]
    fn a_run_of_losses_declared_one_by_one_is_one_event_not_a_black_hole() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut m = at_1452(t0);
        // Runs of five packets sent back to back, all lost; the acknowledgements of those
        // after them declare them lost one at a time, each after the last was seen.
        for run in 0..3 {
            let sent = t0 + ms(100 * run);
            for i in 0..5 {
                let seen = sent + ms(45 + i);
                assert_eq!(m.on_packets_lost(seen, [(1452, sent + ms(i))]), None);
            }
            m.on_packet_acked(1452);
        }
        assert_eq!((m.current(), m.black_holes()), (1452, 0));
    }
}
