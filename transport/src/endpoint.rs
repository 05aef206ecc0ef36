//! The tokio endpoint: a UDP socket, the sans-IO protocol endpoint, and the task that drives it.
//!
//! The driver task is a hand-written future rather than a `select!` loop: on each wake-up it
//! drains the socket in batches (GRO/recvmmsg), runs due timers, routes events to waiting
//! handles, and sends everything the protocol has ready in GSO batches, then sleeps until the
//! socket is readable, a handle wakes it, or the next protocol timer is due. The socket calls
//! happen with the shared lock released: transmits are built under it, a few at a time, and
//! sent after, so a stream handle never waits behind a system call.
//!
//! While several streams are active at once, a turn steps aside once before it sends: it wakes
//! itself and returns, which queues it behind the tasks already ready to run (tokio would
//! otherwise run it next, in the waker's LIFO slot, right after each stream handle that wakes
//! it). Those are typically the stream handles that the same epoll round found readable, so
//! their messages leave together in one GSO batch instead of one datagram each: 64 connections
//! of 1 KB request/response on loopback went from 1.8 UDP datagrams (system calls) per request
//! to 0.35, and the tunnel's CPU per request from 26 to 19 us (`ferry-bench --scenarios rr`).
//! "Several" means that more than one stream wrote between two builds of transmits, within the
//! last [`BUSY_BUILDS`] builds: a lone stream never steps aside, so a sequential exchange does
//! not pay for the extra turn (about 20-40 us on this 2-core VM, when the self-wake makes the
//! other worker thread wake up and steal the task). The wait is one round of the run queue,
//! never a timer.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ferry_protocol::config::{ConfigError, ServerConfig, TransportConfig};
use ferry_protocol::connection::ConnectionError;
use ferry_protocol::endpoint::{
    AddressFilter, ConnectError as ProtoConnectError, Endpoint as ProtoEndpoint, EndpointStats,
};
use tokio::time::Sleep;

use crate::connection::Connection;
use crate::shared::{Shared, State};
use crate::udp::{BatchSocket, RecvBatch};

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The configuration was refused before anything was sent.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The handshake failed or the connection closed before it completed.
    #[error("{0}")]
    Connection(#[from] ConnectionError),
    /// The endpoint's socket failed.
    #[error("endpoint failed: {0}")]
    Endpoint(String),
}

/// A Ferry endpoint on one UDP socket. Clone it freely; the driver task stops when every clone
/// and every connection is gone.
pub struct Endpoint {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl Clone for Endpoint {
    fn clone(&self) -> Self {
        self.shared.lock().endpoint_refs += 1;
        Self {
            shared: self.shared.clone(),
            local_addr: self.local_addr,
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.endpoint_refs -= 1;
        state.wake_driver();
    }
}

fn os_seed() -> io::Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| io::Error::other("the operating system's random generator failed"))?;
    Ok(seed)
}

impl Endpoint {
    /// An endpoint that only makes outgoing connections, bound to `addr` (use port 0).
    /// Must be called within a tokio runtime.
    pub fn client(addr: SocketAddr) -> io::Result<Self> {
        Self::with_socket(BatchSocket::bind(addr)?, None)
    }

    /// A client endpoint for connections to `remote` only: its socket is connected, so an
    /// ICMP port unreachable (nothing listens there: the server is down) fails a handshake at
    /// once and ends a session that has gone silent, instead of a timeout later.
    pub fn client_to(remote: SocketAddr) -> io::Result<Self> {
        let local: SocketAddr = if remote.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        Self::with_socket(BatchSocket::bind_connected(local, remote)?, None)
    }

    /// An endpoint that accepts connections on `addr`. Must be called within a tokio runtime.
    pub fn server(addr: SocketAddr, config: ServerConfig) -> io::Result<Self> {
        config
            .transport
            .validate_for(ferry_protocol::Side::Server)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Self::with_socket(BatchSocket::bind(addr)?, Some(config))
    }

    fn with_socket(socket: BatchSocket, server: Option<ServerConfig>) -> io::Result<Self> {
        let local_addr = socket.local_addr()?;
        let now = Instant::now();
        let mut endpoint = ProtoEndpoint::new(server, os_seed()?, now);
        // Address tokens carry wall-clock times, so a restarted or another gateway can judge them.
        if let Ok(unix) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            endpoint.set_wall_clock(now, unix);
        }
        let shared = Shared::new(State {
            endpoint,
            conns: Default::default(),
            incoming: Default::default(),
            incoming_waker: None,
            driver_waker: None,
            fatal: None,
            endpoint_refs: 1,
            writer: None,
            writers_many: false,
        });
        let batch = RecvBatch::new(&socket);
        let driver = Driver {
            shared: shared.clone(),
            socket,
            batch,
            outgoing: VecDeque::new(),
            spare: Vec::new(),
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            timer_deadline: None,
            yielded: false,
            busy: 0,
        };
        tokio::spawn(driver);
        Ok(Self { shared, local_addr })
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Restricts which source addresses may connect (server endpoints).
    pub fn set_address_filter(&self, filter: Option<AddressFilter>) {
        self.shared.lock().endpoint.set_address_filter(filter);
    }

