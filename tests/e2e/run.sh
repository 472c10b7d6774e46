#!/usr/bin/env bash
# kvmtune end-to-end suite against a real libvirtd + QEMU (TCG).  Run as root:
#
#   tests/e2e/run.sh [--bin PATH] [--installed] [--only ID,ID...] [--artifacts DIR]
#
#   --bin PATH      kvmtune binary to test (default: target/release/kvmtune of this
#                   repo); installed as /usr/local/sbin/kvmtune-e2e and linked as
#                   /etc/libvirt/hooks/qemu before libvirtd starts
#   --installed     test the packaged kvmtune: /usr/bin/kvmtune and the hook link are
#                   already in place and are left alone
#   --only IDS      run only these cases (env always runs first)
#   --artifacts DIR keep logs/traces there (default: a new /tmp/kvmtune-e2e.XXXXXX)
#   --list          print the cases and exit
#   --require-all   a skipped case fails the run (CI: every case must run there)
#
# Installs libvirt/QEMU with apt if missing, starts its own virtlogd/libvirtd (and a
# syslog listener on /dev/log when the machine has none), and undoes all of it on
# exit.  One PASS/FAIL/SKIP line per case; exit status 1 if any case failed.
# See tests/e2e/README.md.

set -u -o pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$E2E_DIR/../.." && pwd)
# shellcheck source=lib.sh
. "$E2E_DIR/lib.sh"

HOOK=/etc/libvirt/hooks/qemu
HOOK_DIR=/etc/libvirt/hooks/qemu.d
RECORDER=$HOOK_DIR/zz-kvmtune-e2e-recorder
E2E_RUN=/run/kvmtune-e2e
INSTALL_BIN=/usr/local/sbin/kvmtune-e2e
HOOK_BACKUP=/etc/libvirt/hooks/.qemu.kvmtune-e2e-backup
POLICY_BACKUP=/etc/kvmtune/.policy.yaml.kvmtune-e2e-backup
IMG_DIR=/var/lib/libvirt/images/kvmtune-e2e

# id | timeout (s) | needs the 2-CPU/1-node host shape | description
CASES=(
    "env|90|no|libvirt calls hooks as documented; status file, thread names, cgroups, O_DIRECT"
    "a1|90|yes|vCPU + emulator threads avoid CPU0 (all on CPU 1, emulator: with-vcpus)"
    "a2|90|yes|emulator: housekeeping puts emulator threads on CPU 0, vCPUs on CPU 1"
    "a3|90|yes|ledger entry (uuid, cpus, nodes) and stage log lines of a started guest"
    "b1|90|no|on_violation: refuse blocks host-passthrough with kvmtune's reason"
    "b2|90|no|on_violation: warn starts a cache='writeback' guest and logs the violation"
    "c|120|yes|save + restore: live XML pinned to CPU 1 with cache='none', definition unchanged"
    "d|180|no|8 parallel starts all succeed; ledger == virsh list; empty after destroy"
    "d2|180|no|8 parallel dedicated starts: no CPU shared by two guests' vCPU threads, refusals exactly when the host is full, one line each"
    "e1|120|no|libvirtd killed + started under running guests: ledger still right"
    "e2|120|yes|libvirtd stopped + started under a running guest: placement kept"
    "f|90|no|broken policy with on_error allow: guest starts, error logged"
    "g|90|yes|the shipped policy as installed: a typical guest runs on CPU 1 and its violations are logged"
    "apply0|90|no|apply --dry-run shows reasons and a diff, defines nothing; no tty without --yes is refused"
    "apply1|120|no|apply --yes conforms dumpxml --inactive; the next start runs conforming (mem-merge=off, direct cache, host-model CPU)"
    "apply2|120|no|apply on a running guest says 'next cold boot'; the live guest changes only after destroy + start"
    "revert|90|no|revert restores the exact previous definition; revert --list; bad names refused"
    "status|120|no|status lists the running test guests on the CPUs libvirt reports; plain when piped"
    "repack|150|yes|repacking: a dedicated guest with no free CPU is admitted by moving a running shared guest's vCPU onto the other CPU; kernel, ledger and status agree"
    "repackc|240|yes|repacking after apply: definitions pinned by kvmtune (pins mark kept by libvirt) restart where they say and still move under existing_pins: keep"
    "rebal|150|yes|rebalance: dry run proposes, changes nothing; --apply moves a shared vCPU onto the other CPU (kernel, ledger, status agree)"
    "inv1|90|yes|dedicated guest with no room: refused with one line, never unpinned or on the dedicated CPU"
    "inv2|90|yes|ledger deleted under a running dedicated guest: rebuilt from what runs; the next dedicated start does not get its CPU"
    "inv3|150|yes|save A, start B dedicated, restore A: the restore is refused, A never runs on B's CPU"
    "inv4|90|yes|a definition copied with A's pins onto A's dedicated CPU: refused (warn finds no shared CPU; refuse says why)"
    "inv5|90|yes|<iothreadpin> kept at started; unpinned threads follow the emulator policy"
    "conv|180|no|converge: a warned start is queued, kvmtune converge conforms the definition (backup, revert byte for byte); Nova guests never queued; undefined guests dropped; libvirtd down keeps the queue"
    "convr|120|no|converge with on_violation: refuse: the refused start is queued; after kvmtune converge the next start is boot 1 and conforms"
)

