//! The per-packet L2 decision: drop, forward to one port, or flood.
//!
//! What it does: [`classify`] looks at one frame's Ethernet header and
//! decides its fate from the ingress port's bridge and security policy, the
//! shared MAC table, and the worker's [`LearnCache`]; on the way it asks the
//! slow path to learn a new or moved source address through a
//! [`LearnRequest`]. The DPDK worker calls it per packet; tests call it on
//! plain byte vectors without EAL.
//!
//! What it guarantees: no allocation, no lock, no blocking, no logging; a
//! bounded amount of work per frame. The checks run in a fixed order
//! (truncated, no bridge, bad source, port security, learning, destination),
//! so a frame that fails several is counted under the first.
//!
//! What it must not do: write the MAC table. Only the slow path does; a worker
//! only reads it and hands out at most one learn request per frame.
//!
//! Bridges share one MAC table, so a MAC is assumed to live in one bridge at
//! a time. A destination found on a port of another bridge is treated as
//! unknown in this one: the frame is flooded within the ingress bridge, never
//! forwarded across bridges.

use crate::l2::security::PortSecurity;
use crate::l2::table::{MacTableReader, SourceCheck};
use crate::verdict::DropReason;
use crate::wire::ethernet;
use crate::{BridgeId, MacAddr, PortId};

/// The most ports a flood can reach (the size of the `flood_targets` array).
pub const MAX_FLOOD_PORTS: usize = 32;

/// How long (seconds) a [`LearnCache`] entry is trusted by [`classify`]. The
/// slow path applies learn requests within about a millisecond; two seconds
/// covers a busy slow path without letting a stale guess live long.
pub const LEARN_CACHE_TTL: u32 = 2;

/// One port's L2 configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortL2 {
    /// The bridge the port belongs to, if any.
    pub bridge: Option<BridgeId>,
    /// Which sources the port accepts, and whether it learns.
    pub security: PortSecurity,
}

/// Every port's L2 configuration, indexed by `PortId.0`. Workers hold a
/// snapshot; the slow path publishes a new one on change. Each port's flood
/// list (the other ports of its bridge) is computed here, when the snapshot is
/// built, not per frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2Ports {
    ports: Vec<PortL2>,
    flood: Vec<Vec<PortId>>,
}

impl L2Ports {
    /// Ports `0..ports.len()`, in order.
    pub fn new(ports: Vec<PortL2>) -> Self {
        let flood = (0..ports.len())
            .map(|i| match ports[i].bridge {
                None => Vec::new(),
                Some(b) => ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, p)| j != i && p.bridge == Some(b))
                    .map(|(j, _)| PortId(j as u16))
                    .take(MAX_FLOOD_PORTS)
                    .collect(),
            })
            .collect();
        L2Ports { ports, flood }
    }

    /// Every other port of `in_port`'s bridge, in port order (empty when
    /// `in_port` is in no bridge); at most [`MAX_FLOOD_PORTS`].
    #[inline]
    pub fn flood_list(&self, in_port: PortId) -> &[PortId] {
        self.flood
            .get(usize::from(in_port.0))
            .map_or(&[], Vec::as_slice)
    }

    /// The configuration of `port`, if it exists.
    pub fn get(&self, port: PortId) -> Option<&PortL2> {
        self.ports.get(usize::from(port.0))
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// True if there are no ports.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    fn bridge_of(&self, port: PortId) -> Option<BridgeId> {
        self.get(port).and_then(|p| p.bridge)
    }

    /// Fills `out` with every other port of `in_port`'s bridge, in port
    /// order, and returns how many. Zero if `in_port` is in no bridge. At most
    /// [`MAX_FLOOD_PORTS`]; ports beyond that are not flooded to.
    pub fn flood_targets(&self, in_port: PortId, out: &mut [PortId; MAX_FLOOD_PORTS]) -> usize {
        let l = self.flood_list(in_port);
        out[..l.len()].copy_from_slice(l);
        l.len()
    }

    /// Replaces `port`'s security policy; does nothing for an unknown port.
    pub fn set_security(&mut self, port: PortId, security: PortSecurity) {
        if let Some(p) = self.ports.get_mut(usize::from(port.0)) {
            p.security = security;
        }
    }
}

