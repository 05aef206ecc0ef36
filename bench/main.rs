//! `ferry-bench`: measures Ferry against direct TCP and kcptun on the same work, the way iperf3
//! measures a link, and prints one comparison table (and, with `--json`, writes the figures).
//!
//! Each peer is started in front of the same in-process echo backend on loopback: direct TCP
//! (the baseline every ratio is against), the real `ferry-agent` and `ferry-gateway` binaries
//! (found next to this one), and kcptun in fast3 mode when installed (reported as skipped
//! otherwise, never as zero). Settings match: `--encrypt` runs Ferry with TLS and kcptun with
//! AES; without it both run unencrypted. Scenarios:
//!
//! - `throughput`: 1 and 8 connections of bulk echo; MB/s each way, CPU seconds per GiB of the
//!   tunnel's processes;
//! - `latency`: 1 KB request/response, sequential on one connection and on 64 connections at
//!   once; p50/p90/p99/max;
//! - `connect`: a new connection to its first echoed byte;
//! - `many`: N connections (default 3,000) open at once, each exchanging 1 KB messages:
//!   success rate, p99, and the peak RSS of the tunnel's two processes.
//!
//! This version measures on loopback; impaired links (network namespaces joined by a
//! userspace relay) are the next step of issue 7.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

mod load;
mod peers;
mod procfs;

use load::percentile_ms;
use peers::{Peer, Settings};

/// Measures Ferry against direct TCP and kcptun, on loopback.
#[derive(Debug, Parser)]
#[command(name = "ferry-bench", version, about)]
struct Args {
    /// Scenarios to run (comma-separated): throughput, latency, connect, many.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,latency,connect,many"
    )]
    scenarios: Vec<Scenario>,

    /// Peers to measure (comma-separated): tcp, ferry, kcptun.
    #[arg(long, value_delimiter = ',', default_value = "tcp,ferry,kcptun")]
    peers: Vec<Peer>,

    /// Encrypt: Ferry with TLS (a development CA made for the run), kcptun with AES.
    #[arg(long)]
    encrypt: bool,

    /// Ferry's --compress for both ends (kcptun then uses its snappy compression).
    #[arg(long, default_value = "none")]
    compress: String,

    /// More flags for both Ferry binaries (repeatable), e.g. --ferry-arg=--batch-delay=2ms.
    #[arg(long = "ferry-arg", allow_hyphen_values = true)]
    ferry_args: Vec<String>,

    /// MiB each connection echoes in `throughput`.
    #[arg(long, default_value_t = 64)]
    mib: usize,

    /// Exchanges per connection in `latency` (the concurrent run does a quarter as many).
    #[arg(long, default_value_t = 2000)]
    requests: usize,

    /// Connections in `many`.
    #[arg(long, default_value_t = 3000)]
    connections: usize,

    /// Write the figures as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Throughput,
    Latency,
    Connect,
    Many,
}

/// Figures of one peer, by metric name (insertion order kept for the table).
#[derive(Default)]
struct Figures {
    values: Vec<(String, f64)>,
    notes: Vec<String>,
}

impl Figures {
    fn put(&mut self, name: &str, value: f64) {
        self.values.push((name.to_owned(), value));
    }
}

fn progress(msg: &str) {
    eprintln!("ferry-bench: {msg}");
}

