//! `ferry-bench`: measures Ferry against direct TCP and kcptun on the same work, the way iperf3
//! measures a link, and prints one comparison table per link (and, with `--json`, writes the
//! figures and a chart).
//!
//! Each peer is started in front of the same in-process echo backend: direct TCP (the baseline
//! every ratio is against), the real `ferry-agent` and `ferry-gateway` binaries (found next to
//! this one), and kcptun in fast3 mode when installed (reported as skipped otherwise, never as
//! zero). Settings match: `--encrypt` runs Ferry with TLS and kcptun with AES; without it both
//! run unencrypted. The link is loopback, or with `--link` an impaired link between two network
//! namespaces that all three peers cross alike ([`link`]); `--loss 0,1,5,10` sweeps its loss
//! rate, one table per rate. Scenarios:
//!
//! - `throughput`: 1 and 8 connections of bulk echo for `--seconds`; MB/s each way (and the
//!   share of the link rate), CPU seconds per GiB of the tunnel's processes;
//! - `latency`: 1 KB request/response, sequential on one connection and on 64 connections at
//!   once; p50/p90/p99/max;
//! - `connect`: a new connection to its first echoed byte;
//! - `many`: N connections (default 3,000) open at once, each exchanging 1 KB messages:
//!   success rate, p99, and the peak RSS of the tunnel's two processes;
//! - `compress`: RTB-like JSON over 64 keep-alive connections; bytes on the link per payload
//!   byte and the tunnel's CPU per MiB (needs `--link`: the link's relay is what counts every
//!   peer's bytes alike); Ferry also with zstd and a dictionary trained before the run on the
//!   generator's traffic of other seeds ([`RTB_DICTIONARY`]);
//! - `idle`: `--connections` connections, one small echo each, then quiet for `--idle-seconds`:
//!   RSS per connection of each tunnel process, time to open them all, echo afterwards ([`idle`]);
//! - `slow-readers`: `--busy` bulk connections alone, then beside each count of `--stalled`
//!   clients that write and never read: their MB/s as a share of alone, RSS per side and per
//!   stalled client ([`slow_readers`]);
//! - `fairness`: 16 bulk connections: MB/s per connection, Jain's index, and the first-byte
//!   delay of new connections opened while they run ([`fairness`]);
//! - `rr`: 1 KB request/response in a closed loop on 64 connections for `--seconds`:
//!   requests/s, p50/p99, tunnel CPU per request ([`rr`]);
//! - `pipelined`: 64 connections each keeping 16 requests of 64 bytes in flight, answered with
//!   1 KB each by a backend of its own ([`rr`]): requests/s, p50/p99, tunnel CPU per request;
//! - `udp`: plain UDP against Ferry's UDP flows with each `--udp-protect` mode: a game-like
//!   one-way flow (delivered share, one-way p50/p99, bytes on the link per payload byte), and
//!   on loopback the datagram rate of an echo ([`udp`]). Its peers are its own, so its runs are
//!   tables of their own.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

mod chart;
mod fairness;
mod idle;
mod link;
mod load;
mod netns;
mod peers;
mod report;
mod rr;
mod slow_readers;
mod udp;

use ferry_test_support::{procfs, rtb};

use link::{NetLink, Profile, Traffic};
use load::percentile_ms;
use peers::{Peer, Settings, Sites};
use report::{Figures, Outcome, Run, RunKind};

/// Measures Ferry against direct TCP and kcptun, on loopback or on an impaired link.
#[derive(Debug, Parser)]
#[command(name = "ferry-bench", version, about)]
struct Args {
    /// Scenarios to run (comma-separated): throughput, latency, connect, many, compress, idle,
    /// slow-readers, fairness, rr, pipelined, udp.
    /// Default: throughput, latency, connect, and many on loopback.
    #[arg(long, value_delimiter = ',')]
    scenarios: Option<Vec<Scenario>>,

    /// Peers to measure (comma-separated): tcp, ferry, kcptun, and relay (not by default: the
    /// floor of a TCP-terminating tunnel, for the request/response scenarios).
    #[arg(long, value_delimiter = ',', default_value = "tcp,ferry,kcptun")]
    peers: Vec<Peer>,

