//! End to end: the monitors of the real binaries, read over HTTP while traffic flows.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::net::TcpStream;

/// The processes and addresses of a monitored pair.
struct Pair {
    gateway: Proc,
    agent: Proc,
    backend: SocketAddr,
    listen: SocketAddr,
    gw_monitor: SocketAddr,
    agent_monitor: SocketAddr,
}

/// A gateway before an echo backend and an agent, each serving its monitor on a free port;
/// `gw_extra` and `agent_extra` are more flags for each.
async fn monitored_pair(gw_extra: &[&str], agent_extra: &[&str]) -> Pair {
    let (backend, _) = echo_backend().await;
    let gw_monitor: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent_monitor: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (gw_mon, agent_mon) = (gw_monitor.to_string(), agent_monitor.to_string());
    let backend_arg = format!("tcp://{backend}");
    let gw_args = [
        &["--backend", backend_arg.as_str(), "--monitor", &gw_mon][..],
        gw_extra,
    ]
    .concat();
    let (gateway, gw_addr) = gateway(&gw_args);
    let agent_args = [&["--monitor", agent_mon.as_str()][..], agent_extra].concat();
    let (agent, listen) = agent(gw_addr, &agent_args).await;
    Pair {
        gateway,
        agent,
        backend,
        listen,
        gw_monitor,
        agent_monitor,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_monitors_show_sessions_streams_and_bytes_as_traffic_flows() {
    let pair = monitored_pair(&[], &[]).await;
    let (listen, gw_monitor, agent_monitor) = (pair.listen, pair.gw_monitor, pair.agent_monitor);
    let backend = pair.backend;
    ready(listen).await;

    let (status, ct, body) = http_get(agent_monitor, "/ready").await;
    assert_eq!((status, ct.as_str()), (200, "application/json"), "{body}");
    let (_, _, before) = http_get(gw_monitor, "/metrics").await;
    let streams_before = metric(&before, "ferry_streams_total", None);

    for i in 0..10u64 {
        let s = TcpStream::connect(listen).await.unwrap();
        let data = payload(i, 100_000);
        assert_eq!(round_trip(s, data.clone()).await.unwrap(), data);
    }
    // The exchanges are over; wait until the gateway has counted every stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, _, body) = http_get(gw_monitor, "/metrics").await;
        if metric(&body, "ferry_streams_total", None) >= streams_before + 10.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "streams never counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for (who, addr) in [("gateway", gw_monitor), ("agent", agent_monitor)] {
        let (status, ct, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "{who}");
        assert!(
            ct.starts_with("application/openmetrics-text"),
            "{who}: {ct}"
        );
        assert_eq!(metric(&body, "ferry_sessions_active", None), 1.0, "{who}");
        assert!(
            metric(&body, "ferry_payload_sent_bytes_total", None) >= 1_000_000.0,
            "{who}"
        );
        assert!(
            metric(&body, "ferry_wire_sent_bytes_total", None) >= 1_000_000.0,
            "{who}"
        );
        assert!(metric(&body, "ferry_streams_total", None) >= 10.0, "{who}");
        let (status, ct, body) = http_get(addr, "/connections?format=json").await;
        assert_eq!((status, ct.as_str()), (200, "application/json"), "{who}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["sessions"].as_array().unwrap().len(), 1, "{who}: {doc}");
        assert!(
            doc["sessions"][0]["rtt_seconds"].as_f64().unwrap() > 0.0,
            "{who}"
        );
        let (status, ct, _) = http_get(addr, "/").await;
        assert_eq!(
            (status, ct.as_str()),
            (200, "text/html; charset=utf-8"),
            "{who}"
        );
    }
    let (_, _, after) = http_get(gw_monitor, "/metrics").await;
    assert!(metric(&after, "ferry_streams_total", None) >= streams_before + 10.0);
    let backend_label = format!("tcp://{backend}");
    assert_eq!(
        metric(
            &after,
            "ferry_backend_up",
            Some(("address", &backend_label))
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_counted_by_reason_and_closed_sessions_kept() {
    // The agent admits clients only from 10.0.0.0/8: loopback is refused.
    let pair = monitored_pair(&["--idle-timeout", "2s"], &["--allow-ip", "10.0.0.0/8"]).await;
    let (listen, gw_monitor, agent_monitor) = (pair.listen, pair.gw_monitor, pair.agent_monitor);
    expect_reset(listen, "a client outside the allow-list").await;
    // (The helper's own readiness probes were refused too, so at least one.)
    let (_, _, body) = http_get(agent_monitor, "/metrics").await;
    let refused = metric(
        &body,
        "ferry_connections_rejected_total",
        Some(("reason", "allow-list")),
    );
    assert!(refused >= 1.0, "{refused}");
    assert_eq!(
        metric(
            &body,
            "ferry_connections_rejected_total",
            Some(("reason", "limit"))
        ),
        0.0
    );
    // The agent goes away: the gateway's history keeps the closed session and why. (Its
    // session is up first: every client so far was refused before one was needed.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = http_get(gw_monitor, "/metrics").await;
        if metric(&body, "ferry_sessions_active", None) >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no session came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _gateway = pair.gateway;
    drop(pair.agent);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (_, _, body) = http_get(gw_monitor, "/stats-history?format=json").await;
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        if let Some(first) = doc["closed"].as_array().and_then(|a| a.first()) {
            assert!(
                first["reason"].as_str().unwrap().contains("idle timeout"),
                "{doc}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no closed session in {doc}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn a_non_loopback_monitor_needs_to_be_asked_for() {
    let port = free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry-gateway"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "tcp://127.0.0.1:1",
            "--crypto",
            "none",
            "--monitor",
            &format!("0.0.0.0:{port}"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--monitor-public"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
