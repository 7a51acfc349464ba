#!/usr/bin/env bash
# What the fleet (stitch-fleet, seed 002) needs from Debian 12 is part of scripts/setup.sh's
# package list (prosody, lua-sec, libsqlite3-dev, openssl); this name is kept for the
# fleet's docs and demo. Run as root.
set -euo pipefail
exec "$(dirname "$0")/setup.sh"
