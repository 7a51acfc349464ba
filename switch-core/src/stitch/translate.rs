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
//! length and walks the TCP options once (with the checks of
//! [`TcpOptionsIter`](crate::wire::TcpOptionsIter)), noting where the SACK
//! and timestamps options are; any error is returned from there, so **on
//! `Err` the frame is untouched**. The second pass writes fields at fixed
//! offsets and cannot fail. No allocation, no full checksum recompute: the
//! RFC 1624 terms of every changed word are summed and each checksum is
//! patched once, whatever the payload size. Checksums stay correct: for a
//! frame whose checksums verified, the patched ones equal a full recompute
//! (property-tested), and the output is bit for bit that of the first,
//! word-at-a-time version (kept in `translate/reference.rs` as the test
//! oracle).
//!
//! Cost: the options layout Linux puts on every established segment (NOP,
//! NOP, timestamps) is recognized in one compare and rewritten at fixed
//! offsets; other layouts take one walk. `benches/translate.rs` measures
//! representative frames (`cargo bench -p switch-core --bench translate`).
//!
//! What it must not do: change a length, move bytes, or look into IPv6
//! extension headers or IP fragments (refused: the L4 header of a fragment is
//! absent or incomplete). Window rescaling rounds down and clamps, and SACK
//! to NOPs destroys the blocks, so those two are not invertible; everything
//! else is, through [`Translation::inverse`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::seq::SeqNumber;
use crate::wire::checksum::fold;
use crate::wire::{
    EtherType, EthernetFrame, IpPair, IpProtocol, Ipv4Packet, Ipv6Packet, TcpFlags, TcpPacket,
    UdpPacket, WireError,
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
        let (src_ip, dst_ip) = match loc.ips(frame) {
            IpPair::V4 { src, dst } => (src.into(), dst.into()),
            IpPair::V6 { src, dst } => (src.into(), dst.into()),
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
    // The common layouts first, with the IP header at a constant offset.
    // What they decide (accept or refuse), `Located::parse` decides the
    // same way (tested); what they do not recognize, it judges. Each
    // layout gets its own function, so that the compiler specializes the
    // writing pass for its offsets instead of sharing one copy.
    if let Some(loc) = Located::common_v4(frame) {
        return loc?.translate(frame, t);
    }
    translate_not_v4(frame, t)
}

/// [`translate`] for frames that are not [`Located::common_v4`].
#[inline(never)]
fn translate_not_v4(frame: &mut [u8], t: &Translation) -> Result<Translated, TranslateError> {
    if let Some(loc) = Located::common_v6(frame) {
        return loc?.translate(frame, t);
    }
    translate_general(frame, t)
}

/// [`translate`] for frames in no common layout: VLAN tags, IP options,
/// and the frames it refuses.
#[inline(never)]
fn translate_general(frame: &mut [u8], t: &Translation) -> Result<Translated, TranslateError> {
    Located::parse(frame)?.translate(frame, t)
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
    let ips = loc.ips(frame);
    Ok(Layout {
        l3_off: loc.l3_off,
        l4: loc.l4,
        tcp: loc.tcp,
        ips,
    })
}

/// The translation's addresses as integers, of the packet's family (checked
/// by [`translate`]).
#[derive(Debug, Clone, Copy)]
enum NewAddrs {
    V4(u32, u32),
    V6(u128, u128),
}

/// Byte offsets of the fields [`Located::apply`] rewrites.
mod field {
    /// Ethernet destination and source MACs.
    pub const ETH_DST: usize = 0;
    pub const ETH_SRC: usize = 6;
    /// IPv4 header checksum and addresses, from the IP header.
    pub const V4_CHECKSUM: usize = 10;
    pub const V4_SRC: usize = 12;
    pub const V4_DST: usize = 16;
    /// IPv6 addresses, from the IP header.
    pub const V6_SRC: usize = 8;
    pub const V6_DST: usize = 24;
    /// TCP and UDP ports, from the L4 header.
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    /// TCP fields, from the TCP header.
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const TCP_CHECKSUM: usize = 16;
    /// UDP fields, from the UDP header.
    pub const UDP_LEN: usize = 4;
    pub const UDP_CHECKSUM: usize = 6;
}

/// Options area offset of the timestamps option in the layout Linux puts on
/// every established segment: NOP, NOP, TS (12 bytes in all).
const TS_FAST_AT: usize = 2;

/// The SACK and timestamps options of a TCP header, as validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opts {
    /// Neither (or not TCP).
    None,
    /// Exactly NOP, NOP, TS: rewritten at fixed offsets.
    NopNopTs,
    /// Bit `i` is set when a SACK or a timestamps option starts at byte `i`
    /// of the options area (at most 40 bytes).
    Marks(u64),
}

