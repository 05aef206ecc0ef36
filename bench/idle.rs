//! The `idle` scenario: what thousands of quiet client connections cost a tunnel.
//!
//! Many clients of a tunnel connect, exchange a little and then stay open doing nothing (pooled
//! keep-alive connections, push channels, idle sessions). Their cost is memory: N connections
//! are opened through the tunnel, each echoes one small message, and all stay quiet for
//! `--idle-seconds`; the resident memory (RSS) each tunnel process gained, divided by N, is the
//! cost of one idle connection on that side. Afterwards every connection must still echo, and a
//! fresh connection must still work.
//!
//! Thousands of connections need file descriptors and ports:
//! - the bench raises its own soft `RLIMIT_NOFILE` to the hard limit before it starts any
//!   tunnel process (children inherit the soft limit), see [`raise_fd_limit`];
//! - the clients here and the echo backend would each hold N sockets, so the backend runs in a
//!   process of its own (this binary, with the hidden `--echo-backend` flag): each process then
//!   holds at most N descriptors, and N can go up to about the hard limit;
//! - on loopback the clients connect from several source addresses (127.0.0.1 to 127.0.0.16),
//!   so no single address runs short of ephemeral ports; each binds its address with
//!   `IP_BIND_ADDRESS_NO_PORT`, leaving the port to `connect`. A port taken by `bind` is
//!   reserved for that socket alone, while one taken by `connect` is shared by connections
//!   going elsewhere: 19,000 clients bound without it left the tunnel's server side too few
//!   ports to reach the backend (both draw on the 28,232 of the ephemeral range), and it
//!   reset the connections it could not forward.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::netns::Place;
use crate::peers::{self, Peer, Settings, Sites};
use crate::procfs;
use crate::report::Figures;

/// Loopback source addresses the clients connect from (127.0.0.1 ..= 127.0.0.SOURCES).
const SOURCES: u8 = 16;
/// Connections being opened (or echoing) at once: enough to open thousands in seconds, few
/// enough not to overflow the tunnel's accept queue.
const AT_ONCE: usize = 256;
/// Each connection's message: small, and its own (the index is in it), so a reply that went to
/// the wrong connection is noticed.
fn message(i: usize) -> Vec<u8> {
    format!("idle connection {i:08}\n").into_bytes()
}

/// Raises this process's soft limit on open files to its hard limit (processes started later
/// inherit it), as the tunnel binaries do; returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    ferry_tunnel::process::raise_open_files_limit()
        .soft
        .unwrap_or(u64::MAX)
}