/// A request from a worker to the slow path: learn `mac` on `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LearnRequest {
    /// The source address seen.
    pub mac: MacAddr,
    /// The port it arrived on.
    pub port: PortId,
}

/// What [`classify`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Outcome {
    /// Send out of this port only.
    Forward(PortId),
    /// Send out of every other port of the ingress bridge
    /// ([`L2Ports::flood_targets`]).
    Flood,
    /// Free and count.
    Drop(DropReason),
}

const CACHE_SLOTS: usize = 256;

#[derive(Debug, Clone, Copy, Default)]
struct CacheEntry {
    mac: MacAddr,
    port: PortId,
    stamp: u32,
    valid: bool,
}

/// A worker's small direct-mapped memory of the MACs it asked the slow path
/// to learn.
///
/// Why: the slow path applies learn requests asynchronously (about 1 ms
/// later). Until then the worker (a) must not re-request the same MAC for
/// every packet, which would flood the request ring, and (b) can already
/// forward to a MAC it has seen, which makes forwarding deterministic for a
/// single worker (the reply to a flooded frame is forwarded, not flooded).
/// Direct-mapped with 256 slots: a collision only evicts a guess, costing at
/// worst one more request or one more flood. Entries older than the TTL
/// passed to [`LearnCache::lookup`] are ignored.
#[derive(Debug, Clone)]
pub struct LearnCache {
    entries: [CacheEntry; CACHE_SLOTS],
}

impl Default for LearnCache {
    fn default() -> Self {
        Self::new()
    }
}

impl LearnCache {
    /// An empty cache.
    pub fn new() -> Self {
        LearnCache {
            entries: [CacheEntry::default(); CACHE_SLOTS],
        }
    }

    fn slot(mac: MacAddr) -> usize {
        (mac.to_u64().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize
    }

    /// Remembers that `mac` was requested for `port` at `now`, evicting
    /// whatever shared its slot.
    pub fn insert(&mut self, mac: MacAddr, port: PortId, now: u32) {
        self.entries[Self::slot(mac)] = CacheEntry {
            mac,
            port,
            stamp: now,
            valid: true,
        };
    }

    /// The port remembered for `mac`, if set no more than `ttl` seconds
    /// before `now`.
    pub fn lookup(&self, mac: MacAddr, now: u32, ttl: u32) -> Option<PortId> {
        let e = &self.entries[Self::slot(mac)];
        (e.valid && e.mac == mac && now.wrapping_sub(e.stamp) <= ttl).then_some(e.port)
    }
}

/// Decides the L2 fate of `frame` arriving on `in_port` at `now` (coarse
/// seconds), and sets `*learn` when the slow path should learn the source.
///
/// Order of checks:
/// 1. shorter than 14 bytes: `Drop(Truncated)`;
/// 2. ingress port in no bridge (or unknown): `Drop(NoBridge)`;
/// 3. source multicast, broadcast or zero: `Drop(BadSrcMac)`;
/// 4. source not permitted by the port's security: `Drop(PortSecurity)`;
/// 5. if the port learns: a source that is unknown, or learned on another
///    port, yields a [`LearnRequest`] unless this worker already asked for
///    the same port within [`LEARN_CACHE_TTL`];
/// 6. destination multicast/broadcast: `Flood`; else the table, then the
///    cache: found on `in_port` is `Drop(Hairpin)`, found on another port of
///    the same bridge is `Forward`, anything else is `Flood`.
///
/// A `Flood` whose bridge has no other port is `Drop(NoBridge)` instead.
/// `*learn` is left untouched when there is nothing to learn.
pub fn classify(
    frame: &[u8],
    in_port: PortId,
    ports: &L2Ports,
    table: &MacTableReader,
    cache: &mut LearnCache,
    now: u32,
    learn: &mut Option<LearnRequest>,
) -> L2Outcome {
    let Ok(eth) = ethernet::EthernetFrame::new_checked(frame) else {
        // Only a frame under 14 bytes, or a tagged one under 18, fails.
        return L2Outcome::Drop(DropReason::Truncated);
    };
    let Some(port) = ports.get(in_port) else {
        return L2Outcome::Drop(DropReason::NoBridge);
    };
    let Some(bridge) = port.bridge else {
        return L2Outcome::Drop(DropReason::NoBridge);
    };

    let src = eth.src_addr();
    if src.is_multicast() || src.is_zero() {
        return L2Outcome::Drop(DropReason::BadSrcMac);
    }
    if !port.security.permits(src) {
        return L2Outcome::Drop(DropReason::PortSecurity);
    }

    if port.security.learning() {
        match table.check_source(src, in_port, now) {
            SourceCheck::Known | SourceCheck::Static { .. } => {}
            SourceCheck::Unknown | SourceCheck::Moved { .. } => {
                if cache.lookup(src, now, LEARN_CACHE_TTL) != Some(in_port) {
                    *learn = Some(LearnRequest {
                        mac: src,
                        port: in_port,
                    });
                    cache.insert(src, in_port, now);
                }
            }
        }
    }

    let dst = eth.dst_addr();
    let flood = || {
        if ports.flood_list(in_port).is_empty() {
            L2Outcome::Drop(DropReason::NoBridge)
        } else {
            L2Outcome::Flood
        }
    };
    if dst.is_multicast() {
        return flood();
    }
    let found = table
        .lookup(dst)
        .or_else(|| cache.lookup(dst, now, LEARN_CACHE_TTL));
    match found {
        Some(p) if p == in_port => L2Outcome::Drop(DropReason::Hairpin),
        Some(p) if ports.bridge_of(p) == Some(bridge) => L2Outcome::Forward(p),
        _ => flood(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l2::table::{mac_table, LearnOutcome, MacTableWriter};

    const A: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
    const B: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
    const C: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0c]);

    fn frame(src: MacAddr, dst: MacAddr) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(src.0, dst.0)
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .udp(1000, 2000);
        let mut out = Vec::new();
        b.write(&mut out, b"payload").unwrap();
        out
    }

