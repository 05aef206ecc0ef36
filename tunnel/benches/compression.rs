//! Compression and batching on an RTB-like workload: wire bytes against payload bytes, and CPU
//! per MiB, for each codec with and without batching, in one run (issue 5's benchmark).
//!
//! Workload: OpenRTB-style JSON bid requests (1.5-2 KB: the same keys every time, values drawn
//! from realistic small vocabularies plus unique IDs) and bid responses (about 600 B), one per
//! line, over 64 keep-alive client connections (as an exchange's HTTP connection pool to a
//! bidder: each connection carries request after request), each connection one Ferry stream of
//! one session on real loopback UDP. Both ends compress what they send with the codec under
//! test, each stream in its own context, so compression learns only from that connection's
//! own earlier messages. Payload = the bytes the two applications exchanged; wire = UDP payload
//! bytes both endpoints sent (headers, ACKs and retransmissions included). CPU is this
//! process's (both ends and the load generator).
//!
//! `zstd:3+dict` is zstd:3 with a 64 KiB dictionary (`ferry-dict train`'s default size) trained
//! before the run on 4,000 requests and responses of other seeds than the measured traffic's
//! (`rtb::training_samples`): it knows the format, not these messages.
//!
//! Run: `cargo bench -p ferry-tunnel --bench compression` (`FERRY_BENCH_REQUESTS`, default 20000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_transport::{Connection, Endpoint, ServerConfig, TransportConfig};
use ferry_tunnel::compress::training::{check, train, Samples};
use ferry_tunnel::compress::{Codec, Compression, ZSTD_WINDOW_LOG};
use ferry_tunnel::splice::{receive_chunks, send_chunks, Meter, SpliceOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

use ferry_test_support::rtb::{bid_request, bid_response, Gen};

struct Outcome {
    payload: u64,
    /// Stream bytes after compression and chunk framing (before packet headers and ACKs).
    encoded: u64,
    wire: u64,
    cpu_us_per_mib: f64,
    requests_per_s: f64,
}

fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Joins `stream` to an in-memory pipe through the chunk pumps (as `splice` joins a socket);
/// returns the application's end of the pipe.
fn tunnel_end(
    stream: ferry_transport::Stream,
    compression: Arc<Compression>,
    meter: Arc<Meter>,
) -> DuplexStream {
    let (app, pumped) = tokio::io::duplex(256 << 10);
    let (mut pr, mut pw) = tokio::io::split(pumped);
    let (mut sr, mut sw) = tokio::io::split(stream);
    let (m, c) = (meter.clone(), compression.clone());
    tokio::spawn(async move {
        let options = SpliceOptions {
            compression: &c,
            meters: &[&m],
        };
        let _ = send_chunks(&mut pr, &mut sw, options).await;
    });
    tokio::spawn(async move {
        let options = SpliceOptions {
            compression: &compression,
            meters: &[&meter],
        };
        let _ = receive_chunks(&mut sr, &mut pw, options).await;
    });
    app
}

/// The bidder: answers each request line with a response line.
async fn serve(conn: Connection, compression: Arc<Compression>, meter: Arc<Meter>) {
    while let Some(stream) = conn.accept_stream().await {
        let app = tunnel_end(stream, compression.clone(), meter.clone());
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(app);
            let mut lines = BufReader::new(r);
            let mut g = Gen(0x5eed);
            let mut line = Vec::new();
            while lines.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
                let mut response = bid_response(&mut g, &line);
                response.push(b'\n');
                if w.write_all(&response).await.is_err() {
                    return;
                }
                line.clear();
            }
            let _ = w.shutdown().await;
        });
    }
}

