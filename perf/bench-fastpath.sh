#!/usr/bin/env bash
# The fast path side by side, one busy core each, same ports, same pcaps, same run:
# dpdk-testpmd io and mac, DPDK's l2fwd and l3fwd -E (built from Debian's dpdk-doc
# sources), stitchd L2 and stitchd stitch translation at several stitch counts.
# net_pcap infinite_rx -> net_null (64-byte frames on the wire; stitched segments carry a
# timestamp option). Cycles per packet come from the busy thread's own CPU time
# (/proc/<pid>/task/<tid>/schedstat) and the output port's packet count (DPDK telemetry):
# ../shared/tools/cpp.py, so time-sharing on a busy machine does not inflate the figure.
#
# Usage: perf/bench-fastpath.sh [SECONDS=6] [STITCHES="1000 100000 1000000"] [TOUCHED=262144]
#   (root, after scripts/setup.sh). TOUCHED caps the frames replayed per stitch count
#   (net_pcap holds the whole pcap in mbufs): at 1M stitches, 262144 of them are touched,
#   spread evenly over all installed stitches.
# Prints Markdown tables; paste them into perf/RESULTS.md with the command line.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-6}
counts=${2:-"1000 100000 1000000"}
touched=${3:-262144}
cpp=${CPP:-../shared/tools/cpp.py}
[ -f "$cpp" ] || { echo "cpp.py not found at $cpp (set CPP=)" >&2; exit 1; }
command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd missing: apt-get install dpdk-dev" >&2; exit 1; }
[ -d /usr/share/dpdk/examples/l3fwd ] || { echo "DPDK example sources missing: apt-get install dpdk-doc" >&2; exit 1; }
dir=$(mktemp -d /tmp/stitchd-fast.XXXXXX)
trap 'rm -rf "$dir" /var/run/dpdk/bf$$*' EXIT
cargo build --release --bins -q
bin=target/release
mhz=$(awk '/cpu MHz/ {print $4; exit}' /proc/cpuinfo)

# DPDK's own examples, built once per machine (outside the repository). l3fwd asks for RX
# checksum offload, which net_pcap lacks, and sizes its mempool below a replayed pcap:
# those two lines are changed in the copy (offloads 0, minimum 8192 -> 524288 mbufs).
refs=/var/tmp/stitchd-dpdk-examples
if [ ! -x "$refs/l3fwd/build/l3fwd" ] || [ ! -x "$refs/l2fwd/build/l2fwd" ]; then
    rm -rf "$refs"; mkdir -p "$refs"
    cp -r /usr/share/dpdk/examples/{l2fwd,l3fwd,common} "$refs/"
    sed -i 's/\.offloads = RTE_ETH_RX_OFFLOAD_CHECKSUM,/.offloads = 0,/' "$refs/l3fwd/main.c"
    sed -i 's/(unsigned)8192)/(unsigned)524288)/' "$refs/l3fwd/main.c"
    make -s -C "$refs/l2fwd" >/dev/null 2>&1 && make -s -C "$refs/l3fwd" >/dev/null 2>&1 || {
        echo "building l2fwd/l3fwd from /usr/share/dpdk/examples failed" >&2; exit 1; }
fi

eal_mem=(--no-huge -m 3072 --no-pci)
run() { # name prefix threads -- cmd...
    local name=$1 prefix=$2 threads=$3; shift 4
    local out
    out=$(python3 "$cpp" --prefix "$prefix" --threads "$threads" --warm 3 --secs "$secs" -- "$@" 2>&1 | tail -1)
    local c; c=$(sed -n 's/.*cycles_per_pkt=\([0-9]*\).*/\1/p' <<<"$out")
    [ -n "$c" ] || { echo "$name: $out" >&2; echo "?"; return; }
    echo "$c"
}
ratio() { python3 -c "print(f'{$1/$2:.2f}' if '$2' not in ('?','') and '$1' not in ('?','') else '?')"; }

