//! stitchd's in-band agent protocol.
//!
//! The switch's slow path and the endpoint agents (`stitch-shell` on the proxy,
//! `stitch-core` on the server) talk in UDP datagrams sent to the switch's own service
//! address (port [`DEFAULT_PORT`] unless configured). A shell first finds a switch one
//! hop away with a [`Probe`] sent at TTL 1 (seed 001 figures 5B/5C; the capability
//! exchange follows MIDCOM, RFC 3303), then drives a stitch through Prepare, Freeze and
//! Commit (or Abort), keeps it alive with Heartbeats and removes it with Delete; the
//! switch tells the agents when a stitched connection ends ([`TeardownMsg`], figures
//! 4B-4E). `docs/agent-protocol.md` is the full specification.
//!
//! What this crate guarantees:
//! - every datagram is authenticated (HMAC-SHA256 with the key of a matching scope)
//!   before any of its body is parsed, and accepted at most once within a bounded
//!   time window ([`open`], [`ReplayGuard`]);
//! - decoding never panics and `open(seal(m)) == m` for every message;
//! - all memory is bounded ([`ReplayGuard`], [`ReplyCache`] have fixed capacities);
//! - requests are idempotent by `request_id` ([`ReplyCache`], [`retry`]).
//!
//! What it must not do: I/O, reading clocks or drawing random numbers. Time (`now_ms`,
//! unix milliseconds) and nonces are inputs, so the switch's event loop and tests stay
//! deterministic.

#![forbid(unsafe_code)]

mod auth;
mod error;
mod message;
mod replay;
mod reply_cache;
pub mod retry;
mod tlv;
mod wire;

pub use auth::{open, parse_hex_key, seal, HeaderFields, Keyring, Opened, KEY_LEN};
pub use error::{AgentError, KeyError};
pub use message::{
    error_code, CapFlags, Capabilities, CommitReq, Heartbeat, Message, PrepareReq, Probe, Reply,
    TeardownMsg, MAX_HEARTBEAT_IDS, MAX_REPLY_MESSAGE, MAX_SWITCH_ID,
};
pub use replay::ReplayGuard;
pub use reply_cache::{CacheInsert, ReplyCache};
pub use tlv::{is_critical, tlv_type, CRITICAL};
pub use wire::{
    EndKind, Header, HeaderFlags, MsgType, Proto, Side, Teardown, DEFAULT_PORT, HEADER_LEN, MAGIC,
    MAX_BODY, MAX_DATAGRAM, TAG_LEN, VERSION,
};
