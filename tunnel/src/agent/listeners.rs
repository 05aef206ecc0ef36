//! The agent's client listeners: binding them (TCP with a deep accept backlog, Unix sockets
//! with a stale socket file removed first) and accepting clients, each either refused with a
//! TCP reset and counted (not in `--allow-ip`, over `--max-connections`, out of descriptors)
//! or handed to [`client::carry`] on a task of its own.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::client::{self, Context};
use crate::address::Address;
use crate::splice::Abort;
use crate::start_error::StartError;

/// Connections the kernel may queue for `accept` on a client listener. tokio's `bind` asks for
/// 1024: 3,000 clients connecting at once overflowed it (`ListenOverflows` in
/// /proc/net/netstat), and each dropped SYN cost its client a one-second retransmission. The
/// kernel caps the figure at `net.core.somaxconn` (4096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 8192;

/// A bound client listener.
pub(super) enum Bound {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A UDP socket, whose clients are flows of datagrams.
    Udp(tokio::net::UdpSocket),
    /// A Unix-socket listener and its path, removed at shutdown.
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

/// Binds a listener at `address`, with a one-line error naming it.
pub(super) async fn bind(address: &Address) -> Result<Bound, StartError> {
    let cannot = |source| StartError::Listen {
        address: address.clone(),
        source,
    };
    match address {
        Address::Tcp { .. } => {
            let target = address.tcp_target().unwrap_or_default();
            Ok(Bound::Tcp(listen_tcp(&target).await.map_err(cannot)?))
        }
        #[cfg(unix)]
        Address::Unix(path) => {
            remove_stale_socket(path)?;
            let listener = listen_unix(path).map_err(cannot)?;
            Ok(Bound::Unix(listener, path.clone()))
        }
        #[cfg(not(unix))]
        Address::Unix(_) => Err(StartError::UnixUnsupported),
        Address::Udp { .. } => {
            let target = address.udp_target().unwrap_or_default();
            Ok(Bound::Udp(
                tokio::net::UdpSocket::bind(target).await.map_err(cannot)?,
            ))
        }
    }
}

/// Accepts the clients of `listener`, whose connections reach `service`; never returns.
/// UDP listeners' flows are carried with `udp`.
pub(super) async fn accept(
    listener: Bound,
    service: String,
    ctx: Arc<Context>,
    udp: Arc<super::udp::AgentUdp>,
) {
    match listener {
        Bound::Tcp(listener) => accept_tcp(listener, service, ctx).await,
        Bound::Udp(socket) => super::udp::serve(socket, service, ctx, udp).await,
        #[cfg(unix)]
        Bound::Unix(listener, _) => accept_unix(listener, service, ctx).await,
    }
}

/// A TCP listener on the first address `target` resolves to that can be bound, with
/// [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind` sets it).
async fn listen_tcp(target: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(target).await? {
        let attempt = (|| {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        })();
        match attempt {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// A Unix-socket listener at `path` with [`LISTEN_BACKLOG`].
#[cfg(unix)]
fn listen_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    let socket = tokio::net::UnixSocket::new_stream()?;
    socket.bind(path)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A Unix socket path left by a previous run is removed; one that something still listens on
/// is an error.
#[cfg(unix)]
fn remove_stale_socket(path: &std::path::Path) -> Result<(), StartError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(StartError::NotASocket(path.to_owned()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(StartError::UnixInUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| StartError::StaleSocket {
        path: path.to_owned(),
        source,
    })
}

fn admit(ctx: &Context, what: &dyn std::fmt::Display) -> Option<OwnedSemaphorePermit> {
    match ctx.limit.try_acquire() {
        Some(p) => Some(p),
        None => {
            ctx.refusals.limit.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(client = %what, limit = ctx.limit.max(), "client reset: over --max-connections");
            None
        }
    }
}

/// A failed `accept`. Out of descriptors, the waiting client is accepted with the spare
/// descriptor and reset (`refuse`), rather than left unanswered in the backlog; any other
/// failure is logged, with a pause so that a persistent one does not spin.
async fn accept_failed<S>(
    ctx: &Context,
    error: std::io::Error,
    accept: impl std::future::Future<Output = std::io::Result<S>>,
    refuse: impl FnOnce(S),
) {
    if crate::process::is_out_of_files(&error)
        && ctx.spare.refuse_waiting_client(accept, refuse).await
    {
        return;
    }
    crate::warn_limited!(error = %error, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Counts and logs a client reset because the open-files limit was reached.
fn refused_out_of_files(ctx: &Context, client: &dyn std::fmt::Display) {
    ctx.refusals.open_files.fetch_add(1, Ordering::Relaxed);
    let limit = ctx.open_files.unwrap_or(0);
    crate::warn_limited!(client = %client, open_files = limit, "client reset: out of file descriptors (RLIMIT_NOFILE); raise the hard limit or lower --max-connections");
}

async fn accept_tcp(listener: tokio::net::TcpListener, service: String, ctx: Arc<Context>) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                let refuse = |(socket, peer): (tokio::net::TcpStream, SocketAddr)| {
                    refused_out_of_files(&ctx, &peer);
                    socket.abort();
                };
                accept_failed(&ctx, e, listener.accept(), refuse).await;
                continue;
            }
        };
        let allowed = ctx
            .settings
            .get()
            .allow
            .as_ref()
            .is_none_or(|a| a.allows(peer.ip()));
        if !allowed {
            ctx.refusals.allow_list.fetch_add(1, Ordering::Relaxed);
            crate::warn_limited!(client = %peer, "client refused: not in --allow-ip");
            socket.abort();
            continue;
        }
        let Some(permit) = admit(&ctx, &peer) else {
            socket.abort();
            continue;
        };
        let _ = socket.set_nodelay(true);
        let destination = socket.local_addr().ok();
        tokio::spawn(client::carry(
            socket,
            Some(peer),
            destination,
            service.clone(),
            ctx.clone(),
            permit,
        ));
    }
}

#[cfg(unix)]
async fn accept_unix(listener: tokio::net::UnixListener, service: String, ctx: Arc<Context>) {
    loop {
        let socket = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                let refuse = |(socket, _): (tokio::net::UnixStream, _)| {
                    refused_out_of_files(&ctx, &"unix client");
                    socket.abort();
                };
                accept_failed(&ctx, e, listener.accept(), refuse).await;
                continue;
            }
        };
        let Some(permit) = admit(&ctx, &"unix client") else {
            socket.abort();
            continue;
        };
        tokio::spawn(client::carry(
            socket,
            None,
            None,
            service.clone(),
            ctx.clone(),
            permit,
        ));
    }
}