# expected-to-fail-until-issue-11: id -> why the current binary fails it. A failure
# is reported as XFAIL (counted, not a failure of the run); a pass as XPASS.
# Issue 11 has landed: empty (d2 passes).
declare -A XFAIL_ISSUE_11=()

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

BIN=""
INSTALLED=0
ONLY=""
ARTIFACTS=""
REQUIRE_ALL=0
while [ $# -gt 0 ]; do
    case $1 in
        --bin) BIN=$2; shift 2 ;;
        --installed) INSTALLED=1; shift ;;
        --only) ONLY=$2; shift 2 ;;
        --artifacts) ARTIFACTS=$2; shift 2 ;;
        --require-all) REQUIRE_ALL=1; shift ;;
        --list) for c in "${CASES[@]}"; do IFS='|' read -r id _ _ d <<<"$c"; printf '%-4s %s\n' "$id" "$d"; done; exit 0 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

say() { printf '[e2e] %s\n' "$*"; }
fatal() { printf '[e2e] FATAL: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || fatal "must run as root"

if [ "$INSTALLED" = 1 ]; then
    [ -z "$BIN" ] || fatal "--bin and --installed exclude each other"
    KVMTUNE_BIN=/usr/bin/kvmtune
else
    BIN=${BIN:-$REPO/target/release/kvmtune}
    [ -x "$BIN" ] || fatal "no kvmtune binary at $BIN (cargo build --release, or --bin PATH)"
    BIN=$(readlink -f "$BIN")
    KVMTUNE_BIN=$INSTALL_BIN
fi

exec 9>/run/kvmtune-e2e.lock
flock -n 9 || fatal "another e2e run holds /run/kvmtune-e2e.lock"

E2E_WORK=${ARTIFACTS:-$(mktemp -d /tmp/kvmtune-e2e.XXXXXX)}
mkdir -p "$E2E_WORK/state" "$E2E_WORK/trace" "$E2E_WORK/xml" || fatal "cannot create $E2E_WORK"
E2E_WORK=$(cd "$E2E_WORK" && pwd)
E2E_TRACE=$E2E_WORK/trace
E2E_IMG_DIR=$IMG_DIR
E2E_START=$(date +%s)
E2E_SYSLOG_MODE=none
E2E_SYSLOG_FILE=""
E2E_SYSLOG_OFFSET=0
export E2E_DIR E2E_WORK E2E_TRACE E2E_IMG_DIR E2E_START KVMTUNE_BIN LEDGER POLICY PY

STATE=$E2E_WORK/state
CASE_PID=""
touch "$STATE/cleanup-pending"

# ---------------------------------------------------------------- cleanup

restore_file() { # BACKUP TARGET
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -f "$2"
        mv -f "$1" "$2"
    fi
}

cleanup() {
    local rc=$?
    [ -e "$STATE/cleanup-pending" ] || return
    rm -f "$STATE/cleanup-pending"
    trap '' INT TERM
    say "cleaning up"
    if [ -n "${CASE_PID:-}" ]; then # interrupted in the middle of a case
        kill -TERM "$CASE_PID" 2>/dev/null && wait_pid_gone "$CASE_PID" 15
    fi

    # Guests: through libvirtd (started again if it died mid-case).
    local leftovers
    leftovers=$(ls /etc/libvirt/qemu/"$E2E_PREFIX"*.xml /run/libvirt/qemu/"$E2E_PREFIX"*.xml 2>/dev/null)
    if [ -e "$STATE/libvirtd-was-started" ]; then
        if ! libvirtd_pid >/dev/null && [ -n "$leftovers" ]; then
            start_libvirtd >/dev/null 2>&1
        fi
        if libvirtd_pid >/dev/null; then
            cleanup_guests || say "could not remove every e2e guest: $(e2e_guests | tr '\n' ' ')"
        fi
        stop_libvirtd TERM >/dev/null 2>&1 || say "libvirtd did not stop"
    fi
    # QEMU processes of e2e guests that survived (libvirtd gone): ours, by pid.
    local p
    for p in $(procs_named qemu-system-x86); do
        if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q -- "-name guest=$E2E_PREFIX"; then
            say "killing leftover QEMU $p"
            kill -KILL "$p" 2>/dev/null
        fi
    done
    if [ -e "$STATE/virtlogd" ]; then
        p=$(cat /run/virtlogd.pid 2>/dev/null)
        [ -n "$p" ] && kill -TERM "$p" 2>/dev/null && wait_pid_gone "$p" 5
    fi

    # Hooks.
    rm -f "$RECORDER" "$E2E_RUN/trace-dir"
    rmdir "$E2E_RUN" 2>/dev/null
    [ -e "$STATE/created-hook-dir" ] && rmdir "$HOOK_DIR" 2>/dev/null
    if [ -e "$STATE/hook-installed" ]; then
        rm -f "$HOOK" "$INSTALL_BIN"
    fi
    [ -e "$STATE/hook-backed-up" ] && restore_file "$HOOK_BACKUP" "$HOOK"

    # Policy.
    if [ -e "$STATE/policy-written" ]; then
        rm -f "$POLICY" "$POLICY.tmp"
        [ -e "$STATE/policy-backed-up" ] && restore_file "$POLICY_BACKUP" "$POLICY"
        [ -e "$STATE/created-policy-dir" ] && rmdir "$(dirname "$POLICY")" 2>/dev/null
    fi

    # Syslog listener.
    if [ -e "$STATE/syslog-listener" ]; then
        p=$(cat "$STATE/syslog-listener")
        kill -TERM "$p" 2>/dev/null && wait_pid_gone "$p" 5
        [ -S /dev/log ] && rm -f /dev/log
        if [ -e "$STATE/devlog-link" ]; then
            ln -s "$(cat "$STATE/devlog-link")" /dev/log
        fi
    fi

    # /dev/kvm permissions.
    if [ -e "$STATE/kvm-perms" ]; then
        read -r mode owner group <"$STATE/kvm-perms"
        chown "$owner:$group" /dev/kvm && chmod "$mode" /dev/kvm
    fi

    rm -f "$IMG_DIR"/"$E2E_PREFIX"* 2>/dev/null
    [ -e "$STATE/created-img-dir" ] && rmdir "$IMG_DIR" 2>/dev/null
    say "logs and traces: $E2E_WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup

install_packages() {
    local missing=() c
    for c in libvirtd virsh virtlogd qemu-system-x86_64 qemu-img xmllint; do
        command -v "$c" >/dev/null || missing+=("$c")
    done
    [ ${#missing[@]} = 0 ] && return 0
    say "installing libvirt/QEMU (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update >"$E2E_WORK/apt.log" 2>&1 || { tail -n 20 "$E2E_WORK/apt.log"; fatal "apt-get update failed"; }
    # qemu-utils from backports may be installed and blocks QEMU 7.2: pin it to bookworm's
    local qu
    qu=$(apt-cache madison qemu-utils | awk '/bookworm\/main/ {print $3; exit}')
    apt-get install -y --no-install-recommends --allow-downgrades \
        libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
        "qemu-utils${qu:+=$qu}" libxml2-utils >>"$E2E_WORK/apt.log" 2>&1 ||
        { tail -n 30 "$E2E_WORK/apt.log"; fatal "apt-get install failed"; }
    for c in libvirtd virsh virtlogd qemu-system-x86_64 qemu-img; do
        command -v "$c" >/dev/null || fatal "$c still missing after apt-get install"
    done
}

preflight() {
    command -v "$PY" >/dev/null || fatal "python3 is required"
    [ -z "$(procs_named libvirtd)" ] || fatal "a libvirtd is already running (pid $(procs_named libvirtd | tr '\n' ' ')); stop it first"
    [ -z "$(procs_named virtqemud)" ] || fatal "virtqemud (modular libvirt) is running; stop it first"
    [ ! -e "$HOOK_BACKUP" ] && [ ! -L "$HOOK_BACKUP" ] ||
        fatal "$HOOK_BACKUP exists: an earlier run did not finish; restore it to $HOOK by hand"
    [ ! -e "$POLICY_BACKUP" ] ||
        fatal "$POLICY_BACKUP exists: an earlier run did not finish; restore it to $POLICY by hand"
    if [ "$INSTALLED" = 1 ]; then
        [ -x /usr/bin/kvmtune ] || fatal "--installed but /usr/bin/kvmtune is missing"
        [ -x "$HOOK" ] || fatal "--installed but $HOOK is missing or not executable"
        say "installed hook: $HOOK -> $(readlink -f "$HOOK")"
    fi
}

setup_host() {
    getent group kvm >/dev/null || groupadd -r kvm
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 ||
        useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt /etc/libvirt/hooks
    [ -d "$IMG_DIR" ] || { mkdir -p "$IMG_DIR" && touch "$STATE/created-img-dir"; }
    rm -f "$IMG_DIR"/"$E2E_PREFIX"* 2>/dev/null

    # libvirt re-probes QEMU before every start while /dev/kvm exists but the
    # qemu user cannot open it (~4 s per start here).  Debian's udev rule makes it
    # root:kvm 0660; do the same for the run and restore it afterwards.
    if [ -c /dev/kvm ] && [ "${E2E_KVM_PERMS:-1}" = 1 ]; then
        local cur
        cur=$(stat -c '%a %U %G' /dev/kvm)
        if [ "$cur" != "660 root kvm" ]; then
            echo "$cur" >"$STATE/kvm-perms"
            chown root:kvm /dev/kvm && chmod 0660 /dev/kvm
            say "/dev/kvm: $cur -> 660 root kvm for the run"
        fi
    fi

    # A stale ledger: it lists guests but no QEMU runs at all.
    if [ -n "$(ledger_query names 2>&1)" ] && [ -z "$(procs_named qemu-system-x86)" ]; then
        cp "$LEDGER" "$E2E_WORK/ledger.stale.json" 2>/dev/null
        rm -f "$LEDGER"
        say "removed stale $LEDGER (copy in artifacts)"
    fi
}

setup_syslog() {
    if [ -e /dev/log ]; then
        if command -v journalctl >/dev/null && [ -S /run/systemd/journal/socket ]; then
            E2E_SYSLOG_MODE=journal
        elif [ -f /var/log/syslog ] || [ -f /var/log/messages ]; then
            E2E_SYSLOG_MODE=file
            E2E_SYSLOG_FILE=/var/log/syslog
            [ -f "$E2E_SYSLOG_FILE" ] || E2E_SYSLOG_FILE=/var/log/messages
            E2E_SYSLOG_OFFSET=$(stat -c %s "$E2E_SYSLOG_FILE")
        else
            say "WARNING: /dev/log exists but neither journald nor /var/log/syslog can be read; log checks will fail"
        fi
        say "syslog: using the machine's /dev/log ($E2E_SYSLOG_MODE)"
    else
        if [ -L /dev/log ]; then # dangling link: move it aside for the run
            readlink /dev/log >"$STATE/devlog-link"
            rm -f /dev/log
        fi
        E2E_SYSLOG_FILE=$E2E_WORK/syslog.log
        : >"$E2E_SYSLOG_FILE"
        setsid "$PY" "$E2E_DIR/syslog_listener.py" /dev/log "$E2E_SYSLOG_FILE" "$STATE/syslog-ready" \
            </dev/null >"$E2E_WORK/syslog-listener.err" 2>&1 &
        echo $! >"$STATE/syslog-listener"
        local i
        for ((i = 0; i < 50; i++)); do
            [ -s "$STATE/syslog-ready" ] && [ -S /dev/log ] && break
            sleep 0.1
        done
        [ -S /dev/log ] || { cat "$E2E_WORK/syslog-listener.err"; fatal "syslog listener did not start"; }
        E2E_SYSLOG_MODE=listener
        say "syslog: listener on /dev/log -> $E2E_SYSLOG_FILE"
    fi
    export E2E_SYSLOG_MODE E2E_SYSLOG_FILE E2E_SYSLOG_OFFSET
}

install_recorder() {
    [ -d "$HOOK_DIR" ] || { mkdir -p "$HOOK_DIR" && touch "$STATE/created-hook-dir"; }
    mkdir -p "$E2E_RUN"
    echo "$E2E_TRACE" >"$E2E_RUN/trace-dir"
    install -m 0755 "$E2E_DIR/recorder-hook.sh" "$RECORDER"
}

backup_hook_and_policy() {
    if [ "$INSTALLED" = 0 ] && { [ -e "$HOOK" ] || [ -L "$HOOK" ]; }; then
        mv "$HOOK" "$HOOK_BACKUP"
        touch "$STATE/hook-backed-up"
        say "moved the existing $HOOK aside (restored at exit)"
    fi
    [ -d "$(dirname "$POLICY")" ] || { mkdir -p "$(dirname "$POLICY")" && touch "$STATE/created-policy-dir"; }
    if [ -e "$POLICY" ]; then
        cp -p "$POLICY" "$POLICY_BACKUP"
        touch "$STATE/policy-backed-up"
    fi
    touch "$STATE/policy-written"
    write_policy warn allow with-vcpus
}

install_kvmtune_hook() {
    install -m 0755 "$BIN" "$INSTALL_BIN"
    ln -s "$INSTALL_BIN" "$HOOK"
    touch "$STATE/hook-installed"
    say "hook: $HOOK -> $INSTALL_BIN (from $BIN)"
}

bring_up_libvirtd() {
    touch "$STATE/libvirtd-was-started"
    start_libvirtd || fatal "libvirtd did not come up"
    cleanup_guests >/dev/null 2>&1 || fatal "cannot remove leftover e2e guests: $(e2e_guests | tr '\n' ' ')"
}

# ---------------------------------------------------------------- cases

SHAPE_OK=1
host_shape() {
    local online nodes
    online=$(cat /sys/devices/system/cpu/online)
    nodes=$(cat /sys/devices/system/node/online 2>/dev/null || echo 0)
    if [ "$online" != "0-1" ] || [ "$nodes" != 0 ]; then
        SHAPE_OK=0
        say "host has CPUs $online, nodes $nodes: cases with exact 2-CPU expectations are skipped"
    fi
}

PASSED=0
FAILED=0
SKIPPED=0
XFAILED=0
FAILED_IDS=()
SKIPPED_IDS=()

wanted() { # ID
    [ -z "$ONLY" ] && return 0
    [ "$1" = env ] && return 0
    case ",$ONLY," in *",$1,"*) return 0 ;; esac
    return 1
}

run_case() { # "id|timeout|shape|description"
    local id t shape desc log rc t0 t1 secs
    IFS='|' read -r id t shape desc <<<"$1"
    wanted "$id" || return 0
    if [ "$shape" = yes ] && [ "$SHAPE_OK" = 0 ]; then
        printf 'SKIP  %-4s %s (needs online CPUs 0-1, one node)\n' "$id" "$desc"
        SKIPPED=$((SKIPPED + 1))
        SKIPPED_IDS+=("$id")
        return 0
    fi
    log=$E2E_WORK/case-$id.log
    t0=$(date +%s.%N)
    # E2E_XTRACE=1: trace every command of the case, with timestamps, into its log.
    # In the background + wait, so that a signal to run.sh is handled at once
    # (cleanup stops the case through CASE_PID).
    timeout -k 10 "$t" bash ${E2E_XTRACE:+-x} -c \
        'PS4="+ \${EPOCHREALTIME} "; set -u -o pipefail; . "$E2E_DIR/lib.sh"; . "$E2E_DIR/cases.sh"; . "$E2E_DIR/cases/admin.sh"; . "$E2E_DIR/cases/invariant.sh"; . "$E2E_DIR/cases/converge.sh"; "case_$1"' \
        _ "$id" >"$log" 2>&1 </dev/null &
    CASE_PID=$!
    wait "$CASE_PID"
    rc=$?
    CASE_PID=""
    t1=$(date +%s.%N)
    secs=$("$PY" -c "print(f'{$t1 - $t0:.1f}')")
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "FAIL: timed out after ${t}s" >>"$log"

    # Leave a clean slate: libvirtd up (a case may have died mid-restart), no guests.
    if ! libvirtd_pid >/dev/null; then
        start_libvirtd >>"$log" 2>&1 || { echo "FAIL: libvirtd did not come back" >>"$log"; rc=1; }
    fi
    cleanup_guests >>"$log" 2>&1 || echo "(warning: could not remove every guest after $id)" >>"$log"

    if [ "$rc" = 0 ] && [ -n "${XFAIL_ISSUE_11[$id]:-}" ]; then
        printf 'XPASS %-4s %s (%ss; expected to fail until issue 11: remove it from XFAIL_ISSUE_11)\n' "$id" "$desc" "$secs"
        PASSED=$((PASSED + 1))
    elif [ "$rc" = 0 ]; then
        printf 'PASS  %-4s %s (%ss)\n' "$id" "$desc" "$secs"
        PASSED=$((PASSED + 1))
    elif [ -n "${XFAIL_ISSUE_11[$id]:-}" ]; then
        printf 'XFAIL %-4s %s (%ss): expected-to-fail-until-issue-11: %s -- got: %s\n' "$id" "$desc" "$secs" \
            "${XFAIL_ISSUE_11[$id]}" "$(grep -m1 '^FAIL:' "$log" | cut -c7-)"
        XFAILED=$((XFAILED + 1))
    else
        printf 'FAIL  %-4s %s (%ss)\n' "$id" "$desc" "$secs"
        tail -n 40 "$log" | sed 's/^/    | /'
        FAILED=$((FAILED + 1))
        FAILED_IDS+=("$id")
    fi
}

# ---------------------------------------------------------------- main

install_packages
preflight
setup_host
setup_syslog
backup_hook_and_policy
install_recorder
host_shape
say "libvirt $(libvirtd --version | awk '{print $NF}'), $(qemu-system-x86_64 --version | head -n 1)"

if [ "$INSTALLED" = 0 ]; then
    # Phase 1: the environment, with only the recorder hook (no kvmtune).
    bring_up_libvirtd
    run_case "${CASES[0]}"
    stop_libvirtd TERM || fatal "could not stop libvirtd"
    # Phase 2: kvmtune is the hook; libvirtd reads hooks only when it starts.
    install_kvmtune_hook
    bring_up_libvirtd
else
    bring_up_libvirtd
    run_case "${CASES[0]}"
fi
say "kvmtune: $("$KVMTUNE_BIN" --version 2>&1 | head -n 1)"

for c in "${CASES[@]:1}"; do
    run_case "$c"
done

if [ "$FAILED" = 0 ]; then
    say "$PASSED passed, 0 failed, $SKIPPED skipped, $XFAILED xfail"
else
    say "$PASSED passed, $FAILED failed, $SKIPPED skipped, $XFAILED xfail (failed: ${FAILED_IDS[*]})"
fi
if [ "$REQUIRE_ALL" = 1 ] && [ "$SKIPPED" -gt 0 ]; then
    say "FAIL: --require-all and $SKIPPED case(s) skipped: ${SKIPPED_IDS[*]}"
    exit 1
fi
[ "$FAILED" = 0 ]
