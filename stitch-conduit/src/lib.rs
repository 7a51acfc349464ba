//! Source switching (seed 000): conduits, connection descriptions, matching, the drain.
//!
//! An application connects to its local **conduit**; the conduit carries the byte
//! stream as sequenced [`frame`]s over the original path (a chain of proxies) to the
//! remote conduit, which delivers it to the service. Both conduits publish a
//! [`desc::ConnDesc`] of the connection to their matching scope; a centralized
//! [`matcher::Matcher`] (the `matcher` daemon) or each conduit itself (peer-to-peer)
//! detects the two symmetric descriptions, and the lower global id opens a stitched TCP
//! connection straight to the other conduit. The [`session::Session`] drains what is in
//! flight on the original path by sequence numbers, then sends only over the stitched
//! connection; heartbeats keep the original path alive and its death ends everything.
//!
//! Layers, each usable alone: wire formats ([`frame`], [`msg`], [`envelope`]: total
//! decoders, never panic), pure logic with time as an argument ([`matcher`],
//! [`session`]), and the I/O drivers ([`conduit`], [`matcher_server`], [`relay`]) that
//! own the sockets, threads and clocks.
//!
//! Why a crate of its own rather than inside `stitch-core`: `stitch-core` is the
//! core-side agent of seed 001's in-switch stitching (teardown notices over the agent
//! protocol); a conduit instead terminates the application's connection and owns a data
//! path, threads and a second TCP connection. They share only the scope keys and the
//! replay guard, which both take from `agent-proto`.

#![forbid(unsafe_code)]

mod codec;
pub mod conduit;
pub mod config;
pub mod desc;
pub mod envelope;
pub mod error;
pub mod frame;
pub mod matcher;
pub mod matcher_server;
pub mod msg;
pub mod relay;
pub mod scope;
pub mod session;
pub mod udp;

pub use error::{ConfigError, WireError};
