//! The agent: accepts legacy clients' TCP or Unix-socket connections and carries each one as a
//! stream over Ferry's reliable UDP to a gateway.
//!
//! It is library code so that anything can run an agent (the `ferry-agent` binary, a test, a
//! benchmark) in the mini-redis shape: [`Agent::start`] binds what the configuration names
//! and fails with a one-line error if it cannot, [`Agent::run`] serves until the `shutdown`
//! future resolves, then drains. The binary only parses flags, sets up logging and passes the
//! signal. It lives in `ferry-tunnel`, beside the gateway, rather than in a crate of its own:
//! the two share most of what they are made of (splice, registry, monitor source, backoff,
//! load counting), which stays crate-private here instead of becoming public API between crates.
//!
//! - `sessions`: `--links` sessions per gateway, reconnection with backoff, the least-loaded
//!   session with room for each new stream.
//! - `listeners`: binding the client listeners and accepting clients, with the refusals at the
//!   allow-list, `--max-connections` and the open-files limit (`spare_descriptor`).
//! - `client`: one client carried: a stream, the preamble, the splice.
//! - `udp`: the UDP listeners: a flow per client address, carried as datagrams.
//! - `monitor`: the agent as the monitor sees it.
//! - `reload`: a new configuration applied to the running agent ([`Agent::reloader`]).

mod client;
mod listeners;
mod monitor;
mod reload;
mod sessions;
mod spare_descriptor;
mod udp;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ferry_transport::TransportConfig;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::address::Address;
use crate::allow::AllowList;
use crate::compress::Compression;
use crate::monitoring::{self, Monitor};
use crate::preamble::is_valid_service_name;
use crate::process::Drain;
use crate::registry::Registry;
pub use crate::start_error::StartError;
use client::{ClientSettings, ConnectionLimit, Context};
use listeners::Bound;
pub use reload::AgentReloader;
use sessions::Sessions;

/// A listener address and the service its connections reach (`--listen ADDR[=SERVICE]`).
#[derive(Debug, Clone)]
pub struct Listen {
    /// Where clients connect.
    pub address: Address,
    /// The gateway service they reach ("" for the default one).
    pub service: String,
}

/// Why a `--listen` value was refused: one line naming it.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The part after `=` is not a service name.
    #[error(
        "invalid service name {service:?} in --listen {listen:?}: use letters, digits, '.', '_', '-'"
    )]
    Service {
        /// The service name given.
        service: String,
        /// The whole value.
        listen: String,
    },
    /// The address is not one.
    #[error(transparent)]
    Address(#[from] crate::address::AddressError),
}

impl FromStr for Listen {
    type Err = ListenError;

    fn from_str(s: &str) -> Result<Self, ListenError> {
        let (address, service) = match s.rsplit_once('=') {
            Some((a, svc)) => (a, svc),
            None => (s, ""),
        };
        if !is_valid_service_name(service) {
            return Err(ListenError::Service {
                service: service.to_owned(),
                listen: s.to_owned(),
            });
        }
        Ok(Listen {
            address: address.parse()?,
            service: service.to_owned(),
        })
    }
}

/// What an agent is told to do; each field is the flag of the same name, read.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where clients connect, and the service each listener's clients reach.
    pub listen: Vec<Listen>,
    /// The gateways, each with the transport settings of its sessions.
    pub gateways: Vec<(SocketAddr, TransportConfig)>,
    /// Sessions per gateway, each on its own UDP socket.
    pub links: usize,
    /// Only TCP clients from these networks are accepted.
    pub allow: Option<AllowList>,
    /// Most client connections at once; over it a client is reset at once.
    pub max_connections: usize,
    /// How long a new client waits for a gateway session before it is reset.
    pub session_wait: Duration,
    /// How long a shutdown waits for open connections to finish.
    pub drain_timeout: Duration,
    /// What clients' bytes are compressed with on their way to the gateway (and the
    /// dictionaries what comes back may be compressed with), loaded once.
    pub compress: Compression,
    /// Where the HTTP monitor listens (`None`: off).
    pub monitor: Option<SocketAddr>,
    /// A UDP flow ends after this long without a datagram either way.
    pub udp_idle_timeout: Duration,
    /// How UDP listeners' datagrams are protected against loss.
    pub udp_protect: ferry_transport::datagrams::Protection,
}

/// Runs an agent until `shutdown` resolves, then drains it: [`Agent::start`], then
/// [`Agent::run`].
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    Agent::start(config).await?.run(shutdown).await
}

/// A started agent: listening, its sessions connecting, its monitor serving.
pub struct Agent {
    ctx: Arc<Context>,
    udp: Arc<udp::AgentUdp>,
    listeners: Vec<JoinHandle<()>>,
    tcp_addresses: Vec<SocketAddr>,
    udp_addresses: Vec<SocketAddr>,
    unix_paths: Vec<PathBuf>,
    /// The configuration in force: what a reload compares the new one with.
    current: Arc<std::sync::Mutex<AgentConfig>>,
    reloads: Arc<crate::reload::ReloadStatus>,
    _monitor: Option<Monitor>,
}

