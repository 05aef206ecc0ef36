//! Encryption: the TLS 1.3 handshake that authenticates the ends, and the packet protection
//! keyed from it (DESIGN.md section 4).
//!
//! rustls runs sans-IO inside the connection. Its handshake bytes travel in CRYPTO frames of the
//! cleartext handshake packets (Initial from the client, Handshake from the server), retransmitted
//! like stream data and reassembled in order before rustls sees them; TLS itself authenticates
//! every handshake byte (its Finished messages cover the whole transcript), so an on-path
//! tamperer can break a handshake but not steer it.
//!
//! When the handshake completes, each end asks the TLS exporter (RFC 8446 section 7.5, the
//! RFC 5705 interface; DTLS-SRTP keys SRTP the same way) for one 32-byte secret per direction.
//! The exporter context is both ends' HELLO settings, as sent: a HELLO altered on the way gives the
//! two ends different keys, so nothing decrypts and the handshake cannot complete.
//!
//! From then on every packet is a short-header packet sealed with AES-256-GCM: the header bytes
//! are the associated data (authenticated, not hidden) and the 64-bit packet number, XORed into
//! the key's IV, is the nonce. Packet numbers are never reused, so nonces never repeat. Keys rotate
//! without any signalling: the key for packet number `pn` is derived with HKDF-SHA256 from the
//! direction's secret and the epoch `pn >> 22`, so both ends know it from the packet number alone
//! and no key seals more than 2^22 packets, half the AES-GCM confidentiality limit of RFC 9001
//! section 6.6 (2^23 packets).
//!
//! Three parts: `config` builds the rustls configuration the one way Ferry needs it
//! ([`CryptoConfig`]), `handshake` drives rustls over CRYPTO frames until the keys are derived,
//! and `keys` seals and opens packets with them.

mod config;
mod handshake;
mod keys;

pub use config::{CryptoConfig, CryptoConfigError, Identity, ALPN};
pub(crate) use handshake::{TlsFailure, TlsHandshake};
pub(crate) use keys::PacketKeys;
pub use keys::TAG_LEN;

/// The rustls this crate is built with, for building certificate stores and names.
pub use rustls;
