//! stitchd's control plane interface: the JSON-RPC 2.0 protocol spoken on the
//! control socket ([`protocol`]), the threaded Unix-socket server the daemon
//! embeds ([`server`]), and the client `stitchctl` uses ([`client`]).
//!
//! This crate deliberately knows nothing about the switch itself: requests are
//! validated into typed [`Method`]s here and carried out by the daemon's
//! [`Handler`]. That keeps the wire format testable without DPDK and keeps the
//! control threads away from the data path.

#![forbid(unsafe_code)]

pub mod capture;
pub mod client;
pub mod lb;
pub mod protocol;
pub mod server;
pub mod stitch_params;
pub mod top;

pub use client::{Client, ClientError};
pub use protocol::{Mac, Method, RpcError, METHODS};
pub use server::{ControlError, ControlServer, Handler, ServerHandle};

/// Where stitchd listens and stitchctl connects unless told otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/stitchd/stitchd.sock";