async fn measure(
    peer: Peer,
    args: &Args,
    settings: &Settings,
    certs: &std::path::Path,
) -> Result<Option<Figures>, String> {
    let backend = load::echo_backend()
        .await
        .map_err(|e| format!("cannot start the echo backend: {e}"))?;
    let Some(tunnel) = peers::start(peer, backend, settings, certs).await? else {
        return Ok(None);
    };
    let mut f = Figures::default();
    f.notes.push(tunnel.describe.clone());
    let pids = tunnel.pids();
    let cpu = || -> Duration { pids.iter().map(|p| procfs::cpu_time(*p)).sum() };
    for scenario in &args.scenarios {
        match scenario {
            Scenario::Throughput => {
                progress(&format!("{}: throughput", peer.name()));
                let bytes = args.mib << 20;
                let cpu0 = cpu();
                let one = load::bulk(tunnel.entry, 1, bytes).await?;
                let eight = load::bulk(tunnel.entry, 8, bytes / 4).await?;
                f.put("throughput 1 conn, MB/s each way", one);
                f.put("throughput 8 conns, MB/s each way", eight);
                if !pids.is_empty() {
                    // Bytes each way: one connection's, plus eight quarter-size ones.
                    let gib = (bytes + 8 * (bytes / 4)) as f64 / (1u64 << 30) as f64;
                    f.put(
                        "tunnel CPU s per GiB each way",
                        (cpu() - cpu0).as_secs_f64() / gib,
                    );
                }
            }
            Scenario::Latency => {
                progress(&format!("{}: latency", peer.name()));
                let mut seq = load::request_response(tunnel.entry, 1, args.requests).await?;
                for p in [50.0, 90.0, 99.0, 100.0] {
                    let name = format!("1 KB req/resp sequential, p{p} ms").replace("p100", "max");
                    f.put(&name, percentile_ms(&mut seq, p));
                }
                let mut conc =
                    load::request_response(tunnel.entry, 64, (args.requests / 4).max(1)).await?;
                for p in [50.0, 90.0, 99.0, 100.0] {
                    let name = format!("1 KB req/resp 64 conns, p{p} ms").replace("p100", "max");
                    f.put(&name, percentile_ms(&mut conc, p));
                }
            }
            Scenario::Connect => {
                progress(&format!("{}: connect", peer.name()));
                let mut times = load::connect_times(tunnel.entry, 500).await?;
                f.put(
                    "connect to first byte, p50 ms",
                    percentile_ms(&mut times, 50.0),
                );
                f.put(
                    "connect to first byte, p99 ms",
                    percentile_ms(&mut times, 99.0),
                );
            }
            Scenario::Many => {
                progress(&format!(
                    "{}: {} concurrent connections",
                    peer.name(),
                    args.connections
                ));
                let t0 = Instant::now();
                let mut out = load::many(
                    tunnel.entry,
                    args.connections,
                    10,
                    Duration::from_millis(100),
                    Duration::from_secs(120),
                )
                .await;
                f.put(
                    &format!("{} conns: success %", args.connections),
                    100.0 * out.succeeded as f64 / args.connections as f64,
                );
                for p in [50.0, 99.0] {
                    f.put(
                        &format!("{} conns: p{p} ms", args.connections),
                        percentile_ms(&mut out.times, p),
                    );
                }
                if let Some(e) = out.first_error {
                    f.notes.push(format!("many: first failure: {e}"));
                }
                for (i, pid) in pids.iter().enumerate() {
                    let side = if i == 0 { "client side" } else { "server side" };
                    f.put(
                        &format!("peak RSS MiB, {side}"),
                        procfs::peak_rss(*pid) as f64 / (1 << 20) as f64,
                    );
                }
                progress(&format!("{}: many took {:?}", peer.name(), t0.elapsed()));
            }
        }
    }
    Ok(Some(f))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let certs = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
    if let Err(e) = ferry_certs::generate(&ferry_certs::Options::default())
        .and_then(|set| set.write(&certs, true))
    {
        eprintln!("ferry-bench: error: cannot make certificates: {e}");
        return ExitCode::FAILURE;
    }
    let settings = Settings {
        encrypt: args.encrypt,
        compress: args.compress.clone(),
        ferry_args: args.ferry_args.clone(),
    };
    let mut results: BTreeMap<&'static str, Result<Option<Figures>, String>> = BTreeMap::new();
    let mut order = Vec::new();
    for peer in &args.peers {
        let r = measure(*peer, &args, &settings, &certs).await;
        if let Err(e) = &r {
            progress(&format!("{}: failed: {e}", peer.name()));
        }
        order.push(peer.name());
        results.insert(peer.name(), r);
    }
    let _ = std::fs::remove_dir_all(&certs);
    report(&order, &results, &args)
}

/// Three significant decimals for small values (sub-millisecond latencies), two otherwise.
fn number(v: f64) -> String {
    if v.abs() < 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

fn report(
    order: &[&'static str],
    results: &BTreeMap<&'static str, Result<Option<Figures>, String>>,
    args: &Args,
) -> ExitCode {
    let baseline: BTreeMap<&str, f64> = match results.get("tcp") {
        Some(Ok(Some(f))) => f.values.iter().map(|(k, v)| (k.as_str(), *v)).collect(),
        _ => BTreeMap::new(),
    };
    // Metric names in first-seen order.
    let mut metrics: Vec<String> = Vec::new();
    for r in results.values() {
        if let Ok(Some(f)) = r {
            for (k, _) in &f.values {
                if !metrics.contains(k) {
                    metrics.push(k.clone());
                }
            }
        }
    }
    println!();
    print!("{:<40}", "loopback");
    for p in order {
        print!(" {:>22}", p);
    }
    println!();
    for m in &metrics {
        print!("{m:<40}");
        for p in order {
            let cell = match results.get(p) {
                Some(Ok(Some(f))) => match f.values.iter().find(|(k, _)| k == m) {
                    Some((_, v)) => match baseline.get(m.as_str()) {
                        Some(b) if *p != "tcp" && *b > 0.0 && v.is_finite() => {
                            format!("{} ({:.2}x)", number(*v), v / b)
                        }
                        _ => number(*v),
                    },
                    None => "-".into(),
                },
                Some(Ok(None)) => "skipped".into(),
                Some(Err(_)) => "error".into(),
                None => "-".into(),
            };
            print!(" {cell:>22}");
        }
        println!();
    }
    println!();
    for p in order {
        match results.get(p) {
            Some(Ok(Some(f))) => println!("{p}: {}", f.notes.join("; ")),
            Some(Ok(None)) => println!("{p}: skipped: not installed (apt-get install kcptun)"),
            Some(Err(e)) => println!("{p}: error: {e}"),
            None => {}
        }
    }
    println!("(x): ratio to direct TCP");
    if let Some(path) = &args.json {
        let mut peers = serde_json::Map::new();
        for p in order {
            let value = match results.get(p) {
                Some(Ok(Some(f))) => {
                    let values: serde_json::Map<String, serde_json::Value> = f
                        .values
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                        .collect();
                    serde_json::json!({"status": "ok", "settings": f.notes, "figures": values})
                }
                Some(Ok(None)) => serde_json::json!({"status": "skipped"}),
                Some(Err(e)) => serde_json::json!({"status": "error", "error": e}),
                None => continue,
            };
            peers.insert(p.to_string(), value);
        }
        let doc = serde_json::json!({
            "link": "loopback",
            "encrypt": args.encrypt,
            "compress": args.compress,
            "peers": peers,
        });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("ferry-bench: error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if results.values().any(|r| r.is_err()) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
