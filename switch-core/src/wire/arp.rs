//! ARP for IPv4 over Ethernet (RFC 826).
//!
//! What it does: reads and writes the 28-byte Ethernet/IPv4 ARP packet that
//! the slow path answers (gateway ARP, gratuitous ARP on port up).
//!
//! What it guarantees: after [`ArpPacket::new_checked`] every accessor is in
//! bounds; [`ArpRepr::parse`] only accepts hardware type 1 (Ethernet),
//! protocol type 0x0800 and lengths 6/4, so a repr is always Ethernet/IPv4.
//!
//! What it must not do: handle other hardware or protocol types; those are
//! reported as [`WireError::Malformed`] by `parse` and dropped by the caller.

use std::net::Ipv4Addr;

use super::WireError;
use crate::MacAddr;

/// The ARP operation. Total: unknown values are kept in `Unknown(raw)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    /// Who has `target_protocol_addr`? (1)
    Request,
    /// `sender_protocol_addr` is at `sender_hardware_addr`. (2)
    Reply,
    /// Any other operation code.
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(v: u16) -> Self {
        match v {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(op: ArpOperation) -> u16 {
        match op {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

mod field {
    use std::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// A view of an Ethernet/IPv4 ARP packet (RFC 826).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |      Hardware type (1)        |     Protocol type (0x0800)    |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  HW len (6)   | Proto len (4) |          Operation            |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |              Sender hardware address (6 octets)               |
/// +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                               |  Sender protocol address (4)  |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                               |                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
/// |              Target hardware address (6 octets)               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |               Target protocol address (4 octets)              |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps a buffer without checking its length; accessors may panic.
    pub fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Wraps a buffer after [`ArpPacket::check_len`].
    ///
    /// # Errors
    /// [`WireError::Truncated`] if shorter than 28 bytes.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the buffer holds a 28-byte Ethernet/IPv4 ARP packet.
    ///
    /// # Errors
    /// [`WireError::Truncated`] otherwise.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, r: std::ops::Range<usize>) -> u16 {
        let b = &self.buffer.as_ref()[r];
        u16::from_be_bytes([b[0], b[1]])
    }

    fn mac_at(&self, r: std::ops::Range<usize>) -> MacAddr {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[r]);
        MacAddr(a)
    }

    fn ip_at(&self, r: std::ops::Range<usize>) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[r];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// Hardware type (1 = Ethernet).
    pub fn hardware_type(&self) -> u16 {
        self.u16_at(field::HTYPE)
    }

    /// Protocol type (0x0800 = IPv4).
    pub fn protocol_type(&self) -> u16 {
        self.u16_at(field::PTYPE)
    }

    /// Hardware address length.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// Protocol address length.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// The operation.
    pub fn operation(&self) -> ArpOperation {
        ArpOperation::from(self.u16_at(field::OPER))
    }

    /// Sender hardware address (SHA).
    pub fn sender_hardware_addr(&self) -> MacAddr {
        self.mac_at(field::SHA)
    }

    /// Sender protocol address (SPA).
    pub fn sender_protocol_addr(&self) -> Ipv4Addr {
        self.ip_at(field::SPA)
    }

    /// Target hardware address (THA).
    pub fn target_hardware_addr(&self) -> MacAddr {
        self.mac_at(field::THA)
    }

    /// Target protocol address (TPA).
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        self.ip_at(field::TPA)
    }

    /// Bytes after the 28-byte packet (Ethernet padding).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[PACKET_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, v: u16) {
        self.buffer.as_mut()[field::HTYPE].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, v: u16) {
        self.buffer.as_mut()[field::PTYPE].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the hardware address length.
    pub fn set_hardware_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::HLEN] = v;
    }

    /// Sets the protocol address length.
    pub fn set_protocol_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::PLEN] = v;
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, op: ArpOperation) {
        self.buffer.as_mut()[field::OPER].copy_from_slice(&u16::from(op).to_be_bytes());
    }

    /// Sets the sender hardware address.
    pub fn set_sender_hardware_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&a.0);
    }

    /// Sets the sender protocol address.
    pub fn set_sender_protocol_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&a.octets());
    }

    /// Sets the target hardware address.
    pub fn set_target_hardware_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&a.0);
    }

    /// Sets the target protocol address.
    pub fn set_target_protocol_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&a.octets());
    }

    /// Bytes after the 28-byte packet, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[PACKET_LEN..]
    }
}

