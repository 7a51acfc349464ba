//! The fuzz harness of [`translate`], shared by the cargo-fuzz target
//! (`fuzz/fuzz_targets/translate.rs`) and the unit tests, so the harness
//! itself is compiled and exercised by plain `cargo test`.
//!
//! What it does: decodes a [`Translation`] from the first bytes of the input
//! (layout on [`fuzz_translate`]), translates the rest as a frame, and checks
//! the promises of the translation layer.
//!
//! What it guarantees: it panics exactly when a promise is broken (that is
//! how a fuzzer reports a finding); it never panics on uninteresting input.
//!
//! What it must not do: run on the fast path; it allocates a copy of the
//! frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::translate::{
    layout, translate, FlowEndpoints, SackMode, Translation, TsShift, WindowRescale,
};
use crate::wire::{EtherType, EthernetFrame, IpPair, Ipv4Packet, TcpOption, TcpPacket, UdpPacket};
use crate::MacAddr;

/// Input bytes, read front to back; reads past the end give zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
}

/// Flag bits of the first input byte.
pub mod flags {
    /// The translation's addresses are IPv6 (else IPv4).
    pub const V6: u8 = 0x01;
    /// Timestamp shifts present.
    pub const TS: u8 = 0x02;
    /// Window rescaling with the two shift bytes.
    pub const RESCALE: u8 = 0x04;
    /// SACK options to NOPs.
    pub const SACK_TO_NOPS: u8 = 0x08;
}

/// Decodes the translation part of a fuzz input; returns it and the frame.
///
/// Layout (big-endian): `flags: u8` (see [`flags`]), `from_shift: u8`,
/// `to_shift: u8`, `seq_delta: u32`, `ack_delta: u32`, `tsval_delta: u32`,
/// `tsecr_delta: u32`, `eth_src: [u8; 6]`, `eth_dst: [u8; 6]`,
/// `src_port: u16`, `dst_port: u16`, then the source and destination
/// addresses (4 + 4 or 16 + 16 bytes); the rest is the frame.
pub fn decode_input(data: &[u8]) -> (Translation, &[u8]) {
    let mut r = Input(data);
    let f = r.u8();
    let (from_shift, to_shift) = (r.u8(), r.u8());
    let seq_delta = r.u32();
    let ack_delta = r.u32();
    let ts = TsShift {
        tsval_delta: r.u32(),
        tsecr_delta: r.u32(),
    };
    let eth_src = MacAddr(r.take());
    let eth_dst = MacAddr(r.take());
    let src_port = r.u16();
    let dst_port = r.u16();
    let (src_ip, dst_ip) = if f & flags::V6 != 0 {
        (
            IpAddr::V6(Ipv6Addr::from(r.take::<16>())),
            IpAddr::V6(Ipv6Addr::from(r.take::<16>())),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::from(r.take::<4>())),
            IpAddr::V4(Ipv4Addr::from(r.take::<4>())),
        )
    };
    let t = Translation {
        eth_src,
        eth_dst,
        src_ip,
        dst_ip,
        src_port,
        dst_port,
        seq_delta,
        ack_delta,
        ts: (f & flags::TS != 0).then_some(ts),
        window: if f & flags::RESCALE != 0 {
            WindowRescale::Rescale {
                from_shift,
                to_shift,
            }
        } else {
            WindowRescale::None
        },
        sack: if f & flags::SACK_TO_NOPS != 0 {
            SackMode::ToNops
        } else {
            SackMode::Keep
        },
    };
    (t, r.0)
}

