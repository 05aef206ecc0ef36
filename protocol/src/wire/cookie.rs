//! Stateless address-validation tokens (the "cookie" of the handshake).
//!
//! A server must not allocate per-connection state, nor send much, for a packet whose source
//! address might be spoofed: otherwise anyone can exhaust its memory or use it to amplify a flood
//! toward a victim. A client proves its address by echoing a token that only the holder of the
//! server's key could have made for that address. Tokens come in two kinds:
//!
//! - A **Retry token** answers a client's first Initial: an HMAC-SHA256 of the client's address
//!   and port, its connection IDs and the issue time. It lives seconds, and costs the client a
//!   round trip.
//! - An **address token** is handed to a client inside an established (and, under TLS,
//!   encrypted) session for its *next* connection, as QUIC's NEW_TOKEN (RFC 9000 section 8.1.3):
//!   bound to the client's IP address only (a reconnecting agent may use a new port) and to its
//!   issue time, valid for hours. A reconnect that presents one skips the Retry round trip. A
//!   stale or foreign address token is not an error: the server answers with a Retry as if
//!   there were no token.
//!
//! Times are wall-clock milliseconds since the Unix epoch, so that a token issued by one
//! process is judged correctly by another: a restarted gateway, or another gateway of a fleet
//! sharing the key (see [`crate::config::ServerConfig::static_secret`]). The sans-IO core has
//! no clock, so [`TokenKey`] is told once which wall-clock time one `Instant` stands for.
//!
//! Layout: `kind u8 | issued_ms u64 | mac[16]`, the MAC covering every other byte and the
//! binding (address, IDs). A token is replayable within its lifetime, from the address it
//! was made for only: it proves an address, nothing else.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::hmac;

use crate::wire::ids::ConnectionId;

/// Length of every token: kind, 8 bytes of issue time and a 16-byte truncated MAC.
pub const TOKEN_LEN: usize = 1 + 8 + 16;

/// The two kinds of tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// From a Retry: bound to address, port and connection IDs; seconds.
    Retry = 1,
    /// From a previous session (NEW_TOKEN): bound to the IP address; hours.
    Address = 2,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this endpoint could have issued, or issued for another address.
    #[error("address-validation token is invalid for this address")]
    Invalid,
    /// Older than the configured lifetime.
    #[error("address-validation token expired")]
    Expired,
}

/// Issues and checks tokens under one secret key.
#[derive(Debug)]
pub struct TokenKey {
    key: hmac::Key,
    epoch: Instant,
    /// Wall-clock time at `epoch`, in milliseconds since the Unix epoch.
    epoch_unix_ms: u64,
}