# --- L2, 1k learned source MACs -> one static destination -----------------------------
"$bin/stitch-mkpcap" "$dir/l2.pcap" 1000 60 02:00:00:ff:00:01 >/dev/null
l2ports=(--vdev="net_pcap0,rx_pcap=$dir/l2.pcap,infinite_rx=1" --vdev=net_null0,no-rx=1)
io=$(run "testpmd io" bf$$a 'worker' -- dpdk-testpmd -l 0,1 "${eal_mem[@]}" --file-prefix=bf$$a "${l2ports[@]}" -- \
    --forward-mode=io --nb-cores=1 --total-num-mbufs=16384 --stats-period 1)
mac=$(run "testpmd mac" bf$$b 'worker' -- dpdk-testpmd -l 0,1 "${eal_mem[@]}" --file-prefix=bf$$b "${l2ports[@]}" -- \
    --forward-mode=mac --nb-cores=1 --total-num-mbufs=16384 --stats-period 1)
l2fwd=$(run "l2fwd" bf$$c 'l2fwd' -- "$refs/l2fwd/build/l2fwd" -l 1 "${eal_mem[@]}" --file-prefix=bf$$c "${l2ports[@]}" -- -p 0x3 -q 2 -T 0)
cat > "$dir/l2.toml" <<TOML
[eal]
file_prefix = "bf$$d"
lcores = "0,1"
hugepages = "off"
memory_mb = 3072
[[ports]]
devargs = "net_pcap0,rx_pcap=$dir/l2.pcap,infinite_rx=1"
[[ports]]
devargs = "net_null0,no-rx=1"
[l2]
static_macs = [{ mac = "02:00:00:ff:00:01", port = 1 }]
[control]
socket = "$dir/l2.sock"
TOML
sl2=$(run "stitchd L2" bf$$d 'worker' -- "$bin/stitchd" --config "$dir/l2.toml")

echo "### L2, one worker, 1k source MACs (64-byte frames)"
echo
echo "| forwarder | cycles/packet | ratio to testpmd io (cycles) |"
echo "|---|---|---|"
echo "| dpdk-testpmd io | $io | 1.00 |"
echo "| dpdk-testpmd mac | $mac | $(ratio "$io" "$mac") |"
echo "| DPDK l2fwd (MAC rewrite) | $l2fwd | $(ratio "$io" "$l2fwd") |"
echo "| **stitchd L2** | **$sl2** | **$(ratio "$io" "$sl2")** |"
echo

# --- stitch translation ------------------------------------------------------------------
echo "### Stitch translation, one worker (stitched TCP segments C -> A1, 66-byte frames)"
echo
echo "| stitches | frames replayed | testpmd io | l3fwd -E (same flows) | stitchd | stitchd / testpmd io | stitchd / l3fwd | stitchd RSS MiB | flow table MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for n in $counts; do
    frames=$(( n < touched ? (n > 16384 ? n : 16384) : touched ))
    mbufs=$(( frames + 32768 ))
    "$bin/stitch-mkpcap" --stitched "$dir/s.pcap" "$n" "$frames" 60 >/dev/null
    sports=(--vdev="net_pcap0,rx_pcap=$dir/s.pcap,infinite_rx=1" --vdev=net_null0,no-rx=1)
    sio=$(run "testpmd io $n" bf$$e$n 'worker' -- dpdk-testpmd -l 0,1 "${eal_mem[@]}" --file-prefix=bf$$e$n "${sports[@]}" -- \
        --forward-mode=io --nb-cores=1 --total-num-mbufs=$mbufs --stats-period 1)
    # l3fwd exact-match rules for the same 5-tuples (the addressing stitch.install's count uses).
    python3 - "$n" "$dir/r4" "$dir/r6" <<'PY'
