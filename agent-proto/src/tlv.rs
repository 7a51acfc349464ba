//! The body: a sequence of type-length-value records, and the value encodings.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |C|      type (15 bits)         |         length (u16)          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ~                     value (length bytes)                      ~
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! No padding, no alignment. The type space is global (one number means one thing in
//! every message) but each message type accepts only its own set of TLVs; a TLV outside
//! that set is treated as unknown. Unknown TLVs with the critical bit `C` are fatal
//! ([`AgentError::UnknownCritical`]): a newer peer uses the bit for anything an older
//! peer must not silently ignore. Unknown non-critical TLVs are skipped, so optional
//! hints can be added without a version bump. A known TLV twice is
//! [`AgentError::Malformed`]: a message with two stitch ids has no single meaning.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::AgentError;
use crate::wire::{be_u16, be_u32};

/// Bit of the TLV type that makes an unknown TLV fatal.
pub const CRITICAL: u16 = 0x8000;

/// Whether a TLV type carries the critical bit.
pub fn is_critical(tlv_type: u16) -> bool {
    tlv_type & CRITICAL != 0
}

/// TLV type numbers. Values every receiver must act on are critical; tunables a receiver
/// may replace with its defaults and free-text are not.
pub mod tlv_type {
    /// u32: the switch's id of a stitch.
    pub const STITCH_ID: u16 = 0x8001;
    /// addr: the client (C) as the switch sees it on leg A.
    pub const CLIENT: u16 = 0x8002;
    /// addr: the shell on leg A (A1).
    pub const SHELL_A: u16 = 0x8003;
    /// addr: the shell on leg B (A2).
    pub const SHELL_B: u16 = 0x8004;
    /// addr: the core (B).
    pub const CORE: u16 = 0x8005;
    /// u8: [`Proto`](crate::Proto), an IP protocol number.
    pub const PROTO: u16 = 0x8006;
    /// u8: [`Teardown`](crate::Teardown) variant.
    pub const TEARDOWN: u16 = 0x8007;
    /// 4 x u32: s1, r1, s2, r2.
    pub const SEQUENCES: u16 = 0x8008;
    /// 4 x u8: window-scale shift of C, A1, A2, B.
    pub const WSCALE: u16 = 0x8009;
    /// 4 x u16: MSS of C, A1, A2, B.
    pub const MSS: u16 = 0x800A;
    /// 2 x bool: TCP timestamps on leg A, leg B.
    pub const TIMESTAMPS: u16 = 0x800B;
    /// 2 x bool: SACK on leg A, leg B.
    pub const SACK: u16 = 0x800C;
    /// bool + u16: ok, error code.
    pub const RESULT: u16 = 0x800D;
    /// u8: [`Side`](crate::Side) the end came from.
    pub const FROM_SIDE: u16 = 0x800E;
    /// u8: [`EndKind`](crate::EndKind).
    pub const END_KIND: u16 = 0x800F;
    /// u8: [`Side`](crate::Side) the message is for.
    pub const TO_SIDE: u16 = 0x8010;
    /// n x u32 (n <= 256): stitch ids.
    pub const STITCH_IDS: u16 = 0x8011;
    /// 2 x u8: ingress and egress interface counts of the prober.
    pub const IFACES: u16 = 0x8012;
    /// u32: [`CapFlags`](crate::CapFlags) the prober wants.
    pub const WANT_CAPS: u16 = 0x8013;
    /// u32: [`CapFlags`](crate::CapFlags) the switch has.
    pub const CAPS: u16 = 0x8014;
    /// u32: how many more stitches the switch can take now.
    pub const FREE_FLOWS: u16 = 0x8015;
    /// addr: where agents send requests (the switch's service address).
    pub const REQUEST_ADDR: u16 = 0x8016;
    /// u32: idle timeout in seconds (absent: the switch's default).
    pub const IDLE_TIMEOUT: u16 = 0x0001;
    /// u32: linger after both FINs in seconds (absent: the switch's default).
    pub const LINGER: u16 = 0x0002;
    /// UTF-8 (<= 512 bytes): human-readable reply text (absent: empty).
    pub const MESSAGE: u16 = 0x0003;
    /// UTF-8 (<= 64 bytes): the switch's name (absent: empty).
    pub const SWITCH_ID: u16 = 0x0004;
    /// 2 x u64: bytes the switch carried C->B and B->C for a stitch (Teardown; absent:
    /// unknown).
    pub const BYTES: u16 = 0x0005;
    /// 4 x SocketAddr (client, shell A1, shell A2, core): the stitched connection's legs
    /// (Teardown; absent: identify it by stitch id alone). An agent that never saw the
    /// stitch id (the core, in 4C) names the connection this way.
    pub const LEGS: u16 = 0x0006;
}

/// Length of a SocketAddr value: family byte + address + port.
const ADDR_V4_LEN: usize = 1 + 4 + 2;
const ADDR_V6_LEN: usize = 1 + 16 + 2;

/// Appends TLVs to a body.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn put(&mut self, tlv_type: u16, value: &[u8]) -> Result<(), AgentError> {
        let len = u16::try_from(value.len()).map_err(|_| AgentError::TooLarge(value.len()))?;
        self.buf.extend_from_slice(&tlv_type.to_be_bytes());
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(value);
        Ok(())
    }

    pub(crate) fn put_u8(&mut self, tlv_type: u16, v: u8) -> Result<(), AgentError> {
        self.put(tlv_type, &[v])
    }

    pub(crate) fn put_u32(&mut self, tlv_type: u16, v: u32) -> Result<(), AgentError> {
        self.put(tlv_type, &v.to_be_bytes())
    }

    pub(crate) fn put_bools(&mut self, tlv_type: u16, v: (bool, bool)) -> Result<(), AgentError> {
        self.put(tlv_type, &[u8::from(v.0), u8::from(v.1)])
    }

    /// Family byte 4 or 6, the address, the port. The IPv6 flow label and scope id are
    /// not carried: they mean nothing on another host.
    pub(crate) fn put_addr(&mut self, tlv_type: u16, a: &SocketAddr) -> Result<(), AgentError> {
        let mut v = Vec::with_capacity(ADDR_V6_LEN);
        match a.ip() {
            IpAddr::V4(ip) => {
                v.push(4);
                v.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                v.push(6);
                v.extend_from_slice(&ip.octets());
            }
        }
        v.extend_from_slice(&a.port().to_be_bytes());
        self.put(tlv_type, &v)
    }

    /// A UTF-8 string of at most `max` bytes; longer is refused rather than cut, so
    /// what the receiver reads is what the sender meant.
    pub(crate) fn put_str(
        &mut self,
        tlv_type: u16,
        s: &str,
        max: usize,
        too_long: &'static str,
    ) -> Result<(), AgentError> {
        if s.len() > max {
            return Err(AgentError::Malformed(too_long));
        }
        self.put(tlv_type, s.as_bytes())
    }
}