impl Opts {
    /// The bit set of [`Opts::Marks`] for any variant.
    #[cfg(test)]
    fn marks(self) -> u64 {
        match self {
            Opts::None => 0,
            Opts::NopNopTs => 1 << TS_FAST_AT,
            Opts::Marks(m) => m,
        }
    }
}

/// Where the headers of a frame are: the result of the read-only pass.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Located {
    l3_off: usize,
    v6: bool,
    /// The L4 segment: exactly the IP payload.
    l4: std::ops::Range<usize>,
    tcp: bool,
    /// TCP only: where the options to rewrite are.
    opts: Opts,
}

/// Offsets of the common layouts: untagged Ethernet, then IPv4 without
/// options or IPv6 without extension headers.
mod common {
    /// Ethernet header.
    pub const L3: usize = 14;
    /// IPv4: version 4, IHL 5.
    pub const V4_VER_IHL: u8 = 0x45;
    pub const V4_L4: usize = L3 + 20;
    /// IPv6 fixed header.
    pub const V6_L4: usize = L3 + 40;
    /// IP protocol numbers.
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

impl Located {
    /// An untagged, complete, unfragmented IPv4 packet without IP options
    /// carrying TCP or UDP: located (or refused) as [`Located::parse`]
    /// would, with the IP header at a constant offset. `None` for anything
    /// else, which [`Located::parse`] then judges.
    #[inline(always)]
    fn common_v4(frame: &[u8]) -> Option<Result<Located, TranslateError>> {
        use common::*;
        let h = frame.first_chunk::<V4_L4>()?;
        let proto = h[L3 + 9];
        let end = L3 + usize::from(u16::from_be_bytes([h[L3 + 2], h[L3 + 3]]));
        let ok = h[12..14] == [0x08, 0x00]
            && h[L3] == V4_VER_IHL
            // More fragments or a fragment offset (DF and the reserved bit
            // do not matter).
            && u16::from_be_bytes([h[L3 + 6], h[L3 + 7]]) & 0x3fff == 0
            && (proto == TCP || proto == UDP)
            && end >= V4_L4
            && end <= frame.len();
        ok.then(|| Located::locate_l4(frame, L3, false, proto == TCP, V4_L4..end))
    }

    /// [`Located::common_v4`] for IPv6 without extension headers.
    #[inline(always)]
    fn common_v6(frame: &[u8]) -> Option<Result<Located, TranslateError>> {
        use common::*;
        let h = frame.first_chunk::<V6_L4>()?;
        let proto = h[L3 + 6];
        let end = V6_L4 + usize::from(u16::from_be_bytes([h[L3 + 4], h[L3 + 5]]));
        let ok = h[12..14] == [0x86, 0xdd]
            && h[L3] >> 4 == 6
            && (proto == TCP || proto == UDP)
            && end <= frame.len();
        ok.then(|| Located::locate_l4(frame, L3, true, proto == TCP, V6_L4..end))
    }

    /// Checks the translation's family, then rewrites.
    #[inline(always)]
    fn translate(self, frame: &mut [u8], t: &Translation) -> Result<Translated, TranslateError> {
        let new = match (self.v6, t.src_ip, t.dst_ip) {
            (false, IpAddr::V4(s), IpAddr::V4(d)) => NewAddrs::V4(u32::from(s), u32::from(d)),
            (true, IpAddr::V6(s), IpAddr::V6(d)) => NewAddrs::V6(u128::from(s), u128::from(d)),
            _ => return Err(TranslateError::FamilyMismatch),
        };
        // Nothing has been written yet; from here on nothing can fail.
        Ok(self.apply(frame, new, t))
    }

