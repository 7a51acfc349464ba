//! Ethernet II frames with at most one 802.1Q tag.
//!
//! What it does: reads and writes the destination, source and EtherType of a
//! frame, and sees through one 802.1Q (0x8100) VLAN tag so that
//! [`EthernetFrame::inner_ethertype`] and [`EthernetFrame::payload`] describe
//! what the tag carries.
//!
//! What it guarantees: after [`EthernetFrame::new_checked`], every accessor is
//! in bounds, including the tag accessors of a tagged frame.
//!
//! What it must not do: walk stacked tags. A QinQ (0x88a8) S-tag is reported
//! as [`EtherType::QinQ`] and its payload starts right after the 14-byte
//! header; an 802.1Q tag inside an 802.1Q tag is not looked into.

use super::WireError;
use crate::MacAddr;

/// An EtherType value. Total: unknown values are kept in `Unknown(raw)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EtherType {
    /// IPv4 (0x0800).
    Ipv4,
    /// ARP (0x0806).
    Arp,
    /// IPv6 (0x86dd).
    Ipv6,
    /// 802.1Q customer VLAN tag (0x8100).
    Vlan,
    /// 802.1ad service VLAN tag (0x88a8).
    QinQ,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::QinQ,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(t: EtherType) -> u16 {
        match t {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::QinQ => 0x88a8,
            EtherType::Unknown(other) => other,
        }
    }
}

/// The tag control information of an 802.1Q tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// Priority code point (3 bits).
    pub pcp: u8,
    /// Drop eligible indicator.
    pub dei: bool,
    /// VLAN identifier (12 bits).
    pub vid: u16,
}

impl VlanTag {
    /// Decodes a 16-bit TCI.
    pub fn from_tci(tci: u16) -> VlanTag {
        VlanTag {
            pcp: (tci >> 13) as u8,
            dei: tci & 0x1000 != 0,
            vid: tci & 0x0fff,
        }
    }

    /// Encodes the TCI; out-of-range `pcp`/`vid` bits are masked off.
    pub fn to_tci(self) -> u16 {
        (u16::from(self.pcp & 0x7) << 13) | (u16::from(self.dei) << 12) | (self.vid & 0x0fff)
    }
}

mod field {
    use std::ops::{Range, RangeFrom};
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
    pub const VLAN_TCI: Range<usize> = 14..16;
    pub const VLAN_ETHERTYPE: Range<usize> = 16..18;
    pub const VLAN_PAYLOAD: RangeFrom<usize> = 18..;
}

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = 14;
/// Length of an Ethernet II header with one 802.1Q tag.
pub const VLAN_HEADER_LEN: usize = 18;

