//! Active health checks of the balancer's destinations, sent and read by the slow path
//! from the switch's own address, with no TCP stack: a check is a handful of frames.
//!
//! TCP check: a SYN to the software port; a SYN-ACK passes (the switch answers it with an
//! RST, so the backend keeps no half-open connection), an RST or silence until the
//! timeout fails. HTTP check: after the SYN-ACK, one segment `ACK|PSH` with `GET path
//! HTTP/1.0`; the first data segment back must start with `HTTP/1.x <expect_status>`;
//! then an RST. Time is an input ([`Instant`]), frames come in through
//! [`Checker::on_frame`] and go out as [`Outgoing`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use stitch_control::lb::{HealthKind, LbHealth};
use switch_core::flow::key::parse_flow;
use switch_core::{MacAddr, PortId};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// Which destination a check is for: service id and destination index.
pub type Target = (u32, usize);

/// Where a destination is and how to reach it from the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub mac: MacAddr,
    pub switch_port: PortId,
    /// The switch's address of the destination's family.
    pub source: IpAddr,
}

/// A frame to send out of a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub port: PortId,
    pub frame: Vec<u8>,
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail(String),
}

#[derive(Debug)]
enum Stage {
    SynSent,
    GetSent { ack: u32 },
}

#[derive(Debug)]
struct Probe {
    target: Target,
    ep: Endpoint,
    kind: HealthKind,
    path: String,
    expect: u16,
    isn: u32,
    sport: u16,
    deadline: Instant,
    stage: Stage,
}

/// The checks in flight (see the module docs).
#[derive(Debug)]
pub struct Checker {
    /// By (destination address, destination port, our port).
    probes: HashMap<(IpAddr, u16, u16), Probe>,
    mac: MacAddr,
    next_port: u16,
    isn: u32,
}

/// Our ports for checks: one per check in flight, taken in turn.
const PORTS: std::ops::Range<u16> = 40_000..60_000;

impl Checker {
    /// Checks sent from `mac` (the balancer's MAC); `seed` varies the initial sequence
    /// numbers between runs.
    pub fn new(mac: MacAddr, seed: u32) -> Checker {
        Checker {
            probes: HashMap::new(),
            mac,
            next_port: PORTS.start + (seed % 1000) as u16,
            isn: seed.wrapping_mul(2_654_435_761),
        }
    }

    /// True if a check of `target` is in flight.
    pub fn busy(&self, target: Target) -> bool {
        self.probes.values().any(|p| p.target == target)
    }

    /// Starts a check of `target` at `ep`; returns the SYN to send.
    pub fn start(
        &mut self,
        target: Target,
        ep: Endpoint,
        h: &LbHealth,
        now: Instant,
    ) -> Option<Outgoing> {
        let sport = (0..PORTS.len()).find_map(|_| {
            let p = self.next_port;
            self.next_port = if p + 1 >= PORTS.end {
                PORTS.start
            } else {
                p + 1
            };
            (!self.probes.contains_key(&(ep.ip, ep.port, p))).then_some(p)
        })?;
        self.isn = self.isn.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let probe = Probe {
            target,
            ep,
            kind: h.kind,
            path: h.path.clone(),
            expect: h.expect_status,
            isn: self.isn,
            sport,
            deadline: now + Duration::from_millis(u64::from(h.timeout_ms)),
            stage: Stage::SynSent,
        };
        let frame = self.segment(&probe, probe.isn, 0, SYN, b"")?;
        self.probes.insert((ep.ip, ep.port, sport), probe);
        Some(Outgoing {
            port: ep.switch_port,
            frame,
        })
    }

    /// Checks past their deadline: failed (with an RST for what the backend kept).
    pub fn expire(&mut self, now: Instant) -> Vec<(Target, Verdict, Option<Outgoing>)> {
        let late: Vec<_> = self
            .probes
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for k in late {
            let Some(p) = self.probes.remove(&k) else {
                continue;
            };
            let (why, rst) = match p.stage {
                Stage::SynSent => ("no answer to SYN in time", None),
                Stage::GetSent { ack } => {
                    let sent = p.isn.wrapping_add(1 + request(&p).len() as u32);
                    (
                        "no HTTP answer in time",
                        self.segment(&p, sent, ack, RST | ACK, b""),
                    )
                }
            };
            let rst = rst.map(|frame| Outgoing {
                port: p.ep.switch_port,
                frame,
            });
            out.push((p.target, Verdict::Fail(why.into()), rst));
        }
        out
    }

