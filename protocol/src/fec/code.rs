//! The erasure code under [`crate::fec`]: random linear combinations over GF(2^8) of the
//! source symbols a repair covers, and the arithmetic to take them apart again.
//!
//! A symbol is a payload's length (two bytes, big-endian), the payload, and zeros up to the
//! symbol length, so that payloads of different lengths share one code and a rebuilt one
//! comes back at its own length. A repair symbol is the sum of `c(id, pn) * symbol(pn)` over
//! the sources it covers, where the coefficient `c` is a nonzero field element both ends
//! derive from the repair's id and the source's packet number ([`coefficient`]), so the frame
//! carries only the id. Any set of repairs whose coefficient matrix has full rank over the
//! missing sources rebuilds them; with random coefficients in GF(2^8) a square system is
//! singular about once in 256, and a single missing source (the common case) is rebuilt by
//! any one repair that covers it. The field arithmetic (table multiplication, vectorised
//! multiply-and-add over slices) is `reed-solomon-erasure`'s.

use reed_solomon_erasure::galois_8;

/// Symbol length for payloads of at most `longest` bytes.
pub(super) fn symbol_len(longest: usize) -> usize {
    longest + 2
}

/// Writes `payload` as a symbol of `len` bytes into `out` (cleared first); what
/// [`add_payload`] adds a multiple of.
#[cfg(test)]
pub(super) fn to_symbol(payload: &[u8], len: usize, out: &mut Vec<u8>) {
    debug_assert!(payload.len() + 2 <= len && payload.len() <= usize::from(u16::MAX));
    out.clear();
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(len, 0);
}

/// The payload a symbol holds, if its length prefix fits it.
pub(super) fn from_symbol(symbol: &[u8]) -> Option<&[u8]> {
    let (len, rest) = symbol.split_first_chunk::<2>()?;
    rest.get(..usize::from(u16::from_be_bytes(*len)))
}

/// The coefficient of source `pn` in repair `id`: a nonzero element of GF(2^8), mixed from
/// both (a 64-bit finaliser), the same at both ends.
pub(super) fn coefficient(id: u64, pn: u64) -> u8 {
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ pn.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 29;
    (x % 255) as u8 + 1
}

/// `out += c * symbol`, the symbol written as a `to_symbol` of `payload` would be: its
/// length prefix, then the payload (the zero padding adds nothing). `out` must be at least
/// the symbol's length.
pub(super) fn add_payload(out: &mut [u8], c: u8, payload: &[u8]) {
    let prefix = (payload.len() as u16).to_be_bytes();
    add_scaled(&mut out[..2], c, &prefix);
    add_scaled(&mut out[2..2 + payload.len()], c, payload);
}

/// `out += c * input` over GF(2^8); `out` and `input` of one length.
pub(super) fn add_scaled(out: &mut [u8], c: u8, input: &[u8]) {
    debug_assert_eq!(out.len(), input.len());
    if c == 0 || input.is_empty() {
        return;
    }
    galois_8::mul_slice_xor(c, input, out);
}

/// `a * b` in GF(2^8).
pub(super) fn mul(a: u8, b: u8) -> u8 {
    galois_8::mul(a, b)
}

/// The inverse of a nonzero element.
pub(super) fn inverse(a: u8) -> u8 {
    debug_assert_ne!(a, 0);
    galois_8::div(1, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_are_nonzero_and_spread_over_the_field() {
        let mut seen = [0u32; 256];
        for id in 0..64u64 {
            for pn in 1000..1064u64 {
                seen[usize::from(coefficient(id, pn))] += 1;
            }
        }
        assert_eq!(seen[0], 0);
        // 4,096 draws over 255 values: each about 16 times; none absent or dominant.
        assert!(seen[1..].iter().all(|n| (2..=48).contains(n)), "{seen:?}");
    }

    #[test]
    fn a_combination_of_payloads_is_taken_apart_by_its_coefficients() {
        let a: &[u8] = b"request one";
        let b: &[u8] = &[7; 300];
        let len = symbol_len(300);
        let (ca, cb) = (coefficient(9, 1), coefficient(9, 2));
        let mut repair = vec![0u8; len];
        add_payload(&mut repair, ca, a);
        add_payload(&mut repair, cb, b);
        // With b known, a is (repair - cb * b) / ca.
        let mut s = Vec::new();
        to_symbol(b, len, &mut s);
        add_scaled(&mut repair, cb, &s);
        let mut rebuilt = vec![0u8; len];
        add_scaled(&mut rebuilt, inverse(ca), &repair);
        assert_eq!(from_symbol(&rebuilt).unwrap(), a);
        assert_eq!(mul(ca, inverse(ca)), 1);
    }

    #[test]
    fn a_bad_length_prefix_gives_no_payload() {
        assert_eq!(from_symbol(&[0, 9, 1, 2]), None);
        assert_eq!(from_symbol(&[0]), None);
        assert_eq!(from_symbol(&[0, 1, 5, 0]), Some(&[5u8][..]));
    }
}
