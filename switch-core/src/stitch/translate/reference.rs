//! The translation as first written (two passes through the `wire` views,
//! one `update16` per changed word), kept verbatim as the oracle the
//! optimized [`super::translate`] is property-tested against: same result,
//! same bytes, for every input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{SackMode, TranslateError, Translated, Translation, IPV6_FRAGMENT};
use crate::stitch::seq::SeqNumber;
use crate::wire::checksum::{update16, update32, update_bytes};
use crate::wire::{
    EtherType, EthernetFrame, IpProtocol, Ipv4Packet, Ipv6Packet, TcpFlags, TcpOptionsIter,
    TcpPacket, UdpPacket,
};

/// Rewrites one frame in place as `t` says.
///
/// # Errors
/// See [`TranslateError`]; on error not one byte of `frame` has changed.
pub(super) fn translate(frame: &mut [u8], t: &Translation) -> Result<Translated, TranslateError> {
    let loc = Located::parse(frame)?;
    let new_addrs = match (loc.addrs, t.src_ip, t.dst_ip) {
        (Addrs::V4(..), IpAddr::V4(s), IpAddr::V4(d)) => Addrs::V4(s, d),
        (Addrs::V6(..), IpAddr::V6(s), IpAddr::V6(d)) => Addrs::V6(s, d),
        _ => return Err(TranslateError::FamilyMismatch),
    };
    // Nothing has been written yet; from here on nothing can fail.
    Ok(loc.apply(frame, new_addrs, t))
}

/// The IP addresses of a packet.
#[derive(Debug, Clone, Copy)]
enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl Addrs {
    /// Patches an L4 checksum for the pseudo-header change `self -> new`.
    /// Both are of the same family (checked by [`translate`]).
    fn patch_pseudo(self, new: Addrs, c: u16) -> u16 {
        match (self, new) {
            (Addrs::V4(os, od), Addrs::V4(ns, nd)) => {
                let c = upd32(c, u32::from(os), u32::from(ns));
                upd32(c, u32::from(od), u32::from(nd))
            }
            (Addrs::V6(os, od), Addrs::V6(ns, nd)) => {
                let c = upd128(c, os, ns);
                upd128(c, od, nd)
            }
            _ => c,
        }
    }
}

/// Where the headers of a frame are: the result of the read-only pass.
#[derive(Debug, Clone)]
struct Located {
    l3_off: usize,
    addrs: Addrs,
    /// The L4 segment: exactly the IP payload.
    l4: std::ops::Range<usize>,
    tcp: bool,
}

impl Located {
    /// The read-only pass: every check that can fail.
    fn parse(frame: &[u8]) -> Result<Located, TranslateError> {
        let eth = EthernetFrame::new_checked(frame)?;
        let l3_off = eth.header_len();
        let l3 = eth.payload();
        let (addrs, proto, l4) = match eth.inner_ethertype() {
            EtherType::Ipv4 => {
                let ip = Ipv4Packet::new_checked(l3)?;
                if ip.version() != 4 {
                    return Err(TranslateError::NotIp);
                }
                if ip.more_frags() || ip.frag_offset() != 0 {
                    return Err(TranslateError::Fragment);
                }
                let start = l3_off + ip.header_len();
                let end = l3_off + usize::from(ip.total_len());
                let addrs = Addrs::V4(ip.src_addr(), ip.dst_addr());
                (addrs, ip.protocol(), start..end)
            }
            EtherType::Ipv6 => {
                let ip = Ipv6Packet::new_checked(l3)?;
                if ip.version() != 6 {
                    return Err(TranslateError::NotIp);
                }
                let proto = ip.next_header();
                if proto == IpProtocol::Unknown(IPV6_FRAGMENT) {
                    return Err(TranslateError::Fragment);
                }
                let start = l3_off + crate::wire::ipv6::HEADER_LEN;
                let end = start + usize::from(ip.payload_len());
                let addrs = Addrs::V6(ip.src_addr(), ip.dst_addr());
                (addrs, proto, start..end)
            }
            _ => return Err(TranslateError::NotIp),
        };
        let seg = &frame[l4.clone()];
        let tcp = match proto {
            IpProtocol::Tcp => {
                let p = TcpPacket::new_checked(seg)?;
                for opt in TcpOptionsIter::new(p.options()) {
                    opt.map_err(|_| TranslateError::BadOptions)?;
                }
                true
            }
            IpProtocol::Udp => {
                UdpPacket::new_checked(seg)?;
                false
            }
            _ => return Err(TranslateError::NotTcpOrUdp),
        };
        Ok(Located {
            l3_off,
            addrs,
            l4,
            tcp,
        })
    }

