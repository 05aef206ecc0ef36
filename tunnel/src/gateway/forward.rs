//! One tunnelled stream forwarded to a backend: the preamble read (within 10 s), the service's
//! least-loaded backend picked, connected to over TCP (with an optional PROXY header first) or a
//! Unix socket, and spliced with the stream. Every stream that cannot be forwarded is reset
//! with a code that tells the agent why, and the limits it meets are counted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_transport::Stream;
use tokio::net::TcpStream;
use tracing::debug;

use super::pool::{Backend, Pool};
use crate::address::Address;
use crate::compress::Compression;
use crate::preamble::Preamble;
use crate::proxy_protocol;
use crate::reload::Live;
use crate::splice::{codes, refuse, splice, Meter, SpliceOptions};

/// How long an agent has to send a stream's preamble.
const PREAMBLE_WAIT: Duration = Duration::from_secs(10);

/// What every forwarded stream needs, shared by all sessions.
pub(super) struct Forwarding {
    /// The services and how to reach their backends: replaced whole by a reload, taken once by
    /// each new stream, which keeps what it took until it ends.
    pub routes: Live<Routes>,
    /// Payload and encoded bytes of every stream, in total.
    pub meter: Meter,
    /// The open-files soft limit, for the log line of a stream refused at it.
    pub open_files: Option<u64>,
    /// Streams refused at a limit, by reason.
    pub refusals: Refusals,
    /// UDP flows' settings, limits and counters.
    pub udp: super::udp::GatewayUdp,
}

/// The services and how their backends are reached: what a reload can change.
#[derive(Debug)]
pub(super) struct Routes {
    /// Pools by service name; "" is the default service.
    pub services: HashMap<String, Pool>,
    pub connect_timeout: Duration,
    pub proxy: Option<proxy_protocol::Version>,
    /// What backends' bytes are compressed with on their way to the agent (and the
    /// dictionaries what comes from it may be compressed with), loaded once per reload.
    pub compress: Compression,
    /// `--backend-max-streams`, for the log line of a stream refused at it.
    pub backend_max_streams: usize,
    /// `--allow-ip`: the endpoint checks it for new sessions; each new stream is checked here,
    /// so that an agent a reload took out opens no new stream on the session it has.
    pub allow: Option<crate::allow::AllowList>,
}

/// Streams the gateway refused at one of its limits (the agent resets their clients).
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// Every backend of the service at `--backend-max-streams`.
    pub backend_limit: AtomicU64,
    /// No descriptor left for the backend connection (RLIMIT_NOFILE).
    pub open_files: AtomicU64,
    /// The session's agent is not in `--allow-ip` any more.
    pub allow_list: AtomicU64,
}

