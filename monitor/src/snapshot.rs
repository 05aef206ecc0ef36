//! What the monitor shows: a snapshot of a binary's state, taken when a request comes in.
//!
//! The binaries fill it from what they already keep (connection statistics, byte meters,
//! backend pools, counters of refusals); taking it costs one pass over the live sessions, so
//! the data path never pays for monitoring.

use serde::Serialize;

/// Everything the monitor serves, at one instant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// `ferry-agent` or `ferry-gateway`.
    pub role: String,
    /// The build's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Serving: listening, and (agent) at least one gateway session up.
    pub ready: bool,
    /// Why not ready, when not.
    pub not_ready_reason: Option<String>,
    /// Process-wide counters and gauges.
    pub totals: Totals,
    /// Live sessions.
    pub sessions: Vec<SessionInfo>,
    /// Backends (gateway) or gateways (agent) and their state.
    pub backends: Vec<BackendInfo>,
    /// The most recent closed sessions, newest first.
    pub history: Vec<ClosedSession>,
    /// When the configuration was loaded, and how reloads went.
    pub config: ConfigLoads,
}

/// The configuration's loads: at start-up, and each reload (SIGHUP) since.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigLoads {
    /// When the configuration in force was loaded (start-up or the last reload that was
    /// applied), seconds since the Unix epoch.
    pub last_load_unix_seconds: f64,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads refused (a configuration that did not parse or validate).
    pub reloads_failed: u64,
    /// The last reload's result: `ok`, or why it was refused; `None` before the first one.
    pub last_reload: Option<String>,
}

/// Process-wide figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Sessions open now.
    pub sessions_active: u64,
    /// Sessions ever established.
    pub sessions_total: u64,
    /// Streams (client connections) open now.
    pub streams_active: u64,
    /// Streams ever opened.
    pub streams_total: u64,
    /// Payload bytes into the tunnel (before compression).
    pub payload_bytes_out: u64,
    /// Payload bytes out of the tunnel (after decompression).
    pub payload_bytes_in: u64,
    /// Stream bytes sent: the payload after compression and chunk framing.
    pub stream_bytes_out: u64,
    /// Stream bytes received, before decompression.
    pub stream_bytes_in: u64,
    /// UDP payload bytes sent, live sessions and closed ones.
    pub wire_bytes_out: u64,
    /// UDP payload bytes received.
    pub wire_bytes_in: u64,
    /// Datagrams sent.
    pub packets_sent: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// Stream bytes sent again.
    pub retransmitted_bytes: u64,
    /// Forward error correction: repair packets sent, their bytes, repair packets received,
    /// and the peer's lost packets rebuilt here from them.
    pub fec: FecTotals,
    /// Datagrams dropped as malformed (undecodable headers or frames).
    pub malformed_dropped: u64,
    /// Packets dropped because they failed authentication.
    pub unauthenticated_dropped: u64,
    /// Datagrams for no session this side knows: late packets of closed sessions, strays,
    /// and (on the agent) forged stateless resets.
    pub unknown_session_dropped: u64,
    /// Connections refused, by reason: `allow-list`, `limit`, `auth`, and the limits of the
    /// README's Limits table (`stream-limit`, `no-session`, `backend-limit`, `open-files`).
    pub rejected: Vec<(String, u64)>,
    /// Stateless resets, by event: `sent` and `rate-limited` (gateway: answers to datagrams for
    /// sessions it does not know, e.g. after a restart), `received` (agent: valid resets that
    /// ended a session). Forged resets fail authentication and count as unauthenticated drops.
    pub stateless_resets: Vec<(String, u64)>,
    /// UDP flows through the tunnel.
    pub udp: UdpTotals,
}

