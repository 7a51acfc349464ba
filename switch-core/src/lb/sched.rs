//! Schedulers: which destination (one software port of one backend) gets a new
//! connection.
//!
//! What it does: [`schedule`] picks among a service's [`Dest`]s by the service's
//! [`SchedKind`]: the ten Linux IPVS schedulers with IPVS's own semantics, Maglev
//! consistent hashing, and `queue`, the rate-of-processing scheduler of seed 003.
//!
//! What it guarantees: [`schedule`] never allocates, locks or blocks (it runs on the
//! workers, once per new connection); [`SchedTables::build`] and [`SchedState::new`] may
//! allocate and run on the slow path. Time is an input (`now_ms`).
//!
//! What it must not do: read clocks or look at packets.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

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
/// of a backend. The dests of one backend are consecutive in a service's list.
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

/// Per-service tables built on the slow path for one generation of the dest list.
#[derive(Debug, Clone, Default)]
pub struct SchedTables {}

impl SchedTables {
    /// Builds what `kind` needs for `dests` (may allocate).
    pub fn build(_kind: SchedKind, _dests: &[Dest]) -> SchedTables {
        SchedTables {}
    }
}

/// Per-worker, per-service mutable state. Allocated once by [`SchedState::new`];
/// [`schedule`] and [`SchedState::reset`] never allocate.
#[derive(Debug, Clone)]
pub struct SchedState {
    next: usize,
}

impl SchedState {
    /// State for `kind`.
    pub fn new(_kind: SchedKind) -> SchedState {
        SchedState { next: 0 }
    }

    /// Forgets positions and learned mappings (the dest list changed).
    pub fn reset(&mut self, _kind: SchedKind) {
        self.next = 0;
    }
}

/// Picks a destination index for a new connection, or `None` when no dest may take
/// it. `load` is indexed like `dests`.
pub fn schedule(
    _kind: SchedKind,
    _tables: &SchedTables,
    state: &mut SchedState,
    dests: &[Dest],
    _load: &[DestLoad],
    _client: &Client,
    _now_ms: u64,
) -> Option<usize> {
    let n = dests.len();
    for i in 0..n {
        let j = (state.next + i) % n;
        if dests[j].usable && dests[j].weight > 0 {
            state.next = j + 1;
            return Some(j);
        }
    }
    None
}

/// Smooths a response-time sample into the running figure (alpha 1/8, as TCP's SRTT);
/// an unknown (0) figure takes the sample.
pub fn ewma_update(old_us: u32, sample_us: u32) -> u32 {
    if old_us == 0 {
        return sample_us.max(1);
    }
    let v = (u64::from(old_us) * 7 + u64::from(sample_us)) / 8;
    v.clamp(1, u64::from(u32::MAX)) as u32
}