    /// A frame for the switch's address: advances a check, maybe ends it.
    pub fn on_frame(&mut self, f: &[u8]) -> Option<(Target, Option<Verdict>, Option<Outgoing>)> {
        let l4 = parse_flow(f)?;
        if l4.key.proto != 6 {
            return None;
        }
        let key = (l4.key.src_ip(), l4.key.src_port, l4.key.dst_port);
        let flags = l4.tcp_flags;
        let o = l4.l4_offset;
        let seq = u32::from_be_bytes(f.get(o + 4..o + 8)?.try_into().ok()?);
        let ackn = u32::from_be_bytes(f.get(o + 8..o + 12)?.try_into().ok()?);
        let p = self.probes.get_mut(&key)?;
        let target = p.target;
        let out = |c: &Checker, p: &Probe, seq: u32, ack: u32, fl: u8, data: &[u8]| {
            c.segment(p, seq, ack, fl, data).map(|frame| Outgoing {
                port: p.ep.switch_port,
                frame,
            })
        };
        if flags & RST != 0 {
            let p = self.probes.remove(&key)?;
            let why = match p.stage {
                Stage::SynSent => "connection refused (RST)".to_string(),
                Stage::GetSent { .. } => "reset before an HTTP answer".to_string(),
            };
            return Some((target, Some(Verdict::Fail(why)), None));
        }
        match p.stage {
            Stage::SynSent if flags & (SYN | ACK) == SYN | ACK && ackn == p.isn.wrapping_add(1) => {
                match p.kind {
                    HealthKind::Tcp => {
                        let p = self.probes.remove(&key)?;
                        let rst = out(self, &p, p.isn.wrapping_add(1), 0, RST, b"");
                        Some((target, Some(Verdict::Pass), rst))
                    }
                    HealthKind::Http => {
                        let ack = seq.wrapping_add(1);
                        p.stage = Stage::GetSent { ack };
                        let p = self.probes.get(&key)?;
                        let req = request(p);
                        let get = out(
                            self,
                            p,
                            p.isn.wrapping_add(1),
                            ack,
                            ACK | PSH,
                            req.as_bytes(),
                        );
                        Some((target, None, get))
                    }
                }
            }
            Stage::GetSent { .. } if l4.payload_len > 0 => {
                let p = self.probes.remove(&key)?;
                let data = f.get(o + tcp_header_len(f, o)?..)?;
                let verdict = match http_status(data) {
                    Some(s) if s == p.expect => Verdict::Pass,
                    Some(s) => Verdict::Fail(format!("HTTP status {s}, expected {}", p.expect)),
                    None => Verdict::Fail("not an HTTP answer".into()),
                };
                let sent = p.isn.wrapping_add(1 + request(&p).len() as u32);
                let rst = out(self, &p, sent, 0, RST, b"");
                Some((target, Some(verdict), rst))
            }
            Stage::GetSent { .. } if flags & FIN != 0 => {
                let p = self.probes.remove(&key)?;
                let sent = p.isn.wrapping_add(1 + request(&p).len() as u32);
                let rst = out(self, &p, sent, 0, RST, b"");
                Some((
                    target,
                    Some(Verdict::Fail("closed without an HTTP answer".into())),
                    rst,
                ))
            }
            _ => None,
        }
    }

    /// Forgets every check of service `id` (it was removed or changed).
    pub fn forget(&mut self, id: u32) {
        self.probes.retain(|_, p| p.target.0 != id);
    }

    fn segment(&self, p: &Probe, seq: u32, ack: u32, flags: u8, data: &[u8]) -> Option<Vec<u8>> {
        let eth = etherparse::PacketBuilder::ethernet2(self.mac.0, p.ep.mac.0);
        let mut h = etherparse::TcpHeader::new(p.sport, p.ep.port, seq, 64_240);
        h.syn = flags & SYN != 0;
        h.ack = flags & ACK != 0;
        h.rst = flags & RST != 0;
        h.psh = flags & PSH != 0;
        h.fin = flags & FIN != 0;
        h.acknowledgment_number = ack;
        let mut out = Vec::with_capacity(80 + data.len());
        match (p.ep.source, p.ep.ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth
                .ipv4(s.octets(), d.octets(), 64)
                .tcp_header(h)
                .write(&mut out, data)
                .ok()?,
            (IpAddr::V6(s), IpAddr::V6(d)) => eth
                .ipv6(s.octets(), d.octets(), 64)
                .tcp_header(h)
                .write(&mut out, data)
                .ok()?,
            _ => return None,
        }
        Some(out)
    }
}

fn request(p: &Probe) -> String {
    let host = match p.ep.ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    format!(
        "GET {} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: stitchd-health\r\nConnection: close\r\n\r\n",
        p.path
    )
}

fn tcp_header_len(f: &[u8], o: usize) -> Option<usize> {
    Some(usize::from(f.get(o + 12)? >> 4) * 4)
}

