//! The impaired link: two network namespaces joined through two TUN devices and a userspace
//! relay, so that direct TCP, kcptun and Ferry cross the very same link.
//!
//! This kernel has no netem qdisc, so the impairment happens in this process: each namespace
//! routes `10.99.0.0/24` into its TUN device, and one relay thread per direction reads the IP
//! packets one side sends, puts them through a [`ferry_protocol::sim::Link`] (the same seeded
//! model of loss, bursts, bottleneck, delay, jitter, reordering and duplication the protocol's
//! simulator uses, here driven by the real clock) and writes them into the other side's device
//! when they are due. The bottleneck counts whole IP packets, so every peer pays for its own
//! headers and acknowledgements.
//!
//! Layout: client namespace `10.99.0.1` (the load generator, ferry-agent, kcptun-client), server
//! namespace `10.99.0.2` (the echo backend, ferry-gateway, kcptun-server). Dropping the
//! [`NetLink`] stops the relays; the namespaces and their devices go with their last process.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_protocol::sim::{Link, LinkConfig, LinkStats};

use crate::netns::{create_tun, Netns, Place};

/// The client namespace's address on the link.
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1));
/// The server namespace's address on the link.
pub const SERVER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2));
const DEVICE: &str = "ferry0";

/// A link's impairments (the same both ways) and the seed of its randomness.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The model of each direction.
    pub config: LinkConfig,
    /// Seed of the client-to-server direction (the other uses `seed + 1`).
    pub seed: u64,
}

impl Profile {
    /// Sets the random loss probability (0..1).
    pub fn with_loss(mut self, loss: f64) -> Self {
        self.config.loss = loss;
        self
    }

    /// The link rate in bits per second, if limited.
    pub fn rate_bps(&self) -> Option<u64> {
        self.config.rate_bps
    }

    /// A short description, e.g. `20ms 50Mbit/s loss 5%`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let mut parts = vec![format!("{}ms", c.delay.as_millis())];
        if let Some(rate) = c.rate_bps {
            parts.push(format!("{}Mbit/s", rate as f64 / 1e6));
        }
        parts.push(format!("loss {}%", percent(c.loss)));
        if c.loss_burst > 1.0 {
            parts.push(format!("bursts of {}", c.loss_burst));
        }
        if !c.jitter.is_zero() {
            parts.push(format!("jitter {}ms", c.jitter.as_millis()));
        }
        if c.reorder > 0.0 {
            parts.push(format!("reorder {}%", percent(c.reorder)));
        }
        if c.duplicate > 0.0 {
            parts.push(format!("dup {}%", percent(c.duplicate)));
        }
        parts.join(" ")
    }
}

fn percent(p: f64) -> String {
    let v = p * 100.0;
    if v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    let (num, unit) = v
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((v, "ms"), |i| v.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{v}` is not a duration (e.g. 20ms, 1.5s)"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => return Err(format!("`{v}`: unit must be us, ms or s")),
    };
    if !(0.0..=3600.0).contains(&secs) {
        return Err(format!("`{v}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_probability(v: &str) -> Result<f64, String> {
    let (num, scale) = match v.strip_suffix('%') {
        Some(n) => (n, 100.0),
        None => (v, 1.0),
    };
    let p = num
        .parse::<f64>()
        .map_err(|_| format!("`{v}` is not a probability (e.g. 5% or 0.05)"))?
        / scale;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("`{v}` is not between 0 and 100%"))
    }
}

fn parse_rate(v: &str) -> Result<u64, String> {
    let lower = v.to_ascii_lowercase();
    let lower = lower.trim_end_matches("/s").trim_end_matches("ps");
    let (num, mult) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(suffix, m)| lower.strip_suffix(suffix).map(|n| (n, *m)))
        .ok_or_else(|| format!("`{v}`: a rate needs a unit (e.g. 50mbit, 1gbit)"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{v}` is not a rate (e.g. 50mbit)"))?;
    if n > 0.0 && n * mult <= 1e12 {
        Ok((n * mult) as u64)
    } else {
        Err(format!("`{v}` is out of range"))
    }
}

impl FromStr for Profile {
    type Err = String;

    /// `key=value` pairs, comma-separated: `delay` (one way, e.g. 20ms), `jitter`, `loss`
    /// (e.g. 5%), `burst` (mean loss burst in packets; 1 = independent), `reorder`,
    /// `reorder-delay`, `dup`, `rate` (e.g. 50mbit), `queue` (bottleneck buffer as time at the
    /// rate, default 50ms), `seed`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut config = LinkConfig::default();
        let mut seed = 1;
        let mut queue = Duration::from_millis(50);
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}`: expected key=value"))?;
            match key {
                "delay" => config.delay = parse_duration(value)?,
                "jitter" => config.jitter = parse_duration(value)?,
                "loss" => config.loss = parse_probability(value)?,
                "burst" => {
                    config.loss_burst = value
                        .parse::<f64>()
                        .ok()
                        .filter(|b| (1.0..=1000.0).contains(b))
                        .ok_or_else(|| format!("burst `{value}`: a mean length of 1 to 1000"))?
                }
                "reorder" => config.reorder = parse_probability(value)?,
                "reorder-delay" => config.reorder_delay = parse_duration(value)?,
                "dup" => config.duplicate = parse_probability(value)?,
                "rate" => config.rate_bps = Some(parse_rate(value)?),
                "queue" => queue = parse_duration(value)?,
                "seed" => {
                    seed = value
                        .parse()
                        .map_err(|_| format!("seed `{value}` is not a number"))?
                }
                _ => {
                    return Err(format!(
                        "unknown link setting `{key}` (delay, jitter, loss, burst, reorder, \
                         reorder-delay, dup, rate, queue, seed)"
                    ))
                }
            }
        }
        if let Some(rate) = config.rate_bps {
            // At least a few full-size packets, whatever the rate.
            config.queue_bytes = ((rate as f64 / 8.0 * queue.as_secs_f64()) as usize).max(8 * 1500);
        }
        Ok(Profile { config, seed })
    }
}

