#!/usr/bin/env bash
# Checks kvmtune's systemd units with `systemd-analyze verify`:
#
#   packaging/systemd/verify.sh [KVMTUNE_BINARY]
#
# verify wants ExecStart= to exist on this machine and looks up the man pages in
# Documentation=: the units are checked as copies whose ExecStart names
# KVMTUNE_BINARY (default target/release/kvmtune), with --man=no.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=$(realpath "${1:-$HERE/../../target/release/kvmtune}")
[ -x "$BIN" ] || { echo "verify.sh: no binary at $BIN (cargo build --release)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for u in "$HERE"/kvmtune-converge.*; do
    case $u in *.sh) continue ;; esac
    sed "s|^ExecStart=/usr/bin/kvmtune|ExecStart=$BIN|" "$u" >"$WORK/$(basename "$u")"
done
cd "$WORK"
systemd-analyze verify --man=no ./kvmtune-converge.*
echo "verify.sh: systemd-analyze verify: no findings for $(ls | tr '\n' ' ')"
