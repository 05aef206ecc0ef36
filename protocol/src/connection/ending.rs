//! How a connection ends. Closing: we send CLOSE and answer further packets with it for a
//! closing period. Abandoning: the peer is gone or has no state for us (stateless reset, ICMP
//! unreachable, idle timeout), so nothing is sent. A graceful close waits for every stream to
//! finish first. Every way reports one [`ConnectionError`] to the application, once.

use std::time::{Duration, Instant};

use tracing::debug;

use super::{close_code, Connection, ConnectionError, Event, State, Timer, GRANULARITY};

impl Connection {
    /// The peer answered with a valid stateless reset: the connection is gone at once (the
    /// peer has nothing to close), its streams fail.
    pub(crate) fn on_stateless_reset(&mut self) {
        if matches!(self.state, State::Closed | State::Draining) {
            return;
        }
        debug!(side = %self.side, remote = %self.remote, "stateless reset received");
        self.abandon(ConnectionError::StatelessReset);
    }

    /// Ends the connection at once without a word to the peer (it is gone, or has no state
    /// for us): no closing period, every stream fails, nothing is retransmitted.
    pub(super) fn abandon(&mut self, error: ConnectionError) {
        self.state = State::Closed;
        self.timers.clear();
        self.streams.abandon_all();
        self.sent.drain_all();
        self.finish_with(error);
    }

    /// The socket reported that the peer's port is unreachable (ICMP). A handshake fails at
    /// once; an established connection ends only if nothing was heard from the peer for a
    /// retransmission timeout, since the report may concern a datagram sent before the peer
    /// came (back).
    pub(crate) fn on_peer_unreachable(&mut self, now: Instant) {
        let silent_for = self
            .last_received
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        let reason = format!("nothing listens on {} (ICMP port unreachable)", self.remote);
        match self.state {
            State::Handshake => {}
            State::Established if silent_for >= self.current_rto() => {}
            _ => return,
        }
        debug!(side = %self.side, %reason, "peer unreachable");
        self.abandon(ConnectionError::Unreachable(reason));
    }

    pub(super) fn check_graceful_close(&mut self, now: Instant) {
        if let Some(reason) = &self.graceful_close {
            if self.streams.is_empty() && self.sent.is_empty() && !self.is_closed() {
                let reason = reason.clone();
                self.close(now, close_code::NO_ERROR, &reason);
            }
        }
    }

    pub(super) fn enter_closing(
        &mut self,
        now: Instant,
        code: u64,
        reason: String,
        error: ConnectionError,
    ) {
        let was_handshake = self.state == State::Handshake;
        self.state = State::Closing;
        self.close_frame = Some((code, reason));
        self.close_pending = true;
        self.streams.abandon_all();
        self.sent.drain_all();
        self.timers.clear();
        self.timers.set(Timer::Close, now + self.closing_period());
        // A handshake that never completed reports itself as a failed handshake.
        let error = match error {
            ConnectionError::ProtocolError { reason, .. } if was_handshake => {
                ConnectionError::HandshakeFailed(reason)
            }
            e => e,
        };
        self.finish_with(error);
    }

    pub(super) fn finish_with(&mut self, error: ConnectionError) {
        if self.error.is_none() {
            self.error = Some(error.clone());
            self.events.push_back(Event::Closed(error));
        }
    }

    pub(super) fn closing_period(&self) -> Duration {
        (self.rtt.rto(self.config.rto_floor, GRANULARITY) * 3).min(Duration::from_secs(3))
    }

    pub(super) fn protocol_error(&mut self, now: Instant, code: u64, reason: String) {
        debug!(side = %self.side, code, %reason, "closing on peer protocol error");
        self.enter_closing(
            now,
            code,
            reason.clone(),
            ConnectionError::ProtocolError { code, reason },
        );
    }
}
