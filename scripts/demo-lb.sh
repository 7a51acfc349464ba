#!/usr/bin/env bash
# Demo: the load balancer. A client and three web backends, each a Linux host in its own
# network namespace, joined by stitchd through net_tap ports; every backend runs a real
# HTTP server on two software ports (examples/lb/backend.py, answering "NAME:PORT").
# stitchd balances web (198.18.0.100:80, examples/lb/stitchd.toml) over the six
# destinations: 30 curl requests land 5 on each (round robin); then backend b2 is killed,
# the switch's health checks take it out, and 12 more requests all avoid it. Prints the
# answers and `stitchctl lb.stats` after each step; exits non-zero on any mismatch.
#
# Run as root after scripts/setup.sh. Environment:
#   STITCHD_BIN_DIR=DIR   use the binaries in DIR instead of building release ones
set -euo pipefail
cd "$(dirname "$0")/.."

ex=examples/lb
id="l$$"
dir=$(mktemp -d /tmp/stitchd-lbdemo.XXXXXX)
sock="$dir/ctl.sock"
pids=()
backend_pids=()
cleanup() {
    set +e
    for p in "${backend_pids[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null
    done
    for n in c 1 2 3; do ip netns del "$id$n" 2>/dev/null; done
    rm -rf /var/run/dpdk/stitchd-lbdemo "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "demo-lb FAILED: $*" >&2
    [ -s "$dir/stitchd.log" ] && { echo "--- stitchd log" >&2; tail -20 "$dir/stitchd.log" >&2; }
    exit 1
}
wait_for() {
    local n=$(($1 * 10)) what=$2
    shift 2
    for ((i = 0; i < n; i++)); do "$@" && return 0; sleep 0.1; done
    fail "timed out waiting for $what"
}

for cmd in ip python3 curl; do
    command -v "$cmd" > /dev/null || fail "'$cmd' not found: apt-get install iproute2 python3 curl"
done
if [ -n "${STITCHD_BIN_DIR:-}" ]; then
    bin=$STITCHD_BIN_DIR
else
    echo "== building (release)"
    cargo build --release --bins -q
    bin=${CARGO_TARGET_DIR:-target}/release
fi
for b in stitchd stitchctl; do
    [ -x "$bin/$b" ] || fail "$bin/$b not found: cargo build --bins"
done
ctl() { "$bin/stitchctl" --socket "$sock" "$@"; }

echo "== starting stitchd --config $ex/stitchd.toml"
"$bin/stitchd" --config "$ex/stitchd.toml" --control-socket "$sock" > "$dir/stitchd.log" 2>&1 &
pids+=($!)
sd_pid=$!
sd_ready() { [ -S "$sock" ] || { kill -0 "$sd_pid" 2>/dev/null || fail "stitchd exited"; return 1; }; }
wait_for 30 "stitchd's control socket" sd_ready

# Only now (every port started) move the tap interfaces into the namespaces.
ip netns add "${id}c"
ip link set lbdemo-c netns "${id}c"
ip -n "${id}c" link set lo up
ip -n "${id}c" addr add 198.18.0.1/24 dev lbdemo-c
ip -n "${id}c" link set lbdemo-c up
for n in 1 2 3; do
    ns="$id$n"
    ip netns add "$ns"
    ip link set "lbdemo-$n" netns "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link set "lbdemo-$n" address "02:00:00:00:02:0$n"
    ip -n "$ns" addr add "198.18.0.1$n/24" dev "lbdemo-$n"
    ip -n "$ns" link set "lbdemo-$n" up
    # ip netns exec execs python3: $! is the server itself.
    ip netns exec "$ns" python3 "$ex/backend.py" "b$n" "$dir/delay-b$n" 8080 8081 \
        < /dev/null > "$dir/backend$n.log" 2>&1 &
    backend_pids+=($!)
done
for n in 1 2 3; do
    wait_for 10 "backend b$n" grep -q ready "$dir/backend$n.log"
done
ctl lb.service.list
# The checks started with stitchd, before the servers: wait until they pass everywhere.
all_up() { ctl call lb.stats '{"service":"web"}' | python3 -c '
import json, sys
d = json.load(sys.stdin)["services"][0]["dests"]
sys.exit(0 if all(x["up"] for x in d) else 1)'; }
wait_for 10 "every backend's health checks to pass" all_up

# requests N: N GETs of the service, one new connection each; prints the tally.
requests() {
    ip netns exec "${id}c" curl -sS --fail --max-time 30 -H 'Connection: close' \
        $(for _ in $(seq "$1"); do echo "http://198.18.0.100/"; done) > "$dir/answers" \
        || fail "curl through the balancer"
    sort "$dir/answers" | uniq -c
}

echo "== 30 requests to web (198.18.0.100:80, round robin over 3 backends x 2 ports)"
requests 30
for d in b1:8080 b1:8081 b2:8080 b2:8081 b3:8080 b3:8081; do
    [ "$(grep -c "^$d\$" "$dir/answers")" = 5 ] || fail "$d did not get 5 of 30"
done
ctl lb.stats

echo "== killing backend b2 (pid ${backend_pids[1]}); the health checks take it out"
kill -TERM "${backend_pids[1]}"
b2_down() { ctl call lb.stats '{"service":"web"}' | python3 -c '
import json, sys
d = json.load(sys.stdin)["services"][0]["dests"]
sys.exit(0 if all(not x["up"] for x in d if x["backend"] == "b2") else 1)'; }
wait_for 10 "b2 to be taken out" b2_down
echo "== 12 more requests"
requests 12
! grep -q '^b2:' "$dir/answers" || fail "b2 got connections after it was taken out"
[ "$(wc -l < "$dir/answers")" = 12 ] || fail "not every request was answered"
ctl lb.stats
echo "== demo-lb OK: 5 requests per destination, and none to the dead backend"
