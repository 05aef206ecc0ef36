//! The reference to a protocol connection that a [`Connection`](crate::Connection) and each of
//! its [`Stream`](crate::Stream)s hold: the shared state and the connection's handle. The last
//! one dropped closes the connection, so a connection lives while its handle or any of its
//! streams does. Both handle types depend on it; it depends on neither.

use std::sync::Arc;
use std::time::Instant;

use ferry_protocol::connection::close_code;
use ferry_protocol::endpoint::ConnectionHandle;

use crate::shared::Shared;

/// Owns one reference to a protocol connection; the last one closes it.
pub(crate) struct ConnRef {
    pub shared: Arc<Shared>,
    pub handle: ConnectionHandle,
}

impl Drop for ConnRef {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let now = Instant::now();
        if let Some(conn) = state.endpoint.connection(self.handle) {
            conn.close(now, close_code::NO_ERROR, "connection handle dropped");
        }
        state.conns.remove(&self.handle);
        state.dispatch_events();
        state.wake_driver();
    }
}
