#!/usr/bin/env bash
# Builds the Debian package (target/debian/stitchd_*.deb) with cargo-deb: stitchd,
# stitchctl, stitch-shell, stitch-core, the systemd unit, the default configuration and
# the docs (switch-app/Cargo.toml [package.metadata.deb]). Installs cargo-deb if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package.sh: installing cargo-deb"
    cargo install cargo-deb --locked --version 3.8.0 >/dev/null
fi
cargo build --release -p switch-app -p stitch-control -p stitch-shell -p stitch-core --bins
cargo deb -p switch-app --no-build --no-strip "$@"
ls -1 target/debian/*.deb
