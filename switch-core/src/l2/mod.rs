//! Layer 2 switching: the MAC table, port security, and the per-packet
//! forwarding decision.
//!
//! What it does: [`table`] maps MAC addresses to ports (one writer, the slow
//! path; lock-free readers, the workers); [`security`] says which sources a
//! port accepts and whether it learns; [`pipeline`] combines them into one
//! decision per frame.
//!
//! What it guarantees: the read side used per packet never allocates, locks
//! or blocks; every drop has a [`crate::verdict::DropReason`].
//!
//! What it must not do: learn on the fast path. Workers send
//! [`pipeline::LearnRequest`]s; only the slow path writes the table.

pub mod pipeline;
pub mod security;
pub mod table;

pub use pipeline::{classify, L2Outcome, L2Ports, LearnCache, LearnRequest, PortL2};
pub use security::{PortSecurity, SecurityError};
pub use table::{
    mac_table, InsertOutcome, LearnOutcome, MacEntry, MacTableReader, MacTableWriter, SourceCheck,
};
