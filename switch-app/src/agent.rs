//! The switch's end of the in-band agent protocol (docs/agent-protocol.md), on the slow
//! path: it answers ARP and neighbour solicitation for the service address, one-hop
//! discovery probes (only those that arrived with TTL / hop limit 1: figure 5C), stitch
//! requests from shells (the same lifecycle as the control socket), and sends teardown
//! messages to the agents (figures 4B-4E). Every datagram is authenticated; anything
//! unauthenticated, malformed or replayed is dropped and counted, never acted on.
//!
//! Workers only recognise frames for the service address ([`for_agent`]) and punt them;
//! everything here runs on the main lcore.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use agent_proto::{
    error_code, open, seal, CapFlags, Capabilities, EndKind, HeaderFields, Keyring, Message,
    ReplayGuard, Reply, ReplyCache, Side, TeardownMsg,
};
use dpdk::{Mbuf, Mempool};
use serde_json::{json, Value};
use stitch_control::protocol::{
    LegA, LegB, PerEndpoint, PerLeg, Proto, StitchCommitParams, StitchPrepareParams, Teardown,
};
use switch_core::flow::key::parse_flow;
use switch_core::{MacAddr, PortId};

use crate::config::AgentConfig;
use crate::stitch::manager::{Io, SlowTx, Stitcher};

/// What the workers need to recognise frames for the service address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentAddrs {
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub port: u16,
    pub mac: MacAddr,
}

const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;

/// True for a frame the slow path's agent must see: ARP for the service IPv4 address,
/// an IPv6 neighbour solicitation for the service IPv6 address, or UDP to the service
/// port at the service address (or broadcast / all-nodes, for probes that do not know
/// it). Cheap: a few byte compares on untagged frames, no allocation.
#[inline]
pub fn for_agent(f: &[u8], a: &AgentAddrs) -> bool {
    if f.len() < 42 {
        return false;
    }
    let et = u16::from_be_bytes([f[12], f[13]]);
    match et {
        ETH_ARP => a
            .ipv4
            .is_some_and(|ip| f.len() >= 42 && f[38..42] == ip.octets()),
        ETH_IPV4 => {
            let Some(ip) = a.ipv4 else { return false };
            let ihl = usize::from(f[14] & 0x0f) * 4;
            if f[23] != 17 || f.len() < 14 + ihl + 8 || ihl < 20 {
                return false;
            }
            let dst = &f[30..34];
            let dport = u16::from_be_bytes([f[14 + ihl + 2], f[14 + ihl + 3]]);
            dport == a.port && (dst == ip.octets() || dst == [255, 255, 255, 255])
        }
        ETH_IPV6 => {
            let Some(ip) = a.ipv6 else { return false };
            if f.len() < 62 {
                return false;
            }
            let next = f[20];
            let dst = &f[38..54];
            if next == 58 && f.len() >= 78 && f[54] == 135 {
                return f[62..78] == ip.octets();
            }
            let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
            next == 17
                && u16::from_be_bytes([f[56], f[57]]) == a.port
                && (dst == ip.octets() || dst == all_nodes)
        }
        _ => false,
    }
}

/// Something the agents must be told about a stitch (figures 4B-4E; RST, idle, delete).
#[derive(Debug, Clone)]
pub struct AgentNotice {
    pub stitch_id: u32,
    pub from: Side,
    pub kind: EndKind,
    pub variant: Teardown,
    pub legs: [SocketAddr; 4],
    pub bytes: (u64, u64),
    /// Where the shell (A1) and the core (B) are: MAC and port, when known.
    pub shell: (MacAddr, Option<PortId>),
    pub core: (MacAddr, Option<PortId>),
    /// Who gets a message.
    pub to: Vec<Side>,
}

/// A teardown message waiting for its acknowledgment.
struct Pending {
    request_id: u64,
    msg: Message,
    mac: MacAddr,
    from: SocketAddr,
    to: SocketAddr,
    port: Option<PortId>,
    /// Sends so far (the first included).
    tries: u32,
    next_at: u64,
}