    /// The link: `loopback`, or an impaired link between two network namespaces (needs root),
    /// as key=value pairs: delay (one way), jitter, loss, burst (mean loss burst, packets),
    /// reorder, reorder-delay, dup, rate, queue (buffer as time at the rate), seed.
    /// E.g. `delay=20ms,rate=50mbit,loss=5%`.
    #[arg(long, default_value = "loopback")]
    link: String,

    /// Loss rates in percent to sweep on the impaired link, one table each (e.g. 0,1,5,10);
    /// overrides the profile's loss.
    #[arg(long, value_delimiter = ',')]
    loss: Vec<f64>,

    /// TCP congestion control in the link's namespaces (direct TCP's, and that of the tunnels'
    /// local legs). Default cubic: Linux's own default, what most hosts run.
    #[arg(long, default_value = "cubic")]
    tcp_cc: String,

    /// Encrypt: Ferry with TLS (a development CA made for the run), kcptun with AES.
    #[arg(long)]
    encrypt: bool,

    /// Ferry's --compress for both ends (kcptun then uses its snappy compression).
    #[arg(long, default_value = "none")]
    compress: String,

    /// More flags for both Ferry binaries (repeatable), e.g. --ferry-arg=--batch-delay=2ms.
    #[arg(long = "ferry-arg", allow_hyphen_values = true)]
    ferry_args: Vec<String>,

    /// Seconds each `throughput` run lasts.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,

    /// Exchanges in the sequential `latency` run (the 64-connection run does a quarter as many
    /// per connection; `connect` a quarter as many connections). Default 2000 on loopback,
    /// 400 on an impaired link.
    #[arg(long)]
    requests: Option<usize>,

    /// Connections in `many` and `idle`.
    #[arg(long, default_value_t = 3000)]
    connections: usize,

    /// How long `idle`'s connections stay quiet before memory is read and they echo again.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,

    /// Run only an echo backend on this address (the `idle` scenario's backend process).
    #[arg(long, hide = true)]
    echo_backend: Option<std::net::SocketAddr>,

    /// Stalled clients beside the busy ones in `slow-readers`, one run per count.
    #[arg(long, value_delimiter = ',', default_value = "50,1000")]
    stalled: Vec<usize>,

    /// Busy bulk connections in `slow-readers`.
    #[arg(long, default_value_t = 4)]
    busy: usize,

    /// Seconds the `udp` scenario's one-way flow sends (and its echo runs), per peer and link.
    #[arg(long, default_value_t = 4.0)]
    udp_seconds: f64,

    /// Bytes of each datagram in the `udp` scenario.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(udp::HEADER_BYTES as i64..=8000))]
    udp_size: u16,

    /// Milliseconds between two datagrams of the `udp` scenario's one-way flow.
    #[arg(long, default_value_t = 5.0)]
    udp_interval_ms: f64,

    /// Ferry's --udp-protect modes the `udp` scenario measures (comma-separated: none, dup,
    /// auto, fec), each beside plain UDP.
    #[arg(long, value_delimiter = ',', default_value = "none,dup,auto,fec")]
    udp_protect: Vec<udp::Protect>,

    /// Write the figures as JSON to this file, and with a loss sweep the chart as SVG next to
    /// it (same name, .svg).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    Throughput,
    Latency,
    Connect,
    Many,
    Compress,
    Idle,
    SlowReaders,
    Fairness,
    Rr,
    Pipelined,
    Udp,
}

fn progress(msg: &str) {
    eprintln!("ferry-bench: {msg}");
}

/// What one run needs to know about its link.
struct LinkRun<'a> {
    sites: Sites,
    /// The relay, whose counters give bytes on the link (none on loopback).
    net: Option<&'a NetLink>,
    rate_bps: Option<u64>,
}

/// Bytes that crossed the link both ways since `before`.
fn link_bytes(net: Option<&NetLink>, before: &Traffic) -> Option<u64> {
    Some(between_bytes(before, &net?.traffic()))
}

/// Bytes the link delivered, both ways, from `before` to `after`.
fn between_bytes(before: &Traffic, after: &Traffic) -> u64 {
    after.up.bytes_delivered - before.up.bytes_delivered + after.down.bytes_delivered
        - before.down.bytes_delivered
}

