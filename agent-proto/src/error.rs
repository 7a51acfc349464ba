//! Why a datagram was refused or a message could not be sealed.
//!
//! [`AgentError`] is total: every way [`open`](crate::open) can fail has exactly one
//! variant, and every variant has a stable counter name
//! ([`AgentError::counter_name`]) so the switch can keep one drop counter per reason
//! (house rule 7) without formatting strings on the slow path.
//!
//! Errors carry no attacker-chosen data beyond small integers: nothing here can be used to
//! make the switch log or allocate on behalf of an unauthenticated sender.

use thiserror::Error;

/// Why a datagram was dropped or a message could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum AgentError {
    /// The datagram is shorter than its header, tag, or its own `body_len` says.
    #[error("datagram truncated")]
    Truncated,
    /// The first four bytes are not `STCH`: not our protocol at all.
    #[error("bad magic")]
    BadMagic,
    /// A protocol version this implementation does not speak.
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// The header names a key this keyring does not hold.
    #[error("unknown key id {0}")]
    UnknownKey(u32),
    /// The HMAC-SHA256 tag does not match: forged, corrupted or signed with another key.
    #[error("bad message authentication tag")]
    BadMac,
    /// The sender's timestamp is outside the acceptance window around our clock.
    /// `skew_ms` is the sender's timestamp minus ours (positive: sender ahead).
    #[error("timestamp outside the acceptance window (skew {skew_ms} ms)")]
    Stale {
        /// Sender's timestamp minus the receiver's clock, in milliseconds.
        skew_ms: i64,
    },
    /// This (key id, nonce) was already accepted within the window.
    #[error("replayed datagram")]
    Replayed,
    /// The replay guard is full of in-window entries; accepting more would mean either
    /// forgetting nonces that could still be replayed or growing without bound.
    #[error("replay cache full")]
    ReplayCacheFull,
    /// The body or a value breaks the format; the text names what (static, so it
    /// costs nothing to build and carries no peer data).
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A TLV with the critical bit (0x8000) that this message type does not know.
    #[error("unknown critical TLV {0:#06x}")]
    UnknownCritical(u16),
    /// A message type this implementation does not know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The datagram (or the one being sealed) exceeds the maximum size.
    #[error("datagram of {0} bytes exceeds the maximum")]
    TooLarge(usize),
}

impl AgentError {
    /// Every counter name, in declaration order, so a stats table can be pre-sized and
    /// printed even for reasons that never happened.
    pub const COUNTER_NAMES: [&'static str; 12] = [
        "truncated",
        "bad_magic",
        "bad_version",
        "unknown_key",
        "bad_mac",
        "stale",
        "replayed",
        "replay_cache_full",
        "malformed",
        "unknown_critical",
        "unknown_type",
        "too_large",
    ];

    /// Stable snake_case name of this drop reason, for per-reason counters.
    pub fn counter_name(&self) -> &'static str {
        Self::COUNTER_NAMES[self.counter_index()]
    }

    /// Index of this reason in [`AgentError::COUNTER_NAMES`], so counters can live in a
    /// plain array.
    pub fn counter_index(&self) -> usize {
        match self {
            AgentError::Truncated => 0,
            AgentError::BadMagic => 1,
            AgentError::BadVersion(_) => 2,
            AgentError::UnknownKey(_) => 3,
            AgentError::BadMac => 4,
            AgentError::Stale { .. } => 5,
            AgentError::Replayed => 6,
            AgentError::ReplayCacheFull => 7,
            AgentError::Malformed(_) => 8,
            AgentError::UnknownCritical(_) => 9,
            AgentError::UnknownType(_) => 10,
            AgentError::TooLarge(_) => 11,
        }
    }
}

/// Why a key could not be added to a [`Keyring`](crate::Keyring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum KeyError {
    /// A hex key must be exactly 64 hex digits (32 bytes); this one had the given count.
    #[error("key must be 64 hex digits, got {0}")]
    BadLength(usize),
    /// A character that is not a hex digit.
    #[error("key contains a non-hex character")]
    BadHexDigit,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_are_distinct_snake_case_and_match_index() {
        let all = [
            AgentError::Truncated,
            AgentError::BadMagic,
            AgentError::BadVersion(2),
            AgentError::UnknownKey(1),
            AgentError::BadMac,
            AgentError::Stale { skew_ms: -1 },
            AgentError::Replayed,
            AgentError::ReplayCacheFull,
            AgentError::Malformed("x"),
            AgentError::UnknownCritical(0x8fff),
            AgentError::UnknownType(99),
            AgentError::TooLarge(2000),
        ];
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.counter_index(), i);
            let name = e.counter_name();
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        let mut names = AgentError::COUNTER_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AgentError::COUNTER_NAMES.len());
    }
}
