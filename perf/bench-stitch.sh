#!/usr/bin/env bash
# Stitch translation on one worker: net_pcap infinite_rx of stitched TCP segments (64-byte
# frames with timestamps) -> net_null, at 1k, 100k and 1M installed stitches, against
# dpdk-testpmd --forward-mode=io on the same ports in the same run.
# Usage: perf/bench-stitch.sh [SECONDS=10] [STITCH_COUNTS="1000 100000 1000000"]  (root)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
counts=${2:-"1000 100000 1000000"}
dir=$(mktemp -d /tmp/stitchd-bench.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$dir" /var/run/dpdk/bst$$*; }
trap cleanup EXIT
command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd missing: apt-get install dpdk-dev" >&2; exit 1; }
cargo build --release --bins -q
bin=target/release
eal=(-l 0,1 --no-huge -m 2048 --no-pci)
mhz=$(awk '/cpu MHz/ {print $4; exit}' /proc/cpuinfo)

"$bin/stitch-mkpcap" --stitched "$dir/ref.pcap" 1000 16384 60
timeout -s INT $((secs + 8)) dpdk-testpmd "${eal[@]}" --file-prefix=bst$$t \
    --vdev="net_pcap0,rx_pcap=$dir/ref.pcap,infinite_rx=1" --vdev=net_null0,no-rx=1 -- \
    --forward-mode=io --nb-cores=1 --total-num-mbufs=32768 --stats-period 1 > "$dir/testpmd.log" 2>&1 || true
ref=$(grep -o 'Rx-pps: *[0-9]*' "$dir/testpmd.log" | awk '$2 > 0 {print $2}' | sed '1{$!d}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
[ -n "$ref" ] || { echo "testpmd produced no rate:"; cat "$dir/testpmd.log"; exit 1; }

echo "| forwarder | installed stitches | Mpps | cycles/packet | ratio to testpmd io |"
echo "|---|---|---|---|---|"
python3 -c "print(f'| dpdk-testpmd io | - | {$ref/1e6:.2f} | {$mhz*1e6/$ref:.0f} | 1.00 |')"
for n in $counts; do
    "$bin/stitch-mkpcap" --stitched "$dir/s$n.pcap" "$n" 16384 60
    cat > "$dir/s$n.toml" <<TOML
[eal]
file_prefix = "bst$$s$n"
lcores = "0,1"
hugepages = "off"
memory_mb = 2048
[mempool]
mbufs = 32767
[[ports]]
devargs = "net_pcap0,rx_pcap=$dir/s$n.pcap,infinite_rx=1"
[[ports]]
devargs = "net_null0,no-rx=1"
[control]
socket = "$dir/ctl.sock"
[stitch]
flow_table_size = $((n * 4 + 64))
[[stitch.install]]
leg_a = { client = "198.18.0.1:10000", shell = "198.18.0.2:7000" }
leg_b = { shell = "198.18.0.2:10000", core = "198.18.0.3:8000" }
macs = { c = "02:00:00:00:0c:01", a1 = "02:00:00:00:0a:01", a2 = "02:00:00:00:0a:01", b = "02:00:00:00:0b:01" }
ports = { c = 0, b = 1 }
s1 = 1000
r1 = 1000
s2 = 5000
r2 = 2000
ts = { c_to_b = 7, b_to_c = 9 }
count = $n
TOML
    ${STITCHD_ENV:-} "$bin/stitchd" --config "$dir/s$n.toml" > "$dir/stitchd$n.log" 2>&1 &
    pid=$!
    for _ in $(seq 600); do [ -S "$dir/ctl.sock" ] && break; kill -0 "$pid" || { cat "$dir/stitchd$n.log"; exit 1; }; sleep 0.1; done
    st() { "$bin/stitchctl" --socket "$dir/ctl.sock" --json stats.get | python3 -c 'import json,sys; print(sum(w["stitched"] for w in json.load(sys.stdin)["workers"]))'; }
    sleep 2
    a=$(st); t0=$(date +%s.%N)
    sleep "$secs"
    b=$(st); t1=$(date +%s.%N)
    rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
    kill -TERM "$pid"; wait "$pid" || true; pid=""
    rm -f "$dir/ctl.sock"
    python3 -c "
pps = ($b - $a) / ($t1 - $t0)
print(f'| stitchd stitch translation | $n | {pps/1e6:.2f} | {$mhz*1e6/pps:.0f} | {pps/$ref:.2f} |  <!-- RSS {$rss/1024:.0f} MiB -->')"
done
