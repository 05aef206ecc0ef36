//! The gateway: accepts Ferry sessions from agents over UDP and forwards each stream to the
//! least-loaded healthy backend of the service it names, over TCP or a Unix socket.
//!
//! Library code for the reason the agent is (see [`crate::agent`]): [`Gateway::start`] binds
//! the UDP endpoint and the monitor and fails with a one-line error if it cannot,
//! [`Gateway::run`] serves until the `shutdown` future resolves, then drains; [`run`] does
//! both. The `ferry-gateway` binary only parses flags, reads files, sets up logging and passes
//! the signal.
//!
//! - `pool`: a service's backends, the least-loaded healthy choice, DOWN with backoff.
//! - `forward`: one stream forwarded: preamble, backend, connect, splice.
//! - `udp`: UDP flows: a backend socket per flow, the session's datagrams dispatched to them.
//! - `monitor`: the gateway as the monitor sees it.
//! - `reload`: a new configuration applied to the running gateway ([`Gateway::reloader`]).

mod forward;
mod monitor;
mod pool;
mod reload;
mod udp;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ferry_transport::{Endpoint, ServerConfig};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::address::Address;
use crate::allow::AllowList;
use crate::compress::Compression;
use crate::process::Drain;
use crate::proxy_protocol;
use crate::registry::Registry;
use crate::splice::Meter;
pub use crate::start_error::StartError;
use forward::{forward, Forwarding, Routes};
pub use reload::GatewayReloader;

/// What a gateway is told to do; each field is the flag of the same name, read.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// UDP address to accept agent sessions on.
    pub listen: SocketAddr,
    /// The backends of each service, by name; "" is the default service.
    pub services: HashMap<String, Vec<Address>>,
    /// Most streams forwarded to one backend at once (0: no limit).
    pub backend_max_streams: usize,
    /// The endpoint's settings: most sessions, the static secret, the server ID, and the
    /// sessions' transport (most streams per session, idle timeout, batching, crypto).
    pub server: ServerConfig,
    /// Only agents from these networks are accepted.
    pub allow: Option<AllowList>,
    /// Give up connecting to a backend after this long.
    pub connect_timeout: Duration,
    /// How long a shutdown waits for open streams to finish.
    pub drain_timeout: Duration,
    /// Send a PROXY protocol header to TCP backends first.
    pub proxy_protocol: Option<proxy_protocol::Version>,
    /// What backends' bytes are compressed with on their way to the agent (and the
    /// dictionaries what comes from it may be compressed with), loaded once.
    pub compress: Compression,
    /// Where the HTTP monitor listens (`None`: off).
    pub monitor: Option<SocketAddr>,
    /// A UDP flow ends after this long without a datagram either way.
    pub udp_idle_timeout: Duration,
    /// Most UDP flows at once, over all sessions.
    pub max_udp_flows: usize,
    /// Most UDP flows at once in one session.
    pub max_udp_flows_per_session: usize,
}

/// Runs a gateway until `shutdown` resolves, then drains it: [`Gateway::start`], then
/// [`Gateway::run`].
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    Gateway::start(config).await?.run(shutdown).await
}

/// A started gateway: its UDP endpoint and monitor bound, not yet accepting sessions.
pub struct Gateway {
    endpoint: Endpoint,
    fwd: Arc<Forwarding>,
    /// Live sessions, so a shutdown can close each one gracefully (after its streams finished
    /// and everything sent was acknowledged) before the process exits.
    sessions: Arc<Registry>,
    monitor_listener: Option<TcpListener>,
    /// The configuration in force: what a reload compares the new one with.
    current: Arc<std::sync::Mutex<GatewayConfig>>,
    reloads: Arc<crate::reload::ReloadStatus>,
}