/// Splits `body` into TLVs and keeps those whose type is in `known`, one slot per known
/// type, in the order of `known`.
///
/// # Errors
/// [`AgentError::Malformed`] if a TLV overruns the body or a known type repeats;
/// [`AgentError::UnknownCritical`] for an unknown TLV with the critical bit.
pub(crate) fn collect<'a, const N: usize>(
    body: &'a [u8],
    known: [u16; N],
) -> Result<[Option<&'a [u8]>; N], AgentError> {
    let mut slots: [Option<&'a [u8]>; N] = [None; N];
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(AgentError::Malformed("TLV header overruns the body"));
        }
        let t = be_u16(&rest[0..2]);
        let len = usize::from(be_u16(&rest[2..4]));
        let Some(value) = rest.get(4..4 + len) else {
            return Err(AgentError::Malformed("TLV value overruns the body"));
        };
        rest = &rest[4 + len..];
        match known.iter().position(|&k| k == t) {
            Some(i) => {
                if slots[i].is_some() {
                    return Err(AgentError::Malformed("duplicate TLV"));
                }
                slots[i] = Some(value);
            }
            None if is_critical(t) => return Err(AgentError::UnknownCritical(t)),
            None => {}
        }
    }
    Ok(slots)
}

/// Value readers. Every value has one exact length; anything else is malformed, so a
/// value has one encoding and a sealed message one byte string.
pub(crate) fn required<'a>(
    slot: Option<&'a [u8]>,
    missing: &'static str,
) -> Result<&'a [u8], AgentError> {
    slot.ok_or(AgentError::Malformed(missing))
}

fn exact<const L: usize>(v: &[u8]) -> Result<[u8; L], AgentError> {
    <[u8; L]>::try_from(v).map_err(|_| AgentError::Malformed("TLV value has the wrong length"))
}

pub(crate) fn get_u8(v: &[u8]) -> Result<u8, AgentError> {
    Ok(exact::<1>(v)?[0])
}

pub(crate) fn get_u32(v: &[u8]) -> Result<u32, AgentError> {
    Ok(u32::from_be_bytes(exact::<4>(v)?))
}