/// Encodes a translation and a frame as a [`fuzz_translate`] input (the
/// inverse of [`decode_input`]), to build seed corpora and tests.
pub fn encode_input(t: &Translation, frame: &[u8]) -> Vec<u8> {
    let mut f = 0;
    let (mut from_shift, mut to_shift) = (0, 0);
    if let WindowRescale::Rescale {
        from_shift: a,
        to_shift: b,
    } = t.window
    {
        f |= flags::RESCALE;
        (from_shift, to_shift) = (a, b);
    }
    if t.ts.is_some() {
        f |= flags::TS;
    }
    if t.sack == SackMode::ToNops {
        f |= flags::SACK_TO_NOPS;
    }
    if t.src_ip.is_ipv6() {
        f |= flags::V6;
    }
    let ts = t.ts.unwrap_or(TsShift {
        tsval_delta: 0,
        tsecr_delta: 0,
    });
    let mut out = vec![f, from_shift, to_shift];
    for v in [t.seq_delta, t.ack_delta, ts.tsval_delta, ts.tsecr_delta] {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.extend_from_slice(&t.eth_src.0);
    out.extend_from_slice(&t.eth_dst.0);
    out.extend_from_slice(&t.src_port.to_be_bytes());
    out.extend_from_slice(&t.dst_port.to_be_bytes());
    for ip in [t.src_ip, t.dst_ip] {
        match ip {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    out.extend_from_slice(frame);
    out
}

/// The checksum state of a frame: does each checksum verify, and is it in
/// the one representation a full recompute gives (so a round trip through
/// incremental updates must reproduce it bit for bit)?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sums {
    ip_ok: bool,
    ip_canonical: bool,
    l4_ok: bool,
    l4_canonical: bool,
}

fn sums(frame: &[u8]) -> Option<Sums> {
    let lay = layout(frame).ok()?;
    let (ip_ok, ip_canonical) = match lay.ips {
        IpPair::V4 { .. } => {
            let ip = Ipv4Packet::new_checked(&frame[lay.l3_off..]).ok()?;
            let ok = ip.verify_checksum();
            (ok, ok && ip.checksum() != 0xffff)
        }
        IpPair::V6 { .. } => (true, true),
    };
    let seg = &frame[lay.l4.clone()];
    let (l4_ok, l4_canonical) = if lay.tcp {
        let p = TcpPacket::new_checked(seg).ok()?;
        let ok = p.verify_checksum(&lay.ips);
        (ok, ok && p.checksum() != 0xffff)
    } else {
        let p = UdpPacket::new_checked(seg).ok()?;
        let ok = p.verify_checksum(&lay.ips);
        (ok, ok || p.checksum() == 0)
    };
    Some(Sums {
        ip_ok,
        ip_canonical,
        l4_ok,
        l4_canonical,
    })
}

/// True if a timestamps option of the TCP segment in `frame` has TSecr 0.
fn has_zero_tsecr(frame: &[u8]) -> bool {
    let Ok(lay) = layout(frame) else {
        return false;
    };
    if !lay.tcp {
        return false;
    }
    let Ok(p) = TcpPacket::new_checked(&frame[lay.l4]) else {
        return false;
    };
    p.options_iter()
        .any(|o| matches!(o, Ok(TcpOption::Timestamp { tsecr: 0, .. })))
}

/// Translates the frame that follows a decoded [`Translation`] (layout on
/// [`decode_input`]) and checks every promise of [`translate`]:
///
/// - on `Err`, the frame is byte for byte what it was;
/// - on `Ok`, the length is unchanged, the MACs are the translation's, and
///   every checksum that verified before verifies after;
/// - without rescaling or SACK blanking, translating back with
///   [`Translation::inverse`] gives the original bytes (when the checksums
///   were in canonical form and no TSecr became 0).
///
/// # Panics
/// When one of those promises is broken.
pub fn fuzz_translate(data: &[u8]) {
    let (t, original) = decode_input(data);
    let mut frame = original.to_vec();
    let out = match translate(&mut frame, &t) {
        Err(e) => {
            assert_eq!(
                frame, original,
                "frame changed although translate failed: {e}"
            );
            return;
        }
        Ok(out) => out,
    };
    assert_eq!(frame.len(), original.len());
    let eth = EthernetFrame::new_checked(&frame[..]).expect("translated frame parses");
    assert_eq!((eth.src_addr(), eth.dst_addr()), (t.eth_src, t.eth_dst));
    assert!(matches!(
        eth.inner_ethertype(),
        EtherType::Ipv4 | EtherType::Ipv6
    ));
    assert!(out.proto == 6 || out.proto == 17);

    let before = sums(original).expect("accepted frame has a layout");
    let after = sums(&frame).expect("translated frame has a layout");
    assert!(!before.ip_ok || after.ip_ok, "IP header checksum broken");
    assert!(!before.l4_ok || after.l4_ok, "L4 checksum broken");

    let invertible = t.window == WindowRescale::None && t.sack == SackMode::Keep;
    let canonical = before.ip_canonical && before.l4_canonical;
    if invertible && canonical && !(t.ts.is_some() && has_zero_tsecr(&frame)) {
        let orig = FlowEndpoints::of_frame(original).expect("accepted frame has endpoints");
        translate(&mut frame, &t.inverse(&orig)).expect("translated frame translates back");
        assert_eq!(
            frame, original,
            "translate then inverse is not the identity"
        );
    }
}
