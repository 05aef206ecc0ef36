//! Primitive wire encodings: variable-length integers and a bounds-checked reader.
//!
//! Every decoder in Ferry reads through [`Reader`], which returns [`DecodeError`] instead of
//! panicking or slicing out of range, so a hostile datagram can only ever be dropped and counted.
//! Integers use the QUIC variable-length encoding (RFC 9000 section 16): the two high bits of the
//! first byte give the length (1, 2, 4 or 8 bytes), leaving 62 bits of value.

use bytes::BufMut;
use thiserror::Error;

/// Largest value a varint can carry (2^62 - 1).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// Why a datagram, header or frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended in the middle of a field.
    #[error("truncated input")]
    UnexpectedEnd,
    /// A frame type byte that this version does not define.
    #[error("unknown frame type {0:#x}")]
    UnknownFrame(u64),
    /// A field holds a value that the format forbids (named by the string).
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// Bounds-checked cursor over a byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// True when everything has been consumed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The unconsumed bytes, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Consumes exactly `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::UnexpectedEnd);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Consumes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let b = self.bytes(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Consumes one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Consumes a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Consumes a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Consumes a variable-length integer.
    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let first = *self.buf.first().ok_or(DecodeError::UnexpectedEnd)?;
        let len = 1usize << (first >> 6);
        let raw = self.bytes(len)?;
        let mut value = u64::from(first & 0x3f);
        for b in &raw[1..] {
            value = (value << 8) | u64::from(*b);
        }
        Ok(value)
    }

    /// Consumes a varint length prefix and then that many bytes.
    pub fn length_prefixed(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| DecodeError::UnexpectedEnd)?;
        self.bytes(len)
    }
}

/// Number of bytes `value` takes as a varint. Values above [`VARINT_MAX`] are a caller bug.
pub fn varint_len(value: u64) -> usize {
    debug_assert!(value <= VARINT_MAX, "varint out of range: {value}");
    match value {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        _ => 8,
    }
}

/// Writing helpers for any [`BufMut`].
pub trait BufMutExt: BufMut {
    /// Appends `value` as a varint. Values above [`VARINT_MAX`] are clamped (and a debug assert
    /// fires): every caller encodes counters that cannot reach 2^62 in practice.
    fn put_varint(&mut self, value: u64) {
        let value = value.min(VARINT_MAX);
        match varint_len(value) {
            1 => self.put_u8(value as u8),
            2 => self.put_u16(0x4000 | value as u16),
            4 => self.put_u32(0x8000_0000 | value as u32),
            _ => self.put_u64(0xc000_0000_0000_0000 | value),
        }
    }

    /// Appends a varint length followed by the bytes.
    fn put_length_prefixed(&mut self, data: &[u8]) {
        self.put_varint(data.len() as u64);
        self.put_slice(data);
    }
}

impl<T: BufMut + ?Sized> BufMutExt for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length_boundary() {
        for v in [
            0,
            1,
            63,
            64,
            16383,
            16384,
            0x3fff_ffff,
            0x4000_0000,
            VARINT_MAX,
        ] {
            let mut buf = Vec::new();
            buf.put_varint(v);
            assert_eq!(buf.len(), varint_len(v));
            let mut r = Reader::new(&buf);
            assert_eq!(r.varint(), Ok(v));
            assert!(r.is_empty());
        }
    }

    #[test]
    fn truncated_varint_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        buf.put_varint(0x4000_0000);
        for cut in 0..buf.len() {
            assert_eq!(
                Reader::new(&buf[..cut]).varint(),
                Err(DecodeError::UnexpectedEnd)
            );
        }
    }

    #[test]
    fn length_prefix_longer_than_input_is_rejected() {
        let mut buf = Vec::new();
        buf.put_varint(10);
        buf.extend_from_slice(b"short");
        assert_eq!(
            Reader::new(&buf).length_prefixed(),
            Err(DecodeError::UnexpectedEnd)
        );
    }
}
