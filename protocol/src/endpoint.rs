//! Many connections on one UDP socket: routing by connection ID, stateless handshake replies,
//! connection admission, and fair scheduling of transmissions and timers.
//!
//! The endpoint is what a driver talks to. It owns every [`Connection`] on a socket and answers
//! the datagrams that belong to none without allocating anything per sender: version
//! negotiation, Retry (address validation), and refusals. Before a client has proved its address
//! with a token, every answer is far smaller than the 1200-byte Initial that caused it, well within
//! the 3x anti-amplification bound.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tracing::{debug, trace, warn};

use crate::config::{ConfigError, ServerConfig, TransportConfig};
use crate::connection::{close_code, Connection, Event, Transmit};
use crate::wire::cookie::{TokenKey, TokenKind};
use crate::wire::fleet::{self, FleetKeys};
use crate::wire::frame;
use crate::wire::ids::{ConnectionId, Side};
use crate::wire::packet::{self, encode_header, Header, Packet};
use crate::wire::stateless_reset::{ResetKey, ResetLimiter, MAX_RESET_LEN, MIN_RESET_LEN};

/// Identifies a connection within its endpoint. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub u64);

impl fmt::Display for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Decides whether a source address may reach the server (an allow-list). Checked on a client's
/// first packet, before anything is allocated, and again before migrating to a new address.
pub type AddressFilter = Arc<dyn Fn(&SocketAddr) -> bool + Send + Sync>;

/// Counters of everything the endpoint dropped or answered statelessly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams handed to the endpoint.
    pub datagrams_received: u64,
    /// UDP payload bytes received.
    pub bytes_received: u64,
    /// Datagrams whose header could not be decoded.
    pub malformed_dropped: u64,
    /// Datagrams for no known connection.
    pub unknown_connection_dropped: u64,
    /// Initials smaller than the minimum size (possible amplification attempts).
    pub short_initial_dropped: u64,
    /// Datagrams from addresses the filter rejects.
    pub address_rejected: u64,
    /// Retry packets sent.
    pub retries_sent: u64,
    /// Version negotiations sent.
    pub version_negotiations_sent: u64,
    /// Connections refused (limit reached, invalid token).
    pub connections_refused: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Stateless replies dropped because too many were queued.
    pub stateless_replies_dropped: u64,
    /// Server connections whose handshake failed (TLS refused, settings differ, timeout).
    pub handshakes_failed: u64,
    /// Stateless resets sent, for datagrams addressed to connections this server does not know.
    pub stateless_resets_sent: u64,
    /// Stateless resets not sent because of the rate limit.
    pub stateless_resets_limited: u64,
    /// Client: valid stateless resets received (each ended a connection).
    pub stateless_resets_received: u64,
    /// Server: connections whose first Initial carried a valid address token (no Retry).
    pub address_tokens_accepted: u64,
    /// Server: address tokens that were stale or foreign (answered with a Retry).
    pub address_tokens_rejected: u64,
}

/// Handshake-failure warnings are logged at most this often; the rest are counted.
const HANDSHAKE_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Why `connect` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The transport configuration is unusable.
    #[error("invalid transport configuration: {0}")]
    InvalidConfig(ConfigError),
}

/// Why [`Endpoint::replace_server_config`] kept the configuration it had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplaceServerConfigError {
    /// A client endpoint accepts no connections.
    #[error("not a server endpoint")]
    NotAServer,
    /// The new transport settings are unusable for a server.
    #[error("invalid transport configuration: {0}")]
    InvalidConfig(ConfigError),
    /// `what` (the static secret, the server ID, the stateless-reset rate) differs: the keys
    /// and connection IDs derived from it at creation cannot change under live connections.
    #[error("the {0} cannot change while the endpoint runs")]
    Fixed(&'static str),
}

/// Most stateless replies queued at once; beyond that they are dropped (and counted).
const MAX_STATELESS_QUEUED: usize = 256;

/// Client: servers whose address tokens are remembered at once (an agent has a few gateways).
const MAX_ADDRESS_TOKENS: usize = 64;

struct Slot {
    conn: Connection,
    /// Timer currently registered in `Endpoint::timers`.
    scheduled: Option<Instant>,
    /// In the transmit round-robin.
    queued: bool,
    /// In the queue of connections with events.
    eventful: bool,
    /// Server side: handed out by `accept` already.
    announced: bool,
}