    /// Replaces a server endpoint's configuration for the sessions it accepts from now on: their
    /// transport settings, TLS certificate and key, and the connection limit. Live sessions keep
    /// what they were made with. See
    /// [`ferry_protocol::endpoint::Endpoint::replace_server_config`] for what must not change.
    pub fn replace_server_config(
        &self,
        config: ServerConfig,
    ) -> Result<(), ferry_protocol::endpoint::ReplaceServerConfigError> {
        self.shared.lock().endpoint.replace_server_config(config)
    }

    /// The protocol endpoint's counters.
    pub fn stats(&self) -> EndpointStats {
        self.shared.lock().endpoint.stats().clone()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.shared.lock().endpoint.connection_count()
    }

    /// Connects to `remote` and waits for the handshake.
    pub async fn connect(
        &self,
        remote: SocketAddr,
        config: TransportConfig,
    ) -> Result<Connection, ConnectError> {
        let handle = {
            let mut state = self.shared.lock();
            if let Some(f) = &state.fatal {
                return Err(ConnectError::Endpoint(f.clone()));
            }
            let now = Instant::now();
            let h = state
                .endpoint
                .connect(now, remote, config)
                .map_err(|ProtoConnectError::InvalidConfig(e)| ConnectError::Config(e))?;
            state.conns.entry(h).or_default();
            state.wake_driver();
            h
        };
        let conn = Connection::new(self.shared.clone(), handle);
        conn.wait_connected().await?;
        Ok(conn)
    }

    /// Waits for the next accepted connection; `None` once the endpoint failed.
    pub async fn accept(&self) -> Option<Connection> {
        std::future::poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(h) = state.incoming.pop_front() {
                return Poll::Ready(Some(h));
            }
            if state.fatal.is_some() {
                return Poll::Ready(None);
            }
            state.incoming_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
        .map(|h| Connection::new(self.shared.clone(), h))
    }
}

/// The task that owns the socket and drives the protocol.
struct Driver {
    shared: Arc<Shared>,
    socket: BatchSocket,
    batch: RecvBatch,
    /// Transmits built under the lock and sent after it is released, oldest first; a transmit
    /// the socket could not take yet stays at the front.
    outgoing: VecDeque<Outgoing>,
    /// Buffers of sent transmits, for the next ones (at most [`TRANSMITS_PER_LOCK`]).
    spare: Vec<Vec<u8>>,
    timer: Pin<Box<Sleep>>,
    timer_deadline: Option<Instant>,
    /// Whether this turn has already let the other ready tasks run once before sending (see
    /// the module doc).
    yielded: bool,
    /// Nonzero while several streams are active at once, so that a turn steps aside before
    /// sending: [`BUSY_BUILDS`] when more than one stream wrote between two builds of
    /// transmits, then one less for each build that saw a single writer.
    busy: u32,
}

/// A datagram, or a GSO batch of equal-size datagrams, ready for the socket.
struct Outgoing {
    destination: SocketAddr,
    contents: Vec<u8>,
    segment_size: Option<usize>,
}

/// Receive batches handled per wake-up before sending, so neither direction starves the other.
const RECV_BATCHES_PER_TURN: usize = 16;
/// Builds of transmits with a single writing stream after which a turn stops stepping aside.
const BUSY_BUILDS: u32 = 8;
/// Transmits per wake-up before yielding to other tasks.
const SENDS_PER_TURN: usize = 256;
/// Transmits built per hold of the lock. The socket calls happen with the lock released, so the
/// application's stream handles never wait behind a system call; a few transmits per hold keep
/// the locking cost per datagram small and bound the buffers (each up to 64 KiB).
const TRANSMITS_PER_LOCK: usize = 8;

impl Driver {
    /// Datagrams per GSO batch: what the socket allows, and under 64 KiB of 1350-byte datagrams.
    fn max_segments(&self) -> usize {
        self.socket.max_gso_segments().clamp(1, 40)
    }

    /// ICMP port unreachable on a connected socket: tells the connections to that peer.
    fn report_unreachable(&self, state: &mut State) {
        if self.socket.take_refused() > 0 {
            if let Some(peer) = self.socket.peer_addr() {
                state.endpoint.handle_unreachable(Instant::now(), peer);
            }
        }
    }

