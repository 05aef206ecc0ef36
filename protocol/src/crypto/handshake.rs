//! The TLS handshake of one connection, rustls driven sans-IO: its bytes leave in CRYPTO frames,
//! resent like stream data until acknowledged, and arrive reassembled in order; once complete,
//! the exporter gives each direction its packet keys. Failures are worded twice, for our log and
//! for the peer's.

use std::fmt;

use super::config::CryptoConfig;
use super::keys::{DirectionKeys, PacketKeys};
use crate::recovery::SentFrame;
use crate::streams::recv::RecvAssembler;
use crate::streams::send::SendBuffer;
use crate::wire::ids::Side;

/// Label given to the TLS exporter.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-ferry-packet-keys-v1";

/// Most handshake bytes accepted from the peer (certificate chains included).
const MAX_HANDSHAKE_BYTES: u64 = 64 * 1024;

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
