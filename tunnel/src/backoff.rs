//! The doubling backoff both binaries wait by after a failure: the agent between attempts to
//! reach a gateway, the gateway while a backend is DOWN. Each failure in a row waits twice as
//! long as the one before, up to a cap; a success starts the sequence again. Kept as a value
//! with no clock in it, so that a sequence can be checked in a unit test.

use std::time::Duration;

/// Pauses that double with each failure in a row.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
}

impl Backoff {
    /// A sequence whose first pause is `first`.
    pub const fn new(first: Duration) -> Self {
        Self { first, next: first }
    }

    /// The pause after one more failure. The one after it is twice as long, at most `cap`:
    /// the cap a failure gives bounds the pause of the failure that follows it (the first pause
    /// is always `first`).
    pub fn next_pause(&mut self, cap: Duration) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(cap);
        pause
    }

    /// A success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_double_up_to_the_cap_and_a_success_starts_again() {
        let mut b = Backoff::new(100 * MS);
        let pauses: Vec<_> = (0..6).map(|_| b.next_pause(1000 * MS)).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000].map(|m| m * MS));
        b.reset();
        assert_eq!(b.next_pause(1000 * MS), 100 * MS);
    }

    #[test]
    fn a_lower_cap_bounds_the_pause_after_it() {
        let mut b = Backoff::new(100 * MS);
        for _ in 0..4 {
            b.next_pause(1000 * MS);
        }
        assert_eq!(
            b.next_pause(250 * MS),
            1000 * MS,
            "set by the failure before"
        );
        assert_eq!(b.next_pause(250 * MS), 250 * MS);
        assert_eq!(b.next_pause(1000 * MS), 250 * MS);
        assert_eq!(b.next_pause(1000 * MS), 500 * MS);
    }

    #[test]
    fn a_long_run_of_failures_stays_at_the_cap() {
        let mut b = Backoff::new(250 * MS);
        let last = (0..100)
            .map(|_| b.next_pause(Duration::from_secs(30)))
            .last();
        assert_eq!(last, Some(Duration::from_secs(30)));
    }
}
