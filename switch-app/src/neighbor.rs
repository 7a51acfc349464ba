//! ARP and IPv6 neighbour discovery for the addresses the switch itself owns (the agent
//! service address, the balancer's service addresses): recognising a query and building
//! the answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use switch_core::wire::checksum;
use switch_core::MacAddr;

const ETH_ARP: u16 = 0x0806;
const ETH_IPV6: u16 = 0x86dd;

/// The address an ARP request (Ethernet/IPv4, op 1) or an ICMPv6 neighbour solicitation
/// asks about; `None` for any other frame. Untagged frames only.
pub fn query_target(f: &[u8]) -> Option<IpAddr> {
    if f.len() < 42 {
        return None;
    }
    match u16::from_be_bytes([f[12], f[13]]) {
        ETH_ARP if f[14..22] == [0, 1, 8, 0, 6, 4, 0, 1] => {
            Some(Ipv4Addr::new(f[38], f[39], f[40], f[41]).into())
        }
        ETH_IPV6 if f.len() >= 78 && f[20] == 58 && f[54] == 135 => {
            let t: [u8; 16] = f[62..78].try_into().ok()?;
            Some(Ipv6Addr::from(t).into())
        }
        _ => None,
    }
}

/// The ARP reply to a request for `ip`, from `mac`; `None` if `f` is not such a request.
pub fn arp_reply(f: &[u8], mac: MacAddr, ip: Ipv4Addr) -> Option<Vec<u8>> {
    if f.len() < 42 || f[14..22] != [0, 1, 8, 0, 6, 4, 0, 1] || f[38..42] != ip.octets() {
        return None;
    }
    let mut r = Vec::with_capacity(42);
    r.extend_from_slice(&f[22..28]); // to the requester's MAC
    r.extend_from_slice(&mac.0);
    r.extend_from_slice(&ETH_ARP.to_be_bytes());
    r.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    r.extend_from_slice(&mac.0);
    r.extend_from_slice(&ip.octets());
    r.extend_from_slice(&f[22..32]); // target: the requester's MAC and IP
    Some(r)
}

/// The neighbour advertisement answering a solicitation for `ip`, from `mac`; `None`
/// if `f` is not such a solicitation.
pub fn na_reply(f: &[u8], mac: MacAddr, ip: Ipv6Addr) -> Option<Vec<u8>> {
    if f.len() < 78 || f[20] != 58 || f[54] != 135 || f[62..78] != ip.octets() {
        return None;
    }
    let src: [u8; 16] = f[22..38].try_into().ok()?;
    let dst = if src == [0; 16] {
        Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets()
    } else {
        src
    };
    // Solicited + override, with the target link-layer address option.
    let mut icmp = vec![136u8, 0, 0, 0, 0x60, 0, 0, 0];
    icmp.extend_from_slice(&ip.octets());
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac.0);
    let ph = checksum::pseudo_header_v6(
        ip,
        Ipv6Addr::from(dst),
        switch_core::wire::IpProtocol::Icmpv6,
        icmp.len() as u32,
    );
    let c = checksum::fold(ph + checksum::sum(&icmp));
    icmp[2..4].copy_from_slice(&(!c).to_be_bytes());
    let mut r = Vec::with_capacity(14 + 40 + icmp.len());
    r.extend_from_slice(&f[6..12]);
    r.extend_from_slice(&mac.0);
    r.extend_from_slice(&ETH_IPV6.to_be_bytes());
    r.extend_from_slice(&[0x60, 0, 0, 0]);
    r.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    r.extend_from_slice(&[58, 255]);
    r.extend_from_slice(&ip.octets());
    r.extend_from_slice(&dst);
    r.extend_from_slice(&icmp);
    Some(r)
}

/// The answer to a query for `ip`, whichever family.
pub fn reply(f: &[u8], mac: MacAddr, ip: IpAddr) -> Option<Vec<u8>> {
    match ip {
        IpAddr::V4(v4) => arp_reply(f, mac, v4),
        IpAddr::V6(v6) => na_reply(f, mac, v6),
    }
}
