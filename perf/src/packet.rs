//! Frames the generator sends, and the signature it reads back.
//!
//! Every frame ends with a 20-byte signature: magic `STG1` (u32), a 64-bit sequence number
//! and the TSC at transmission (u64), big-endian. It sits at the very end of the L4
//! payload, so the sink finds it without parsing headers, and it survives what a switch
//! rewrites (addresses, ports, TCP sequence numbers and options: a stitch translation
//! never changes a frame's length). Frames are built once per flow as templates with the
//! sequence number and TSC zero and a valid checksum; [`stamp`] writes the two fields and
//! updates the L4 checksum incrementally (RFC 1624), so every frame on the wire carries a
//! correct checksum.
//!
//! Sizes are on-the-wire sizes including the 4-byte FCS (pktgen's convention: 64 is the
//! minimum frame); the bytes built are 4 fewer. A size too small for the headers plus the
//! signature is raised to the smallest that fits (UDP: 66, TCP: 78, TCP with timestamps:
//! 90, plain L2: 64).

use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use etherparse::{PacketBuilder, TcpOptionElement};

/// `STG1`.
pub const MAGIC: u32 = 0x5354_4731;
/// Bytes of the signature at the end of every frame.
pub const SIG_LEN: usize = 20;
/// The FCS the NIC adds (not in the bytes built).
pub const FCS_LEN: usize = 4;
/// Bytes per frame on the wire beyond the frame itself: preamble + SFD (8) and the
/// inter-frame gap (12). Line rate counts them.
pub const WIRE_OVERHEAD: usize = 20;
/// Ethertype of plain L2 frames (IEEE 802 local experimental).
pub const ETHERTYPE_L2: u16 = 0x88b5;
/// Largest frame built (1518 on the wire).
pub const MAX_FRAME: usize = 1514;

/// What a frame carries besides its headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature {
    pub seq: u64,
    pub tsc: u64,
}

/// Where a frame's L4 checksum is, for the incremental update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Csum {
    /// No L4 checksum (plain L2 frame).
    None,
    /// UDP checksum at `csum_off`; the L4 header starts at `l4_off`.
    Udp { l4_off: u16, csum_off: u16 },
    /// TCP checksum at `csum_off`; the L4 header starts at `l4_off`.
    Tcp { l4_off: u16, csum_off: u16 },
}

/// TCP fields of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFields {
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    /// TSval, TSecr: adds a NOP NOP timestamp option (12 bytes).
    pub timestamps: Option<(u32, u32)>,
}

/// What one flow's frames look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// Ethernet only, ethertype [`ETHERTYPE_L2`].
    L2,
    Udp,
    Tcp(TcpFields),
}

/// The addresses of one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub l4: L4,
}

/// Smallest on-the-wire size (with FCS) a frame of this kind can have.
pub fn min_wire_size(l4: &L4) -> usize {
    let hdr = match l4 {
        L4::L2 => 14,
        L4::Udp => 14 + 20 + 8,
        L4::Tcp(t) => 14 + 20 + 20 + if t.timestamps.is_some() { 12 } else { 0 },
    };
    (hdr + SIG_LEN).max(60) + FCS_LEN
}

