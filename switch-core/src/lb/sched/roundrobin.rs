//! rr and wrr: `net/netfilter/ipvs/ip_vs_rr.c` and `ip_vs_wrr.c`.
//!
//! IPVS keeps its position as a pointer into the service's dest list (`svc->sched_data`
//! for rr, `mark->cl` for wrr), where the list head means "before the first dest". Here
//! the position is an index into `dests`, `None` standing for the head.

use std::net::IpAddr;

use super::{eligible, Dest};

/// rr's position: IPVS's `svc->sched_data`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RrPos {
    /// The last chosen dest; `None`: the list head (nothing chosen yet).
    last: Option<usize>,
    /// That dest's address and port, to find it again after a dest list change.
    last_id: Option<(IpAddr, u16)>,
    /// Set by [`RrPos::reset`]: find `last_id` again before the next choice.
    resync: bool,
}

impl RrPos {
    pub(super) fn reset(&mut self) {
        self.resync = true;
    }

    /// After a dest list change: stay on the same dest if it is still there; if it is
    /// gone, move to its predecessor, as `ip_vs_rr_del_dest` does (`p->next->prev`), so
    /// the scan resumes at its successor. The predecessor is taken to be the dest now at
    /// the old index minus one, which is exact when one dest was removed.
    fn resync(&mut self, dests: &[Dest]) {
        self.resync = false;
        let Some((addr, port)) = self.last_id else {
            self.last = None;
            return;
        };
        if let Some(j) = dests.iter().position(|d| d.addr == addr && d.port == port) {
            self.last = Some(j);
            return;
        }
        let old = self.last.unwrap_or(0);
        self.last = if old == 0 || dests.is_empty() {
            None
        } else {
            Some((old - 1).min(dests.len() - 1))
        };
        self.last_id = self.last.map(|i| (dests[i].addr, dests[i].port));
    }
}

/// Round robin, mirroring `ip_vs_rr_schedule`: starting after the last chosen dest (or
/// at the first one), the first dest that is not overloaded and has weight > 0, going
/// round the list once, the last chosen dest being checked last. With none, `None` and
/// the position stays.
pub(super) fn rr(pos: &mut RrPos, dests: &[Dest]) -> Option<usize> {
    if pos.resync {
        pos.resync(dests);
    }
    let n = dests.len();
    let start = match pos.last {
        Some(l) if l < n => l + 1,
        _ => 0,
    };
    for i in 0..n {
        let j = (start + i) % n;
        if eligible(&dests[j]) {
            pos.last = Some(j);
            pos.last_id = Some((dests[j].addr, dests[j].port));
            return Some(j);
        }
    }
    None
}

/// wrr's state: IPVS's `struct ip_vs_wrr_mark`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct WrrMark {
    /// `cl`: the current dest, `None` for the list head.
    cl: Option<usize>,
    /// `cw`: the current weight.
    cw: i64,
    /// `mw`: the maximum weight minus `di - 1`.
    mw: i64,
    /// `di`: the weight step, the gcd of the weights.
    di: i64,
    /// False until `ip_vs_wrr_init_svc`/`ip_vs_wrr_dest_changed` has run for the
    /// current dest list.
    synced: bool,
}

impl WrrMark {
    pub(super) fn reset(&mut self) {
        self.synced = false;
    }

