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

use std::fmt;
use std::sync::Arc;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

use crate::recovery::SentFrame;
use crate::streams::recv::RecvAssembler;
use crate::streams::send::SendBuffer;
use crate::wire::ids::Side;

/// Bytes the AEAD tag adds to every sealed packet.
pub const TAG_LEN: usize = 16;

/// The rustls this crate is built with, for building certificate stores and names.
pub use rustls;

/// Packets sealed under one key before the next epoch's key takes over.
const EPOCH_BITS: u32 = 22;

/// Label given to the TLS exporter.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry-packet-keys-v1";

/// ALPN protocol name both ends require, so a Ferry handshake cannot be confused with another
/// TLS protocol using the same certificates.
pub const ALPN: &[u8] = b"ferry/1";

/// Most handshake bytes accepted from the peer (certificate chains included).
const MAX_HANDSHAKE_BYTES: u64 = 64 * 1024;

/// How a connection protects its packets.
#[derive(Clone, Default)]
pub enum CryptoConfig {
    /// No encryption, no authentication: for trusted networks and benchmarks.
    #[default]
    None,
    /// TLS 1.3 client: verifies the server against `config`'s roots and `server_name`.
    TlsClient {
        /// rustls client configuration (roots, optional client certificate).
        config: Arc<rustls::ClientConfig>,
        /// Name the server's certificate must carry.
        server_name: ServerName<'static>,
    },
    /// TLS 1.3 server: presents `config`'s certificate, optionally verifies clients.
    TlsServer(Arc<rustls::ServerConfig>),
}

impl fmt::Debug for CryptoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoConfig::None => f.write_str("None"),
            CryptoConfig::TlsClient { server_name, .. } => f
                .debug_struct("TlsClient")
                .field("server_name", server_name)
                .finish_non_exhaustive(),
            CryptoConfig::TlsServer(_) => f.write_str("TlsServer"),
        }
    }
}

/// A certificate chain (leaf first) and its private key.
pub struct Identity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("{what}: the private key does not belong to the certificate")
        }
        e => format!("{what}: {e}"),
    }
}

impl CryptoConfig {
    /// A TLS server as Ferry needs it (TLS 1.3 only, ALPN [`ALPN`], no session tickets):
    /// presents `identity`; with `client_roots`, requires every client to present a certificate
    /// issued by one of them (mutual TLS).
    pub fn server(identity: Identity, client_roots: Option<RootCertStore>) -> Result<Self, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("TLS", e))?;
        let builder = match client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .map_err(|e| format!("client CA: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(identity.chain, identity.key)
            .map_err(|e| tls_error("certificate", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        // Sessions are long-lived and keys come from the exporter: no tickets, no resumption.
        config.send_tls13_tickets = 0;
        Ok(CryptoConfig::TlsServer(Arc::new(config)))
    }

    /// A TLS client as Ferry needs it: verifies the server against `roots` and `server_name`;
    /// presents `identity` when the server asks for a client certificate.
    pub fn client(
        roots: RootCertStore,
        server_name: ServerName<'static>,
        identity: Option<Identity>,
    ) -> Result<Self, String> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("TLS", e))?
            .with_root_certificates(Arc::new(roots));
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .map_err(|e| tls_error("client certificate", e))?,
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(CryptoConfig::TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }

    /// The same client configuration for another server name (one per gateway).
    pub fn with_server_name(&self, name: ServerName<'static>) -> Self {
        match self {
            CryptoConfig::TlsClient { config, .. } => CryptoConfig::TlsClient {
                config: config.clone(),
                server_name: name,
            },
            other => other.clone(),
        }
    }

    /// The value of the `crypto` setting both ends must agree on: `none` or `tls`.
    pub fn mode(&self) -> &'static str {
        match self {
            CryptoConfig::None => "none",
            _ => "tls",
        }
    }

    /// True when packets are protected.
    pub fn is_tls(&self) -> bool {
        !matches!(self, CryptoConfig::None)
    }

    /// Checks that the configuration fits this side and Ferry's needs.
    pub(crate) fn validate(&self, side: Side) -> Result<(), String> {
        let alpn = match (self, side) {
            (CryptoConfig::None, _) => return Ok(()),
            (CryptoConfig::TlsClient { config, .. }, Side::Client) => &config.alpn_protocols,
            (CryptoConfig::TlsServer(config), Side::Server) => &config.alpn_protocols,
            (CryptoConfig::TlsClient { .. }, Side::Server) => {
                return Err("a TLS client configuration cannot serve".into())
            }
            (CryptoConfig::TlsServer(_), Side::Client) => {
                return Err("a TLS server configuration cannot connect".into())
            }
        };
        if !alpn.iter().any(|p| p == ALPN) {
            return Err(format!(
                "the TLS configuration must offer ALPN {:?} (use ferry_protocol::crypto::ALPN)",
                String::from_utf8_lossy(ALPN)
            ));
        }
        Ok(())
    }
}

