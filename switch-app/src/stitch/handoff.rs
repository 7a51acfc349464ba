//! What happened to hand-offs: how many were prepared, frozen, committed, refused at
//! commit, aborted; why stitches went away; and how long a connection stayed frozen
//! (freeze to commit: the time its data towards the shell was held), as a histogram.
//!
//! Kept by the stitcher (the one writer), shown by `stats.get` (`stitch.handoffs`) and
//! exported by `/metrics` (`stitchd_handoffs_total`, `stitchd_stitches_removed_total`,
//! `stitchd_handoff_frozen_seconds`). The JSON shape is [`HandoffsView`], the one type
//! both sides use.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds (seconds) of the frozen-time histogram's buckets; the last bucket,
/// `+Inf`, is implied.
pub const FROZEN_BOUNDS: [f64; 8] = [0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 2.0];

/// A hand-off outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Prepared,
    Frozen,
    Committed,
    /// A commit the switch refused (sequence state, no packet seen yet, ...).
    CommitRefused,
    Aborted,
}

/// The counters and the histogram (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffsView {
    pub prepared: u64,
    pub frozen: u64,
    pub committed: u64,
    pub commit_refused: u64,
    pub aborted: u64,
    /// Stitches removed, by reason (`closed`, `idle`, `rst`, `deleted`, `new_connection`).
    pub removed: BTreeMap<String, u64>,
    /// Per bucket of [`FROZEN_BOUNDS`] (plus `+Inf` last): commits whose freeze lasted at
    /// most that long (not cumulative).
    pub frozen_buckets: Vec<u64>,
    /// Sum of the freeze times, seconds.
    pub frozen_sum_secs: f64,
}

impl HandoffsView {
    /// Counts one outcome.
    pub fn count(&mut self, o: Outcome) {
        let c = match o {
            Outcome::Prepared => &mut self.prepared,
            Outcome::Frozen => &mut self.frozen,
            Outcome::Committed => &mut self.committed,
            Outcome::CommitRefused => &mut self.commit_refused,
            Outcome::Aborted => &mut self.aborted,
        };
        *c += 1;
    }

    /// Counts a stitch removed for `reason`.
    pub fn removed(&mut self, reason: &str) {
        *self.removed.entry(reason.to_string()).or_default() += 1;
    }

    /// Records how long a committed stitch was frozen.
    pub fn frozen_for(&mut self, d: Duration) {
        if self.frozen_buckets.len() != FROZEN_BOUNDS.len() + 1 {
            self.frozen_buckets = vec![0; FROZEN_BOUNDS.len() + 1];
        }
        let secs = d.as_secs_f64();
        let i = FROZEN_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(FROZEN_BOUNDS.len());
        self.frozen_buckets[i] += 1;
        self.frozen_sum_secs += secs;
    }

    /// Commits recorded in the histogram.
    pub fn frozen_count(&self) -> u64 {
        self.frozen_buckets.iter().sum()
    }

    /// (upper bound, count) pairs for an OpenMetrics histogram, `+Inf` last (as
    /// `f64::MAX`, which is how `prometheus-client` marks the `+Inf` bucket).
    pub fn frozen_histogram(&self) -> Vec<(f64, u64)> {
        let mut b: Vec<(f64, u64)> = FROZEN_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(
                self.frozen_buckets
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(0)),
            )
            .collect();
        b.truncate(FROZEN_BOUNDS.len() + 1);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freeze_times_land_in_their_bucket_and_the_sum() {
        let mut h = HandoffsView::default();
        h.frozen_for(Duration::from_micros(800));
        h.frozen_for(Duration::from_millis(3));
        h.frozen_for(Duration::from_secs(9));
        assert_eq!(h.frozen_buckets, vec![1, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(h.frozen_count(), 3);
        assert!((h.frozen_sum_secs - 9.0038).abs() < 1e-9);
        let hist = h.frozen_histogram();
        assert_eq!(hist.len(), 9);
        assert_eq!(hist[0], (0.001, 1));
        assert_eq!(hist[8].1, 1);
        assert_eq!(hist[8].0, f64::MAX);
    }

    #[test]
    fn an_empty_histogram_still_has_every_bucket() {
        let h = HandoffsView::default();
        assert_eq!(h.frozen_histogram().len(), FROZEN_BOUNDS.len() + 1);
        assert_eq!(h.frozen_count(), 0);
    }

    #[test]
    fn outcomes_and_removals_count_and_round_trip_as_json() {
        let mut h = HandoffsView::default();
        h.count(Outcome::Prepared);
        h.count(Outcome::Committed);
        h.count(Outcome::CommitRefused);
        h.removed("rst");
        h.removed("rst");
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["removed"]["rst"], 2);
        let back: HandoffsView = serde_json::from_value(v).unwrap();
        assert_eq!(back, h);
    }
}
