//! The fixed header and the wire values it and the TLVs carry.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  magic "STCH" (0x53 54 43 48)                 |  0
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  version = 1  |   msg type    |          flags (bit 0 = R)    |  4
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |  8
//! +                      request_id (u64)                         +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               | 16
//! +                timestamp_ms (u64, unix ms)                    +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               | 24
//! +                                                               +
//! |                        nonce (16 bytes)                       |
//! +                                                               +
//! |                                                               |
//! +                                                               +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          key_id (u32)                         | 40
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        body_len (u16)         |  body: TLVs (body_len bytes)  | 44
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
//! ~                                                               ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        HMAC-SHA256 over bytes [0, 46 + body_len) (32 bytes)   |
//! ~                                                               ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! All integers are big-endian (network byte order). Parsing here checks only lengths,
//! magic and version: everything else in the header is trusted only after the tag has
//! been verified in [`open`](crate::open).

use crate::error::AgentError;

/// First four bytes of every datagram.
pub const MAGIC: [u8; 4] = *b"STCH";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes before the body.
pub const HEADER_LEN: usize = 46;
/// Bytes of the HMAC-SHA256 tag after the body.
pub const TAG_LEN: usize = 32;
/// Largest datagram either side sends or accepts: below any sane path MTU (1500 minus
/// IPv6, UDP and tunnel headers), so messages are never fragmented.
pub const MAX_DATAGRAM: usize = 1400;
/// Largest body that fits in [`MAX_DATAGRAM`].
pub const MAX_BODY: usize = MAX_DATAGRAM - HEADER_LEN - TAG_LEN;
/// UDP port of the switch's service address unless configured otherwise.
pub const DEFAULT_PORT: u16 = 4790;

/// Byte offsets of the header fields (smoltcp style: one place, no magic numbers).
pub(crate) mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const MSG_TYPE: usize = 5;
    pub const FLAGS: Range<usize> = 6..8;
    pub const REQUEST_ID: Range<usize> = 8..16;
    pub const TIMESTAMP: Range<usize> = 16..24;
    pub const NONCE: Range<usize> = 24..40;
    pub const KEY_ID: Range<usize> = 40..44;
    pub const BODY_LEN: Range<usize> = 44..46;
}

/// Defines a total enum over a `u8` wire value: every byte maps to a variant, unknown
/// ones to `Unknown(raw)`, so decoding never fails on a value and re-encoding is exact.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
            /// A value this implementation does not know, kept as received.
            Unknown(u8),
        }

        impl From<u8> for $name {
            fn from(raw: u8) -> Self {
                match raw {
                    $( $value => $name::$variant, )+
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                match v {
                    $( $name::$variant => $value, )+
                    $name::Unknown(raw) => raw,
                }
            }
        }
    };
}

wire_enum! {
    /// The message type byte of the header.
    pub enum MsgType {
        /// Shell -> switch, one-hop discovery (figure 5B, step 546).
        Probe = 1,
        /// Switch -> shell, the switch's capabilities (figure 5C).
        ProbeReply = 2,
        /// Agent -> switch: watch these two legs, they are about to be stitched.
        Prepare = 3,
        /// Agent -> switch: hold the legs' packets while the shell reads its TCP state.
        Freeze = 4,
        /// Agent -> switch: install the stitch with these sequence numbers.
        Commit = 5,
        /// Agent -> switch: forget a prepared or frozen stitch, release held packets.
        Abort = 6,
        /// Ack or error answering any request.
        Reply = 7,
        /// Switch -> agent: the stitched connection is ending (figures 4B-4E).
        Teardown = 8,
        /// Agent -> switch: these stitches' original connections are still alive.
        Heartbeat = 9,
        /// Agent -> switch: remove an installed stitch now.
        Delete = 10,
    }
}

