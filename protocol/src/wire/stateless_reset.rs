//! Stateless reset: how an endpoint that lost a connection's state (a restarted gateway, or a
//! fleet member that a load balancer sent someone else's packets to) tells the peer at once,
//! instead of letting it send into the void until its idle timeout.
//!
//! After the handshake the server hands the client a [`ResetToken`], a keyed MAC of the
//! connection ID the client sends to (RESET_TOKEN frame, inside the sealed packets under TLS).
//! The key derives from a secret that survives restarts and is shared by a fleet
//! ([`crate::config::ServerConfig::static_secret`]), so any gateway that sees a short-header
//! packet for a connection it does not know can compute that connection's token without any
//! state and answer with a reset: a datagram that looks like a short-header packet, random but
//! for its last 16 bytes, which are the token (RFC 9000 section 10.3 does the same).
//!
//! The client compares the last 16 bytes of every datagram it cannot attribute to a
//! connection with the tokens it holds, in constant time; a match ends that connection at once
//! ([`crate::wire::close::ConnectionError::StatelessReset`]). Anything else is an ordinary
//! unknown datagram: dropped and counted, so forged resets achieve nothing.
//!
//! Loops and amplification: a reset is always shorter than the datagram that caused it, never
//! sent for a datagram too short to hold one (so two endpoints cannot ping-pong resets: each
//! round shrinks them below the threshold), and the server's [`ResetLimiter`] caps the rate.

use std::time::{Duration, Instant};

use ring::hmac;

use crate::wire::cookie::constant_time_eq;
use crate::wire::ids::ConnectionId;

/// Length of a reset token.
pub const RESET_TOKEN_LEN: usize = 16;

/// Shortest reset sent: as long as the shortest sealed short-header packet (13 header bytes,
/// one frame byte, a 16-byte tag), so resets are not told apart from packets by their size.
pub const MIN_RESET_LEN: usize = 1 + ConnectionId::LEN + 4 + 1 + RESET_TOKEN_LEN;

/// Longest reset sent: a little random length on top of the minimum.
pub const MAX_RESET_LEN: usize = MIN_RESET_LEN + 16;

/// A connection's stateless reset token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ResetToken(pub [u8; RESET_TOKEN_LEN]);

impl std::fmt::Debug for ResetToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret: never in logs.
        f.write_str("ResetToken(..)")
    }
}

impl ResetToken {
    /// True if `datagram` is a stateless reset carrying this token.
    pub fn matches(&self, datagram: &[u8]) -> bool {
        datagram.len() >= MIN_RESET_LEN
            && constant_time_eq(&self.0, &datagram[datagram.len() - RESET_TOKEN_LEN..])
    }
}

/// Computes reset tokens from the server's reset key.
pub struct ResetKey {
    key: hmac::Key,
}

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(..)")
    }
}

impl ResetKey {
    /// A key from 32 secret bytes.
    pub fn new(secret: [u8; 32]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
        }
    }

    /// The token of the connection that the peer addresses as `cid`.
    pub fn token(&self, cid: ConnectionId) -> ResetToken {
        let tag = hmac::sign(&self.key, &cid.0);
        let mut out = [0u8; RESET_TOKEN_LEN];
        out.copy_from_slice(&tag.as_ref()[..RESET_TOKEN_LEN]);
        ResetToken(out)
    }

    /// The reset answering a short-header datagram of `trigger_len` bytes addressed to `cid`,
    /// filled by `random` and `extra` (0..=16) bytes longer than the minimum; `None` when the
    /// trigger is too short to be answered with something shorter than itself.
    pub fn reset_for(
        &self,
        cid: ConnectionId,
        trigger_len: usize,
        extra: usize,
        random: impl FnOnce(&mut [u8]),
    ) -> Option<Vec<u8>> {
        if trigger_len <= MIN_RESET_LEN {
            return None;
        }
        let len = (MIN_RESET_LEN + extra.min(MAX_RESET_LEN - MIN_RESET_LEN)).min(trigger_len - 1);
        let mut out = vec![0u8; len];
        random(&mut out[1..len - RESET_TOKEN_LEN]);
        // The first byte of a short header (see `packet`), so it passes for a data packet.
        out[0] = 0x40;
        out[len - RESET_TOKEN_LEN..].copy_from_slice(&self.token(cid).0);
        Some(out)
    }
}

/// A token bucket for resets: at most `rate` per second on average, `burst` at once. A flood of
/// packets for unknown connections then costs the server a bounded, small reply rate.
#[derive(Debug, Clone)]
pub struct ResetLimiter {
    rate_per_second: f64,
    burst: f64,
    available: f64,
    last: Option<Instant>,
}

impl ResetLimiter {
    /// A limiter allowing `rate_per_second` resets a second on average and `burst` at once.
    pub fn new(rate_per_second: u32, burst: u32) -> Self {
        Self {
            rate_per_second: f64::from(rate_per_second),
            burst: f64::from(burst.max(1)),
            available: f64::from(burst.max(1)),
            last: None,
        }
    }

    /// Takes one reset's worth of budget at `now`, if there is any.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last = Some(self.last.map_or(now, |t| t.max(now)));
        self.available =
            (self.available + elapsed.as_secs_f64() * self.rate_per_second).min(self.burst);
        if self.available >= 1.0 {
            self.available -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_is_shorter_than_its_trigger_and_carries_the_token() {
        let key = ResetKey::new([3; 32]);
        let cid = ConnectionId([5; 8]);
        assert!(key.reset_for(cid, MIN_RESET_LEN, 0, |_| {}).is_none());
        for trigger in [MIN_RESET_LEN + 1, 40, 1350] {
            for extra in [0, 7, 100] {
                let reset = key
                    .reset_for(cid, trigger, extra, |b| b.fill(0xaa))
                    .unwrap();
                assert!(reset.len() < trigger && reset.len() >= MIN_RESET_LEN);
                assert!(reset.len() <= MAX_RESET_LEN);
                assert_eq!(reset[0], 0x40);
                assert!(key.token(cid).matches(&reset));
                assert!(!key.token(ConnectionId([6; 8])).matches(&reset));
                assert!(!ResetKey::new([4; 32]).token(cid).matches(&reset));
            }
        }
        assert!(!key.token(cid).matches(&[0u8; 10]));
    }

    #[test]
    fn the_limiter_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut limiter = ResetLimiter::new(100, 10);
        let burst = (0..50).filter(|_| limiter.allow(t0)).count();
        assert_eq!(burst, 10);
        // One second of a flood at 5,000 datagrams a second: about 100 more.
        let allowed = (1..=5000)
            .filter(|i| limiter.allow(t0 + Duration::from_micros(200 * i)))
            .count();
        assert!((99..=101).contains(&allowed), "{allowed}");
    }
}
