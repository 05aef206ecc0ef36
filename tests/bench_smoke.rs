//! `ferry-bench` end to end, tiny: every scenario against direct TCP and Ferry on loopback, and
//! a loss sweep on the impaired link (namespaces, TUN devices and the relay; root only), and the
//! JSON and chart it writes hold sane figures; the same for the `udp` scenario's own peers.

use std::path::Path;
use std::process::Command;

/// Runs `ferry-bench` with `args` and `--json json`, checks that it succeeded, and returns its
/// standard output and the JSON it wrote.
fn run_bench(args: &[&str], json: &Path) -> (String, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-bench"))
        .args(args)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (stdout, doc)
}

#[test]
fn ferry_bench_runs_every_scenario_and_writes_sane_json() {
    let dir = std::env::temp_dir().join(format!("ferry-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let (stdout, doc) = run_bench(
        &[
            "--peers",
            "tcp,ferry",
            "--encrypt",
            "--seconds",
            "1",
            "--requests",
            "40",
            "--connections",
            "50",
        ],
        &json,
    );
    assert!(stdout.contains("(x): ratio to direct TCP"), "{stdout}");
    let ferry = &doc["runs"][0]["peers"]["ferry"];
    assert_eq!(ferry["status"], "ok", "{doc}");
    let figures = &ferry["figures"];
    let get = |k: &str| {
        figures[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in {figures}"))
    };
    assert!(get("throughput 1 conn, MB/s each way") > 1.0);
    assert!(get("1 KB req/resp sequential, p99 ms") > 0.0);
    assert_eq!(get("50 conns: success %"), 100.0);
    assert!(get("peak RSS MiB, server side") > 1.0);
    for side in ["client", "server"] {
        assert!(get(&format!("CPU s per GiB each way, {side} side")) > 0.0);
    }
    assert!(ferry["settings"][0]
        .as_str()
        .unwrap()
        .contains("crypto tls"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether this process may build network namespaces and TUN devices.
fn can_build_links() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::path::Path::new("/dev/net/tun").exists()
}

#[test]
fn ferry_bench_sweeps_loss_on_the_impaired_link() {
    if !can_build_links() {
        return ferry_test_support::skip("root", "the impaired link needs root and /dev/net/tun");
    }
    let dir = std::env::temp_dir().join(format!("ferry-bench-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("sweep.json");
    let (_, doc) = run_bench(
        &[
            "--link",
            "delay=5ms,rate=20mbit,seed=3",
            "--loss",
            "0,10",
            "--peers",
            "tcp,ferry",
            "--scenarios",
            "throughput,latency,compress",
            "--compress",
            "zstd:3",
            "--seconds",
            "1",
            "--requests",
            "40",
        ],
        &json,
    );
    let runs = doc["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{doc}");
    assert_eq!(runs[1]["loss"], 0.1);
    for run in runs {
        for peer in ["tcp", "ferry"] {
            let p = &run["peers"][peer];
            assert_eq!(p["status"], "ok", "{peer}: {run}");
            let get = |k: &str| {
                p["figures"][k]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{k}: {p}"))
            };
            // Everything crossed the link: a round trip costs at least its two 5 ms delays,
            // and no peer moves more than the 20 Mbit/s (2.5 MB/s) it allows.
            assert!(
                get("1 KB req/resp sequential, p50 ms") >= 10.0,
                "{peer}: {p}"
            );
            let mbs = get("throughput 8 conns, MB/s each way");
            assert!(mbs > 0.05 && mbs <= 2.5, "{peer}: {mbs} MB/s");
        }
    }
    // The relay really dropped packets at 10% (and none at random at 0%).
    let relay = |i: usize| runs[i]["relay"].as_str().unwrap_or_default().to_owned();
    assert!(relay(0).contains(" 0 lost at random"), "{}", relay(0));
    assert!(!relay(1).contains(" 0 lost at random"), "{}", relay(1));
    // Compression shrinks JSON on the link for Ferry (zstd), not for direct TCP.
    let ratio = |peer: &str| {
        runs[0]["peers"][peer]["figures"]["RTB JSON: link bytes / payload"]
            .as_f64()
            .unwrap()
    };
    assert!(ratio("ferry") < 0.5, "ferry {}", ratio("ferry"));
    assert!(ratio("tcp") > 1.0, "tcp {}", ratio("tcp"));
    // With the dictionary trained on other seeds' traffic, Ferry's short connections (five
    // messages each here) shrink further.
    let dict = runs[0]["peers"]["ferry"]["figures"]["RTB JSON, zstd:3+dict: link bytes / payload"]
        .as_f64()
        .expect("the dictionary's row");
    assert!(
        dict < ratio("ferry"),
        "with the dictionary {dict}, without {}",
        ratio("ferry")
    );
    let svg = std::fs::read_to_string(json.with_extension("svg")).expect("chart written");
    assert!(svg.starts_with("<svg") && svg.contains("ferry") && svg.contains("10%"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The figures of `peer` in a run of the JSON, which must have measured it.
fn udp_figures<'a>(run: &'a serde_json::Value, peer: &str) -> &'a serde_json::Value {
    let p = &run["peers"][peer];
    assert_eq!(p["status"], "ok", "{peer}: {run}");
    &p["figures"]
}

fn figure(figures: &serde_json::Value, k: &str) -> f64 {
    figures[k]
        .as_f64()
        .unwrap_or_else(|| panic!("{k} in {figures}"))
}

#[test]
fn ferry_bench_carries_udp_flows_on_loopback() {
    let dir = std::env::temp_dir().join(format!("ferry-bench-udp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("udp.json");
    let (stdout, doc) = run_bench(
        &[
            "--scenarios",
            "udp",
            "--peers",
            "ferry",
            "--udp-protect",
            "none,dup",
            "--udp-seconds",
            "0.5",
        ],
        &json,
    );
    assert!(stdout.contains("UDP echo on loopback"), "{stdout}");
    let run = &doc["runs"][0];
    assert_eq!(run["kind"], "udp", "{doc}");
    for peer in ["udp", "ferry-none", "ferry-dup"] {
        let f = udp_figures(run, peer);
        assert_eq!(figure(f, "datagrams sent"), 100.0, "{peer}: {f}");
        // Loopback loses nothing, and each datagram arrives once (the bench fails otherwise).
        assert!(figure(f, "delivered %") >= 99.0, "{peer}: {f}");
        assert_eq!(figure(f, "duplicates delivered"), 0.0, "{peer}: {f}");
        assert!(figure(f, "one-way p99 ms") < 100.0, "{peer}: {f}");
        assert!(
            figure(f, "echo, datagrams/s each way") > 100.0,
            "{peer}: {f}"
        );
        // Loopback loses nothing: every new flow's first datagram arrives, through Ferry too
        // (its gateway once dropped them, sending on a backend socket tokio had not yet seen
        // writable).
        assert_eq!(
            figure(f, "new flows: first datagram delivered %"),
            100.0,
            "{peer}: {f}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ferry_bench_protects_udp_flows_on_the_impaired_link() {
    if !can_build_links() {
        return ferry_test_support::skip("root", "the impaired link needs root and /dev/net/tun");
    }
    let dir = std::env::temp_dir().join(format!("ferry-bench-udp-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("udp.json");
    let (_, doc) = run_bench(
        &[
            "--link",
            "delay=5ms,seed=3",
            "--loss",
            "10",
            "--scenarios",
            "udp",
            "--peers",
            "ferry",
            "--udp-protect",
            "none,dup",
            "--udp-seconds",
            "1",
        ],
        &json,
    );
    let run = &doc["runs"][0];
    assert_eq!(run["loss"], 0.1, "{doc}");
    let (udp, none, dup) = (
        udp_figures(run, "udp"),
        udp_figures(run, "ferry-none"),
        udp_figures(run, "ferry-dup"),
    );
    for f in [udp, none, dup] {
        // Everything crossed the link's 5 ms.
        assert!(figure(f, "one-way p50 ms") >= 5.0, "{f}");
    }
    // Plain UDP pays its 28 bytes of headers on 200, nothing more.
    let udp_wire = figure(udp, "wire bytes / payload byte");
    assert!((1.13..1.16).contains(&udp_wire), "{udp}");
    // Two copies: about twice the bytes, and most of what one copy loses at 10% arrives.
    assert!(
        figure(dup, "wire bytes / payload byte") > figure(none, "wire bytes / payload byte") + 0.8,
        "{none} {dup}"
    );
    assert!(figure(dup, "delivered %") >= 95.0, "{dup}");
    assert!(
        figure(dup, "delivered %") > figure(none, "delivered %"),
        "{none} {dup}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
