//! TCP segments (RFC 9293) and their options.
//!
//! What it does: reads and rewrites ports and sequence numbers in place for
//! the fast path, walks the options (MSS, window scale, SACK, timestamps) for
//! the slow path, verifies and fills the checksum over the IPv4 or IPv6
//! pseudo-header, and builds segments (SYN-ACK, RST, FIN) through [`TcpRepr`].
//!
//! What it guarantees: after [`TcpPacket::new_checked`] the data offset is at
//! least 20 and within the buffer, so [`TcpPacket::options`] and
//! [`TcpPacket::payload`] never panic. The options iterator stops with an
//! error on the first malformed length instead of reading past the header.
//! [`TcpRepr::emit`] always fills the checksum.
//!
//! What it must not do: know where the segment ends. The view's buffer must
//! be exactly the segment (`Ipv4Packet::payload()` gives that); the checksum
//! covers the whole buffer. Sequence numbers are raw `u32` here; modular
//! arithmetic belongs to the connection-tracking layer.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::{BitAnd, BitOr, BitOrAssign};

use super::{checksum, IpPair, IpProtocol, WireError};

mod field {
    use std::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = 20;
/// Largest TCP header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;

/// The eight TCP control bits of byte 13, as a small bit set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// Synchronize sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// Push function.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// Acknowledgment field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// Urgent pointer field is significant.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECN echo (RFC 3168).
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// Congestion window reduced (RFC 3168).
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// No flag set.
    pub const fn empty() -> TcpFlags {
        TcpFlags(0)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True if every flag of `other` is set in `self`.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if any flag of `other` is set in `self`.
    pub const fn intersects(self, other: TcpFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// True if no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: TcpFlags) {
        self.0 |= other.0;
    }

    /// Clears the flags of `other`.
    pub fn remove(&mut self, other: TcpFlags) {
        self.0 &= !other.0;
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for TcpFlags {
    type Output = TcpFlags;
    fn bitand(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & rhs.0)
    }
}

impl fmt::Debug for TcpFlags {
    /// Prints like `SYN|ACK`, or `(empty)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(TcpFlags, &str); 8] = [
            (TcpFlags::FIN, "FIN"),
            (TcpFlags::SYN, "SYN"),
            (TcpFlags::RST, "RST"),
            (TcpFlags::PSH, "PSH"),
            (TcpFlags::ACK, "ACK"),
            (TcpFlags::URG, "URG"),
            (TcpFlags::ECE, "ECE"),
            (TcpFlags::CWR, "CWR"),
        ];
        if self.is_empty() {
            return f.write_str("(empty)");
        }
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Up to four SACK blocks `(left edge, right edge)`: 40 bytes of options hold
/// at most four.
pub type SackBlocks = [Option<(u32, u32)>; 4];

/// One TCP option. Total: unknown kinds keep their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOption<'a> {
    /// Kind 0: end of the option list; the rest is padding.
    EndOfList,
    /// Kind 1: padding between options.
    NoOp,
    /// Kind 2: maximum segment size.
    Mss(u16),
    /// Kind 3: window scale shift count (RFC 7323).
    WindowScale(u8),
    /// Kind 4: SACK permitted (RFC 2018).
    SackPermitted,
    /// Kind 5: SACK blocks (RFC 2018), unused slots `None`.
    Sack(SackBlocks),
    /// Kind 8: timestamps (RFC 7323).
    Timestamp {
        /// Timestamp value.
        tsval: u32,
        /// Timestamp echo reply.
        tsecr: u32,
    },
    /// Any other kind, with the bytes after kind and length.
    Unknown {
        /// Option kind.
        kind: u8,
        /// Option data (length byte excluded).
        data: &'a [u8],
    },
}

/// Iterator over the options area of a TCP header.
///
/// Yields `Err` once and then stops if an option's length is missing, below 2,
/// runs past the options area, or does not fit its kind. Stops after
/// [`TcpOption::EndOfList`].
#[derive(Debug, Clone)]
pub struct TcpOptionsIter<'a> {
    data: &'a [u8],
    done: bool,
}

impl<'a> TcpOptionsIter<'a> {
    /// Iterates over raw option bytes.
    pub fn new(data: &'a [u8]) -> Self {
        TcpOptionsIter { data, done: false }
    }

