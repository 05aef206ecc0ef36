//! The last hour in memory: what the dashboard's charts draw and `/history` serves.
//!
//! Once a second the monitor's sampler turns the snapshot into a [`Point`]: throughput each
//! way, RTT p50 and p99 over the active sessions, the loss rate of the packets sent in that
//! second, bytes sent again, sessions, streams and refusals. The last [`FINE_POINTS`] of them
//! (10 minutes at 1 s) are kept as they are; every [`COARSE_EVERY`] of them are also folded
//! into one coarse point (averages, and the worst RTT p99), of which the last [`COARSE_POINTS`]
//! (an hour at 10 s) are kept. Memory is fixed: under 100 KB whatever the traffic.
//!
//! Counters become rates by difference with the previous sample; a counter that went down (a
//! process's totals never do, but a test's source might) counts as zero, not as a negative.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Serialize;

use crate::Snapshot;

/// Points kept at full resolution: 10 minutes at one a second.
pub const FINE_POINTS: usize = 600;
/// Fine points folded into one coarse point: 10 s.
pub const COARSE_EVERY: usize = 10;
/// Coarse points kept: an hour at 10 s.
pub const COARSE_POINTS: usize = 360;

/// One sample of the figures the dashboard charts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the monitor started (its uptime).
    pub t: f64,
    /// Payload bytes per second into the tunnel.
    pub bytes_out_per_second: f64,
    /// Payload bytes per second out of the tunnel.
    pub bytes_in_per_second: f64,
    /// Median smoothed RTT over the active sessions, milliseconds (zero without a session).
    pub rtt_p50_ms: f64,
    /// 99th percentile of the same.
    pub rtt_p99_ms: f64,
    /// Packets declared lost over packets sent, in the interval.
    pub loss_rate: f64,
    /// Stream bytes sent again per second.
    pub retransmitted_bytes_per_second: f64,
    /// Sessions open.
    pub sessions: f64,
    /// Streams open.
    pub streams: f64,
    /// Connections refused per second, every reason together.
    pub refusals_per_second: f64,
}

/// The counters a point is a difference of.
#[derive(Debug, Clone, Copy)]
struct Counters {
    at: Instant,
    out: u64,
    r#in: u64,
    sent: u64,
    lost: u64,
    retransmitted: u64,
    refused: u64,
}

impl Counters {
    fn of(at: Instant, s: &Snapshot) -> Self {
        let t = &s.totals;
        Self {
            at,
            out: t.payload_bytes_out,
            r#in: t.payload_bytes_in,
            sent: t.packets_sent,
            lost: t.packets_lost,
            retransmitted: t.retransmitted_bytes,
            refused: t.rejected.iter().map(|(_, n)| n).sum(),
        }
    }
}

/// The recent history, fine and coarse.
#[derive(Debug, Default)]
pub struct Timeline {
    fine: VecDeque<Point>,
    coarse: VecDeque<Point>,
    /// Fine points not yet folded into a coarse one.
    folding: Vec<Point>,
    last: Option<Counters>,
}

/// The `p`-th percentile (0..=1) of `values`, which it sorts; zero for none.
fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 * p).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

impl Timeline {
    /// Records the snapshot taken at `at`. The first call only sets the baseline.
    pub fn record(&mut self, at: Instant, snapshot: &Snapshot) {
        let now = Counters::of(at, snapshot);
        let Some(last) = self.last.replace(now) else {
            return;
        };
        let dt = now.at.saturating_duration_since(last.at).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        let mut rtts: Vec<f64> = snapshot
            .sessions
            .iter()
            .map(|s| s.rtt_seconds * 1000.0)
            .collect();
        let sent = now.sent.saturating_sub(last.sent);
        let point = Point {
            t: snapshot.uptime_seconds,
            bytes_out_per_second: rate(now.out, last.out),
            bytes_in_per_second: rate(now.r#in, last.r#in),
            rtt_p50_ms: percentile(&mut rtts, 0.5),
            rtt_p99_ms: percentile(&mut rtts, 0.99),
            loss_rate: if sent == 0 {
                0.0
            } else {
                (now.lost.saturating_sub(last.lost) as f64 / sent as f64).min(1.0)
            },
            retransmitted_bytes_per_second: rate(now.retransmitted, last.retransmitted),
            sessions: snapshot.totals.sessions_active as f64,
            streams: snapshot.totals.streams_active as f64,
            refusals_per_second: rate(now.refused, last.refused),
        };
        self.push(point);
    }

    fn push(&mut self, point: Point) {
        self.fine.push_back(point);
        if self.fine.len() > FINE_POINTS {
            self.fine.pop_front();
        }
        self.folding.push(point);
        if self.folding.len() == COARSE_EVERY {
            let folded = fold(&self.folding);
            self.folding.clear();
            self.coarse.push_back(folded);
            if self.coarse.len() > COARSE_POINTS {
                self.coarse.pop_front();
            }
        }
    }

    /// The last point, if any.
    pub fn latest(&self) -> Option<Point> {
        self.fine.back().copied()
    }

    /// `/history`: both resolutions, oldest first.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "fine": {"interval_seconds": 1, "points": self.fine},
            "coarse": {"interval_seconds": COARSE_EVERY, "points": self.coarse},
        })
    }
}

