//! Benchmarks for stitchd.
//!
//! - `stitch-gen` (src/bin/stitch-gen.rs): a DPDK traffic generator and sink in one
//!   process, pktgen-like: profiles ([`profile`]) of L2, UDP, TCP and stitched TCP frames
//!   ([`stitches`]) with pktgen-style ranges ([`range`]), a signature in every frame
//!   ([`packet`]: magic, sequence number, TSC), loss / reordering / duplicates
//!   ([`seq`]) and latency (hdrhistogram) on receive, one trial or an RFC 2544 search
//!   ([`report`] holds the JSON it prints).
//! - `stitch-bench` (src/bin/stitch-bench.rs): the runner: testpmd io / macswap, stitchd
//!   L2 and stitch translation (and OVS-DPDK when installed) over memif pairs to
//!   `stitch-gen`, tables and plots into perf/RESULTS.md ([`plot`]).
//! - `stitch-mkpcap`: pcaps for the `net_pcap` replay benchmarks (`bench-fastpath.sh`).
//!
//! The packet code is plain Rust, tested with `cargo test` without an EAL; the DPDK parts
//! use the safe `dpdk` crate only (no `unsafe` here).

#![forbid(unsafe_code)]

pub mod packet;
pub mod plot;
pub mod proc;
pub mod profile;
pub mod range;
pub mod report;
pub mod seq;
pub mod stitches;
