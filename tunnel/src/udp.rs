//! What the agent's UDP listeners and the gateway's UDP backends share: the counters the
//! monitor shows, the `--udp-protect` values, and the flow bookkeeping both ends keep.
//!
//! A UDP flow is one client address on an agent's `udp://` listener. It travels as a stream
//! that carries no payload (its preamble, version 3, names the service, the client and the
//! protection; the stream's id is the flow id of its datagrams; its end is the flow's end) and
//! as unreliable datagrams of the session (`ferry_transport::datagrams`): no retransmission, no
//! head-of-line blocking, never behind stream data. Either end forgets a flow after
//! `--udp-idle-timeout` without a datagram either way, by finishing the stream; a gateway that
//! refuses a flow (limits, unknown service, no UDP backend) resets it with a code, as it does a
//! TCP client's stream, and the agent logs why.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_monitor::UdpTotals;
use ferry_transport::datagrams::Protection;

/// Largest UDP payload read from a socket.
pub const MAX_UDP_PAYLOAD: usize = 65_535;

/// `--udp-protect`: how a listener's datagrams are protected against loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Protect(pub Protection);

impl FromStr for Protect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(Protect(match s {
            "none" => Protection::None,
            "dup" => Protection::Duplicate,
            "auto" => Protection::Adaptive,
            "fec" => Protection::Fec,
            other => {
                return Err(format!(
                    "invalid --udp-protect {other:?}: expected none, dup (every datagram twice), auto (twice while the path loses 1% or more) or fec (repair packets shared by many datagrams, as --fec sizes them)"
                ))
            }
        }))
    }
}

/// UDP flow counters of one binary. "In" is what its local sockets received (clients on the
/// agent, backends on the gateway), to be carried through the tunnel; "out" what it delivered
/// to them from the tunnel.
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// Flows open now.
    pub flows_active: AtomicU64,
    /// Flows opened, ever.
    pub flows_total: AtomicU64,
    /// Datagrams received from local sockets and handed to the tunnel.
    pub datagrams_in: AtomicU64,
    /// Their bytes.
    pub bytes_in: AtomicU64,
    /// Datagrams from the tunnel delivered to local sockets.
    pub datagrams_out: AtomicU64,
    /// Their bytes.
    pub bytes_out: AtomicU64,
    /// Dropped: larger than the session can carry (fragmentation off, or beyond 8 fragments).
    pub dropped_too_big: AtomicU64,
    /// Dropped: their flow was refused at a limit, or is being refused for a while.
    pub dropped_refused: AtomicU64,
    /// Dropped: waiting for their flow to open with too many ahead of them, or for a flow
    /// unknown (the gateway had not read its preamble yet and its waiting room was full).
    pub dropped_waiting: AtomicU64,
    /// Dropped: the local socket could not take them (its buffer full, or the host refused).
    pub dropped_socket: AtomicU64,
    /// Flows refused: the client is not in the allow-list (counted per datagram: no state is
    /// kept for an address that is refused).
    pub refused_allow: AtomicU64,
    /// Flows refused at a flow limit (on the agent, per datagram, as above).
    pub refused_limit: AtomicU64,
}

impl UdpCounters {
    /// A datagram of `len` bytes went into the tunnel.
    pub fn carried_in(&self, len: usize) {
        self.datagrams_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// A datagram of `len` bytes came out of the tunnel to a local socket.
    pub fn carried_out(&self, len: usize) {
        self.datagrams_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Counts one more of `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A flow opened; the returned guard counts it closed when dropped.
    pub fn flow_opened(&self) -> FlowCount<'_> {
        self.flows_total.fetch_add(1, Ordering::Relaxed);
        self.flows_active.fetch_add(1, Ordering::Relaxed);
        FlowCount(self)
    }

    /// Fills in the monitor's view of UDP flows (the sessions' datagram counters, which the
    /// registry adds, stay).
    pub fn add_to(&self, u: &mut UdpTotals) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        u.flows_active = get(&self.flows_active);
        u.flows_total = get(&self.flows_total);
        u.datagrams_in = get(&self.datagrams_in);
        u.bytes_in = get(&self.bytes_in);
        u.datagrams_out = get(&self.datagrams_out);
        u.bytes_out = get(&self.bytes_out);
        let ours = [
            ("too-big", get(&self.dropped_too_big)),
            ("refused", get(&self.dropped_refused)),
            ("waiting", get(&self.dropped_waiting)),
            ("socket", get(&self.dropped_socket)),
        ];
        let mut dropped: Vec<(String, u64)> = ours.map(|(r, n)| (r.to_owned(), n)).into();
        dropped.append(&mut u.dropped);
        u.dropped = dropped;
        u.refused = vec![
            ("allow-list".into(), get(&self.refused_allow)),
            ("limit".into(), get(&self.refused_limit)),
        ];
    }
}

/// Counts a flow as active while held.
#[derive(Debug)]
pub struct FlowCount<'a>(&'a UdpCounters);

impl Drop for FlowCount<'_> {
    fn drop(&mut self) {
        self.0.flows_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a flow last carried a datagram either way: a coarse clock both its directions touch
/// without a lock.
#[derive(Debug)]
pub struct LastActive {
    epoch: Instant,
    millis: AtomicU64,
}

impl LastActive {
    /// Active now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            millis: AtomicU64::new(0),
        }
    }

    /// A datagram passed now.
    pub fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.millis.store(ms, Ordering::Relaxed);
    }

    /// How long since a datagram last passed.
    pub fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.millis.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

impl Default for LastActive {
    fn default() -> Self {
        Self::new()
    }
}

/// How often flows are checked for idleness: often enough that a flow ends within a few
/// percent of its timeout.
pub fn sweep_interval(idle_timeout: Duration) -> Duration {
    (idle_timeout / 8).clamp(Duration::from_millis(50), Duration::from_secs(5))
}
