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
    let mut c = Compress::new(FlateLevel::best(), false);
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
    let mut enc = zstd_encoder(19, None).unwrap();
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

/// Dictionaries trained once per test run on RTB-like messages of two different seeds (so
/// two different dictionaries, with different IDs).
fn dictionaries() -> &'static (Vec<u8>, Vec<u8>) {
    static TRAINED: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
    TRAINED.get_or_init(|| {
        let train = |seed| {
            let mut samples = training::Samples::new();
            for s in ferry_test_support::rtb::training_samples(seed, 300) {
                samples.push(&s).unwrap();
            }
            training::train(&samples, 8 << 10).unwrap()
        };
        (train(1), train(2))
    })
}

/// RTB-like messages no dictionary was trained on.
fn messages(n: usize) -> Vec<Vec<u8>> {
    ferry_test_support::rtb::training_samples(77, n)
}

/// Encodes `payload` as a fresh stream's data (its context ended after it) with `enc`.
fn stream(enc: &mut Encoder<'_>, payload: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for piece in payload.chunks(700) {
        wire.extend_from_slice(&chunk(enc, piece));
    }
    let mut end = Vec::new();
    if enc.end_context(&mut end) {
        wire.extend_from_slice(&end);
    }
    wire
}

/// The first error decoding `wire` with `dec`, or the payload.
fn try_decode_all(dec: &mut Decoder<'_>, wire: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (mut out, mut at) = (Vec::new(), 0);
    while at < wire.len() {
        let (kind, len) = Decoder::header(wire[at..at + HEADER].try_into().unwrap())?;
        at += HEADER;
        out.extend_from_slice(&decode(dec, kind, &wire[at..at + len])?);
        at += len;
    }
    Ok(out)
}

#[test]
fn a_dictionary_round_trips_and_every_new_context_starts_with_it() {
    let (a, _) = dictionaries();
    let with = Compression::with_dictionary(Codec::Zstd(3), a, "a").unwrap();
    let alone = Compression::new(Codec::Zstd(3));
    let (mut enc, mut dec) = (with.encoder(), with.decoder());
    let (mut plain_enc, mut plain_dec) = (alone.encoder(), alone.decoder());
    let (mut sized, mut plain_sized, mut payload) = (0, 0, 0);
    // Each message a context of its own (the quiet spell between messages ended the last).
    for message in messages(20) {
        let wire = stream(&mut enc, &message);
        assert_eq!(try_decode_all(&mut dec, &wire).unwrap(), message);
        assert!(!dec.holds_context(), "the context ended with the frame");
        let plain = stream(&mut plain_enc, &message);
        assert_eq!(try_decode_all(&mut plain_dec, &plain).unwrap(), message);
        (sized, plain_sized, payload) = (
            sized + wire.len(),
            plain_sized + plain.len(),
            payload + message.len(),
        );
    }
    // A fresh context knows the format from its first byte: far smaller than alone.
    assert!(
        sized * 2 < plain_sized,
        "{sized} with vs {plain_sized} without"
    );
    assert!(sized * 4 < payload, "{sized} of {payload}");
    // Every codec but zstd ignores the dictionary; the same bytes decode either way.
    let data = text(100_000);
    let mut enc = with.encoder();
    let mut wire = Vec::new();
    for piece in data.chunks(MAX_CHUNK) {
        wire.extend_from_slice(&chunk(&mut enc, piece));
    }
    assert_eq!(try_decode_all(&mut with.decoder(), &wire).unwrap(), data);
}

#[test]
fn a_frame_made_with_an_unknown_dictionary_is_an_error_naming_its_id() {
    let (a, _) = dictionaries();
    let with = Compression::with_dictionary(Codec::Zstd(3), a, "a").unwrap();
    let id = with.dictionary_id().unwrap();
    assert_eq!(Some(id), dictionary::id_of(a));
    let wire = stream(&mut with.encoder(), &messages(1)[0]);
    let err = try_decode_all(&mut Decoder::new(), &wire).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnknownDictionary(i) if i == id),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!("compression dictionary 0x{id:08x} unknown")
    );
}

