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
//! kind 2 FLATE    raw deflate, sync-flushed: continues this direction's deflate stream
//! kind 3 ZSTD     zstd, flushed: continues this direction's zstd frame, or begins a new one
//! kind 4 REFLATE  as FLATE, beginning a new deflate stream after the previous one ended
//! ```
//!
//! The sender makes one chunk of every read from its socket (at most [`MAX_CHUNK`] bytes), so
//! compression never holds data back: latency is unchanged. The receiver needs no negotiation:
//! it decodes whatever kind arrives. Compression that does not pay (already compressed or
//! encrypted payloads) is abandoned after a trial of [`TRIAL_BYTES`]: from then on that
//! direction sends RAW chunks only.
//!
//! # Contexts live only while a stream is busy
//!
//! Deflate and zstd keep a history across chunks (that is what makes 1 KiB messages compress
//! well), and the history lives in a context on both ends. Resident memory per context after
//! one 250-byte message (1,000 contexts measured together): a deflate compressor 301 KiB, an
//! inflater 43 KiB, a zstd compressor at level 3 over the 128 KiB window 810 KiB, its
//! decompressor 25 KiB (growing towards the window as data passes). Kept for a stream's
//! whole life, that is what an idle connection would cost. So a direction that has
//! been quiet for [`CONTEXT_IDLE`] ends its context ([`Encoder::end_context`]): the deflate
//! stream is finished (a final block) or the zstd frame ended, in a small chunk of the usual
//! kind. Both formats mark their own end, so the receiver sees it and frees its context too; the
//! next data starts a fresh deflate stream or zstd frame, whose context is made then. The same
//! end closes a context when compression is abandoned after the trial. A new zstd frame needs
//! no mark (zstd decoders take frames one after another); a new deflate stream comes in a
//! chunk of its own kind, REFLATE, because a receiver from before contexts ended would take it
//! for more of the ended stream and decode nothing: it now refuses the unknown kind and resets
//! the stream, loudly, instead of losing the data.
//!
//! Why not keep the history: what it saves is redundancy between messages close in time. A
//! direction quiet for a second carries at most one message a second, and the first message
//! after the quiet spell pays for the fresh context: a 1.9 KB RTB-like bid request deflates
//! (level 6) to 1,045 bytes alone against about 220 after a few like it. Under 1 KB/s per
//! such stream, against 340 KiB (deflate) or 0.8 MiB (zstd) of memory held per direction per
//! stream for as long as it stays open: the memory is the cost that matters.
//!
//! # Dictionaries
//!
//! What a fresh context lacks, a zstd dictionary shared by every stream gives it
//! ([`dictionary`]): `--compress zstd:3:dict=FILE`. Its ID travels in each zstd frame's header,
//! so a context that begins again after a quiet spell begins with the dictionary again.

pub mod dictionary;
pub mod training;

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use flate2::{
    Compress, Compression as FlateLevel, Decompress, FlushCompress, FlushDecompress, Status,
};
use zstd::stream::raw::{CParameter, DParameter, InBuffer, Operation, OutBuffer};

pub use dictionary::{Compression, Dictionary, DictionaryError, NO_COMPRESSION};

/// Most payload bytes in one chunk; the receiver refuses chunks that decode to more.
pub const MAX_CHUNK: usize = 32 * 1024;
/// Bytes of a chunk header (kind, body length).
pub const HEADER: usize = 4;
/// Largest chunk body accepted (a compressed chunk may exceed its input a little).
pub const MAX_BODY: usize = MAX_CHUNK + MAX_CHUNK / 8 + 1024;
/// Payload bytes compressed before deciding whether compression pays on a direction.
pub const TRIAL_BYTES: u64 = 64 * 1024;
/// Compression must save at least this share of the trial bytes to continue.
const MIN_SAVING: f64 = 0.10;
/// A direction that sent nothing for this long ends its compression context, freeing the
/// memory on both ends (see the module documentation).
pub const CONTEXT_IDLE: Duration = Duration::from_secs(1);

const RAW: u8 = 0;
const SNAPPY: u8 = 1;
const FLATE: u8 = 2;
const ZSTD: u8 = 3;
const REFLATE: u8 = 4;
/// zstd history window, 2^17 = 128 KiB: bounds each stream's memory on both ends (a peer's
/// frame asking for a larger window is refused as corrupt).
pub const ZSTD_WINDOW_LOG: u32 = 17;

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

