//! Stitching in stitchd: the flow-table rules ([`rule`]), the per-packet work of the
//! workers ([`fastpath`]), the slow path's lifecycle ([`manager`]) and the pure ACKs it
//! sends the shell while data is held ([`ack`]), and what happened to hand-offs
//! ([`handoff`]). The arithmetic lives in
//! `switch_core::stitch`.

pub mod ack;
pub mod fastpath;
pub mod handoff;
pub mod manager;
pub mod rule;