/// A view of an Ethernet II frame (IEEE 802.3 clause 3, with 802.1Q tag).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                 Destination MAC address (6)                   |
/// +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                               |                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
/// |                    Source MAC address (6)                     |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     EtherType (0x8100?)       |  PCP|D|     VID (if tagged)   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  inner EtherType (if tagged)  |           payload ...         |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking its length; accessors may panic.
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer after [`EthernetFrame::check_len`].
    ///
    /// # Errors
    /// [`WireError::Truncated`] if the buffer cannot hold the header (and the
    /// 802.1Q tag, when the EtherType says there is one).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Checks that the header, and the tag if the frame is tagged, fit.
    ///
    /// # Errors
    /// [`WireError::Truncated`] otherwise.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.ethertype() == EtherType::Vlan && len < VLAN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    /// Gives back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination address.
    pub fn dst_addr(&self) -> MacAddr {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        MacAddr(a)
    }

    /// The source address.
    pub fn src_addr(&self) -> MacAddr {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        MacAddr(a)
    }

    /// The outer EtherType (0x8100 for a tagged frame).
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The 802.1Q tag, if the outer EtherType is 0x8100.
    pub fn vlan(&self) -> Option<VlanTag> {
        if self.ethertype() != EtherType::Vlan {
            return None;
        }
        let b = &self.buffer.as_ref()[field::VLAN_TCI];
        Some(VlanTag::from_tci(u16::from_be_bytes([b[0], b[1]])))
    }

    /// The EtherType of the payload: the one after the tag for a tagged
    /// frame, the outer one otherwise.
    pub fn inner_ethertype(&self) -> EtherType {
        if self.ethertype() != EtherType::Vlan {
            return self.ethertype();
        }
        let b = &self.buffer.as_ref()[field::VLAN_ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// 18 for a tagged frame, 14 otherwise.
    pub fn header_len(&self) -> usize {
        if self.ethertype() == EtherType::Vlan {
            VLAN_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The bytes after the header (and after the 802.1Q tag, if any).
    pub fn payload(&self) -> &[u8] {
        if self.ethertype() == EtherType::Vlan {
            &self.buffer.as_ref()[field::VLAN_PAYLOAD]
        } else {
            &self.buffer.as_ref()[field::PAYLOAD]
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the outer EtherType. Changing it to or from 0x8100 changes where
    /// the payload starts; the caller must make sure the tag bytes fit.
    pub fn set_ethertype(&mut self, t: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(t).to_be_bytes());
    }

    /// Rewrites the TCI of an existing tag; does nothing on an untagged frame
    /// (adding a tag needs 4 more bytes, which only the mbuf owner can give).
    pub fn set_vlan(&mut self, tag: VlanTag) {
        if self.ethertype() == EtherType::Vlan {
            self.buffer.as_mut()[field::VLAN_TCI].copy_from_slice(&tag.to_tci().to_be_bytes());
        }
    }

    /// Sets the payload EtherType (after the tag on a tagged frame).
    pub fn set_inner_ethertype(&mut self, t: EtherType) {
        if self.ethertype() == EtherType::Vlan {
            self.buffer.as_mut()[field::VLAN_ETHERTYPE]
                .copy_from_slice(&u16::from(t).to_be_bytes());
        } else {
            self.set_ethertype(t);
        }
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        if self.ethertype() == EtherType::Vlan {
            &mut self.buffer.as_mut()[field::VLAN_PAYLOAD]
        } else {
            &mut self.buffer.as_mut()[field::PAYLOAD]
        }
    }
}

/// A validated Ethernet header. `ethertype` is the payload's EtherType; a
/// `vlan` tag, if set, is emitted as 0x8100 + TCI before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Source address.
    pub src_addr: MacAddr,
    /// Destination address.
    pub dst_addr: MacAddr,
    /// One 802.1Q tag, if any.
    pub vlan: Option<VlanTag>,
    /// The payload's EtherType.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads a checked frame.
    ///
    /// # Errors
    /// [`WireError::Truncated`] if the frame was not checked and is too short.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &EthernetFrame<&T>) -> Result<Self, WireError> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            vlan: frame.vlan(),
            ethertype: frame.inner_ethertype(),
        })
    }

    /// 14, or 18 with a tag.
    pub fn header_len(&self) -> usize {
        if self.vlan.is_some() {
            VLAN_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Same as [`EthernetRepr::header_len`]: the header carries no length.
    pub fn buffer_len(&self) -> usize {
        self.header_len()
    }

    /// Writes the header.
    ///
    /// # Panics
    /// If the buffer is shorter than [`EthernetRepr::header_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        match self.vlan {
            Some(tag) => {
                frame.set_ethertype(EtherType::Vlan);
                frame.set_vlan(tag);
                frame.set_inner_ethertype(self.ethertype);
            }
            None => frame.set_ethertype(self.ethertype),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x02]);
    const SRC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);

    static FRAME: [u8; 18] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src
        0x08, 0x00, // IPv4
        0xaa, 0xbb, 0xcc, 0xdd,
    ];

    static TAGGED: [u8; 20] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // dst
        0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // src
        0x81, 0x00, // 802.1Q
        0xb0, 0x64, // pcp 5, dei 1, vid 100
        0x86, 0xdd, // IPv6
        0xaa, 0xbb,
    ];

    #[test]
    fn deconstruct_untagged() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), DST);
        assert_eq!(f.src_addr(), SRC);
        assert_eq!(f.ethertype(), EtherType::Ipv4);
        assert_eq!(f.inner_ethertype(), EtherType::Ipv4);
        assert_eq!(f.vlan(), None);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.payload(), &[0xaa, 0xbb, 0xcc, 0xdd]);
    }

    #[test]
    fn deconstruct_tagged_skips_one_tag() {
        let f = EthernetFrame::new_checked(&TAGGED[..]).unwrap();
        assert_eq!(f.ethertype(), EtherType::Vlan);
        assert_eq!(
            f.vlan(),
            Some(VlanTag {
                pcp: 5,
                dei: true,
                vid: 100
            })
        );
        assert_eq!(f.inner_ethertype(), EtherType::Ipv6);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn construct_untagged_and_tagged() {
        let mut buf = [0u8; 18];
        buf[14..].copy_from_slice(&[0xaa, 0xbb, 0xcc, 0xdd]);
        let repr = EthernetRepr {
            src_addr: SRC,
            dst_addr: DST,
            vlan: None,
            ethertype: EtherType::Ipv4,
        };
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        assert_eq!(buf, FRAME);

        let mut buf = [0u8; 20];
        buf[18..].copy_from_slice(&[0xaa, 0xbb]);
        let repr = EthernetRepr {
            vlan: Some(VlanTag {
                pcp: 5,
                dei: true,
                vid: 100,
            }),
            ethertype: EtherType::Ipv6,
            ..repr
        };
        assert_eq!(repr.header_len(), 18);
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        assert_eq!(buf, TAGGED);
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&FRAME[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
        for len in 0..VLAN_HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&TAGGED[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
        assert!(EthernetFrame::new_checked(&TAGGED[..18]).is_ok());
    }

    #[test]
    fn round_trip() {
        for bytes in [&FRAME[..], &TAGGED[..]] {
            let f = EthernetFrame::new_checked(bytes).unwrap();
            let repr = EthernetRepr::parse(&f).unwrap();
            let mut out = bytes.to_vec();
            out[..repr.header_len()].fill(0);
            repr.emit(&mut EthernetFrame::new_unchecked(&mut out[..]));
            assert_eq!(out, bytes);
            let again = EthernetRepr::parse(&EthernetFrame::new_checked(&out[..]).unwrap());
            assert_eq!(again, Ok(repr));
        }
    }

    #[test]
    fn qinq_is_not_walked() {
        let mut b = FRAME;
        b[12] = 0x88;
        b[13] = 0xa8;
        let f = EthernetFrame::new_checked(&b[..]).unwrap();
        assert_eq!(f.ethertype(), EtherType::QinQ);
        assert_eq!(f.vlan(), None);
        assert_eq!(f.payload().len(), 4);
    }

    #[test]
    fn setters_rewrite_in_place() {
        let mut b = TAGGED;
        let mut f = EthernetFrame::new_checked(&mut b[..]).unwrap();
        f.set_dst_addr(MacAddr::BROADCAST);
        f.set_vlan(VlanTag {
            pcp: 0,
            dei: false,
            vid: 7,
        });
        f.payload_mut()[0] = 0x11;
        assert_eq!(f.dst_addr(), MacAddr::BROADCAST);
        assert_eq!(f.vlan().map(|t| t.vid), Some(7));
        assert_eq!(f.into_inner()[18], 0x11);
    }

    #[test]
    fn parses_etherparse_vlan_frame() {
        let builder = etherparse::PacketBuilder::ethernet2(SRC.0, DST.0)
            .single_vlan(etherparse::VlanId::try_new(42).unwrap())
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .udp(1000, 2000);
        let mut out = Vec::new();
        builder.write(&mut out, b"hi").unwrap();
        let f = EthernetFrame::new_checked(&out[..]).unwrap();
        assert_eq!(f.src_addr(), SRC);
        assert_eq!(f.vlan().map(|t| t.vid), Some(42));
        assert_eq!(f.inner_ethertype(), EtherType::Ipv4);
        assert_eq!(f.payload().len(), 20 + 8 + 2);
    }

    #[test]
    fn ethertype_is_total() {
        for v in [0u16, 0x0800, 0x0806, 0x86dd, 0x8100, 0x88a8, 0xffff] {
            assert_eq!(u16::from(EtherType::from(v)), v);
        }
    }
}