    /// The read-only pass: every check that can fail, in the order of the
    /// `wire` views' `new_checked`, so the error is the one they give.
    #[inline]
    fn parse(frame: &[u8]) -> Result<Located, TranslateError> {
        let eth = EthernetFrame::new_checked(frame)?;
        let l3_off = eth.header_len();
        let l3 = &frame[l3_off..];
        let (v6, proto, l4) = match eth.inner_ethertype() {
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
                (false, ip.protocol(), start..end)
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
                (true, proto, start..end)
            }
            _ => return Err(TranslateError::NotIp),
        };
        let tcp = match proto {
            IpProtocol::Tcp => true,
            IpProtocol::Udp => false,
            _ => return Err(TranslateError::NotTcpOrUdp),
        };
        Located::locate_l4(frame, l3_off, v6, tcp, l4)
    }

    /// The checks of the L4 header, the IP header being located.
    #[inline(always)]
    fn locate_l4(
        frame: &[u8],
        l3_off: usize,
        v6: bool,
        tcp: bool,
        l4: std::ops::Range<usize>,
    ) -> Result<Located, TranslateError> {
        let seg = &frame[l4.clone()];
        let opts = if tcp {
            let p = TcpPacket::new_checked(seg)?;
            scan_options(&seg[TCP_HEADER_LEN..p.header_len()])?
        } else {
            UdpPacket::new_checked(seg)?;
            Opts::None
        };
        Ok(Located {
            l3_off,
            v6,
            l4,
            tcp,
            opts,
        })
    }

    /// The packet's source and destination addresses.
    fn ips(&self, frame: &[u8]) -> IpPair {
        let ip = &frame[self.l3_off..];
        if self.v6 {
            IpPair::V6 {
                src: Ipv6Addr::from(get128(ip, field::V6_SRC)),
                dst: Ipv6Addr::from(get128(ip, field::V6_DST)),
            }
        } else {
            IpPair::V4 {
                src: Ipv4Addr::from(get32(ip, field::V4_SRC)),
                dst: Ipv4Addr::from(get32(ip, field::V4_DST)),
            }
        }
    }

    /// The writing pass. Every offset was validated by [`Located::parse`] on
    /// these same bytes, so the indexing stays in bounds.
    ///
    /// Each checksum is patched once: the RFC 1624 terms `~m + m'` of every
    /// changed word (or field, where the first version patched a whole
    /// field at once) are added up in a [`Sum`] and folded in at the end.
    /// Ones-complement addition is associative and the sum is zero only
    /// when every term is, so this gives the very bits that one
    /// `update16` per word gave, `0x0000` versus `0xffff` included.
    #[inline(always)]
    fn apply(&self, frame: &mut [u8], new: NewAddrs, t: &Translation) -> Translated {
        // No checksum covers the MACs.
        frame[field::ETH_DST..field::ETH_DST + 6].copy_from_slice(&t.eth_dst.0);
        frame[field::ETH_SRC..field::ETH_SRC + 6].copy_from_slice(&t.eth_src.0);

        let pseudo = match new {
            NewAddrs::V4(ns, nd) => {
                let ip = &mut frame[self.l3_off..self.l3_off + 20];
                let d = swap32(ip, field::V4_SRC, ns) + swap32(ip, field::V4_DST, nd);
                let c = get16(ip, field::V4_CHECKSUM);
                put16(ip, field::V4_CHECKSUM, patch(c, d));
                d
            }
            NewAddrs::V6(ns, nd) => {
                // No header checksum in IPv6.
                let ip = &mut frame[self.l3_off..self.l3_off + 40];
                swap128(ip, field::V6_SRC, ns) + swap128(ip, field::V6_DST, nd)
            }
        };

        let seg = &mut frame[self.l4.clone()];
        if self.tcp {
            rewrite_tcp(seg, self.opts, pseudo, t)
        } else {
            rewrite_udp(seg, pseudo, t)
        }
    }
}

