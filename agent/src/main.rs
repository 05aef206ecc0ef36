//! `ferry-agent`: accepts a legacy client's TCP or Unix-socket connections and carries each one
//! as a stream over Ferry's reliable UDP to a gateway.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_transport::TransportConfig;
use ferry_tunnel::address::Address;
use ferry_tunnel::allow::AllowList;
use ferry_tunnel::compress::Codec;
use ferry_tunnel::preamble::{is_valid_service_name, Preamble};
use ferry_tunnel::process::{init_logging, shutdown_signal, Drain, LogFormat};
use ferry_tunnel::splice::{splice, Abort, Meter, SpliceOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

mod monitor;
mod sessions;
mod spare_descriptor;
use sessions::{NoStream, Sessions};

/// Ferry's client side: carries local connections to a gateway over reliable UDP.
#[derive(Debug, clap::Parser)]
#[command(name = "ferry-agent", version, about, args_override_self = true)]
struct Args {
    /// Where clients connect: tcp://IP:PORT or unix:/PATH, optionally =SERVICE to name the
    /// gateway service they reach (e.g. tcp://127.0.0.1:6789=web). Repeatable, comma-separated.
    #[arg(
        long = "listen",
        env = "FERRY_AGENT_LISTEN",
        value_delimiter = ',',
        required = true
    )]
    listen: Vec<Listen>,

    /// Gateway UDP address (repeatable, comma-separated); new streams go to the least-loaded
    /// live session.
    #[arg(
        long = "gateway",
        env = "FERRY_AGENT_GATEWAY",
        value_delimiter = ',',
        required = true
    )]
    gateways: Vec<SocketAddr>,

    /// Sessions per gateway, each on its own UDP socket (more use more cores).
    #[arg(long, env = "FERRY_AGENT_LINKS", default_value_t = 1)]
    links: usize,

    /// Only accept TCP clients from these networks (CIDR list, IPv4 and IPv6; repeatable).
    #[arg(long = "allow-ip", env = "FERRY_AGENT_ALLOW_IP")]
    allow_ip: Vec<String>,

    /// Most client connections at once; over it a client is refused at once (TCP reset).
    #[arg(long, env = "FERRY_AGENT_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,

    /// How long a new client waits for a gateway session (during a reconnect) before it is reset.
    #[arg(long, env = "FERRY_AGENT_SESSION_WAIT", default_value = "5s", value_parser = ferry_tunnel::duration::parse)]
    session_wait: Duration,

    /// Close a session after this long without a packet from the gateway.
    #[arg(long, env = "FERRY_AGENT_IDLE_TIMEOUT", default_value = "30s", value_parser = ferry_tunnel::duration::parse)]
    idle_timeout: Duration,

    /// On SIGINT/SIGTERM, wait this long for open connections to finish before exiting.
    #[arg(long, env = "FERRY_AGENT_DRAIN_TIMEOUT", default_value = "30s", value_parser = ferry_tunnel::duration::parse)]
    drain_timeout: Duration,

    /// Read settings from a TOML file whose keys are these flags' long names
    /// (e.g. `max-connections = 3000`, lists as arrays); flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// Log format.
    #[arg(long, env = "FERRY_AGENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Compression of what this agent sends: none, snappy, flate[:1-9] or zstd[:1-19], per
    /// stream; streams whose data does not compress fall back to none by themselves.
    #[arg(long, env = "FERRY_AGENT_COMPRESS", default_value = "none")]
    compress: Codec,

    /// Batching: hold data that does not fill a datagram up to this long so that many
    /// clients' small messages share packets (0: send at once).
    #[arg(long, env = "FERRY_AGENT_BATCH_DELAY", default_value = "0ms", value_parser = ferry_tunnel::duration::parse)]
    batch_delay: Duration,

    #[command(flatten)]
    tls: ferry_tunnel::tls::AgentTlsArgs,

    /// HTTP monitor (dashboard, /health, /ready, /metrics, /stats, /connections,
    /// /stats-history): IP:PORT, or off. Default: 127.0.0.1 and the first TCP listener's
    /// port + 1000 (an ephemeral port with Unix listeners only).
    #[arg(long, env = "FERRY_AGENT_MONITOR", value_name = "ADDR|off")]
    monitor: Option<String>,

    /// Allow --monitor on a non-loopback address.
    #[arg(long, env = "FERRY_AGENT_MONITOR_PUBLIC")]
    monitor_public: bool,
}

