//! Zero-copy, checked views of the packet headers stitchd reads and rewrites.
//!
//! What it does: each header is a view `Xxx<T: AsRef<[u8]>>` over a byte
//! buffer (an mbuf's data, a `Vec`, a test array) with field offsets in a
//! private `mod field`, plus a validated `XxxRepr` that the slow path parses
//! into and emits from. The fast path edits fields in place through the view
//! and patches checksums with the RFC 1624 helpers in [`checksum`].
//!
//! What it guarantees: after `new_checked` succeeds, no getter, setter or
//! `payload()` of that view panics, whatever the bytes are. `Repr::emit`
//! always writes a correct checksum where the header has one, so a generated
//! packet cannot leave without it.
//!
//! What it must not do: allocate, copy payloads on the fast path, or know
//! about DPDK. Parsing is one header at a time; the caller chains views
//! (`EthernetFrame::payload()` into `Ipv4Packet::new_checked`, and so on).

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

use std::net::{Ipv4Addr, Ipv6Addr};

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetFrame, EthernetRepr, VlanTag};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6Packet, Ipv6Repr};
pub use tcp::{TcpFlags, TcpOption, TcpOptionsIter, TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};

/// Why bytes could not be read as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header, or than a length the header declares.
    #[error("packet truncated: buffer shorter than the header or its declared length")]
    Truncated,
    /// A field holds a value that makes the header meaningless (the text says which).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// The header's checksum does not verify.
    #[error("bad checksum")]
    BadChecksum,
}

/// The IP protocol number (IPv4 `protocol`, IPv6 `next header`).
///
/// Total: every byte maps to a variant; unknown values are kept in
/// `Unknown(raw)` so re-emitting a packet never loses information. Values that
/// have a named variant are always converted to it by `From<u8>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpProtocol {
    /// ICMP for IPv4 (1).
    Icmp,
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP for IPv6 (58).
    Icmpv6,
    /// Any other protocol number.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(v: u8) -> Self {
        match v {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            58 => IpProtocol::Icmpv6,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(p: IpProtocol) -> u8 {
        match p {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// The source and destination addresses of the IP packet carrying a TCP or
/// UDP segment, needed for the pseudo-header checksum.
///
/// Why an enum rather than two function families: `TcpRepr::emit` and
/// `UdpRepr::emit` take one `&IpPair`, so slow-path code that builds replies
/// for both IP versions has a single call site. The packet views also offer
/// `_v4`/`_v6` methods for fast-path code that already knows the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpPair {
    /// Addresses of an IPv4 packet.
    V4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
    },
    /// Addresses of an IPv6 packet.
    V6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
    },
}

impl IpPair {
    /// The unfolded ones-complement sum of the pseudo-header for an
    /// upper-layer packet of `len` bytes.
    pub fn pseudo_header(&self, proto: IpProtocol, len: u32) -> u32 {
        match *self {
            IpPair::V4 { src, dst } => checksum::pseudo_header_v4(src, dst, proto, len as u16),
            IpPair::V6 { src, dst } => checksum::pseudo_header_v6(src, dst, proto, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The `new_checked` promise: whatever the bytes, once a view is
        /// checked no accessor, payload or parse panics.
        #[test]
        fn checked_views_never_panic(
            mut bytes in proptest::collection::vec(any::<u8>(), 0..128),
            shape in any::<bool>(),
        ) {
            // Half the cases get plausible IPv4 and UDP length fields, so the
            // checked paths are reached often.
            if shape && bytes.len() >= 20 {
                let len = bytes.len() as u16;
                bytes[0] = 0x40 | (5 + bytes[0] % 3);
                let ip_len = len - u16::from(bytes[1] % 4);
                let udp_len = len - u16::from(bytes[7] % 4);
                bytes[2..4].copy_from_slice(&ip_len.to_be_bytes());
                bytes[4..6].copy_from_slice(&udp_len.to_be_bytes());
            }
            let b = &bytes[..];
            let ips = IpPair::V4 { src: Ipv4Addr::LOCALHOST, dst: Ipv4Addr::LOCALHOST };
            if let Ok(f) = EthernetFrame::new_checked(b) {
                let _ = (f.dst_addr(), f.src_addr(), f.vlan(), f.inner_ethertype(), f.payload());
                let _ = EthernetRepr::parse(&f);
            }
            if let Ok(p) = ArpPacket::new_checked(b) {
                let _ = (p.operation(), p.sender_protocol_addr(), p.payload());
                let _ = ArpRepr::parse(&p);
            }
            if let Ok(p) = Ipv4Packet::new_checked(b) {
                let _ = (p.options(), p.payload(), p.verify_checksum(), p.frag_offset());
                let _ = Ipv4Repr::parse(&p);
            }
            if let Ok(p) = Ipv6Packet::new_checked(b) {
                let _ = (p.payload(), p.flow_label(), p.src_addr());
                let _ = Ipv6Repr::parse(&p);
            }
            if let Ok(p) = TcpPacket::new_checked(b) {
                let _ = (p.options(), p.payload(), p.verify_checksum(&ips));
                let _ = p.options_iter().count();
                let _ = TcpRepr::parse_verified(&p, &ips);
            }
            if let Ok(p) = UdpPacket::new_checked(b) {
                let _ = (p.payload(), p.verify_checksum(&ips));
                let _ = UdpRepr::parse_verified(&p, &ips);
            }
            let mut owned = bytes.clone();
            if let Ok(mut p) = Ipv4Packet::new_checked(&mut owned[..]) {
                p.fill_checksum();
                p.payload_mut();
                prop_assert!(p.verify_checksum());
            }
            let mut owned = bytes.clone();
            if let Ok(mut p) = TcpPacket::new_checked(&mut owned[..]) {
                p.fill_checksum(&ips);
                prop_assert!(p.verify_checksum(&ips));
            }
        }
    }

    #[test]
    fn ip_protocol_is_total_and_round_trips() {
        for v in 0..=255u8 {
            assert_eq!(u8::from(IpProtocol::from(v)), v);
        }
        assert_eq!(IpProtocol::from(6), IpProtocol::Tcp);
        assert_eq!(IpProtocol::from(200), IpProtocol::Unknown(200));
    }
}
