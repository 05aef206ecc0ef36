//! Ferry's HTTP monitor, served by both binaries (`--monitor ADDR`, on loopback by default):
//!
//! - `/` a dashboard that refreshes itself (totals, RTT and loss histograms of active sessions,
//!   throughput and compression saving, backends);
//! - `/health` (JSON: status, uptime, version) and `/ready` (JSON; 503 until ready);
//! - `/metrics` (Prometheus text via `prometheus-client`, see [`metrics`]);
//! - `/stats`, `/connections`, `/stats-history`: HTML, or JSON with `?format=json` or
//!   `Accept: application/json`;
//! - `/history` (JSON): the last 10 minutes at 1 s and the last hour at 10 s of throughput,
//!   RTT, loss, retransmissions, sessions, streams and refusals (see [`timeline`]), which the
//!   dashboard charts.
//!
//! Why it looks like this: RTT Proxy's monitor set the floor operators expect (its endpoints
//! are kept under the same names), and the dashboard needs nothing but a browser. The monitor
//! runs on its own tasks and reads a [`Snapshot`] per request from a [`Source`] the binary
//! provides, so the tunnel never waits for it; a slow or hostile HTTP client is bounded by a
//! header timeout, a whole-connection timeout and a cap on concurrent connections.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod metrics;
mod pages;
pub mod snapshot;
pub mod timeline;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use snapshot::{
    BackendInfo, ClosedSession, ConfigLoads, FecTotals, History, SessionInfo, Snapshot, Totals,
    UdpTotals,
};

/// Where a binary's monitor state comes from.
pub trait Source: Send + Sync + 'static {
    /// The state now.
    fn snapshot(&self) -> Snapshot;
}

/// HTTP connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// A client must send its request headers within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// No HTTP connection lives longer than this (keep-alive included).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the monitor cannot serve where it was asked to: one line, naming the address.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// A `--monitor` address off loopback, without `--monitor-public`.
    #[error(
        "--monitor {0} is not a loopback address: the monitor shows peers and traffic; \
         add --monitor-public to serve it there anyway"
    )]
    NotLoopback(SocketAddr),
    /// Something else listens there.
    #[error("cannot serve the monitor on {0}: address already in use")]
    AddressInUse(SocketAddr),
    /// The listener could not be bound for another reason.
    #[error("cannot serve the monitor on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Checks a `--monitor` address: loopback only, unless `public` (the operator asked for it).
pub fn check_address(addr: SocketAddr, public: bool) -> Result<(), MonitorError> {
    if addr.ip().is_loopback() || public {
        Ok(())
    } else {
        Err(MonitorError::NotLoopback(addr))
    }
}

/// Binds the monitor's listener, with a one-line error.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MonitorError> {
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => MonitorError::AddressInUse(addr),
        _ => MonitorError::Bind { addr, source: e },
    })
}

/// Throughput and the recent history, measured by the server once a second (so they are right
/// whoever asks, and however often): payload and wire bytes per second over the last second,
/// and the [`timeline::Timeline`] of the last hour.
#[derive(Debug, Default)]
pub struct Rates {
    /// The last two samples: (when, payload bytes, wire bytes), both directions together.
    samples: std::sync::Mutex<[Option<(std::time::Instant, u64, u64)>; 2]>,
    timeline: std::sync::Mutex<timeline::Timeline>,
}

impl Rates {
    /// Records a snapshot taken at `at`: the throughput and a point of the timeline.
    pub fn record_snapshot(&self, at: std::time::Instant, snapshot: &Snapshot) {
        let t = &snapshot.totals;
        self.record(
            at,
            t.payload_bytes_out + t.payload_bytes_in,
            t.wire_bytes_out + t.wire_bytes_in,
        );
        self.timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(at, snapshot);
    }

    /// `/history`'s body.
    pub fn history_json(&self) -> serde_json::Value {
        self.timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .to_json()
    }

