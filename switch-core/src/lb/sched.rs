//! Schedulers: which destination (one software port of one backend) gets a new
//! connection.
//!
//! What it does: [`schedule`] picks among a service's [`Dest`]s by the service's
//! [`SchedKind`]: the ten Linux IPVS schedulers with IPVS's own semantics, Maglev
//! consistent hashing, and `queue`, the rate-of-processing scheduler of seed 003.
//! `docs/lb-schedulers.md` describes each one, the kernel function it mirrors and where a
//! worker's local view differs from IPVS's global one.
//!
//! What it guarantees: [`schedule`] never allocates, locks or blocks (it runs on the
//! workers, once per new connection); [`SchedTables::build`] and [`SchedState::new`] may
//! allocate and run on the slow path. Time is an input (`now_ms`). [`schedule`] never
//! panics, whatever the inputs: stale tables, a `load` slice shorter than `dests` (the
//! missing loads count as zero) or a state made for another scheduler only make the choice
//! worse, never unsafe.
//!
//! What it must not do: read clocks or look at packets.
//!
//! How IPVS terms map here: a [`Dest`] is one IPVS real server; `usable == false` stands
//! for what makes IPVS skip a real server for new connections (weight 0, the
//! `IP_VS_DEST_F_OVERLOAD` flag set, or `IP_VS_DEST_F_AVAILABLE` cleared), and weight 0
//! also means "no new connections", as in IPVS. `active`/`inactive` are IPVS's
//! `activeconns`/`inactconns`, counted by this worker only.
//!
//! The implementations live in submodules, one per scheduler family: `roundrobin` (rr,
//! wrr), `leastconn` (lc, wlc, sed, nq), `locality` (lblc, lblcr), `hashing` (dh, sh),
//! `queue`, and [`super::maglev`] for the Maglev lookup table.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::maglev::Maglev;

mod hashing;
mod leastconn;
mod locality;
mod queue;
mod roundrobin;

pub use hashing::{
    addr_fold, dh_bucket, hash_32, sh_bucket, GOLDEN_RATIO_32, IP_VS_DH_TAB_BITS,
    IP_VS_DH_TAB_SIZE, IP_VS_SH_TAB_BITS, IP_VS_SH_TAB_SIZE,
};
pub use leastconn::dest_conn_overhead;
pub use locality::{
    LBLCR_SET_CAPACITY, LBLC_DEFAULT_EXPIRATION_MS, LBLC_ENTRY_TIMEOUT_MS,
    LOCALITY_DEFAULT_CAPACITY,
};
pub use queue::{ewma_update, queue_wait};

/// A service's scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedKind {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Maglev,
    Queue,
}

impl SchedKind {
    /// Every scheduler, in the order the docs list them.
    pub const ALL: [SchedKind; 12] = [
        SchedKind::Rr,
        SchedKind::Wrr,
        SchedKind::Lc,
        SchedKind::Wlc,
        SchedKind::Lblc,
        SchedKind::Lblcr,
        SchedKind::Dh,
        SchedKind::Sh,
        SchedKind::Sed,
        SchedKind::Nq,
        SchedKind::Maglev,
        SchedKind::Queue,
    ];

    /// The name used in config, on the control socket and by `ipvsadm -s`.
    pub fn name(self) -> &'static str {
        match self {
            SchedKind::Rr => "rr",
            SchedKind::Wrr => "wrr",
            SchedKind::Lc => "lc",
            SchedKind::Wlc => "wlc",
            SchedKind::Lblc => "lblc",
            SchedKind::Lblcr => "lblcr",
            SchedKind::Dh => "dh",
            SchedKind::Sh => "sh",
            SchedKind::Sed => "sed",
            SchedKind::Nq => "nq",
            SchedKind::Maglev => "maglev",
            SchedKind::Queue => "queue",
        }
    }

    /// The scheduler of a name, if it is one.
    pub fn from_name(s: &str) -> Option<SchedKind> {
        SchedKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// One destination as configured (immutable for a service generation): a software port
/// of a backend. The dests of one backend are usually consecutive in a service's list, but
/// need not be (a removed destination leaves a hole its index is kept by); `backend`
/// groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    /// The backend's IP address.
    pub addr: IpAddr,
    /// The software port (TCP/UDP port on the backend).
    pub port: u16,
    /// Index of the backend in the service's backend list.
    pub backend: u16,
    /// The backend's weight (0: no new connections, as in IPVS).
    pub weight: u32,
    /// False when the backend is down, draining or disabled: no new connections.
    pub usable: bool,
}

