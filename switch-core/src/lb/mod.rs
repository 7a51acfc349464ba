//! Load balancing (seed 003): services, their destinations, the schedulers that pick one
//! for a new connection, and the per-worker connection table that pins the choice.
//!
//! What it does: [`table`] is what the slow path publishes (services, destinations,
//! scheduler tables); [`sched`] holds the schedulers (the ten IPVS ones, [`maglev`], and
//! the seed's rate-of-processing `queue`); [`conn`] is a worker's connection table and
//! [`balancer`] what a worker does with a frame of a balanced service.
//!
//! What it guarantees: everything a worker calls per packet or per new connection is
//! allocation-free, lock-free and clock-free (time is passed in).

pub mod balancer;
pub mod conn;
pub mod maglev;
pub mod sched;
pub mod table;
