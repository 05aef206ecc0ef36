//! The chunk codecs' tests: round trips, contexts ending and starting, corrupt input and bombs.

use super::*;

/// One chunk of `payload`, as the encoder makes it.
fn chunk(enc: &mut Encoder, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    enc.encode(payload, &mut out);
    out
}

/// The payload of one chunk body.
fn decode(dec: &mut Decoder, kind: u8, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    dec.decode(kind, body, &mut out).map(<[u8]>::to_vec)
}

/// Encodes `data` in reads of `read` bytes, decodes the chunks, returns payload and wire size.
fn round_trip(codec: Codec, data: &[u8], read: usize) -> (Vec<u8>, usize) {
    let mut enc = Encoder::new(codec);
    let mut wire = Vec::new();
    for piece in data.chunks(read) {
        wire.extend_from_slice(&chunk(&mut enc, piece));
    }
    let mut dec = Decoder::new();
    let mut out = Vec::new();
    let mut at = 0;
    while at < wire.len() {
        let (kind, len) = Decoder::header(wire[at..at + 4].try_into().unwrap()).unwrap();
        at += 4;
        out.extend_from_slice(&decode(&mut dec, kind, &wire[at..at + len]).unwrap());
        at += len;
    }
    (out, wire.len())
}

fn text(len: usize) -> Vec<u8> {
    let words = [
        "bid", "\"imp\":", "{\"id\":", "banner", "320x50", "\"app\":", "true,",
    ];
    let mut out = Vec::new();
    let mut i = 7usize;
    while out.len() < len {
        i = i.wrapping_mul(1103515245).wrapping_add(12345);
        out.extend_from_slice(words[(i >> 8) % words.len()].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn random(len: usize) -> Vec<u8> {
    ferry_test_support::payload(1, len)
}

#[test]
fn every_codec_round_trips_text_and_random_data_in_any_read_size() {
    for codec in [
        Codec::None,
        Codec::Snappy,
        Codec::Flate(1),
        Codec::Flate(6),
        Codec::Flate(9),
        Codec::Zstd(1),
        Codec::Zstd(3),
    ] {
        for data in [
            text(300_000),
            random(200_000),
            Vec::new(),
            vec![7u8; 100_000],
        ] {
            for read in [1, 100, 4096, MAX_CHUNK] {
                let (back, _) = round_trip(codec, &data, read);
                assert!(back == data, "{codec} read {read}: {} bytes", data.len());
            }
        }
    }
}

#[test]
fn text_shrinks_and_flate_keeps_its_history_across_chunks() {
    let data = text(256 * 1024);
    let (_, none) = round_trip(Codec::None, &data, 1024);
    let (_, snappy) = round_trip(Codec::Snappy, &data, 1024);
    let (_, flate) = round_trip(Codec::Flate(6), &data, 1024);
    assert!(snappy * 2 < none, "snappy {snappy} vs {none}");
    assert!(flate * 5 < none, "flate {flate} vs {none}");
    // Without the stream's history, each 1 KiB chunk alone compresses far worse.
    let alone: usize = data
        .chunks(1024)
        .map(|c| chunk(&mut Encoder::new(Codec::Flate(6)), c).len())
        .sum();
    assert!(
        flate * 3 < alone * 2,
        "flate {flate} with history vs {alone} without"
    );
}

#[test]
fn incompressible_data_stops_being_compressed_after_the_trial() {
    for codec in [Codec::Snappy, Codec::Flate(6), Codec::Zstd(3)] {
        let mut enc = Encoder::new(codec);
        let data = random(TRIAL_BYTES as usize + MAX_CHUNK);
        for piece in data.chunks(MAX_CHUNK) {
            chunk(&mut enc, piece);
        }
        assert_eq!(enc.codec(), Codec::None, "{codec}");
        // Compressible data keeps its codec.
        let mut enc = Encoder::new(codec);
        for piece in text(4 * TRIAL_BYTES as usize).chunks(MAX_CHUNK) {
            chunk(&mut enc, piece);
        }
        assert_eq!(enc.codec(), codec);
    }
}

/// Decodes every chunk in `wire` with `dec`; returns the payload.
fn decode_all(dec: &mut Decoder, wire: &[u8]) -> Vec<u8> {
    let (mut out, mut at) = (Vec::new(), 0);
    while at < wire.len() {
        let (kind, len) = Decoder::header(wire[at..at + HEADER].try_into().unwrap()).unwrap();
        at += HEADER;
        out.extend_from_slice(&decode(dec, kind, &wire[at..at + len]).unwrap());
        at += len;
    }
    out
}

#[test]
fn a_quiet_direction_ends_its_context_and_the_receiver_frees_its_own() {
    for codec in [Codec::Flate(6), Codec::Zstd(3)] {
        let (mut enc, mut dec) = (Encoder::new(codec), Decoder::new());
        let mut end = Vec::new();
        assert!(!enc.end_context(&mut end), "{codec}: nothing to end yet");
        let first = text(3000);
        assert_eq!(decode_all(&mut dec, &chunk(&mut enc, &first)), first);
        assert!(enc.holds_context() && dec.holds_context(), "{codec}");
        // Quiet: the context ends in a few bytes that decode to nothing, on both ends.
        assert!(enc.end_context(&mut end), "{codec}");
        assert!(end.len() <= HEADER + 16, "{codec}: {} bytes", end.len());
        assert!(
            !enc.holds_context(),
            "{codec}: the sender freed its context"
        );
        assert_eq!(decode_all(&mut dec, &end), b"");
        assert!(
            !dec.holds_context(),
            "{codec}: the receiver freed its context"
        );
        // Data after the quiet spell starts a fresh context, decoded as ever.
        let mut wire = Vec::new();
        let later = text(5000);
        for piece in later.chunks(700) {
            wire.extend_from_slice(&chunk(&mut enc, piece));
        }
        // A new deflate stream is marked, so a receiver that cannot know it refuses it.
        let begins = if codec == Codec::Zstd(3) {
            ZSTD
        } else {
            REFLATE
        };
        assert_eq!(wire[0], begins, "{codec}");
        assert_eq!(decode_all(&mut dec, &wire), later, "{codec}");
        assert!(enc.holds_context() && dec.holds_context(), "{codec}");
        assert_eq!(enc.codec(), codec, "still compressing");
    }
}

#[test]
fn abandoning_compression_frees_the_contexts_on_both_ends() {
    for codec in [Codec::Flate(6), Codec::Zstd(3)] {
        let (mut enc, mut dec) = (Encoder::new(codec), Decoder::new());
        let data = random(TRIAL_BYTES as usize + MAX_CHUNK);
        let mut wire = Vec::new();
        for piece in data.chunks(MAX_CHUNK) {
            wire.extend_from_slice(&chunk(&mut enc, piece));
        }
        assert_eq!(enc.codec(), Codec::None, "{codec}");
        assert_eq!(decode_all(&mut dec, &wire), data, "{codec}");
        assert!(!enc.holds_context() && !dec.holds_context(), "{codec}");
    }
}

#[test]
fn data_after_the_end_of_a_deflate_stream_in_one_chunk_is_corrupt() {
    let mut enc = Encoder::new(Codec::Flate(6));
    let mut body = chunk(&mut enc, b"hello hello hello")[HEADER..].to_vec();
    let mut end = Vec::new();
    assert!(enc.end_context(&mut end));
    body.extend_from_slice(&end[HEADER..]);
    body.extend_from_slice(b"trailing");
    assert!(matches!(
        decode(&mut Decoder::new(), FLATE, &body),
        Err(DecodeError::Corrupt(_))
    ));
}

#[test]
fn corrupt_chunks_are_errors_not_panics() {
    let mut dec = Decoder::new();
    assert!(matches!(
        Decoder::header([9, 0, 0, 1]),
        Err(DecodeError::UnknownKind(9))
    ));
    assert!(matches!(
        Decoder::header([0, 0xff, 0, 0]),
        Err(DecodeError::TooLong(_))
    ));
    assert!(matches!(
        decode(&mut dec, SNAPPY, b"not snappy"),
        Err(DecodeError::Corrupt(_))
    ));
    assert!(matches!(
        decode(&mut Decoder::new(), FLATE, &[0xff; 64]),
        Err(DecodeError::Corrupt(_))
    ));
    // Flipped bits in real chunks.
    let data = text(20_000);
    for codec in [Codec::Snappy, Codec::Flate(6), Codec::Zstd(3)] {
        let mut enc = Encoder::new(codec);
        let encoded = chunk(&mut enc, &data);
        for i in (4..encoded.len()).step_by(97) {
            let mut bad = encoded.clone();
            bad[i] ^= 0x55;
            // Either an error, or (deflate cannot always tell) bytes: never a panic.
            let _ = decode(&mut Decoder::new(), encoded[0], &bad[4..]);
        }
    }
}

#[test]
fn a_decompression_bomb_is_caught_within_one_chunk() {
    // 16 MiB of zeros deflate to a few KiB: one chunk claiming all of it.
    let mut c = Compress::new(Compression::best(), false);
    let zeros = vec![0u8; 16 << 20];
    let mut body = Vec::with_capacity(64 << 10);
    c.compress_vec(&zeros, &mut body, FlushCompress::Finish)
        .unwrap();
    assert!(body.len() < MAX_BODY);
    assert!(matches!(
        decode(&mut Decoder::new(), FLATE, &body),
        Err(DecodeError::Bomb)
    ));
    // The same with snappy's frame format.
    let mut snappy = Vec::new();
    let mut w = snap::write::FrameEncoder::new(&mut snappy);
    w.write_all(&vec![0u8; 512 << 10]).unwrap();
    drop(w);
    assert!(snappy.len() < MAX_BODY);
    assert!(matches!(
        decode(&mut Decoder::new(), SNAPPY, &snappy),
        Err(DecodeError::Bomb)
    ));
    // And zstd: 16 MiB of zeros flushed as one chunk.
    let mut enc = zstd_encoder(19).unwrap();
    let mut body = Vec::new();
    assert!(zstd_compress(&mut enc, &zeros, &mut body));
    assert!(body.len() < MAX_BODY, "{}", body.len());
    assert!(matches!(
        decode(&mut Decoder::new(), ZSTD, &body),
        Err(DecodeError::Bomb)
    ));
    // A zstd frame demanding a window larger than allowed is refused, not allocated.
    let big = zstd::bulk::compress(&random(4 << 20), 19).unwrap();
    assert!(decode(&mut Decoder::new(), ZSTD, &big[..big.len().min(MAX_BODY)]).is_err());
    // And a raw chunk claiming more than a sender ever puts in one.
    assert!(matches!(
        decode(&mut Decoder::new(), RAW, &vec![0u8; MAX_CHUNK + 1]),
        Err(DecodeError::Bomb)
    ));
}

#[test]
fn codec_names_parse_with_clear_errors() {
    assert_eq!("flate:1".parse::<Codec>(), Ok(Codec::Flate(1)));
    assert_eq!("flate".parse::<Codec>(), Ok(Codec::Flate(6)));
    assert_eq!("snappy".parse::<Codec>(), Ok(Codec::Snappy));
    assert!("flate:0"
        .parse::<Codec>()
        .unwrap_err()
        .to_string()
        .contains("flate:1 to flate:9"));
    assert!("lz4"
        .parse::<Codec>()
        .unwrap_err()
        .to_string()
        .contains("none, snappy"));
    assert_eq!("zstd".parse::<Codec>(), Ok(Codec::Zstd(3)));
    assert!("zstd:30"
        .parse::<Codec>()
        .unwrap_err()
        .to_string()
        .contains("zstd:1 to zstd:19"));
    for c in [Codec::None, Codec::Snappy, Codec::Flate(3), Codec::Zstd(7)] {
        assert_eq!(c.to_string().parse::<Codec>(), Ok(c));
    }
}
