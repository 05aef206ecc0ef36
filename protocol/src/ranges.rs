//! A set of `u64` values stored as disjoint, sorted half-open ranges.
//!
//! It is the one data structure behind selective acknowledgement (which packet numbers arrived),
//! and behind the stream send buffer (which byte ranges were acknowledged and which must be sent
//! again). Adjacent and overlapping insertions merge, so its size is the number of holes, not the
//! number of values.

use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint half-open ranges of `u64`, kept merged and sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end (exclusive); no two entries overlap or touch.
    map: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the set holds no value.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of disjoint ranges (not values).
    pub fn range_count(&self) -> usize {
        self.map.len()
    }

    /// Smallest value, if any.
    pub fn min(&self) -> Option<u64> {
        self.map.first_key_value().map(|(s, _)| *s)
    }

    /// Largest value, if any.
    pub fn max(&self) -> Option<u64> {
        self.map.last_key_value().map(|(_, e)| *e - 1)
    }

    /// True when `value` is in the set.
    pub fn contains(&self, value: u64) -> bool {
        self.map
            .range(..=value)
            .next_back()
            .is_some_and(|(_, end)| value < *end)
    }

    /// True when every value of `range` is in the set.
    pub fn contains_range(&self, range: Range<u64>) -> bool {
        if range.is_empty() {
            return true;
        }
        self.map
            .range(..=range.start)
            .next_back()
            .is_some_and(|(_, end)| range.end <= *end)
    }

    /// Adds one value; returns true if it was not already present.
    pub fn insert_one(&mut self, value: u64) -> bool {
        self.insert(value..value + 1)
    }

    /// Adds `range`; returns true if any of its values was not already present.
    pub fn insert(&mut self, range: Range<u64>) -> bool {
        if range.is_empty() || self.contains_range(range.clone()) {
            return false;
        }
        let mut start = range.start;
        let mut end = range.end;
        // Merge with a predecessor that overlaps or touches.
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.map.remove(&s);
            }
        }
        // Absorb every successor that starts within (or touching) the new range.
        while let Some((&s, &e)) = self.map.range(start..).next() {
            if s > end {
                break;
            }
            end = end.max(e);
            self.map.remove(&s);
        }
        self.map.insert(start, end);
        true
    }

    /// Removes every value of `range`.
    pub fn remove(&mut self, range: Range<u64>) {
        if range.is_empty() {
            return;
        }
        // A range that starts before `range.start` and reaches into it is split.
        if let Some((&s, &e)) = self.map.range(..range.start).next_back() {
            if e > range.start {
                self.map.insert(s, range.start);
                if e > range.end {
                    self.map.insert(range.end, e);
                    return;
                }
            }
        }
        while let Some((&s, &e)) = self.map.range(range.start..).next() {
            if s >= range.end {
                break;
            }
            self.map.remove(&s);
            if e > range.end {
                self.map.insert(range.end, e);
                break;
            }
        }
    }

    /// Removes and returns the lowest range.
    pub fn pop_min(&mut self) -> Option<Range<u64>> {
        self.map.pop_first().map(|(s, e)| s..e)
    }

    /// Removes and returns at most `max_len` values from the start of the lowest range.
    pub fn pop_min_bounded(&mut self, max_len: u64) -> Option<Range<u64>> {
        let (s, e) = self.map.pop_first()?;
        if e - s > max_len {
            self.map.insert(s + max_len, e);
            Some(s..s + max_len)
        } else {
            Some(s..e)
        }
    }

    /// Lowest range, without removing it.
    pub fn first(&self) -> Option<Range<u64>> {
        self.map.first_key_value().map(|(s, e)| *s..*e)
    }

    /// Ranges in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Range<u64>> + '_ {
        self.map.iter().map(|(s, e)| *s..*e)
    }

    /// Drops the lowest ranges until at most `max_ranges` remain (used to bound ACK state).
    pub fn truncate_low(&mut self, max_ranges: usize) {
        while self.map.len() > max_ranges {
            self.map.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(set: &RangeSet) -> Vec<Range<u64>> {
        set.iter().collect()
    }

    #[test]
    fn touching_and_overlapping_inserts_merge() {
        let mut s = RangeSet::new();
        assert!(s.insert(10..20));
        assert!(s.insert(30..40));
        assert!(s.insert(20..25));
        assert_eq!(ranges(&s), vec![10..25, 30..40]);
        assert!(s.insert(5..35));
        assert_eq!(ranges(&s), vec![5..40]);
        assert!(!s.insert(6..7));
    }

    #[test]
    fn remove_splits_ranges() {
        let mut s = RangeSet::new();
        s.insert(0..100);
        s.remove(10..20);
        s.remove(50..60);
        assert_eq!(ranges(&s), vec![0..10, 20..50, 60..100]);
        s.remove(5..65);
        assert_eq!(ranges(&s), vec![0..5, 65..100]);
        assert!(s.contains(4) && !s.contains(5) && s.contains(99) && !s.contains(100));
    }

    #[test]
    fn matches_a_naive_model_on_random_operations() {
        use rand_chacha::rand_core::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut set = RangeSet::new();
        let mut model = [false; 200];
        for _ in 0..5000 {
            let a = rng.next_u64() % 200;
            let b = (a + rng.next_u64() % 20).min(200);
            if rng.next_u32() % 3 == 0 {
                set.remove(a..b);
                model[a as usize..b as usize].fill(false);
            } else {
                set.insert(a..b);
                model[a as usize..b as usize].fill(true);
            }
            for (v, present) in model.iter().enumerate() {
                assert_eq!(set.contains(v as u64), *present);
            }
            let pairs: Vec<_> = set.iter().collect();
            for w in pairs.windows(2) {
                assert!(
                    w[0].end < w[1].start,
                    "ranges must stay disjoint and non-touching"
                );
            }
        }
    }
}
