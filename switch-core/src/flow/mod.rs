//! The flow layer: what a worker looks up per TCP/UDP packet.
//!
//! What it does: [`key`] turns a frame into a [`FlowKey`] (the 5-tuple) and
//! hashes it; [`table`] maps keys to the slow path's rules, with one writer
//! (the slow path) and lock-free, allocation-free readers (the workers), safe
//! reclamation after a grace period, and bulk lookups per burst.
//!
//! What it guarantees: `unsafe` only in [`table`] (the crate's one documented
//! exception: entry and record pools in `UnsafeCell`s, reused after a quiescent-state
//! grace period from [`qsbr`]); readers never block, allocate or see a torn or reused
//! entry; a full table refuses inserts with a counted [`FlowInsert::Full`], never a
//! crash or a resize.
//!
//! What it must not do: read clocks (reclamation takes `now_ms`), spawn
//! threads, or let anything but the slow path write the table.

pub mod key;
pub mod qsbr;
#[allow(unsafe_code)]
pub mod table;

pub use key::{hash, hash_with_seed, parse_flow, FlowKey, L4Info, PROTO_TCP, PROTO_UDP};
pub use table::{
    flow_table, flow_table_with, FlowInsert, FlowTableConfig, FlowTableReader, FlowTableWriter,
    Hit, OfflineReader, RecordId,
};
