//! The agent's sessions to its gateways: `--links` per gateway, each on its own UDP endpoint
//! (so several cores can drive them), each reconnecting with backoff when it is lost, and the
//! choice of the least-loaded live session with room for a stream for every new client
//! connection.
//!
//! A lost session is noticed fast: a restarted gateway (or another gateway of a fleet)
//! answers with a stateless reset, and a gateway that is down makes its host answer with an
//! ICMP port unreachable, which the endpoint's connected socket reports. Reconnection then
//! retries at most a second apart, so a gateway that comes back is found within a second, and
//! the reconnect skips the Retry round trip with the address token of the previous session.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_transport::{ConnectError, ConnectionError};
use ferry_transport::{Connection, Endpoint, Stream, TransportConfig};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::load::{Load, LoadShare};
use crate::registry::Registry;
use crate::reload::Live;
use crate::splice::Meter;

/// How long a connection attempt to a silent gateway waits before the agent says that nothing
/// answers (the handshake itself gives up later, at its timeout).
const SILENCE_REPORTED_AFTER: Duration = Duration::from_secs(2);
/// First pause before reconnecting.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts. A handshake that gets no answer already takes
/// its timeout (seconds, probing at most a second apart); one that is refused at once (ICMP)
/// costs one 1200-byte datagram. So a second between attempts finds a returning gateway
/// within a second at a negligible cost.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause after an attempt the gateway's host refused at once (ICMP port unreachable).
const REFUSED_MAX_BACKOFF: Duration = Duration::from_millis(250);

/// The pause before the next attempt to reach a gateway, after one failed with `error`: a
/// doubling [`Backoff`] from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`], or up to
/// [`REFUSED_MAX_BACKOFF`] after a refusal at once (ICMP). That cap bounds the pauses from the
/// next one on ([`Backoff::next_pause`]), so a run of refusals is retried every 250 ms. Such a
/// gateway's host is up and its process is not, usually for a restart of a second or two: try
/// again soon, since an attempt costs one datagram, and a report about an earlier attempt's
/// datagram can fail a later one, which should cost little.
fn reconnect_pause(backoff: &mut Backoff, error: &ConnectError) -> Duration {
    let cap = match error {
        ConnectError::Connection(ConnectionError::Unreachable(_)) => REFUSED_MAX_BACKOFF,
        _ => MAX_BACKOFF,
    };
    backoff.next_pause(cap)
}

/// Why a new client got no stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoStream {
    /// No session to any gateway was up within `--session-wait`.
    NoSession,
    /// Every live session is at the gateway's `--max-streams`; the fullest has this many
    /// streams open.
    StreamLimit { open_streams: usize },
}

/// What the monitor reports of the links' endpoints.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct EndpointTotals {
    pub malformed_dropped: u64,
    pub unknown_session_dropped: u64,
    pub stateless_resets_received: u64,
}

/// One link to one gateway.
struct Slot {
    gateway: SocketAddr,
    /// The live session and its byte meter (payload and encoded, for the compression saving).
    conn: Mutex<Option<(Connection, Arc<Meter>)>>,
    /// Streams on this link.
    load: Load,
    /// The link's UDP endpoint, for its counters.
    endpoint: Endpoint,
    /// The transport settings of the link's next session (a reload may replace them; the
    /// session up now keeps those it was made with).
    config: Live<TransportConfig>,
}

/// Every session of the agent.
pub(super) struct Sessions {
    slots: Vec<Arc<Slot>>,
    /// Live and closed sessions, for the monitor.
    pub registry: Arc<Registry>,
    /// Session handshakes that failed (a gateway refused us, or we refused its certificate).
    pub handshakes_failed: std::sync::atomic::AtomicU64,
    changed: Notify,
    /// Set at shutdown: sessions are not re-established any more.
    stopping: std::sync::atomic::AtomicBool,
}

/// The session that carries one client's stream; counts as its load until dropped.
pub(super) struct Lease {
    /// The session's byte meter.
    pub meter: Arc<Meter>,
    _load: LoadShare,
}

