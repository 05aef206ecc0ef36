//! How fast a session learns that its peer lost it, and how fast the next one starts: stateless
//! resets from a restarted server (or a fleet member), forged resets, ICMP unreachable, and
//! address tokens that let a reconnect skip the Retry round trip. All in virtual time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_protocol::config::{ServerConfig, StaticSecret, TransportConfig};
use ferry_protocol::connection::{ConnectionError, Event};
use ferry_protocol::endpoint::{ConnectionHandle, Endpoint};
use ferry_protocol::sim::{LinkConfig, Pair};
use ferry_protocol::wire::packet::{encode_header, Header};
use ferry_protocol::ConnectionId;

const ONE_WAY: Duration = Duration::from_millis(20);

fn fleet_server(secret: &[u8]) -> ServerConfig {
    ServerConfig {
        static_secret: Some(StaticSecret(secret.to_vec())),
        ..ServerConfig::default()
    }
}

/// A pair with 20 ms each way and an established session whose tokens reached the client.
fn established(secret: &[u8]) -> (Pair, ConnectionHandle) {
    let mut pair = Pair::symmetric(
        7,
        fleet_server(secret),
        LinkConfig::default().with_delay(ONE_WAY),
    );
    let (client, _) = pair.establish(TransportConfig::default()).unwrap();
    let got_token = pair.run_until(Duration::from_secs(1), |p| {
        p.client
            .connection_ref(client)
            .is_some_and(|c| c.peer_reset_token().is_some())
    });
    assert!(got_token, "the server handed the client its reset token");
    (pair, client)
}

/// Replaces the server with a new process: same address, a new random seed, `secret`.
fn restart_server(pair: &mut Pair, secret: &[u8]) {
    let mut server = Endpoint::new(Some(fleet_server(secret)), [0x42; 32], pair.now);
    server.set_wall_clock(pair.now, pair.elapsed());
    pair.server = server;
}

/// Runs until the client's connection reports it closed; returns why and when.
fn wait_closed(
    pair: &mut Pair,
    client: ConnectionHandle,
    limit: Duration,
) -> Option<(ConnectionError, Instant)> {
    let mut closed = None;
    pair.run_until(limit, |p| {
        while let Some((h, event)) = p.client.poll_event() {
            if let (true, Event::Closed(e)) = (h == client, event) {
                closed = Some((e, p.now));
            }
        }
        closed.is_some()
    });
    closed
}

/// Makes the client send something (a stream with a byte), as an application would.
fn send_something(pair: &mut Pair, client: ConnectionHandle) {
    let conn = pair.client.connection(client).unwrap();
    let id = conn.open_stream().unwrap();
    conn.write(id, b"x").unwrap();
}

#[test]
fn a_restarted_server_resets_the_session_within_one_round_trip_of_the_next_packet() {
    let (mut pair, client) = established(b"fleet secret");
    restart_server(&mut pair, b"fleet secret");
    let sent_at = pair.now;
    send_something(&mut pair, client);
    let (error, at) = wait_closed(&mut pair, client, Duration::from_secs(5)).expect("closed");
    assert_eq!(error, ConnectionError::StatelessReset);
    assert!(
        at - sent_at <= 2 * ONE_WAY + Duration::from_millis(5),
        "reset after {:?}",
        at - sent_at
    );
    assert!(pair.server.stats().stateless_resets_sent >= 1);
    assert_eq!(pair.client.stats().stateless_resets_received, 1);
}

#[test]
fn a_server_with_another_secret_cannot_reset_the_session() {
    let (mut pair, client) = established(b"fleet secret");
    restart_server(&mut pair, b"some other secret");
    send_something(&mut pair, client);
    // Resets are sent, but they do not carry this session's token: nothing closes it until
    // the handshake-less silence runs into the idle timeout (30 s).
    let closed = wait_closed(&mut pair, client, Duration::from_secs(10));
    assert!(closed.is_none(), "{closed:?}");
    assert!(
        pair.server.stats().stateless_resets_sent >= 1,
        "{:?}",
        pair.server.stats()
    );
    assert_eq!(pair.client.stats().stateless_resets_received, 0);
}

#[test]
fn a_forged_reset_is_ignored_and_counted() {
    let (mut pair, client) = established(b"fleet secret");
    let dropped = pair.client.stats().unknown_connection_dropped;
    for len in [30, 46, 200] {
        let mut forged = vec![0x40u8; len];
        forged[1..9].copy_from_slice(&[9; 8]);
        let (now, server) = (pair.now, pair.server_addr);
        pair.client.handle_datagram(now, server, &forged);
    }
    assert!(pair.client.connection_ref(client).unwrap().is_established());
    assert_eq!(pair.client.stats().unknown_connection_dropped, dropped + 3);
    assert_eq!(pair.client.stats().stateless_resets_received, 0);
}

