//! What the slow path publishes for the workers: every balanced service, ready to use.
//!
//! What it does: [`LbTable`] is an immutable snapshot (the slow path builds a new one on
//! every change and swaps it in; workers load it once per poll round). Services sit in
//! fixed slots ([`MAX_SERVICES`]); each has its destinations in fixed indices
//! ([`MAX_DESTS`] at most), so per-destination counters kept by the workers stay valid
//! across changes: a removed destination leaves a hole (weight 0, unusable) rather than
//! shifting the others.
//!
//! What it guarantees: [`LbTable::service_for`] never allocates (a scan of a short array
//! of the services' addresses).

use std::net::IpAddr;

use super::sched::{Dest, SchedKind, SchedTables};
use crate::flow::key::FlowKey;
use crate::{MacAddr, PortId};

/// Service slots.
pub const MAX_SERVICES: usize = 64;
/// Destination indices per service.
pub const MAX_DESTS: usize = 256;

/// How frames reach a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarding {
    /// Address and port rewritten, replies rewritten back.
    Nat,
    /// Destination MAC rewritten only.
    Dr,
}

/// Where a destination is on the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DestPort {
    pub mac: MacAddr,
    pub port: PortId,
}

/// One service, as the workers use it.
#[derive(Debug, Clone)]
pub struct ServiceRt {
    /// Unique for the service's lifetime (a slot reused by another service gets a new
    /// id: workers reset their counts for the slot when it changes).
    pub id: u32,
    /// Bumped on every change of the service (workers reset their scheduler state).
    pub gen: u32,
    pub vip: IpAddr,
    pub proto: u8,
    pub port: u16,
    pub port_end: u16,
    pub mode: Forwarding,
    pub sched: SchedKind,
    /// By destination index; holes are unusable with weight 0.
    pub dests: Vec<Dest>,
    /// Same indices as `dests`.
    pub dest_ports: Vec<DestPort>,
    pub tables: SchedTables,
    pub idle_us: u64,
    pub linger_us: u64,
    /// Launch on demand: how long a new connection is held when no destination can
    /// take it (0: refused at once), and how many a worker holds at most.
    pub hold_us: u64,
    pub hold_max: u32,
}

/// The balancer's published state.
#[derive(Debug, Clone)]
pub struct LbTable {
    /// The MAC the switch answers ARP/ND for service addresses with, and sends
    /// balanced frames from.
    pub mac: MacAddr,
    /// By slot.
    pub services: Vec<Option<ServiceRt>>,
    /// (address, protocol, first port, last port, slot) of every service: the per-packet
    /// match scans this short array.
    index: Vec<(IpAddr, u8, u16, u16, u16)>,
    /// The switch's own addresses for the balancer (health checks come from them): their
    /// frames go to the slow path, and ARP/ND for them is answered.
    own: Vec<IpAddr>,
    /// The uplink team towards the world (empty: none); see [`LbTable::client_port`].
    pub uplinks: Uplinks,
}

/// How a connection's replies pick their uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UplinkSelect {
    /// By the connection's L4 hash: stable, spread evenly, no state.
    #[default]
    Hash,
    /// The uplink with the least load (the slow path's measure, in [`Uplinks::load`])
    /// when the connection is made.
    Load,
}

/// Ports that lead to the same world (a team, as a LAG's members): a client whose
/// connection came in on one of them gets its replies on the one the team's rule picks
/// for that connection, kept for the connection's life.
#[derive(Debug, Clone, Default)]
pub struct Uplinks {
    pub ports: Vec<PortId>,
    pub select: UplinkSelect,
    /// Load per member (same order), written by the slow path, read by the workers:
    /// frames sent per measuring interval.
    pub load: std::sync::Arc<[std::sync::atomic::AtomicU64]>,
}