/// What each direction of the link did so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Traffic {
    /// Client to server.
    pub up: LinkStats,
    /// Server to client.
    pub down: LinkStats,
    /// Bytes of the IP packets both sides put on the link, lost ones included: what a sender
    /// pays for its payload, headers, acknowledgements and copies, whatever the loss rate.
    pub bytes_offered: u64,
}

/// The two namespaces and the relays between them; dropping it stops the relays.
pub struct NetLink {
    /// The client side.
    pub client: Place,
    /// The server side.
    pub server: Place,
    stop: Arc<AtomicBool>,
    relays: Vec<JoinHandle<()>>,
    stats: Arc<[Mutex<LinkStats>; 2]>,
    bytes_offered: Arc<AtomicU64>,
}

impl NetLink {
    /// Builds the namespaces, devices and relays (needs root: CAP_SYS_ADMIN and CAP_NET_ADMIN);
    /// TCP in both namespaces uses congestion control `tcp_cc`.
    pub fn up(profile: &Profile, tcp_cc: &str) -> Result<NetLink, String> {
        let why = |e: std::io::Error| {
            format!("cannot build the impaired link ({e}); it needs root and /dev/net/tun")
        };
        let mut client_ns = Netns::create().map_err(why)?;
        let mut server_ns = Netns::create().map_err(why)?;
        for ns in [&mut client_ns, &mut server_ns] {
            ns.set_tcp_congestion(tcp_cc)
                .map_err(|e| format!("--tcp-cc: {e}"))?;
        }
        let client_tun = Arc::new(create_tun(&client_ns, DEVICE).map_err(why)?);
        let server_tun = Arc::new(create_tun(&server_ns, DEVICE).map_err(why)?);
        let client = Place::Netns(Arc::new(client_ns));
        let server = Place::Netns(Arc::new(server_ns));
        for (place, ip) in [(&client, CLIENT_IP), (&server, SERVER_IP)] {
            place.ip(&["link", "set", "lo", "up"])?;
            place.ip(&["addr", "add", &format!("{ip}/24"), "dev", DEVICE])?;
            // No IPv6 link-local address, so no autoconfiguration chatter on the link.
            place.ip(&["link", "set", "dev", DEVICE, "addrgenmode", "none"])?;
            place.ip(&["link", "set", DEVICE, "up"])?;
        }
        for tun in [&client_tun, &server_tun] {
            set_nonblocking(tun).map_err(why)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new([
            Mutex::new(LinkStats::default()),
            Mutex::new(LinkStats::default()),
        ]);
        let bytes_offered = Arc::new(AtomicU64::new(0));
        let now = Instant::now();
        let mut relays = Vec::new();
        for (dir, (from, to)) in [(&client_tun, &server_tun), (&server_tun, &client_tun)]
            .into_iter()
            .enumerate()
        {
            let link = Link::new(profile.config.clone(), profile.seed + dir as u64, now);
            let (from, to, stop, stats) = (from.clone(), to.clone(), stop.clone(), stats.clone());
            let offered = bytes_offered.clone();
            let handle = std::thread::Builder::new()
                .name(format!("link-relay-{dir}"))
                .spawn(move || relay(&from, &to, link, &stop, &stats[dir], &offered))
                .map_err(|e| format!("cannot start the link relay: {e}"))?;
            relays.push(handle);
        }
        Ok(NetLink {
            client,
            server,
            stop,
            relays,
            stats,
            bytes_offered,
        })
    }

    /// Waits until no packet has entered the link for `quiet` (at most `limit`), so one
    /// scenario's leftovers (a closed bulk transfer's queue) do not land in the next one.
    pub async fn settle(&self, quiet: Duration, limit: Duration) {
        let deadline = Instant::now() + limit;
        let offered = |t: Traffic| t.up.offered + t.down.offered;
        let mut last = offered(self.traffic());
        let mut since = Instant::now();
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = offered(self.traffic());
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= quiet {
                return;
            }
        }
    }

