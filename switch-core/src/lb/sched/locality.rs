//! lblc and lblcr: `net/netfilter/ipvs/ip_vs_lblc.c` and `ip_vs_lblcr.c`.
//!
//! Both remember, per destination IP address of the client's packets, the dest (lblc)
//! or set of dests (lblcr) that served it, and fall back to a weighted least-connection
//! choice (`__ip_vs_lblc_schedule` / `__ip_vs_lblcr_schedule`, the same scan as wlc) for
//! a new address, an unusable dest, or one that `is_overloaded`.
//!
//! Where this differs from the kernel, which allocates an entry (and set elements) per
//! address with `GFP_ATOMIC` and collects stale ones from a timer:
//! - The table is per worker, per service, pre-allocated by `SchedState::new` with a fixed
//!   capacity (default [`LOCALITY_DEFAULT_CAPACITY`] addresses; IPVS lets its table grow
//!   past its 16384-entry soft limit): open addressing keyed by the address, linear
//!   probing, at most half full, backward-shift deletion.
//! - Expiry happens on lookup instead of from a timer: an entry unused for
//!   `expiration_ms` (default [`LBLC_DEFAULT_EXPIRATION_MS`], 24 h, IPVS's
//!   `lblc_expiration`/`lblcr_expiration` sysctls) is gone. IPVS's full check runs every
//!   30 minutes, so there an entry may outlive that by up to 30 minutes.
//! - When the table is full, inserting a new address evicts an entry: among the next 32
//!   entries from a moving cursor, the first one unused for [`LBLC_ENTRY_TIMEOUT_MS`]
//!   (6 min, IPVS's `ENTRY_TIMEOUT`, what its garbage collection removes when the table is
//!   over its soft limit), else the least recently used of those 32. IPVS never drops an
//!   entry younger than 6 minutes; it grows instead.
//! - An lblcr set holds at most [`LBLCR_SET_CAPACITY`] dests; adding one to a full set
//!   first drops its most loaded member (`ip_vs_dest_set_max`), the one IPVS drops when
//!   it shrinks a set.
//! - A dest is remembered by its index in the dest list, so `SchedState::reset` (dest
//!   list changed) empties the table; IPVS keeps its entries, holding references to the
//!   dests. Dest indices above 65535 are not remembered (the connection is still
//!   scheduled).
//! - `is_overloaded` looks for a less loaded dest among the usable dests only; IPVS scans
//!   every dest of the service, including overloaded ones (quiesced ones, with weight 0,
//!   can never qualify there either).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::leastconn::{dest_conn_overhead, wlc};
use super::{eligible, load_at, Dest, DestLoad};

/// `ENTRY_TIMEOUT`: entries unused this long are what IPVS's garbage collection removes
/// when the table is over its size, and what eviction here prefers.
pub const LBLC_ENTRY_TIMEOUT_MS: u64 = 6 * 60 * 1000;
/// `DEFAULT_EXPIRATION` (the `lblc_expiration` and `lblcr_expiration` sysctls): an entry
/// unused this long is forgotten; an lblcr set unchanged this long loses its most
/// loaded member.
pub const LBLC_DEFAULT_EXPIRATION_MS: u64 = 24 * 60 * 60 * 1000;
/// Destination addresses a worker's lblc/lblcr table holds by default (IPVS's table has
/// 1024 buckets, `IP_VS_LBLC_TAB_BITS` = 10).
pub const LOCALITY_DEFAULT_CAPACITY: usize = 1024;
/// Dests an lblcr set holds at most.
pub const LBLCR_SET_CAPACITY: usize = 16;
/// Entries an eviction looks at.
const EVICT_SAMPLE: usize = 32;

/// An lblcr `struct ip_vs_dest_set` (lblc uses it with one member): the members, newest
/// first (`list_add_rcu` puts a new element at the head), and `lastmod`.
#[derive(Clone, Copy)]
struct DestSet {
    len: u8,
    lastmod: u64,
    members: [u16; LBLCR_SET_CAPACITY],
}

