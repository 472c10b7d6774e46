# shellcheck shell=bash
# Helpers shared by run.sh and the cases (cases.sh).  Sourced, never executed.
#
# Everything here reads its configuration from E2E_* variables exported by
# run.sh, so a case can run in its own `bash -c` under `timeout`.

E2E_PREFIX=kvmtune-e2e-
LEDGER=${LEDGER:-/run/kvmtune/ledger.json}
POLICY=${POLICY:-/etc/kvmtune/policy.yaml}
VIRSH_TIMEOUT=${VIRSH_TIMEOUT:-60}
# The distribution's python3 (a pyenv shim in PATH can cost 0.4 s per call).
if [ -z "${PY:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi
fi

# ---------------------------------------------------------------- reporting

note() { printf '  .. %s\n' "$*"; }

# Abort the current case (cases run in their own process).
die() {
    printf 'FAIL: %s\n' "$*"
    exit 1
}

expect_eq() { # ACTUAL EXPECTED WHAT
    [ "$1" = "$2" ] || die "$3: expected '$2', got '$1'"
}

# ---------------------------------------------------------------- libvirt

V() { timeout -k 5 "$VIRSH_TIMEOUT" virsh -q -c qemu:///system "$@"; }

libvirtd_pid() {
    local pid
    pid=$(cat /run/libvirtd.pid 2>/dev/null) || return 1
    [ -n "$pid" ] && pid_alive "$pid" && echo "$pid"
}

pid_alive() { # a zombie counts as dead
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# PIDs of live (not zombie) processes whose comm is exactly NAME (no procps needed).
procs_named() {
    local f pid
    for f in /proc/[0-9]*/comm; do
        [ "$(cat "$f" 2>/dev/null)" = "$1" ] || continue
        pid=${f#/proc/}
        pid=${pid%/comm}
        pid_alive "$pid" && echo "$pid"
    done
}

wait_pid_gone() { # PID TIMEOUT_S
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        pid_alive "$1" || return 0
        sleep 0.1
    done
    return 1
}

libvirtd_log_tail() {
    echo "---- last 40 lines of $E2E_WORK/libvirtd.log ----"
    tail -n 40 "$E2E_WORK/libvirtd.log" 2>/dev/null
    echo "---- end ----"
}

start_libvirtd() {
    if [ -z "$(procs_named virtlogd)" ]; then
        virtlogd -d || { echo "virtlogd failed to start"; return 1; }
        echo started >"$E2E_WORK/state/virtlogd"
    fi
    # Log to our own file; util.hook at debug level shows every hook call.
    LIBVIRT_LOG_OUTPUTS="1:file:$E2E_WORK/libvirtd.log" \
        LIBVIRT_LOG_FILTERS="1:util.hook 3:util 3:qemu 3:rpc 3:conf 3:security 3:cgroup" \
        libvirtd -d || { echo "libvirtd -d failed"; libvirtd_log_tail; return 1; }
    echo started >"$E2E_WORK/state/libvirtd"
    local i
    for ((i = 0; i < 300; i++)); do
        if timeout 5 virsh -q -c qemu:///system version >/dev/null 2>&1; then
            return 0
        fi
        if [ "$i" -gt 10 ] && [ -z "$(procs_named libvirtd)" ]; then
            echo "libvirtd exited during startup"
            libvirtd_log_tail
            return 1
        fi
        sleep 0.1
    done
    echo "libvirtd did not answer within 30s"
    libvirtd_log_tail
    return 1
}

stop_libvirtd() { # SIGNAL (default TERM)
    local pid
    pid=$(libvirtd_pid) || return 0
    kill -"${1:-TERM}" "$pid" 2>/dev/null
    if ! wait_pid_gone "$pid" 15; then
        echo "libvirtd $pid ignored SIG${1:-TERM} for 15s, killing"
        kill -KILL "$pid" 2>/dev/null
        wait_pid_gone "$pid" 5 || { echo "libvirtd $pid does not die"; return 1; }
    fi
    rm -f "$E2E_WORK/state/libvirtd"
}

# All kvmtune-e2e-* guests libvirt knows (defined or transient, any state).
e2e_guests() { V list --all --name 2>/dev/null | grep "^$E2E_PREFIX" || true; }

running_names() { V list --name 2>/dev/null | sed '/^$/d' | sort; }

# Destroy and undefine every e2e guest; remove their images and save files.
cleanup_guests() {
    local n
    for n in $(e2e_guests); do
        V destroy "$n" >/dev/null 2>&1
        V undefine --managed-save "$n" >/dev/null 2>&1 || V undefine "$n" >/dev/null 2>&1
    done
    # Guests whose qemu outlived a libvirtd that is gone: nothing to do here,
    # the next libvirtd reconnects to them and the loop above handles them.
    rm -f "$E2E_IMG_DIR"/"$E2E_PREFIX"*.qcow2 "$E2E_IMG_DIR"/"$E2E_PREFIX"*.save 2>/dev/null
    [ -z "$(e2e_guests)" ]
}

qemu_pid() { cat "/run/libvirt/qemu/$1.pid" 2>/dev/null; }

# vCPU thread ids of a running guest, "ID TID" per line, from the status file.
vcpu_tids() {
    sed -n "s/.*<vcpu id='\([0-9]*\)' pid='\([0-9]*\)'.*/\1 \2/p" "/run/libvirt/qemu/$1.xml"
}

thread_cpus() { # PID TID
    sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "/proc/$1/task/$2/status" 2>/dev/null
}

# Print every thread of a guest's QEMU: TID, comm, Cpus_allowed_list.
dump_threads() {
    local pid t
    pid=$(qemu_pid "$1") || return
    for t in /proc/"$pid"/task/*; do
        printf '    %s\t%-18s\t%s\n' "${t##*/}" "$(cat "$t/comm" 2>/dev/null)" \
            "$(thread_cpus "$pid" "${t##*/}")"
    done
}

# check_affinity GUEST VCPU_CPUS EMULATOR_CPUS
# Every vCPU thread (from the status file) must have Cpus_allowed_list ==
# VCPU_CPUS and every other QEMU thread == EMULATOR_CPUS ("" = don't check).
check_affinity() {
    local name=$1 want_vcpu=$2 want_emu=$3 pid line id tid got t bad=0 nvcpu=0
    pid=$(qemu_pid "$name") || die "$name: no pid file"
    local -A is_vcpu=()
    while read -r id tid; do
        [ -n "$tid" ] || continue
        nvcpu=$((nvcpu + 1))
        is_vcpu[$tid]=1
        got=$(thread_cpus "$pid" "$tid")
        if [ "$got" != "$want_vcpu" ]; then
            echo "  vCPU $id (tid $tid, $(cat "/proc/$pid/task/$tid/comm" 2>/dev/null)): Cpus_allowed_list=$got, want $want_vcpu"
            bad=1
        fi
    done < <(vcpu_tids "$name")
    [ "$nvcpu" -gt 0 ] || die "$name: status file lists no <vcpu pid=...>"
    if [ -n "$want_emu" ]; then
        for t in /proc/"$pid"/task/*; do
            tid=${t##*/}
            [ -n "${is_vcpu[$tid]:-}" ] && continue
            got=$(thread_cpus "$pid" "$tid")
            [ -n "$got" ] || continue # thread exited meanwhile
            if [ "$got" != "$want_emu" ]; then
                echo "  emulator thread $tid ($(cat "$t/comm" 2>/dev/null)): Cpus_allowed_list=$got, want $want_emu"
                bad=1
            fi
        done
    fi
    if [ "$bad" = 1 ]; then
        echo "  threads of $name:"
        dump_threads "$name"
        return 1
    fi
    return 0
}

# `virsh vcpuinfo` must show "CPU Affinity: PATTERN" for every vCPU.
check_vcpuinfo() { # GUEST PATTERN
    local out aff
    out=$(V vcpuinfo "$1") || die "virsh vcpuinfo $1 failed"
    aff=$(printf '%s\n' "$out" | sed -n 's/^CPU Affinity:[[:space:]]*//p' | sort -u)
    [ -n "$aff" ] || die "virsh vcpuinfo $1 printed no CPU Affinity lines"
    if [ "$aff" != "$2" ]; then
        printf '%s\n' "$out" | sed 's/^/    /'
        die "virsh vcpuinfo $1: CPU Affinity '$(echo $aff)', want '$2' for every vCPU"
    fi
}

# ---------------------------------------------------------------- guests

# guest_xml NAME [options]  -> domain XML on stdout
#   --vcpus N            (1)          --mem MIB         (64)
#   --cpu MODE|none      (host-model; host-passthrough, maximum, none = no <cpu>)
#   --cache MODE|none-attr (none)     --io native|threads (unset)
#   --disk PATH          ($E2E_IMG_DIR/NAME.qcow2)
#   --vcpupin "V:SET ..."              --emulatorpin SET
#   --numatune MODE:NODESET            --nosharepages
#   --net-queues N       (add <interface type='ethernet'> virtio + vhost queues)
#   --iothreads N        (<iothreads>N</iothreads>)
#   --iothreadpin "ID:SET ..."
guest_xml() {
    local name=$1; shift
    local vcpus=1 mem=64 cpu=host-model cache=none io="" disk="" vcpupin="" emupin=""
    local numatune="" nosharepages=0 netq="" iothreads="" iopin=""
    while [ $# -gt 0 ]; do
        case $1 in
            --vcpus) vcpus=$2; shift 2 ;;
            --mem) mem=$2; shift 2 ;;
            --cpu) cpu=$2; shift 2 ;;
            --cache) cache=$2; shift 2 ;;
            --io) io=$2; shift 2 ;;
            --disk) disk=$2; shift 2 ;;
            --vcpupin) vcpupin=$2; shift 2 ;;
            --emulatorpin) emupin=$2; shift 2 ;;
            --numatune) numatune=$2; shift 2 ;;
            --nosharepages) nosharepages=1; shift ;;
            --net-queues) netq=$2; shift 2 ;;
            --iothreads) iothreads=$2; shift 2 ;;
            --iothreadpin) iopin=$2; shift 2 ;;
            *) echo "guest_xml: unknown option $1" >&2; return 2 ;;
        esac
    done
    [ -n "$disk" ] || disk="$E2E_IMG_DIR/$name.qcow2"
    local driver="<driver name='qemu' type='qcow2'"
    [ "$cache" = none-attr ] || driver+=" cache='$cache'"
    [ -z "$io" ] || driver+=" io='$io'"
    driver+="/>"

    echo "<domain type='qemu'>"
    echo "  <name>$name</name>"
    echo "  <memory unit='MiB'>$mem</memory>"
    echo "  <currentMemory unit='MiB'>$mem</currentMemory>"
    if [ "$nosharepages" = 1 ]; then
        echo "  <memoryBacking>"
        echo "    <nosharepages/>"
        echo "  </memoryBacking>"
    fi
    echo "  <vcpu placement='static'>$vcpus</vcpu>"
    [ -z "$iothreads" ] || echo "  <iothreads>$iothreads</iothreads>"
    if [ -n "$vcpupin$emupin$iopin" ]; then
        echo "  <cputune>"
        local p
        for p in $vcpupin; do
            echo "    <vcpupin vcpu='${p%%:*}' cpuset='${p#*:}'/>"
        done
        [ -z "$emupin" ] || echo "    <emulatorpin cpuset='$emupin'/>"
        for p in $iopin; do
            echo "    <iothreadpin iothread='${p%%:*}' cpuset='${p#*:}'/>"
        done
        echo "  </cputune>"
    fi
    if [ -n "$numatune" ]; then
        echo "  <numatune>"
        echo "    <memory mode='${numatune%%:*}' nodeset='${numatune#*:}'/>"
        echo "  </numatune>"
    fi
    echo "  <os>"
    echo "    <type arch='x86_64' machine='pc'>hvm</type>"
    echo "  </os>"
    [ "$cpu" = none ] || echo "  <cpu mode='$cpu'/>"
    echo "  <on_poweroff>destroy</on_poweroff>"
    echo "  <on_reboot>restart</on_reboot>"
    echo "  <on_crash>destroy</on_crash>"
    echo "  <devices>"
    echo "    <emulator>/usr/bin/qemu-system-x86_64</emulator>"
    echo "    <disk type='file' device='disk'>"
    echo "      $driver"
    echo "      <source file='$disk'/>"
    echo "      <target dev='vda' bus='virtio'/>"
    echo "    </disk>"
    if [ -n "$netq" ]; then
        echo "    <interface type='ethernet'>"
        echo "      <model type='virtio'/>"
        echo "      <driver name='vhost' queues='$netq'/>"
        echo "    </interface>"
    fi
    echo "    <serial type='pty'/>"
    echo "    <memballoon model='none'/>"
    echo "  </devices>"
    echo "</domain>"
}

