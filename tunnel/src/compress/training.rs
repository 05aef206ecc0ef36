//! `ferry-dict`'s work: training a zstd dictionary on sample payloads, and measuring what one
//! saves on samples, as Ferry's own chunk encoder would send them (the binary in `dict/` only
//! reads its flags).
//!
//! A sample is what one stream carries at its start: a file each, or (`--lines`) each line of
//! a capture that holds one message per line, as JSON APIs' traffic often does. zstd's trainer
//! (`ZDICT_trainFromBuffer`) picks the fragments most worth knowing in advance and writes a
//! dictionary with an ID; it wants samples totalling about 100 times the dictionary's size.
//! Samples are held in memory, at most [`MAX_SAMPLE_BYTES`] in all.

use std::fmt;
use std::path::{Path, PathBuf};

use super::dictionary::{read_at_most, Compression, DictionaryError, MAX_DICTIONARY_BYTES};
use super::{Codec, Decoder, Encoder, HEADER, MAX_CHUNK};

/// Most sample bytes read for training or checking.
pub const MAX_SAMPLE_BYTES: usize = 256 << 20;
/// The dictionary size `ferry-dict train` makes unless told otherwise.
pub const DEFAULT_DICTIONARY_SIZE: usize = 64 << 10;
/// The smallest dictionary zstd's trainer makes.
pub const MIN_DICTIONARY_SIZE: usize = 256;

/// Why training or checking failed: one line.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// A sample file could not be read.
    #[error("cannot read sample {file}: {source}")]
    Read {
        /// The file, as given.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// More sample bytes than are held in memory.
    #[error("the samples exceed {MAX_SAMPLE_BYTES} bytes: give fewer")]
    TooMuch,
    /// Nothing to train on or measure.
    #[error("no samples (empty files and lines are skipped)")]
    NoSamples,
    /// A dictionary size out of range.
    #[error("dictionary size {0}: use {MIN_DICTIONARY_SIZE} bytes to {MAX_DICTIONARY_BYTES}")]
    Size(usize),
    /// zstd's trainer failed.
    #[error("zstd could not train a dictionary on {samples} samples ({bytes} bytes): {reason}; give more samples (about 100 times the dictionary size in all)")]
    Failed {
        /// Samples given.
        samples: usize,
        /// Their bytes.
        bytes: usize,
        /// zstd's words.
        reason: String,
    },
    /// The dictionary to check.
    #[error("{0}")]
    Dictionary(#[from] DictionaryError),
    /// A sample did not come back whole through the encoder and decoder (never expected).
    #[error("sample {0} did not decode to itself")]
    RoundTrip(usize),
}

/// Sample payloads, one after another in one buffer (as zstd's trainer takes them).
#[derive(Debug, Default, Clone)]
pub struct Samples {
    data: Vec<u8>,
    sizes: Vec<usize>,
}

impl Samples {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample (an empty one is skipped).
    pub fn push(&mut self, sample: &[u8]) -> Result<(), TrainingError> {
        if sample.is_empty() {
            return Ok(());
        }
        if self.data.len() + sample.len() > MAX_SAMPLE_BYTES {
            return Err(TrainingError::TooMuch);
        }
        self.data.extend_from_slice(sample);
        self.sizes.push(sample.len());
        Ok(())
    }

    /// Reads `files`: each a sample, or with `lines` each of its lines.
    pub fn read(files: &[PathBuf], lines: bool) -> Result<Self, TrainingError> {
        let mut samples = Self::new();
        for path in files {
            let content = read_bounded(path, MAX_SAMPLE_BYTES - samples.data.len())?;
            if lines {
                for line in content.split(|b| *b == b'\n') {
                    samples.push(line)?;
                }
            } else {
                samples.push(&content)?;
            }
        }
        Ok(samples)
    }

    /// How many samples.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }

    /// Their bytes in all.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Each sample.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.sizes.iter().scan(0, |at, &len| {
            let sample = &self.data[*at..*at + len];
            *at += len;
            Some(sample)
        })
    }
}

/// Reads `path`, failing with [`TrainingError::TooMuch`] past `room` bytes.
fn read_bounded(path: &Path, room: usize) -> Result<Vec<u8>, TrainingError> {
    read_at_most(path, room)
        .map_err(|source| TrainingError::Read {
            file: path.display().to_string(),
            source,
        })?
        .ok_or(TrainingError::TooMuch)
}

