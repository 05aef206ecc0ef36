//! State shared between the driver task and the application's handles.
//!
//! One mutex guards the sans-IO endpoint and the wakers of everything waiting on it. Handles
//! (connections, streams) lock it briefly to call the protocol, and wake the driver task when
//! they gave it something to send; the driver task locks it to feed datagrams and timers in, and
//! wakes the handles its events concern. Critical sections never await and never do I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;

use ferry_protocol::connection::{ConnectionError, Event};
use ferry_protocol::endpoint::{ConnectionHandle, Endpoint as ProtoEndpoint};
use ferry_protocol::StreamId;

/// What one connection's waiters need.
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Handshake result, once known.
    pub connected: Option<Result<(), ConnectionError>>,
    pub connect_waker: Option<Waker>,
    /// Streams the peer opened, not yet accepted by the application.
    pub incoming_streams: VecDeque<StreamId>,
    pub accept_waker: Option<Waker>,
    /// Tasks waiting to open a stream (the peer's stream limit was reached).
    pub open_wakers: Vec<Waker>,
    pub read_wakers: HashMap<StreamId, Waker>,
    pub write_wakers: HashMap<StreamId, Waker>,
    /// Streams the peer reset, with the code (reported to their handles).
    pub resets: HashMap<StreamId, u64>,
    /// Why the connection ended, once it did.
    pub error: Option<ConnectionError>,
    pub closed_wakers: Vec<Waker>,
    /// The task waiting for the connection's next datagram.
    pub datagram_waker: Option<Waker>,
}

impl ConnState {
    fn wake_all(&mut self) {
        if let Some(w) = self.connect_waker.take() {
            w.wake();
        }
        if let Some(w) = self.accept_waker.take() {
            w.wake();
        }
        for w in self.open_wakers.drain(..) {
            w.wake();
        }
        for (_, w) in self.read_wakers.drain() {
            w.wake();
        }
        for (_, w) in self.write_wakers.drain() {
            w.wake();
        }
        for w in self.closed_wakers.drain(..) {
            w.wake();
        }
        if let Some(w) = self.datagram_waker.take() {
            w.wake();
        }
    }
}

/// Everything behind the mutex.
pub(crate) struct State {
    pub endpoint: ProtoEndpoint,
    pub conns: HashMap<ConnectionHandle, ConnState>,
    /// Server: accepted connections not yet taken by `accept`.
    pub incoming: VecDeque<ConnectionHandle>,
    pub incoming_waker: Option<Waker>,
    /// The driver task, to wake when a handle gave the protocol work.
    pub driver_waker: Option<Waker>,
    /// Set when the socket failed or the endpoint shut down.
    pub fatal: Option<String>,
    /// Number of live `Endpoint` handles; at zero with no connections the driver stops.
    pub endpoint_refs: usize,
    /// The first stream that wrote since the driver last built transmits, and whether another
    /// one did too (see [`State::take_writers`]).
    pub writer: Option<(ConnectionHandle, StreamId)>,
    pub writers_many: bool,
}

impl State {
    /// Wakes the driver task so it flushes what the protocol now wants to send.
    pub fn wake_driver(&mut self) {
        if let Some(w) = &self.driver_waker {
            w.wake_by_ref();
        }
    }

    /// Notes that a stream handle gave the protocol data to send.
    pub fn note_write(&mut self, handle: ConnectionHandle, id: StreamId) {
        match self.writer {
            None => self.writer = Some((handle, id)),
            Some(first) if first != (handle, id) => self.writers_many = true,
            Some(_) => {}
        }
    }

    /// Whether more than one stream wrote since the last call (`None`: none wrote).
    pub fn take_writers(&mut self) -> Option<bool> {
        let many = std::mem::take(&mut self.writers_many);
        self.writer.take().map(|_| many)
    }

    /// Routes every pending protocol event to the handles waiting for it.
    pub fn dispatch_events(&mut self) {
        self.take_accepted();
        while let Some((handle, event)) = self.endpoint.poll_event() {
            let Some(conn) = self.conns.get_mut(&handle) else {
                // A connection nobody holds: a refused handshake (the protocol endpoint counts
                // and logs those, rate-limited), or one whose handles are gone.
                if let Event::Closed(error) = event {
                    tracing::debug!(%handle, %error, "connection closed");
                }
                continue;
            };
            match event {
                Event::Connected => {
                    conn.connected = Some(Ok(()));
                    if let Some(w) = conn.connect_waker.take() {
                        w.wake();
                    }
                }
                Event::StreamOpened(id) => {
                    conn.incoming_streams.push_back(id);
                    if let Some(w) = conn.accept_waker.take() {
                        w.wake();
                    }
                }
                Event::StreamReadable(id) => {
                    if let Some(w) = conn.read_wakers.remove(&id) {
                        w.wake();
                    }
                }
                Event::StreamWritable(id) | Event::StreamAcknowledged(id) => {
                    if let Some(w) = conn.write_wakers.remove(&id) {
                        w.wake();
                    }
                }
                Event::StreamReset { id, code } => {
                    conn.resets.insert(id, code);
                    if let Some(w) = conn.read_wakers.remove(&id) {
                        w.wake();
                    }
                    if let Some(w) = conn.write_wakers.remove(&id) {
                        w.wake();
                    }
                }
                Event::StreamsAvailable => {
                    for w in conn.open_wakers.drain(..) {
                        w.wake();
                    }
                }
                Event::DatagramReceived => {
                    if let Some(w) = conn.datagram_waker.take() {
                        w.wake();
                    }
                }
                Event::PathMigrated(addr) => {
                    tracing::debug!(%handle, %addr, "peer migrated to a new address");
                }
                Event::Closed(error) => {
                    // The connection's owner hears of it (a failed connect returns the error)
                    // and decides how loud to be.
                    tracing::debug!(%handle, %error, "connection closed");
                    if conn.connected.is_none() {
                        conn.connected = Some(Err(error.clone()));
                    }
                    conn.error = Some(error);
                    conn.wake_all();
                }
            }
        }
        self.take_accepted();
    }

    fn take_accepted(&mut self) {
        while let Some(handle) = self.endpoint.accept() {
            self.conns.entry(handle).or_default();
            self.incoming.push_back(handle);
            if let Some(w) = self.incoming_waker.take() {
                w.wake();
            }
        }
    }

    /// Fails every waiter (the socket died).
    pub fn fail_all(&mut self, reason: &str) {
        self.fatal = Some(reason.to_owned());
        for conn in self.conns.values_mut() {
            if conn.error.is_none() {
                conn.error = Some(ConnectionError::LocallyClosed {
                    code: ferry_protocol::connection::close_code::INTERNAL,
                    reason: reason.to_owned(),
                });
            }
            if conn.connected.is_none() {
                conn.connected = conn.error.clone().map(Err);
            }
            conn.wake_all();
        }
        if let Some(w) = self.incoming_waker.take() {
            w.wake();
        }
    }
}

/// The mutex and its helpers.
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub fn new(state: State) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(state),
        })
    }

    /// Locks the state. A panic while holding the lock is a bug elsewhere; the state is still
    /// consistent enough to shut down, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}
