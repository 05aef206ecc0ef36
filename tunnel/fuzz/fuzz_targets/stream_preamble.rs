//! The stream preamble, the first bytes of every tunnelled stream, read by the gateway from
//! whatever an agent (or anyone who completed a handshake) sends: decoding never panics,
//! finishes as soon as its bytes are there (the reader below never waits), reads exactly the
//! preamble's bytes and not one byte of the payload behind it, and what it accepts is what
//! [`Preamble::encode`] writes: the format has one encoding per preamble.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use ferry_tunnel::preamble::{is_valid_service_name, Preamble};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let decoded = {
        let read = pin!(Preamble::read_from(&mut rest));
        // A byte slice is always ready: one poll either decodes or fails.
        match read.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(result) => result,
            Poll::Pending => panic!("the preamble decoder waited on a ready reader"),
        }
    };
    let Ok(preamble) = decoded else {
        return;
    };
    let consumed = data.len() - rest.len();
    assert!(is_valid_service_name(&preamble.service));
    assert_eq!(preamble.encode(), &data[..consumed]);
});