/// A listener address and the service its connections reach.
#[derive(Debug, Clone)]
struct Listen {
    address: Address,
    service: String,
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (address, service) = match s.rsplit_once('=') {
            Some((a, svc)) => (a, svc),
            None => (s, ""),
        };
        if !is_valid_service_name(service) {
            return Err(format!("invalid service name {service:?} in --listen {s:?}: use letters, digits, '.', '_', '-'"));
        }
        Ok(Listen {
            address: address
                .parse()
                .map_err(|e: ferry_tunnel::address::AddressError| e.to_string())?,
            service: service.to_owned(),
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(args) = ferry_tunnel::process::parse_args::<Args>("ferry-agent") else {
        return ExitCode::FAILURE;
    };
    init_logging(args.log_format);
    ferry_tunnel::process::exit_code("ferry-agent", run(args).await)
}

/// Shared by every accepted client.
struct Context {
    sessions: Arc<Sessions>,
    allow: Option<AllowList>,
    limit: Arc<Semaphore>,
    max_connections: usize,
    session_wait: Duration,
    drain: Drain,
    /// What clients' bytes are compressed with on their way to the gateway.
    compress: Codec,
    /// Payload and encoded bytes of every client, in total.
    meter: Arc<Meter>,
    /// Clients refused, by reason.
    refusals: Arc<monitor::Refusals>,
    /// Held back to reset clients when the open-files limit is reached.
    spare: spare_descriptor::SpareDescriptor,
    /// The open-files soft limit, for the log line of a client refused at it.
    open_files: Option<u64>,
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(file) = &args.config {
        info!(config = %file.display(), "settings read from file (command-line flags override it)");
    }
    let allow = AllowList::from_flags(&args.allow_ip).map_err(|e| e.to_string())?;
    let crypto = args.tls.crypto_config()?;
    info!(crypto = crypto.mode(), "encryption");
    let gateways: Vec<(SocketAddr, TransportConfig)> = args
        .gateways
        .iter()
        .map(|g| {
            let config = TransportConfig {
                idle_timeout: args.idle_timeout,
                batch_delay: args.batch_delay,
                crypto: crypto.for_gateway(*g),
                ..TransportConfig::default()
            };
            (*g, config)
        })
        .collect();
    let first_port = args.listen.iter().find_map(|l| match &l.address {
        Address::Tcp { port, .. } => Some(*port),
        Address::Unix(_) => None,
    });
    let monitor_listener = match ferry_tunnel::process::monitor_address(
        args.monitor.as_deref(),
        first_port.unwrap_or(0),
    )? {
        Some(addr) => {
            ferry_monitor::check_address(addr, args.monitor_public)?;
            Some(ferry_monitor::bind(addr).await?)
        }
        None => None,
    };
    // Each client connection holds one descriptor.
    let open_files = ferry_tunnel::process::raise_and_check_open_files(
        args.max_connections as u64,
        "--max-connections",
        "client connection",
    );
    let registry = Arc::new(ferry_tunnel::registry::Registry::new());
    let sessions = Sessions::start(&gateways, args.links, registry)
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let ctx = Arc::new(Context {
        sessions,
        allow,
        limit: Arc::new(Semaphore::new(args.max_connections)),
        max_connections: args.max_connections,
        session_wait: args.session_wait,
        drain: Drain::default(),
        compress: args.compress,
        meter: Arc::default(),
        refusals: Arc::default(),
        spare: spare_descriptor::SpareDescriptor::new(),
        open_files: open_files.soft,
    });
    if let Some(listener) = monitor_listener {
        let source = monitor::AgentSource {
            sessions: ctx.sessions.clone(),
            refusals: ctx.refusals.clone(),
            meter: ctx.meter.clone(),
            drain: ctx.drain.clone(),
        };
        info!(monitor = %listener.local_addr().map_err(|e| e.to_string())?, "monitor serving");
        tokio::spawn(ferry_monitor::serve(listener, Arc::new(source)));
    }
    let mut listeners = Vec::new();
    let mut unix_paths = Vec::new();
    for l in &args.listen {
        let task = match &l.address {
            Address::Tcp { .. } => {
                let target = l.address.tcp_target().unwrap_or_default();
                let listener = listen_tcp(&target)
                    .await
                    .map_err(|e| format!("cannot listen on {}: {e}", l.address))?;
                info!(listen = %l.address, service = %l.service, "accepting clients");
                tokio::spawn(accept_tcp(listener, l.service.clone(), ctx.clone()))
            }
            #[cfg(unix)]
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let listener = listen_unix(path)
                    .map_err(|e| format!("cannot listen on {}: {e}", l.address))?;
                unix_paths.push(path.clone());
                info!(listen = %l.address, service = %l.service, "accepting clients");
                tokio::spawn(accept_unix(listener, l.service.clone(), ctx.clone()))
            }
            #[cfg(not(unix))]
            Address::Unix(_) => {
                return Err("unix sockets are not supported on this platform".into())
            }
        };
        listeners.push(task);
    }
    shutdown_signal().await;
    for l in &listeners {
        l.abort();
    }
    for p in &unix_paths {
        let _ = std::fs::remove_file(p);
    }
    info!(connections = ctx.drain.active(), timeout = ?args.drain_timeout, "shutting down: draining open connections");
    let deadline = tokio::time::Instant::now() + args.drain_timeout;
    let left = ctx.drain.wait(args.drain_timeout).await;
    // Connections done on our side; each session closes once the gateway acknowledged everything.
    if left > 0 || !ctx.sessions.close_all(deadline).await {
        warn!(
            connections = ctx.drain.active(),
            "drain timeout passed; remaining connections are reset"
        );
        ferry_tunnel::registry::abort_all(
            &ctx.sessions.live(),
            "agent shutting down: drain timeout passed",
        )
        .await;
    }
    Ok(())
}

/// A Unix socket path left by a previous run is removed; one that something still listens on
/// is an error.
#[cfg(unix)]
/// Connections the kernel may queue for `accept` on a client listener. tokio's `bind` asks for
/// 1024: 3,000 clients connecting at once overflowed it (`ListenOverflows` in
/// /proc/net/netstat), and each dropped SYN cost its client a one-second retransmission. The
/// kernel caps the figure at `net.core.somaxconn` (4096 by default since Linux 5.4).
const LISTEN_BACKLOG: u32 = 8192;

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

fn remove_stale_socket(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "cannot listen on unix:{}: the path exists and is not a socket",
            path.display()
        ));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "cannot listen on unix:{}: address already in use",
            path.display()
        ));
    }
    std::fs::remove_file(path)
        .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))
}

