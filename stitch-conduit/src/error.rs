//! Why bytes could not be decoded, a datagram was refused, or a configuration rejected.
//!
//! Every way decoding or authentication can fail has one variant, so callers count and
//! report reasons without comparing message text. Errors carry no peer-chosen data beyond
//! small integers.

use agent_proto::{AgentError, KeyError};
use thiserror::Error;

/// Why a frame, a message or a sealed datagram was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// Fewer bytes than the format needs.
    #[error("truncated")]
    Truncated,
    /// The first four bytes are not `STCN`.
    #[error("bad magic")]
    BadMagic,
    /// A version this implementation does not speak.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// A message or frame type this implementation does not know.
    #[error("unknown type {0}")]
    UnknownType(u8),
    /// The header names a scope whose key we do not hold.
    #[error("unknown scope key id {0}")]
    UnknownKey(u32),
    /// The HMAC-SHA256 tag does not verify: forged, corrupted, or signed with another key.
    #[error("bad message authentication tag (wrong key?)")]
    BadMac,
    /// Refused by the replay guard (stale timestamp, replayed nonce, guard full).
    #[error("replay guard: {0}")]
    Replay(AgentError),
    /// The body breaks the format; the text names what.
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// Longer than the format allows.
    #[error("{0} bytes exceeds the maximum")]
    TooLarge(usize),
}

impl WireError {
    /// Stable snake_case name, for per-reason counters and log lines.
    pub fn counter_name(&self) -> &'static str {
        match self {
            WireError::Truncated => "truncated",
            WireError::BadMagic => "bad_magic",
            WireError::BadVersion(_) => "bad_version",
            WireError::UnknownType(_) => "unknown_type",
            WireError::UnknownKey(_) => "unknown_key",
            WireError::BadMac => "bad_mac",
            WireError::Replay(_) => "replay",
            WireError::Malformed(_) => "malformed",
            WireError::TooLarge(_) => "too_large",
        }
    }
}

/// Why a configuration was rejected.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error (in the message, so not also a source).
        error: std::io::Error,
    },
    /// Not valid TOML for this configuration.
    #[error("invalid configuration: {0}")]
    Parse(toml::de::Error),
    /// A scope key is not 64 hex digits.
    #[error("scope {scope}: {error}")]
    Key {
        /// The scope.
        scope: String,
        /// What is wrong with the key.
        error: KeyError,
    },
    /// A rule across fields is broken; the text says which.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}
