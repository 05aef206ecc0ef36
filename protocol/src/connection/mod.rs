//! One connection's state machine: handshake, packets, acknowledgements, loss recovery,
//! congestion control, streams, path validation, keepalive and close.
//!
//! It is sans-IO: the [`Endpoint`](crate::endpoint::Endpoint) hands it packets that belong to it
//! with the current time, and asks it for datagrams to send ([`Connection::poll_transmit`]), for
//! the next instant it must be woken at ([`Connection::poll_timeout`]), and for application events
//! ([`Connection::poll_event`]). The application's stream calls (`open_stream`, `write`, `read`,
//! `finish`, `reset`, `close`) only change state; bytes leave on the next `poll_transmit`.
//!
//! Handshake without encryption (`crypto none`; one packet-number space throughout):
//!
//! ```text
//! client                                         server
//! Initial[HELLO], no token        ---->          (no state) Retry[token]
//! Initial[HELLO], token           ---->          validate token, create connection,
//!                                                check settings: Handshake[HELLO] or Handshake[CLOSE]
//!                 <----  Handshake[HELLO, ...data]
//! Short[ACK, ...data]             ---->          handshake confirmed: Short from now on
//! ```
//!
//! With TLS (`crypto tls`, see [`crate::crypto`]) the handshake packets also carry the TLS
//! handshake in CRYPTO frames, and no stream frame moves until both ends hold the packet keys:
//!
//! ```text
//! Initial[HELLO, CRYPTO(ClientHello)], token  ---->  Handshake[HELLO, CRYPTO(ServerHello..Finished)]
//!                                             <----
//! Initial[CRYPTO(Finished)]  (client has keys) ---->  server has keys: established
//!                                             <----  Short sealed[ACK]
//! client: first sealed packet opened, established; sealed Short packets only from now on
//! ```
//!
//! Once an end holds the keys it drops every cleartext packet (the client keeps reading a
//! cleartext CLOSE until the server's first sealed packet, so a refusal still reaches it with
//! its reason), and a sealed packet that fails authentication is dropped and counted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::{debug, trace};

use crate::coding::BufMutExt;
use crate::config::TransportConfig;
use crate::congestion::pacing::Pacer;
use crate::congestion::{AckedPacket, Controller, LossKind};
use crate::crypto::{PacketKeys, TlsFailure, TlsHandshake, TAG_LEN};
use crate::frame::{self, AckFrame, Frame, FrameIter};
use crate::ids::{ConnectionId, Side, StreamId};
use crate::packet::{self, decode_packet_number, encode_header, Header, Packet};
use crate::ranges::RangeSet;
use crate::recovery::{SentFrame, SentPacket, SentPackets};
use crate::rtt::RttEstimator;
use crate::settings::Settings;
use crate::stateless_reset::{ResetToken, MIN_RESET_LEN, RESET_TOKEN_LEN};
use crate::streams::{
    ReadOutcome, StreamError, StreamEvent, StreamSet, SMALLEST_USEFUL_STREAM_FRAME,
};

mod timer;
use timer::{Timer, TimerTable};

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

/// Mixed into the connection's seed for its congestion controller, so that the two do not draw
/// the same numbers.
const CONGESTION_SEED_SALT: u64 = 0x6262_725f_7068_6173;
/// Most ACK ranges sent in one ACK frame.
const MAX_ACK_RANGES_SENT: usize = 32;
/// Most packet-number ranges remembered as received.
const MAX_RECEIVED_RANGES: usize = 64;
/// Largest ACK delay believed from a peer. Ferry acknowledges at once, so a reported delay
/// means the ACK was lost and the acknowledgement rode on a later packet: the delay is real and
/// must be subtracted, or the RTT estimate (and so the retransmission timeout) would inflate.
/// The estimator never subtracts below the minimum RTT, which bounds what a lying peer can do.
const MAX_ACK_DELAY: Duration = Duration::from_secs(10);
/// Timer granularity assumed for the time threshold and the RTO.
const GRANULARITY: Duration = Duration::from_millis(1);
/// Consecutive RTO expiries after which the congestion controller is told of persistent congestion.
const PERSISTENT_CONGESTION_RTOS: u32 = 3;

/// How long after a loss a path counts as lossy, for tail duplication of many streams' small
/// messages (see [`TransportConfig::tail_duplication`]).
const LOSSY_PATH_MEMORY: Duration = Duration::from_secs(10);

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

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed; streams may be opened.
    Connected,
    /// The peer opened a stream.
    StreamOpened(StreamId),
    /// A stream has bytes or its end to read.
    StreamReadable(StreamId),
    /// A stream whose writer was refused has room again.
    StreamWritable(StreamId),
    /// Everything written on a finished stream was acknowledged by the peer.
    StreamAcknowledged(StreamId),
    /// The peer reset a stream.
    StreamReset {
        /// The stream.
        id: StreamId,
        /// The peer's code.
        code: u64,
    },
    /// More streams may be opened (the peer raised the limit).
    StreamsAvailable,
    /// The peer's address changed and the new path was validated.
    PathMigrated(SocketAddr),
    /// The connection ended. No event follows.
    Closed(ConnectionError),
}

/// A datagram (or, when `segment_size` is set, several of that size) to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// Bytes written at the start of the caller's buffer.
    pub size: usize,
    /// When set, the buffer holds `size / segment_size` datagrams of that size (the last may be
    /// shorter), suited to one GSO send.
    pub segment_size: Option<usize>,
}

/// Counters of one connection, for monitoring.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionStats {
    /// Datagrams sent.
    pub packets_sent: u64,
    /// UDP payload bytes sent.
    pub bytes_sent: u64,
    /// Datagrams received and accepted.
    pub packets_received: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Of which by retransmission timeout.
    pub rto_expiries: u64,
    /// Stream bytes sent again: after a loss, or as a tail duplicate.
    pub stream_bytes_retransmitted: u64,
    /// Stream bytes sent, including retransmissions.
    pub stream_bytes_sent: u64,
    /// Duplicate packets received.
    pub duplicate_packets: u64,
    /// Packets dropped because their frames could not be decoded.
    pub malformed_packets: u64,
    /// Packets dropped because they failed authentication (forged, corrupted, or sealed with
    /// keys this end does not hold yet) or were cleartext after the handshake.
    pub unauthenticated_packets: u64,
    /// Path migrations completed.
    pub migrations: u64,
    /// Smoothed RTT.
    pub rtt: Duration,
    /// Minimum RTT.
    pub min_rtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Bytes in flight.
    pub bytes_in_flight: u64,
    /// Pacing rate, bytes per second.
    pub pacing_rate: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handshake in progress.
    Handshake,
    /// Streams may flow.
    Established,
    /// We sent CLOSE; we answer further packets with CLOSE until the deadline.
    Closing,
    /// The peer sent CLOSE; silence until the deadline.
    Draining,
    /// Gone; the endpoint forgets it.
    Closed,
}

/// The connection IDs a connection starts with.
struct Ids {
    local: ConnectionId,
    remote: ConnectionId,
    initial_dcid: ConnectionId,
}

#[derive(Debug)]
struct PathChallenge {
    addr: SocketAddr,
    data: [u8; 8],
    pending: bool,
    sent_at: Option<Instant>,
}

/// Where the parts of a packet being built start in the output buffer.
#[derive(Debug, Clone, Copy)]
struct PacketLayout {
    start: usize,
    payload: usize,
    /// A client Initial: padded to the minimum Initial size.
    initial: bool,
    /// A client's short-header packet: padded so that a stateless reset can answer it.
    resettable: bool,
    /// Sealed with the packet keys when complete.
    sealed: bool,
}

