//! HELLO settings from a peer: decoding any bytes never panics, and what decodes is what the
//! encoder writes back. Settings that decode are encoded again and must decode to the same
//! values (the one exception is written down: the encoder caps the idle timeout at u32::MAX
//! milliseconds, 49 days); comparing them with our own settings and negotiating the idle
//! timeout never panics either.
#![no_main]

use std::time::Duration;

use ferry_protocol::config::TransportConfig;
use ferry_protocol::wire::settings::{Settings, MAX_REQUIRED, MAX_REQUIRED_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(peer) = Settings::decode(data) else {
        return;
    };
    assert!(peer.required.len() <= MAX_REQUIRED);
    assert!(peer
        .required
        .iter()
        .all(|(k, v)| k.len() <= MAX_REQUIRED_LEN && v.len() <= MAX_REQUIRED_LEN));
    assert!(peer.max_datagram_size >= 1200);

    let mut encoded = Vec::new();
    peer.encode(&mut encoded);
    let again = Settings::decode(&encoded).expect("our own encoding decodes");
    let mut expected = peer.clone();
    expected.idle_timeout = expected
        .idle_timeout
        .min(Duration::from_millis(u64::from(u32::MAX)));
    assert_eq!(again, expected);

    let ours = TransportConfig::default().settings();
    match ours.check_required("server", &peer, "client") {
        Ok(()) => assert_eq!(ours.required, peer.required),
        Err(mismatch) => {
            let line = mismatch.to_string();
            assert_ne!(ours.required, peer.required);
            assert!(line.starts_with("settings differ: "));
            // Both ends log this line: a peer's names and values must not break it in two.
            assert!(!line.contains(['\n', '\r']), "{line:?}");
        }
    }
    assert!(peer.check_required("client", &peer, "server").is_ok());
    let negotiated = ours.negotiated_idle_timeout(&peer);
    assert!(negotiated.is_some_and(|t| t <= ours.idle_timeout));
});
