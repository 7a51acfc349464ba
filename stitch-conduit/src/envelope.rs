//! Sealing and opening matching messages: HMAC-SHA256 per scope, checked before parsing,
//! with agent-proto's [`ReplayGuard`] for freshness and at-most-once delivery.
//!
//! Layout (big-endian):
//!
//! ```text
//!  0      4   5   6            14                30        34     36
//! +------+---+---+------------+----------------+---------+------+------+-------+
//! | STCN |ver|typ| timestamp  |   nonce (16)   | key id  | blen | body | tag32 |
//! +------+---+---+------------+----------------+---------+------+------+-------+
//! ```
//!
//! This is the agent protocol's construction (same checks in the same order: size,
//! magic/version, body length, key, constant-time tag over header and body, then the
//! timestamp window and nonce memory of [`ReplayGuard`], only then the body) under its
//! own magic. Why not agent-proto's `seal`/`open` themselves: they are closed over the
//! agent protocol's message enum (its raw sealer is crate-private) and this crate may not
//! change agent-proto; the replay guard and key format are reused as they are.

use agent_proto::ReplayGuard;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::codec::{Reader, Writer};
use crate::error::WireError;
use crate::msg::Message;
use crate::scope::Scopes;

type HmacSha256 = Hmac<Sha256>;

/// The four magic bytes.
pub const MAGIC: [u8; 4] = *b"STCN";
/// Protocol version.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 36;
/// Tag length in bytes.
pub const TAG_LEN: usize = 32;
/// Largest datagram accepted or produced.
pub const MAX_DATAGRAM: usize = 1400;

/// An authenticated, fresh, first-seen, well-formed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The scope whose key signed it.
    pub key_id: u32,
    /// The sender's clock, unix milliseconds.
    pub timestamp_ms: u64,
    /// The message.
    pub msg: Message,
}

fn mac_for(scopes: &Scopes, key_id: u32) -> Result<HmacSha256, WireError> {
    let scope = scopes.get(key_id).ok_or(WireError::UnknownKey(key_id))?;
    HmacSha256::new_from_slice(&scope.key).map_err(|_| WireError::Malformed("key"))
}

/// Seals `msg` with the key of scope `key_id`.
///
/// `nonce` must be fresh random bytes, never reused with the same key.
///
/// # Errors
/// [`WireError::UnknownKey`] when the scope is not held, [`WireError::TooLarge`] past
/// [`MAX_DATAGRAM`].
pub fn seal(
    msg: &Message,
    key_id: u32,
    timestamp_ms: u64,
    nonce: [u8; 16],
    scopes: &Scopes,
) -> Result<Vec<u8>, WireError> {
    let body = msg.encode_body();
    let total = HEADER_LEN + body.len() + TAG_LEN;
    if total > MAX_DATAGRAM {
        return Err(WireError::TooLarge(total));
    }
    let mut mac = mac_for(scopes, key_id)?;
    let mut w = Writer::default();
    w.bytes(&MAGIC);
    w.u8(VERSION);
    w.u8(msg.type_code());
    w.u64(timestamp_ms);
    w.bytes(&nonce);
    w.u32(key_id);
    w.u16(body.len() as u16);
    w.bytes(&body);
    mac.update(&w.buf);
    let tag = mac.finalize().into_bytes();
    w.bytes(&tag);
    Ok(w.buf)
}

/// Authenticates and decodes a sealed message.
///
/// # Errors
/// One [`WireError`] per reason, in the order of the checks; never panics.
pub fn open(
    bytes: &[u8],
    scopes: &Scopes,
    guard: &mut ReplayGuard,
    now_ms: u64,
) -> Result<Opened, WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge(bytes.len()));
    }
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(WireError::Truncated);
    }
    let mut r = Reader::new(bytes);
    if r.take(4)? != MAGIC {
        return Err(WireError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(WireError::BadVersion(version));
    }
    let type_code = r.u8()?;
    let timestamp_ms = r.u64()?;
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(r.take(16)?);
    let key_id = r.u32()?;
    let body_len = usize::from(r.u16()?);
    if bytes.len() != HEADER_LEN + body_len + TAG_LEN {
        return Err(WireError::Truncated);
    }
    let mut mac = mac_for(scopes, key_id)?;
    let (signed, tag) = bytes.split_at(HEADER_LEN + body_len);
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| WireError::BadMac)?;
    guard
        .check_and_record(key_id, nonce, timestamp_ms, now_ms)
        .map_err(WireError::Replay)?;
    let msg = Message::decode_body(type_code, &signed[HEADER_LEN..])?;
    Ok(Opened {
        key_id,
        timestamp_ms,
        msg,
    })
}

