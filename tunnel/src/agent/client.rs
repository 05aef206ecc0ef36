//! One client connection carried through the tunnel: a stream on the least-loaded gateway
//! session (or a counted reset when none has room), the preamble naming the service and the
//! client, then the splice. Also what every client shares: the [`Context`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::monitor::Refusals;
use super::sessions::{NoStream, Sessions};
use super::spare_descriptor::SpareDescriptor;
use crate::allow::AllowList;
use crate::compress::Codec;
use crate::preamble::Preamble;
use crate::process::Drain;
use crate::splice::{splice, Abort, Meter, SpliceOptions};

/// Shared by every accepted client.
pub(super) struct Context {
    pub sessions: Arc<Sessions>,
    pub allow: Option<AllowList>,
    pub limit: Arc<Semaphore>,
    pub max_connections: usize,
    pub session_wait: Duration,
    pub drain: Drain,
    /// What clients' bytes are compressed with on their way to the gateway.
    pub compress: Codec,
    /// Payload and encoded bytes of every client, in total.
    pub meter: Arc<Meter>,
    /// Clients refused, by reason.
    pub refusals: Arc<Refusals>,
    /// Held back to reset clients when the open-files limit is reached.
    pub spare: SpareDescriptor,
    /// The open-files soft limit, for the log line of a client refused at it.
    pub open_files: Option<u64>,
}

/// Carries one client connection: session, stream, preamble, splice.
pub(super) async fn carry<S: Abort + 'static>(
    socket: S,
    peer: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    service: String,
    ctx: Arc<Context>,
    permit: OwnedSemaphorePermit,
) {
    // Until the splice ends cleanly, even this process dying resets the client.
    socket.reset_unless_finished();
    let _permit = permit;
    let _guard = ctx.drain.enter();
    let (lease, mut stream) = match ctx.sessions.open_stream(ctx.session_wait).await {
        Ok(opened) => opened,
        Err(NoStream::NoSession) => {
            ctx.refusals.no_session.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(client = ?peer, wait = ?ctx.session_wait, "client reset: no gateway session came up within --session-wait");
            socket.abort();
            return;
        }
        Err(NoStream::StreamLimit { open_streams }) => {
            ctx.refusals.stream_limit.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(client = ?peer, open_streams, links = ctx.sessions.link_count(), "client reset: every gateway session is at its stream limit (the gateway's --max-streams); raise it there, or run more --links");
            socket.abort();
            return;
        }
    };
    ctx.sessions
        .registry
        .streams_total
        .fetch_add(1, Ordering::Relaxed);
    let preamble = Preamble {
        service,
        client: peer,
        destination,
        udp_flow: None,
    };
    if let Err(e) = stream.write_all(&preamble.encode()).await {
        crate::warn_limited!(client = ?peer, error = %e, "client reset: stream failed at once");
        socket.abort();
        return;
    }
    let options = SpliceOptions {
        codec: ctx.compress,
        meters: &[&lease.meter, &ctx.meter],
    };
    match splice(socket, stream, options).await {
        Ok(stats) => {
            debug!(client = ?peer, up = stats.to_tunnel, down = stats.from_tunnel, "client done")
        }
        Err(e) => debug!(client = ?peer, error = %e, "client reset"),
    }
    drop(lease);
}