impl DestSet {
    const EMPTY: DestSet = DestSet {
        len: 0,
        lastmod: 0,
        members: [0; LBLCR_SET_CAPACITY],
    };

    fn one(d: u16, now: u64) -> DestSet {
        let mut s = DestSet::EMPTY;
        s.members[0] = d;
        s.len = 1;
        s.lastmod = now;
        s
    }

    fn members(&self) -> &[u16] {
        &self.members[..usize::from(self.len)]
    }

    /// Puts `d` first; the set must not be full.
    fn insert_front(&mut self, d: u16, now: u64) {
        let len = usize::from(self.len);
        self.members.copy_within(0..len, 1);
        self.members[0] = d;
        self.len += 1;
        self.lastmod = now;
    }

    /// `ip_vs_dest_set_erase`.
    fn erase(&mut self, d: u16, now: u64) {
        let len = usize::from(self.len);
        if let Some(p) = self.members().iter().position(|&m| m == d) {
            self.members.copy_within(p + 1..len, p);
            self.len -= 1;
            self.lastmod = now;
        }
    }
}

#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    key: IpAddr,
    lastuse: u64,
    set: DestSet,
}

const EMPTY_SLOT: Slot = Slot {
    used: false,
    key: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    lastuse: 0,
    set: DestSet::EMPTY,
};

/// The per-worker table: destination address -> dest set.
#[derive(Clone)]
pub(super) struct Table {
    slots: Vec<Slot>,
    mask: usize,
    len: usize,
    cap: usize,
    rover: usize,
    expiration_ms: u64,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .field("expiration_ms", &self.expiration_ms)
            .finish_non_exhaustive()
    }
}

/// The slot hash: the address mixed by the 64-bit MurmurHash3 finaliser.
fn mix(key: &IpAddr) -> u64 {
    let mut x = match key {
        IpAddr::V4(a) => u64::from(u32::from(*a)),
        IpAddr::V6(a) => {
            let v = u128::from(*a);
            (v as u64) ^ ((v >> 64) as u64).rotate_left(29) ^ 0x9E37_79B9_7F4A_7C15
        }
    };
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^ (x >> 33)
}

impl Table {
    /// A table for `capacity` addresses (none for 0), twice as many slots.
    pub(super) fn new(capacity: usize, expiration_ms: u64) -> Table {
        let slots = if capacity == 0 {
            Vec::new()
        } else {
            vec![EMPTY_SLOT; capacity.saturating_mul(2).next_power_of_two()]
        };
        Table {
            mask: slots.len().saturating_sub(1),
            slots,
            len: 0,
            cap: capacity,
            rover: 0,
            expiration_ms,
        }
    }