/// A Ferry connection.
#[derive(Debug)]
pub struct Connection {
    side: Side,
    state: State,
    config: TransportConfig,
    local_settings: Settings,
    peer_settings: Option<Settings>,
    local_cid: ConnectionId,
    remote_cid: ConnectionId,
    /// The client's first destination ID (what the server's Initial routing knows it by).
    initial_dcid: ConnectionId,
    remote: SocketAddr,
    /// Client: token from a Retry, echoed in Initials.
    retry_token: Option<Vec<u8>>,
    /// Client: an address token from an earlier session with this server, sent in Initials
    /// until a Retry replaces it.
    address_token: Option<Vec<u8>>,
    /// Client: the token with which the server may reset this connection statelessly.
    peer_reset_token: Option<ResetToken>,
    /// Client: an address token the server gave for the next connection, not yet taken by
    /// the endpoint.
    new_address_token: Option<Vec<u8>>,
    /// Server: the client's reset token and address token, sent once established.
    tokens_for_peer: Option<(ResetToken, Vec<u8>)>,
    tokens_pending: bool,
    /// When an authenticated packet last arrived from the peer.
    last_received: Option<Instant>,
    /// Server: the client has sent a short packet or acknowledged our HELLO.
    handshake_confirmed: bool,
    max_datagram: usize,
    idle_timeout: Option<Duration>,
    rng: ChaCha8Rng,

    // Packets.
    next_pn: u64,
    sent: SentPackets,
    largest_acked: Option<u64>,
    received: RangeSet,
    largest_received: Option<(u64, Instant)>,
    /// Packets up to this number are no longer acknowledged: the peer acknowledged a packet of
    /// ours whose ACK frame covered them (RFC 9000 section 13.2.4), so it already knows. Without
    /// this, every gap that losses leave behind would ride in every ACK frame (up to
    /// [`MAX_ACK_RANGES_SENT`] ranges) for as long as the connection lives.
    ack_floor: Option<u64>,
    /// When an ACK last left in a packet the peer will acknowledge because of it (see
    /// [`Connection::ack_needs_confirming`]).
    ack_confirm_sent: Option<Instant>,
    ack_pending: bool,
    rtt: RttEstimator,
    cc: Box<dyn Controller>,
    pacer: Pacer,
    rto_count: u32,
    loss_time: Option<Instant>,
    timers: TimerTable,
    last_sent: Instant,

    // Frames owed.
    hello_pending: bool,
    ping_pending: bool,
    path_challenge: Option<PathChallenge>,
    path_responses: VecDeque<(SocketAddr, [u8; 8])>,
    close_frame: Option<(u64, String)>,
    close_pending: bool,
    /// Packets received while closing: the CLOSE is sent again for the 1st, 2nd, 4th, 8th...
    closing_received: u32,
    graceful_close: Option<String>,
    /// Stream frames (stream, offset) owed again as tail duplicates: the packet that carries
    /// them does not duplicate them once more, but may duplicate fresh data riding with them.
    duplicating: Vec<(StreamId, u64)>,
    /// When a packet was last declared lost: copies for many streams' small messages are only
    /// worth their bandwidth on a path that has been losing packets lately.
    last_loss: Option<Instant>,

    // Encryption (TLS mode only).
    /// The TLS handshake, until both ends hold the keys.
    tls: Option<Box<TlsHandshake>>,
    /// Packet keys, once the handshake completed.
    keys: Option<Box<PacketKeys>>,
    /// The peer holds the keys too (the server knows on completing; the client when the first
    /// sealed packet from the server opens). Only then is everything sealed.
    keys_confirmed: bool,
    /// Our HELLO body as sent, and the peer's as received: the exporter context.
    local_hello: Vec<u8>,
    peer_hello: Vec<u8>,
    /// Scratch buffer that sealed packets are opened in.
    open_buf: Vec<u8>,
    /// Since when stream data has been held back to fill a packet (batching).
    batch_since: Option<Instant>,
    /// Since when an acknowledgement has been held back to ride with data (batching).
    ack_held_since: Option<Instant>,
    /// Ack-eliciting packets that may be sent beyond the congestion window: after a
    /// retransmission timeout, probes must leave whatever the window says.
    probe_credit: u8,

    streams: StreamSet,
    events: VecDeque<Event>,
    stats: ConnectionStats,
    error: Option<ConnectionError>,
}

impl Connection {
    fn new(
        side: Side,
        now: Instant,
        remote: SocketAddr,
        config: TransportConfig,
        ids: Ids,
        seed: u64,
    ) -> Self {
        let Ids {
            local: local_cid,
            remote: remote_cid,
            initial_dcid,
        } = ids;
        let max_datagram = usize::from(config.max_datagram_size);
        let limits = config.stream_limits();
        let mut timers = TimerTable::default();
        timers.set(Timer::Idle, now + config.handshake_timeout);
        let local_settings = config.settings();
        let mut local_hello = Vec::with_capacity(64);
        local_settings.encode(&mut local_hello);
        let (tls, tls_error) = match TlsHandshake::new(&config.crypto, side) {
            Ok(tls) => (tls.map(Box::new), None),
            Err(f) => (None, Some(f)),
        };
        let mut conn = Self {
            side,
            state: State::Handshake,
            local_settings,
            peer_settings: None,
            local_cid,
            remote_cid,
            initial_dcid,
            remote,
            retry_token: None,
            address_token: None,
            peer_reset_token: None,
            new_address_token: None,
            tokens_for_peer: None,
            tokens_pending: false,
            last_received: None,
            handshake_confirmed: false,
            max_datagram,
            idle_timeout: None,
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_pn: 0,
            sent: SentPackets::new(0),
            largest_acked: None,
            received: RangeSet::new(),
            largest_received: None,
            ack_floor: None,
            ack_confirm_sent: None,
            ack_pending: false,
            rtt: RttEstimator::new(config.initial_rtt),
            cc: config
                .congestion
                .build(now, max_datagram as u64, seed ^ CONGESTION_SEED_SALT),
            pacer: Pacer::new(now, max_datagram as u64),
            rto_count: 0,
            loss_time: None,
            timers,
            last_sent: now,
            hello_pending: side == Side::Client,
            ping_pending: false,
            path_challenge: None,
            path_responses: VecDeque::new(),
            close_frame: None,
            close_pending: false,
            closing_received: 0,
            graceful_close: None,
            duplicating: Vec::new(),
            last_loss: None,
            tls,
            keys: None,
            keys_confirmed: false,
            local_hello,
            peer_hello: Vec::new(),
            open_buf: Vec::new(),
            batch_since: None,
            ack_held_since: None,
            probe_credit: 0,
            streams: StreamSet::new(side, limits),
            events: VecDeque::new(),
            stats: ConnectionStats::default(),
            error: None,
            config,
        };
        if let Some(f) = tls_error {
            // A configuration rustls refused: the connection ends before its first packet.
            conn.state = State::Closed;
            conn.timers.clear();
            conn.finish_with(ConnectionError::HandshakeFailed(f.local));
        }
        conn
    }

    /// A client connection; its first datagram leaves on the next `poll_transmit`.
    pub(crate) fn new_client(
        now: Instant,
        remote: SocketAddr,
        config: TransportConfig,
        local_cid: ConnectionId,
        initial_dcid: ConnectionId,
        seed: u64,
        address_token: Option<Vec<u8>>,
    ) -> Self {
        let ids = Ids {
            local: local_cid,
            remote: initial_dcid,
            initial_dcid,
        };
        let mut conn = Self::new(Side::Client, now, remote, config, ids, seed);
        conn.address_token = address_token;
        conn
    }

