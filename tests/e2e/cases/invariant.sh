# shellcheck shell=bash
# End-to-end cases for the placement invariant (issue 11): no vCPU on CPU0 or on
# another guest's dedicated CPU, on every lifecycle path, and recovery from what
# runs when the ledger is lost.  Sourced after lib.sh, like cases.sh; each case_*
# runs in its own bash process under `timeout` and fails through `die`.  run.sh
# destroys and undefines every kvmtune-e2e-* guest after each case.
#
# On the CI machine (online CPUs 0-1, one node) CPU 1 is the only CPU a guest may
# get, so one dedicated guest fills the host: every case below checks the kernel's
# view (Cpus_allowed_list of each QEMU thread), not only kvmtune's ledger.
#
# Entries for run.sh's CASES table (id | timeout | needs 2-CPU shape | what):
#   "inv1|90|yes|dedicated guest with no room: refused with one line, never unpinned or on the dedicated CPU"
#   "inv2|90|yes|ledger deleted under a running dedicated guest: rebuilt from what runs; the next dedicated start does not get its CPU"
#   "inv3|150|yes|save A, start B dedicated, restore A: the restore is refused, A never runs on B's CPU"
#   "inv4|90|yes|a definition copied with A's pins onto A's dedicated CPU: refused (warn finds no shared CPU; refuse says why)"
#   "inv5|90|yes|<iothreadpin> kept at started; unpinned threads follow the emulator policy"

# write_dedicated_policy [on_violation] [emulator]: every guest dedicated.
write_dedicated_policy() {
    write_policy "${1:-warn}" allow "${2:-with-vcpus}"
    printf '  pool: dedicated\n' >>"$POLICY"
}

# The guest's QEMU is running (libvirt's view).
is_running() { running_names | grep -qx "$1"; }

# Every thread of GUEST may run only on CPUs within ALLOWED (a cpulist of one
# CPU here: the exact string).
expect_all_threads_on() { # GUEST CPU
    local pid t got
    pid=$(qemu_pid "$1") || die "$1: no pid file"
    for t in /proc/"$pid"/task/*; do
        got=$(thread_cpus "$pid" "${t##*/}")
        [ -n "$got" ] || continue
        [ "$got" = "$2" ] || { dump_threads "$1"; die "$1: thread ${t##*/} on '$got', want only CPU $2"; }
    done
}

# virsh start GUEST must fail in kvmtune's prepare with a one-line reason
# matching PATTERN; prints the reason.
expect_refused_start() { # GUEST PATTERN
    local out line
    if out=$(V start "$1" 2>&1); then
        dump_threads "$1"
        die "$1 started, but kvmtune should have refused it"
    fi
    line=$(printf '%s\n' "$out" | grep -o "kvmtune: guest '$1'.*" | head -n 1)
    [ -n "$line" ] || die "$1: start failed without kvmtune's reason: $out"
    printf '%s\n' "$line" | grep -Eq "$2" || die "$1: refusal '$line' does not match /$2/"
    [ "$(printf '%s\n' "$out" | grep -c "kvmtune: guest '$1'")" = 1 ] || die "$1: more than one kvmtune line: $out"
    is_running "$1" && die "$1 is running after a refused start"
    note "refused: $line"
}

case_inv1() {
    local a=${E2E_PREFIX}inv1-a b=${E2E_PREFIX}inv1-b
    write_dedicated_policy warn
    define_guest "$a" --vcpus 1
    define_guest "$b" --vcpus 1
    start_guest "$a"
    expect_affinity "$a" 1 1
    note "$a holds CPU 1 dedicated"
    expect_refused_start "$b" "cannot be placed"
    expect_all_threads_on "$a" 1
    [ "$(ledger_query get "$a" pool)" = dedicated ] || die "$a is not dedicated in the ledger"
    ledger_query names | grep -qx "$b" && die "$b holds a claim after its refused start"
    note "$a still alone on CPU 1; $b holds no claim"
}

