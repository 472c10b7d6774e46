# shellcheck shell=bash
# The end-to-end cases.  Sourced by run.sh; each case_* runs in its own bash
# process under `timeout`, prints what it checks, and exits non-zero (via die)
# on the first failed expectation.  run.sh destroys/undefines every
# kvmtune-e2e-* guest after each case, so a case only cleans up what matters
# for its own assertions.
#
# Host shape assumed by the exact expectations: online CPUs 0-1 and one NUMA
# node (node 0).  With allow_cpu0: false and no reserved CPUs, guests get CPU 1;
# `emulator: housekeeping` puts the other QEMU threads on CPU 0.

GUEST_RE_END='([^A-Za-z0-9_.-]|$)'

# A regex matching "guest=NAME" (optionally quoted) as a whole word.
guest_re() { printf "guest=['\"]?%s['\"]?%s" "$1" "$GUEST_RE_END"; }

# Poll check_affinity quietly for up to 3 s (a hook may finish its work just
# after `virsh start` returns), then once more loudly.
expect_affinity() { # GUEST VCPU_CPUS EMULATOR_CPUS
    local i
    for ((i = 0; i < 15; i++)); do
        check_affinity "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    check_affinity "$@" || die "$1: thread affinity is not vCPUs=$2 emulator=${3:-any}"
}

wait_not_in_ledger() { # GUEST TIMEOUT_S
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        ledger_query names 2>/dev/null | grep -qx "$1" || return 0
        sleep 0.2
    done
    ledger_dump
    return 1
}

# ---------------------------------------------------------------- env

# The environment facts the suite and kvmtune build on, checked with a trivial
# recording hook in qemu.d/ (without kvmtune in the default mode; with
# --installed kvmtune is the main hook and runs first under a lenient policy).
case_env() {
    local g=${E2E_PREFIX}env calls st th id tid comm cg want pid
    write_policy warn allow with-vcpus
    define_guest "$g" --vcpus 2 --cache none --io native
    start_guest "$g"

    calls=$(awk -v g="$g" '$2 == g {print $3, $4, $5}' "$E2E_TRACE/calls.log")
    want=$'prepare begin -\nstart begin -\nstarted begin -'
    [ "$calls" = "$want" ] || die "hook calls for a start: got [$calls], want [$want]"
    note "start calls the hook with: $(echo "$calls" | tr '\n' ',')"

    for op in prepare start started; do
        f=$(ls "$E2E_TRACE/$g.$op".*.in.xml 2>/dev/null | head -n 1)
        [ -s "$f" ] || die "no stdin recorded at $op"
        grep -q "^<domain type='qemu'" "$f" || die "stdin at $op is not a <domain>: $(head -c 200 "$f")"
        grep -q "<name>$g</name>" "$f" || die "stdin at $op lacks <name>$g</name>"
    done
    note "the domain XML is on stdin at prepare/start/started"

    st=$(ls "$E2E_TRACE/$g".started.*.status.xml 2>/dev/null | head -n 1)
    th=${st%.status.xml}.threads
    [ -s "$st" ] || die "no /run/libvirt/qemu/$g.xml at started"
    grep -q '^<domstatus' "$st" || die "status file is not a <domstatus>"
    [ "$(grep -c "<vcpu id='[0-9]*' pid='[0-9]*'/>" "$st")" = 2 ] ||
        die "status file at started does not list 2 <vcpu id= pid=/>: $(grep -A3 '<vcpus>' "$st")"
    while read -r id tid; do
        comm=$(awk -F'\t' -v t="$tid" '$1 == t {print $2}' "$th")
        case $comm in
            "CPU $id/TCG" | "CPU $id/KVM") ;;
            *) die "vCPU $id tid $tid is named '$comm', want 'CPU $id/TCG'" ;;
        esac
        cg=$(awk -F'\t' -v t="$tid" '$1 == t {print $4}' "$th")
        if [ -z "$cg" ]; then # no cgroup v1 cpuset: look at the v2 path
            pid=$(qemu_pid "$g")
            cg=$(sed -n 's/^0:://p' "/proc/$pid/task/$tid/cgroup")
        fi
        case $cg in
            */vcpu"$id") ;;
            *) die "vCPU $id thread is in cpuset cgroup '$cg', want .../vcpu$id" ;;
        esac
        note "vCPU $id: tid $tid '$comm', cpuset cgroup $cg"
    done < <(sed -n "s/.*<vcpu id='\([0-9]*\)' pid='\([0-9]*\)'.*/\1 \2/p" "$st")
    note "emulator threads: $(awk -F'\t' '$2 !~ /^CPU / {print $2 "@" $4}' "$th" | sort -u | tr '\n' ' ')"

    pid=$(qemu_pid "$g")
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q '"cache":{"direct":true' ||
        die "QEMU command line lacks \"cache\":{\"direct\":true} for cache='none'"
    note "cache='none' io='native' works on $E2E_IMG_DIR ($(df --output=fstype "$E2E_IMG_DIR" | tail -n 1))"

    V destroy "$g" >/dev/null || die "virsh destroy $g failed"
    calls=$(awk -v g="$g" '$2 == g {print $3, $4, $5}' "$E2E_TRACE/calls.log" | tail -n 2)
    want=$'stopped end -\nrelease end -'
    [ "$calls" = "$want" ] || die "hook calls for a destroy: got [$calls], want [$want]"
    note "destroy calls the hook with: $(echo "$calls" | tr '\n' ',')"
}

