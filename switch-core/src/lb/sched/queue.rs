//! queue: seed 003's rate-of-processing scheduler (after VMware's patent on picking the
//! vNIC / software port with the least queue): the dest where a new connection is
//! expected to wait least.
//!
//! The expected wait of dest `d`, of backend `b`, is
//!
//! ```text
//! wait(d) = (B(b) + active(d) + 1) * S(d) / weight(d)
//! B(b)    = sum of inflight(d') over every dest d' of backend b (usable or not)
//! S(d)    = resp_ewma_us(d) if known (> 0), else the smallest known resp_ewma_us
//!           among the usable dests with weight > 0, else 1
//! ```
//!
//! - `B(b)`: requests the backend has received and not yet answered, on any of its
//!   ports. The ports of one backend share its CPU, so a request queued behind another
//!   port's requests waits for them too. It includes `d`'s own in-flight requests.
//! - `active(d)`: the port's open connections, each a source of further requests; in DR
//!   mode, where `inflight` is never seen (always 0), it is the only queue signal left.
//!   A connection with a request in flight thus counts twice (once as queued work, once
//!   as an open connection), an idle keep-alive connection once.
//! - `+ 1`: the new connection itself, as in sed (so an empty dest's wait is its service
//!   time, and faster dests win among empty ones).
//! - `S(d)`: the measured time per request (first request byte to first response byte,
//!   an EWMA kept by the worker with [`ewma_update`]), i.e. the inverse of the rate of
//!   processing. It includes the queueing the backend had when measured, so a loaded
//!   backend is penalised twice (longer queue and longer `S`), which moves traffic away
//!   from it faster; as its queue drains its `S` comes back down and its share recovers.
//!   An unknown `S` (a new or idle dest) borrows the fastest known one, so new dests get
//!   traffic instead of being starved or flooded.
//! - `/ weight(d)`: the operator's capacity (parallelism) hint, as in wlc/sed.
//!
//! Waits are compared by cross multiplication in `u128` (`num(a) * w(b) < num(b) *
//! w(a)`), exactly, without floats. Ties go to the first dest in list order starting
//! after the last chosen one, so equal dests take turns (round robin) instead of the
//! first one taking every tie.

use super::{eligible, load_at, Dest, DestLoad, SchedKind, SchedTables};

/// Updates a response-time EWMA with a new sample, as TCP's SRTT: `new = old + (sample -
/// old) / 8` (alpha 1/8), rounded to nearest; `old == 0` (unknown) takes the sample.
/// The result is never 0 (0 means unknown), so a sample of 0 µs counts as 1.
pub fn ewma_update(old_us: u32, sample_us: u32) -> u32 {
    let sample = u64::from(sample_us.max(1));
    if old_us == 0 {
        return sample as u32;
    }
    // (7 * old + sample + 4) / 8 <= max(old, sample) + 1/2: fits in u32.
    let v = (7 * u64::from(old_us) + sample + 4) / 8;
    v.max(1) as u32
}

/// The numerator of a dest's expected wait: `(backend_inflight + active + 1) *
/// service_us`; the wait is this divided by the dest's weight.
pub fn queue_wait(backend_inflight: u64, active: u32, service_us: u32) -> u128 {
    u128::from(backend_inflight + u64::from(active) + 1) * u128::from(service_us)
}

/// The dest indices ordered by backend (stable) and the `[lo, hi)` ranges of that order
/// holding one backend each, for [`SchedTables`].
pub(super) fn group_by_backend(dests: &[Dest]) -> (Vec<u32>, Vec<(u32, u32)>) {
    let mut order: Vec<u32> = (0..dests.len() as u32).collect();
    order.sort_by_key(|&i| dests[i as usize].backend);
    let mut groups = Vec::new();
    let mut lo = 0;
    while lo < order.len() {
        let b = dests[order[lo] as usize].backend;
        let mut hi = lo + 1;
        while hi < order.len() && dests[order[hi] as usize].backend == b {
            hi += 1;
        }
        groups.push((lo as u32, hi as u32));
        lo = hi;
    }
    (order, groups)
}

/// The best candidate so far.
struct Best<'a> {
    dests: &'a [Dest],
    load: &'a [DestLoad],
    s_unknown: u32,
    start: usize,
    best: Option<(usize, u128, u32, usize)>,
}

