#!/usr/bin/env bash
# Builds the Debian package and checks it: the files it must hold, its control fields, that
# the packaged binaries run and the packaged configuration validates, and the unit's
# directives. Extracted into a temporary directory, not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/package.sh
deb=$(ls -1t target/debian/stitchd_*.deb | head -1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -c "$deb" > "$tmp/list"
for f in ./usr/bin/stitchd ./usr/bin/stitchctl ./usr/bin/stitch-shell ./usr/bin/stitch-core \
         ./usr/lib/stitchd/stitchd-prepare ./etc/stitchd/stitchd.toml ./etc/default/stitchd \
         ./usr/share/doc/stitchd/deploy.md ./usr/lib/systemd/system/stitchd.service; do
    grep -q " $f\$" "$tmp/list" || { echo "test-package: $f missing from $deb" >&2; cat "$tmp/list" >&2; exit 1; }
done
dpkg-deb -f "$deb" Package | grep -qx stitchd
dpkg-deb -f "$deb" Depends | grep -q librte || { echo "test-package: Depends lacks the DPDK libraries: $(dpkg-deb -f "$deb" Depends)" >&2; exit 1; }
grep -qx "/etc/stitchd/stitchd.toml" <(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
dpkg-deb -x "$deb" "$tmp/root"
"$tmp/root/usr/bin/stitchd" --version
"$tmp/root/usr/bin/stitchctl" --help | grep -q "config"
"$tmp/root/usr/bin/stitchd" --config "$tmp/root/etc/stitchd/stitchd.toml" --check-config
unit="$tmp/root/usr/lib/systemd/system/stitchd.service"
for d in "ExecStart=/usr/bin/stitchd --config /etc/stitchd/stitchd.toml" \
         "ExecStartPre=/usr/lib/stitchd/stitchd-prepare" "ExecReload=/bin/kill -HUP \$MAINPID"; do
    grep -qF "$d" "$unit" || { echo "test-package: unit lacks $d" >&2; exit 1; }
done
echo "test-package: $deb ok ($(stat -c %s "$deb") bytes)"