case_inv2() {
    local a=${E2E_PREFIX}inv2-a b=${E2E_PREFIX}inv2-b
    write_dedicated_policy warn
    define_guest "$a" --vcpus 1
    define_guest "$b" --vcpus 1
    start_guest "$a"
    expect_affinity "$a" 1 1
    rm -f "$LEDGER"
    note "ledger deleted under running $a"
    expect_refused_start "$b" "cannot be placed"
    expect_all_threads_on "$a" 1
    [ "$(ledger_query get "$a" pool)" = dedicated ] || { ledger_dump; die "$a was not rebuilt as dedicated"; }
    [ "$(ledger_query get "$a" cpus)" = 1 ] || { ledger_dump; die "$a was not rebuilt on CPU 1"; }
    note "the ledger was rebuilt from what runs: $a dedicated on CPU 1"
}

case_inv3() {
    local a=${E2E_PREFIX}inv3-a b=${E2E_PREFIX}inv3-b save out
    save=$E2E_WORK/inv3-a.save
    write_dedicated_policy warn
    define_guest "$a" --vcpus 1
    define_guest "$b" --vcpus 1
    start_guest "$a"
    expect_affinity "$a" 1 1
    V save "$a" "$save" >/dev/null || die "virsh save $a failed"
    wait_not_in_ledger "$a" 10 || die "$a still claimed after save"
    start_guest "$b"
    expect_affinity "$b" 1 1
    note "$a saved; $b started dedicated on CPU 1"
    if out=$(V restore "$save" 2>&1); then
        is_running "$a" && expect_all_threads_on "$a" 1 && die "$a was restored onto $b's dedicated CPU 1"
    fi
    printf '%s\n' "$out" | grep -q "kvmtune: guest '$a'" || die "restore of $a failed without kvmtune's reason: $out"
    is_running "$a" && die "$a runs although its restore was refused"
    expect_all_threads_on "$b" 1
    note "restore refused: $(printf '%s\n' "$out" | grep -o "kvmtune: guest '$a'.*" | head -n 1)"
}

case_inv4() {
    local a=${E2E_PREFIX}inv4-a c=${E2E_PREFIX}inv4-copy
    write_dedicated_policy warn
    define_guest "$a" --vcpus 1
    # Otherwise conforming, so that under refuse only the pins are the reason.
    define_guest "$c" --vcpus 1 --vcpupin "0:1" --io native --nosharepages
    start_guest "$a"
    expect_affinity "$a" 1 1
    expect_refused_start "$c" "held dedicated by guest '$a'"
    write_dedicated_policy refuse
    expect_refused_start "$c" "cannot start where it asks \(on_violation: refuse\).*held dedicated by guest '$a'"
    expect_all_threads_on "$a" 1
}

case_inv5() {
    local g=${E2E_PREFIX}inv5 pid t comm got io=0
    write_policy warn allow housekeeping
    define_guest "$g" --vcpus 1 --iothreads 2 --iothreadpin "1:1"
    start_guest "$g"
    pid=$(qemu_pid "$g") || die "$g: no pid"
    sleep 0.5
    for t in /proc/"$pid"/task/*; do
        comm=$(cat "$t/comm" 2>/dev/null)
        got=$(thread_cpus "$pid" "${t##*/}")
        case $comm in
            "IO iothread1") io=$((io + 1)); [ "$got" = 1 ] || { dump_threads "$g"; die "iothread1 (<iothreadpin cpuset='1'>) on '$got'"; } ;;
            "IO iothread2") io=$((io + 1)); [ "$got" = 0 ] || { dump_threads "$g"; die "iothread2 (unpinned, emulator: housekeeping) on '$got', want 0"; } ;;
        esac
    done
    [ "$io" = 2 ] || { dump_threads "$g"; die "$g: found $io of 2 iothreads by name"; }
    expect_affinity "$g" 1 ""
    note "iothread1 kept on its <iothreadpin> CPU 1, iothread2 on the housekeeping CPU 0, vCPU on 1"
}
