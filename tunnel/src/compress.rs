//! Per-stream compression: what each end sends is compressed with its own `--compress` codec,
//! in a context that belongs to that one direction of that one stream, so one client's data
//! never shares a compression history with another's (DESIGN.md section 4).
//!
//! Each direction of a tunnelled stream (after the preamble) is a sequence of chunks:
//!
//! ```text
//! chunk: kind u8 | body length u24 (big-endian) | body
//! kind 0 RAW      the bytes themselves
//! kind 1 SNAPPY   one self-contained stream in the snap crate's frame format
//! kind 2 FLATE    raw deflate, sync-flushed: continues this direction's one deflate stream
//! kind 3 ZSTD     zstd, flushed: continues this direction's one zstd stream
//! ```
//!
//! The sender makes one chunk of every read from its socket (at most [`MAX_CHUNK`] bytes), so
//! compression never holds data back: latency is unchanged, and an idle stream costs nothing.
//! The receiver needs no negotiation: it decodes whatever kind arrives. Compression that does
//! not pay (already compressed or encrypted payloads) is abandoned after a trial of
//! [`TRIAL_BYTES`]: from then on that direction sends RAW chunks only.
//!
//! A hostile peer cannot make the receiver allocate without limit: a chunk body is at most
//! [`MAX_BODY`] bytes and must decode to at most [`MAX_CHUNK`] bytes (the most a sender puts in
//! one chunk), so a decompression bomb is caught after one chunk's worth of output, and the
//! receiver decodes only as fast as its socket takes the bytes.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use zstd::stream::raw::{CParameter, DParameter, InBuffer, Operation, OutBuffer};

/// Most payload bytes in one chunk; the receiver refuses chunks that decode to more.
pub const MAX_CHUNK: usize = 32 * 1024;
/// Largest chunk body accepted (a compressed chunk may exceed its input a little).
pub const MAX_BODY: usize = MAX_CHUNK + MAX_CHUNK / 8 + 1024;
/// Payload bytes compressed before deciding whether compression pays on a direction.
pub const TRIAL_BYTES: u64 = 64 * 1024;
/// Compression must save at least this share of the trial bytes to continue.
const MIN_SAVING: f64 = 0.10;

const RAW: u8 = 0;
const SNAPPY: u8 = 1;
const FLATE: u8 = 2;
const ZSTD: u8 = 3;
/// zstd history window, 2^17 = 128 KiB: bounds each stream's memory on both ends (a peer's
/// frame asking for a larger window is refused as corrupt).
const ZSTD_WINDOW_LOG: u32 = 17;

/// What a binary compresses the data it sends with (`--compress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// Send as is.
    #[default]
    None,
    /// Snappy: fast, modest savings.
    Snappy,
    /// Deflate at a level from 1 (fast) to 9 (small); keeps a history across the stream.
    Flate(u32),
    /// zstd at a level from 1 to 19; keeps a history across the stream; the smallest output.
    Zstd(i32),
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::None => f.write_str("none"),
            Codec::Snappy => f.write_str("snappy"),
            Codec::Flate(level) => write!(f, "flate:{level}"),
            Codec::Zstd(level) => write!(f, "zstd:{level}"),
        }
    }
}

impl FromStr for Codec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Codec::None),
            "snappy" => Ok(Codec::Snappy),
            "flate" => Ok(Codec::Flate(6)),
            "zstd" => Ok(Codec::Zstd(3)),
            _ => {
                if let Some(level) = s.strip_prefix("flate:") {
                    return match level.parse::<u32>() {
                        Ok(level) if (1..=9).contains(&level) => Ok(Codec::Flate(level)),
                        _ => Err(format!(
                            "invalid compression level in {s:?}: use flate:1 to flate:9"
                        )),
                    };
                }
                if let Some(level) = s.strip_prefix("zstd:") {
                    return match level.parse::<i32>() {
                        Ok(level) if (1..=19).contains(&level) => Ok(Codec::Zstd(level)),
                        _ => Err(format!(
                            "invalid compression level in {s:?}: use zstd:1 to zstd:19"
                        )),
                    };
                }
                Err(format!(
                    "unknown compression {s:?}: use none, snappy, flate[:1-9] or zstd[:1-19]"
                ))
            }
        }
    }
}

