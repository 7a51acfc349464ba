#!/usr/bin/env python3
"""Traffic and report for scripts/demo.sh (Python 3 standard library only).

  demo.py serve ADDR              the core B: accepts one connection, reads a 16-byte
                                  header (total, first part), hashes what it reads, says
                                  "A" after the first part, answers the SHA-256 of the whole
                                  once it has it, then reads until the client closes.
  demo.py send ADDR TOTAL FIRST   the client C: sends TOTAL random bytes in two parts;
                                  between them, and before closing, waits for a line on
                                  stdin ("go", "close") so the demo can take snapshots.
  demo.py report DIR TOTAL        prints the before/after table from the JSON snapshots in
                                  DIR/before, DIR/after and DIR/closed; exits 1 on any
                                  mismatch.
"""

import hashlib
import json
import os
import socket
import struct
import sys

CHUNK = 1 << 20


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def read_exact(sock, n, h):
    while n > 0:
        b = sock.recv(min(n, CHUNK))
        if not b:
            raise SystemExit("connection closed early")
        h.update(b)
        n -= len(b)


def serve(listen):
    with socket.create_server(addr(listen)) as srv:
        print("listening", flush=True)
        conn, _ = srv.accept()
    with conn:
        hdr = b""
        while len(hdr) < 16:
            hdr += conn.recv(16 - len(hdr))
        total, first = struct.unpack("!QQ", hdr)
        h = hashlib.sha256()
        read_exact(conn, first, h)
        conn.sendall(b"A")
        read_exact(conn, total - first, h)
        digest = h.hexdigest()
        conn.sendall(digest.encode() + b"\n")
        print(f"server sha256 {digest} bytes {total}", flush=True)
        while conn.recv(CHUNK):
            pass


def send_random(sock, n, h):
    while n > 0:
        b = os.urandom(min(n, CHUNK))
        h.update(b)
        sock.sendall(b)
        n -= len(b)


def wait_for(word):
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"expected {word!r} on stdin, got {line!r}")


def send(target, total, first):
    h = hashlib.sha256()
    with socket.create_connection(addr(target), timeout=60) as s:
        s.sendall(struct.pack("!QQ", total, first))
        send_random(s, first, h)
        if s.recv(1) != b"A":
            raise SystemExit("no acknowledgement of the first part")
        print(f"first {first}", flush=True)
        wait_for("go")
        send_random(s, total - first, h)
        theirs = b""
        while not theirs.endswith(b"\n"):
            b = s.recv(128)
            if not b:
                raise SystemExit("no digest from the server")
            theirs += b
        print(f"client sha256 {h.hexdigest()}", flush=True)
        print(f"server sha256 {theirs.decode().strip()}", flush=True)
        wait_for("close")
    print("closed", flush=True)


def load(path):
    with open(path) as f:
        return json.load(f)


def mib(n):
    return f"{n / (1 << 20):.1f} MiB"


WHEN = {
    "before": "before hand-off",
    "after": "transfer done",
    "closed": "connection closed",
}


def report(d, total):
    snaps = {}
    for when in WHEN:
        shell = load(os.path.join(d, when, "shell.json"))
        stats = load(os.path.join(d, when, "stats.json"))
        stitches = load(os.path.join(d, when, "stitches.json"))["stitches"]
        detail = None
        if stitches:
            detail = load(os.path.join(d, when, "stitch.json"))
        snaps[when] = (shell, stats, stitches, detail)

    def col(when):
        shell, stats, stitches, detail = snaps[when]
        m = shell["mappings"][0]
        relayed = m["bytes_relayed_by_shell"]
        by_switch = m["bytes_by_switch"]
        translated = sum(w.get("stitched", 0) for w in stats["workers"])
        if detail:
            c = detail["directions"]["c_to_a"]
            state = f'{detail["state"]} (id {detail["id"]})'
            seen = f'{c["packets"]} / {mib(c["bytes"])}'
        else:
            state = "removed" if when == "closed" else "none"
            seen = "-"
        return {
            "connections relayed / handed off (shell)": f'{m["connections"]} / {m["bypassed"]}',
            "bytes relayed by the shell C->B": mib(relayed["c_to_b"]),
            "bytes carried by the switch C->B (shell)": mib(by_switch["c_to_b"]),
            "shell CPU seconds": f'{shell["cpu_seconds"]:.2f}',
            "stitch state (stitchctl stitch.list)": state,
            "frames C->A1 (stitchctl stitch.get)": seen,
            "packets translated (stitchctl stats.get)": str(translated),
        }

    cols = {when: col(when) for when in WHEN}
    width = max(len(k) for k in cols["before"])
    print(f'{"":<{width}}' + "".join(f"  {t:<20}" for t in WHEN.values()))
    for k in cols["before"]:
        print(f"{k:<{width}}" + "".join(f"  {cols[w][k]:<20}" for w in WHEN))

    bad = []
    shell, stats, stitches, detail = snaps["after"]
    m = shell["mappings"][0]
    if m["bypassed"] != 1:
        bad.append(f'the shell handed off {m["bypassed"]} connections, expected 1 ({m["last_failure_reasons"]})')
    if not detail or detail["state"] != "stitched":
        bad.append(f'stitch state after the transfer: {detail["state"] if detail else "none"}, expected stitched')
    if m["bytes_relayed_by_shell"]["c_to_b"] >= total:
        bad.append("the shell relayed the whole transfer itself")
    if sum(w.get("stitched", 0) for w in stats["workers"]) == 0:
        bad.append("the switch translated no packet")
    shell, stats, stitches, _ = snaps["closed"]
    if stitches:
        bad.append(f"stitches left after the connection closed: {stitches}")
    if shell["mappings"][0]["active_stitched"] != 0:
        bad.append("the shell still holds the stitched connection after it closed")
    for b in bad:
        print(f"MISMATCH: {b}")
    return 1 if bad else 0


def main():
    cmd = sys.argv[1:2]
    if cmd == ["serve"] and len(sys.argv) == 3:
        serve(sys.argv[2])
    elif cmd == ["send"] and len(sys.argv) == 5:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == ["report"] and len(sys.argv) == 4:
        sys.exit(report(sys.argv[2], int(sys.argv[3])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
