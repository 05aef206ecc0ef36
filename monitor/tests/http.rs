//! The monitor over real HTTP on loopback: every endpoint, its content type and a real parse of
//! what it returns, readiness, the loopback rule, and clients that cannot stall it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_monitor::{BackendInfo, ConfigLoads, SessionInfo, Snapshot, Source, Totals};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A source whose counters the test moves.
#[derive(Default)]
struct Fake {
    ready: AtomicBool,
    streams: AtomicU64,
}

impl Source for Fake {
    fn snapshot(&self) -> Snapshot {
        let session = |rtt: f64, loss: f64| SessionInfo {
            peer: "127.0.0.1:40000".into(),
            rtt_seconds: rtt,
            loss_rate: loss,
            streams: 2,
            ..SessionInfo::default()
        };
        Snapshot {
            role: "ferry-gateway".into(),
            version: "test".into(),
            uptime_seconds: 12.5,
            ready: self.ready.load(Ordering::SeqCst),
            not_ready_reason: Some("no session".into()),
            totals: Totals {
                sessions_active: 3,
                streams_total: self.streams.load(Ordering::SeqCst),
                payload_bytes_out: 1000,
                wire_bytes_out: 300,
                rejected: vec![
                    ("allow-list".into(), 4),
                    ("limit".into(), 1),
                    ("auth".into(), 0),
                ],
                ..Totals::default()
            },
            sessions: vec![session(0.004, 0.0), session(0.03, 0.02), session(0.3, 0.15)],
            backends: vec![BackendInfo {
                service: "web".into(),
                address: "tcp://127.0.0.1:8080".into(),
                state: "UP".into(),
                active_streams: 5,
                latency_seconds: Some(0.001),
            }],
            history: Vec::new(),
            config: ConfigLoads {
                last_load_unix_seconds: 1_700_000_000.0,
                reloads_ok: 2,
                reloads_failed: 1,
                last_reload: Some("invalid value for --max-connections".into()),
            },
        }
    }
}

async fn start() -> (std::net::SocketAddr, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let listener = ferry_monitor::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ferry_monitor::serve(listener, fake.clone()));
    (addr, fake)
}

/// A minimal HTTP/1.1 GET with an `Accept` header; returns status, content type and body.
use ferry_test_support::http_get_accepting as get;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_with_its_content_type_and_parses() {
    let (addr, fake) = start().await;
    let (status, ct, body) = get(addr, "/health", "*/*").await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["uptime_seconds"], 12.5);

    // Not ready: 503 with a reason; ready: 200.
    let (status, _, body) = get(addr, "/ready", "*/*").await;
    assert_eq!(status, 503, "{body}");
    fake.ready.store(true, Ordering::SeqCst);
    assert_eq!(get(addr, "/ready", "*/*").await.0, 200);

    let (status, ct, body) = get(addr, "/metrics", "*/*").await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| s.value.clone())
            .unwrap_or_else(|| panic!("{name} missing in\n{body}"))
    };
    // OpenMetrics names a counter's family without `_total` and its sample with it; the
    // parser then reads the sample as untyped. The number is what matters.
    let number = |v: prometheus_parse::Value| match v {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        other => panic!("not a number: {other:?}"),
    };
    assert!(
        matches!(value("ferry_sessions_active", None), prometheus_parse::Value::Gauge(v) if v == 3.0)
    );
    let rejected = value(
        "ferry_connections_rejected_total",
        Some(("reason", "allow-list")),
    );
    assert_eq!(number(rejected), 4.0);
    match value("ferry_session_rtt_seconds_active", None) {
        prometheus_parse::Value::Histogram(buckets) => {
            let le = |b: f64| buckets.iter().find(|c| c.less_than == b).unwrap().count;
            assert_eq!((le(0.005), le(0.05), le(0.5)), (1.0, 2.0, 3.0));
        }
        other => panic!("rtt histogram: {other:?}"),
    }
    let streams = value(
        "ferry_backend_active_streams",
        Some(("address", "tcp://127.0.0.1:8080")),
    );
    assert_eq!(number(streams), 5.0);
    let reloads = |result| {
        number(value(
            "ferry_config_reloads_total",
            Some(("result", result)),
        ))
    };
    assert_eq!((reloads("ok"), reloads("failed")), (2.0, 1.0));
    assert_eq!(
        number(value("ferry_config_last_reload_timestamp_seconds", None)),
        1_700_000_000.0
    );

    for path in ["/stats", "/connections", "/stats-history"] {
        let (status, ct, body) = get(addr, path, "text/html").await;
        assert_eq!(
            (status, ct.as_str()),
            (200, "text/html; charset=utf-8"),
            "{path}"
        );
        assert!(
            body.starts_with("<!doctype html>") && body.ends_with("</html>"),
            "{path}"
        );
        let (status, ct, body) = get(addr, &format!("{path}?format=json"), "*/*").await;
        assert_eq!((status, ct.as_str()), (200, "application/json"), "{path}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap();
        // The Accept header chooses JSON too.
        let (_, ct, _) = get(addr, path, "application/json").await;
        assert_eq!(ct, "application/json", "{path}");
    }
    let (_, _, body) = get(addr, "/stats?format=json", "*/*").await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rtt = stats["rtt_distribution_active"].as_array().unwrap();
    assert_eq!(
        rtt.iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );

    // Counters move with the source.
    fake.streams.store(41, Ordering::SeqCst);
    let (_, _, body) = get(addr, "/stats?format=json", "*/*").await;
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["totals"]["streams_total"], 41);

    let (status, ct, body) = get(addr, "/", "text/html").await;
    assert_eq!((status, ct.as_str()), (200, "text/html; charset=utf-8"));
    assert!(body.contains("/stats?format=json") && body.contains("id=\"rtt\""));
    assert_eq!(get(addr, "/nope", "*/*").await.0, 404);
}

#[test]
fn the_monitor_stays_on_loopback_unless_asked() {
    assert!(ferry_monitor::check_address("127.0.0.1:10000".parse().unwrap(), false).is_ok());
    assert!(ferry_monitor::check_address("[::1]:10000".parse().unwrap(), false).is_ok());
    let e = ferry_monitor::check_address("0.0.0.0:10000".parse().unwrap(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--monitor-public"), "{e}");
    assert!(ferry_monitor::check_address("0.0.0.0:10000".parse().unwrap(), true).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_do_not_stall_the_monitor() {
    let (addr, _) = start().await;
    // Twenty clients that connect and send half a request, then nothing.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost:")
            .await
            .unwrap();
        idle.push(s);
    }
    // Others are still served at once.
    for _ in 0..10 {
        let started = std::time::Instant::now();
        let (status, _, _) = get(addr, "/health", "*/*").await;
        assert_eq!(status, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    // And the slow ones are cut off by the header timeout rather than kept forever.
    let mut s = idle.pop().unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a stalled client is disconnected");
}

/// A source that counts how often it is read.
#[derive(Default)]
struct Counted {
    reads: AtomicU64,
}

impl Source for Counted {
    fn snapshot(&self) -> Snapshot {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Snapshot::default()
    }
}

#[tokio::test(start_paused = true)]
async fn the_throughput_sampler_stops_with_the_monitor() {
    let source = Arc::new(Counted::default());
    let listener = ferry_monitor::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let monitor = tokio::spawn(ferry_monitor::serve(listener, source.clone()));
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let sampled = source.reads.load(Ordering::SeqCst);
    assert!(sampled >= 3, "sampled {sampled} times in 3.5 s");
    monitor.abort();
    assert!(monitor.await.unwrap_err().is_cancelled());
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(source.reads.load(Ordering::SeqCst), sampled);
}