/// One point for several: means, except the worst RTT p99 and the last time.
fn fold(points: &[Point]) -> Point {
    let n = points.len().max(1) as f64;
    let mean = |f: fn(&Point) -> f64| points.iter().map(f).sum::<f64>() / n;
    Point {
        t: points.last().map_or(0.0, |p| p.t),
        bytes_out_per_second: mean(|p| p.bytes_out_per_second),
        bytes_in_per_second: mean(|p| p.bytes_in_per_second),
        rtt_p50_ms: mean(|p| p.rtt_p50_ms),
        rtt_p99_ms: points.iter().map(|p| p.rtt_p99_ms).fold(0.0, f64::max),
        loss_rate: mean(|p| p.loss_rate),
        retransmitted_bytes_per_second: mean(|p| p.retransmitted_bytes_per_second),
        sessions: mean(|p| p.sessions),
        streams: mean(|p| p.streams),
        refusals_per_second: mean(|p| p.refusals_per_second),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SessionInfo, Totals};
    use std::time::Duration;

    fn snapshot(second: u64, rtts: &[f64]) -> Snapshot {
        Snapshot {
            uptime_seconds: second as f64,
            totals: Totals {
                payload_bytes_out: second * 1000,
                payload_bytes_in: second * 10,
                packets_sent: second * 100,
                packets_lost: second,
                sessions_active: rtts.len() as u64,
                rejected: vec![("limit".into(), second / 2)],
                ..Totals::default()
            },
            sessions: rtts
                .iter()
                .map(|r| SessionInfo {
                    rtt_seconds: *r,
                    ..SessionInfo::default()
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    #[test]
    fn counters_become_rates_and_sessions_give_rtt_percentiles() {
        let start = Instant::now();
        let mut t = Timeline::default();
        t.record(start, &snapshot(0, &[]));
        assert!(t.latest().is_none(), "the first sample is the baseline");
        t.record(
            start + Duration::from_secs(1),
            &snapshot(1, &[0.010, 0.020, 0.200]),
        );
        let p = t.latest().unwrap();
        assert_eq!(p.bytes_out_per_second, 1000.0);
        assert_eq!(p.bytes_in_per_second, 10.0);
        assert_eq!(p.loss_rate, 0.01);
        assert_eq!(p.rtt_p50_ms, 20.0);
        assert_eq!(p.rtt_p99_ms, 200.0);
        assert_eq!(p.sessions, 3.0);
    }

    #[test]
    fn memory_is_bounded_at_ten_minutes_fine_and_an_hour_coarse() {
        let start = Instant::now();
        let mut t = Timeline::default();
        for s in 0..(2 * 3600) {
            t.record(start + Duration::from_secs(s), &snapshot(s, &[0.01]));
        }
        assert_eq!(t.fine.len(), FINE_POINTS);
        assert_eq!(t.coarse.len(), COARSE_POINTS);
        let json = t.to_json();
        assert_eq!(
            json["fine"]["points"].as_array().unwrap().len(),
            FINE_POINTS
        );
        // Oldest first, and the coarse points reach back an hour.
        let coarse = json["coarse"]["points"].as_array().unwrap();
        let span = coarse.last().unwrap()["t"].as_f64().unwrap()
            - coarse.first().unwrap()["t"].as_f64().unwrap();
        assert!((3500.0..=3600.0).contains(&span), "{span}");
        assert_eq!(coarse[0]["bytes_out_per_second"], 1000.0);
    }
}