/// Why a `--compress` value was refused: one line naming the input and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// `flate:N` with N outside 1..=9.
    #[error("invalid compression level in {0:?}: use flate:1 to flate:9")]
    FlateLevel(String),
    /// `zstd:N` with N outside 1..=19.
    #[error("invalid compression level in {0:?}: use zstd:1 to zstd:19")]
    ZstdLevel(String),
    /// No such codec.
    #[error("unknown compression {0:?}: use none, snappy, flate[:1-9] or zstd[:1-19][:dict=FILE]")]
    Unknown(String),
    /// `:dict=` after a codec other than zstd, or with no file.
    #[error("invalid dictionary in {0:?}: use zstd[:LEVEL]:dict=FILE")]
    Dictionary(String),
}

/// `--compress` as given: a codec and, for zstd, the dictionary file it compresses with
/// (`zstd[:LEVEL][:dict=FILE]`). [`Compression::load`] reads the file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompressFlag {
    /// The codec.
    pub codec: Codec,
    /// zstd's dictionary, if any.
    pub dictionary: Option<PathBuf>,
}

impl FromStr for CompressFlag {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<Self, CodecError> {
        let Some((codec, file)) = s.split_once(":dict=") else {
            let codec = s.parse()?;
            return Ok(Self {
                codec,
                dictionary: None,
            });
        };
        match codec.parse()? {
            codec @ Codec::Zstd(_) if !file.is_empty() => Ok(Self {
                codec,
                dictionary: Some(PathBuf::from(file)),
            }),
            _ => Err(CodecError::Dictionary(s.to_owned())),
        }
    }
}

impl fmt::Display for CompressFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.codec)?;
        if let Some(file) = &self.dictionary {
            write!(f, ":dict={}", file.display())?;
        }
        Ok(())
    }
}

impl FromStr for Codec {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<Self, CodecError> {
        match s {
            "none" => Ok(Codec::None),
            "snappy" => Ok(Codec::Snappy),
            "flate" => Ok(Codec::Flate(6)),
            "zstd" => Ok(Codec::Zstd(3)),
            _ => {
                if let Some(level) = s.strip_prefix("flate:") {
                    return match level.parse::<u32>() {
                        Ok(level) if (1..=9).contains(&level) => Ok(Codec::Flate(level)),
                        _ => Err(CodecError::FlateLevel(s.to_owned())),
                    };
                }
                if let Some(level) = s.strip_prefix("zstd:") {
                    return match level.parse::<i32>() {
                        Ok(level) if (1..=19).contains(&level) => Ok(Codec::Zstd(level)),
                        _ => Err(CodecError::ZstdLevel(s.to_owned())),
                    };
                }
                Err(CodecError::Unknown(s.to_owned()))
            }
        }
    }
}

/// Compresses one direction of one stream into chunks. Holds no memory beyond its own few
/// bytes except a compression context while the direction is busy. `'d`: the process's
/// zstd dictionary it borrows ([`Compression::encoder`]).
pub struct Encoder<'d> {
    codec: Codec,
    /// zstd's dictionary, prepared at the codec's level: every frame starts with it.
    dictionary: Option<&'d dictionary::SendingDictionary>,
    deflate: Option<Compress>,
    zstd: Option<zstd::stream::raw::Encoder<'d>>,
    /// Payload and body bytes of compressed chunks during the trial.
    trial_in: u64,
    trial_out: u64,
    /// A deflate stream was ended: the next one begins with a REFLATE chunk.
    deflate_ended: bool,
}

impl fmt::Debug for Encoder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder")
            .field("codec", &self.codec)
            .finish_non_exhaustive()
    }
}

impl Encoder<'static> {
    /// A fresh context for one direction of one stream, without a dictionary.
    pub fn new(codec: Codec) -> Self {
        Self::with_dictionary(codec, None)
    }
}

impl<'d> Encoder<'d> {
    /// A fresh context that compresses zstd frames with `dictionary`, prepared at the codec's
    /// level (other codecs ignore it).
    fn with_dictionary(
        codec: Codec,
        dictionary: Option<&'d dictionary::SendingDictionary>,
    ) -> Self {
        Self {
            codec,
            dictionary,
            deflate: None,
            zstd: None,
            trial_in: 0,
            trial_out: 0,
            deflate_ended: false,
        }
    }

    /// The codec in use now ([`Codec::None`] once compression was abandoned).
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// True while a compression context (a deflate stream or zstd frame and its history) is
    /// open: [`Encoder::end_context`] frees it.
    pub fn holds_context(&self) -> bool {
        self.deflate.is_some() || self.zstd.is_some()
    }

