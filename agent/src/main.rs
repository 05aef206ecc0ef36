//! `ferry-agent`: accepts a legacy client's TCP or Unix-socket connections and carries each one
//! as a stream over Ferry's reliable UDP to a gateway.
//!
//! The agent itself is library code, [`ferry_tunnel::agent`]; this binary reads its flags (and
//! `--config FILE`) into an [`AgentConfig`], sets up logging, and runs the agent until SIGINT
//! or SIGTERM, reading them all again on SIGHUP ([`ferry_tunnel::reload`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ferry_transport::TransportConfig;
use ferry_tunnel::address::Address;
use ferry_tunnel::agent::{AgentConfig, Listen};
use ferry_tunnel::allow::AllowList;
use ferry_tunnel::compress::{CompressFlag, Compression};
use ferry_tunnel::process::{init_logging, shutdown_signal, LogFormat};
use ferry_tunnel::reload::{Hangups, Loaded};
use tracing::info;

/// Ferry's client side: carries local connections to a gateway over reliable UDP.
#[derive(Debug, clap::Parser)]
#[command(name = "ferry-agent", version, about, args_override_self = true)]
struct Args {
    /// Where clients connect: tcp://IP:PORT or unix:/PATH, or udp://IP:PORT for UDP clients
    /// (each client address a flow of datagrams), optionally =SERVICE to name the gateway
    /// service they reach (e.g. tcp://127.0.0.1:6789=web). Repeatable, comma-separated.
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

    /// Loss protection of UDP flows' datagrams: none, dup (each sent twice, a few ms apart),
    /// auto (twice only while the path loses 1% of packets or more) or fec (in forward error
    /// correction groups whose repairs many datagrams share, sized as --fec says; auto where
    /// the gateway has FEC off).
    #[arg(long, env = "FERRY_AGENT_UDP_PROTECT", default_value = "auto")]
    udp_protect: ferry_tunnel::udp::Protect,

    /// A UDP flow ends after this long without a datagram either way.
    #[arg(long, env = "FERRY_AGENT_UDP_IDLE_TIMEOUT", default_value = "60s", value_parser = ferry_tunnel::duration::parse)]
    udp_idle_timeout: Duration,

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

    /// What is logged, in tracing's filter syntax (e.g. `info`, `warn,ferry_tunnel=debug`);
    /// default: RUST_LOG, else info. A reload (SIGHUP) applies a new one.
    #[arg(long, env = "FERRY_AGENT_LOG_FILTER", value_parser = ferry_tunnel::process::parse_log_filter)]
    log_filter: Option<String>,

    /// Compression of what this agent sends: none, snappy, flate[:1-9] or
    /// zstd[:1-19][:dict=FILE], per stream; streams whose data does not compress fall back to
    /// none by themselves. A zstd dictionary (`ferry-dict train`) starts every stream's context
    /// with it; the gateway must know it (its own --compress or --compress-dict).
    #[arg(long, env = "FERRY_AGENT_COMPRESS", default_value = "none")]
    compress: CompressFlag,

    /// A further zstd dictionary to decode what the gateway sends with, besides the one of
    /// --compress (repeatable): during a roll-out, the old and the new one.
    #[arg(
        long = "compress-dict",
        env = "FERRY_AGENT_COMPRESS_DICT",
        value_name = "FILE",
        value_delimiter = ','
    )]
    compress_dict: Vec<std::path::PathBuf>,

    /// Largest UDP payload a session's packets may grow to: sessions start at 1350 bytes and
    /// probe the path for more (path MTU discovery), up to this; the peer is told it as the
    /// most this end accepts. 1452 fits an Ethernet path; raise it on jumbo-frame links, or
    /// give 1350 (or less) to keep packets at that size.
    #[arg(long, env = "FERRY_AGENT_MAX_PACKET_SIZE", default_value = "1452", value_parser = ferry_tunnel::process::parse_packet_size)]
    max_packet_size: u16,

    /// Batching: hold data that does not fill a datagram up to this long so that many
    /// clients' small messages share packets (0: send at once).
    #[arg(long, env = "FERRY_AGENT_BATCH_DELAY", default_value = "0ms", value_parser = ferry_tunnel::duration::parse)]
    batch_delay: Duration,

    /// Delayed acknowledgement: an ACK for a packet that arrived in order waits up to this long
    /// for data (a reply) to carry it, so a request and its response cost two datagrams, not
    /// four. Gaps and duplicates are acknowledged at once; the peer allows for the delay in its
    /// retransmission timeout. 0: acknowledge every packet at once. At most 100ms.
    #[arg(long, env = "FERRY_AGENT_ACK_DELAY", default_value = "1ms", value_parser = ferry_tunnel::duration::parse)]
    ack_delay: Duration,

    /// Forward error correction: repair packets that rebuild a lost packet without waiting a
    /// round trip for its retransmission. auto: while the path loses 0.3% of packets or more, for
    /// everything but bulk transfers, as many repairs as the measured loss calls for; off; or
    /// K/N: always, N-K repairs per K packets (for example 4/6). Used only when both ends allow it.
    #[arg(long, env = "FERRY_AGENT_FEC", default_value = "auto", value_parser = ferry_transport::fec::FecMode::parse)]
    fec: ferry_transport::fec::FecMode,

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

