//! Benchmark helpers. The runners are `perf/bench-l2.sh` (and, as it grows, a Rust
//! runner); results go to `perf/RESULTS.md` with the command that produced them.
