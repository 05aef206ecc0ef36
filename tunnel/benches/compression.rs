//! Compression and batching on an RTB-like workload: wire bytes against payload bytes, and CPU
//! per MiB, for each codec with and without batching, in one run (issue 5's benchmark).
//!
//! Workload: OpenRTB-style JSON bid requests (1.5-2 KB: the same keys every time, values drawn
//! from realistic small vocabularies plus unique IDs) and bid responses (about 600 B), one per
//! line, over 64 keep-alive client connections (as an exchange's HTTP connection pool to a
//! bidder: each connection carries request after request), each connection one Ferry stream of
//! one session on real loopback UDP. Both ends compress what they send with the codec under
//! test, each stream in its own context, so compression learns only from that connection's
//! own earlier messages. Payload = the bytes the two applications exchanged; wire = UDP payload
//! bytes both endpoints sent (headers, ACKs and retransmissions included). CPU is this
//! process's (both ends and the load generator).
//!
//! Run: `cargo bench -p ferry-tunnel --bench compression` (`FERRY_BENCH_REQUESTS`, default 20000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_transport::{Connection, Endpoint, ServerConfig, TransportConfig};
use ferry_tunnel::compress::Codec;
use ferry_tunnel::splice::{receive_chunks, send_chunks, Meter, SpliceOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};

/// A deterministic generator (xorshift) so every configuration sees the same traffic.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from_digit((self.next() % 16) as u32, 16).unwrap_or('0'))
            .collect()
    }
}

const BUNDLES: &[&str] = &[
    "com.example.puzzlequest",
    "com.example.citybuilder",
    "com.example.newsreader",
    "com.example.fitnesspal",
    "com.example.racinggame",
    "com.example.weathernow",
];
const UAS: &[&str] = &[
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 12; SM-G991B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/117.0.0.0 Mobile Safari/537.36",
];
const COUNTRIES: &[&str] = &["USA", "DEU", "FRA", "GBR", "BRA", "IND", "JPN"];
const SIZES: &[&str] = &["320,50", "300,250", "728,90", "320,480"];
const CATS: &[&str] = &["IAB1", "IAB9", "IAB9-30", "IAB17", "IAB19"];

fn bid_request(g: &mut Gen) -> Vec<u8> {
    let size = g.pick(SIZES);
    let (w, h) = size.split_once(',').unwrap_or(("320", "50"));
    format!(
        concat!(
            r#"{{"id":"{id}","imp":[{{"id":"1","banner":{{"w":{w},"h":{h},"pos":1,"btype":[4],"battr":[14],"api":[3,5],"format":[{{"w":{w},"h":{h}}}]}},"#,
            r#""instl":0,"tagid":"slot-{tag}","bidfloor":0.{floor},"bidfloorcur":"USD","secure":1,"exp":300,"#,
            r#""ext":{{"skadn":{{"version":"2.0","sourceapp":"{appid}","skadnetids":["cstr6suwn9.skadnetwork","4fzdc2evr5.skadnetwork","2fnua5tdw4.skadnetwork","ydx93a7ass.skadnetwork","p78axxw29g.skadnetwork","v72qych5uu.skadnetwork","c6k4g5qg8m.skadnetwork","s39g8k73mm.skadnetwork"]}},"#,
            r#""gpid":"/1234/{bundle}/slot-{tag}","data":{{"pbadslot":"/1234/{bundle}/slot-{tag}"}}}}}}],"#,
            r#""app":{{"id":"app-{appid}","name":"{bundle}","bundle":"{bundle}","storeurl":"https://play.google.com/store/apps/details?id={bundle}","#,
            r#""cat":["{cat}"],"ver":"4.{minor}.0","publisher":{{"id":"pub-{pubid}","name":"Example Publisher"}},"content":{{"language":"en"}}}},"#,
            r#""device":{{"ua":"{ua}","geo":{{"lat":{lat}.{latf},"lon":{lon}.{lonf},"type":2,"country":"{country}","region":"CA","city":"Example City","zip":"9{zip}"}},"#,
            r#""dnt":0,"lmt":0,"ip":"{ip1}.{ip2}.{ip3}.{ip4}","devicetype":4,"make":"Google","model":"Pixel 7","os":"Android","osv":"13","#,
            r#""h":2400,"w":1080,"ppi":420,"pxratio":2.625,"js":1,"language":"en","carrier":"Example Mobile","connectiontype":6,"ifa":"{ifa}"}},"#,
            r#""user":{{"id":"{user}","buyeruid":"{buyer}","yob":19{yob},"gender":"O","ext":{{"consent":"{consent}"}}}},"#,
            r#""at":1,"tmax":120,"cur":["USD"],"bcat":["IAB25","IAB26","IAB7-39","IAB8-18"],"badv":["example-competitor.com"],"#,
            r#""source":{{"fd":1,"tid":"{tid}","ext":{{"schain":{{"complete":1,"nodes":[{{"asi":"exchange.example","sid":"{sid}","hp":1}}],"ver":"1.0"}}}}}},"#,
            r#""regs":{{"coppa":0,"ext":{{"gdpr":0,"us_privacy":"1YNN"}}}}}}"#
        ),
        id = g.hex(32),
        w = w,
        h = h,
        tag = g.next() % 400,
        floor = g.next() % 100,
        appid = g.next() % 50,
        bundle = g.pick(BUNDLES),
        cat = g.pick(CATS),
        minor = g.next() % 20,
        pubid = g.next() % 30,
        ua = g.pick(UAS),
        lat = g.next() % 90,
        latf = g.next() % 10000,
        lon = g.next() % 180,
        lonf = g.next() % 10000,
        country = g.pick(COUNTRIES),
        zip = g.next() % 10000,
        ip1 = g.next() % 223 + 1,
        ip2 = g.next() % 256,
        ip3 = g.next() % 256,
        ip4 = g.next() % 256,
        ifa = g.hex(32),
        user = g.hex(24),
        buyer = g.hex(16),
        yob = 50 + g.next() % 50,
        consent = g.hex(40),
        tid = g.hex(32),
        sid = g.next() % 1000,
    )
    .into_bytes()
}

