//! The `udp` scenario (issue #17): what Ferry's UDP flows give a real-time application, and
//! what they cost, against plain UDP on the same link.
//!
//! - One-way flow, game-like: a sender on the client side sends numbered datagrams (`--udp-size`
//!   bytes every `--udp-interval-ms`, for `--udp-seconds`) to a receiver on the server side,
//!   directly (`udp`, the baseline) or through a Ferry pair with each `--udp-protect` mode
//!   (`ferry-none`, `ferry-dup`, `ferry-auto`). Figures: the share delivered, one-way latency
//!   p50/p99 (each datagram carries its send time; both ends are sockets of this process, one
//!   clock), duplicates delivered (Ferry suppresses its copies: any is an error), and on an
//!   impaired link the bytes every packet of the run put on the link, both ways, per payload
//!   byte (headers, acknowledgements and protection copies included: what protection costs).
//! - New flows: [`NEW_FLOWS`] client sockets send one datagram each (a game's join request, a
//!   DNS query): the share of these first datagrams delivered, which no probe has warmed up.
//! - Echo, on loopback only (on a 20 ms link it would measure the window over the RTT, not the
//!   tunnel): a client keeps [`ECHO_WINDOW`] datagrams in flight to an echo backend for
//!   `--udp-seconds`; echoes/s, the datagram rate each way the pair sustains.
//!
//! The backend is one socket that records the one-way flow's datagrams and echoes the echo
//! client's, which a tag byte tells apart. The one-way flow and the echo open with probes before
//! anything is measured, so a flow's opening (and Ferry's session handshake) is not charged to
//! them; the new flows are there to measure exactly that.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Notify;

use crate::link::NetLink;
use crate::load::percentile_ms;
use crate::netns::Place;
use crate::peers::{self, Settings, Tunnel};
use crate::report::{Figures, Outcome, Run, RunKind};
use crate::{progress, LinkRun};

/// Datagrams each echo client keeps in flight.
pub const ECHO_WINDOW: usize = 32;
/// Tag, sequence number and send time: the smallest datagram.
pub const HEADER_BYTES: usize = 1 + 8 + 8;
/// Flows opened by a single datagram each in the new-flows run.
pub const NEW_FLOWS: u64 = 20;
/// How long the receiver keeps listening after the last datagram left.
const DRAIN: Duration = Duration::from_millis(1000);
/// How long a peer may take to carry its first datagram.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// An echo window with no answer for this long is presumed lost and sent again.
const ECHO_TIMEOUT: Duration = Duration::from_millis(200);

/// What the first byte of a datagram says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Tag {
    /// Opens the one-way flow; not measured.
    Probe = 1,
    /// The one-way flow.
    Data = 2,
    /// To be echoed.
    Echo = 3,
    /// A new flow's only datagram.
    First = 4,
}

/// `--udp-protect`: Ferry's loss protection for its UDP flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protect {
    /// Each datagram once.
    None,
    /// Each datagram twice, a few milliseconds apart.
    Dup,
    /// Twice while the path loses 1% or more.
    Auto,
    /// In forward error correction groups.
    Fec,
}

impl Protect {
    fn flag(self) -> &'static str {
        match self {
            Protect::None => "none",
            Protect::Dup => "dup",
            Protect::Auto => "auto",
            Protect::Fec => "fec",
        }
    }
}

/// Who carries the datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UdpPeer {
    Direct,
    Ferry(Protect),
}

impl UdpPeer {
    fn name(self) -> &'static str {
        match self {
            UdpPeer::Direct => "udp",
            UdpPeer::Ferry(Protect::None) => "ferry-none",
            UdpPeer::Ferry(Protect::Dup) => "ferry-dup",
            UdpPeer::Ferry(Protect::Auto) => "ferry-auto",
            UdpPeer::Ferry(Protect::Fec) => "ferry-fec",
        }
    }
}

/// The shape of the work.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long the one-way flow sends, and the echo runs.
    pub seconds: Duration,
    /// Bytes of each datagram.
    pub size: usize,
    /// Between two datagrams of the one-way flow.
    pub interval: Duration,
    /// Ferry's modes to measure (none: only plain UDP).
    pub protect: Vec<Protect>,
}

impl Options {
    fn datagrams(&self) -> u64 {
        (self.seconds.as_secs_f64() / self.interval.as_secs_f64()).ceil() as u64
    }
}