    pub(super) fn clear(&mut self) {
        for s in &mut self.slots {
            s.used = false;
        }
        self.len = 0;
        self.rover = 0;
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn capacity(&self) -> usize {
        self.cap
    }

    /// The slot buffer's address and capacity, to check nothing reallocates it.
    #[cfg(test)]
    pub(super) fn buffer_identity(&self) -> (usize, usize) {
        (self.slots.as_ptr() as usize, self.slots.capacity())
    }

    /// The members remembered for `key`, newest first.
    #[cfg(test)]
    fn cached(&self, key: &IpAddr) -> Option<Vec<u16>> {
        self.find(key).map(|i| self.slots[i].set.members().to_vec())
    }

    fn home(&self, key: &IpAddr) -> usize {
        (mix(key) as usize) & self.mask
    }

    fn find(&self, key: &IpAddr) -> Option<usize> {
        if self.cap == 0 {
            return None;
        }
        let mut i = self.home(key);
        // Terminates: at most half the slots are used.
        while self.slots[i].used {
            if self.slots[i].key == *key {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Backward-shift deletion: later entries of the probe run move into the hole when
    /// their home slot allows it, so no tombstones are needed.
    fn remove(&mut self, i: usize) {
        let mask = self.mask;
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            if !self.slots[j].used {
                break;
            }
            let home = self.home(&self.slots[j].key);
            // The entry at j may move back to the hole if its probe distance reaches it.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole].used = false;
        self.len -= 1;
    }

    /// Frees one entry: the first of the next [`EVICT_SAMPLE`] entries unused for
    /// [`LBLC_ENTRY_TIMEOUT_MS`], else the least recently used of them.
    fn evict(&mut self, now: u64) {
        let mut victim: Option<(usize, u64)> = None;
        let mut seen = 0;
        let mut i = self.rover;
        for _ in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.used {
                if now.saturating_sub(s.lastuse) >= LBLC_ENTRY_TIMEOUT_MS {
                    victim = Some((i, s.lastuse));
                    break;
                }
                if victim.is_none_or(|(_, t)| s.lastuse < t) {
                    victim = Some((i, s.lastuse));
                }
                seen += 1;
                if seen == EVICT_SAMPLE {
                    break;
                }
            }
            i = (i + 1) & self.mask;
        }
        self.rover = (i + 1) & self.mask;
        if let Some((v, _)) = victim {
            self.remove(v);
        }
    }

    /// A new entry for `key` (which must be absent), evicting one if the table is full;
    /// `None` without a table.
    fn insert(&mut self, key: IpAddr, now: u64, set: DestSet) -> Option<usize> {
        if self.cap == 0 {
            return None;
        }
        if self.len >= self.cap {
            self.evict(now);
        }
        let mut i = self.home(&key);
        while self.slots[i].used {
            i = (i + 1) & self.mask;
        }
        self.slots[i] = Slot {
            used: true,
            key,
            lastuse: now,
            set,
        };
        self.len += 1;
        Some(i)
    }

    /// The entry of `key` unless it expired (unused for `expiration_ms`; then it is
    /// removed, as IPVS's full expiration check would have).
    fn lookup(&mut self, key: &IpAddr, now: u64) -> Option<usize> {
        let i = self.find(key)?;
        if now.saturating_sub(self.slots[i].lastuse) >= self.expiration_ms {
            self.remove(i);
            return None;
        }
        Some(i)
    }
}

/// `is_overloaded` (lblc and lblcr alike): the dest has more active connections than
/// its weight and some (usable) dest has fewer than half its weight.
fn is_overloaded(d: usize, dests: &[Dest], load: &[DestLoad]) -> bool {
    if u64::from(load_at(load, d).active) > u64::from(dests[d].weight) {
        return dests.iter().enumerate().any(|(i, m)| {
            m.usable && u64::from(load_at(load, i).active) * 2 < u64::from(m.weight)
        });
    }
    false
}

/// Locality-based least connection, mirroring `ip_vs_lblc_schedule`: the remembered
/// dest of the destination address if it is usable, has weight > 0 and is not
/// overloaded; else the weighted least-connection dest, which is remembered
/// (`ip_vs_lblc_new` replaces the entry when the dest differs). Using an entry
/// refreshes its `lastuse` even when its dest is then replaced.
pub(super) fn lblc(
    t: &mut Table,
    dests: &[Dest],
    load: &[DestLoad],
    daddr: &IpAddr,
    now: u64,
) -> Option<usize> {
    let cached = t.lookup(daddr, now);
    if let Some(i) = cached {
        let s = &mut t.slots[i];
        s.lastuse = now;
        let d = usize::from(s.set.members[0]);
        if dests.get(d).is_some_and(eligible) && !is_overloaded(d, dests, load) {
            return Some(d);
        }
    }
    let d = wlc(dests, load)?;
    if let Ok(d16) = u16::try_from(d) {
        match cached {
            Some(i) => {
                if t.slots[i].set.members[0] != d16 {
                    t.slots[i].set = DestSet::one(d16, now);
                }
            }
            None => {
                t.insert(*daddr, now, DestSet::one(d16, now));
            }
        }
    }
    Some(d)
}

/// `ip_vs_dest_set_min`: the set's weighted least-connection member among those that
/// are usable with weight > 0, members in set order (newest first), the first winning
/// ties.
fn set_min(set: &DestSet, dests: &[Dest], load: &[DestLoad]) -> Option<usize> {
    let mut least: Option<(usize, u64, u32)> = None;
    for &m in set.members() {
        let d = usize::from(m);
        let Some(dest) = dests.get(d).filter(|x| eligible(x)) else {
            continue;
        };
        let doh = dest_conn_overhead(&load_at(load, d));
        match least {
            Some((_, loh, lw))
                if u128::from(loh) * u128::from(dest.weight)
                    <= u128::from(doh) * u128::from(lw) => {}
            _ => least = Some((d, doh, dest.weight)),
        }
    }
    least.map(|(d, _, _)| d)
}

/// `ip_vs_dest_set_max`: the set's weighted most-connection member among those with
/// weight > 0 (flags are not looked at), the first winning ties.
fn set_max(set: &DestSet, dests: &[Dest], load: &[DestLoad]) -> Option<u16> {
    let mut most: Option<(u16, u64, u32)> = None;
    for &m in set.members() {
        let d = usize::from(m);
        let Some(dest) = dests.get(d).filter(|x| x.weight > 0) else {
            continue;
        };
        let doh = dest_conn_overhead(&load_at(load, d));
        match most {
            Some((_, moh, mw))
                if u128::from(moh) * u128::from(dest.weight)
                    >= u128::from(doh) * u128::from(mw) => {}
            _ => most = Some((m, doh, dest.weight)),
        }
    }
    most.map(|(m, _, _)| m)
}

/// `ip_vs_dest_set_insert(set, dest, true)`: nothing if present; else `dest` goes
/// first and `lastmod` is now. A full set first loses its most loaded member (a
/// deviation: IPVS's sets are unbounded).
fn set_insert(set: &mut DestSet, d: u16, now: u64, dests: &[Dest], load: &[DestLoad]) {
    if set.members().contains(&d) {
        return;
    }
    if usize::from(set.len) == LBLCR_SET_CAPACITY {
        let victim = set_max(set, dests, load).unwrap_or(set.members[LBLCR_SET_CAPACITY - 1]);
        set.erase(victim, now);
    }
    set.insert_front(d, now);
}

/// Locality-based least connection with replication, mirroring `ip_vs_lblcr_schedule`:
/// for a known destination address, the least loaded usable member of its set
/// (`ip_vs_dest_set_min`); if the set has more than one member and has not changed for
/// `expiration_ms`, its most loaded member is dropped (after that choice, as in IPVS);
/// if the choice is missing or overloaded, the weighted least-connection dest, added to
/// the set. A new address gets a set of the weighted least-connection dest.
pub(super) fn lblcr(
    t: &mut Table,
    dests: &[Dest],
    load: &[DestLoad],
    daddr: &IpAddr,
    now: u64,
) -> Option<usize> {
    if let Some(i) = t.lookup(daddr, now) {
        let expiration = t.expiration_ms;
        let s = &mut t.slots[i];
        s.lastuse = now;
        // Get the least loaded destination.
        let dest = set_min(&s.set, dests, load);
        // More than one destination + enough time passed by, cleanup.
        if s.set.len > 1 && now.saturating_sub(s.set.lastmod) > expiration {
            if let Some(m) = set_max(&s.set, dests, load) {
                s.set.erase(m, now);
            }
        }
        // If the destination is not overloaded, use it.
        if let Some(d) = dest {
            if !is_overloaded(d, dests, load) {
                return Some(d);
            }
        }
        // The cache entry is invalid, time to schedule.
        let d = wlc(dests, load)?;
        if let Ok(d16) = u16::try_from(d) {
            set_insert(&mut s.set, d16, now, dests, load);
        }
        return Some(d);
    }
    // No cache entry, time to schedule.
    let d = wlc(dests, load)?;
    if let Ok(d16) = u16::try_from(d) {
        t.insert(*daddr, now, DestSet::one(d16, now));
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::*;
    use super::*;
    use std::collections::HashMap;

    const MIN: u64 = 60 * 1000;

    struct Rig {
        kind: SchedKind,
        s: SchedState,
        t: SchedTables,
        ds: Vec<Dest>,
        load: Vec<DestLoad>,
    }

    impl Rig {
        fn new(kind: SchedKind, weights: &[u32], cap: usize, exp: u64) -> Rig {
            let ds = dests(weights);
            Rig {
                kind,
                s: SchedState::with_locality(kind, cap, exp),
                t: SchedTables::build(kind, &ds),
                load: vec![DestLoad::default(); ds.len()],
                ds,
            }
        }
        fn go(&mut self, dst: IpAddr, now: u64) -> Option<usize> {
            let c = client_to(dst, 0);
            schedule(
                self.kind,
                &self.t,
                &mut self.s,
                &self.ds,
                &self.load,
                &c,
                now,
            )
        }
        fn cached(&self, dst: IpAddr) -> Option<Vec<u16>> {
            self.s.locality.cached(&dst)
        }
    }

    #[test]
    fn lblc_sticks_to_the_remembered_dest() {
        let mut r = Rig::new(SchedKind::Lblc, &[1, 1, 1], 16, LBLC_DEFAULT_EXPIRATION_MS);
        let a = v4(203, 0, 113, 1);
        let b = v4(203, 0, 113, 2);
        assert_eq!(r.go(a, 0), Some(0));
        // wlc would now pick dest 1, but dest 0 is not overloaded (1 active, weight 1).
        r.load[0] = ld(1, 0);
        assert_eq!(r.go(a, 1), Some(0));
        assert_eq!(r.go(b, 2), Some(1));
        assert_eq!(r.cached(a), Some(vec![0]));
        assert_eq!(r.cached(b), Some(vec![1]));
    }

    #[test]
    fn lblc_leaves_an_overloaded_dest_only_for_one_under_half_load() {
        let mut r = Rig::new(SchedKind::Lblc, &[2, 2, 2], 16, LBLC_DEFAULT_EXPIRATION_MS);
        let a = v4(203, 0, 113, 1);
        assert_eq!(r.go(a, 0), Some(0));
        // Dest 0 has 3 active > weight 2, but no dest has active * 2 < weight: stay.
        r.load = vec![ld(3, 0), ld(1, 0), ld(1, 0)];
        assert_eq!(r.go(a, 1), Some(0));
        // Dest 2 drops to 0 active (0 * 2 < 2): dest 0 is overloaded; wlc picks 2.
        r.load[2] = ld(0, 0);
        assert_eq!(r.go(a, 2), Some(2));
        assert_eq!(r.cached(a), Some(vec![2]));
        // The new mapping sticks once loads even out.
        r.load = vec![ld(0, 0), ld(0, 0), ld(1, 0)];
        assert_eq!(r.go(a, 3), Some(2));
        // An unusable dest 2 sends it elsewhere too, and the entry follows.
        r.ds[2].usable = false;
        assert_eq!(r.go(a, 4), Some(0));
        assert_eq!(r.cached(a), Some(vec![0]));
        // A quiesced (weight 0) remembered dest likewise.
        r.ds[0].weight = 0;
        assert_eq!(r.go(a, 5), Some(1));
    }

    #[test]
    fn lblc_entries_expire_after_the_expiration_unless_used() {
        let exp = 24 * 60 * MIN;
        let mut r = Rig::new(SchedKind::Lblc, &[1, 1], 16, exp);
        let a = v4(203, 0, 113, 1);
        assert_eq!(r.go(a, 0), Some(0));
        r.load[0] = ld(1, 0);
        // Used every 23 hours: never expires, stays on dest 0.
        for k in 1..5 {
            assert_eq!(r.go(a, k * 23 * 60 * MIN), Some(0));
        }
        // Unused for exactly the expiration: forgotten (IPVS deletes when
        // !time_before(now, lastuse + expiration)); wlc now picks dest 1.
        let last = 4 * 23 * 60 * MIN;
        assert_eq!(r.go(a, last + exp), Some(1));
        assert_eq!(r.cached(a), Some(vec![1]));
    }

    #[test]
    fn a_full_table_evicts_timed_out_entries_first_then_the_oldest() {
        let mut r = Rig::new(SchedKind::Lblc, &[1], 4, LBLC_DEFAULT_EXPIRATION_MS);
        let addr = |i: u8| v4(198, 18, 0, i);
        for i in 0..4u8 {
            r.go(addr(i), u64::from(i) * 1000);
        }
        assert_eq!(r.s.locality_len(), 4);
        // All younger than 6 minutes: the least recently used (addr 0) goes.
        r.go(addr(4), 5000);
        assert_eq!(r.s.locality_len(), 4);
        assert_eq!(r.cached(addr(0)), None);
        assert!((1..5).all(|i| r.cached(addr(i)).is_some()));
        // Refresh addr 1 at 7 minutes; 2, 3 and 4 are then over 6 minutes old (timed
        // out), so one of them goes, never the fresh addr 1.
        r.go(addr(1), 7 * MIN);
        r.go(addr(5), 7 * MIN + 1);
        assert!(r.cached(addr(1)).is_some());
        assert!(r.cached(addr(5)).is_some());
        assert_eq!((2..5).filter(|&i| r.cached(addr(i)).is_some()).count(), 2);
    }

    #[test]
    fn the_table_matches_a_hash_map_through_inserts_and_removals() {
        // Direct test of the open addressing: random inserts and removals (expiry and
        // explicit) against a HashMap; capacity large enough that nothing is evicted.
        let mut t = Table::new(600, u64::MAX);
        let mut model: HashMap<IpAddr, u16> = HashMap::new();
        let mut rng = Rng(42);
        let key = |k: u64| {
            if k.is_multiple_of(3) {
                v6([0x2001, 0xdb8, 0, 0, 0, 0, (k >> 16) as u16, k as u16])
            } else {
                IpAddr::V4(((k as u32) << 7).into())
            }
        };
        for step in 0..20_000u64 {
            let k = key(rng.below(500));
            match rng.below(3) {
                0 | 1 => {
                    if t.find(&k).is_none() {
                        let d = (step % 1000) as u16;
                        t.insert(k, step, DestSet::one(d, step));
                        model.insert(k, d);
                    }
                }
                _ => {
                    if let Some(i) = t.find(&k) {
                        t.remove(i);
                    }
                    model.remove(&k);
                }
            }
            if step.is_multiple_of(97) {
                assert_eq!(t.len(), model.len());
                for k in (0..500).map(key) {
                    let got = t.find(&k).map(|i| t.slots[i].set.members[0]);
                    assert_eq!(got, model.get(&k).copied(), "step {step} key {k}");
                }
            }
        }
    }

    #[test]
    fn no_table_means_plain_wlc() {
        let mut r = Rig::new(SchedKind::Lblc, &[1, 1], 0, LBLC_DEFAULT_EXPIRATION_MS);
        let a = v4(203, 0, 113, 1);
        assert_eq!(r.go(a, 0), Some(0));
        r.load[0] = ld(1, 0);
        assert_eq!(r.go(a, 1), Some(1));
        assert_eq!(r.s.locality_len(), 0);
        assert_eq!(r.s.locality_capacity(), 0);
    }

    #[test]
    fn reset_forgets_the_mappings() {
        let mut r = Rig::new(SchedKind::Lblcr, &[1, 1], 8, LBLC_DEFAULT_EXPIRATION_MS);
        let a = v4(203, 0, 113, 1);
        assert_eq!(r.go(a, 0), Some(0));
        r.s.reset(SchedKind::Lblcr);
        assert_eq!(r.s.locality_len(), 0);
        r.load[0] = ld(1, 0);
        assert_eq!(r.go(a, 1), Some(1));
    }

    #[test]
    fn lblcr_grows_the_set_under_overload_and_uses_its_least_loaded_member() {
        let exp = 60 * MIN;
        let mut r = Rig::new(SchedKind::Lblcr, &[2, 2, 2], 16, exp);
        let a = v4(203, 0, 113, 9);
        assert_eq!(r.go(a, 0), Some(0));
        assert_eq!(r.cached(a), Some(vec![0]));
        // Dest 0 overloaded (3 > 2) and dest 2 idle (0 * 2 < 2): wlc gives dest 2 (dest 1
        // has 1 active), added in front of the set.
        r.load = vec![ld(3, 0), ld(1, 0), ld(0, 0)];
        assert_eq!(r.go(a, 1000), Some(2));
        assert_eq!(r.cached(a), Some(vec![2, 0]));
        // Now the set's least loaded member serves: dest 0 again once it is lighter.
        r.load = vec![ld(0, 5), ld(0, 0), ld(1, 0)];
        assert_eq!(r.go(a, 2000), Some(0));
        // Dest 1 is the globally least loaded but not in the set: not used while the
        // set's choice is not overloaded.
        r.load = vec![ld(2, 0), ld(0, 0), ld(2, 0)];
        assert_eq!(r.go(a, 3000), Some(2));
        assert_eq!(r.cached(a), Some(vec![2, 0]));
        // An unusable member is skipped by the set's choice.
        r.ds[2].usable = false;
        assert_eq!(r.go(a, 4000), Some(0));
    }

    #[test]
    fn lblcr_drops_the_most_loaded_member_after_the_set_stays_unchanged() {
        let exp = 10 * MIN;
        let mut r = Rig::new(SchedKind::Lblcr, &[2, 2, 2], 16, exp);
        let a = v4(203, 0, 113, 9);
        assert_eq!(r.go(a, 0), Some(0));
        r.load = vec![ld(3, 0), ld(1, 0), ld(0, 0)];
        assert_eq!(r.go(a, MIN), Some(2)); // set {2, 0}, lastmod = 1 min
        r.load = vec![ld(2, 0), ld(1, 0), ld(1, 0)];
        // Used (lastuse refreshed) but the set unchanged: at 11 min, exactly the
        // expiration after lastmod, nothing yet (IPVS uses time_after, strictly later).
        assert_eq!(r.go(a, 6 * MIN), Some(2));
        assert_eq!(r.go(a, 11 * MIN), Some(2));
        assert_eq!(r.cached(a), Some(vec![2, 0]));
        // One ms later the most loaded member (dest 0: 512/2 > 256/2) is dropped.
        assert_eq!(r.go(a, 11 * MIN + 1), Some(2));
        assert_eq!(r.cached(a), Some(vec![2]));
        // A single-member set is never shrunk (the entry itself, used at 11 min, has
        // not expired at 20 min).
        assert_eq!(r.go(a, 20 * MIN + 2), Some(2));
        assert_eq!(r.cached(a), Some(vec![2]));
    }

    #[test]
    fn lblcr_set_is_bounded() {
        let n = LBLCR_SET_CAPACITY + 4;
        let mut r = Rig::new(
            SchedKind::Lblcr,
            &vec![1; n],
            16,
            LBLC_DEFAULT_EXPIRATION_MS,
        );
        let a = v4(203, 0, 113, 9);
        // Make each chosen dest overloaded in turn while the next is idle, so the set
        // keeps growing; it never holds more than the capacity.
        r.load = vec![ld(0, 0); n];
        for k in 0..n {
            let got = r.go(a, k as u64).unwrap();
            r.load[got] = ld(2, 0);
        }
        let set = r.cached(a).unwrap();
        assert_eq!(set.len(), LBLCR_SET_CAPACITY);
        assert_eq!(usize::from(set[0]), n - 1);
    }

    #[test]
    fn lblcr_entries_expire_like_lblc() {
        let exp = 10 * MIN;
        let mut r = Rig::new(SchedKind::Lblcr, &[1, 1], 16, exp);
        let a = v4(203, 0, 113, 9);
        assert_eq!(r.go(a, 0), Some(0));
        r.load[0] = ld(1, 0);
        assert_eq!(r.go(a, 9 * MIN), Some(0));
        assert_eq!(r.go(a, 19 * MIN), Some(1));
        assert_eq!(r.cached(a), Some(vec![1]));
    }
}
