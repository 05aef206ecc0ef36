//! Idle client connections through the real binaries cost little memory: thousands of clients
//! that each exchanged one small message and then went quiet hold only a few KiB per
//! connection in each process, still echo afterwards, and leave room for new clients.
//!
//! The figure is RSS (what the operator sees), read from `/proc` before and after; it is
//! printed, and held to a generous bound that a return of per-connection buffers (23 KiB per
//! connection per side before they were pooled) would break.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

const CONNECTIONS: usize = 3000;
/// Connections opened (or echoing) at once.
const AT_ONCE: usize = 256;
/// Loopback source addresses the clients spread over, 127.0.0.1 to 127.0.0.8.
const SOURCES: usize = 8;
/// The bound per connection per side, KiB: generous for a busy machine and allocator noise;
/// the pooled splices measure about 2.5.
const MAX_KIB_PER_CONNECTION: f64 = 16.0;

/// Raises this process's soft open-files limit to the hard limit, so that it and the binaries
/// it starts (they inherit it) can hold thousands of sockets; returns the limit now in force.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// Resident memory of process `pid`, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn message(i: usize) -> Vec<u8> {
    format!("idle client {i:06}\n").into_bytes()
}

async fn echo_once(s: &mut TcpStream, i: usize) -> std::io::Result<()> {
    let m = message(i);
    let back = exchange(s, &m).await?;
    assert_eq!(back, m, "connection {i}: the echo differs");
    Ok(())
}

/// Client `i`: from source address 127.0.0.(1 + i % SOURCES), so no address runs short of
/// ephemeral ports.
async fn connect(listen: SocketAddr, i: usize) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCES) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    socket.connect(listen).await
}

/// Runs `work` for every connection index, [`AT_ONCE`] at a time; panics on the first failure.
async fn for_each<T, F, Fut>(items: Vec<T>, work: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, T) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(AT_ONCE));
    let mut tasks = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let job = work(i, item);
        tasks.push(tokio::spawn(async move {
            let out = job.await;
            drop(permit);
            out
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("connection task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_cost_a_few_kib_each_and_still_echo() {
    let limit = raise_fd_limit();
    // The test holds every client and every backend socket.
    assert!(
        limit as usize > 2 * CONNECTIONS + 200,
        "open-files limit {limit} too low for {CONNECTIONS} connections"
    );
    let (backend, _) = echo_backend().await;
    let streams = (CONNECTIONS + 100).to_string();
    let (gw, gw_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--max-streams",
        &streams,
    ]);
    let (agent, listen) = agent(gw_addr, &[]).await;
    ready(listen).await;
    let pids = [("agent", agent.0.id()), ("gateway", gw.0.id())];
    let before: Vec<u64> = pids.iter().map(|(_, p)| rss(*p)).collect();

    let t0 = Instant::now();
    let slots: Vec<Option<TcpStream>> = (0..CONNECTIONS).map(|_| None).collect();
    let sockets = for_each(slots, |i, _| async move {
        let work = async {
            let mut s = connect(listen, i).await?;
            echo_once(&mut s, i).await?;
            Ok::<_, std::io::Error>(s)
        };
        match tokio::time::timeout(Duration::from_secs(30), work).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => panic!("connection {i}: {e}"),
            Err(_) => panic!("connection {i}: no echo within 30 s"),
        }
    })
    .await;
    let opened = t0.elapsed();
    // Quiet: no byte moves; whatever the exchanges borrowed goes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<u64> = pids.iter().map(|(_, p)| rss(*p)).collect();

    // Every connection still works, and so does a new one.
    let sockets = for_each(sockets, |i, s| async move {
        let mut s = s.expect("open");
        tokio::time::timeout(Duration::from_secs(30), echo_once(&mut s, i))
            .await
            .unwrap_or_else(|_| panic!("connection {i}: no echo after the quiet spell"))
            .unwrap_or_else(|e| panic!("connection {i} after the quiet spell: {e}"));
        Some(s)
    })
    .await;
    let mut fresh = connect(listen, CONNECTIONS).await.expect("a fresh client");
    echo_once(&mut fresh, CONNECTIONS)
        .await
        .expect("a fresh client's echo");

    println!("{CONNECTIONS} connections opened and echoed once in {opened:.1?}");
    for (((side, _), b), a) in pids.iter().zip(&before).zip(&after) {
        let per_connection = a.saturating_sub(*b) as f64 / CONNECTIONS as f64 / 1024.0;
        println!(
            "{side}: RSS {:.1} MiB before, {:.1} MiB with {CONNECTIONS} idle connections: \
             {per_connection:.2} KiB per connection",
            *b as f64 / (1 << 20) as f64,
            *a as f64 / (1 << 20) as f64,
        );
        assert!(
            per_connection <= MAX_KIB_PER_CONNECTION,
            "{side}: {per_connection:.2} KiB per idle connection"
        );
    }
    drop(sockets);
}