#[inline(always)]
fn rewrite_tcp(seg: &mut [u8], opts: Opts, pseudo: Sum, t: &Translation) -> Translated {
    let (h, rest) = seg.split_at_mut(TCP_HEADER_LEN);
    let mut d = pseudo;
    d += swap16(h, field::SRC_PORT, t.src_port);
    d += swap16(h, field::DST_PORT, t.dst_port);

    let flags = TcpFlags(h[field::FLAGS]);
    let old_seq = get32(h, field::SEQ);
    let seq = (SeqNumber(old_seq) + t.seq_delta).0;
    d += term32(old_seq, seq);
    put32(h, field::SEQ, seq);

    let ack_set = flags.contains(TcpFlags::ACK);
    let old_ack = get32(h, field::ACK);
    let ack = if ack_set {
        let ack = (SeqNumber(old_ack) - t.ack_delta).0;
        d += term32(old_ack, ack);
        put32(h, field::ACK, ack);
        ack
    } else {
        old_ack
    };

    // RFC 7323 section 2.2: the window of a SYN segment is never scaled.
    if !flags.contains(TcpFlags::SYN) {
        d += swap16(h, field::WINDOW, t.window.apply(get16(h, field::WINDOW)));
    }

    // The options area starts at byte 20 (even), so a word boundary in it is
    // a word boundary of the segment.
    let opts_len = usize::from(h[12] >> 4) * 4 - TCP_HEADER_LEN;
    let (area, payload) = rest.split_at_mut(opts_len);
    let tsval = match opts {
        Opts::None => None,
        Opts::NopNopTs => rewrite_ts_fast(area, t, ack_set, &mut d),
        Opts::Marks(marks) => rewrite_options(area, marks, t, ack_set, &mut d),
    };

    let c = get16(h, field::TCP_CHECKSUM);
    put16(h, field::TCP_CHECKSUM, patch(c, d));
    Translated {
        proto: u8::from(IpProtocol::Tcp),
        tcp_flags: flags.bits(),
        payload_len: payload.len(),
        seq,
        ack,
        tsval,
    }
}

#[inline(always)]
fn rewrite_udp(seg: &mut [u8], pseudo: Sum, t: &Translation) -> Translated {
    let h = &mut seg[..UDP_HEADER_LEN];
    let old_c = get16(h, field::UDP_CHECKSUM);
    let d =
        pseudo + swap16(h, field::SRC_PORT, t.src_port) + swap16(h, field::DST_PORT, t.dst_port);
    // Zero means "no checksum" over IPv4 and stays so; over IPv6 it is
    // invalid, and stays invalid (receivers drop it either way).
    if old_c != 0 {
        let c = patch(old_c, d);
        // RFC 768: a computed zero is sent as all ones.
        put16(h, field::UDP_CHECKSUM, if c == 0 { 0xffff } else { c });
    }
    Translated {
        proto: u8::from(IpProtocol::Udp),
        tcp_flags: 0,
        // Validated: UDP_HEADER_LEN <= length <= segment length.
        payload_len: usize::from(get16(h, field::UDP_LEN)) - UDP_HEADER_LEN,
        seq: 0,
        ack: 0,
        tsval: None,
    }
}

/// Validates a TCP options area as [`TcpOptionsIter`] does (the same
/// options are refused) and returns where its SACK and timestamps options
/// start.
///
/// The NOP NOP TS layout is recognized in one compare; anything else is
/// walked by [`scan_options_walk`].
#[inline(always)]
fn scan_options(opts: &[u8]) -> Result<Opts, TranslateError> {
    if opts.len() == 12 && opts[..4] == [1, 1, 8, 10] {
        return Ok(Opts::NopNopTs);
    }
    match scan_options_walk(opts)? {
        0 => Ok(Opts::None),
        marks => Ok(Opts::Marks(marks)),
    }
}

/// [`scan_options`] without the fast path: one walk over the options.
fn scan_options_walk(opts: &[u8]) -> Result<u64, TranslateError> {
    let mut marks = 0u64;
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
        let Some(&len) = opts.get(i + 1) else {
            return Err(TranslateError::BadOptions);
        };
        let len = usize::from(len);
        if len < 2 || len > opts.len() - i {
            return Err(TranslateError::BadOptions);
        }
        let body = len - 2;
        let ok = match kind {
            2 => body == 2,
            3 => body == 1,
            4 => body == 0,
            5 => body > 0 && body & 7 == 0 && body <= 32,
            8 => body == 8,
            _ => true,
        };
        if !ok {
            return Err(TranslateError::BadOptions);
        }
        if kind == 5 || kind == 8 {
            // i < 40: a TCP header holds at most 40 bytes of options.
            marks |= 1 << i;
        }
        i += len;
    }
    Ok(marks)
}

