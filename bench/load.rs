//! The workloads, all against an echo backend: bulk transfer, request/response latency, connect
//! time, and many concurrent connections. Every byte that comes back is checked. Connections
//! are made from a [`Place`]: this host on loopback, or the client namespace of an impaired link.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::netns::Place;

/// The echo backend every peer forwards to, listening at `addr` in `place`.
pub async fn echo_backend(place: &Place, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = place.listen(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                // Out of descriptors at the peak of `many`: keep serving the others.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
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

/// Period of the bulk payload: writes and checks are slices of it, so the load generator
/// costs a copy per byte and the figures measure the tunnels.
const PATTERN_BYTES: usize = 1 << 20;
const CHUNK: usize = 64 << 10;

fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| ferry_test_support::payload(1, PATTERN_BYTES + CHUNK))
}

/// Echoes the pattern through one new connection to `entry` (written and read at once) until
/// `deadline`; returns the bytes that came back, checked, by then. `progress`, if given, counts
/// them as they come (for per-connection shares over part of the run).
pub async fn bulk_one(
    place: Place,
    entry: SocketAddr,
    deadline: tokio::time::Instant,
    progress: Option<Arc<AtomicU64>>,
) -> Result<usize, String> {
    let s = place
        .connect(entry)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        loop {
            let off = sent % PATTERN_BYTES;
            if w.write_all(&pattern()[off..off + CHUNK]).await.is_err() {
                return;
            }
            sent += CHUNK;
        }
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => break,
            Ok(read) => read.map_err(|e| e.to_string())?,
        };
        if n == 0 {
            writer.abort();
            return Err(format!("connection ended after {got} bytes"));
        }
        let off = got % PATTERN_BYTES;
        // A read may straddle the pattern's period: compare in two parts.
        let first = n.min(PATTERN_BYTES - off);
        if buf[..first] != pattern()[off..off + first] || buf[first..n] != pattern()[..n - first] {
            return Err(format!("echoed bytes differ near offset {got}"));
        }
        got += n;
        if let Some(p) = &progress {
            p.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    // Stop writing and drop the connection: no half-close (kcptun drops the whole connection
    // on one), and whatever is still in flight is not counted.
    writer.abort();
    Ok(got)
}

/// `streams` connections echo bulk data for `duration`; returns MB/s each way (all streams
/// together) and the bytes echoed.
pub async fn bulk(
    place: &Place,
    entry: SocketAddr,
    streams: usize,
    duration: Duration,
) -> Result<(f64, usize), String> {
    let t0 = Instant::now();
    let deadline = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(bulk_one(place.clone(), entry, deadline, None)))
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    Ok((total as f64 / 1e6 / t0.elapsed().as_secs_f64(), total))
}

/// Sends `message` and reads its echo on `s`; returns the round-trip time.
async fn exchange(s: &mut TcpStream, message: &[u8], buf: &mut [u8]) -> Result<Duration, String> {
    let t0 = Instant::now();
    s.write_all(message).await.map_err(|e| e.to_string())?;
    s.read_exact(&mut buf[..message.len()])
        .await
        .map_err(|e| e.to_string())?;
    if buf[..message.len()] != *message {
        return Err("echo differs".into());
    }
    Ok(t0.elapsed())
}

