//! `ferry-demo`: a working local tunnel pair in one command, for a first look at Ferry.
//!
//! It makes a development CA and certificates (as `ferry-certs` does) in a temporary directory,
//! starts an echo backend in this process, then the real `ferry-gateway` and `ferry-agent`
//! binaries (found next to this one) with TLS on, checks the whole path with a 16 MiB echo,
//! prints what to try, and keeps the pair running until Ctrl-C. `ferry-demo --send TEXT`, from
//! another terminal, is the client to try it with (a fresh Debian has no `nc`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use clap::Parser;
use ferry_tunnel::process::MONITOR_PORT_OFFSET;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs a local Ferry pair (agent and gateway) in front of an echo backend.
#[derive(Debug, Parser)]
#[command(name = "ferry-demo", version, about)]
struct Args {
    /// Where clients connect (the agent's listener).
    #[arg(long, default_value_t = default_client())]
    client: SocketAddr,
    /// The gateway's UDP address.
    #[arg(long, default_value = "127.0.0.1:9000")]
    gateway: SocketAddr,
    /// Check the path, print the result and exit instead of running until Ctrl-C.
    #[arg(long)]
    check_only: bool,
    /// Start nothing: send TEXT and a newline through the agent of a pair already running (a
    /// `ferry-demo` in another terminal, at `--client`), print what comes back, and exit. What
    /// `nc` would do, for machines without it.
    #[arg(long, value_name = "TEXT")]
    send: Option<String>,
}

/// Where the demo's agent listens unless told otherwise.
fn default_client() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 6789))
}

/// Child processes, stopped with SIGTERM (then killed) when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            #[cfg(unix)]
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    ferry_test_support::sibling(name, "build everything first with `cargo build --release`")
}

async fn echo_backend() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// Sends `len` bytes through the agent and checks the echo; returns MiB/s each way.
async fn check(client: SocketAddr, len: usize) -> Result<f64, String> {
    let s = TcpStream::connect(client)
        .await
        .map_err(|e| format!("connect {client}: {e}"))?;
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await?;
        w.shutdown().await
    });
    let mut back = Vec::with_capacity(len);
    r.read_to_end(&mut back)
        .await
        .map_err(|e| format!("echo failed: {e}"))?;
    writer
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("send failed: {e}"))?;
    if back != expected {
        return Err(format!(
            "echo differs: {} of {len} bytes came back",
            back.len()
        ));
    }
    Ok(len as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64())
}

/// Sends `text` and a newline to `client`, half-closes, and returns what came back.
async fn send_line(client: SocketAddr, text: &str) -> Result<String, String> {
    const START_FIRST: &str =
        "start the pair first: `target/release/ferry-demo` in another terminal";
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(client))
        .await
        .map_err(|_| format!("connecting to {client} timed out; {START_FIRST}"))?
        .map_err(|e| format!("nothing answers at {client} ({e}); {START_FIRST}"))?;
    s.write_all(format!("{text}\n").as_bytes())
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    s.shutdown()
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .map_err(|_| format!("no answer from {client} within 10 s"))?
        .map_err(|e| format!("the tunnel ended the connection: {e}"))?;
    Ok(String::from_utf8_lossy(&back).into_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(text) = &args.send {
        return match send_line(args.client, text).await {
            Ok(back) => {
                print!("{back}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry-demo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let certs = TempDir(std::env::temp_dir().join(format!("ferry-demo-{}", std::process::id())));
    ferry_certs::generate(&ferry_certs::Options::default())
        .and_then(|set| set.write(&certs.0, true))
        .map_err(|e| format!("cannot make development certificates: {e}"))?;
    let file = |name: &str| certs.0.join(name).display().to_string();
    let backend = echo_backend()
        .await
        .map_err(|e| format!("cannot start the echo backend: {e}"))?;
    let gateway = Command::new(sibling("ferry-gateway")?)
        .args([
            "--listen",
            &args.gateway.to_string(),
            "--backend",
            &format!("tcp://{backend}"),
            "--tls-cert",
            &file("gateway.pem"),
            "--tls-key",
            &file("gateway.key"),
        ])
        .spawn()
        .map_err(|e| format!("cannot start ferry-gateway: {e}"))?;
    let agent = Command::new(sibling("ferry-agent")?)
        .args([
            "--listen",
            &format!("tcp://{}", args.client),
            "--gateway",
            &args.gateway.to_string(),
            "--tls-ca",
            &file("ca.pem"),
        ])
        .spawn()
        .map_err(|e| format!("cannot start ferry-agent: {e}"))?;
    let mut children = Children(vec![gateway, agent]);

    // Wait for the whole path, noticing a child that failed to start (port in use...).
    let deadline = Instant::now() + Duration::from_secs(15);
    let rate = loop {
        for c in &mut children.0 {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "a Ferry process exited at start ({status}); see its message above"
                ));
            }
        }
        match check(args.client, 16 << 20).await {
            Ok(rate) => break rate,
            Err(e) if Instant::now() > deadline => {
                return Err(format!("the pair did not come up: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    println!();
    println!("Ferry pair running:");
    println!("  client -> ferry-agent tcp://{} -> UDP {} -> ferry-gateway -> echo backend tcp://{backend}", args.client, args.gateway);
    println!("  encrypted: TLS 1.3 with a development CA made for this run");
    println!(
        "  monitors: http://127.0.0.1:{}/ (gateway), http://127.0.0.1:{}/ (agent)",
        args.gateway.port().saturating_add(MONITOR_PORT_OFFSET),
        args.client.port().saturating_add(MONITOR_PORT_OFFSET)
    );
    println!("  self-check: 16 MiB echoed intact at {rate:.0} MiB/s each way");
    if args.check_only {
        return Ok(());
    }
    println!();
    let at = if args.client == default_client() {
        String::new()
    } else {
        format!(" --client {}", args.client)
    };
    println!("Try it:  target/release/ferry-demo{at} --send 'hello through ferry'");
    println!(
        "   or:   printf 'hello through ferry\\n' | nc -q1 {} {}",
        args.client.ip(),
        args.client.port()
    );
    println!("Ctrl-C stops both processes (they drain open connections first).");
    tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
    drop(children);
    Ok(())
}