# define_guest NAME [guest_xml options]: make the qcow2, write the XML, define.
define_guest() {
    local name=$1
    case $name in "$E2E_PREFIX"*) ;; *) die "guest name $name lacks prefix $E2E_PREFIX" ;; esac
    mkdir -p "$E2E_WORK/xml"
    qemu-img create -q -f qcow2 "$E2E_IMG_DIR/$name.qcow2" 64M ||
        die "qemu-img create $name failed"
    chown libvirt-qemu:libvirt-qemu "$E2E_IMG_DIR/$name.qcow2" 2>/dev/null
    guest_xml "$@" >"$E2E_WORK/xml/$name.xml" || die "guest_xml $* failed"
    V define "$E2E_WORK/xml/$name.xml" >/dev/null || die "virsh define $name failed"
}

start_guest() { # NAME: start, die with virsh's error if it fails
    local out
    out=$(V start "$1" 2>&1) || die "virsh start $1 failed: $out"
}

# ---------------------------------------------------------------- policy

# write_policy [on_violation] [on_error] [emulator]
write_policy() {
    mkdir -p "$(dirname "$POLICY")"
    cat >"$POLICY.tmp" <<EOF
version: 1
on_violation: ${1:-warn}
on_error: ${2:-allow}
host:
  reserved_cpus: none
  irq_cpus: none
  allow_cpu0: false
defaults:
  emulator: ${3:-with-vcpus}
  disk_cache: none
  cpu_mode: host-model
EOF
    mv "$POLICY.tmp" "$POLICY"
}

