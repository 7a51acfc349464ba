#!/usr/bin/env bash
# Installs what the fleet (stitch-fleet, seed 002) needs from Debian 12, idempotently:
# prosody (the XMPP server the tests and the demo start privately; the Debian
# service is not used; lua-sec for its TLS), the SQLite library rusqlite links
# against, and openssl (the TLS test makes its certificates with it). Run as root.
set -euo pipefail

PKGS=(prosody lua-sec libsqlite3-dev pkg-config iproute2 openssl)

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-fleet.sh: run as root (it installs Debian packages)" >&2
    exit 1
fi
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-fleet.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "setup-fleet.sh: Debian packages already installed"
fi