# ---------------------------------------------------------------- a

case_a1() { # emulator: with-vcpus -> every QEMU thread on CPU 1
    local g=${E2E_PREFIX}a1
    write_policy warn allow with-vcpus
    define_guest "$g" --vcpus 2
    start_guest "$g"
    expect_affinity "$g" 1 1
    note "vCPU and emulator threads all have Cpus_allowed_list 1"
    check_vcpuinfo "$g" "-y"
    note "virsh vcpuinfo: CPU Affinity -y for every vCPU"
}

case_a2() { # emulator: housekeeping -> vCPUs on CPU 1, the rest on CPU 0
    local g=${E2E_PREFIX}a2
    write_policy warn allow housekeeping
    define_guest "$g" --vcpus 2
    start_guest "$g"
    expect_affinity "$g" 1 0
    note "vCPU threads on 1, emulator threads on 0"
    check_vcpuinfo "$g" "-y"
}

case_a3() { # the ledger entry and the log lines of one started guest
    local g=${E2E_PREFIX}a3 mark uuid v line
    write_policy warn allow with-vcpus
    mark=$(syslog_mark)
    define_guest "$g" --vcpus 1
    start_guest "$g"
    uuid=$(V domuuid "$g") || die "virsh domuuid failed"
    v=$(ledger_query get "$g" uuid) || { ledger_dump; die "ledger has no uuid for $g"; }
    expect_eq "$v" "$uuid" "ledger uuid of $g"
    v=$(ledger_query get "$g" cpus) || { ledger_dump; die "ledger has no cpus for $g"; }
    expect_eq "$v" "1" "ledger cpus of $g"
    v=$(ledger_query get "$g" nodes) || { ledger_dump; die "ledger has no nodes for $g"; }
    expect_eq "$v" "0" "ledger nodes of $g"
    note "ledger: uuid=$uuid cpus=1 nodes=0"
    for stage in prepare started; do
        line=$(wait_log "$mark" 5 "$(guest_re "$g")" "stage=$stage") ||
            die "no syslog line 'guest=$g stage=$stage'"
        note "syslog: $line"
    done
    V destroy "$g" >/dev/null || die "virsh destroy $g failed"
    wait_not_in_ledger "$g" 5 || die "$g still in the ledger after destroy"
    note "destroy removed $g from the ledger"
}

# ---------------------------------------------------------------- b

