//! UDP datagrams (RFC 768).
//!
//! What it does: reads and rewrites ports in place, verifies and fills the
//! checksum over the IPv4 or IPv6 pseudo-header, and builds datagrams for the
//! slow path through [`UdpRepr`].
//!
//! What it guarantees: after [`UdpPacket::new_checked`] the length field is at
//! least 8 and fits in the buffer; the checksum and [`UdpPacket::payload`]
//! cover exactly `length` bytes. A computed checksum of zero is sent as
//! `0xffff` (RFC 768), since zero means "no checksum".
//!
//! What it must not do: incrementally update a zero (absent) IPv4 checksum;
//! callers patching ports must skip the update when [`UdpPacket::checksum`]
//! is 0. Over IPv6 a zero checksum is invalid (RFC 8200 section 8.1) and
//! [`UdpPacket::verify_checksum_v6`] rejects it.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{checksum, IpPair, IpProtocol, WireError};

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram (RFC 768).
///
/// ```text
///  0      7 8     15 16    23 24    31
/// +--------+--------+--------+--------+
/// |     Source      |   Destination   |
/// |      Port       |      Port       |
/// +--------+--------+--------+--------+
/// |                 |                 |
/// |     Length      |    Checksum     |
/// +--------+--------+--------+--------+
/// |          data octets ...
/// +---------------- ...
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic.
    pub fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps a buffer after [`UdpPacket::check_len`].
    ///
    /// # Errors
    /// See [`UdpPacket::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the header fits and the length field is sane.
    ///
    /// # Errors
    /// [`WireError::Truncated`] if the buffer is shorter than 8 bytes or than
    /// the length field; [`WireError::Malformed`] if the length field is < 8.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let declared = usize::from(self.len());
        if declared < HEADER_LEN {
            return Err(WireError::Malformed("udp length < 8"));
        }
        if len < declared {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    /// The length field: header plus payload.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    /// The checksum field (0 = none, IPv4 only).
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    fn datagram(&self) -> &[u8] {
        &self.buffer.as_ref()[..usize::from(self.len())]
    }

    /// The payload: bytes 8 to `length`.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    /// True if the checksum verifies over `ips`' pseudo-header, or is absent
    /// (0) over IPv4. A zero checksum over IPv6 fails.
    pub fn verify_checksum(&self, ips: &IpPair) -> bool {
        let c = self.checksum();
        if c == 0 {
            return matches!(ips, IpPair::V4 { .. });
        }
        let d = self.datagram();
        let s = ips.pseudo_header(IpProtocol::Udp, d.len() as u32) + checksum::sum(d);
        checksum::fold(s) == 0xffff
    }

    /// [`UdpPacket::verify_checksum`] over IPv4.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.verify_checksum(&IpPair::V4 { src, dst })
    }

    /// [`UdpPacket::verify_checksum`] over IPv6.
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.verify_checksum(&IpPair::V6 { src, dst })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    fn set_u16_at(&mut self, r: std::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the source port.
    pub fn set_src_port(&mut self, v: u16) {
        self.set_u16_at(field::SRC_PORT, v);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, v: u16) {
        self.set_u16_at(field::DST_PORT, v);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, v: u16) {
        self.set_u16_at(field::LENGTH, v);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v);
    }

    /// Computes and writes the checksum over `ips`' pseudo-header; a result
    /// of 0 is written as `0xffff`.
    pub fn fill_checksum(&mut self, ips: &IpPair) {
        self.set_checksum(0);
        let d = self.datagram();
        let s = ips.pseudo_header(IpProtocol::Udp, d.len() as u32) + checksum::sum(d);
        let c = !checksum::fold(s);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    /// [`UdpPacket::fill_checksum`] over IPv4.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.fill_checksum(&IpPair::V4 { src, dst });
    }

    /// [`UdpPacket::fill_checksum`] over IPv6.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.fill_checksum(&IpPair::V6 { src, dst });
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// A validated UDP datagram; `payload` borrows from the parsed packet or from
/// the data to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// The data.
    pub payload: &'a [u8],
}