impl Dest {
    /// The `backend` of a hole: a removed destination whose index is kept so that the
    /// other destinations keep theirs (and their counts).
    pub const HOLE: u16 = u16::MAX;

    /// A hole (see [`Dest::HOLE`]): never chosen, and not in the dh/sh/maglev tables, as
    /// a removed real server is not in IPVS's list.
    pub fn is_hole(&self) -> bool {
        self.backend == Dest::HOLE
    }
}

/// What one worker measured for one destination (its local view).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DestLoad {
    /// IPVS `activeconns`: TCP connections not yet past FIN/RST.
    pub active: u32,
    /// IPVS `inactconns`: TCP connections closing, and UDP "connections".
    pub inactive: u32,
    /// Requests in flight: connections whose client sent data the backend has not yet
    /// answered (seen in NAT mode only; 0 in DR mode).
    pub inflight: u32,
    /// Smoothed response time in microseconds (first request byte to first response
    /// byte, EWMA); 0 while unknown.
    pub resp_ewma_us: u32,
}

/// The client side of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    /// The 5-tuple's hash (for Maglev).
    pub hash: u64,
}

/// True when `d` may take new connections: IPVS's "not OVERLOAD, AVAILABLE and
/// weight > 0".
#[inline]
pub(crate) fn eligible(d: &Dest) -> bool {
    d.usable && d.weight > 0
}

/// The load of dest `i`, zero when `load` is too short.
#[inline]
pub(crate) fn load_at(load: &[DestLoad], i: usize) -> DestLoad {
    load.get(i).copied().unwrap_or_default()
}

/// Per-service tables built on the slow path for one generation of the dest list.
///
/// What each scheduler keeps here: dh and sh their 256-bucket tables (bucket -> dest
/// index, as `ip_vs_dh_reassign`/`ip_vs_sh_reassign` fill them), maglev its 65537-entry
/// lookup table, queue the dests grouped by backend. The others need none. Tables are
/// identical on every worker (they depend on the dest list only), so one copy may be
/// shared.
#[derive(Debug, Clone, Default)]
pub struct SchedTables {
    /// The scheduler these tables were built for (`None`: [`Default`], nothing built).
    built_for: Option<SchedKind>,
    /// `dests.len()` at build time: tables of another length are stale and ignored.
    n_dests: usize,
    /// dh/sh: dest index per bucket, [`hashing::NO_DEST`] for none.
    buckets: Vec<u32>,
    /// maglev: the lookup table.
    maglev: Maglev,
    /// queue: dest indices ordered by backend (stable), and the `[lo, hi)` ranges of
    /// `queue_order` holding one backend each.
    queue_order: Vec<u32>,
    queue_groups: Vec<(u32, u32)>,
}

impl SchedTables {
    /// Builds what `kind` needs for `dests` (may allocate).
    pub fn build(kind: SchedKind, dests: &[Dest]) -> SchedTables {
        let mut t = SchedTables {
            built_for: Some(kind),
            n_dests: dests.len(),
            ..SchedTables::default()
        };
        match kind {
            SchedKind::Dh => t.buckets = hashing::dh_assign(dests),
            SchedKind::Sh => t.buckets = hashing::sh_assign(dests),
            SchedKind::Maglev => t.maglev = Maglev::build(dests),
            SchedKind::Queue => {
                let (order, groups) = queue::group_by_backend(dests);
                t.queue_order = order;
                t.queue_groups = groups;
            }
            _ => {}
        }
        t
    }

