//! The compressed-chunk decoder, which reads whatever the peer's end of a stream sends: no
//! input makes it panic, and no chunk decodes to more than [`MAX_CHUNK`] bytes (a
//! decompression bomb is an error, not memory). Three ways in, chosen by the first byte:
//!
//! - arbitrary chunk bytes, decoded in sequence by one decoder as a gateway would;
//! - a sequence of payloads (and context ends) encoded by the real [`Encoder`] with a codec and
//!   level from the input, which must decode to exactly those payloads;
//! - the same, with one byte of the encoded stream changed: deflate and zstd states deep inside
//!   a valid stream, which random bytes rarely reach, meet corruption there.
#![no_main]

use ferry_tunnel::compress::{Codec, Decoder, Encoder, HEADER, MAX_BODY, MAX_CHUNK};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Decodes the chunks in `wire` until the first error (after which the stream is reset);
/// returns the payload and whether every chunk decoded.
fn decode_wire(wire: &[u8]) -> (Vec<u8>, bool) {
    let mut dec = Decoder::new();
    let (mut payload, mut out, mut at) = (Vec::new(), Vec::new(), 0);
    while at < wire.len() {
        let Some(header) = wire.get(at..at + HEADER) else {
            return (payload, false);
        };
        let Ok((kind, len)) = Decoder::header(header.try_into().expect("four bytes")) else {
            return (payload, false);
        };
        assert!(len <= MAX_BODY);
        at += HEADER;
        let Some(body) = wire.get(at..at + len) else {
            return (payload, false);
        };
        at += len;
        match dec.decode(kind, body, &mut out) {
            Ok(chunk) => {
                assert!(chunk.len() <= MAX_CHUNK, "a chunk of {} bytes", chunk.len());
                payload.extend_from_slice(chunk);
            }
            Err(_) => return (payload, false),
        }
    }
    (payload, true)
}

/// What the input's encoder sends, and the payload it was given.
fn encoded(u: &mut Unstructured<'_>) -> Result<(Vec<u8>, Vec<u8>)> {
    let codec = match u.int_in_range(0..=3u8)? {
        0 => Codec::None,
        1 => Codec::Snappy,
        2 => Codec::Flate(u.int_in_range(1..=9)?),
        _ => Codec::Zstd(u.int_in_range(1..=6)?),
    };
    let mut enc = Encoder::new(codec);
    let (mut wire, mut sent, mut chunk) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..32 {
        if u.is_empty() {
            break;
        }
        let payload = match u.int_in_range(0..=2u8)? {
            0 => {
                if enc.end_context(&mut chunk) {
                    wire.extend_from_slice(&chunk);
                }
                continue;
            }
            // Runs of one byte compress; the fuzzer finds text-like data on its own.
            1 => vec![u.arbitrary::<u8>()?; u.int_in_range(1..=MAX_CHUNK)?],
            _ => {
                let len = u.int_in_range(0..=MAX_CHUNK)?.min(u.len());
                u.bytes(len)?.to_vec()
            }
        };
        enc.encode(&payload, &mut chunk);
        assert!(chunk.len() >= HEADER && chunk.len() - HEADER <= MAX_BODY);
        wire.extend_from_slice(&chunk);
        sent.extend_from_slice(&payload);
    }
    Ok((wire, sent))
}

fn run(data: &[u8]) -> Result<()> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok(());
    };
    match mode % 3 {
        0 => {
            decode_wire(rest);
        }
        1 => {
            let (wire, sent) = encoded(&mut Unstructured::new(rest))?;
            let (received, whole) = decode_wire(&wire);
            assert!(whole, "the encoder's own chunks failed to decode");
            assert!(received == sent, "the payload changed on the way");
        }
        _ => {
            let mut u = Unstructured::new(rest);
            let at: usize = u.arbitrary()?;
            let flip: u8 = u.int_in_range(1..=255)?;
            let (mut wire, _) = encoded(&mut u)?;
            if !wire.is_empty() {
                let at = at % wire.len();
                wire[at] ^= flip;
            }
            decode_wire(&wire);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