impl<'a> UdpRepr<'a> {
    /// Reads a datagram without checking its checksum (the NIC may have done
    /// so; otherwise use [`UdpRepr::parse_verified`]).
    ///
    /// # Errors
    /// [`WireError::Truncated`] / [`WireError::Malformed`] from the length checks.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &UdpPacket<&'a T>) -> Result<Self, WireError> {
        packet.check_len()?;
        let buf: &'a [u8] = <T as AsRef<[u8]>>::as_ref(packet.buffer);
        let len = usize::from(packet.len());
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload: &buf[HEADER_LEN..len],
        })
    }

    /// [`UdpRepr::parse`], then the checksum over `ips`.
    ///
    /// # Errors
    /// As `parse`, and [`WireError::BadChecksum`].
    pub fn parse_verified<T: AsRef<[u8]> + ?Sized>(
        packet: &UdpPacket<&'a T>,
        ips: &IpPair,
    ) -> Result<Self, WireError> {
        let r = Self::parse(packet)?;
        if !packet.verify_checksum(ips) {
            return Err(WireError::BadChecksum);
        }
        Ok(r)
    }

    /// Always 8.
    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes header and payload and fills the checksum over `ips`.
    ///
    /// # Panics
    /// If the buffer is shorter than [`UdpRepr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut UdpPacket<T>, ips: &IpPair) {
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(self.buffer_len() as u16);
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(ips);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> IpPair {
        IpPair::V4 {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
        }
    }

    // 1234 -> 80, payload "abcd", over 198.18.0.1 -> 198.18.0.2.
    static DATAGRAM: [u8; 12] = [
        0x04, 0xd2, 0x00, 0x50, 0x00, 0x0c, 0xa9, 0xc5, b'a', b'b', b'c', b'd',
    ];

    #[test]
    fn deconstruct() {
        let p = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        assert_eq!(p.src_port(), 1234);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.len(), 12);
        assert_eq!(p.checksum(), 0xa9c5);
        assert_eq!(p.payload(), b"abcd");
        assert!(p.verify_checksum(&v4()));
        let r = UdpRepr::parse_verified(&p, &v4()).unwrap();
        assert_eq!(r.payload, b"abcd");
    }

    #[test]
    fn construct() {
        let mut buf = [0u8; 12];
        let r = UdpRepr {
            src_port: 1234,
            dst_port: 80,
            payload: b"abcd",
        };
        r.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), &v4());
        assert_eq!(buf, DATAGRAM);
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..DATAGRAM.len() {
            assert_eq!(
                UdpPacket::new_checked(&DATAGRAM[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
        let mut b = DATAGRAM;
        b[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed("udp length < 8")
        );
    }

    #[test]
    fn round_trip() {
        let p = UdpPacket::new_checked(&DATAGRAM[..]).unwrap();
        let r = UdpRepr::parse(&p).unwrap();
        let mut out = [0u8; 12];
        r.emit(&mut UdpPacket::new_unchecked(&mut out[..]), &v4());
        assert_eq!(out, DATAGRAM);
        assert_eq!(
            UdpRepr::parse(&UdpPacket::new_checked(&out[..]).unwrap()),
            Ok(r)
        );
    }

    #[test]
    fn zero_checksum_means_none_over_v4_only() {
        let mut b = DATAGRAM;
        b[6] = 0;
        b[7] = 0;
        let p = UdpPacket::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum_v4(Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2)));
        assert!(!p.verify_checksum_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST));
        assert_eq!(
            UdpRepr::parse_verified(
                &p,
                &IpPair::V6 {
                    src: Ipv6Addr::LOCALHOST,
                    dst: Ipv6Addr::LOCALHOST
                }
            ),
            Err(WireError::BadChecksum)
        );
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Choose the destination port so the whole sum is 0xffff.
        let mut buf = [0u8; 8];
        let ips = IpPair::V4 {
            src: Ipv4Addr::new(0, 0, 0, 0),
            dst: Ipv4Addr::new(0, 0, 0, 0),
        };
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        p.set_len(8);
        // pseudo: proto 17 + len 8; header: len 8 -> 33; dst port makes 0xffff.
        p.set_dst_port(0xffff - 33);
        p.fill_checksum(&ips);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(&ips));
    }

    #[test]
    fn etherparse_v4_and_v6_checksums_verify() {
        let b = etherparse::PacketBuilder::ipv4([10, 1, 1, 1], [10, 2, 2, 2], 64).udp(5000, 53);
        let mut out = Vec::new();
        b.write(&mut out, b"query").unwrap();
        let p = UdpPacket::new_checked(&out[20..]).unwrap();
        assert!(p.verify_checksum_v4(Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(10, 2, 2, 2)));
        assert!(!p.verify_checksum_v4(Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(10, 2, 2, 3)));

        let src = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        let dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
        let b = etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(5000, 53);
        let mut out = Vec::new();
        b.write(&mut out, b"query6").unwrap();
        let p = UdpPacket::new_checked(&out[40..]).unwrap();
        assert!(p.verify_checksum_v6(src, dst));
        // Our emit produces etherparse's bytes.
        let r = UdpRepr::parse(&p).unwrap();
        let mut ours = vec![0u8; r.buffer_len()];
        r.emit(
            &mut UdpPacket::new_unchecked(&mut ours[..]),
            &IpPair::V6 { src, dst },
        );
        assert_eq!(&ours[..], &out[40..]);
    }
}