case_b1() { # on_violation: refuse + host-passthrough -> virsh start fails with the reason
    local g=${E2E_PREFIX}b1 out reason after state
    write_policy refuse allow with-vcpus
    # Otherwise as compliant as we can make it, so the reason is the CPU mode.
    define_guest "$g" --vcpus 1 --cpu host-passthrough --cache none --io native --nosharepages
    if out=$(V start "$g" 2>&1); then
        die "virsh start $g succeeded; on_violation: refuse must block host-passthrough"
    fi
    printf '%s\n' "$out" | sed 's/^/    virsh: /'
    reason=$(printf '%s\n' "$out" | grep -o "kvmtune: guest '$g'.*") ||
        die "virsh's error does not contain \"kvmtune: guest '$g'\" (did the hook refuse at prepare?)"
    printf '%s\n' "$reason" | grep -q 'host-passthrough' ||
        die "kvmtune's reason does not name host-passthrough: $reason"
    after=$(printf '%s\n' "$out" | sed -n "/kvmtune: guest '$g'/,\$p" | sed 1d | sed '/^[[:space:]]*$/d')
    [ -z "$after" ] || die "kvmtune's reason is more than one line: $reason / $after"
    printf '%s\n' "$out" | grep -q 'Hook script execution failed' ||
        die "the start did not fail in the hook"
    state=$(V domstate "$g")
    expect_eq "$state" "shut off" "state of refused $g"
    wait_not_in_ledger "$g" 5 || die "refused $g is in the ledger"
    note "refused with: $reason"
}

case_b2() { # on_violation: warn + cache='writeback' -> starts, violation logged
    local g=${E2E_PREFIX}b2 mark line
    write_policy warn allow with-vcpus
    mark=$(syslog_mark)
    define_guest "$g" --vcpus 1 --cache writeback
    start_guest "$g"
    expect_eq "$(V domstate "$g")" "running" "state of $g"
    line=$(wait_log "$mark" 5 "$(guest_re "$g")" 'violation' 'cache') ||
        die "no kvmtune syslog line with guest=$g, 'violation' and 'cache'"
    note "started; syslog: $line"
}

# ---------------------------------------------------------------- c

# Live XML after restore: every vCPU pinned to CPU 1, every disk cache='none'.
check_restored_xml() { # FILE VCPUS
    "$PY" - "$1" "$2" <<'PY'
import sys
import xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
n = int(sys.argv[2])
bad = []
pins = {p.get("vcpu"): p.get("cpuset") for p in root.findall("./cputune/vcpupin")}
for v in range(n):
    if pins.get(str(v)) != "1":
        bad.append(f"vcpupin vcpu={v}: cpuset={pins.get(str(v))!r}, want '1'")
for d in root.findall("./devices/disk[@device='disk']"):
    drv = d.find("driver")
    cache = drv.get("cache") if drv is not None else None
    if cache != "none":
        bad.append(f"disk {d.find('target').get('dev')}: cache={cache!r}, want 'none'")
for b in bad:
    print("  " + b)
sys.exit(1 if bad else 0)
PY
}

case_c() { # save + restore: restore hook pins and fixes the cache; definition untouched
    local g=${E2E_PREFIX}c save="$E2E_IMG_DIR/${E2E_PREFIX}c.save" mark
    write_policy warn allow with-vcpus
    define_guest "$g" --vcpus 2 --cache writeback
    V dumpxml --inactive "$g" >"$E2E_WORK/c.inactive.before.xml" || die "dumpxml --inactive failed"
    start_guest "$g"
    V save "$g" "$save" >/dev/null || die "virsh save failed"
    mark=$(syslog_mark)
    local out
    out=$(V restore "$save" 2>&1) || die "virsh restore failed: $out"
    V dumpxml "$g" >"$E2E_WORK/c.live.after.xml" || die "dumpxml failed"
    V dumpxml --inactive "$g" >"$E2E_WORK/c.inactive.after.xml" || die "dumpxml --inactive failed"
    if ! check_restored_xml "$E2E_WORK/c.live.after.xml" 2; then
        grep -E "<vcpu |<vcpupin|<emulatorpin|<driver name='qemu'" "$E2E_WORK/c.live.after.xml" | sed 's/^/    /'
        die "restored guest's live XML is not pinned to CPU 1 with cache='none'"
    fi
    note "live XML after restore: vcpupin 0,1 -> 1, cache='none'"
    if ! cmp -s "$E2E_WORK/c.inactive.before.xml" "$E2E_WORK/c.inactive.after.xml"; then
        diff -u "$E2E_WORK/c.inactive.before.xml" "$E2E_WORK/c.inactive.after.xml" | head -n 40
        die "dumpxml --inactive changed across save/restore"
    fi
    note "dumpxml --inactive byte-identical to before"
    expect_affinity "$g" 1 ""
    note "restored vCPU threads on CPU 1"
    wait_ledger_matches_running 5 || die "ledger does not match running guests after restore"
}

# ---------------------------------------------------------------- d

