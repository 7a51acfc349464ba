//! Flow keys: the TCP/UDP 5-tuple, its parser and its hash.
//!
//! What it does: [`FlowKey`] names one direction of a TCP or UDP conversation
//! (addresses, ports, protocol, IP version); [`parse_flow`] pulls it out of an
//! Ethernet frame together with the offsets the rewrite code needs; [`hash`]
//! and [`hash_with_seed`] turn it into the 64-bit value the flow table
//! indexes by.
//!
//! What it guarantees: [`parse_flow`] never panics, never allocates, and only
//! returns a key for a frame whose Ethernet, IP and TCP/UDP headers all fit
//! and are well-formed (lengths checked through the `wire` views). A key is a
//! plain `Copy` value of 40 bytes; IPv4 and IPv6 keys never compare equal,
//! even for an IPv4-mapped IPv6 address (the `v6` flag is part of the key).
//!
//! What it must not do: walk IPv6 extension headers, reassemble fragments,
//! or verify checksums (the NIC or the slow path does that): a frame it cannot
//! key cheaply is `None`, and the caller punts it to the slow path.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::wire::ethernet::{EtherType, EthernetFrame};
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::tcp::TcpPacket;
use crate::wire::udp::UdpPacket;
use crate::wire::IpProtocol;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// One direction of a TCP or UDP conversation: the 5-tuple plus the IP
/// version.
///
/// Addresses are stored as 16 bytes; an IPv4 address is stored IPv4-mapped
/// (`::ffff:a.b.c.d`) with `v6 == false`, so one layout serves both families
/// and hashing is branch-free. `Ord` orders by source address, destination
/// address, ports, protocol, then version: stable, but carries no meaning.
#[derive(Copy, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`]).
    pub proto: u8,
    v6: bool,
}

impl FlowKey {
    /// An IPv4 key.
    pub fn v4(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: src.to_ipv6_mapped().octets(),
            dst: dst.to_ipv6_mapped().octets(),
            src_port,
            dst_port,
            proto,
            v6: false,
        }
    }

    /// An IPv6 key. An IPv4-mapped address stays an IPv6 key: it is a
    /// different flow from the IPv4 one.
    pub fn v6(src: Ipv6Addr, src_port: u16, dst: Ipv6Addr, dst_port: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: src.octets(),
            dst: dst.octets(),
            src_port,
            dst_port,
            proto,
            v6: true,
        }
    }

    /// A key from addresses of either family. When the families differ (no
    /// packet has that), both are taken as IPv6, the IPv4 one IPv4-mapped.
    pub fn new(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> FlowKey {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => FlowKey::v4(s, src_port, d, dst_port, proto),
            (s, d) => FlowKey::v6(to_v6(s), src_port, to_v6(d), dst_port, proto),
        }
    }

    /// True for an IPv6 key.
    pub fn is_v6(&self) -> bool {
        self.v6
    }

    /// The source address, in its own family.
    pub fn src_ip(&self) -> IpAddr {
        self.ip(self.src)
    }

    /// The destination address, in its own family.
    pub fn dst_ip(&self) -> IpAddr {
        self.ip(self.dst)
    }

    /// The source address as stored (IPv4-mapped for an IPv4 key).
    pub fn src_octets(&self) -> [u8; 16] {
        self.src
    }

    /// The destination address as stored (IPv4-mapped for an IPv4 key).
    pub fn dst_octets(&self) -> [u8; 16] {
        self.dst
    }

    /// The key of the other direction: addresses and ports swapped.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            proto: self.proto,
            v6: self.v6,
        }
    }

    fn ip(&self, octets: [u8; 16]) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            IpAddr::V4(Ipv4Addr::new(
                octets[12], octets[13], octets[14], octets[15],
            ))
        }
    }
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

struct Proto(u8);

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            PROTO_TCP => f.write_str("tcp"),
            PROTO_UDP => f.write_str("udp"),
            other => write!(f, "proto{other}"),
        }
    }
}

/// `tcp 198.18.0.1:5000 -> 198.18.0.2:80`, `udp [2001:db8::1]:53 -> [2001:db8::2]:5353`.
impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = Proto(self.proto);
        if self.v6 {
            write!(
                f,
                "{proto} [{}]:{} -> [{}]:{}",
                self.src_ip(),
                self.src_port,
                self.dst_ip(),
                self.dst_port
            )
        } else {
            write!(
                f,
                "{proto} {}:{} -> {}:{}",
                self.src_ip(),
                self.src_port,
                self.dst_ip(),
                self.dst_port
            )
        }
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FlowKey({self})")
    }
}

