//! A working Ferry pair on loopback: an echo server and a client that pushes data through one
//! stream over real UDP, checks every byte that comes back, and prints the throughput.
//!
//! `cargo run --release -p ferry-transport --example loopback-echo [MIB]` (default 64 MiB).

use std::time::Instant;

use ferry_transport::{Endpoint, ServerConfig, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(64);
    let server = Endpoint::server("127.0.0.1:0".parse()?, ServerConfig::default())?;
    println!(
        "ferry echo server listening on udp://{}",
        server.local_addr()
    );
    tokio::spawn(ferry_transport::echo::serve(server.clone()));

    let client = Endpoint::client("127.0.0.1:0".parse()?)?;
    let started = Instant::now();
    let conn = client
        .connect(server.local_addr(), TransportConfig::default())
        .await?;
    println!("connected in {:?}", started.elapsed());
    let (mut reader, mut writer) = tokio::io::split(conn.open_stream().await?);
    let total = mib << 20;
    let started = Instant::now();
    let send = tokio::spawn(async move {
        let mut chunk = vec![0u8; 64 << 10];
        let mut sent = 0usize;
        while sent < total {
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = ((sent + i) % 251) as u8;
            }
            writer.write_all(&chunk).await?;
            sent += chunk.len();
        }
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(())
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut received = 0usize;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            if *b != ((received + i) % 251) as u8 {
                return Err(format!("byte {} differs", received + i).into());
            }
        }
        received += n;
    }
    send.await??;
    let secs = started.elapsed().as_secs_f64();
    if received != total {
        return Err(format!("received {received} of {total} bytes").into());
    }
    let stats = conn.stats().unwrap_or_default();
    println!(
        "echoed {mib} MiB intact in {secs:.2} s: {:.0} MiB/s each way (rtt {:?}, {} packets sent, {} lost)",
        mib as f64 / secs,
        stats.rtt,
        stats.packets_sent,
        stats.packets_lost
    );
    Ok(())
}
