//! A stream handle implementing tokio's `AsyncRead` and `AsyncWrite`.
//!
//! Writes copy into the protocol's send buffer (bounded: a full buffer makes `poll_write`
//! pending until the peer acknowledges data), and wake the driver to send. Reads copy out of the
//! reassembly buffer. `poll_shutdown` sends the FIN. A reset by the peer surfaces as
//! `ConnectionReset`; a closed connection as `ConnectionAborted` with the reason.
//!
//! Dropping a stream whose writing side was not shut down resets it (the peer must not mistake
//! a truncated stream for a complete one); dropping one that was shut down lets it finish
//! delivering, and discards whatever the peer still sends.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ferry_protocol::connection::ConnectionError;
use ferry_protocol::streams::{ReadOutcome, StreamError};
use ferry_protocol::StreamId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn_ref::ConnRef;

/// Reset code used when a stream handle is dropped before its writing side was finished.
pub const RESET_DROPPED: u64 = 0x100;

/// One bidirectional stream of a connection.
pub struct Stream {
    conn: Arc<ConnRef>,
    id: StreamId,
    write_finished: bool,
    read_finished: bool,
    reset_done: bool,
}

fn to_io(error: StreamError, conn_error: Option<ConnectionError>) -> io::Error {
    match error {
        StreamError::Reset(code) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("stream reset by peer (code {code:#x})"),
        ),
        StreamError::ConnectionClosed | StreamError::UnknownStream(_) => match conn_error {
            Some(e) => io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string()),
            None => io::Error::new(io::ErrorKind::ConnectionReset, error.to_string()),
        },
        StreamError::Finished => io::Error::new(io::ErrorKind::BrokenPipe, "write after shutdown"),
        StreamError::StreamLimit => io::Error::other(error.to_string()),
    }
}

impl Stream {
    pub(crate) fn new(conn: Arc<ConnRef>, id: StreamId) -> Self {
        Self {
            conn,
            id,
            write_finished: false,
            read_finished: false,
            reset_done: false,
        }
    }

    /// The connection the stream belongs to (a handle that keeps it open while held).
    pub fn connection(&self) -> crate::Connection {
        crate::Connection::from_ref(self.conn.clone())
    }

    /// The stream's ID.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Aborts the stream both ways; the peer sees a reset with `code`.
    pub fn reset(&mut self, code: u64) {
        let mut state = self.conn.shared.lock();
        if let Some(conn) = state.endpoint.connection(self.conn.handle) {
            let _ = conn.reset(self.id, code);
        }
        state.wake_driver();
        self.reset_done = true;
    }

    /// The code the peer reset the stream with, once it did.
    pub fn reset_code(&self) -> Option<u64> {
        let state = self.conn.shared.lock();
        state
            .conns
            .get(&self.conn.handle)
            .and_then(|c| c.resets.get(&self.id).copied())
    }

    fn error(&self, state: &crate::shared::State, e: StreamError) -> io::Error {
        if let Some(code) = state
            .conns
            .get(&self.conn.handle)
            .and_then(|c| c.resets.get(&self.id))
        {
            return to_io(StreamError::Reset(*code), None);
        }
        let conn_error = state
            .conns
            .get(&self.conn.handle)
            .and_then(|c| c.error.clone());
        to_io(e, conn_error)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read_finished {
            return Poll::Ready(Ok(()));
        }
        let mut state = this.conn.shared.lock();
        let handle = this.conn.handle;
        // Reading may grant flow-control credit or free a stream: the driver runs only then,
        // not for every read (a wake-up per message would cost a task switch each).
        let (result, driver_needed) = match state.endpoint.connection(handle) {
            Some(conn) => {
                let r = conn.read(Instant::now(), this.id, buf.initialize_unfilled());
                (r, conn.has_pending_control() || conn.has_events())
            }
            None => (Err(StreamError::ConnectionClosed), false),
        };
        if driver_needed {
            state.wake_driver();
        }
        match result {
            Ok(ReadOutcome::Data(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Ok(ReadOutcome::Finished) => {
                this.read_finished = true;
                Poll::Ready(Ok(()))
            }
            Ok(ReadOutcome::Blocked) => {
                if let Some(c) = state.conns.get_mut(&handle) {
                    c.read_wakers.insert(this.id, cx.waker().clone());
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(this.error(&state, e))),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut state = this.conn.shared.lock();
        let handle = this.conn.handle;
        let result = match state.endpoint.connection(handle) {
            Some(conn) => conn.write(this.id, data),
            None => Err(StreamError::ConnectionClosed),
        };
        match result {
            Ok(0) => {
                if let Some(c) = state.conns.get_mut(&handle) {
                    c.write_wakers.insert(this.id, cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(n) => {
                state.note_write(handle, this.id);
                state.wake_driver();
                Poll::Ready(Ok(n))
            }
            Err(e) => Poll::Ready(Err(this.error(&state, e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are already in the protocol's hands; the driver sends them as soon as
        // congestion control and pacing allow.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.write_finished {
            return Poll::Ready(Ok(()));
        }
        let mut state = this.conn.shared.lock();
        let result = match state.endpoint.connection(this.conn.handle) {
            Some(conn) => conn.finish(this.id),
            None => Err(StreamError::ConnectionClosed),
        };
        match result {
            Ok(()) => {
                this.write_finished = true;
                state.wake_driver();
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(this.error(&state, e))),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.reset_done {
            return;
        }
        let mut state = self.conn.shared.lock();
        let handle = self.conn.handle;
        if let Some(conn) = state.endpoint.connection(handle) {
            if !self.write_finished {
                let _ = conn.reset(self.id, RESET_DROPPED);
            } else if !self.read_finished {
                let _ = conn.stop_reading(self.id);
            }
        }
        if let Some(c) = state.conns.get_mut(&handle) {
            c.read_wakers.remove(&self.id);
            c.write_wakers.remove(&self.id);
            c.resets.remove(&self.id);
        }
        state.wake_driver();
    }
}
