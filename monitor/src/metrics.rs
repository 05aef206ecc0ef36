//! `/metrics`: a [`Snapshot`] in the Prometheus (OpenMetrics) text format, encoded by the
//! `prometheus-client` crate.
//!
//! Counters and gauges are read from the snapshot at scrape time through a collector, rather
//! than kept as live metric objects the data path would have to update. The two distributions of
//! active sessions (RTT Proxy's `rttp_rtt_distribution_active` and
//! `rttp_loss_rate_distribution_active`, here `ferry_session_rtt_seconds_active` and
//! `ferry_session_loss_rate_active`) are histograms recomputed from the live sessions at each
//! scrape: they describe the sessions open now, not every sample ever taken.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::snapshot::{BackendInfo, Snapshot};

/// Bucket upper bounds of the RTT histogram, seconds.
pub const RTT_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0];
/// Bucket upper bounds of the loss-rate histogram (fraction of packets).
pub const LOSS_BUCKETS: [f64; 8] = [0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2];

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> fmt::Result {
    e.encode_descriptor(name, help, unit, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// How many of `values` fall in each bucket of `bounds` (plus +Inf): each value counts once,
/// in the first bucket whose upper bound it does not exceed. Also their sum. (The encoder makes
/// the counts cumulative, as the exposition format wants.)
pub fn buckets(values: &[f64], bounds: &[f64]) -> (f64, Vec<(f64, u64)>) {
    let mut out: Vec<(f64, u64)> = bounds
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .map(|b| (b, 0))
        .collect();
    for v in values {
        if let Some(slot) = out.iter_mut().find(|(b, _)| *v <= *b) {
            slot.1 += 1;
        }
    }
    (values.iter().sum(), out)
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: &[f64],
    bounds: &[f64],
) -> fmt::Result {
    let (sum, b) = buckets(values, bounds);
    e.encode_descriptor(name, help, unit, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, values.len() as u64, &b, None)
}

/// A gauge with one sample per backend, labelled by service and address.
fn backend_gauge(
    e: &mut DescriptorEncoder,
    backends: &[BackendInfo],
    name: &str,
    help: &str,
    value: impl Fn(&BackendInfo) -> u64,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for b in backends {
        let labels = [
            ("service", b.service.as_str()),
            ("address", b.address.as_str()),
        ];
        m.encode_family(&labels)?.encode_gauge(&value(b))?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let t = &s.totals;
        let bytes = Unit::Bytes;
        gauge(&mut e, "ferry_up", "1 while the process runs", 1.0)?;
        gauge(
            &mut e,
            "ferry_ready",
            "1 when ready to carry traffic",
            f64::from(u8::from(s.ready)),
        )?;
        gauge(
            &mut e,
            "ferry_uptime_seconds",
            "Seconds since start",
            s.uptime_seconds,
        )?;
        gauge(
            &mut e,
            "ferry_sessions_active",
            "Sessions open now",
            t.sessions_active as f64,
        )?;
        counter(
            &mut e,
            "ferry_sessions",
            "Sessions established",
            None,
            t.sessions_total,
        )?;
        gauge(
            &mut e,
            "ferry_streams_active",
            "Streams open now",
            t.streams_active as f64,
        )?;
        counter(
            &mut e,
            "ferry_streams",
            "Streams opened",
            None,
            t.streams_total,
        )?;
        counter(
            &mut e,
            "ferry_payload_sent",
            "Payload bytes into the tunnel, before compression",
            Some(&bytes),
            t.payload_bytes_out,
        )?;
        counter(
            &mut e,
            "ferry_payload_received",
            "Payload bytes out of the tunnel, after decompression",
            Some(&bytes),
            t.payload_bytes_in,
        )?;
        counter(
            &mut e,
            "ferry_stream_sent",
            "Stream bytes sent: payload after compression",
            Some(&bytes),
            t.stream_bytes_out,
        )?;
        counter(
            &mut e,
            "ferry_stream_received",
            "Stream bytes received, before decompression",
            Some(&bytes),
            t.stream_bytes_in,
        )?;
        counter(
            &mut e,
            "ferry_wire_sent",
            "UDP payload bytes sent",
            Some(&bytes),
            t.wire_bytes_out,
        )?;
        counter(
            &mut e,
            "ferry_wire_received",
            "UDP payload bytes received",
            Some(&bytes),
            t.wire_bytes_in,
        )?;
        counter(
            &mut e,
            "ferry_packets_sent",
            "Datagrams sent",
            None,
            t.packets_sent,
        )?;
        counter(
            &mut e,
            "ferry_packets_lost",
            "Packets declared lost",
            None,
            t.packets_lost,
        )?;
        counter(
            &mut e,
            "ferry_retransmitted",
            "Stream bytes sent again",
            Some(&bytes),
            t.retransmitted_bytes,
        )?;
        let fec = &t.fec;
        counter(
            &mut e,
            "ferry_fec_repair_packets_sent",
            "Forward error correction repair packets sent",
            None,
            fec.repair_packets_sent,
        )?;
        counter(
            &mut e,
            "ferry_fec_repair_sent",
            "UDP payload bytes of repair packets sent",
            Some(&bytes),
            fec.repair_bytes_sent,
        )?;
        counter(
            &mut e,
            "ferry_fec_repair_packets_received",
            "Forward error correction repair packets received",
            None,
            fec.repair_packets_received,
        )?;
        counter(
            &mut e,
            "ferry_fec_packets_recovered",
            "Lost packets of the peer rebuilt from repair packets, without a retransmission",
            None,
            fec.packets_recovered,
        )?;
        gauge(
            &mut e,
            "ferry_fec_overhead_ratio",
            "Repair bytes over all UDP payload bytes sent, since start",
            fec.repair_bytes_sent as f64 / t.wire_bytes_out.max(1) as f64,
        )?;
        counter(
            &mut e,
            "ferry_malformed_packets_dropped",
            "Datagrams dropped as malformed",
            None,
            t.malformed_dropped,
        )?;
        counter(
            &mut e,
            "ferry_unauthenticated_packets_dropped",
            "Packets dropped for failing authentication",
            None,
            t.unauthenticated_dropped,
        )?;
        {
            let mut m = e.encode_descriptor(
                "ferry_connections_rejected",
                "Connections refused, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, value) in &t.rejected {
                let labels = [("reason", reason.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(value, None)?;
            }
        }
        counter(
            &mut e,
            "ferry_unknown_session_packets_dropped",
            "Datagrams for no known session (strays, late packets, forged resets)",
            None,
            t.unknown_session_dropped,
        )?;
        {
            let mut m = e.encode_descriptor(
                "ferry_stateless_resets",
                "Stateless resets: sent, rate-limited (not sent), received",
                None,
                MetricType::Counter,
            )?;
            for (event, value) in &t.stateless_resets {
                let labels = [("event", event.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(value, None)?;
            }
        }
        let u = &t.udp;
        gauge(
            &mut e,
            "ferry_udp_flows_active",
            "UDP flows open now",
            u.flows_active as f64,
        )?;
        counter(
            &mut e,
            "ferry_udp_flows",
            "UDP flows opened",
            None,
            u.flows_total,
        )?;
        for (name, help, value) in [
            (
                "ferry_udp_datagrams_in",
                "UDP datagrams from local sockets carried into the tunnel",
                u.datagrams_in,
            ),
            (
                "ferry_udp_datagrams_out",
                "UDP datagrams out of the tunnel delivered to local sockets",
                u.datagrams_out,
            ),
            (
                "ferry_udp_copies_sent",
                "UDP datagram copies sent for loss protection",
                u.copies_sent,
            ),
            (
                "ferry_udp_duplicates_suppressed",
                "UDP datagram copies dropped at the receiver, never delivered twice",
                u.duplicates_suppressed,
            ),
        ] {
            counter(&mut e, name, help, None, value)?;
        }
        for (name, help, value) in [
            (
                "ferry_udp_in",
                "UDP payload bytes carried into the tunnel",
                u.bytes_in,
            ),
            (
                "ferry_udp_out",
                "UDP payload bytes delivered out of the tunnel",
                u.bytes_out,
            ),
            (
                "ferry_udp_copy",
                "Bytes of UDP datagram copies sent for loss protection",
                u.copy_bytes,
            ),
        ] {
            counter(&mut e, name, help, Some(&bytes), value)?;
        }
        for (name, help, label, values) in [
            (
                "ferry_udp_dropped",
                "UDP datagrams dropped, by reason",
                "reason",
                &u.dropped,
            ),
            (
                "ferry_udp_flows_refused",
                "UDP flows refused, by reason",
                "reason",
                &u.refused,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (reason, value) in values {
                let labels = [(label, reason.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(value, None)?;
            }
        }
        gauge(
            &mut e,
            "ferry_udp_unfragmented_max_bytes",
            "Largest UDP datagram carried in one packet now, without fragments",
            u.unfragmented_max as f64,
        )?;
        {
            let mut m = e.encode_descriptor(
                "ferry_config_reloads",
                "Configuration reloads (SIGHUP): ok (applied) or failed (refused whole)",
                None,
                MetricType::Counter,
            )?;
            for (result, value) in [
                ("ok", s.config.reloads_ok),
                ("failed", s.config.reloads_failed),
            ] {
                m.encode_family(&[("result", result)])?
                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
            }
        }
        gauge(
            &mut e,
            "ferry_config_last_reload_timestamp_seconds",
            "When the configuration in force was loaded (start-up or the last applied reload), Unix time",
            s.config.last_load_unix_seconds,
        )?;
        let rtts: Vec<f64> = s.sessions.iter().map(|x| x.rtt_seconds).collect();
        let losses: Vec<f64> = s.sessions.iter().map(|x| x.loss_rate).collect();
        histogram(
            &mut e,
            "ferry_session_rtt_seconds_active",
            "Smoothed RTT of the sessions open now",
            None,
            &rtts,
            &RTT_BUCKETS,
        )?;
        histogram(
            &mut e,
            "ferry_session_loss_rate_active",
            "Loss rate (lost / sent packets) of the sessions open now",
            None,
            &losses,
            &LOSS_BUCKETS,
        )?;
        backend_gauge(
            &mut e,
            &s.backends,
            "ferry_backend_up",
            "1 if the backend (gateway) or gateway link (agent) is up",
            |b| u64::from(b.state == "UP"),
        )?;
        backend_gauge(
            &mut e,
            &s.backends,
            "ferry_backend_active_streams",
            "Streams using the backend (gateway) or gateway link (agent) now",
            |b| b.active_streams,
        )?;
        Ok(())
    }
}

/// The Prometheus text exposition of `snapshot`.
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
