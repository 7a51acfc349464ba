//! Sealing and opening datagrams: keys, HMAC-SHA256 tags, and the order of checks.
//!
//! Every datagram is signed with the key of a matching scope (`key_id`), including
//! discovery probes: a switch must not reveal its capabilities to, nor take orders from,
//! anyone without the scope's key. [`open`] does the cheap structural checks, then
//! verifies the tag over header and body BEFORE looking at the body, the timestamp or
//! the replay memory, so an unauthenticated sender can neither reach the TLV parser nor
//! fill the replay guard. A nonce is recorded only after its tag verified.

use std::collections::HashMap;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{AgentError, KeyError};
use crate::message::{decode_body, encode_body, is_response_type, Message};
use crate::replay::ReplayGuard;
use crate::wire::{Header, HeaderFlags, MsgType, HEADER_LEN, MAX_DATAGRAM, TAG_LEN, VERSION};

type HmacSha256 = Hmac<Sha256>;

/// Length of a key, in bytes.
pub const KEY_LEN: usize = 32;

/// The keys of the matching scopes this endpoint belongs to, by key id.
///
/// Keys are held only as prepared HMAC states and never printed: `Debug` shows the key
/// ids alone, so a keyring can be logged with the rest of a configuration.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: HashMap<u32, HmacSha256>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<u32> = self.keys.keys().copied().collect();
        ids.sort_unstable();
        f.debug_struct("Keyring")
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// An empty keyring.
    pub fn new() -> Keyring {
        Keyring::default()
    }

    /// Adds (or replaces) the key for `key_id`; returns whether one was replaced.
    pub fn add(&mut self, key_id: u32, key: [u8; KEY_LEN]) -> bool {
        let Ok(mac) = HmacSha256::new_from_slice(&key) else {
            unreachable!("HMAC accepts keys of any length");
        };
        self.keys.insert(key_id, mac).is_some()
    }

    /// Adds a key given as 64 hex digits (either case), as found in configuration files.
    ///
    /// # Errors
    /// [`KeyError`] when the text is not exactly 64 hex digits.
    pub fn add_hex(&mut self, key_id: u32, hex: &str) -> Result<bool, KeyError> {
        Ok(self.add(key_id, parse_hex_key(hex)?))
    }

    /// A keyring from (key id, 64 hex digits) pairs.
    ///
    /// # Errors
    /// [`KeyError`] for the first key that is not exactly 64 hex digits.
    pub fn from_hex<'a>(
        entries: impl IntoIterator<Item = (u32, &'a str)>,
    ) -> Result<Keyring, KeyError> {
        let mut ring = Keyring::new();
        for (id, hex) in entries {
            ring.add_hex(id, hex)?;
        }
        Ok(ring)
    }

    /// Forgets the key for `key_id`; returns whether there was one.
    pub fn remove(&mut self, key_id: u32) -> bool {
        self.keys.remove(&key_id).is_some()
    }

    /// Whether a key for `key_id` is held.
    pub fn contains(&self, key_id: u32) -> bool {
        self.keys.contains_key(&key_id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn mac(&self, key_id: u32) -> Result<HmacSha256, AgentError> {
        self.keys
            .get(&key_id)
            .cloned()
            .ok_or(AgentError::UnknownKey(key_id))
    }
}

/// A key written as 64 hex digits (the form configuration files use).
///
/// # Errors
/// [`KeyError`] for a wrong length or a non-hex digit.
pub fn parse_hex_key(hex: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let digits = hex.as_bytes();
    if digits.len() != 2 * KEY_LEN {
        return Err(KeyError::BadLength(digits.len()));
    }
    let nibble = |c: u8| -> Result<u8, KeyError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(KeyError::BadHexDigit),
        }
    };
    let mut key = [0u8; KEY_LEN];
    for (k, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        *k = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(key)
}

/// The header fields the sender chooses; the rest (magic, version, type, body length)
/// follow from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderFields {
    /// A fresh id for a new request; the request's id for a response or a retransmission.
    pub request_id: u64,
    /// Whether this is a response; must match the message (ProbeReply and Reply are).
    pub response: bool,
    /// The sender's clock, unix milliseconds.
    pub timestamp_ms: u64,
    /// 16 fresh random bytes, never reused with the same key, retransmissions included.
    pub nonce: [u8; 16],
    /// The matching scope whose key signs the datagram.
    pub key_id: u32,
}

/// An authenticated, fresh, first-seen, well-formed datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Its header.
    pub header: Header,
    /// Its message.
    pub msg: Message,
}

/// Encodes `msg`, prefixes the header and appends the tag.
///
/// # Errors
/// [`AgentError::Malformed`] when `hdr.response` does not match the message type or a
/// string or list is over its limit, [`AgentError::UnknownKey`] when `hdr.key_id` is not
/// in `keys`, [`AgentError::TooLarge`] past [`MAX_DATAGRAM`].
pub fn seal(msg: &Message, hdr: HeaderFields, keys: &Keyring) -> Result<Vec<u8>, AgentError> {
    if hdr.response != is_response_type(msg.msg_type()) {
        return Err(AgentError::Malformed(
            "response flag does not match the message type",
        ));
    }
    let body = encode_body(msg)?;
    let flags = if hdr.response {
        HeaderFlags::RESPONSE
    } else {
        HeaderFlags::empty()
    };
    seal_raw(msg.msg_type(), flags, &hdr, &body, keys)
}

/// Seals an arbitrary body under an arbitrary type and flags. Used by [`seal`] and by
/// tests that craft datagrams a correct encoder would never produce.
pub(crate) fn seal_raw(
    msg_type: MsgType,
    flags: HeaderFlags,
    hdr: &HeaderFields,
    body: &[u8],
    keys: &Keyring,
) -> Result<Vec<u8>, AgentError> {
    let total = HEADER_LEN + body.len() + TAG_LEN;
    if total > MAX_DATAGRAM {
        return Err(AgentError::TooLarge(total));
    }
    let mut mac = keys.mac(hdr.key_id)?;
    let header = Header {
        version: VERSION,
        msg_type,
        flags,
        request_id: hdr.request_id,
        timestamp_ms: hdr.timestamp_ms,
        nonce: hdr.nonce,
        key_id: hdr.key_id,
        body_len: u16::try_from(body.len()).map_err(|_| AgentError::TooLarge(total))?,
    };
    let mut out = Vec::with_capacity(total);
    header.emit(&mut out);
    out.extend_from_slice(body);
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}

/// Authenticates and decodes a datagram.
///
/// Checks, in this order: size, magic and version, `body_len` against the datagram
/// length; the key; the tag (constant time); the timestamp against `guard`'s window;
/// the nonce against `guard` (recorded on success); then the body, and that the
/// response flag matches the message type.
///
/// # Errors
/// One [`AgentError`] per reason; see the order above. Never panics, whatever the bytes.
pub fn open(
    datagram: &[u8],
    keys: &Keyring,
    guard: &mut ReplayGuard,
    now_ms: u64,
) -> Result<Opened, AgentError> {
    let header = Header::parse(datagram)?;
    let mut mac = keys.mac(header.key_id)?;
    let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| AgentError::BadMac)?;
    guard.check_and_record(header.key_id, header.nonce, header.timestamp_ms, now_ms)?;
    let msg = decode_body(header.msg_type, &signed[HEADER_LEN..])?;
    if header.is_response() != is_response_type(header.msg_type) {
        return Err(AgentError::Malformed(
            "response flag does not match the message type",
        ));
    }
    Ok(Opened { header, msg })
}

#[cfg(test)]
mod tests;
