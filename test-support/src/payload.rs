//! Filler bytes for tests and benchmarks that must be the same on every run and must not
//! compress (a tunnel's compression would otherwise make a transfer look faster than it is).
//! One generator, so that the suites, the benchmarks and `ferry-bench` all send the same kind of
//! bytes and a failure replays from its seed.

/// `len` bytes of xorshift64 output (13, 7, 17) started from `seed`: incompressible, the same on
/// every run, different for each seed. `payload(1, n)` starts from 0x9e37_79b9_7f4a_7c15, the
/// pattern the benchmarks have always sent.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    // Odd, so never the all-zero state that xorshift cannot leave.
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_bytes_every_time_and_another_seed_other_bytes() {
        assert_eq!(payload(7, 4096), payload(7, 4096));
        assert_ne!(payload(7, 64), payload(8, 64));
        // A longer payload extends a shorter one from the same seed.
        assert_eq!(payload(3, 4096)[..100], payload(3, 100)[..]);
    }

    #[test]
    fn the_bytes_look_random_enough_not_to_compress() {
        let bytes = payload(1, 1 << 16);
        let mut seen = [0u32; 256];
        for b in &bytes {
            seen[usize::from(*b)] += 1;
        }
        // Every byte value occurs, none far more often than the 256 expected.
        assert!(seen.iter().all(|&n| (128..=384).contains(&n)), "{seen:?}");
    }
}
