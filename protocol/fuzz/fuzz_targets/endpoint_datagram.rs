//! A server endpoint fed arbitrary datagrams must never panic nor create connection state for
//! senders that did not prove their address.
#![no_main]

use std::time::Instant;

use ferry_protocol::config::ServerConfig;
use ferry_protocol::endpoint::Endpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut server = Endpoint::new(Some(ServerConfig::default()), [0; 32], now);
    server.handle_datagram(now, "127.0.0.1:4000".parse().unwrap(), data);
    let mut buf = Vec::new();
    while server.poll_transmit(now, &mut buf, 4).is_some() {}
    assert_eq!(server.connection_count(), 0);
});