/// Builds the frame of `flow` for `wire_size` bytes on the wire (raised to
/// [`min_wire_size`]), signature fields zero, checksums valid. Appends it to `out` and
/// returns where its L4 checksum is.
///
/// # Errors
/// When the size is above 1518.
pub fn build(flow: &FlowSpec, wire_size: usize, out: &mut Vec<u8>) -> Result<Csum> {
    let size = wire_size.max(min_wire_size(&flow.l4)) - FCS_LEN;
    if size > MAX_FRAME {
        bail!("frame size {wire_size} is above 1518");
    }
    let mut sig = [0u8; SIG_LEN];
    sig[..4].copy_from_slice(&MAGIC.to_be_bytes());
    let start = out.len();
    let csum = match flow.l4 {
        L4::L2 => {
            out.extend_from_slice(&flow.dst_mac);
            out.extend_from_slice(&flow.src_mac);
            out.extend_from_slice(&ETHERTYPE_L2.to_be_bytes());
            out.resize(start + size - SIG_LEN, 0);
            out.extend_from_slice(&sig);
            Csum::None
        }
        L4::Udp => {
            let b = PacketBuilder::ethernet2(flow.src_mac, flow.dst_mac)
                .ipv4(flow.src_ip.octets(), flow.dst_ip.octets(), 64)
                .udp(flow.src_port, flow.dst_port);
            let mut payload = vec![0u8; size - 42];
            let n = payload.len();
            payload[n - SIG_LEN..].copy_from_slice(&sig);
            b.write(out, &payload)?;
            Csum::Udp {
                l4_off: 34,
                csum_off: 40,
            }
        }
        L4::Tcp(t) => {
            let mut b = PacketBuilder::ethernet2(flow.src_mac, flow.dst_mac)
                .ipv4(flow.src_ip.octets(), flow.dst_ip.octets(), 64)
                .tcp(flow.src_port, flow.dst_port, t.seq, t.window)
                .ack(t.ack)
                .psh();
            let mut hdr = 54;
            if let Some((v, e)) = t.timestamps {
                b = b.options(&[
                    TcpOptionElement::Noop,
                    TcpOptionElement::Noop,
                    TcpOptionElement::Timestamp(v, e),
                ])?;
                hdr += 12;
            }
            let mut payload = vec![0u8; size - hdr];
            let n = payload.len();
            payload[n - SIG_LEN..].copy_from_slice(&sig);
            b.write(out, &payload)?;
            Csum::Tcp {
                l4_off: 34,
                csum_off: 50,
            }
        }
    };
    debug_assert_eq!(out.len() - start, size);
    Ok(csum)
}

