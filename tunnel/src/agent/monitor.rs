//! The agent's side of the monitor: the [`Source`] that turns its sessions, links and
//! refusal counters into a monitor snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ferry_monitor::{BackendInfo, Snapshot, Source};

use super::sessions::Sessions;
use crate::process::Drain;
use crate::splice::Meter;

/// Clients the agent refused, by reason.
#[derive(Debug, Default)]
pub(super) struct Refusals {
    /// Not in `--allow-ip`.
    pub allow_list: AtomicU64,
    /// Over `--max-connections`.
    pub limit: AtomicU64,
    /// Every gateway session at its stream limit (the gateway's `--max-streams`).
    pub stream_limit: AtomicU64,
    /// No gateway session came up within `--session-wait`.
    pub no_session: AtomicU64,
    /// Out of file descriptors (the open-files limit, RLIMIT_NOFILE).
    pub open_files: AtomicU64,
}

/// The agent as the monitor sees it.
pub(super) struct AgentSource {
    pub sessions: Arc<Sessions>,
    pub refusals: Arc<Refusals>,
    pub meter: Arc<Meter>,
    pub drain: Drain,
    pub udp: Arc<crate::udp::UdpCounters>,
    pub reloads: Arc<crate::reload::ReloadStatus>,
}

impl Source for AgentSource {
    fn snapshot(&self) -> Snapshot {
        let registry = &self.sessions.registry;
        let mut snapshot =
            crate::monitoring::snapshot("ferry-agent", registry, &self.meter, &self.drain);
        snapshot.config = self.reloads.snapshot();
        let t = &mut snapshot.totals;
        self.udp.add_to(&mut t.udp);
        t.rejected = vec![
            (
                "allow-list".into(),
                self.refusals.allow_list.load(Ordering::Relaxed),
            ),
            ("limit".into(), self.refusals.limit.load(Ordering::Relaxed)),
            (
                "stream-limit".into(),
                self.refusals.stream_limit.load(Ordering::Relaxed),
            ),
            (
                "no-session".into(),
                self.refusals.no_session.load(Ordering::Relaxed),
            ),
            (
                "open-files".into(),
                self.refusals.open_files.load(Ordering::Relaxed),
            ),
            (
                "auth".into(),
                self.sessions.handshakes_failed.load(Ordering::Relaxed),
            ),
        ];
        let e = self.sessions.endpoint_totals();
        t.malformed_dropped = e.malformed_dropped;
        t.unknown_session_dropped = e.unknown_session_dropped;
        t.stateless_resets = vec![("received".into(), e.stateless_resets_received)];
        let links = self.sessions.links();
        let up = links.iter().any(|(_, rtt, _)| rtt.is_some());
        snapshot.backends = links
            .into_iter()
            .map(|(gateway, rtt, active)| BackendInfo {
                service: String::new(),
                address: gateway.to_string(),
                state: if rtt.is_some() { "UP" } else { "CONNECTING" }.into(),
                active_streams: active as u64,
                latency_seconds: rtt.map(|d| d.as_secs_f64()),
            })
            .collect();
        snapshot.ready = up;
        snapshot.not_ready_reason = (!up).then(|| "no gateway session is up yet".into());
        snapshot
    }
}