wire_enum! {
    /// Transport of a stitch; the values are IP protocol numbers.
    pub enum Proto {
        /// TCP: sequence, SACK, timestamp and window translation.
        Tcp = 6,
        /// UDP: addresses and ports only.
        Udp = 17,
    }
}

wire_enum! {
    /// Teardown variant, seed 001 figures 4B-4E.
    pub enum Teardown {
        /// 4B: the switch sends control messages to both core and shell.
        B = 1,
        /// 4C: translated FIN to the core; the core tells the shell.
        C = 2,
        /// 4D: untranslated FIN to the shell; the shell tells the core.
        D = 3,
        /// 4E: translated FIN to the core and untranslated FIN to the shell.
        E = 4,
    }
}

wire_enum! {
    /// A party of a stitch.
    pub enum Side {
        /// The external application (C).
        Client = 1,
        /// The proxy (A), whose agent is `stitch-shell`.
        Shell = 2,
        /// The server (B), whose agent is `stitch-core`.
        Core = 3,
    }
}

wire_enum! {
    /// How a stitched connection ended.
    pub enum EndKind {
        /// A FIN was seen.
        Fin = 1,
        /// An RST was seen.
        Rst = 2,
        /// No packet for the idle timeout.
        Idle = 3,
        /// Removed by an operator or a Delete request.
        Deleted = 4,
    }
}

bitflags::bitflags! {
    /// Header flags. Unknown bits are kept (they are covered by the tag) and ignored.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct HeaderFlags: u16 {
        /// This datagram answers the request with the same `request_id`.
        const RESPONSE = 1 << 0;
    }
}

/// The parsed fixed header of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Always [`VERSION`] once parsed.
    pub version: u8,
    /// What the body is.
    pub msg_type: MsgType,
    /// Header flags, unknown bits kept.
    pub flags: HeaderFlags,
    /// Chosen by the requester; a response echoes it; retransmissions reuse it.
    pub request_id: u64,
    /// Sender's clock, unix milliseconds.
    pub timestamp_ms: u64,
    /// Fresh random bytes per datagram (also per retransmission).
    pub nonce: [u8; 16],
    /// Matching scope whose key signed the datagram.
    pub key_id: u32,
    /// Length of the TLV body.
    pub body_len: u16,
}

impl Header {
    /// Whether this datagram is a response.
    pub fn is_response(&self) -> bool {
        self.flags.contains(HeaderFlags::RESPONSE)
    }

    /// Parses the header of `datagram`, checking total length, magic, version and that
    /// `body_len` accounts for exactly the bytes between header and tag.
    ///
    /// # Errors
    /// [`AgentError::TooLarge`], [`AgentError::Truncated`], [`AgentError::BadMagic`],
    /// [`AgentError::BadVersion`], or [`AgentError::Malformed`] for trailing bytes.
    pub(crate) fn parse(datagram: &[u8]) -> Result<Header, AgentError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(AgentError::TooLarge(datagram.len()));
        }
        if datagram.len() < HEADER_LEN + TAG_LEN {
            return Err(AgentError::Truncated);
        }
        if datagram[field::MAGIC] != MAGIC {
            return Err(AgentError::BadMagic);
        }
        let version = datagram[field::VERSION];
        if version != VERSION {
            return Err(AgentError::BadVersion(version));
        }
        let body_len = be_u16(&datagram[field::BODY_LEN]);
        let expected = HEADER_LEN + usize::from(body_len) + TAG_LEN;
        if datagram.len() < expected {
            return Err(AgentError::Truncated);
        }
        if datagram.len() > expected {
            return Err(AgentError::Malformed("bytes after the tag"));
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&datagram[field::NONCE]);
        Ok(Header {
            version,
            msg_type: MsgType::from(datagram[field::MSG_TYPE]),
            flags: HeaderFlags::from_bits_retain(be_u16(&datagram[field::FLAGS])),
            request_id: be_u64(&datagram[field::REQUEST_ID]),
            timestamp_ms: be_u64(&datagram[field::TIMESTAMP]),
            nonce,
            key_id: be_u32(&datagram[field::KEY_ID]),
            body_len,
        })
    }

    /// Appends the 46 header bytes to `out`.
    pub(crate) fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&MAGIC);
        out.push(self.version);
        out.push(u8::from(self.msg_type));
        out.extend_from_slice(&self.flags.bits().to_be_bytes());
        out.extend_from_slice(&self.request_id.to_be_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.body_len.to_be_bytes());
    }
}

