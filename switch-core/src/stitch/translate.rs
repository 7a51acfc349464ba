//! One direction of a stitch: the in-place rewrite of a frame, with
//! incremental checksums (RFC 1624).
//!
//! What it does: [`translate`] takes a whole Ethernet frame (at most one
//! 802.1Q tag) carrying IPv4 or IPv6 and TCP or UDP, and rewrites, as a
//! [`Translation`] says: the MACs; the IP addresses (and the IPv4 header
//! checksum); the ports; for TCP the sequence number, the acknowledgment
//! number (only when ACK is set), the window (unless SYN is set), every SACK
//! block edge, the timestamps option; and the TCP or UDP checksum, patched
//! for every 16-bit word that changed, the pseudo-header addresses included.
//!
//! What it guarantees: two passes. The first only reads: it checks every
//! length and walks the TCP options with [`TcpOptionsIter`]; any error is
//! returned from there, so **on `Err` the frame is untouched**. The second
//! pass writes and cannot fail. No allocation, no full checksum recompute:
//! the cost is a handful of adds per changed word, whatever the payload
//! size. Checksums stay correct: for a frame whose checksums verified, the
//! patched ones equal a full recompute (property-tested).
//!
//! What it must not do: change a length, move bytes, or look into IPv6
//! extension headers or IP fragments (refused: the L4 header of a fragment is
//! absent or incomplete). Window rescaling rounds down and clamps, and SACK
//! to NOPs destroys the blocks, so those two are not invertible; everything
//! else is, through [`Translation::inverse`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::seq::SeqNumber;
use crate::wire::checksum::{update16, update32, update_bytes};
use crate::wire::{
    EtherType, EthernetFrame, IpPair, IpProtocol, Ipv4Packet, Ipv6Packet, TcpFlags, TcpOptionsIter,
    TcpPacket, UdpPacket, WireError,
};
use crate::MacAddr;

/// The largest shift a window scale option may announce (RFC 7323 section
/// 2.3); larger values are treated as 14, as the RFC says.
pub const MAX_WINDOW_SHIFT: u8 = 14;

/// The IPv6 next-header value of a fragment header.
const IPV6_FRAGMENT: u8 = 44;

/// Timestamp option shifts (RFC 7323): `TSval' = TSval + tsval_delta`, and,
/// on a segment with ACK set and a non-zero TSecr, `TSecr' = TSecr -
/// tsecr_delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TsShift {
    /// Added to TSval, so the receiver sees the clock it already knows.
    pub tsval_delta: u32,
    /// Subtracted from TSecr, so the echo lands back in the sender's clock.
    pub tsecr_delta: u32,
}

/// How the window field of non-SYN segments is rescaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowRescale {
    /// Windows are copied unchanged (both sides use the same shift).
    #[default]
    None,
    /// `win' = min(65535, (win << from_shift) >> to_shift)`: the sender
    /// meant `win << from_shift` bytes; the receiver will multiply by
    /// `2^to_shift`. Rounded down and clamped, so the receiver is never
    /// offered more than the sender did. Shifts above 14 count as 14.
    Rescale {
        /// The shift the sender of the segment announced.
        from_shift: u8,
        /// The shift the receiver believes its peer announced.
        to_shift: u8,
    },
}

impl WindowRescale {
    /// The rescaled window field for a non-SYN segment.
    pub fn apply(self, win: u16) -> u16 {
        match self {
            WindowRescale::None => win,
            WindowRescale::Rescale {
                from_shift,
                to_shift,
            } => {
                let from = from_shift.min(MAX_WINDOW_SHIFT);
                let to = to_shift.min(MAX_WINDOW_SHIFT);
                // 65535 << 14 < 2^30: no overflow in u32.
                let bytes = u32::from(win) << from;
                (bytes >> to).min(u32::from(u16::MAX)) as u16
            }
        }
    }
}

