//! switch-core: everything stitchd decides about a packet, without DPDK.
//!
//! What it does: the packet views and reprs ([`wire`]), the outcomes of the
//! data path ([`verdict`]), and the L2 switch logic ([`l2`]: the MAC table
//! shared between the slow path and the workers, port security, and the
//! per-packet forwarding decision). Everything here runs in plain
//! `cargo test`, with time passed in as an argument.
//!
//! What it guarantees: no `unsafe` (denied below, the lock-free MAC table
//! included: it is built on `std::sync::atomic` alone) except in `flow::table`, the
//! one documented exception (its module docs say why and what it relies on); views never panic
//! after `new_checked`; the per-packet functions do not allocate, lock, log or
//! block.
//!
//! What it must not do: depend on DPDK, read clocks, or spawn threads.
#![deny(unsafe_code)]

pub mod capture;
pub mod flow;
pub mod l2;
pub mod lb;
pub mod stitch;
pub mod types;
pub mod verdict;
pub mod wire;

pub use types::*;
