//! The `fairness` scenario (issue #14): bulk connections through one tunnel must get equal
//! shares of it, and a connection opened while they run must not queue behind them.
//!
//! With the tunnel quiet, 20 new connections each send one byte and time its echo (the idle
//! first-byte time). Then 16 connections echo bulk data for `--seconds`; over the middle half
//! of the run each one's MB/s is measured, and Jain's fairness index of those shares (Jain, Chiu
//! and Hawe, DEC-TR-301, 1984: 1 when all are equal, 1/16 when one takes everything).
//! Meanwhile, every 200 ms, a new connection sends one byte and times its echo: its first-byte
//! delay beside the bulk connections, against the idle one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::load::{self, percentile_ms};
use crate::netns::Place;
use crate::report::Figures;

/// Bulk connections sharing the tunnel.
const BULK: usize = 16;
/// Longest a new connection's first byte may take before it counts as failed.
const FIRST_BYTE_LIMIT: Duration = Duration::from_secs(10);

/// Jain's fairness index of `shares`.
pub fn jain_index(shares: &[f64]) -> f64 {
    let sum: f64 = shares.iter().sum();
    let squares: f64 = shares.iter().map(|x| x * x).sum();
    if squares == 0.0 {
        return 0.0;
    }
    sum * sum / (shares.len() as f64 * squares)
}

/// One new connection's time to its first echoed byte, bounded by [`FIRST_BYTE_LIMIT`].
async fn first_byte(place: &Place, entry: SocketAddr) -> Result<Duration, String> {
    match tokio::time::timeout(FIRST_BYTE_LIMIT, load::connect_times(place, entry, 1)).await {
        Ok(times) => Ok(times?[0]),
        Err(_) => Err(format!("no first byte within {FIRST_BYTE_LIMIT:?}")),
    }
}

/// Runs the scenario through the tunnel at `entry` for `seconds` of bulk transfer.
pub async fn run(
    f: &mut Figures,
    place: &Place,
    entry: SocketAddr,
    seconds: Duration,
) -> Result<(), String> {
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(first_byte(place, entry).await?);
    }
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + seconds;
    let counters: Vec<Arc<AtomicU64>> = (0..BULK).map(|_| Arc::default()).collect();
    let tasks: Vec<_> = counters
        .iter()
        .map(|c| {
            let bulk = load::bulk_one(place.clone(), entry, deadline, Some(c.clone()));
            tokio::spawn(bulk)
        })
        .collect();
    let snapshot = || -> Vec<u64> { counters.iter().map(|c| c.load(Ordering::Relaxed)).collect() };
    tokio::time::sleep_until((start + seconds / 4).into()).await;
    let (from, at_from) = (Instant::now(), snapshot());
    let mut beside = Vec::new();
    let mut failed = 0;
    while start.elapsed() < seconds * 3 / 4 {
        match first_byte(place, entry).await {
            Ok(t) => beside.push(t),
            Err(e) => {
                failed += 1;
                if failed == 1 {
                    f.notes
                        .push(format!("fairness: a new connection failed: {e}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (to, at_to) = (Instant::now(), snapshot());
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let span = (to - from).as_secs_f64();
    let shares: Vec<f64> = at_to
        .iter()
        .zip(&at_from)
        .map(|(b, a)| (b - a) as f64 / 1e6 / span)
        .collect();
    let mean = shares.iter().sum::<f64>() / BULK as f64;
    let min = shares.iter().copied().fold(f64::INFINITY, f64::min);
    let max = shares.iter().copied().fold(0.0, f64::max);
    f.put(&format!("{BULK} conns: MB/s per conn, min"), min);
    f.put(&format!("{BULK} conns: MB/s per conn, mean"), mean);
    f.put(&format!("{BULK} conns: MB/s per conn, max"), max);
    f.put(&format!("{BULK} conns: Jain index"), jain_index(&shares));
    f.put(
        "new conn first byte, idle, p50 ms",
        percentile_ms(&mut idle, 50.0),
    );
    f.put(
        &format!("new conn first byte beside {BULK} bulk, p50 ms"),
        percentile_ms(&mut beside, 50.0),
    );
    f.put(
        &format!("new conn first byte beside {BULK} bulk, max ms"),
        percentile_ms(&mut beside, 100.0),
    );
    if failed > 0 {
        f.put(
            &format!("new conns beside {BULK} bulk failed"),
            failed as f64,
        );
    }
    Ok(())
}
