//! The gateway's side of the monitor: the [`Source`] that turns the session registry, the
//! backend pools and the endpoint's counters into a monitor snapshot.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ferry_monitor::{BackendInfo, Snapshot, Source};
use ferry_transport::Endpoint;

use super::forward::Forwarding;
use crate::process::Drain;
use crate::registry::Registry;

/// The gateway as the monitor sees it.
pub(super) struct GatewaySource {
    pub registry: Arc<Registry>,
    pub endpoint: Endpoint,
    pub fwd: Arc<Forwarding>,
    pub drain: Drain,
    pub reloads: Arc<crate::reload::ReloadStatus>,
}

impl Source for GatewaySource {
    fn snapshot(&self) -> Snapshot {
        let mut snapshot = crate::monitoring::snapshot(
            "ferry-gateway",
            &self.registry,
            &self.fwd.meter,
            &self.drain,
        );
        let t = &mut snapshot.totals;
        self.fwd.udp.counters.add_to(&mut t.udp);
        let e = self.endpoint.stats();
        t.malformed_dropped = e.malformed_dropped;
        t.unknown_session_dropped = e.unknown_connection_dropped;
        t.rejected = vec![
            (
                "allow-list".into(),
                e.address_rejected + self.fwd.refusals.allow_list.load(Ordering::Relaxed),
            ),
            ("limit".into(), e.connections_refused),
            ("auth".into(), e.handshakes_failed),
            (
                "backend-limit".into(),
                self.fwd.refusals.backend_limit.load(Ordering::Relaxed),
            ),
            (
                "open-files".into(),
                self.fwd.refusals.open_files.load(Ordering::Relaxed),
            ),
        ];
        t.stateless_resets = vec![
            ("sent".into(), e.stateless_resets_sent),
            ("rate-limited".into(), e.stateless_resets_limited),
        ];
        let now = Instant::now();
        snapshot.config = self.reloads.snapshot();
        for (service, pool) in self.fwd.routes.get().services.iter() {
            for b in pool.backends() {
                snapshot.backends.push(BackendInfo {
                    service: service.clone(),
                    address: b.address.to_string(),
                    state: if b.is_up(now) { "UP" } else { "DOWN" }.into(),
                    active_streams: b.active() as u64,
                    latency_seconds: b.recent_latency().map(|l| l.as_secs_f64()),
                });
            }
        }
        snapshot
    }
}
