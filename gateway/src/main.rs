//! `ferry-gateway`: accepts Ferry sessions from agents over UDP and forwards each stream to the
//! least-loaded healthy backend of the service it names, over TCP or a Unix socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_transport::{Endpoint, ServerConfig, Stream, TransportConfig};
use ferry_tunnel::address::Address;
use ferry_tunnel::allow::AllowList;
use ferry_tunnel::compress::Codec;
use ferry_tunnel::preamble::{is_valid_service_name, Preamble};
use ferry_tunnel::process::{init_logging, shutdown_signal, Drain, LogFormat};
use ferry_tunnel::splice::{codes, refuse, splice, Meter, SpliceOptions};
use tracing::{debug, info, warn};

mod monitor;
mod pool;
use pool::Pool;

/// Ferry's datacenter side: unpacks tunnelled streams and forwards them to backends.
#[derive(Debug, clap::Parser)]
#[command(name = "ferry-gateway", version, about, args_override_self = true)]
struct Args {
    /// UDP address to accept agent sessions on.
    #[arg(long, env = "FERRY_GATEWAY_LISTEN", default_value = "0.0.0.0:9000")]
    listen: SocketAddr,

    /// Backend of the default service: tcp://HOST:PORT or unix:/PATH. Repeat the flag or
    /// separate with commas for a pool.
    #[arg(long = "backend", env = "FERRY_GATEWAY_BACKEND", value_delimiter = ',')]
    backends: Vec<Address>,

    /// A named service and its pool: NAME=ADDR[,ADDR...]. Repeat for more services
    /// (in the environment variable, separate services with ';').
    #[arg(long = "service", env = "FERRY_GATEWAY_SERVICE", value_delimiter = ';')]
    services: Vec<String>,

    /// Only accept agents from these networks (CIDR list, IPv4 and IPv6; repeatable).
    #[arg(long = "allow-ip", env = "FERRY_GATEWAY_ALLOW_IP")]
    allow_ip: Vec<String>,

    /// Most agent sessions at once; further agents are refused with a reason.
    #[arg(long, env = "FERRY_GATEWAY_MAX_CONNECTIONS", default_value_t = 3000)]
    max_connections: usize,

    /// Most streams (client connections) one session may have open at once; at the limit the
    /// agent resets new clients at once. Default: the agent's default --max-connections, so a
    /// default agent with one link is never refused by it.
    #[arg(long, env = "FERRY_GATEWAY_MAX_STREAMS", default_value_t = DEFAULT_MAX_STREAMS)]
    max_streams: u64,

    /// Most streams forwarded to one backend at once (0: no limit); over it on every backend of
    /// the service, a new stream is reset.
    #[arg(long, env = "FERRY_GATEWAY_BACKEND_MAX_STREAMS", default_value_t = 0)]
    backend_max_streams: usize,

    /// Give up connecting to a backend after this long (then try it again after a backoff).
    #[arg(long, env = "FERRY_GATEWAY_CONNECT_TIMEOUT", default_value = "3s", value_parser = ferry_tunnel::duration::parse)]
    connect_timeout: Duration,

    /// Close a session after this long without a packet from its agent.
    #[arg(long, env = "FERRY_GATEWAY_IDLE_TIMEOUT", default_value = "30s", value_parser = ferry_tunnel::duration::parse)]
    idle_timeout: Duration,

    /// On SIGINT/SIGTERM, wait this long for open streams to finish before exiting.
    #[arg(long, env = "FERRY_GATEWAY_DRAIN_TIMEOUT", default_value = "30s", value_parser = ferry_tunnel::duration::parse)]
    drain_timeout: Duration,

    /// Send a PROXY protocol header (v1 text or v2 binary) to TCP backends first, so they see
    /// the real client's address.
    #[arg(long, env = "FERRY_GATEWAY_PROXY_PROTOCOL", value_enum)]
    proxy_protocol: Option<ferry_tunnel::proxy_protocol::Version>,