import sys, ipaddress
n, f4, f6 = int(sys.argv[1]), sys.argv[2], sys.argv[3]
base = int(ipaddress.IPv4Address("198.18.0.1"))
with open(f4, "w") as f:
    for i in range(n):
        port = (10000 + i % 50000 - 1) % 65535 + 1
        src = ipaddress.IPv4Address(base + i // 50000)
        f.write(f"R198.18.0.2 {src} 7000 {port} 6 1\n")
open(f6, "w").write("R2001:db8::2 2001:db8::1 7000 10000 6 1\n")
PY
    sl3=$(run "l3fwd $n" bf$$f$n 'l3fwd' -- "$refs/l3fwd/build/l3fwd" -l 1 "${eal_mem[@]}" --file-prefix=bf$$f$n "${sports[@]}" -- \
        -p 0x3 -E --parse-ptype --config='(0,0,1),(1,0,1)' --rule_ipv4="$dir/r4" --rule_ipv6="$dir/r6")
    cat > "$dir/s.toml" <<TOML
[eal]
file_prefix = "bf$$g$n"
lcores = "0,1"
hugepages = "off"
memory_mb = 3072
[mempool]
mbufs = $mbufs
[[ports]]
devargs = "net_pcap0,rx_pcap=$dir/s.pcap,infinite_rx=1"
[[ports]]
devargs = "net_null0,no-rx=1"
[control]
socket = "$dir/s.sock"
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
    # stitchd: measured while running; RSS and the table's size read from the process.
    "$bin/stitchd" --config "$dir/s.toml" > "$dir/stitchd.log" 2>&1 &
    spid=$!
    for _ in $(seq 1200); do [ -S "$dir/s.sock" ] && break; kill -0 "$spid" 2>/dev/null || { cat "$dir/stitchd.log" >&2; exit 1; }; sleep 0.1; done
    sst=$(python3 "$cpp" --attach "$spid" --prefix bf$$g$n --threads 'worker' --warm 3 --secs "$secs" 2>&1 | tail -1 | sed -n 's/.*cycles_per_pkt=\([0-9]*\).*/\1/p')
    rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$spid/status)
    tbl=$("$bin/stitchctl" --socket "$dir/s.sock" --json stats.get | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["stitch"].get("flow_table_bytes",0)/2**20))')
    kill -TERM "$spid"; wait "$spid" || true
    rm -f "$dir/s.sock"
    echo "| $n | $frames | $sio | $sl3 | **${sst:-?}** | $(ratio "$sio" "${sst:-?}") | $(ratio "$sl3" "${sst:-?}") | $rss | $tbl |"
done
echo

# --- memory per stitch: RSS with N installed stitches minus RSS with 1, same mempool ------
echo "### Memory per installed stitch (RSS with N stitches minus RSS with 1; 16k-mbuf pool)"
echo
echo "| stitches | RSS MiB | flow table MiB (allocated) | bytes per stitch (RSS delta / N) |"
echo "|---|---|---|---|"
"$bin/stitch-mkpcap" --stitched "$dir/m.pcap" 1 64 60 >/dev/null
base_rss=""
for n in 1 $counts; do
    sed -e "s/^count = .*/count = $n/" -e "s/^flow_table_size = .*/flow_table_size = $((n * 4 + 64))/" \
        -e "s/^mbufs = .*/mbufs = 16384/" -e "s#rx_pcap=[^,]*#rx_pcap=$dir/m.pcap#" \
        -e "s/^file_prefix = .*/file_prefix = \"bf$$m$n\"/" "$dir/s.toml" > "$dir/m.toml"
    "$bin/stitchd" --config "$dir/m.toml" > "$dir/m.log" 2>&1 &
    mpid=$!
    for _ in $(seq 1200); do [ -S "$dir/s.sock" ] && break; kill -0 "$mpid" 2>/dev/null || { cat "$dir/m.log" >&2; exit 1; }; sleep 0.1; done
    rss=$(awk '/VmRSS/ {print $2}' /proc/$mpid/status)
    tbl=$("$bin/stitchctl" --socket "$dir/s.sock" --json stats.get | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["stitch"].get("flow_table_bytes",0)/2**20))')
    kill -TERM "$mpid"; wait "$mpid" || true
    rm -f "$dir/s.sock"
    [ -n "$base_rss" ] || base_rss=$rss
    per=$(python3 -c "print(round(($rss - $base_rss) * 1024 / max($n - 1, 1)))")
    echo "| $n | $((rss / 1024)) | $tbl | $per |"
done
echo
echo "Cycles per packet at $mhz MHz from each busy thread's own CPU time ($cpp); ratios are"
echo "reference cycles / stitchd cycles (1.00 = as fast as the reference)."