async fn measure(
    peer: Peer,
    args: &Args,
    scenarios: &[Scenario],
    settings: &Settings,
    certs: &std::path::Path,
    run: &LinkRun<'_>,
) -> Result<Option<Figures>, String> {
    let sites = &run.sites;
    let backend_port = sites.port();
    load::echo_backend(&sites.server, sites.backend_bind(backend_port))
        .await
        .map_err(|e| format!("cannot start the echo backend: {e}"))?;
    let Some(tunnel) = peers::start(peer, sites, backend_port, settings, certs).await? else {
        return Ok(None);
    };
    let mut f = Figures::default();
    f.notes.push(tunnel.describe.clone());
    if run.net.is_some() && peer == Peer::Tcp {
        f.notes.push(format!("congestion control {}", args.tcp_cc));
    }
    let client = &sites.client;
    let on_link = run.net.is_some();
    let requests = args.requests.unwrap_or(if on_link { 400 } else { 2000 });
    let pids = tunnel.pids();
    let cpu = || -> Vec<Duration> { pids.iter().map(|p| procfs::cpu_time(*p)).collect() };
    let seconds = Duration::from_secs_f64(args.seconds.clamp(0.5, 600.0));
    for scenario in scenarios {
        if let Some(net) = run.net {
            // Keepalives are seconds apart: 300 ms of silence means the last scenario is over.
            net.settle(Duration::from_millis(300), Duration::from_secs(20))
                .await;
        }
        match scenario {
            Scenario::Throughput => {
                progress(&format!("{}: throughput", peer.name()));
                let cpu0 = cpu();
                let (one, one_bytes) = load::bulk(client, tunnel.entry, 1, seconds).await?;
                let (eight, eight_bytes) = load::bulk(client, tunnel.entry, 8, seconds).await?;
                f.put("throughput 1 conn, MB/s each way", one);
                f.put("throughput 8 conns, MB/s each way", eight);
                if let Some(rate) = run.rate_bps {
                    let link_mbs = rate as f64 / 8e6;
                    f.put("throughput 1 conn, % of link", 100.0 * one / link_mbs);
                    f.put("throughput 8 conns, % of link", 100.0 * eight / link_mbs);
                }
                let gib = (one_bytes + eight_bytes) as f64 / (1u64 << 30) as f64;
                for (i, (after, before)) in cpu().into_iter().zip(cpu0).enumerate() {
                    let side = if i == 0 { "client side" } else { "server side" };
                    f.put(
                        &format!("CPU s per GiB each way, {side}"),
                        after.saturating_sub(before).as_secs_f64() / gib,
                    );
                }
            }
            Scenario::Latency => {
                progress(&format!("{}: latency", peer.name()));
                // What the exchanges cost on the link (every peer's headers, ACKs, repairs), in
                // all and for each phase: a lone message and many clients' messages sharing
                // packets and repairs cost differently.
                let payload = |exchanges: usize| exchanges as f64 * 2.0 * 1024.0;
                let before = run.net.map(|n| n.traffic());
                let mut seq = load::request_response(client, tunnel.entry, 1, requests).await?;
                for p in [50.0, 90.0, 99.0, 100.0] {
                    let name = format!("1 KB req/resp sequential, p{p} ms").replace("p100", "max");
                    f.put(&name, percentile_ms(&mut seq, p));
                }
                let between = run.net.map(|n| n.traffic());
                let mut conc =
                    load::request_response(client, tunnel.entry, 64, (requests / 4).max(1)).await?;
                for p in [50.0, 90.0, 99.0, 100.0] {
                    let name = format!("1 KB req/resp 64 conns, p{p} ms").replace("p100", "max");
                    f.put(&name, percentile_ms(&mut conc, p));
                }
                if let (Some(before), Some(between)) = (before, between) {
                    let wire = [
                        link_bytes(run.net, &before),
                        Some(between_bytes(&before, &between)),
                        link_bytes(run.net, &between),
                    ];
                    let phases = [
                        (
                            "1 KB req/resp, link bytes / payload",
                            seq.len() + conc.len(),
                        ),
                        ("1 KB req/resp sequential, link bytes / payload", seq.len()),
                        ("1 KB req/resp 64 conns, link bytes / payload", conc.len()),
                    ];
                    for ((name, exchanges), wire) in phases.into_iter().zip(wire) {
                        if let Some(wire) = wire {
                            f.put(name, wire as f64 / payload(exchanges));
                        }
                    }
                }
            }
            Scenario::Connect => {
                progress(&format!("{}: connect", peer.name()));
                let mut times =
                    load::connect_times(client, tunnel.entry, (requests / 4).max(1)).await?;
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
                    client,
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
            Scenario::Idle => {
                let idle = Duration::from_secs(args.idle_seconds);
                let n = args.connections;
                idle::scenario(peer, sites, settings, certs, n, idle, &mut f).await?;
            }
            Scenario::SlowReaders => {
                progress(&format!("{}: slow readers", peer.name()));
                let (stalled, busy) = (&args.stalled, args.busy);
                slow_readers::run(&mut f, client, tunnel.entry, &pids, stalled, busy, seconds)
                    .await?;
            }
            Scenario::Fairness => {
                progress(&format!("{}: fairness", peer.name()));
                fairness::run(&mut f, client, tunnel.entry, seconds).await?;
            }
            Scenario::Rr => {
                progress(&format!("{}: request/response, closed loop", peer.name()));
                rr::run_closed_loop(&mut f, client, tunnel.entry, &pids, seconds).await?;
            }
            Scenario::Pipelined => {
                progress(&format!("{}: request/response, pipelined", peer.name()));
                // A backend that answers 64-byte requests with 1 KB, and the same tunnel again
                // in front of it.
                let port = sites.port();
                rr::responder_backend(&sites.server, sites.backend_bind(port))
                    .await
                    .map_err(|e| format!("cannot start the responder backend: {e}"))?;
                let Some(answering) = peers::start(peer, sites, port, settings, certs).await?
                else {
                    continue;
                };
                rr::run_pipelined(&mut f, client, answering.entry, &answering.pids(), seconds)
                    .await?;
            }
            // Not a scenario of these peers: run on its own (see `run_link`).
            Scenario::Udp => {}
            Scenario::Compress => {
                let Some(net) = run.net else {
                    f.notes
                        .push("compress: needs --link (the link's relay counts the bytes)".into());
                    continue;
                };
                progress(&format!("{}: compress (RTB-like JSON)", peer.name()));
                let per_connection = (requests / 8).max(1);
                let (ratio, cpu) = rtb_figures(client, &tunnel, net, per_connection).await?;
                f.put("RTB JSON: link bytes / payload", ratio);
                if !pids.is_empty() {
                    f.put("RTB JSON: tunnel CPU us per MiB", cpu);
                }
                if matches!(peer, Peer::Ferry | Peer::FerryFecOff) {
                    // The same zstd level, with the dictionary, in a pair of its own.
                    let level = zstd_level(&settings.compress);
                    let dict = certs.join(RTB_DICTIONARY);
                    let with = Settings {
                        compress: format!("zstd:{level}:dict={}", dict.display()),
                        ..settings.clone()
                    };
                    progress(&format!("{}: compress, zstd:{level}+dict", peer.name()));
                    let Some(dicted) =
                        peers::start(peer, sites, backend_port, &with, certs).await?
                    else {
                        continue;
                    };
                    net.settle(Duration::from_millis(300), Duration::from_secs(20))
                        .await;
                    let (ratio, cpu) = rtb_figures(client, &dicted, net, per_connection).await?;
                    f.put(
                        &format!("RTB JSON, zstd:{level}+dict: link bytes / payload"),
                        ratio,
                    );
                    f.put(
                        &format!("RTB JSON, zstd:{level}+dict: tunnel CPU us per MiB"),
                        cpu,
                    );
                }
            }
        }
    }
    Ok(Some(f))
}

/// The compression dictionary the `compress` scenario gives Ferry, in the run's directory:
/// 64 KiB (`ferry-dict train`'s default) trained on 2,000 requests and responses of seeds other
/// than the measured connections', so it knows the format, not the messages.
const RTB_DICTIONARY: &str = "rtb.dict";

/// Trains [`RTB_DICTIONARY`] into `dir`.
fn write_rtb_dictionary(dir: &std::path::Path) -> Result<(), String> {
    use ferry_tunnel::compress::training::{train, Samples};
    let mut samples = Samples::new();
    for sample in rtb::training_samples(0xd1c7_5eed, 2000) {
        samples.push(&sample).map_err(|e| e.to_string())?;
    }
    let dict = train(&samples, 64 << 10).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(RTB_DICTIONARY), dict).map_err(|e| e.to_string())
}

