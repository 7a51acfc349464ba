//! The fleet (seed 002): stitchd appliances of a site form a federated
//! cluster. An **upstream manager** (REST, SQLite) talks over XMPP to one
//! **downstream manager** per cluster, which presents its cluster as a single
//! node with the summed capacity of its **agents** (one per appliance), enforces
//! its own quota, forwards each provisioning request to one chosen agent and
//! returns the result. Links fail over after a configured wait; request ids
//! make every hop idempotent. See `docs/fleet.md`.
//!
//! Layers: [`proto`] (the typed messages, a leaf), [`xmpp`] (one link),
//! [`store`] (the upstream's database), [`upstream`], [`downstream`],
//! [`agent`] with its process [`driver`], [`api`] and [`http`] for the REST
//! side.

#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod downstream;
pub mod driver;
pub mod http;
pub mod log;
pub mod prosody;
pub mod proto;
pub mod sim;
pub mod store;
pub mod upstream;
pub mod xmpp;
