//! The `slow-readers` scenario (issue #14): clients that write into the tunnel and never read
//! their replies (a frozen app, a phone in a tunnel, a reader behind a full disk), beside busy
//! clients echoing bulk data through the same tunnel.
//!
//! First the busy clients run alone; then, for each count N of `--stalled` (default 50 and
//! 1,000), N stalled clients connect, each writes 1 MiB and never reads, with a 16 KiB receive
//! buffer so that their stall reaches the tunnel at once rather than after the kernel's
//! autotuned buffers fill. Once nothing moves any more (their writes and the tunnel's CPU time
//! are still), each tunnel process's RSS is read, and the busy clients run again beside them.
//! Reported: the busy clients' MB/s beside N as a share of alone, and each tunnel process's RSS
//! and its growth per stalled client. The stalled clients then close with their replies unread
//! (a reset) before the next N.
//!
//! Every busy figure is the median of [`ROUNDS`] runs: on a shared 2-core machine one run of a
//! few seconds alone and one beside differ by up to a third either way with nothing stalled at
//! all, which would drown the effect measured. RSS is read before the busy clients run beside
//! the stalled ones, so it is what the stalled clients hold, not what a bulk run left behind.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::task::JoinHandle;

use crate::load;
use crate::netns::Place;
use crate::procfs;
use crate::report::Figures;

/// What each stalled client writes.
const STALLED_BYTES: usize = 1 << 20;
/// A stalled client's receive buffer.
const STALLED_RECV_BUFFER: u32 = 16 << 10;
const MIB: f64 = (1 << 20) as f64;
/// Busy runs whose median is each busy figure.
pub const ROUNDS: usize = 3;

/// Stalled clients: their unread halves, and the tasks writing into the tunnel.
struct Stalled {
    readers: Vec<OwnedReadHalf>,
    writers: Vec<JoinHandle<()>>,
    /// Bytes written so far, all clients together.
    written: Arc<AtomicUsize>,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        for w in &self.writers {
            w.abort();
        }
    }
}

/// Connects `n` clients to `entry` that each write `STALLED_BYTES` and never read.
async fn stall(place: &Place, entry: SocketAddr, n: usize) -> Result<Stalled, String> {
    let mut stalled = Stalled {
        readers: Vec::with_capacity(n),
        writers: Vec::with_capacity(n),
        written: Arc::new(AtomicUsize::new(0)),
    };
    let data: Arc<[u8]> = (0..STALLED_BYTES).map(|i| (i * 7 + 3) as u8).collect();
    for i in 0..n {
        let s = place
            .connect_with_recv_buffer(entry, STALLED_RECV_BUFFER)
            .await
            .map_err(|e| format!("stalled client {i}: connect: {e}"))?;
        let (read, mut write) = s.into_split();
        let (data, written) = (data.clone(), stalled.written.clone());
        stalled.writers.push(tokio::spawn(async move {
            for piece in data.chunks(16 << 10) {
                if write.write_all(piece).await.is_err() {
                    return;
                }
                written.fetch_add(piece.len(), Ordering::Relaxed);
            }
            // Keep the write half open: the client stays, it just never reads.
            std::future::pending::<()>().await;
        }));
        stalled.readers.push(read);
    }
    Ok(stalled)
}

/// The median MB/s of [`ROUNDS`] bulk runs of `busy` connections for `seconds` each.
async fn median_bulk(
    place: &Place,
    entry: SocketAddr,
    busy: usize,
    seconds: Duration,
) -> Result<f64, String> {
    let mut runs = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        runs.push(load::bulk(place, entry, busy, seconds).await?.0);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[ROUNDS / 2])
}

/// CPU time of the tunnel's processes together.
fn tunnel_cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|p| procfs::cpu_time(*p)).sum()
}

/// Waits until nothing moves: `written` and the tunnel's CPU time (under 5% of a core) still
/// for half a second, or `limit` passed. Returns whether it became still.
async fn wait_until_still(written: &AtomicUsize, pids: &[u32], limit: Duration) -> bool {
    let step = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = (written.load(Ordering::Relaxed), tunnel_cpu(pids));
    let mut still = 0;
    while still < 5 {
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(step).await;
        let now = (written.load(Ordering::Relaxed), tunnel_cpu(pids));
        let quiet = now.0 == last.0 && now.1.saturating_sub(last.1) < step / 20;
        still = if quiet { still + 1 } else { 0 };
        last = now;
    }
    true
}

/// Runs the scenario through the tunnel at `entry` whose processes are `pids` (client side
/// first; none for direct TCP): `busy` bulk clients for `seconds`, alone and beside each count
/// of `stalled` clients.
pub async fn run(
    f: &mut Figures,
    place: &Place,
    entry: SocketAddr,
    pids: &[u32],
    stalled: &[usize],
    busy: usize,
    seconds: Duration,
) -> Result<(), String> {
    let alone = median_bulk(place, entry, busy, seconds).await?;
    f.put(&format!("{busy} busy conns alone, MB/s each way"), alone);
    let sides = ["client side", "server side"];
    for &n in stalled {
        let needed = 2 * n as u64 + 256;
        // The limit in force (`main` raised it to the hard limit already): the stalled clients
        // and the in-process echo backend each hold a descriptor per stalled client.
        let limit = crate::idle::raise_fd_limit();
        if limit < needed {
            return Err(format!(
                "{n} stalled clients need about {needed} open files, the limit is {limit} \
                 (raise it with ulimit -n)"
            ));
        }
        let before: Vec<u64> = pids.iter().map(|p| procfs::rss(*p)).collect();
        let clients = stall(place, entry, n).await?;
        if !wait_until_still(&clients.written, pids, Duration::from_secs(90)).await {
            f.notes.push(format!(
                "{n} stalled: still moving after 90 s, measured anyway"
            ));
        }
        let held: Vec<u64> = pids.iter().map(|p| procfs::rss(*p)).collect();
        let beside = median_bulk(place, entry, busy, seconds).await?;
        f.put(
            &format!("{busy} busy beside {n} stalled, MB/s each way"),
            beside,
        );
        f.put(
            &format!("{busy} busy beside {n} stalled, % of alone"),
            100.0 * beside / alone,
        );
        for (i, &rss) in held.iter().enumerate() {
            f.put(
                &format!("{n} stalled: RSS MiB, {}", sides[i]),
                rss as f64 / MIB,
            );
            f.put(
                &format!("{n} stalled: RSS KiB per stalled conn, {}", sides[i]),
                rss.saturating_sub(before[i]) as f64 / 1024.0 / n as f64,
            );
        }
        let wrote = clients.written.load(Ordering::Relaxed);
        f.notes.push(format!(
            "{n} stalled clients wrote {:.1} of {:.1} MiB",
            wrote as f64 / MIB,
            (n * STALLED_BYTES) as f64 / MIB
        ));
        // They give up: closed with their replies unread, i.e. reset. The tunnel must clear
        // them before the next count.
        drop(clients);
        wait_until_still(&AtomicUsize::new(0), pids, Duration::from_secs(30)).await;
    }
    Ok(())
}