/// Forward error correction (`ferry_protocol::fec`) summed over sessions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FecTotals {
    /// Repair packets sent.
    pub repair_packets_sent: u64,
    /// Their UDP payload bytes: the cost, against `wire_bytes_out`.
    pub repair_bytes_sent: u64,
    /// Repair packets received from the peer.
    pub repair_packets_received: u64,
    /// The peer's lost packets rebuilt here without a retransmission.
    pub packets_recovered: u64,
}

/// UDP flows and their datagrams. "In" is what this binary's local sockets received (clients
/// on the agent, backends on the gateway) and carried into the tunnel; "out" is what came out
/// of the tunnel to them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UdpTotals {
    /// Flows open now.
    pub flows_active: u64,
    /// Flows opened, ever.
    pub flows_total: u64,
    /// Datagrams carried into the tunnel.
    pub datagrams_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Datagrams delivered out of the tunnel.
    pub datagrams_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// Datagrams dropped, by reason: `too-big`, `refused`, `waiting`, `socket` (here), and
    /// `congested`, `reassembly`, `late`, `unread`, `oversized` (in the sessions).
    pub dropped: Vec<(String, u64)>,
    /// Flows refused, by reason: `allow-list`, `limit`.
    pub refused: Vec<(String, u64)>,
    /// Copies sent for loss protection (`--udp-protect dup` or `auto`).
    pub copies_sent: u64,
    /// Their bytes: what the protection costs.
    pub copy_bytes: u64,
    /// Copies that arrived after their datagram and were dropped, never delivered twice.
    pub duplicates_suppressed: u64,
    /// Largest datagram the sessions carry in one packet now, without fragments (the
    /// smallest over live sessions; zero without a session).
    pub unfragmented_max: u64,
}
/// One live session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionInfo {
    /// The peer's address.
    pub peer: String,
    /// Smoothed round-trip time, seconds.
    pub rtt_seconds: f64,
    /// Packets lost / packets sent.
    pub loss_rate: f64,
    /// Streams open.
    pub streams: u64,
    /// Payload bytes into and out of the tunnel.
    pub payload_bytes_out: u64,
    /// Payload bytes out of the tunnel.
    pub payload_bytes_in: u64,
    /// UDP payload bytes sent.
    pub wire_bytes_out: u64,
    /// UDP payload bytes received.
    pub wire_bytes_in: u64,
    /// Seconds since the session started.
    pub age_seconds: f64,
    /// UDP payload size its packets are built at now (path MTU discovery moves it).
    pub datagram_size: u64,
}

/// A backend (gateway) or a gateway link (agent).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackendInfo {
    /// Service name (gateway) or empty.
    pub service: String,
    /// Address.
    pub address: String,
    /// `UP`, `DOWN` or `CONNECTING`.
    pub state: String,
    /// Streams using it now.
    pub active_streams: u64,
    /// Recent connect latency (gateway) or RTT (agent), seconds, if known.
    pub latency_seconds: Option<f64>,
}

/// A session that ended.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClosedSession {
    /// The peer's address.
    pub peer: String,
    /// Why it ended.
    pub reason: String,
    /// How long it lasted, seconds.
    pub duration_seconds: f64,
    /// Payload bytes both ways.
    pub payload_bytes: u64,
    /// UDP bytes both ways.
    pub wire_bytes: u64,
    /// Its last smoothed RTT, seconds.
    pub rtt_seconds: f64,
    /// Seconds since the process started, when it ended.
    pub ended_at_seconds: f64,
}

/// The last [`History::CAPACITY`] closed sessions.
#[derive(Debug, Default)]
pub struct History {
    items: std::sync::Mutex<std::collections::VecDeque<ClosedSession>>,
}

impl History {
    /// How many closed sessions are kept.
    pub const CAPACITY: usize = 100;

    /// Records a closed session, forgetting the oldest beyond the capacity.
    pub fn push(&self, session: ClosedSession) {
        let mut items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        if items.len() == Self::CAPACITY {
            items.pop_back();
        }
        items.push_front(session);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<ClosedSession> {
        let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        items.iter().cloned().collect()
    }
}