    /// `ip_vs_wrr_dest_changed` (and `ip_vs_wrr_init_svc`, which is the same with
    /// `cw == 0`): back to the list head, new `mw`/`di`, `cw` clipped to `mw` or
    /// rounded down to a multiple of the new `di` (plus 1).
    fn dest_changed(&mut self, mw: i64, di: i64) {
        self.cl = None;
        self.di = di;
        self.mw = mw;
        if self.cw > self.mw || self.cw == 0 {
            self.cw = self.mw;
        } else if self.di > 1 {
            self.cw = (self.cw / self.di) * self.di + 1;
        }
        self.synced = true;
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `(mw, di)` as `ip_vs_wrr_gcd_weight` and `ip_vs_wrr_max_weight` compute them:
/// `di` = gcd of the weights > 0 (1 if none), `mw` = max weight - (di - 1). A dest that
/// is not usable counts as weight 0 (IPVS counts an overloaded dest's weight; a removed
/// or quiesced one it does not).
pub(super) fn wrr_params(dests: &[Dest]) -> (i64, i64) {
    let mut g = 0u64;
    let mut max = 0u64;
    for d in dests.iter().filter(|d| eligible(d)) {
        let w = u64::from(d.weight);
        max = max.max(w);
        g = match g {
            0 => w,
            1 => 1,
            _ => gcd(w, g),
        };
    }
    let di = if g == 0 { 1 } else { g as i64 };
    (max as i64 - (di - 1), di)
}

/// Weighted round robin, mirroring `ip_vs_wrr_schedule` line by line: passes over the
/// list with `cw` going from `mw` down by `di` to 1, picking each dest whose weight is
/// at least `cw`; the `stop`/`last_pass`/`restarted` logic makes a call give up after
/// every dest was checked with `cw` down to 1.
///
/// `mw` and `di` are recomputed on each call (O(n), as the scan itself) instead of
/// being cached at dest changes; when they differ from the mark's, or after
/// [`WrrMark::reset`], `ip_vs_wrr_dest_changed` runs first, as IPVS runs it on
/// `add_dest`/`del_dest`/`upd_dest`.
pub(super) fn wrr(mark: &mut WrrMark, dests: &[Dest]) -> Option<usize> {
    let (mw, di) = wrr_params(dests);
    if !mark.synced || mark.mw != mw || mark.di != di {
        mark.dest_changed(mw, di);
    }
    let n = dests.len();
    if matches!(mark.cl, Some(c) if c >= n) {
        mark.cl = None;
    }
    let mut dest = mark.cl;
    // No available dests?
    if mark.mw == 0 {
        return None;
    }
    let last = dest;
    let mut stop: Option<usize> = None;
    let mut last_pass = false;
    let mut restarted = false;
    // Stop only after all dests were checked for weight >= 1 (last pass).
    loop {
        // list_for_each_entry_continue: from the dest after `dest` to the list end.
        let from = dest.map_or(0, |d| d + 1);
        for (i, d) in dests.iter().enumerate().skip(from) {
            dest = Some(i);
            if d.usable && i64::from(d.weight) >= mark.cw {
                mark.cl = dest;
                return Some(i);
            }
            if stop == Some(i) {
                // err_over
                mark.cl = dest;
                return None;
            }
        }
        // The loop leaves `dest` on the list head.
        dest = None;
        mark.cw -= mark.di;
        if mark.cw <= 0 {
            mark.cw = mark.mw;
            // Stop if we tried last pass from first dest.
            if last_pass || last.is_none() {
                mark.cl = None;
                return None;
            }
            restarted = true;
        }
        last_pass = mark.cw <= mark.di;
        if last_pass && restarted && last.is_some() {
            // First traversal was for w >= 1 but only for dests after 'last', now do
            // the same for all dests up to 'last'.
            stop = last;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    fn run(kind: SchedKind, s: &mut SchedState, ds: &[Dest], n: usize) -> Vec<Option<usize>> {
        let t = SchedTables::build(kind, ds);
        let load = vec![DestLoad::default(); ds.len()];
        let c = client_to(v4(198, 51, 100, 1), 0);
        (0..n)
            .map(|i| schedule(kind, &t, s, ds, &load, &c, i as u64))
            .collect()
    }

    /// The reference rr: a cursor that advances to the next eligible dest.
    fn rr_model(ds: &[Dest], cursor: &mut usize) -> Option<usize> {
        let n = ds.len();
        for k in 0..n {
            let j = (*cursor + k) % n;
            if ds[j].usable && ds[j].weight > 0 {
                *cursor = j + 1;
                return Some(j);
            }
        }
        None
    }

    #[test]
    fn rr_cycles_over_usable_dests() {
        let mut ds = dests(&[1, 1, 1, 1, 1]);
        ds[1].usable = false;
        ds[3].weight = 0;
        let mut s = SchedState::new(SchedKind::Rr);
        let got = run(SchedKind::Rr, &mut s, &ds, 7);
        let o = |i| Some(i);
        assert_eq!(got, vec![o(0), o(2), o(4), o(0), o(2), o(4), o(0)]);
    }

    #[test]
    fn rr_matches_the_cursor_model_on_random_lists() {
        let mut rng = Rng(0x1234_5678);
        for _ in 0..200 {
            let n = 1 + rng.below(8) as usize;
            let mut ds = dests(&vec![1; n]);
            for d in &mut ds {
                d.weight = rng.below(3) as u32;
                d.usable = rng.below(4) != 0;
            }
            let mut s = SchedState::new(SchedKind::Rr);
            let mut cursor = 0;
            let want: Vec<_> = (0..20).map(|_| rr_model(&ds, &mut cursor)).collect();
            assert_eq!(run(SchedKind::Rr, &mut s, &ds, 20), want, "{ds:?}");
        }
    }

    #[test]
    fn rr_keeps_its_place_across_a_reset() {
        let ds = dests(&[1, 1, 1, 1]);
        let mut s = SchedState::new(SchedKind::Rr);
        assert_eq!(run(SchedKind::Rr, &mut s, &ds, 2), vec![Some(0), Some(1)]);
        // A dest is added in front: dest 1 (198.18.0.2) is now index 2; IPVS's pointer
        // stays on it, so the next is the one after it.
        let mut grown = vec![dest(9, 1)];
        grown.extend_from_slice(&ds);
        s.reset(SchedKind::Rr);
        assert_eq!(
            run(SchedKind::Rr, &mut s, &grown, 3),
            vec![Some(3), Some(4), Some(0)]
        );
        // The current dest (index 0, dest 9) is removed: ip_vs_rr_del_dest moves to its
        // predecessor (the head), so the scan resumes at its successor, now index 0.
        s.reset(SchedKind::Rr);
        assert_eq!(run(SchedKind::Rr, &mut s, &ds, 2), vec![Some(0), Some(1)]);
        // Dest 2 removed while the position is on dest 1: stays on dest 1, next is 3.
        let shrunk = vec![ds[0], ds[1], ds[3]];
        assert_eq!(run(SchedKind::Rr, &mut s, &ds, 1), vec![Some(2)]);
        s.reset(SchedKind::Rr);
        // Position on dest 2 (removed, was index 2): moves to index 1 (dest 1), so
        // the next is index 2 (dest 3).
        assert_eq!(
            run(SchedKind::Rr, &mut s, &shrunk, 2),
            vec![Some(2), Some(0)]
        );
    }

    /// The classic LVS pseudo-code of weighted round robin (the LVS scheduling page),
    /// written independently of the kernel's list walk: i = -1, cw = 0 to start.
    struct WrrModel {
        i: isize,
        cw: i64,
    }
    impl WrrModel {
        fn next(&mut self, ds: &[Dest]) -> Option<usize> {
            let w = |d: &Dest| if d.usable { i64::from(d.weight) } else { 0 };
            let max = ds.iter().map(w).max().unwrap_or(0);
            let g = ds.iter().map(w).filter(|&x| x > 0).fold(0, |a, b| {
                let (mut a, mut b) = (a, b);
                while b != 0 {
                    (a, b) = (b, a % b);
                }
                a
            });
            if max == 0 {
                return None;
            }
            let n = ds.len() as isize;
            loop {
                self.i = (self.i + 1) % n;
                if self.i == 0 {
                    self.cw -= g;
                    if self.cw <= 0 {
                        self.cw = max;
                    }
                }
                if w(&ds[self.i as usize]) >= self.cw {
                    return Some(self.i as usize);
                }
            }
        }
    }

    #[test]
    fn wrr_gives_the_kernel_sequence_for_4_3_2() {
        // mw = 4, di = 1. cw=4: a | cw=3: a b | cw=2: a b c | cw=1: a b c | again.
        let ds = dests(&[4, 3, 2]);
        let mut s = SchedState::new(SchedKind::Wrr);
        let got: Vec<usize> = run(SchedKind::Wrr, &mut s, &ds, 18)
            .into_iter()
            .map(Option::unwrap)
            .collect();
        let seq = [0, 0, 1, 0, 1, 2, 0, 1, 2];
        let want: Vec<usize> = seq.iter().chain(seq.iter()).copied().collect();
        assert_eq!(got, want);
    }

    #[test]
    fn wrr_with_a_common_divisor() {
        // 4, 2: di = 2, mw = 4 - 1 = 3. cw=3: a | cw=1: a b | cw=-1 -> 3: a | ...
        let ds = dests(&[4, 2]);
        let mut s = SchedState::new(SchedKind::Wrr);
        let got = run(SchedKind::Wrr, &mut s, &ds, 6);
        let o = |i| Some(i);
        assert_eq!(got, vec![o(0), o(0), o(1), o(0), o(0), o(1)]);
    }

    #[test]
    fn wrr_matches_the_classic_model_on_random_weights() {
        let mut rng = Rng(0xDEAD_BEEF);
        for _ in 0..300 {
            let n = 1 + rng.below(6) as usize;
            let mut ds = dests(&vec![1; n]);
            let mult = 1 + rng.below(3) as u32;
            for d in &mut ds {
                d.weight = rng.below(6) as u32 * mult;
                d.usable = rng.below(5) != 0;
            }
            let mut s = SchedState::new(SchedKind::Wrr);
            let mut m = WrrModel { i: -1, cw: 0 };
            let want: Vec<_> = (0..60).map(|_| m.next(&ds)).collect();
            assert_eq!(run(SchedKind::Wrr, &mut s, &ds, 60), want, "{ds:?}");
        }
    }

    #[test]
    fn wrr_skips_unusable_and_zero_weight() {
        let mut ds = dests(&[3, 0, 2, 5]);
        ds[3].usable = false;
        let mut s = SchedState::new(SchedKind::Wrr);
        // Effective 3, 0, 2, 0: mw = 3. cw=3: a | cw=2: a c | cw=1: a c.
        let got = run(SchedKind::Wrr, &mut s, &ds, 10);
        let o = |i| Some(i);
        assert_eq!(
            got,
            vec![o(0), o(0), o(2), o(0), o(2), o(0), o(0), o(2), o(0), o(2)]
        );
    }

    #[test]
    fn wrr_one_dest_and_none() {
        let ds = dests(&[7]);
        let mut s = SchedState::new(SchedKind::Wrr);
        assert_eq!(run(SchedKind::Wrr, &mut s, &ds, 3), vec![Some(0); 3]);
        let mut down = ds.clone();
        down[0].usable = false;
        s.reset(SchedKind::Wrr);
        assert_eq!(run(SchedKind::Wrr, &mut s, &down, 2), vec![None, None]);
        s.reset(SchedKind::Wrr);
        assert_eq!(run(SchedKind::Wrr, &mut s, &ds, 2), vec![Some(0); 2]);
    }

    #[test]
    fn wrr_reset_goes_to_the_head_and_keeps_cw() {
        // 4,3,2: a a b leaves cl = b, cw = 3.
        let ds = dests(&[4, 3, 2]);
        let mut s = SchedState::new(SchedKind::Wrr);
        let o = |i| Some(i);
        assert_eq!(run(SchedKind::Wrr, &mut s, &ds, 3), vec![o(0), o(0), o(1)]);
        // ip_vs_wrr_dest_changed: cl = head, mw = 4, di = 1, cw = 3 kept (3 <= 4, di
        // == 1). From the head with cw = 3: a, b; then cw = 2: a b c; cw = 1: a b c.
        s.reset(SchedKind::Wrr);
        assert_eq!(
            run(SchedKind::Wrr, &mut s, &ds, 8),
            vec![o(0), o(1), o(0), o(1), o(2), o(0), o(1), o(2)]
        );
        // Without the reset the sequence would have gone on from b with cw = 3: c is
        // below 3, so cw = 2 and a.
    }

    #[test]
    fn wrr_dest_change_rounds_cw_to_the_new_step() {
        // 6, 4: di = 2, mw = 5. cw=5: a | cw=3: a b -> cl = b, cw = 3.
        let ds = dests(&[6, 4]);
        let mut s = SchedState::new(SchedKind::Wrr);
        let o = |i| Some(i);
        assert_eq!(run(SchedKind::Wrr, &mut s, &ds, 3), vec![o(0), o(0), o(1)]);
        // Weights become 8, 4: di = 4, mw = 5; cw = 3 <= 5 and di > 1, so
        // cw = (3 / 4) * 4 + 1 = 1, cl = head: a b, then cw = 1 - 4 <= 0 -> 5: a,
        // then cw = 1: a b.
        let ds2 = dests(&[8, 4]);
        s.reset(SchedKind::Wrr);
        assert_eq!(
            run(SchedKind::Wrr, &mut s, &ds2, 5),
            vec![o(0), o(1), o(0), o(0), o(1)]
        );
        // cw above the new mw is clipped to it: 4,3,2 after one pick has cw = 4;
        // weights 2, 1 give mw = 2, so cw = 2: a, then cw = 1: a b.
        let mut s = SchedState::new(SchedKind::Wrr);
        assert_eq!(
            run(SchedKind::Wrr, &mut s, &dests(&[4, 3, 2]), 1),
            vec![o(0)]
        );
        s.reset(SchedKind::Wrr);
        assert_eq!(
            run(SchedKind::Wrr, &mut s, &dests(&[2, 1]), 3),
            vec![o(0), o(0), o(1)]
        );
    }

    #[test]
    fn wrr_weight_change_without_reset_acts_as_upd_dest() {
        let ds = dests(&[2, 1]);
        let mut s = SchedState::new(SchedKind::Wrr);
        let o = |i| Some(i);
        // mw 2: cw=2: a | cw=1: a b | ...
        assert_eq!(run(SchedKind::Wrr, &mut s, &ds, 3), vec![o(0), o(0), o(1)]);
        // Now 1, 3 (mw 3, di 1): dest_changed, cw = 1 kept (1 <= 3), cl = head:
        // a b, then cw = 0 -> 3: b, cw = 2: b, cw = 1: a b.
        let ds2 = dests(&[1, 3]);
        assert_eq!(
            run(SchedKind::Wrr, &mut s, &ds2, 6),
            vec![o(0), o(1), o(1), o(1), o(0), o(1)]
        );
    }
}
