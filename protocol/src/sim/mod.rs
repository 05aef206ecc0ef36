//! A simulated network in virtual time, for deterministic tests and benchmarks.
//!
//! [`Pair`] joins a client [`Endpoint`] and a server [`Endpoint`] by two one-way [`Link`]s that
//! delay, jitter, drop, reorder, duplicate and rate-limit datagrams from a seed. Time only moves
//! when nothing can happen before the next delivery or timer, so a minute of lossy transfer runs in
//! milliseconds, and a failing seed replays exactly. This is the quinn-proto test `Pair` idea,
//! written for Ferry's endpoint API.
//!
//! Addresses are only labels here; they are loopback ones so that nothing could ever leave the
//! machine even if they were used by mistake.
//!
//! It is compiled only with the crate's `sim` feature: the tests and benchmarks that use it turn
//! it on (this crate's own through a dev-dependency on itself, `ferry-bench` through its `bench`
//! feature), and the shipped binaries leave it out. A feature rather than a crate of its own:
//! `ferry-bench` lives in the root package beside `ferry-agent` and `ferry-gateway`, so a crate
//! it needed would be a dependency of theirs too, whereas a feature can be required by
//! `ferry-bench` alone (`required-features`); and the simulator, the protocol's test bench, moves
//! with the protocol's API in the same commits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{ServerConfig, TransportConfig};
use crate::connection::{ConnectionError, Event, Transmit};
use crate::endpoint::{ConnectionHandle, Endpoint};

pub mod exchange;
pub mod link;
pub mod transfer;

pub use link::{Link, LinkConfig, LinkStats};

/// The client's address in simulations.
pub const CLIENT_ADDR: &str = "127.0.0.2:40000";
/// The server's address in simulations.
pub const SERVER_ADDR: &str = "127.0.0.1:9000";

/// Which way a captured datagram went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

/// A datagram seen on the wire (when capture is on).
#[derive(Debug, Clone)]
pub struct Captured {
    /// When it was sent.
    pub at: Instant,
    /// Which way.
    pub direction: Direction,
    /// The bytes.
    pub datagram: Vec<u8>,
}

