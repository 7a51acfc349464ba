#!/usr/bin/env bash
# The load balancer (issue 11) side by side with OVS-DPDK and testpmd io, one busy core each,
# same ports, same pcaps, same run: NAT mode, 4 backends x 2 software ports (8 destinations)
# behind one switch port (net_null), clients on net_pcap ports, 64-byte frames.
#
#   established N  N connections opened first (a finite pcap of N SYNs on a port of its
#                  own, read once), then measured on a second port that replays data
#                  segments (ACK, 6-byte payload) of those connections forever: the
#                  steady state is 100 % established forwarding. At N > TOUCHED the data
#                  pcap touches TOUCHED of the N connections, spread evenly (net_pcap
#                  holds a replayed pcap in mbufs); all N stay in the table.
#   new conns      per flow a SYN and then an RST ([SYN x F, RST x F], replayed forever;
#                  F = TOUCHED / 2 and F = 1000): every SYN after the first pass finds
#                  its connection closed and opens a new one (stitchd: removed and
#                  scheduled afresh; OVS: conntrack sees a SYN on a closed connection).
#   fresh SYNs     one pass over a finite pcap of FRESH (1M) SYNs with distinct 4-tuples
#                  (no reuse, no close); measured between 10 % and 90 % of the pass.
#
# Cycles per packet = CPU Hz x the busy thread's own run time (/proc/<pid>/task/<tid>/
# schedstat) / packets out of the backend port (DPDK telemetry), as ../shared/tools/cpp.py
# does; cycles per new connection = the same busy cycles / SYNs forwarded, checked against
# each forwarder's own count (stitchd `lb.stats` conns, OVS the select group's packets).
# The OVS-DPDK recipe is at ovs_start below.
#
# Usage: perf/bench-lb.sh [SECONDS=6] [COUNTS="1000 1000000"] [TOUCHED=196608] [RUNS=1]
#        perf/bench-lb.sh --smoke      (1k connections, 2 s, testpmd and stitchd only)
#   As root, after scripts/setup.sh. Installs openvswitch-switch-dpdk itself if missing
#   (apt-get), or skips OVS with SKIP_OVS=1. Builds with cargo unless SKIP_BUILD=1
#   (CARGO_TARGET_DIR is honoured; CARGO_JOBS=N passes -j N). FRESH=N sets the fresh pass.
#   About 5 minutes per run on a 2-CPU machine. Stops every process it started by pid and
#   removes its /var/run/dpdk/<prefix> directories, also when interrupted.
# Prints Markdown tables; paste them into perf/RESULTS.md with the command line.
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [ "${1:-}" = "--smoke" ]; then
    smoke=1
    shift
    set -- 2 1000 16384 1
    SKIP_OVS=1
fi
secs=${1:-6}
counts=${2:-"1000 1000000"}
touched=${3:-196608}
runs=${4:-1}
fresh=${FRESH:-1000000}
skip_ovs=${SKIP_OVS:-0}

[ "$(id -u)" = 0 ] || { echo "run as root (DPDK, /var/run/dpdk)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 missing: apt-get install python3" >&2; exit 1; }
command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd missing: apt-get install dpdk (scripts/setup.sh)" >&2; exit 1; }
ovs_bin=/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk
if [ "$skip_ovs" = 0 ] && [ ! -x "$ovs_bin" ]; then
    echo "OVS-DPDK missing: apt-get install openvswitch-switch-dpdk" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openvswitch-switch-dpdk >&2 || {
        echo "could not install openvswitch-switch-dpdk; rerun with SKIP_OVS=1 to measure without it" >&2
        exit 1
    }
fi

target=${CARGO_TARGET_DIR:-target}
bin=$target/release
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    nice -n 10 cargo build --release ${CARGO_JOBS:+-j "$CARGO_JOBS"} -q -p switch-app -p stitch-control -p perf --bins
fi
for b in stitchd stitchctl stitch-mkpcap; do
    [ -x "$bin/$b" ] || { echo "$bin/$b missing (cargo build --release)" >&2; exit 1; }
