//! Path MTU discovery through the simulated network: packets grow to what the path carries,
//! and fall back when the path shrinks, with a transfer running across the change intact.

use std::time::Duration;

use ferry_protocol::config::{ServerConfig, TransportConfig};
use ferry_protocol::endpoint::ConnectionHandle;
use ferry_protocol::sim::transfer::{verify, BulkSide};
use ferry_protocol::sim::{LinkConfig, Pair};

const MS: Duration = Duration::from_millis(1);

fn path(max_datagram: Option<usize>) -> LinkConfig {
    let link = LinkConfig::default().with_delay(10 * MS);
    match max_datagram {
        Some(m) => link.with_max_datagram(m),
        None => link,
    }
}

fn sizes(pair: &mut Pair, client: ConnectionHandle, server: ConnectionHandle) -> (u64, u64) {
    let c = pair
        .client
        .connection(client)
        .unwrap()
        .stats()
        .datagram_size;
    let s = pair
        .server
        .connection(server)
        .unwrap()
        .stats()
        .datagram_size;
    (c, s)
}

#[test]
fn packets_grow_to_what_the_path_carries_on_both_ends() {
    for (limit, low, high) in [
        (None, 1452, 1452),
        (Some(1400), 1392, 1400),
        (Some(1350), 1350, 1350),
    ] {
        let mut pair = Pair::symmetric(1, ServerConfig::default(), path(limit));
        let (c, s) = pair
            .establish(TransportConfig::default())
            .expect("handshake");
        pair.advance_to(pair.now + Duration::from_secs(3));
        let (client, server) = sizes(&mut pair, c, s);
        for size in [client, server] {
            assert!((low..=high).contains(&size), "path {limit:?}: {size}");
        }
    }
}

#[test]
fn without_discovery_or_against_a_peer_that_accepts_less_packets_stay_where_they_start() {
    let off = TransportConfig {
        path_mtu_discovery: false,
        ..TransportConfig::default()
    };
    let mut pair = Pair::symmetric(2, ServerConfig::default(), path(None));
    let (c, s) = pair.establish(off).expect("handshake");
    pair.advance_to(pair.now + Duration::from_secs(3));
    // The client does not probe, and tells the server it accepts no more than 1,350 bytes.
    assert_eq!(sizes(&mut pair, c, s), (1350, 1350));
}

#[test]
fn a_path_that_shrinks_under_a_transfer_is_found_again_and_every_byte_arrives() {
    for seed in 0..4 {
        let mut pair = Pair::symmetric(10 + seed, ServerConfig::default(), path(None));
        let (c, s) = pair
            .establish(TransportConfig::default())
            .expect("handshake");
        pair.advance_to(pair.now + Duration::from_secs(1));
        assert_eq!(sizes(&mut pair, c, s), (1452, 1452), "seed {seed}");
        let mut client = BulkSide::new(c, true, seed, 2, 4 << 20);
        let mut server = BulkSide::new(s, false, seed, 0, 4 << 20);
        let mut shrunk = false;
        let done = pair.run_until(Duration::from_secs(120), |p| {
            client.pump(p.now, &mut p.client);
            server.pump(p.now, &mut p.server);
            // A route change a quarter of the way in: 1,300 bytes at most from now on.
            if !shrunk && client.received_bytes() > 2 << 20 {
                shrunk = true;
                p.to_server.set_config(path(Some(1300)));
                p.to_client.set_config(path(Some(1300)));
            }
            client.is_done() && server.is_done()
        });
        assert!(shrunk, "seed {seed}: the path never shrank");
        assert!(
            done,
            "seed {seed}: transfer stuck after the path shrank: client received {}, server {}",
            client.received_bytes(),
            server.received_bytes()
        );
        verify(&client, &server).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        pair.advance_to(pair.now + Duration::from_secs(3));
        let (cs, ss) = sizes(&mut pair, c, s);
        for size in [cs, ss] {
            assert!((1292..=1300).contains(&size), "seed {seed}: {size}");
        }
        let holes = pair.client.connection(c).unwrap().stats().mtu_black_holes;
        assert!(holes >= 1, "seed {seed}");
    }
}
