//! lc, wlc, sed and nq: `net/netfilter/ipvs/ip_vs_lc.c`, `ip_vs_wlc.c`, `ip_vs_sed.c`,
//! `ip_vs_nq.c`. Stateless: each call scans the list once.
//!
//! IPVS computes in `int`/`unsigned int` and 64-bit products; here the overheads are
//! `u64` and the cross products `u128`, so nothing wraps (IPVS's would past ~8 million
//! active connections on one dest); the choices are otherwise identical.

use super::{eligible, load_at, Dest, DestLoad};

/// `ip_vs_dest_conn_overhead` (include/net/ip_vs.h): `(activeconns << 8) + inactconns`,
/// an active connection costing 256 times an inactive one.
pub fn dest_conn_overhead(l: &DestLoad) -> u64 {
    (u64::from(l.active) << 8) + u64::from(l.inactive)
}

/// `ip_vs_sed_dest_overhead` / `ip_vs_nq_dest_overhead`: `activeconns + 1`.
fn sed_overhead(l: &DestLoad) -> u64 {
    u64::from(l.active) + 1
}

/// Least connection, mirroring `ip_vs_lc_schedule`: the eligible dest with the least
/// [`dest_conn_overhead`], `doh < loh` so the first in list order wins a tie.
pub(super) fn lc(dests: &[Dest], load: &[DestLoad]) -> Option<usize> {
    let mut least: Option<(usize, u64)> = None;
    for (i, d) in dests.iter().enumerate() {
        if !eligible(d) {
            continue;
        }
        let doh = dest_conn_overhead(&load_at(load, i));
        match least {
            Some((_, loh)) if doh >= loh => {}
            _ => least = Some((i, doh)),
        }
    }
    least.map(|(i, _)| i)
}

/// The scan `ip_vs_wlc_schedule`, `ip_vs_sed_schedule`, `__ip_vs_lblc_schedule` and
/// `__ip_vs_lblcr_schedule` share: the first eligible dest, then any later one with
/// `loh * dw > doh * lw` (so the first wins ties; a weight-0 dest never passes it).
fn weighted_least(
    dests: &[Dest],
    load: &[DestLoad],
    overhead: impl Fn(&DestLoad) -> u64,
) -> Option<usize> {
    let mut least: Option<(usize, u64, u32)> = None;
    for (i, d) in dests.iter().enumerate() {
        if !eligible(d) {
            continue;
        }
        let doh = overhead(&load_at(load, i));
        match least {
            None => least = Some((i, doh, d.weight)),
            Some((_, loh, lw)) => {
                if u128::from(loh) * u128::from(d.weight) > u128::from(doh) * u128::from(lw) {
                    least = Some((i, doh, d.weight));
                }
            }
        }
    }
    least.map(|(i, _, _)| i)
}

/// Weighted least connection, mirroring `ip_vs_wlc_schedule`: least
/// `overhead / weight`, compared as `loh * dw > doh * lw`.
pub(super) fn wlc(dests: &[Dest], load: &[DestLoad]) -> Option<usize> {
    weighted_least(dests, load, dest_conn_overhead)
}

/// Shortest expected delay, mirroring `ip_vs_sed_schedule`: least
/// `(activeconns + 1) / weight`.
pub(super) fn sed(dests: &[Dest], load: &[DestLoad]) -> Option<usize> {
    weighted_least(dests, load, sed_overhead)
}

