//! `ferry-bench` end to end, tiny: every scenario against direct TCP and Ferry, and the JSON it
//! writes holds sane figures.

use std::process::Command;

#[test]
fn ferry_bench_runs_every_scenario_and_writes_sane_json() {
    let dir = std::env::temp_dir().join(format!("ferry-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-bench"))
        .args([
            "--peers",
            "tcp,ferry",
            "--encrypt",
            "--mib",
            "2",
            "--requests",
            "40",
            "--connections",
            "50",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(x): ratio to direct TCP"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ferry = &doc["peers"]["ferry"];
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
    assert!(ferry["settings"][0]
        .as_str()
        .unwrap()
        .contains("crypto tls"));
    let _ = std::fs::remove_dir_all(&dir);
}