fn bid_response(g: &mut Gen, request_id: &[u8]) -> Vec<u8> {
    let id = String::from_utf8_lossy(&request_id[7..39]).into_owned();
    format!(
        concat!(
            r#"{{"id":"{id}","bidid":"{bidid}","cur":"USD","seatbid":[{{"seat":"seat-{seat}","bid":[{{"id":"1","impid":"1","price":{price}.{cents},"#,
            r#""adid":"ad-{ad}","crid":"creative-{cr}","adomain":["advertiser-{adv}.example"],"cat":["IAB9"],"w":320,"h":50,"#,
            r#""nurl":"https://win.example/notify?id={id}&price=${{AUCTION_PRICE}}","#,
            r#""adm":"<div class=\"ad\"><a href=\"https://click.example/c?cr={cr}\"><img src=\"https://cdn.example/img/{cr}.png\" width=\"320\" height=\"50\"></a><img src=\"https://track.example/i?id={id}\" width=\"1\" height=\"1\"></div>"}}]}}]}}"#
        ),
        id = id,
        bidid = g.hex(16),
        seat = g.next() % 8,
        price = g.next() % 5,
        cents = g.next() % 100,
        ad = g.next() % 300,
        cr = g.next() % 300,
        adv = g.next() % 40,
    )
    .into_bytes()
}

struct Outcome {
    payload: u64,
    /// Stream bytes after compression and chunk framing (before packet headers and ACKs).
    encoded: u64,
    wire: u64,
    cpu_us_per_mib: f64,
    requests_per_s: f64,
}

fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Joins `stream` to an in-memory pipe through the chunk pumps (as `splice` joins a socket);
/// returns the application's end of the pipe.
fn tunnel_end(stream: ferry_transport::Stream, codec: Codec, meter: Arc<Meter>) -> DuplexStream {
    let (app, pumped) = tokio::io::duplex(256 << 10);
    let (mut pr, mut pw) = tokio::io::split(pumped);
    let (mut sr, mut sw) = tokio::io::split(stream);
    let m = meter.clone();
    tokio::spawn(async move {
        let options = SpliceOptions {
            codec,
            meters: &[&m],
        };
        let _ = send_chunks(&mut pr, &mut sw, options).await;
    });
    tokio::spawn(async move {
        let _ = receive_chunks(&mut sr, &mut pw, &[&meter]).await;
    });
    app
}

/// The bidder: answers each request line with a response line.
async fn serve(conn: Connection, codec: Codec, meter: Arc<Meter>) {
    while let Some(stream) = conn.accept_stream().await {
        let app = tunnel_end(stream, codec, meter.clone());
        tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(app);
            let mut lines = BufReader::new(r);
            let mut g = Gen(0x5eed);
            let mut line = Vec::new();
            while lines.read_until(b'\n', &mut line).await.unwrap_or(0) > 0 {
                let mut response = bid_response(&mut g, &line);
                response.push(b'\n');
                if w.write_all(&response).await.is_err() {
                    return;
                }
                line.clear();
            }
            let _ = w.shutdown().await;
        });
    }
}