done

dir=$(mktemp -d /tmp/stitchd-lb.XXXXXX)
pids=()
prefixes=()
cleanup() {
    local p
    for p in "${pids[@]}"; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    for p in "${prefixes[@]}"; do rm -rf "/var/run/dpdk/$p"; done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mhz=$(awk '/cpu MHz/ {print $4; exit}' /proc/cpuinfo)
eal_mem=(--no-huge -m 3072 --no-pci)
vip=198.18.100.1
lbmac=02:53:54:4c:42:01

# --- the measurement: samples (packets out, thread run time, new connections) twice -----
cat > "$dir/measure.py" <<'PY'
import argparse, glob, json, os, re, socket, subprocess, sys, time

def tele(prefix, port):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(f"/var/run/dpdk/{prefix}/dpdk_telemetry.v2")
    s.recv(4096)
    s.send(f"/ethdev/stats,{port}".encode())
    out = json.loads(s.recv(1 << 20).decode())["/ethdev/stats"]
    s.close()
    return out

def runtime(pid, regex):
    total, names = 0, set()
    for t in glob.glob(f"/proc/{pid}/task/*"):
        try:
            comm = open(f"{t}/comm").read().strip()
            if re.search(regex, comm):
                total += int(open(f"{t}/schedstat").read().split()[0]); names.add(comm)
        except OSError:
            pass
    return total, names

def count(cmd):
    if not cmd:
        return None
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=60).stdout.strip()
    return int(out) if out.isdigit() else None

ap = argparse.ArgumentParser()
ap.add_argument("--pid", type=int, required=True); ap.add_argument("--prefix", required=True)
ap.add_argument("--threads", required=True); ap.add_argument("--out", type=int, required=True)
ap.add_argument("--inport", type=int); ap.add_argument("--intotal", type=int, default=0)
ap.add_argument("--inskip", type=int, default=0, help="leading frames of the pass not in the window")
ap.add_argument("--pass-window", action="store_true", help="measure 10-90 %% of a finite pass")
ap.add_argument("--warm", type=float, default=3); ap.add_argument("--secs", type=float, default=6)
ap.add_argument("--count", default=""); ap.add_argument("--ovs", default="")
ap.add_argument("--timeout", type=float, default=300)
ap.add_argument("--syns-per-pkt", type=float, default=0,
                help="share of the packets out that are SYNs (0: not a new-connection run)")
a = ap.parse_args()
sock = f"/var/run/dpdk/{a.prefix}/dpdk_telemetry.v2"
t0 = time.monotonic()
while not os.path.exists(sock):
    if time.monotonic() - t0 > 120 or not os.path.exists(f"/proc/{a.pid}"):
        sys.exit(f"no telemetry socket {sock}")
    time.sleep(0.1)
mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", open("/proc/cpuinfo").read()).group(1))

def sample():
    o = tele(a.prefix, a.out)["opackets"]
    i = tele(a.prefix, a.inport)["ipackets"] if a.inport is not None else 0
    r, names = runtime(a.pid, a.threads)
    return {"o": o, "i": i, "r": r, "t": time.monotonic(), "names": names}

def wait_in(level):
    t = time.monotonic()
    while True:
        s = sample()
        if s["i"] >= level:
            return s
        if time.monotonic() - t > a.timeout:
            sys.exit(f"input port {a.inport} stopped at {s['i']} of {level} packets")
        time.sleep(0.005 if a.pass_window else 0.2)

c_end = None
if a.pass_window:
    # Every frame of the window is a SYN of a new 4-tuple: connections = packets out
    # (checked against the forwarder's own count once the pass is over). The count is
    # not sampled at the window's edges: asking for it takes milliseconds of the pass.
    span = a.intotal - a.inskip
    s0 = wait_in(a.inskip + int(span * 0.1))
    s1 = wait_in(a.inskip + int(span * 0.9))
    wait_in(a.intotal)
    time.sleep(1)
    c_end = count(a.count)
    c0 = c1 = None
