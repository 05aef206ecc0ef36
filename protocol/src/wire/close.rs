//! Why a connection ends, in the two forms it takes: the close codes a CLOSE frame carries on
//! the wire, and [`ConnectionError`], what the application is told (a peer's close or a protocol
//! violation carries its code).
//!
//! Both are spoken by more than the connection: streams name the code a flow-control violation
//! closes with, the endpoint the code of a refusal. Here, below all of them, none has to import
//! the connection for it.

use std::time::Duration;

/// Close codes carried by CLOSE frames. Codes below 0x100 are the transport's; applications
/// use 0x100 and above.
pub mod close_code {
    /// Orderly close.
    pub const NO_ERROR: u64 = 0x0;
    /// An internal error.
    pub const INTERNAL: u64 = 0x1;
    /// The peer broke a protocol rule.
    pub const PROTOCOL_VIOLATION: u64 = 0x2;
    /// The peer sent beyond its flow-control credit.
    pub const FLOW_CONTROL: u64 = 0x3;
    /// The peer opened more streams than allowed.
    pub const STREAM_LIMIT: u64 = 0x4;
    /// The peer changed a stream's final size.
    pub const FINAL_SIZE: u64 = 0x5;
    /// A frame could not be decoded.
    pub const FRAME_ENCODING: u64 = 0x6;
    /// Required settings differ between the ends.
    pub const SETTINGS_MISMATCH: u64 = 0x7;
    /// The connection was refused (server full, address not allowed...).
    pub const REFUSED: u64 = 0x9;
    /// The address-validation token was invalid or expired.
    pub const INVALID_TOKEN: u64 = 0xa;
    /// The TLS handshake failed (certificate, name, protocol).
    pub const CRYPTO_ERROR: u64 = 0xb;
    /// First code available to applications.
    pub const APPLICATION: u64 = 0x100;
}

/// Why a connection ended. Each carries a reason fit for one log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// Nothing was heard from the peer for the negotiated idle timeout.
    #[error("idle timeout: nothing heard from the peer for {0:?}")]
    IdleTimeout(Duration),
    /// The handshake did not complete in time.
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The handshake was refused or the ends disagree (versions, settings, token, limits).
    #[error("handshake failed: {0}")]
    HandshakeFailed(String),
    /// The peer closed the connection.
    #[error("closed by peer (code {code:#x}): {reason}")]
    PeerClosed {
        /// Close code.
        code: u64,
        /// Peer's reason.
        reason: String,
    },
    /// The application closed the connection.
    #[error("closed locally (code {code:#x}): {reason}")]
    LocallyClosed {
        /// Close code.
        code: u64,
        /// Reason given.
        reason: String,
    },
    /// The peer answered with a valid stateless reset: it has no state for this connection
    /// (it restarted, or a load balancer sent our packets to another server of its fleet).
    #[error("the peer reset the session: it has no state for it (restarted, or another server of its fleet)")]
    StatelessReset,
    /// The peer's host reported that nothing listens on its port (ICMP port unreachable),
    /// during the handshake or after nothing had been heard from the peer for a while.
    #[error("the peer is unreachable: {0}")]
    Unreachable(String),
    /// The peer broke the protocol; we closed the connection.
    #[error("protocol error (code {code:#x}): {reason}")]
    ProtocolError {
        /// Close code sent.
        code: u64,
        /// What the peer did.
        reason: String,
    },
}
