#!/usr/bin/env bash
# Demo: the stitch. Three Linux hosts in network namespaces -- client C (198.18.0.1),
# shell A (198.18.0.2, running stitch-shell) and core B (198.18.0.3, running stitch-core)
# -- joined by stitchd through net_tap ports (no NIC). A short L2 check (ping, MAC table),
# then one real TCP transfer C -> shell -> B: the shell relays the first 4 MiB, hands the
# connection to the switch (prepare, freeze, drain, TCP_REPAIR, commit) and the switch
# carries the rest, translated. Prints before/after (bytes by the shell and by the switch,
# the shell's CPU, the stitch's state), the events, the core's teardown notice, and whether
# the SHA-256 of what B received matches what C sent. Exits non-zero on any mismatch.
#
# Configuration: examples/demo/{stitchd,shell,core}.toml; traffic and report:
# examples/demo/demo.py. Run as root after scripts/setup.sh. Environment:
#   DEMO_MIB=128          size of the transfer
#   STITCHD_BIN_DIR=DIR   use the binaries in DIR instead of building release ones
set -euo pipefail
cd "$(dirname "$0")/.."

mib=${DEMO_MIB:-128}
total=$((mib << 20))
first=$((1 << 20))
ex=examples/demo
id="d$$"
dir=$(mktemp -d /tmp/stitchd-demo.XXXXXX)
sock="$dir/ctl.sock"
pids=()
cleanup() {
    set +e
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill -TERM "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null
    done
    for n in c a b; do ip netns del "$id$n" 2>/dev/null; done
    rm -rf /var/run/dpdk/stitchd-demo "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "demo FAILED: $*" >&2
    for f in stitchd shell core server; do
        [ -s "$dir/$f.log" ] && { echo "--- $f log" >&2; tail -20 "$dir/$f.log" >&2; }
    done
    exit 1
}
# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s.
wait_for() {
    local n=$(($1 * 10)) what=$2
    shift 2
    for ((i = 0; i < n; i++)); do "$@" && return 0; sleep 0.1; done
    fail "timed out waiting for $what"
}

for cmd in ip python3 ping; do
    command -v "$cmd" > /dev/null || fail "'$cmd' not found: apt-get install iproute2 python3 iputils-ping"
done
if [ -n "${STITCHD_BIN_DIR:-}" ]; then
    bin=$STITCHD_BIN_DIR
else
    echo "== building (release)"
    cargo build --release --bins -q
    bin=${CARGO_TARGET_DIR:-target}/release
fi
for b in stitchd stitchctl stitch-shell stitch-core; do
    [ -x "$bin/$b" ] || fail "$bin/$b not found: cargo build --bins"
done
# Background processes are started without a shell function around them, so that $! is
# the process itself (ip netns exec execs the command) and cleanup stops it by its pid.
ctl() { "$bin/stitchctl" --socket "$sock" "$@"; }
in_ns() { local ns=$id$1; shift; ip netns exec "$ns" "$@"; }

echo "== starting stitchd --config $ex/stitchd.toml"
"$bin/stitchd" --config "$ex/stitchd.toml" --control-socket "$sock" > "$dir/stitchd.log" 2>&1 &
pids+=($!)
sd_pid=$!
sd_ready() { [ -S "$sock" ] || { kill -0 "$sd_pid" 2>/dev/null || fail "stitchd exited"; return 1; }; }
wait_for 30 "stitchd's control socket" sd_ready

# Only now (every port started) move the tap interfaces into the namespaces.
n=1
for h in c a b; do
    ip netns add "$id$h"
    ip link set "demo-$h" netns "$id$h"
    ip -n "$id$h" link set lo up
    ip -n "$id$h" addr add "198.18.0.$n/24" dev "demo-$h"
    ip -n "$id$h" link set "demo-$h" up
    n=$((n + 1))
done

echo "== L2: ping C -> B through the switch, then the MAC table"
in_ns c ping -c 2 -i 0.2 -W 2 198.18.0.3 | grep -E 'transmitted' || fail "ping C -> B"
ctl mac.list