    fn record(&self, at: std::time::Instant, payload: u64, wire: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s[0] = s[1];
        s[1] = Some((at, payload, wire));
    }

    /// Payload and wire bytes per second between the last two samples (zero before two).
    pub fn per_second(&self) -> (f64, f64) {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match (s[0], s[1]) {
            (Some((t0, p0, w0)), Some((t1, p1, w1))) if t1 > t0 => {
                let dt = (t1 - t0).as_secs_f64();
                (
                    p1.saturating_sub(p0) as f64 / dt,
                    w1.saturating_sub(w0) as f64 / dt,
                )
            }
            _ => (0.0, 0.0),
        }
    }
}

/// Serves the monitor on `listener` until this future is dropped (or its task aborted). The
/// throughput sampler runs inside it and stops with it; a connection already being served
/// finishes on a task of its own, within [`CONNECTION_TIMEOUT`].
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>) {
    let rates = Arc::new(Rates::default());
    tokio::join!(
        sample_rates(source.as_ref(), &rates),
        accept_connections(listener, source.clone(), rates.clone())
    );
}

/// Records the throughput and a timeline point once a second, for [`Rates::per_second`] and
/// `/history`; never returns.
async fn sample_rates(source: &dyn Source, rates: &Rates) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let snapshot = source.snapshot();
        rates.record_snapshot(std::time::Instant::now(), &snapshot);
    }
}

/// Accepts HTTP connections and serves each on a task of its own, at most
/// [`MAX_CONNECTIONS`] at once; never returns.
async fn accept_connections(listener: TcpListener, source: Arc<dyn Source>, rates: Arc<Rates>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Full: refuse this one rather than let it wait on the others.
            drop(stream);
            continue;
        };
        let (source, rates) = (source.clone(), rates.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (source, rates) = (source.clone(), rates.clone());
                async move { Ok::<_, Infallible>(route(source.as_ref(), &rates, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

fn wants_json<B>(req: &Request<B>) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "format=json"))
        || req
            .headers()
            .get(hyper::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("application/json"))
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "no-store".parse() {
        r.headers_mut().insert(hyper::header::CACHE_CONTROL, v);
    }
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::to_string_pretty(value).unwrap_or_default(),
    )
}

const HTML: &str = "text/html; charset=utf-8";

/// Answers one request.
pub fn route<B>(source: &dyn Source, rates: &Rates, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    let snap = source.snapshot();
    let as_json = wants_json(req);
    match req.uri().path() {
        "/" => reply(StatusCode::OK, HTML, pages::DASHBOARD.to_owned()),
        "/health" => json(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "role": snap.role,
                "version": snap.version,
                "uptime_seconds": snap.uptime_seconds,
            }),
        ),
        "/ready" => {
            let status = if snap.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                status,
                &serde_json::json!({"ready": snap.ready, "reason": snap.not_ready_reason}),
            )
        }
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics::render(snap),
        ),
        "/stats" if as_json => {
            let mut stats = pages::stats_json(&snap);
            let (payload, wire) = rates.per_second();
            stats["payload_bytes_per_second"] = serde_json::json!(payload);
            stats["wire_bytes_per_second"] = serde_json::json!(wire);
            json(StatusCode::OK, &stats)
        }
        "/stats" => reply(StatusCode::OK, HTML, pages::stats_html(&snap)),
        "/history" => json(StatusCode::OK, &rates.history_json()),
        "/connections" if as_json => json(
            StatusCode::OK,
            &serde_json::json!({"sessions": snap.sessions, "backends": snap.backends}),
        ),
        "/connections" => reply(StatusCode::OK, HTML, pages::connections_html(&snap)),
        "/stats-history" if as_json => {
            json(StatusCode::OK, &serde_json::json!({"closed": snap.history}))
        }
        "/stats-history" => reply(StatusCode::OK, HTML, pages::history_html(&snap)),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}
