//! End to end, with the real binaries on loopback: clients that never read their replies beside
//! clients that do (issue #14). A stuck client (a frozen app, a phone in a tunnel, a reader
//! behind a full disk) may cost the session only its own stream's small windows: the busy clients
//! beside it finish with every byte intact and most of their throughput, and each side's memory
//! grows by a bounded amount per stuck client. When the stuck clients finally read, or give up,
//! their streams end cleanly and the binaries shut down at once.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;

/// Busy clients, each echoing `BUSY_BYTES` of its own data.
const BUSY_CLIENTS: u64 = 4;
const BUSY_BYTES: usize = 32 << 20;
/// What each stuck client writes (it never reads the echo until released).
const STALLED_BYTES: usize = 1 << 20;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The two binaries before an in-test echo backend, with their monitors.
struct Pair {
    gateway: Proc,
    agent: Proc,
    listen: SocketAddr,
    monitors: [(&'static str, SocketAddr); 2],
}

async fn pair() -> Pair {
    let (backend, _) = echo_backend().await;
    let gw_monitor: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent_monitor: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let backend = format!("tcp://{backend}");
    let gw_monitor_arg = gw_monitor.to_string();
    // A thousand streams connect to the in-test backend at once; on a busy machine its accept
    // loop can lag by seconds, which is not what this test is about.
    let (gateway, gw_addr) = gateway(&[
        "--backend",
        &backend,
        "--monitor",
        &gw_monitor_arg,
        "--connect-timeout",
        "30s",
    ]);
    let (agent, listen) = agent(gw_addr, &["--monitor", &agent_monitor.to_string()]).await;
    ready(listen).await;
    Pair {
        gateway,
        agent,
        listen,
        monitors: [("agent", agent_monitor), ("gateway", gw_monitor)],
    }
}

/// The test process holds every client socket and the backend's: lift the soft limit on open
/// files to the hard one.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// A line of `/proc/PID/status` in bytes (`VmRSS`: resident now, `VmHWM`: its peak).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim_start_matches(':').trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib * KIB
}

fn rss(p: &Proc) -> u64 {
    proc_status_bytes(p.0.id(), "VmRSS")
}

/// Streams open in a binary, from its monitor.
async fn streams_active(monitor: SocketAddr) -> u64 {
    let (_, _, body) = http_get(monitor, "/metrics").await;
    metric(&body, "ferry_streams_active", None) as u64
}

/// The busy clients echo their data at once, every byte checked; returns MB/s each way. Fails
/// if they do not finish within `limit` (frozen behind the stuck clients).
async fn busy_run(listen: SocketAddr, seed: u64, limit: Duration) -> f64 {
    let started = Instant::now();
    tokio::time::timeout(
        limit,
        echo_concurrently(listen, BUSY_CLIENTS, BUSY_BYTES, seed),
    )
    .await
    .unwrap_or_else(|_| panic!("busy clients unfinished after {limit:?}: frozen"));
    (BUSY_CLIENTS as usize * BUSY_BYTES) as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// A client that wrote into the tunnel and does not read the echo.
struct Stalled {
    read: OwnedReadHalf,
    writer: JoinHandle<OwnedWriteHalf>,
}

/// What stuck client `i` writes.
fn stalled_data(i: usize) -> Vec<u8> {
    payload(1_000 + i as u64, STALLED_BYTES)
}

/// Connects `n` clients that each write `STALLED_BYTES` and never read; `written` counts what
/// they managed to write so far. Their receive buffers are small (16 KiB, as a constrained
/// device's might be), so that their stall reaches the tunnel at once instead of after the
/// kernel's autotuned buffers fill: the agent's receive window for them is then full.
async fn stall(listen: SocketAddr, n: usize, written: &Arc<AtomicUsize>) -> Vec<Stalled> {
    let mut stalled = Vec::with_capacity(n);
    for i in 0..n {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 << 10).unwrap();
        let s = socket.connect(listen).await.unwrap();
        let (read, mut write) = s.into_split();
        let written = written.clone();
        let writer = tokio::spawn(async move {
            for piece in stalled_data(i).chunks(16 << 10) {
                write.write_all(piece).await.unwrap();
                written.fetch_add(piece.len(), Ordering::Relaxed);
            }
            write
        });
        stalled.push(Stalled { read, writer });
    }
    stalled
}

/// Payload bytes both binaries moved so far, both ways: still while nothing moves.
async fn tunnel_payload(p: &Pair) -> f64 {
    let mut total = 0.0;
    for (_, monitor) in p.monitors {
        let (_, _, body) = http_get(monitor, "/metrics").await;
        total += metric(&body, "ferry_payload_sent_bytes_total", None)
            + metric(&body, "ferry_payload_received_bytes_total", None);
    }
    total
}

/// Waits until the stuck clients hold all the tunnel will take from them: every stream is
/// open on the gateway, and neither their writes nor the tunnel moved a byte for half a second
/// (every buffer on their paths is full). Returns how much they wrote.
async fn wait_until_stalled(p: &Pair, n: usize, written: &AtomicUsize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(40);
    let (mut last, mut still) = ((usize::MAX, f64::NAN), 0);
    loop {
        let now = (written.load(Ordering::Relaxed), tunnel_payload(p).await);
        let all_open = streams_active(p.monitors[1].1).await >= n as u64;
        if now == last && all_open {
            still += 1;
        } else {
            still = 0;
        }
        if still == 5 {
            return now.0;
        }
        assert!(
            Instant::now() < deadline,
            "{n} stuck clients: the tunnel still moving their bytes after 40 s ({} written)",
            now.0
        );
        last = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Releases the stuck clients: the even ones finish writing, half-close and read their whole
/// echo, which must be intact (a stream stalled for seconds resumes); the odd ones give up and
/// close with unread data (a reset). Then both binaries must show no stream left.
async fn release(p: &Pair, stalled: Vec<Stalled>) {
    let readers: Vec<_> = stalled
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            tokio::spawn(async move {
                if i % 2 == 1 {
                    s.writer.abort();
                    return;
                }
                let mut write = s.writer.await.unwrap();
                write.shutdown().await.unwrap();
                let mut back = Vec::with_capacity(STALLED_BYTES);
                let mut read = s.read;
                read.read_to_end(&mut back).await.unwrap();
                assert!(
                    back == stalled_data(i),
                    "stuck client {i}: {} of {STALLED_BYTES} bytes back, or content differs",
                    back.len()
                );
            })
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), async {
        for r in readers {
            r.await.unwrap();
        }
    })
    .await
    .expect("released clients did not get their echo within 60 s");
    for (who, monitor) in p.monitors {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let open = streams_active(monitor).await;
            if open == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{who}: {open} streams still open 20 s after their clients left"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a stuck client may cost each side at most, by design: on each of its stream's two
/// directions, the receiver holds at most the initial window (64 KiB) and the sender at most the
/// credit the receiver gave (the same 64 KiB); the splice owns a read buffer and a chunk buffer
/// (32 KiB and 37 KiB) and its task, socket and stream state are a few KiB more. That is 2 x 64
/// + 69 + a few, about 200 KiB; the bound allows twice that, for the allocator's rounding and
///   fragmentation. The kernel's socket buffers, where most of the stuck bytes wait, are not in
///   the process's RSS.
const STALLED_BOUND_PER_CLIENT: u64 = 400 * KIB;
/// Fixed slack above the per-client bound: thread stacks, the allocator's arenas, the growth of
/// collections sized by the stream count.
const RSS_SLACK: u64 = 32 * MIB;

/// One phase: `n` stuck clients, then the busy clients beside them; returns their MB/s and
/// checks memory against the bound.
async fn phase(p: &Pair, n: usize, solo: f64, seed: u64) {
    let before = [rss(&p.agent), rss(&p.gateway)];
    let written = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let stalled = stall(p.listen, n, &written).await;
    let took = wait_until_stalled(p, n, &written).await;
    eprintln!(
        "{n} stuck clients wrote {:.1} MiB and stalled after {:.1?}; the busy clients start",
        took as f64 / MIB as f64,
        t0.elapsed()
    );
    let beside = busy_run(p.listen, seed, Duration::from_secs(40)).await;
    let after = [rss(&p.agent), rss(&p.gateway)];
    let ratio = beside / solo;
    eprintln!(
        "{n} stuck clients: busy clients {beside:.1} MB/s each way, {:.1}% of solo {solo:.1} MB/s",
        ratio * 100.0
    );
    let bound = n as u64 * STALLED_BOUND_PER_CLIENT + RSS_SLACK;
    for (i, who) in ["agent", "gateway"].iter().enumerate() {
        let grew = after[i].saturating_sub(before[i]);
        eprintln!(
            "{n} stuck clients: {who} RSS {:.1} -> {:.1} MiB, +{:.1} KiB per stuck client \
             (bound {} KiB + {} MiB)",
            before[i] as f64 / MIB as f64,
            after[i] as f64 / MIB as f64,
            grew as f64 / KIB as f64 / n as f64,
            STALLED_BOUND_PER_CLIENT / KIB,
            RSS_SLACK / MIB
        );
        assert!(
            grew <= bound,
            "{who}'s RSS grew by {grew} bytes beside {n} stuck clients, above {bound}"
        );
    }
    // A loose floor: a shared machine makes ratios noisy (ferry-bench measures the 90% target);
    // a freeze or a collapse to a few percent fails here.
    assert!(
        ratio >= 0.3,
        "busy clients fell to {:.1}% of their solo throughput beside {n} stuck clients",
        ratio * 100.0
    );
    release(p, stalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_clients_cost_only_their_windows_and_busy_clients_keep_moving() {
    let files = raise_fd_limit();
    assert!(
        files >= 2_500,
        "open-files limit {files}: too low for 1,000 stuck clients"
    );
    let mut p = pair().await;
    // Two solo runs (the first also warms up: windows grow, buffers are allocated); ratios are
    // against the better one.
    let first = busy_run(p.listen, 1, Duration::from_secs(60)).await;
    let solo = busy_run(p.listen, 2, Duration::from_secs(60))
        .await
        .max(first);
    phase(&p, 50, solo, 3).await;
    phase(&p, 1_000, solo, 4).await;
    // Nothing is left open: both binaries stop at once on SIGTERM (a stream left hanging would
    // hold the drain for its 30 s timeout).
    for proc in [&mut p.agent, &mut p.gateway] {
        // SAFETY: kill(2) on a child this test started and has not reaped.
        assert_eq!(
            unsafe { libc::kill(proc.0.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (who, proc) in [("agent", &mut p.agent), ("gateway", &mut p.gateway)] {
        loop {
            if let Some(status) = proc.0.try_wait().unwrap() {
                assert!(status.success(), "{who} exited with {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{who} still running 10 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