else:
    if a.inport is not None and a.intotal:
        wait_in(a.intotal)     # the opening pass (SYNs) is over
    time.sleep(a.warm)
    if a.ovs:
        subprocess.run(f"ovs-appctl -t {a.ovs} dpif-netdev/pmd-stats-clear", shell=True, capture_output=True)
    s0 = sample(); c0 = count(a.count)
    time.sleep(a.secs)
    s1 = sample(); c1 = count(a.count)
ovs_cpp = None
if a.ovs and not a.pass_window:
    out = subprocess.run(f"ovs-appctl -t {a.ovs} dpif-netdev/pmd-stats-show", shell=True,
                         capture_output=True, text=True).stdout
    m = re.search(r"avg processing cycles per packet: ([\d.]+)", out)
    ovs_cpp = float(m.group(1)) if m else None
pk, rs, ws = s1["o"] - s0["o"], (s1["r"] - s0["r"]) / 1e9, s1["t"] - s0["t"]
if pk <= 0 or rs <= 0:
    sys.exit(f"no packets or no run time: pkts={pk} run_s={rs} threads={s1['names']}")
res = {"cpp": mhz * 1e6 * rs / pk, "pkts": pk, "run_s": rs, "wall_s": ws,
       "mpps_core": pk / rs / 1e6, "threads": sorted(s1["names"]), "ovs_cpp": ovs_cpp,
       "in": s1["i"] - s0["i"]}
# New connections: busy cycles / SYNs forwarded (every SYN of these pcaps opens one; the
# forwarder's own count is kept as a check: OVS updates its group counters only when its
# revalidator dumps the datapath, so a 6 s window of them is off by up to ~1 s of traffic).
if a.syns_per_pkt:
    syns = pk * a.syns_per_pkt
    res.update(syns=syns, cpc=mhz * 1e6 * rs / syns, conns_per_s_wall=syns / ws)
if c0 is not None and c1 is not None:
    res.update(conns=c1 - c0, conns_total=c1)
elif a.pass_window:
    res.update(conns_total=c_end)
print(json.dumps(res))
PY