    /// Counters of both directions.
    pub fn traffic(&self) -> Traffic {
        let get = |i: usize| *self.stats[i].lock().unwrap_or_else(|e| e.into_inner());
        Traffic {
            up: get(0),
            down: get(1),
            bytes_offered: self.bytes_offered.load(Ordering::Relaxed),
        }
    }
}

impl Drop for NetLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for r in self.relays.drain(..) {
            let _ = r.join();
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; results checked.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passes (at microsecond precision).
fn wait_readable(fd: &OwnedFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask change.
    unsafe {
        libc::ppoll(&mut pfd, 1, &ts, std::ptr::null());
    }
}

/// One direction: packets read from `from` go through `link` and are written to `to` when due.
fn relay(
    from: &OwnedFd,
    to: &OwnedFd,
    mut link: Link<()>,
    stop: &AtomicBool,
    stats: &Mutex<LinkStats>,
    bytes_offered: &AtomicU64,
) {
    let mut buf = vec![0u8; 65536];
    const IDLE: Duration = Duration::from_millis(20);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(((), packet)) = link.deliver(now) {
            // SAFETY: writes from a live buffer to a descriptor we hold. A failed write is
            // a packet lost by the receiving kernel, as on a real link.
            unsafe {
                libc::write(to.as_raw_fd(), packet.as_ptr().cast(), packet.len());
            }
        }
        let wait = link
            .next_delivery()
            .map_or(IDLE, |t| t.saturating_duration_since(now).min(IDLE));
        if !wait.is_zero() {
            wait_readable(from, wait);
        }
        loop {
            // SAFETY: reads into a live buffer of the given length.
            let n = unsafe { libc::read(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            bytes_offered.fetch_add(n as u64, Ordering::Relaxed);
            link.send(Instant::now(), (), buf[..n as usize].to_vec());
        }
        *stats.lock().unwrap_or_else(|e| e.into_inner()) = link.stats();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_delays_and_drops_datagrams_between_the_namespaces() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/net/tun").exists() {
            return ferry_test_support::skip(
                "root",
                "the impaired link needs root and /dev/net/tun",
            );
        }
        let profile: Profile = "delay=15ms,loss=20%,seed=5".parse().unwrap();
        let link = NetLink::up(&profile, "cubic").unwrap();
        let Place::Netns(server) = &link.server else {
            panic!("namespaces expected")
        };
        let Place::Netns(client) = &link.client else {
            panic!("namespaces expected")
        };
        let rx = server
            .run(|| std::net::UdpSocket::bind((SERVER_IP, 9000)))
            .unwrap();
        let tx = client
            .run(|| std::net::UdpSocket::bind((CLIENT_IP, 0)))
            .unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let t0 = Instant::now();
        // Receive while sending, so the socket's buffer never overflows.
        let receiver = std::thread::spawn(move || {
            let (mut received, mut first) = (0u64, None);
            let mut buf = [0u8; 16];
            while let Ok(n) = rx.recv(&mut buf) {
                assert_eq!(n, 4);
                first.get_or_insert(t0.elapsed());
                received += 1;
            }
            (received, first)
        });
        for i in 0..400u32 {
            tx.send_to(&i.to_be_bytes(), (SERVER_IP, 9000)).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        let (received, first): (u64, Option<Duration>) = receiver.join().unwrap();
        let up = link.traffic().up;
        // Only our datagrams crossed (no IPv6 autoconfiguration chatter), and each one either
        // arrived or was counted lost.
        assert_eq!(up.offered, 400, "{up:?}");
        assert_eq!(received + up.dropped_loss, 400, "{up:?}");
        // Every packet offered is counted whole: 20 bytes of IPv4, 8 of UDP, 4 of payload.
        assert_eq!(link.traffic().bytes_offered, 400 * (20 + 8 + 4));
        assert!((50..=110).contains(&up.dropped_loss), "20% of 400: {up:?}");
        assert!(first.unwrap() >= Duration::from_millis(15), "{first:?}");
    }

    #[test]
    fn profiles_parse_with_units_and_reject_nonsense() {
        let p: Profile = "delay=20ms,loss=5%,rate=50mbit,burst=3,seed=9"
            .parse()
            .unwrap();
        assert_eq!(p.config.delay, Duration::from_millis(20));
        assert!((p.config.loss - 0.05).abs() < 1e-12);
        assert_eq!(p.config.rate_bps, Some(50_000_000));
        assert_eq!(p.config.queue_bytes, 312_500, "50 ms at 50 Mbit/s");
        assert_eq!(p.seed, 9);
        assert_eq!(p.describe(), "20ms 50Mbit/s loss 5% bursts of 3");
        assert_eq!(parse_rate("1Gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in [
            "delay=20parsecs",
            "loss=150%",
            "rate=50",
            "rate=-1mbit",
            "burst=0.5",
            "colour=red",
            "delay",
        ] {
            assert!(bad.parse::<Profile>().is_err(), "{bad} accepted");
        }
    }
}