/// The zstd level of a `--compress` value (3, zstd's default, for any other codec).
fn zstd_level(compress: &str) -> i32 {
    match compress.parse::<ferry_tunnel::compress::CompressFlag>() {
        Ok(flag) => match flag.codec {
            ferry_tunnel::compress::Codec::Zstd(level) => level,
            _ => 3,
        },
        Err(_) => 3,
    }
}

/// RTB-like JSON through `tunnel` on 64 connections: link bytes per payload byte, and the
/// tunnel's CPU (both processes) per MiB of payload.
async fn rtb_figures(
    client: &netns::Place,
    tunnel: &peers::Tunnel,
    net: &NetLink,
    per_connection: usize,
) -> Result<(f64, f64), String> {
    let pids = tunnel.pids();
    let cpu = || -> Duration { pids.iter().map(|p| procfs::cpu_time(*p)).sum() };
    let (before, cpu0) = (net.traffic(), cpu());
    let payload = load::rtb(client, tunnel.entry, 64, per_connection).await?;
    let wire = link_bytes(Some(net), &before).unwrap_or_default();
    let mib = payload as f64 / (1 << 20) as f64;
    Ok((
        wire as f64 / payload as f64,
        (cpu() - cpu0).as_micros() as f64 / mib,
    ))
}