    /// The writing pass. Every offset was validated by [`Located::parse`] on
    /// these same bytes, so the unchecked views stay in bounds.
    fn apply(&self, frame: &mut [u8], new_addrs: Addrs, t: &Translation) -> Translated {
        let mut eth = EthernetFrame::new_unchecked(&mut *frame);
        eth.set_src_addr(t.eth_src);
        eth.set_dst_addr(t.eth_dst);

        if let (Addrs::V4(os, od), Addrs::V4(ns, nd)) = (self.addrs, new_addrs) {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[self.l3_off..]);
            let c = upd32(ip.checksum(), u32::from(os), u32::from(ns));
            let c = upd32(c, u32::from(od), u32::from(nd));
            ip.set_src_addr(ns);
            ip.set_dst_addr(nd);
            ip.set_checksum(c);
        } else if let Addrs::V6(ns, nd) = new_addrs {
            // No header checksum in IPv6.
            let mut ip = Ipv6Packet::new_unchecked(&mut frame[self.l3_off..]);
            ip.set_src_addr(ns);
            ip.set_dst_addr(nd);
        }

        let seg = &mut frame[self.l4.clone()];
        if self.tcp {
            rewrite_tcp(seg, self.addrs, new_addrs, t)
        } else {
            rewrite_udp(seg, self.addrs, new_addrs, t)
        }
    }
}

fn rewrite_tcp(seg: &mut [u8], old_addrs: Addrs, new_addrs: Addrs, t: &Translation) -> Translated {
    let mut tcp = TcpPacket::new_unchecked(seg);
    let mut c = old_addrs.patch_pseudo(new_addrs, tcp.checksum());

    c = upd16(c, tcp.src_port(), t.src_port);
    c = upd16(c, tcp.dst_port(), t.dst_port);
    tcp.set_src_port(t.src_port);
    tcp.set_dst_port(t.dst_port);

    let flags = tcp.flags();
    let old_seq = tcp.seq_number();
    let seq = (SeqNumber(old_seq) + t.seq_delta).0;
    c = upd32(c, old_seq, seq);
    tcp.set_seq_number(seq);

    let ack_set = flags.contains(TcpFlags::ACK);
    let old_ack = tcp.ack_number();
    let ack = if ack_set {
        let ack = (SeqNumber(old_ack) - t.ack_delta).0;
        c = upd32(c, old_ack, ack);
        tcp.set_ack_number(ack);
        ack
    } else {
        old_ack
    };

    // RFC 7323 section 2.2: the window of a SYN segment is never scaled.
    if !flags.contains(TcpFlags::SYN) {
        let old_win = tcp.window_len();
        let win = t.window.apply(old_win);
        c = upd16(c, old_win, win);
        tcp.set_window_len(win);
    }

    // The options area starts at byte 20 (even), so a word boundary in it is
    // a word boundary of the segment.
    let tsval = rewrite_options(tcp.options_mut(), t, ack_set, &mut c);
    tcp.set_checksum(c);

    let payload_len = tcp.payload_mut().len();
    Translated {
        proto: u8::from(IpProtocol::Tcp),
        tcp_flags: flags.bits(),
        payload_len,
        seq,
        ack,
        tsval,
    }
}

