#!/usr/bin/env bash
# A whole fleet on one machine: two private prosody servers (the upstream
# domain, and the cluster's agent domain), one upstream manager (REST on
# 127.0.0.1:8470 unless FLEET_REST is set), one downstream manager and two
# agents; then provisions a VM through the CLI and shows the cluster as one
# node. Ctrl-C (or the end of the script with FLEET_KEEP unset) stops every
# process it started, by pid, and removes its files.
#
# Run as root (VMs are network namespaces) after scripts/setup-fleet.sh and
# `cargo build -p stitch-fleet`. STITCH_FLEET points at the binary.
set -euo pipefail

BIN=${STITCH_FLEET:-${CARGO_TARGET_DIR:-target}/debug/stitch-fleet}
REST=${FLEET_REST:-127.0.0.1:8470}
[ -x "$BIN" ] || { echo "fleet-demo: no binary at $BIN (cargo build -p stitch-fleet, or set STITCH_FLEET)" >&2; exit 1; }
command -v prosody >/dev/null || { echo "fleet-demo: prosody missing: run scripts/setup-fleet.sh" >&2; exit 1; }

DIR=$(mktemp -d /tmp/fleet-demo.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
enc() { python3 -c 'import sys; print("".join(c if c.isalnum() else "%%%02x" % ord(c) for c in sys.argv[1]))' "$1"; }

# prosody NAME PORT HOST USER...   (password of USER is pw-USER)
prosody_start() {
    local name=$1 port=$2 host=$3; shift 3
    local d=$DIR/$name; mkdir -p "$d/data" "$d/certs"
    cat > "$d/prosody.cfg.lua" <<CFG
pidfile = "$d/prosody.pid"
data_path = "$d/data"
certificates = "$d/certs"
run_as_root = true
log = { { levels = { min = "info" }, to = "file", filename = "$d/prosody.log" } }
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "posix" }
modules_disabled = { "s2s"; "offline"; "tls"; "admin_shell"; "http"; "c2s_direct_tls" }
c2s_ports = { $port }
c2s_interfaces = { "127.0.0.1" }
s2s_ports = { }
component_ports = { }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
VirtualHost "$host"
CFG
    mkdir -p "$d/data/$(enc "$host")/accounts"
    for u in "$@"; do
        printf 'return {\n\t["password"] = "pw-%s";\n};\n' "$u" > "$d/data/$(enc "$host")/accounts/$(enc "$u").dat"
    done
    prosody --config "$d/prosody.cfg.lua" -F > "$d/stdout.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0; sleep 0.1; done
    echo "fleet-demo: prosody $name did not start: $(cat "$d/prosody.log")" >&2; exit 1
}

wait_log() { # FILE TEXT
    for _ in $(seq 200); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "fleet-demo: no '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

UP_PORT=$(free_port); DOWN_PORT=$(free_port)
prosody_start up "$UP_PORT" up.fleet.test upstream ds-a
prosody_start down "$DOWN_PORT" a.fleet.test manager agent0 agent1

"$BIN" upstream --db "$DIR/upstream.db" --listen "$REST" --jid upstream@up.fleet.test \
    --password pw-upstream --server 127.0.0.1:"$UP_PORT" 2> "$DIR/upstream.log" &
PIDS+=($!)
wait_log "$DIR/upstream.log" "up-link link up"
export STITCH_FLEET_URL=$REST
"$BIN" clusters add a --jid ds-a@up.fleet.test >/dev/null
"$BIN" quotas add acme --vms 3 >/dev/null
"$BIN" templates add web --command 'echo ready; exec sleep 3600' --ready-line ready >/dev/null

for i in 0 1; do
    "$BIN" agent --jid agent$i@a.fleet.test --password pw-agent$i --server 127.0.0.1:"$DOWN_PORT" \
        --manager manager@a.fleet.test --vm-slots 2 --netns-prefix "demo$i" 2> "$DIR/agent$i.log" &
    PIDS+=($!)
done
"$BIN" downstream --up-jid ds-a@up.fleet.test --up-password pw-ds-a --up-server 127.0.0.1:"$UP_PORT" \
    --down-jid manager@a.fleet.test --down-password pw-manager --down-server 127.0.0.1:"$DOWN_PORT" \
    --upstream upstream@up.fleet.test --agent agent0@a.fleet.test --agent agent1@a.fleet.test \
    --quota-vms 3 --state-file "$DIR/downstream.json" 2> "$DIR/downstream.log" &
PIDS+=($!)
wait_log "$DIR/upstream.log" "state from cluster a: 0 of 4 VM slots used, Ok"

echo "== clusters (one node, summed capacity)"; "$BIN" clusters
echo "== provision a VM"; "$BIN" request --customer acme --wait 30 define-vm web-1 --template web
echo "== over the customer's quota?"; "$BIN" quotas
echo "== a load-balanced service (no load balancer in stitchd yet)"
"$BIN" request --customer acme --wait 30 define-service www --vip 198.18.0.10:80 --backend web-1 || true
echo "== remove it"; "$BIN" request --customer acme --wait 30 remove-vm web-1
"$BIN" status
if [ -n "${FLEET_KEEP:-}" ]; then
    echo "fleet running (REST $REST, logs in $DIR); Ctrl-C stops it"
    wait
fi