impl Sessions {
    /// Starts `links` sessions to each gateway, with that gateway's transport settings; they
    /// connect (and reconnect) in the background.
    pub fn start(
        gateways: &[(SocketAddr, TransportConfig)],
        links: usize,
        registry: Arc<Registry>,
    ) -> std::io::Result<Arc<Self>> {
        let mut slots = Vec::new();
        let mut endpoints = Vec::new();
        for (gateway, config) in gateways {
            for _ in 0..links.max(1) {
                let endpoint = Endpoint::client_to(*gateway)?;
                endpoints.push(endpoint.clone());
                slots.push(Arc::new(Slot {
                    gateway: *gateway,
                    conn: Mutex::new(None),
                    load: Load::default(),
                    endpoint,
                    config: Live::new(config.clone()),
                }));
            }
        }
        let sessions = Arc::new(Self {
            slots,
            registry,
            handshakes_failed: std::sync::atomic::AtomicU64::new(0),
            changed: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        for (i, endpoint) in endpoints.into_iter().enumerate() {
            let sessions = sessions.clone();
            tokio::spawn(async move { sessions.keep_connected(i, endpoint).await });
        }
        Ok(sessions)
    }

    /// Makes `config` the transport settings of `gateway`'s next sessions (reconnects, and
    /// links not up yet); the sessions up now keep theirs. False if no link goes to `gateway`.
    pub fn set_transport(&self, gateway: SocketAddr, config: &TransportConfig) -> bool {
        let mut found = false;
        for slot in self.slots.iter().filter(|s| s.gateway == gateway) {
            slot.config.set(config.clone());
            found = true;
        }
        found
    }

    async fn keep_connected(self: Arc<Self>, index: usize, endpoint: Endpoint) {
        let slot = self.slots[index].clone();
        let mut backoff = Backoff::new(FIRST_BACKOFF);
        // Failed attempts in a row: the first is a warning, and so is each that fails for a
        // different reason (a gateway that was down and now refuses our certificate must say
        // so); repeats are debug lines, so a gateway down for an hour logs one line.
        let mut failures = 0u64;
        let mut last_warned = String::new();
        // Whether this run of failed attempts has already said that the gateway is silent.
        let mut silence_reported = false;
        info!(gateway = %slot.gateway, link = index, "connecting to gateway");
        while !self.stopping.load(Ordering::SeqCst) {
            let config = slot.config.get();
            let attempt = endpoint.connect(slot.gateway, TransportConfig::clone(&config));
            tokio::pin!(attempt);
            // A gateway that does not answer at all (down, or UDP filtered on the way) fails
            // the handshake only after its timeout: say so well before, once per outage.
            let result = tokio::select! {
                r = &mut attempt => r,
                () = tokio::time::sleep(SILENCE_REPORTED_AFTER), if !silence_reported => {
                    silence_reported = true;
                    warn!(
                        gateway = %slot.gateway,
                        link = index,
                        waited = ?SILENCE_REPORTED_AFTER,
                        gives_up_after = ?config.handshake_timeout,
                        "no answer from the gateway yet; still trying (is it running, and does UDP reach it?)"
                    );
                    attempt.await
                }
            };
            match result {
                Ok(conn) => {
                    if failures > 0 {
                        info!(gateway = %slot.gateway, link = index, failed_attempts = failures, "session up again");
                    } else {
                        info!(gateway = %slot.gateway, link = index, "session up");
                    }
                    failures = 0;
                    last_warned.clear();
                    silence_reported = false;
                    let meter = self.registry.add(&conn);
                    *slot.conn.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((conn.clone(), meter));
                    self.changed.notify_waiters();
                    backoff.reset();
                    let reason = conn.closed().await;
                    *slot.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    self.registry.remove(&conn);
                    if self.stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    warn!(gateway = %slot.gateway, link = index, %reason, "session lost; its streams are reset; reconnecting");
                }
                Err(e) => {
                    if matches!(
                        e,
                        ConnectError::Connection(ConnectionError::HandshakeFailed(_))
                    ) {
                        self.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    failures += 1;
                    let message = e.to_string();
                    if message != last_warned {
                        last_warned = message;
                        warn!(gateway = %slot.gateway, link = index, error = %e, "cannot reach gateway; retrying at most a second apart");
                    } else {
                        debug!(gateway = %slot.gateway, link = index, error = %e, attempt = failures, "cannot reach gateway");
                    }
                    tokio::time::sleep(reconnect_pause(&mut backoff, &e)).await;
                }
            }
        }
    }

    /// Counters of every link's endpoint, added up: datagrams dropped as malformed or for no
    /// known session (forged resets among them), and valid stateless resets received.
    pub fn endpoint_totals(&self) -> EndpointTotals {
        let mut t = EndpointTotals::default();
        for slot in &self.slots {
            let e = slot.endpoint.stats();
            t.malformed_dropped += e.malformed_dropped;
            t.unknown_session_dropped += e.unknown_connection_dropped;
            t.stateless_resets_received += e.stateless_resets_received;
        }
        t
    }

    /// Sessions the agent keeps: `--links` per gateway.
    pub fn link_count(&self) -> usize {
        self.slots.len()
    }

    /// Each link: its gateway, whether its session is up (and its RTT), and its streams.
    pub fn links(&self) -> Vec<(SocketAddr, Option<std::time::Duration>, usize)> {
        self.slots
            .iter()
            .map(|s| {
                let live = s.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let rtt = live.and_then(|(conn, _)| conn.stats()).map(|st| st.rtt);
                (s.gateway, rtt, s.load.get())
            })
            .collect()
    }

    /// A stream on the least-loaded live session that has room for one. The gateway's
    /// `--max-streams` bounds each session's open streams; a session at that limit is passed
    /// over for the next, so links (and gateways) with room carry the client.
    fn try_open(&self) -> Result<(Lease, Stream), NoStream> {
        let mut live: Vec<(&Arc<Slot>, Connection, Arc<Meter>)> = self
            .slots
            .iter()
            .filter_map(|s| {
                let (conn, meter) = s.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
                conn.close_reason().is_none().then_some((s, conn, meter))
            })
            .collect();
        live.sort_by_key(|(s, _, _)| s.load.get());
        let mut open_streams = None;
        for (slot, conn, meter) in live {
            match conn.try_open_stream() {
                Ok(Some(stream)) => {
                    let lease = Lease {
                        meter,
                        _load: slot.load.share(),
                    };
                    return Ok((lease, stream));
                }
                Ok(None) => {
                    let open = conn.stream_count();
                    open_streams = Some(open_streams.map_or(open, |o: usize| o.max(open)));
                }
                // Lost since the check: the next session may do.
                Err(_) => {}
            }
        }
        Err(match open_streams {
            Some(open_streams) => NoStream::StreamLimit { open_streams },
            None => NoStream::NoSession,
        })
    }

    /// Opens a stream for a new client on the least-loaded live session with room. With no
    /// session up (the agent is starting or reconnecting), waits up to `session_wait` for one;
    /// when every live session is at the gateway's stream limit, answers at once: a stream
    /// frees up only when an earlier client leaves, which may take hours, so the client is
    /// better told now.
    pub async fn open_stream(&self, session_wait: Duration) -> Result<(Lease, Stream), NoStream> {
        let deadline = tokio::time::Instant::now() + session_wait;
        loop {
            let changed = self.changed.notified();
            match self.try_open() {
                Err(NoStream::NoSession) => {}
                done => return done,
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.try_open();
            }
        }
    }

    /// Every live session.
    pub fn live(&self) -> Vec<Connection> {
        self.slots
            .iter()
            .filter_map(|s| {
                let live = s.conn.lock().unwrap_or_else(|e| e.into_inner()).clone();
                live.map(|(conn, _)| conn)
            })
            .collect()
    }

    /// Shutdown: no more reconnections; every session closes once its streams are finished
    /// and everything sent was acknowledged. Returns false if `deadline` came first.
    pub async fn close_all(&self, deadline: tokio::time::Instant) -> bool {
        self.stopping.store(true, Ordering::SeqCst);
        crate::registry::close_gracefully(&self.live(), "agent shutting down", deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_transport::ServerConfig;

    const MS: Duration = Duration::from_millis(1);

    fn timed_out() -> ConnectError {
        ConnectError::Connection(ConnectionError::HandshakeTimeout(Duration::from_secs(5)))
    }

    fn refused_at_once() -> ConnectError {
        ConnectError::Connection(ConnectionError::Unreachable("port unreachable".into()))
    }

    #[test]
    fn reconnect_attempts_back_off_to_a_second_apart() {
        let mut backoff = Backoff::new(FIRST_BACKOFF);
        let pauses: Vec<_> = (0..6)
            .map(|_| reconnect_pause(&mut backoff, &timed_out()))
            .collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000].map(|m| m * MS));
    }

    #[test]
    fn a_gateway_host_that_refuses_at_once_is_retried_within_250_ms() {
        let mut backoff = Backoff::new(FIRST_BACKOFF);
        let pauses: Vec<_> = (0..5)
            .map(|_| reconnect_pause(&mut backoff, &refused_at_once()))
            .collect();
        assert_eq!(pauses, [100, 200, 250, 250, 250].map(|m| m * MS));
    }

    /// A gateway on loopback that accepts sessions, each allowed `max_streams` streams, and
    /// keeps them open until the test ends.
    fn gateway(max_streams: u64) -> SocketAddr {
        let transport = TransportConfig {
            max_concurrent_streams: max_streams,
            ..TransportConfig::default()
        };
        let endpoint =
            Endpoint::server("127.0.0.1:0".parse().unwrap(), ServerConfig::new(transport)).unwrap();
        let addr = endpoint.local_addr();
        tokio::spawn(async move {
            let mut sessions = Vec::new();
            while let Some(conn) = endpoint.accept().await {
                sessions.push(conn);
            }
        });
        addr
    }

    /// Waits until every link's session is up.
    async fn all_up(sessions: &Sessions) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !sessions.links().iter().all(|(_, rtt, _)| rtt.is_some()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sessions never came up"
            );
            tokio::time::sleep(10 * MS).await;
        }
    }

    /// The streams each link carries, in link order.
    fn loads(sessions: &Sessions) -> Vec<usize> {
        sessions.links().iter().map(|(_, _, load)| *load).collect()
    }

    #[tokio::test]
    async fn a_new_stream_goes_to_the_least_loaded_session_with_room() {
        // Two gateways: the first allows one stream per session, the second three.
        let config = TransportConfig::default();
        let gateways = [(gateway(1), config.clone()), (gateway(3), config)];
        let sessions = Sessions::start(&gateways, 1, Arc::new(Registry::new())).unwrap();
        all_up(&sessions).await;
        let mut open = Vec::new();
        let mut after_each = Vec::new();
        for _ in 0..4 {
            open.push(sessions.open_stream(Duration::ZERO).await.unwrap());
            after_each.push(loads(&sessions));
        }
        // Equal loads go to the first link; a link at its gateway's limit is passed over.
        assert_eq!(after_each, [[1, 0], [1, 1], [1, 2], [1, 3]]);
        let full = sessions.open_stream(Duration::ZERO).await.err();
        assert_eq!(full, Some(NoStream::StreamLimit { open_streams: 3 }));
        // A lease counts until it is dropped.
        drop(open.pop());
        assert_eq!(loads(&sessions), [1, 2]);
    }

    #[tokio::test]
    async fn with_no_session_up_a_client_waits_session_wait_then_is_told() {
        // A port nothing listens on: every attempt is refused.
        let nobody = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let gateways = [(nobody, TransportConfig::default())];
        let sessions = Sessions::start(&gateways, 2, Arc::new(Registry::new())).unwrap();
        let started = tokio::time::Instant::now();
        let outcome = sessions.open_stream(200 * MS).await.err();
        assert_eq!(outcome, Some(NoStream::NoSession));
        assert!(started.elapsed() >= 200 * MS);
        assert_eq!(loads(&sessions), [0, 0]);
        assert!(sessions.close_all(tokio::time::Instant::now()).await);
    }
}
