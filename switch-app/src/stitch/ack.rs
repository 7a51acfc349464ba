//! Builds the pure ACK the shell still gets while data towards it is held (DESIGN.md,
//! hand-off step 2): the held segment's headers with the payload cut off, FIN/PSH/SYN
//! cleared, lengths and checksums computed afresh. Slow path only (it allocates).

use switch_core::flow::key::parse_flow;
use switch_core::wire::ipv4::Ipv4Packet;
use switch_core::wire::ipv6::Ipv6Packet;
use switch_core::wire::tcp::TcpPacket;
use switch_core::wire::IpPair;

const ACK: u8 = 0x10;

/// The pure-ACK copy of a TCP segment that carries an ACK, or `None` when it carries
/// none (or is not TCP).
pub fn pure_ack(frame: &[u8]) -> Option<Vec<u8>> {
    let l4 = parse_flow(frame)?;
    if l4.key.proto != 6 || l4.tcp_flags & ACK == 0 {
        return None;
    }
    headers_only(frame, 0x01 | 0x02 | 0x08)
}

/// The segment's headers without payload, FIN kept: the untranslated FIN the shell gets
/// in teardown variant 4E (seed 001, figure 4E).
pub fn bare_fin(frame: &[u8]) -> Option<Vec<u8>> {
    headers_only(frame, 0x08)
}

/// Cuts the payload off a TCP segment, clears `clear` from its flags, and recomputes
/// lengths and checksums.
fn headers_only(frame: &[u8], clear: u8) -> Option<Vec<u8>> {
    let l4 = parse_flow(frame)?;
    if l4.key.proto != 6 {
        return None;
    }
    let tcp_hlen = usize::from(frame[l4.l4_offset + 12] >> 4) * 4;
    let end = l4.l4_offset + tcp_hlen;
    let mut out = frame[..end].to_vec();
    let ips = if l4.key.is_v6() {
        let mut ip = Ipv6Packet::new_unchecked(&mut out[l4.l3_offset..]);
        ip.set_payload_len(tcp_hlen as u16);
        IpPair::V6 {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
        }
    } else {
        let mut ip = Ipv4Packet::new_unchecked(&mut out[l4.l3_offset..]);
        ip.set_total_len((l4.l4_offset - l4.l3_offset + tcp_hlen) as u16);
        ip.fill_checksum();
        IpPair::V4 {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
        }
    };
    let mut tcp = TcpPacket::new_unchecked(&mut out[l4.l4_offset..]);
    let flags = tcp.flags();
    tcp.set_flags(switch_core::wire::tcp::TcpFlags(flags.0 & !clear));
    tcp.fill_checksum(&ips);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    #[test]
    fn data_segment_becomes_a_valid_pure_ack_with_the_same_seq_and_ack() {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .tcp(40000, 7000, 1000, 500)
            .ack(77)
            .psh()
            .fin();
        let mut f = Vec::new();
        b.write(&mut f, &[9u8; 100]).unwrap();
        let a = pure_ack(&f).unwrap();
        let p = SlicedPacket::from_ethernet(&a).unwrap();
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!("not tcp")
        };
        assert_eq!(t.sequence_number(), 1000);
        assert_eq!(t.acknowledgment_number(), 77);
        assert!(t.ack() && !t.psh() && !t.fin());
        assert!(t.payload().is_empty());
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not v4")
        };
        assert_eq!(ip.header().total_len(), 40);
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        let expected = t
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), &[])
            .unwrap();
        assert_eq!(t.checksum(), expected);
    }

    #[test]
    fn segment_without_ack_gives_nothing() {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .tcp(1, 2, 3, 4)
            .syn();
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        assert!(pure_ack(&f).is_none());
    }
}