measure() { # out-file measure.py-args...
    local out=$1; shift
    if python3 "$dir/measure.py" "$@" > "$out" 2> "$out.err"; then return 0; fi
    echo "measure: $(tail -1 "$out.err")" >&2
    echo '{}' > "$out"
}
field() { # json-file key [format]
    python3 -c "import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print('?' if v is None else (sys.argv[3] % v))" "$1" "$2" "${3:-%.0f}"
}
wait_sock() { # socket pid log
    for _ in $(seq 1200); do
        [ -S "$1" ] && return 0
        kill -0 "$2" 2>/dev/null || { echo "process $2 exited:" >&2; tail -20 "$3" >&2; return 1; }
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2; return 1
}
stop() { # pid
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
leftovers() { # our own processes only: every pid we started is stopped before the next
    local p
    for p in "${pids[@]}"; do
        if kill -0 "$p" 2>/dev/null; then echo "leftover pid $p: stopping it" >&2; stop "$p"; fi
    done
    pids=()
}

# --- pcaps -----------------------------------------------------------------------------
# A finite SYN pcap starts with PAD frames of a local ethertype (0x88b5) that every forwarder
# drops or floods: OVS attaches a port's first packets before its OpenFlow port exists
# (~3k upcall failures seen here), so the SYNs must not be the first frames read.
pad=65536
mkpcap() { "$bin/stitch-mkpcap" "$@" >/dev/null; }
padded_syn() { # out flows
    mkpcap --lb syn "$dir/syn-only.pcap" "$2"
    python3 - "$dir/syn-only.pcap" "$1" "$pad" <<'PY'
import struct, sys
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = open(src, "rb").read()
frame = bytes.fromhex("020000ee0001" "020000000c02" "88b5") + bytes(46)
pad = b"".join(struct.pack("<IIII", 0, 0, 60, 60) + frame for _ in range(n))
open(out, "wb").write(body[:24] + pad + body[24:])
PY
    rm -f "$dir/syn-only.pcap"
}

# --- forwarders ------------------------------------------------------------------------
# stitchd: ports in the order the others attach them (backend port 0 = net_null).
stitchd_conf() { # file prefix sock mbufs devargs...
    local f=$1 prefix=$2 sock=$3 mbufs=$4; shift 4
    {
        echo "[eal]"
        echo "file_prefix = \"$prefix\""
        echo 'lcores = "0,1"'
        echo 'hugepages = "off"'
        echo 'memory_mb = 3072'
        echo "[mempool]"
        echo "mbufs = $mbufs"
        echo "[control]"
        echo "socket = \"$sock\""
        echo '[[ports]]'
        echo 'devargs = "net_null0,no-rx=1"'
        local d
        for d in "$@"; do echo '[[ports]]'; echo "devargs = \"$d\""; done
        echo "[lb]"
        echo "mac = \"$lbmac\""
        echo "connections = 2097152"
        echo "[[lb.services]]"
        echo 'name = "web"'
        echo "vip = \"$vip\""
        echo "port = 80"
        echo 'mode = "nat"'
        echo 'scheduler = "rr"'
        local b
        for b in 1 2 3 4; do
            echo "[[lb.services.backends]]"
            echo "name = \"b$b\""
            echo "port = 0"
            echo "mac = \"02:00:00:00:01:0$b\""
            echo "ip = \"198.18.1.$b\""
            echo "soft_ports = [8080, 8081]"
        done
    } > "$f"
}
# Each run_* takes: OUT.json MBUFS [measure.py args...] -- DEVARGS... and leaves OUT.json
# ({} when the run failed) plus OUT.json.extra (what the forwarder said about its state).
split_args() { # sets margs and devs from "args... -- devargs..."
    margs=(); devs=()
    while [ "$1" != "--" ]; do margs+=("$1"); shift; done
    shift
    devs=("$@")
}
run_stitchd() {
    local out=$1 mbufs=$2; shift 2
    split_args "$@"
    leftovers
    local name; name=$(basename "$out" .json)
    local prefix=lb$$s${name//[^a-z0-9]/} sock="$dir/$name.sock"
    prefixes+=("$prefix")
    stitchd_conf "$dir/$name.toml" "$prefix" "$sock" "$mbufs" "${devs[@]}"
    "$bin/stitchd" --config "$dir/$name.toml" > "$dir/$name.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    if wait_sock "$sock" "$pid" "$dir/$name.log"; then
        measure "$out" --pid "$pid" --prefix "$prefix" --threads worker --out 0 \
            --count "'$bin/stitchctl' --socket '$sock' --json lb.stats | python3 -c 'import json,sys; print(sum(s[\"conns\"] for s in json.load(sys.stdin)[\"services\"]))'" \
            "${margs[@]}"
        "$bin/stitchctl" --socket "$sock" --json lb.stats 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)["services"][0]
print(" ".join("%s=%s" % (k, s[k]) for k in ("conns_now", "conns", "no_conn", "table_full", "no_dest")))' \
            > "$out.extra" 2>/dev/null || true
    else
        echo '{}' > "$out"
    fi
    stop "$pid"
    rm -rf "/var/run/dpdk/$prefix"
}
# testpmd io: the floor. Ports: the traffic port(s), then net_null.
run_testpmd() {
    local out=$1 mbufs=$2; shift 2
    split_args "$@"
    leftovers
    local name; name=$(basename "$out" .json)
    local prefix=lb$$t${name//[^a-z0-9]/} vdevs=() d
    prefixes+=("$prefix")
    for d in "${devs[@]}"; do vdevs+=(--vdev="$d"); done
    setsid dpdk-testpmd -l 0,1 "${eal_mem[@]}" --file-prefix="$prefix" "${vdevs[@]}" --vdev=net_null9,no-rx=1 -- \
        --forward-mode=io --nb-cores=1 --total-num-mbufs="$mbufs" --stats-period 1 --no-flush-rx \
        < /dev/null > "$dir/$name.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    measure "$out" --pid "$pid" --prefix "$prefix" --threads worker --out "${#devs[@]}" "${margs[@]}"
    : > "$out.extra"
    stop "$pid"
    rm -rf "/var/run/dpdk/$prefix"
}
# OVS-DPDK with a private ovsdb. The recipe (OpenFlow 1.5, conntrack zone 1):
#   table 0: tcp to VIP:80             -> ct(zone=1,nat,table=1)  (a known connection: NAT applied)
#   table 1: +new+trk, SYN without ACK  -> group:1                 (a new connection)
#            +trk-inv, ip to a backend  -> set the MACs, output to the backend port
#            anything else              -> drop (a segment of no connection, like stitchd's lb_no_conn)
#   group 1: type=select, selection_method=dp_hash, one bucket per destination (4 backends x
#            2 ports): ct(commit,zone=1,nat(dst=IP:PORT),table=1)
# TCP sequence checking is off (dpctl/ct-disable-tcp-seq-chk: stitchd checks none either) and
# zone 1 keeps half-open connections 600 s (the clients never get an answer; OVS's default
# SYN_SENT timeout of 30 s would drop the untouched ones of the 1M set mid-run).
ovs_start() { # dir prefix
    local od=$1 prefix=$2
    mkdir -p "$od"
    ovsdb-tool create "$od/conf.db" /usr/share/openvswitch/vswitch.ovsschema
    OVS_RUNDIR=$od OVS_LOGDIR=$od OVS_DBDIR=$od setsid ovsdb-server "$od/conf.db" --remote=punix:"$od/db.sock" \
        --unixctl="$od/ovsdb.ctl" --log-file="$od/ovsdb.log" > /dev/null 2>&1 < /dev/null &
    pids+=("$!")
    for _ in $(seq 100); do [ -S "$od/db.sock" ] && break; sleep 0.1; done
    local vsctl=(ovs-vsctl --db=unix:"$od/db.sock" --timeout=120)
    "${vsctl[@]}" --no-wait init
    "${vsctl[@]}" --no-wait set Open_vSwitch . other_config:dpdk-init=true \
        other_config:dpdk-lcore-mask=0x1 other_config:pmd-cpu-mask=0x2 \
        "other_config:dpdk-extra=--no-huge --legacy-mem -m 3072 --no-pci --file-prefix=$prefix"
    "${vsctl[@]}" --no-wait -- --id=@m create Datapath datapath_version=0 -- set Open_vSwitch . datapaths:netdev=@m > /dev/null
    "${vsctl[@]}" --no-wait add-zone-tp netdev zone=1 tcp_syn_sent=600 tcp_established=600
    OVS_RUNDIR=$od OVS_LOGDIR=$od OVS_DBDIR=$od setsid "$ovs_bin" unix:"$od/db.sock" --unixctl="$od/vswitchd.ctl" \
        --log-file="$od/vswitchd.log" > /dev/null 2>&1 < /dev/null &
    ovs_pid=$!
    pids+=("$ovs_pid")
    "${vsctl[@]}" add-br br0 -- set bridge br0 datapath_type=netdev fail_mode=secure
    ovs-appctl -t "$od/vswitchd.ctl" dpctl/ct-disable-tcp-seq-chk > /dev/null
    "${vsctl[@]}" add-port br0 null -- set Interface null type=dpdk options:dpdk-devargs=net_null0,no-rx=1 ofport_request=100
    local g="group_id=1,type=select,selection_method=dp_hash" b p
    for b in 1 2 3 4; do for p in 8080 8081; do
        g="$g,bucket=actions=ct(commit,zone=1,nat(dst=198.18.1.$b:$p),table=1)"
    done; done
    echo "$g" > "$od/groups"
    {
        echo "table=0,priority=100,tcp,nw_dst=$vip,tp_dst=80 actions=ct(zone=1,nat,table=1)"
        echo "table=0,priority=0 actions=drop"
        echo "table=1,priority=100,ct_state=+new+trk,tcp,nw_dst=$vip,tp_dst=80,tcp_flags=+syn-ack actions=group:1"
        for b in 1 2 3 4; do
            echo "table=1,priority=50,ct_state=+trk-inv,ip,nw_dst=198.18.1.$b actions=mod_dl_src:$lbmac,mod_dl_dst:02:00:00:00:01:0$b,output:100"
        done
        echo "table=1,priority=0 actions=drop"
    } > "$od/flows"
    ovs-ofctl -O OpenFlow15 add-groups unix:"$od/br0.mgmt" "$od/groups"
    ovs-ofctl -O OpenFlow15 add-flows unix:"$od/br0.mgmt" "$od/flows"
}
# run_ovs: the traffic ports are attached in order after the null port (DPDK ports 1, 2, ...).
run_ovs() {
    local out=$1; shift 2
    split_args "$@"
    leftovers
    local name; name=$(basename "$out" .json)
    local prefix=lb$$o${name//[^a-z0-9]/} od="$dir/ovs-$name" i=1 d
    prefixes+=("$prefix")
    if ovs_start "$od" "$prefix" > "$dir/$name.log" 2>&1; then
        for d in "${devs[@]}"; do
            ovs-vsctl --db=unix:"$od/db.sock" --timeout=120 add-port br0 "in$i" -- \
                set Interface "in$i" type=dpdk "options:dpdk-devargs=$d" ofport_request="$i" >> "$dir/$name.log" 2>&1
            i=$((i + 1))
        done
        measure "$out" --pid "$ovs_pid" --prefix "$prefix" --threads pmd --out 0 --ovs "$od/vswitchd.ctl" \
            --count "ovs-ofctl -O OpenFlow15 dump-group-stats unix:'$od/br0.mgmt' | sed -n 's/.*group_id=1,[^p]*packet_count=\([0-9]*\).*/\1/p'" \
            "${margs[@]}"
        { ovs-appctl -t "$od/vswitchd.ctl" dpctl/ct-stats-show | awk '/Total/ {printf "conntrack_total=%s ", $2}'
          ovs-appctl -t "$od/vswitchd.ctl" coverage/show | awk '/datapath_drop_upcall_error/ {printf "upcall_errors=%s", $NF}'
        } > "$out.extra" 2>/dev/null || true
    else
        echo "OVS-DPDK did not start ($name):" >&2
        tail -5 "$dir/$name.log" "$od/vswitchd.log" >&2 || true
        echo '{}' > "$out"
    fi
    ovs-appctl -t "$od/vswitchd.ctl" exit > /dev/null 2>&1 || true
    local p
    for p in "${pids[@]}"; do stop "$p"; done
    pids=()
    rm -rf "/var/run/dpdk/$prefix"
}
forwarders="io st"
[ "$skip_ovs" = 1 ] || forwarders="io ovs st"
run_all() { # row mbufs measure-args-for-testpmd... -- devargs-testpmd... -- measure-args... -- devargs...
    local row=$1 run=$2 mbufs=$3; shift 3
    local targs=() tdevs=() f
    while [ "$1" != "--" ]; do targs+=("$1"); shift; done; shift
    while [ "$1" != "--" ]; do tdevs+=("$1"); shift; done; shift
    for f in $forwarders; do
        case $f in
        io) run_testpmd "$dir/$row-$run-io.json" "$mbufs" "${targs[@]}" -- "${tdevs[@]}" ;;
        ovs) run_ovs "$dir/$row-$run-ovs.json" "$mbufs" "$@" ;;
        st) run_stitchd "$dir/$row-$run-st.json" "$mbufs" "$@" ;;
        esac
    done
}

# --- the runs --------------------------------------------------------------------------
rows=()
started=$(date -u '+%Y-%m-%d %H:%M UTC')
for run in $(seq "$runs"); do
    for n in $counts; do
        frames=$(( n < touched ? (n > 16384 ? n : 16384) : touched ))
        mbufs=$(( frames + 32768 ))
        padded_syn "$dir/syn$n.pcap" "$n"
        mkpcap --lb ack "$dir/ack$n.pcap" "$n" "$frames"
        row="est$n"; [ "$run" = 1 ] && rows+=("$row")
        # testpmd gets the data pcap alone (there is nothing for it to open).
        run_all "$row" "$run" "$mbufs" --secs "$secs" -- "net_pcap0,rx_pcap=$dir/ack$n.pcap,infinite_rx=1" -- \
            --secs "$secs" --inport 2 --intotal $((pad + n)) -- \
            "net_pcap1,rx_pcap=$dir/ack$n.pcap,infinite_rx=1" "net_pcap2,rx_pcap=$dir/syn$n.pcap"
        rm -f "$dir/syn$n.pcap" "$dir/ack$n.pcap"
    done
    [ "$smoke" = 1 ] && break
    # New connections: [SYN x F, RST x F] replayed; F = TOUCHED / 2, and F = 1000.
    for f in $((touched / 2)) 1000; do
        frames=$((2 * f)); mbufs=$(( (frames > 16384 ? frames : 16384) + 32768 ))
        mkpcap --lb synrst "$dir/sr$f.pcap" "$f"
        row="new$f"; [ "$run" = 1 ] && rows+=("$row")
        run_all "$row" "$run" "$mbufs" --secs "$secs" -- "net_pcap0,rx_pcap=$dir/sr$f.pcap,infinite_rx=1" -- \
            --secs "$secs" --syns-per-pkt 0.5 -- "net_pcap1,rx_pcap=$dir/sr$f.pcap,infinite_rx=1"
        rm -f "$dir/sr$f.pcap"
    done
    # Fresh SYNs: one pass over FRESH distinct 4-tuples, measured from 10 % to 90 % of it.
    padded_syn "$dir/fresh.pcap" "$fresh"
    row=fresh; [ "$run" = 1 ] && rows+=("$row")
    run_all "$row" "$run" 65536 --pass-window --inport 0 --inskip "$pad" --intotal $((pad + fresh)) -- "net_pcap0,rx_pcap=$dir/fresh.pcap" -- \
        --pass-window --syns-per-pkt 1 --inport 1 --inskip "$pad" --intotal $((pad + fresh)) -- "net_pcap1,rx_pcap=$dir/fresh.pcap"
    rm -f "$dir/fresh.pcap"
done

# --- report ----------------------------------------------------------------------------
python3 - "$dir" "$runs" "$mhz" "$touched" "$fresh" "$forwarders" "${rows[@]}" <<'PY'
import json, os, sys
d, runs, mhz, touched, fresh, fwd = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6].split()
rows = sys.argv[7:]
def load(row, run, f):
    try:
        j = json.load(open(f"{d}/{row}-{run}-{f}.json"))
    except (OSError, ValueError):
        j = {}
    try:
        j["extra"] = open(f"{d}/{row}-{run}-{f}.json.extra").read().strip()
    except OSError:
        j["extra"] = ""
    return j