    /// Encodes `payload` (at most [`MAX_CHUNK`] bytes) as one chunk, which replaces what `out`
    /// held. An `out` with room for [`HEADER`] + [`MAX_BODY`] bytes is never reallocated.
    pub fn encode(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        debug_assert!(payload.len() <= MAX_CHUNK);
        out.clear();
        out.extend_from_slice(&[RAW, 0, 0, 0]);
        match self.codec {
            Codec::None => out.extend_from_slice(payload),
            Codec::Snappy => {
                let mut enc = snap::write::FrameEncoder::new(&mut *out);
                // Writing into a Vec cannot fail.
                let _ = enc.write_all(payload);
                let _ = enc.flush();
                drop(enc);
                // Snappy chunks are independent: a chunk that did not shrink goes raw.
                if out.len() - HEADER >= payload.len() {
                    out.truncate(HEADER);
                    out.extend_from_slice(payload);
                } else {
                    out[0] = SNAPPY;
                }
            }
            Codec::Flate(level) => {
                out[0] = match (&self.deflate, self.deflate_ended) {
                    (None, true) => REFLATE,
                    _ => FLATE,
                };
                let deflate = self
                    .deflate
                    .get_or_insert_with(|| Compress::new(FlateLevel::new(level), false));
                let before = deflate.total_in();
                // Deflate output for n input bytes is at most n + 5 per 16 KiB block + a few.
                out.reserve(payload.len() + payload.len() / 8 + 64);
                loop {
                    let consumed = (deflate.total_in() - before) as usize;
                    let status = deflate
                        .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                        .expect("deflate of in-memory data");
                    let done = (deflate.total_in() - before) as usize == payload.len()
                        && out.len() < out.capacity();
                    if done || status == Status::StreamEnd {
                        break;
                    }
                    out.reserve(4096);
                }
            }
            Codec::Zstd(level) => {
                if self.zstd.is_none() {
                    self.zstd = zstd_encoder(level, self.dictionary);
                }
                let compressed = match &mut self.zstd {
                    Some(zstd) => zstd_compress(zstd, payload, out),
                    None => false,
                };
                if compressed {
                    out[0] = ZSTD;
                } else {
                    // zstd failed (not expected with in-memory buffers): send raw from
                    // now on, which the receiver decodes without any zstd state.
                    self.codec = Codec::None;
                    self.zstd = None;
                    out.truncate(HEADER);
                    out.extend_from_slice(payload);
                }
            }
        }
        if self.codec != Codec::None && self.trial_in < TRIAL_BYTES {
            self.trial_in += payload.len() as u64;
            self.trial_out += (out.len() - HEADER) as u64;
            if self.trial_in >= TRIAL_BYTES
                && (self.trial_out as f64) > (self.trial_in as f64) * (1.0 - MIN_SAVING)
            {
                // Not compressible: stop paying for it. This chunk still goes as encoded, and
                // ends the context, so the receiver frees its own.
                self.codec = Codec::None;
                self.close_context(out);
            }
        }
        set_body_length(out);
    }

    /// Ends the compression context, if one is open: replaces what `out` held with a chunk that
    /// ends the deflate stream or zstd frame (a few bytes; the receiver frees its context on
    /// reading it) and returns true. The next chunk starts a fresh context. Returns false, with
    /// `out` empty, when no context was open.
    pub fn end_context(&mut self, out: &mut Vec<u8>) -> bool {
        out.clear();
        let kind = match (&self.deflate, &self.zstd) {
            (Some(_), _) => FLATE,
            (None, Some(_)) => ZSTD,
            (None, None) => return false,
        };
        out.extend_from_slice(&[kind, 0, 0, 0]);
        self.close_context(out);
        if out.len() == HEADER {
            // zstd could not end its frame (not expected in memory): nothing to send; the
            // direction goes on uncompressed, which the receiver decodes without its context.
            out.clear();
            return false;
        }
        set_body_length(out);
        true
    }

    /// Appends to `out` (a chunk of the context's kind) the end of the open deflate stream or
    /// zstd frame, and frees the context.
    fn close_context(&mut self, out: &mut Vec<u8>) {
        if let Some(mut deflate) = self.deflate.take() {
            self.deflate_ended = true;
            loop {
                out.reserve(64);
                let status = deflate
                    .compress_vec(&[], out, FlushCompress::Finish)
                    .expect("deflate of in-memory data");
                if status == Status::StreamEnd {
                    break;
                }
            }
        }
        if let Some(mut zstd) = self.zstd.take() {
            let before = out.len();
            loop {
                out.reserve(64);
                let len = out.len();
                let mut o = OutBuffer::around_pos(out, len);
                match zstd.finish(&mut o, true) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        out.truncate(before);
                        self.codec = Codec::None;
                        break;
                    }
                }
            }
        }
    }
}