/// Runs plain UDP and each Ferry mode on one link.
pub async fn run(
    label: String,
    loss: Option<f64>,
    opts: &Options,
    settings: &Settings,
    certs: &std::path::Path,
    link: &LinkRun<'_>,
) -> Run {
    let mut peers = vec![UdpPeer::Direct];
    peers.extend(opts.protect.iter().map(|p| UdpPeer::Ferry(*p)));
    let mut run = Run {
        label,
        loss,
        kind: RunKind::Udp,
        peers: Vec::new(),
        note: None,
    };
    for peer in peers {
        if let Some(net) = link.net {
            net.settle(Duration::from_millis(300), Duration::from_secs(20))
                .await;
        }
        let outcome = match measure(peer, opts, settings, certs, link).await {
            Ok(f) => Outcome::Measured(f),
            Err(e) => {
                progress(&format!("{}: failed: {e}", peer.name()));
                Outcome::Failed(e)
            }
        };
        run.peers.push((peer.name(), outcome));
    }
    run
}

/// One peer: a backend, the tunnel if any, then the one-way flow, the new flows, and on
/// loopback the echo.
async fn measure(
    peer: UdpPeer,
    opts: &Options,
    settings: &Settings,
    certs: &std::path::Path,
    link: &LinkRun<'_>,
) -> Result<Figures, String> {
    let sites = &link.sites;
    let port = sites.port();
    let backend = Backend::start(&sites.server, sites.backend_bind(port))?;
    let mut tunnel: Option<Tunnel> = None;
    let target = match peer {
        UdpPeer::Direct => SocketAddr::new(sites.server_ip, port),
        UdpPeer::Ferry(protect) => {
            let t = peers::start_udp_ferry(sites, port, protect.flag(), settings, certs)?;
            tunnel.insert(t).entry
        }
    };
    let mut f = Figures::default();
    f.notes.push(match &tunnel {
        Some(t) => t.describe.clone(),
        None => "direct".into(),
    });
    progress(&format!("{}: one-way flow", peer.name()));
    let flow = one_way(&sites.client, target, &backend, opts, link.net, &mut tunnel).await?;
    flow.report(&mut f, opts);
    progress(&format!("{}: new flows", peer.name()));
    let firsts = new_flows(&sites.client, target, &backend, opts).await?;
    f.put(
        "new flows: first datagram delivered %",
        100.0 * firsts.firsts.len() as f64 / NEW_FLOWS as f64,
    );
    if link.net.is_none() {
        progress(&format!("{}: echo", peer.name()));
        let e = echo(&sites.client, target, opts, &mut tunnel).await?;
        f.put("echo, datagrams/s each way", e.per_second);
        f.put("echo, windows lost", e.lost_windows as f64);
    }
    if let Some(t) = &mut tunnel {
        t.check_running()?;
    }
    for a in [&flow.arrivals, &firsts] {
        if peer != UdpPeer::Direct && a.duplicates > 0 {
            return Err(format!(
                "{} duplicate datagrams delivered: Ferry must deliver each at most once",
                a.duplicates
            ));
        }
        if a.malformed > 0 {
            return Err(format!("{} datagrams arrived altered", a.malformed));
        }
    }
    Ok(f)
}

/// The datagram of `tag` with number `seq`, sent at `sent` after `epoch`, `size` bytes long;
/// the rest is a pattern of `seq` so an altered datagram is caught.
fn datagram(tag: Tag, seq: u64, sent: Duration, size: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(size);
    d.push(tag as u8);
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&(sent.as_nanos() as u64).to_be_bytes());
    d.extend((HEADER_BYTES..size).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
    d
}

/// A datagram's tag, number and send time, if it is whole and unaltered.
fn parse(d: &[u8], size: usize) -> Option<(u8, u64, Duration)> {
    if d.len() != size || d.len() < HEADER_BYTES {
        return None;
    }
    let seq = u64::from_be_bytes(d[1..9].try_into().ok()?);
    let sent = Duration::from_nanos(u64::from_be_bytes(d[9..17].try_into().ok()?));
    let intact = d[HEADER_BYTES..].iter().enumerate().all(|(j, b)| {
        *b == (seq as usize)
            .wrapping_mul(31)
            .wrapping_add(j + HEADER_BYTES) as u8
    });
    intact.then_some((d[0], seq, sent))
}

/// What the backend saw of the one-way flow.
#[derive(Debug, Default)]
struct Arrivals {
    /// One-way delay of each datagram's first arrival, by number.
    first: HashMap<u64, Duration>,
    duplicates: u64,
    malformed: u64,
    probes: u64,
    /// New flows whose datagram arrived, by number.
    firsts: HashSet<u64>,
}