/// Why a TLS handshake failed, worded for the local log and for the peer.
#[derive(Debug, Clone)]
pub(crate) struct TlsFailure {
    /// For our log: what went wrong.
    pub local: String,
    /// For the peer's log (sent in CLOSE): the same, naming the side that refused.
    pub remote: String,
}

impl TlsFailure {
    fn new(side: Side, error: &dyn fmt::Display) -> Self {
        let at = match side {
            Side::Client => "client",
            Side::Server => "server",
        };
        Self {
            local: format!("TLS: {error}"),
            remote: format!("TLS rejected by the {at}: {error}"),
        }
    }
}

/// The TLS handshake of one connection and its byte stream in both directions.
pub(crate) struct TlsHandshake {
    side: Side,
    tls: rustls::Connection,
    /// Handshake bytes to send and to send again; released as the peer acknowledges them.
    send: SendBuffer,
    /// Handshake bytes received, reassembled in order.
    recv: RecvAssembler,
    scratch: Vec<u8>,
}

impl fmt::Debug for TlsHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsHandshake")
            .field("side", &self.side)
            .field("handshaking", &self.tls.is_handshaking())
            .finish_non_exhaustive()
    }
}

impl TlsHandshake {
    /// Starts a handshake; the client's first flight is ready at once.
    pub fn new(config: &CryptoConfig, side: Side) -> Result<Option<Self>, TlsFailure> {
        let tls = match config {
            CryptoConfig::None => return Ok(None),
            CryptoConfig::TlsClient {
                config,
                server_name,
            } => rustls::ClientConnection::new(config.clone(), server_name.clone())
                .map(rustls::Connection::Client),
            CryptoConfig::TlsServer(config) => {
                rustls::ServerConnection::new(config.clone()).map(rustls::Connection::Server)
            }
        }
        .map_err(|e| TlsFailure::new(side, &e))?;
        let mut hs = Self {
            side,
            tls,
            send: SendBuffer::new(MAX_HANDSHAKE_BYTES as usize),
            recv: RecvAssembler::new(),
            scratch: Vec::new(),
        };
        hs.pull_output()?;
        Ok(Some(hs))
    }

    /// True once rustls finished the handshake (peer authenticated, Finished sent).
    pub fn is_complete(&self) -> bool {
        !self.tls.is_handshaking()
    }

    /// Takes handshake bytes from a CRYPTO frame, feeds rustls what is now in order, and
    /// queues its answer.
    pub fn on_crypto(&mut self, offset: u64, data: &[u8]) -> Result<(), TlsFailure> {
        if offset.saturating_add(data.len() as u64) > MAX_HANDSHAKE_BYTES {
            return Err(TlsFailure {
                local: format!(
                    "TLS: the peer sent more than {MAX_HANDSHAKE_BYTES} handshake bytes"
                ),
                remote: format!(
                    "TLS rejected: more than {MAX_HANDSHAKE_BYTES} handshake bytes received"
                ),
            });
        }
        if self.recv.insert(offset, data, false).is_err() {
            return Ok(()); // cannot happen without a FIN; never a reason to fail
        }
        while self.recv.readable_len() > 0 {
            let mut bytes = std::mem::take(&mut self.scratch);
            bytes.resize(self.recv.readable_len(), 0);
            let n = self.recv.read(&mut bytes);
            let result = self.feed(&bytes[..n]);
            self.scratch = bytes;
            result?;
        }
        Ok(())
    }

    /// Hands in-order handshake bytes to rustls and queues its answer.
    fn feed(&mut self, mut input: &[u8]) -> Result<(), TlsFailure> {
        while !input.is_empty() {
            let read = self
                .tls
                .read_tls(&mut input)
                .map_err(|e| TlsFailure::new(self.side, &e))?;
            let processed = self.tls.process_new_packets();
            // Queue whatever rustls wrote, an alert included, before reporting an error.
            self.pull_output()?;
            processed.map_err(|e| TlsFailure::new(self.side, &describe(&e, self.side)))?;
            if read == 0 {
                break;
            }
        }
        Ok(())
    }

    fn pull_output(&mut self) -> Result<(), TlsFailure> {
        while self.tls.wants_write() {
            let mut out = Vec::new();
            if self.tls.write_tls(&mut out).is_err() || out.is_empty() {
                break;
            }
            if self.send.write(&out) < out.len() {
                return Err(TlsFailure {
                    local: "TLS: the handshake outgrew its buffer".into(),
                    remote: "TLS rejected: handshake too large".into(),
                });
            }
        }
        Ok(())
    }

