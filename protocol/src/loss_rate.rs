//! The path's recent packet loss rate, from the packets whose fate is known (acknowledged or
//! declared lost), over roughly the last [`WINDOW`] of them.
//!
//! Loss protection that costs bandwidth (datagram duplication today) should run only while the
//! path actually loses packets: this is the measurement it switches on. The counts halve each
//! time they pass the window, so old history fades geometrically and a path that stops losing
//! is seen as clean again within a few windows.
//!
//! [`LossRuns`] measures how losses cluster (the mean run of consecutive lost packet numbers):
//! forward error correction needs more repairs where a burst takes a packet's repairs with it.

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

/// Losses about which the mean run length is measured: the counts halve past this.
pub const RUN_WINDOW: u32 = 64;

/// How recent losses cluster: the mean length of runs of consecutive lost packet numbers, over
/// roughly the last [`RUN_WINDOW`] losses. Independent losses at rate p make runs of mean
/// 1 / (1 - p) (1.05 at 5%); a path that drops packets in bursts, longer ones.
#[derive(Debug, Clone, Default)]
pub struct LossRuns {
    lost: u32,
    runs: u32,
    /// The highest packet number counted lost.
    highest: Option<u64>,
}

impl LossRuns {
    /// Packet `pn` was lost. Losses are counted roughly in packet-number order (gaps expire
    /// oldest first); one counted out of order starts a run of its own, so a late count can
    /// only make the path look less bursty than it is, never more.
    pub fn on_lost(&mut self, pn: u64) {
        let continues = self.highest.is_some_and(|h| h.checked_add(1) == Some(pn));
        self.lost = self.lost.saturating_add(1);
        if !continues {
            self.runs = self.runs.saturating_add(1);
        }
        self.highest = Some(self.highest.map_or(pn, |h| h.max(pn)));
        while self.lost > RUN_WINDOW {
            self.lost /= 2;
            self.runs = (self.runs / 2).max(1);
        }
    }

    /// Mean run length, in tenths, 10 (no loss yet, or every loss alone) to 10,000.
    pub fn mean_tenths(&self) -> u16 {
        if self.runs == 0 {
            return 10;
        }
        (u64::from(self.lost) * 10 / u64::from(self.runs)).clamp(10, 10_000) as u16
    }
}

/// Whether a path losing `per_mille` counts as lossy, given whether it did: from 1% up, and
/// clean again below 0.5% (the gap keeps the verdict from flapping).
pub(crate) fn verdict(per_mille: u32, was_lossy: bool) -> bool {
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

    #[test]
    fn runs_measure_how_losses_cluster() {
        let mut runs = LossRuns::default();
        assert_eq!(runs.mean_tenths(), 10);
        // Lone losses: runs of one.
        for pn in (0..400).step_by(20) {
            runs.on_lost(pn);
        }
        assert_eq!(runs.mean_tenths(), 10);
        // Then bursts of three, long enough to outweigh the lone ones.
        for start in (1_000..3_000).step_by(20) {
            for pn in start..start + 3 {
                runs.on_lost(pn);
            }
        }
        assert!(
            (27..=30).contains(&runs.mean_tenths()),
            "{}",
            runs.mean_tenths()
        );
        // A loss counted out of order starts a run of its own.
        let mut runs = LossRuns::default();
        for pn in [10, 11, 5, 12] {
            runs.on_lost(pn);
        }
        assert_eq!(runs.mean_tenths(), 20);
    }
}
