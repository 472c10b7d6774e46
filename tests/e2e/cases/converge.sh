# shellcheck shell=bash
# End-to-end case for convergence after a start (issue 14, `converge: after-start`).
# Sourced after lib.sh and cases/admin.sh (for admin_env, kt, inactive_xml,
# qemu_cmdline); runs in its own bash process under `timeout`, fails through `die`.
#
# Entries for run.sh's CASES table (id | timeout | needs 2-CPU shape | what):
#   "convr|120|no|converge with on_violation: refuse: the refused start is queued; after kvmtune converge the next start is boot 1 and conforms"
#   "conv|180|no|converge: a warned start is queued, kvmtune converge conforms the definition (backup, revert byte for byte); Nova guests never queued; undefined guests dropped; libvirtd down keeps the queue"
#
# There is no systemd on the CI machine, so the case drains the queue the way an
# admin without systemd does: `kvmtune converge` right after the start returns
# (kvmtune-converge.path does the same on systemd hosts).

CONVERGE_Q=/run/kvmtune/converge

# A guest with Nova's instance metadata, otherwise like define_guest's.
define_nova_guest() { # NAME [guest_xml options]
    local name=$1
    shift
    mkdir -p "$E2E_WORK/xml"
    qemu-img create -q -f qcow2 "$E2E_IMG_DIR/$name.qcow2" 64M || die "qemu-img create $name failed"
    chown libvirt-qemu:libvirt-qemu "$E2E_IMG_DIR/$name.qcow2" 2>/dev/null
    guest_xml "$name" "$@" | sed "s|^  <vcpu |  <metadata>\n    <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\n      <nova:name>e2e</nova:name>\n      <nova:flavor name='m1.tiny'/>\n    </nova:instance>\n  </metadata>\n  <vcpu |" \
        >"$E2E_WORK/xml/$name.xml" || die "guest_xml $name failed"
    grep -q "<nova:instance" "$E2E_WORK/xml/$name.xml" || die "no Nova metadata in $name's XML"
    V define "$E2E_WORK/xml/$name.xml" >/dev/null || die "virsh define $name failed"
}