/// Compresses one direction of one stream into chunks.
pub struct Encoder {
    codec: Codec,
    deflate: Option<Compress>,
    zstd: Option<zstd::stream::raw::Encoder<'static>>,
    /// Payload and body bytes of compressed chunks during the trial.
    trial_in: u64,
    trial_out: u64,
    out: Vec<u8>,
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// A fresh context for one direction of one stream.
    pub fn new(codec: Codec) -> Self {
        Self {
            codec,
            deflate: None,
            zstd: None,
            trial_in: 0,
            trial_out: 0,
            out: Vec::with_capacity(MAX_BODY + 4),
        }
    }

    /// The codec in use now ([`Codec::None`] once compression was abandoned).
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Encodes `payload` (at most [`MAX_CHUNK`] bytes) as one chunk; returns its bytes.
    pub fn encode(&mut self, payload: &[u8]) -> &[u8] {
        debug_assert!(payload.len() <= MAX_CHUNK);
        self.out.clear();
        self.out.extend_from_slice(&[RAW, 0, 0, 0]);
        match self.codec {
            Codec::None => self.out.extend_from_slice(payload),
            Codec::Snappy => {
                let mut enc = snap::write::FrameEncoder::new(&mut self.out);
                // Writing into a Vec cannot fail.
                let _ = enc.write_all(payload);
                let _ = enc.flush();
                drop(enc);
                // Snappy chunks are independent: a chunk that did not shrink goes raw.
                if self.out.len() - 4 >= payload.len() {
                    self.out.truncate(4);
                    self.out.extend_from_slice(payload);
                } else {
                    self.out[0] = SNAPPY;
                }
            }
            Codec::Flate(level) => {
                let deflate = self
                    .deflate
                    .get_or_insert_with(|| Compress::new(Compression::new(level), false));
                self.out[0] = FLATE;
                let before = deflate.total_in();
                // Deflate output for n input bytes is at most n + 5 per 16 KiB block + a few.
                self.out.reserve(payload.len() + payload.len() / 8 + 64);
                loop {
                    let consumed = (deflate.total_in() - before) as usize;
                    let status = deflate
                        .compress_vec(&payload[consumed..], &mut self.out, FlushCompress::Sync)
                        .expect("deflate of in-memory data");
                    let done = (deflate.total_in() - before) as usize == payload.len()
                        && self.out.len() < self.out.capacity();
                    if done || status == Status::StreamEnd {
                        break;
                    }
                    self.out.reserve(4096);
                }
            }
            Codec::Zstd(level) => {
                if self.zstd.is_none() {
                    self.zstd = zstd_encoder(level);
                }
                let compressed = match &mut self.zstd {
                    Some(zstd) => zstd_compress(zstd, payload, &mut self.out),
                    None => false,
                };
                if compressed {
                    self.out[0] = ZSTD;
                } else {
                    // zstd failed (not expected with in-memory buffers): send raw from
                    // now on, which the receiver decodes without any zstd state.
                    self.codec = Codec::None;
                    self.zstd = None;
                    self.out.truncate(4);
                    self.out.extend_from_slice(payload);
                }
            }
        }
        let body = self.out.len() - 4;
        debug_assert!(body <= MAX_BODY);
        self.out[1..4].copy_from_slice(&(body as u32).to_be_bytes()[1..]);
        if self.codec != Codec::None && self.trial_in < TRIAL_BYTES {
            self.trial_in += payload.len() as u64;
            self.trial_out += body as u64;
            if self.trial_in >= TRIAL_BYTES
                && (self.trial_out as f64) > (self.trial_in as f64) * (1.0 - MIN_SAVING)
            {
                // Not compressible: stop paying for it (this chunk still goes as encoded, so
                // a deflate receiver's history stays in step).
                self.codec = Codec::None;
                self.deflate = None;
                self.zstd = None;
            }
        }
        &self.out
    }
}

fn zstd_encoder(level: i32) -> Option<zstd::stream::raw::Encoder<'static>> {
    let mut e = zstd::stream::raw::Encoder::new(level).ok()?;
    e.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))
        .ok()?;
    Some(e)
}