    fn open(bridge: Option<u16>) -> PortL2 {
        PortL2 {
            bridge: bridge.map(BridgeId),
            security: PortSecurity::open(),
        }
    }

    /// Ports 0, 1, 2 in br0; port 3 in br1; port 4 in no bridge; port 5 alone in br2.
    fn ports() -> L2Ports {
        L2Ports::new(vec![
            open(Some(0)),
            open(Some(0)),
            open(Some(0)),
            open(Some(1)),
            open(None),
            open(Some(2)),
        ])
    }

    struct Worker {
        ports: L2Ports,
        writer: MacTableWriter,
        reader: MacTableReader,
        cache: LearnCache,
        requests: Vec<LearnRequest>,
    }

    impl Worker {
        fn new(ports: L2Ports) -> Self {
            let (writer, reader) = mac_table(256);
            Worker {
                ports,
                writer,
                reader,
                cache: LearnCache::new(),
                requests: Vec::new(),
            }
        }

        fn rx(&mut self, f: &[u8], port: u16, now: u32) -> L2Outcome {
            let mut learn = None;
            let out = classify(
                f,
                PortId(port),
                &self.ports,
                &self.reader,
                &mut self.cache,
                now,
                &mut learn,
            );
            self.requests.extend(learn);
            out
        }

        /// The slow path applying the queued learn requests.
        fn apply_learns(&mut self, now: u32) {
            for r in self.requests.drain(..) {
                self.writer.learn(r.mac, r.port, now);
            }
        }
    }

    #[test]
    fn short_frame_is_truncated() {
        let mut w = Worker::new(ports());
        let f = frame(A, B);
        for len in 0..14 {
            assert_eq!(
                w.rx(&f[..len], 0, 0),
                L2Outcome::Drop(DropReason::Truncated)
            );
        }
        assert!(w.requests.is_empty());
    }

    #[test]
    fn port_without_bridge_or_unknown_port_is_no_bridge() {
        let mut w = Worker::new(ports());
        assert_eq!(
            w.rx(&frame(A, B), 4, 0),
            L2Outcome::Drop(DropReason::NoBridge)
        );
        assert_eq!(
            w.rx(&frame(A, B), 99, 0),
            L2Outcome::Drop(DropReason::NoBridge)
        );
        assert!(w.requests.is_empty());
    }