fn admit(ctx: &Context, what: &dyn std::fmt::Display) -> Option<OwnedSemaphorePermit> {
    match ctx.limit.clone().try_acquire_owned() {
        Ok(p) => Some(p),
        Err(_) => {
            ctx.refusals.limit.fetch_add(1, Ordering::Relaxed);
            ferry_tunnel::warn_limited!(client = %what, limit = ctx.max_connections, "client reset: over --max-connections");
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
    if ferry_tunnel::process::is_out_of_files(&error)
        && ctx.spare.refuse_waiting_client(accept, refuse).await
    {
        return;
    }
    ferry_tunnel::warn_limited!(error = %error, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Counts and logs a client reset because the open-files limit was reached.
fn refused_out_of_files(ctx: &Context, client: &dyn std::fmt::Display) {
    ctx.refusals.open_files.fetch_add(1, Ordering::Relaxed);
    let limit = ctx.open_files.unwrap_or(0);
    ferry_tunnel::warn_limited!(client = %client, open_files = limit, "client reset: out of file descriptors (RLIMIT_NOFILE); raise the hard limit or lower --max-connections");
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
        if ctx.allow.as_ref().is_some_and(|a| !a.allows(peer.ip())) {
            ctx.refusals.allow_list.fetch_add(1, Ordering::Relaxed);
            ferry_tunnel::warn_limited!(client = %peer, "client refused: not in --allow-ip");
            socket.abort();
            continue;
        }
        let Some(permit) = admit(&ctx, &peer) else {
            socket.abort();
            continue;
        };
        let _ = socket.set_nodelay(true);
        let destination = socket.local_addr().ok();
        tokio::spawn(serve(
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
        tokio::spawn(serve(
            socket,
            None,
            None,
            service.clone(),
            ctx.clone(),
            permit,
        ));
    }
}

/// Carries one client connection: session, stream, preamble, splice.
async fn serve<S: Abort + 'static>(
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
            ferry_tunnel::warn_limited!(client = ?peer, wait = ?ctx.session_wait, "client reset: no gateway session came up within --session-wait");
            socket.abort();
            return;
        }
        Err(NoStream::StreamLimit { open_streams }) => {
            ctx.refusals.stream_limit.fetch_add(1, Ordering::Relaxed);
            ferry_tunnel::warn_limited!(client = ?peer, open_streams, links = ctx.sessions.link_count(), "client reset: every gateway session is at its stream limit (the gateway's --max-streams); raise it there, or run more --links");
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
    };
    if let Err(e) = stream.write_all(&preamble.encode()).await {
        ferry_tunnel::warn_limited!(client = ?peer, error = %e, "client reset: stream failed at once");
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
