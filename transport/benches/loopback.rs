//! Real loopback throughput of one stream, and CPU per MiB: Ferry with and without TLS against
//! kcptun with and without its AES cipher, in one run.
//!
//! All carry the same workload: a client writes N MiB into one stream while reading the echo back
//! (so N MiB flow each way). Ferry: echo server and client endpoints in this process, `crypto
//! none` and `crypto tls` (a development CA made here). kcptun (Debian package `kcptun`, `--mode
//! fast3 --nocomp`, `--crypt none` and `--crypt aes`): its server and client processes between a
//! TCP client and a TCP echo backend in this process. CPU is the total of this process and (for
//! kcptun) its two processes, so both sides pay for the same load generator and echo. Figures
//! are medians of three runs.
//!
//! Run: `cargo bench -p ferry-transport --bench loopback` (`FERRY_BENCH_MIB` sets N, default 128).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_test_support::procfs::cpu_time;
use ferry_transport::{rustls, CryptoConfig, Endpoint, Identity, ServerConfig, TransportConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Period of the payload pattern: writes and checks are slices of it, so the load generator
/// costs a memcpy/memcmp per byte and the figures measure the tunnels, not the generator.
const PATTERN_BYTES: usize = 1 << 20;
/// Size of each write.
const CHUNK_BYTES: usize = 64 << 10;

fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    // Incompressible enough for a tunnel without compression.
    PATTERN.get_or_init(|| ferry_test_support::payload(1, PATTERN_BYTES))
}

/// True when `data` equals the pattern's bytes from stream offset `at`.
fn matches_pattern(data: &[u8], at: usize) -> bool {
    let p = pattern();
    let mut checked = 0;
    while checked < data.len() {
        let off = (at + checked) % PATTERN_BYTES;
        let n = (PATTERN_BYTES - off).min(data.len() - checked);
        if data[checked..checked + n] != p[off..off + n] {
            return false;
        }
        checked += n;
    }
    true
}

/// Writes `total` bytes into `w` while reading them back from `r`; checks the bytes. With
/// `half_close` the writer shuts down when done (Ferry propagates half-close); without, it waits
/// for the reader (kcptun closes the whole connection on a half-close, losing the echo's tail).
async fn echo_through<R, W>(
    mut r: R,
    mut w: W,
    total: usize,
    half_close: bool,
) -> Result<(), String>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let writer = tokio::spawn(async move {
        let p = pattern();
        let mut sent = 0;
        while sent < total {
            let off = sent % PATTERN_BYTES;
            w.write_all(&p[off..off + CHUNK_BYTES])
                .await
                .map_err(|e| e.to_string())?;
            sent += CHUNK_BYTES;
        }
        if half_close {
            w.shutdown().await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(w)
    });
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut got = 0;
    while got < total {
        let n = r.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("stream ended after {got} of {total} bytes"));
        }
        if !matches_pattern(&buf[..n], got) {
            return Err(format!("echoed bytes differ near offset {got}"));
        }
        got += n;
    }
    writer.await.map_err(|e| e.to_string())?.map(drop)
}

struct Measure {
    mib_per_s: f64,
    cpu_us_per_mib: f64,
}

/// Transport settings for the Ferry runs; `FERRY_BENCH_FIXED_MBPS` selects the fixed controller.
fn ferry_config() -> TransportConfig {
    match std::env::var("FERRY_BENCH_FIXED_MBPS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(mbps) => TransportConfig::default().congestion(
            ferry_protocol::congestion::CongestionConfig::Fixed {
                rate_bps: mbps * 1_000_000,
            },
        ),
        None => TransportConfig::default(),
    }
}

/// A development set from `ferry-certs`, as client and server crypto.
fn tls_pair() -> (CryptoConfig, CryptoConfig) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let set = ferry_certs::generate(&ferry_certs::Options::default()).unwrap();
    let cert = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert(&set.ca.cert)).unwrap();
    let identity = Identity {
        chain: vec![cert(&set.gateway.cert)],
        key: PrivateKeyDer::from_pem_slice(set.gateway.key.as_bytes()).unwrap(),
    };
    let server = CryptoConfig::server(identity, None).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let client = CryptoConfig::client(roots, name, None).unwrap();
    (client, server)
}

async fn ferry_run(mib: usize, tls: bool) -> Measure {
    let (client_crypto, server_crypto) = if tls {
        tls_pair()
    } else {
        (CryptoConfig::None, CryptoConfig::None)
    };
    let server = Endpoint::server(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig::new(ferry_config().crypto(server_crypto)),
    )
    .unwrap();
    tokio::spawn(ferry_transport::echo::serve(server.clone()));
    let client = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = client
        .connect(server.local_addr(), ferry_config().crypto(client_crypto))
        .await
        .unwrap();
    let stream = conn.open_stream().await.unwrap();
    let (r, w) = tokio::io::split(stream);
    let cpu0 = cpu_time("self");
    let t0 = Instant::now();
    echo_through(r, w, mib << 20, true)
        .await
        .expect("ferry echo");
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_time("self") - cpu0;
    Measure {
        mib_per_s: mib as f64 / secs,
        cpu_us_per_mib: cpu.as_micros() as f64 / (2 * mib) as f64,
    }
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kcptun {
    server: Child,
    client: Child,
    local: SocketAddr,
}

impl Drop for Kcptun {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.client.kill();
        let _ = self.server.wait();
        let _ = self.client.wait();
    }
}