/// Writes the body length of the chunk in `chunk` into its header.
fn set_body_length(chunk: &mut [u8]) {
    let body = chunk.len() - HEADER;
    debug_assert!(body <= MAX_BODY);
    chunk[1..HEADER].copy_from_slice(&(body as u32).to_be_bytes()[1..]);
}

/// The header of a RAW chunk of `len` payload bytes (at most [`MAX_CHUNK`]), for a sender that
/// reads its payload in place behind it.
pub fn raw_header(len: usize) -> [u8; HEADER] {
    debug_assert!(len <= MAX_CHUNK);
    let [_, a, b, c] = (len as u32).to_be_bytes();
    [RAW, a, b, c]
}

/// A zstd context at `level`, or referencing `dictionary` (prepared at that level; its ID goes
/// into the frame header, zstd's default).
fn zstd_encoder<'d>(
    level: i32,
    dictionary: Option<&'d dictionary::SendingDictionary>,
) -> Option<zstd::stream::raw::Encoder<'d>> {
    let mut e = match dictionary {
        Some(d) => zstd::stream::raw::Encoder::with_prepared_dictionary(d.prepared()).ok()?,
        None => zstd::stream::raw::Encoder::new(level).ok()?,
    };
    e.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))
        .ok()?;
    Some(e)
}

/// Compresses `payload` and flushes, appending to `out`; false on a zstd error.
fn zstd_compress(
    zstd: &mut zstd::stream::raw::Encoder<'_>,
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
    /// A zstd frame compressed with a dictionary this end does not know (`--compress-dict`).
    #[error("compression dictionary {0:#010x} unknown")]
    UnknownDictionary(u32),
}

/// Decodes one direction of one stream. Holds a decompression context only between the
/// start and the end of a deflate stream or zstd frame. `'d`: the process's dictionaries it
/// borrows ([`Compression::decoder`]).
#[derive(Default)]
pub struct Decoder<'d> {
    /// The dictionaries a zstd frame may name.
    dictionaries: &'d [Arc<Dictionary>],
    inflate: Option<Decompress>,
    zstd: Option<zstd::stream::raw::Decoder<'d>>,
}