pub(crate) fn get_bool(b: u8) -> Result<bool, AgentError> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(AgentError::Malformed("boolean other than 0 or 1")),
    }
}

pub(crate) fn get_bools(v: &[u8]) -> Result<(bool, bool), AgentError> {
    let [a, b] = exact::<2>(v)?;
    Ok((get_bool(a)?, get_bool(b)?))
}

pub(crate) fn get_array<const L: usize>(v: &[u8]) -> Result<[u8; L], AgentError> {
    exact::<L>(v)
}

pub(crate) fn get_u32s<const L: usize, const B: usize>(v: &[u8]) -> Result<[u32; L], AgentError> {
    let raw = exact::<B>(v)?;
    let mut out = [0u32; L];
    for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
        *o = be_u32(c);
    }
    Ok(out)
}

pub(crate) fn get_addr(v: &[u8]) -> Result<SocketAddr, AgentError> {
    match (v.first(), v.len()) {
        (Some(4), ADDR_V4_LEN) => {
            let ip = Ipv4Addr::new(v[1], v[2], v[3], v[4]);
            Ok(SocketAddr::new(IpAddr::V4(ip), be_u16(&v[5..7])))
        }
        (Some(6), ADDR_V6_LEN) => {
            let octets: [u8; 16] = exact::<16>(&v[1..17])?;
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                be_u16(&v[17..19]),
            ))
        }
        (Some(4 | 6), _) => Err(AgentError::Malformed("address TLV has the wrong length")),
        _ => Err(AgentError::Malformed("address family other than 4 or 6")),
    }
}

pub(crate) fn get_str(v: &[u8], max: usize, too_long: &'static str) -> Result<String, AgentError> {
    if v.len() > max {
        return Err(AgentError::Malformed(too_long));
    }
    std::str::from_utf8(v)
        .map(str::to_owned)
        .map_err(|_| AgentError::Malformed("string is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_v4_encodes_family_address_port() {
        let mut w = Writer::default();
        w.put_addr(0x8002, &"198.18.0.1:80".parse().unwrap())
            .unwrap();
        assert_eq!(w.buf, [0x80, 0x02, 0, 7, 4, 198, 18, 0, 1, 0, 80]);
        assert_eq!(get_addr(&w.buf[4..]), Ok("198.18.0.1:80".parse().unwrap()));
    }

    #[test]
    fn addr_v6_round_trips_and_bad_family_is_malformed() {
        let a: SocketAddr = "[2001:db8::1]:4790".parse().unwrap();
        let mut w = Writer::default();
        w.put_addr(0x8002, &a).unwrap();
        assert_eq!(w.buf.len(), 4 + 19);
        assert_eq!(get_addr(&w.buf[4..]), Ok(a));
        assert!(get_addr(&[5, 1, 2, 3, 4, 0, 1]).is_err());
        assert!(get_addr(&[4, 1, 2, 3, 4, 0]).is_err());
        assert!(get_addr(&[]).is_err());
    }

    #[test]
    fn collect_skips_unknown_noncritical_and_rejects_unknown_critical() {
        let mut w = Writer::default();
        w.put_u32(0x8001, 7).unwrap();
        w.put(0x7fff, b"future hint").unwrap();
        let slots = collect(&w.buf, [0x8001]).unwrap();
        assert_eq!(slots[0], Some(&7u32.to_be_bytes()[..]));

        w.put(0x8fff, b"").unwrap();
        assert_eq!(
            collect(&w.buf, [0x8001]),
            Err(AgentError::UnknownCritical(0x8fff))
        );
    }

    #[test]
    fn collect_rejects_duplicates_and_overruns() {
        let mut w = Writer::default();
        w.put_u32(0x8001, 7).unwrap();
        w.put_u32(0x8001, 8).unwrap();
        assert_eq!(
            collect(&w.buf, [0x8001]),
            Err(AgentError::Malformed("duplicate TLV"))
        );
        assert!(collect(&[0x80, 0x01, 0], [0x8001]).is_err());
        assert!(collect(&[0x80, 0x01, 0, 5, 1], [0x8001]).is_err());
    }

    #[test]
    fn values_have_exactly_one_length_and_booleans_one_encoding() {
        assert!(get_u32(&[0, 0, 1]).is_err());
        assert!(get_u8(&[]).is_err());
        assert_eq!(get_bools(&[1, 0]), Ok((true, false)));
        assert!(get_bools(&[2, 0]).is_err());
        assert!(get_str(&[0xff], 10, "long").is_err());
        assert!(get_str(b"abc", 2, "long").is_err());
    }
}