    /// True while handshake bytes wait to be sent (new or lost).
    pub fn has_pending(&self) -> bool {
        self.send.has_pending(u64::MAX)
    }

    /// Appends CRYPTO frames to `buf` up to `limit`, recording them in `frames`.
    pub fn write_frames(&mut self, buf: &mut Vec<u8>, limit: usize, frames: &mut Vec<SentFrame>) {
        loop {
            let room = limit.saturating_sub(buf.len());
            let header = crate::wire::frame::crypto_header_len(MAX_HANDSHAKE_BYTES, room);
            let Some(max) = room.checked_sub(header).filter(|m| *m > 0) else {
                return;
            };
            let Some(chunk) = self.send.next_chunk(max, u64::MAX) else {
                return;
            };
            if chunk.len == 0 {
                return;
            }
            self.scratch.clear();
            self.send
                .copy_to(chunk.offset, chunk.len, &mut self.scratch);
            crate::wire::frame::encode_crypto(chunk.offset, &self.scratch, buf);
            frames.push(SentFrame::Crypto {
                offset: chunk.offset,
                len: chunk.len as u32,
            });
        }
    }

    /// The peer acknowledged handshake bytes.
    pub fn on_acked(&mut self, offset: u64, len: u32) {
        self.send.on_ack(offset, len as usize, false);
    }

    /// Handshake bytes were lost: send them again.
    pub fn on_lost(&mut self, offset: u64, len: u32) {
        self.send.on_lost(offset, len as usize, false);
    }

    /// Derives the packet keys once the handshake is complete. `context` binds both HELLOs.
    pub fn packet_keys(&self, context: &[u8]) -> Result<PacketKeys, TlsFailure> {
        let secrets = self
            .tls
            .export_keying_material([0u8; 64], EXPORTER_LABEL, Some(context))
            .map_err(|e| TlsFailure::new(self.side, &e))?;
        let (client, server) = secrets.split_at(32);
        let (seal, open) = match self.side {
            Side::Client => (client, server),
            Side::Server => (server, client),
        };
        Ok(PacketKeys {
            seal: DirectionKeys::new(seal),
            open: DirectionKeys::new(open),
        })
    }
}

/// A clearer wording for the rustls errors operators meet most.
fn describe(error: &rustls::Error, side: Side) -> String {
    match (error, side) {
        (rustls::Error::NoCertificatesPresented, Side::Server) => {
            "the client presented no certificate, and this server requires one".into()
        }
        (rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer), _) => {
            "invalid peer certificate: not issued by a trusted CA (UnknownIssuer)".into()
        }
        (rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature), _) => {
            "invalid peer certificate: its signature does not verify against the trusted CA \
             of that name (BadSignature)"
                .into()
        }
        (rustls::Error::AlertReceived(alert), _) => {
            format!("the peer aborted the handshake with alert {alert:?}")
        }
        (e, _) => e.to_string(),
    }
}

/// Both directions' packet keys.
pub(crate) struct PacketKeys {
    /// Keys for what we send.
    pub seal: DirectionKeys,
    /// Keys for what we receive.
    pub open: DirectionKeys,
}

impl fmt::Debug for PacketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PacketKeys(..)")
    }
}

/// One direction: its secret and the keys of the epochs in use (two, so that packets reordered
/// across an epoch boundary still open without deriving keys again).
pub(crate) struct DirectionKeys {
    secret: hkdf::Prk,
    cache: [Option<EpochKey>; 2],
}

struct EpochKey {
    epoch: u64,
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
}

/// HKDF output length for one epoch: key then IV.
struct KeyAndIv;

impl hkdf::KeyType for KeyAndIv {
    fn len(&self) -> usize {
        32 + aead::NONCE_LEN
    }
}

