//! Live reload on SIGHUP, end to end with the real binaries: transfers that run across ten
//! reloads of backends, allow-lists and certificates lose no byte and no stream; a client or
//! an agent taken out of an allow-list is refused when it comes anew, not cut while it is
//! carried; a configuration that does not parse or validate is refused, logged and counted,
//! and the running one keeps serving; a setting that cannot change live is named, not dropped
//! in silence.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

/// A directory of this test's own.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-reload-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn hang_up(proc: &Proc) {
    // SAFETY: a plain kill(2) of our own child.
    unsafe {
        libc::kill(proc.0.id() as i32, libc::SIGHUP);
    }
}

/// A TOML list of strings.
fn list<T: ToString>(items: &[T]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| format!("{:?}", i.to_string()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// Lines of `log` that carry every one of `words`.
fn count_lines(log: &Path, words: &[&str]) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .count()
}

/// Sends SIGHUP to `proc` and waits until its log says the `n`th reload was applied.
async fn reload(proc: &Proc, log: &Path, n: usize) {
    hang_up(proc);
    let words = ["configuration reloaded", "applied="];
    wait_until(&format!("reload {n} in {}", log.display()), WAIT, || {
        count_lines(log, &words) >= n
    })
    .await;
}

/// Starts `bin` (logging at info to `log`) with `--config config` and `args`: the file is what
/// a reload reads again.
fn configured(bin: &str, config: &Path, log: &Path, args: &[&str]) -> Proc {
    let mut all = vec!["--config".to_owned(), config.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    spawn_logged_at(bin, &all, log, "info")
}

/// The monitor's `/metrics` sample `name` (with `label`).
async fn scrape(monitor: SocketAddr, name: &str, label: Option<(&str, &str)>) -> f64 {
    let (status, _, body) = http_get(monitor, "/metrics").await;
    assert_eq!(status, 200);
    metric(&body, name, label)
}

fn monitor_address() -> SocketAddr {
    format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap()
}

/// One client that keeps a connection open and exchanges seeded chunks through the echo
/// backend, checking every byte, until `stop`; returns the bytes it checked.
fn long_transfer(
    listen: SocketAddr,
    seed: u64,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        const CHUNK: usize = 16 * 1024;
        let mut s = TcpStream::connect(listen).await.expect("connect");
        let mut back = vec![0u8; CHUNK];
        let mut checked = 0u64;
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let chunk = payload(seed * 1_000_000 + i, CHUNK);
            s.write_all(&chunk)
                .await
                .unwrap_or_else(|e| panic!("transfer {seed}: write of chunk {i}: {e}"));
            s.read_exact(&mut back)
                .await
                .unwrap_or_else(|e| panic!("transfer {seed}: read of chunk {i}: {e}"));
            assert!(
                back == chunk,
                "transfer {seed}: chunk {i} came back changed"
            );
            checked += CHUNK as u64;
            i += 1;
            rounds.fetch_add(1, Ordering::SeqCst);
        }
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "transfer {seed}: bytes after the last chunk"
        );
        checked
    })
}

/// One short connection through the agent, whose bytes must come back intact.
async fn short_round_trip(listen: SocketAddr, seed: u64) {
    let data = payload(seed, 40_000);
    let s = TcpStream::connect(listen).await.unwrap();
    let back = round_trip(s, data.clone()).await.unwrap();
    assert!(back == data, "short connection {seed}: bytes changed");
}