echo "== starting stitch-core (B), a server on B, stitch-shell (A)"
"$bin/stitchctl" --socket "$sock" events.subscribe > "$dir/events.log" 2>&1 &
pids+=($!)
ip netns exec "${id}b" "$bin/stitch-core" --config "$ex/core.toml" > "$dir/core.log" 2>&1 &
pids+=($!)
ip netns exec "${id}b" python3 "$ex/demo.py" serve 198.18.0.3:8000 > "$dir/server.log" 2>&1 &
pids+=($!)
ip netns exec "${id}a" "$bin/stitch-shell" --config "$ex/shell.toml" --status-socket "$dir/shell.sock" > "$dir/shell.log" 2>&1 &
pids+=($!)
shell_status() { "$bin/stitch-shell" --status --status-socket "$dir/shell.sock"; }
wait_for 10 "the server" grep -q listening "$dir/server.log"
wait_for 10 "stitch-shell's status socket" test -S "$dir/shell.sock"
shell_found_switch() { shell_status 2> /dev/null | grep -q '"stitching": *"available"'; }
wait_for 10 "stitch-shell to discover the switch" shell_found_switch

snapshot() {
    mkdir -p "$dir/$1"
    shell_status > "$dir/$1/shell.json"
    ctl --json stats.get > "$dir/$1/stats.json"
    ctl --json stitch.list > "$dir/$1/stitches.json"
    local sid
    sid=$(python3 -c 'import json,sys; s=json.load(sys.stdin)["stitches"]; print(s[0]["id"] if s else "")' < "$dir/$1/stitches.json")
    [ -z "$sid" ] || ctl --json stitch.get "$sid" > "$dir/$1/stitch.json"
}

echo "== transfer: $mib MiB C -> 198.18.0.2:7000 (the shell) -> B; hand-off after 4 MiB"
coproc CLIENT { exec ip netns exec "${id}c" python3 "$ex/demo.py" send 198.18.0.2:7000 "$total" "$first" 2> "$dir/client.log"; }
pids+=("$CLIENT_PID")
exec {to_client}>&"${CLIENT[1]}" {from_client}<&"${CLIENT[0]}"
# next_line WHAT: the client's next line, within 60 s.
next_line() {
    read -r -t 60 -u "$from_client" line ||
        fail "no line from the client within 60 s, waiting for $1 (a starved CPU?) $(cat "$dir/client.log")"
}
next_line "the first part"
[[ $line == first* ]] || fail "client said: $line"
snapshot before
start=$(date +%s.%N)
echo go >&"$to_client"
"$bin/stitchctl" --socket "$sock" top --count 1 --interval 0.5 < /dev/null > "$dir/top.log" 2>&1 &
top_pid=$!
pids+=("$top_pid")
next_line "the transfer"
sent=${line#client sha256 }
next_line "the server's digest"
got=${line#server sha256 }
secs=$(python3 -c "print(f'{$(date +%s.%N) - $start:.2f}')")
snapshot after
echo close >&"$to_client"
next_line "the close"
[ "$line" = closed ] || fail "client said: $line"
stitch_gone() { ctl --json stitch.list | python3 -c 'import json,sys; sys.exit(1 if json.load(sys.stdin)["stitches"] else 0)'; }
wait_for 10 "the stitch to be removed after both FINs" stitch_gone
shell_released() { shell_status | python3 -c 'import json,sys; sys.exit(1 if json.load(sys.stdin)["mappings"][0]["active_stitched"] else 0)'; }
wait_for 10 "the shell to release the stitched connection" shell_released
snapshot closed

echo "== before / after: $mib MiB, $secs s after the first part"
status=0
python3 "$ex/demo.py" report "$dir" "$total" || status=1
wait "$top_pid" || true
echo "== stitchctl top, the first 0.5 s after the hand-off point"
cat "$dir/top.log"
echo "== stitch events (stitchctl events.subscribe)"
wait_for 10 "the stitch's removed event" grep -q '"removed"' "$dir/events.log"
cat "$dir/events.log"
echo "== teardown notices received by stitch-core on B (variant 4B)"
wait_for 10 "stitch-core's teardown notice" grep -q '"variant":"4B"' "$dir/core.log"
cat "$dir/core.log"
echo "== SHA-256 sent by C:     $sent"
echo "== SHA-256 received by B: $got"
if [ -n "$sent" ] && [ "$sent" = "$got" ]; then
    echo "SHA-256 match"
else
    echo "SHA-256 MISMATCH"
    status=1
fi
[ "$status" = 0 ] && echo "== demo OK" || echo "== demo FAILED"
exit "$status"
