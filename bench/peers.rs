//! The tunnels under test, each between a local client address and the in-process backend:
//! direct TCP (no tunnel), Ferry (the real `ferry-agent` and `ferry-gateway`), and kcptun
//! (`kcptun-client`/`kcptun-server` from the Debian package, fast3 mode) when installed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Which tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// The client talks to the backend directly: the baseline.
    Tcp,
    /// ferry-agent and ferry-gateway.
    Ferry,
    /// kcptun in fast3 mode.
    Kcptun,
}

impl Peer {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Peer::Tcp => "tcp",
            Peer::Ferry => "ferry",
            Peer::Kcptun => "kcptun",
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
    let me = std::env::current_exe().map_err(|e| format!("cannot locate ferry-bench: {e}"))?;
    let path = me.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build with `cargo build --release` first",
            path.display()
        ))
    }
}

fn spawn(program: &Path, args: &[String]) -> Result<Child, String> {
    Command::new(program)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))
}

/// Waits until a TCP connection to `entry` and a 1-byte echo through it work.
async fn wait_ready(entry: SocketAddr, children: &mut [Child]) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!("a tunnel process exited at start ({status})"));
            }
        }
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(entry)).await
        {
            let mut b = [0u8; 1];
            let probe = async {
                s.write_all(b"?").await?;
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

/// Starts `peer` in front of `backend`. `Ok(None)`: the peer is not installed (skipped).
pub async fn start(
    peer: Peer,
    backend: SocketAddr,
    settings: &Settings,
    certs: &Path,
) -> Result<Option<Tunnel>, String> {
    match peer {
        Peer::Tcp => Ok(Some(Tunnel {
            entry: backend,
            children: Vec::new(),
            describe: "direct".into(),
        })),
        Peer::Ferry => {
            let udp = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let entry = SocketAddr::from(([127, 0, 0, 1], free_port()));
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
                &sibling("ferry-gateway")?,
                &[
                    vec![
                        "--listen".into(),
                        udp.to_string(),
                        "--backend".into(),
                        format!("tcp://{backend}"),
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
                &sibling("ferry-agent")?,
                &[
                    vec![
                        "--listen".into(),
                        format!("tcp://{entry}"),
                        "--gateway".into(),
                        udp.to_string(),
                        "--max-connections".into(),
                        "100000".into(),
                    ],
                    agent_tls,
                    common,
                ]
                .concat(),
            )?;
            let mut children = vec![agent, gateway];
            wait_ready(entry, &mut children).await?;
            let crypto = if settings.encrypt { "tls" } else { "none" };
            Ok(Some(Tunnel {
                entry,
                children,
                describe: format!("crypto {crypto}, compress {}", settings.compress),
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
            let udp = free_port();
            let local = free_port();
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
                Path::new("kcptun-server"),
                &[
                    vec![
                        "-t".into(),
                        backend.to_string(),
                        "-l".into(),
                        format!("127.0.0.1:{udp}"),
                    ],
                    flags.clone(),
                ]
                .concat(),
            )?;
            let client = spawn(
                Path::new("kcptun-client"),
                &[
                    vec![
                        "-r".into(),
                        format!("127.0.0.1:{udp}"),
                        "-l".into(),
                        format!("127.0.0.1:{local}"),
                    ],
                    flags,
                ]
                .concat(),
            )?;
            let entry = SocketAddr::from(([127, 0, 0, 1], local));
            let mut children = vec![client, server];
            wait_ready(entry, &mut children).await?;
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
