//! The tunnels under test, each between the client side and the in-process echo backend on
//! the server side: direct TCP (no tunnel), Ferry (the real `ferry-agent` and `ferry-gateway`),
//! kcptun (`kcptun-client`/`kcptun-server` from the Debian package, fast3 mode) when
//! installed, and on request a plain TCP relay (two nginx stream proxies, the floor that the
//! TCP legs alone cost). The client-side process runs where the load generator is, the server-side one
//! next to the backend: both on this host for loopback runs, or one in each namespace of an
//! impaired link, so the tunnel's own traffic is what crosses the link. Ferry also runs with a
//! `udp://` listener and backend for the `udp` scenario ([`start_udp_ferry`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::link::{NetLink, SERVER_IP};
use crate::netns::Place;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Where the two sides run and how the client side reaches the server side.
pub struct Sites {
    /// The load generator and the tunnel's client-side process.
    pub client: Place,
    /// The echo backend and the tunnel's server-side process.
    pub server: Place,
    /// The server side's address as seen from the client side.
    pub server_ip: IpAddr,
    /// Ports in the fresh namespaces of a link are all free: handed out in turn, never reused
    /// (so no TIME_WAIT leftovers). `None`: find free loopback ports on this host.
    next_port: Option<AtomicU16>,
}

impl Sites {
    /// Both sides on this host's loopback.
    pub fn host() -> Sites {
        Sites {
            client: Place::Host,
            server: Place::Host,
            server_ip: LOCALHOST,
            next_port: None,
        }
    }

    /// One side in each namespace of `link`.
    pub fn link(link: &NetLink) -> Sites {
        Sites {
            client: link.client.clone(),
            server: link.server.clone(),
            server_ip: SERVER_IP,
            next_port: Some(AtomicU16::new(20_000)),
        }
    }

    /// A port free on both sides.
    pub fn port(&self) -> u16 {
        match &self.next_port {
            Some(next) => next.fetch_add(1, Ordering::Relaxed),
            None => free_port(),
        }
    }

    /// The address the echo backend listens on: every address of the server namespace on a
    /// link (direct TCP reaches it across the link), loopback on this host.
    pub fn backend_bind(&self, port: u16) -> SocketAddr {
        match self.next_port {
            Some(_) => SocketAddr::from(([0, 0, 0, 0], port)),
            None => SocketAddr::new(LOCALHOST, port),
        }
    }
}

/// Which tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// The client talks to the backend directly: the baseline.
    Tcp,
    /// ferry-agent and ferry-gateway.
    Ferry,
    /// The same with forward error correction off (`--fec off`), to show what it buys.
    FerryFecOff,
    /// kcptun in fast3 mode.
    Kcptun,
    /// Two nginx stream proxies in a chain (client side, server side): a plain TCP tunnel with
    /// the same four socket legs as Ferry's and no protocol of its own, so the floor of what
    /// any tunnel that ends the client's TCP and opens the backend's costs on this machine.
    Relay,
}

impl Peer {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Tcp => "tcp",
            Peer::Ferry => "ferry",
            Peer::FerryFecOff => "ferry-fec-off",
            Peer::Kcptun => "kcptun",
            Peer::Relay => "relay",
        }
    }
}

/// How the tunnels are configured, so each peer runs with matching settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Encryption on (Ferry TLS, kcptun AES) or off.
    pub encrypt: bool,
    /// Ferry's `--compress` (kcptun compresses only with snappy; it runs with `--nocomp`
    /// unless this is not `none`).
    pub compress: String,
    /// Extra flags for both Ferry binaries.
    pub ferry_args: Vec<String>,
}

/// A running tunnel; its processes are stopped when dropped.
pub struct Tunnel {
    /// Where clients connect.
    pub entry: SocketAddr,
    /// The processes (client side first), for CPU and memory figures.
    children: Vec<Child>,
    /// What the settings amounted to, for the report.
    pub describe: String,
}

impl Tunnel {
    /// Process IDs of the tunnel (empty for direct TCP).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// Fails if a process of the tunnel has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("a tunnel process exited ({status})"));
            }
        }
        Ok(())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A loopback port for a child to bind, found by binding TCP and UDP on it.
fn free_port() -> u16 {
    loop {
        let Ok(tcp) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(port) = tcp.local_addr().map(|a| a.port()) else {
            continue;
        };
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    ferry_test_support::sibling(
        name,
        "build with `cargo build --release --features bench` first",
    )
}

fn spawn(place: &Place, program: &Path, args: &[String]) -> Result<Child, String> {
    place
        .command(program)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))
}