    /// A server connection for a client whose address was validated.
    pub(crate) fn new_server(
        now: Instant,
        remote: SocketAddr,
        config: TransportConfig,
        local_cid: ConnectionId,
        remote_cid: ConnectionId,
        initial_dcid: ConnectionId,
        seed: u64,
    ) -> Self {
        let ids = Ids {
            local: local_cid,
            remote: remote_cid,
            initial_dcid,
        };
        Self::new(Side::Server, now, remote, config, ids, seed)
    }

    /// Server: what to hand the client once established: its stateless reset token and an
    /// address token for its next connection.
    pub(crate) fn set_tokens_for_peer(&mut self, reset: ResetToken, address: Vec<u8>) {
        self.tokens_for_peer = Some((reset, address));
        self.tokens_pending = self.state == State::Established;
    }

    /// Client: the token a stateless reset of this connection carries, once the server sent
    /// it, while the connection is open.
    pub fn peer_reset_token(&self) -> Option<ResetToken> {
        self.peer_reset_token.filter(|_| !self.is_closed())
    }

    /// Client: the address token the server gave for the next connection, once.
    pub(crate) fn take_new_address_token(&mut self) -> Option<Vec<u8>> {
        self.new_address_token.take()
    }

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
    fn abandon(&mut self, error: ConnectionError) {
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

    // ----- Application API -------------------------------------------------------------------

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The peer's current address.
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Our connection ID (what the peer's packets carry).
    pub fn local_cid(&self) -> ConnectionId {
        self.local_cid
    }

    /// The ID the client first addressed the server by (server-side routing of Initials).
    pub fn initial_dcid(&self) -> ConnectionId {
        self.initial_dcid
    }

    /// True once the handshake completed and until the connection closes.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// True once the connection ended (closing, draining or gone).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closing | State::Draining | State::Closed)
    }

    /// True when the endpoint may forget the connection.
    pub fn is_drained(&self) -> bool {
        self.state == State::Closed && self.events.is_empty()
    }

    /// Why the connection ended, once it did.
    pub fn error(&self) -> Option<&ConnectionError> {
        self.error.as_ref()
    }

    /// The peer's handshake settings, once known.
    pub fn peer_settings(&self) -> Option<&Settings> {
        self.peer_settings.as_ref()
    }

    /// Counters and estimates.
    pub fn stats(&self) -> ConnectionStats {
        let mut s = self.stats.clone();
        s.stream_bytes_retransmitted = self.streams.retransmitted_bytes();
        s.rtt = self.rtt.smoothed();
        s.min_rtt = self.rtt.min();
        s.cwnd = self.cc.window();
        s.bytes_in_flight = self.sent.bytes_in_flight();
        s.pacing_rate = self.cc.pacing_rate(&self.rtt);
        s
    }

    /// Bytes held for streams: written but unacknowledged, and received but unread.
    pub fn buffered_bytes(&self) -> (usize, usize) {
        (self.streams.send_buffered(), self.streams.recv_buffered())
    }

    /// The receive window a stream's credit is renewed at (see [`crate::streams`]), for tests
    /// and diagnostics; `None` for an unknown stream.
    pub fn stream_receive_window(&self, id: StreamId) -> Option<u64> {
        self.streams.receive_window(id)
    }

    /// Number of streams open.
    pub fn stream_count(&self) -> usize {
        self.streams.open_count()
    }

    /// Next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.drain_stream_events();
        self.events.pop_front()
    }

