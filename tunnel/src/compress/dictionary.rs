//! Shared zstd dictionaries: what a stream's compressor knows before its first byte.
//!
//! Every stream starts with an empty history, so a short keep-alive connection never learns
//! the field names, enumerations and structure every message of its protocol repeats. A
//! dictionary trained on sample traffic (`ferry-dict train`) gives every stream that knowledge
//! from its first byte without sharing any history between clients: it is static, read-only,
//! and no client's data enters another's compression context (DESIGN.md section 4 holds).
//!
//! # Loaded once, shared by every stream
//!
//! A [`Compression`] is what one process compresses with and can decode, read from its
//! `--compress zstd[:LEVEL][:dict=FILE]` and `--compress-dict FILE` flags at start-up. Each
//! dictionary is prepared once (zstd's digested form: a `DDict` for decoding, and for the one
//! this end sends with a `CDict` at its level) and held behind an [`Arc`]; every stream's
//! context references it instead of loading its own copy, so a dictionary costs its memory once
//! per process, not once per stream, and a context starts without re-digesting it.
//!
//! The zstd crate's contexts borrow a prepared dictionary (`Encoder<'a>` from
//! `&'a EncoderDictionary`), so the per-stream [`Encoder`] and [`Decoder`] carry that lifetime:
//! they borrow the process's `Compression`, which the splice borrows from the agent's or the
//! gateway's shared state for as long as the stream lives. No `'static` is needed and nothing
//! is leaked; a later reload can swap in a new `Compression` while streams that started with the
//! old one finish with it.
//!
//! # The dictionary's ID on the wire
//!
//! zstd's frame header carries the ID of the dictionary a frame was compressed with, and zstd
//! itself refuses to decode a frame whose ID differs from the dictionary it was given
//! ("Dictionary mismatch"). Ferry uses that field rather than a chunk kind of its own: it costs
//! no byte beyond the ones zstd writes anyway (up to 4 per frame), a stream's first ZSTD chunk
//! (and the first after a context ended) begins a frame and so carries it, and the check cannot
//! be forgotten. The receiver reads the ID before it makes the frame's context and picks the
//! dictionary it knows under that ID; one it does not know is [`DecodeError::UnknownDictionary`]
//! (`compression dictionary 0x... unknown`), which resets that stream only, on both sides: no
//! data is ever decoded with the wrong dictionary or none. A peer from before dictionaries
//! makes its context without one, and zstd's own check resets the stream as corrupt: loud, not
//! silent. Only zstd dictionaries with an ID are accepted (raw-content ones have none).
//!
//! # Rolling a new dictionary out
//!
//! The receiving end knows the dictionary of its own `--compress` and those of
//! `--compress-dict` (decoding only). Loading the new one with `--compress-dict` everywhere
//! first, then switching `--compress` to it end by end, never leaves a stream that cannot be
//! decoded (README, Bandwidth).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zstd::dict::{DecoderDictionary, EncoderDictionary};

use super::{Codec, CompressFlag, Decoder, Encoder};

/// Largest dictionary file read (zstd's trainer makes 110 KiB by default; `ferry-dict train`
/// makes at most this).
pub const MAX_DICTIONARY_BYTES: usize = 2 << 20;

/// Why a dictionary could not be used: one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DictionaryError {
    /// The file could not be read.
    #[error("cannot read compression dictionary {file}: {source}")]
    Read {
        /// The file, as given.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is larger than any dictionary Ferry makes.
    #[error("compression dictionary {file} is larger than {MAX_DICTIONARY_BYTES} bytes")]
    TooLarge {
        /// The file, as given.
        file: String,
    },
    /// Not a zstd dictionary with an ID (raw bytes, or another format).
    #[error("{file} is not a zstd dictionary with an ID (make one with `ferry-dict train`)")]
    NoId {
        /// The file, as given.
        file: String,
    },
    /// zstd refused to load it (a corrupt header or tables).
    #[error("zstd cannot load the compression dictionary {file}: {reason}")]
    Unusable {
        /// The file, as given.
        file: String,
        /// zstd's words.
        reason: String,
    },
    /// Two different dictionaries with one ID: the receiver could not tell them apart.
    #[error(
        "compression dictionaries {first} and {second} differ but have the same ID {id:#010x}"
    )]
    SameId {
        /// The ID.
        id: u32,
        /// The dictionary loaded first.
        first: String,
        /// The one that clashed with it.
        second: String,
    },
    /// A dictionary given with a codec other than zstd.
    #[error("a compression dictionary needs zstd, not {0} (--compress zstd[:LEVEL]:dict=FILE)")]
    NotZstd(Codec),
}

