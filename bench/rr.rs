//! The request/response scenarios (issue #16): many keep-alive connections exchanging small
//! messages, the traffic of RTB and game APIs, caches and databases, where a tunnel's cost per
//! message matters more than its cost per byte.
//!
//! - `rr`: closed loop. 64 connections, each sending a 1 KB request and waiting for its 1 KB
//!   echo before the next, for `--seconds`. Requests/s, p50/p99 of each exchange.
//! - `pipelined`: cache-GET shaped. 64 connections, each keeping 16 requests of 64 bytes in
//!   flight against a backend that answers each with 1 KB ([`responder_backend`]), for
//!   `--seconds`. Requests/s, p50/p99 from a request's write to the end of its response.
//!
//! Both report CPU per request: the CPU time of the tunnel's two processes together over the
//! run, divided by the requests completed (none for direct TCP, which has no process of its
//! own). Every response is checked byte for byte.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::percentile_ms;
use crate::netns::Place;
use crate::procfs;
use crate::report::Figures;

/// Connections in both scenarios.
pub const CONNECTIONS: usize = 64;
/// The closed loop's request and response.
const RR_BYTES: usize = 1024;
/// Requests each pipelined connection keeps in flight.
pub const IN_FLIGHT: usize = 16;
/// A pipelined request.
pub const REQUEST_BYTES: usize = 64;
/// A pipelined response.
pub const RESPONSE_BYTES: usize = 1024;

/// The response to a pipelined request: 1 KB that depends on the request's first byte, so a
/// response sent for the wrong request or out of order is caught.
fn response_for(request_tag: u8) -> [u8; RESPONSE_BYTES] {
    let mut r = [0u8; RESPONSE_BYTES];
    for (i, b) in r.iter_mut().enumerate() {
        *b = request_tag.wrapping_add((i * 31) as u8);
    }
    r
}

/// A backend for `pipelined` listening at `addr` in `place`: it reads requests of
/// [`REQUEST_BYTES`] and answers each with [`RESPONSE_BYTES`], in order, writing every answer
/// that a read completed in one write (as a cache server answers a pipelined batch).
pub async fn responder_backend(place: &Place, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = place.listen(addr).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                let mut held = 0;
                let mut out = Vec::new();
                loop {
                    let n = match s.read(&mut buf[held..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    held += n;
                    let whole = held / REQUEST_BYTES;
                    out.clear();
                    for r in buf[..whole * REQUEST_BYTES].chunks(REQUEST_BYTES) {
                        out.extend_from_slice(&response_for(r[0]));
                    }
                    buf.copy_within(whole * REQUEST_BYTES..held, 0);
                    held -= whole * REQUEST_BYTES;
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// What a run of either scenario measured.
struct Outcome {
    requests: u64,
    elapsed: Duration,
    times: Vec<Duration>,
}

impl Outcome {
    /// Waits for every connection's task (each returns its request times) of a run that
    /// started at `t0`; the first error of any connection is the run's.
    async fn gather(
        tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>, String>>>,
        t0: Instant,
    ) -> Result<Outcome, String> {
        let mut times = Vec::new();
        for t in tasks {
            times.extend(t.await.map_err(|e| e.to_string())??);
        }
        Ok(Outcome {
            requests: times.len() as u64,
            elapsed: t0.elapsed(),
            times,
        })
    }
}

async fn connect_all(place: &Place, entry: SocketAddr) -> Result<Vec<TcpStream>, String> {
    let mut sockets = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let s = place
            .connect(entry)
            .await
            .map_err(|e| format!("connection {i}: connect: {e}"))?;
        let _ = s.set_nodelay(true);
        sockets.push(s);
    }
    Ok(sockets)
}

/// Closed loop: each connection sends 1 KB and reads its echo, back to back, until `deadline`.
async fn closed_loop(place: &Place, entry: SocketAddr, run: Duration) -> Result<Outcome, String> {
    let sockets = connect_all(place, entry).await?;
    let t0 = Instant::now();
    let deadline = t0 + run;
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(c, mut s)| {
            tokio::spawn(async move {
                let mut message = [0u8; RR_BYTES];
                let mut echo = [0u8; RR_BYTES];
                let mut times = Vec::new();
                while Instant::now() < deadline {
                    for (j, b) in message.iter_mut().enumerate() {
                        *b = (c * 7 + j + times.len()) as u8;
                    }
                    let sent = Instant::now();
                    s.write_all(&message)
                        .await
                        .map_err(|e| format!("connection {c}: write: {e}"))?;
                    s.read_exact(&mut echo)
                        .await
                        .map_err(|e| format!("connection {c}: read: {e}"))?;
                    if echo != message {
                        return Err(format!("connection {c}: the echo differs"));
                    }
                    times.push(sent.elapsed());
                }
                Ok::<_, String>(times)
            })
        })
        .collect();
    Outcome::gather(tasks, t0).await
}

/// Pipelined: each connection keeps [`IN_FLIGHT`] requests outstanding until `deadline`, then
/// collects the answers to those still in flight.
async fn pipelined(place: &Place, entry: SocketAddr, run: Duration) -> Result<Outcome, String> {
    let sockets = connect_all(place, entry).await?;
    let t0 = Instant::now();
    let deadline = t0 + run;
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(c, s)| {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                // Requests written and not yet answered: their tag and when they left.
                let mut outstanding: VecDeque<(u8, Instant)> = VecDeque::new();
                let mut times = Vec::new();
                let mut next_tag = c as u8;
                let mut response = [0u8; RESPONSE_BYTES];
                let mut batch = Vec::with_capacity(IN_FLIGHT * REQUEST_BYTES);
                loop {
                    // Top up to IN_FLIGHT in one write, as a client library flushes a pipeline.
                    batch.clear();
                    while Instant::now() < deadline && outstanding.len() < IN_FLIGHT {
                        batch.extend_from_slice(&[next_tag; REQUEST_BYTES]);
                        outstanding.push_back((next_tag, Instant::now()));
                        next_tag = next_tag.wrapping_add(1);
                    }
                    if !batch.is_empty() {
                        w.write_all(&batch)
                            .await
                            .map_err(|e| format!("connection {c}: write: {e}"))?;
                    }
                    let Some((tag, sent)) = outstanding.pop_front() else {
                        break;
                    };
                    r.read_exact(&mut response)
                        .await
                        .map_err(|e| format!("connection {c}: read: {e}"))?;
                    if response != response_for(tag) {
                        return Err(format!("connection {c}: a response differs"));
                    }
                    times.push(sent.elapsed());
                }
                Ok::<_, String>(times)
            })
        })
        .collect();
    Outcome::gather(tasks, t0).await
}