/// A set of connections sharing one socket.
pub struct Endpoint {
    server: Option<ServerConfig>,
    address_filter: Option<AddressFilter>,
    rng: ChaCha20Rng,
    /// The secret the token and reset keys come from, kept to re-key on `set_wall_clock`.
    token_secret: [u8; 32],
    token_key: TokenKey,
    /// Server: computes the reset tokens of its connection IDs.
    reset_key: ResetKey,
    reset_limiter: ResetLimiter,
    /// Client: the latest address token of each server, for the next connection to it.
    address_tokens: HashMap<SocketAddr, Vec<u8>>,
    slots: HashMap<ConnectionHandle, Slot>,
    by_cid: HashMap<ConnectionId, ConnectionHandle>,
    by_initial_dcid: HashMap<ConnectionId, ConnectionHandle>,
    next_handle: u64,
    transmit_queue: VecDeque<ConnectionHandle>,
    timers: BTreeSet<(Instant, ConnectionHandle)>,
    touched: BTreeSet<ConnectionHandle>,
    eventful: VecDeque<ConnectionHandle>,
    incoming: VecDeque<ConnectionHandle>,
    stateless: VecDeque<(SocketAddr, Vec<u8>)>,
    stats: EndpointStats,
    /// Latest time the endpoint was given, for rate-limiting warnings.
    now: Instant,
    /// When the last handshake-failure warning was logged, and how many were not since.
    handshake_warning: Option<(Instant, u64)>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("connections", &self.slots.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Endpoint {
    /// An endpoint; with a `server` configuration it accepts connections. `seed` seeds every
    /// random choice (connection IDs, token key, challenges): pass 32 bytes from the operating
    /// system's generator in production, a fixed value in simulations.
    ///
    /// Token times are wall-clock times (tokens outlive the process); until
    /// [`Endpoint::set_wall_clock`] says otherwise, `now` stands for the Unix epoch.
    pub fn new(server: Option<ServerConfig>, seed: [u8; 32], now: Instant) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut random = [0u8; 32];
        rng.fill_bytes(&mut random);
        let keys = match server.as_ref().and_then(|s| s.static_secret.as_ref()) {
            Some(secret) => FleetKeys::derive(&secret.0),
            None => FleetKeys::derive(&random),
        };
        let reset_rate = server.as_ref().map_or(0, |s| s.stateless_reset_rate);
        Self {
            server,
            address_filter: None,
            rng,
            token_secret: keys.token,
            token_key: TokenKey::new(keys.token, now, std::time::Duration::ZERO),
            reset_key: ResetKey::new(keys.reset),
            reset_limiter: ResetLimiter::new(reset_rate, reset_rate),
            address_tokens: HashMap::new(),
            slots: HashMap::new(),
            by_cid: HashMap::new(),
            by_initial_dcid: HashMap::new(),
            next_handle: 0,
            transmit_queue: VecDeque::new(),
            timers: BTreeSet::new(),
            touched: BTreeSet::new(),
            eventful: VecDeque::new(),
            incoming: VecDeque::new(),
            stateless: VecDeque::new(),
            stats: EndpointStats::default(),
            now,
            handshake_warning: None,
        }
    }

    /// Tells the endpoint that the wall clock read `unix` (time since the Unix epoch) at `now`,
    /// so that address tokens carry times another process (a restart, a fleet member) reads
    /// the same way. Tokens issued before the call become invalid.
    pub fn set_wall_clock(&mut self, now: Instant, unix: std::time::Duration) {
        self.token_key = TokenKey::new(self.token_secret, now, unix);
    }

    /// Restricts which source addresses may connect (and migrate) to this server.
    pub fn set_address_filter(&mut self, filter: Option<AddressFilter>) {
        self.address_filter = filter;
    }

    /// Replaces a server's configuration for the connections it accepts from now on (their
    /// transport settings, TLS certificate and key included, and `max_connections`); live
    /// connections keep the settings they were made with. The static secret, server ID and
    /// stateless-reset rate must stay as they were (the keys derived from them serve live
    /// connections): a change is refused with [`ReplaceServerConfigError::Fixed`], and nothing
    /// is replaced.
    pub fn replace_server_config(
        &mut self,
        config: ServerConfig,
    ) -> Result<(), ReplaceServerConfigError> {
        let Some(current) = &self.server else {
            return Err(ReplaceServerConfigError::NotAServer);
        };
        if config.static_secret != current.static_secret {
            return Err(ReplaceServerConfigError::Fixed("static secret"));
        }
        if config.server_id != current.server_id {
            return Err(ReplaceServerConfigError::Fixed("server ID"));
        }
        if config.stateless_reset_rate != current.stateless_reset_rate {
            return Err(ReplaceServerConfigError::Fixed("stateless-reset rate"));
        }
        config
            .transport
            .validate_for(Side::Server)
            .map_err(ReplaceServerConfigError::InvalidConfig)?;
        self.server = Some(config);
        Ok(())
    }

    /// Counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.slots.len()
    }

