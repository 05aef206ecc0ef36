//! The chart of a loss sweep, as a self-contained SVG: request latency (p50 and p99, log
//! scale) and throughput per loss rate, one line per peer. Hand-written: two line panels do
//! not need a plotting library, and plain SVG renders anywhere, GitHub's README included.

use std::fmt::Write;

use crate::report::Run;

const PEERS: [(&str, &str); 4] = [
    ("tcp", "#7a7a7a"),
    ("ferry", "#0b8a6f"),
    ("ferry-fec-off", "#7fc8b4"),
    ("kcptun", "#d9622b"),
];
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const PANEL_W: f64 = 380.0;
const PANEL_H: f64 = 280.0;

/// One line: a peer's values of a metric across the runs (`None` where not measured).
struct Series<'a> {
    color: &'a str,
    dashed: bool,
    points: Vec<Option<f64>>,
}

/// Where a panel is and how its y axis maps.
struct Panel {
    x: f64,
    y: f64,
    columns: usize,
    log: bool,
    lo: f64,
    hi: f64,
}

impl Panel {
    fn px(&self, column: usize) -> f64 {
        let step = PANEL_W / self.columns.max(1) as f64;
        self.x + step * (column as f64 + 0.5)
    }

    fn py(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.max(self.lo).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        self.y + PANEL_H * (1.0 - t.clamp(0.0, 1.0))
    }
}

/// "Nice" ticks: powers of ten with 2 and 5 between (log), or 5-ish even steps (linear).
fn ticks(lo: f64, hi: f64, log: bool) -> Vec<f64> {
    if log {
        let mut out = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi {
            for m in [1.0, 2.0, 5.0] {
                let v = decade * m;
                if v >= lo && v <= hi {
                    out.push(v);
                }
            }
            decade *= 10.0;
        }
        out
    } else {
        let raw = (hi - lo) / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(raw);
        (0..=((hi - lo) / step).floor() as usize)
            .map(|i| lo + step * i as f64)
            .collect()
    }
}

fn label(v: f64) -> String {
    if v >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[allow(clippy::too_many_arguments)]
fn panel(
    svg: &mut String,
    x: f64,
    title: &str,
    y_title: &str,
    columns: &[String],
    series: &[Series],
    log: bool,
    reference: Option<(f64, &str)>,
) {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().flatten())
        .copied()
        .chain(reference.map(|r| r.0))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (mut lo, mut hi) = values.fold((f64::MAX, 0f64), |(l, h), v| (l.min(v), h.max(v)));
    if hi <= 0.0 {
        (lo, hi) = (1.0, 10.0);
    }
    if log {
        lo = 10f64.powf(lo.log10().floor());
        hi = 10f64.powf(hi.log10().ceil());
    } else {
        lo = 0.0;
        hi *= 1.1;
    }
    let p = Panel {
        x,
        y: 60.0,
        columns: columns.len(),
        log,
        lo,
        hi,
    };
    let _ = write!(
        svg,
        r#"<text x="{}" y="40" font-size="15" font-weight="bold">{title}</text>"#,
        p.x
    );
    let _ = write!(
        svg,
        r##"<rect x="{}" y="{}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#bbb"/>"##,
        p.x, p.y
    );
    for t in ticks(lo, hi, log) {
        let y = p.py(t);
        let _ = write!(
            svg,
            r##"<line x1="{}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            p.x,
            p.x + PANEL_W,
            p.x - 6.0,
            y + 4.0,
            label(t)
        );
    }
    let _ = write!(
        svg,
        r#"<text transform="translate({},{}) rotate(-90)" font-size="12" text-anchor="middle">{y_title}</text>"#,
        p.x - 46.0,
        p.y + PANEL_H / 2.0
    );
    for (i, c) in columns.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="12" text-anchor="middle">{c}</text>"#,
            p.px(i),
            p.y + PANEL_H + 18.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">random loss, each way</text>"#,
        p.x + PANEL_W / 2.0,
        p.y + PANEL_H + 38.0
    );
    if let Some((v, text)) = reference {
        let y = p.py(v);
        let _ = write!(
            svg,
            r##"<line x1="{}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#333" stroke-dasharray="2,3"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{text}</text>"##,
            p.x,
            p.x + PANEL_W,
            p.x + PANEL_W - 4.0,
            y - 4.0
        );
    }
    for s in series {
        let dash = if s.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let mut path = String::new();
        for (i, v) in s.points.iter().enumerate() {
            let Some(v) = v.filter(|v| v.is_finite()) else {
                continue;
            };
            let cmd = if path.is_empty() { 'M' } else { 'L' };
            let _ = write!(path, "{cmd}{:.1},{:.1} ", p.px(i), p.py(v));
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                p.px(i),
                p.py(v),
                s.color
            );
        }
        if path.is_empty() {
            continue;
        }
        let _ = write!(
            svg,
            r#"<path d="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            path.trim_end(),
            s.color
        );
    }
}