/// The server side's socket: records the one-way flow, echoes the echo client. Stops when
/// dropped.
struct Backend {
    arrivals: Arc<Mutex<Arrivals>>,
    /// Notified at each probe.
    probed: Arc<Notify>,
    /// The one-way flow's datagrams' size, so altered ones are told apart (0: not started).
    size: Arc<std::sync::atomic::AtomicUsize>,
    /// Send times are durations since this instant.
    epoch: Instant,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    fn start(place: &Place, addr: SocketAddr) -> Result<Backend, String> {
        let socket = place
            .udp(addr)
            .map_err(|e| format!("cannot bind the UDP backend at {addr}: {e}"))?;
        let arrivals = Arc::new(Mutex::new(Arrivals::default()));
        let probed = Arc::new(Notify::new());
        let size = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let epoch = Instant::now();
        let task = tokio::spawn(serve(
            socket,
            arrivals.clone(),
            probed.clone(),
            size.clone(),
            epoch,
        ));
        Ok(Backend {
            arrivals,
            probed,
            size,
            epoch,
            task,
        })
    }

    fn take(&self) -> Arrivals {
        std::mem::take(&mut *lock(&self.arrivals))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(
    socket: UdpSocket,
    arrivals: Arc<Mutex<Arrivals>>,
    probed: Arc<Notify>,
    size: Arc<std::sync::atomic::AtomicUsize>,
    epoch: Instant,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let arrived = epoch.elapsed();
        let d = &buf[..n];
        match d.first().copied() {
            Some(t) if t == Tag::Echo as u8 => {
                let _ = socket.send_to(d, from).await;
            }
            Some(t) if t == Tag::Probe as u8 => {
                lock(&arrivals).probes += 1;
                probed.notify_one();
            }
            _ => {
                let expected = size.load(std::sync::atomic::Ordering::Relaxed);
                let mut a = lock(&arrivals);
                match parse(d, expected) {
                    Some((t, seq, sent)) if t == Tag::Data as u8 => match a.first.entry(seq) {
                        Entry::Occupied(_) => a.duplicates += 1,
                        Entry::Vacant(v) => {
                            v.insert(arrived.saturating_sub(sent));
                        }
                    },
                    Some((t, seq, _)) if t == Tag::First as u8 => {
                        if !a.firsts.insert(seq) {
                            a.duplicates += 1;
                        }
                    }
                    _ => a.malformed += 1,
                }
            }
        }
    }
}

/// A socket on the client side, connected to `target`.
async fn client_socket(place: &Place, target: SocketAddr) -> Result<UdpSocket, String> {
    let any = SocketAddr::from(([0, 0, 0, 0], 0));
    let socket = place
        .udp(any)
        .map_err(|e| format!("cannot bind a UDP client: {e}"))?;
    socket
        .connect(target)
        .await
        .map_err(|e| format!("cannot aim a UDP client at {target}: {e}"))?;
    Ok(socket)
}

/// Sends probes from `socket` every 50 ms until `arrived` says one came through.
async fn open_flow(
    socket: &UdpSocket,
    probe: &[u8],
    arrived: impl std::future::Future<Output = ()>,
    tunnel: &mut Option<Tunnel>,
) -> Result<(), String> {
    tokio::pin!(arrived);
    let deadline = Instant::now() + OPEN_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(t) = tunnel {
            t.check_running()?;
        }
        let _ = socket.send(probe).await;
        if tokio::time::timeout(Duration::from_millis(50), &mut arrived)
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(format!(
        "no datagram came through in {}s",
        OPEN_TIMEOUT.as_secs()
    ))
}

/// Packets and bytes offered to the link.
#[derive(Debug, Clone, Copy)]
struct Wire {
    packets: u64,
    bytes: u64,
}

impl Wire {
    fn now(net: &NetLink) -> Wire {
        let t = net.traffic();
        Wire {
            packets: t.up.offered + t.down.offered,
            bytes: t.bytes_offered,
        }
    }