    /// Handles of every live connection, in creation order.
    pub fn connection_handles(&self) -> Vec<ConnectionHandle> {
        let mut v: Vec<_> = self.slots.keys().copied().collect();
        v.sort();
        v
    }

    /// A fresh connection ID: random for a client; for a server, with the fleet layout and
    /// its server ID (see [`crate::wire::fleet`]).
    fn new_cid(&mut self) -> ConnectionId {
        let server_id = self.server.as_ref().and_then(|s| s.server_id);
        loop {
            let mut nonce = [0u8; ConnectionId::LEN];
            self.rng.fill_bytes(&mut nonce);
            let cid = if self.server.is_some() {
                fleet::server_cid(server_id, nonce)
            } else {
                ConnectionId(nonce)
            };
            if !self.by_cid.contains_key(&cid) {
                return cid;
            }
        }
    }

    fn insert(&mut self, conn: Connection) -> ConnectionHandle {
        let handle = ConnectionHandle(self.next_handle);
        self.next_handle += 1;
        self.by_cid.insert(conn.local_cid(), handle);
        self.slots.insert(
            handle,
            Slot {
                conn,
                scheduled: None,
                queued: false,
                eventful: false,
                announced: false,
            },
        );
        self.touched.insert(handle);
        handle
    }

    /// Starts a connection to `remote`.
    pub fn connect(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        config: TransportConfig,
    ) -> Result<ConnectionHandle, ConnectError> {
        config
            .validate_for(Side::Client)
            .map_err(ConnectError::InvalidConfig)?;
        let local = self.new_cid();
        let initial = self.new_cid();
        let seed = self.rng.next_u64();
        let token = self.address_tokens.get(&remote).cloned();
        let conn = Connection::new_client(now, remote, config, local, initial, seed, token);
        Ok(self.insert(conn))
    }

    /// A connection, for stream calls. Accessing it marks it for the next `poll_*` calls.
    pub fn connection(&mut self, handle: ConnectionHandle) -> Option<&mut Connection> {
        let slot = self.slots.get_mut(&handle)?;
        self.touched.insert(handle);
        Some(&mut slot.conn)
    }

    /// A connection, read-only.
    pub fn connection_ref(&self, handle: ConnectionHandle) -> Option<&Connection> {
        self.slots.get(&handle).map(|s| &s.conn)
    }

    /// Next connection accepted by this server.
    pub fn accept(&mut self) -> Option<ConnectionHandle> {
        self.process_touched();
        self.incoming.pop_front()
    }

    fn queue_stateless(&mut self, remote: SocketAddr, datagram: Vec<u8>) {
        if self.stateless.len() >= MAX_STATELESS_QUEUED {
            self.stats.stateless_replies_dropped += 1;
            return;
        }
        self.stateless.push_back((remote, datagram));
    }