/// A dictionary prepared for decoding, known by its ID.
pub struct Dictionary {
    id: u32,
    /// Where it came from (a file), for messages.
    origin: String,
    bytes: usize,
    /// The content's hash: two files with one ID must be the same dictionary.
    digest: u64,
    prepared: DecoderDictionary<'static>,
}

impl fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dictionary")
            .field("id", &format_args!("{:#010x}", self.id))
            .field("origin", &self.origin)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Dictionary {
    /// Checks and prepares `content` (a zstd dictionary) for decoding; `origin` names it in
    /// errors and logs.
    pub fn new(content: &[u8], origin: &str) -> Result<Self, DictionaryError> {
        let id = id_of(content).ok_or_else(|| DictionaryError::NoId {
            file: origin.to_owned(),
        })?;
        let prepared =
            DecoderDictionary::try_copy(content).map_err(|e| DictionaryError::Unusable {
                file: origin.to_owned(),
                reason: e.to_string(),
            })?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        content.hash(&mut hasher);
        Ok(Self {
            id,
            origin: origin.to_owned(),
            bytes: content.len(),
            digest: hasher.finish(),
            prepared,
        })
    }

    /// The ID zstd writes into the header of every frame compressed with it.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Never true: an empty file is no dictionary.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    pub(super) fn prepared(&self) -> &DecoderDictionary<'static> {
        &self.prepared
    }
}

/// The ID in a zstd dictionary's header; `None` for anything else (raw-content dictionaries
/// have none).
pub fn id_of(content: &[u8]) -> Option<u32> {
    zstd::zstd_safe::get_dict_id_from_dict(content).map(std::num::NonZeroU32::get)
}

/// The dictionary this end compresses with, prepared at the codec's level.
pub(super) struct SendingDictionary {
    id: u32,
    prepared: EncoderDictionary<'static>,
}

impl SendingDictionary {
    pub(super) fn prepared(&self) -> &EncoderDictionary<'static> {
        &self.prepared
    }
}

/// What one process compresses with and can decode: `--compress` and `--compress-dict`, read
/// and prepared once, shared by every stream (cloning it shares the dictionaries).
#[derive(Clone, Default)]
pub struct Compression {
    codec: Codec,
    sending: Option<Arc<SendingDictionary>>,
    /// Every dictionary this end decodes with, the one it sends with among them.
    known: Vec<Arc<Dictionary>>,
}

/// No compression and no dictionary, for splices that are given none.
pub static NO_COMPRESSION: Compression = Compression::new(Codec::None);

impl fmt::Debug for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Compression({self})")
    }
}

/// As the start-up log says it: `zstd:3, dictionary 0x1234abcd (also decodes 0x0badf00d)`.
impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.codec)?;
        if let Some(d) = &self.sending {
            write!(f, ", dictionary {:#010x}", d.id)?;
        }
        let sending = self.sending.as_ref().map(|d| d.id);
        let others: Vec<String> = self
            .known
            .iter()
            .filter(|d| Some(d.id) != sending)
            .map(|d| format!("{:#010x}", d.id))
            .collect();
        if !others.is_empty() {
            write!(f, " (also decodes {})", others.join(", "))?;
        }
        Ok(())
    }
}

/// The same codec and the same dictionaries (by ID and content): what a reload compares to
/// tell whether `--compress` or `--compress-dict` changed.
impl PartialEq for Compression {
    fn eq(&self, other: &Self) -> bool {
        let known = |c: &Compression| -> Vec<(u32, u64)> {
            let mut ids: Vec<(u32, u64)> = c.known.iter().map(|d| (d.id, d.digest)).collect();
            ids.sort_unstable();
            ids
        };
        self.codec == other.codec
            && self.sending.as_ref().map(|d| d.id) == other.sending.as_ref().map(|d| d.id)
            && known(self) == known(other)
    }
}

