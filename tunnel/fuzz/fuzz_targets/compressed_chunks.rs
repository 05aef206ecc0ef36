//! The compressed-chunk decoder, which reads whatever the peer's end of a stream sends: no
//! input makes it panic, and no chunk decodes to more than [`MAX_CHUNK`] bytes (a
//! decompression bomb is an error, not memory). Three ways in, chosen by the first byte:
//!
//! - arbitrary chunk bytes, decoded in sequence by one decoder as a gateway would;
//! - a sequence of payloads (and context ends) encoded by the real [`Encoder`] with a codec and
//!   level from the input, which must decode to exactly those payloads;
//! - the same, with one byte of the encoded stream changed: deflate and zstd states deep inside
//!   a valid stream, which random bytes rarely reach, meet corruption there.
//!
//! The decoder knows one small zstd dictionary, trained here on JSON-like samples, and the
//! encoder may compress with it: frames that name it (and others that name an ID nobody
//! knows) reach the dictionary path. A decoder that does not know the dictionary never
//! yields more than a prefix of what was sent.
#![no_main]

use std::sync::OnceLock;

use ferry_tunnel::compress::training::{train, Samples};
use ferry_tunnel::compress::{Codec, Compression, Decoder, HEADER, MAX_BODY, MAX_CHUNK};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// zstd:3 with a 2 KiB dictionary trained once per process on JSON-like messages.
fn with_dictionary() -> &'static Compression {
    static COMPRESSION: OnceLock<Compression> = OnceLock::new();
    COMPRESSION.get_or_init(|| {
        let mut samples = Samples::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..400u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let message = format!(
                "{{\"id\":\"{x:016x}\",\"seq\":{i},\"kind\":\"{}\",\"size\":[{},{}],\"tags\":[\"alpha\",\"beta\",\"gamma\"],\"ok\":{}}}",
                ["bid", "win", "loss", "click"][(x % 4) as usize],
                x % 640,
                x % 480,
                x % 2 == 0,
            );
            samples.push(message.as_bytes()).expect("small samples");
        }
        let dict = train(&samples, 2048).expect("training on fixed samples");
        Compression::with_dictionary(Codec::Zstd(3), &dict, "fuzz").expect("a dictionary")
    })
}

/// Decodes the chunks in `wire` until the first error (after which the stream is reset), with
/// the dictionary known or not; returns the payload and whether every chunk decoded.
fn decode_wire(wire: &[u8], knowing: bool) -> (Vec<u8>, bool) {
    let mut dec = if knowing {
        with_dictionary().decoder()
    } else {
        Decoder::new()
    };
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
    let compression = match u.int_in_range(0..=4u8)? {
        0 => Compression::new(Codec::None),
        1 => Compression::new(Codec::Snappy),
        2 => Compression::new(Codec::Flate(u.int_in_range(1..=9)?)),
        3 => Compression::new(Codec::Zstd(u.int_in_range(1..=6)?)),
        _ => with_dictionary().clone(),
    };
    let mut enc = compression.encoder();
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
            decode_wire(rest, true);
        }
        1 => {
            let (wire, sent) = encoded(&mut Unstructured::new(rest))?;
            let (received, whole) = decode_wire(&wire, true);
            assert!(whole, "the encoder's own chunks failed to decode");
            assert!(received == sent, "the payload changed on the way");
            // Without the dictionary: what comes out is what was sent, up to where it stops.
            let (received, _) = decode_wire(&wire, false);
            assert!(
                sent.starts_with(&received),
                "decoded without the dictionary"
            );
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
            decode_wire(&wire, true);
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
