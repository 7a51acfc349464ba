#!/usr/bin/env bash
# The test command (README "Tests"; .ci/run calls exactly this): installs what is missing,
# checks formatting and lints, builds the binaries, and runs every test, including the
# pmd-tests that start stitchd on real DPDK PMDs and real Linux TCP in network namespaces.
# Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace
# The flow table's reclamation protocol, model-checked (every interleaving loom explores).
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p switch-core --release --lib flow::qsbr::loom_tests
# The capture rings (one worker producing, the slow path consuming), model-checked the same way.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p switch-core --release --lib capture::ring::loom_tests
# The Debian package: built with cargo-deb from the release binaries, contents checked.
scripts/test-package.sh