fn ip_octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Compares two secrets in time that depends on their length only, so a MAC or a reset token
/// cannot be guessed byte by byte from response times.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenKey {
    /// A key from 32 secret bytes; `epoch` is the instant at which the wall clock read
    /// `epoch_unix` (time since the Unix epoch).
    pub fn new(secret: [u8; 32], epoch: Instant, epoch_unix: Duration) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            epoch,
            epoch_unix_ms: epoch_unix.as_millis() as u64,
        }
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.epoch_unix_ms + now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn mac(&self, kind: TokenKind, issued_ms: u64, binding: &[&[u8]]) -> [u8; 16] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&[kind as u8]);
        ctx.update(&issued_ms.to_be_bytes());
        for part in binding {
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }

    fn make(&self, kind: TokenKind, now: Instant, binding: &[&[u8]]) -> [u8; TOKEN_LEN] {
        let issued_ms = self.unix_ms(now);
        let mut token = [0u8; TOKEN_LEN];
        token[0] = kind as u8;
        token[1..9].copy_from_slice(&issued_ms.to_be_bytes());
        token[9..].copy_from_slice(&self.mac(kind, issued_ms, binding));
        token
    }

    fn check(
        &self,
        kind: TokenKind,
        now: Instant,
        token: &[u8],
        binding: &[&[u8]],
        lifetime: Duration,
    ) -> Result<(), TokenError> {
        if token.len() != TOKEN_LEN || token[0] != kind as u8 {
            return Err(TokenError::Invalid);
        }
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&token[1..9]);
        let issued_ms = u64::from_be_bytes(issued);
        let expected = self.mac(kind, issued_ms, binding);
        if !constant_time_eq(&expected, &token[9..]) {
            return Err(TokenError::Invalid);
        }
        let now_ms = self.unix_ms(now);
        // A token from a fleet member whose clock runs a little ahead is still good.
        let skew_ms = 2_000;
        if now_ms.saturating_sub(issued_ms) > lifetime.as_millis() as u64
            || issued_ms > now_ms + skew_ms
        {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// A Retry token for a client at `remote` using `client_cid`, whose first Initial was sent
    /// to `orig_dcid`.
    pub fn issue(
        &self,
        now: Instant,
        remote: SocketAddr,
        client_cid: ConnectionId,
        orig_dcid: ConnectionId,
    ) -> [u8; TOKEN_LEN] {
        let (ip, port) = (ip_octets(remote.ip()), remote.port().to_be_bytes());
        self.make(
            TokenKind::Retry,
            now,
            &[&ip, &port, &client_cid.0, &orig_dcid.0],
        )
    }

    /// Checks a Retry token echoed by a client.
    pub fn validate(
        &self,
        now: Instant,
        token: &[u8],
        remote: SocketAddr,
        client_cid: ConnectionId,
        orig_dcid: ConnectionId,
        lifetime: Duration,
    ) -> Result<(), TokenError> {
        let (ip, port) = (ip_octets(remote.ip()), remote.port().to_be_bytes());
        self.check(
            TokenKind::Retry,
            now,
            token,
            &[&ip, &port, &client_cid.0, &orig_dcid.0],
            lifetime,
        )
    }

    /// An address token for the client at `remote`'s IP address, for its next connection.
    pub fn issue_address_token(&self, now: Instant, remote: SocketAddr) -> [u8; TOKEN_LEN] {
        self.make(TokenKind::Address, now, &[&ip_octets(remote.ip())])
    }

    /// Checks an address token presented in a client's first Initial.
    pub fn validate_address_token(
        &self,
        now: Instant,
        token: &[u8],
        remote: SocketAddr,
        lifetime: Duration,
    ) -> Result<(), TokenError> {
        self.check(
            TokenKind::Address,
            now,
            token,
            &[&ip_octets(remote.ip())],
            lifetime,
        )
    }

    /// The kind a token claims to be (unauthenticated: only to pick the check).
    pub fn kind_of(token: &[u8]) -> Option<TokenKind> {
        match token.first() {
            Some(1) => Some(TokenKind::Retry),
            Some(2) => Some(TokenKind::Address),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIX: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn retry_token_is_bound_to_address_ids_and_age() {
        let t0 = Instant::now();
        let key = TokenKey::new([7; 32], t0, UNIX);
        let addr: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let (c, d) = (ConnectionId([1; 8]), ConnectionId([2; 8]));
        let life = Duration::from_secs(10);
        let tok = key.issue(t0 + Duration::from_secs(1), addr, c, d);
        let later = t0 + Duration::from_secs(2);
        assert_eq!(key.validate(later, &tok, addr, c, d, life), Ok(()));
        let other: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        assert_eq!(
            key.validate(later, &tok, other, c, d, life),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            key.validate(later, &tok, addr, d, c, life),
            Err(TokenError::Invalid)
        );
        let too_late = t0 + Duration::from_secs(12);
        assert_eq!(
            key.validate(too_late, &tok, addr, c, d, life),
            Err(TokenError::Expired)
        );
        let other_key = TokenKey::new([8; 32], t0, UNIX);
        assert_eq!(
            other_key.validate(later, &tok, addr, c, d, life),
            Err(TokenError::Invalid)
        );
        let mut forged = tok;
        forged[3] ^= 1;
        assert_eq!(
            key.validate(later, &forged, addr, c, d, life),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn address_token_survives_a_restart_and_a_new_port_but_not_a_new_ip() {
        let t0 = Instant::now();
        let first = TokenKey::new([9; 32], t0, UNIX);
        let addr: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let tok = first.issue_address_token(t0, addr);
        // Another process (a restart, or a fleet member) with the same secret, whose clock
        // started ten minutes later.
        let t1 = Instant::now();
        let second = TokenKey::new([9; 32], t1, UNIX + Duration::from_secs(600));
        let life = Duration::from_secs(3600);
        let new_port: SocketAddr = "192.0.2.1:5123".parse().unwrap();
        assert_eq!(
            second.validate_address_token(t1, &tok, new_port, life),
            Ok(())
        );
        let other_ip: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        assert_eq!(
            second.validate_address_token(t1, &tok, other_ip, life),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            second.validate_address_token(t1 + Duration::from_secs(3001), &tok, addr, life),
            Err(TokenError::Expired)
        );
        // A Retry token is not an address token, nor the other way round.
        let retry = first.issue(t0, addr, ConnectionId([1; 8]), ConnectionId([2; 8]));
        assert_eq!(
            first.validate_address_token(t0, &retry, addr, life),
            Err(TokenError::Invalid)
        );
        assert_eq!(TokenKey::kind_of(&tok), Some(TokenKind::Address));
        assert_eq!(TokenKey::kind_of(&retry), Some(TokenKind::Retry));
    }
}
