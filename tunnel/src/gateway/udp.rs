//! UDP flows on the gateway (see [`crate::udp`]): a flow's stream, once its preamble says it
//! is one, gets a backend socket of its own, connected to the least-loaded `udp://` backend of
//! its service; datagrams go both ways between that socket and the session until the agent
//! ends the flow or it is idle for `--udp-idle-timeout`. The backend's replies carry the flow's
//! id, so they reach only that flow's client.
//!
//! Each session has one task ([`dispatch`]) that hands the agent's datagrams to their flows'
//! backend sockets. A flow's first datagrams may arrive before its stream's preamble has been
//! read (datagrams are sent before stream data): they wait in a small, bounded, short-lived
//! room ([`PENDING_FLOWS`] flows, [`PENDING_PER_FLOW`] datagrams each, [`PENDING_BYTES`] in
//! all, for [`PENDING_FOR`]).
//!
//! Limits: `--max-udp-flows` per gateway and `--max-udp-flows-per-session`; a flow over
//! either is reset with the `LIMIT` code, counted and logged (rate-limited).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_transport::datagrams::{DatagramError, Protection};
use ferry_transport::{Connection, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

use super::pool::Pool;
use crate::address::Address;
use crate::preamble::Preamble;
use crate::splice::{codes, refuse};
use crate::udp::{LastActive, UdpCounters, MAX_UDP_PAYLOAD};

/// Flows whose datagrams may wait for their stream's preamble at once.
pub const PENDING_FLOWS: usize = 64;
/// Datagrams that may wait for one flow.
pub const PENDING_PER_FLOW: usize = 16;
/// How long datagrams wait for their flow.
pub const PENDING_FOR: Duration = Duration::from_secs(2);
/// Bytes that may wait for their flows in one session, all flows together.
pub const PENDING_BYTES: usize = 1 << 20;
/// How long a flow that ended waits for the agent to end its side too.
const END_WAIT: Duration = Duration::from_secs(5);

/// One session's UDP flows.
pub(super) struct SessionFlows {
    conn: Connection,
    routes: Mutex<HashMap<u64, Route>>,
    pending: Mutex<HashMap<u64, Pending>>,
    count: AtomicUsize,
}

struct Route {
    socket: Arc<UdpSocket>,
    active: Arc<LastActive>,
}

struct Pending {
    since: Instant,
    datagrams: Vec<Vec<u8>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionFlows {
    /// The flows of the session on `conn`, and its dispatch task.
    pub(super) fn start(conn: &Connection, counters: Arc<UdpCounters>) -> Arc<Self> {
        let flows = Arc::new(Self {
            conn: conn.clone(),
            routes: Mutex::default(),
            pending: Mutex::default(),
            count: AtomicUsize::new(0),
        });
        tokio::spawn(dispatch(flows.clone(), counters));
        flows
    }
}

/// Hands the session's datagrams to their flows' backend sockets until the session ends.
async fn dispatch(flows: Arc<SessionFlows>, counters: Arc<UdpCounters>) {
    while let Some(d) = flows.conn.recv_datagram().await {
        let route = lock(&flows.routes)
            .get(&d.flow)
            .map(|r| (r.socket.clone(), r.active.clone()));
        match route {
            Some((socket, active)) => {
                active.touch();
                to_backend(&socket, &d.data, &counters);
            }
            None => {
                let mut pending = lock(&flows.pending);
                pending.retain(|_, p| p.since.elapsed() < PENDING_FOR);
                let held: usize = pending
                    .values()
                    .flat_map(|p| &p.datagrams)
                    .map(Vec::len)
                    .sum();
                let room = (pending.len() < PENDING_FLOWS || pending.contains_key(&d.flow))
                    && held + d.data.len() <= PENDING_BYTES;
                let waiting = room.then(|| {
                    pending.entry(d.flow).or_insert_with(|| Pending {
                        since: Instant::now(),
                        datagrams: Vec::new(),
                    })
                });
                match waiting {
                    Some(p) if p.datagrams.len() < PENDING_PER_FLOW => p.datagrams.push(d.data),
                    _ => UdpCounters::count(&counters.dropped_waiting),
                }
            }
        }
    }
}

fn to_backend(socket: &UdpSocket, data: &[u8], counters: &UdpCounters) {
    match socket.try_send(data) {
        Ok(_) => counters.carried_out(data.len()),
        Err(e) => {
            UdpCounters::count(&counters.dropped_socket);
            debug!(error = %e, "UDP datagram to a backend dropped");
        }
    }
}

/// A connected UDP socket to `address`.
async fn connect(address: &Address) -> std::io::Result<UdpSocket> {
    let target = address.udp_target().unwrap_or_default();
    let mut last = None;
    for addr in tokio::net::lookup_host(target).await? {
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let attempt = async {
            let socket = UdpSocket::bind(local).await?;
            socket.connect(addr).await?;
            // Until the reactor has seen the new socket writable, `try_send` refuses without
            // trying (WouldBlock): the session's dispatch task only ever tries.
            socket.writable().await?;
            Ok::<_, std::io::Error>(socket)
        };
        match attempt.await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// Carries the UDP flow that `stream` stands for, to a backend of `pool`.
pub(super) async fn forward_flow(
    mut stream: Stream,
    preamble: Preamble,
    protection: Protection,
    pool: &Pool,
    udp: &GatewayUdp,
    open_files_refusals: &AtomicU64,
    flows: &SessionFlows,
) {
    let counters = &udp.counters;
    let client = preamble.client;
    let mut stop = udp.stop.subscribe();
    if *stop.borrow_and_update() {
        return refuse::<TcpStream>(stream, codes::SHUTDOWN, None);
    }
    let Ok(_permit) = udp.limit.clone().try_acquire_owned() else {
        UdpCounters::count(&counters.refused_limit);
        crate::warn_limited!(
            ?client,
            limit = udp.max_flows,
            "UDP flow refused: the gateway is at --max-udp-flows"
        );
        return refuse::<TcpStream>(stream, codes::LIMIT, None);
    };
    if flows.count.fetch_add(1, Ordering::Relaxed) >= udp.max_flows_per_session {
        flows.count.fetch_sub(1, Ordering::Relaxed);
        UdpCounters::count(&counters.refused_limit);
        crate::warn_limited!(
            ?client,
            limit = udp.max_flows_per_session,
            "UDP flow refused: its session is at --max-udp-flows-per-session"
        );
        return refuse::<TcpStream>(stream, codes::LIMIT, None);
    }
    let _session_count = Counted(&flows.count);
    let Some(lease) = pool.pick(Instant::now(), true) else {
        if pool.backends().iter().any(|b| b.address.is_udp()) {
            UdpCounters::count(&counters.refused_limit);
            crate::warn_limited!(service = %preamble.service, ?client, "UDP flow refused: every udp:// backend of the service is at --backend-max-streams");
            return refuse::<TcpStream>(stream, codes::LIMIT, None);
        }
        crate::warn_limited!(service = %preamble.service, ?client, "UDP flow refused: the service has no udp:// backend");
        return refuse::<TcpStream>(stream, codes::UNKNOWN_SERVICE, None);
    };
    let backend = lease.backend().clone();
    let socket = match connect(&backend.address).await {
        Ok(s) => Arc::new(s),
        Err(e) if crate::process::is_out_of_files(&e) => {
            open_files_refusals.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(backend = %backend.address, error = %e, "UDP flow refused: out of file descriptors (RLIMIT_NOFILE)");
            return refuse::<TcpStream>(stream, codes::LIMIT, None);
        }
        Err(e) => {
            backend.failed(Instant::now(), &e.to_string());
            return refuse::<TcpStream>(stream, codes::BACKEND_UNREACHABLE, None);
        }
    };
    let id = stream.id().0;
    let active = Arc::new(LastActive::new());
    lock(&flows.routes).insert(
        id,
        Route {
            socket: socket.clone(),
            active: active.clone(),
        },
    );
    let _count = counters.flow_opened();
    if let Some(waiting) = lock(&flows.pending).remove(&id) {
        for d in waiting.datagrams {
            to_backend(&socket, &d, counters);
        }
    }
    debug!(?client, backend = %backend.address, flow = id, "UDP flow open");
    let started = Instant::now();
    let mut answered = false;
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD];
    let mut byte = [0u8; 1];
    let idle_timeout = udp.idle_timeout;
    let ended_here = loop {
        let idle_left = idle_timeout.saturating_sub(active.idle());
        tokio::select! {
            received = socket.recv(&mut buf) => match received {
                Ok(n) => {
                    active.touch();
                    if !answered {
                        answered = true;
                        backend.connected(started.elapsed());
                    }
                    match flows.conn.send_datagram(id, &buf[..n], protection) {
                        Ok(()) => counters.carried_in(n),
                        Err(DatagramError::TooBig { size, max }) => {
                            UdpCounters::count(&counters.dropped_too_big);
                            crate::warn_limited!(backend = %backend.address, size, max, "UDP datagram from a backend dropped: larger than the session can carry");
                        }
                        Err(_) => break false,
                    }
                }
                Err(e) => {
                    // An ICMP port unreachable from the backend's host: nothing listens there.
                    UdpCounters::count(&counters.dropped_socket);
                    if !answered {
                        answered = true;
                        backend.failed(Instant::now(), &e.to_string());
                    }
                }
            },
            read = stream.read(&mut byte) => {
                match read {
                    Ok(0) => {
                        debug!(?client, flow = id, "UDP flow ended by the agent");
                        let _ = stream.shutdown().await;
                    }
                    Ok(_) => stream.reset(codes::BAD_PREAMBLE),
                    Err(_) => {}
                }
                break false;
            }
            _ = stop.changed() => break true,
            _ = tokio::time::sleep(idle_left) => {
                if active.idle() >= idle_timeout {
                    break true;
                }
            }
        }
    };
    lock(&flows.routes).remove(&id);
    if ended_here {
        debug!(
            ?client,
            flow = id,
            ?idle_timeout,
            "UDP flow idle (or the gateway is stopping): ending it"
        );
        let _ = stream.shutdown().await;
        let _ = tokio::time::timeout(END_WAIT, stream.read(&mut byte)).await;
    }
    drop(lease);
}

/// Decrements a count when dropped.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The gateway's UDP settings and counters, shared by every session.
pub(super) struct GatewayUdp {
    pub counters: Arc<UdpCounters>,
    pub idle_timeout: Duration,
    pub limit: Arc<tokio::sync::Semaphore>,
    pub max_flows: usize,
    pub max_flows_per_session: usize,
    /// Set at shutdown: every flow ends (UDP flows have no end of their own to wait for).
    pub stop: tokio::sync::watch::Sender<bool>,
}