    /// True when these tables were built for `kind` over a list as long as `dests`.
    pub fn is_built_for(&self, kind: SchedKind, dests: &[Dest]) -> bool {
        self.built_for == Some(kind) && self.n_dests == dests.len()
    }

    /// The Maglev table (empty unless built for [`SchedKind::Maglev`]).
    pub fn maglev(&self) -> &Maglev {
        &self.maglev
    }

    /// The dh/sh bucket table: dest index per bucket, `None` for an empty bucket (empty
    /// unless built for dh or sh).
    pub fn bucket(&self, b: usize) -> Option<usize> {
        match self.buckets.get(b) {
            Some(&d) if d != hashing::NO_DEST => Some(d as usize),
            _ => None,
        }
    }
}

/// Per-worker, per-service mutable state. Allocated once by [`SchedState::new`];
/// [`schedule`] and [`SchedState::reset`] never allocate. A state serves the scheduler
/// it was made for: a service that changes scheduler needs a new one (lblc/lblcr with
/// a state made for another kind have no table and behave as wlc).
#[derive(Debug, Clone)]
pub struct SchedState {
    /// rr: the position (last chosen dest).
    rr: roundrobin::RrPos,
    /// wrr: IPVS's `struct ip_vs_wrr_mark`.
    wrr: roundrobin::WrrMark,
    /// queue: where the tie-breaking rotation starts (one past the last chosen).
    next: usize,
    /// lblc/lblcr: the destination-IP -> dest (set) table; empty for other kinds.
    locality: locality::Table,
}

impl SchedState {
    /// State for `kind`. For lblc/lblcr this pre-allocates a table of
    /// [`LOCALITY_DEFAULT_CAPACITY`] destination addresses with IPVS's default
    /// expiration ([`LBLC_DEFAULT_EXPIRATION_MS`], the `lblc_expiration` /
    /// `lblcr_expiration` sysctls).
    pub fn new(kind: SchedKind) -> SchedState {
        SchedState::with_locality(kind, LOCALITY_DEFAULT_CAPACITY, LBLC_DEFAULT_EXPIRATION_MS)
    }

    /// As [`SchedState::new`], with the lblc/lblcr table sized for `capacity` addresses
    /// and entries expiring after `expiration_ms` without use (for lblcr, also the time
    /// a set must stay unchanged before its most loaded member is dropped). Both are
    /// ignored by the other schedulers. Capacity 0: no table (lblc/lblcr then behave as
    /// wlc).
    pub fn with_locality(kind: SchedKind, capacity: usize, expiration_ms: u64) -> SchedState {
        let locality = match kind {
            SchedKind::Lblc | SchedKind::Lblcr => locality::Table::new(capacity, expiration_ms),
            _ => locality::Table::new(0, expiration_ms),
        };
        SchedState {
            rr: roundrobin::RrPos::default(),
            wrr: roundrobin::WrrMark::default(),
            next: 0,
            locality,
        }
    }

    /// Forgets positions and learned mappings (the dest list changed). Mirrors what
    /// IPVS does on a dest change, as far as it can without the new list (which
    /// [`schedule`] sees next):
    /// - rr: the position is kept on the same dest (found again by address and port at
    ///   the next [`schedule`]); if that dest is gone it moves to its predecessor, as
    ///   `ip_vs_rr_del_dest` does.
    /// - wrr: `ip_vs_wrr_dest_changed` runs at the next [`schedule`]: the position goes
    ///   back to the list head, `mw`/`di` are recomputed and `cw` is clipped to them.
    /// - lblc/lblcr: the table is emptied (IPVS keeps its entries, holding references
    ///   to removed dests; indices here would point at the wrong dests).
    /// - queue: the tie-breaking rotation restarts at the first dest.
    pub fn reset(&mut self, _kind: SchedKind) {
        self.rr.reset();
        self.wrr.reset();
        self.next = 0;
        self.locality.clear();
    }