# ---------------------------------------------------------------- ledger

# ledger_query names            -> sorted guest names, one per line
# ledger_query get GUEST FIELD  -> the field's value (JSON scalars as text)
# A missing ledger file reads as no guests; a malformed one exits 3.
ledger_query() {
    "$PY" - "$LEDGER" "$@" <<'PY'
import json, os, sys
path, cmd, *args = sys.argv[1:]
if not os.path.exists(path):
    data = {"version": 1, "guests": {}}
else:
    try:
        with open(path) as f:
            data = json.load(f)
    except Exception as e:
        print(f"ledger {path} unreadable: {e}", file=sys.stderr)
        sys.exit(3)
if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("guests"), dict):
    print(f"ledger {path} is not {{\"version\":1,\"guests\":{{...}}}}: {json.dumps(data)[:300]}", file=sys.stderr)
    sys.exit(3)
guests = data["guests"]
if cmd == "names":
    for name in sorted(guests):
        print(name)
elif cmd == "get":
    entry = guests.get(args[0])
    if not isinstance(entry, dict) or args[1] not in entry:
        sys.exit(1)
    v = entry[args[1]]
    print(v if isinstance(v, str) else json.dumps(v))
PY
}

ledger_dump() { echo "  ledger: $(cat "$LEDGER" 2>&1 | head -c 2000)"; }

