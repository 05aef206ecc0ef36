//! Forward error correction through the real binaries on loopback, across the tests' lossy
//! relay: lost packets are rebuilt from repair packets (both monitors count them) and every
//! byte arrives; an end started with `--fec off` gets no repairs and sends none; a malformed
//! `--fec` is refused with the syntax.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

async fn metrics(monitor: SocketAddr) -> String {
    http_get(monitor, "/metrics").await.2
}

fn monitor_address() -> SocketAddr {
    format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap()
}

/// A pair across a relay losing `loss` of datagrams each way, 10 ms each way; the monitors
/// and the agent's listener. Keep the processes.
async fn lossy_pair(
    loss: f64,
    agent_fec: &str,
) -> (SocketAddr, SocketAddr, SocketAddr, (Proc, Proc)) {
    let (backend, _) = echo_backend().await;
    let gateway_monitor = monitor_address();
    let (gateway, gateway_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--monitor",
        &gateway_monitor.to_string(),
    ]);
    let link = Impairment {
        loss,
        delay: Duration::from_millis(10),
        seed: 18,
        ..Default::default()
    };
    let (relay, _) = impairment_relay(gateway_addr, link).await;
    let agent_monitor = monitor_address();
    let (agent, listen) = agent(
        relay,
        &["--monitor", &agent_monitor.to_string(), "--fec", agent_fec],
    )
    .await;
    ready(listen).await;
    (listen, agent_monitor, gateway_monitor, (gateway, agent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_packets_are_rebuilt_from_repairs_and_every_byte_arrives() {
    let (listen, agent_monitor, gateway_monitor, _procs) = lossy_pair(0.10, "auto").await;
    let mut rebuilt = 0.0;
    for round in 0..200 {
        // Small exchanges on a few connections at once: interactive traffic, which `auto`
        // protects once the path's loss is measured.
        echo_concurrently(listen, 4, 3000, 100 + round * 4).await;
        let (a, g) = (metrics(agent_monitor).await, metrics(gateway_monitor).await);
        rebuilt = metric(&a, "ferry_fec_packets_recovered_total", None)
            + metric(&g, "ferry_fec_packets_recovered_total", None);
        let repairs = [&a, &g].map(|m| metric(m, "ferry_fec_repair_packets_sent_total", None));
        if rebuilt >= 10.0 && repairs.iter().all(|r| *r > 0.0) {
            let overhead = metric(&a, "ferry_fec_overhead_ratio", None);
            assert!(
                overhead > 0.0 && overhead < 5.0,
                "overhead ratio {overhead}"
            );
            return;
        }
    }
    panic!("after 200 rounds at 10% loss only {rebuilt} packets were rebuilt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_with_fec_off_gets_no_repairs_and_sends_none() {
    let (listen, agent_monitor, gateway_monitor, _procs) = lossy_pair(0.10, "off").await;
    for round in 0..20 {
        echo_concurrently(listen, 4, 3000, 500 + round * 4).await;
    }
    for monitor in [agent_monitor, gateway_monitor] {
        let m = metrics(monitor).await;
        assert_eq!(metric(&m, "ferry_fec_repair_packets_sent_total", None), 0.0);
        assert_eq!(
            metric(&m, "ferry_fec_repair_packets_received_total", None),
            0.0
        );
    }
}

#[test]
fn a_malformed_fec_mode_is_refused_with_the_syntax() {
    for (bin, bad) in [
        (env!("CARGO_BIN_EXE_ferry-agent"), "4/4"),
        (env!("CARGO_BIN_EXE_ferry-gateway"), "always"),
    ] {
        let out = Command::new(bin)
            .args(["--fec", bad])
            .output()
            .expect("binary runs");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--fec") && (err.contains("K/N") || err.contains("repair")),
            "{bin} --fec {bad}: {err}"
        );
    }
}
