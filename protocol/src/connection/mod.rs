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
//!
//! This file holds the state, its construction and the application's calls; the rest is split
//! the way quinn splits its connection: `receive` (packets in, frames applied), `handshake`
//! (HELLO, TLS, Retry, establishment), `loss` (ACKs received, loss detection, the RTO), `send`
//! (packet building, batching, tail duplication), `paths` (path validation and migration),
//! `ending` (closing, draining, abandoning), `timer` (the timer table) and `stats` (the
//! counters).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tracing::debug;

use crate::config::TransportConfig;
use crate::congestion::pacing::Pacer;
use crate::congestion::Controller;
use crate::crypto::{PacketKeys, TlsHandshake};
use crate::datagrams::{Datagram, DatagramError, DatagramSet, Protection};
use crate::fec::{FecReceiver, FecSender};
use crate::loss_rate::{LossRate, LossRuns};
use crate::mtud::Mtud;
use crate::ranges::RangeSet;
use crate::recovery::SentPackets;
use crate::rtt::RttEstimator;
use crate::streams::{ReadOutcome, StreamError, StreamEvent, StreamSet};
use crate::wire::frame::LossReport;
use crate::wire::ids::{ConnectionId, Side, StreamId};
use crate::wire::settings::Settings;
use crate::wire::stateless_reset::ResetToken;

pub use crate::wire::close::{close_code, ConnectionError};
pub use stats::ConnectionStats;

mod ending;
mod fec;
mod handshake;
mod loss;
mod paths;
mod receive;
mod send;
mod stats;
mod timer;
use timer::{Timer, TimerTable};