#[test]
fn a_dictionary_stream_decodes_only_with_the_same_dictionary() {
    let (a, b) = dictionaries();
    let sender = Compression::with_dictionary(Codec::Zstd(3), a, "a").unwrap();
    let other = Compression::with_dictionary(Codec::Zstd(3), b, "b").unwrap();
    let (id_a, id_b) = (
        sender.dictionary_id().unwrap(),
        other.dictionary_id().unwrap(),
    );
    assert_ne!(id_a, id_b);
    let message = &messages(1)[0];
    let wire = stream(&mut sender.encoder(), message);
    // Nothing of it comes out of a receiver without the dictionary, nor of one with another.
    for receiver in [&Compression::new(Codec::Zstd(3)), &other] {
        match try_decode_all(&mut receiver.decoder(), &wire) {
            Err(DecodeError::UnknownDictionary(id)) => assert_eq!(id, id_a),
            other => panic!("decoded without the dictionary: {other:?}"),
        }
    }
    // zstd checks the ID itself: a context given the wrong dictionary refuses the frame, and
    // so does one given none (a peer from before dictionaries: it resets the stream).
    let wrong = zstd::stream::raw::Decoder::with_prepared_dictionary(other.known()[0].prepared());
    for mut context in [wrong.unwrap(), zstd::stream::raw::Decoder::new().unwrap()] {
        let mut out = vec![0u8; 4 * MAX_CHUNK];
        let mut input = InBuffer::around(&wire[HEADER..]);
        let mut o = OutBuffer::around(&mut out[..]);
        assert!(context.run(&mut input, &mut o).is_err());
    }
    // During a roll-out a receiver knows both: each sender's streams decode.
    let both = Compression::with_dictionary(Codec::Zstd(3), b, "b")
        .unwrap()
        .also_decoding(a, "a")
        .unwrap();
    assert_eq!(
        try_decode_all(&mut both.decoder(), &wire).unwrap(),
        *message
    );
    let from_b = stream(&mut other.encoder(), message);
    assert_eq!(
        try_decode_all(&mut both.decoder(), &from_b).unwrap(),
        *message
    );
    assert_eq!(
        both.to_string(),
        format!("zstd:3, dictionary 0x{id_b:08x} (also decodes 0x{id_a:08x})")
    );
}

