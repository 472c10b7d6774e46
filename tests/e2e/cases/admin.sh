# shellcheck shell=bash
# End-to-end cases for the admin commands: apply, revert, status (issue 5).
# Sourced after lib.sh, like cases.sh; each case_* runs in its own bash process
# under `timeout` and fails through `die`.  run.sh destroys and undefines every
# kvmtune-e2e-* guest after each case.
#
# Entries for run.sh's CASES table (id | timeout | needs 2-CPU shape | what):
#   "apply0|90|no|apply --dry-run shows reasons and a diff, defines nothing; no tty without --yes is refused"
#   "apply1|120|no|apply --yes conforms dumpxml --inactive; the next start runs conforming (mem-merge=off, direct cache, host-model CPU)"
#   "apply2|120|no|apply on a running guest says 'next cold boot'; the live guest changes only after destroy + start"
#   "revert|90|no|revert restores the exact previous definition; revert --list; bad names refused"
#   "status|120|no|status lists the running test guests on the CPUs libvirt reports; plain when piped; --format prometheus parses"
# and run_case must source this file too:  . "$E2E_DIR/cases/admin.sh"
#
# Backups go to the run's artifacts, not /var/lib/kvmtune.

admin_env() {
    export KVMTUNE_BACKUP_DIR=$E2E_WORK/backups
}

kt() { timeout -k 5 60 "$KVMTUNE_BIN" "$@"; }

# dumpxml --inactive --security-info of a guest into FILE.
inactive_xml() { # GUEST FILE
    V dumpxml --inactive --security-info "$1" >"$2" || die "virsh dumpxml --inactive $1 failed"
}

# The QEMU command line of a running guest, NULs as spaces.
qemu_cmdline() { # GUEST
    local pid
    pid=$(qemu_pid "$1") || die "$1: no pid file"
    tr '\0' ' ' <"/proc/$pid/cmdline"
}

