//! Loss, reordering and duplicate detection over one global sequence number, with a
//! bitmap window (as RFC 4737's reordering metrics define them, simplified).
//!
//! The sender numbers every frame of a trial from `first` up. The tracker keeps the
//! highest number seen and a bitmap of which of the last [`WINDOW`] numbers arrived:
//! - a number above the highest moves the window (numbers falling out of it unseen are
//!   lost, unless they come later: then they are `late`);
//! - a number below the highest, not yet seen: `reordered`;
//! - a number already seen: `duplicate`.
//!
//! Loss is counted at the end as sent minus distinct received, which needs no window.

/// Numbers remembered behind the highest one.
pub const WINDOW: u64 = 1 << 16;

/// Counters of one trial.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqCounts {
    /// Distinct numbers received (in the window or new).
    pub unique: u64,
    /// Arrived after a higher number.
    pub reordered: u64,
    /// Seen before.
    pub duplicates: u64,
    /// Older than the window: cannot tell reordered from duplicate; counted as unique.
    pub late: u64,
    /// Below the trial's first number (left over from an earlier trial): ignored.
    pub stale: u64,
}

/// The tracker.
#[derive(Debug)]
pub struct SeqTracker {
    first: u64,
    /// Highest number seen + 1 (0: none yet), relative to `first`.
    next: u64,
    bits: Vec<u64>,
    pub counts: SeqCounts,
}

impl SeqTracker {
    /// A tracker for numbers from `first` on.
    pub fn new(first: u64) -> SeqTracker {
        SeqTracker {
            first,
            next: 0,
            bits: vec![0; (WINDOW / 64) as usize],
            counts: SeqCounts::default(),
        }
    }

    #[inline]
    fn bit(&mut self, n: u64) -> (usize, u64) {
        let i = (n % WINDOW) as usize;
        (i / 64, 1u64 << (i % 64))
    }

    /// Records number `seq`.
    #[inline]
    pub fn observe(&mut self, seq: u64) {
        if seq < self.first {
            self.counts.stale += 1;
            return;
        }
        let n = seq - self.first;
        if n >= self.next {
            // Clear the slots the window moves over (all of them on a big jump).
            let gap = n + 1 - self.next;
            if gap >= WINDOW {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                for k in self.next..=n {
                    let (w, m) = self.bit(k);
                    self.bits[w] &= !m;
                }
            }
            let (w, m) = self.bit(n);
            self.bits[w] |= m;
            self.next = n + 1;
            self.counts.unique += 1;
        } else if self.next - n > WINDOW {
            self.counts.late += 1;
            self.counts.unique += 1;
        } else {
            let (w, m) = self.bit(n);
            if self.bits[w] & m != 0 {
                self.counts.duplicates += 1;
            } else {
                self.bits[w] |= m;
                self.counts.reordered += 1;
                self.counts.unique += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first: u64, seqs: &[u64]) -> SeqCounts {
        let mut t = SeqTracker::new(first);
        seqs.iter().for_each(|&s| t.observe(s));
        t.counts
    }

    #[test]
    fn in_order_stream_has_no_anomalies() {
        let s: Vec<u64> = (100..100_000).collect();
        let c = run(100, &s);
        assert_eq!(
            c,
            SeqCounts {
                unique: 99_900,
                ..Default::default()
            }
        );
    }

    #[test]
    fn swapped_packets_count_as_reordered_and_repeats_as_duplicates() {
        let c = run(0, &[0, 2, 1, 3, 3, 1, 5]);
        assert_eq!(c.unique, 5);
        assert_eq!(c.reordered, 1);
        assert_eq!(c.duplicates, 2);
    }

    #[test]
    fn window_slots_are_reused_without_false_duplicates() {
        // Every number once, with a hole filled late but within the window, across many
        // window wraps.
        let mut s: Vec<u64> = (0..5 * WINDOW).filter(|&n| n != 3 * WINDOW + 7).collect();
        s.push(3 * WINDOW + 7);
        let c = run(0, &s);
        assert_eq!(c.duplicates, 0);
        assert_eq!(c.unique, 5 * WINDOW);
        assert_eq!(c.late, 1); // more than WINDOW behind by then
        let c = run(0, &[0, 10 * WINDOW, 1, 10 * WINDOW - 5, 10 * WINDOW - 5]);
        assert_eq!((c.unique, c.late, c.reordered, c.duplicates), (4, 1, 1, 1));
    }

    #[test]
    fn numbers_from_an_earlier_trial_are_ignored() {
        let c = run(50, &[49, 50, 51]);
        assert_eq!((c.stale, c.unique), (1, 2));
    }
}
