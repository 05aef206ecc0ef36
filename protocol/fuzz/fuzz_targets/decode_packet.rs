//! Packet and frame decoding must never panic, whatever the bytes: every malformed datagram is
//! an error to drop and count.
#![no_main]

use ferry_protocol::wire::frame::FrameIter;
use ferry_protocol::wire::packet::Packet;
use ferry_protocol::wire::settings::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = Packet::decode(data) {
        for frame in FrameIter::new(packet.payload) {
            match frame {
                Ok(ferry_protocol::wire::frame::Frame::Hello(body)) => {
                    let _ = Settings::decode(body);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    let _ = Settings::decode(data);
});
