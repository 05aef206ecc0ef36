//! The path's recent packet loss rate, from the packets whose fate is known (acknowledged or
//! declared lost), over roughly the last [`WINDOW`] of them.
//!
//! Loss protection that costs bandwidth (datagram duplication today) should run only while the
//! path actually loses packets: this is the measurement it switches on. The counts halve each
//! time they pass the window, so old history fades geometrically and a path that stops losing
//! is seen as clean again within a few windows.

/// Packets over which the rate is measured, about.
pub const WINDOW: u32 = 512;
/// The path counts as lossy from this rate (per mille) up...
const LOSSY_FROM_PER_MILLE: u32 = 10;
/// ...and clean again below this one: the gap keeps the verdict from flapping.
const CLEAN_BELOW_PER_MILLE: u32 = 5;
/// A single loss never makes a path lossy, however few packets were sent.
const MIN_LOSSES: u32 = 2;

/// Recent losses among resolved packets, with a lossy/clean verdict that has hysteresis.
#[derive(Debug, Clone, Default)]
pub struct LossRate {
    resolved: u32,
    lost: u32,
    lossy: bool,
}

impl LossRate {
    /// `acked` packets were acknowledged and `lost` declared lost.
    pub fn on_resolved(&mut self, acked: u32, lost: u32) {
        self.resolved = self.resolved.saturating_add(acked).saturating_add(lost);
        self.lost = self.lost.saturating_add(lost);
        while self.resolved > WINDOW {
            self.resolved /= 2;
            self.lost /= 2;
        }
        self.lossy =
            (self.lossy || self.lost >= MIN_LOSSES) && verdict(self.per_mille(), self.lossy);
    }

    /// Recent loss rate, per mille.
    pub fn per_mille(&self) -> u32 {
        if self.resolved == 0 {
            0
        } else {
            (u64::from(self.lost) * 1000 / u64::from(self.resolved)) as u32
        }
    }

    /// Whether the path has been losing packets lately (at least 1%, until below 0.5%).
    pub fn is_lossy(&self) -> bool {
        self.lossy
    }
}

/// Whether a path losing `per_mille` counts as lossy, given whether it did: from 1% up, and
/// clean again below 0.5% (the gap keeps the verdict from flapping).
fn verdict(per_mille: u32, was_lossy: bool) -> bool {
    if was_lossy {
        per_mille >= CLEAN_BELOW_PER_MILLE
    } else {
        per_mille >= LOSSY_FROM_PER_MILLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_path_and_a_single_loss_are_not_lossy() {
        let mut rate = LossRate::default();
        rate.on_resolved(10_000, 0);
        assert!(!rate.is_lossy());
        rate.on_resolved(10, 1);
        assert!(!rate.is_lossy());
    }

    #[test]
    fn five_percent_is_lossy_and_the_verdict_fades_once_losses_stop() {
        let mut rate = LossRate::default();
        for _ in 0..100 {
            rate.on_resolved(19, 1);
        }
        assert!(rate.is_lossy());
        assert!(
            (40..=60).contains(&rate.per_mille()),
            "{}",
            rate.per_mille()
        );
        let mut packets = 0;
        while rate.is_lossy() {
            rate.on_resolved(1, 0);
            packets += 1;
            assert!(packets < 10 * WINDOW, "never clean again");
        }
        assert!(packets > WINDOW / 2, "forgot at once: {packets}");
    }

    #[test]
    fn between_the_thresholds_the_verdict_holds() {
        let mut rate = LossRate::default();
        for _ in 0..50 {
            rate.on_resolved(49, 1); // 2%
        }
        assert!(rate.is_lossy());
        for _ in 0..200 {
            rate.on_resolved(139, 1); // 0.7%: stays lossy
        }
        assert!(rate.is_lossy());
    }
}