impl DirectionKeys {
    fn new(secret: &[u8]) -> Self {
        Self {
            // The exporter's output is already uniformly random: it is the PRK, no extract step.
            secret: hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret),
            cache: [None, None],
        }
    }

    fn key(&mut self, pn: u64) -> &EpochKey {
        let epoch = pn >> EPOCH_BITS;
        let slot = (epoch & 1) as usize;
        if self.cache[slot].as_ref().is_none_or(|k| k.epoch != epoch) {
            let material = self.material(epoch);
            let key = UnboundKey::new(&AES_256_GCM, &material[..32])
                .expect("AES-256-GCM takes a 32-byte key");
            let mut iv = [0u8; aead::NONCE_LEN];
            iv.copy_from_slice(&material[32..]);
            self.cache[slot] = Some(EpochKey {
                epoch,
                key: LessSafeKey::new(key),
                iv,
            });
        }
        self.cache[slot].as_ref().expect("filled above")
    }

    /// Key and IV of one epoch.
    fn material(&self, epoch: u64) -> [u8; 32 + aead::NONCE_LEN] {
        let info_epoch = epoch.to_be_bytes();
        let info = [b"ferry packet key".as_slice(), &info_epoch];
        let mut material = [0u8; 32 + aead::NONCE_LEN];
        // Expanding 44 bytes from SHA-256 cannot fail (the limit is 255 * 32).
        self.secret
            .expand(&info, KeyAndIv)
            .and_then(|okm| okm.fill(&mut material))
            .expect("HKDF output length within limits");
        material
    }

    fn nonce(iv: &[u8; aead::NONCE_LEN], pn: u64) -> Nonce {
        let mut n = *iv;
        for (b, p) in n[4..].iter_mut().zip(pn.to_be_bytes()) {
            *b ^= p;
        }
        Nonce::assume_unique_for_key(n)
    }

    /// Seals the packet at the end of `buf` in place and appends the tag: the header is
    /// `buf[start..payload]`, the plaintext `buf[payload..]`. `pn` must never repeat.
    pub fn seal(&mut self, pn: u64, buf: &mut Vec<u8>, start: usize, payload: usize) {
        let k = self.key(pn);
        let nonce = Self::nonce(&k.iv, pn);
        let (header, payload) = buf[start..].split_at_mut(payload - start);
        let tag = k
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*header), payload)
            .expect("AES-GCM seals any packet-sized payload");
        buf.extend_from_slice(tag.as_ref());
    }

    /// Opens `sealed` (payload and tag) in place; returns the plaintext length, or `None` if
    /// the packet is not authentic.
    pub fn open(&mut self, pn: u64, header: &[u8], sealed: &mut [u8]) -> Option<usize> {
        let k = self.key(pn);
        let nonce = Self::nonce(&k.iv, pn);
        k.key
            .open_in_place(nonce, Aad::from(header), sealed)
            .ok()
            .map(|plain| plain.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (DirectionKeys, DirectionKeys) {
        (
            DirectionKeys::new(&[7u8; 32]),
            DirectionKeys::new(&[7u8; 32]),
        )
    }

    #[test]
    fn sealed_packets_open_with_the_same_secret_and_packet_number() {
        let (mut a, mut b) = pair();
        for pn in [
            0,
            1,
            (1 << EPOCH_BITS) - 1,
            1 << EPOCH_BITS,
            5 << EPOCH_BITS,
        ] {
            let mut packet = b"header".to_vec();
            packet.extend_from_slice(b"frames of the packet");
            a.seal(pn, &mut packet, 0, 6);
            assert_eq!(packet.len(), 6 + 20 + TAG_LEN);
            assert_ne!(&packet[6..26], b"frames of the packet");
            let (header, sealed) = packet.split_at_mut(6);
            let n = b.open(pn, header, sealed).expect("authentic");
            assert_eq!(&sealed[..n], b"frames of the packet");
        }
    }

    #[test]
    fn any_change_to_header_payload_or_packet_number_fails_to_open() {
        let (mut a, mut b) = pair();
        let mut packet = b"hdr".to_vec();
        packet.extend_from_slice(b"payload");
        a.seal(42, &mut packet, 0, 3);
        for i in 0..packet.len() {
            let mut bad = packet.clone();
            bad[i] ^= 0x01;
            let (header, sealed) = bad.split_at_mut(3);
            assert!(b.open(42, header, sealed).is_none(), "bit flip at {i}");
        }
        let mut same = packet.clone();
        let (header, sealed) = same.split_at_mut(3);
        assert!(b.open(43, header, sealed).is_none(), "wrong packet number");
        let mut other = DirectionKeys::new(&[8u8; 32]);
        let mut same = packet.clone();
        let (header, sealed) = same.split_at_mut(3);
        assert!(other.open(42, header, sealed).is_none(), "wrong secret");
    }

    #[test]
    fn every_epoch_has_its_own_key_and_iv() {
        let (a, _) = pair();
        let materials: Vec<_> = (0..4).map(|e| a.material(e)).collect();
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(materials[i][..32], materials[j][..32]);
                assert_ne!(materials[i][32..], materials[j][32..]);
            }
        }
        // Packets of an earlier epoch still open after a later one was used.
        let (mut a, mut b) = pair();
        let mut old = b"h".to_vec();
        old.extend_from_slice(b"old");
        a.seal((1 << EPOCH_BITS) - 1, &mut old, 0, 1);
        let mut new = b"h".to_vec();
        new.extend_from_slice(b"new");
        a.seal(1 << EPOCH_BITS, &mut new, 0, 1);
        let (h, s) = new.split_at_mut(1);
        assert!(b.open(1 << EPOCH_BITS, h, s).is_some());
        let (h, s) = old.split_at_mut(1);
        assert!(b.open((1 << EPOCH_BITS) - 1, h, s).is_some());
    }
}
