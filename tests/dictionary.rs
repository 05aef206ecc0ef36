//! End to end: shared zstd dictionaries (`ferry-dict`, `--compress zstd:3:dict=FILE`,
//! `--compress-dict`) between the real binaries: trained and checked by `ferry-dict`, they
//! carry data intact when both ends know them, and a stream whose dictionary the receiver lacks
//! is reset on both outer sockets, with the dictionary's ID in the receiver's log; a reload
//! (SIGHUP) gives new streams the dictionaries of the new configuration.

mod common;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A scratch directory of this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-dict-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// RTB-like messages of generator `seed`, one per line.
fn jsonl(seed: u64, exchanges: usize) -> Vec<u8> {
    ferry_test_support::rtb::training_samples(seed, exchanges).join(&b'\n')
}

/// Runs `ferry-dict` with `args`; returns its standard output, failing the test on an error.
fn ferry_dict(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-dict"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ferry-dict {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Trains a dictionary with `ferry-dict train` on RTB-like traffic of `seed`; returns its
/// file and ID (as `0x` and 8 hex digits).
fn trained(dir: &Path, seed: u64) -> (String, String) {
    let samples = dir.join(format!("samples-{seed}.jsonl"));
    std::fs::write(&samples, jsonl(seed, 1000)).unwrap();
    let dict = dir.join(format!("rtb-{seed}.dict"));
    let said = ferry_dict(&[
        "train",
        "--out",
        dict.to_str().unwrap(),
        "--size",
        "16KiB",
        "--lines",
        samples.to_str().unwrap(),
    ]);
    let id = said
        .split_whitespace()
        .find(|w| w.starts_with("0x"))
        .unwrap_or_else(|| panic!("no ID in {said:?}"))
        .trim_end_matches(',')
        .to_owned();
    assert!(said.contains("2000 samples"), "{said}");
    (dict.display().to_string(), id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_dict_trains_and_checks_a_dictionary_and_both_ends_carry_data_with_it() {
    let dir = scratch("both");
    let (dict, id) = trained(&dir, 1);
    // `check` names it and measures it on traffic it was not trained on.
    let fresh = dir.join("fresh.jsonl");
    std::fs::write(&fresh, jsonl(99, 100)).unwrap();
    let said = ferry_dict(&["check", &dict, "--lines", fresh.to_str().unwrap()]);
    assert!(said.contains(&id) && said.contains("16384 bytes"), "{said}");
    assert!(
        said.contains("200 samples") && said.contains("with the dictionary"),
        "{said}"
    );
    // An existing file is not replaced without --force, and a bad one is named.
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-dict"))
        .args(["train", "--out", &dict, fresh.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("exists"));
    let out = Command::new(env!("CARGO_BIN_EXE_ferry-dict"))
        .args(["check", fresh.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("fresh.jsonl"),
        "{err}"
    );

    let data = jsonl(42, 500);
    let compress = format!("zstd:3:dict={dict}");
    let (backend, _) = echo_backend().await;
    let (_gw, gw_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--compress",
        &compress,
    ]);
    let (_agent, listen) = agent(gw_addr, &["--compress", &compress]).await;
    ready(listen).await;
    let s = TcpStream::connect(listen).await.unwrap();
    assert!(
        round_trip(s, data.clone()).await.unwrap() == data,
        "bytes changed"
    );

    // A roll-out: the gateway already sends with the new dictionary and still decodes the old
    // one; the agent sends with the old one and decodes the new one.
    let (new_dict, _) = trained(&dir, 2);
    let (_gw, gw_addr) = gateway(&[
        "--backend",
        &format!("tcp://{backend}"),
        "--compress",
        &format!("zstd:3:dict={new_dict}"),
        "--compress-dict",
        &dict,
    ]);
    let (_agent, listen) = agent(
        gw_addr,
        &["--compress", &compress, "--compress-dict", &new_dict],
    )
    .await;
    ready(listen).await;
    let s = TcpStream::connect(listen).await.unwrap();
    assert!(
        round_trip(s, data.clone()).await.unwrap() == data,
        "bytes changed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_without_the_dictionary_resets_the_stream_on_both_sides_and_names_it() {
    let dir = scratch("lacking");
    let (dict, id) = trained(&dir, 3);
    // A backend that reports how each connection to it ended.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = tx.send(s.read_to_end(&mut sink).await.map_err(|e| e.kind()));
            });
        }
    });
    let log = dir.join("gateway.log");
    let gw_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let args: Vec<String> = [
        "--listen",
        &gw_addr.to_string(),
        "--backend",
        &format!("tcp://{backend}"),
    ]
    .map(String::from)
    .to_vec();
    let _gw = spawn_logged(env!("CARGO_BIN_EXE_ferry-gateway"), &args, &log);
    let (_agent, listen) = agent(gw_addr, &["--compress", &format!("zstd:3:dict={dict}")]).await;
    // Not `ready`: its probe would be reset too. The client waits for the session.
    let s = TcpStream::connect(listen).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), round_trip(s, jsonl(5, 20)))
        .await
        .expect("the client's end in time");
    let err = result.expect_err("a reset, not a clean end of the stream");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "client: {err}");
    // The backend's side: reset too. (Connections that carried nothing end cleanly first:
    // `agent` checks that the agent listens by connecting, and that connection is carried.)
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(end) = ended.recv().await {
            match end {
                Ok(0) => continue,
                other => return assert_eq!(other, Err(ErrorKind::ConnectionReset), "backend"),
            }
        }
    })
    .await
    .expect("the backend's connection reset in time");
    let line = wait_for_log(
        &log,
        &[&format!("compression dictionary {id} unknown")],
        Duration::from_secs(10),
    )
    .await;
    assert!(line.contains("WARN"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_gives_new_streams_the_dictionaries_of_the_new_configuration() {
    let dir = scratch("reload");
    let (dict, id) = trained(&dir, 4);
    let (backend, _) = echo_backend().await;
    let gw_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let config = dir.join("gateway.toml");
    let write_config = |extra: &str| {
        let text = format!("listen = \"{gw_addr}\"\nbackend = [\"tcp://{backend}\"]\n{extra}");
        std::fs::write(&config, text).unwrap();
    };
    write_config("");
    let log = dir.join("gateway.log");
    let args = vec!["--config".to_owned(), config.display().to_string()];
    let gw = spawn_logged_at(env!("CARGO_BIN_EXE_ferry-gateway"), &args, &log, "info");
    let (_agent, listen) = agent(gw_addr, &["--compress", &format!("zstd:3:dict={dict}")]).await;
    let data = jsonl(6, 50);
    // The gateway does not know the agent's dictionary yet: the stream is reset.
    let s = TcpStream::connect(listen).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), round_trip(s, data.clone()))
        .await
        .expect("the client's end in time");
    assert_eq!(
        result.expect_err("a reset").kind(),
        ErrorKind::ConnectionReset
    );
    wait_for_log(
        &log,
        &[&format!("compression dictionary {id} unknown")],
        Duration::from_secs(10),
    )
    .await;
    // The operator adds it and reloads: new streams decode with it.
    write_config(&format!("compress-dict = [\"{dict}\"]\n"));
    // SAFETY: a plain kill(2) of our own child.
    unsafe {
        libc::kill(gw.0.id() as i32, libc::SIGHUP);
    }
    wait_for_log(
        &log,
        &["configuration reloaded", "compress"],
        Duration::from_secs(20),
    )
    .await;
    let s = TcpStream::connect(listen).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(20), round_trip(s, data.clone()))
        .await
        .expect("the round trip in time")
        .expect("carried, not reset");
    assert!(back == data, "bytes changed");
    let _ = std::fs::remove_dir_all(&dir);
}
