//! The erasure code under [`crate::fec`]: source payloads as equal-length symbols, repair
//! symbols computed from them, and missing sources rebuilt from what arrived.
//!
//! A symbol is a payload's length (two bytes, big-endian), the payload, and zeros up to the
//! group's symbol length, so that payloads of different lengths share one code and a rebuilt
//! one comes back at its own length.

use reed_solomon_erasure::galois_8::ReedSolomon;

/// Symbol length for payloads of at most `longest` bytes.
pub(super) fn symbol_len(longest: usize) -> usize {
    longest + 2
}

/// Writes `payload` as a symbol of `len` bytes into `out` (cleared first).
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

/// The `repairs` repair symbols of `sources` (symbols of equal length, at least one).
pub(super) fn encode(sources: &[Vec<u8>], repairs: usize) -> Option<Vec<Vec<u8>>> {
    let len = sources.first()?.len();
    let code = ReedSolomon::new(sources.len(), repairs).ok()?;
    let mut parity = vec![vec![0u8; len]; repairs];
    code.encode_sep(sources, &mut parity).ok()?;
    Some(parity)
}

/// Rebuilds the missing sources of a group of `sources` symbols and `repairs` repair symbols:
/// `shards` holds the sources first, then the repairs, `None` where one is missing. Returns
/// false (and changes nothing useful) when too few arrived or the lengths disagree.
pub(super) fn reconstruct(shards: &mut [Option<Vec<u8>>], sources: usize) -> bool {
    let repairs = shards.len().saturating_sub(sources);
    let Ok(code) = ReedSolomon::new(sources, repairs) else {
        return false;
    };
    code.reconstruct_data(shards).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols(payloads: &[&[u8]]) -> Vec<Vec<u8>> {
        let len = symbol_len(payloads.iter().map(|p| p.len()).max().unwrap());
        payloads
            .iter()
            .map(|p| {
                let mut s = Vec::new();
                to_symbol(p, len, &mut s);
                s
            })
            .collect()
    }

    #[test]
    fn any_missing_sources_up_to_the_repair_count_come_back_at_their_length() {
        let payloads: [&[u8]; 4] = [b"request one", b"a", &[7; 1200], b""];
        let sources = symbols(&payloads);
        let repairs = encode(&sources, 2).unwrap();
        for lost in [[0usize, 1], [2, 3], [1, 2], [0, 3]] {
            let mut shards: Vec<Option<Vec<u8>>> =
                sources.iter().chain(&repairs).cloned().map(Some).collect();
            for i in lost {
                shards[i] = None;
            }
            assert!(reconstruct(&mut shards, 4));
            for i in lost {
                let rebuilt = shards[i].as_deref().unwrap();
                assert_eq!(from_symbol(rebuilt).unwrap(), payloads[i]);
            }
        }
    }

    #[test]
    fn a_lone_source_comes_back_from_any_one_repair() {
        let sources = symbols(&[b"ping"]);
        let repairs = encode(&sources, 3).unwrap();
        for keep in 0..3 {
            let mut shards = vec![None, None, None, None];
            shards[1 + keep] = Some(repairs[keep].clone());
            assert!(reconstruct(&mut shards, 1));
            assert_eq!(from_symbol(shards[0].as_deref().unwrap()).unwrap(), b"ping");
        }
    }

    #[test]
    fn too_few_symbols_or_a_bad_length_prefix_rebuild_nothing() {
        let sources = symbols(&[b"one", b"two", b"three"]);
        let repairs = encode(&sources, 1).unwrap();
        let mut shards = vec![
            None,
            None,
            Some(sources[2].clone()),
            Some(repairs[0].clone()),
        ];
        assert!(!reconstruct(&mut shards, 3));
        assert_eq!(from_symbol(&[0, 9, 1, 2]), None);
        assert_eq!(from_symbol(&[0]), None);
        assert_eq!(from_symbol(&[0, 1, 5, 0]), Some(&[5u8][..]));
    }
}
