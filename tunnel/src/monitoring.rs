//! What the agent and the gateway do the same way for their HTTP monitor (`ferry_monitor`):
//! bind its listener at start-up (so a port in use stops the binary before it serves), serve
//! it on a task of its own that stops when the binary's `run` returns, and fill the part of a
//! [`Snapshot`] both share: sessions and session totals from the [`Registry`], payload and
//! encoded bytes from the binary's total [`Meter`], streams in progress from its [`Drain`].

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_monitor::{Snapshot, Source, Totals};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::info;

use crate::process::Drain;
use crate::registry::Registry;
use crate::splice::Meter;
use crate::start_error::StartError;

/// Binds the monitor's listener at `address` (`None`: the monitor is off).
pub(crate) async fn bind(address: Option<SocketAddr>) -> Result<Option<TcpListener>, StartError> {
    match address {
        Some(addr) => Ok(Some(ferry_monitor::bind(addr).await?)),
        None => Ok(None),
    }
}

/// The monitor being served; dropping it stops the monitor.
#[derive(Debug)]
pub(crate) struct Monitor {
    task: JoinHandle<()>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the monitor on `listener` (if it is on) from `source`, and logs where.
pub(crate) fn serve(
    listener: Option<TcpListener>,
    source: impl Source,
) -> Result<Option<Monitor>, StartError> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let addr = listener.local_addr().map_err(StartError::MonitorListener)?;
    info!(monitor = %addr, "monitor serving");
    let task = tokio::spawn(ferry_monitor::serve(listener, Arc::new(source)));
    Ok(Some(Monitor { task }))
}

/// The snapshot of a binary named `role`, with what every binary reports filled in: its
/// sessions, the session, stream and byte totals, uptime and history. It says ready; the
/// caller adds its refusals, endpoint counters and backends, its configuration's loads, and
/// readiness if it has a condition.
pub(crate) fn snapshot(role: &str, registry: &Registry, meter: &Meter, drain: &Drain) -> Snapshot {
    let mut totals = Totals::default();
    let sessions = registry.describe(&mut totals);
    let bytes = meter.snapshot();
    totals.payload_bytes_out = bytes.to_tunnel;
    totals.payload_bytes_in = bytes.from_tunnel;
    totals.stream_bytes_out = bytes.to_tunnel_encoded;
    totals.stream_bytes_in = bytes.from_tunnel_encoded;
    totals.streams_active = drain.active() as u64;
    Snapshot {
        role: role.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: registry.uptime_seconds(),
        ready: true,
        not_ready_reason: None,
        totals,
        sessions,
        backends: Vec::new(),
        history: registry.history(),
        config: Default::default(),
    }
}
