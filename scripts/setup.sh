#!/usr/bin/env bash
# Installs everything stitchd needs from Debian 12, idempotently, and reserves hugepages
# when the kernel allows (stitchd and the tests fall back to --no-huge otherwise).
# Run as root.
set -euo pipefail

PKGS=(libdpdk-dev dpdk dpdk-dev pkg-config clang libclang-dev iproute2 iputils-ping iperf3 tcpdump
      tshark   # reads back the pcap files of `stitchctl capture` (pmd-tests/tests/capture.rs)
      procps kmod ca-certificates python3
      # the Debian package (scripts/package.sh): dpkg-shlibdeps finds its library dependencies
      dpkg-dev
      # the load balancer's tests and demo (pmd-tests/tests/lb.rs, scripts/demo-lb.sh): a real
      # HTTP client against Python's http.server backends
      curl
      # the web console's browser test (pmd-tests/tests/console.rs): headless Chromium
      chromium
      # the fleet (stitch-fleet): prosody (started privately by its tests and demo; lua-sec
      # for its TLS), the SQLite library rusqlite links against, openssl for test certificates
      prosody lua-sec libsqlite3-dev openssl)

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages and reserves hugepages)" >&2
    exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "setup.sh: Debian packages already installed"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup.sh: cargo not found: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null 2>&1 || true

# Hugepages: best effort. Containers and some VMs refuse; stitchd then runs --no-huge.
hp=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
if [ -w "$hp" ] && [ "$(cat "$hp")" -lt 512 ]; then
    echo 512 > "$hp" 2>/dev/null || true
fi
if [ -e "$hp" ] && [ "$(cat "$hp" 2>/dev/null || echo 0)" -gt 0 ]; then
    mountpoint -q /dev/hugepages 2>/dev/null || { mkdir -p /dev/hugepages; mount -t hugetlbfs nodev /dev/hugepages 2>/dev/null || true; }
    echo "setup.sh: hugepages: $(cat "$hp") x 2 MiB reserved"
else
    echo "setup.sh: no hugepages available: stitchd will run with --no-huge"
fi
echo "setup.sh: DPDK $(pkg-config --modversion libdpdk) ready"
