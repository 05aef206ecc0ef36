//! The registry of a binary's live sessions and what closed ones leave behind (totals, the
//! last 100 for `/stats-history`), shared by the agent and the gateway: the gateway also uses it
//! to find every session to close at shutdown, the monitor to describe them. The two ways a
//! shutdown ends sessions, gracefully ([`close_gracefully`]) and at once ([`abort_all`]), are
//! here too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_monitor::{ClosedSession, History, SessionInfo, Totals};
use ferry_transport::{close_code, Connection, ConnectionHandle, ConnectionStats};

use crate::splice::Meter;

/// A live session.
struct Live {
    conn: Connection,
    meter: Arc<Meter>,
    started: Instant,
}

/// Transport counters summed over sessions (closed ones are kept, so totals never drop when
/// a session ends).
#[derive(Default, Clone)]
struct Wire {
    bytes_out: u64,
    bytes_in: u64,
    packets_sent: u64,
    packets_lost: u64,
    retransmitted: u64,
    unauthenticated: u64,
    datagrams: ferry_transport::datagrams::DatagramStats,
    fec: ferry_transport::fec::FecStats,
}

impl Wire {
    fn add(&mut self, s: &ConnectionStats) {
        self.bytes_out += s.bytes_sent;
        self.bytes_in += s.bytes_received;
        self.packets_sent += s.packets_sent;
        self.packets_lost += s.packets_lost;
        self.retransmitted += s.stream_bytes_retransmitted;
        self.unauthenticated += s.unauthenticated_packets;
        let (f, o) = (&mut self.fec, &s.fec);
        f.repair_packets_sent += o.repair_packets_sent;
        f.repair_bytes_sent += o.repair_bytes_sent;
        f.repair_packets_received += o.repair_packets_received;
        f.packets_recovered += o.packets_recovered;
        let (d, o) = (&mut self.datagrams, &s.datagrams);
        d.copies_sent += o.copies_sent;
        d.copy_bytes += o.copy_bytes;
        d.duplicates_suppressed += o.duplicates_suppressed;
        d.dropped_congested += o.dropped_congested;
        d.reassembly_failures += o.reassembly_failures;
        d.dropped_late += o.dropped_late;
        d.dropped_unread += o.dropped_unread;
        d.dropped_oversized += o.dropped_oversized;
    }

    fn add_to(&self, t: &mut Totals) {
        t.wire_bytes_out += self.bytes_out;
        t.wire_bytes_in += self.bytes_in;
        t.packets_sent += self.packets_sent;
        t.packets_lost += self.packets_lost;
        t.retransmitted_bytes += self.retransmitted;
        t.unauthenticated_dropped += self.unauthenticated;
        let f = &self.fec;
        t.fec.repair_packets_sent += f.repair_packets_sent;
        t.fec.repair_bytes_sent += f.repair_bytes_sent;
        t.fec.repair_packets_received += f.repair_packets_received;
        t.fec.packets_recovered += f.packets_recovered;
        let (d, u) = (&self.datagrams, &mut t.udp);
        u.copies_sent += d.copies_sent;
        u.copy_bytes += d.copy_bytes;
        u.duplicates_suppressed += d.duplicates_suppressed;
        for (reason, n) in [
            ("congested", d.dropped_congested),
            ("reassembly", d.reassembly_failures),
            ("late", d.dropped_late),
            ("unread", d.dropped_unread),
            ("oversized", d.dropped_oversized),
        ] {
            match u.dropped.iter_mut().find(|(r, _)| r == reason) {
                Some((_, total)) => *total += n,
                None => u.dropped.push((reason.into(), n)),
            }
        }
    }
}

