//! Simulated benchmarks, in virtual time (deterministic: the figures only change when the code
//! does): goodput through a 50 Mbit/s, 40 ms RTT bottleneck at 0, 1, 5 and 10% random loss for
//! each congestion controller, and 1 KB request/response latency at 5% loss.
//!
//! Run: `cargo bench -p ferry-protocol --bench simulated`

use std::time::Duration;

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::congestion::CongestionConfig;
use ferry_protocol::sim::exchange::{self, quantile, Exchanges};
use ferry_protocol::sim::transfer::BulkSide;
use ferry_protocol::sim::{LinkConfig, Pair};

const LINK_BPS: u64 = 50_000_000;
const ONE_WAY: Duration = Duration::from_millis(20);
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(10);

fn bottleneck(loss: f64) -> LinkConfig {
    // Queue of one bandwidth-delay product.
    let bdp = (LINK_BPS / 8) as usize * 40 / 1000;
    LinkConfig::default()
        .with_delay(ONE_WAY)
        .with_rate(LINK_BPS, bdp)
        .with_loss(loss)
}

/// Fraction of the link rate delivered to the receiving application in steady state.
fn goodput(cc: CongestionConfig, loss: f64, seed: u64) -> f64 {
    let config = TransportConfig::default()
        .congestion(cc)
        .receive_windows(16 << 20, 64 << 20)
        .stream_send_buffer(16 << 20);
    let mut pair = Pair::symmetric(seed, ServerConfig::new(config.clone()), bottleneck(loss));
    let (ch, sh) = pair.establish(config).expect("handshake");
    let mut sender = BulkSide::new(ch, true, seed, 1, u64::MAX / 4);
    let mut receiver = BulkSide::new(sh, false, seed, 0, 0);
    let mut at_warmup = None;
    let start = pair.now;
    pair.run_until(WARMUP + MEASURE, |p| {
        sender.pump(p.now, &mut p.client);
        receiver.pump(p.now, &mut p.server);
        if at_warmup.is_none() && p.now - start >= WARMUP {
            at_warmup = Some((p.now, receiver.received_bytes()));
        }
        false
    });
    let (t0, b0) = at_warmup.expect("warm-up reached");
    let bytes = receiver.received_bytes() - b0;
    let secs = (pair.now - t0).as_secs_f64();
    bytes as f64 * 8.0 / secs / LINK_BPS as f64
}

/// Latencies of sequential 1 KB requests answered by 1 KB responses, 50 ms apart.
fn request_response(
    cc: CongestionConfig,
    tail_duplication: bool,
    ack_delay: Duration,
    loss: f64,
    seed: u64,
    requests: usize,
) -> Vec<Duration> {
    let link = LinkConfig::default().with_delay(ONE_WAY).with_loss(loss);
    let config = TransportConfig::default()
        .congestion(cc)
        .tail_duplication(tail_duplication)
        .ack_delay(ack_delay);
    let mut pair = Pair::symmetric(seed, ServerConfig::new(config.clone()), link);
    let (ch, sh) = pair.establish(config).expect("handshake");
    let shape = Exchanges {
        count: requests,
        size: 1024,
        pause: Duration::from_millis(50),
        think: Duration::ZERO,
    };
    exchange::request_response(&mut pair, ch, sh, shape).expect("request timed out")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes "--bench"; a filter argument is accepted and ignored.
    println!("Ferry simulated benchmarks (virtual time, deterministic)");
    println!();
    println!(
        "Goodput through a 50 Mbit/s, 40 ms RTT bottleneck (1 BDP queue), random loss both ways,"
    );
    println!(
        "as a fraction of the link rate, median of 3 seeds, {}s measured after {}s warm-up:",
        MEASURE.as_secs(),
        WARMUP.as_secs()
    );
    println!();
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>8}",
        "controller", "0%", "1%", "5%", "10%"
    );
    let controllers = [
        ("bbr", CongestionConfig::Bbr),
        ("fixed", CongestionConfig::Fixed { rate_bps: LINK_BPS }),
    ];
    let mut results = Vec::new();
    for (name, cc) in controllers {
        let mut row = Vec::new();
        for loss in [0.0, 0.01, 0.05, 0.10] {
            let g = median((1..=3).map(|seed| goodput(cc, loss, seed)).collect());
            row.push(g);
        }
        println!(
            "{:<10} {:>7.1}% {:>7.1}% {:>7.1}% {:>7.1}%",
            name,
            row[0] * 100.0,
            row[1] * 100.0,
            row[2] * 100.0,
            row[3] * 100.0
        );
        results.push((name, row));
    }
    println!();
    let check = |ok: bool| if ok { "met" } else { "MISSED" };
    let fixed = &results[1].1;
    let bbr = &results[0].1;
    println!(
        "target fixed >= 90% at 1% loss: {}",
        check(fixed[1] >= 0.90)
    );
    println!(
        "target fixed >= 80% at 5% loss: {}",
        check(fixed[2] >= 0.80)
    );
    println!("target bbr   >= 50% at 5% loss: {}", check(bbr[2] >= 0.50));
    println!();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let default_ack_delay = TransportConfig::default().ack_delay;
    let mut p99_default = 0.0;
    for loss in [0.05, 0.10] {
        println!(
            "1 KB request / 1 KB response, 40 ms RTT, {:.0}% random loss both ways, 2000 sequential requests:",
            loss * 100.0
        );
        for (label, dup, ack_delay) in [
            ("default", true, default_ack_delay),
            ("ACKs not delayed", true, Duration::ZERO),
            ("tail duplication off", false, default_ack_delay),
        ] {
            let mut lat = request_response(CongestionConfig::Bbr, dup, ack_delay, loss, 11, 2000);
            lat.sort();
            println!(
                "  {label:<30} p50 {:.1} ms   p90 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
                ms(quantile(&lat, 0.5)),
                ms(quantile(&lat, 0.9)),
                ms(quantile(&lat, 0.99)),
                ms(*lat.last().unwrap())
            );
            if label == "default" && loss == 0.05 {
                p99_default = ms(quantile(&lat, 0.99));
            }
        }
    }
    let bound = 2.0 * 40.0 + 10.0;
    println!(
        "target p99 <= 2 RTT + 10 ms = {bound:.0} ms at 5% loss (default settings): {}",
        check(p99_default <= bound)
    );
}