# vCPU affinities as libvirt reports them (virsh vcpuinfo), one cpulist per vCPU:
# "CPU Affinity: -y" -> "1".
vcpuinfo_cpus() { # GUEST
    V vcpuinfo "$1" | sed -n 's/^CPU Affinity:[[:space:]]*//p' | while read -r map; do
        local i out=""
        for ((i = 0; i < ${#map}; i++)); do
            [ "${map:i:1}" = y ] && out+="${out:+,}$i"
        done
        echo "$out"
    done
}

# A guest that breaks several rules: host-passthrough, writeback cache, no
# nosharepages, no pinning.
define_untuned() { # NAME [guest_xml options]
    local name=$1
    shift
    define_guest "$name" --vcpus 2 --cpu host-passthrough --cache writeback "$@"
}

case_apply0() {
    local g=${E2E_PREFIX}apply0 out rc
    admin_env
    write_policy warn allow with-vcpus
    define_untuned "$g"
    inactive_xml "$g" "$E2E_WORK/$g.before.xml"

    out=$(kt apply --dry-run "$g" 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    expect_eq "$rc" 1 "exit status of apply --dry-run with changes pending"
    local want
    for want in "guest $g: settings from defaults" \
        "[rule 5 via defaults] CPU mode host-passthrough → host-model" \
        "[rule 2.1 via defaults] disk vda: cache='none' (was writeback)" \
        "[rule 3.1 via defaults]" \
        "--- $g (current)" "+++ $g (kvmtune)" \
        "dry run: 1 guest(s) would change ($g); nothing defined"; do
        printf '%s\n' "$out" | grep -qF -- "$want" || die "apply --dry-run output lacks: $want"
    done
    inactive_xml "$g" "$E2E_WORK/$g.after-dry.xml"
    cmp -s "$E2E_WORK/$g.before.xml" "$E2E_WORK/$g.after-dry.xml" ||
        die "apply --dry-run changed the definition: $(diff "$E2E_WORK/$g.before.xml" "$E2E_WORK/$g.after-dry.xml")"
    [ ! -e "$KVMTUNE_BACKUP_DIR/$g" ] || die "apply --dry-run made a backup"
    note "dry run: reasons + diff printed, exit 1, definition byte-identical, no backup"

    # Not a terminal (stdin is /dev/null under run.sh) and no --yes: refused.
    out=$(kt apply "$g" </dev/null 2>&1)
    rc=$?
    expect_eq "$rc" 2 "exit status of apply without --yes off a terminal"
    printf '%s\n' "$out" | grep -qF "not on a terminal: pass --yes" || die "refusal message missing: $out"
    inactive_xml "$g" "$E2E_WORK/$g.after-refused.xml"
    cmp -s "$E2E_WORK/$g.before.xml" "$E2E_WORK/$g.after-refused.xml" || die "a refused apply changed the definition"
    note "no tty, no --yes: '$(printf '%s\n' "$out" | tail -n 1)' (exit 2), nothing defined"

    out=$(kt apply --dry-run "${E2E_PREFIX}no-such-guest" 2>&1)
    expect_eq "$?" 3 "exit status of apply on an unknown guest"
    note "unknown guest: $out"
}

case_apply1() {
    local g=${E2E_PREFIX}apply1 out rc cmd after
    admin_env
    write_policy warn allow with-vcpus
    define_untuned "$g"
    inactive_xml "$g" "$E2E_WORK/$g.before.xml"
    # As defined, the guest cannot start under TCG (host-passthrough needs KVM).

    out=$(kt apply --yes "$g" </dev/null 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    expect_eq "$rc" 0 "exit status of apply --yes"
    printf '%s\n' "$out" | grep -qF "$g: defined; previous definition saved as" || die "apply did not report the define"
    printf '%s\n' "$out" | grep -q "warning" && die "apply warned: $out"

    after=$E2E_WORK/$g.after.xml
    inactive_xml "$g" "$after"
    local want
    for want in "<cpu mode='host-model'" "cache='none' io='native'" "<nosharepages/>" \
        "<vcpupin vcpu='0' cpuset=" "<vcpupin vcpu='1' cpuset=" "<emulatorpin cpuset=" \
        "<memory mode='preferred' nodeset="; do
        grep -qF -- "$want" "$after" || die "dumpxml --inactive after apply lacks $want"
    done
    grep -q "host-passthrough\|cache='writeback'" "$after" && die "dumpxml --inactive still has the old settings"
    note "dumpxml --inactive now has host-model, cache none/native, nosharepages, vcpupin, emulatorpin, numatune"

    # The backup is the previous definition, byte for byte.
    local backup
    backup=$(ls "$KVMTUNE_BACKUP_DIR/$g"/*.xml 2>/dev/null | head -n 1)
    [ -n "$backup" ] || die "no backup under $KVMTUNE_BACKUP_DIR/$g"
    cmp -s "$backup" "$E2E_WORK/$g.before.xml" || die "backup $backup differs from the previous definition"
    note "backup $(basename "$backup") == previous definition"

    # Applying again changes nothing (the new definition conforms as planned).
    out=$(kt apply --dry-run "$g" 2>&1)
    expect_eq "$?" 0 "exit status of apply --dry-run after apply"
    printf '%s\n' "$out" | grep -qF "nothing to do: 1 guest(s) already conform" || die "second apply is not a no-op: $out"

    start_guest "$g"
    cmd=$(qemu_cmdline "$g")
    printf '%s\n' "$cmd" | grep -q 'mem-merge=off' || die "QEMU command line lacks mem-merge=off: $cmd"
    printf '%s\n' "$cmd" | grep -q '"cache":{"direct":true' || die "QEMU command line lacks a direct cache: $cmd"
    local cpu
    cpu=$(printf '%s\n' "$cmd" | sed -n 's/.* -cpu \([^ ]*\).*/\1/p')
    [ -n "$cpu" ] || die "QEMU command line has no -cpu"
    case $cpu in host | host,* | max | max,*) die "QEMU runs with -cpu $cpu, not a host-model-derived model" ;; esac
    note "QEMU: mem-merge=off, cache direct, -cpu ${cpu%%,*} (host-model expanded by libvirt)"
    V dumpxml "$g" | grep -q "<cpu mode='host-model'\|<cpu mode='custom'" || die "live XML has no host-model/custom CPU"
}

case_apply2() {
    local g=${E2E_PREFIX}apply2 out rc
    admin_env
    write_policy warn allow with-vcpus
    define_guest "$g" --vcpus 1 --cache writeback
    start_guest "$g"
    qemu_cmdline "$g" | grep -q '"cache":{"direct":true' && die "writeback guest already runs with a direct cache"

    out=$(kt apply --yes "$g" </dev/null 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    expect_eq "$rc" 0 "exit status of apply --yes on a running guest"
    printf '%s\n' "$out" | grep -qF "$g: is running: the new definition takes effect at its next cold boot" ||
        die "apply did not say the running guest gets it at its next cold boot"
    V dumpxml "$g" | grep -q "cache='writeback'" || die "the live XML changed without a restart"
    V dumpxml --inactive "$g" | grep -q "cache='none'" || die "the definition did not change"
    note "running guest: live XML untouched, definition changed, 'next cold boot' printed"

    V destroy "$g" >/dev/null || die "virsh destroy failed"
    start_guest "$g"
    qemu_cmdline "$g" | grep -q '"cache":{"direct":true' || die "after destroy + start the cache is still not direct"
    note "after destroy + start: QEMU runs with a direct cache"
}

case_revert() {
    local g=${E2E_PREFIX}revert out rc n
    admin_env
    write_policy warn allow with-vcpus
    define_untuned "$g"
    inactive_xml "$g" "$E2E_WORK/$g.before.xml"
    kt apply --yes "$g" </dev/null >/dev/null 2>&1 || die "apply --yes failed"
    inactive_xml "$g" "$E2E_WORK/$g.applied.xml"
    cmp -s "$E2E_WORK/$g.before.xml" "$E2E_WORK/$g.applied.xml" && die "apply changed nothing"

    out=$(kt revert "$g" 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    expect_eq "$rc" 0 "exit status of revert"
    inactive_xml "$g" "$E2E_WORK/$g.reverted.xml"
    cmp -s "$E2E_WORK/$g.before.xml" "$E2E_WORK/$g.reverted.xml" ||
        die "revert did not restore the exact previous XML: $(diff "$E2E_WORK/$g.before.xml" "$E2E_WORK/$g.reverted.xml")"
    note "revert: dumpxml --inactive byte-identical to the definition before apply"

    out=$(kt revert --list "$g" 2>&1)
    printf '%s\n' "$out" | sed 's/^/    /'
    n=$(printf '%s\n' "$out" | grep -c '^  [0-9]\{8\}T[0-9]\{6\}Z')
    expect_eq "$n" 2 "backups listed (before apply, before revert)"
    printf '%s\n' "$out" | grep -q "= current definition" || die "--list does not mark the current definition"

    # The revert itself can be undone: reverting again brings the applied one back.
    kt revert "$g" >/dev/null 2>&1 || die "second revert failed"
    inactive_xml "$g" "$E2E_WORK/$g.re-applied.xml"
    cmp -s "$E2E_WORK/$g.applied.xml" "$E2E_WORK/$g.re-applied.xml" || die "revert of the revert is not the applied XML"
    note "revert again: back to the applied definition"

    out=$(kt revert "../$g" 2>&1)
    expect_eq "$?" 3 "exit status of revert with a '../' guest name"
    note "bad name: $out"
    out=$(kt revert --to 19700101T000000Z "$g" 2>&1)
    expect_eq "$?" 2 "exit status of revert --to an unknown timestamp"
    note "unknown timestamp: $out"
}

case_status() {
    local a=${E2E_PREFIX}status-a b=${E2E_PREFIX}status-b out json g v want got
    admin_env
    write_policy warn allow with-vcpus
    # a: pinned by its definition (applied, then the pins mark removed: the pins
    # are the admin's, as if written by hand; repackc covers kvmtune's own);
    # b: placed by the hook at start.
    define_guest "$a" --vcpus 1
    kt apply --yes "$a" </dev/null >/dev/null 2>&1 || die "apply --yes $a failed"
    inactive_xml "$a" "$E2E_WORK/status-a.xml"
    grep -q "kvmtune-pins:pins" "$E2E_WORK/status-a.xml" || die "apply wrote no pins mark"
    sed -i '/kvmtune-pins:pins/d' "$E2E_WORK/status-a.xml"
    V define "$E2E_WORK/status-a.xml" >/dev/null || die "virsh define $a without the mark failed"
    define_guest "$b" --vcpus 2
    start_guest "$a"
    start_guest "$b"
    wait_ledger_matches_running 10 || die "ledger does not match virsh list"

    json=$E2E_WORK/status.json
    kt status --json >"$json" || die "kvmtune status --json failed"
    for g in $(running_names); do
        v=0
        while read -r want; do
            got=$("$PY" - "$json" "$g" "$v" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
g = next((x for x in s["guests"] if x["name"] == sys.argv[2]), None)
if g is None:
    print("MISSING")
else:
    v = int(sys.argv[3])
    print(g["vcpu_cpus"][v] if v < len(g["vcpu_cpus"]) else "NONE")
PY
)
            [ "$got" = "$want" ] || die "status: $g vCPU $v on '$got', virsh vcpuinfo says '$want'"
            v=$((v + 1))
        done < <(vcpuinfo_cpus "$g")
        [ "$v" -gt 0 ] || die "virsh vcpuinfo $g listed no vCPU"
        note "$g: status and virsh vcpuinfo agree on $v vCPU(s)"
    done
    "$PY" - "$json" "$a" "$b" <<'PY' || die "status --json content"
import json, sys
s = json.load(open(sys.argv[1]))
by = {g["name"]: g for g in s["guests"]}
a, b = by[sys.argv[2]], by[sys.argv[3]]
assert a["source"] == "xml", a["source"]
assert b["source"] == "ledger", b["source"]
assert a["ledger"]["agrees"] and b["ledger"]["agrees"], (a["ledger"], b["ledger"])
assert s["ledger"]["agrees"], s["ledger"]
states = {c["rule"]: c["state"] for c in b["conformance"]}
assert states["1.1"] == "runtime-enforced", states
assert all(c["state"] == "ok" for c in a["conformance"]), a["conformance"]
PY
    note "status --json: $a pinned by XML (all ok), $b placed by the hook (runtime-enforced), ledger agrees"

    out=$(kt status)
    printf '%s\n' "$out" | sed 's/^/    /'
    case $out in *$'\033'*) die "status printed colour codes into a pipe" ;; esac
    printf '%s\n' "$out" | grep -q "agrees with libvirt" || die "status text does not say the ledger agrees"
    for g in "$a" "$b"; do
        printf '%s\n' "$out" | grep -q "^  $g  pid $(qemu_pid "$g")" || die "status text lacks guest $g with its pid"
    done

    # --format prometheus, written atomically by --output, read by a real parser
    # (python3-prometheus-client, installed when missing).
    local prom=$E2E_WORK/textfile/kvmtune.prom
    mkdir -p "$E2E_WORK/textfile"
    kt status --format prometheus --output "$prom" || die "kvmtune status --format prometheus failed"
    if ! "$PY" -c 'import prometheus_client.parser' 2>/dev/null; then
        apt-get install -y --no-install-recommends python3-prometheus-client >>"$E2E_WORK/apt.log" 2>&1 ||
            die "apt-get install python3-prometheus-client failed"
    fi
    "$PY" - "$prom" "$a" "$b" <<'PY' || die "status --format prometheus content"
import sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
a, b = sys.argv[2], sys.argv[3]
samples = {}
for family in text_string_to_metric_families(text):
    assert family.name.startswith("kvmtune_"), family.name
    assert family.documentation, family.name
    for s in family.samples:
        samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
def get(name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]
for g in (a, b):
    assert get("kvmtune_guest_affinity_drift", guest=g) == 0, g
    assert get("kvmtune_guest_conformance", guest=g, rule="1.1", aspect="vCPU placement") == 1, g
assert get("kvmtune_guest_conformance", guest=b, rule="3.1", aspect="no KSM") == 0
assert get("kvmtune_guest_vcpus", guest=b) == 2
assert get("kvmtune_ledger_agrees") == 1
assert get("kvmtune_hook_outcomes_total", stage="prepare-begin", outcome="allowed") >= 2
assert get("kvmtune_hook_outcomes_total", stage="started-begin", outcome="allowed") >= 2
assert ("kvmtune_node_free_cpus", (("node", "0"), ("pool", "shared"))) in samples
print(len(samples), "samples")
PY
    note "status --format prometheus: $(grep -vc '^#' "$prom") samples parsed by prometheus_client"
}

# The policy of case_rebal: shared guests on CPUs 0-1 (allow_cpu0: the CI
# machine has no other CPU pair), at most RATIO vCPUs per CPU.
rebal_policy() { # RATIO
    cat >"$POLICY.tmp" <<EOP
version: 1
on_violation: warn
on_error: allow
host:
  reserved_cpus: none
  irq_cpus: none
  allow_cpu0: true
defaults:
  emulator: with-vcpus
  disk_cache: none
  cpu_mode: host-model
  cpu_allocation_ratio: $1
EOP
    mv "$POLICY.tmp" "$POLICY"
}

# kvmtune rebalance on a real libvirtd (issue 12 item 2): two 1-vCPU shared
# guests started at cpu_allocation_ratio 1 land on CPUs 0 and 1; the admin raises
# the ratio to 2; the dry run proposes one move and changes nothing; --apply
# moves one guest's vCPU (and its emulator threads, which ran with it) onto the
# other's CPU, as the kernel shows, the ledger records it, status agrees, and a
# second rebalance finds nothing to move.
case_rebal() {
    local a=${E2E_PREFIX}rb-a b=${E2E_PREFIX}rb-b out rc moved stay from to pid tid
    rebal_policy 1
    define_guest "$a" --vcpus 1
    define_guest "$b" --vcpus 1
    start_guest "$a"
    start_guest "$b"
    wait_ledger_matches_running 10 || die "ledger does not match virsh list"
    local ca cb
    ca=$(ledger_query get "$a" cpus)
    cb=$(ledger_query get "$b" cpus)
    [ "$ca" != "$cb" ] || die "at ratio 1 both guests got CPU $ca"
    expect_affinity "$a" "$ca" "$ca"
    expect_affinity "$b" "$cb" "$cb"
    note "ratio 1: $a on CPU $ca, $b on CPU $cb (kernel)"

    rebal_policy 2
    rc=0
    out=$(kt rebalance --max-load 2 2>&1) || rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    [ "$rc" = 1 ] || die "rebalance --dry-run with moves to propose exited $rc, want 1"
    printf '%s\n' "$out" | grep -q "dry run: nothing changed" || die "the dry run does not say it changed nothing"
    [ "$(ledger_query get "$a" cpus)" = "$ca" ] && [ "$(ledger_query get "$b" cpus)" = "$cb" ] ||
        die "the dry run changed the ledger"
    expect_affinity "$a" "$ca" "$ca"
    expect_affinity "$b" "$cb" "$cb"
    rc=0
    kt rebalance >/dev/null 2>&1 || rc=$?
    [ "$rc" = 0 ] || die "rebalance without --max-load raised contention (exit $rc)"
    note "dry run: one move proposed, nothing changed; without --max-load nothing is proposed"

    out=$(kt rebalance --apply --max-load 2 2>&1) || die "rebalance --apply failed: $out"
    printf '%s\n' "$out" | sed 's/^/    /'
    moved=$(printf '%s\n' "$out" | sed -n "s/^moved '\([^']*\)'.*/\1/p")
    [ -n "$moved" ] || die "rebalance --apply moved no guest"
    if [ "$moved" = "$a" ]; then stay=$b from=$ca to=$cb; else stay=$a from=$cb to=$ca; fi
    # The kernel's view: every thread of the moved guest on the other CPU.
    expect_affinity "$moved" "$to" "$to"
    expect_affinity "$stay" "$to" "$to"
    pid=$(qemu_pid "$moved")
    while read -r _ tid; do
        note "$moved vCPU thread $tid: Cpus_allowed_list $(thread_cpus "$pid" "$tid") (was $from)"
    done < <(vcpu_tids "$moved")
    [ "$(ledger_query get "$moved" cpus)" = "$to" ] || die "the ledger does not record $moved on CPU $to"
    kt status --json >"$E2E_WORK/rebal-status.json" || die "status --json failed"
    "$PY" - "$E2E_WORK/rebal-status.json" "$moved" "$to" <<'PY' || die "status after rebalance"
import json, sys
s = json.load(open(sys.argv[1]))
g = next(x for x in s["guests"] if x["name"] == sys.argv[2])
assert g["vcpu_cpus"] == [sys.argv[3]], g["vcpu_cpus"]
assert g["ledger"]["agrees"], g["ledger"]
drifted = [r for r in g["readback"] if r["state"] == "drifted"]
assert not drifted, drifted
PY
    note "after --apply: $moved moved CPU $from -> $to (kernel, ledger and status agree, nothing drifted)"
    out=$(kt rebalance --max-load 2 2>&1) || die "a second rebalance still proposes moves: $out"
    printf '%s\n' "$out" | grep -q "nothing to move" || die "a second rebalance: $out"
    note "a second rebalance: nothing to move"
}

# Repacking at admission on a real libvirtd (issue 12 item 1, as far as the CI
# machine's 2 CPUs allow): two 1-vCPU shared guests started at ratio 1 run on
# CPUs 0 and 1; with the ratio raised to 2, a dedicated 1-vCPU guest (a rule,
# dedicated_fallback: refuse) finds no free CPU, and prepare makes room by
# moving one shared guest's vCPU onto the other's CPU; started applies the move
# before the dedicated guest runs. The kernel then shows the dedicated guest's
# threads alone on their CPU and both shared guests on the other one.
case_repack() {
    local a=${E2E_PREFIX}rp-a b=${E2E_PREFIX}rp-b d=${E2E_PREFIX}rp-ded cd other g pid tid l
    rebal_policy 1
    define_guest "$a" --vcpus 1
    define_guest "$b" --vcpus 1
    define_guest "$d" --vcpus 1
    start_guest "$a"
    start_guest "$b"
    [ "$(ledger_query get "$a" cpus)" != "$(ledger_query get "$b" cpus)" ] ||
        die "at ratio 1 both shared guests got one CPU"
    start_dedicated_by_repacking repack "$d" "$a" "$b"
}

# Raises the ratio to 2, makes D dedicated by a rule and starts it: it must be
# admitted by a repacking move (syslog) and end as `repacked_where_expected`
# says. Sets the caller's `cd` (D's CPU) and `other` (the shared guests' CPU).
start_dedicated_by_repacking() { # TAG D A B
    local tag=$1 d=$2 a=$3 b=$4 l
    rebal_policy 2
    cat >>"$POLICY" <<EOP
rules:
  - name: nfv
    match: {name: '$d'}
    set: {pool: dedicated, dedicated_fallback: refuse}
EOP
    start_guest "$d"
    cd=$(ledger_query get "$d" cpus)
    [ "$(ledger_query get "$d" pool)" = dedicated ] || die "$d is not dedicated: $(ledger_query get "$d" pool)"
    case $cd in 0) other=1 ;; 1) other=0 ;; *) die "$d got CPUs $cd, want one CPU" ;; esac
    l=$(grep -h "guest=$d" "$E2E_WORK/syslog.log" | grep -m1 "repack: guest '") ||
        die "no 'repack: guest' line for $d in syslog"
    note "syslog: ${l:0:300}"
    repacked_where_expected "$tag" "$d" "$cd" "$a" "$b" "$other"
}

# After a repack on the 2-CPU machine: dedicated guest D alone on CPU CD (every
# thread), both shared guests A and B (every thread) on CPU OTHER, the ledger
# agreeing, and `status --json` showing all three where the kernel runs them with
# nothing drifted (not where any definition pins them).
repacked_where_expected() { # TAG D CD A B OTHER
    local tag=$1 d=$2 cd=$3 a=$4 b=$5 other=$6 g pid t l
    expect_affinity "$d" "$cd" "$cd"
    for g in "$a" "$b"; do
        expect_affinity "$g" "$other" "$other"
        [ "$(ledger_query get "$g" cpus)" = "$other" ] || die "the ledger has $g on $(ledger_query get "$g" cpus)"
        pid=$(qemu_pid "$g")
        for t in /proc/"$pid"/task/*; do
            l=$(thread_cpus "$pid" "${t##*/}")
            [ "$l" = "$other" ] || die "$g thread ${t##*/} may run on $l, the dedicated CPU is $cd"
        done
    done
    note "dedicated $d alone on CPU $cd; shared $a and $b (every thread) on CPU $other"
    kt status --json >"$E2E_WORK/$tag-status.json" || die "status --json failed"
    "$PY" - "$E2E_WORK/$tag-status.json" "$d" "$cd" "$a" "$b" "$other" <<'PY' || die "status after repacking"
import json, sys
s = json.load(open(sys.argv[1]))
by = {g["name"]: g for g in s["guests"]}
d, cd, a, b, other = sys.argv[2:]
assert by[d]["vcpu_cpus"] == [cd], by[d]["vcpu_cpus"]
for g in (a, b):
    assert by[g]["vcpu_cpus"] == [other], (g, by[g]["vcpu_cpus"], by[g]["source"])
for g in (a, b, d):
    assert by[g]["ledger"]["agrees"], (g, by[g]["ledger"])
    assert not [r for r in by[g]["readback"] if r["state"] == "drifted"], (g, by[g]["readback"])
PY
    note "status shows all three where the kernel runs them, nothing drifted"
}

# Repacking in the shipped flow (issue 12): kvmtune apply (what converge runs)
# writes the guests' placement into their definitions, marked as kvmtune's
# (kvmtune-pins in <metadata>, which libvirt must keep); after a cold boot the
# guests are pinned by their definitions, on those CPUs; under the default
# existing_pins: keep a dedicated guest with no free CPU is still admitted by
# moving one of them: their pins are kvmtune's to move, emulator threads too
# (libvirt applied kvmtune's <emulatorpin> through the emulator cgroup).
case_repackc() {
    local a=${E2E_PREFIX}rc-a b=${E2E_PREFIX}rc-b d=${E2E_PREFIX}rc-ded cd other g pid t l out x
    rebal_policy 1
    grep -q existing_pins "$POLICY" && die "the policy must leave existing_pins at its default (keep)"
    define_guest "$a" --vcpus 1
    define_guest "$b" --vcpus 1
    define_guest "$d" --vcpus 1
    start_guest "$a"
    start_guest "$b"
    out=$(kt apply --yes "$a" "$b" </dev/null 2>&1) || die "kvmtune apply --yes failed: ${out:0:600}"
    for g in "$a" "$b"; do
        x="$E2E_WORK/repackc-$g.xml"
        inactive_xml "$g" "$x"
        grep -q "<vcpupin vcpu='0' cpuset='$(ledger_query get "$g" cpus)'/>" "$x" ||
            die "$g: the definition does not pin vCPU 0 where it runs: $(grep -m3 'vcpupin\|cpuset' "$x" | tr -s ' ')"
        l=$(grep -o "<[a-z-]*:pins [^>]*>[^<]*<" "$x") ||
            die "$g: libvirt did not keep kvmtune's pins mark: $(sed -n '/<metadata/,/<\/metadata/p' "$x" | tr -s ' \n' ' ')"
        note "$g definition after apply: ${l:0:200}"
    done
    for g in "$a" "$b"; do V destroy "$g" >/dev/null || die "virsh destroy $g failed"; done
    wait_not_in_ledger "$a" 10 || die "$a still claimed after destroy"
    wait_not_in_ledger "$b" 10 || die "$b still claimed after destroy"
    for g in "$a" "$b"; do
        start_guest "$g"
        x="$E2E_WORK/repackc-$g.xml"
        grep -q "<vcpupin vcpu='0' cpuset='$(ledger_query get "$g" cpus)'/>" "$x" ||
            die "$g restarted on $(ledger_query get "$g" cpus), not where its definition pins it"
        expect_affinity "$g" "$(ledger_query get "$g" cpus)" "$(ledger_query get "$g" cpus)"
    done
    [ "$(ledger_query get "$a" cpus)" != "$(ledger_query get "$b" cpus)" ] ||
        die "at ratio 1 both shared guests got one CPU"
    note "after a cold boot both run where their definitions pin them"
    start_dedicated_by_repacking repackc "$d" "$a" "$b"
    # The moved guest's definition still pins it where it ran: queued, and
    # kvmtune converge (the path unit runs it; here by hand) writes where it runs.
    out=$(kt converge --list 2>&1) || die "converge --list failed: $out"
    note "queue after the move: $(echo "$out" | tr -s ' \n' ' ' | cut -c1-200)"
    out=$(kt converge 2>&1) || die "kvmtune converge failed: ${out:0:600}"
    for g in "$a" "$b"; do
        x="$E2E_WORK/repackc-$g-after.xml"
        inactive_xml "$g" "$x"
        grep -q "<vcpupin vcpu='0' cpuset='$other'/>" "$x" ||
            die "$g: after converge the definition pins $(grep -o "<vcpupin[^>]*>" "$x"), it runs on $other"
        grep -q ">0:$other emulator:$other<" "$x" ||
            die "$g: the pins mark does not follow: $(grep -o "<[a-z-]*:pins [^>]*>[^<]*<" "$x")"
    done
    note "after kvmtune converge both definitions pin CPU $other, marked as kvmtune's"
}
