//! The safe wrapper over `dpdk-sys`: the only code outside `dpdk-sys` that writes `unsafe`.
//!
//! What it guarantees: every DPDK return code becomes a typed [`DpdkError`]; an [`Mbuf`]
//! owns exactly one reference to a packet buffer and frees it when dropped; a packet's data
//! pointer is computed here in Rust (no FFI call per packet); rx/tx are one FFI call per
//! burst. What it must not do: allocate, lock or log on the burst functions.
//!
//! Every `unsafe` block carries a `// SAFETY:` comment (enforced by the workspace lint
//! `clippy::undocumented_unsafe_blocks`).

mod eal;
mod error;
mod mbuf;
mod mempool;
mod port;

pub use eal::{tsc, tsc_hz, Eal, Lcore};
pub use error::DpdkError;
pub use mbuf::{prefetch, Mbuf, RxBurst, TxBuffer, TxResult, MAX_BURST};
pub use mempool::Mempool;
pub use port::{LinkStatus, Port, PortConfig, PortInfo, PortStats, QueueStats};