    fn since(net: &NetLink, before: Wire) -> Wire {
        let now = Wire::now(net);
        Wire {
            packets: now.packets - before.packets,
            bytes: now.bytes - before.bytes,
        }
    }
}

/// What the one-way flow measured.
struct Flow {
    sent: u64,
    arrivals: Arrivals,
    /// What crossed the link over the run, both ways (on an impaired link).
    wire: Option<Wire>,
}

impl Flow {
    fn report(&self, f: &mut Figures, opts: &Options) {
        let delivered = self.arrivals.first.len() as f64;
        f.put("delivered %", 100.0 * delivered / self.sent.max(1) as f64);
        let mut delays: Vec<Duration> = self.arrivals.first.values().copied().collect();
        f.put("one-way p50 ms", percentile_ms(&mut delays, 50.0));
        f.put("one-way p99 ms", percentile_ms(&mut delays, 99.0));
        f.put("one-way max ms", percentile_ms(&mut delays, 100.0));
        if let Some(wire) = self.wire {
            let payload = self.sent * opts.size as u64;
            f.put(
                "wire bytes / payload byte",
                wire.bytes as f64 / payload as f64,
            );
            f.put(
                "link packets / datagram",
                wire.packets as f64 / self.sent.max(1) as f64,
            );
        }
        f.put("duplicates delivered", self.arrivals.duplicates as f64);
        f.put("datagrams sent", self.sent as f64);
    }
}

/// The one-way flow from `place` to `target`, received by `backend`.
async fn one_way(
    place: &Place,
    target: SocketAddr,
    backend: &Backend,
    opts: &Options,
    net: Option<&NetLink>,
    tunnel: &mut Option<Tunnel>,
) -> Result<Flow, String> {
    let socket = client_socket(place, target).await?;
    let probe = datagram(Tag::Probe, 0, Duration::ZERO, opts.size);
    open_flow(&socket, &probe, backend.probed.notified(), tunnel).await?;
    // Probes still on their way land before the measured datagrams; forget them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    backend
        .size
        .store(opts.size, std::sync::atomic::Ordering::Relaxed);
    backend.take();
    let before = net.map(Wire::now);
    let t0 = tokio::time::Instant::now();
    let count = opts.datagrams();
    let mut sent = 0;
    for seq in 0..count {
        tokio::time::sleep_until(t0 + opts.interval.mul_f64(seq as f64)).await;
        let d = datagram(Tag::Data, seq, backend.epoch.elapsed(), opts.size);
        socket
            .send(&d)
            .await
            .map_err(|e| format!("datagram {seq}: send: {e}"))?;
        sent += 1;
    }
    tokio::time::sleep(DRAIN).await;
    let wire = net.zip(before).map(|(n, b)| Wire::since(n, b));
    Ok(Flow {
        sent,
        arrivals: backend.take(),
        wire,
    })
}

/// [`NEW_FLOWS`] new client sockets on `place` each send one datagram to `target`, a few
/// milliseconds apart; what `backend` received of them.
async fn new_flows(
    place: &Place,
    target: SocketAddr,
    backend: &Backend,
    opts: &Options,
) -> Result<Arrivals, String> {
    backend.take();
    // Kept open until the end, so no flow's address is reused by the next.
    let mut sockets = Vec::new();
    for k in 0..NEW_FLOWS {
        let socket = client_socket(place, target).await?;
        let d = datagram(Tag::First, k, backend.epoch.elapsed(), opts.size);
        socket
            .send(&d)
            .await
            .map_err(|e| format!("new flow {k}: send: {e}"))?;
        sockets.push(socket);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(DRAIN).await;
    Ok(backend.take())
}

/// What the echo run measured.
struct Echo {
    per_second: f64,
    /// Times nothing came back for [`ECHO_TIMEOUT`] and a fresh window was sent.
    lost_windows: u64,
}

/// Echoes with [`ECHO_WINDOW`] datagrams in flight from `place` to `target` for the run.
async fn echo(
    place: &Place,
    target: SocketAddr,
    opts: &Options,
    tunnel: &mut Option<Tunnel>,
) -> Result<Echo, String> {
    let socket = client_socket(place, target).await?;
    let size = opts.size.max(HEADER_BYTES);
    let mut buf = vec![0u8; 65_536];
    let probe = datagram(Tag::Echo, u64::MAX, Duration::ZERO, size);
    let answered = async {
        let _ = socket.recv(&mut buf).await;
    };
    open_flow(&socket, &probe, answered, tunnel).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Drain the probes' echoes.
    while socket.try_recv(&mut buf).is_ok() {}
    let t0 = Instant::now();
    let deadline = t0 + opts.seconds;
    let mut seqs = 0u64..;
    let mut echoed = 0u64;
    let mut lost_windows = 0u64;
    let mut in_flight = 0;
    while Instant::now() < deadline {
        // A send that fails is a datagram lost: the window's timeout sends it again.
        while in_flight < ECHO_WINDOW {
            let seq = seqs.next().unwrap_or_default();
            let _ = socket
                .send(&datagram(Tag::Echo, seq, Duration::ZERO, size))
                .await;
            in_flight += 1;
        }
        match tokio::time::timeout(ECHO_TIMEOUT, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if parse(&buf[..n], size).is_none() {
                    return Err("an echo arrived altered".into());
                }
                echoed += 1;
                in_flight -= 1;
            }
            Ok(Err(e)) => return Err(format!("echo: receive: {e}")),
            // What is still in flight is lost: send a fresh window.
            Err(_) => {
                lost_windows += 1;
                in_flight = 0;
            }
        }
    }
    Ok(Echo {
        per_second: echoed as f64 / t0.elapsed().as_secs_f64(),
        lost_windows,
    })
}

/// The UDP runs as one table: a row per link and peer.
pub fn print(runs: &[Run], opts: &Options) {
    let udp: Vec<&Run> = runs.iter().filter(|r| r.kind == RunKind::Udp).collect();
    if udp.is_empty() {
        return;
    }
    println!(
        "\nUDP one-way flow: {} B every {} ms for {} s",
        opts.size,
        opts.interval.as_secs_f64() * 1e3,
        opts.seconds.as_secs_f64()
    );
    println!(
        "{:<22} {:<11} {:>11} {:>8} {:>8} {:>8} {:>10} {:>9} {:>5} {:>7}",
        "link",
        "peer",
        "delivered %",
        "p50 ms",
        "p99 ms",
        "max ms",
        "wire B/B",
        "pkts/dgm",
        "dups",
        "1st %"
    );
    let cell = |f: &Figures, k: &str, decimals: usize| {
        f.get(k)
            .map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
    };
    for run in &udp {
        for (peer, outcome) in &run.peers {
            let Outcome::Measured(f) = outcome else {
                let what = match outcome {
                    Outcome::Failed(e) => format!("error: {e}"),
                    _ => "skipped".into(),
                };
                println!("{:<22} {peer:<11} {what}", run.label);
                continue;
            };
            println!(
                "{:<22} {peer:<11} {:>11} {:>8} {:>8} {:>8} {:>10} {:>9} {:>5} {:>7}",
                run.label,
                cell(f, "delivered %", 2),
                cell(f, "one-way p50 ms", 2),
                cell(f, "one-way p99 ms", 2),
                cell(f, "one-way max ms", 2),
                cell(f, "wire bytes / payload byte", 3),
                cell(f, "link packets / datagram", 2),
                cell(f, "duplicates delivered", 0),
                cell(f, "new flows: first datagram delivered %", 0),
            );
        }
        if let Some(note) = &run.note {
            println!("{:<22} {note}", "");
        }
    }
    println!(
        "wire B/B: bytes both ways on the link (IP and UDP headers, acknowledgements, copies) per \
         payload byte; pkts/dgm: packets both ways per datagram sent; 1st %: new flows whose only \
         datagram arrived"
    );
    print_echo(&udp);
}

/// The loopback echo rates, with each peer's ratio to plain UDP's.
fn print_echo(runs: &[&Run]) {
    const KEY: &str = "echo, datagrams/s each way";
    for run in runs {
        let base = run.figures("udp").and_then(|f| f.get(KEY));
        let rows: Vec<(&str, f64)> = run
            .peers
            .iter()
            .filter_map(|(p, _)| Some((*p, run.figures(p)?.get(KEY)?)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        println!(
            "\nUDP echo on {}, {ECHO_WINDOW} datagrams in flight",
            run.label
        );
        println!("{:<11} {:>16} {:>9}", "peer", "datagrams/s", "vs udp");
        for (peer, rate) in rows {
            let ratio = base.map_or("-".to_owned(), |b| format!("{:.3}x", rate / b));
            println!("{peer:<11} {rate:>16.0} {ratio:>9}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_round_trip_and_alterations_are_caught() {
        let d = datagram(Tag::Data, 77, Duration::from_micros(1234), 200);
        assert_eq!(d.len(), 200);
        assert_eq!(
            parse(&d, 200),
            Some((Tag::Data as u8, 77, Duration::from_micros(1234)))
        );
        let mut altered = d.clone();
        altered[150] ^= 1;
        assert_eq!(parse(&altered, 200), None);
        assert_eq!(parse(&d[..199], 200), None, "truncated");
        assert_eq!(parse(&d, 199), None, "not the flow's size");
    }

    #[test]
    fn the_flow_sends_for_its_duration() {
        let opts = Options {
            seconds: Duration::from_secs(4),
            size: 200,
            interval: Duration::from_millis(5),
            protect: vec![],
        };
        assert_eq!(opts.datagrams(), 800);
    }
}