/// What happens to SACK options (RFC 2018).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SackMode {
    /// Keep the blocks, their edges shifted by `ack_delta`.
    #[default]
    Keep,
    /// The receiver did not negotiate SACK: every byte of each SACK option
    /// (kind, length, blocks) becomes a NOP (1), so the header length and
    /// the other options' positions stay.
    ToNops,
}

/// One direction of a stitch. Immutable once installed in the flow table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Translation {
    /// New source MAC.
    pub eth_src: MacAddr,
    /// New destination MAC.
    pub eth_dst: MacAddr,
    /// New source address; must be of the packet's family.
    pub src_ip: IpAddr,
    /// New destination address; must be of the packet's family.
    pub dst_ip: IpAddr,
    /// New source port.
    pub src_port: u16,
    /// New destination port.
    pub dst_port: u16,
    /// TCP only: `seq' = seq + seq_delta`.
    pub seq_delta: u32,
    /// TCP only: `ack' = ack - ack_delta` (when ACK is set), and every SACK
    /// block edge `edge' = edge - ack_delta`.
    pub ack_delta: u32,
    /// Timestamp shifts; `None` leaves the option alone.
    pub ts: Option<TsShift>,
    /// Window rescaling of non-SYN segments.
    pub window: WindowRescale,
    /// SACK options kept (translated) or blanked.
    pub sack: SackMode,
}

/// The addresses and ports of one direction of a flow, as they appear in its
/// packets: what [`Translation::inverse`] needs to undo a translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FlowEndpoints {
    /// Source MAC.
    pub eth_src: MacAddr,
    /// Destination MAC.
    pub eth_dst: MacAddr,
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl FlowEndpoints {
    /// Reads the endpoints of a frame that [`translate`] would accept.
    ///
    /// # Errors
    /// The same structural errors as [`translate`] (never `FamilyMismatch`).
    pub fn of_frame(frame: &[u8]) -> Result<FlowEndpoints, TranslateError> {
        let loc = Located::parse(frame)?;
        let eth = EthernetFrame::new_unchecked(frame);
        let (src_ip, dst_ip) = match loc.addrs {
            Addrs::V4(s, d) => (IpAddr::V4(s), IpAddr::V4(d)),
            Addrs::V6(s, d) => (IpAddr::V6(s), IpAddr::V6(d)),
        };
        // Both TCP and UDP start with the two ports.
        let l4 = &frame[loc.l4.clone()];
        Ok(FlowEndpoints {
            eth_src: eth.src_addr(),
            eth_dst: eth.dst_addr(),
            src_ip,
            dst_ip,
            src_port: u16::from_be_bytes([l4[0], l4[1]]),
            dst_port: u16::from_be_bytes([l4[2], l4[3]]),
        })
    }
}

impl Translation {
    /// The translation that undoes `self` on packets that `self` produced
    /// from packets with endpoints `orig`.
    ///
    /// Exact (`translate(T)` then `translate(T.inverse(orig))` gives back the
    /// original bytes) when `window` is [`WindowRescale::None`] and `sack` is
    /// [`SackMode::Keep`], and no translated TSecr happened to become 0 (a
    /// zero TSecr is "no echo" and is left alone). Rescaling rounds down and
    /// clamps and NOPs erase the blocks, so the inverse of those is only the
    /// best effort: the opposite rescale and `Keep`.
    pub fn inverse(&self, orig: &FlowEndpoints) -> Translation {
        Translation {
            eth_src: orig.eth_src,
            eth_dst: orig.eth_dst,
            src_ip: orig.src_ip,
            dst_ip: orig.dst_ip,
            src_port: orig.src_port,
            dst_port: orig.dst_port,
            seq_delta: self.seq_delta.wrapping_neg(),
            ack_delta: self.ack_delta.wrapping_neg(),
            ts: self.ts.map(|ts| TsShift {
                tsval_delta: ts.tsval_delta.wrapping_neg(),
                tsecr_delta: ts.tsecr_delta.wrapping_neg(),
            }),
            window: match self.window {
                WindowRescale::None => WindowRescale::None,
                WindowRescale::Rescale {
                    from_shift,
                    to_shift,
                } => WindowRescale::Rescale {
                    from_shift: to_shift,
                    to_shift: from_shift,
                },
            },
            sack: SackMode::Keep,
        }
    }
}