impl Gateway {
    /// Raises the open-files limit, binds the UDP endpoint and the monitor, and sets up the
    /// allow-list and the services' pools. Every error is one line.
    pub async fn start(config: GatewayConfig) -> Result<Gateway, StartError> {
        let max_streams = config.server.transport.max_concurrent_streams;
        // Each stream holds one descriptor, its backend connection; one agent may open
        // --max-streams of them (all sessions together share the same limit).
        let open_files = crate::process::raise_and_check_open_files(
            max_streams,
            "--max-streams",
            "backend connection",
        );
        let listen = config.listen;
        let current = config.clone();
        let endpoint = Endpoint::server(listen, config.server).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => StartError::UdpInUse(listen),
            _ => StartError::UdpListen {
                address: listen,
                source: e,
            },
        })?;
        let monitor_listener = crate::monitoring::bind(config.monitor).await?;
        if let Some(list) = &config.allow {
            info!(allow = %list, "agents restricted by allow-list");
        }
        if config.compress != Compression::default() {
            info!(compress = %config.compress, "what backends send is compressed");
        }
        endpoint.set_address_filter(reload::address_filter(config.allow.clone()));
        let services = reload::pools(&HashMap::new(), config.services, config.backend_max_streams);
        let fwd = Arc::new(Forwarding {
            routes: crate::reload::Live::new(Routes {
                services,
                connect_timeout: config.connect_timeout,
                proxy: config.proxy_protocol,
                compress: config.compress,
                backend_max_streams: config.backend_max_streams,
                allow: config.allow.clone(),
            }),
            meter: Meter::default(),
            open_files: open_files.soft,
            refusals: forward::Refusals::default(),
            udp: udp::GatewayUdp {
                counters: Arc::default(),
                idle_timeout: config.udp_idle_timeout,
                limit: Arc::new(tokio::sync::Semaphore::new(config.max_udp_flows)),
                max_flows: config.max_udp_flows,
                max_flows_per_session: config.max_udp_flows_per_session,
                stop: tokio::sync::watch::channel(false).0,
            },
        });
        Ok(Gateway {
            endpoint,
            fwd,
            sessions: Arc::new(Registry::new()),
            monitor_listener,
            current: Arc::new(std::sync::Mutex::new(current)),
            reloads: Arc::new(crate::reload::ReloadStatus::new()),
        })
    }

    /// What applies a new configuration to this gateway while it runs (see
    /// [`crate::reload`]); take it before [`Gateway::run`].
    pub fn reloader(&self) -> GatewayReloader {
        GatewayReloader {
            endpoint: self.endpoint.clone(),
            fwd: self.fwd.clone(),
            current: self.current.clone(),
            status: self.reloads.clone(),
        }
    }

    /// The UDP address the gateway is bound to (useful when it asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// Accepts agent sessions and forwards their streams until `shutdown` resolves; then
    /// stops accepting, waits up to the drain timeout for open streams to finish and for every
    /// session to close gracefully, and resets what is left.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let drain = Drain::default();
        let source = monitor::GatewaySource {
            registry: self.sessions.clone(),
            endpoint: self.endpoint.clone(),
            fwd: self.fwd.clone(),
            drain: drain.clone(),
            reloads: self.reloads.clone(),
        };
        let _monitor = crate::monitoring::serve(self.monitor_listener, source)?;
        let reporter = tokio::spawn(report_refused_sessions(
            self.endpoint.clone(),
            self.sessions.clone(),
            self.current.clone(),
        ));
        let notifier = crate::systemd::Notifier::from_env();
        let watchdog = notifier.start_watchdog();
        notifier.ready(&format!(
            "accepting agents on {}",
            self.endpoint.local_addr()
        ));
        let (endpoint, sessions) = (&self.endpoint, &self.sessions);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                conn = endpoint.accept() => {
                    let Some(conn) = conn else {
                        reporter.abort();
                        return Err(StartError::UdpFailed);
                    };
                    let meter = sessions.add(&conn);
                    let flows = udp::SessionFlows::start(&conn, self.fwd.udp.counters.clone());
                    // The limit the session was accepted under (a reload changes it for later ones).
                    let max_streams = self.current.lock().unwrap_or_else(|e| e.into_inner()).server.transport.max_concurrent_streams;
                    let (fwd, drain, registry) = (self.fwd.clone(), drain.clone(), sessions.clone());
                    tokio::spawn(async move {
                        let peer = conn.remote_addr();
                        debug!(?peer, "agent session accepted");
                        while let Some(stream) = conn.accept_stream().await {
                            if conn.stream_count() as u64 >= max_streams {
                                crate::warn_limited!(agent = ?peer, limit = max_streams, "session at --max-streams: its agent resets new clients until streams close");
                            }
                            let guard = drain.enter();
                            registry.streams_total.fetch_add(1, Ordering::Relaxed);
                            let (fwd, meter, flows) = (fwd.clone(), meter.clone(), flows.clone());
                            let agent = conn.remote_addr();
                            tokio::spawn(async move {
                                forward(stream, agent, &fwd, &meter, &flows).await;
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
        notifier.stopping("draining open streams");
        self.fwd.udp.stop.send_replace(true);
        let timeout = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain_timeout;
        info!(
            streams = drain.active(),
            ?timeout,
            "shutting down: draining open streams"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let left = drain.wait(timeout).await;
        // Streams done on our side; each session closes once the agent acknowledged everything.
        let live = sessions.connections();
        if left > 0
            || !crate::registry::close_gracefully(&live, "gateway shutting down", deadline).await
        {
            warn!(
                streams = drain.active(),
                "drain timeout passed; remaining streams are reset"
            );
            crate::registry::abort_all(
                &sessions.connections(),
                "gateway shutting down: drain timeout passed",
            )
            .await;
        }
        reporter.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        Ok(())
    }
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
    sessions: Arc<Registry>,
    current: Arc<std::sync::Mutex<GatewayConfig>>,
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
        let limit = current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .server
            .max_connections;
        warn!(
            refused = refused - reported,
            sessions = sessions.connections().len(),
            limit,
            "agent sessions refused: over --max-connections (or an invalid address token)"
        );
        reported = refused;
        last_logged = Some(now);
    }
}
