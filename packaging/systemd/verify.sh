#!/usr/bin/env bash
# Checks the systemd units a .deb ships with `systemd-analyze verify`, as installed:
#
#   packaging/systemd/verify.sh [DEB]      (default: target/packages/kvmtune_*.deb)
#
# The package is unpacked into a scratch root next to a copy of this machine's
# system units (targets the units refer to), so the check sees the packaged
# /usr/bin/kvmtune and man pages (MANPATH), not whatever this machine has
# installed. Needs systemd-analyze (systemd) and dpkg-deb. Exits non-zero on any
# finding; prints what systemd-analyze printed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEB=${1:-}
if [ -z "$DEB" ]; then
    DEB=$(ls -t "${CARGO_TARGET_DIR:-$REPO/target}"/packages/kvmtune_*.deb 2>/dev/null | head -n 1 || true)
fi
[ -f "$DEB" ] || { echo "verify.sh: no .deb (run packaging/build.sh first)" >&2; exit 2; }
command -v systemd-analyze >/dev/null || { echo "verify.sh: systemd-analyze missing (apt-get install systemd)" >&2; exit 2; }

ROOT=$(mktemp -d "${TMPDIR:-/tmp}/kvmtune-units.XXXXXX")
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/lib/systemd"
cp -a /lib/systemd/system "$ROOT/lib/systemd/"
dpkg-deb -x "$DEB" "$ROOT"
units=$(dpkg-deb -c "$DEB" | awk '{ print $6 }' | sed -n -e 's|^\./lib/systemd/system/||p' -e 's|^\./usr/lib/systemd/system/||p' | grep -v '^$' || true)
[ -n "$units" ] || { echo "verify.sh: $DEB ships no systemd unit" >&2; exit 1; }
echo "verify.sh: systemd-analyze verify" $units
# shellcheck disable=SC2086 # one word per unit
out=$(MANPATH=$ROOT/usr/share/man systemd-analyze verify --root="$ROOT" $units 2>&1) && rc=0 || rc=$?
[ -z "$out" ] || printf '%s\n' "$out"
# systemd-analyze exits 0 after some warnings: any output is a finding.
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    echo "verify.sh: FAIL (exit $rc)" >&2
    exit 1
fi
echo "verify.sh: ok, no findings"