    fn next_option(&mut self) -> Result<TcpOption<'a>, WireError> {
        let kind = self.data[0];
        match kind {
            0 => {
                self.done = true;
                return Ok(TcpOption::EndOfList);
            }
            1 => {
                self.data = &self.data[1..];
                return Ok(TcpOption::NoOp);
            }
            _ => {}
        }
        let len = match self.data.get(1) {
            Some(&l) => usize::from(l),
            None => return Err(WireError::Malformed("tcp option length missing")),
        };
        if len < 2 {
            return Err(WireError::Malformed("tcp option length < 2"));
        }
        if len > self.data.len() {
            return Err(WireError::Malformed("tcp option runs past header"));
        }
        let body = &self.data[2..len];
        self.data = &self.data[len..];
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let opt = match (kind, body.len()) {
            (2, 2) => TcpOption::Mss(u16::from_be_bytes([body[0], body[1]])),
            (3, 1) => TcpOption::WindowScale(body[0]),
            (4, 0) => TcpOption::SackPermitted,
            (5, n) if n > 0 && n % 8 == 0 && n <= 32 => {
                let mut blocks: SackBlocks = [None; 4];
                for (slot, b) in blocks.iter_mut().zip(body.chunks_exact(8)) {
                    *slot = Some((be32(&b[..4]), be32(&b[4..])));
                }
                TcpOption::Sack(blocks)
            }
            (8, 8) => TcpOption::Timestamp {
                tsval: be32(&body[..4]),
                tsecr: be32(&body[4..]),
            },
            (2..=5 | 8, _) => return Err(WireError::Malformed("tcp option length wrong for kind")),
            _ => TcpOption::Unknown { kind, data: body },
        };
        Ok(opt)
    }
}

impl<'a> Iterator for TcpOptionsIter<'a> {
    type Item = Result<TcpOption<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.data.is_empty() {
            return None;
        }
        let r = self.next_option();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// A view of a TCP segment (RFC 9293 section 3.1).
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |          Source Port          |       Destination Port        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                        Sequence Number                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Acknowledgment Number                      |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Data |       |C|E|U|A|P|R|S|F|                               |
/// | Offset| Rsrvd |W|C|R|C|S|S|Y|I|            Window             |
/// |       |       |R|E|G|K|H|T|N|N|                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |           Checksum            |         Urgent Pointer        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                           [Options]                           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                             data                              |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps a buffer without checking it; accessors may panic.
    pub fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps a buffer after [`TcpPacket::check_len`].
    ///
    /// # Errors
    /// See [`TcpPacket::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the fixed header and the data offset.
    ///
    /// # Errors
    /// [`WireError::Truncated`] if the buffer is shorter than 20 bytes or
    /// than the data offset; [`WireError::Malformed`] if the data offset is
    /// below 5 words.
    pub fn check_len(&self) -> Result<(), WireError> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(WireError::Malformed("tcp data offset < 5"));
        }
        if len < header_len {
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

    fn u32_at(&self, r: std::ops::Range<usize>) -> u32 {
        let b = &self.buffer.as_ref()[r];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ_NUM)
    }

    /// Acknowledgment number (meaningful when ACK is set).
    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK_NUM)
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The control bits.
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    /// Window.
    pub fn window_len(&self) -> u16 {
        self.u16_at(field::WIN_SIZE)
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        self.u16_at(field::URGENT)
    }

    /// The raw options area (bytes 20 to the data offset).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// An iterator over the parsed options.
    pub fn options_iter(&self) -> TcpOptionsIter<'_> {
        TcpOptionsIter::new(self.options())
    }

    /// The data after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    fn sum_with(&self, ips: &IpPair) -> u16 {
        let d = self.buffer.as_ref();
        checksum::fold(ips.pseudo_header(IpProtocol::Tcp, d.len() as u32) + checksum::sum(d))
    }

    /// True if the checksum verifies over `ips`' pseudo-header.
    pub fn verify_checksum(&self, ips: &IpPair) -> bool {
        self.sum_with(ips) == 0xffff
    }

    /// [`TcpPacket::verify_checksum`] over IPv4.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.verify_checksum(&IpPair::V4 { src, dst })
    }

    /// [`TcpPacket::verify_checksum`] over IPv6.
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.verify_checksum(&IpPair::V6 { src, dst })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    fn set_u16_at(&mut self, r: std::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }

    fn set_u32_at(&mut self, r: std::ops::Range<usize>, v: u32) {
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

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, v: u32) {
        self.set_u32_at(field::SEQ_NUM, v);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, v: u32) {
        self.set_u32_at(field::ACK_NUM, v);
    }

    /// Sets the header length in bytes (rounded down to a multiple of 4);
    /// the reserved bits are cleared.
    pub fn set_header_len(&mut self, len: usize) {
        self.buffer.as_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    /// Sets the control bits.
    pub fn set_flags(&mut self, f: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS] = f.0;
    }

    /// Sets the window.
    pub fn set_window_len(&mut self, v: u16) {
        self.set_u16_at(field::WIN_SIZE, v);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, v: u16) {
        self.set_u16_at(field::URGENT, v);
    }

    /// The options area, mutable.
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }

    /// Computes and writes the checksum over `ips`' pseudo-header.
    pub fn fill_checksum(&mut self, ips: &IpPair) {
        self.set_checksum(0);
        let c = !self.sum_with(ips);
        self.set_checksum(c);
    }

    /// [`TcpPacket::fill_checksum`] over IPv4.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.fill_checksum(&IpPair::V4 { src, dst });
    }

    /// [`TcpPacket::fill_checksum`] over IPv6.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.fill_checksum(&IpPair::V6 { src, dst });
    }
}