/// Mixed into the connection's seed for its congestion controller, so that the two do not draw
/// the same numbers.
const CONGESTION_SEED_SALT: u64 = 0x6262_725f_7068_6173;
/// Timer granularity assumed for the time threshold and the RTO.
const GRANULARITY: Duration = Duration::from_millis(1);
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
    /// A datagram arrived with none unread before: read them with
    /// [`Connection::recv_datagram`] until it returns `None`.
    DatagramReceived,
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
    /// Path MTU discovery: the size `max_datagram` follows once established.
    mtud: Mtud,
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
    /// `MAX_ACK_RANGES_SENT` ranges) for as long as the connection lives.
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
    /// Delayed acknowledgement (see [`TransportConfig::ack_delay`]): when an owed ACK must
    /// leave even if no data has come to carry it.
    ///
    /// [`TransportConfig::ack_delay`]: crate::config::TransportConfig::ack_delay
    ack_deadline: Option<Instant>,
    /// The owed ACK leaves at once: a gap, reordering, a duplicate, or two full datagrams'
    /// worth received since the last ACK.
    ack_immediate: bool,
    /// Bytes of ack-eliciting packets received since the last ACK was sent.
    unacked_received_bytes: usize,
    /// Ack-eliciting packets that may be sent beyond the congestion window: after a
    /// retransmission timeout, probes must leave whatever the window says.
    probe_credit: u8,

    streams: StreamSet,
    datagrams: DatagramSet,
    /// The path's recent loss, counting packets the peer rebuilt from repairs as lost: what
    /// adaptive datagram protection and FEC follow.
    loss_rate: LossRate,
    /// Forward error correction: our groups and repairs, and the peer's.
    fec_tx: FecSender,
    fec_rx: FecReceiver,
    /// The peer's packets missing on arrival (gaps in packet numbers, before repair): what we
    /// report to the peer for its repairs, and the value last reported.
    arrival_loss: LossRate,
    /// How those missing packets cluster (runs of consecutive numbers), also reported.
    arrival_runs: LossRuns,
    loss_reported: Option<(LossReport, Instant)>,
    /// Packet numbers a newer packet skipped, and since when: missing, but not counted as lost
    /// until they stay missing past the reordering allowance.
    arrival_gaps: VecDeque<(u64, Instant)>,
    /// The peer's last LOSS_REPORT and its lossy verdict: our packets' loss on the way there,
    /// which repairs hide from our own loss detection.
    peer_loss: Option<fec::PeerLoss>,
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
            mtud: Mtud::new(max_datagram as u16, max_datagram as u16),
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
            ack_deadline: None,
            ack_immediate: false,
            unacked_received_bytes: 0,
            probe_credit: 0,
            streams: StreamSet::new(side, limits),
            datagrams: DatagramSet::default(),
            loss_rate: LossRate::default(),
            fec_tx: FecSender::default(),
            fec_rx: FecReceiver::default(),
            arrival_loss: LossRate::default(),
            arrival_runs: LossRuns::default(),
            arrival_gaps: VecDeque::new(),
            loss_reported: None,
            peer_loss: None,
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
        s.datagram_size = self.max_datagram as u64;
        s.mtu_black_holes = self.mtud.black_holes();
        s.datagrams = self.datagrams.stats(self.path_lossy_for_datagrams());
        s.datagrams.unfragmented_max =
            crate::datagrams::unfragmented_max(self.datagram_room()) as u64;
        s.recent_loss_per_mille = self.loss_rate.per_mille();
        s.fec = self.fec_stats();
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

    /// True when stream control frames (flow-control credit, stream limits, resets) wait to be
    /// sent: after a read, an I/O driver needs to run only then.
    pub fn has_pending_control(&self) -> bool {
        self.streams.has_pending_control()
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

    /// Queues an unreliable datagram on `flow` (see [`crate::datagrams`]); it leaves before
    /// stream data on the next `poll_transmit`. Too large a datagram is refused, never cut.
    pub fn send_datagram(
        &mut self,
        now: Instant,
        flow: u64,
        data: &[u8],
        protection: Protection,
    ) -> Result<(), DatagramError> {
        if self.state != State::Established {
            return Err(DatagramError::Closed);
        }
        let peer_max = self
            .peer_settings
            .as_ref()
            .map_or(0, |s| s.max_datagram_payload);
        // A datagram that asks for FEC leaves room in its packet for the source mark and for a
        // repair of the packet to fit a packet too.
        let fec = protection == Protection::Fec && self.fec_negotiated();
        let room = self.datagram_room() - if fec { crate::fec::SOURCE_RESERVE } else { 0 };
        let fragmentation = self.config.datagram_fragmentation;
        let path = crate::datagrams::PathState {
            lossy: self.path_lossy_for_datagrams(),
            fec: self.fec_negotiated(),
        };
        self.datagrams.send(
            now,
            flow,
            data,
            protection,
            room,
            peer_max,
            fragmentation,
            path,
        )
    }

    /// Packets are built at `size` bytes from now on (path MTU discovery moved).
    fn set_datagram_size(&mut self, size: u16) {
        if usize::from(size) != self.max_datagram {
            debug!(side = %self.side, from = self.max_datagram, to = size, "datagram size changed");
            self.max_datagram = usize::from(size);
        }
    }

    /// Bytes a packet holds for one datagram frame.
    pub(super) fn datagram_room(&self) -> usize {
        let tag = if self.config.crypto.is_tls() {
            crate::crypto::TAG_LEN
        } else {
            0
        };
        self.max_datagram - crate::wire::packet::SHORT_HEADER_LEN - tag
    }

    /// The next datagram received, if any.
    pub fn recv_datagram(&mut self) -> Option<Datagram> {
        self.datagrams.recv()
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

    // ----- Timers ------------------------------------------------------------------------------

    /// Arms the datagram timer for the next copy due or reassembly to give up.
    fn update_datagram_timer(&mut self) {
        let copy = self
            .datagrams
            .next_copy_due()
            .filter(|_| self.state == State::Established);
        match copy.into_iter().chain(self.datagrams.next_expiry()).min() {
            Some(at) => self.timers.set(Timer::Datagram, at),
            None => self.timers.stop(Timer::Datagram),
        }
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.is_closed() {
            self.update_loss_timer();
            self.update_datagram_timer();
            match self.fec_tx.deadline() {
                Some(at) if self.state == State::Established => self.timers.set(Timer::Fec, at),
                _ => self.timers.stop(Timer::Fec),
            }
            match self.mtud.next_deadline() {
                Some(at) if self.state == State::Established => self.timers.set(Timer::Mtu, at),
                _ => self.timers.stop(Timer::Mtu),
            }
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
                Timer::Pacing | Timer::Batch | Timer::Ack => {}
                Timer::Datagram => self.datagrams.on_timer(now),
                Timer::Mtu => self.mtud.on_timeout(now),
                Timer::Fec => self.fec_hold_ended(now),
                Timer::Loss => self.on_loss_timer(now),
            }
        }
    }
}
