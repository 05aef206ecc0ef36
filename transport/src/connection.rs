//! A connection handle for applications: open and accept streams, close, watch for the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use ferry_protocol::connection::{close_code, ConnectionError, ConnectionStats};
use ferry_protocol::datagrams::{Datagram, DatagramError, Protection};
use ferry_protocol::endpoint::ConnectionHandle;
use ferry_protocol::streams::StreamError;

use crate::conn_ref::ConnRef;
use crate::shared::Shared;
use crate::stream::Stream;

/// A Ferry connection. Cheap to clone; closed (with code 0) when the last clone and the last of
/// its streams are dropped.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnRef>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>, handle: ConnectionHandle) -> Self {
        Self {
            inner: Arc::new(ConnRef { shared, handle }),
        }
    }

    pub(crate) fn from_ref(inner: Arc<ConnRef>) -> Self {
        Self { inner }
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The protocol's handle of this connection.
    pub fn handle(&self) -> ConnectionHandle {
        self.inner.handle
    }

    pub(crate) async fn wait_connected(&self) -> Result<(), ConnectionError> {
        std::future::poll_fn(|cx| {
            let mut state = self.shared().lock();
            let conn = state.conns.entry(self.inner.handle).or_default();
            match &conn.connected {
                Some(r) => Poll::Ready(r.clone()),
                None => {
                    conn.connect_waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The peer's address (it may change: the protocol follows validated migrations).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        let state = self.shared().lock();
        state
            .endpoint
            .connection_ref(self.inner.handle)
            .map(|c| c.remote())
    }

    /// Counters and RTT estimates, while the connection exists.
    pub fn stats(&self) -> Option<ConnectionStats> {
        let state = self.shared().lock();
        state
            .endpoint
            .connection_ref(self.inner.handle)
            .map(|c| c.stats())
    }

    /// Streams open on the connection.
    pub fn stream_count(&self) -> usize {
        let state = self.shared().lock();
        state
            .endpoint
            .connection_ref(self.inner.handle)
            .map_or(0, |c| c.stream_count())
    }

    /// Why the connection ended, if it did.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        let state = self.shared().lock();
        state
            .conns
            .get(&self.inner.handle)
            .and_then(|c| c.error.clone())
    }

    /// Opens a stream, waiting while the peer's stream limit is reached, for as long as the
    /// connection lives. For applications that would rather queue than refuse; a tunnel that
    /// must answer a client at once uses [`Self::try_open_stream`].
    pub async fn open_stream(&self) -> Result<Stream, ConnectionError> {
        let id = std::future::poll_fn(|cx| self.poll_open(Some(cx.waker()))).await?;
        Ok(Stream::new(self.inner.clone(), id))
    }

    /// Opens a stream if the peer's stream limit allows one now; `Ok(None)` if it does not
    /// (every stream the peer allows is open: one must close first). Never waits.
    pub fn try_open_stream(&self) -> Result<Option<Stream>, ConnectionError> {
        match self.poll_open(None) {
            Poll::Ready(Ok(id)) => Ok(Some(Stream::new(self.inner.clone(), id))),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(None),
        }
    }

    /// Opens a stream, or `Pending` at the peer's stream limit, with `waker` (if any) woken
    /// when a stream may be opened again.
    fn poll_open(
        &self,
        waker: Option<&std::task::Waker>,
    ) -> Poll<Result<ferry_protocol::StreamId, ConnectionError>> {
        let mut state = self.shared().lock();
        let handle = self.inner.handle;
        if let Some(e) = state.conns.get(&handle).and_then(|c| c.error.clone()) {
            return Poll::Ready(Err(e));
        }
        let result = match state.endpoint.connection(handle) {
            Some(conn) => conn.open_stream(),
            None => Err(StreamError::ConnectionClosed),
        };
        match result {
            Ok(id) => Poll::Ready(Ok(id)),
            Err(StreamError::StreamLimit) => {
                if let Some(waker) = waker {
                    state
                        .conns
                        .entry(handle)
                        .or_default()
                        .open_wakers
                        .push(waker.clone());
                }
                Poll::Pending
            }
            Err(_) => Poll::Ready(Err(state
                .conns
                .get(&handle)
                .and_then(|c| c.error.clone())
                .unwrap_or(ConnectionError::LocallyClosed {
                    code: close_code::NO_ERROR,
                    reason: "connection closed".into(),
                }))),
        }
    }

    /// Waits for the next stream the peer opens; `None` once the connection ended.
    pub async fn accept_stream(&self) -> Option<Stream> {
        let id = std::future::poll_fn(|cx| {
            let mut state = self.shared().lock();
            let conn = state.conns.entry(self.inner.handle).or_default();
            if let Some(id) = conn.incoming_streams.pop_front() {
                return Poll::Ready(Some(id));
            }
            if conn.error.is_some() {
                return Poll::Ready(None);
            }
            conn.accept_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await?;
        Some(Stream::new(self.inner.clone(), id))
    }

    /// Queues an unreliable datagram on `flow` (see `ferry_protocol::datagrams`): it leaves
    /// before stream data, is never retransmitted, and is sent twice under `protection` when
    /// that asks for it. Never waits: a full queue drops its oldest datagram (counted).
    pub fn send_datagram(
        &self,
        flow: u64,
        data: &[u8],
        protection: Protection,
    ) -> Result<(), DatagramError> {
        let mut state = self.shared().lock();
        let result = match state.endpoint.connection(self.inner.handle) {
            Some(conn) => conn.send_datagram(Instant::now(), flow, data, protection),
            None => Err(DatagramError::Closed),
        };
        if result.is_ok() {
            state.wake_driver();
        }
        result
    }

    /// Waits for the next datagram from the peer; `None` once the connection ended.
    pub async fn recv_datagram(&self) -> Option<Datagram> {
        std::future::poll_fn(|cx| {
            let mut state = self.shared().lock();
            let handle = self.inner.handle;
            if let Some(d) = state
                .endpoint
                .connection(handle)
                .and_then(|c| c.recv_datagram())
            {
                return Poll::Ready(Some(d));
            }
            let fatal = state.fatal.is_some();
            let conn = state.conns.entry(handle).or_default();
            if conn.error.is_some() || fatal {
                return Poll::Ready(None);
            }
            conn.datagram_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Aborts the connection: every stream is reset, the peer is told `code` and `reason`.
    pub fn close(&self, code: u64, reason: &str) {
        self.with_protocol(|conn, now| conn.close(now, code, reason));
    }

    /// Runs `f` on the protocol connection (if it still exists), then lets the driver act on it.
    fn with_protocol(&self, f: impl FnOnce(&mut ferry_protocol::connection::Connection, Instant)) {
        let mut state = self.shared().lock();
        if let Some(conn) = state.endpoint.connection(self.inner.handle) {
            f(conn, Instant::now());
        }
        state.dispatch_events();
        state.wake_driver();
    }

    /// Closes once every stream has finished; no new streams meanwhile.
    pub fn close_gracefully(&self, reason: &str) {
        self.with_protocol(|conn, now| conn.close_gracefully(now, reason));
    }

    /// Waits until the connection ends and says why.
    pub async fn closed(&self) -> ConnectionError {
        std::future::poll_fn(|cx| {
            let mut state = self.shared().lock();
            let conn = state.conns.entry(self.inner.handle).or_default();
            match &conn.error {
                Some(e) => Poll::Ready(e.clone()),
                None => {
                    conn.closed_wakers.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}
