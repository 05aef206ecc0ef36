//! The results: figures per peer per link, printed as a table with ratios to direct TCP and
//! written as JSON.

/// Figures of one peer, by metric name (insertion order kept for the table).
#[derive(Default)]
pub struct Figures {
    pub values: Vec<(String, f64)>,
    pub notes: Vec<String>,
}

impl Figures {
    pub fn put(&mut self, name: &str, value: f64) {
        self.values.push((name.to_owned(), value));
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }
}

/// What became of one peer on one link.
pub enum Outcome {
    Measured(Figures),
    /// Not installed.
    Skipped,
    Failed(String),
}

/// Which work a run measured: its peers and figures differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// TCP clients through each peer (every scenario but `udp`).
    Streams,
    /// UDP flows: plain UDP and Ferry's protection modes ([`crate::udp`]).
    Udp,
}

impl RunKind {
    fn name(self) -> &'static str {
        match self {
            RunKind::Streams => "streams",
            RunKind::Udp => "udp",
        }
    }
}

/// Every peer on one link.
pub struct Run {
    /// The link, e.g. `loopback` or `20ms 50Mbit/s loss 5%`.
    pub label: String,
    /// The random loss rate (0..1) of an impaired link.
    pub loss: Option<f64>,
    pub kind: RunKind,
    /// Peers in the order measured.
    pub peers: Vec<(&'static str, Outcome)>,
    /// What the link's relay counted, if there was one.
    pub note: Option<String>,
}

impl Run {
    pub fn failed(&self) -> bool {
        self.peers
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Failed(_)))
    }

    /// A peer's figures, if it was measured.
    pub fn figures(&self, peer: &str) -> Option<&Figures> {
        self.peers.iter().find_map(|(p, o)| match o {
            Outcome::Measured(f) if *p == peer => Some(f),
            _ => None,
        })
    }
}

/// Three significant decimals for small values (sub-millisecond latencies), two otherwise.
fn number(v: f64) -> String {
    if v.abs() < 1.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2}")
    }
}

/// Prints the table of one run, with each figure's ratio to direct TCP's.
pub fn print(run: &Run) {
    let baseline = run.figures("tcp");
    // Metric names in first-seen order.
    let mut metrics: Vec<&str> = Vec::new();
    for (_, o) in &run.peers {
        if let Outcome::Measured(f) = o {
            for (k, _) in &f.values {
                if !metrics.contains(&k.as_str()) {
                    metrics.push(k);
                }
            }
        }
    }
    // The first column as wide as the longest name in it.
    let width = metrics
        .iter()
        .map(|m| m.len())
        .chain([run.label.len(), 40])
        .max()
        .unwrap_or(40);
    println!();
    print!("{:<width$}", run.label);
    for (p, _) in &run.peers {
        print!(" {p:>22}");
    }
    println!();
    for m in &metrics {
        print!("{m:<width$}");
        for (p, o) in &run.peers {
            let cell = match o {
                Outcome::Measured(f) => match f.get(m) {
                    Some(v) => match baseline.and_then(|b| b.get(m)) {
                        Some(b) if *p != "tcp" && b > 0.0 && v.is_finite() && !m.contains('%') => {
                            format!("{} ({:.2}x)", number(v), v / b)
                        }
                        _ => number(v),
                    },
                    None => "-".into(),
                },
                Outcome::Skipped => "skipped".into(),
                Outcome::Failed(_) => "error".into(),
            };
            print!(" {cell:>22}");
        }
        println!();
    }
    for (p, o) in &run.peers {
        match o {
            Outcome::Measured(f) => println!("{p}: {}", f.notes.join("; ")),
            Outcome::Skipped => println!("{p}: skipped: not installed (apt-get install kcptun)"),
            Outcome::Failed(e) => println!("{p}: error: {e}"),
        }
    }
    if let Some(note) = &run.note {
        println!("{note}");
    }
    println!("(x): ratio to direct TCP");
}

/// All runs as one JSON document.
pub fn json(runs: &[Run], link: &str, encrypt: bool, compress: &str) -> serde_json::Value {
    let runs: Vec<serde_json::Value> = runs
        .iter()
        .map(|run| {
            let mut peers = serde_json::Map::new();
            for (p, o) in &run.peers {
                let value = match o {
                    Outcome::Measured(f) => {
                        let values: serde_json::Map<String, serde_json::Value> = f
                            .values
                            .iter()
                            .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                            .collect();
                        serde_json::json!({"status": "ok", "settings": f.notes, "figures": values})
                    }
                    Outcome::Skipped => serde_json::json!({"status": "skipped"}),
                    Outcome::Failed(e) => serde_json::json!({"status": "error", "error": e}),
                };
                peers.insert(p.to_string(), value);
            }
            serde_json::json!({
                "kind": run.kind.name(),
                "link": run.label,
                "loss": run.loss,
                "relay": run.note,
                "peers": peers,
            })
        })
        .collect();
    serde_json::json!({
        "link": link,
        "encrypt": encrypt,
        "compress": compress,
        "runs": runs,
    })
}