/// `connections` connections (opened first), each doing `per_connection` 1 KB request/response
/// exchanges back to back; returns every round-trip time.
pub async fn request_response(
    place: &Place,
    entry: SocketAddr,
    connections: usize,
    per_connection: usize,
) -> Result<Vec<Duration>, String> {
    let mut sockets = Vec::new();
    for _ in 0..connections {
        let s = place
            .connect(entry)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        sockets.push(s);
    }
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            tokio::spawn(async move {
                let message: Vec<u8> = (0..1024).map(|j| (i * 7 + j) as u8).collect();
                let mut buf = vec![0u8; 1024];
                let mut times = Vec::with_capacity(per_connection);
                for _ in 0..per_connection {
                    times.push(exchange(&mut s, &message, &mut buf).await?);
                }
                Ok::<_, String>(times)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(all)
}

/// `count` times: a new connection, one byte, its echo; returns each time to first byte.
pub async fn connect_times(
    place: &Place,
    entry: SocketAddr,
    count: usize,
) -> Result<Vec<Duration>, String> {
    let mut times = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    for _ in 0..count {
        let t0 = Instant::now();
        let mut s = place
            .connect(entry)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        s.write_all(b"!").await.map_err(|e| e.to_string())?;
        s.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        times.push(t0.elapsed());
    }
    Ok(times)
}

/// What `many` saw.
pub struct ManyOutcome {
    /// Connections that completed every exchange.
    pub succeeded: usize,
    /// Round-trip times of the exchanges that completed.
    pub times: Vec<Duration>,
    /// The first failure, for the report.
    pub first_error: Option<String>,
}

/// `connections` concurrent connections, all open at once, each exchanging `messages` 1 KB
/// messages `gap` apart; bounded by `limit`.
pub async fn many(
    place: &Place,
    entry: SocketAddr,
    connections: usize,
    messages: usize,
    gap: Duration,
    limit: Duration,
) -> ManyOutcome {
    // Everyone connects first, then all start together.
    let start = Arc::new(tokio::sync::Barrier::new(connections + 1));
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let start = start.clone();
            let place = place.clone();
            tokio::spawn(async move {
                let connected = place.connect(entry).await;
                start.wait().await;
                let mut s = connected.map_err(|e| format!("connect: {e}"))?;
                let _ = s.set_nodelay(true);
                let message: Vec<u8> = (0..1024).map(|j| (i * 13 + j) as u8).collect();
                let mut buf = vec![0u8; 1024];
                let mut times = Vec::with_capacity(messages);
                for _ in 0..messages {
                    times.push(exchange(&mut s, &message, &mut buf).await?);
                    tokio::time::sleep(gap).await;
                }
                Ok::<_, String>(times)
            })
        })
        .collect();
    start.wait().await;
    let mut outcome = ManyOutcome {
        succeeded: 0,
        times: Vec::new(),
        first_error: None,
    };
    let deadline = tokio::time::Instant::now() + limit;
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok(times))) => {
                outcome.succeeded += 1;
                outcome.times.extend(times);
            }
            Ok(Ok(Err(e))) => {
                outcome.first_error.get_or_insert(e);
            }
            Ok(Err(e)) => {
                outcome.first_error.get_or_insert(e.to_string());
            }
            Err(_) => {
                outcome.first_error.get_or_insert("timed out".into());
            }
        }
    }
    outcome
}

/// RTB-like JSON over `connections` keep-alive connections, `per_connection` exchanges each:
/// a bid request and a bid response (the two kinds of message such a connection carries) go
/// out together and come back echoed. Returns the payload bytes, both ways together.
pub async fn rtb(
    place: &Place,
    entry: SocketAddr,
    connections: usize,
    per_connection: usize,
) -> Result<u64, String> {
    let mut tasks = Vec::new();
    for i in 0..connections {
        let mut s = place
            .connect(entry)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        tasks.push(tokio::spawn(async move {
            let mut g = crate::rtb::Gen(0x5eed_0000 + i as u64);
            let mut buf = Vec::new();
            let mut payload = 0u64;
            for _ in 0..per_connection {
                let mut message = crate::rtb::bid_request(&mut g);
                let response = crate::rtb::bid_response(&mut g, &message);
                message.push(b'\n');
                message.extend_from_slice(&response);
                message.push(b'\n');
                buf.resize(message.len(), 0);
                exchange(&mut s, &message, &mut buf).await?;
                payload += 2 * message.len() as u64;
            }
            Ok::<_, String>(payload)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    Ok(total)
}

/// Percentile `p` (0-100) of `times`, in milliseconds.
pub fn percentile_ms(times: &mut [Duration], p: f64) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort_unstable();
    let idx = ((p / 100.0) * (times.len() - 1) as f64).round() as usize;
    times[idx.min(times.len() - 1)].as_secs_f64() * 1000.0
}