    #[command(flatten)]
    tls: ferry_tunnel::tls::GatewayTlsArgs,

    /// Secret for stateless resets and address tokens, so that after a restart (and on every
    /// gateway of a fleet that shares the file) agents of a lost session are told at once.
    /// Default: with TLS, derived from --tls-key; without, a file in the state directory
    /// ($STATE_DIRECTORY, $XDG_STATE_HOME/ferry or ~/.local/state/ferry), created on first start.
    #[arg(long, env = "FERRY_GATEWAY_RESET_KEY_FILE", value_name = "FILE")]
    reset_key_file: Option<std::path::PathBuf>,

    /// This gateway's ID in a fleet (0-65535), written into every connection ID it chooses
    /// (QUIC-LB layout: bytes 1-2), for load balancers that route by it.
    #[arg(long, env = "FERRY_GATEWAY_SERVER_ID")]
    server_id: Option<u16>,

    /// HTTP monitor (dashboard, /health, /ready, /metrics, /stats, /connections,
    /// /stats-history): IP:PORT, or off. Default: 127.0.0.1 and the UDP port + 1000.
    #[arg(long, env = "FERRY_GATEWAY_MONITOR", value_name = "ADDR|off")]
    monitor: Option<String>,

    /// Allow --monitor on a non-loopback address.
    #[arg(long, env = "FERRY_GATEWAY_MONITOR_PUBLIC")]
    monitor_public: bool,

    /// Read settings from a TOML file whose keys are these flags' long names
    /// (e.g. `max-connections = 3000`, lists as arrays); flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,

    /// Log format.
    #[arg(long, env = "FERRY_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Compression of what this gateway sends back: none, snappy, flate[:1-9] or zstd[:1-19],
    /// per stream; streams whose data does not compress fall back to none by themselves.
    #[arg(long, env = "FERRY_GATEWAY_COMPRESS", default_value = "none")]
    compress: Codec,

    /// Batching: hold data that does not fill a datagram up to this long so that many
    /// streams' small messages share packets (0: send at once).
    #[arg(long, env = "FERRY_GATEWAY_BATCH_DELAY", default_value = "0ms", value_parser = ferry_tunnel::duration::parse)]
    batch_delay: Duration,
}

/// Default of `--max-streams`: 10,000, the agent's default `--max-connections`, so that an
/// agent with the default single link carries every client it accepts (with 1,024, the agent
/// accepted 10,000 clients and the 1,025th waited forever).
///
/// Each stream the agent may open reserves the initial stream window (64 KiB) of the session's
/// connection credit, so that streams nobody reads cannot starve the others
/// (`ferry_protocol::streams`): 10,000 streams make the credit 10,000 x 64 KiB + 20 MiB, about
/// 645 MiB, against 84 MiB with 1,024. That is credit, not memory: a gateway allocates only for
/// bytes that arrived and that its backend has not read yet, so the 645 MiB would be held only
/// if 10,000 clients each sent 64 KiB that 10,000 backends all refused to read; kernels buffer
/// as much for as many stalled TCP connections (a default Linux socket takes 128 KiB before its
/// window closes). The protocol caps one session's credit at 4 GiB, about 65,000 streams; more
/// clients than that go over several `--links` on the agent, whose sessions each get this limit.
const DEFAULT_MAX_STREAMS: u64 = 10_000;

/// Pools by service name; "" is the default service.
type Services = Arc<HashMap<String, Pool>>;