/// Serializes as `{"proto": 6, "src": "198.18.0.1", "src_port": 5000,
/// "dst": "198.18.0.2", "dst_port": 80}`: addresses in their own family.
impl Serialize for FlowKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("FlowKey", 5)?;
        s.serialize_field("proto", &self.proto)?;
        s.serialize_field("src", &self.src_ip())?;
        s.serialize_field("src_port", &self.src_port)?;
        s.serialize_field("dst", &self.dst_ip())?;
        s.serialize_field("dst_port", &self.dst_port)?;
        s.end()
    }
}

/// What [`parse_flow`] found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Info {
    /// The flow the frame belongs to.
    pub key: FlowKey,
    /// Offset of the IP header in the frame (14, or 18 with an 802.1Q tag).
    pub l3_offset: usize,
    /// Offset of the TCP/UDP header in the frame.
    pub l4_offset: usize,
    /// The TCP control bits (`FIN` = 0x01 ... `CWR` = 0x80); 0 for UDP.
    pub tcp_flags: u8,
    /// Bytes of TCP/UDP payload (after the L4 header, within the IP length;
    /// Ethernet padding excluded).
    pub payload_len: usize,
}

/// Extracts the flow of an Ethernet frame, per packet, without allocating.
///
/// Accepted: Ethernet II, optionally with one 802.1Q tag; then IPv4 (version
/// 4, IHL and total length checked, not a fragment) or IPv6 (version 6,
/// payload length checked, next header directly TCP or UDP); then TCP (data
/// offset checked) or UDP (length field checked).
///
/// Returns `None` for anything else: other EtherTypes (ARP, QinQ, two tags),
/// other protocols, IPv6 extension headers, truncated or malformed headers,
/// and every IPv4 fragment, the first one included: later fragments carry
/// no ports, so all pieces of a datagram must take the same (slow) path, and
/// a first fragment's lengths cannot be checked against its L4 header.
#[inline(always)]
pub fn parse_flow(frame: &[u8]) -> Option<L4Info> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let l3_offset = eth.header_len();
    let l3 = eth.payload();
    let (src, dst, v6, proto, l3_header_len, l4) = match eth.inner_ethertype() {
        EtherType::Ipv4 => {
            let ip = Ipv4Packet::new_checked(l3).ok()?;
            if ip.version() != 4 || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let header_len = ip.header_len();
            let total = usize::from(ip.total_len());
            (
                ip.src_addr().to_ipv6_mapped().octets(),
                ip.dst_addr().to_ipv6_mapped().octets(),
                false,
                ip.protocol(),
                header_len,
                l3.get(header_len..total)?,
            )
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(l3).ok()?;
            if ip.version() != 6 {
                return None;
            }
            let header_len = crate::wire::ipv6::HEADER_LEN;
            let end = header_len + usize::from(ip.payload_len());
            (
                ip.src_addr().octets(),
                ip.dst_addr().octets(),
                true,
                ip.next_header(),
                header_len,
                l3.get(header_len..end)?,
            )
        }
        _ => return None,
    };
    let (src_port, dst_port, proto, tcp_flags, payload_len) = match proto {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(l4).ok()?;
            (
                tcp.src_port(),
                tcp.dst_port(),
                PROTO_TCP,
                tcp.flags().bits(),
                l4.len() - tcp.header_len(),
            )
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(l4).ok()?;
            (
                udp.src_port(),
                udp.dst_port(),
                PROTO_UDP,
                0,
                usize::from(udp.len()) - crate::wire::udp::HEADER_LEN,
            )
        }
        _ => return None,
    };
    Some(L4Info {
        key: FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            proto,
            v6,
        },
        l3_offset,
        l4_offset: l3_offset + l3_header_len,
        tcp_flags,
        payload_len,
    })
}

/// The seed [`hash`] uses. Tables facing untrusted traffic should be built
/// with a random seed instead (see `FlowTableConfig::seed`), so that nobody
/// can aim many flows at one probe window.
pub const DEFAULT_SEED: u64 = 0x243f_6a88_85a3_08d3;

const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;
const K2: u64 = 0x8ebc_6af0_9c88_c6e3;
const K3: u64 = 0x5899_65cc_7537_4cc3;