/// Big-endian readers over slices whose length the caller has already checked; a short
/// slice reads as if zero-padded rather than panicking.
pub(crate) fn be_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    copy_prefix(&mut a, b);
    u16::from_be_bytes(a)
}

pub(crate) fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    copy_prefix(&mut a, b);
    u32::from_be_bytes(a)
}

pub(crate) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    copy_prefix(&mut a, b);
    u64::from_be_bytes(a)
}

fn copy_prefix(dst: &mut [u8], src: &[u8]) {
    let n = dst.len().min(src.len());
    dst[..n].copy_from_slice(&src[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: VERSION,
            msg_type: MsgType::Commit,
            flags: HeaderFlags::RESPONSE,
            request_id: 0x0102_0304_0506_0708,
            timestamp_ms: 0x1122_3344_5566_7788,
            nonce: [0xAA; 16],
            key_id: 0xDEAD_BEEF,
            body_len: 0,
        }
    }

    #[test]
    fn header_emits_46_bytes_at_documented_offsets() {
        let mut out = Vec::new();
        sample().emit(&mut out);
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(&out[0..4], b"STCH");
        assert_eq!(out[4], 1);
        assert_eq!(out[5], 5);
        assert_eq!(&out[6..8], &[0, 1]);
        assert_eq!(&out[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            &out[16..24],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        assert_eq!(&out[24..40], &[0xAA; 16]);
        assert_eq!(&out[40..44], &[0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(&out[44..46], &[0, 0]);
    }

    #[test]
    fn header_round_trips_through_parse() {
        let mut out = Vec::new();
        sample().emit(&mut out);
        out.extend_from_slice(&[0u8; TAG_LEN]);
        assert_eq!(Header::parse(&out), Ok(sample()));
    }

    #[test]
    fn header_parse_rejects_magic_version_and_lengths() {
        let mut good = Vec::new();
        sample().emit(&mut good);
        good.extend_from_slice(&[0u8; TAG_LEN]);

        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Header::parse(&b), Err(AgentError::BadMagic));
        let mut b = good.clone();
        b[4] = 2;
        assert_eq!(Header::parse(&b), Err(AgentError::BadVersion(2)));
        let mut b = good.clone();
        b[45] = 1;
        assert_eq!(Header::parse(&b), Err(AgentError::Truncated));
        let mut b = good.clone();
        b.push(0);
        assert_eq!(
            Header::parse(&b),
            Err(AgentError::Malformed("bytes after the tag"))
        );
        assert_eq!(
            Header::parse(&vec![0u8; MAX_DATAGRAM + 1]),
            Err(AgentError::TooLarge(MAX_DATAGRAM + 1))
        );
    }

    #[test]
    fn wire_enums_are_total_and_round_trip_every_byte() {
        for raw in 0..=u8::MAX {
            assert_eq!(u8::from(MsgType::from(raw)), raw);
            assert_eq!(u8::from(Proto::from(raw)), raw);
            assert_eq!(u8::from(Teardown::from(raw)), raw);
            assert_eq!(u8::from(Side::from(raw)), raw);
            assert_eq!(u8::from(EndKind::from(raw)), raw);
        }
        assert_eq!(Proto::from(6), Proto::Tcp);
        assert_eq!(Proto::from(17), Proto::Udp);
        assert_eq!(MsgType::from(0), MsgType::Unknown(0));
        assert_eq!(MsgType::from(10), MsgType::Delete);
    }
}