fn rewrite_udp(seg: &mut [u8], old_addrs: Addrs, new_addrs: Addrs, t: &Translation) -> Translated {
    let mut udp = UdpPacket::new_unchecked(seg);
    let old_c = udp.checksum();
    let (old_sp, old_dp) = (udp.src_port(), udp.dst_port());
    udp.set_src_port(t.src_port);
    udp.set_dst_port(t.dst_port);
    // Zero means "no checksum" over IPv4 and stays so; over IPv6 it is
    // invalid, and stays invalid (receivers drop it either way).
    if old_c != 0 {
        let c = old_addrs.patch_pseudo(new_addrs, old_c);
        let c = upd16(c, old_sp, t.src_port);
        let c = upd16(c, old_dp, t.dst_port);
        // RFC 768: a computed zero is sent as all ones.
        udp.set_checksum(if c == 0 { 0xffff } else { c });
    }
    Translated {
        proto: u8::from(IpProtocol::Udp),
        tcp_flags: 0,
        payload_len: udp.payload_mut().len(),
        seq: 0,
        ack: 0,
        tsval: None,
    }
}

/// Rewrites SACK and timestamps options in an options area that
/// [`TcpOptionsIter`] accepted; returns the first TSval as sent.
fn rewrite_options(opts: &mut [u8], t: &Translation, ack_set: bool, c: &mut u16) -> Option<u32> {
    const NOPS: [u8; 40] = [1; 40];
    let mut first_tsval = None;
    let mut i = 0;
    while i < opts.len() {
        let kind = opts[i];
        match kind {
            0 => break,
            1 => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let len = match opts.get(i + 1) {
            Some(&l) => usize::from(l),
            None => break,
        };
        if len < 2 || i + len > opts.len() {
            // Unreachable after validation; stop rather than misread.
            break;
        }
        match (kind, t.sack) {
            (5, SackMode::ToNops) => {
                *c = write_bytes(opts, i, &NOPS[..len.min(NOPS.len())], *c);
            }
            (5, SackMode::Keep) => {
                let mut edge = i + 2;
                while edge + 4 <= i + len {
                    let old = read_u32(opts, edge);
                    let new = (SeqNumber(old) - t.ack_delta).0;
                    *c = write_bytes(opts, edge, &new.to_be_bytes(), *c);
                    edge += 4;
                }
            }
            (8, _) if len == 10 => {
                let old_val = read_u32(opts, i + 2);
                let mut tsval = old_val;
                if let Some(ts) = t.ts {
                    tsval = old_val.wrapping_add(ts.tsval_delta);
                    *c = write_bytes(opts, i + 2, &tsval.to_be_bytes(), *c);
                    let old_ecr = read_u32(opts, i + 6);
                    if ack_set && old_ecr != 0 {
                        let ecr = old_ecr.wrapping_sub(ts.tsecr_delta);
                        *c = write_bytes(opts, i + 6, &ecr.to_be_bytes(), *c);
                    }
                }
                first_tsval.get_or_insert(tsval);
            }
            _ => {}
        }
        i += len;
    }
    first_tsval
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The big-endian word at the even offset `at`; a last odd byte is padded
/// with zero on the right, as the checksum does (RFC 1071).
fn word_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b.get(at + 1).copied().unwrap_or(0)])
}

/// Writes `new` at `off` (any alignment) in `buf`, whose first byte is at an
/// even offset of the checksummed data, and returns the checksum `c`
/// patched word by word (RFC 1624 eqn. 3 for each 16-bit word touched).
fn write_bytes(buf: &mut [u8], off: usize, new: &[u8], mut c: u16) -> u16 {
    let end = off + new.len();
    let mut w = off & !1;
    while w < end {
        let old = word_at(buf, w);
        let hi = (w + 2).min(end).min(buf.len());
        let lo = w.max(off);
        buf[lo..hi].copy_from_slice(&new[lo - off..hi - off]);
        c = upd16(c, old, word_at(buf, w));
        w += 2;
    }
    c
}

/// [`update16`], skipping words that did not change (so a checksum is only
/// ever touched by a real change).
fn upd16(c: u16, old: u16, new: u16) -> u16 {
    if old == new {
        c
    } else {
        update16(c, old, new)
    }
}

/// [`update32`], skipping fields that did not change.
fn upd32(c: u16, old: u32, new: u32) -> u16 {
    if old == new {
        c
    } else {
        update32(c, old, new)
    }
}

/// [`update_bytes`] for an IPv6 address, skipping unchanged addresses.
fn upd128(c: u16, old: Ipv6Addr, new: Ipv6Addr) -> u16 {
    if old == new {
        c
    } else {
        update_bytes(c, &old.octets(), &new.octets())
    }
}
