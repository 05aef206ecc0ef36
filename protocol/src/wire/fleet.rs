//! What the gateways of a fleet share, so that a fleet behind an ordinary UDP load balancer
//! behaves as one server: one secret, from which the keys of stateless resets and of
//! address-validation tokens derive, and the layout of the connection IDs they choose.
//!
//! **Keys.** [`FleetKeys::derive`] expands one 32-byte secret with HKDF-SHA256 (RFC 5869) into
//! independent keys for [`crate::wire::stateless_reset`] and [`crate::wire::cookie`]. Every
//! gateway started with the same secret can then reset any fleet member's connection, and
//! accepts any member's tokens; a restarted gateway is the same "member" as before. The
//! binaries take the secret from the gateway's TLS private key, or from a key file.
//!
//! **Connection IDs.** The 8-byte IDs a server chooses follow the plaintext layout of the
//! QUIC-LB draft (draft-ietf-quic-load-balancers), so a balancer that reads it (Katran, Envoy)
//! keeps a session on its gateway when the client's address changes:
//!
//! ```text
//! byte 0      | config rotation (3 bits) | CID length - 1 (5 bits) |
//! bytes 1..3  | server ID, big-endian u16                          |
//! bytes 3..8  | random nonce                                       |
//! ```
//!
//! Config rotation 0 says the server ID is present; a server without one sets it to `0b111`,
//! QUIC-LB's "unroutable" value, and fills the rest at random.

use ring::hkdf;

use crate::wire::ids::ConnectionId;

/// Keys derived from a fleet's shared secret.
pub struct FleetKeys {
    /// Key of stateless reset tokens.
    pub reset: [u8; 32],
    /// Key of address-validation tokens (Retry and address tokens).
    pub token: [u8; 32],
}

/// Salt of the derivation: changing it would invalidate every token of a running fleet.
const SALT: &[u8] = b"ferry fleet keys v1";

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn expand(prk: &hkdf::Prk, label: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // Expanding 32 bytes from SHA-256 cannot fail (the limit is 255 x 32).
    if let Ok(okm) = prk.expand(&[label], Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

impl FleetKeys {
    /// Derives the keys from `secret` (any length; at least 32 random bytes, or a private key).
    pub fn derive(secret: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
        Self {
            reset: expand(&prk, b"stateless reset"),
            token: expand(&prk, b"address token"),
        }
    }
}

impl std::fmt::Debug for FleetKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKeys(..)")
    }
}

/// Config rotation bits of a connection ID that carries a server ID.
const CONFIG_WITH_SERVER_ID: u8 = 0b000;
/// Config rotation bits of an "unroutable" connection ID (QUIC-LB).
const CONFIG_UNROUTABLE: u8 = 0b111;

/// A server connection ID with the fleet layout: `server_id` in bytes 1..3 if given, and
/// `nonce` (random bytes) everywhere else.
pub fn server_cid(server_id: Option<u16>, nonce: [u8; ConnectionId::LEN]) -> ConnectionId {
    let mut cid = nonce;
    let length_bits = (ConnectionId::LEN as u8 - 1) & 0x1f;
    match server_id {
        Some(id) => {
            cid[0] = CONFIG_WITH_SERVER_ID << 5 | length_bits;
            cid[1..3].copy_from_slice(&id.to_be_bytes());
        }
        None => cid[0] = CONFIG_UNROUTABLE << 5 | (cid[0] & 0x1f),
    }
    ConnectionId(cid)
}

/// The server ID a connection ID carries, if it has the layout with one.
pub fn server_id_of(cid: ConnectionId) -> Option<u16> {
    (cid.0[0] >> 5 == CONFIG_WITH_SERVER_ID).then(|| u16::from_be_bytes([cid.0[1], cid.0[2]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_secret_gives_the_same_independent_keys() {
        let a = FleetKeys::derive(b"a secret shared by the fleet.....");
        let b = FleetKeys::derive(b"a secret shared by the fleet.....");
        let c = FleetKeys::derive(b"another secret..................");
        assert_eq!(a.reset, b.reset);
        assert_eq!(a.token, b.token);
        assert_ne!(a.reset, a.token);
        assert_ne!(a.reset, c.reset);
    }

    #[test]
    fn connection_ids_carry_the_server_id_at_a_fixed_offset() {
        let cid = server_cid(Some(0x1234), [0xff; 8]);
        assert_eq!(cid.0[..3], [0x07, 0x12, 0x34]);
        assert_eq!(server_id_of(cid), Some(0x1234));
        assert_eq!(cid.0[3..], [0xff; 5]);
        let unroutable = server_cid(None, [0x01; 8]);
        assert_eq!(unroutable.0[0] >> 5, 0b111);
        assert_eq!(server_id_of(unroutable), None);
    }
}