/// A validated TCP segment with the options stitchd generates or reads.
///
/// SACK blocks and unknown options are not kept: `parse` checks that they
/// are well formed and skips them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number (written as is; set `flags` ACK to make it count).
    pub ack_number: u32,
    /// Control bits.
    pub flags: TcpFlags,
    /// Window.
    pub window_len: u16,
    /// Urgent pointer.
    pub urgent_at: u16,
    /// MSS option.
    pub max_seg_size: Option<u16>,
    /// Window scale option.
    pub window_scale: Option<u8>,
    /// SACK-permitted option.
    pub sack_permitted: bool,
    /// Timestamps option `(tsval, tsecr)`.
    pub timestamp: Option<(u32, u32)>,
    /// The data.
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Reads a segment and its options, without checking the checksum (the
    /// NIC may have; otherwise use [`TcpRepr::parse_verified`]).
    ///
    /// # Errors
    /// [`WireError::Truncated`] / [`WireError::Malformed`] from the length
    /// checks and from malformed options.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &TcpPacket<&'a T>) -> Result<Self, WireError> {
        packet.check_len()?;
        let buf: &'a [u8] = <T as AsRef<[u8]>>::as_ref(packet.buffer);
        let header_len = packet.header_len();
        let mut repr = TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_at: packet.urgent_at(),
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            timestamp: None,
            payload: &buf[header_len..],
        };
        for opt in TcpOptionsIter::new(&buf[HEADER_LEN..header_len]) {
            match opt? {
                TcpOption::Mss(v) => repr.max_seg_size = Some(v),
                TcpOption::WindowScale(v) => repr.window_scale = Some(v),
                TcpOption::SackPermitted => repr.sack_permitted = true,
                TcpOption::Timestamp { tsval, tsecr } => repr.timestamp = Some((tsval, tsecr)),
                TcpOption::EndOfList
                | TcpOption::NoOp
                | TcpOption::Sack(_)
                | TcpOption::Unknown { .. } => {}
            }
        }
        Ok(repr)
    }

    /// [`TcpRepr::parse`], then the checksum over `ips`.
    ///
    /// # Errors
    /// As `parse`, and [`WireError::BadChecksum`].
    pub fn parse_verified<T: AsRef<[u8]> + ?Sized>(
        packet: &TcpPacket<&'a T>,
        ips: &IpPair,
    ) -> Result<Self, WireError> {
        let r = Self::parse(packet)?;
        if !packet.verify_checksum(ips) {
            return Err(WireError::BadChecksum);
        }
        Ok(r)
    }

    fn options_len(&self) -> usize {
        let mut n = 0;
        if self.max_seg_size.is_some() {
            n += 4;
        }
        if self.window_scale.is_some() {
            n += 3;
        }
        if self.sack_permitted {
            n += 2;
        }
        if self.timestamp.is_some() {
            n += 10;
        }
        n
    }

    /// 20 plus the options, padded to a multiple of 4 (at most 40).
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len().div_ceil(4) * 4
    }

    /// Header plus payload.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes header, options (MSS, window scale, SACK-permitted, timestamps,
    /// then zero padding) and payload, then fills the checksum over `ips`.
    /// The checksum covers exactly [`TcpRepr::buffer_len`] bytes.
    ///
    /// # Panics
    /// If the buffer is shorter than [`TcpRepr::buffer_len`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut TcpPacket<T>, ips: &IpPair) {
        let header_len = self.header_len();
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(header_len);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(self.urgent_at);
        {
            let opts = packet.options_mut();
            opts.fill(0);
            let mut at = 0;
            if let Some(mss) = self.max_seg_size {
                opts[at..at + 2].copy_from_slice(&[2, 4]);
                opts[at + 2..at + 4].copy_from_slice(&mss.to_be_bytes());
                at += 4;
            }
            if let Some(ws) = self.window_scale {
                opts[at..at + 3].copy_from_slice(&[3, 3, ws]);
                at += 3;
            }
            if self.sack_permitted {
                opts[at..at + 2].copy_from_slice(&[4, 2]);
                at += 2;
            }
            if let Some((tsval, tsecr)) = self.timestamp {
                opts[at..at + 2].copy_from_slice(&[8, 10]);
                opts[at + 2..at + 6].copy_from_slice(&tsval.to_be_bytes());
                opts[at + 6..at + 10].copy_from_slice(&tsecr.to_be_bytes());
            }
        }
        let end = self.buffer_len();
        let buf = packet.buffer.as_mut();
        buf[header_len..end].copy_from_slice(self.payload);
        let mut seg = TcpPacket::new_unchecked(&mut buf[..end]);
        seg.fill_checksum(ips);
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

    // SYN 49152 -> 80, seq 0x01020304, window 0xffff, MSS 1460, WS 7, EOL.
    static SYN: [u8; 28] = [
        0xc0, 0x00, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x70, 0x02, 0xff,
        0xff, 0x2d, 0xa1, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x03, 0x03, 0x07, 0x00,
    ];

    fn syn_repr() -> TcpRepr<'static> {
        TcpRepr {
            src_port: 49152,
            dst_port: 80,
            seq_number: 0x0102_0304,
            ack_number: 0,
            flags: TcpFlags::SYN,
            window_len: 0xffff,
            urgent_at: 0,
            max_seg_size: Some(1460),
            window_scale: Some(7),
            sack_permitted: false,
            timestamp: None,
            payload: &[],
        }
    }

    #[test]
    fn deconstruct() {
        let p = TcpPacket::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.src_port(), 49152);
        assert_eq!(p.dst_port(), 80);
        assert_eq!(p.seq_number(), 0x0102_0304);
        assert_eq!(p.ack_number(), 0);
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.flags(), TcpFlags::SYN);
        assert!(p.flags().contains(TcpFlags::SYN));
        assert!(!p.flags().contains(TcpFlags::SYN | TcpFlags::ACK));
        assert_eq!(p.window_len(), 0xffff);
        assert_eq!(p.checksum(), 0x2da1);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.options(), &SYN[20..]);
        assert_eq!(p.payload(), &[] as &[u8]);
        let opts: Vec<_> = p.options_iter().collect();
        assert_eq!(
            opts,
            vec![
                Ok(TcpOption::Mss(1460)),
                Ok(TcpOption::WindowScale(7)),
                Ok(TcpOption::EndOfList)
            ]
        );
        assert!(p.verify_checksum_v4(Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(TcpRepr::parse_verified(&p, &v4()), Ok(syn_repr()));
    }

    #[test]
    fn construct() {
        let mut buf = [0xaau8; 28];
        let r = syn_repr();
        assert_eq!(r.buffer_len(), 28);
        r.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &v4());
        assert_eq!(buf, SYN);
    }

    #[test]
    fn truncated_at_every_length() {
        for len in 0..SYN.len() {
            assert_eq!(
                TcpPacket::new_checked(&SYN[..len]).unwrap_err(),
                WireError::Truncated
            );
        }
        let mut b = SYN;
        b[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed("tcp data offset < 5")
        );
    }

    #[test]
    fn round_trip_with_payload_and_all_options() {
        let r = TcpRepr {
            flags: TcpFlags::ACK | TcpFlags::PSH,
            ack_number: 77,
            sack_permitted: true,
            timestamp: Some((1, 2)),
            payload: b"hello",
            ..syn_repr()
        };
        assert_eq!(r.header_len(), 40);
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &v4());
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(TcpRepr::parse_verified(&p, &v4()), Ok(r));
        let r2 = TcpRepr::parse(&p).unwrap();
        let mut again = vec![0u8; r2.buffer_len()];
        r2.emit(&mut TcpPacket::new_unchecked(&mut again[..]), &v4());
        assert_eq!(again, buf);
    }

    #[test]
    fn emit_checksums_only_the_segment_in_a_larger_buffer() {
        let r = syn_repr();
        let mut buf = [0x55u8; 40];
        r.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &v4());
        assert_eq!(&buf[..28], &SYN[..]);
    }

    #[test]
    fn option_iterator_stops_on_malformed_lengths() {
        let cases: [(&[u8], usize); 6] = [
            (&[2], 1),                   // length missing
            (&[2, 1, 0, 0], 1),          // length < 2
            (&[1, 2, 8, 0, 0], 2),       // runs past the area
            (&[2, 3, 5, 0], 1),          // MSS of 1 byte
            (&[5, 6, 0, 0, 0, 0, 0], 1), // SACK not a multiple of 8
            (&[1, 3, 4, 0, 0, 0, 0], 2), // window scale of 2 bytes
        ];
        for (bytes, n) in cases {
            let items: Vec<_> = TcpOptionsIter::new(bytes).collect();
            assert_eq!(items.len(), n, "{bytes:?}");
            assert!(
                matches!(items[n - 1], Err(WireError::Malformed(_))),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn option_iterator_reads_sack_and_unknown() {
        let bytes = [
            1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 30, 4, 0xab, 0xcd, 8, 10,
            0, 0, 0, 5, 0, 0, 0, 6,
        ];
        let items: Vec<_> = TcpOptionsIter::new(&bytes).map(|o| o.unwrap()).collect();
        assert_eq!(
            items,
            vec![
                TcpOption::NoOp,
                TcpOption::NoOp,
                TcpOption::Sack([Some((1, 2)), Some((3, 4)), None, None]),
                TcpOption::Unknown {
                    kind: 30,
                    data: &[0xab, 0xcd]
                },
                TcpOption::Timestamp { tsval: 5, tsecr: 6 },
            ]
        );
    }

    #[test]
    fn malformed_option_fails_parse() {
        let mut b = SYN;
        b[21] = 9; // MSS length runs past header
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert!(matches!(TcpRepr::parse(&p), Err(WireError::Malformed(_))));
    }

    #[test]
    fn flags_debug_and_ops() {
        let mut f = TcpFlags::SYN | TcpFlags::ACK;
        assert_eq!(format!("{f:?}"), "SYN|ACK");
        f.remove(TcpFlags::SYN);
        f.insert(TcpFlags::FIN);
        assert_eq!(f, TcpFlags::FIN | TcpFlags::ACK);
        assert!(f.intersects(TcpFlags::FIN | TcpFlags::RST));
        assert_eq!(format!("{:?}", TcpFlags::empty()), "(empty)");
    }

    #[test]
    fn etherparse_segments_verify_and_parse() {
        use etherparse::TcpOptionElement as E;
        let b = etherparse::PacketBuilder::ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .tcp(1234, 443, 1000, 5000)
            .syn()
            .ack(42)
            .options(&[
                E::MaximumSegmentSize(1400),
                E::SelectiveAcknowledgementPermitted,
                E::Timestamp(7, 8),
                E::Noop,
                E::WindowScale(9),
            ])
            .unwrap();
        let mut out = Vec::new();
        b.write(&mut out, b"data").unwrap();
        let p = TcpPacket::new_checked(&out[20..]).unwrap();
        assert!(p.verify_checksum_v4(Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)));
        let r = TcpRepr::parse_verified(&p, &v4()).unwrap();
        assert_eq!(r.flags, TcpFlags::SYN | TcpFlags::ACK);
        assert_eq!(r.ack_number, 42);
        assert_eq!(r.max_seg_size, Some(1400));
        assert!(r.sack_permitted);
        assert_eq!(r.timestamp, Some((7, 8)));
        assert_eq!(r.window_scale, Some(9));
        assert_eq!(r.payload, b"data");

        let src = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        let dst = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
        let b = etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 64)
            .tcp(1, 2, 3, 4)
            .rst();
        let mut out = Vec::new();
        b.write(&mut out, &[]).unwrap();
        let mut seg = out[40..].to_vec();
        let p = TcpPacket::new_checked(&seg[..]).unwrap();
        assert!(p.verify_checksum_v6(src, dst));
        assert!(p.flags().contains(TcpFlags::RST));
        let mut p = TcpPacket::new_checked(&mut seg[..]).unwrap();
        p.set_checksum(0);
        p.fill_checksum_v6(src, dst);
        assert_eq!(&seg[..], &out[40..]);
    }

    #[test]
    fn port_and_seq_rewrite_with_incremental_checksum() {
        let mut b = SYN;
        let mut p = TcpPacket::new_checked(&mut b[..]).unwrap();
        let c = checksum::update16(p.checksum(), p.dst_port(), 8080);
        p.set_dst_port(8080);
        let c = checksum::update32(c, p.seq_number(), 0xdead_beef);
        p.set_seq_number(0xdead_beef);
        // NAT the destination address: pseudo-header changes too.
        let old = Ipv4Addr::new(198, 18, 0, 2);
        let new = Ipv4Addr::new(198, 19, 7, 9);
        let c = checksum::update_bytes(c, &old.octets(), &new.octets());
        p.set_checksum(c);
        assert!(p.verify_checksum_v4(Ipv4Addr::new(198, 18, 0, 1), new));
    }
}