/// What the gateway and the agent run with at one step of the test.
struct Step {
    backends: Vec<usize>,
    gateway_allow: &'static [&'static str],
    agent_allow: &'static [&'static str],
    /// The certificate set the gateway presents: 0 or 1.
    certs: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_run_across_ten_reloads_of_backends_allow_lists_and_certificates_losing_nothing()
{
    let dir = scratch("ten");
    let sets = [dir.join("one"), dir.join("two")];
    for set in &sets {
        write_dev_certs(set);
    }
    // The agent trusts both CAs, so that its sessions come up whichever set the gateway has.
    let cas = dir.join("cas.pem");
    let both: Vec<u8> = sets
        .iter()
        .flat_map(|s| std::fs::read(s.join("ca.pem")).unwrap())
        .collect();
    std::fs::write(&cas, both).unwrap();
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(echo_backend_on("127.0.0.6").await);
    }
    let wide: &[&str] = &["127.0.0.0/8", "10.0.0.0/8"];
    let narrow: &[&str] = &["127.0.0.1/32"];
    let loopback: &[&str] = &["127.0.0.0/8"];
    let step = |i: usize, backends: Vec<usize>| Step {
        backends,
        gateway_allow: if i % 2 == 0 { loopback } else { wide },
        agent_allow: if i % 3 == 0 { narrow } else { loopback },
        // Set one at first, set two at the end: five changes in between.
        certs: (i / 2) % 2,
    };
    let plan: Vec<Step> = [
        vec![0],
        vec![0, 1],
        vec![1],
        vec![1, 2],
        vec![2],
        vec![0, 2],
        vec![0],
        vec![0, 1, 2],
        vec![1],
        vec![2],
        vec![0, 1],
    ]
    .into_iter()
    .enumerate()
    .map(|(i, b)| step(i, b))
    .collect();
    let (gateway_toml, agent_toml) = (dir.join("gateway.toml"), dir.join("agent.toml"));
    let reset_key = dir.join("reset.key");
    let write = |s: &Step| {
        let addresses: Vec<String> = s
            .backends
            .iter()
            .map(|&b| format!("tcp://{}", backends[b].0))
            .collect();
        let certs = &sets[s.certs];
        let text = format!(
            "backend = {}\nallow-ip = {}\ntls-cert = {:?}\ntls-key = {:?}\nreset-key-file = {:?}\n",
            list(&addresses),
            list(s.gateway_allow),
            certs.join("gateway.pem"),
            certs.join("gateway.key"),
            reset_key,
        );
        std::fs::write(&gateway_toml, text).unwrap();
        let text = format!("allow-ip = {}\ntls-ca = {:?}\n", list(s.agent_allow), cas);
        std::fs::write(&agent_toml, text).unwrap();
    };
    write(&plan[0]);

    let gateway_addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let (gateway_monitor, agent_monitor) = (monitor_address(), monitor_address());
    let gateway_log = dir.join("gateway.log");
    let gateway = configured(
        env!("CARGO_BIN_EXE_ferry-gateway"),
        &gateway_toml,
        &gateway_log,
        &[
            "--listen",
            &gateway_addr.to_string(),
            "--crypto",
            "tls",
            "--monitor",
            &gateway_monitor.to_string(),
        ],
    );
    let listen: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let agent_log = dir.join("agent.log");
    let agent_proc = configured(
        env!("CARGO_BIN_EXE_ferry-agent"),
        &agent_toml,
        &agent_log,
        &[
            "--listen",
            &format!("tcp://{listen}"),
            "--gateway",
            &gateway_addr.to_string(),
            "--crypto",
            "tls",
            "--monitor",
            &agent_monitor.to_string(),
        ],
    );
    ready(listen).await;

    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Vec<Arc<AtomicU64>> = (0..4).map(|_| Arc::default()).collect();
    let transfers: Vec<_> = rounds
        .iter()
        .enumerate()
        .map(|(i, r)| long_transfer(listen, i as u64 + 1, stop.clone(), r.clone()))
        .collect();
    let all_moved = |since: &[u64]| {
        rounds
            .iter()
            .zip(since)
            .all(|(r, s)| r.load(Ordering::SeqCst) > *s)
    };
    let now = || -> Vec<u64> { rounds.iter().map(|r| r.load(Ordering::SeqCst)).collect() };
    wait_until("every transfer under way", WAIT, || all_moved(&[0; 4])).await;

    for (n, s) in plan.iter().enumerate().skip(1) {
        write(s);
        reload(&gateway, &gateway_log, n).await;
        reload(&agent_proc, &agent_log, n).await;
        // New streams go to the backends configured now, and to no other.
        let before: Vec<usize> = backends
            .iter()
            .map(|b| b.1.load(Ordering::SeqCst))
            .collect();
        for k in 0..3 {
            short_round_trip(listen, (n * 10 + k) as u64).await;
        }
        for (b, (_, accepted)) in backends.iter().enumerate() {
            if !s.backends.contains(&b) {
                assert_eq!(
                    accepted.load(Ordering::SeqCst),
                    before[b],
                    "reload {n}: backend {b} was removed, yet took a new stream"
                );
            }
        }
        let taken: usize = backends
            .iter()
            .map(|b| b.1.load(Ordering::SeqCst))
            .sum::<usize>()
            - before.iter().sum::<usize>();
        assert_eq!(
            taken, 3,
            "reload {n}: three new streams, three backend connections"
        );
        // Every long transfer keeps moving after the reload.
        let since = now();
        wait_until(
            &format!("every transfer moving after reload {n}"),
            WAIT,
            || all_moved(&since),
        )
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    for (i, t) in transfers.into_iter().enumerate() {
        let checked = t
            .await
            .unwrap_or_else(|e| panic!("transfer {}: {e}", i + 1));
        assert!(checked > 0);
    }

    // The gateway presents set two now: an agent that trusts only set two's CA gets a
    // session, one that trusts only set one's does not (new handshakes use the new files).
    let (_fresh, fresh_listen) = agent(
        gateway_addr,
        &["--tls-ca", &sets[1].join("ca.pem").display().to_string()],
    )
    .await;
    ready(fresh_listen).await;
    let (_stale, stale_listen) = agent(
        gateway_addr,
        &[
            "--tls-ca",
            &sets[0].join("ca.pem").display().to_string(),
            "--session-wait",
            "300ms",
        ],
    )
    .await;
    expect_reset(stale_listen, "an agent that trusts only the old CA").await;

    for monitor in [gateway_monitor, agent_monitor] {
        let ok = scrape(
            monitor,
            "ferry_config_reloads_total",
            Some(("result", "ok")),
        )
        .await;
        let failed = scrape(
            monitor,
            "ferry_config_reloads_total",
            Some(("result", "failed")),
        )
        .await;
        assert_eq!((ok, failed), (10.0, 0.0), "monitor {monitor}");
    }
    // The reset key came from its own file: nothing changed that needs a restart.
    for log in [&gateway_log, &agent_log] {
        assert_eq!(count_lines(log, &["need a restart"]), 0);
        assert_eq!(count_lines(log, &["reload refused"]), 0);
    }
    drop((agent_proc, gateway));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection that stays open: one exchange now, more later.
struct Held {
    socket: TcpStream,
    seed: u64,
}

impl Held {
    async fn open(listen: SocketAddr, seed: u64) -> Self {
        let mut held = Self {
            socket: TcpStream::connect(listen).await.unwrap(),
            seed,
        };
        held.exchange().await;
        held
    }

    async fn exchange(&mut self) {
        self.seed += 1;
        let chunk = payload(self.seed, 20_000);
        let back = exchange(&mut self.socket, &chunk).await.unwrap();
        assert!(back == chunk, "the held connection's bytes changed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_out_of_an_allow_list_by_a_reload_new_clients_are_refused_and_carried_ones_go_on() {
    let dir = scratch("allow");
    let (backend, _) = echo_backend().await;
    let gateway_toml = dir.join("gateway.toml");
    let gateway_config = |allow: &str| {
        let text = format!("backend = \"tcp://{backend}\"\nallow-ip = [\"{allow}\"]\n");
        std::fs::write(&gateway_toml, text).unwrap();
    };
    gateway_config("127.0.0.0/8");
    let gateway_addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let gateway_monitor = monitor_address();
    let gateway_log = dir.join("gateway.log");
    let gateway = configured(
        env!("CARGO_BIN_EXE_ferry-gateway"),
        &gateway_toml,
        &gateway_log,
        &[
            "--listen",
            &gateway_addr.to_string(),
            "--monitor",
            &gateway_monitor.to_string(),
        ],
    );

    // The agent's own allow-list: its clients.
    let agent_toml = dir.join("agent.toml");
    std::fs::write(&agent_toml, "allow-ip = \"127.0.0.1/32\"\n").unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let agent_log = dir.join("agent.log");
    let agent_proc = configured(
        env!("CARGO_BIN_EXE_ferry-agent"),
        &agent_toml,
        &agent_log,
        &[
            "--listen",
            &format!("tcp://{listen}"),
            "--gateway",
            &gateway_addr.to_string(),
        ],
    );
    ready(listen).await;

    let mut held = Held::open(listen, 100).await;
    std::fs::write(&agent_toml, "allow-ip = \"10.0.0.0/8\"\n").unwrap();
    reload(&agent_proc, &agent_log, 1).await;
    expect_reset(listen, "a new client the agent's allow-list no longer has").await;
    held.exchange().await;

    // The gateway's: agents. This agent's session stays; its new streams are refused, and
    // an agent that comes anew gets no session.
    std::fs::write(&agent_toml, "allow-ip = \"127.0.0.1/32\"\n").unwrap();
    reload(&agent_proc, &agent_log, 2).await;
    let mut through_gateway = Held::open(listen, 200).await;
    gateway_config("10.0.0.0/8");
    reload(&gateway, &gateway_log, 1).await;
    expect_reset(
        listen,
        "a new stream from an agent the gateway's allow-list no longer has",
    )
    .await;
    held.exchange().await;
    through_gateway.exchange().await;
    let (_late, late_listen) = agent(gateway_addr, &["--session-wait", "300ms"]).await;
    expect_reset(late_listen, "a client of an agent that gets no session").await;
    let refused = scrape(
        gateway_monitor,
        "ferry_connections_rejected_total",
        Some(("reason", "allow-list")),
    )
    .await;
    assert!(
        refused >= 2.0,
        "one stream and the new agent's session: {refused}"
    );
    held.exchange().await;
    through_gateway.exchange().await;
    drop((agent_proc, gateway));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_does_not_parse_or_validate_is_refused_logged_counted_and_the_old_one_serves(
) {
    let dir = scratch("invalid");
    let (first, first_accepted) = echo_backend_on("127.0.0.7").await;
    let (second, second_accepted) = echo_backend_on("127.0.0.7").await;
    let gateway_toml = dir.join("gateway.toml");
    std::fs::write(&gateway_toml, format!("backend = \"tcp://{first}\"\n")).unwrap();
    let gateway_addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
    let monitor = monitor_address();
    let log = dir.join("gateway.log");
    let gateway = configured(
        env!("CARGO_BIN_EXE_ferry-gateway"),
        &gateway_toml,
        &log,
        &[
            "--listen",
            &gateway_addr.to_string(),
            "--monitor",
            &monitor.to_string(),
        ],
    );
    let (_agent, listen) = agent(gateway_addr, &[]).await;
    ready(listen).await;
    let loaded_at = scrape(monitor, "ferry_config_last_reload_timestamp_seconds", None).await;
    assert!(loaded_at > 1e9, "the start-up load has a time: {loaded_at}");

    // Not TOML; TOML whose value no flag takes; a file that names a backend and a second
    // setting that is invalid (refused whole: the backend is not taken either).
    let refused = [
        ("backend = ", "invalid config"),
        ("max-connections = \"lots\"\n", "lots"),
        (
            &*format!("backend = \"tcp://{second}\"\nservice = \"bad name=tcp://127.0.0.1:1\"\n"),
            "bad name",
        ),
    ];
    for (n, (text, why)) in refused.iter().enumerate() {
        std::fs::write(&gateway_toml, text).unwrap();
        hang_up(&gateway);
        let line = wait_for_log(&log, &["configuration reload refused", why], WAIT).await;
        assert!(line.contains("running configuration stays"), "{line}");
        assert_eq!(count_lines(&log, &["configuration reload refused"]), n + 1);
        let failed = scrape(
            monitor,
            "ferry_config_reloads_total",
            Some(("result", "failed")),
        )
        .await;
        assert_eq!(failed, (n + 1) as f64);
        short_round_trip(listen, n as u64).await;
    }
    assert_eq!(
        second_accepted.load(Ordering::SeqCst),
        0,
        "nothing of a refused file applies"
    );
    let served = first_accepted.load(Ordering::SeqCst);
    assert_eq!(
        scrape(monitor, "ferry_config_last_reload_timestamp_seconds", None).await,
        loaded_at,
        "a refused reload is no load"
    );

    // Valid: applied, except the setting that cannot change live, which is named and kept.
    let text = format!("backend = \"tcp://{second}\"\nudp-idle-timeout = \"5s\"\n");
    std::fs::write(&gateway_toml, text).unwrap();
    reload(&gateway, &log, 1).await;
    wait_for_log(&log, &["need a restart", "settings=udp-idle-timeout"], WAIT).await;
    short_round_trip(listen, 99).await;
    assert_eq!(second_accepted.load(Ordering::SeqCst), 1);
    assert_eq!(first_accepted.load(Ordering::SeqCst), served);
    let ok = scrape(
        monitor,
        "ferry_config_reloads_total",
        Some(("result", "ok")),
    )
    .await;
    assert_eq!(ok, 1.0);
    let reloaded_at = scrape(monitor, "ferry_config_last_reload_timestamp_seconds", None).await;
    assert!(reloaded_at > loaded_at, "{reloaded_at} after {loaded_at}");
    drop(gateway);
    let _ = std::fs::remove_dir_all(&dir);
}