/// Every session, live and recently closed.
pub struct Registry {
    started: Instant,
    live: Mutex<HashMap<ConnectionHandle, Live>>,
    closed: Mutex<Wire>,
    history: History,
    sessions_total: AtomicU64,
    /// Streams accepted, ever.
    pub streams_total: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry; uptime counts from now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            live: Mutex::default(),
            closed: Mutex::default(),
            history: History::default(),
            sessions_total: AtomicU64::new(0),
            streams_total: AtomicU64::new(0),
        }
    }

    /// A session was accepted; returns its byte meter.
    pub fn add(&self, conn: &Connection) -> Arc<Meter> {
        let meter = Arc::new(Meter::default());
        self.sessions_total.fetch_add(1, Ordering::Relaxed);
        let live = Live {
            conn: conn.clone(),
            meter: meter.clone(),
            started: Instant::now(),
        };
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(conn.handle(), live);
        meter
    }

    /// A session ended: its figures go to the totals and the history.
    pub fn remove(&self, conn: &Connection) {
        let Some(live) = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&conn.handle())
        else {
            return;
        };
        let stats = conn.stats().unwrap_or_default();
        let bytes = live.meter.snapshot();
        self.closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&stats);
        self.history.push(ClosedSession {
            peer: conn
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            reason: conn
                .close_reason()
                .map_or_else(|| "closed".to_owned(), |e| e.to_string()),
            duration_seconds: live.started.elapsed().as_secs_f64(),
            payload_bytes: bytes.to_tunnel + bytes.from_tunnel,
            wire_bytes: stats.bytes_sent + stats.bytes_received,
            rtt_seconds: stats.rtt.as_secs_f64(),
            ended_at_seconds: self.started.elapsed().as_secs_f64(),
        });
    }

    /// The live sessions' connections.
    pub fn connections(&self) -> Vec<Connection> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.values().map(|l| l.conn.clone()).collect()
    }
}

/// Loss rate of a session: packets lost per packet sent.
pub fn loss_rate(stats: &ConnectionStats) -> f64 {
    if stats.packets_sent == 0 {
        0.0
    } else {
        stats.packets_lost as f64 / stats.packets_sent as f64
    }
}

impl Registry {
    /// Seconds since the registry (the process) started.
    pub fn uptime_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Sessions ever added.
    pub fn sessions_total(&self) -> u64 {
        self.sessions_total.load(Ordering::Relaxed)
    }

    /// The closed sessions kept, newest first.
    pub fn history(&self) -> Vec<ClosedSession> {
        self.history.list()
    }

    /// Adds the figures of live and closed sessions to `t` (wire bytes, packets, drops,
    /// session counts) and describes each live session.
    pub fn describe(&self, t: &mut Totals) -> Vec<SessionInfo> {
        let mut wire = self
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut unfragmented: Option<u64> = None;
        let mut sessions = Vec::new();
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        for l in live.values() {
            let Some(stats) = l.conn.stats() else {
                continue;
            };
            let bytes = l.meter.snapshot();
            wire.add(&stats);
            let max = stats.datagrams.unfragmented_max;
            unfragmented = Some(unfragmented.map_or(max, |m| m.min(max)));
            sessions.push(SessionInfo {
                peer: l
                    .conn
                    .remote_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                rtt_seconds: stats.rtt.as_secs_f64(),
                loss_rate: loss_rate(&stats),
                streams: l.conn.stream_count() as u64,
                payload_bytes_out: bytes.to_tunnel,
                payload_bytes_in: bytes.from_tunnel,
                wire_bytes_out: stats.bytes_sent,
                wire_bytes_in: stats.bytes_received,
                age_seconds: l.started.elapsed().as_secs_f64(),
                datagram_size: stats.datagram_size,
            });
        }
        drop(live);
        wire.add_to(t);
        t.udp.unfragmented_max = unfragmented.unwrap_or(0);
        t.sessions_active = sessions.len() as u64;
        t.sessions_total = self.sessions_total();
        t.streams_total = self.streams_total.load(Ordering::Relaxed);
        sessions
    }
}

/// Closes every session in `live` gracefully, telling each peer `reason`: each closes once its
/// streams are finished and everything sent was acknowledged. Returns false if `deadline` came
/// first. The sessions close concurrently (their drivers do the work); waiting for one after
/// the other therefore takes as long as the slowest.
pub async fn close_gracefully(
    live: &[Connection],
    reason: &str,
    deadline: tokio::time::Instant,
) -> bool {
    for conn in live {
        conn.close_gracefully(reason);
    }
    tokio::time::timeout_at(deadline, async {
        for conn in live {
            conn.closed().await;
        }
    })
    .await
    .is_ok()
}

/// How long a process that aborts its sessions on the way out gives their driver to send the
/// close packets: one turn of the driver task is enough; 50 ms leaves room on a loaded machine.
const CLOSE_SEND_GRACE: Duration = Duration::from_millis(50);

/// Ends every session in `live` at once, telling each peer `reason` with an error code, so the
/// peer resets the streams (and their outer sockets) now, rather than when its packets go
/// unanswered or at its idle timeout; then gives the driver a moment to send the close before
/// the process exits. For a shutdown whose drain timeout passed.
pub async fn abort_all(live: &[Connection], reason: &str) {
    if live.is_empty() {
        return;
    }
    for conn in live {
        conn.close(close_code::APPLICATION, reason);
    }
    tokio::time::sleep(CLOSE_SEND_GRACE).await;
}
