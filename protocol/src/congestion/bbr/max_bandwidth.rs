//! BBR's bottleneck-bandwidth estimate, `BtlBw`: the largest delivery rate seen over the last
//! [`BW_FILTER_ROUNDS`] round trips (the draft's windowed-maximum filter). A filter of its own
//! because it is the one part of the model with its own rule of ageing: by rounds, not time,
//! and only when fed.

/// Round trips the windowed-maximum bandwidth filter spans.
const BW_FILTER_ROUNDS: usize = 10;

/// Windowed maximum of bandwidth samples over the last [`BW_FILTER_ROUNDS`] round trips: one slot
/// per round holds that round's largest sample.
///
/// The filter only ages when fed: rounds without (non-app-limited) samples leave it untouched, so
/// an idle or application-limited connection keeps its last estimate.
#[derive(Debug, Clone)]
pub(super) struct MaxBandwidthFilter {
    per_round_bytes_per_s: [u64; BW_FILTER_ROUNDS],
    latest_round: u64,
}

impl MaxBandwidthFilter {
    pub(super) fn new() -> Self {
        Self {
            per_round_bytes_per_s: [0; BW_FILTER_ROUNDS],
            latest_round: 0,
        }
    }

    pub(super) fn update(&mut self, round: u64, rate_bytes_per_s: u64) {
        if round > self.latest_round {
            let gap = round - self.latest_round;
            if gap >= BW_FILTER_ROUNDS as u64 {
                self.per_round_bytes_per_s = [0; BW_FILTER_ROUNDS];
            } else {
                for r in self.latest_round + 1..=round {
                    self.per_round_bytes_per_s[slot(r)] = 0;
                }
            }
            self.latest_round = round;
        }
        let best = &mut self.per_round_bytes_per_s[slot(self.latest_round)];
        *best = (*best).max(rate_bytes_per_s);
    }

    pub(super) fn get(&self) -> u64 {
        self.per_round_bytes_per_s
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

/// The filter slot of round `round`.
fn slot(round: u64) -> usize {
    (round % BW_FILTER_ROUNDS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_filter_forgets_after_ten_rounds() {
        let mut f = MaxBandwidthFilter::new();
        f.update(1, 100);
        f.update(5, 50);
        assert_eq!(f.get(), 100);
        f.update(10, 40);
        assert_eq!(
            f.get(),
            100,
            "round 1 is still within 10 rounds of round 10"
        );
        f.update(11, 30);
        assert_eq!(f.get(), 50);
        f.update(100, 10);
        assert_eq!(f.get(), 10);
    }
}