/// Rewrites the timestamps option of a NOP NOP TS options area; returns
/// TSval as sent. The same bytes and terms as [`rewrite_options`] (tested).
#[inline(always)]
fn rewrite_ts_fast(area: &mut [u8], t: &Translation, ack_set: bool, d: &mut Sum) -> Option<u32> {
    Some(rewrite_ts(&mut area[..12], TS_FAST_AT, t, ack_set, d))
}

/// Rewrites the SACK and timestamps options that `marks` locates in an
/// options area that [`scan_options`] accepted; returns the first TSval as
/// sent.
fn rewrite_options(
    area: &mut [u8],
    mut marks: u64,
    t: &Translation,
    ack_set: bool,
    d: &mut Sum,
) -> Option<u32> {
    const NOPS: [u8; 40] = [1; 40];
    let mut first_tsval = None;
    while marks != 0 {
        let i = marks.trailing_zeros() as usize;
        marks &= marks - 1;
        if area[i] == 8 {
            let tsval = rewrite_ts(area, i, t, ack_set, d);
            first_tsval.get_or_insert(tsval);
            continue;
        }
        // Validated: a SACK option is 10, 18, 26 or 34 bytes long.
        let len = usize::from(area[i + 1]);
        match t.sack {
            SackMode::ToNops => *d += write_bytes(area, i, &NOPS[..len]),
            SackMode::Keep => {
                for edge in (i + 2..i + len).step_by(4) {
                    let new = (SeqNumber(get32(area, edge)) - t.ack_delta).0;
                    *d += if edge & 1 == 0 {
                        swap32_words(area, edge, new)
                    } else {
                        write_bytes(area, edge, &new.to_be_bytes())
                    };
                }
            }
        }
    }
    first_tsval
}

/// Rewrites the timestamps option at `i` of an options area; returns TSval
/// as sent.
#[inline(always)]
fn rewrite_ts(area: &mut [u8], i: usize, t: &Translation, ack_set: bool, d: &mut Sum) -> u32 {
    let old_val = get32(area, i + 2);
    let Some(ts) = t.ts else {
        return old_val;
    };
    let tsval = old_val.wrapping_add(ts.tsval_delta);
    let old_ecr = get32(area, i + 6);
    let ecr = (ack_set && old_ecr != 0).then(|| old_ecr.wrapping_sub(ts.tsecr_delta));
    if i & 1 == 0 {
        *d += swap32_words(area, i + 2, tsval);
        if let Some(ecr) = ecr {
            *d += swap32_words(area, i + 6, ecr);
        }
    } else {
        // Both fields straddle words; TSval's last byte shares a word with
        // TSecr's first, patched twice, as the first version did.
        *d += write_bytes(area, i + 2, &tsval.to_be_bytes());
        if let Some(ecr) = ecr {
            *d += write_bytes(area, i + 6, &ecr.to_be_bytes());
        }
    }
    tsval
}

/// Length of a TCP header without options.
const TCP_HEADER_LEN: usize = crate::wire::tcp::HEADER_LEN;
/// Length of a UDP header.
const UDP_HEADER_LEN: usize = 8;

#[inline(always)]
fn get16(b: &[u8], at: usize) -> u16 {
    // One bounds check, then one load (indexing byte by byte would check,
    // and load, each byte).
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_be_bytes(a)
}

#[inline(always)]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
fn get32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

#[inline(always)]
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
fn get128(b: &[u8], at: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    u128::from_be_bytes(a)
}

/// A sum of RFC 1624 terms, not yet folded.
///
/// Why wider words may be summed whole: `2^16 = 1 (mod 0xffff)`, so a
/// 32-bit value is congruent to the sum of its two 16-bit words, and it is
/// zero exactly when both are. What a checksum patch depends on is the sum
/// modulo `0xffff` and whether it is zero, so `!old + new` over 32 bits is
/// as good as the four word terms of `update32`, in fewer instructions.
/// Terms stay below `2^34` and there are at most a few dozen of them: no
/// overflow.
type Sum = u64;

/// The RFC 1624 term `~m + m'` of one 16-bit word, or nothing if it did not
/// change (a checksum is only ever touched by a real change).
#[inline(always)]
fn term16(old: u16, new: u16) -> Sum {
    if old == new {
        0
    } else {
        Sum::from(!old) + Sum::from(new)
    }
}

