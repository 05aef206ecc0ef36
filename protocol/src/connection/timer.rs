//! The connection's timers as one small table, instead of scattered `Instant` fields.

use std::time::Instant;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// No packet from the peer for the idle timeout (or the handshake took too long).
    Idle,
    /// Loss detection: time threshold or retransmission timeout.
    Loss,
    /// Nothing sent for the keepalive interval, or (a client with open streams) nothing sent
    /// or received for the liveness probe interval: send a PING.
    Keepalive,
    /// The pacer holds back the next packet until then.
    Pacing,
    /// End of the closing or draining period.
    Close,
    /// Batched stream data must leave by then.
    Batch,
    /// A delayed acknowledgement must leave by then.
    Ack,
    /// A datagram's loss-protection copy falls due, or a reassembly times out.
    Datagram,
    /// A path MTU probe counts as lost, or a completed search starts again.
    Mtu,
    /// Forward error correction's hold ended for sources no repair covers: their repairs are
    /// owed.
    Fec,
}

const ALL: [Timer; 10] = [
    Timer::Idle,
    Timer::Loss,
    Timer::Keepalive,
    Timer::Pacing,
    Timer::Close,
    Timer::Batch,
    Timer::Ack,
    Timer::Datagram,
    Timer::Mtu,
    Timer::Fec,
];

/// Deadline of each timer, if armed.
#[derive(Debug, Default, Clone)]
pub(super) struct TimerTable {
    deadlines: [Option<Instant>; ALL.len()],
}

impl TimerTable {
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer as usize] = Some(at);
    }

    /// Arms `timer` for `at` unless it is already armed for earlier.
    pub(super) fn set_earliest(&mut self, timer: Timer, at: Instant) {
        let slot = &mut self.deadlines[timer as usize];
        if slot.is_none_or(|t| at < t) {
            *slot = Some(at);
        }
    }

    pub(super) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    pub(super) fn clear(&mut self) {
        self.deadlines = [None; ALL.len()];
    }

    /// Earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// A timer whose deadline is at or before `now`, earliest first.
    pub(super) fn expired(&self, now: Instant) -> Option<Timer> {
        ALL.iter()
            .filter_map(|t| {
                self.deadlines[*t as usize]
                    .filter(|d| *d <= now)
                    .map(|d| (d, *t))
            })
            .min_by_key(|(d, _)| *d)
            .map(|(_, t)| t)
    }
}
