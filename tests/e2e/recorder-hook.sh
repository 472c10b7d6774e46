#!/bin/sh
# Trivial libvirt qemu hook used by the e2e suite (never kvmtune itself).
#
# Installed as /etc/libvirt/hooks/qemu.d/zz-kvmtune-e2e-recorder; libvirt runs
# qemu.d/ scripts after /etc/libvirt/hooks/qemu.  For every call on a guest named
# kvmtune-e2e-* it records argv and stdin, and at `started` a snapshot of the
# guest's status file, threads (name + Cpus_allowed_list) and cgroups.  Output
# goes to the directory named in /run/kvmtune-e2e/trace-dir (libvirt passes hooks
# no environment of ours; nothing is recorded when that file is absent).
#
# At restore/migrate libvirt hands this script the XML printed by the previous
# hook (kvmtune) and uses what this script prints: so it echoes stdin verbatim.
# It must never call libvirt (deadlock) and always exits 0.

guest="$1"; op="$2"; sub="$3"; extra="$4"
conf=/run/kvmtune-e2e/trace-dir
dir=""
[ -r "$conf" ] && dir="$(cat "$conf")"

case "$op" in
    restore|migrate)
        if [ -n "$dir" ] && [ -d "$dir" ]; then
            tee "$dir/$guest.$op.$(date +%s%N).in.xml"
        else
            cat
        fi
        ;;
    *)
        if [ -z "$dir" ] || [ ! -d "$dir" ]; then
            cat >/dev/null
            exit 0
        fi
        case "$guest" in
            kvmtune-e2e-*) ;;
            *) cat >/dev/null; exit 0 ;;
        esac
        ts="$(date +%s%N)"
        cat >"$dir/$guest.$op.$ts.in.xml"
        ;;
esac

[ -n "$dir" ] && [ -d "$dir" ] || exit 0
ts="${ts:-$(date +%s%N)}"
echo "$ts $guest $op $sub $extra" >>"$dir/calls.log"

if [ "$op" = started ]; then
    snap="$dir/$guest.started.$ts"
    cp "/run/libvirt/qemu/$guest.xml" "$snap.status.xml" 2>/dev/null
    pid="$(cat "/run/libvirt/qemu/$guest.pid" 2>/dev/null)"
    if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then
        cat "/proc/$pid/cgroup" >"$snap.cgroup" 2>/dev/null
        for t in /proc/"$pid"/task/*; do
            tid="${t##*/}"
            comm="$(cat "$t/comm" 2>/dev/null)"
            cpus="$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "$t/status" 2>/dev/null)"
            cg="$(sed -n 's/^[0-9]*:cpuset://p' "$t/cgroup" 2>/dev/null)"
            printf '%s\t%s\t%s\t%s\n' "$tid" "$comm" "$cpus" "$cg"
        done >"$snap.threads"
    fi
fi
exit 0
