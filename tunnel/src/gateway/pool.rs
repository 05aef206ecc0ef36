//! A service's backends and the choice among them: the least-loaded healthy one.
//!
//! Each backend counts its active streams and remembers its recent connect latency. A new stream
//! goes to the UP backend with the fewest active streams (ties: lowest latency, then the order
//! given). A backend whose connect fails goes DOWN for a backoff that doubles with each failure
//! (from 250 ms up to 30 s, RProxy's IDLE/ACTIVE/DOWN idea); when the backoff expires, the next
//! stream probes it, and a success brings it back UP by itself. When every backend is down the
//! least recently failed one is tried anyway, so a recovered pool is found at once.
//!
//! A reload gives a service a new pool ([`Pool::reconfigured`]): a backend kept keeps its
//! health and its count of streams; a removed one is no longer picked, while the streams it
//! carries hold it (through their [`Lease`]) until they end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::address::Address;
use crate::backoff::Backoff;
use crate::load::{Load, LoadShare};

/// First DOWN period after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest DOWN period.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Health {
    /// Consecutive connect failures.
    failures: u32,
    /// How long the next failure keeps the backend DOWN.
    backoff: Backoff,
    /// DOWN until then.
    down_until: Option<Instant>,
    /// Smoothed connect latency.
    latency: Option<Duration>,
}

/// One backend of a pool.
#[derive(Debug)]
pub(super) struct Backend {
    /// Where it listens.
    pub address: Address,
    /// Streams forwarded to it now.
    load: Load,
    /// Per-backend stream limit (0: none); a reload may change it.
    limit: AtomicUsize,
    health: Mutex<Health>,
}

impl Backend {
    /// Streams currently forwarded to it.
    pub fn active(&self) -> usize {
        self.load.get()
    }

    /// True if not DOWN at `now`.
    pub fn is_up(&self, now: Instant) -> bool {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .down_until
            .is_none_or(|t| now >= t)
    }

    /// Records a successful connect that took `latency`.
    pub fn connected(&self, latency: Duration) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if h.failures > 0 {
            tracing::info!(backend = %self.address, "backend is UP again");
        }
        h.failures = 0;
        h.backoff.reset();
        h.down_until = None;
        h.latency = Some(h.latency.map_or(latency, |l| (l * 7 + latency) / 8));
    }

    /// Records a failed connect at `now`: the backend goes DOWN for a growing backoff.
    pub fn failed(&self, now: Instant, error: &str) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.failures = h.failures.saturating_add(1);
        let backoff = h.backoff.next_pause(MAX_BACKOFF);
        h.down_until = Some(now + backoff);
        tracing::warn!(backend = %self.address, %error, ?backoff, failures = h.failures, "backend is DOWN");
    }

    /// Smoothed connect latency, once a connect succeeded.
    pub fn recent_latency(&self) -> Option<Duration> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latency
    }

    fn latency(&self) -> Duration {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .latency
            .unwrap_or(Duration::ZERO)
    }

    fn down_until(&self) -> Option<Instant> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .down_until
    }
}

/// A backend chosen for one stream; its active count drops when this is dropped.
#[derive(Debug)]
pub(super) struct Lease {
    backend: Arc<Backend>,
    _load: LoadShare,
}

impl Lease {
    /// The backend.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

/// The backends of one service.
#[derive(Debug, Clone)]
pub(super) struct Pool {
    backends: Arc<Vec<Arc<Backend>>>,
}

impl Pool {
    /// A pool of `addresses`, each limited to `per_backend_limit` streams (0: unlimited).
    pub fn new(addresses: Vec<Address>, per_backend_limit: usize) -> Self {
        Self::empty().reconfigured(addresses, per_backend_limit)
    }

    fn empty() -> Self {
        Self {
            backends: Arc::default(),
        }
    }

    /// A pool of `addresses` that keeps this pool's backends among them (their health, their
    /// streams and their count), each now limited to `per_backend_limit` streams.
    pub fn reconfigured(&self, addresses: Vec<Address>, per_backend_limit: usize) -> Self {
        let backends = addresses
            .into_iter()
            .map(|address| {
                let kept = self.backends.iter().find(|b| b.address == address);
                let backend = kept.cloned().unwrap_or_else(|| {
                    Arc::new(Backend {
                        address,
                        load: Load::default(),
                        limit: AtomicUsize::new(per_backend_limit),
                        health: Mutex::new(Health {
                            failures: 0,
                            backoff: Backoff::new(FIRST_BACKOFF),
                            down_until: None,
                            latency: None,
                        }),
                    })
                });
                backend.limit.store(per_backend_limit, Ordering::Relaxed);
                backend
            })
            .collect();
        Self {
            backends: Arc::new(backends),
        }
    }