/// The terms of a 32-bit field patched as one (`update32`: both words
/// count once the field changed).
#[inline(always)]
fn term32(old: u32, new: u32) -> Sum {
    if old == new {
        0
    } else {
        Sum::from(!old) + Sum::from(new)
    }
}

/// The terms of a 128-bit field patched as one (`update_bytes`: the
/// complement of the old field's folded sum, plus the new field's sum).
#[inline(always)]
fn term128(old: u128, new: u128) -> Sum {
    if old == new {
        0
    } else {
        Sum::from(!fold(word_sum128(old))) + Sum::from(word_sum128(new))
    }
}

/// The plain sum of the eight big-endian 16-bit words of `x` (at most
/// `8 * 0xffff`).
#[inline(always)]
fn word_sum128(x: u128) -> u32 {
    const LO_WORDS: u64 = 0x0000_ffff_0000_ffff;
    let (h, l) = ((x >> 64) as u64, x as u64);
    // Four 32-bit lanes of at most 4 * 0xffff each: no carry across lanes.
    let s = (h & LO_WORDS) + ((h >> 16) & LO_WORDS) + (l & LO_WORDS) + ((l >> 16) & LO_WORDS);
    ((s & 0xffff_ffff) + (s >> 32)) as u32
}

/// Folds the accumulated terms `d` into checksum field `c` (RFC 1624 eqn. 3:
/// `HC' = ~(~HC + sum of terms)`).
#[inline(always)]
fn patch(c: u16, d: Sum) -> u16 {
    // Ones-complement (end-around carry) additions of the halves: each
    // keeps the value modulo 0xffff (which divides 2^32 - 1) and keeps it
    // non-zero, so the result is `checksum::fold` of the whole sum.
    let s = Sum::from(!c) + d;
    let (s, carry) = (s as u32).overflowing_add((s >> 32) as u32);
    let s = s + u32::from(carry);
    let (s, carry) = (s as u16).overflowing_add((s >> 16) as u16);
    !(s + u16::from(carry))
}

/// Writes `new` over the 16-bit field at `at`; returns its term.
#[inline(always)]
fn swap16(b: &mut [u8], at: usize, new: u16) -> Sum {
    let old = get16(b, at);
    put16(b, at, new);
    term16(old, new)
}

/// Writes `new` over the 32-bit field at `at`, patched as one field;
/// returns its terms.
#[inline(always)]
fn swap32(b: &mut [u8], at: usize, new: u32) -> Sum {
    let old = get32(b, at);
    put32(b, at, new);
    term32(old, new)
}

/// Writes `new` over the 32-bit field at `at` (an even offset of the
/// checksummed data), patched word by word; returns the terms.
#[inline(always)]
fn swap32_words(b: &mut [u8], at: usize, new: u32) -> Sum {
    let old = get32(b, at);
    put32(b, at, new);
    term16((old >> 16) as u16, (new >> 16) as u16) + term16(old as u16, new as u16)
}

/// Writes `new` over the 128-bit field at `at`, patched as one field;
/// returns its terms.
#[inline(always)]
fn swap128(b: &mut [u8], at: usize, new: u128) -> Sum {
    let old = get128(b, at);
    b[at..at + 16].copy_from_slice(&new.to_be_bytes());
    term128(old, new)
}

/// Writes `new` at `off` (any alignment) in `buf`, whose first byte is at an
/// even offset of the checksummed data, and returns the terms of every
/// 16-bit word touched (RFC 1624 eqn. 3 for each). The slow path: fields at
/// odd offsets and SACK blanking.
fn write_bytes(buf: &mut [u8], off: usize, new: &[u8]) -> Sum {
    let end = off + new.len();
    let mut w = off & !1;
    let mut d = 0;
    while w < end {
        let old = word_at(buf, w);
        let hi = (w + 2).min(end).min(buf.len());
        let lo = w.max(off);
        buf[lo..hi].copy_from_slice(&new[lo - off..hi - off]);
        d += term16(old, word_at(buf, w));
        w += 2;
    }
    d
}

/// The big-endian word at the even offset `at`; a last odd byte is padded
/// with zero on the right, as the checksum does (RFC 1071).
fn word_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b.get(at + 1).copied().unwrap_or(0)])
}

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