R = {(r, f): [load(r, k, f) for k in range(1, runs + 1)] for r in rows for f in fwd}
def vals(r, f, key):
    return [j.get(key) for j in R[(r, f)]]
def fmt(v, p="%.0f"):
    return " / ".join("?" if x is None else p % x for x in v)
def best(v):
    v = [x for x in v if x]
    return min(v) if v else None
def label(r):
    if r.startswith("est"):
        n = int(r[3:])
        return f"established, {n} conns (" + (f"{max(n, 16384)} frames replayed)" if n < touched else f"{touched} of them touched)")
    if r.startswith("new"):
        return f"new conns, [SYN, RST] x {int(r[3:])} 4-tuples"
    return f"new conns, fresh 4-tuples (one pass of {fresh} SYNs)"
has_ovs = "ovs" in fwd
print("### Cycles per packet, one busy core each (64-byte frames)")
print()
hdr = "| row | testpmd io |" + (" OVS-DPDK (thread time) | OVS pmd-stats |" if has_ovs else "") + " **stitchd** | stitchd Mpps/core |" + (" stitchd / OVS (cycles) | target <= 0.5 |" if has_ovs else "")
print(hdr)
print("|" + "---|" * (hdr.count("|") - 1))
for r in rows:
    io = vals(r, "io", "cpp"); st = vals(r, "st", "cpp")
    line = f"| {label(r)} | {fmt(io)} |"
    if has_ovs:
        ov = vals(r, "ovs", "cpp"); op = vals(r, "ovs", "ovs_cpp")
        line += f" {fmt(ov)} | {fmt(op)} |"
    line += f" **{fmt(st)}** | {fmt(vals(r, 'st', 'mpps_core'), '%.2f')} |"
    if has_ovs:
        b_ov, b_st = best(vals(r, "ovs", "cpp")), best(st)
        ratio = b_st / b_ov if b_ov and b_st else None
        line += f" {'?' if ratio is None else '%.2f' % ratio} | {'?' if ratio is None else ('met' if ratio <= 0.5 else 'missed')} |"
    print(line)
