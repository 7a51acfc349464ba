#!/usr/bin/env bash
# Demo: three Linux hosts (network namespaces, 198.18.0.0/24) joined by stitchd through
# net_tap ports; real ping and iperf3 traffic through the switch, then what stitchctl shows.
# Cleans up on exit or Ctrl-C. Run as root after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

id="d$$"
dir=$(mktemp -d /tmp/stitchd-demo.XXXXXX)
sock="$dir/ctl.sock"
pid=""
cleanup() {
    set +e
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    for i in 0 1 2; do ip netns del "${id}h$i" 2>/dev/null; done
    rm -rf "/var/run/dpdk/$id" "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== building (release)"
cargo build --release --bins -q
bin=target/release

eal=(-l 0-1 --no-pci "--file-prefix=$id")
free=$(cat /sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages 2>/dev/null || echo 0)
[ "$free" -ge 256 ] || eal+=(--no-huge -m 1024)
for i in 0 1 2; do eal+=("--vdev=net_tap$i,iface=${id}t$i"); done

echo "== starting stitchd ${eal[*]}"
"$bin/stitchd" "${eal[@]}" -- --control-socket "$sock" > "$dir/stitchd.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; kill -0 "$pid" 2>/dev/null || { cat "$dir/stitchd.log"; exit 1; }; sleep 0.1; done
[ -S "$sock" ] || { echo "stitchd did not start"; cat "$dir/stitchd.log"; exit 1; }

for i in 0 1 2; do
    ns="${id}h$i"
    ip netns add "$ns"
    ip link set "${id}t$i" netns "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "198.18.0.$((i + 1))/24" dev "${id}t$i"
    ip -n "$ns" link set "${id}t$i" up
done

ctl() { "$bin/stitchctl" --socket "$sock" "$@"; }
echo "== stitchctl ports.list"; ctl ports.list
echo "== ping host0 -> host1, host0 -> host2"
ip netns exec "${id}h0" ping -c 3 -i 0.2 198.18.0.2
ip netns exec "${id}h0" ping -c 3 -i 0.2 198.18.0.3
echo "== iperf3 host0 -> host1 (5 s)"
ip netns exec "${id}h1" iperf3 -s -1 -B 198.18.0.2 > /dev/null &
sleep 0.5
ip netns exec "${id}h0" iperf3 -c 198.18.0.2 -t 5 -f m | tail -4
echo "== stitchctl ports.stats"; ctl ports.stats
echo "== stitchctl mac.list"; ctl mac.list
echo "== stitchctl stats.get"; ctl stats.get
echo "== done; cleaning up"