impl LbTable {
    /// A table with the given services (by slot; at most [`MAX_SERVICES`]).
    pub fn new(mac: MacAddr, services: Vec<Option<ServiceRt>>) -> LbTable {
        let index = services
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .map(|s| (s.vip, s.proto, s.port, s.port_end, i as u16))
            })
            .collect();
        LbTable {
            mac,
            services,
            index,
            own: Vec::new(),
            uplinks: Uplinks::default(),
        }
    }

    /// The same table with an uplink team.
    pub fn with_uplinks(mut self, uplinks: Uplinks) -> LbTable {
        self.uplinks = uplinks;
        self
    }

    /// The port a new connection's replies go out of: `in_port` itself, or when it is a
    /// member of the uplink team, the member the team's rule picks (`hash`: the
    /// connection's L4 hash).
    pub fn client_port(&self, in_port: PortId, hash: u64) -> PortId {
        let team = &self.uplinks.ports;
        if team.len() < 2 || !team.contains(&in_port) {
            return in_port;
        }
        match self.uplinks.select {
            UplinkSelect::Hash => team[((hash >> 32) % team.len() as u64) as usize],
            UplinkSelect::Load => {
                let load = |i: usize| {
                    self.uplinks
                        .load
                        .get(i)
                        .map_or(0, |l| l.load(std::sync::atomic::Ordering::Relaxed))
                };
                // Least loaded; among equals, the hash spreads.
                let start = ((hash >> 32) % team.len() as u64) as usize;
                let mut best = start;
                for k in 1..team.len() {
                    let i = (start + k) % team.len();
                    if load(i) < load(best) {
                        best = i;
                    }
                }
                team[best]
            }
        }
    }

    /// The same table with the switch's own balancer addresses.
    pub fn with_own(mut self, own: Vec<IpAddr>) -> LbTable {
        self.own = own;
        self
    }

    /// True if `ip` is one of the switch's own balancer addresses.
    #[inline]
    pub fn is_own(&self, ip: IpAddr) -> bool {
        !self.own.is_empty() && self.own.contains(&ip)
    }

    /// True when no service exists (workers skip the balancer).
    pub fn is_empty(&self) -> bool {
        self.index.is_empty() && self.own.is_empty()
    }

    /// The service a client's frame is for.
    #[inline]
    pub fn service_for(&self, key: &FlowKey) -> Option<(u16, &ServiceRt)> {
        let dst = key.dst_ip();
        let &(_, _, _, _, slot) = self.index.iter().find(|&&(ip, proto, lo, hi, _)| {
            proto == key.proto && (lo..=hi).contains(&key.dst_port) && ip == dst
        })?;
        self.services
            .get(usize::from(slot))?
            .as_ref()
            .map(|s| (slot, s))
    }

    /// True if `ip` is a service address or one of the switch's own balancer addresses
    /// (the switch answers ARP/ND for it).
    pub fn is_vip(&self, ip: IpAddr) -> bool {
        self.index.iter().any(|e| e.0 == ip) || self.own.contains(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn table(select: UplinkSelect) -> LbTable {
        LbTable::new(MacAddr([2, 0, 0, 0, 0, 1]), vec![]).with_uplinks(Uplinks {
            ports: vec![PortId(0), PortId(5)],
            select,
            load: (0..2).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    #[test]
    fn a_team_member_gets_replies_spread_by_hash_and_others_keep_their_port() {
        let t = table(UplinkSelect::Hash);
        assert_eq!(t.client_port(PortId(3), 7), PortId(3));
        let picks: Vec<PortId> = (0..64u64)
            .map(|i| t.client_port(PortId(0), i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
            .collect();
        let fives = picks.iter().filter(|p| **p == PortId(5)).count();
        assert!(
            (16..=48).contains(&fives),
            "{fives} of 64 on the second uplink"
        );
        assert!(picks.iter().all(|p| *p == PortId(0) || *p == PortId(5)));
    }

    #[test]
    fn by_load_the_least_loaded_member_is_picked() {
        let t = table(UplinkSelect::Load);
        t.uplinks.load[0].store(100, Ordering::Relaxed);
        t.uplinks.load[1].store(5, Ordering::Relaxed);
        for h in 0..16u64 {
            assert_eq!(t.client_port(PortId(0), h << 32), PortId(5));
        }
    }
}