case_d() { # 8 guests started in parallel; ledger == running; empty after destroy
    local i n names=() failed=0 t0 t1
    write_policy warn allow with-vcpus
    for i in 1 2 3 4 5 6 7 8; do
        n=${E2E_PREFIX}d$i
        names+=("$n")
        define_guest "$n" --vcpus 1
    done
    t0=$(date +%s.%N)
    for n in "${names[@]}"; do
        (V start "$n" >"$E2E_WORK/d.$n.out" 2>&1; echo $? >"$E2E_WORK/d.$n.rc") &
    done
    wait
    t1=$(date +%s.%N)
    for n in "${names[@]}"; do
        if [ "$(cat "$E2E_WORK/d.$n.rc")" != 0 ]; then
            echo "  $n: $(cat "$E2E_WORK/d.$n.out")"
            failed=1
        fi
    done
    [ "$failed" = 0 ] || die "not every parallel start succeeded"
    note "8 parallel starts took $("$PY" -c "print(round($t1 - $t0, 1))")s"
    [ "$(running_names | grep -c "^${E2E_PREFIX}d")" = 8 ] || die "virsh list does not show 8 running guests"
    wait_ledger_matches_running 5 || die "ledger guest names != virsh list --name"
    note "ledger names == virsh list --name (8 guests)"
    for n in "${names[@]}"; do
        (V destroy "$n" >/dev/null 2>&1) &
    done
    wait
    [ -z "$(running_names)" ] || die "guests still running after destroy: $(running_names)"
    wait_ledger_matches_running 5 || die "ledger not empty after destroying every guest"
    note "ledger empty after destroying all"
}

# ---------------------------------------------------------------- e

case_e1() { # libvirtd killed (SIGKILL) and started again under running guests: ledger still right
    local g1=${E2E_PREFIX}e1a g2=${E2E_PREFIX}e1b p1 p2
    write_policy warn allow with-vcpus
    define_guest "$g1" --vcpus 1
    define_guest "$g2" --vcpus 2
    start_guest "$g1"
    start_guest "$g2"
    p1=$(qemu_pid "$g1"); p2=$(qemu_pid "$g2")
    wait_ledger_matches_running 5 || die "ledger wrong before the restart"
    stop_libvirtd KILL || die "could not kill libvirtd"
    pid_alive "$p1" && pid_alive "$p2" || die "QEMU died with libvirtd"
    note "libvirtd killed with SIGKILL; both QEMUs still run"
    start_libvirtd || die "libvirtd did not come back"
    expect_eq "$(running_names | tr '\n' ' ')" "$g1 $g2 " "running guests after the restart"
    expect_eq "$(qemu_pid "$g1") $(qemu_pid "$g2")" "$p1 $p2" "QEMU pids across the restart"
    grep -q " $g1 reconnect begin " "$E2E_TRACE/calls.log" ||
        die "libvirt did not call the hook with 'reconnect begin' for $g1"
    wait_ledger_matches_running 5 || die "ledger wrong after the libvirtd restart"
    note "ledger == virsh list after the restart"
    V destroy "$g1" >/dev/null || die "destroy $g1 failed"
    V destroy "$g2" >/dev/null || die "destroy $g2 failed"
    wait_ledger_matches_running 5 || die "ledger not empty after destroying both"
    note "ledger empty after destroy"
}

case_e2() { # libvirtd stopped (SIGTERM) and started again: the guest's placement is kept
    local g=${E2E_PREFIX}e2
    write_policy warn allow with-vcpus
    define_guest "$g" --vcpus 2
    start_guest "$g"
    expect_affinity "$g" 1 1
    stop_libvirtd TERM || die "could not stop libvirtd"
    start_libvirtd || die "libvirtd did not come back"
    expect_affinity "$g" 1 1
    check_vcpuinfo "$g" "-y"
    note "threads still on CPU 1 after the restart"
}

# ---------------------------------------------------------------- f

case_f() { # broken policy + on_error default (allow): guest starts, error logged
    local g=${E2E_PREFIX}f mark line
    mkdir -p "$(dirname "$POLICY")"
    printf 'version: 1\non_violation: [warn\nhost: {reserved_cpus: "0-\n' >"$POLICY"
    mark=$(syslog_mark)
    define_guest "$g" --vcpus 1
    start_guest "$g"
    expect_eq "$(V domstate "$g")" "running" "state of $g"
    line=$(wait_log "$mark" 5 -i "$(guest_re "$g")" 'error') ||
        die "no kvmtune syslog line with guest=$g and 'error'"
    note "started; syslog: $line"
    write_policy warn allow with-vcpus
}