    /// Processes one received datagram.
    pub fn handle_datagram(&mut self, now: Instant, remote: SocketAddr, datagram: &[u8]) {
        self.now = self.now.max(now);
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        let packet = match Packet::decode(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed_dropped += 1;
                trace!(%remote, error = %e, "dropping malformed datagram");
                return;
            }
        };
        let dcid = packet.header.dcid();
        let handle = self
            .by_cid
            .get(&dcid)
            .or_else(|| match packet.header {
                Header::Initial { .. } => self.by_initial_dcid.get(&dcid),
                _ => None,
            })
            .copied();
        if let Some(handle) = handle {
            if let Some(filter) = &self.address_filter {
                let known = self.slots.get(&handle).map(|s| s.conn.remote());
                if known != Some(remote) && !filter(&remote) {
                    self.stats.address_rejected += 1;
                    return;
                }
            }
            if let Some(slot) = self.slots.get_mut(&handle) {
                slot.conn
                    .handle_packet(now, remote, &packet, datagram.len());
                self.touched.insert(handle);
            }
            return;
        }
        match packet.header {
            Header::Initial {
                version,
                dcid,
                scid,
                token,
                ..
            } => self.handle_first_initial(
                now,
                remote,
                &packet,
                datagram.len(),
                version,
                dcid,
                scid,
                token,
            ),
            Header::Short { dcid, .. } => self.handle_unknown_short(now, remote, dcid, datagram),
            _ => {
                self.stats.unknown_connection_dropped += 1;
            }
        }
    }

    /// A short-header datagram for no connection we know: a client checks whether it is a
    /// stateless reset of one of its connections; a server answers it with one (see
    /// [`crate::wire::stateless_reset`]). Anything else is dropped and counted.
    fn handle_unknown_short(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        dcid: ConnectionId,
        datagram: &[u8],
    ) {
        let reset = self
            .slots
            .iter()
            .find(|(_, slot)| {
                slot.conn
                    .peer_reset_token()
                    .is_some_and(|t| t.matches(datagram))
            })
            .map(|(h, _)| *h);
        if let Some(handle) = reset {
            if let Some(slot) = self.slots.get_mut(&handle) {
                slot.conn.on_stateless_reset();
                self.touched.insert(handle);
                self.stats.stateless_resets_received += 1;
            }
            return;
        }
        self.stats.unknown_connection_dropped += 1;
        if self.server.is_none() || datagram.len() <= MIN_RESET_LEN {
            return;
        }
        if self.address_filter.as_ref().is_some_and(|f| !f(&remote)) {
            self.stats.address_rejected += 1;
            return;
        }
        if !self.reset_limiter.allow(now) {
            self.stats.stateless_resets_limited += 1;
            return;
        }
        let extra = (self.rng.next_u32() as usize) % (MAX_RESET_LEN - MIN_RESET_LEN + 1);
        let rng = &mut self.rng;
        if let Some(reset) = self
            .reset_key
            .reset_for(dcid, datagram.len(), extra, |b| rng.fill_bytes(b))
        {
            trace!(%remote, %dcid, "answering a packet for an unknown connection with a stateless reset");
            self.stats.stateless_resets_sent += 1;
            self.queue_stateless(remote, reset);
        }
    }

    /// The socket reported that nothing listens at `remote` (ICMP port unreachable, seen on a
    /// connected socket): handshakes with it fail at once, and established connections to it
    /// that have heard nothing lately end (see [`Connection`]).
    pub fn handle_unreachable(&mut self, now: Instant, remote: SocketAddr) {
        self.now = self.now.max(now);
        let handles: Vec<ConnectionHandle> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.conn.remote() == remote)
            .map(|(h, _)| *h)
            .collect();
        for handle in handles {
            if let Some(slot) = self.slots.get_mut(&handle) {
                slot.conn.on_peer_unreachable(now);
                self.touched.insert(handle);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_first_initial(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        packet: &Packet<'_>,
        len: usize,
        version: u32,
        dcid: ConnectionId,
        scid: ConnectionId,
        token: &[u8],
    ) {
        let Some(server) = &self.server else {
            self.stats.unknown_connection_dropped += 1;
            return;
        };
        if len < packet::MIN_INITIAL_SIZE {
            self.stats.short_initial_dropped += 1;
            return;
        }
        if let Some(filter) = &self.address_filter {
            if !filter(&remote) {
                self.stats.address_rejected += 1;
                return;
            }
        }
        if !packet::SUPPORTED_VERSIONS.contains(&version) {
            let versions: Vec<u8> = packet::SUPPORTED_VERSIONS
                .iter()
                .flat_map(|v| v.to_be_bytes())
                .collect();
            let mut out = Vec::with_capacity(64);
            encode_header(
                &Header::VersionNegotiation {
                    dcid: scid,
                    scid: dcid,
                    versions: &versions,
                },
                &mut out,
            );
            self.stats.version_negotiations_sent += 1;
            self.queue_stateless(remote, out);
            return;
        }
        // No token, or an address token that is stale or another key's: a Retry. A Retry
        // token (or garbage) that does not check out: a refusal.
        let validated = match TokenKey::kind_of(token) {
            _ if token.is_empty() => Err(None),
            Some(TokenKind::Address) => {
                let lifetime = server.address_token_lifetime;
                let check = self
                    .token_key
                    .validate_address_token(now, token, remote, lifetime);
                match &check {
                    Ok(()) => self.stats.address_tokens_accepted += 1,
                    Err(e) => {
                        debug!(%remote, error = %e, "address token not accepted: sending a Retry");
                        self.stats.address_tokens_rejected += 1;
                    }
                }
                check.map_err(|_| None)
            }
            _ => {
                let lifetime = server.retry_token_lifetime;
                self.token_key
                    .validate(now, token, remote, scid, dcid, lifetime)
                    .map_err(Some)
            }
        };
        match validated {
            Ok(()) => {}
            Err(None) => {
                let token = self.token_key.issue(now, remote, scid, dcid);
                let mut out = Vec::with_capacity(64);
                encode_header(
                    &Header::Retry {
                        version,
                        dcid: scid,
                        scid: dcid,
                        token: &token,
                    },
                    &mut out,
                );
                self.stats.retries_sent += 1;
                self.queue_stateless(remote, out);
                return;
            }
            Err(Some(e)) => {
                debug!(%remote, error = %e, "refusing Initial");
                self.refuse(
                    remote,
                    scid,
                    dcid,
                    close_code::INVALID_TOKEN,
                    &e.to_string(),
                );
                return;
            }
        }
        if self.slots.len() >= server.max_connections {
            let reason = format!(
                "server at its limit of {} connections",
                server.max_connections
            );
            debug!(%remote, %reason, "refusing connection");
            self.refuse(remote, scid, dcid, close_code::REFUSED, &reason);
            return;
        }
        let config = server.transport.clone();
        let local = self.new_cid();
        let seed = self.rng.next_u64();
        let mut conn = Connection::new_server(now, remote, config, local, scid, dcid, seed);
        conn.set_tokens_for_peer(
            self.reset_key.token(local),
            self.token_key.issue_address_token(now, remote).to_vec(),
        );
        let handle = self.insert(conn);
        self.by_initial_dcid.insert(dcid, handle);
        if let Some(slot) = self.slots.get_mut(&handle) {
            slot.conn.handle_packet(now, remote, packet, len);
        }
    }

    /// Sends a stateless CLOSE in a Handshake packet: the client's address was validated (or the
    /// reply is far below 3x its 1200-byte Initial), and nothing is kept.
    fn refuse(
        &mut self,
        remote: SocketAddr,
        client_cid: ConnectionId,
        orig_dcid: ConnectionId,
        code: u64,
        reason: &str,
    ) {
        self.stats.connections_refused += 1;
        let mut out = Vec::with_capacity(128);
        encode_header(
            &Header::Handshake {
                version: packet::VERSION,
                dcid: client_cid,
                scid: orig_dcid,
                pn: 0,
            },
            &mut out,
        );
        frame::encode_close(code, reason.as_bytes(), &mut out);
        self.queue_stateless(remote, out);
    }

    /// Applies the consequences of calls into connections since the last poll: transmit queue,
    /// timers, events, and forgetting finished connections.
    fn process_touched(&mut self) {
        while let Some(handle) = self.touched.pop_first() {
            self.refresh(handle);
        }
    }

    fn refresh(&mut self, handle: ConnectionHandle) {
        let Some(slot) = self.slots.get_mut(&handle) else {
            return;
        };
        if !slot.queued {
            slot.queued = true;
            self.transmit_queue.push_back(handle);
        }
        if slot.conn.has_events() && !slot.eventful {
            slot.eventful = true;
            self.eventful.push_back(handle);
        }
        if !slot.announced
            && slot.conn.side() == crate::wire::ids::Side::Server
            && slot.conn.is_established()
        {
            slot.announced = true;
            self.stats.connections_accepted += 1;
            self.incoming.push_back(handle);
        }
        Self::reschedule(&mut self.timers, handle, slot);
        if let Some(token) = slot.conn.take_new_address_token() {
            let server = slot.conn.remote();
            if self.address_tokens.len() < MAX_ADDRESS_TOKENS
                || self.address_tokens.contains_key(&server)
            {
                self.address_tokens.insert(server, token);
            }
        }
        if slot.conn.is_drained() {
            self.remove(handle);
        }
    }

    /// Moves the connection's entry in the timer set to its current next timeout.
    fn reschedule(
        timers: &mut BTreeSet<(Instant, ConnectionHandle)>,
        handle: ConnectionHandle,
        slot: &mut Slot,
    ) {
        let next = slot.conn.poll_timeout();
        if next != slot.scheduled {
            if let Some(old) = slot.scheduled {
                timers.remove(&(old, handle));
            }
            if let Some(new) = next {
                timers.insert((new, handle));
            }
            slot.scheduled = next;
        }
    }

    fn remove(&mut self, handle: ConnectionHandle) {
        if let Some(slot) = self.slots.remove(&handle) {
            if let Some(t) = slot.scheduled {
                self.timers.remove(&(t, handle));
            }
            self.by_cid.remove(&slot.conn.local_cid());
            if self.by_initial_dcid.get(&slot.conn.initial_dcid()) == Some(&handle) {
                self.by_initial_dcid.remove(&slot.conn.initial_dcid());
            }
            trace!(%handle, "connection forgotten");
        }
    }

    /// Next datagram(s) to send, written at the start of `buf`. Connections take turns.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        buf: &mut Vec<u8>,
        max_datagrams: usize,
    ) -> Option<Transmit> {
        self.process_touched();
        if let Some((destination, datagram)) = self.stateless.pop_front() {
            buf.clear();
            buf.extend_from_slice(&datagram);
            return Some(Transmit {
                destination,
                size: datagram.len(),
                segment_size: None,
            });
        }
        while let Some(handle) = self.transmit_queue.pop_front() {
            let Some(slot) = self.slots.get_mut(&handle) else {
                continue;
            };
            match slot.conn.poll_transmit(now, buf, max_datagrams) {
                Some(t) => {
                    // Back of the queue (still marked queued): the next call serves another
                    // connection first.
                    self.transmit_queue.push_back(handle);
                    self.touched.insert(handle);
                    return Some(t);
                }
                None => {
                    slot.queued = false;
                    Self::reschedule(&mut self.timers, handle, slot);
                }
            }
        }
        None
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.process_touched();
        self.timers.first().map(|(t, _)| *t)
    }

    /// Runs every connection timer due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.process_touched();
        while let Some(&(t, handle)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            if let Some(slot) = self.slots.get_mut(&handle) {
                slot.scheduled = None;
                slot.conn.handle_timeout(now);
                self.touched.insert(handle);
            }
        }
        self.process_touched();
    }

    /// Counts a server connection whose handshake failed, and warns, rate-limited: operators
    /// must see refused peers (a wrong certificate...), but a flood must not flood the log.
    fn on_handshake_failed(&mut self, remote: SocketAddr, error: &str) {
        self.stats.handshakes_failed += 1;
        let now = self.now;
        match &mut self.handshake_warning {
            Some((last, suppressed)) if now < *last + HANDSHAKE_WARNING_INTERVAL => {
                *suppressed += 1;
            }
            state => {
                let suppressed = state.map_or(0, |(_, s)| s);
                warn!(%remote, %error, suppressed, "handshake failed");
                *state = Some((now, 0));
            }
        }
    }

    /// Next application event, with the connection it concerns.
    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        self.process_touched();
        while let Some(&handle) = self.eventful.front() {
            let Some(slot) = self.slots.get_mut(&handle) else {
                self.eventful.pop_front();
                continue;
            };
            match slot.conn.poll_event() {
                Some(event) => {
                    if !slot.announced && slot.conn.side() == Side::Server {
                        if let Event::Closed(error) = &event {
                            let remote = slot.conn.remote();
                            self.on_handshake_failed(remote, &error.to_string());
                        }
                    }
                    let Some(slot) = self.slots.get_mut(&handle) else {
                        continue;
                    };
                    if !slot.conn.has_events() {
                        slot.eventful = false;
                        self.eventful.pop_front();
                    }
                    if slot.conn.is_drained() {
                        self.remove(handle);
                    }
                    return Some((handle, event));
                }
                None => {
                    slot.eventful = false;
                    self.eventful.pop_front();
                }
            }
        }
        None
    }
}