impl fmt::Debug for Decoder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder<'static> {
    /// A fresh context that knows no dictionary.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<'d> Decoder<'d> {
    /// A fresh context that decodes zstd frames made with any of `dictionaries`.
    pub fn knowing(dictionaries: &'d [Arc<Dictionary>]) -> Self {
        Self {
            dictionaries,
            inflate: None,
            zstd: None,
        }
    }

    /// Whether a chunk of `kind` carries its payload as is, so that [`Decoder::decode`] returns
    /// the body itself and needs no output buffer.
    pub fn is_raw(kind: u8) -> bool {
        kind == RAW
    }

    /// Checks a chunk header; returns the kind and the body length to read next.
    pub fn header(header: [u8; 4]) -> Result<(u8, usize), DecodeError> {
        let kind = header[0];
        if kind > REFLATE {
            return Err(DecodeError::UnknownKind(kind));
        }
        let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
        if len > MAX_BODY {
            return Err(DecodeError::TooLong(len));
        }
        Ok((kind, len))
    }

    /// True while a decompression context is open (a deflate stream or zstd frame began and
    /// has not ended).
    pub fn holds_context(&self) -> bool {
        self.inflate.is_some() || self.zstd.is_some()
    }

    /// The context of the zstd frame that begins `body`, with the dictionary its header names
    /// (a frame header is whole in the chunk that begins the frame: the sender flushes every
    /// chunk). A header cut short names none here, and zstd refuses the frame once it reads
    /// the whole header, as it refuses any frame whose dictionary ID is not the context's.
    fn zstd_decoder(&self, body: &[u8]) -> Result<zstd::stream::raw::Decoder<'d>, DecodeError> {
        let corrupt = |e: std::io::Error| DecodeError::Corrupt(format!("zstd: {e}"));
        let known: &'d [Arc<Dictionary>] = self.dictionaries;
        let mut d = match zstd::zstd_safe::get_dict_id_from_frame(body) {
            None => zstd::stream::raw::Decoder::new().map_err(corrupt)?,
            Some(id) => {
                let id = id.get();
                let dictionary = known
                    .iter()
                    .find(|d| d.id() == id)
                    .ok_or(DecodeError::UnknownDictionary(id))?;
                zstd::stream::raw::Decoder::with_prepared_dictionary(dictionary.prepared())
                    .map_err(corrupt)?
            }
        };
        d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG))
            .map_err(corrupt)?;
        Ok(d)
    }

    /// Decodes a chunk body of `kind`; returns the payload: `body` itself for a RAW chunk,
    /// else what was decoded into `out` (its contents replaced). An `out` with room for more
    /// than [`MAX_CHUNK`] bytes is never reallocated.
    pub fn decode<'a>(
        &mut self,
        kind: u8,
        body: &'a [u8],
        out: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], DecodeError> {
        match kind {
            RAW => {
                if body.len() > MAX_CHUNK {
                    return Err(DecodeError::Bomb);
                }
                Ok(body)
            }
            SNAPPY => {
                out.clear();
                let mut dec = snap::read::FrameDecoder::new(body).take(MAX_CHUNK as u64 + 1);
                dec.read_to_end(out)
                    .map_err(|e| DecodeError::Corrupt(format!("snappy: {e}")))?;
                if out.len() > MAX_CHUNK {
                    return Err(DecodeError::Bomb);
                }
                Ok(out)
            }
            FLATE | REFLATE => {
                if kind == REFLATE {
                    // A new deflate stream: whatever came before is over.
                    self.inflate = None;
                }
                let inflate = self.inflate.get_or_insert_with(|| Decompress::new(false));
                out.clear();
                // Room for one byte more than allowed: filling it proves a bomb. Decompressing
                // writes only into the room there is, so this also bounds the output.
                out.reserve_exact(MAX_CHUNK + 1);
                let before = inflate.total_in();
                let ended = loop {
                    let consumed = (inflate.total_in() - before) as usize;
                    let status = inflate
                        .decompress_vec(&body[consumed..], out, FlushDecompress::Sync)
                        .map_err(|e| DecodeError::Corrupt(format!("deflate: {e}")))?;
                    if out.len() > MAX_CHUNK {
                        return Err(DecodeError::Bomb);
                    }
                    let consumed = (inflate.total_in() - before) as usize;
                    if status == Status::StreamEnd {
                        if consumed != body.len() {
                            return Err(DecodeError::Corrupt(
                                "deflate: data after the end of the stream".into(),
                            ));
                        }
                        break true;
                    }
                    if consumed == body.len() {
                        break false;
                    }
                    if out.len() == out.capacity() {
                        // Output full at the limit and input left: more than a chunk's worth.
                        return Err(DecodeError::Bomb);
                    }
                    if status == Status::BufError {
                        return Err(DecodeError::Corrupt("deflate: truncated chunk".into()));
                    }
                };
                if ended {
                    // The sender ended its context: free ours; a new stream may follow.
                    self.inflate = None;
                }
                Ok(out)
            }
            ZSTD => {
                if self.zstd.is_none() {
                    if body.is_empty() {
                        // Nothing begins yet (an empty read's chunk): the frame, and the
                        // dictionary its header names, come with the next one.
                        out.clear();
                        return Ok(out);
                    }
                    self.zstd = Some(self.zstd_decoder(body)?);
                }
                let Some(zstd) = &mut self.zstd else {
                    return Err(DecodeError::Corrupt("zstd: no decoder".into()));
                };
                out.clear();
                out.reserve_exact(MAX_CHUNK + 1);
                let mut input = InBuffer::around(body);
                let frame_ended = loop {
                    let (before_in, before_out) = (input.pos(), out.len());
                    let len = out.len();
                    let mut o = OutBuffer::around_pos(out, len);
                    // 0: a frame was decoded and flushed whole, and no new one began.
                    let hint = zstd
                        .run(&mut input, &mut o)
                        .map_err(|e| DecodeError::Corrupt(format!("zstd: {e}")))?;
                    if out.len() > MAX_CHUNK {
                        return Err(DecodeError::Bomb);
                    }
                    let output_full = out.len() == out.capacity();
                    if output_full {
                        return Err(DecodeError::Bomb);
                    }
                    if input.pos() == body.len() {
                        break hint == 0;
                    }
                    if input.pos() == before_in && out.len() == before_out {
                        return Err(DecodeError::Corrupt("zstd: no progress".into()));
                    }
                };
                if frame_ended {
                    // The sender ended its frame: free our context; a new frame may follow.
                    self.zstd = None;
                }
                Ok(out)
            }
            other => Err(DecodeError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests;