    /// lblc/lblcr: how many destination addresses the table holds now.
    pub fn locality_len(&self) -> usize {
        self.locality.len()
    }

    /// lblc/lblcr: how many destination addresses the table can hold.
    pub fn locality_capacity(&self) -> usize {
        self.locality.capacity()
    }
}

/// Picks a destination index for a new connection, or `None` when no dest may take
/// it. `load` is indexed like `dests`.
///
/// Which input each scheduler reads: rr/wrr the dest list; lc/wlc `active` and
/// `inactive`; sed/nq `active`; lblc/lblcr `client.dst`, `active`, `inactive` and
/// `now_ms`; dh `client.dst`; sh `client.src`; maglev `client.hash`; queue `active`,
/// `inflight` and `resp_ewma_us`.
pub fn schedule(
    kind: SchedKind,
    tables: &SchedTables,
    state: &mut SchedState,
    dests: &[Dest],
    load: &[DestLoad],
    client: &Client,
    now_ms: u64,
) -> Option<usize> {
    match kind {
        SchedKind::Rr => roundrobin::rr(&mut state.rr, dests),
        SchedKind::Wrr => roundrobin::wrr(&mut state.wrr, dests),
        SchedKind::Lc => leastconn::lc(dests, load),
        SchedKind::Wlc => leastconn::wlc(dests, load),
        SchedKind::Sed => leastconn::sed(dests, load),
        SchedKind::Nq => leastconn::nq(dests, load),
        SchedKind::Lblc => locality::lblc(&mut state.locality, dests, load, &client.dst, now_ms),
        SchedKind::Lblcr => locality::lblcr(&mut state.locality, dests, load, &client.dst, now_ms),
        SchedKind::Dh => hashing::dh(tables, dests, &client.dst),
        SchedKind::Sh => hashing::sh(tables, dests, &client.src),
        SchedKind::Maglev => maglev(tables, dests, client.hash),
        SchedKind::Queue => queue::queue(tables, &mut state.next, dests, load),
    }
}

