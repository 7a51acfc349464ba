#!/usr/bin/env bash
# L2 forwarding on one worker: net_pcap infinite_rx (1k TCP flows, 64-byte frames) ->
# net_null, stitchd vs dpdk-testpmd --forward-mode=io on the same ports in the same run.
# Prints a Markdown row set; append it to perf/RESULTS.md with the command line.
# Usage: perf/bench-l2.sh [SECONDS=10] [FLOWS=1000]   (as root, after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
flows=${2:-1000}
dir=$(mktemp -d /tmp/stitchd-bench.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir" /var/run/dpdk/bench$$*; }
trap cleanup EXIT

command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd missing: apt-get install dpdk-dev" >&2; exit 1; }
cargo build --release --bins -q
bin=target/release
"$bin/stitch-mkpcap" "$dir/flows.pcap" "$flows" 60 02:00:00:ff:00:01
ports=(--vdev="net_pcap0,rx_pcap=$dir/flows.pcap,infinite_rx=1" --vdev=net_null0,no-rx=1)
# Main lcore on CPU 0, the one forwarding core on CPU 1, for both forwarders.
eal=(-l 0,1 --no-huge -m 1024 --no-pci)

# Reference: testpmd io forwarding, pps read from its per-second stats (port 0 Rx-pps).
timeout -s INT $((secs + 8)) dpdk-testpmd "${eal[@]}" --file-prefix=bench$$t "${ports[@]}" -- \
    --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 --stats-period 1 > "$dir/testpmd.log" 2>&1 || true
# Port 1 (net_null, no-rx) always shows 0: keep the non-zero samples, drop the first
# (partial second), take the median.
ref=$(grep -o 'Rx-pps: *[0-9]*' "$dir/testpmd.log" | awk '$2 > 0 {print $2}' | sed '1{$!d}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
[ -n "$ref" ] || { echo "testpmd produced no rate:"; cat "$dir/testpmd.log"; exit 1; }

# stitchd: the destination MAC is a static entry on port 1; the 1k source MACs are learned.
cat > "$dir/stitchd.toml" <<TOML
[eal]
file_prefix = "bench$$s"
lcores = "0,1"
hugepages = "off"
[[ports]]
devargs = "net_pcap0,rx_pcap=$dir/flows.pcap,infinite_rx=1"
[[ports]]
devargs = "net_null0,no-rx=1"
[l2]
static_macs = [{ mac = "02:00:00:ff:00:01", port = 1 }]
[control]
socket = "$dir/ctl.sock"
TOML
"$bin/stitchd" --config "$dir/stitchd.toml" > "$dir/stitchd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$dir/ctl.sock" ] && break; sleep 0.1; done
rx() { "$bin/stitchctl" --socket "$dir/ctl.sock" --json stats.get | python3 -c 'import json,sys; print(sum(w["rx_packets"] for w in json.load(sys.stdin)["workers"]))'; }
sleep 2
a=$(rx); t0=$(date +%s.%N)
sleep "$secs"
b=$(rx); t1=$(date +%s.%N)
"$bin/stitchctl" --socket "$dir/ctl.sock" stats.get > "$dir/stats.txt"
kill -TERM "$pid"; wait "$pid" || true; pid=""
pps=$(python3 -c "print(int(($b - $a) / ($t1 - $t0)))")
mhz=$(awk '/cpu MHz/ {print $4; exit}' /proc/cpuinfo)
python3 - "$ref" "$pps" "$mhz" "$flows" <<'PY'
import sys
ref, pps, mhz, flows = float(sys.argv[1] or 0), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(f"| forwarder | Mpps | cycles/packet | ratio to testpmd io |")
print(f"|---|---|---|---|")
print(f"| dpdk-testpmd io | {ref/1e6:.2f} | {mhz*1e6/ref if ref else 0:.0f} | 1.00 |")
print(f"| stitchd L2 ({flows} src MACs learned) | {pps/1e6:.2f} | {mhz*1e6/pps:.0f} | {pps/ref if ref else 0:.2f} |")
PY