impl Agent {
    /// Binds the monitor and the client listeners, raises the open-files limit, starts the
    /// sessions and starts accepting clients. Every error is one line.
    pub async fn start(config: AgentConfig) -> Result<Agent, StartError> {
        let monitor_listener = monitoring::bind(config.monitor).await?;
        // Each client connection holds one descriptor.
        let open_files = crate::process::raise_and_check_open_files(
            config.max_connections as u64,
            "--max-connections",
            "client connection",
        );
        let mut bound = Vec::new();
        for l in &config.listen {
            bound.push((listeners::bind(&l.address).await?, l));
        }
        if config.compress != Compression::default() {
            info!(compress = %config.compress, "what clients send is compressed");
        }
        let registry = Arc::new(Registry::new());
        let sessions = Sessions::start(&config.gateways, config.links, registry)
            .map_err(StartError::UdpSocket)?;
        let ctx = Arc::new(Context {
            sessions,
            settings: crate::reload::Live::new(ClientSettings {
                allow: config.allow.clone(),
                session_wait: config.session_wait,
                compress: config.compress.clone(),
            }),
            limit: ConnectionLimit::new(config.max_connections),
            drain: Drain::default(),
            meter: Arc::default(),
            refusals: Arc::default(),
            spare: spare_descriptor::SpareDescriptor::new(),
            open_files: open_files.soft,
        });
        let udp = Arc::new(udp::AgentUdp {
            counters: Arc::default(),
            idle_timeout: config.udp_idle_timeout,
            protection: config.udp_protect,
            routes: Arc::default(),
            opening_bytes: Default::default(),
        });
        let reloads = Arc::new(crate::reload::ReloadStatus::new());
        let source = monitor::AgentSource {
            sessions: ctx.sessions.clone(),
            refusals: ctx.refusals.clone(),
            meter: ctx.meter.clone(),
            drain: ctx.drain.clone(),
            udp: udp.counters.clone(),
            reloads: reloads.clone(),
        };
        let monitor = monitoring::serve(monitor_listener, source)?;
        let mut agent = Agent {
            ctx: ctx.clone(),
            udp: udp.clone(),
            listeners: Vec::new(),
            tcp_addresses: Vec::new(),
            udp_addresses: Vec::new(),
            unix_paths: Vec::new(),
            current: Arc::new(std::sync::Mutex::new(config.clone())),
            reloads,
            _monitor: monitor,
        };
        for (listener, l) in bound {
            info!(listen = %l.address, service = %l.service, "accepting clients");
            match &listener {
                Bound::Tcp(tcp) => agent.tcp_addresses.extend(tcp.local_addr().ok()),
                Bound::Udp(udp) => agent.udp_addresses.extend(udp.local_addr().ok()),
                #[cfg(unix)]
                Bound::Unix(_, path) => agent.unix_paths.push(path.clone()),
            }
            let task = listeners::accept(listener, l.service.clone(), ctx.clone(), udp.clone());
            agent.listeners.push(tokio::spawn(task));
        }
        Ok(agent)
    }

    /// What applies a new configuration to this agent while it runs (see [`crate::reload`]);
    /// take it before [`Agent::run`].
    pub fn reloader(&self) -> AgentReloader {
        AgentReloader {
            ctx: self.ctx.clone(),
            current: self.current.clone(),
            status: self.reloads.clone(),
        }
    }

    /// The addresses the TCP listeners are bound to, in the order configured (for a listener
    /// whose `Address` asks for port 0, which the `--listen` flag refuses but code may ask).
    pub fn tcp_addresses(&self) -> &[SocketAddr] {
        &self.tcp_addresses
    }

    /// The addresses the UDP listeners are bound to, in the order configured.
    pub fn udp_addresses(&self) -> &[SocketAddr] {
        &self.udp_addresses
    }

    /// Serves clients until `shutdown` resolves; then stops accepting, waits up to the drain
    /// timeout for open connections to finish and for every session to close gracefully, and
    /// resets what is left.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let notifier = crate::systemd::Notifier::from_env();
        let watchdog = notifier.start_watchdog();
        // Ready (for systemd) once a gateway session is up, or once --session-wait passed
        // without one: from then on clients are served or refused with a reason.
        let readiness = {
            let (notifier, sessions) = (notifier.clone(), self.ctx.sessions.clone());
            let wait = self.ctx.settings.get().session_wait;
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + wait;
                while sessions.live().is_empty() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let status = match sessions.live().len() {
                    0 => "accepting clients; no gateway session yet".to_owned(),
                    n => format!("accepting clients; {n} gateway session(s) up"),
                };
                notifier.ready(&status);
            })
        };
        shutdown.await;
        readiness.abort();
        notifier.stopping("draining open connections");
        for l in &self.listeners {
            l.abort();
        }
        for p in &self.unix_paths {
            let _ = std::fs::remove_file(p);
        }
        // UDP flows have no end of their own: they end now, telling the gateway.
        self.udp.routes.end_all();
        let timeout = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain_timeout;
        let ctx = &self.ctx;
        info!(
            connections = ctx.drain.active(),
            ?timeout,
            "shutting down: draining open connections"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let left = ctx.drain.wait(timeout).await;
        // Connections done on our side; each session closes once the gateway acknowledged everything.
        if left > 0 || !ctx.sessions.close_all(deadline).await {
            warn!(
                connections = ctx.drain.active(),
                "drain timeout passed; remaining connections are reset"
            );
            crate::registry::abort_all(
                &ctx.sessions.live(),
                "agent shutting down: drain timeout passed",
            )
            .await;
        }
        if let Some(w) = watchdog {
            w.abort();
        }
        Ok(())
    }
}