/// One nginx stream proxy in `place`, from `listen` to `next`, configured in `dir`: one process
/// (`master_process off`, so the drop's SIGKILL leaves no worker behind; Ferry too runs one
/// process at each end), TCP_NODELAY both ways (nginx's default), logging errors only.
fn nginx_relay(
    place: &Place,
    nginx: &ferry_test_support::nginx::Install,
    dir: &Path,
    listen: SocketAddr,
    next: SocketAddr,
) -> Result<Child, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let load = nginx
        .module
        .as_ref()
        .map(|m| format!("load_module {};\n", m.display()))
        .unwrap_or_default();
    let conf = dir.join("nginx.conf");
    let text = format!(
        "{load}master_process off;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log error;
events {{
    worker_connections 20000;
}}
stream {{
    server {{
        listen {listen} backlog=4096;
        proxy_pass {next};
        proxy_timeout 1h;
    }}
}}
",
        dir = dir.display()
    );
    std::fs::write(&conf, text).map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
    let errors = dir.join("error.log").display().to_string();
    let prefix = format!("{}/", dir.display());
    let args: Vec<String> = [
        "-c",
        &conf.display().to_string(),
        "-p",
        &prefix,
        "-e",
        &errors,
    ]
    .map(String::from)
    .to_vec();
    spawn(place, &nginx.bin, &args)
}