/// Runs every peer on one link; `label` names the link in the table.
async fn run_peers(
    label: String,
    loss: Option<f64>,
    args: &Args,
    scenarios: &[Scenario],
    settings: &Settings,
    certs: &std::path::Path,
    link: &LinkRun<'_>,
) -> Run {
    let mut run = Run {
        label,
        loss,
        kind: RunKind::Streams,
        peers: Vec::new(),
        note: None,
    };
    for peer in &args.peers {
        let r = measure(*peer, args, scenarios, settings, certs, link).await;
        let outcome = match r {
            Ok(Some(f)) => Outcome::Measured(f),
            Ok(None) => Outcome::Skipped,
            Err(e) => {
                progress(&format!("{}: failed: {e}", peer.name()));
                Outcome::Failed(e)
            }
        };
        run.peers.push((peer.name(), outcome));
    }
    run.note = link.net.map(relay_note);
    run
}

/// What the link's relay counted so far.
fn relay_note(net: &NetLink) -> String {
    let t = net.traffic();
    format!(
        "link: {} packets offered, {} lost at random, {} dropped at the full queue",
        t.up.offered + t.down.offered,
        t.up.dropped_loss + t.down.dropped_loss,
        t.up.dropped_queue + t.down.dropped_queue,
    )
}

/// The runs of one link: the stream scenarios' peers, then the `udp` scenario's, if asked.
async fn run_link(
    label: String,
    loss: Option<f64>,
    args: &Args,
    scenarios: &[Scenario],
    settings: &Settings,
    certs: &std::path::Path,
    link: &LinkRun<'_>,
) -> Vec<Run> {
    let streams: Vec<Scenario> = scenarios
        .iter()
        .copied()
        .filter(|s| *s != Scenario::Udp)
        .collect();
    let mut runs = Vec::new();
    if !streams.is_empty() {
        runs.push(run_peers(label.clone(), loss, args, &streams, settings, certs, link).await);
    }
    if scenarios.contains(&Scenario::Udp) {
        let opts = udp_options(args);
        let mut run = udp::run(label, loss, &opts, settings, certs, link).await;
        run.note = link.net.map(relay_note);
        runs.push(run);
    }
    runs
}