/// One's-complement sum of `bytes` placed `odd` bytes past a 16-bit boundary.
fn sum16(bytes: &[u8], odd: bool) -> u32 {
    let mut s = 0u32;
    let mut hi = !odd;
    for &b in bytes {
        s += if hi { u32::from(b) << 8 } else { u32::from(b) };
        hi = !hi;
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Writes `sig` into a copy of a template (whose sequence and TSC fields are zero) and
/// updates its L4 checksum: the old field was zero, so the new checksum is the old one
/// with the new words added (RFC 1624, eqn. 3).
pub fn stamp(frame: &mut [u8], csum: Csum, sig: Signature) {
    let n = frame.len();
    let at = n - 16;
    frame[at..at + 8].copy_from_slice(&sig.seq.to_be_bytes());
    frame[at + 8..].copy_from_slice(&sig.tsc.to_be_bytes());
    let (l4_off, csum_off, udp) = match csum {
        Csum::None => return,
        Csum::Udp { l4_off, csum_off } => (usize::from(l4_off), usize::from(csum_off), true),
        Csum::Tcp { l4_off, csum_off } => (usize::from(l4_off), usize::from(csum_off), false),
    };
    let add = sum16(&frame[at..], (at - l4_off) % 2 == 1);
    let old = u16::from_be_bytes([frame[csum_off], frame[csum_off + 1]]);
    let mut new = !fold(u32::from(!old) + add);
    if udp && new == 0 {
        new = 0xffff; // 0 means "no checksum" in UDP
    }
    frame[csum_off..csum_off + 2].copy_from_slice(&new.to_be_bytes());
}

/// The signature at the end of `frame`, when it carries one.
#[inline]
pub fn read_signature(frame: &[u8]) -> Option<Signature> {
    let n = frame.len();
    if n < SIG_LEN {
        return None;
    }
    let s = &frame[n - SIG_LEN..];
    if u32::from_be_bytes([s[0], s[1], s[2], s[3]]) != MAGIC {
        return None;
    }
    let seq = u64::from_be_bytes(s[4..12].try_into().ok()?);
    let tsc = u64::from_be_bytes(s[12..20].try_into().ok()?);
    Some(Signature { seq, tsc })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn flow(l4: L4) -> FlowSpec {
        FlowSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(198, 18, 0, 1),
            dst_ip: Ipv4Addr::new(198, 19, 0, 1),
            src_port: 1234,
            dst_port: 80,
            l4,
        }
    }

    const TCP_TS: L4 = L4::Tcp(TcpFields {
        seq: 1000,
        ack: 2000,
        window: 512,
        timestamps: Some((100, 50)),
    });

    /// Recomputes the L4 checksum with etherparse and compares it with the frame's.
    fn checksums_valid(frame: &[u8]) -> bool {
        let p = SlicedPacket::from_ethernet(frame).expect("parses");
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            return true;
        };
        let iph = ip.header().to_header();
        if iph.header_checksum != iph.calc_header_checksum() {
            return false;
        }
        match p.transport {
            Some(TransportSlice::Udp(u)) => {
                u.to_header().calc_checksum_ipv4(&iph, u.payload()).unwrap() == u.checksum()
            }
            Some(TransportSlice::Tcp(t)) => {
                t.to_header().calc_checksum_ipv4(&iph, t.payload()).unwrap() == t.checksum()
            }
            _ => panic!("no transport"),
        }
    }

    #[test]
    fn stamped_frames_keep_valid_checksums_for_every_size_and_kind() {
        for l4 in [
            L4::Udp,
            L4::Tcp(TcpFields {
                timestamps: None,
                seq: 7,
                ack: 9,
                window: 100,
            }),
            TCP_TS,
        ] {
            for size in [64, 65, 66, 67, 90, 91, 128, 511, 1518] {
                let mut f = Vec::new();
                let csum = build(&flow(l4), size, &mut f).unwrap();
                assert_eq!(f.len(), size.max(min_wire_size(&l4)) - FCS_LEN);
                assert!(checksums_valid(&f), "template {l4:?} {size}");
                for (seq, tsc) in [
                    (0, 0),
                    (1, 2),
                    (u64::MAX, u64::MAX),
                    (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
                ] {
                    let mut g = f.clone();
                    stamp(&mut g, csum, Signature { seq, tsc });
                    assert!(checksums_valid(&g), "{l4:?} size {size} seq {seq:x}");
                    assert_eq!(read_signature(&g), Some(Signature { seq, tsc }));
                }
            }
        }
    }

    #[test]
    fn udp_checksum_that_folds_to_zero_is_sent_as_ffff() {
        // Search for a stamp whose checksum computes to 0x0000 and check it is written 0xffff.
        let mut f = Vec::new();
        let csum = build(&flow(L4::Udp), 64, &mut f).unwrap();
        let old = u16::from_be_bytes([f[40], f[41]]);
        // Adding the old checksum as a word makes the sum 0xffff, so the checksum 0.
        let seq = u64::from(old) << 16;
        let mut g = f.clone();
        stamp(&mut g, csum, Signature { seq, tsc: 0 });
        assert_eq!(u16::from_be_bytes([g[40], g[41]]), 0xffff);
        assert!(checksums_valid(&g));
    }

    #[test]
    fn plain_l2_frame_is_64_bytes_with_signature_at_the_end() {
        let mut f = Vec::new();
        let csum = build(&flow(L4::L2), 64, &mut f).unwrap();
        assert_eq!((f.len(), csum), (60, Csum::None));
        assert_eq!(&f[12..14], &ETHERTYPE_L2.to_be_bytes());
        stamp(&mut f, csum, Signature { seq: 5, tsc: 6 });
        assert_eq!(read_signature(&f), Some(Signature { seq: 5, tsc: 6 }));
    }

    #[test]
    fn small_sizes_are_raised_to_what_fits_and_big_ones_refused() {
        assert_eq!(min_wire_size(&L4::Udp), 66);
        assert_eq!(min_wire_size(&TCP_TS), 90);
        let mut f = Vec::new();
        build(&flow(TCP_TS), 64, &mut f).unwrap();
        assert_eq!(f.len(), 86);
        assert!(build(&flow(L4::Udp), 1519, &mut Vec::new()).is_err());
    }

    #[test]
    fn frames_without_magic_have_no_signature() {
        assert_eq!(read_signature(&[0u8; 60]), None);
        assert_eq!(read_signature(&[0u8; 10]), None);
    }
}