/// Never queue, mirroring `ip_vs_nq_schedule`: the first eligible dest with no active
/// connection, else as [`sed`].
pub(super) fn nq(dests: &[Dest], load: &[DestLoad]) -> Option<usize> {
    let mut least: Option<(usize, u64, u32)> = None;
    for (i, d) in dests.iter().enumerate() {
        if !eligible(d) {
            continue;
        }
        let l = load_at(load, i);
        // Return the server directly if it is idle.
        if l.active == 0 {
            return Some(i);
        }
        let doh = sed_overhead(&l);
        let better = match least {
            None => true,
            Some((_, loh, lw)) => {
                u128::from(loh) * u128::from(d.weight) > u128::from(doh) * u128::from(lw)
            }
        };
        if better {
            least = Some((i, doh, d.weight));
        }
    }
    least.map(|(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    fn pick(kind: SchedKind, ds: &[Dest], load: &[DestLoad]) -> Option<usize> {
        let t = SchedTables::build(kind, ds);
        let mut s = SchedState::new(kind);
        schedule(kind, &t, &mut s, ds, load, &client_to(v4(1, 2, 3, 4), 0), 0)
    }

    /// Reference: the eligible dest minimising `cost(load) / weight` as an exact
    /// fraction (f64 is exact at these sizes), lowest index on ties.
    fn model(ds: &[Dest], load: &[DestLoad], cost: impl Fn(&DestLoad) -> f64) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, d) in ds.iter().enumerate() {
            if !d.usable || d.weight == 0 {
                continue;
            }
            let v = cost(&load[i]) / f64::from(d.weight);
            if best.is_none_or(|(_, b)| v < b) {
                best = Some((i, v));
            }
        }
        best.map(|(i, _)| i)
    }

    fn random_case(rng: &mut Rng) -> (Vec<Dest>, Vec<DestLoad>) {
        let n = 1 + rng.below(7) as usize;
        let mut ds = dests(&vec![1; n]);
        let mut load = Vec::new();
        for d in &mut ds {
            d.weight = rng.below(5) as u32;
            d.usable = rng.below(6) != 0;
            load.push(ld(rng.below(6) as u32, rng.below(600) as u32));
        }
        (ds, load)
    }

    #[test]
    fn lc_least_overhead_first_on_ties() {
        let ds = dests(&[1, 1, 1, 1]);
        // Overheads 256+50, 300, 256+50, 300: the two 300s tie, the first (index 1) wins.
        let load = [ld(1, 50), ld(0, 300), ld(1, 50), ld(0, 300)];
        assert_eq!(pick(SchedKind::Lc, &ds, &load), Some(1));
        // One active outweighs 255 inactive.
        let load = [ld(1, 0), ld(0, 255), ld(0, 256), ld(0, 257)];
        assert_eq!(pick(SchedKind::Lc, &ds, &load), Some(1));
        // lc ignores the weight's size but not weight 0.
        let mut ds2 = dests(&[100, 1, 0]);
        let load = [ld(2, 0), ld(1, 0), ld(0, 0)];
        assert_eq!(pick(SchedKind::Lc, &ds2, &load), Some(1));
        ds2[1].usable = false;
        assert_eq!(pick(SchedKind::Lc, &ds2, &load), Some(0));
    }

    #[test]
    fn lc_matches_the_model() {
        let mut rng = Rng(7);
        for _ in 0..500 {
            let (ds, load) = random_case(&mut rng);
            // lc ignores the weights' sizes: the model with every weight 0 or 1.
            let flat: Vec<Dest> = ds
                .iter()
                .map(|d| Dest {
                    weight: u32::from(d.weight > 0),
                    ..*d
                })
                .collect();
            let m_flat = model(&flat, &load, |l| dest_conn_overhead(l) as f64);
            assert_eq!(pick(SchedKind::Lc, &ds, &load), m_flat, "{ds:?} {load:?}");
        }
    }

    #[test]
    fn wlc_weights_the_overhead() {
        let ds = dests(&[1, 3]);
        // 256/1 vs 512/3: the second is less loaded per weight.
        let load = [ld(1, 0), ld(2, 0)];
        assert_eq!(pick(SchedKind::Wlc, &ds, &load), Some(1));
        // 256/1 vs 768/3: equal, the first wins.
        let load = [ld(1, 0), ld(3, 0)];
        assert_eq!(pick(SchedKind::Wlc, &ds, &load), Some(0));
    }

    #[test]
    fn wlc_sed_nq_match_the_model() {
        let mut rng = Rng(99);
        for _ in 0..1000 {
            let (ds, load) = random_case(&mut rng);
            let wlc = model(&ds, &load, |l| dest_conn_overhead(l) as f64);
            assert_eq!(pick(SchedKind::Wlc, &ds, &load), wlc, "wlc {ds:?} {load:?}");
            let sed = model(&ds, &load, |l| f64::from(l.active) + 1.0);
            assert_eq!(pick(SchedKind::Sed, &ds, &load), sed, "sed {ds:?} {load:?}");
            let idle =
                (0..ds.len()).find(|&i| ds[i].usable && ds[i].weight > 0 && load[i].active == 0);
            let nq = idle.or(sed);
            assert_eq!(pick(SchedKind::Nq, &ds, &load), nq, "nq {ds:?} {load:?}");
        }
    }

    #[test]
    fn sed_counts_the_new_connection() {
        // wlc would see 0/1 == 0/10 and take the first; sed compares 1/1 with 1/10.
        let ds = dests(&[1, 10]);
        let load = [ld(0, 0), ld(0, 0)];
        assert_eq!(pick(SchedKind::Wlc, &ds, &load), Some(0));
        assert_eq!(pick(SchedKind::Sed, &ds, &load), Some(1));
        // sed ignores inactive connections: (0 + 1) / 1 vs (8 + 1) / 10.
        let load = [ld(0, 1000), ld(8, 0)];
        assert_eq!(pick(SchedKind::Sed, &ds, &load), Some(1));
    }

    #[test]
    fn nq_takes_an_idle_dest_first() {
        let ds = dests(&[1, 10, 1]);
        // sed picks dest 1: (3+1)/10 beats (1+1)/1 and (0+1)/1. nq takes dest 2, the
        // first with no active connection (its inactive ones do not count).
        let load = [ld(1, 0), ld(3, 0), ld(0, 50)];
        assert_eq!(pick(SchedKind::Sed, &ds, &load), Some(1));
        assert_eq!(pick(SchedKind::Nq, &ds, &load), Some(2));
        // An idle but unusable dest does not count.
        let mut ds2 = ds.clone();
        ds2[2].usable = false;
        assert_eq!(pick(SchedKind::Nq, &ds2, &load), Some(1));
    }

    #[test]
    fn huge_counts_do_not_wrap() {
        let ds = dests(&[u32::MAX, 1]);
        let load = [ld(u32::MAX, u32::MAX), ld(u32::MAX - 1, 0)];
        assert_eq!(pick(SchedKind::Wlc, &ds, &load), Some(0));
        assert_eq!(pick(SchedKind::Sed, &ds, &load), Some(0));
        assert_eq!(pick(SchedKind::Lc, &ds, &load), Some(1));
    }
}