fn build_services(args: &Args) -> Result<Services, String> {
    let mut services = HashMap::new();
    if !args.backends.is_empty() {
        services.insert(
            String::new(),
            Pool::new(args.backends.clone(), args.backend_max_streams),
        );
    }
    for spec in &args.services {
        let (name, list) = spec
            .split_once('=')
            .ok_or_else(|| format!("invalid --service {spec:?}: expected NAME=ADDR[,ADDR...]"))?;
        if name.is_empty() || !is_valid_service_name(name) {
            return Err(format!(
                "invalid --service name {name:?}: use letters, digits, '.', '_', '-'"
            ));
        }
        let addresses = list
            .split(',')
            .map(|a| a.trim().parse::<Address>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        if services
            .insert(
                name.to_owned(),
                Pool::new(addresses, args.backend_max_streams),
            )
            .is_some()
        {
            return Err(format!("service {name:?} is defined twice"));
        }
    }
    if services.is_empty() {
        return Err(
            "no backend: give --backend ADDR (default service) or --service NAME=ADDR".into(),
        );
    }
    Ok(Arc::new(services))
}

#[tokio::main]
async fn main() -> ExitCode {
    let Some(args) = ferry_tunnel::process::parse_args::<Args>("ferry-gateway") else {
        return ExitCode::FAILURE;
    };
    init_logging(args.log_format);
    ferry_tunnel::process::exit_code("ferry-gateway", run(args).await)
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(file) = &args.config {
        info!(config = %file.display(), "settings read from file (command-line flags override it)");
    }
    let services = build_services(&args)?;
    let allow = AllowList::from_flags(&args.allow_ip).map_err(|e| e.to_string())?;
    let crypto = args.tls.crypto_config()?;
    let transport = TransportConfig {
        max_concurrent_streams: args.max_streams,
        idle_timeout: args.idle_timeout,
        batch_delay: args.batch_delay,
        crypto,
        ..TransportConfig::default()
    };
    check_max_streams(&transport)?;
    let tls_key = match args.tls.crypto {
        ferry_tunnel::tls::CryptoMode::Tls => args.tls.tls_key.as_deref(),
        ferry_tunnel::tls::CryptoMode::None => None,
    };
    // Every flag is checked before anything with a side effect (the reset key file) happens.
    let monitor_addr =
        ferry_tunnel::process::monitor_address(args.monitor.as_deref(), args.listen.port())?;
    if let Some(addr) = monitor_addr {
        ferry_monitor::check_address(addr, args.monitor_public)?;
    }
    let secret = ferry_tunnel::static_secret::load(args.reset_key_file.as_deref(), tls_key)?;
    info!(source = %secret.source, server_id = ?args.server_id, "stateless reset key");
    // Each stream holds one descriptor, its backend connection; one agent may open
    // --max-streams of them (all sessions together share the same limit).
    let open_files = ferry_tunnel::process::raise_and_check_open_files(
        args.max_streams,
        "--max-streams",
        "backend connection",
    );
    let server = ServerConfig {
        max_connections: args.max_connections,
        static_secret: Some(secret.secret),
        server_id: args.server_id,
        ..ServerConfig::new(transport)
    };
    let endpoint = Endpoint::server(args.listen, server).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on udp {}: address already in use",
            args.listen
        ),
        _ => format!("cannot listen on udp {}: {e}", args.listen),
    })?;
    let monitor_listener = match monitor_addr {
        Some(addr) => Some(ferry_monitor::bind(addr).await?),
        None => None,
    };
    if let Some(list) = allow {
        info!(allow = %list, "agents restricted by allow-list");
        endpoint.set_address_filter(Some(Arc::new(move |a: &SocketAddr| list.allows(a.ip()))));
    }
    for (name, pool) in services.iter() {
        let backends: Vec<String> = pool
            .backends()
            .iter()
            .map(|b| b.address.to_string())
            .collect();
        let name = if name.is_empty() {
            "(default)"
        } else {
            name.as_str()
        };
        info!(service = name, backends = %backends.join(","), "service configured");
    }
    info!(listen = %endpoint.local_addr(), crypto = ?args.tls.crypto, mutual_tls = args.tls.tls_client_ca.is_some(), "ferry-gateway ready");
    let drain = Drain::default();
    let fwd = Arc::new(Forwarding {
        services,
        connect_timeout: args.connect_timeout,
        proxy: args.proxy_protocol,
        compress: args.compress,
        meter: Meter::default(),
        backend_max_streams: args.backend_max_streams,
        open_files: open_files.soft,
        refusals: Refusals::default(),
    });
    // Live sessions, so a shutdown can close each one gracefully (after its streams finished
    // and everything sent was acknowledged) before the process exits.
    let sessions = Arc::new(ferry_tunnel::registry::Registry::new());
    if let Some(listener) = monitor_listener {
        let source = monitor::GatewaySource {
            registry: sessions.clone(),
            endpoint: endpoint.clone(),
            fwd: fwd.clone(),
            drain: drain.clone(),
        };
        info!(monitor = %listener.local_addr().map_err(|e| e.to_string())?, "monitor serving");
        tokio::spawn(ferry_monitor::serve(listener, Arc::new(source)));
    }
    tokio::spawn(report_refused_sessions(
        endpoint.clone(),
        sessions.clone(),
        args.max_connections,
    ));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let max_streams = args.max_streams;
    loop {
        tokio::select! {
            conn = endpoint.accept() => {
                let Some(conn) = conn else { return Err("UDP socket failed".into()) };
                let meter = sessions.add(&conn);
                let (fwd, drain, registry) = (fwd.clone(), drain.clone(), sessions.clone());
                tokio::spawn(async move {
                    let peer = conn.remote_addr();
                    debug!(?peer, "agent session accepted");
                    while let Some(stream) = conn.accept_stream().await {
                        if conn.stream_count() as u64 >= max_streams {
                            ferry_tunnel::warn_limited!(agent = ?peer, limit = max_streams, "session at --max-streams: its agent resets new clients until streams close");
                        }
                        let guard = drain.enter();
                        registry.streams_total.fetch_add(1, Ordering::Relaxed);
                        let (fwd, meter) = (fwd.clone(), meter.clone());
                        tokio::spawn(async move {
                            forward(stream, &fwd, &meter).await;
                            drop(guard);
                        });
                    }
                    debug!(?peer, reason = ?conn.close_reason(), "agent session ended");
                    registry.remove(&conn);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    info!(streams = drain.active(), timeout = ?args.drain_timeout, "shutting down: draining open streams");
    let deadline = tokio::time::Instant::now() + args.drain_timeout;
    let left = drain.wait(args.drain_timeout).await;
    // Streams done on our side; each session closes once the agent acknowledged everything.
    let live = sessions.connections();
    for conn in &live {
        conn.close_gracefully("gateway shutting down");
    }
    let all_closed = futures_join_all(live.iter().map(|c| c.closed()));
    if left > 0 || tokio::time::timeout_at(deadline, all_closed).await.is_err() {
        warn!(
            streams = drain.active(),
            "drain timeout passed; remaining streams are reset"
        );
        ferry_tunnel::registry::abort_all(
            &sessions.connections(),
            "gateway shutting down: drain timeout passed",
        )
        .await;
    }
    Ok(())
}

/// A `--max-streams` whose connection credit the protocol would refuse, as a flag error.
fn check_max_streams(transport: &TransportConfig) -> Result<(), String> {
    use ferry_protocol::config::MAX_CONNECTION_CREDIT;
    if transport.connection_credit_window() <= MAX_CONNECTION_CREDIT {
        return Ok(());
    }
    let per_stream = transport.stream_initial_receive_window.max(1);
    let base = TransportConfig {
        max_concurrent_streams: 0,
        ..transport.clone()
    }
    .connection_credit_window();
    let most = MAX_CONNECTION_CREDIT.saturating_sub(base) / per_stream;
    Err(format!(
        "--max-streams {} is more than one session can take: each stream reserves {per_stream} \
         bytes of the session's credit, at most {MAX_CONNECTION_CREDIT} bytes in all, so at most \
         {most} streams; carry more clients over more sessions (the agent's --links)",
        transport.max_concurrent_streams
    ))
}

/// How often the refusals of agent sessions are logged, at most: an agent refused for an hour
/// retries every second, and its gateway should not log 3,600 lines for it.
const REFUSED_SESSIONS_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs agent sessions the endpoint refused: over `--max-connections` (or, rarely, with an
/// invalid address token). The first refusal after a quiet spell is logged within a second;
/// later ones are summed up at most every [`REFUSED_SESSIONS_LOG_INTERVAL`]. They are counted
/// as `limit` refusals on the monitor.
async fn report_refused_sessions(
    endpoint: Endpoint,
    sessions: Arc<ferry_tunnel::registry::Registry>,
    max_connections: usize,
) {
    let mut reported = endpoint.stats().connections_refused;
    let mut last_logged: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let now = tick.tick().await;
        let refused = endpoint.stats().connections_refused;
        let due = last_logged.is_none_or(|t| now >= t + REFUSED_SESSIONS_LOG_INTERVAL);
        if refused == reported || !due {
            continue;
        }
        warn!(
            refused = refused - reported,
            sessions = sessions.connections().len(),
            limit = max_connections,
            "agent sessions refused: over --max-connections (or an invalid address token)"
        );
        reported = refused;
        last_logged = Some(now);
    }
}

/// Waits for every future (a minimal join_all, to avoid a dependency for one call).
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) {
    for f in futures {
        f.await;
    }
}

/// What every forwarded stream needs, shared by all sessions.
struct Forwarding {
    services: Services,
    connect_timeout: Duration,
    proxy: Option<ferry_tunnel::proxy_protocol::Version>,
    /// What backends' bytes are compressed with on their way to the agent.
    compress: Codec,
    /// Payload and encoded bytes of every stream, in total.
    meter: Meter,
    /// `--backend-max-streams`, for the log line of a stream refused at it.
    backend_max_streams: usize,
    /// The open-files soft limit, for the log line of a stream refused at it.
    open_files: Option<u64>,
    /// Streams refused at a limit, by reason.
    refusals: Refusals,
}

/// Streams the gateway refused at one of its limits (the agent resets their clients).
#[derive(Debug, Default)]
struct Refusals {
    /// Every backend of the service at `--backend-max-streams`.
    backend_limit: AtomicU64,
    /// No descriptor left for the backend connection (RLIMIT_NOFILE).
    open_files: AtomicU64,
}

/// Reads the stream's preamble, picks a backend of its service, connects and splices.
/// `session` is the byte meter of the stream's session.
async fn forward(mut stream: Stream, fwd: &Forwarding, session: &Meter) {
    let (services, connect_timeout, proxy) = (&fwd.services, fwd.connect_timeout, fwd.proxy);
    let options = SpliceOptions {
        codec: fwd.compress,
        meters: &[session, &fwd.meter],
    };
    let preamble =
        match tokio::time::timeout(Duration::from_secs(10), Preamble::read_from(&mut stream)).await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                ferry_tunnel::warn_limited!(error = %e, "stream refused: bad preamble");
                return refuse::<tokio::net::TcpStream>(stream, codes::BAD_PREAMBLE, None);
            }
            Err(_) => {
                ferry_tunnel::warn_limited!("stream refused: no preamble within 10 s");
                return refuse::<tokio::net::TcpStream>(stream, codes::BAD_PREAMBLE, None);
            }
        };
    let Some(pool) = services.get(&preamble.service) else {
        ferry_tunnel::warn_limited!(service = %preamble.service, client = ?preamble.client, "stream refused: unknown service");
        return refuse::<tokio::net::TcpStream>(stream, codes::UNKNOWN_SERVICE, None);
    };
    let Some(lease) = pool.pick(Instant::now()) else {
        fwd.refusals.backend_limit.fetch_add(1, Ordering::Relaxed);
        ferry_tunnel::warn_limited!(service = %preamble.service, client = ?preamble.client, limit = fwd.backend_max_streams, "stream refused: every backend of the service is at --backend-max-streams");
        return refuse::<tokio::net::TcpStream>(stream, codes::LIMIT, None);
    };
    let backend = lease.backend().clone();
    let started = Instant::now();
    let result = match &backend.address {
        Address::Tcp { .. } => {
            let target = backend.address.tcp_target().unwrap_or_default();
            match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(target))
                .await
            {
                Ok(Ok(socket)) => {
                    let _ = socket.set_nodelay(true);
                    backend.connected(started.elapsed());
                    let mut socket = socket;
                    if let Some(version) = proxy {
                        // The address the client connected to, on the agent; without one (a
                        // Unix-socket client), this end of the backend connection.
                        let destination = preamble
                            .destination
                            .or_else(|| socket.local_addr().ok())
                            .unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
                        let header = ferry_tunnel::proxy_protocol::header(
                            version,
                            preamble.client,
                            destination,
                        );
                        if let Err(e) =
                            tokio::io::AsyncWriteExt::write_all(&mut socket, &header).await
                        {
                            refuse::<tokio::net::TcpStream>(
                                stream,
                                codes::BACKEND_UNREACHABLE,
                                Some(socket),
                            );
                            debug!(backend = %backend.address, error = %e, "PROXY header not sent");
                            return;
                        }
                    }
                    splice(socket, stream, options)
                        .await
                        .map_err(|e| e.to_string())
                }
                Ok(Err(e)) if ferry_tunnel::process::is_out_of_files(&e) => {
                    Err(out_of_files(fwd, &backend, stream, &e))
                }
                Ok(Err(e)) => Err(connect_failed(&backend, stream, &e.to_string())),
                Err(_) => Err(connect_failed(&backend, stream, "connect timed out")),
            }
        }
        #[cfg(unix)]
        Address::Unix(path) => {
            match tokio::time::timeout(connect_timeout, tokio::net::UnixStream::connect(path)).await
            {
                Ok(Ok(socket)) => {
                    backend.connected(started.elapsed());
                    splice(socket, stream, options)
                        .await
                        .map_err(|e| e.to_string())
                }
                Ok(Err(e)) if ferry_tunnel::process::is_out_of_files(&e) => {
                    Err(out_of_files(fwd, &backend, stream, &e))
                }
                Ok(Err(e)) => Err(connect_failed(&backend, stream, &e.to_string())),
                Err(_) => Err(connect_failed(&backend, stream, "connect timed out")),
            }
        }
        #[cfg(not(unix))]
        Address::Unix(_) => Err(connect_failed(
            &backend,
            stream,
            "unix sockets are not supported here",
        )),
    };
    match result {
        Ok(stats) => {
            debug!(backend = %backend.address, up = stats.to_tunnel, down = stats.from_tunnel, "stream done")
        }
        Err(e) => debug!(backend = %backend.address, error = %e, "stream ended with an error"),
    }
    drop(lease);
}

/// The gateway is out of descriptors: the stream is refused at that limit, counted, and the
/// backend stays UP (it did nothing wrong; marking it DOWN would refuse streams that fit).
fn out_of_files(
    fwd: &Forwarding,
    backend: &pool::Backend,
    stream: Stream,
    error: &std::io::Error,
) -> String {
    fwd.refusals.open_files.fetch_add(1, Ordering::Relaxed);
    ferry_tunnel::warn_limited!(backend = %backend.address, open_files = fwd.open_files.unwrap_or(0), %error, "stream refused: out of file descriptors (RLIMIT_NOFILE); raise the hard limit or lower --max-streams");
    refuse::<tokio::net::TcpStream>(stream, codes::LIMIT, None);
    format!("out of file descriptors: {error}")
}

fn connect_failed(backend: &pool::Backend, stream: Stream, error: &str) -> String {
    backend.failed(Instant::now(), error);
    refuse::<tokio::net::TcpStream>(stream, codes::BACKEND_UNREACHABLE, None);
    format!("backend unreachable: {error}")
}