impl Compression {
    /// `codec` without a dictionary (decoding none either).
    pub const fn new(codec: Codec) -> Self {
        Self {
            codec,
            sending: None,
            known: Vec::new(),
        }
    }

    /// zstd with the dictionary `content` (named `origin`): every stream's context starts
    /// with it, and the decoder knows it.
    pub fn with_dictionary(
        codec: Codec,
        content: &[u8],
        origin: &str,
    ) -> Result<Self, DictionaryError> {
        let Codec::Zstd(level) = codec else {
            return Err(DictionaryError::NotZstd(codec));
        };
        let dictionary = Dictionary::new(content, origin)?;
        let prepared =
            EncoderDictionary::try_copy(content, level).map_err(|e| DictionaryError::Unusable {
                file: origin.to_owned(),
                reason: e.to_string(),
            })?;
        let sending = SendingDictionary {
            id: dictionary.id,
            prepared,
        };
        Ok(Self {
            codec,
            sending: Some(Arc::new(sending)),
            known: vec![Arc::new(dictionary)],
        })
    }

    /// Also decodes frames made with the dictionary `content` (a roll-out's other one). The
    /// same dictionary twice is taken once; another with an ID already known is an error.
    pub fn also_decoding(mut self, content: &[u8], origin: &str) -> Result<Self, DictionaryError> {
        let dictionary = Dictionary::new(content, origin)?;
        if let Some(known) = self.known.iter().find(|d| d.id == dictionary.id) {
            if known.digest == dictionary.digest && known.bytes == dictionary.bytes {
                return Ok(self);
            }
            return Err(DictionaryError::SameId {
                id: dictionary.id,
                first: known.origin.clone(),
                second: dictionary.origin,
            });
        }
        self.known.push(Arc::new(dictionary));
        Ok(self)
    }

    /// Reads the files `--compress` and `--compress-dict` name.
    pub fn load(flag: &CompressFlag, decode_also: &[PathBuf]) -> Result<Self, DictionaryError> {
        let mut compression = match &flag.dictionary {
            Some(path) => {
                Self::with_dictionary(flag.codec, &read(path)?, &path.display().to_string())?
            }
            None => Self::new(flag.codec),
        };
        for path in decode_also {
            compression = compression.also_decoding(&read(path)?, &path.display().to_string())?;
        }
        Ok(compression)
    }

    /// The codec of what this end sends.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The ID of the dictionary this end sends with, if any.
    pub fn dictionary_id(&self) -> Option<u32> {
        self.sending.as_ref().map(|d| d.id)
    }

    /// The dictionaries this end decodes with.
    pub fn known(&self) -> &[Arc<Dictionary>] {
        &self.known
    }

    /// A fresh context for one direction of one stream, sending.
    pub fn encoder(&self) -> Encoder<'_> {
        Encoder::with_dictionary(self.codec, self.sending.as_deref())
    }

    /// A fresh context for one direction of one stream, receiving.
    pub fn decoder(&self) -> Decoder<'_> {
        Decoder::knowing(&self.known)
    }
}

/// Reads a dictionary file, at most [`MAX_DICTIONARY_BYTES`] of it.
pub fn read(path: &Path) -> Result<Vec<u8>, DictionaryError> {
    let file = || path.display().to_string();
    read_at_most(path, MAX_DICTIONARY_BYTES)
        .map_err(|source| DictionaryError::Read {
            file: file(),
            source,
        })?
        .ok_or_else(|| DictionaryError::TooLarge { file: file() })
}

/// The file at `path` if it holds at most `limit` bytes, `None` if more: read no further than
/// one byte past the limit, so a huge file (or a device) costs no more than that.
pub(super) fn read_at_most(path: &Path, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut content = Vec::new();
    std::fs::File::open(path)?
        .take(limit as u64 + 1)
        .read_to_end(&mut content)?;
    Ok((content.len() <= limit).then_some(content))
}