/// What [`translate`] did, so the caller can account for the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translated {
    /// The IP protocol number: 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// The TCP control bits (0 for UDP).
    pub tcp_flags: u8,
    /// Bytes of L4 payload (TCP data after the options; UDP data).
    pub payload_len: usize,
    /// The sequence number as sent (translated); 0 for UDP.
    pub seq: u32,
    /// The acknowledgment field as sent: translated when ACK is set, the
    /// untouched field otherwise; 0 for UDP.
    pub ack: u32,
    /// The TSval of the first timestamps option, as sent (translated).
    pub tsval: Option<u32>,
}

/// Why a frame cannot be translated. The frame is left untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// Not IPv4 or IPv6 (after at most one 802.1Q tag), or an IP version
    /// field that disagrees with the EtherType.
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    /// The IP payload is neither TCP nor UDP (IPv6 extension headers
    /// included: they are not walked).
    #[error("not a TCP or UDP packet")]
    NotTcpOrUdp,
    /// The frame is shorter than a header or a length field it declares.
    #[error("packet truncated")]
    Truncated,
    /// A header field makes the packet meaningless (the text says which).
    #[error("malformed header: {0}")]
    Malformed(&'static str),
    /// A TCP option has a missing, too small, too large or wrong length.
    #[error("malformed TCP options")]
    BadOptions,
    /// The translation's addresses are not of the packet's IP family.
    #[error("translation addresses are not of the packet's IP family")]
    FamilyMismatch,
    /// An IP fragment: the L4 header is missing or incomplete.
    #[error("IP fragment: cannot translate without the whole L4 header")]
    Fragment,
}

impl From<WireError> for TranslateError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Truncated => TranslateError::Truncated,
            WireError::Malformed(m) => TranslateError::Malformed(m),
            WireError::BadChecksum => TranslateError::Malformed("bad checksum"),
        }
    }
}

/// Rewrites one frame in place as `t` says.
///
/// # Errors
/// See [`TranslateError`]; on error not one byte of `frame` has changed.
pub fn translate(frame: &mut [u8], t: &Translation) -> Result<Translated, TranslateError> {
    let loc = Located::parse(frame)?;
    let new_addrs = match (loc.addrs, t.src_ip, t.dst_ip) {
        (Addrs::V4(..), IpAddr::V4(s), IpAddr::V4(d)) => Addrs::V4(s, d),
        (Addrs::V6(..), IpAddr::V6(s), IpAddr::V6(d)) => Addrs::V6(s, d),
        _ => return Err(TranslateError::FamilyMismatch),
    };
    // Nothing has been written yet; from here on nothing can fail.
    Ok(loc.apply(frame, new_addrs, t))
}

/// Where the headers of a frame [`translate`] accepts are, for the fuzz
/// harness and the tests.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Offset of the IP header.
    pub l3_off: usize,
    /// The L4 segment: exactly the IP payload.
    pub l4: std::ops::Range<usize>,
    /// TCP (else UDP).
    pub tcp: bool,
    /// The packet's addresses, for pseudo-header checksums.
    pub ips: IpPair,
}

/// Locates the headers of `frame` with the checks of [`translate`].
pub(crate) fn layout(frame: &[u8]) -> Result<Layout, TranslateError> {
    let loc = Located::parse(frame)?;
    let ips = match loc.addrs {
        Addrs::V4(src, dst) => IpPair::V4 { src, dst },
        Addrs::V6(src, dst) => IpPair::V6 { src, dst },
    };
    Ok(Layout {
        l3_off: loc.l3_off,
        l4: loc.l4,
        tcp: loc.tcp,
        ips,
    })
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

#[cfg(test)]
mod tests;