/// kcptun between two local ports; `crypt` is its cipher (`none` or `aes`).
async fn start_kcptun(backend: SocketAddr, crypt: &str) -> Option<Kcptun> {
    let udp_port = free_port();
    let local_port = free_port();
    let flags = [
        "--mode",
        "fast3",
        "--crypt",
        crypt,
        "--key",
        "ferry-bench-key",
        "--nocomp",
        "--quiet",
    ];
    let server = Command::new("kcptun-server")
        .args([
            "-t",
            &backend.to_string(),
            "-l",
            &format!("127.0.0.1:{udp_port}"),
        ])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let client = Command::new("kcptun-client")
        .args([
            "-r",
            &format!("127.0.0.1:{udp_port}"),
            "-l",
            &format!("127.0.0.1:{local_port}"),
        ])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let k = Kcptun {
        server,
        client,
        local: format!("127.0.0.1:{local_port}").parse().unwrap(),
    };
    for _ in 0..100 {
        if TcpStream::connect(k.local).await.is_ok() {
            return Some(k);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn kcptun_run(mib: usize, backend: SocketAddr, crypt: &str) -> Option<Measure> {
    let k = start_kcptun(backend, crypt).await?;
    // The readiness probe above opened (and closed) one connection; start fresh.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stream = TcpStream::connect(k.local).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (r, w) = stream.into_split();
    let pids = [k.server.id().to_string(), k.client.id().to_string()];
    let cpu = |pids: &[String]| cpu_time("self") + pids.iter().map(cpu_time).sum::<Duration>();
    let cpu0 = cpu(&pids);
    let t0 = Instant::now();
    echo_through(r, w, mib << 20, false)
        .await
        .expect("kcptun echo");
    let secs = t0.elapsed().as_secs_f64();
    let used = cpu(&pids) - cpu0;
    Some(Measure {
        mib_per_s: mib as f64 / secs,
        cpu_us_per_mib: used.as_micros() as f64 / (2 * mib) as f64,
    })
}

async fn tcp_echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Three runs of `run`; medians of throughput and CPU. `None` if a run could not start.
async fn measure<F, Fut>(mut run: F) -> Option<Measure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Measure>>,
{
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(run().await?);
    }
    Some(Measure {
        mib_per_s: median(runs.iter().map(|m| m.mib_per_s).collect()),
        cpu_us_per_mib: median(runs.iter().map(|m| m.cpu_us_per_mib).collect()),
    })
}

fn row(name: &str, m: &Measure) {
    println!(
        "{:<28} {:>14.1} {:>16.0}",
        name, m.mib_per_s, m.cpu_us_per_mib
    );
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: usize = std::env::var("FERRY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    println!(
        "Loopback echo of {mib} MiB through one stream ({mib} MiB each way), median of 3 runs"
    );
    println!();
    println!(
        "{:<28} {:>14} {:>16}",
        "", "MiB/s each way", "CPU us per MiB"
    );
    let none = measure(|| async { Some(ferry_run(mib, false).await) })
        .await
        .expect("ferry runs");
    row("ferry (crypto none)", &none);
    let tls = measure(|| async { Some(ferry_run(mib, true).await) })
        .await
        .expect("ferry runs");
    row("ferry (crypto tls)", &tls);

    let backend = tcp_echo_backend().await;
    let kcp_none = measure(|| kcptun_run(mib, backend, "none")).await;
    let kcp_aes = match &kcp_none {
        Some(m) => {
            row("kcptun fast3 (crypt none)", m);
            let aes = measure(|| kcptun_run(mib, backend, "aes")).await;
            if let Some(a) = &aes {
                row("kcptun fast3 (crypt aes)", a);
            }
            aes
        }
        None => {
            println!(
                "{:<28} skipped: kcptun-server/kcptun-client not installed (apt-get install kcptun)",
                "kcptun fast3"
            );
            None
        }
    };
    println!();
    let cost = 1.0 - tls.mib_per_s / none.mib_per_s;
    println!(
        "tls vs none: throughput {:.2}x, CPU per MiB {:.2}x, cost {:.0}% (target: at most 25%): {}",
        tls.mib_per_s / none.mib_per_s,
        tls.cpu_us_per_mib / none.cpu_us_per_mib,
        cost * 100.0,
        verdict(cost <= 0.25)
    );
    if let Some(k) = &kcp_none {
        println!(
            "ferry none / kcptun none: throughput {:.2}x, CPU per MiB {:.2}x (target: throughput >= 3x): {}",
            none.mib_per_s / k.mib_per_s,
            none.cpu_us_per_mib / k.cpu_us_per_mib,
            verdict(none.mib_per_s >= 3.0 * k.mib_per_s)
        );
    }
    if let Some(k) = &kcp_aes {
        println!(
            "ferry tls / kcptun aes: throughput {:.2}x, CPU per MiB {:.2}x (target: beat kcptun with AES): {}",
            tls.mib_per_s / k.mib_per_s,
            tls.cpu_us_per_mib / k.cpu_us_per_mib,
            verdict(tls.mib_per_s > k.mib_per_s)
        );
    }
}