/// A validated Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request, reply, or other.
    pub operation: ArpOperation,
    /// SHA.
    pub sender_hardware_addr: MacAddr,
    /// SPA.
    pub sender_protocol_addr: Ipv4Addr,
    /// THA (zero in a request).
    pub target_hardware_addr: MacAddr,
    /// TPA.
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Reads and validates an Ethernet/IPv4 ARP packet.
    ///
    /// # Errors
    /// [`WireError::Truncated`] if too short; [`WireError::Malformed`] if the
    /// hardware/protocol type or lengths are not Ethernet/IPv4.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &ArpPacket<&T>) -> Result<Self, WireError> {
        packet.check_len()?;
        if packet.hardware_type() != 1 || packet.hardware_len() != 6 {
            return Err(WireError::Malformed("arp hardware is not ethernet"));
        }
        if packet.protocol_type() != 0x0800 || packet.protocol_len() != 4 {
            return Err(WireError::Malformed("arp protocol is not ipv4"));
        }
        Ok(ArpRepr {
            operation: packet.operation(),
            sender_hardware_addr: packet.sender_hardware_addr(),
            sender_protocol_addr: packet.sender_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// Always 28.
    pub fn header_len(&self) -> usize {
        PACKET_LEN
    }

    /// Always 28.
    pub fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet.
    ///
    /// # Panics
    /// If the buffer is shorter than 28 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(1);
        packet.set_protocol_type(0x0800);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_sender_hardware_addr(self.sender_hardware_addr);
        packet.set_sender_protocol_addr(self.sender_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // eth/ipv4, request
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // sha
        0xc6, 0x12, 0x00, 0x01, // spa 198.18.0.1
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // tha
        0xc6, 0x12, 0x00, 0x02, // tpa 198.18.0.2
    ];

    fn repr() -> ArpRepr {
        ArpRepr {
            operation: ArpOperation::Request,
            sender_hardware_addr: MacAddr([2, 0, 0, 0, 0, 1]),
            sender_protocol_addr: Ipv4Addr::new(198, 18, 0, 1),
            target_hardware_addr: MacAddr::ZERO,
            target_protocol_addr: Ipv4Addr::new(198, 18, 0, 2),
        }
    }

    #[test]
    fn deconstruct() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!(p.operation(), ArpOperation::Request);
        assert_eq!(p.sender_hardware_addr(), MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(p.sender_protocol_addr(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(p.target_hardware_addr(), MacAddr::ZERO);
        assert_eq!(p.target_protocol_addr(), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(ArpRepr::parse(&p), Ok(repr()));
    }

    #[test]
    fn construct() {
        let mut buf = [0xffu8; 28];
        repr().emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        assert_eq!(buf, REQUEST);
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..PACKET_LEN {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
    }

    #[test]
    fn round_trip_reply() {
        let r = ArpRepr {
            operation: ArpOperation::Reply,
            target_hardware_addr: MacAddr([2, 0, 0, 0, 0, 9]),
            ..repr()
        };
        let mut buf = [0u8; 28];
        r.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        let parsed = ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap();
        assert_eq!(parsed, r);
        let mut again = [0u8; 28];
        parsed.emit(&mut ArpPacket::new_unchecked(&mut again[..]));
        assert_eq!(again, buf);
    }

    #[test]
    fn non_ethernet_ipv4_is_malformed() {
        let mut b = REQUEST;
        b[1] = 6;
        assert!(matches!(
            ArpRepr::parse(&ArpPacket::new_checked(&b[..]).unwrap()),
            Err(WireError::Malformed(_))
        ));
        let mut b = REQUEST;
        b[5] = 16;
        assert!(matches!(
            ArpRepr::parse(&ArpPacket::new_checked(&b[..]).unwrap()),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_operation_is_kept() {
        let mut b = REQUEST;
        b[7] = 9;
        let p = ArpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.operation(), ArpOperation::Unknown(9));
        assert_eq!(u16::from(p.operation()), 9);
    }
}