/// 64x64 -> 128-bit multiply, high and low halves folded together: the mixing
/// step of wyhash and foldhash. One `mul` on x86_64 and aarch64.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// [`hash_with_seed`] with [`DEFAULT_SEED`].
#[inline]
pub fn hash(key: &FlowKey) -> u64 {
    hash_with_seed(key, DEFAULT_SEED)
}

/// The flow table's hash of a key: a wyhash-style folded multiply over the
/// five 64-bit words of the key (two per address, one for ports, protocol
/// and version), keyed by `seed`.
///
/// Why this one: a handful of instructions (three independent 128-bit
/// multiplies and a final one), no allocation and no state, and, unlike an
/// FxHash-style multiply-rotate, its low bits (which pick the home slot)
/// depend on every input bit. It is not a cryptographic PRF: with a secret
/// random seed it is good enough to keep traffic from aiming at one probe
/// window; a window that fills anyway yields `Full`, never a crash.
#[inline]
pub fn hash_with_seed(key: &FlowKey, seed: u64) -> u64 {
    let w = |b: &[u8; 16], i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(x)
    };
    let meta = u64::from(key.src_port)
        | u64::from(key.dst_port) << 16
        | u64::from(key.proto) << 32
        | u64::from(key.v6) << 40;
    let a = fold_mul(w(&key.src, 0) ^ K0, w(&key.src, 8) ^ seed);
    let b = fold_mul(w(&key.dst, 0) ^ K1, w(&key.dst, 8) ^ seed.rotate_left(32));
    let c = fold_mul(meta ^ K2, seed ^ K3);
    fold_mul(a ^ c ^ K1, b ^ K0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const A4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const B4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    macro_rules! build {
        ($b:expr, $payload:expr) => {{
            let b = $b;
            let payload: &[u8] = $payload;
            let mut out = Vec::with_capacity(b.size(payload.len()));
            b.write(&mut out, payload).unwrap();
            out
        }};
    }

    /// Inserts an 802.1Q tag (VID 10) after the MAC addresses.
    fn tag(vlan: bool, mut f: Vec<u8>) -> Vec<u8> {
        if vlan {
            f.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        }
        f
    }

    fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
        PacketBuilder::ethernet2(MAC_A, MAC_B)
    }

    fn tcp_v4(vlan: bool, payload: &[u8]) -> Vec<u8> {
        let b = eth()
            .ipv4(A4.octets(), B4.octets(), 64)
            .tcp(5000, 80, 1000, 65535)
            .syn()
            .ack(7);
        tag(vlan, build!(b, payload))
    }

    fn udp_v4(vlan: bool, payload: &[u8]) -> Vec<u8> {
        let b = eth().ipv4(A4.octets(), B4.octets(), 64).udp(53, 5353);
        tag(vlan, build!(b, payload))
    }

    fn tcp_v6(vlan: bool, payload: &[u8]) -> Vec<u8> {
        let b = eth()
            .ipv6(A6.octets(), B6.octets(), 64)
            .tcp(5000, 80, 1000, 65535)
            .fin();
        tag(vlan, build!(b, payload))
    }

    fn udp_v6(vlan: bool, payload: &[u8]) -> Vec<u8> {
        let b = eth().ipv6(A6.octets(), B6.octets(), 64).udp(53, 5353);
        tag(vlan, build!(b, payload))
    }

    #[test]
    fn parse_flow_keys_tcp_and_udp_over_ipv4_and_ipv6_with_and_without_vlan() {
        for vlan in [false, true] {
            let l3 = if vlan { 18 } else { 14 };

            let f = tcp_v4(vlan, b"hello");
            let i = parse_flow(&f).unwrap();
            assert_eq!(i.key, FlowKey::v4(A4, 5000, B4, 80, PROTO_TCP));
            assert_eq!((i.l3_offset, i.l4_offset), (l3, l3 + 20));
            assert_eq!(i.tcp_flags, 0x12);
            assert_eq!(i.payload_len, 5);

            let f = udp_v4(vlan, b"abc");
            let i = parse_flow(&f).unwrap();
            assert_eq!(i.key, FlowKey::v4(A4, 53, B4, 5353, PROTO_UDP));
            assert_eq!((i.l3_offset, i.l4_offset), (l3, l3 + 20));
            assert_eq!((i.tcp_flags, i.payload_len), (0, 3));

            let f = tcp_v6(vlan, b"");
            let i = parse_flow(&f).unwrap();
            assert_eq!(i.key, FlowKey::v6(A6, 5000, B6, 80, PROTO_TCP));
            assert_eq!((i.l3_offset, i.l4_offset), (l3, l3 + 40));
            assert_eq!((i.tcp_flags, i.payload_len), (0x01, 0));

            let f = udp_v6(vlan, b"0123456789");
            let i = parse_flow(&f).unwrap();
            assert_eq!(i.key, FlowKey::v6(A6, 53, B6, 5353, PROTO_UDP));
            assert_eq!((i.l3_offset, i.l4_offset), (l3, l3 + 40));
            assert_eq!(i.payload_len, 10);
        }
    }

    #[test]
    fn parse_flow_ignores_ethernet_padding() {
        let mut f = udp_v4(false, b"x");
        f.resize(60, 0);
        let i = parse_flow(&f).unwrap();
        assert_eq!(i.payload_len, 1);
        let mut f = tcp_v4(false, b"");
        f.resize(60, 0);
        assert_eq!(parse_flow(&f).unwrap().payload_len, 0);
    }

    #[test]
    fn parse_flow_rejects_every_truncation() {
        for f in [
            tcp_v4(false, b"data"),
            tcp_v4(true, b""),
            udp_v4(false, b"data"),
            tcp_v6(true, b"data"),
            udp_v6(false, b""),
        ] {
            assert!(parse_flow(&f).is_some());
            for len in 0..f.len() {
                assert_eq!(parse_flow(&f[..len]), None, "len {len} of {}", f.len());
            }
        }
    }

    #[test]
    fn parse_flow_rejects_ipv4_fragments() {
        let f = udp_v4(false, b"0123456789abcdef");
        // Later fragment: offset 8 bytes (1 unit).
        let mut later = f.clone();
        later[14 + 6] = 0x00;
        later[14 + 7] = 0x01;
        assert_eq!(parse_flow(&later), None);
        // First fragment: more-fragments set, offset 0.
        let mut first = f.clone();
        first[14 + 6] = 0x20;
        first[14 + 7] = 0x00;
        assert_eq!(parse_flow(&first), None);
        // Don't-fragment alone is fine.
        let mut df = f;
        df[14 + 6] = 0x40;
        assert!(parse_flow(&df).is_some());
    }

    #[test]
    fn parse_flow_rejects_malformed_headers() {
        // IHL < 5.
        let mut f = tcp_v4(false, b"");
        f[14] = 0x44;
        assert_eq!(parse_flow(&f), None);
        // IPv4 header carrying version 6.
        let mut f = tcp_v4(false, b"");
        f[14] = 0x65;
        assert_eq!(parse_flow(&f), None);
        // TCP data offset < 5.
        let mut f = tcp_v4(false, b"");
        f[14 + 20 + 12] = 0x40;
        assert_eq!(parse_flow(&f), None);
        // TCP data offset beyond the IP payload.
        let mut f = tcp_v4(false, b"");
        f[14 + 20 + 12] = 0xf0;
        assert_eq!(parse_flow(&f), None);
        // UDP length < 8.
        let mut f = udp_v6(false, b"abc");
        f[14 + 40 + 4] = 0;
        f[14 + 40 + 5] = 4;
        assert_eq!(parse_flow(&f), None);
        // UDP length beyond the IP payload.
        let mut f = udp_v4(false, b"abc");
        f[14 + 20 + 5] = 12;
        assert_eq!(parse_flow(&f), None);
        // IPv6 next header: hop-by-hop options (not walked).
        let mut f = udp_v6(false, b"abc");
        f[14 + 6] = 0;
        assert_eq!(parse_flow(&f), None);
        // ICMP.
        let mut f = udp_v4(false, b"abc");
        f[14 + 9] = 1;
        assert_eq!(parse_flow(&f), None);
        // ARP EtherType.
        let mut f = udp_v4(false, b"abc");
        f[12] = 0x08;
        f[13] = 0x06;
        assert_eq!(parse_flow(&f), None);
        // Two 802.1Q tags: not walked.
        let mut f = udp_v4(true, b"abc");
        f[16] = 0x81;
        f[17] = 0x00;
        assert_eq!(parse_flow(&f), None);
    }

    #[test]
    fn v4_and_v4_mapped_v6_keys_are_distinct() {
        let k4 = FlowKey::v4(A4, 1, B4, 2, PROTO_TCP);
        let k6 = FlowKey::v6(A4.to_ipv6_mapped(), 1, B4.to_ipv6_mapped(), 2, PROTO_TCP);
        assert_ne!(k4, k6);
        assert_ne!(hash(&k4), hash(&k6));
        assert_eq!(k4.src_octets(), k6.src_octets());
        assert_eq!(k4.src_ip(), IpAddr::V4(A4));
        assert_eq!(k6.src_ip(), IpAddr::V6(A4.to_ipv6_mapped()));
    }

    #[test]
    fn new_builds_the_key_of_the_family() {
        let k = FlowKey::new(A4.into(), 1, B4.into(), 2, PROTO_UDP);
        assert_eq!(k, FlowKey::v4(A4, 1, B4, 2, PROTO_UDP));
        let k = FlowKey::new(A6.into(), 1, B6.into(), 2, PROTO_UDP);
        assert_eq!(k, FlowKey::v6(A6, 1, B6, 2, PROTO_UDP));
        let mixed = FlowKey::new(A4.into(), 1, B6.into(), 2, PROTO_UDP);
        assert!(mixed.is_v6());
        assert_eq!(mixed.src_ip(), IpAddr::V6(A4.to_ipv6_mapped()));
    }

    #[test]
    fn reversed_swaps_ends_and_is_an_involution() {
        let k = FlowKey::v4(A4, 5000, B4, 80, PROTO_TCP);
        let r = k.reversed();
        assert_eq!(r, FlowKey::v4(B4, 80, A4, 5000, PROTO_TCP));
        assert_eq!(r.reversed(), k);
        assert_ne!(hash(&k), hash(&r));
    }

    #[test]
    fn display_and_serialize_use_the_address_family() {
        let k = FlowKey::v4(A4, 5000, B4, 80, PROTO_TCP);
        assert_eq!(k.to_string(), "tcp 198.18.0.1:5000 -> 198.18.0.2:80");
        assert_eq!(
            format!("{k:?}"),
            "FlowKey(tcp 198.18.0.1:5000 -> 198.18.0.2:80)"
        );
        let k6 = FlowKey::v6(A6, 53, B6, 5353, PROTO_UDP);
        assert_eq!(k6.to_string(), "udp [2001:db8::1]:53 -> [2001:db8::2]:5353");
        let other = FlowKey::v4(A4, 0, B4, 0, 47);
        assert_eq!(other.to_string(), "proto47 198.18.0.1:0 -> 198.18.0.2:0");
        assert_eq!(
            serde_json::to_string(&k).unwrap(),
            r#"{"proto":6,"src":"198.18.0.1","src_port":5000,"dst":"198.18.0.2","dst_port":80}"#
        );
        assert_eq!(
            serde_json::to_string(&k6).unwrap(),
            r#"{"proto":17,"src":"2001:db8::1","src_port":53,"dst":"2001:db8::2","dst_port":5353}"#
        );
    }

    #[test]
    fn hash_spreads_sequential_ports_over_low_bits() {
        // The table indexes by the low bits: sequential client ports (the
        // common case) must not pile up in a few home slots.
        let mut seen = std::collections::HashSet::new();
        for p in 0..4096u16 {
            let k = FlowKey::v4(A4, 10_000 + p, B4, 80, PROTO_TCP);
            seen.insert(hash(&k) & 0xfff);
        }
        // 4096 balls in 4096 bins: about 63% distinct when random.
        assert!(seen.len() > 2400, "{} distinct home slots", seen.len());
        let k = FlowKey::v4(A4, 1, B4, 2, PROTO_TCP);
        assert_ne!(hash_with_seed(&k, 1), hash_with_seed(&k, 2));
    }

    proptest::proptest! {
        #[test]
        fn parse_flow_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_flow(&bytes);
        }

        #[test]
        fn parse_flow_never_panics_on_mutated_frames(pos in 0usize..80, val in proptest::prelude::any::<u8>(), which in 0usize..4) {
            let mut f = match which {
                0 => tcp_v4(false, b"payload"),
                1 => udp_v4(true, b"payload"),
                2 => tcp_v6(false, b"payload"),
                _ => udp_v6(true, b"payload"),
            };
            let pos = pos % f.len();
            f[pos] = val;
            if let Some(i) = parse_flow(&f) {
                proptest::prop_assert!(i.l4_offset <= f.len());
                proptest::prop_assert!(i.l4_offset + i.payload_len <= f.len());
            }
        }
    }
}