case_conv() {
    local g=${E2E_PREFIX}conv n=${E2E_PREFIX}conv-nova gone=${E2E_PREFIX}conv-gone
    local out rc mark t_start t_done boots cmd uuid
    admin_env
    # The e2e policy plus nothing about converge: the shipped default after-start.
    write_policy warn allow with-vcpus
    grep -q converge "$POLICY" && die "the test policy must not set converge"
    rm -f "$CONVERGE_Q"/* 2>/dev/null # entries of earlier cases' guests
    # cache='writeback' and no <nosharepages/>: rules 2.1 and 3.1 (host-passthrough
    # cannot start under TCG, see README).
    define_guest "$g" --vcpus 1 --cache writeback
    inactive_xml "$g" "$E2E_WORK/$g.before.xml"
    uuid=$(V domuuid "$g")

    # Boot 1: warned and queued, not refused.
    mark=$(syslog_mark)
    start_guest "$g"
    t_start=$(date +%s.%N)
    boots=1
    [ -f "$CONVERGE_Q/$g" ] || die "$g was not queued in $CONVERGE_Q: $(ls -la "$CONVERGE_Q" 2>&1)"
    grep -qx "uuid=$uuid" "$CONVERGE_Q/$g" || die "queue entry lacks uuid=$uuid: $(cat "$CONVERGE_Q/$g")"
    out=$(wait_log "$mark" 10 "guest=$g stage=prepare-begin outcome=allowed" "violation \(on_violation: warn\)" "converge: queued") ||
        die "no prepare line saying the guest was queued"
    note "boot 1 warned and queued: ${out#*outcome=}"
    qemu_cmdline "$g" | grep -q '"cache":{"direct":true' && die "boot 1 already runs with a direct cache"
    out=$(kt converge --list 2>&1)
    printf '%s\n' "$out" | grep -q "^  $g  uuid $uuid  queued " || die "converge --list does not list $g: $out"

    # The drain (kvmtune-converge.service's ExecStart).
    out=$(kt converge 2>&1)
    rc=$?
    t_done=$(date +%s.%N)
    printf '%s\n' "$out" | sed 's/^/    /'
    expect_eq "$rc" 0 "exit status of kvmtune converge"
    [ ! -e "$CONVERGE_Q/$g" ] || die "the queue entry of $g is still there"
    inactive_xml "$g" "$E2E_WORK/$g.after.xml"
    local want
    for want in "cache='none' io='native'" "<nosharepages/>" "<vcpupin vcpu='0' cpuset="; do
        grep -qF -- "$want" "$E2E_WORK/$g.after.xml" || die "dumpxml --inactive after converge lacks $want"
    done
    grep -q "cache='writeback'" "$E2E_WORK/$g.after.xml" && die "the definition still has cache='writeback'"
    out=$(kt apply --dry-run "$g" 2>&1)
    expect_eq "$?" 0 "exit status of apply --dry-run after converge (conforms)"
    local backup
    backup=$(ls "$KVMTUNE_BACKUP_DIR/$g"/*.xml 2>/dev/null | head -n 1)
    [ -n "$backup" ] || die "no backup under $KVMTUNE_BACKUP_DIR/$g"
    cmp -s "$backup" "$E2E_WORK/$g.before.xml" || die "backup $backup differs from the definition before"
    out=$(wait_log "$mark" 10 "guest=$g stage=converge outcome=defined backup=" "rule 2\.1 via defaults\] disk vda: cache='none' \(was writeback\)" "rule 3\.1") ||
        die "no converge syslog line with the changes and reasons"
    note "converge: ${out#*stage=converge }"
    note "definition conforms $("$PY" -c "print(f'{$t_done - $t_start:.2f}')") s after virsh start returned (backup == definition before)"

    # Boot 2 (cold: destroy + start) runs conforming and is not queued again.
    V destroy "$g" >/dev/null || die "virsh destroy $g failed"
    mark=$(syslog_mark)
    start_guest "$g"
    boots=$((boots + 1))
    cmd=$(qemu_cmdline "$g")
    printf '%s\n' "$cmd" | grep -q '"cache":{"direct":true' || die "boot 2 still lacks a direct cache: $cmd"
    printf '%s\n' "$cmd" | grep -q 'mem-merge=off' || die "boot 2 lacks mem-merge=off: $cmd"
    out=$(wait_log "$mark" 10 "guest=$g stage=prepare-begin outcome=allowed") || die "no prepare line for boot 2"
    case $out in *violation* | *converge:*) die "boot 2 still violates or was queued: $out" ;; esac
    [ ! -e "$CONVERGE_Q/$g" ] || die "a conforming start was queued"
    note "starts until fully conformant: $boots (boot 1 warned + queued, boot 2 conforming: direct cache, mem-merge=off)"

    # revert restores the definition before converge, byte for byte.
    V destroy "$g" >/dev/null || die "virsh destroy $g failed"
    out=$(kt revert "$g" 2>&1) || die "kvmtune revert failed: $out"
    inactive_xml "$g" "$E2E_WORK/$g.reverted.xml"
    cmp -s "$E2E_WORK/$g.before.xml" "$E2E_WORK/$g.reverted.xml" ||
        die "revert is not byte for byte: $(diff "$E2E_WORK/$g.before.xml" "$E2E_WORK/$g.reverted.xml")"
    note "revert: dumpxml --inactive byte-identical to the definition before converge"

    # A Nova guest with the same violations: warned, never queued.
    define_nova_guest "$n" --vcpus 1 --cache writeback
    mark=$(syslog_mark)
    start_guest "$n"
    [ ! -e "$CONVERGE_Q/$n" ] || die "the Nova guest $n was queued"
    out=$(wait_log "$mark" 10 "guest=$n stage=prepare-begin outcome=allowed" "converge: not queued \(Nova metadata\)") ||
        die "no prepare line saying the Nova guest is not queued"
    note "Nova guest: warned, not queued"

    # An entry whose guest was undefined meanwhile: dropped, with a log line.
    printf 'uuid=00000000-0000-0000-0000-000000000000\nqueued=1\n' >"$CONVERGE_Q/$gone"
    mark=$(syslog_mark)
    out=$(kt converge 2>&1)
    expect_eq "$?" 0 "exit status of converge with an undefined guest queued"
    [ ! -e "$CONVERGE_Q/$gone" ] || die "the entry of the undefined guest is still there"
    out=$(wait_log "$mark" 10 "guest=$gone stage=converge outcome=dropped: undefined meanwhile") ||
        die "no 'dropped: undefined meanwhile' line"
    note "undefined meanwhile: ${out#*stage=converge }"

    # libvirtd down: the entry stays, exit 0; once libvirtd is back it is drained.
    start_guest "$g" # reverted: violates again, queued again
    [ -f "$CONVERGE_Q/$g" ] || die "$g (reverted) was not queued again"
    stop_libvirtd TERM || die "could not stop libvirtd"
    mark=$(syslog_mark)
    out=$(kt converge 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    expect_eq "$rc" 0 "exit status of converge with libvirtd down"
    [ -f "$CONVERGE_Q/$g" ] || die "converge with libvirtd down dropped the entry"
    out=$(wait_log "$mark" 10 "stage=converge outcome=deferred" "1 guest\(s\) stay queued") || die "no deferred line"
    note "libvirtd down: ${out#*stage=converge }"
    start_libvirtd || die "libvirtd did not come back"
    out=$(kt converge 2>&1) || die "converge after libvirtd came back failed: $out"
    [ ! -e "$CONVERGE_Q/$g" ] || die "the entry was not drained after libvirtd came back"
    V dumpxml --inactive "$g" | grep -q "cache='none'" || die "not conformed after libvirtd came back"
    note "libvirtd back: drained, definition conforms"
}

# on_violation: refuse + converge: the refused start is queued; once drained, the
# next start is the guest's first boot, and it conforms.
case_convr() {
    local g=${E2E_PREFIX}conv-refuse out rc cmd
    admin_env
    write_policy refuse allow with-vcpus
    rm -f "$CONVERGE_Q"/* 2>/dev/null
    define_guest "$g" --vcpus 1 --cache writeback
    inactive_xml "$g" "$E2E_WORK/$g.before.xml"
    out=$(V start "$g" 2>&1) && die "the refuse policy let $g start"
    printf '%s\n' "$out" | grep -qF "kvmtune: guest '$g' violates the tuning policy" || die "refusal message missing: $out"
    [ -f "$CONVERGE_Q/$g" ] || die "the refused $g was not queued"
    out=$(kt converge 2>&1)
    rc=$?
    expect_eq "$rc" 0 "exit status of kvmtune converge after a refused start"
    [ ! -e "$CONVERGE_Q/$g" ] || die "the queue entry of $g is still there"
    start_guest "$g"
    cmd=$(qemu_cmdline "$g")
    printf '%s\n' "$cmd" | grep -q '"cache":{"direct":true' || die "boot 1 lacks a direct cache: $cmd"
    printf '%s\n' "$cmd" | grep -q 'mem-merge=off' || die "boot 1 lacks mem-merge=off: $cmd"
    note "refuse: start refused + queued, converge, the next start (boot 1) conforms: starts until fully conformant: 1"
    V destroy "$g" >/dev/null || die "virsh destroy $g failed"
    out=$(kt revert "$g" 2>&1) || die "kvmtune revert failed: $out"
    inactive_xml "$g" "$E2E_WORK/$g.reverted.xml"
    cmp -s "$E2E_WORK/$g.before.xml" "$E2E_WORK/$g.reverted.xml" || die "revert is not byte for byte"
}