#[tokio::main]
async fn main() -> ExitCode {
    // First: until SIGHUP is caught, its default action ends the process.
    let hangups = Hangups::install();
    let Some(args) = ferry_tunnel::process::parse_args::<Args>("ferry-agent") else {
        return ExitCode::FAILURE;
    };
    init_logging(args.log_format, args.log_filter.as_deref());
    ferry_tunnel::process::exit_code("ferry-agent", run(args, hangups).await)
}

async fn run(args: Args, hangups: Hangups) -> Result<(), String> {
    let agent = ferry_tunnel::agent::Agent::start(config(args)?)
        .await
        .map_err(|e| e.to_string())?;
    let reloader = agent.reloader();
    let serving = agent.run(shutdown_signal());
    ferry_tunnel::reload::serve(serving, hangups, load, reloader)
        .await
        .map_err(|e| e.to_string())
}

/// What a reload reads: the command line, the `--config` file and the files the flags name,
/// all again.
fn load() -> Result<Loaded<AgentConfig>, String> {
    let args = ferry_tunnel::process::reparse_args::<Args>()?;
    let (log_filter, log_format) = (args.log_filter.clone(), args.log_format);
    Ok(Loaded {
        config: config(args)?,
        log_filter,
        log_format,
    })
}

/// The agent's configuration from its flags, with the files they name read.
fn config(args: Args) -> Result<AgentConfig, String> {
    if let Some(file) = &args.config {
        info!(config = %file.display(), "settings read from file (command-line flags override it)");
    }
    let allow = AllowList::from_flags(&args.allow_ip).map_err(|e| e.to_string())?;
    let crypto = args.tls.crypto_config().map_err(|e| e.to_string())?;
    info!(crypto = crypto.mode(), "encryption");
    let compress =
        Compression::load(&args.compress, &args.compress_dict).map_err(|e| e.to_string())?;
    let gateways = args
        .gateways
        .iter()
        .map(|g| {
            let mut config = TransportConfig {
                idle_timeout: args.idle_timeout,
                batch_delay: args.batch_delay,
                ack_delay: args.ack_delay,
                fec: args.fec,
                crypto: crypto.for_gateway(*g),
                ..TransportConfig::default()
            };
            ferry_tunnel::process::apply_max_packet_size(&mut config, args.max_packet_size);
            config
                .validate_for(ferry_protocol::Side::Client)
                .map_err(|e| format!("invalid transport settings: {e}"))?;
            Ok((*g, config))
        })
        .collect::<Result<_, String>>()?;
    let first_port = args.listen.iter().find_map(|l| match &l.address {
        Address::Tcp { port, .. } | Address::Udp { port, .. } => Some(*port),
        Address::Unix(_) => None,
    });
    let monitor =
        ferry_tunnel::process::monitor_address(args.monitor.as_deref(), first_port.unwrap_or(0))
            .map_err(|e| e.to_string())?;
    if let Some(addr) = monitor {
        ferry_monitor::check_address(addr, args.monitor_public).map_err(|e| e.to_string())?;
    }
    Ok(AgentConfig {
        listen: args.listen,
        gateways,
        links: args.links,
        allow,
        max_connections: args.max_connections,
        session_wait: args.session_wait,
        udp_idle_timeout: args.udp_idle_timeout,
        udp_protect: args.udp_protect.0,
        drain_timeout: args.drain_timeout,
        compress,
        monitor,
    })
}