#[test]
fn a_reconnect_presents_its_address_token_and_skips_the_retry_even_after_a_restart() {
    let (mut pair, client) = established(b"fleet secret");
    assert_eq!(
        pair.server.stats().retries_sent,
        1,
        "the first connection paid a Retry"
    );
    restart_server(&mut pair, b"fleet secret");
    send_something(&mut pair, client);
    wait_closed(&mut pair, client, Duration::from_secs(5)).expect("reset");
    let started = pair.now;
    let (again, _) = pair
        .establish(TransportConfig::default())
        .expect("reconnected");
    let took = pair.now - started;
    let stats = pair.server.stats();
    assert_eq!(
        stats.retries_sent, 0,
        "no Retry for a client with an address token"
    );
    assert_eq!(stats.address_tokens_accepted, 1);
    // One round trip (the client's Initial, the server's HELLO) and a little pacing.
    assert!(took <= 2 * ONE_WAY + Duration::from_millis(10), "{took:?}");
    assert!(pair.client.connection_ref(again).unwrap().is_established());
}

#[test]
fn a_stale_address_token_costs_a_retry_not_the_connection() {
    let (mut pair, client) = established(b"fleet secret");
    pair.client
        .connection(client)
        .unwrap()
        .close(pair.now, 0, "done");
    pair.run_until(Duration::from_secs(1), |_| false);
    // A server with another key does not know the token: it answers with a Retry.
    restart_server(&mut pair, b"rotated secret");
    let again = pair.establish(TransportConfig::default());
    assert!(again.is_some(), "connected after a Retry");
    assert_eq!(pair.server.stats().address_tokens_rejected, 1);
    assert_eq!(pair.server.stats().retries_sent, 1);
}

#[test]
fn an_unreachable_port_ends_a_handshake_at_once() {
    let mut pair = Pair::symmetric(3, ServerConfig::default(), LinkConfig::default());
    let client = pair.connect(TransportConfig::default());
    let (now, server) = (pair.now, pair.server_addr);
    pair.client.handle_unreachable(now, server);
    let (error, at) = wait_closed(&mut pair, client, Duration::from_secs(1)).expect("closed");
    assert!(matches!(error, ConnectionError::Unreachable(_)), "{error}");
    assert_eq!(at, now);
}

#[test]
fn an_unreachable_report_ends_an_established_session_only_after_silence() {
    let (mut pair, client) = established(b"fleet secret");
    let (now, server) = (pair.now, pair.server_addr);
    // Just heard from the server: a stale report about an old datagram.
    pair.client.handle_unreachable(now, server);
    assert!(pair.client.connection_ref(client).unwrap().is_established());
    // The server falls silent (its packets vanish); a report after a while ends the session.
    pair.filter = Some(Box::new(|_, _| true));
    send_something(&mut pair, client);
    pair.run_until(Duration::from_secs(2), |_| false);
    let (now, server) = (pair.now, pair.server_addr);
    pair.client.handle_unreachable(now, server);
    let (error, _) = wait_closed(&mut pair, client, Duration::from_millis(1)).expect("closed");
    assert!(matches!(error, ConnectionError::Unreachable(_)), "{error}");
}

#[test]
fn a_flood_for_unknown_connections_gets_few_small_resets() {
    let mut server = Endpoint::new(Some(fleet_server(b"s")), [1; 32], Instant::now());
    let t0 = Instant::now();
    let from: SocketAddr = "127.0.0.9:4444".parse().unwrap();
    let (mut in_bytes, mut out_bytes, mut replies) = (0usize, 0usize, 0usize);
    let mut buf = Vec::new();
    // 5,000 datagrams a second for two seconds, of every size from tiny to full.
    for i in 0..10_000u32 {
        let mut datagram = Vec::new();
        encode_header(
            &Header::Short {
                dcid: ConnectionId((i as u64).to_be_bytes()),
                pn: i,
            },
            &mut datagram,
        );
        datagram.resize(14 + (i as usize * 37) % 1300, 0xee);
        let now = t0 + Duration::from_micros(200 * u64::from(i));
        server.handle_datagram(now, from, &datagram);
        in_bytes += datagram.len();
        while let Some(t) = server.poll_transmit(now, &mut buf, 1) {
            assert!(
                t.size < datagram.len(),
                "a reset is shorter than its trigger"
            );
            out_bytes += t.size;
            replies += 1;
        }
    }
    let stats = server.stats();
    assert_eq!(replies as u64, stats.stateless_resets_sent);
    // 1,000 a second on average, one second's worth at once: about 3,000 over two seconds.
    assert!(replies <= 3_000, "{replies} resets");
    assert!(stats.stateless_resets_limited > 5_000);
    assert!(
        out_bytes * 10 < in_bytes,
        "{out_bytes} reply bytes for {in_bytes}"
    );
    assert_eq!(server.connection_count(), 0);
}

#[test]
fn a_quiet_client_with_an_open_stream_notices_a_restarted_server_by_its_liveness_probe() {
    let (mut pair, client) = established(b"fleet secret");
    send_something(&mut pair, client);
    // Everything is delivered and acknowledged; the client has nothing more to send.
    pair.run_until(Duration::from_millis(300), |_| false);
    restart_server(&mut pair, b"fleet secret");
    let restarted = pair.now;
    let (error, at) = wait_closed(&mut pair, client, Duration::from_secs(3)).expect("closed");
    assert_eq!(error, ConnectionError::StatelessReset);
    let probe = TransportConfig::default().liveness_probe.unwrap();
    assert!(
        at - restarted <= probe + 2 * ONE_WAY,
        "{:?}",
        at - restarted
    );
}
