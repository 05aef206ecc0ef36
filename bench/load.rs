//! The workloads, all against an echo backend: bulk transfer, request/response latency, connect
//! time, and many concurrent connections. Every byte that comes back is checked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The echo backend every peer forwards to.
pub async fn echo_backend() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
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
    PATTERN.get_or_init(|| {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..PATTERN_BYTES + CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    })
}

/// Echoes `total` bytes through one new connection to `entry` (written and read at once).
async fn bulk_one(entry: SocketAddr, total: usize) -> Result<(), String> {
    let s = TcpStream::connect(entry)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.set_nodelay(true);
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < total {
            let off = sent % PATTERN_BYTES;
            let n = CHUNK.min(total - sent);
            w.write_all(&pattern()[off..off + n])
                .await
                .map_err(|e| e.to_string())?;
            sent += n;
        }
        // No half-close: kcptun drops the whole connection on one, losing the echo's tail.
        Ok::<_, String>(w)
    });
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("connection ended after {got} of {total} bytes"));
        }
        let off = got % PATTERN_BYTES;
        // A read may straddle the pattern's period: compare in two parts.
        let first = n.min(PATTERN_BYTES - off);
        if buf[..first] != pattern()[off..off + first] || buf[first..n] != pattern()[..n - first] {
            return Err(format!("echoed bytes differ near offset {got}"));
        }
        got += n;
    }
    writer.await.map_err(|e| e.to_string())??;
    Ok(())
}

/// `streams` connections each echo `bytes`; returns MB/s each way (all streams together).
pub async fn bulk(entry: SocketAddr, streams: usize, bytes: usize) -> Result<f64, String> {
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(bulk_one(entry, bytes)))
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok((streams * bytes) as f64 / 1e6 / t0.elapsed().as_secs_f64())
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
    entry: SocketAddr,
    connections: usize,
    per_connection: usize,
) -> Result<Vec<Duration>, String> {
    let mut sockets = Vec::new();
    for _ in 0..connections {
        let s = TcpStream::connect(entry)
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
pub async fn connect_times(entry: SocketAddr, count: usize) -> Result<Vec<Duration>, String> {
    let mut times = Vec::with_capacity(count);
    let mut b = [0u8; 1];
    for _ in 0..count {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(entry)
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
            tokio::spawn(async move {
                let connected = TcpStream::connect(entry).await;
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

/// Percentile `p` (0-100) of `times`, in milliseconds.
pub fn percentile_ms(times: &mut [Duration], p: f64) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort_unstable();
    let idx = ((p / 100.0) * (times.len() - 1) as f64).round() as usize;
    times[idx.min(times.len() - 1)].as_secs_f64() * 1000.0
}