/// Compresses `payload` and flushes, appending to `out`; false on a zstd error.
fn zstd_compress(
    zstd: &mut zstd::stream::raw::Encoder<'static>,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> bool {
    let mut input = InBuffer::around(payload);
    while input.pos() < payload.len() {
        out.reserve(payload.len() - input.pos() + 256);
        let len = out.len();
        let mut o = OutBuffer::around_pos(out, len);
        if zstd.run(&mut input, &mut o).is_err() {
            return false;
        }
    }
    loop {
        out.reserve(1024);
        let len = out.len();
        let mut o = OutBuffer::around_pos(out, len);
        match zstd.flush(&mut o) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

/// Why a chunk could not be decoded. The stream is reset with this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// An unknown chunk kind.
    #[error("corrupt compressed stream: unknown chunk kind {0}")]
    UnknownKind(u8),
    /// A chunk body longer than any sender makes.
    #[error("corrupt compressed stream: chunk of {0} bytes exceeds {MAX_BODY}")]
    TooLong(usize),
    /// The body did not decode.
    #[error("corrupt compressed stream: {0}")]
    Corrupt(String),
    /// The body decoded to more than one chunk's worth of payload.
    #[error("decompression bomb: a chunk expands beyond {MAX_CHUNK} bytes")]
    Bomb,
}

/// Decodes one direction of one stream.
#[derive(Default)]
pub struct Decoder {
    inflate: Option<Decompress>,
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
    out: Vec<u8>,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A fresh context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks a chunk header; returns the kind and the body length to read next.
    pub fn header(header: [u8; 4]) -> Result<(u8, usize), DecodeError> {
        let kind = header[0];
        if kind > ZSTD {
            return Err(DecodeError::UnknownKind(kind));
        }
        let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
        if len > MAX_BODY {
            return Err(DecodeError::TooLong(len));
        }
        Ok((kind, len))
    }

    /// Decodes a chunk body of `kind`; returns the payload.
    pub fn decode<'a>(&'a mut self, kind: u8, body: &'a [u8]) -> Result<&'a [u8], DecodeError> {
        match kind {
            RAW => {
                if body.len() > MAX_CHUNK {
                    return Err(DecodeError::Bomb);
                }
                Ok(body)
            }
            SNAPPY => {
                self.out.clear();
                let mut dec = snap::read::FrameDecoder::new(body).take(MAX_CHUNK as u64 + 1);
                dec.read_to_end(&mut self.out)
                    .map_err(|e| DecodeError::Corrupt(format!("snappy: {e}")))?;
                if self.out.len() > MAX_CHUNK {
                    return Err(DecodeError::Bomb);
                }
                Ok(&self.out)
            }
            FLATE => {
                let inflate = self.inflate.get_or_insert_with(|| Decompress::new(false));
                self.out.clear();
                // Room for one byte more than allowed: filling it proves a bomb.
                self.out.reserve_exact(MAX_CHUNK + 1);
                let before = inflate.total_in();
                loop {
                    let consumed = (inflate.total_in() - before) as usize;
                    let status = inflate
                        .decompress_vec(&body[consumed..], &mut self.out, FlushDecompress::Sync)
                        .map_err(|e| DecodeError::Corrupt(format!("deflate: {e}")))?;
                    if self.out.len() > MAX_CHUNK {
                        return Err(DecodeError::Bomb);
                    }
                    let consumed = (inflate.total_in() - before) as usize;
                    if consumed == body.len() || status == Status::StreamEnd {
                        break;
                    }
                    if self.out.len() == self.out.capacity() {
                        // Output full at the limit and input left: more than a chunk's worth.
                        return Err(DecodeError::Bomb);
                    }
                    if status == Status::BufError {
                        return Err(DecodeError::Corrupt("deflate: truncated chunk".into()));
                    }
                }
                Ok(&self.out)
            }
            ZSTD => {
                if self.zstd.is_none() {
                    let mut d = zstd::stream::raw::Decoder::new()
                        .map_err(|e| DecodeError::Corrupt(format!("zstd: {e}")))?;
                    d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG))
                        .map_err(|e| DecodeError::Corrupt(format!("zstd: {e}")))?;
                    self.zstd = Some(d);
                }
                let Some(zstd) = &mut self.zstd else {
                    return Err(DecodeError::Corrupt("zstd: no decoder".into()));
                };
                self.out.clear();
                self.out.reserve_exact(MAX_CHUNK + 1);
                let mut input = InBuffer::around(body);
                loop {
                    let (before_in, before_out) = (input.pos(), self.out.len());
                    let len = self.out.len();
                    let mut o = OutBuffer::around_pos(&mut self.out, len);
                    zstd.run(&mut input, &mut o)
                        .map_err(|e| DecodeError::Corrupt(format!("zstd: {e}")))?;
                    if self.out.len() > MAX_CHUNK {
                        return Err(DecodeError::Bomb);
                    }
                    let output_full = self.out.len() == self.out.capacity();
                    if output_full {
                        return Err(DecodeError::Bomb);
                    }
                    if input.pos() == body.len() {
                        break;
                    }
                    if input.pos() == before_in && self.out.len() == before_out {
                        return Err(DecodeError::Corrupt("zstd: no progress".into()));
                    }
                }
                Ok(&self.out)
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes `data` in reads of `read` bytes, decodes the chunks, returns payload and wire size.
    fn round_trip(codec: Codec, data: &[u8], read: usize) -> (Vec<u8>, usize) {
        let mut enc = Encoder::new(codec);
        let mut wire = Vec::new();
        for piece in data.chunks(read) {
            wire.extend_from_slice(enc.encode(piece));
        }
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let (kind, len) = Decoder::header(wire[at..at + 4].try_into().unwrap()).unwrap();
            at += 4;
            out.extend_from_slice(dec.decode(kind, &wire[at..at + len]).unwrap());
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
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
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
            .map(|c| Encoder::new(Codec::Flate(6)).encode(c).len())
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
                enc.encode(piece);
            }
            assert_eq!(enc.codec(), Codec::None, "{codec}");
            // Compressible data keeps its codec.
            let mut enc = Encoder::new(codec);
            for piece in text(4 * TRIAL_BYTES as usize).chunks(MAX_CHUNK) {
                enc.encode(piece);
            }
            assert_eq!(enc.codec(), codec);
        }
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
            dec.decode(SNAPPY, b"not snappy"),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            Decoder::new().decode(FLATE, &[0xff; 64]),
            Err(DecodeError::Corrupt(_))
        ));
        // Flipped bits in real chunks.
        let data = text(20_000);
        for codec in [Codec::Snappy, Codec::Flate(6), Codec::Zstd(3)] {
            let mut enc = Encoder::new(codec);
            let chunk = enc.encode(&data).to_vec();
            for i in (4..chunk.len()).step_by(97) {
                let mut bad = chunk.clone();
                bad[i] ^= 0x55;
                // Either an error, or (deflate cannot always tell) bytes: never a panic.
                let _ = Decoder::new().decode(chunk[0], &bad[4..]);
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
            Decoder::new().decode(FLATE, &body),
            Err(DecodeError::Bomb)
        ));
        // The same with snappy's frame format.
        let mut snappy = Vec::new();
        let mut w = snap::write::FrameEncoder::new(&mut snappy);
        w.write_all(&vec![0u8; 512 << 10]).unwrap();
        drop(w);
        assert!(snappy.len() < MAX_BODY);
        assert!(matches!(
            Decoder::new().decode(SNAPPY, &snappy),
            Err(DecodeError::Bomb)
        ));
        // And zstd: 16 MiB of zeros flushed as one chunk.
        let mut enc = zstd_encoder(19).unwrap();
        let mut body = Vec::new();
        assert!(zstd_compress(&mut enc, &zeros, &mut body));
        assert!(body.len() < MAX_BODY, "{}", body.len());
        assert!(matches!(
            Decoder::new().decode(ZSTD, &body),
            Err(DecodeError::Bomb)
        ));
        // A zstd frame demanding a window larger than allowed is refused, not allocated.
        let big = zstd::bulk::compress(&random(4 << 20), 19).unwrap();
        assert!(Decoder::new()
            .decode(ZSTD, &big[..big.len().min(MAX_BODY)])
            .is_err());
        // And a raw chunk claiming more than a sender ever puts in one.
        assert!(matches!(
            Decoder::new().decode(RAW, &vec![0u8; MAX_CHUNK + 1]),
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
            .contains("flate:1 to flate:9"));
        assert!("lz4".parse::<Codec>().unwrap_err().contains("none, snappy"));
        assert_eq!("zstd".parse::<Codec>(), Ok(Codec::Zstd(3)));
        assert!("zstd:30"
            .parse::<Codec>()
            .unwrap_err()
            .contains("zstd:1 to zstd:19"));
        for c in [Codec::None, Codec::Snappy, Codec::Flate(3), Codec::Zstd(7)] {
            assert_eq!(c.to_string().parse::<Codec>(), Ok(c));
        }
    }
}
