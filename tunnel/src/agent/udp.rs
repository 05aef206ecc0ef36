//! The agent's UDP listeners (`--listen udp://IP:PORT[=SERVICE]`): each client address is one
//! flow (see [`crate::udp`]), opened on the least-loaded session when its first datagram
//! arrives, carried as datagrams, and ended after `--udp-idle-timeout` without a datagram
//! either way. The replies come back through one task per session ([`Routes`]) that sends each
//! datagram to the client of its flow, and to no one else.
//!
//! Refusals are counted and logged (rate-limited) with their reason: a client outside
//! `--allow-ip`, over `--max-connections` (flows and TCP clients share it), no session within
//! `--session-wait`, or a flow the gateway reset (its limits, an unknown service, no UDP
//! backend). A refused client's datagrams are dropped, counted, for a second before its flow
//! is tried again, so a refusal is not retried for every datagram.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_transport::datagrams::DatagramError;
use ferry_transport::{Connection, ConnectionHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::debug;

use super::client::Context;
use super::sessions::NoStream;
use crate::preamble::Preamble;
use crate::splice::codes;
use crate::udp::{sweep_interval, LastActive, UdpCounters, MAX_UDP_PAYLOAD};

/// Datagrams a client may send while its flow opens; more are dropped (counted).
const OPENING_QUEUE: usize = 8;
/// Bytes all clients' datagrams may hold while their flows open; more are dropped (counted).
/// A flood of new source addresses cannot make the agent buffer more.
const OPENING_BYTES: usize = 4 << 20;
/// How long a refused client's datagrams are dropped before its flow is tried again.
const REFUSED_FOR: Duration = Duration::from_secs(1);
/// How long a flow that ended waits for the gateway to end its side too.
const END_WAIT: Duration = Duration::from_secs(5);

/// One client's flow, once open.
struct Flow {
    conn: Connection,
    id: u64,
    active: LastActive,
    /// Notified to end the flow (idle, or the agent shutting down).
    end: Notify,
}

/// What a listener knows of a client address.
enum Entry {
    /// The flow is being opened; its first datagrams wait.
    Opening(Vec<Vec<u8>>),
    Open(Arc<Flow>),
    /// Refused lately: datagrams are dropped until then.
    Refused(Instant),
}

/// Where each flow's replies go, by session and flow id, and the task per session that
/// delivers them.
#[derive(Default)]
pub(super) struct Routes {
    map: Mutex<HashMap<(ConnectionHandle, u64), Route>>,
    dispatching: Mutex<HashSet<ConnectionHandle>>,
}

struct Route {
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    flow: Arc<Flow>,
}

impl Routes {
    fn add(self: &Arc<Self>, route: Route, counters: &Arc<UdpCounters>) {
        let conn = route.flow.conn.clone();
        let handle = conn.handle();
        lock(&self.map).insert((handle, route.flow.id), route);
        if lock(&self.dispatching).insert(handle) {
            tokio::spawn(dispatch(self.clone(), conn, counters.clone()));
        }
    }

    fn remove(&self, flow: &Flow) {
        lock(&self.map).remove(&(flow.conn.handle(), flow.id));
    }

    /// Ends every flow (the agent is shutting down).
    pub(super) fn end_all(&self) {
        for route in lock(&self.map).values() {
            route.flow.end.notify_one();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Delivers a session's datagrams to the clients of their flows, until the session ends.
async fn dispatch(routes: Arc<Routes>, conn: Connection, counters: Arc<UdpCounters>) {
    let handle = conn.handle();
    while let Some(d) = conn.recv_datagram().await {
        let route = lock(&routes.map)
            .get(&(handle, d.flow))
            .map(|r| (r.socket.clone(), r.client, r.flow.clone()));
        let Some((socket, client, flow)) = route else {
            // A reply for a flow that just ended.
            UdpCounters::count(&counters.dropped_waiting);
            continue;
        };
        flow.active.touch();
        match socket.try_send_to(&d.data, client) {
            Ok(_) => counters.carried_out(d.data.len()),
            Err(e) => {
                UdpCounters::count(&counters.dropped_socket);
                crate::warn_limited!(client = %client, error = %e, "UDP datagram to a client dropped: the socket did not take it");
            }
        }
    }
    lock(&routes.dispatching).remove(&handle);
}

/// Serves one UDP listener whose flows reach `service`; never returns.
pub(super) async fn serve(
    socket: UdpSocket,
    service: String,
    ctx: Arc<Context>,
    udp: Arc<AgentUdp>,
) {
    let socket = Arc::new(socket);
    // Replies are sent with `try_send_to`, which refuses (WouldBlock) until the reactor has
    // seen the socket writable once.
    let _ = socket.writable().await;
    let flows: Arc<Mutex<HashMap<SocketAddr, Entry>>> = Arc::default();
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD];
    let mut sweep = tokio::time::interval(sweep_interval(udp.idle_timeout));
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, client)) => {
                    let listener = Listener { socket: &socket, service: &service, ctx: &ctx, udp: &udp, flows: &flows };
                    listener.on_datagram(&buf[..n], client);
                }
                Err(e) => {
                    crate::warn_limited!(error = %e, "UDP listener: receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sweep.tick() => sweep_idle(&flows, udp.idle_timeout),
        }
    }
}

/// Ends flows idle for `timeout` and forgets refusals that expired.
fn sweep_idle(flows: &Mutex<HashMap<SocketAddr, Entry>>, timeout: Duration) {
    let now = Instant::now();
    lock(flows).retain(|client, entry| match entry {
        Entry::Open(flow) if flow.active.idle() >= timeout => {
            debug!(%client, ?timeout, "UDP flow idle: ending it");
            flow.end.notify_one();
            false
        }
        Entry::Refused(until) => *until > now,
        _ => true,
    });
}

struct Listener<'a> {
    socket: &'a Arc<UdpSocket>,
    service: &'a str,
    ctx: &'a Arc<Context>,
    udp: &'a Arc<AgentUdp>,
    flows: &'a Arc<Mutex<HashMap<SocketAddr, Entry>>>,
}