async fn run(compression: Arc<Compression>, batch: Duration, requests: usize) -> Outcome {
    const CONNECTIONS: usize = 64;
    let config = TransportConfig::default().batch_delay(batch);
    let server = Endpoint::server(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(config.clone()),
    )
    .unwrap();
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = client.connect(server.local_addr(), config).await.unwrap();
    let sconn = server.accept().await.unwrap();
    let meter = Arc::new(Meter::default());
    tokio::spawn(serve(sconn.clone(), compression.clone(), meter.clone()));
    let mut g = Gen(0x1234_5678_9abc_def1);
    let per_connection = requests / CONNECTIONS;
    let wire0 =
        conn.stats().map_or(0, |s| s.bytes_sent) + sconn.stats().map_or(0, |s| s.bytes_sent);
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let bodies: Vec<Vec<u8>> = (0..per_connection).map(|_| bid_request(&mut g)).collect();
        let stream = conn.open_stream().await.unwrap();
        let app = tunnel_end(stream, compression.clone(), meter.clone());
        tasks.push(tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(app);
            let mut lines = BufReader::new(r);
            let mut response = Vec::new();
            for mut body in bodies {
                body.push(b'\n');
                w.write_all(&body).await.unwrap();
                response.clear();
                lines.read_until(b'\n', &mut response).await.unwrap();
                assert!(response.starts_with(b"{\"id\":\""), "a bid response");
            }
            w.shutdown().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu0;
    // Let the last ACKs go out before reading the wire counters.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let wire = conn.stats().map_or(0, |s| s.bytes_sent) + sconn.stats().map_or(0, |s| s.bytes_sent)
        - wire0;
    let m = meter.snapshot();
    // Each payload byte is counted by the sender's and the receiver's pumps: halve.
    let payload = (m.to_tunnel + m.from_tunnel) / 2;
    Outcome {
        payload,
        encoded: (m.to_tunnel_encoded + m.from_tunnel_encoded) / 2,
        wire,
        cpu_us_per_mib: cpu.as_micros() as f64 / (payload as f64 / (1 << 20) as f64),
        requests_per_s: (per_connection * CONNECTIONS) as f64 / secs,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests: usize = std::env::var("FERRY_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut g = Gen(1);
    let sample = bid_request(&mut g);
    let response = bid_response(&mut g, &sample);
    println!(
        "RTB-like workload: {requests} requests (~{} B) and responses (~{} B) over 64 keep-alive connections, one session on loopback",
        sample.len(),
        response.len()
    );
    println!();
    println!(
        "{:<11} {:>6} {:>12} {:>12} {:>11} {:>11} {:>13} {:>10}",
        "codec",
        "batch",
        "payload MiB",
        "wire MiB",
        "stream/payl",
        "wire/payl.",
        "CPU us/MiB",
        "req/s"
    );
    let mut best_flate_batched = f64::MAX;
    let mut best_batched = (f64::MAX, String::new());
    let mut configurations: Vec<(String, Arc<Compression>)> = [
        Codec::None,
        Codec::Snappy,
        Codec::Flate(1),
        Codec::Flate(6),
        Codec::Zstd(3),
    ]
    .into_iter()
    .map(|c| (c.to_string(), Arc::new(Compression::new(c))))
    .collect();
    let dictionary = rtb_dictionary();
    let with_dictionary = Compression::with_dictionary(Codec::Zstd(3), &dictionary, "rtb")
        .expect("a usable dictionary");
    configurations.push(("zstd:3+dict".into(), Arc::new(with_dictionary)));
    for (label, compression) in configurations {
        let codec = compression.codec();
        for batch in [Duration::ZERO, Duration::from_millis(2)] {
            let o = run(compression.clone(), batch, requests).await;
            let ratio = o.wire as f64 / o.payload as f64;
            if matches!(codec, Codec::Flate(_)) && !batch.is_zero() {
                best_flate_batched = best_flate_batched.min(ratio);
            }
            if !batch.is_zero() && ratio < best_batched.0 {
                best_batched = (ratio, label.clone());
            }
            println!(
                "{:<11} {:>6} {:>12.2} {:>12.2} {:>11.3} {:>11.3} {:>13.0} {:>10.0}",
                label,
                format!("{}ms", batch.as_millis()),
                o.payload as f64 / (1 << 20) as f64,
                o.wire as f64 / (1 << 20) as f64,
                o.encoded as f64 / o.payload as f64,
                ratio,
                o.cpu_us_per_mib,
                o.requests_per_s
            );
        }
    }
    println!();
    println!(
        "best with batching: {} at {:.3} of payload (target: at most 0.10): {}",
        best_batched.1,
        best_batched.0,
        if best_batched.0 <= 0.10 {
            "met"
        } else {
            "MISSED"
        }
    );
    // What a fresh context makes of one message (a short connection's, or the first after a
    // quiet second ended the context): where the dictionary matters most.
    let mut alone = Samples::new();
    for sample in ferry_test_support::rtb::training_samples(0x1234_5678_9abc_def1, 1000) {
        alone.push(&sample).expect("samples within bounds");
    }
    match check(&dictionary, "rtb", 3, &alone) {
        Ok(report) => println!("stream bytes, {report}"),
        Err(e) => println!("stream bytes of single messages: {e}"),
    }
    // Where the rest goes: zstd alone, with the same dictionary, over one connection's
    // messages, flushed after each (as a tunnel must) and as one unflushed stream.
    let exchanges = ferry_test_support::rtb::training_samples(0x0fed_cba9_8765_4321, 300);
    let directions: [Vec<&[u8]>; 2] = [0, 1].map(|side| {
        exchanges
            .iter()
            .skip(side)
            .step_by(2)
            .map(Vec::as_slice)
            .collect()
    });
    let payload: usize = exchanges.iter().map(Vec::len).sum();
    for level in [3, 9, 19] {
        let [flushed, unflushed] = [true, false].map(|flush| {
            let total: usize = directions
                .iter()
                .map(|messages| zstd_alone(&dictionary, level, flush, messages))
                .sum();
            total as f64 / payload as f64
        });
        println!(
            "zstd:{level} alone with the dictionary, 300 exchanges of one connection: flushed after \
             each message {flushed:.4} of the payload, one unflushed stream {unflushed:.4}"
        );
    }
    println!(
        "flate with batching: wire = {:.3} of payload (target: at most 0.125): {}",
        best_flate_batched,
        if best_flate_batched <= 0.125 {
            "met"
        } else {
            "MISSED"
        }
    );
}

/// A 64 KiB dictionary trained on RTB traffic of other seeds than the run's.
fn rtb_dictionary() -> Vec<u8> {
    let mut samples = Samples::new();
    for sample in ferry_test_support::rtb::training_samples(0xd1c7_5eed, 2000) {
        samples.push(&sample).expect("samples within bounds");
    }
    train(&samples, 64 << 10).expect("a dictionary")
}

/// Bytes zstd at `level` with `dictionary` makes of `messages` in one frame over the stream's
/// window, flushed after each message or not at all.
fn zstd_alone(dictionary: &[u8], level: i32, flush: bool, messages: &[&[u8]]) -> usize {
    use std::io::Write;
    let mut encoder = zstd::stream::write::Encoder::with_dictionary(Vec::new(), level, dictionary)
        .expect("a zstd encoder");
    encoder.window_log(ZSTD_WINDOW_LOG).expect("window");
    for message in messages {
        encoder.write_all(message).expect("in memory");
        if flush {
            encoder.flush().expect("in memory");
        }
    }
    encoder.finish().expect("in memory").len()
}