/// 16 random bytes from the kernel, for nonces.
///
/// # Errors
/// The I/O error when `/dev/urandom` cannot be read.
pub fn fresh_nonce() -> std::io::Result<[u8; 16]> {
    use std::io::Read;
    let mut n = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desc::{ConnDesc, Proto, Tuple};
    use crate::msg::{Outcome, Reason};
    use crate::scope::Scope;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const NOW: u64 = 1_700_000_000_000;

    fn scopes(key: &str) -> Scopes {
        Scopes::new([Scope::from_hex("blue", 7, key, vec![1, 2]).unwrap()])
    }

    fn desc(id: u64) -> ConnDesc {
        ConnDesc {
            tuple: Tuple {
                proto: Proto::Tcp,
                src: "198.18.0.1:40000".parse().unwrap(),
                dst: "[2001:db8::2]:9000".parse().unwrap(),
            },
            age_ms: 1234,
            global_id: id,
            scope: 7,
        }
    }

    fn all_messages() -> Vec<Message> {
        let stitch = "198.18.0.14:7200".parse().unwrap();
        vec![
            Message::Publish {
                desc: desc(1),
                stitch_addr: stitch,
            },
            Message::Verdict {
                desc: desc(1),
                outcome: Outcome::Pending(Reason::NoSymmetric),
            },
            Message::Verdict {
                desc: desc(1),
                outcome: Outcome::Initiate {
                    peer: desc(2),
                    peer_stitch: stitch,
                },
            },
            Message::Verdict {
                desc: desc(2),
                outcome: Outcome::PeerInitiates { peer: desc(1) },
            },
            Message::Verdict {
                desc: desc(2),
                outcome: Outcome::Refused(Reason::Unknown(200)),
            },
            Message::Withdraw { desc: desc(1) },
            Message::StitchHello {
                desc: desc(1),
                stitch_addr: stitch,
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_seal_and_open() {
        let s = scopes(KEY);
        let mut guard = ReplayGuard::new(64);
        for (i, m) in all_messages().into_iter().enumerate() {
            let nonce = [i as u8; 16];
            let bytes = seal(&m, 7, NOW, nonce, &s).unwrap();
            let o = open(&bytes, &s, &mut guard, NOW + 5).unwrap();
            assert_eq!((o.key_id, o.timestamp_ms, o.msg), (7, NOW, m));
        }
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        let s = scopes(KEY);
        for m in all_messages() {
            let bytes = seal(&m, 7, NOW, [9; 16], &s).unwrap();
            for n in 0..bytes.len() {
                let mut guard = ReplayGuard::new(64);
                assert!(open(&bytes[..n], &s, &mut guard, NOW).is_err(), "len {n}");
            }
            // Bodies cut short are refused by the decoder too, even if signed.
            let body = m.encode_body();
            for n in 0..body.len() {
                assert!(Message::decode_body(m.type_code(), &body[..n]).is_err());
            }
        }
    }

    #[test]
    fn wrong_key_is_bad_mac_and_unknown_scope_is_unknown_key() {
        let other = "ff".repeat(32);
        let bytes = seal(&all_messages()[0], 7, NOW, [1; 16], &scopes(&other)).unwrap();
        let mut guard = ReplayGuard::new(64);
        assert_eq!(
            open(&bytes, &scopes(KEY), &mut guard, NOW),
            Err(WireError::BadMac)
        );
        assert!(
            guard.is_empty(),
            "a forged datagram must not fill the guard"
        );
        assert_eq!(
            seal(&all_messages()[0], 8, NOW, [1; 16], &scopes(KEY)),
            Err(WireError::UnknownKey(8))
        );
    }

    #[test]
    fn replayed_and_stale_datagrams_are_refused() {
        let s = scopes(KEY);
        let mut guard = ReplayGuard::new(64);
        let bytes = seal(&all_messages()[0], 7, NOW, [3; 16], &s).unwrap();
        assert!(open(&bytes, &s, &mut guard, NOW).is_ok());
        assert!(matches!(
            open(&bytes, &s, &mut guard, NOW + 1),
            Err(WireError::Replay(agent_proto::AgentError::Replayed))
        ));
        let old = seal(&all_messages()[0], 7, NOW - 60_000, [4; 16], &s).unwrap();
        assert!(matches!(
            open(&old, &s, &mut guard, NOW),
            Err(WireError::Replay(agent_proto::AgentError::Stale { .. }))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let s = scopes(KEY);
        let mut guard = ReplayGuard::new(64);
        let good = seal(&all_messages()[2], 7, NOW, [5; 16], &s).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut b = good.clone();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] ^= (x >> 32) as u8 | 1;
            let _ = open(&b, &s, &mut guard, NOW);
            let _ = Message::decode_body((x >> 8) as u8 % 6, &b[HEADER_LEN..]);
        }
        // Unknown message type (signed correctly) is an error, not a panic.
        assert_eq!(Message::decode_body(9, &[]), Err(WireError::UnknownType(9)));
    }
}