impl Listener<'_> {
    fn on_datagram(&self, data: &[u8], client: SocketAddr) {
        let counters = &self.udp.counters;
        let mut flows = lock(self.flows);
        match flows.get_mut(&client) {
            Some(Entry::Open(flow)) => {
                if send(flow, data, self.udp, client) {
                    return;
                }
                // The session is gone: this flow ends, a new one carries the datagram.
                flow.end.notify_one();
                flows.remove(&client);
            }
            Some(Entry::Opening(queued)) => {
                if queued.len() < OPENING_QUEUE && self.udp.hold(data.len()) {
                    queued.push(data.to_vec());
                } else {
                    UdpCounters::count(&counters.dropped_waiting);
                }
                return;
            }
            Some(Entry::Refused(until)) if *until > Instant::now() => {
                UdpCounters::count(&counters.dropped_refused);
                return;
            }
            _ => {}
        }
        let settings = self.ctx.settings.get();
        if settings
            .allow
            .as_ref()
            .is_some_and(|a| !a.allows(client.ip()))
        {
            UdpCounters::count(&counters.refused_allow);
            UdpCounters::count(&counters.dropped_refused);
            crate::warn_limited!(client = %client, "UDP datagram dropped: client not in --allow-ip");
            return;
        }
        if !self.udp.hold(data.len()) {
            UdpCounters::count(&counters.dropped_waiting);
            return;
        }
        let Some(permit) = self.ctx.limit.try_acquire() else {
            self.udp.release(data.len());
            UdpCounters::count(&counters.refused_limit);
            UdpCounters::count(&counters.dropped_refused);
            self.ctx.refusals.limit.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(client = %client, limit = self.ctx.limit.max(), "UDP flow refused: over --max-connections (flows and TCP clients count together)");
            return;
        };
        flows.insert(client, Entry::Opening(vec![data.to_vec()]));
        tokio::spawn(open_flow(
            self.socket.clone(),
            client,
            self.service.to_owned(),
            self.ctx.clone(),
            self.udp.clone(),
            self.flows.clone(),
            permit,
        ));
    }
}

/// Sends a client's datagram on its flow; false when the flow's session is gone.
fn send(flow: &Flow, data: &[u8], udp: &AgentUdp, client: SocketAddr) -> bool {
    let counters = &udp.counters;
    flow.active.touch();
    match flow.conn.send_datagram(flow.id, data, udp.protection) {
        Ok(()) => counters.carried_in(data.len()),
        Err(DatagramError::TooBig { size, max }) => {
            UdpCounters::count(&counters.dropped_too_big);
            crate::warn_limited!(%client, size, max, "UDP datagram dropped: larger than a session can carry");
        }
        Err(DatagramError::Unsupported) => {
            UdpCounters::count(&counters.dropped_refused);
            crate::warn_limited!(%client, "UDP datagram dropped: the gateway does not accept datagrams (a version before UDP flows?)");
        }
        Err(DatagramError::Closed | DatagramError::FlowOutOfRange(_)) => return false,
    }
    true
}

/// Why a flow ended.
enum End {
    /// Idle here, or the agent is shutting down.
    Here,
    /// The gateway ended it (its idle timeout).
    Gateway,
    /// The gateway reset it: refused, or the session died.
    Reset(Option<u64>),
}