impl Best<'_> {
    fn consider(&mut self, i: usize, backend_inflight: u64) {
        let Some(d) = self.dests.get(i).filter(|d| eligible(d)) else {
            return;
        };
        let l = load_at(self.load, i);
        let s = if l.resp_ewma_us > 0 {
            l.resp_ewma_us
        } else {
            self.s_unknown
        };
        let num = queue_wait(backend_inflight, l.active, s);
        let n = self.dests.len();
        let dist = (i + n - self.start) % n;
        let better = match self.best {
            None => true,
            Some((_, bnum, bw, bdist)) => {
                let (mine, theirs) = (num * u128::from(bw), bnum * u128::from(d.weight));
                mine < theirs || (mine == theirs && dist < bdist)
            }
        };
        if better {
            self.best = Some((i, num, d.weight, dist));
        }
    }
}

/// The queue scheduler: the usable dest with weight > 0 of least expected wait (module
/// docs), ties rotating. Uses the tables' backend groups when they are this
/// generation's, else groups consecutive dests of the same backend (the list keeps a
/// backend's dests together).
pub(super) fn queue(
    tables: &SchedTables,
    next: &mut usize,
    dests: &[Dest],
    load: &[DestLoad],
) -> Option<usize> {
    let n = dests.len();
    if n == 0 {
        return None;
    }
    let s_unknown = dests
        .iter()
        .enumerate()
        .filter(|(_, d)| eligible(d))
        .map(|(i, _)| load_at(load, i).resp_ewma_us)
        .filter(|&e| e > 0)
        .min()
        .unwrap_or(1);
    let inflight = |i: usize| u64::from(load_at(load, i).inflight);
    let mut best = Best {
        dests,
        load,
        s_unknown,
        start: *next % n,
        best: None,
    };
    if tables.is_built_for(SchedKind::Queue, dests) {
        for &(lo, hi) in &tables.queue_groups {
            let members = &tables.queue_order[lo as usize..hi as usize];
            let b: u64 = members.iter().map(|&i| inflight(i as usize)).sum();
            for &i in members {
                best.consider(i as usize, b);
            }
        }
    } else {
        let mut lo = 0;
        while lo < n {
            let mut hi = lo + 1;
            while hi < n && dests[hi].backend == dests[lo].backend {
                hi += 1;
            }
            let b: u64 = (lo..hi).map(inflight).sum();
            for i in lo..hi {
                best.consider(i, b);
            }
            lo = hi;
        }
    }
    let (i, _, _, _) = best.best?;
    *next = i + 1;
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;

    fn q(ewma: u32, active: u32, inflight: u32) -> DestLoad {
        DestLoad {
            active,
            inactive: 0,
            inflight,
            resp_ewma_us: ewma,
        }
    }

    struct Rig {
        s: SchedState,
        t: SchedTables,
        ds: Vec<Dest>,
        load: Vec<DestLoad>,
    }

    impl Rig {
        fn new(ds: Vec<Dest>) -> Rig {
            Rig {
                s: SchedState::new(SchedKind::Queue),
                t: SchedTables::build(SchedKind::Queue, &ds),
                load: vec![DestLoad::default(); ds.len()],
                ds,
            }
        }
        fn go(&mut self) -> Option<usize> {
            let c = client_to(v4(198, 51, 100, 1), 0);
            schedule(
                SchedKind::Queue,
                &self.t,
                &mut self.s,
                &self.ds,
                &self.load,
                &c,
                0,
            )
        }
    }

    /// Reference: the formula written out per dest (backend sums by brute force) and
    /// compared as exact fractions, scanning from `start` round the list so the first
    /// minimum in that order wins.
    fn model(ds: &[Dest], load: &[DestLoad], start: usize) -> Option<usize> {
        let known: Vec<u32> = (0..ds.len())
            .filter(|&i| ds[i].usable && ds[i].weight > 0 && load[i].resp_ewma_us > 0)
            .map(|i| load[i].resp_ewma_us)
            .collect();
        let s_unknown = known.iter().copied().min().unwrap_or(1);
        let mut best: Option<(usize, u128, u128)> = None;
        for k in 0..ds.len() {
            let i = (start + k) % ds.len();
            if !ds[i].usable || ds[i].weight == 0 {
                continue;
            }
            let b: u128 = (0..ds.len())
                .filter(|&j| ds[j].backend == ds[i].backend)
                .map(|j| u128::from(load[j].inflight))
                .sum();
            let s = if load[i].resp_ewma_us > 0 {
                load[i].resp_ewma_us
            } else {
                s_unknown
            };
            let num = (b + u128::from(load[i].active) + 1) * u128::from(s);
            let den = u128::from(ds[i].weight);
            if best.is_none_or(|(_, bn, bd)| num * bd < bn * den) {
                best = Some((i, num, den));
            }
        }
        best.map(|(i, _, _)| i)
    }

    #[test]
    fn ewma_is_tcp_srtt_like() {
        assert_eq!(ewma_update(0, 500), 500);
        assert_eq!(ewma_update(0, 0), 1);
        // 7/8 * 800 + 1/8 * 1 = 700.1 -> 700.
        assert_eq!(ewma_update(800, 0), 700);
        // 7/8 * 100 + 1/8 * 900 = 200.
        assert_eq!(ewma_update(100, 900), 200);
        assert_eq!(ewma_update(1, 1), 1);
        assert_eq!(ewma_update(u32::MAX, u32::MAX), u32::MAX);
        // Converges to a steady sample.
        let mut e = 10_000;
        for _ in 0..100 {
            e = ewma_update(e, 2000);
        }
        assert!((1996..=2004).contains(&e), "{e}");
    }

    #[test]
    fn equal_dests_take_turns() {
        let mut r = Rig::new(dests(&[1, 1, 1]));
        let got: Vec<_> = (0..7).map(|_| r.go().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn prefers_the_shorter_queue_and_the_faster_dest() {
        let mut r = Rig::new(dests(&[1, 1]));
        // Same speed: fewer in flight wins.
        r.load = vec![q(100, 0, 2), q(100, 0, 1)];
        assert_eq!(r.go(), Some(1));
        // Same queue: faster wins.
        r.load = vec![q(300, 1, 1), q(200, 1, 1)];
        assert_eq!(r.go(), Some(1));
        // (0 + 0 + 1) * 500 = 500 beats (1 + 1 + 1) * 200 = 600.
        r.load = vec![q(500, 0, 0), q(200, 1, 1)];
        assert_eq!(r.go(), Some(0));
        // Weight: (3 + 3 + 1) * 100 / 4 = 175 beats (0 + 0 + 1) * 200 / 1.
        r.ds[0].weight = 4;
        r.load = vec![q(100, 3, 3), q(200, 0, 0)];
        assert_eq!(r.go(), Some(0));
    }

    #[test]
    fn ports_of_one_backend_share_its_queue() {
        // d0 and d1 are two ports of backend 0, d2 the one port of backend 1.
        let mut ds = dests(&[1, 1, 1]);
        ds[1].backend = 0;
        ds[2].backend = 1;
        let mut r = Rig::new(ds);
        // d1 itself is idle, but backend 0 has 5 requests in flight on d0:
        // d1 waits (5 + 0 + 1) * 100, d2 (0 + 2 + 1) * 100.
        r.load = vec![q(100, 5, 5), q(100, 0, 0), q(100, 2, 0)];
        assert_eq!(r.go(), Some(2));
        // Even when d0 is not usable its requests still load the backend's CPU.
        r.ds[0].usable = false;
        assert_eq!(r.go(), Some(2));
        // Without the backend grouping d1 would have won: make d1 another backend.
        r.ds[1].backend = 2;
        r.t = SchedTables::build(SchedKind::Queue, &r.ds);
        assert_eq!(r.go(), Some(1));
    }

    #[test]
    fn backend_groups_work_without_tables_and_non_consecutive_with_them() {
        let mut ds = dests(&[1, 1, 1, 1]);
        ds[2].backend = 0; // backend 0 = {d0, d2}, not consecutive
        let mut load = vec![q(100, 0, 4), q(100, 1, 0), q(100, 0, 0), q(100, 1, 0)];
        // With tables: d2 shares d0's 4 in flight: (4+0+1) vs (0+1+1) for d1 and d3.
        let t = SchedTables::build(SchedKind::Queue, &ds);
        let mut s = SchedState::new(SchedKind::Queue);
        let c = client_to(v4(1, 1, 1, 1), 0);
        assert_eq!(
            schedule(SchedKind::Queue, &t, &mut s, &ds, &load, &c, 0),
            Some(1)
        );
        // Consecutive dests without tables: the same as with.
        ds[2].backend = 2;
        ds[1].backend = 0;
        load = vec![q(100, 0, 4), q(100, 0, 0), q(100, 1, 0), q(100, 1, 0)];
        let none = SchedTables::default();
        let mut s = SchedState::new(SchedKind::Queue);
        assert_eq!(
            schedule(SchedKind::Queue, &none, &mut s, &ds, &load, &c, 0),
            Some(2)
        );
    }

    #[test]
    fn an_unknown_response_time_borrows_the_fastest_known() {
        let mut r = Rig::new(dests(&[1, 1, 1]));
        // d2 is new (unknown): treated as 1000 like d0, the fastest known; with d0
        // busier, d2 wins.
        r.load = vec![q(1000, 2, 0), q(3000, 0, 0), q(0, 0, 0)];
        assert_eq!(r.go(), Some(2));
        // With equal known times, the new dest takes its turn.
        r.load = vec![q(1000, 0, 0), q(1000, 0, 0), q(0, 0, 0)];
        let got: Vec<_> = (0..6).map(|_| r.go().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
        // None known: all count as 1, plain least queue.
        r.load = vec![q(0, 3, 0), q(0, 1, 0), q(0, 2, 0)];
        assert_eq!(r.go(), Some(1));
    }

    #[test]
    fn matches_the_model_on_random_cases() {
        let mut rng = Rng(2024);
        for _ in 0..2000 {
            let n = 1 + rng.below(7) as usize;
            let mut ds = dests(&vec![1; n]);
            let mut backend = 0u16;
            for d in &mut ds {
                if rng.below(2) == 0 {
                    backend += 1;
                }
                d.backend = backend;
                d.weight = rng.below(4) as u32;
                d.usable = rng.below(6) != 0;
            }
            let load: Vec<DestLoad> = (0..n)
                .map(|_| {
                    let e = [0, 100, 200, 300, 1000][rng.below(5) as usize];
                    q(e, rng.below(4) as u32, rng.below(4) as u32)
                })
                .collect();
            let with = SchedTables::build(SchedKind::Queue, &ds);
            let without = SchedTables::default();
            for t in [&with, &without] {
                let mut s = SchedState::new(SchedKind::Queue);
                let mut start = 0;
                let c = client_to(v4(1, 1, 1, 1), 0);
                for _ in 0..3 {
                    let want = model(&ds, &load, start);
                    let got = schedule(SchedKind::Queue, t, &mut s, &ds, &load, &c, 0);
                    assert_eq!(got, want, "{ds:?} {load:?} start {start}");
                    if let Some(i) = got {
                        start = i + 1;
                    }
                }
            }
        }
    }

    #[test]
    fn a_slow_dest_gets_less_and_recovers_its_share() {
        let mut r = Rig::new(dests(&[1, 1]));
        r.load = vec![q(1000, 0, 0), q(4000, 0, 0)];
        // Connections stay open: each choice adds one active connection.
        for _ in 0..500 {
            let i = r.go().unwrap();
            r.load[i].active += 1;
        }
        // (a + 1) * 1000 ~ (b + 1) * 4000: about 4 to 1.
        let (a, b) = (r.load[0].active, r.load[1].active);
        assert!((398..=402).contains(&a) && a + b == 500, "{a} {b}");
        // d1 speeds up to d0's rate: it takes the new connections until the queues
        // are even, then they alternate.
        r.load[1].resp_ewma_us = 1000;
        let mut to_d1 = 0;
        for _ in 0..400 {
            let i = r.go().unwrap();
            r.load[i].active += 1;
            to_d1 += usize::from(i == 1);
        }
        let (a2, b2) = (r.load[0].active, r.load[1].active);
        assert!(a2.abs_diff(b2) <= 1, "{a2} {b2}");
        assert!(to_d1 >= 340, "{to_d1}");
    }
}