# ---------------------------------------------------------------- g

case_g() { # the shipped policy, as a package installs it: a typical guest is tuned
    local g=${E2E_PREFIX}g mark line
    mkdir -p "$(dirname "$POLICY")"
    install -m 0644 -o root -g root "$E2E_DIR/../../config/policy.yaml" "$POLICY" ||
        die "cannot install the shipped policy"
    mark=$(syslog_mark)
    define_guest "$g" --vcpus 2 --cache writeback
    start_guest "$g"
    expect_eq "$(V domstate "$g")" "running" "state of $g"
    # irq_cpus: auto on this machine (every IRQ on 0-1: none bound), CPU0 kept:
    # both vCPUs and the emulator threads (emulator: with-vcpus) on CPU 1.
    expect_affinity "$g" 1 1
    check_vcpuinfo "$g" "-y"
    line=$(wait_log "$mark" 5 "$(guest_re "$g")" 'stage=prepare' 'violation') ||
        die "no kvmtune line with guest=$g, stage=prepare and 'violation'"
    note "shipped policy: vCPUs + emulator on CPU 1; warned: $line"
}

# ---------------------------------------------------------------- d2

case_d2() { # 8 dedicated guests started in parallel: no CPU shared, refusals exactly when full
    local i n names=() ok=0 refused=0 c eligible=0 tid id pid l out
    mkdir -p "$(dirname "$POLICY")"
    cat >"$POLICY.tmp" <<EOP
version: 1
on_violation: warn
on_error: allow
host:
  reserved_cpus: none
  irq_cpus: none
  allow_cpu0: false
defaults:
  pool: dedicated
  emulator: with-vcpus
  disk_cache: none
  cpu_mode: host-model
EOP
    mv "$POLICY.tmp" "$POLICY"
    for c in $(seq 0 $(($(nproc --all) - 1))); do [ "$c" = 0 ] || eligible=$((eligible + 1)); done
    for i in 1 2 3 4 5 6 7 8; do
        n=${E2E_PREFIX}d2-$i
        names+=("$n")
        define_guest "$n" --vcpus 1
    done
    for n in "${names[@]}"; do
        (V start "$n" >"$E2E_WORK/d2.$n.out" 2>&1; echo $? >"$E2E_WORK/d2.$n.rc") &
    done
    wait
    local -A owner=()
    for n in "${names[@]}"; do
        if [ "$(cat "$E2E_WORK/d2.$n.rc")" = 0 ]; then
            ok=$((ok + 1))
            pid=$(qemu_pid "$n")
            while read -r id tid; do
                l=$(thread_cpus "$pid" "$tid")
                note "$n vCPU $id: Cpus_allowed_list $l"
                for c in $(echo "$l" | "$PY" -c 'import sys
out = []
for p in sys.stdin.read().strip().split(","):
    a, _, b = p.partition("-")
    out += range(int(a), int(b or a) + 1)
print(*out)'); do
                    [ "$c" != 0 ] || die "$n: a dedicated vCPU thread may run on CPU0 ($l)"
                    [ -z "${owner[$c]:-}" ] || die "CPU $c is shared by dedicated guests ${owner[$c]} and $n"
                    owner[$c]=$n
                done
            done < <(vcpu_tids "$n")
        else
            refused=$((refused + 1))
            out=$(cat "$E2E_WORK/d2.$n.out")
            note "$n refused: $out"
            printf '%s\n' "$out" | grep -q "kvmtune: " || die "$n refused without a kvmtune line: $out"
            [ "$(printf '%s\n' "$out" | sed -n '/kvmtune: /,$p' | sed '/^[[:space:]]*$/d' | wc -l)" = 1 ] ||
                die "$n: the refusal is more than one line"
        fi
    done
    local want=$((eligible < 8 ? eligible : 8))
    note "started $ok, refused $refused, eligible CPUs $eligible"
    [ "$ok" = "$want" ] || die "$ok dedicated guests started, want $want (eligible CPUs $eligible)"
}