    /// True when events are waiting.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    fn check_open(&self) -> Result<(), StreamError> {
        if self.state == State::Established {
            Ok(())
        } else {
            Err(StreamError::ConnectionClosed)
        }
    }

    /// Opens a stream of our own.
    pub fn open_stream(&mut self) -> Result<StreamId, StreamError> {
        self.check_open()?;
        if self.graceful_close.is_some() {
            return Err(StreamError::ConnectionClosed);
        }
        self.streams.open()
    }

    /// Buffers bytes to send on a stream. `Ok(0)` for non-empty `data` means the stream's send
    /// buffer is full: wait for [`Event::StreamWritable`].
    pub fn write(&mut self, id: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        self.check_open()?;
        self.streams.write(id, data)
    }

    /// Ends our direction of a stream after what was written.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.check_open()?;
        self.streams.finish(id)
    }

    /// Reads bytes the peer sent on a stream. `now` times the reads, so that a stream whose
    /// reader keeps up gets a larger receive window (see [`crate::streams`]).
    pub fn read(
        &mut self,
        now: Instant,
        id: StreamId,
        buf: &mut [u8],
    ) -> Result<ReadOutcome, StreamError> {
        self.check_open()?;
        let r = self.streams.read(now, self.rtt.smoothed(), id, buf);
        self.drain_stream_events();
        r
    }

    /// Declares that the application will not read `id` again (see [`StreamSet::stop_reading`]).
    pub fn stop_reading(&mut self, id: StreamId) -> Result<(), StreamError> {
        self.check_open()?;
        let r = self.streams.stop_reading(id);
        self.drain_stream_events();
        r
    }

    /// Aborts a stream in both directions; the peer sees a reset with `code`.
    pub fn reset(&mut self, id: StreamId, code: u64) -> Result<(), StreamError> {
        self.check_open()?;
        self.streams.reset(id, code)
    }

    /// Aborts the connection now: streams are reset, the peer is told `code` and `reason`.
    pub fn close(&mut self, now: Instant, code: u64, reason: &str) {
        if self.is_closed() {
            return;
        }
        debug!(side = %self.side, code, reason, "closing connection");
        self.enter_closing(
            now,
            code,
            reason.to_owned(),
            ConnectionError::LocallyClosed {
                code,
                reason: reason.to_owned(),
            },
        );
    }

    /// Closes once every stream has finished and been acknowledged; no new streams meanwhile.
    pub fn close_gracefully(&mut self, now: Instant, reason: &str) {
        if self.is_closed() {
            return;
        }
        self.graceful_close = Some(reason.to_owned());
        self.check_graceful_close(now);
    }

    fn check_graceful_close(&mut self, now: Instant) {
        if let Some(reason) = &self.graceful_close {
            if self.streams.is_empty() && self.sent.is_empty() && !self.is_closed() {
                let reason = reason.clone();
                self.close(now, close_code::NO_ERROR, &reason);
            }
        }
    }

    fn enter_closing(&mut self, now: Instant, code: u64, reason: String, error: ConnectionError) {
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

    fn finish_with(&mut self, error: ConnectionError) {
        if self.error.is_none() {
            self.error = Some(error.clone());
            self.events.push_back(Event::Closed(error));
        }
    }

    fn closing_period(&self) -> Duration {
        (self.rtt.rto(self.config.rto_floor, GRANULARITY) * 3).min(Duration::from_secs(3))
    }

    fn drain_stream_events(&mut self) {
        while let Some(ev) = self.streams.poll_event() {
            self.events.push_back(match ev {
                StreamEvent::Opened(id) => Event::StreamOpened(id),
                StreamEvent::Readable(id) => Event::StreamReadable(id),
                StreamEvent::Writable(id) => Event::StreamWritable(id),
                StreamEvent::Acknowledged(id) => Event::StreamAcknowledged(id),
                StreamEvent::Reset { id, code } => Event::StreamReset { id, code },
            });
        }
    }

    // ----- Receiving ---------------------------------------------------------------------------

    /// Processes a packet the endpoint routed to this connection.
    pub(crate) fn handle_packet(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        packet: &Packet<'_>,
        datagram_len: usize,
    ) {
        match self.state {
            State::Closed | State::Draining => return,
            State::Closing => {
                // Answer with CLOSE again, to the 1st, 2nd, 4th, 8th... packet received
                // meanwhile (RFC 9000 section 10.2.1): a peer whose own CLOSE crossed ours
                // answers each of our CLOSEs too, and one answer per packet would keep both
                // sending to each other for the whole closing period (found by the
                // established_session fuzz target, where no time passes).
                self.closing_received = self.closing_received.saturating_add(1);
                if self.closing_received.is_power_of_two() {
                    self.close_pending = true;
                }
                return;
            }
            _ => {}
        }
        let tls = self.config.crypto.is_tls();
        let pn_trunc = match &packet.header {
            Header::Retry { scid, token, .. } => {
                self.on_retry(now, *scid, token);
                return;
            }
            Header::VersionNegotiation { versions, .. } => {
                self.on_version_negotiation(versions);
                return;
            }
            Header::Initial { pn, .. } => {
                if self.side == Side::Client {
                    return;
                }
                *pn
            }
            Header::Handshake { scid, pn, .. } => {
                if self.side == Side::Server {
                    return;
                }
                if self.state == State::Handshake {
                    self.remote_cid = *scid;
                }
                *pn
            }
            Header::Short { pn, .. } => {
                if tls {
                    if self.keys.is_none() {
                        // Sealed with keys we do not hold (yet): cannot be authenticated.
                        self.stats.unauthenticated_packets += 1;
                        return;
                    }
                } else if self.state == State::Handshake {
                    // The client cannot use short packets before our HELLO; the server cannot
                    // send them before the client's handshake completed. Drop.
                    return;
                }
                if self.side == Side::Server && !self.handshake_confirmed {
                    self.handshake_confirmed = true;
                }
                *pn
            }
        };
        let sealed = matches!(packet.header, Header::Short { .. }) && tls;
        // With TLS, a cleartext packet after the handshake is never believed. The client may
        // still be waiting for proof that we hold the keys: a sealed PING gives it.
        let mut close_only = false;
        if tls && !sealed && self.keys.is_some() {
            if self.keys_confirmed {
                self.stats.unauthenticated_packets += 1;
                if self.side == Side::Server && self.state == State::Established {
                    self.ping_pending = true;
                }
                return;
            }
            // The client between its Finished and the server's first sealed packet: a
            // refusal (a cleartext CLOSE with the server's reason) must still reach it.
            close_only = true;
        }
        let expected = self.largest_received.map_or(0, |(pn, _)| pn + 1);
        let pn = decode_packet_number(pn_trunc, expected);
        if self.received.contains(pn)
            || self
                .received
                .min()
                .is_some_and(|min| pn < min && self.received.range_count() >= MAX_RECEIVED_RANGES)
        {
            // A duplicate or a replay: never processed twice.
            self.stats.duplicate_packets += 1;
            self.ack_pending = true;
            return;
        }
        if !sealed {
            self.process_packet(now, remote, pn, packet.payload, datagram_len, close_only);
            return;
        }
        let mut plain = std::mem::take(&mut self.open_buf);
        plain.clear();
        plain.extend_from_slice(packet.payload);
        let opened = self
            .keys
            .as_mut()
            .and_then(|k| k.open.open(pn, packet.header_bytes, &mut plain));
        match opened {
            None => self.stats.unauthenticated_packets += 1,
            Some(len) => {
                if !self.keys_confirmed {
                    // The server's first sealed packet: it holds the keys; we are established.
                    self.keys_confirmed = true;
                    self.try_establish(now);
                }
                self.process_packet(now, remote, pn, &plain[..len], datagram_len, false);
            }
        }
        self.open_buf = plain;
    }

    /// Applies the frames of an authentic (or, without TLS, accepted) packet number `pn`.
    /// With `close_only`, only a CLOSE frame takes effect.
    fn process_packet(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        pn: u64,
        payload: &[u8],
        datagram_len: usize,
        close_only: bool,
    ) {
        // Decode every frame before acting on any: a malformed packet changes nothing.
        let frames: Result<Vec<Frame<'_>>, _> = FrameIter::new(payload).collect();
        let frames = match frames {
            Ok(f) => f,
            Err(e) => {
                self.stats.malformed_packets += 1;
                trace!(side = %self.side, error = %e, "dropping packet with malformed frames");
                return;
            }
        };
        if close_only {
            if let Some(close) = frames.iter().find(|f| matches!(f, Frame::Close(_))) {
                self.apply_frame(now, remote, close);
            }
            return;
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += datagram_len as u64;

        let newest = self
            .largest_received
            .is_none_or(|(largest, _)| pn > largest);
        if remote != self.remote {
            // Handshake packets come only from the address that proved itself; later, a newer
            // packet from elsewhere starts path validation (reordered old ones do not).
            if self.state != State::Established {
                return;
            }
            if newest {
                self.on_new_path(now, remote);
            }
        }

        let mut ack_eliciting = false;
        for frame in &frames {
            ack_eliciting |= frame.is_ack_eliciting();
            self.apply_frame(now, remote, frame);
            if self.is_closed() {
                return;
            }
        }
        self.received.insert_one(pn);
        self.received.truncate_low(MAX_RECEIVED_RANGES);
        if newest {
            self.largest_received = Some((pn, now));
        }
        if ack_eliciting {
            self.ack_pending = true;
        }
        self.last_received = Some(now);
        if let Some(idle) = self.idle_timeout {
            if self.state == State::Established {
                self.timers.set(Timer::Idle, now + idle);
            }
        }
        self.drain_stream_events();
        self.check_graceful_close(now);
    }

    fn on_retry(&mut self, now: Instant, scid: ConnectionId, token: &[u8]) {
        if self.side != Side::Client || self.state != State::Handshake || self.retry_token.is_some()
        {
            return;
        }
        if scid != self.initial_dcid {
            return;
        }
        debug!("retry received: echoing the address-validation token");
        self.retry_token = Some(token.to_vec());
        // Everything sent so far is void: send the HELLO (and the TLS ClientHello) again at
        // once, uncounted as loss.
        for packet in self.sent.drain_all() {
            for frame in &packet.frames {
                if let (SentFrame::Crypto { offset, len }, Some(tls)) = (frame, &mut self.tls) {
                    tls.on_lost(*offset, *len);
                }
            }
        }
        self.hello_pending = true;
        self.pacer = Pacer::new(now, self.max_datagram as u64);
    }

    fn on_version_negotiation(&mut self, versions: &[u8]) {
        if self.side != Side::Client || self.state != State::Handshake {
            return;
        }
        let theirs: Vec<String> = versions
            .chunks_exact(4)
            .map(|c| format!("{:#x}", u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let ours = packet::VERSION;
        if versions
            .chunks_exact(4)
            .any(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) == ours)
        {
            return; // a forged or stale negotiation: the server speaks our version
        }
        let reason = format!(
            "version mismatch: client speaks {ours:#x}, server speaks {}",
            theirs.join(", ")
        );
        self.state = State::Closed;
        self.timers.clear();
        self.finish_with(ConnectionError::HandshakeFailed(reason));
    }

    fn on_new_path(&mut self, now: Instant, remote: SocketAddr) {
        if self
            .path_challenge
            .as_ref()
            .is_some_and(|c| c.addr == remote)
        {
            let rto = self.current_rto();
            if let Some(c) = &mut self.path_challenge {
                if c.sent_at.is_none_or(|t| now >= t + rto) {
                    c.pending = true;
                }
            }
            return;
        }
        let mut data = [0u8; 8];
        self.rng.fill_bytes(&mut data);
        debug!(side = %self.side, from = %self.remote, to = %remote, "peer address changed: validating the new path");
        self.path_challenge = Some(PathChallenge {
            addr: remote,
            data,
            pending: true,
            sent_at: None,
        });
    }

    fn protocol_error(&mut self, now: Instant, code: u64, reason: String) {
        debug!(side = %self.side, code, %reason, "closing on peer protocol error");
        self.enter_closing(
            now,
            code,
            reason.clone(),
            ConnectionError::ProtocolError { code, reason },
        );
    }

    fn apply_frame(&mut self, now: Instant, remote: SocketAddr, frame: &Frame<'_>) {
        let established = self.state == State::Established;
        let result = match frame {
            Frame::Padding | Frame::Ping => Ok(()),
            Frame::Ack(ack) => {
                self.on_ack_frame(now, ack);
                Ok(())
            }
            Frame::Hello(body) => {
                self.on_hello(now, body);
                Ok(())
            }
            Frame::Close(close) => {
                let reason = String::from_utf8_lossy(close.reason).into_owned();
                let error = if self.state == State::Handshake {
                    ConnectionError::HandshakeFailed(reason)
                } else {
                    ConnectionError::PeerClosed {
                        code: close.code,
                        reason,
                    }
                };
                debug!(side = %self.side, %error, "peer closed the connection");
                self.state = State::Draining;
                self.streams.abandon_all();
                self.sent.drain_all();
                self.timers.clear();
                self.timers.set(Timer::Close, now + self.closing_period());
                self.finish_with(error);
                Ok(())
            }
            Frame::PathChallenge(data) => {
                if self.path_responses.len() < 8 {
                    self.path_responses.push_back((remote, *data));
                }
                Ok(())
            }
            Frame::PathResponse(data) => {
                if let Some(c) = &self.path_challenge {
                    if c.data == *data {
                        let addr = c.addr;
                        debug!(side = %self.side, %addr, "new path validated: migrating");
                        self.remote = addr;
                        self.path_challenge = None;
                        self.stats.migrations += 1;
                        self.events.push_back(Event::PathMigrated(addr));
                    }
                }
                Ok(())
            }
            Frame::Crypto { offset, data } => {
                if let Some(tls) = &mut self.tls {
                    if let Err(f) = tls.on_crypto(*offset, data) {
                        self.tls_failed(now, f);
                        return;
                    }
                    self.try_establish(now);
                }
                Ok(())
            }
            _ if !established => Ok(()), // stream frames before the handshake: ignore
            Frame::Stream(s) => {
                let r = self.streams.on_stream_frame(s);
                self.drain_stream_events();
                r
            }
            Frame::Reset {
                id,
                code,
                final_size,
            } => self.streams.on_reset(*id, *code, *final_size),
            Frame::ResetToken(token) => {
                if self.side == Side::Client {
                    self.peer_reset_token = Some(ResetToken(*token));
                }
                Ok(())
            }
            Frame::NewToken(token) => {
                if self.side == Side::Client {
                    self.new_address_token = Some(token.to_vec());
                }
                Ok(())
            }
            Frame::MaxData(max) => {
                self.streams.on_max_data(*max);
                Ok(())
            }
            Frame::MaxStreamData { id, max } => self.streams.on_max_stream_data(*id, *max),
            Frame::MaxStreams(max) => {
                let could = self.streams.can_open();
                self.streams.on_max_streams(*max);
                if !could && self.streams.can_open() {
                    self.events.push_back(Event::StreamsAvailable);
                }
                Ok(())
            }
        };
        if let Err(v) = result {
            self.protocol_error(now, v.code, v.reason);
        }
    }

    fn on_hello(&mut self, now: Instant, body: &[u8]) {
        if self.peer_settings.is_some() {
            return; // a retransmission
        }
        let peer = match Settings::decode(body) {
            Ok(s) => s,
            Err(e) => {
                self.protocol_error(
                    now,
                    close_code::FRAME_ENCODING,
                    format!("malformed HELLO: {e}"),
                );
                return;
            }
        };
        let (ours, theirs) = match self.side {
            Side::Client => ("client", "server"),
            Side::Server => ("server", "client"),
        };
        if let Err(reason) = self.local_settings.check_required(ours, &peer, theirs) {
            // Both ends log this same line: the server sends it in its CLOSE.
            self.enter_closing(
                now,
                close_code::SETTINGS_MISMATCH,
                reason.clone(),
                ConnectionError::HandshakeFailed(reason),
            );
            return;
        }
        self.max_datagram = self.max_datagram.min(usize::from(peer.max_datagram_size));
        self.idle_timeout = self.local_settings.negotiated_idle_timeout(&peer);
        self.streams.apply_peer_settings(
            peer.initial_max_data,
            peer.initial_max_stream_data,
            peer.initial_max_streams,
        );
        self.peer_settings = Some(peer);
        self.peer_hello = body.to_vec();
        if self.side == Side::Server {
            self.hello_pending = true;
        }
        self.try_establish(now);
    }

    /// Moves to `Established` once everything the handshake needs is there: the peer's
    /// settings, and with TLS the packet keys held by both ends.
    fn try_establish(&mut self, now: Instant) {
        if self.state != State::Handshake || self.peer_settings.is_none() {
            return;
        }
        if self.config.crypto.is_tls() {
            if self.keys.is_none() {
                let Some(tls) = &self.tls else {
                    return;
                };
                if !tls.is_complete() {
                    return;
                }
                match tls.packet_keys(&self.exporter_context()) {
                    Ok(keys) => self.keys = Some(Box::new(keys)),
                    Err(f) => {
                        self.tls_failed(now, f);
                        return;
                    }
                }
                // The server completes only on the client's Finished: the client has the keys.
                if self.side == Side::Server {
                    self.keys_confirmed = true;
                    self.handshake_confirmed = true;
                }
                debug!(side = %self.side, remote = %self.remote, "TLS handshake complete: packet keys in place");
            }
            if !self.keys_confirmed {
                return;
            }
            // Both ends hold the keys: handshake bytes are never needed again.
            self.tls = None;
        }
        self.state = State::Established;
        self.tokens_pending = self.tokens_for_peer.is_some();
        self.timers.stop(Timer::Idle);
        if let Some(idle) = self.idle_timeout {
            self.timers.set(Timer::Idle, now + idle);
        }
        debug!(side = %self.side, remote = %self.remote, crypto = self.config.crypto.mode(), "connection established");
        self.events.push_back(Event::Connected);
    }

    /// Both HELLO bodies, client's first, each length-prefixed: binds the settings to the keys.
    fn exporter_context(&self) -> Vec<u8> {
        let (client, server) = match self.side {
            Side::Client => (&self.local_hello, &self.peer_hello),
            Side::Server => (&self.peer_hello, &self.local_hello),
        };
        let mut context = Vec::with_capacity(client.len() + server.len() + 4);
        for hello in [client, server] {
            context.extend_from_slice(&(hello.len() as u16).to_be_bytes());
            context.extend_from_slice(hello);
        }
        context
    }

    fn tls_failed(&mut self, now: Instant, failure: TlsFailure) {
        debug!(side = %self.side, remote = %self.remote, error = %failure.local, "TLS handshake failed");
        self.enter_closing(
            now,
            close_code::CRYPTO_ERROR,
            failure.remote,
            ConnectionError::HandshakeFailed(failure.local),
        );
    }

    fn on_ack_frame(&mut self, now: Instant, ack: &AckFrame) {
        if ack.largest >= self.next_pn {
            self.protocol_error(
                now,
                close_code::PROTOCOL_VIOLATION,
                format!("acknowledged packet {} that was never sent", ack.largest),
            );
            return;
        }
        let acked = self.sent.on_ack(&ack.ranges);
        self.largest_acked = Some(
            self.largest_acked
                .map_or(ack.largest, |l| l.max(ack.largest)),
        );
        if acked.is_empty() {
            return;
        }
        if let Some(last) = acked.last() {
            if last.pn == ack.largest {
                let delay = Duration::from_micros(ack.delay_us).min(MAX_ACK_DELAY);
                self.rtt
                    .update(now.saturating_duration_since(last.time), delay);
            }
        }
        let mut samples = Vec::with_capacity(acked.len());
        for p in &acked {
            samples.push(AckedPacket {
                sent_time: p.time,
                bytes: u64::from(p.size),
                delivery: p.delivery,
            });
            for f in &p.frames {
                self.on_frame_acked(f);
            }
        }
        self.cc
            .on_ack(now, &samples, &self.rtt, self.sent.bytes_in_flight());
        self.rto_count = 0;
        self.detect_lost(now);
        self.drain_stream_events();
    }

    fn on_frame_acked(&mut self, frame: &SentFrame) {
        match *frame {
            SentFrame::Stream {
                id,
                offset,
                len,
                fin,
            } => self.streams.on_stream_acked(id, offset, len, fin),
            SentFrame::Reset { id, .. } => self.streams.on_reset_acked(id),
            SentFrame::Hello if self.side == Side::Server && !self.config.crypto.is_tls() => {
                self.handshake_confirmed = true
            }
            SentFrame::Crypto { offset, len } => {
                if let Some(tls) = &mut self.tls {
                    tls.on_acked(offset, len);
                }
            }
            SentFrame::Ack { largest } => {
                self.ack_floor = Some(self.ack_floor.map_or(largest, |f| f.max(largest)));
            }
            _ => {}
        }
    }

    fn loss_delay(&self) -> Duration {
        let base = self.rtt.smoothed().max(self.rtt.latest());
        base.mul_f64(self.config.time_threshold).max(GRANULARITY)
    }

    fn detect_lost(&mut self, now: Instant) {
        let Some(largest) = self.largest_acked else {
            return;
        };
        let delay = self.loss_delay();
        let deadline = now.checked_sub(delay);
        let (lost, next) =
            self.sent
                .detect_lost(largest, self.config.reorder_threshold, deadline, delay);
        self.loss_time = next;
        self.on_packets_lost(now, lost, LossKind::Detected);
    }

    fn on_packets_lost(&mut self, now: Instant, lost: Vec<SentPacket>, kind: LossKind) {
        if lost.is_empty() {
            return;
        }
        let mut bytes = 0;
        let mut latest = None;
        for p in &lost {
            bytes += u64::from(p.size);
            latest = Some(p.time);
            for f in &p.frames {
                match *f {
                    SentFrame::Stream {
                        id,
                        offset,
                        len,
                        fin,
                    } => self.streams.on_stream_lost(id, offset, len, fin),
                    SentFrame::Hello => self.hello_pending = true,
                    SentFrame::PeerTokens => self.tokens_pending = true,
                    SentFrame::Crypto { offset, len } => {
                        if let Some(tls) = &mut self.tls {
                            tls.on_lost(offset, len);
                        }
                    }
                    // An ACK is never resent: later packets carry newer ones.
                    SentFrame::Ping | SentFrame::Ack { .. } => {}
                    ref other => self.streams.on_control_lost(other),
                }
            }
        }
        self.stats.packets_lost += lost.len() as u64;
        if !lost.is_empty() {
            self.last_loss = Some(now);
        }
        trace!(side = %self.side, count = lost.len(), "packets lost");
        if let Some(t) = latest {
            self.cc
                .on_loss(now, bytes, t, self.sent.bytes_in_flight(), kind);
        }
    }

    // ----- Timers ------------------------------------------------------------------------------

    fn current_rto(&self) -> Duration {
        let base = self.rtt.rto(self.config.rto_floor, GRANULARITY);
        let factor = self.config.rto_backoff.powi(self.rto_count.min(64) as i32);
        base.mul_f64(factor.min(1e6))
            .min(self.config.rto_ceiling.max(base))
    }

    fn update_loss_timer(&mut self) {
        let rto = self.sent.oldest_sent_time().map(|t| t + self.current_rto());
        let t = match (self.loss_time, rto) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match t {
            Some(t) => self.timers.set(Timer::Loss, t),
            None => self.timers.stop(Timer::Loss),
        }
        // While a PING is already owed (it may be held back by the congestion window), the
        // keepalive must not fire again: it would spin at a deadline in the past.
        let keepalive = self.config.keepalive_interval.map(|i| self.last_sent + i);
        // A client with open streams probes a silent peer sooner (see `liveness_probe`).
        let probe = match self.config.liveness_probe {
            Some(silence) if self.side == Side::Client && self.streams.open_count() > 0 => {
                let heard = self.last_received.unwrap_or(self.last_sent);
                Some(self.last_sent.max(heard) + silence)
            }
            _ => None,
        };
        let deadline = match (keepalive, probe) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (deadline, self.state) {
            (Some(at), State::Established) if !self.ping_pending => {
                self.timers.set(Timer::Keepalive, at)
            }
            _ => self.timers.stop(Timer::Keepalive),
        }
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.is_closed() {
            self.update_loss_timer();
        }
        self.timers.next()
    }

    /// Runs the timers that expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_closed() {
            self.update_loss_timer();
        }
        while let Some(timer) = self.timers.expired(now) {
            self.timers.stop(timer);
            match timer {
                Timer::Idle => {
                    let error = if self.state == State::Handshake {
                        ConnectionError::HandshakeTimeout(self.config.handshake_timeout)
                    } else {
                        ConnectionError::IdleTimeout(self.idle_timeout.unwrap_or_default())
                    };
                    debug!(side = %self.side, %error, "connection timed out");
                    self.abandon(error);
                    return;
                }
                Timer::Close => {
                    self.state = State::Closed;
                    self.timers.clear();
                    return;
                }
                Timer::Keepalive => self.ping_pending = true,
                Timer::Pacing | Timer::Batch => {}
                Timer::Loss => self.on_loss_timer(now),
            }
        }
    }

    fn on_loss_timer(&mut self, now: Instant) {
        if self.loss_time.is_some_and(|t| t <= now) {
            self.detect_lost(now);
            return;
        }
        // Packets unacknowledged for a whole timeout are lost; two probes may leave whatever
        // the congestion window says, so a timeout always puts packets on the wire, and their
        // acknowledgement lets the reorder threshold settle everything older.
        let rto = self.current_rto();
        let Some(deadline) = now.checked_sub(rto) else {
            return;
        };
        let lost = self.sent.drain_sent_before(deadline);
        if lost.is_empty() {
            return;
        }
        self.probe_credit = 2;
        self.stats.rto_expiries += 1;
        self.rto_count += 1;
        if self.rto_count >= PERSISTENT_CONGESTION_RTOS {
            self.cc.on_persistent_congestion(now);
        }
        self.on_packets_lost(now, lost, LossKind::Timeout);
    }

    // ----- Sending -----------------------------------------------------------------------------

    /// Whether packets go as cleartext handshake packets (long headers) rather than short ones.
    fn in_handshake_packets(&self) -> bool {
        match (self.config.crypto.is_tls(), self.side) {
            // Sealed short packets once both ends hold the keys (`keys_confirmed` implies keys).
            (true, _) => !self.keys_confirmed,
            (false, Side::Client) => {
                self.state == State::Handshake
                    || (self.state == State::Closing && self.peer_settings.is_none())
            }
            (false, Side::Server) => !self.handshake_confirmed,
        }
    }

    /// Appends a packet header, long (handshake) or short.
    fn header(&self, pn: u64, long: bool, out: &mut Vec<u8>) -> PacketLayout {
        let start = out.len();
        let pn32 = pn as u32;
        let header = match (long, self.side) {
            (true, Side::Client) => Header::Initial {
                version: packet::VERSION,
                dcid: self.remote_cid,
                scid: self.local_cid,
                token: self
                    .retry_token
                    .as_deref()
                    .or(self.address_token.as_deref())
                    .unwrap_or(&[]),
                pn: pn32,
            },
            (true, Side::Server) => Header::Handshake {
                version: packet::VERSION,
                dcid: self.remote_cid,
                scid: self.local_cid,
                pn: pn32,
            },
            (false, _) => Header::Short {
                dcid: self.remote_cid,
                pn: pn32,
            },
        };
        encode_header(&header, out);
        PacketLayout {
            start,
            payload: out.len(),
            initial: long && self.side == Side::Client,
            resettable: !long && self.side == Side::Client,
            sealed: !long && self.config.crypto.is_tls(),
        }
    }

    /// Where the packet being built must end: its AEAD tag needs room.
    fn packet_limit(&self, layout: &PacketLayout) -> usize {
        layout.start + self.max_datagram - if layout.sealed { TAG_LEN } else { 0 }
    }

    /// Completes the packet at the end of `buf`: pads a client Initial (amplification rule),
    /// seals a short packet under TLS.
    fn finish_packet(&mut self, pn: u64, layout: &PacketLayout, buf: &mut Vec<u8>) {
        if layout.initial {
            let min = layout.start + packet::MIN_INITIAL_SIZE;
            if buf.len() < min {
                buf.resize(min, 0);
            }
        }
        if layout.resettable {
            // A reset must be shorter than the packet that causes it, and no shorter than
            // `MIN_RESET_LEN`: a client's packets are at least one byte longer, so a server
            // that lost the connection can always answer (ACK-only packets of the plaintext
            // mode pay a few bytes of PADDING for it).
            let tag = if layout.sealed { TAG_LEN } else { 0 };
            let min = layout.start + MIN_RESET_LEN + 1 - tag;
            if buf.len() < min {
                buf.resize(min, 0);
            }
        }
        if layout.sealed {
            if let Some(keys) = &mut self.keys {
                keys.seal.seal(pn, buf, layout.start, layout.payload);
            }
        }
    }

    /// Writes an ACK frame for the packets received above the [`ack_floor`](Self::ack_floor)
    /// (the largest range whatever the floor, so there is always one). Returns the largest
    /// packet number it acknowledges, if it wrote one.
    fn write_ack(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<u64> {
        let (_, at) = self.largest_received?;
        let top = self.received.iter().next_back()?;
        let delay = now.saturating_duration_since(at).as_micros() as u64;
        let lowest = self.ack_floor.map_or(0, |f| f.saturating_add(1));
        let written = if top.end > lowest {
            let above = self.received.iter().rev();
            let above = above
                .take_while(|r| r.end > lowest)
                .map(|r| r.start.max(lowest)..r.end);
            AckFrame::encode(above, delay, MAX_ACK_RANGES_SENT, out)
        } else {
            AckFrame::encode(std::iter::once(top.clone()), delay, 1, out)
        };
        self.ack_pending = false;
        self.ack_held_since = None;
        written.then(|| top.end - 1)
    }

    /// Whether an ACK should now leave in a packet the peer acknowledges (a data packet, or an
    /// ACK-only one given a PING). ACK-only packets are never acknowledged, so without this a
    /// connection whose ACKs all leave that way would never learn that they arrived: its
    /// [`ack_floor`](Self::ack_floor) would not rise and old gaps would stay in its ACK frames.
    /// Only while there is such a gap, and at most once per round trip (RFC 9000 section
    /// 13.2.4 suggests the same for receivers that only acknowledge).
    fn ack_needs_confirming(&self, now: Instant) -> bool {
        if self.state != State::Established {
            return false;
        }
        let lowest = self.ack_floor.map_or(0, |f| f.saturating_add(1));
        let gaps = self
            .received
            .iter()
            .rev()
            .take_while(|r| r.end > lowest)
            .nth(1)
            .is_some();
        gaps && self
            .ack_confirm_sent
            .is_none_or(|at| now >= at + self.rtt.smoothed())
    }

    fn wants_to_send_eliciting(&self) -> bool {
        match self.state {
            State::Handshake => {
                self.hello_pending || self.tls.as_ref().is_some_and(|t| t.has_pending())
            }
            State::Established => {
                self.hello_pending
                    || self.ping_pending
                    || self.tokens_pending
                    || self.streams.has_pending_control()
                    || self.streams.has_pending_data()
            }
            _ => false,
        }
    }

    /// Builds the next datagram(s) into `buf` (cleared first). With `max_datagrams > 1` several
    /// equal-size datagrams for the same destination may be built, for one GSO send.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        max_datagrams: usize,
    ) -> Option<Transmit> {
        buf.clear();
        match self.state {
            State::Closed | State::Draining => return None,
            State::Closing => {
                if !self.close_pending {
                    return None;
                }
                self.close_pending = false;
                let (code, reason) = self.close_frame.clone().unwrap_or_default();
                let pn = self.next_pn;
                self.next_pn += 1;
                let layout = self.header(pn, self.in_handshake_packets(), buf);
                if self.ack_pending {
                    self.write_ack(now, buf);
                }
                frame::encode_close(code, reason.as_bytes(), buf);
                self.finish_packet(pn, &layout, buf);
                self.count_sent(buf.len());
                return Some(Transmit {
                    destination: self.remote,
                    size: buf.len(),
                    segment_size: None,
                });
            }
            _ => {}
        }
        // Path frames go to their own address, one datagram each.
        if let Some((addr, data)) = self.path_responses.pop_front() {
            return Some(self.send_path_frame(now, buf, addr, Frame::PathResponse(data)));
        }
        if let Some(c) = &mut self.path_challenge {
            if c.pending {
                c.pending = false;
                c.sent_at = Some(now);
                let (addr, data) = (c.addr, c.data);
                return Some(self.send_path_frame(now, buf, addr, Frame::PathChallenge(data)));
            }
        }
        let mut count = 0;
        let mut segment = 0;
        while count < max_datagrams.max(1) {
            let start = buf.len();
            if !self.build_packet(now, buf) {
                break;
            }
            let len = buf.len() - start;
            count += 1;
            if count == 1 {
                segment = len;
            } else if len > segment {
                // Cannot happen (full packets are the largest), but never emit a bad GSO batch.
                buf.truncate(start);
                count -= 1;
                break;
            }
            if len < segment || len < self.max_datagram {
                break;
            }
        }
        if count == 0 {
            return None;
        }
        Some(Transmit {
            destination: self.remote,
            size: buf.len(),
            segment_size: (count > 1).then_some(segment),
        })
    }

    fn count_sent(&mut self, len: usize) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += len as u64;
    }

    fn send_path_frame(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        addr: SocketAddr,
        frame: Frame<'_>,
    ) -> Transmit {
        let pn = self.next_pn;
        self.next_pn += 1;
        let layout = self.header(pn, self.in_handshake_packets(), buf);
        if self.ack_pending {
            self.write_ack(now, buf);
        }
        frame.encode(buf);
        self.finish_packet(pn, &layout, buf);
        self.sent.push(pn, None);
        self.count_sent(buf.len());
        Transmit {
            destination: addr,
            size: buf.len(),
            segment_size: None,
        }
    }

    /// Batching: true while stream data that would not fill a packet should wait for more
    /// (at most [`TransportConfig::batch_delay`]). Anything else owed ends the wait.
    fn batch_holds(&mut self, now: Instant) -> bool {
        let delay = self.config.batch_delay;
        let urgent = self.state != State::Established
            || self.hello_pending
            || self.ping_pending
            || self.tokens_pending
            || self.probe_credit > 0
            || self.streams.has_pending_control();
        // Room for stream data in one packet: the datagram less headers, frame headers and tag.
        let room = self.max_datagram.saturating_sub(64) as u64;
        if delay.is_zero() || urgent || self.streams.pending_data_at_least(room) {
            self.batch_since = None;
            return false;
        }
        match self.batch_since {
            None => {
                self.batch_since = Some(now);
                self.timers.set_earliest(Timer::Batch, now + delay);
                true
            }
            Some(since) if now >= since + delay => {
                self.batch_since = None;
                false
            }
            Some(_) => true,
        }
    }

    /// Batching: true while an acknowledgement with nothing to carry it should wait for data
    /// (at most [`TransportConfig::batch_delay`]; the ACK's delay field tells the peer, so its
    /// RTT estimate is unaffected). Without batching ACKs leave at once.
    fn ack_held(&mut self, now: Instant) -> bool {
        let delay = self.config.batch_delay;
        if delay.is_zero() || self.state != State::Established {
            return false;
        }
        match self.ack_held_since {
            None => {
                self.ack_held_since = Some(now);
                self.timers.set_earliest(Timer::Batch, now + delay);
                true
            }
            Some(since) => now < since + delay,
        }
    }

    /// Server: the client's reset and address tokens, if owed and there is room.
    fn write_tokens(&mut self, buf: &mut Vec<u8>, limit: usize, frames: &mut Vec<SentFrame>) {
        if !self.tokens_pending {
            return;
        }
        let Some((reset, address)) = &self.tokens_for_peer else {
            return;
        };
        let needed = 2 + RESET_TOKEN_LEN + 3 + address.len();
        if buf.len() + needed > limit {
            return;
        }
        Frame::ResetToken(reset.0).encode(buf);
        Frame::NewToken(address).encode(buf);
        frames.push(SentFrame::PeerTokens);
        self.tokens_pending = false;
    }

    /// Appends one packet to `buf` if there is anything to send; returns whether it did.
    fn build_packet(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        let wants = self.wants_to_send_eliciting() && !self.batch_holds(now);
        let mut may_elicit = false;
        if wants {
            let cwnd_open = self.sent.bytes_in_flight() + self.max_datagram as u64
                <= self.cc.window()
                || self.probe_credit > 0
                || self.hello_pending && self.state == State::Handshake;
            if cwnd_open {
                let rate = self.cc.pacing_rate(&self.rtt);
                match self.pacer.delay(now, rate, self.max_datagram as u64) {
                    None => may_elicit = true,
                    Some(at) => self.timers.set(Timer::Pacing, at),
                }
            }
        } else if self.state == State::Established {
            self.cc.on_app_limited(self.sent.bytes_in_flight());
        }
        if !may_elicit && (!self.ack_pending || self.ack_held(now)) {
            return false;
        }
        let start = buf.len();
        let pn = self.next_pn;
        let tls = self.config.crypto.is_tls();
        // Under TLS the server's HELLO always travels in cleartext, even when sent again after
        // the handshake: the client needs it to derive the keys.
        let long = self.in_handshake_packets()
            || (tls && may_elicit && self.hello_pending && self.side == Side::Server);
        let layout = self.header(pn, long, buf);
        let limit = self.packet_limit(&layout);
        // Most ACKs leave at once in ACK-only packets, which the peer never acknowledges, so
        // once per round trip (while old gaps are still being reported) an ACK rides in a packet
        // that will be acknowledged: a data packet, or an ACK-only one given a PING.
        let confirm_ack =
            !long && (may_elicit || (!wants && self.ack_pending)) && self.ack_needs_confirming(now);
        let acked_up_to = if self.ack_pending || confirm_ack {
            self.write_ack(now, buf)
        } else {
            None
        };
        let mut frames = Vec::new();
        if confirm_ack && acked_up_to.is_some() {
            if !may_elicit {
                buf.put_varint(frame::types::PING);
                frames.push(SentFrame::Ping);
            }
            self.ack_confirm_sent = Some(now);
        }
        if may_elicit {
            if self.hello_pending {
                buf.put_varint(frame::types::HELLO);
                buf.put_length_prefixed(&self.local_hello);
                frames.push(SentFrame::Hello);
                self.hello_pending = false;
            }
            if long {
                if let Some(tls) = &mut self.tls {
                    tls.write_frames(buf, limit, &mut frames);
                }
            }
            // Stream and control frames only ever travel sealed under TLS.
            if self.state == State::Established && !(tls && long) {
                self.write_tokens(buf, limit, &mut frames);
                self.streams.write_control(buf, limit, &mut frames);
                if self.ping_pending {
                    buf.put_varint(frame::types::PING);
                    frames.push(SentFrame::Ping);
                    self.ping_pending = false;
                }
                self.streams.write_data(buf, limit, &mut frames);
                for f in &frames {
                    if let SentFrame::Stream { len, .. } = f {
                        self.stats.stream_bytes_sent += u64::from(*len);
                    }
                }
            }
        }
        // Frames that filled a packet to within one frame of its limit leave it a few bytes
        // short: padded to the limit, every full packet is `max_datagram` long, so a run of
        // them leaves as one GSO batch (`poll_transmit` ends a batch at a shorter packet).
        if may_elicit
            && !long
            && buf.len() < limit
            && limit - buf.len() < SMALLEST_USEFUL_STREAM_FRAME
        {
            buf.resize(limit, 0);
        }
        self.finish_packet(pn, &layout, buf);
        let len = buf.len() - start;
        self.next_pn += 1;
        if frames.is_empty() {
            self.sent.push(pn, None);
        } else {
            // Only packets the peer acknowledges can tell that the ACK arrived.
            if let Some(largest) = acked_up_to {
                frames.push(SentFrame::Ack { largest });
            }
            self.probe_credit = self.probe_credit.saturating_sub(1);
            let delivery = self
                .cc
                .on_sent(now, len as u64, self.sent.bytes_in_flight());
            self.pacer.on_sent(now, len as u64);
            self.sent.push(
                pn,
                Some(SentPacket {
                    pn,
                    time: now,
                    size: len as u32,
                    frames,
                    delivery,
                }),
            );
            self.last_sent = now;
            self.maybe_duplicate_tail(pn);
        }
        self.count_sent(len);
        true
    }

    /// If packet `pn` ends a small burst, owes its stream frames once more, so that they leave
    /// again in the next packet (see [`TransportConfig::tail_duplication`]).
    fn maybe_duplicate_tail(&mut self, pn: u64) {
        let copies = std::mem::take(&mut self.duplicating);
        if !self.config.tail_duplication {
            return;
        }
        if self.streams.has_pending_data() {
            return;
        }
        let Some(frames) = self.sent.frames_of(pn) else {
            return;
        };
        let streams: Vec<SentFrame> = frames
            .iter()
            .filter(|f| match f {
                SentFrame::Stream { id, offset, .. } => !copies.contains(&(*id, *offset)),
                _ => false,
            })
            .cloned()
            .collect();
        if streams.is_empty() {
            return;
        }
        // A small burst: little in flight on the whole connection, or (many connections each
        // sending a small message at once, on a path that lost packets in the last seconds)
        // only small messages on the streams in this packet.
        let small = 3 * self.max_datagram;
        let quiet_connection = self.sent.bytes_in_flight() <= small as u64;
        let lossy = self
            .last_loss
            .is_some_and(|t| self.last_sent.saturating_duration_since(t) < LOSSY_PATH_MEMORY);
        let small_messages = lossy
            && streams.iter().all(|f| match f {
                SentFrame::Stream { id, .. } => self.streams.unacknowledged(*id) <= small,
                _ => true,
            });
        if !quiet_connection && !small_messages {
            return;
        }
        for f in streams {
            if let SentFrame::Stream {
                id,
                offset,
                len,
                fin,
            } = f
            {
                self.streams.on_stream_lost(id, offset, len, fin);
                self.duplicating.push((id, offset));
            }
        }
    }
}
