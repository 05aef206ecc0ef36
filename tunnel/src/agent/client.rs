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
use crate::compress::Compression;
use crate::preamble::Preamble;
use crate::process::Drain;
use crate::reload::Live;
use crate::splice::{splice, Abort, Meter, SpliceOptions};

/// Shared by every accepted client.
pub(super) struct Context {
    pub sessions: Arc<Sessions>,
    /// What a reload can change for clients: taken once by each new client.
    pub settings: Live<ClientSettings>,
    /// `--max-connections`.
    pub limit: ConnectionLimit,
    pub drain: Drain,
    /// Payload and encoded bytes of every client, in total.
    pub meter: Arc<Meter>,
    /// Clients refused, by reason.
    pub refusals: Arc<Refusals>,
    /// Held back to reset clients when the open-files limit is reached.
    pub spare: SpareDescriptor,
    /// The open-files soft limit, for the log line of a client refused at it.
    pub open_files: Option<u64>,
}

/// The settings a new client is admitted and carried with; a reload replaces them.
#[derive(Debug, Clone)]
pub(super) struct ClientSettings {
    /// Only clients from these networks are accepted.
    pub allow: Option<AllowList>,
    /// How long a new client waits for a gateway session before it is reset.
    pub session_wait: Duration,
    /// What clients' bytes are compressed with on their way to the gateway (and the
    /// dictionaries what comes back may be compressed with), loaded once per reload.
    pub compress: Compression,
}

/// `--max-connections`: a permit per client connection or UDP flow. A reload may raise the
/// limit (permits added at once) or lower it (free permits taken away at once, the rest as
/// clients over the new limit leave: none is cut).
#[derive(Debug)]
pub(super) struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: std::sync::Mutex<usize>,
}

impl ConnectionLimit {
    /// Room for `max` clients at once.
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max: std::sync::Mutex::new(max),
        }
    }

    /// A permit for one more client, if under the limit.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// The limit now.
    pub fn max(&self) -> usize {
        *self.max.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the limit `new`.
    pub fn set(&self, new: usize) {
        let mut max = self.max.lock().unwrap_or_else(|e| e.into_inner());
        if new > *max {
            self.permits.add_permits(new - *max);
        } else if new < *max {
            let cut = *max - new;
            let left = cut - self.permits.forget_permits(cut);
            if left > 0 {
                // Taken back as clients over the new limit leave.
                let permits = self.permits.clone();
                tokio::spawn(async move {
                    let mut left = left;
                    while left > 0 {
                        let n = left.min(u32::MAX as usize) as u32;
                        match permits.acquire_many(n).await {
                            Ok(p) => p.forget(),
                            Err(_) => return,
                        }
                        left -= n as usize;
                    }
                });
            }
        }
        *max = new;
    }
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
    let settings = ctx.settings.get();
    let (lease, mut stream) = match ctx.sessions.open_stream(settings.session_wait).await {
        Ok(opened) => opened,
        Err(NoStream::NoSession) => {
            ctx.refusals.no_session.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(client = ?peer, wait = ?settings.session_wait, "client reset: no gateway session came up within --session-wait");
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
        compression: &settings.compress,
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

#[cfg(test)]
mod tests {
    use super::ConnectionLimit;

    #[tokio::test]
    async fn a_lowered_limit_cuts_no_client_and_admits_none_until_under_it() {
        let limit = ConnectionLimit::new(3);
        let held: Vec<_> = (0..2).map(|_| limit.try_acquire().unwrap()).collect();
        limit.set(1);
        assert!(limit.try_acquire().is_none(), "two held, the limit is one");
        drop(held);
        // The permits the two give back: one is taken away, one is room for a client.
        tokio::task::yield_now().await;
        let one = limit.try_acquire();
        assert!(one.is_some() && limit.try_acquire().is_none());
        limit.set(2);
        assert!(limit.try_acquire().is_some(), "raised: room at once");
        assert_eq!(limit.max(), 2);
    }
}