# Wait (up to TIMEOUT_S) until the ledger's guest names equal `virsh list --name`.
wait_ledger_matches_running() { # TIMEOUT_S
    local i led run
    for ((i = 0; i < $1 * 5; i++)); do
        led=$(ledger_query names 2>&1)
        run=$(running_names)
        [ "$led" = "$run" ] && return 0
        sleep 0.2
    done
    echo "  ledger names:    $(echo $led)"
    echo "  virsh list --name: $(echo $run)"
    ledger_dump
    return 1
}

# ---------------------------------------------------------------- syslog

# All syslog text captured since the suite started.
syslog_all() {
    case $E2E_SYSLOG_MODE in
        listener) cat "$E2E_SYSLOG_FILE" 2>/dev/null ;;
        journal) journalctl -q --no-pager -o short-iso --since "@$E2E_START" 2>/dev/null ;;
        file) tail -c +"$((E2E_SYSLOG_OFFSET + 1))" "$E2E_SYSLOG_FILE" 2>/dev/null ;;
        *) return 1 ;;
    esac
}

syslog_mark() { syslog_all | wc -l; }

# kvmtune's lines logged after MARK.
syslog_kvmtune_since() { # MARK
    syslog_all | tail -n +"$(($1 + 1))" | grep -E 'kvmtune(\[[0-9]+\])?:' || true
}

# wait_log MARK TIMEOUT_S [-i] REGEX...: print the first kvmtune line after MARK
# matching every REGEX (grep -E); fail if none within TIMEOUT_S.
wait_log() {
    local mark=$1 t=$2 icase="" i lines
    shift 2
    [ "${1:-}" = -i ] && { icase=-i; shift; }
    [ "$E2E_SYSLOG_MODE" != none ] || { echo "  no syslog capture on this machine" >&2; return 1; }
    for ((i = 0; i < t * 5; i++)); do
        lines=$(syslog_kvmtune_since "$mark")
        local re
        for re in "$@"; do
            lines=$(printf '%s\n' "$lines" | grep -E $icase -e "$re") || break
        done
        if [ -n "$lines" ]; then
            printf '%s\n' "$lines" | head -n 1
            return 0
        fi
        sleep 0.2
    done
    {
        echo "  no kvmtune syslog line matching all of: $* ${icase:+(case-insensitive)}"
        echo "  kvmtune lines since the case started:"
        syslog_kvmtune_since "$mark" | tail -n 20 | sed 's/^/    /'
    } >&2
    return 1
}