/// The agent endpoint's state.
pub struct Agent {
    addrs: AgentAddrs,
    agent_port: u16,
    keys: Keyring,
    out_key: u32,
    guard: ReplayGuard,
    cache: ReplyCache,
    require_ttl1: bool,
    switch_id: String,
    nonce_seed: [u8; 8],
    nonce_ctr: u64,
    next_request: u64,
    pending: Vec<Pending>,
    /// Ports a frame may need to go out of when the destination's port is unknown.
    all_ports: Vec<PortId>,
    counters: BTreeMap<&'static str, u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn teardown_of(t: agent_proto::Teardown) -> Option<Teardown> {
    Some(match t {
        agent_proto::Teardown::B => Teardown::B,
        agent_proto::Teardown::C => Teardown::C,
        agent_proto::Teardown::D => Teardown::D,
        agent_proto::Teardown::E => Teardown::E,
        agent_proto::Teardown::Unknown(_) => return None,
    })
}

fn teardown_to(t: Teardown) -> agent_proto::Teardown {
    match t {
        Teardown::B => agent_proto::Teardown::B,
        Teardown::C => agent_proto::Teardown::C,
        Teardown::D => agent_proto::Teardown::D,
        Teardown::E => agent_proto::Teardown::E,
    }
}

impl Agent {
    /// Builds the endpoint from `[agent]`.
    ///
    /// # Errors
    /// A key that is not 64 hex digits.
    pub fn new(cfg: &AgentConfig, all_ports: Vec<PortId>) -> Result<Agent, String> {
        let mut keys = Keyring::new();
        for k in &cfg.keys {
            keys.add_hex(k.id, &k.key)
                .map_err(|e| format!("agent key {}: {e}", k.id))?;
        }
        let mut seed = [0u8; 8];
        if let Ok(b) = std::fs::read("/proc/sys/kernel/random/uuid") {
            for (i, x) in b.iter().enumerate() {
                seed[i % 8] ^= x.wrapping_mul(i as u8 | 1);
            }
        }
        seed[..8]
            .iter_mut()
            .zip(now_ms().to_le_bytes())
            .for_each(|(a, b)| *a ^= b);
        Ok(Agent {
            addrs: AgentAddrs {
                ipv4: cfg.ipv4,
                ipv6: cfg.ipv6,
                port: cfg.port,
                mac: cfg.mac,
            },
            agent_port: cfg.agent_port,
            keys,
            out_key: cfg.keys[0].id,
            guard: ReplayGuard::new(65536),
            cache: ReplyCache::new(65536),
            require_ttl1: cfg.require_ttl1,
            switch_id: cfg.switch_id.clone(),
            nonce_seed: seed,
            nonce_ctr: 0,
            next_request: u64::from_le_bytes(seed) | 1,
            pending: Vec::new(),
            all_ports,
            counters: BTreeMap::new(),
        })
    }

    /// The addresses workers match against.
    pub fn addrs(&self) -> AgentAddrs {
        self.addrs
    }

    fn count(&mut self, what: &'static str) {
        *self.counters.entry(what).or_default() += 1;
    }

    /// Counters for `stats.get`.
    pub fn stats(&self) -> Value {
        json!({"counters": self.counters, "pending_teardowns": self.pending.len()})
    }