    #[test]
    fn lone_port_in_bridge_cannot_flood() {
        let mut w = Worker::new(ports());
        assert_eq!(
            w.rx(&frame(A, MacAddr::BROADCAST), 5, 0),
            L2Outcome::Drop(DropReason::NoBridge)
        );
    }

    #[test]
    fn multicast_broadcast_or_zero_source_is_bad_src_mac() {
        let mut w = Worker::new(ports());
        for src in [
            MacAddr::BROADCAST,
            MacAddr([0x01, 0, 0x5e, 0, 0, 1]),
            MacAddr::ZERO,
        ] {
            assert_eq!(
                w.rx(&frame(src, B), 0, 0),
                L2Outcome::Drop(DropReason::BadSrcMac)
            );
        }
        assert!(w.requests.is_empty());
    }

    #[test]
    fn source_not_allowed_is_port_security_drop() {
        let mut p = ports();
        p.set_security(PortId(0), PortSecurity::restricted(vec![A]).unwrap());
        let mut w = Worker::new(p);
        assert_eq!(
            w.rx(&frame(B, A), 0, 0),
            L2Outcome::Drop(DropReason::PortSecurity)
        );
        assert!(w.requests.is_empty());
        assert_eq!(w.rx(&frame(A, B), 0, 0), L2Outcome::Flood);
        assert_eq!(
            w.requests,
            [LearnRequest {
                mac: A,
                port: PortId(0)
            }]
        );
    }

    #[test]
    fn unknown_unicast_and_broadcast_flood() {
        let mut w = Worker::new(ports());
        assert_eq!(w.rx(&frame(A, B), 0, 0), L2Outcome::Flood);
        assert_eq!(w.rx(&frame(A, MacAddr::BROADCAST), 0, 0), L2Outcome::Flood);
        assert_eq!(
            w.rx(&frame(A, MacAddr([0x33, 0x33, 0, 0, 0, 1])), 0, 0),
            L2Outcome::Flood
        );
    }

    #[test]
    fn learning_then_forward_with_a_single_cache() {
        let mut w = Worker::new(ports());
        // A on port 0 talks to unknown B: flood, and one request for A.
        assert_eq!(w.rx(&frame(A, B), 0, 0), L2Outcome::Flood);
        assert_eq!(
            w.requests,
            [LearnRequest {
                mac: A,
                port: PortId(0)
            }]
        );
        // A again before the slow path ran: no second request.
        assert_eq!(w.rx(&frame(A, B), 0, 0), L2Outcome::Flood);
        assert_eq!(w.requests.len(), 1);
        // B answers from port 1: forwarded to A through the cache alone.
        assert_eq!(w.rx(&frame(B, A), 1, 0), L2Outcome::Forward(PortId(0)));
        assert_eq!(w.requests.len(), 2);
        // And A to B is now forwarded too.
        assert_eq!(w.rx(&frame(A, B), 0, 0), L2Outcome::Forward(PortId(1)));
        // The slow path applies the requests; from then on the table answers,
        // sources are Known, and no request is made.
        w.apply_learns(0);
        assert_eq!(w.writer.len(), 2);
        w.cache = LearnCache::new();
        assert_eq!(w.rx(&frame(A, B), 0, 10), L2Outcome::Forward(PortId(1)));
        assert_eq!(w.rx(&frame(B, A), 1, 10), L2Outcome::Forward(PortId(0)));
        assert!(w.requests.is_empty());
    }

    #[test]
    fn destination_on_ingress_port_is_hairpin() {
        let mut w = Worker::new(ports());
        w.writer.learn(B, PortId(0), 0);
        assert_eq!(
            w.rx(&frame(A, B), 0, 0),
            L2Outcome::Drop(DropReason::Hairpin)
        );
        // Same through the cache only.
        let mut w = Worker::new(ports());
        w.rx(&frame(C, A), 2, 0);
        assert_eq!(
            w.rx(&frame(B, C), 2, 0),
            L2Outcome::Drop(DropReason::Hairpin)
        );
    }