fn cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|p| procfs::cpu_time(*p)).sum()
}

/// What the tunnel processes used while a run lasted.
struct Usage {
    cpu: Duration,
    datagrams: u64,
}

/// Measures the tunnel processes `pids` around `run`; `None` for direct TCP (no tunnel).
async fn measured<F: std::future::Future<Output = Result<Outcome, String>>>(
    pids: &[u32],
    run: F,
) -> Result<(Outcome, Option<Usage>), String> {
    let (cpu0, udp0) = (cpu(pids), procfs::udp_datagrams_sent(pids));
    let out = run.await?;
    let usage = (!pids.is_empty()).then(|| Usage {
        cpu: cpu(pids).saturating_sub(cpu0),
        datagrams: procfs::udp_datagrams_sent(pids).saturating_sub(udp0),
    });
    Ok((out, usage))
}

fn report(f: &mut Figures, label: &str, mut out: Outcome, usage: Option<Usage>) {
    f.put(
        &format!("{label}: requests/s"),
        out.requests as f64 / out.elapsed.as_secs_f64(),
    );
    f.put(
        &format!("{label}: p50 ms"),
        percentile_ms(&mut out.times, 50.0),
    );
    f.put(
        &format!("{label}: p99 ms"),
        percentile_ms(&mut out.times, 99.0),
    );
    if let Some(usage) = usage {
        let requests = out.requests.max(1) as f64;
        f.put(
            &format!("{label}: tunnel CPU us per request"),
            usage.cpu.as_secs_f64() * 1e6 / requests,
        );
        f.put(
            &format!("{label}: UDP datagrams per request"),
            usage.datagrams as f64 / requests,
        );
    }
}

/// The closed-loop scenario through `entry`, whose tunnel processes are `pids`.
pub async fn run_closed_loop(
    f: &mut Figures,
    place: &Place,
    entry: SocketAddr,
    pids: &[u32],
    seconds: Duration,
) -> Result<(), String> {
    let (out, usage) = measured(pids, closed_loop(place, entry, seconds)).await?;
    report(f, "1 KB rr, 64 conns", out, usage);
    Ok(())
}

/// The pipelined scenario through `entry` (a tunnel in front of a [`responder_backend`]).
pub async fn run_pipelined(
    f: &mut Figures,
    place: &Place,
    entry: SocketAddr,
    pids: &[u32],
    seconds: Duration,
) -> Result<(), String> {
    let (out, usage) = measured(pids, pipelined(place, entry, seconds)).await?;
    report(f, "64 B get x16, 64 conns", out, usage);
    Ok(())
}