async fn run(codec: Codec, batch: Duration, requests: usize) -> Outcome {
    const CONNECTIONS: usize = 64;
    let config = TransportConfig::default().batch_delay(batch);
    let server = Endpoint::server(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(config.clone()),
    )
    .unwrap();
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = client.connect(server.local_addr(), config).await.unwrap();
    let sconn = server.accept().await.unwrap();
    let meter = Arc::new(Meter::default());
    tokio::spawn(serve(sconn.clone(), codec, meter.clone()));
    let mut g = Gen(0x1234_5678_9abc_def1);
    let per_connection = requests / CONNECTIONS;
    let wire0 =
        conn.stats().map_or(0, |s| s.bytes_sent) + sconn.stats().map_or(0, |s| s.bytes_sent);
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let bodies: Vec<Vec<u8>> = (0..per_connection).map(|_| bid_request(&mut g)).collect();
        let stream = conn.open_stream().await.unwrap();
        let app = tunnel_end(stream, codec, meter.clone());
        tasks.push(tokio::spawn(async move {
            let (r, mut w) = tokio::io::split(app);
            let mut lines = BufReader::new(r);
            let mut response = Vec::new();
            for mut body in bodies {
                body.push(b'\n');
                w.write_all(&body).await.unwrap();
                response.clear();
                lines.read_until(b'\n', &mut response).await.unwrap();
                assert!(response.starts_with(b"{\"id\":\""), "a bid response");
            }
            w.shutdown().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu0;
    // Let the last ACKs go out before reading the wire counters.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let wire = conn.stats().map_or(0, |s| s.bytes_sent) + sconn.stats().map_or(0, |s| s.bytes_sent)
        - wire0;
    let m = meter.snapshot();
    // Each payload byte is counted by the sender's and the receiver's pumps: halve.
    let payload = (m.to_tunnel + m.from_tunnel) / 2;
    Outcome {
        payload,
        encoded: (m.to_tunnel_encoded + m.from_tunnel_encoded) / 2,
        wire,
        cpu_us_per_mib: cpu.as_micros() as f64 / (payload as f64 / (1 << 20) as f64),
        requests_per_s: (per_connection * CONNECTIONS) as f64 / secs,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let requests: usize = std::env::var("FERRY_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut g = Gen(1);
    let sample = bid_request(&mut g);
    let response = bid_response(&mut g, &sample);
    println!(
        "RTB-like workload: {requests} requests (~{} B) and responses (~{} B) over 64 keep-alive connections, one session on loopback",
        sample.len(),
        response.len()
    );
    println!();
    println!(
        "{:<10} {:>6} {:>12} {:>12} {:>11} {:>11} {:>13} {:>10}",
        "codec",
        "batch",
        "payload MiB",
        "wire MiB",
        "stream/payl",
        "wire/payl.",
        "CPU us/MiB",
        "req/s"
    );
    let mut best_flate_batched = f64::MAX;
    let mut best_batched = (f64::MAX, String::new());
    for codec in [
        Codec::None,
        Codec::Snappy,
        Codec::Flate(1),
        Codec::Flate(6),
        Codec::Zstd(3),
    ] {
        for batch in [Duration::ZERO, Duration::from_millis(2)] {
            let o = run(codec, batch, requests).await;
            let ratio = o.wire as f64 / o.payload as f64;
            if matches!(codec, Codec::Flate(_)) && !batch.is_zero() {
                best_flate_batched = best_flate_batched.min(ratio);
            }
            if !batch.is_zero() && ratio < best_batched.0 {
                best_batched = (ratio, codec.to_string());
            }
            println!(
                "{:<10} {:>6} {:>12.2} {:>12.2} {:>11.3} {:>11.3} {:>13.0} {:>10.0}",
                codec.to_string(),
                format!("{}ms", batch.as_millis()),
                o.payload as f64 / (1 << 20) as f64,
                o.wire as f64 / (1 << 20) as f64,
                o.encoded as f64 / o.payload as f64,
                ratio,
                o.cpu_us_per_mib,
                o.requests_per_s
            );
        }
    }
    println!();
    println!(
        "best with batching: {} at {:.3} of payload (target: at most 0.125): {}",
        best_batched.1,
        best_batched.0,
        if best_batched.0 <= 0.125 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "flate with batching: wire = {:.3} of payload (target: at most 0.125): {}",
        best_flate_batched,
        if best_flate_batched <= 0.125 {
            "met"
        } else {
            "MISSED"
        }
    );
}
