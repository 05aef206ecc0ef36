//! `ferry-gateway`: accepts Ferry sessions from agents over UDP and forwards each stream to the
//! least-loaded healthy backend of the service it names, over TCP or a Unix socket.
//!
//! The gateway itself is library code, [`ferry_tunnel::gateway`]; this binary reads its flags
//! (and `--config FILE`, certificates, the reset key) into a [`GatewayConfig`], sets up
//! logging, and runs the gateway until SIGINT or SIGTERM, reading them all again on SIGHUP
//! ([`ferry_tunnel::reload`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ferry_transport::{ServerConfig, TransportConfig};
use ferry_tunnel::address::Address;
use ferry_tunnel::allow::AllowList;
use ferry_tunnel::compress::{CompressFlag, Compression};
use ferry_tunnel::gateway::{Gateway, GatewayConfig};
use ferry_tunnel::preamble::is_valid_service_name;
use ferry_tunnel::process::{init_logging, shutdown_signal, LogFormat};
use ferry_tunnel::reload::{Hangups, Loaded};
use tracing::info;

/// Ferry's datacenter side: unpacks tunnelled streams and forwards them to backends.
#[derive(Debug, clap::Parser)]
#[command(name = "ferry-gateway", version, about, args_override_self = true)]
struct Args {
    /// UDP address to accept agent sessions on.
    #[arg(long, env = "FERRY_GATEWAY_LISTEN", default_value = "0.0.0.0:9000")]
    listen: SocketAddr,

    /// Backend of the default service: tcp://HOST:PORT or unix:/PATH for TCP clients,
    /// udp://HOST:PORT for UDP flows (a pool may hold both). Repeat the flag or separate with
    /// commas for a pool.
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

    /// A UDP flow ends after this long without a datagram either way (its backend socket is
    /// closed).
    #[arg(long, env = "FERRY_GATEWAY_UDP_IDLE_TIMEOUT", default_value = "60s", value_parser = ferry_tunnel::duration::parse)]
    udp_idle_timeout: Duration,

    /// Most UDP flows at once, over all sessions (each holds a socket); further flows are
    /// refused (the agent logs why).
    #[arg(long, env = "FERRY_GATEWAY_MAX_UDP_FLOWS", default_value_t = 10_000)]
    max_udp_flows: usize,

    /// Most UDP flows at once in one agent session.
    #[arg(
        long,
        env = "FERRY_GATEWAY_MAX_UDP_FLOWS_PER_SESSION",
        default_value_t = 4096
    )]
    max_udp_flows_per_session: usize,

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

    /// What is logged, in tracing's filter syntax (e.g. `info`, `warn,ferry_tunnel=debug`);
    /// default: RUST_LOG, else info. A reload (SIGHUP) applies a new one.
    #[arg(long, env = "FERRY_GATEWAY_LOG_FILTER", value_parser = ferry_tunnel::process::parse_log_filter)]
    log_filter: Option<String>,

    /// Compression of what this gateway sends back: none, snappy, flate[:1-9] or
    /// zstd[:1-19][:dict=FILE], per stream; streams whose data does not compress fall back to
    /// none by themselves. A zstd dictionary (`ferry-dict train`) starts every stream's context
    /// with it; agents must know it (their own --compress or --compress-dict).
    #[arg(long, env = "FERRY_GATEWAY_COMPRESS", default_value = "none")]
    compress: CompressFlag,

    /// A further zstd dictionary to decode what agents send with, besides the one of
    /// --compress (repeatable): during a roll-out, the old and the new one.
    #[arg(
        long = "compress-dict",
        env = "FERRY_GATEWAY_COMPRESS_DICT",
        value_name = "FILE",
        value_delimiter = ','
    )]
    compress_dict: Vec<std::path::PathBuf>,

    /// Largest UDP payload a session's packets may grow to: sessions start at 1350 bytes and
    /// probe the path for more (path MTU discovery), up to this; the peer is told it as the
    /// most this end accepts. 1452 fits an Ethernet path; raise it on jumbo-frame links, or
    /// give 1350 (or less) to keep packets at that size.
    #[arg(long, env = "FERRY_GATEWAY_MAX_PACKET_SIZE", default_value = "1452", value_parser = ferry_tunnel::process::parse_packet_size)]
    max_packet_size: u16,

    /// Batching: hold data that does not fill a datagram up to this long so that many
    /// streams' small messages share packets (0: send at once).
    #[arg(long, env = "FERRY_GATEWAY_BATCH_DELAY", default_value = "0ms", value_parser = ferry_tunnel::duration::parse)]
    batch_delay: Duration,

    /// Delayed acknowledgement: an ACK for a packet that arrived in order waits up to this long
    /// for data (a reply) to carry it, so a request and its response cost two datagrams, not
    /// four. Gaps and duplicates are acknowledged at once; the peer allows for the delay in its
    /// retransmission timeout. 0: acknowledge every packet at once. At most 100ms.
    #[arg(long, env = "FERRY_GATEWAY_ACK_DELAY", default_value = "1ms", value_parser = ferry_tunnel::duration::parse)]
    ack_delay: Duration,

    /// Forward error correction: repair packets that rebuild a lost packet without waiting a
    /// round trip for its retransmission. auto: while the path loses 0.3% of packets or more, for
    /// everything but bulk transfers, as many repairs as the measured loss calls for; off; or
    /// K/N: always, N-K repairs per K packets (for example 4/6). Used only when both ends allow it.
    #[arg(long, env = "FERRY_GATEWAY_FEC", default_value = "auto", value_parser = ferry_transport::fec::FecMode::parse)]
    fec: ferry_transport::fec::FecMode,
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