/// The `udp` scenario's work, from the flags (Ferry's modes only if Ferry is a peer).
fn udp_options(args: &Args) -> udp::Options {
    let protect = if args.peers.contains(&Peer::Ferry) {
        args.udp_protect.clone()
    } else {
        Vec::new()
    };
    udp::Options {
        seconds: Duration::from_secs_f64(args.udp_seconds.clamp(0.2, 600.0)),
        size: usize::from(args.udp_size),
        interval: Duration::from_secs_f64(args.udp_interval_ms.clamp(0.05, 1000.0) / 1e3),
        protect,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(addr) = args.echo_backend {
        return idle::serve_echo(addr).await;
    }
    // Before any tunnel process starts: they inherit it (`idle` needs thousands of sockets).
    let fd_limit = idle::raise_fd_limit();
    if args
        .scenarios
        .iter()
        .flatten()
        .any(|s| *s == Scenario::Idle)
    {
        progress(&format!("open-files limit {fd_limit}"));
    }
    let on_link = args.link != "loopback";
    let profile = if on_link {
        match args.link.parse::<Profile>() {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("ferry-bench: error: --link: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    if !args.loss.is_empty() && profile.is_none() {
        eprintln!("ferry-bench: error: --loss sweeps an impaired link: give --link too");
        return ExitCode::from(2);
    }
    if let Some(bad) = args.loss.iter().find(|l| !(0.0..=100.0).contains(*l)) {
        eprintln!("ferry-bench: error: --loss {bad}: a percentage from 0 to 100");
        return ExitCode::from(2);
    }
    let scenarios = args.scenarios.clone().unwrap_or_else(|| {
        let mut s = vec![Scenario::Throughput, Scenario::Latency, Scenario::Connect];
        if !on_link {
            s.push(Scenario::Many);
        }
        s
    });
    let certs = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
    if let Err(e) = ferry_certs::generate(&ferry_certs::Options::default())
        .and_then(|set| set.write(&certs, true))
    {
        eprintln!("ferry-bench: error: cannot make certificates: {e}");
        return ExitCode::FAILURE;
    }
    if scenarios.contains(&Scenario::Compress) {
        if let Err(e) = write_rtb_dictionary(&certs) {
            eprintln!("ferry-bench: error: cannot train the RTB dictionary: {e}");
            return ExitCode::FAILURE;
        }
    }
    let settings = Settings {
        encrypt: args.encrypt,
        compress: args.compress.clone(),
        ferry_args: args.ferry_args.clone(),
    };
    let mut runs = Vec::new();
    match &profile {
        None => {
            let link = LinkRun {
                sites: Sites::host(),
                net: None,
                rate_bps: None,
            };
            let label = "loopback".to_string();
            runs = run_link(label, None, &args, &scenarios, &settings, &certs, &link).await;
        }
        Some(profile) => {
            let losses: Vec<Option<f64>> = if args.loss.is_empty() {
                vec![None]
            } else {
                args.loss.iter().map(|l| Some(l / 100.0)).collect()
            };
            for loss in losses {
                let profile = match loss {
                    Some(l) => profile.clone().with_loss(l),
                    None => profile.clone(),
                };
                progress(&format!("link: {}", profile.describe()));
                let net = match NetLink::up(&profile, &args.tcp_cc) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("ferry-bench: error: {e}");
                        let _ = std::fs::remove_dir_all(&certs);
                        return ExitCode::FAILURE;
                    }
                };
                let link = LinkRun {
                    sites: Sites::link(&net),
                    net: Some(&net),
                    rate_bps: profile.rate_bps(),
                };
                let loss = Some(profile.config.loss);
                let label = profile.describe();
                let these =
                    run_link(label, loss, &args, &scenarios, &settings, &certs, &link).await;
                for run in these.iter().filter(|r| r.kind == RunKind::Streams) {
                    report::print(run);
                }
                runs.extend(these);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&certs);
    let streams: Vec<&Run> = runs.iter().filter(|r| r.kind == RunKind::Streams).collect();
    if profile.is_some() && !streams.is_empty() {
        println!("\n(all runs)");
    }
    for run in &streams {
        report::print(run);
    }
    udp::print(&runs, &udp_options(&args));
    let mut status = ExitCode::SUCCESS;
    if let Some(path) = &args.json {
        let doc = report::json(&runs, &args.link, args.encrypt, &args.compress);
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("ferry-bench: error: cannot write {}: {e}", path.display());
            status = ExitCode::FAILURE;
        }
        // The chart is of the stream scenarios' sweep; the `udp` tables are not on it.
        if streams.len() > 1 {
            let svg_path = path.with_extension("svg");
            let rate = profile.as_ref().and_then(Profile::rate_bps);
            let title = format!(
                "ferry-bench: {} (loss swept)",
                profile
                    .as_ref()
                    .map(|p| p.clone().with_loss(0.0).describe())
                    .unwrap_or_default()
            )
            .replace(" loss 0%", "");
            let svg = chart::sweep(&streams, &title, rate);
            match std::fs::write(&svg_path, svg) {
                Ok(()) => progress(&format!("chart: {}", svg_path.display())),
                Err(e) => {
                    eprintln!(
                        "ferry-bench: error: cannot write {}: {e}",
                        svg_path.display()
                    );
                    status = ExitCode::FAILURE;
                }
            }
        }
    }
    if runs.iter().any(Run::failed) {
        ExitCode::FAILURE
    } else {
        status
    }
}
