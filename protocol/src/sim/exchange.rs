//! A request/response application for simulations: the client writes a request on one stream,
//! the server answers with a response of the same size once the whole request has arrived (after
//! a think time, as a real backend takes), and the client times each exchange. Benchmarks and tests of latency under loss share it, so they
//! measure the same thing.

use std::time::Duration;

use super::Pair;
use crate::endpoint::ConnectionHandle;
use crate::streams::ReadOutcome;
use crate::{Side, StreamId};

/// The shape of an exchange run.
#[derive(Debug, Clone, Copy)]
pub struct Exchanges {
    /// Exchanges, one after the other.
    pub count: usize,
    /// Bytes of each request, and of each response.
    pub size: usize,
    /// Pause after each response before the next request, as an interactive client makes.
    pub pause: Duration,
    /// How long the server takes to answer once the whole request arrived.
    pub think: Duration,
}

/// Runs `shape.count` exchanges on a new stream of the established connection (`client`,
/// `server`); returns each one's latency, from the request's write to the response's last
/// byte read, in order. `None` if an exchange took longer than 30 s of virtual time.
pub fn request_response(
    pair: &mut Pair,
    client: ConnectionHandle,
    server: ConnectionHandle,
    shape: Exchanges,
) -> Option<Vec<Duration>> {
    let id = pair.client.connection(client)?.open_stream().ok()?;
    let request = vec![0x42u8; shape.size];
    let mut latencies = Vec::with_capacity(shape.count);
    let mut buf = vec![0u8; 4096];
    for _ in 0..shape.count {
        let sent_at = pair.now;
        let written = pair.client.connection(client)?.write(id, &request).ok()?;
        if written != shape.size {
            return None;
        }
        if !read_until(pair, Side::Server, server, id, shape.size, &mut buf) {
            return None;
        }
        if !shape.think.is_zero() {
            let answer_at = pair.now + shape.think;
            pair.advance_to(answer_at);
        }
        if pair.server.connection(server)?.write(id, &request).ok()? != shape.size {
            return None;
        }
        if !read_until(pair, Side::Client, client, id, shape.size, &mut buf) {
            return None;
        }
        latencies.push(pair.now - sent_at);
        if !shape.pause.is_zero() {
            let until = pair.now + shape.pause;
            pair.run_until(shape.pause, |p| p.now >= until);
        }
    }
    Some(latencies)
}

/// Runs the pair until `size` bytes of stream `id` have been read on `side`'s connection
/// `handle`, or 30 s of virtual time pass.
fn read_until(
    pair: &mut Pair,
    side: Side,
    handle: ConnectionHandle,
    id: StreamId,
    size: usize,
    buf: &mut [u8],
) -> bool {
    let mut got = 0;
    pair.run_until(Duration::from_secs(30), |p| {
        let now = p.now;
        let endpoint = match side {
            Side::Client => &mut p.client,
            Side::Server => &mut p.server,
        };
        let Some(conn) = endpoint.connection(handle) else {
            return false;
        };
        while let Ok(ReadOutcome::Data(n)) = conn.read(now, id, buf) {
            got += n;
        }
        got >= size
    })
}

/// The `p`-th quantile (0.0 to 1.0) of `sorted`, nearest rank; zero when empty.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    sorted[idx]
}
