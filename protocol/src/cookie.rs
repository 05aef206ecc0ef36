//! Stateless address-validation tokens (the "cookie" of the handshake).
//!
//! A server must not allocate per-connection state, nor send much, for a packet whose source
//! address might be spoofed: otherwise anyone can exhaust its memory or use it to amplify a flood
//! toward a victim. So the first Initial from a client gets only a small Retry holding a token:
//! an HMAC-SHA256, under a key known only to this endpoint, of the client's address and
//! connection IDs and the issue time. Only a client that really receives packets at that address
//! can echo the token; the server then checks the MAC and the age, and only then creates state.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::hmac;

use crate::ids::ConnectionId;

/// Length of a token: 8 bytes of issue time plus a 16-byte truncated MAC.
pub const TOKEN_LEN: usize = 8 + 16;

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
}

impl TokenKey {
    /// A key from 32 secret random bytes; times are measured from `epoch`.
    pub fn new(secret: [u8; 32], epoch: Instant) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            epoch,
        }
    }

    fn mac(
        &self,
        issued_ms: u64,
        remote: SocketAddr,
        client_cid: ConnectionId,
        orig_dcid: ConnectionId,
    ) -> [u8; 16] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&issued_ms.to_be_bytes());
        let ip = match remote.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        ctx.update(&ip.octets());
        ctx.update(&remote.port().to_be_bytes());
        ctx.update(&client_cid.0);
        ctx.update(&orig_dcid.0);
        let tag = ctx.sign();
        let mut out = [0u8; 16];
        out.copy_from_slice(&tag.as_ref()[..16]);
        out
    }

    /// A token for a client at `remote` using `client_cid`, whose first Initial was sent to
    /// `orig_dcid`.
    pub fn issue(
        &self,
        now: Instant,
        remote: SocketAddr,
        client_cid: ConnectionId,
        orig_dcid: ConnectionId,
    ) -> [u8; TOKEN_LEN] {
        let issued_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let mut token = [0u8; TOKEN_LEN];
        token[..8].copy_from_slice(&issued_ms.to_be_bytes());
        token[8..].copy_from_slice(&self.mac(issued_ms, remote, client_cid, orig_dcid));
        token
    }

    /// Checks a token echoed by a client.
    pub fn validate(
        &self,
        now: Instant,
        token: &[u8],
        remote: SocketAddr,
        client_cid: ConnectionId,
        orig_dcid: ConnectionId,
        lifetime: Duration,
    ) -> Result<(), TokenError> {
        if token.len() != TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let mut issued = [0u8; 8];
        issued.copy_from_slice(&token[..8]);
        let issued_ms = u64::from_be_bytes(issued);
        let expected = self.mac(issued_ms, remote, client_cid, orig_dcid);
        // Constant-time comparison: the MAC must not leak through timing.
        let diff = expected
            .iter()
            .zip(&token[8..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(TokenError::Invalid);
        }
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        if now_ms.saturating_sub(issued_ms) > lifetime.as_millis() as u64 || issued_ms > now_ms {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_bound_to_address_ids_and_age() {
        let t0 = Instant::now();
        let key = TokenKey::new([7; 32], t0);
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
        let other_key = TokenKey::new([8; 32], t0);
        assert_eq!(
            other_key.validate(later, &tok, addr, c, d, life),
            Err(TokenError::Invalid)
        );
        let mut forged = tok;
        forged[0] ^= 1;
        assert_eq!(
            key.validate(later, &forged, addr, c, d, life),
            Err(TokenError::Invalid)
        );
    }
}