/// The echo backend as a process of its own (`ferry-bench --echo-backend ADDR`): serves until
/// killed (its parent's death kills it too).
pub async fn serve_echo(addr: SocketAddr) -> std::process::ExitCode {
    raise_fd_limit();
    match crate::load::echo_backend(&Place::Host, addr).await {
        Ok(_) => std::future::pending().await,
        Err(e) => {
            eprintln!("ferry-bench: error: echo backend on {addr}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The echo backend process on the server side, listening on a fresh port; killed when dropped.
struct EchoProcess {
    child: std::process::Child,
    port: u16,
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_echo(sites: &Sites) -> Result<EchoProcess, String> {
    let port = sites.port();
    let me = std::env::current_exe().map_err(|e| format!("cannot locate ferry-bench: {e}"))?;
    let child = sites
        .server
        .command(&me)
        .arg("--echo-backend")
        .arg(sites.backend_bind(port).to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the echo backend process: {e}"))?;
    let echo = EchoProcess { child, port };
    let at = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The server side's own loopback reaches it (in a namespace, from that namespace).
    while sites.server.connect(at).await.is_err() {
        if Instant::now() > deadline {
            return Err(format!("the echo backend process never listened on {at}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(echo)
}

/// A connection to `entry` from `place`, on loopback from source address number `i`.
async fn connect(place: &Place, entry: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    match place {
        Place::Host if entry.ip().is_loopback() && entry.is_ipv4() => {
            let socket = TcpSocket::new_v4()?;
            let source = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES as usize) as u8);
            bind_address_only(&socket)?;
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
            socket.connect(entry).await
        }
        _ => place.connect(entry).await,
    }
}

/// Makes a later `bind` to port 0 choose the address only, the port being chosen by `connect`
/// (`IP_BIND_ADDRESS_NO_PORT`, Linux 4.2), so that the port can be shared with connections to
/// other destinations.
fn bind_address_only(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `on` (an int, its size given) and touches nothing else.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Sends connection `i`'s message on `s` and checks its echo.
async fn echo_once(s: &mut TcpStream, i: usize) -> Result<(), String> {
    let m = message(i);
    let failed = |e: std::io::Error| format!("connection {i}: echo: {e}");
    s.write_all(&m).await.map_err(failed)?;
    let mut back = vec![0u8; m.len()];
    s.read_exact(&mut back).await.map_err(failed)?;
    if back != m {
        return Err(format!("connection {i}: the echo differs"));
    }
    Ok(())
}

/// Opens `n` connections, each echoing its message once, at most [`AT_ONCE`] at a time; the
/// first error ends the run.
async fn open_all(place: &Place, entry: SocketAddr, n: usize) -> Result<Vec<TcpStream>, String> {
    let gate = Arc::new(Semaphore::new(AT_ONCE));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let place = place.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let work = async {
                let mut s = connect(&place, entry, i)
                    .await
                    .map_err(|e| format!("connection {i}: connect: {e}"))?;
                let _ = s.set_nodelay(true);
                echo_once(&mut s, i).await?;
                Ok::<_, String>(s)
            };
            tokio::time::timeout(Duration::from_secs(30), work)
                .await
                .unwrap_or_else(|_| Err(format!("connection {i}: no echo within 30 s")))
        }));
    }
    let mut sockets = Vec::with_capacity(n);
    for t in tasks {
        sockets.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(sockets)
}

/// Echoes once more on every connection, [`AT_ONCE`] at a time; returns the sockets and how
/// many echoed correctly (and the first failure).
async fn echo_all(sockets: Vec<TcpStream>) -> (Vec<TcpStream>, usize, Option<String>) {
    let gate = Arc::new(Semaphore::new(AT_ONCE));
    let mut tasks = Vec::with_capacity(sockets.len());
    for (i, mut s) in sockets.into_iter().enumerate() {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let r = tokio::time::timeout(Duration::from_secs(30), echo_once(&mut s, i))
                .await
                .unwrap_or_else(|_| Err(format!("connection {i}: no echo within 30 s")));
            (s, r)
        }));
    }
    let (mut sockets, mut ok, mut first_error) = (Vec::new(), 0, None);
    for t in tasks {
        match t.await {
            Ok((s, r)) => {
                sockets.push(s);
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    (sockets, ok, first_error)
}

/// Runs the scenario for `peer` in a tunnel of its own (in front of an echo backend process)
/// and adds its figures to `f`. Direct TCP has no tunnel process to measure: only a note.
pub async fn scenario(
    peer: Peer,
    sites: &Sites,
    settings: &Settings,
    certs: &Path,
    connections: usize,
    idle: Duration,
    f: &mut Figures,
) -> Result<(), String> {
    if peer == Peer::Tcp {
        f.notes
            .push("idle: no tunnel process to measure (direct)".into());
        return Ok(());
    }
    let n = connections.max(1);
    let echo = start_echo(sites).await?;
    let Some(tunnel) = peers::start(peer, sites, echo.port, settings, certs).await? else {
        return Ok(());
    };
    let pids = tunnel.pids();
    let name = peer.name();
    // The tunnel carried one probe connection (its readiness check); it is closed by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before: Vec<u64> = pids.iter().map(|p| procfs::rss(*p)).collect();
    crate::progress(&format!(
        "{name}: idle: opening {n} connections (one echo each)"
    ));
    let t0 = Instant::now();
    let sockets = open_all(&sites.client, tunnel.entry, n).await?;
    let open_secs = t0.elapsed().as_secs_f64();
    crate::progress(&format!(
        "{name}: idle: {n} open in {open_secs:.1} s; quiet for {} s",
        idle.as_secs()
    ));
    tokio::time::sleep(idle).await;
    let after: Vec<u64> = pids.iter().map(|p| procfs::rss(*p)).collect();
    let (sockets, echoed, first_error) = echo_all(sockets).await;
    let fresh = match connect(&sites.client, tunnel.entry, n).await {
        Ok(mut s) => echo_once(&mut s, n).await.is_ok(),
        Err(_) => false,
    };
    // Reset rather than close: 19,000 connections in TIME_WAIT would hold their ports.
    for s in sockets {
        let _ = s.set_zero_linger();
    }
    f.put(&format!("idle {n} conns: time to open all, s"), open_secs);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let side = if i == 0 { "client side" } else { "server side" };
        let per_conn = a.saturating_sub(*b) as f64 / n as f64 / 1024.0;
        f.put(&format!("idle: RSS KiB per conn, {side}"), per_conn);
        f.put(
            &format!("idle: RSS MiB after {} s, {side}", idle.as_secs()),
            *a as f64 / (1 << 20) as f64,
        );
        crate::progress(&format!(
            "{name}: idle: {side}: RSS {:.1} MiB before, {:.1} MiB with {n} idle connections: {per_conn:.2} KiB per connection",
            *b as f64 / (1 << 20) as f64,
            *a as f64 / (1 << 20) as f64,
        ));
    }
    f.put("idle: echo after idle, %", 100.0 * echoed as f64 / n as f64);
    f.put(
        "idle: fresh connection echoes, %",
        if fresh { 100.0 } else { 0.0 },
    );
    crate::progress(&format!(
        "{name}: idle: {echoed} of {n} echo after {} s idle; fresh connection {}",
        idle.as_secs(),
        if fresh { "works" } else { "FAILED" }
    ));
    if let Some(e) = first_error {
        f.notes.push(format!("idle: first failure: {e}"));
    }
    drop(tunnel);
    drop(echo);
    Ok(())
}