    /// Builds up to [`TRANSMITS_PER_LOCK`] transmits, fewer if the protocol runs out.
    fn build_transmits(&mut self, state: &mut State) {
        let max_segments = self.max_segments();
        while self.outgoing.len() < TRANSMITS_PER_LOCK {
            let mut contents = self.spare.pop().unwrap_or_default();
            match state
                .endpoint
                .poll_transmit(Instant::now(), &mut contents, max_segments)
            {
                Some(t) => {
                    contents.truncate(t.size);
                    self.outgoing.push_back(Outgoing {
                        destination: t.destination,
                        contents,
                        segment_size: t.segment_size,
                    });
                }
                None => {
                    self.spare.push(contents);
                    return;
                }
            }
        }
    }

    /// Sends queued transmits until the queue is empty, the socket is full (`false`), or the
    /// turn's share is used up. Runs without the lock.
    fn send_queued(&mut self, cx: &mut Context<'_>, sends: &mut usize) -> bool {
        while let Some(next) = self.outgoing.front() {
            match self
                .socket
                .poll_send(cx, next.destination, &next.contents, next.segment_size)
            {
                Poll::Ready(Ok(())) => *sends += 1,
                Poll::Ready(Err(e)) => {
                    // One destination's failure (unreachable, refused) must not stop the others.
                    let dest = next.destination;
                    tracing::debug!(error = %e, %dest, "UDP send failed; datagram dropped");
                }
                Poll::Pending => return false,
            }
            let sent = self.outgoing.pop_front().expect("front exists");
            if self.spare.len() < TRANSMITS_PER_LOCK {
                self.spare.push(sent.contents);
            }
        }
        true
    }
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let shared = this.shared.clone();
        {
            let mut state = shared.lock();
            state.driver_waker = Some(cx.waker().clone());
            if state.endpoint_refs == 0 && state.endpoint.connection_count() == 0 {
                return Poll::Ready(());
            }
        }
        let mut keep_going = false;

        // Receive: the system call without the lock, the protocol under it.
        for turn in 0..RECV_BATCHES_PER_TURN {
            match this.socket.poll_recv(cx, &mut this.batch) {
                Poll::Ready(Ok(_)) => {
                    let now = Instant::now();
                    let mut state = shared.lock();
                    for (addr, datagram) in this.batch.iter() {
                        state.endpoint.handle_datagram(now, addr, datagram);
                    }
                    if turn + 1 == RECV_BATCHES_PER_TURN {
                        keep_going = true;
                    }
                }
                Poll::Ready(Err(e)) => {
                    tracing::error!(error = %e, "UDP socket receive failed; endpoint stopping");
                    shared.lock().fail_all(&format!("UDP receive failed: {e}"));
                    return Poll::Ready(());
                }
                Poll::Pending => break,
            }
        }

        // Timers, events, and the first transmits.
        {
            let mut state = shared.lock();
            this.report_unreachable(&mut state);
            state.endpoint.handle_timeout(Instant::now());
            state.dispatch_events();
            if this.busy > 0 && !this.yielded {
                // Let the tasks that are ready run first (a self-wake queues this task behind
                // them): the stream handles woken by the same readiness round add their data,
                // and it leaves in one GSO batch instead of one datagram each.
                this.yielded = true;
                drop(state);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.yielded = false;
            match state.take_writers() {
                Some(true) => this.busy = BUSY_BUILDS,
                Some(false) => this.busy = this.busy.saturating_sub(1),
                None => {}
            }
            this.build_transmits(&mut state);
        }

        // Send, building more under the lock whenever the queue empties.
        let mut sends = 0;
        loop {
            if !this.send_queued(cx, &mut sends) {
                break;
            }
            if sends >= SENDS_PER_TURN {
                keep_going = true;
                break;
            }
            let mut state = shared.lock();
            this.build_transmits(&mut state);
            if this.outgoing.is_empty() {
                break;
            }
        }

        // Sleep until the next protocol timer.
        let next = {
            let mut state = shared.lock();
            this.report_unreachable(&mut state);
            state.dispatch_events();
            state.endpoint.poll_timeout()
        };
        if next != this.timer_deadline {
            this.timer_deadline = next;
            if let Some(at) = next {
                this.timer
                    .as_mut()
                    .reset(tokio::time::Instant::from_std(at));
            }
        }
        if this.timer_deadline.is_some() && this.timer.as_mut().poll(cx).is_ready() {
            this.timer_deadline = None;
            keep_going = true;
        }
        if keep_going {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