/// Refuses the stream if its session's `agent` is no longer allowed; reads the stream's preamble, picks a backend of its service, connects and splices (or,
/// for a UDP flow, hands it to [`super::udp`]). `session` is the byte meter of the stream's
/// session, `flows` its UDP flows.
pub(super) async fn forward(
    mut stream: Stream,
    agent: Option<std::net::SocketAddr>,
    fwd: &Forwarding,
    session: &Meter,
    flows: &super::udp::SessionFlows,
) {
    let routes = fwd.routes.get();
    let allowed = |a: &crate::allow::AllowList| agent.is_none_or(|agent| a.allows(agent.ip()));
    if routes.allow.as_ref().is_some_and(|a| !allowed(a)) {
        fwd.refusals.allow_list.fetch_add(1, Ordering::Relaxed);
        crate::warn_limited!(
            ?agent,
            "stream refused: the agent is not in --allow-ip (any more)"
        );
        return refuse::<TcpStream>(stream, codes::NOT_ALLOWED, None);
    }
    let options = SpliceOptions {
        compression: &routes.compress,
        meters: &[session, &fwd.meter],
    };
    let preamble = match tokio::time::timeout(PREAMBLE_WAIT, Preamble::read_from(&mut stream)).await
    {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            crate::warn_limited!(error = %e, "stream refused: bad preamble");
            return refuse::<TcpStream>(stream, codes::BAD_PREAMBLE, None);
        }
        Err(_) => {
            crate::warn_limited!("stream refused: no preamble within 10 s");
            return refuse::<TcpStream>(stream, codes::BAD_PREAMBLE, None);
        }
    };
    let Some(pool) = routes.services.get(&preamble.service) else {
        crate::warn_limited!(service = %preamble.service, client = ?preamble.client, "stream refused: unknown service");
        return refuse::<TcpStream>(stream, codes::UNKNOWN_SERVICE, None);
    };
    if let Some(protection) = preamble.udp_flow {
        let open_files = &fwd.refusals.open_files;
        return super::udp::forward_flow(
            stream, preamble, protection, pool, &fwd.udp, open_files, flows,
        )
        .await;
    }
    let Some(lease) = pool.pick(Instant::now(), false) else {
        fwd.refusals.backend_limit.fetch_add(1, Ordering::Relaxed);
        crate::warn_limited!(service = %preamble.service, client = ?preamble.client, limit = routes.backend_max_streams, "stream refused: every backend of the service is at --backend-max-streams");
        return refuse::<TcpStream>(stream, codes::LIMIT, None);
    };
    let backend = lease.backend().clone();
    let started = Instant::now();
    let result = match &backend.address {
        Address::Tcp { .. } => {
            let target = backend.address.tcp_target().unwrap_or_default();
            let connecting = async {
                let socket = TcpStream::connect(target).await?;
                let _ = socket.set_nodelay(true);
                Ok(socket)
            };
            match connect_within(routes.connect_timeout, connecting).await {
                Ok(mut socket) => {
                    backend.connected(started.elapsed());
                    if let Some(version) = routes.proxy {
                        if let Err(e) = send_proxy_header(&mut socket, version, &preamble).await {
                            refuse(stream, codes::BACKEND_UNREACHABLE, Some(socket));
                            debug!(backend = %backend.address, error = %e, "PROXY header not sent");
                            return;
                        }
                    }
                    splice(socket, stream, options)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(failure) => Err(failure.refuse(stream, fwd, &backend)),
            }
        }
        #[cfg(unix)]
        Address::Unix(path) => {
            let connecting = tokio::net::UnixStream::connect(path);
            match connect_within(routes.connect_timeout, connecting).await {
                Ok(socket) => {
                    backend.connected(started.elapsed());
                    splice(socket, stream, options)
                        .await
                        .map_err(|e| e.to_string())
                }
                Err(failure) => Err(failure.refuse(stream, fwd, &backend)),
            }
        }
        #[cfg(not(unix))]
        Address::Unix(_) => {
            let failure = NotConnected::Failed("unix sockets are not supported here".into());
            Err(failure.refuse(stream, fwd, &backend))
        }
        Address::Udp { .. } => unreachable!("streams are never given udp:// backends"),
    };
    match result {
        Ok(stats) => {
            debug!(backend = %backend.address, up = stats.to_tunnel, down = stats.from_tunnel, "stream done")
        }
        Err(e) => debug!(backend = %backend.address, error = %e, "stream ended with an error"),
    }
    drop(lease);
}

/// Writes the PROXY header that tells a TCP backend the client's address. The destination is
/// the address the client connected to, on the agent; without one (a Unix-socket client), this
/// end of the backend connection.
async fn send_proxy_header(
    socket: &mut TcpStream,
    version: proxy_protocol::Version,
    preamble: &Preamble,
) -> std::io::Result<()> {
    let destination = preamble
        .destination
        .or_else(|| socket.local_addr().ok())
        .unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    let header = proxy_protocol::header(version, preamble.client, destination);
    tokio::io::AsyncWriteExt::write_all(socket, &header).await
}

/// Why a stream got no backend connection.
enum NotConnected {
    /// The gateway is out of file descriptors: a limit reached, not the backend's fault.
    OutOfFiles(std::io::Error),
    /// The backend refused, failed or did not answer within the connect timeout.
    Failed(String),
}

/// The connection `connecting` makes within `timeout`, or why there is none.
async fn connect_within<S>(
    timeout: Duration,
    connecting: impl Future<Output = std::io::Result<S>>,
) -> Result<S, NotConnected> {
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(socket)) => Ok(socket),
        Ok(Err(e)) if crate::process::is_out_of_files(&e) => Err(NotConnected::OutOfFiles(e)),
        Ok(Err(e)) => Err(NotConnected::Failed(e.to_string())),
        Err(_) => Err(NotConnected::Failed("connect timed out".into())),
    }
}

impl NotConnected {
    /// Resets `stream` with the code that says why, counts and logs it; returns the reason.
    /// Out of descriptors, the stream is refused at that limit and the backend stays UP (it
    /// did nothing wrong; marking it DOWN would refuse streams that fit); otherwise the
    /// backend goes DOWN.
    fn refuse(self, stream: Stream, fwd: &Forwarding, backend: &Backend) -> String {
        match self {
            NotConnected::OutOfFiles(error) => {
                fwd.refusals.open_files.fetch_add(1, Ordering::Relaxed);
                crate::warn_limited!(backend = %backend.address, open_files = fwd.open_files.unwrap_or(0), %error, "stream refused: out of file descriptors (RLIMIT_NOFILE); raise the hard limit or lower --max-streams");
                refuse::<TcpStream>(stream, codes::LIMIT, None);
                format!("out of file descriptors: {error}")
            }
            NotConnected::Failed(error) => {
                backend.failed(Instant::now(), &error);
                refuse::<TcpStream>(stream, codes::BACKEND_UNREACHABLE, None);
                format!("backend unreachable: {error}")
            }
        }
    }
}