async fn open_flow(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    service: String,
    ctx: Arc<Context>,
    udp: Arc<AgentUdp>,
    flows: Arc<Mutex<HashMap<SocketAddr, Entry>>>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let refuse = || {
        let old = lock(&flows).insert(client, Entry::Refused(Instant::now() + REFUSED_FOR));
        if let Some(Entry::Opening(queued)) = old {
            udp.release(queued.iter().map(Vec::len).sum());
            for _ in &queued {
                UdpCounters::count(&udp.counters.dropped_refused);
            }
        }
    };
    let session_wait = ctx.settings.get().session_wait;
    let (lease, mut stream) = match ctx.sessions.open_stream(session_wait).await {
        Ok(opened) => opened,
        Err(NoStream::NoSession) => {
            ctx.refusals.no_session.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(%client, wait = ?session_wait, "UDP flow refused: no gateway session came up within --session-wait");
            return refuse();
        }
        Err(NoStream::StreamLimit { open_streams }) => {
            ctx.refusals.stream_limit.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(%client, open_streams, "UDP flow refused: every gateway session is at its stream limit (the gateway's --max-streams)");
            return refuse();
        }
    };
    let preamble = Preamble {
        service,
        client: Some(client),
        destination: socket.local_addr().ok(),
        udp_flow: Some(udp.protection),
    };
    if let Err(e) = stream.write_all(&preamble.encode()).await {
        crate::warn_limited!(%client, error = %e, "UDP flow refused: its stream failed at once");
        return refuse();
    }
    let flow = Arc::new(Flow {
        conn: stream.connection(),
        id: stream.id().0,
        active: LastActive::new(),
        end: Notify::new(),
    });
    let counters = &udp.counters;
    let _count = counters.flow_opened();
    udp.routes.add(
        Route {
            socket,
            client,
            flow: flow.clone(),
        },
        counters,
    );
    let queued = match lock(&flows).insert(client, Entry::Open(flow.clone())) {
        Some(Entry::Opening(queued)) => queued,
        _ => Vec::new(),
    };
    udp.release(queued.iter().map(Vec::len).sum());
    for d in queued {
        send(&flow, &d, &udp, client);
    }
    debug!(%client, flow = flow.id, "UDP flow open");
    let mut byte = [0u8; 1];
    let end = tokio::select! {
        read = stream.read(&mut byte) => match read {
            Ok(0) => End::Gateway,
            _ => End::Reset(stream.reset_code()),
        },
        _ = flow.end.notified() => End::Here,
    };
    udp.routes.remove(&flow);
    {
        let mut flows = lock(&flows);
        if matches!(flows.get(&client), Some(Entry::Open(f)) if Arc::ptr_eq(f, &flow)) {
            flows.remove(&client);
        }
    }
    match end {
        End::Here => {
            let _ = stream.shutdown().await;
            let _ = tokio::time::timeout(END_WAIT, stream.read(&mut byte)).await;
        }
        End::Gateway => {
            debug!(%client, "UDP flow ended by the gateway (idle)");
            let _ = stream.shutdown().await;
        }
        End::Reset(code) => {
            let reason = match code {
                Some(codes::LIMIT) => {
                    "a gateway limit (--max-udp-flows, --max-udp-flows-per-session, open files)"
                }
                Some(codes::UNKNOWN_SERVICE) => "unknown service, or it has no udp:// backend",
                Some(codes::BACKEND_UNREACHABLE) => "backend unreachable",
                Some(codes::BAD_PREAMBLE) => {
                    "the gateway does not understand UDP flows (an older version?)"
                }
                Some(codes::SHUTDOWN) => "the gateway is shutting down",
                Some(codes::NOT_ALLOWED) => "this agent is not in the gateway's --allow-ip",
                _ => "the session ended",
            };
            crate::warn_limited!(%client, reason, "UDP flow ended by the gateway");
            if matches!(
                code,
                Some(
                    codes::LIMIT
                        | codes::UNKNOWN_SERVICE
                        | codes::BACKEND_UNREACHABLE
                        | codes::BAD_PREAMBLE
                        | codes::NOT_ALLOWED
                )
            ) {
                refuse();
            }
        }
    }
    drop(lease);
}

/// The agent's UDP settings and state, shared by its UDP listeners.
pub(super) struct AgentUdp {
    pub counters: Arc<UdpCounters>,
    pub idle_timeout: Duration,
    pub protection: ferry_transport::datagrams::Protection,
    pub routes: Arc<Routes>,
    /// Bytes held for flows being opened (at most [`OPENING_BYTES`]).
    pub opening_bytes: std::sync::atomic::AtomicUsize,
}

impl AgentUdp {
    /// Holds `len` more bytes for a flow being opened, if within [`OPENING_BYTES`].
    fn hold(&self, len: usize) -> bool {
        let held = self.opening_bytes.fetch_add(len, Ordering::Relaxed);
        if held + len > OPENING_BYTES {
            self.opening_bytes.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Releases `len` bytes held for an opening flow.
    fn release(&self, len: usize) {
        self.opening_bytes.fetch_sub(len, Ordering::Relaxed);
    }
}
