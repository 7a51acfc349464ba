//! Load balancing (seed 003): services, their destinations, the schedulers that pick one
//! for a new connection, and the per-worker connection table that pins the choice.
//!
//! What it does: [`sched`] holds the schedulers (the ten IPVS ones, Maglev, and the
//! seed's rate-of-processing `queue`).
//!
//! What it guarantees: everything a worker calls per packet or per new connection is
//! allocation-free, lock-free and clock-free (time is passed in).

pub mod maglev;
pub mod sched;