/// The status code of an HTTP/1.x status line at the start of `data`.
fn http_status(data: &[u8]) -> Option<u16> {
    let line = data.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LB: MacAddr = MacAddr([2, 0x53, 0x54, 0x4c, 0x42, 1]);
    const BE: MacAddr = MacAddr([2, 0, 0, 0, 0, 9]);

    fn ep() -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(198, 18, 0, 11).into(),
            port: 8080,
            mac: BE,
            switch_port: PortId(1),
            source: Ipv4Addr::new(198, 18, 0, 254).into(),
        }
    }

    fn health(kind: HealthKind) -> LbHealth {
        serde_json::from_value(serde_json::json!({"kind": kind})).unwrap()
    }

    /// The backend's answer to one of our segments.
    fn answer(ours: &[u8], flags: u8, seq: u32, data: &[u8]) -> Vec<u8> {
        let l4 = parse_flow(ours).unwrap();
        let o = l4.l4_offset;
        let their_seq = u32::from_be_bytes(ours[o + 4..o + 8].try_into().unwrap());
        let mut h = etherparse::TcpHeader::new(l4.key.dst_port, l4.key.src_port, seq, 1000);
        h.syn = flags & SYN != 0;
        h.ack = flags & ACK != 0;
        h.rst = flags & RST != 0;
        h.acknowledgment_number = their_seq.wrapping_add(1 + l4.payload_len as u32);
        let (IpAddr::V4(s), IpAddr::V4(d)) = (l4.key.src_ip(), l4.key.dst_ip()) else {
            panic!()
        };
        let mut out = Vec::new();
        etherparse::PacketBuilder::ethernet2(BE.0, LB.0)
            .ipv4(d.octets(), s.octets(), 64)
            .tcp_header(h)
            .write(&mut out, data)
            .unwrap();
        out
    }

    #[test]
    fn a_syn_ack_passes_a_tcp_check_and_is_reset() {
        let mut c = Checker::new(LB, 7);
        let now = Instant::now();
        let syn = c
            .start((1, 0), ep(), &health(HealthKind::Tcp), now)
            .unwrap();
        assert_eq!(syn.port, PortId(1));
        assert!(c.busy((1, 0)));
        let (t, v, rst) = c
            .on_frame(&answer(&syn.frame, SYN | ACK, 5000, b""))
            .unwrap();
        assert_eq!((t, v), ((1, 0), Some(Verdict::Pass)));
        let rst = parse_flow(&rst.unwrap().frame).unwrap();
        assert_eq!(rst.tcp_flags & RST, RST);
        assert!(!c.busy((1, 0)));
    }

    #[test]
    fn an_rst_or_silence_fails_a_check() {
        let mut c = Checker::new(LB, 7);
        let now = Instant::now();
        let syn = c
            .start((1, 0), ep(), &health(HealthKind::Tcp), now)
            .unwrap();
        let (_, v, _) = c.on_frame(&answer(&syn.frame, RST | ACK, 0, b"")).unwrap();
        assert!(matches!(v, Some(Verdict::Fail(r)) if r.contains("refused")));
        c.start((1, 0), ep(), &health(HealthKind::Tcp), now)
            .unwrap();
        assert!(c.expire(now).is_empty());
        let late = c.expire(now + Duration::from_secs(2));
        assert_eq!(late.len(), 1);
        assert!(matches!(&late[0].1, Verdict::Fail(_)));
    }

    #[test]
    fn an_http_check_wants_the_expected_status() {
        for (status, pass) in [("200 OK", true), ("503 Service Unavailable", false)] {
            let mut c = Checker::new(LB, 7);
            let now = Instant::now();
            let syn = c
                .start((1, 0), ep(), &health(HealthKind::Http), now)
                .unwrap();
            let (_, v, get) = c
                .on_frame(&answer(&syn.frame, SYN | ACK, 5000, b""))
                .unwrap();
            assert_eq!(v, None);
            let get = get.unwrap().frame;
            let l4 = parse_flow(&get).unwrap();
            assert!(String::from_utf8_lossy(&get[get.len() - l4.payload_len..])
                .starts_with("GET / HTTP/1.0\r\n"));
            let body = format!("HTTP/1.0 {status}\r\n\r\n");
            let (_, v, _) = c
                .on_frame(&answer(&get, ACK, 5001, body.as_bytes()))
                .unwrap();
            assert_eq!(v == Some(Verdict::Pass), pass, "{status}: {v:?}");
        }
    }

    #[test]
    fn frames_of_no_check_are_ignored() {
        let mut c = Checker::new(LB, 7);
        let syn = Checker::new(LB, 9)
            .start((1, 0), ep(), &health(HealthKind::Tcp), Instant::now())
            .unwrap();
        assert!(c.on_frame(&answer(&syn.frame, SYN | ACK, 1, b"")).is_none());
        assert!(c.on_frame(&[0u8; 10]).is_none());
    }
}
