//! The monitor's dashboard in a real browser: headless Chromium loads `/` from a running
//! gateway, runs its script, and the test checks what it rendered (the histograms' bars, a
//! counter that grows with traffic, the last minutes' charts with a burst of traffic in them). Needs Chromium (`.ci/run` installs Debian's `chromium`);
//! without it the test fails, or with `FERRY_ALLOW_SKIP=chromium` passes as skipped, saying so.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use tokio::net::TcpStream;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
}

/// Loads `url` headless, lets its script run, returns the resulting DOM.
fn rendered_dom(browser: &PathBuf, url: &str) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=3000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number the dashboard shows for streams opened.
fn streams_total(dom: &str) -> u64 {
    let marker = "id=\"streams-total\">";
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no streams counter rendered in:\n{dom}"));
    dom[at + marker.len()..]
        .split('<')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable counter in:\n{dom}"))
}

/// The largest value the history chart drew for `key`, if it drew that series.
fn chart_max(dom: &str, key: &str) -> Option<f64> {
    let marker = format!("data-key=\"{key}\" data-max=\"");
    let at = dom.find(&marker)?;
    dom[at + marker.len()..].split('"').next()?.parse().ok()
}

async fn traffic(listen: SocketAddr, connections: u64) {
    for i in 0..connections {
        let s = TcpStream::connect(listen).await.unwrap();
        let data = payload(i, 50_000);
        assert_eq!(round_trip(s, data.clone()).await.unwrap(), data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_histograms_and_live_counters_in_a_browser() {
    let Some(browser) = chromium() else {
        return ferry_test_support::skip(
            "chromium",
            "Chromium is not installed (apt-get install chromium)",
        );
    };
    let (backend, _) = echo_backend().await;
    let monitor: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_gw, gw_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--monitor",
        &monitor.to_string(),
    ]);
    let (_agent, listen) = agent(gw_addr, &[]).await;
    ready(listen).await;
    traffic(listen, 5).await;
    let url = format!("http://{monitor}/");

    let first = {
        let (browser, url) = (browser.clone(), url.clone());
        tokio::task::spawn_blocking(move || rendered_dom(&browser, &url))
            .await
            .unwrap()
    };
    // Both histograms drew their bars (one per bucket, +Inf included: 11 and 9).
    // (Counted as drawn: a number follows the attribute, unlike in the script's own source.)
    let bars = first
        .split("<rect class=\"bar\" data-count=\"")
        .skip(1)
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(bars, 11 + 9, "histogram bars in:\n{first}");
    // The one live session sits in exactly one RTT bucket.
    assert!(first.contains("data-count=\"1\""), "{first}");
    // The configuration's cards: loaded at start-up (a time, not "-"), no reload yet.
    assert!(
        first.contains("id=\"config-loaded\">") && !first.contains("id=\"config-loaded\">-<"),
        "{first}"
    );
    assert!(
        first.contains("id=\"config-last-reload\" title=\"\">none<"),
        "{first}"
    );
    let before = streams_total(&first);
    assert!(before >= 5, "{before}");

    traffic(listen, 7).await;
    let second = {
        let (browser, url) = (browser.clone(), url.clone());
        tokio::task::spawn_blocking(move || rendered_dom(&browser, &url))
            .await
            .unwrap()
    };
    let after = streams_total(&second);
    assert!(after >= before + 7, "streams {before} -> {after}");

    // A screenshot under load, for the record (copied to docs/ by hand when it changes).
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("monitor-dashboard.png");
    // Load: 8 clients moving data until the screenshot is taken, which waits until the
    // monitor (sampling once a second) reports throughput, so the picture shows some.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    traffic(listen, 1).await;
                }
            })
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, body) = http_get(monitor, "/stats?format=json").await;
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
        if stats["payload_bytes_per_second"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no throughput reported under load: {stats}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The burst is in the last minutes' history (a chart needs two points to draw a line:
    // the sampler takes one a second), and its chart drew it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, body) = http_get(monitor, "/history").await;
        let history: serde_json::Value = serde_json::from_str(&body).unwrap();
        let points = history["fine"]["points"].as_array().unwrap();
        let busy = points
            .iter()
            .any(|p| p["bytes_out_per_second"].as_f64().unwrap_or(0.0) > 0.0);
        if busy && points.len() >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no burst in the history: {history}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let charted = {
        let (browser, url) = (browser.clone(), url.clone());
        tokio::task::spawn_blocking(move || rendered_dom(&browser, &url))
            .await
            .unwrap()
    };
    for key in [
        "bytes_out_per_second",
        "rtt_p50_ms",
        "sessions",
        "loss_rate",
    ] {
        let max =
            chart_max(&charted, key).unwrap_or_else(|| panic!("no {key} chart in:\n{charted}"));
        if key != "loss_rate" {
            assert!(max > 0.0, "{key}: the chart drew nothing above zero");
        }
    }
    let status = {
        let (browser, url, shot) = (browser.clone(), url.clone(), shot.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(browser)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--window-size=1280,1180",
                    "--virtual-time-budget=3000",
                ])
                .arg(format!("--screenshot={}", shot.display()))
                .arg(&url)
                .output()
                .expect("chromium runs")
        })
        .await
        .unwrap()
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("dashboard screenshot: {}", shot.display());
}