/// Maglev: `table[hash % M]`, if the tables are this generation's and that dest may
/// take connections (the table only holds such dests, so the check only matters for
/// stale tables).
fn maglev(tables: &SchedTables, dests: &[Dest], hash: u64) -> Option<usize> {
    if !tables.is_built_for(SchedKind::Maglev, dests) {
        return None;
    }
    let i = tables.maglev.lookup(hash)?;
    dests.get(i).filter(|d| eligible(d)).map(|_| i)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Helpers shared by the schedulers' tests.
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Dest `i` of backend `i`: 198.18.x.(i+1):80, usable, with weight `w`.
    pub fn dest(i: usize, w: u32) -> Dest {
        Dest {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, (i >> 8) as u8, (i & 0xff) as u8 + 1)),
            port: 80,
            backend: i as u16,
            weight: w,
            usable: true,
        }
    }

    /// Dests with these weights, one backend each.
    pub fn dests(weights: &[u32]) -> Vec<Dest> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| dest(i, w))
            .collect()
    }

    /// A load with these connection counts.
    pub fn ld(active: u32, inactive: u32) -> DestLoad {
        DestLoad {
            active,
            inactive,
            ..DestLoad::default()
        }
    }

    /// A client from 192.0.2.1:40000 to `dst`:80 with a 5-tuple hash `hash`.
    pub fn client_to(dst: IpAddr, hash: u64) -> Client {
        Client {
            src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            src_port: 40000,
            dst,
            dst_port: 80,
            hash,
        }
    }

    /// A client from `src`.
    pub fn client_from(src: IpAddr) -> Client {
        Client {
            src,
            src_port: 40000,
            dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            dst_port: 80,
            hash: 0,
        }
    }

    pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    pub fn v6(segs: [u16; 8]) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            segs[0], segs[1], segs[2], segs[3], segs[4], segs[5], segs[6], segs[7],
        ))
    }

    /// A small deterministic generator (xorshift64*), for property-style tests.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in SchedKind::ALL {
            assert_eq!(SchedKind::from_name(k.name()), Some(k));
        }
        assert_eq!(SchedKind::from_name("nope"), None);
    }

    #[test]
    fn every_scheduler_returns_none_without_usable_dests() {
        let mut ds = dests(&[1, 2, 3]);
        for d in &mut ds {
            d.usable = false;
        }
        let zero = dests(&[0, 0, 0]);
        let load = vec![DestLoad::default(); 3];
        let c = client_to(v4(198, 51, 100, 7), 12345);
        for k in SchedKind::ALL {
            for list in [&ds[..], &zero[..], &[][..]] {
                let t = SchedTables::build(k, list);
                let mut s = SchedState::new(k);
                for _ in 0..5 {
                    assert_eq!(schedule(k, &t, &mut s, list, &load, &c, 0), None, "{k:?}");
                }
            }
        }
    }

    #[test]
    fn every_scheduler_picks_the_only_usable_dest() {
        let mut ds = dests(&[5, 5, 5, 5]);
        ds[0].usable = false;
        ds[1].weight = 0;
        ds[3].usable = false;
        let load = vec![DestLoad::default(); 4];
        for k in SchedKind::ALL {
            let t = SchedTables::build(k, &ds);
            let mut s = SchedState::new(k);
            for h in 0..50u64 {
                // dh/sh/maglev map most keys to the unusable dests: None there, never
                // another dest.
                let c = client_to(v4(198, 51, 100, h as u8), h.wrapping_mul(0x9E37_79B9));
                let got = schedule(k, &t, &mut s, &ds, &load, &c, h);
                match k {
                    SchedKind::Dh | SchedKind::Sh => assert!(got.is_none() || got == Some(2)),
                    _ => assert_eq!(got, Some(2), "{k:?}"),
                }
            }
        }
    }

    #[test]
    fn a_short_load_slice_and_stale_tables_do_not_panic() {
        let ds = dests(&[1, 2, 3, 4]);
        let load = vec![ld(1, 1)];
        let c = client_to(v4(198, 51, 100, 9), 77);
        for k in SchedKind::ALL {
            let stale = SchedTables::build(k, &ds[..2]);
            let other = SchedTables::build(SchedKind::Rr, &ds);
            let mut s = SchedState::new(k);
            for t in [&stale, &other, &SchedTables::default()] {
                for now in 0..20 {
                    if let Some(i) = schedule(k, t, &mut s, &ds, &load, &c, now) {
                        assert!(i < ds.len());
                    }
                }
            }
            // A state made for another scheduler is not a crash either.
            let mut wrong = SchedState::new(SchedKind::Rr);
            let t = SchedTables::build(k, &ds);
            let _ = schedule(k, &t, &mut wrong, &ds, &load, &c, 0);
        }
    }

    #[test]
    fn schedule_keeps_its_state_buffers_in_place() {
        // Not an allocator hook (the crate denies unsafe, so no counting global
        // allocator): the pre-allocated lblc/lblcr table keeps its capacity and address
        // through many schedules, evictions and a reset.
        for k in [SchedKind::Lblc, SchedKind::Lblcr] {
            let ds = dests(&[1, 2, 3]);
            let load = vec![DestLoad::default(); 3];
            let t = SchedTables::build(k, &ds);
            let mut s = SchedState::with_locality(k, 64, LBLC_DEFAULT_EXPIRATION_MS);
            let (ptr, cap) = s.locality.buffer_identity();
            for i in 0..10_000u32 {
                let c = client_to(v4(198, 18, (i >> 8) as u8, i as u8), 0);
                assert!(schedule(k, &t, &mut s, &ds, &load, &c, u64::from(i)).is_some());
                if i == 5000 {
                    s.reset(k);
                }
            }
            assert_eq!(s.locality.buffer_identity(), (ptr, cap));
            assert_eq!(s.locality_len(), 64);
        }
    }
}