    fn nonce(&mut self) -> [u8; 16] {
        self.nonce_ctr += 1;
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&self.nonce_seed);
        n[8..].copy_from_slice(&self.nonce_ctr.to_be_bytes());
        n
    }

    /// Handles one punted frame.
    pub fn on_frame(&mut self, m: Mbuf, stitcher: &mut Stitcher, io: &mut Io<'_>) {
        let port = PortId(m.port());
        let f = m.data();
        if f.len() < 14 {
            return self.count("truncated");
        }
        match u16::from_be_bytes([f[12], f[13]]) {
            ETH_ARP => self.on_arp(f, port, io.tx, io.pool),
            ETH_IPV6 if f.len() >= 55 && f[20] == 58 => self.on_ns(f, port, io.tx, io.pool),
            _ => self.on_udp(f, port, stitcher, io),
        }
    }

    fn on_arp(&mut self, f: &[u8], port: PortId, tx: &SlowTx, pool: &Mempool) {
        let Some(ip) = self.addrs.ipv4 else { return };
        match crate::neighbor::arp_reply(f, self.addrs.mac, ip) {
            Some(r) => {
                self.send_frame(&r, Some(port), tx, pool);
                self.count("arp_replies");
            }
            None => self.count("arp_ignored"),
        }
    }

    fn on_ns(&mut self, f: &[u8], port: PortId, tx: &SlowTx, pool: &Mempool) {
        let Some(ip) = self.addrs.ipv6 else { return };
        match crate::neighbor::na_reply(f, self.addrs.mac, ip) {
            Some(r) => {
                self.send_frame(&r, Some(port), tx, pool);
                self.count("nd_replies");
            }
            None => self.count("nd_ignored"),
        }
    }

    fn send_frame(&mut self, frame: &[u8], port: Option<PortId>, tx: &SlowTx, pool: &Mempool) {
        let ports: Vec<PortId> = match port {
            Some(p) => vec![p],
            None => self.all_ports.clone(),
        };
        for p in ports {
            match Mbuf::from_slice(pool, frame) {
                Ok(m) => tx.send(p, m),
                Err(_) => self.count("no_mbuf"),
            }
        }
    }

    /// A UDP frame from `our` address to `to` (MAC, IP, UDP port).
    fn udp_frame(
        &self,
        to_mac: MacAddr,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let eth = etherparse::PacketBuilder::ethernet2(self.addrs.mac.0, to_mac.0);
        let mut out = Vec::with_capacity(payload.len() + 66);
        match (from.ip(), to.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth
                .ipv4(s.octets(), d.octets(), 64)
                .udp(from.port(), to.port())
                .write(&mut out, payload)
                .ok()?,
            (IpAddr::V6(s), IpAddr::V6(d)) => eth
                .ipv6(s.octets(), d.octets(), 64)
                .udp(from.port(), to.port())
                .write(&mut out, payload)
                .ok()?,
            _ => return None,
        }
        Some(out)
    }

    fn on_udp(&mut self, f: &[u8], port: PortId, stitcher: &mut Stitcher, io: &mut Io<'_>) {
        let Some(l4) = parse_flow(f) else {
            return self.count("malformed");
        };
        if l4.key.proto != 17 {
            return self.count("malformed");
        }
        let ttl = if l4.key.is_v6() {
            f[l4.l3_offset + 7]
        } else {
            f[l4.l3_offset + 8]
        };
        let payload = &f[l4.l4_offset + 8..l4.l4_offset + 8 + l4.payload_len];
        let peer_mac = MacAddr([f[6], f[7], f[8], f[9], f[10], f[11]]);
        let peer = SocketAddr::new(l4.key.src_ip(), l4.key.src_port);
        let now = now_ms();
        let opened = match open(payload, &self.keys, &mut self.guard, now) {
            Ok(o) => o,
            Err(e) => return self.count(e.counter_name()),
        };
        let hdr = opened.header;
        let ours = match peer.ip() {
            IpAddr::V4(_) => self.addrs.ipv4.map(IpAddr::V4),
            IpAddr::V6(_) => self.addrs.ipv6.map(IpAddr::V6),
        };
        let Some(our_ip) = ours else {
            return self.count("wrong_family");
        };
        let us = SocketAddr::new(our_ip, self.addrs.port);
        if let Message::Reply(_) = &opened.msg {
            // An agent acknowledging a teardown message.
            let before = self.pending.len();
            self.pending.retain(|p| p.request_id != hdr.request_id);
            return self.count(if self.pending.len() < before {
                "teardown_acked"
            } else {
                "stray_reply"
            });
        }
        if let Some(cached) = self.cache.get(hdr.key_id, hdr.request_id, now) {
            let cached = cached.to_vec();
            if let Some(fr) = self.udp_frame(peer_mac, us, peer, &cached) {
                self.send_frame(&fr, Some(port), io.tx, io.pool);
            }
            return self.count("duplicate_answered_from_cache");
        }
        let answer = match opened.msg {
            Message::Probe(_) => {
                if self.require_ttl1 && ttl != 1 {
                    return self.count("probe_ttl_not_1");
                }
                self.count("probes_answered");
                let flags = CapFlags::TCP
                    | CapFlags::UDP
                    | CapFlags::IPV4
                    | CapFlags::IPV6
                    | CapFlags::TEARDOWN_4B
                    | CapFlags::TEARDOWN_4C
                    | CapFlags::TEARDOWN_4D
                    | CapFlags::TEARDOWN_4E;
                Message::ProbeReply(Capabilities {
                    flags,
                    free_flows: stitcher.free_stitches(),
                    request_addr: us,
                    switch_id: self.switch_id.clone(),
                })
            }
            Message::Prepare(p) => {
                self.count("prepare");
                let (Some(teardown), proto) = (teardown_of(p.teardown), p.proto) else {
                    return self.reply_err(
                        peer_mac,
                        us,
                        peer,
                        port,
                        hdr,
                        None,
                        error_code::UNSUPPORTED,
                        "unknown teardown variant",
                        io,
                    );
                };
                let proto = match proto {
                    agent_proto::Proto::Tcp => Proto::Tcp,
                    agent_proto::Proto::Udp => Proto::Udp,
                    agent_proto::Proto::Unknown(_) => {
                        return self.reply_err(
                            peer_mac,
                            us,
                            peer,
                            port,
                            hdr,
                            None,
                            error_code::UNSUPPORTED,
                            "unknown protocol",
                            io,
                        )
                    }
                };
                let params = StitchPrepareParams {
                    leg_a: LegA {
                        client: p.client,
                        shell: p.shell_a,
                    },
                    leg_b: LegB {
                        shell: p.shell_b,
                        core: p.core,
                    },
                    proto,
                    teardown,
                    idle_timeout: p.idle_timeout_s,
                    linger: p.linger_s,
                };
                result(
                    stitcher
                        .prepare(params)
                        .map(|v| v["id"].as_u64().map(|x| x as u32)),
                    None,
                )
            }
            Message::Freeze { stitch_id } => result(
                stitcher.freeze(stitch_id).map(|_| Some(stitch_id)),
                Some(stitch_id),
            ),
            Message::Commit(c) => {
                let params = StitchCommitParams {
                    id: c.stitch_id,
                    s1: Some(c.s1),
                    r1: Some(c.r1),
                    s2: Some(c.s2),
                    r2: Some(c.r2),
                    wscale: c.wscale.map(|[c, a1, a2, b]| PerEndpoint { c, a1, a2, b }),
                    mss: c.mss.map(|[c, a1, a2, b]| PerEndpoint { c, a1, a2, b }),
                    timestamps: c.timestamps.map(|(leg_a, leg_b)| PerLeg { leg_a, leg_b }),
                    sack: c.sack.map(|(leg_a, leg_b)| PerLeg { leg_a, leg_b }),
                };
                result(
                    stitcher.commit(params, io).map(|_| Some(c.stitch_id)),
                    Some(c.stitch_id),
                )
            }
            Message::Abort { stitch_id } => result(
                stitcher.abort(stitch_id, io).map(|_| Some(stitch_id)),
                Some(stitch_id),
            ),
            Message::Delete { stitch_id } => result(
                stitcher.delete(stitch_id, io).map(|_| Some(stitch_id)),
                Some(stitch_id),
            ),
            Message::Heartbeat(hb) => {
                let unknown: Vec<u32> = hb
                    .stitch_ids
                    .iter()
                    .copied()
                    .filter(|id| !stitcher.touch(*id))
                    .collect();
                if unknown.is_empty() {
                    Message::Reply(Reply::ok(None))
                } else {
                    Message::Reply(Reply::error(
                        unknown.first().copied(),
                        error_code::NO_SUCH_STITCH,
                        format!("unknown stitches: {unknown:?}"),
                    ))
                }
            }
            _ => return self.count("unexpected_message"),
        };
        let fields = HeaderFields {
            request_id: hdr.request_id,
            response: true,
            timestamp_ms: now,
            nonce: self.nonce(),
            key_id: hdr.key_id,
        };
        match seal(&answer, fields, &self.keys) {
            Ok(bytes) => {
                let _ = self
                    .cache
                    .put(hdr.key_id, hdr.request_id, bytes.clone(), now);
                if let Some(fr) = self.udp_frame(peer_mac, us, peer, &bytes) {
                    self.send_frame(&fr, Some(port), io.tx, io.pool);
                }
            }
            Err(e) => self.count(e.counter_name()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn reply_err(
        &mut self,
        mac: MacAddr,
        us: SocketAddr,
        peer: SocketAddr,
        port: PortId,
        hdr: agent_proto::Header,
        id: Option<u32>,
        code: u16,
        msg: &str,
        io: &mut Io<'_>,
    ) {
        let fields = HeaderFields {
            request_id: hdr.request_id,
            response: true,
            timestamp_ms: now_ms(),
            nonce: self.nonce(),
            key_id: hdr.key_id,
        };
        if let Ok(bytes) = seal(
            &Message::Reply(Reply::error(id, code, msg)),
            fields,
            &self.keys,
        ) {
            if let Some(fr) = self.udp_frame(mac, us, peer, &bytes) {
                self.send_frame(&fr, Some(port), io.tx, io.pool);
            }
        }
    }

    /// Sends the teardown messages a notice calls for, to the shell and/or the core
    /// agent, and keeps them until acknowledged (retransmitted per `agent_proto::retry`).
    pub fn notify(&mut self, n: &AgentNotice, io: &Io<'_>) {
        for side in &n.to {
            let (mac, port, ip) = match side {
                Side::Shell => (n.shell.0, n.shell.1, n.legs[1].ip()),
                _ => (n.core.0, n.core.1, n.legs[3].ip()),
            };
            let ours = match ip {
                IpAddr::V4(_) => self.addrs.ipv4.map(IpAddr::V4),
                IpAddr::V6(_) => self.addrs.ipv6.map(IpAddr::V6),
            };
            let Some(our_ip) = ours else { continue };
            let msg = Message::Teardown(TeardownMsg {
                stitch_id: n.stitch_id,
                from: n.from,
                kind: n.kind,
                variant: teardown_to(n.variant),
                to: *side,
                legs: Some(n.legs),
                bytes: Some(n.bytes),
            });
            self.next_request = self.next_request.wrapping_add(1);
            let mut p = Pending {
                request_id: self.next_request,
                msg,
                mac,
                from: SocketAddr::new(our_ip, self.addrs.port),
                to: SocketAddr::new(ip, self.agent_port),
                port,
                tries: 0,
                next_at: 0,
            };
            self.transmit(&mut p, io);
            self.count("teardown_sent");
            self.pending.push(p);
        }
    }

    /// Sends (or re-sends) a pending message: the same request id, a fresh nonce and
    /// timestamp, so the receiver's replay guard accepts it and its reply cache answers.
    fn transmit(&mut self, p: &mut Pending, io: &Io<'_>) {
        let now = now_ms();
        let fields = HeaderFields {
            request_id: p.request_id,
            response: false,
            timestamp_ms: now,
            nonce: self.nonce(),
            key_id: self.out_key,
        };
        if let Ok(bytes) = seal(&p.msg, fields, &self.keys) {
            if let Some(frame) = self.udp_frame(p.mac, p.from, p.to, &bytes) {
                self.send_frame(&frame, p.port, io.tx, io.pool);
            }
        }
        p.next_at = now + agent_proto::retry::reply_timeout_ms(p.tries).unwrap_or(0);
        p.tries += 1;
    }

    /// Retransmits unacknowledged teardown messages; gives up after the last try.
    pub fn tick(&mut self, io: &Io<'_>) {
        let now = now_ms();
        self.cache.expire(now);
        self.guard.expire(now);
        let mut pending = std::mem::take(&mut self.pending);
        pending.retain_mut(|p| {
            if now < p.next_at {
                return true;
            }
            if p.tries >= agent_proto::retry::MAX_TRIES {
                self.count("teardown_gave_up");
                return false;
            }
            self.transmit(p, io);
            self.count("teardown_retransmitted");
            true
        });
        self.pending = pending;
    }
}

/// A lifecycle step's outcome as an agent reply.
fn result(r: Result<Option<u32>, stitch_control::protocol::RpcError>, id: Option<u32>) -> Message {
    match r {
        Ok(new_id) => Message::Reply(Reply::ok(new_id.or(id))),
        Err(e) => {
            let code = if e.message.contains("no stitch") {
                error_code::NO_SUCH_STITCH
            } else if e.message.contains("full") {
                error_code::BUSY
            } else if e.message.contains("acknowledged") || e.message.contains("expects") {
                error_code::SEQ_MISMATCH
            } else {
                error_code::BAD_STATE
            };
            let mut msg = e.message;
            msg.truncate(agent_proto::MAX_REPLY_MESSAGE);
            Message::Reply(Reply::error(id, code, &msg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> AgentAddrs {
        AgentAddrs {
            ipv4: Some(Ipv4Addr::new(198, 18, 0, 254)),
            ipv6: Some("2001:db8::fe".parse().unwrap()),
            port: 4790,
            mac: MacAddr([2, 0x53, 0x54, 0x43, 0x48, 1]),
        }
    }

    #[test]
    fn udp_to_the_service_port_and_arp_for_the_service_address_are_recognised() {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
            .ipv4([198, 18, 0, 2], [198, 18, 0, 254], 1)
            .udp(5000, 4790);
        let mut f = Vec::new();
        b.write(&mut f, b"STCH").unwrap();
        assert!(for_agent(&f, &addrs()));
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
            .ipv4([198, 18, 0, 2], [255; 4], 1)
            .udp(5000, 4790);
        let mut g = Vec::new();
        b.write(&mut g, b"STCH").unwrap();
        assert!(for_agent(&g, &addrs()), "broadcast probe");
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
            .ipv4([198, 18, 0, 2], [198, 18, 0, 3], 1)
            .udp(5000, 4790);
        let mut h = Vec::new();
        b.write(&mut h, b"STCH").unwrap();
        assert!(!for_agent(&h, &addrs()), "someone else's address");
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&[
            2, 0, 0, 0, 0, 1, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 18, 0, 2, 0, 0,
            0, 0, 0, 0, 198, 18, 0, 254,
        ]);
        assert!(for_agent(&arp, &addrs()));
        arp[41] = 3;
        assert!(!for_agent(&arp, &addrs()));
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
            .ipv6(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                addrs().ipv6.unwrap().octets(),
                1,
            )
            .udp(5000, 4790);
        let mut v6 = Vec::new();
        b.write(&mut v6, b"STCH").unwrap();
        assert!(for_agent(&v6, &addrs()));
        assert!(!for_agent(&v6[..30], &addrs()), "truncated");
    }
}