/// The values of `metric` for `peer` across `runs`.
fn points(runs: &[&Run], peer: &str, metric: &str) -> Vec<Option<f64>> {
    runs.iter()
        .map(|r| r.figures(peer).and_then(|f| f.get(metric)))
        .collect()
}

/// The chart of a sweep: one column per run (loss rate).
pub fn sweep(runs: &[&Run], title: &str, rate_bps: Option<u64>) -> String {
    let columns: Vec<String> = runs
        .iter()
        .map(|r| match r.loss {
            Some(l) => format!("{}%", label(l * 100.0)),
            None => r.label.clone(),
        })
        .collect();
    let present: Vec<(&str, &str)> = PEERS
        .iter()
        .copied()
        .filter(|(p, _)| runs.iter().any(|r| r.figures(p).is_some()))
        .collect();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif"><rect width="100%" height="100%" fill="white"/>"#
    );
    let _ = write!(
        svg,
        r##"<text x="{}" y="18" font-size="13" text-anchor="middle" fill="#444">{}</text>"##,
        WIDTH / 2.0,
        title.replace('&', "&amp;").replace('<', "&lt;")
    );
    let mut latency = Vec::new();
    let mut throughput = Vec::new();
    for (peer, color) in &present {
        for (metric, dashed) in [
            ("1 KB req/resp sequential, p99 ms", false),
            ("1 KB req/resp sequential, p50 ms", true),
        ] {
            latency.push(Series {
                color,
                dashed,
                points: points(runs, peer, metric),
            });
        }
        for (metric, dashed) in [
            ("throughput 8 conns, MB/s each way", false),
            ("throughput 1 conn, MB/s each way", true),
        ] {
            throughput.push(Series {
                color,
                dashed,
                points: points(runs, peer, metric),
            });
        }
    }
    panel(
        &mut svg,
        70.0,
        "1 KB request/response latency",
        "ms (log scale): p99 solid, p50 dashed",
        &columns,
        &latency,
        true,
        None,
    );
    let link = rate_bps.map(|r| r as f64 / 8e6);
    panel(
        &mut svg,
        70.0 + PANEL_W + 110.0,
        "Bulk echo throughput",
        "MB/s each way: 8 conns solid, 1 dashed",
        &columns,
        &throughput,
        false,
        link.map(|l| (l, "link rate")),
    );
    // Legend.
    let mut x = WIDTH / 2.0 - 60.0 * present.len() as f64;
    for (peer, color) in &present {
        let _ = write!(
            svg,
            r#"<line x1="{x}" x2="{}" y1="{}" y2="{}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}" font-size="13">{peer}</text>"#,
            x + 24.0,
            HEIGHT - 14.0,
            HEIGHT - 14.0,
            x + 30.0,
            HEIGHT - 10.0
        );
        x += 120.0;
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Figures, Outcome, RunKind};

    fn run(loss: f64, ferry_p99: f64) -> Run {
        let mut f = Figures::default();
        f.put("1 KB req/resp sequential, p99 ms", ferry_p99);
        f.put("throughput 8 conns, MB/s each way", 5.0);
        Run {
            label: format!("loss {loss}"),
            loss: Some(loss),
            kind: RunKind::Streams,
            peers: vec![
                ("ferry", Outcome::Measured(f)),
                ("kcptun", Outcome::Skipped),
            ],
            note: None,
        }
    }

    #[test]
    fn sweep_chart_is_svg_with_a_line_per_measured_series() {
        let svg = sweep(
            &[&run(0.0, 41.0), &run(0.05, 90.0)],
            "t <1>",
            Some(50_000_000),
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;1>"), "title escaped");
        // Ferry's p99 line and its throughput line have two points each (its p50 and 1-conn
        // lines none, so no path); kcptun is absent.
        assert_eq!(
            svg.matches(r##"stroke="#0b8a6f" stroke-width="2""##)
                .count(),
            2
        );
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(!svg.contains("kcptun"));
        assert!(svg.contains(">5%<") && svg.contains("link rate"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(
            ticks(1.0, 100.0, true),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(ticks(0.0, 7.0, false), vec![0.0, 2.0, 4.0, 6.0]);
    }
}