/// Waits until a TCP connection to `entry` from `place` works and answers a probe: 64 bytes
/// (a whole request for the `pipelined` scenario's backend, which answers nothing shorter),
/// of whose answer the first byte is enough.
async fn wait_ready(
    place: &Place,
    entry: SocketAddr,
    children: &mut [Child],
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("a tunnel process exited at start ({status})"));
            }
        }
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), place.connect(entry)).await
        {
            let mut b = [0u8; 1];
            let probe = async {
                s.write_all(&[b'?'; crate::rr::REQUEST_BYTES]).await?;
                s.read_exact(&mut b).await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("the tunnel at {entry} never carried a byte"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a Ferry pair carries: the agent's listener, the gateway's backend (both as URLs), and
/// more flags for the agent.
struct FerryEnds {
    listen: String,
    backend: String,
    agent_args: Vec<String>,
}

/// Starts `ferry-gateway` on the server side and `ferry-agent` on the client side, joined across
/// the link, with `settings`; `entry` is where the agent listens. Not waited for.
fn ferry(
    sites: &Sites,
    ends: FerryEnds,
    entry: SocketAddr,
    settings: &Settings,
    certs: &Path,
) -> Result<Tunnel, String> {
    let udp = SocketAddr::new(sites.server_ip, sites.port());
    let file = |n: &str| certs.join(n).display().to_string();
    // No monitor: its default port (the listen port + 1000) is not known to be free.
    let mut common = vec![
        "--compress".to_owned(),
        settings.compress.clone(),
        "--monitor".to_owned(),
        "off".to_owned(),
    ];
    common.extend(settings.ferry_args.iter().cloned());
    let (mut gw_tls, mut agent_tls) = (Vec::new(), Vec::new());
    if settings.encrypt {
        gw_tls.extend(["--tls-cert".into(), file("gateway.pem")]);
        gw_tls.extend(["--tls-key".into(), file("gateway.key")]);
        agent_tls.extend(["--tls-ca".into(), file("ca.pem")]);
    } else {
        gw_tls.extend(["--crypto".into(), "none".into()]);
        agent_tls.extend(["--crypto".into(), "none".into()]);
    }
    let gateway = spawn(
        &sites.server,
        &sibling("ferry-gateway")?,
        &[
            vec![
                "--listen".into(),
                udp.to_string(),
                "--backend".into(),
                ends.backend,
                "--max-connections".into(),
                "100000".into(),
                "--max-streams".into(),
                "20000".into(),
            ],
            gw_tls,
            common.clone(),
        ]
        .concat(),
    )?;
    let agent = spawn(
        &sites.client,
        &sibling("ferry-agent")?,
        &[
            vec![
                "--listen".into(),
                ends.listen,
                "--gateway".into(),
                udp.to_string(),
                "--max-connections".into(),
                "100000".into(),
            ],
            ends.agent_args,
            agent_tls,
            common,
        ]
        .concat(),
    )?;
    let crypto = if settings.encrypt { "tls" } else { "none" };
    Ok(Tunnel {
        entry,
        children: vec![agent, gateway],
        describe: format!("crypto {crypto}, compress {}", settings.compress),
    })
}

/// Ferry carrying UDP: the agent's `udp://` listener on the client side's loopback, the
/// gateway's `udp://` backend at `backend_port` of the server side's, `--udp-protect
/// protect`. Not waited for: a UDP tunnel answers no probe of its own, so the caller sends
/// datagrams until one arrives.
pub fn start_udp_ferry(
    sites: &Sites,
    backend_port: u16,
    protect: &str,
    settings: &Settings,
    certs: &Path,
) -> Result<Tunnel, String> {
    let entry = SocketAddr::new(LOCALHOST, sites.port());
    let ends = FerryEnds {
        listen: format!("udp://{entry}"),
        backend: format!("udp://{}", SocketAddr::new(LOCALHOST, backend_port)),
        agent_args: vec!["--udp-protect".into(), protect.into()],
    };
    let mut tunnel = ferry(sites, ends, entry, settings, certs)?;
    tunnel
        .describe
        .push_str(&format!(", udp-protect {protect}"));
    Ok(tunnel)
}

/// Starts `peer` in front of the echo backend listening on `backend_port` of the server side.
/// `Ok(None)`: the peer is not installed (skipped).
pub async fn start(
    peer: Peer,
    sites: &Sites,
    backend_port: u16,
    settings: &Settings,
    certs: &Path,
) -> Result<Option<Tunnel>, String> {
    // The tunnel's server side reaches the backend on its own host or namespace.
    let backend = SocketAddr::new(LOCALHOST, backend_port);
    match peer {
        Peer::Tcp => Ok(Some(Tunnel {
            entry: SocketAddr::new(sites.server_ip, backend_port),
            children: Vec::new(),
            describe: "direct".into(),
        })),
        Peer::Ferry | Peer::FerryFecOff => {
            let entry = SocketAddr::new(LOCALHOST, sites.port());
            let ends = FerryEnds {
                listen: format!("tcp://{entry}"),
                backend: format!("tcp://{backend}"),
                agent_args: Vec::new(),
            };
            let mut settings = settings.clone();
            if peer == Peer::FerryFecOff {
                settings.ferry_args.push("--fec=off".into());
            }
            let mut tunnel = ferry(sites, ends, entry, &settings, certs)?;
            wait_ready(&sites.client, entry, &mut tunnel.children).await?;
            Ok(Some(tunnel))
        }
        Peer::Relay => {
            let Ok(nginx) = ferry_test_support::nginx::find() else {
                return Ok(None);
            };
            let hop = SocketAddr::new(sites.server_ip, sites.port());
            let entry = SocketAddr::new(LOCALHOST, sites.port());
            let dir = |side: &str| certs.join(format!("relay-{}-{side}", entry.port()));
            let server = nginx_relay(&sites.server, &nginx, &dir("server"), hop, backend)?;
            let client = nginx_relay(&sites.client, &nginx, &dir("client"), entry, hop)?;
            let mut children = vec![client, server];
            wait_ready(&sites.client, entry, &mut children).await?;
            Ok(Some(Tunnel {
                entry,
                children,
                describe: "two nginx stream proxies, one process each, plaintext".into(),
            }))
        }
        Peer::Kcptun => {
            let installed = Command::new("kcptun-client")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            if !installed {
                return Ok(None);
            }
            let udp = SocketAddr::new(sites.server_ip, sites.port());
            let local = SocketAddr::new(LOCALHOST, sites.port());
            let crypt = if settings.encrypt { "aes" } else { "none" };
            let mut flags: Vec<String> =
                ["--mode", "fast3", "--crypt", crypt, "--key", "ferry-bench"]
                    .map(String::from)
                    .to_vec();
            if settings.compress == "none" {
                flags.push("--nocomp".into());
            }
            flags.push("--quiet".into());
            let server = spawn(
                &sites.server,
                Path::new("kcptun-server"),
                &[
                    vec![
                        "-t".into(),
                        backend.to_string(),
                        "-l".into(),
                        udp.to_string(),
                    ],
                    flags.clone(),
                ]
                .concat(),
            )?;
            let client = spawn(
                &sites.client,
                Path::new("kcptun-client"),
                &[
                    vec!["-r".into(), udp.to_string(), "-l".into(), local.to_string()],
                    flags,
                ]
                .concat(),
            )?;
            let entry = local;
            let mut children = vec![client, server];
            wait_ready(&sites.client, entry, &mut children).await?;
            let comp = if settings.compress == "none" {
                "nocomp"
            } else {
                "snappy"
            };
            Ok(Some(Tunnel {
                entry,
                children,
                describe: format!("fast3, crypt {crypt}, {comp}"),
            }))
        }
    }
}