#[test]
fn bad_dictionary_files_are_one_line_errors_naming_the_file() {
    let (a, b) = dictionaries();
    let dir = std::env::temp_dir().join(format!("ferry-dict-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, content: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let good = write("good.dict", a);
    let flag = |s: &str| s.parse::<CompressFlag>().unwrap();
    let load = |spec: &str, also: &[std::path::PathBuf]| Compression::load(&flag(spec), also);
    let loaded = load(&format!("zstd:5:dict={}", good.display()), &[]).unwrap();
    assert_eq!(loaded.codec(), Codec::Zstd(5));
    assert_eq!(loaded.dictionary_id(), dictionary::id_of(a));
    // The same dictionary again for decoding is taken once.
    assert_eq!(
        load(
            &format!("zstd:dict={}", good.display()),
            std::slice::from_ref(&good)
        )
        .unwrap()
        .known()
        .len(),
        1
    );
    let missing = dir.join("missing.dict");
    let raw = write("raw.dict", &text(5000));
    let truncated = write("truncated.dict", &a[..40]);
    let huge = write(
        "huge.dict",
        &vec![0u8; dictionary::MAX_DICTIONARY_BYTES + 1],
    );
    // Another dictionary's content under a's ID.
    let mut forged = b.to_vec();
    forged[4..8].copy_from_slice(&a[4..8]);
    let forged = write("forged.dict", &forged);
    for (path, words) in [
        (&missing, "cannot read"),
        (&raw, "not a zstd dictionary"),
        (&truncated, "cannot load"),
        (&huge, "larger than"),
    ] {
        let e = load(&format!("zstd:dict={}", path.display()), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(words) && e.contains(&path.display().to_string()),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = load("zstd", std::slice::from_ref(path))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(words) && e.contains(&path.display().to_string()),
            "{e}"
        );
    }
    let e = load(
        &format!("zstd:dict={}", good.display()),
        std::slice::from_ref(&forged),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("same ID") && e.contains("forged.dict"), "{e}");
    // A dictionary belongs to zstd only, and needs a file.
    for bad in [
        "flate:6:dict=x",
        "snappy:dict=x",
        "zstd:3:dict=",
        "zstd:30:dict=x",
    ] {
        assert!(bad.parse::<CompressFlag>().is_err(), "{bad}");
    }
    assert_eq!(flag("zstd:3:dict=/a:b").dictionary, Some("/a:b".into()));
    assert_eq!(flag("zstd:4:dict=/x").to_string(), "zstd:4:dict=/x");
    assert_eq!(
        flag("flate:2"),
        CompressFlag {
            codec: Codec::Flate(2),
            dictionary: None
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn training_makes_a_dictionary_that_check_measures_on_samples() {
    let mut samples = training::Samples::new();
    for s in ferry_test_support::rtb::training_samples(5, 200) {
        samples.push(&s).unwrap();
    }
    let dict = training::train(&samples, 4096).unwrap();
    assert!(dict.len() <= 4096 && dictionary::id_of(&dict).is_some());
    let mut fresh = training::Samples::new();
    for m in messages(50) {
        fresh.push(&m).unwrap();
    }
    let report = training::check(&dict, "t", 3, &fresh).unwrap();
    assert_eq!(report.samples, 100);
    assert!(
        report.with_dictionary_ratio() * 2.0 < report.alone_ratio(),
        "{report}"
    );
    assert!(
        report.to_string().contains("with the dictionary"),
        "{report}"
    );
    // Training's limits are errors, not panics.
    assert!(matches!(
        training::train(&samples, 10),
        Err(training::TrainingError::Size(10))
    ));
    assert!(matches!(
        training::train(&training::Samples::new(), 4096),
        Err(training::TrainingError::NoSamples)
    ));
    let mut few = training::Samples::new();
    few.push(b"{\"id\":1}").unwrap();
    assert!(matches!(
        training::train(&few, 4096),
        Err(training::TrainingError::Failed { .. })
    ));
    assert_eq!(training::parse_size("64KiB"), Ok(65536));
    assert_eq!(training::parse_size("1M"), Ok(1 << 20));
    assert_eq!(training::parse_size("300"), Ok(300));
    assert!(training::parse_size("64 parsecs").is_err());
}

#[test]
fn samples_are_read_a_file_each_or_a_line_each() {
    let dir = std::env::temp_dir().join(format!("ferry-samples-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let one = dir.join("one.json");
    let lines = dir.join("lines.jsonl");
    std::fs::write(&one, b"{\"a\":1}\n{\"b\":2}\n").unwrap();
    std::fs::write(&lines, b"{\"a\":1}\n\n{\"b\":2}\n{\"c\":3}").unwrap();
    let files = training::Samples::read(&[one.clone(), lines.clone()], false).unwrap();
    assert_eq!((files.count(), files.bytes()), (2, 16 + 24));
    let each = training::Samples::read(&[lines], true).unwrap();
    let got: Vec<&[u8]> = each.iter().collect();
    assert_eq!(got, [&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"]);
    let e = training::Samples::read(&[dir.join("nope")], true).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by the `compressed_chunks` fuzz target: a stream whose first zstd chunk carried an
/// empty payload (so an empty body: the frame header came with the next chunk) made the
/// decoder choose "no dictionary" before it saw the header.
#[test]
fn fuzz_crash_an_empty_first_chunk_keeps_the_frame_s_dictionary() {
    let (a, _) = dictionaries();
    let with = Compression::with_dictionary(Codec::Zstd(3), a, "a").unwrap();
    let mut enc = with.encoder();
    let first = chunk(&mut enc, b"");
    assert_eq!(first, [ZSTD, 0, 0, 0], "nothing, not even a frame header");
    let message = &messages(1)[0];
    let wire = [first, chunk(&mut enc, message)].concat();
    assert_eq!(
        try_decode_all(&mut with.decoder(), &wire).unwrap(),
        *message
    );
}