    /// The backends, in configuration order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Picks the least-loaded UP backend with room, or (all DOWN) the one whose backoff ends
    /// first; `None` when every backend is at its limit. Only `udp://` backends for UDP flows
    /// (`udp`), only the others for streams.
    pub fn pick(&self, now: Instant, udp: bool) -> Option<Lease> {
        let with_room = || {
            self.backends
                .iter()
                .filter(|b| b.address.is_udp() == udp)
                .filter(|b| {
                    let limit = b.limit.load(Ordering::Relaxed);
                    limit == 0 || b.active() < limit
                })
        };
        let chosen = with_room()
            .filter(|b| b.is_up(now))
            .min_by_key(|b| (b.active(), b.latency()))
            .or_else(|| with_room().min_by_key(|b| b.down_until()))?;
        Some(Lease {
            backend: chosen.clone(),
            _load: chosen.load.share(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize, limit: usize) -> Pool {
        Pool::new(
            (0..n)
                .map(|i| format!("tcp://127.0.0.1:{}", 8000 + i).parse().unwrap())
                .collect(),
            limit,
        )
    }

    #[test]
    fn streams_spread_evenly_over_equal_backends() {
        let p = pool(3, 0);
        let now = Instant::now();
        let leases: Vec<Lease> = (0..300).map(|_| p.pick(now, false).unwrap()).collect();
        for b in p.backends() {
            assert_eq!(b.active(), 100);
        }
        drop(leases);
        assert!(p.backends().iter().all(|b| b.active() == 0));
    }

    #[test]
    fn a_down_backend_is_skipped_until_its_backoff_ends_then_probed() {
        let p = pool(2, 0);
        let now = Instant::now();
        p.backends()[0].failed(now, "refused");
        let picks: Vec<_> = (0..4).map(|_| p.pick(now, false).unwrap()).collect();
        assert!(picks
            .iter()
            .all(|l| Arc::ptr_eq(l.backend(), &p.backends()[1])));
        let later = now + FIRST_BACKOFF;
        let probe = p.pick(later, false).unwrap();
        assert!(
            Arc::ptr_eq(probe.backend(), &p.backends()[0]),
            "least loaded once UP again"
        );
        p.backends()[0].connected(Duration::from_millis(1));
        assert!(p.backends()[0].is_up(later));
    }

    #[test]
    fn backoff_doubles_and_all_down_still_tries_the_first_to_recover() {
        let p = pool(2, 0);
        let now = Instant::now();
        p.backends()[0].failed(now, "x");
        p.backends()[0].failed(now, "x");
        p.backends()[1].failed(now, "x");
        assert!(!p.backends()[0].is_up(now + FIRST_BACKOFF));
        assert!(p.backends()[0].is_up(now + 2 * FIRST_BACKOFF));
        let l = p.pick(now, false).unwrap();
        assert!(
            Arc::ptr_eq(l.backend(), &p.backends()[1]),
            "the one that recovers first"
        );
    }

    #[test]
    fn a_success_starts_the_backoff_again() {
        let p = pool(1, 0);
        let b = &p.backends()[0];
        let now = Instant::now();
        for _ in 0..3 {
            b.failed(now, "x");
        }
        assert!(
            !b.is_up(now + 3 * FIRST_BACKOFF),
            "DOWN for 4 x the first backoff"
        );
        b.connected(Duration::from_millis(1));
        b.failed(now, "x");
        assert!(!b.is_up(now + FIRST_BACKOFF / 2));
        assert!(b.is_up(now + FIRST_BACKOFF), "the first backoff again");
    }

    #[test]
    fn per_backend_limit_is_enforced() {
        let p = pool(2, 1);
        let now = Instant::now();
        let a = p.pick(now, false).unwrap();
        let b = p.pick(now, false).unwrap();
        assert!(p.pick(now, false).is_none());
        drop(a);
        assert!(p.pick(now, false).is_some());
        drop(b);
    }

    #[test]
    fn a_reload_keeps_kept_backends_stops_picking_removed_ones_and_adds_new_ones() {
        let p = pool(2, 0);
        let now = Instant::now();
        let on_first = p.pick(now, false).unwrap();
        let on_second = p.pick(now, false).unwrap();
        p.backends()[1].failed(now, "refused");
        let addresses = ["tcp://127.0.0.1:8001", "tcp://127.0.0.1:9000"]
            .map(|a| a.parse().unwrap())
            .to_vec();
        let q = p.reconfigured(addresses, 1);
        assert!(
            Arc::ptr_eq(&q.backends()[0], &p.backends()[1]),
            "kept, health and all"
        );
        assert!(!q.backends()[0].is_up(now));
        assert_eq!(q.backends()[1].address.to_string(), "tcp://127.0.0.1:9000");
        // The removed backend still counts its open stream, and is never picked again.
        assert_eq!(on_first.backend().active(), 1);
        let picks: Vec<_> = (0..2).map(|_| q.pick(now, false)).collect();
        assert!(picks
            .iter()
            .flatten()
            .all(|l| !Arc::ptr_eq(l.backend(), on_first.backend())));
        // The new limit of one applies to the kept backend, which holds a stream already.
        assert!(
            picks.iter().flatten().count() == 1 && q.pick(now, false).is_none(),
            "one new stream on the new backend, then both are at the limit"
        );
        drop((on_first, on_second));
    }

    #[test]
    fn ties_go_to_the_faster_backend() {
        let p = pool(2, 0);
        p.backends()[0].connected(Duration::from_millis(20));
        p.backends()[1].connected(Duration::from_millis(2));
        let l = p.pick(Instant::now(), false).unwrap();
        assert!(Arc::ptr_eq(l.backend(), &p.backends()[1]));
    }
}