/// The backends of each service named by `--backend` (the default service, "") and
/// `--service NAME=ADDR[,ADDR...]`.
fn services(args: &Args) -> Result<HashMap<String, Vec<Address>>, String> {
    let mut services = HashMap::new();
    if !args.backends.is_empty() {
        services.insert(String::new(), args.backends.clone());
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
        if services.insert(name.to_owned(), addresses).is_some() {
            return Err(format!("service {name:?} is defined twice"));
        }
    }
    if services.is_empty() {
        return Err(
            "no backend: give --backend ADDR (default service) or --service NAME=ADDR".into(),
        );
    }
    Ok(services)
}

#[tokio::main]
async fn main() -> ExitCode {
    // First: until SIGHUP is caught, its default action ends the process.
    let hangups = Hangups::install();
    let Some(args) = ferry_tunnel::process::parse_args::<Args>("ferry-gateway") else {
        return ExitCode::FAILURE;
    };
    init_logging(args.log_format, args.log_filter.as_deref());
    ferry_tunnel::process::exit_code("ferry-gateway", run(args, hangups).await)
}

async fn run(args: Args, hangups: Hangups) -> Result<(), String> {
    let config = config(&args)?;
    let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
    info!(listen = %gateway.local_addr(), crypto = ?args.tls.crypto, mutual_tls = args.tls.tls_client_ca.is_some(), "ferry-gateway ready");
    let reloader = gateway.reloader();
    let serving = gateway.run(shutdown_signal());
    ferry_tunnel::reload::serve(serving, hangups, load, reloader)
        .await
        .map_err(|e| e.to_string())
}

/// What a reload reads: the command line, the `--config` file and the files the flags name,
/// all again.
fn load() -> Result<Loaded<GatewayConfig>, String> {
    let args = ferry_tunnel::process::reparse_args::<Args>()?;
    Ok(Loaded {
        config: config(&args)?,
        log_filter: args.log_filter,
        log_format: args.log_format,
    })
}

/// The gateway's configuration from its flags, with the files they name read. Every flag is
/// checked before anything with a side effect (the reset key file) happens.
fn config(args: &Args) -> Result<GatewayConfig, String> {
    if let Some(file) = &args.config {
        info!(config = %file.display(), "settings read from file (command-line flags override it)");
    }
    let services = services(args)?;
    let allow = AllowList::from_flags(&args.allow_ip).map_err(|e| e.to_string())?;
    let crypto = args.tls.crypto_config().map_err(|e| e.to_string())?;
    let compress =
        Compression::load(&args.compress, &args.compress_dict).map_err(|e| e.to_string())?;
    let mut transport = TransportConfig {
        max_concurrent_streams: args.max_streams,
        idle_timeout: args.idle_timeout,
        batch_delay: args.batch_delay,
        ack_delay: args.ack_delay,
        fec: args.fec,
        crypto,
        ..TransportConfig::default()
    };
    ferry_tunnel::process::apply_max_packet_size(&mut transport, args.max_packet_size);
    check_max_streams(&transport)?;
    let tls_key = match args.tls.crypto {
        ferry_tunnel::tls::CryptoMode::Tls => args.tls.tls_key.as_deref(),
        ferry_tunnel::tls::CryptoMode::None => None,
    };
    let monitor =
        ferry_tunnel::process::monitor_address(args.monitor.as_deref(), args.listen.port())
            .map_err(|e| e.to_string())?;
    if let Some(addr) = monitor {
        ferry_monitor::check_address(addr, args.monitor_public).map_err(|e| e.to_string())?;
    }
    let secret = ferry_tunnel::static_secret::load(args.reset_key_file.as_deref(), tls_key)
        .map_err(|e| e.to_string())?;
    info!(source = %secret.source, server_id = ?args.server_id, "stateless reset key");
    Ok(GatewayConfig {
        listen: args.listen,
        services,
        backend_max_streams: args.backend_max_streams,
        server: ServerConfig {
            max_connections: args.max_connections,
            static_secret: Some(secret.secret),
            server_id: args.server_id,
            ..ServerConfig::new(transport)
        },
        allow,
        connect_timeout: args.connect_timeout,
        drain_timeout: args.drain_timeout,
        proxy_protocol: args.proxy_protocol,
        compress,
        monitor,
        udp_idle_timeout: args.udp_idle_timeout,
        max_udp_flows: args.max_udp_flows,
        max_udp_flows_per_session: args.max_udp_flows_per_session,
    })
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