fn seed_bytes(seed: u64, salt: u8) -> [u8; 32] {
    let mut s = [salt; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s
}

/// A client and a server endpoint joined by two impaired links.
pub struct Pair {
    /// Virtual time now.
    pub now: Instant,
    /// When the simulation started.
    pub start: Instant,
    /// The client side.
    pub client: Endpoint,
    /// The server side.
    pub server: Endpoint,
    /// The client's current address (change it to simulate NAT rebinding).
    pub client_addr: SocketAddr,
    /// The server's address.
    pub server_addr: SocketAddr,
    /// Client-to-server link; each datagram carries its source address.
    pub to_server: Link,
    /// Server-to-client link; each datagram carries its destination address.
    pub to_client: Link,
    /// Every datagram sent, when `Some`.
    pub capture: Option<Vec<Captured>>,
    /// Datagrams the client addressed elsewhere than the server, or the server to a stale
    /// client address (dropped).
    pub misaddressed: u64,
    /// When set, called for every datagram sent; returning true drops it before the link
    /// (targeted loss for tests).
    pub filter: Option<DropFilter>,
    /// When set, called for every datagram that passed the filter; may change its bytes (an
    /// on-path tamperer for tests).
    pub tamper: Option<Tamper>,
    /// Datagrams each `poll_transmit` may return as one GSO batch (default 1); batches are cut
    /// into datagrams at their segment size, as the kernel does.
    pub max_batch: usize,
    /// When set, the clock moves in whole ticks (each event rounded up to the next one), as
    /// under a real driver whose timers have this resolution and fire late: what became due
    /// meanwhile is handled, and sent, together.
    pub tick: Option<Duration>,
    /// Transmits taken from both endpoints, and the datagrams they held (see
    /// [`Pair::datagrams_per_transmit`]).
    transmits: u64,
    datagrams: u64,
    buf: Vec<u8>,
}

/// Rewrites datagrams on their way to a link.
pub type Tamper = Box<dyn FnMut(Direction, &mut Vec<u8>)>;

/// Decides which datagrams to drop before they reach a link (true: drop).
pub type DropFilter = Box<dyn FnMut(Direction, &[u8]) -> bool>;

impl Pair {
    /// A pair whose randomness (endpoints and links) all derives from `seed`.
    pub fn new(
        seed: u64,
        server: ServerConfig,
        to_server: LinkConfig,
        to_client: LinkConfig,
    ) -> Self {
        let start = Instant::now();
        Self {
            now: start,
            start,
            client: Endpoint::new(None, seed_bytes(seed, 1), start),
            server: Endpoint::new(Some(server), seed_bytes(seed, 2), start),
            client_addr: CLIENT_ADDR.parse().expect("valid literal"),
            server_addr: SERVER_ADDR.parse().expect("valid literal"),
            to_server: Link::new(to_server, seed ^ 0x5eed_0001, start),
            to_client: Link::new(to_client, seed ^ 0x5eed_0002, start),
            capture: None,
            misaddressed: 0,
            filter: None,
            tamper: None,
            max_batch: 1,
            tick: None,
            transmits: 0,
            datagrams: 0,
            buf: Vec::with_capacity(65536),
        }
    }

    /// A pair with the same impairments both ways.
    pub fn symmetric(seed: u64, server: ServerConfig, link: LinkConfig) -> Self {
        Self::new(seed, server, link.clone(), link)
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Starts a client connection to the server.
    pub fn connect(&mut self, config: TransportConfig) -> ConnectionHandle {
        let server = self.server_addr;
        self.client
            .connect(self.now, server, config)
            .expect("valid transport config")
    }

    /// Records the datagram if capturing; returns false if the filter drops it.
    fn record(&mut self, direction: Direction, datagram: &[u8]) -> bool {
        if let Some(c) = &mut self.capture {
            c.push(Captured {
                at: self.now,
                direction,
                datagram: datagram.to_vec(),
            });
        }
        !self.filter.as_mut().is_some_and(|f| f(direction, datagram))
    }

    /// Cuts the transmit in `buf` into its datagrams, counting both.
    fn segments(&mut self, t: &Transmit) -> Vec<Vec<u8>> {
        let data = &self.buf[..t.size];
        let datagrams: Vec<Vec<u8>> = match t.segment_size {
            Some(s) if s > 0 => data.chunks(s).map(<[u8]>::to_vec).collect(),
            _ => vec![data.to_vec()],
        };
        self.transmits += 1;
        self.datagrams += datagrams.len() as u64;
        datagrams
    }

    /// Mean datagrams per transmit so far (GSO batch size), both endpoints together.
    pub fn datagrams_per_transmit(&self) -> f64 {
        self.datagrams as f64 / self.transmits.max(1) as f64
    }

    /// Moves everything both endpoints want to send now onto the links.
    pub fn flush(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(t) = self
                .client
                .poll_transmit(self.now, &mut self.buf, self.max_batch)
            {
                progressed = true;
                for mut d in self.segments(&t) {
                    if !self.record(Direction::ToServer, &d) {
                        continue;
                    }
                    if let Some(tamper) = &mut self.tamper {
                        tamper(Direction::ToServer, &mut d);
                    }
                    if t.destination == self.server_addr {
                        self.to_server.send(self.now, self.client_addr, d);
                    } else {
                        self.misaddressed += 1;
                    }
                }
            }
            while let Some(t) = self
                .server
                .poll_transmit(self.now, &mut self.buf, self.max_batch)
            {
                progressed = true;
                for mut d in self.segments(&t) {
                    if !self.record(Direction::ToClient, &d) {
                        continue;
                    }
                    if let Some(tamper) = &mut self.tamper {
                        tamper(Direction::ToClient, &mut d);
                    }
                    self.to_client.send(self.now, t.destination, d);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Earliest time anything is scheduled.
    pub fn next_event(&mut self) -> Option<Instant> {
        [
            self.client.poll_timeout(),
            self.server.poll_timeout(),
            self.to_server.next_delivery(),
            self.to_client.next_delivery(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Flushes, advances virtual time to the next event and processes everything due then.
    /// Returns false when nothing at all is scheduled.
    pub fn step(&mut self) -> bool {
        self.flush();
        let Some(mut next) = self.next_event() else {
            return false;
        };
        if let Some(tick) = self.tick.filter(|t| !t.is_zero()) {
            let since = next.saturating_duration_since(self.start).as_nanos();
            let tick_ns = tick.as_nanos();
            let ticks = since.div_ceil(tick_ns);
            next = self.start + Duration::from_nanos((ticks * tick_ns) as u64);
        }
        if next > self.now {
            self.now = next;
        }
        let now = self.now;
        while let Some((from, d)) = self.to_server.deliver(now) {
            self.server.handle_datagram(now, from, &d);
        }
        while let Some((to, d)) = self.to_client.deliver(now) {
            if to == self.client_addr {
                let from = self.server_addr;
                self.client.handle_datagram(now, from, &d);
            } else {
                // The client's old address (NAT binding) no longer reaches it.
                self.misaddressed += 1;
            }
        }
        self.client.handle_timeout(now);
        self.server.handle_timeout(now);
        true
    }

    /// Processes everything scheduled up to `t`, then moves the clock to `t` (for tests that
    /// act at chosen instants, e.g. an application writing every few hundred microseconds).
    pub fn advance_to(&mut self, t: Instant) {
        loop {
            self.flush();
            match self.next_event() {
                Some(next) if next <= t => {
                    self.step();
                }
                _ => break,
            }
        }
        if t > self.now {
            self.now = t;
        }
    }

    /// Steps until `done` returns true (checked after every step, and given the pair so it can
    /// act on events), or until `limit` of virtual time has passed since the call. Returns
    /// whether `done` was reached.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Pair) -> bool) -> bool {
        let deadline = self.now + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.now > deadline || !self.step() {
                return done(self);
            }
        }
    }

    /// Runs until both handshakes completed; returns the client's and server's handles.
    pub fn establish(
        &mut self,
        config: TransportConfig,
    ) -> Option<(ConnectionHandle, ConnectionHandle)> {
        let client = self.connect(config);
        let mut server = None;
        let ok = self.run_until(Duration::from_secs(30), |p| {
            if server.is_none() {
                server = p.server.accept();
            }
            server.is_some()
                && p.client
                    .connection_ref(client)
                    .is_some_and(|c| c.is_established())
        });
        ok.then(|| (client, server.expect("accepted")))
    }

    /// Runs until both ends have reported [`Event::Closed`], for at most `limit` of virtual
    /// time; returns the client's and the server's errors, `None` for an end that had not
    /// closed by then. Every other event is taken and dropped.
    pub fn run_until_both_closed(
        &mut self,
        limit: Duration,
    ) -> (Option<ConnectionError>, Option<ConnectionError>) {
        let mut client_error = None;
        let mut server_error = None;
        self.run_until(limit, |p| {
            while let Some((_, ev)) = p.client.poll_event() {
                if let Event::Closed(e) = ev {
                    client_error = Some(e);
                }
            }
            while let Some((_, ev)) = p.server.poll_event() {
                if let Event::Closed(e) = ev {
                    server_error = Some(e);
                }
            }
            client_error.is_some() && server_error.is_some()
        });
        (client_error, server_error)
    }
}
