//! The stitch translation: how two TCP connections C <-> A and A <-> B become
//! one path C <-> B by rewriting packets in flight (seed 001).
//!
//! What it does: [`seq`] gives sequence numbers their modular arithmetic;
//! [`translate()`] rewrites one frame in place for one direction;
//! [`stitch_pair`] computes both directions from the shell's state and
//! [`check_compat`] refuses, with the reason, stitches whose options cannot
//! be joined; [`fuzz_translate`] is the fuzz harness.
//!
//! # The arithmetic (DESIGN.md, "The stitch, exactly")
//!
//! When the stitch is committed the shell A is a pure relay: on leg A
//! (connection 120, C <-> A1) it sends from S1 and expects R1, on leg B
//! (connection 130, A2 <-> B) it sends from S2 and expects R2. Byte `k` of
//! C's stream is byte `k` of what A sends B, so C's byte at `R1 + k` is B's
//! byte at `S2 + k`, and two constants (mod 2^32) describe everything:
//!
//! ```text
//! d_cb = S2 - R1      C->B: seq' = seq + d_cb      B->C: ack' = ack - d_cb, SACK' = SACK - d_cb
//! d_bc = S1 - R2      B->C: seq' = seq + d_bc      C->B: ack' = ack - d_bc, SACK' = SACK - d_bc
//! ```
//!
//! | field | C -> B | B -> C |
//! |---|---|---|
//! | MACs, IPs, ports | A2 -> B | A1 -> C |
//! | seq | `+ d_cb` | `+ d_bc` |
//! | ack (ACK set), SACK edges | `- d_bc` | `- d_cb` |
//! | TSval | `+ c_to_b_tsval_delta` | `+ b_to_c_tsval_delta` |
//! | TSecr (ACK set, non-zero) | `- b_to_c_tsval_delta` | `- c_to_b_tsval_delta` |
//! | window (not SYN) | `(win << c) >> a2` | `(win << b) >> a1` |
//! | SACK | NOPs if leg B has no SACK | NOPs if leg A has no SACK |
//!
//! Timestamp deltas are chosen by the caller at commit so that TSval never
//! goes backwards for the receiver (PAWS would drop the segment); the
//! window is rescaled with the shift the *receiver* believes its peer
//! announced (B talks to A2, C to A1), rounded down and clamped to 65535, so
//! nobody is offered more than the sender offered.
//!
//! # Why the checksums are incremental
//!
//! A translated segment differs from the original in a few 16-bit words: the
//! addresses (which are also in the TCP/UDP pseudo-header), the ports, seq,
//! ack, window and some option fields. RFC 1624 (`HC' = ~(~HC + ~m + m')`)
//! patches a checksum for each changed word in a few adds, independent of
//! the payload size, where a full recompute would read every payload byte
//! of every forwarded packet. The update is exact: for a segment whose
//! checksum verified, the patched checksum equals a full recompute (property
//! tested in `translate`), and a segment whose checksum was wrong stays
//! wrong, so the receiver still drops corruption that happened upstream.
//!
//! What it guarantees: no `unsafe`, no allocation and no panic in
//! [`translate()`]; a frame it refuses is untouched.
//!
//! What it must not do: hold state. Installing, counting and tearing down
//! stitches belong to the flow table and the slow path.

pub mod fuzz;
pub mod pair;
pub mod seq;
pub mod translate;

pub use fuzz::fuzz_translate;
pub use pair::{
    check_compat, stitch_pair, Endpoint, MssParams, StitchCompat, StitchParams, StitchRefusal,
    TsParams, WscaleParams,
};
pub use seq::SeqNumber;
pub use translate::{
    translate, FlowEndpoints, SackMode, TranslateError, Translated, Translation, TsShift,
    WindowRescale,
};