/// Trains a zstd dictionary of at most `size` bytes on `samples`.
pub fn train(samples: &Samples, size: usize) -> Result<Vec<u8>, TrainingError> {
    if !(MIN_DICTIONARY_SIZE..=MAX_DICTIONARY_BYTES).contains(&size) {
        return Err(TrainingError::Size(size));
    }
    if samples.count() == 0 {
        return Err(TrainingError::NoSamples);
    }
    zstd::dict::from_continuous(&samples.data, &samples.sizes, size).map_err(|e| {
        TrainingError::Failed {
            samples: samples.count(),
            bytes: samples.bytes(),
            reason: e.to_string(),
        }
    })
}

/// What a dictionary saves on samples, each sent as a fresh stream's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The dictionary's ID.
    pub id: u32,
    /// Its size.
    pub dictionary_bytes: usize,
    /// The zstd level measured.
    pub level: i32,
    /// Samples measured.
    pub samples: usize,
    /// Their bytes.
    pub payload_bytes: u64,
    /// Chunk bytes (headers included) without the dictionary.
    pub alone_bytes: u64,
    /// Chunk bytes with it.
    pub with_dictionary_bytes: u64,
}

impl CheckReport {
    /// Chunk bytes per payload byte without the dictionary.
    pub fn alone_ratio(&self) -> f64 {
        self.alone_bytes as f64 / self.payload_bytes.max(1) as f64
    }

    /// Chunk bytes per payload byte with it.
    pub fn with_dictionary_ratio(&self) -> f64 {
        self.with_dictionary_bytes as f64 / self.payload_bytes.max(1) as f64
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} samples, {} bytes, each as a new stream's data: zstd:{} alone {:.3} of the payload, with the dictionary {:.3} ({:.2}x smaller)",
            self.samples,
            self.payload_bytes,
            self.level,
            self.alone_ratio(),
            self.with_dictionary_ratio(),
            self.alone_bytes as f64 / self.with_dictionary_bytes.max(1) as f64,
        )
    }
}

/// Measures the dictionary `content` (named `origin`) at zstd `level` on `samples`: each is
/// encoded as a new stream's data with Ferry's chunk encoder, with and without the dictionary,
/// and must decode back to itself.
pub fn check(
    content: &[u8],
    origin: &str,
    level: i32,
    samples: &Samples,
) -> Result<CheckReport, TrainingError> {
    let with = Compression::with_dictionary(Codec::Zstd(level), content, origin)?;
    let alone = Compression::new(Codec::Zstd(level));
    if samples.count() == 0 {
        return Err(TrainingError::NoSamples);
    }
    let mut report = CheckReport {
        id: with.dictionary_id().unwrap_or_default(),
        dictionary_bytes: content.len(),
        level,
        samples: samples.count(),
        payload_bytes: 0,
        alone_bytes: 0,
        with_dictionary_bytes: 0,
    };
    for (i, sample) in samples.iter().enumerate() {
        report.payload_bytes += sample.len() as u64;
        report.alone_bytes += stream_bytes(alone.encoder(), alone.decoder(), sample)
            .ok_or(TrainingError::RoundTrip(i))?;
        report.with_dictionary_bytes += stream_bytes(with.encoder(), with.decoder(), sample)
            .ok_or(TrainingError::RoundTrip(i))?;
    }
    Ok(report)
}

/// The chunk bytes a stream carrying `payload` sends (its context ended after it), if they
/// decode back to `payload`.
fn stream_bytes(mut encoder: Encoder<'_>, mut decoder: Decoder<'_>, payload: &[u8]) -> Option<u64> {
    let mut wire = Vec::new();
    let mut chunk = Vec::new();
    for piece in payload.chunks(MAX_CHUNK) {
        encoder.encode(piece, &mut chunk);
        wire.extend_from_slice(&chunk);
    }
    if encoder.end_context(&mut chunk) {
        wire.extend_from_slice(&chunk);
    }
    let (mut back, mut out, mut at) = (Vec::new(), Vec::new(), 0);
    while at < wire.len() {
        let header = wire.get(at..at + HEADER)?.try_into().ok()?;
        let (kind, len) = Decoder::header(header).ok()?;
        let body = wire.get(at + HEADER..at + HEADER + len)?;
        back.extend_from_slice(decoder.decode(kind, body, &mut out).ok()?);
        at += HEADER + len;
    }
    (back == payload).then_some(wire.len() as u64)
}

/// A byte size as `ferry-dict` takes it: `65536`, `64KiB` (or `64K`), `1MiB` (or `1M`).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let scale = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" | "kiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        _ => {
            return Err(format!(
                "invalid size {text:?}: use bytes, KiB or MiB (64KiB)"
            ))
        }
    };
    digits
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("invalid size {text:?}: use bytes, KiB or MiB (64KiB)"))
}