print()
print("### New connections per worker (cycles per new connection = busy cycles / SYNs forwarded)")
print()
fw = [f for f in fwd if f != "io"]
name = {"ovs": "OVS-DPDK", "st": "stitchd"}
hdr = "| row |" + "".join(f" {name[f]} cycles/conn | {name[f]} conns/s/core (Hz / cycles) | {name[f]} conns/s measured (wall) |" for f in fw) + " target >= 500k/s (stitchd) |"
print(hdr)
print("|" + "---|" * (hdr.count("|") - 1))
for r in rows:
    if r.startswith("est"):
        continue
    line = f"| {label(r)} |"
    for f in fw:
        cpc = vals(r, f, "cpc")
        line += f" {fmt(cpc)} | {fmt([mhz * 1e6 / c if c else None for c in cpc], '%.0f')} | {fmt(vals(r, f, 'conns_per_s_wall'), '%.0f')} |"
    b = best(vals(r, "st", "cpc"))
    line += f" {'?' if not b else ('met' if mhz * 1e6 / b >= 500000 else 'missed')} |"
    print(line)
print()
print("Checks (per run: connections counted vs SYNs forwarded, state held at the end):")
print()
for r in rows:
    for f in fwd:
        for k, j in enumerate(R[(r, f)], 1):
            syns = j.get("syns", 0)
            c = j.get("conns")
            extra = j.get("extra", "")
            if f == "io" or not j:
                if not j:
                    print(f"- {r} {f} run {k}: no result")
                continue
            if r.startswith("est"):
                print(f"- {r} {f} run {k}: {j['pkts']} packets in {j['run_s']:.2f} s busy ({j['wall_s']:.2f} s wall); new conns during the window {c}; {extra}")
            else:
                if r == "fresh":
                    print(f"- {r} {f} run {k}: SYNs forwarded in the window {syns:.0f}; connections counted after the pass {j.get('conns_total')} (of {fresh}); {extra}")
                else:
                    print(f"- {r} {f} run {k}: SYNs forwarded {syns:.0f}, new conns counted {c}; {extra}")
print()
print(f"Cycles at {mhz:.0f} MHz from each busy thread's own CPU time; per-run values separated by '/';")
print("ratios and targets from the best (lowest) run of each forwarder.")
PY
echo
echo "Started $started, $runs run(s), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ' (with uncommitted changes)')."