    #[test]
    fn learning_disabled_makes_no_request_and_no_cache_entry() {
        let mut p = ports();
        p.set_security(PortId(0), PortSecurity::open().with_learning(false));
        let mut w = Worker::new(p);
        assert_eq!(w.rx(&frame(A, B), 0, 0), L2Outcome::Flood);
        assert!(w.requests.is_empty());
        // B cannot reach A: nobody knows where A is.
        assert_eq!(w.rx(&frame(B, A), 1, 0), L2Outcome::Flood);
        assert_eq!(
            w.requests,
            [LearnRequest {
                mac: B,
                port: PortId(1)
            }]
        );
    }

    #[test]
    fn moved_source_is_requested_once() {
        let mut w = Worker::new(ports());
        assert_eq!(w.writer.learn(A, PortId(0), 0), LearnOutcome::Learned);
        w.rx(&frame(A, B), 1, 0);
        w.rx(&frame(A, B), 1, 0);
        assert_eq!(
            w.requests,
            [LearnRequest {
                mac: A,
                port: PortId(1)
            }]
        );
        w.apply_learns(0);
        assert_eq!(w.writer.moves(), 1);
        assert_eq!(w.reader.lookup(A), Some(PortId(1)));
    }

    #[test]
    fn static_source_is_not_learned_even_on_another_port() {
        let mut w = Worker::new(ports());
        w.writer.add_static(A, PortId(2));
        assert_eq!(w.rx(&frame(A, B), 0, 0), L2Outcome::Flood);
        assert!(w.requests.is_empty());
    }

    #[test]
    fn learn_request_repeats_after_cache_ttl() {
        let mut w = Worker::new(ports());
        w.rx(&frame(A, B), 0, 100);
        w.rx(&frame(A, B), 0, 100 + LEARN_CACHE_TTL);
        assert_eq!(w.requests.len(), 1);
        w.rx(&frame(A, B), 0, 101 + LEARN_CACHE_TTL);
        assert_eq!(w.requests.len(), 2);
    }

    #[test]
    fn destination_in_another_bridge_is_flooded_not_forwarded() {
        let mut w = Worker::new(ports());
        w.writer.learn(C, PortId(3), 0);
        assert_eq!(w.rx(&frame(A, C), 0, 0), L2Outcome::Flood);
    }

    #[test]
    fn vlan_tagged_frame_is_classified_by_its_macs() {
        let b = etherparse::PacketBuilder::ethernet2(A.0, B.0)
            .single_vlan(etherparse::VlanId::try_new(10).unwrap())
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .udp(1, 2);
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        let mut w = Worker::new(ports());
        w.writer.learn(B, PortId(2), 0);
        assert_eq!(w.rx(&f, 0, 0), L2Outcome::Forward(PortId(2)));
        // A tagged frame cut inside its tag is truncated.
        assert_eq!(w.rx(&f[..16], 0, 0), L2Outcome::Drop(DropReason::Truncated));
    }

    #[test]
    fn flood_targets_are_the_other_ports_of_the_bridge() {
        let p = ports();
        let mut out = [PortId(0); MAX_FLOOD_PORTS];
        let n = p.flood_targets(PortId(1), &mut out);
        assert_eq!(&out[..n], &[PortId(0), PortId(2)]);
        assert_eq!(p.flood_targets(PortId(3), &mut out), 0);
        assert_eq!(p.flood_targets(PortId(4), &mut out), 0);
        assert_eq!(p.flood_targets(PortId(77), &mut out), 0);
        let many = L2Ports::new((0..40).map(|_| open(Some(0))).collect());
        assert_eq!(many.flood_targets(PortId(0), &mut out), MAX_FLOOD_PORTS);
        assert!(!out.contains(&PortId(0)));
    }

    #[test]
    fn learn_cache_ttl_and_eviction() {
        let mut c = LearnCache::new();
        assert_eq!(c.lookup(A, 0, 2), None);
        c.insert(A, PortId(1), 10);
        assert_eq!(c.lookup(A, 12, 2), Some(PortId(1)));
        assert_eq!(c.lookup(A, 13, 2), None);
        assert_eq!(c.lookup(B, 10, 2), None);
        // Zero MAC never matches an empty slot.
        assert_eq!(c.lookup(MacAddr::ZERO, 0, 2), None);
    }
}
