#!/bin/bash
# The systemd boot of the multi-NUMA VM (run.sh --topology systemd): systemd is
# PID 1 (init=/lib/systemd/systemd) and runs this script as the kernel command
# line's `systemd.run=` service (kernel-command-line.service, which the VM is
# booted into: basic.target with sockets, paths and timers, no multi-user.target),
# after mounting the per-run e2e disk on /e2e. The VM powers off when it exits.
#
# Cases, against the installed .deb and its systemd units:
#   boot         PID 1 is systemd, journald takes /dev/log, libvirtd started by systemd
#   install      dpkg -i with KVMTUNE_RESTART_LIBVIRTD=1: hook link, libvirtd restarted
#                by systemd, units enabled by deb-systemd-helper and started by
#                deb-systemd-invoke, nothing failed
#   converge     a guest with cache='writeback' (no <nosharepages/>) starts under the
#                shipped policy (warn, converge: after-start); kvmtune-converge.path
#                fires and its definition conforms within seconds; a backup exists;
#                revert restores it byte for byte. A second guest with
#                host-passthrough as well: its first start fails (TCG has no host
#                CPU to pass through) after the hook queued it; the path unit makes
#                it host-model, and its second start conforms (not queued again)
#   metrics      kvmtune-metrics.timer writes the textfile; a start of its service
#                replaces it atomically (new inode, no temp file left)
#   purge        dpkg -r stops the units and removes the hook; dpkg -P leaves no unit,
#                link, state or file of kvmtune's behind (backups kept, and said so)
# Output: the E2E: line protocol of run.sh on the console; details in /e2e/out.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/root
OUT=/e2e/out
mkdir -p "$OUT"
exec 3>/dev/console
e2e() { echo "E2E: $*" >&3; }

P=kvmtune-e2e-
G=${P}sdconv
GP=${P}sdpass
QUEUE=/run/kvmtune/converge
TEXTFILE_DIR=/var/lib/prometheus/node-exporter
BACKUPS=/var/lib/kvmtune/backups
UNITS_ENABLED="kvmtune-converge.path kvmtune-converge.timer kvmtune-metrics.timer"
UNITS_ALL="$UNITS_ENABLED kvmtune-converge.service kvmtune-metrics.service"

ev() { echo "E2E: EV $CASE $*" >&3; echo "EV $*"; }
die() { echo "FAIL: $*"; echo "$*" >"$OUT/case-$CASE.reason"; exit 1; }
V() { timeout -k 5 120 virsh -q -c qemu:///system "$@"; }
journal_since() { journalctl --no-pager -q -o cat --since "@$1" "${@:2}" 2>/dev/null; }
# wait_for SECONDS COMMAND...: polls COMMAND every 0.5 s.
wait_for() {
    local end=$(($(date +%s) + $1)) ; shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$end" ] || return 1
        sleep 0.5
    done
}

# ------------------------------------------------------------------ libvirt under systemd
# The base image has libvirt-daemon (the daemons), not libvirt-daemon-system (its
# units, users and default network): the units here are Debian's, trimmed to what
# the VM has (no socket activation, no virtlockd).
setup_libvirt_units() {
    getent group kvm >/dev/null || groupadd -r kvm
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    id libvirt-qemu >/dev/null 2>&1 || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    mkdir -p /var/log/libvirt /var/lib/libvirt/qemu /var/lib/libvirt/images /var/cache/libvirt /etc/libvirt/hooks
    cat >/etc/systemd/system/virtlogd.service <<'EOF'
[Unit]
Description=libvirt logging daemon (kvmtune e2e)
[Service]
ExecStart=/usr/sbin/virtlogd
EOF
    cat >/etc/systemd/system/libvirtd.service <<EOF
[Unit]
Description=libvirt daemon (kvmtune e2e: Debian's unit without socket activation)
Wants=virtlogd.service systemd-machined.service
After=virtlogd.service dbus.service systemd-machined.service local-fs.target
[Service]
Type=notify
Environment=LIBVIRT_LOG_OUTPUTS=1:file:$OUT/libvirtd.log
Environment="LIBVIRT_LOG_FILTERS=1:util.hook 3:util 3:qemu 3:rpc 3:conf 3:security 3:cgroup 3:systemd"
ExecStart=/usr/sbin/libvirtd
ExecReload=/bin/kill -HUP \$MAINPID
KillMode=process
Restart=on-failure
TimeoutStartSec=120
LimitNOFILE=8192
[Install]
WantedBy=multi-user.target
EOF
    systemctl daemon-reload
}
libvirtd_pid() { systemctl show -p MainPID --value libvirtd.service; }
conforms() { V dumpxml --inactive "$1" | grep -q "cache='none'"; }
cpu_conforms() { V dumpxml --inactive "$1" | grep -q "<cpu mode='host-model'"; }
libvirt_answers() { timeout 5 virsh -q -c qemu:///system version >/dev/null 2>&1; }

# A guest that breaks rules 2.1 (cache='writeback') and 3.1 (no <nosharepages/>),
# and with CPU mode host-passthrough rule 5 too.
define_guest() { # NAME [CPU_MODE]
    truncate -s 16M "/var/lib/libvirt/images/$1.img"
    cat >"$OUT/$1.xml" <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>64</memory>
  <currentMemory unit='MiB'>64</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <cpu mode='${2:-maximum}'/>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <source file='/var/lib/libvirt/images/$1.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
    V define "$OUT/$1.xml" >/dev/null || die "virsh define $1 failed"
}

# ------------------------------------------------------------------ cases

case_boot() {
    local state
    [ "$(cat /proc/1/comm)" = systemd ] || die "PID 1 is $(cat /proc/1/comm), not systemd"
    state=$(systemctl is-system-running 2>&1)
    ev "PID 1 $(readlink /proc/1/exe), $(systemctl --version | head -n 1); system $state; /dev/log -> $(readlink -f /dev/log)"
    [ -S /dev/log ] || die "no /dev/log (journald's socket)"
    setup_libvirt_units
    systemctl start libvirtd.service || die "systemctl start libvirtd failed: $(systemctl status libvirtd 2>&1 | tail -n 5 | tr '\n' ' ')"
    wait_for 60 libvirt_answers || die "libvirtd does not answer"
    ev "libvirtd.service $(systemctl is-active libvirtd) MainPID $(libvirtd_pid); cgroup $(sed -n 's/^0:://p' "/proc/$(libvirtd_pid)/cgroup"); machined $(systemctl is-active systemd-machined)"
}

case_install() {
    local before after u out
    mkdir -p "$TEXTFILE_DIR" # node_exporter's textfile directory: the metrics timer runs
    before=$(libvirtd_pid)
    KVMTUNE_RESTART_LIBVIRTD=1 dpkg -i /e2e/kvmtune.deb >"$OUT/dpkg.log" 2>&1 || die "dpkg -i failed: $(tail -n 5 "$OUT/dpkg.log" | tr '\n' ' ')"
    ev "postinst: $(grep '^kvmtune: ' "$OUT/dpkg.log" | cut -c1-160 | tr '\n' ' ')"
    [ "$(readlink /etc/libvirt/hooks/qemu)" = /usr/bin/kvmtune ] || die "hook link: $(ls -l /etc/libvirt/hooks/qemu 2>&1)"
    grep -q 'restarted libvirtd so that it calls the new hook' "$OUT/dpkg.log" || die "postinst did not restart libvirtd: $(grep kvmtune: "$OUT/dpkg.log" | tr '\n' ' ')"
    wait_for 60 libvirt_answers || die "libvirtd does not answer after the postinst restart"
    after=$(libvirtd_pid)
    ev "libvirtd MainPID $before -> $after ($(systemctl is-active libvirtd))"
    [ "$after" != "$before" ] && [ "$after" != 0 ] || die "libvirtd was not restarted by systemd (MainPID $before -> $after)"
    for u in $UNITS_ENABLED; do
        out="$(systemctl is-enabled "$u" 2>&1) $(systemctl is-active "$u" 2>&1)"
        ev "$u: $out; wanted by $(systemctl show -p WantedBy --value "$u")"
        [ "$out" = "enabled active" ] || die "$u is '$out', want enabled and active"
        [ -e "/var/lib/systemd/deb-systemd-helper-enabled/$u.dsh-also" ] || die "no deb-systemd-helper state for $u"
    done
    [ -d "$QUEUE" ] || die "kvmtune-converge.path did not make $QUEUE"
    ev "queue directory: $(stat -c '%A %U' "$QUEUE"); enablement links: $(find /etc/systemd/system -name 'kvmtune*' | sort | tr '\n' ' ')"
    out=$(systemctl list-units --failed --no-legend --plain 2>&1)
    ev "failed units: ${out:-none}"
    case $out in *kvmtune*) die "failed kvmtune units: $out" ;; esac
}

case_converge() {
    local t0 t_start t_done out backup n
    define_guest "$G"
    V dumpxml --inactive "$G" >"$OUT/$G.before.xml"
    t0=$(date +%s)
    out=$(V start "$G" 2>&1) || die "virsh start $G failed: $out"
    t_start=$(date +%s.%N)
    # kvmtune-converge.path -> kvmtune-converge.service -> kvmtune converge
    wait_for 60 conforms "$G" ||
        die "the definition did not conform within 60 s; converge.service: $(systemctl status kvmtune-converge.service 2>&1 | tail -n 8 | tr '\n' ' ')"
    t_done=$(date +%s.%N)
    V dumpxml --inactive "$G" >"$OUT/$G.after.xml"
    ev "conformed $(python3 -c "print(f'{$t_done - $t_start:.1f}')") s after virsh start returned; definition now: $(grep -oE "<driver [^>]*>|<nosharepages/>|<vcpupin [^>]*>" "$OUT/$G.after.xml" | tr '\n' ' ')"
    echo "E2E: NOTE converge systemd: definition conformed $(python3 -c "print(f'{$t_done - $t_start:.1f}')") s after the start returned" >&3
    for n in "cache='none'" "<nosharepages/>"; do
        grep -qF -- "$n" "$OUT/$G.after.xml" || die "the converged definition lacks $n"
    done
    out=$(journal_since "$t0" -u kvmtune-converge.service -u kvmtune-converge.path)
    ev "journal of the units: $(echo "$out" | tr '\n' ' ' | cut -c1-300)"
    out=$(journal_since "$t0" -t kvmtune | grep -F "guest=$G")
    echo "$out" >"$OUT/$G.syslog"
    ev "kvmtune lines: $(echo "$out" | cut -c1-200 | tr '\n' '|')"
    echo "$out" | grep -q 'stage=prepare-begin.*converge: queued' || die "no prepare line saying $G was queued"
    echo "$out" | grep -q 'stage=converge outcome=defined' || die "no converge line (stage=converge outcome=defined)"
    [ "$(systemctl show -p Result --value kvmtune-converge.service)" = success ] || die "kvmtune-converge.service result $(systemctl show -p Result --value kvmtune-converge.service)"
    [ -z "$(ls -A "$QUEUE")" ] || die "queue not drained: $(ls -A "$QUEUE")"
    backup=$(ls "$BACKUPS/$G"/*.xml 2>/dev/null | head -n 1)
    [ -n "$backup" ] || die "no backup under $BACKUPS/$G"
    cmp -s "$backup" "$OUT/$G.before.xml" || die "backup $backup differs from the definition before the start"
    ev "backup $backup == the definition before"
    # (The second cold boot of a converged definition: the host-passthrough guest below.)
    V destroy "$G" >/dev/null
    out=$(kvmtune revert "$G" 2>&1) || die "kvmtune revert failed: $out"
    V dumpxml --inactive "$G" >"$OUT/$G.reverted.xml"
    cmp -s "$OUT/$G.before.xml" "$OUT/$G.reverted.xml" || die "revert is not byte for byte: $(diff "$OUT/$G.before.xml" "$OUT/$G.reverted.xml" | head -n 5 | tr '\n' ' ')"
    ev "kvmtune revert: dumpxml --inactive byte-identical to the definition before"

    # host-passthrough: libvirt fails the start after the prepare hook queued it.
    define_guest "$GP" host-passthrough
    t0=$(date +%s)
    if out=$(V start "$GP" 2>&1); then
        ev "$GP started with host-passthrough (the VM has a host CPU model here)"
    else
        ev "$GP's first start failed, as TCG must: $(echo "$out" | tr '\n' ' ' | cut -c1-200)"
    fi
    t_start=$(date +%s.%N)
    wait_for 60 cpu_conforms "$GP" ||
        die "$GP's definition did not become host-model within 60 s; queue: $(ls -A "$QUEUE"); $(journal_since "$t0" -t kvmtune | grep -F "guest=$GP" | cut -c1-200 | tr '\n' '|')"
    t_done=$(date +%s.%N)
    out=$(journal_since "$t0" -t kvmtune | grep -F "guest=$GP")
    ev "$GP host-model $(python3 -c "print(f'{$t_done - $t_start:.1f}')") s after the start returned; $(echo "$out" | grep -o 'stage=converge outcome=[a-z]*.*rule 5[^;]*' | cut -c1-200)"
    echo "$out" | grep -q 'stage=prepare-begin.*converge: queued' || die "no prepare line saying $GP was queued"
    V dumpxml --inactive "$GP" | grep -q "cache='none'" || die "$GP's converged definition still lacks cache='none'"
    V destroy "$GP" >/dev/null 2>&1
    t0=$(date +%s)
    out=$(V start "$GP" 2>&1) || die "$GP does not start after convergence: $out"
    sleep 1
    out=$(journal_since "$t0" -t kvmtune | grep -F "guest=$GP" | grep 'stage=prepare-begin')
    ev "$GP's second start (host-model): $(echo "$out" | cut -c1-200)"
    case $out in *violation* | *"converge: queued"*) die "the second start still violates or was queued: $out" ;; esac
}

case_metrics() {
    local f=$TEXTFILE_DIR/kvmtune.prom i1 i2 out
    # The timer (OnBootSec=30s, every 30 s) started at install: its first run.
    wait_for 45 test -s "$f" || die "kvmtune-metrics.timer wrote no $f within 45 s: $(systemctl status kvmtune-metrics.timer kvmtune-metrics.service 2>&1 | tail -n 12 | tr '\n' ' ')"
    i1=$(stat -c %i "$f")
    ev "written by the timer: $(stat -c '%A %U %s bytes' "$f"); timer last trigger $(systemctl show -p LastTriggerUSec --value kvmtune-metrics.timer)"
    systemctl start kvmtune-metrics.service || die "systemctl start kvmtune-metrics.service failed: $(systemctl status kvmtune-metrics.service 2>&1 | tail -n 6 | tr '\n' ' ')"
    i2=$(stat -c %i "$f")
    out=$(ls -A "$TEXTFILE_DIR")
    ev "after systemctl start kvmtune-metrics.service: inode $i1 -> $i2; directory: $(echo $out)"
    [ "$i1" != "$i2" ] || die "kvmtune.prom was rewritten in place (same inode $i1), not replaced"
    [ "$out" = kvmtune.prom ] || die "other files in $TEXTFILE_DIR: $out"
    [ "$(systemctl show -p Result --value kvmtune-metrics.service)" = success ] || die "kvmtune-metrics.service result $(systemctl show -p Result --value kvmtune-metrics.service)"
    python3 - "$f" <<'PY' || die "kvmtune.prom is not valid text exposition format"
import re, sys
names = set()
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    if not line or line.startswith("#"):
        m = re.match(r"# (HELP|TYPE) (kvmtune_[a-z0-9_]+) ", line)
        assert line == "" or m or line.startswith("# "), line
        continue
    m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$', line)
    assert m, line
    names.add(m.group(1))
assert any(n.startswith("kvmtune_") for n in names), names
print(" ".join(sorted(names)))
PY
    ev "metrics: $(grep -c '^kvmtune_' "$f") samples; $(grep -m 3 '^kvmtune_' "$f" | tr '\n' ' ' | cut -c1-200)"
}

case_purge() {
    local out left u
    out=$(dpkg -r kvmtune 2>&1) || die "dpkg -r failed: $out"
    echo "$out" >"$OUT/dpkg-remove.log"
    for u in $UNITS_ALL; do
        [ "$(systemctl is-active "$u" 2>&1)" != active ] || die "$u still active after dpkg -r"
    done
    [ ! -e /etc/libvirt/hooks/qemu ] || die "hook link left after dpkg -r"
    [ -f /etc/kvmtune/policy.yaml ] || die "dpkg -r removed the conffile"
    out=$(dpkg -P kvmtune 2>&1) || die "dpkg -P failed: $out"
    echo "$out" >"$OUT/dpkg-purge.log"
    ev "purge: $(grep '^kvmtune: ' "$OUT/dpkg-purge.log" | cut -c1-160 | tr '\n' ' ')"
    systemctl daemon-reload
    left=$(
        find /etc/systemd /lib/systemd /usr/lib/systemd /var/lib/systemd /run/systemd/generator* \
            /etc/libvirt/hooks /usr/share/doc /usr/share/man "$TEXTFILE_DIR" -name '*kvmtune*' 2>/dev/null
        for p in /usr/bin/kvmtune /etc/kvmtune /run/kvmtune /etc/libvirt/hooks/qemu /etc/libvirt/hooks/qemu.d; do
            [ ! -e "$p" ] && [ ! -L "$p" ] || echo "$p"
        done
        find /var/lib/kvmtune -mindepth 1 ! -path "$BACKUPS/*" ! -path "$BACKUPS" 2>/dev/null
        systemctl list-units --all --no-legend --plain 'kvmtune*' 2>/dev/null
        systemctl list-unit-files --no-legend 'kvmtune*' 2>/dev/null
        dpkg-query -W kvmtune 2>/dev/null
    )
    ev "left behind: ${left:-nothing}; /var/lib/kvmtune: $(find /var/lib/kvmtune -type f 2>/dev/null | tr '\n' ' ')"
    [ -z "$left" ] || die "left behind after purge: $(echo $left)"
    grep -q 'kept /var/lib/kvmtune/' "$OUT/dpkg-purge.log" || die "purge did not say it kept the backups"
    [ -n "$(find "$BACKUPS" -type f 2>/dev/null)" ] || die "purge removed the backups of guest definitions"
}

# ------------------------------------------------------------------ runner

CASES="boot install converge metrics purge"

run_case() { # ID TIMEOUT
    CASE=$1
    local t=$2 rc t0 why
    t0=$(date +%s)
    export CASE OUT
    timeout -k 10 "$t" bash -c '. /e2e/systemd-cases.sh --lib; set -u; "case_$CASE"' >"$OUT/case-$CASE.log" 2>&1
    rc=$?
    { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && echo "timed out after ${t}s" >"$OUT/case-$CASE.reason"
    why=$(cat "$OUT/case-$CASE.reason" 2>/dev/null | tr '\n' ' ')
    if [ "$rc" = 0 ]; then
        e2e "PASS $CASE $(($(date +%s) - t0))s"
    else
        e2e "FAIL $CASE $(($(date +%s) - t0))s $why"
        tail -n 15 "$OUT/case-$CASE.log" | sed "s/^/E2E: EV $CASE log: /" >&3
    fi
    return "$rc"
}

main() {
    local c
    e2e NOTE vm "kernel $(uname -r), CPUs $(cat /sys/devices/system/cpu/online), nodes $(cat /sys/devices/system/node/online), init $(cat /proc/1/comm), up $(cut -d' ' -f1 /proc/uptime)s"
    for c in $CASES; do
        # each case needs the ones before it; after a failure only the purge runs
        run_case "$c" 150 || { [ "$c" = purge ] || run_case purge 60; break; }
    done
    for g in $(virsh -q list --name 2>/dev/null); do virsh -q destroy "$g" >/dev/null 2>&1; done
    journalctl -b --no-pager >"$OUT/journal.txt" 2>&1
    systemctl status --all --no-pager 'kvmtune*' 'libvirtd*' >"$OUT/units.txt" 2>&1
    e2e NOTE vm "up $(cut -d' ' -f1 /proc/uptime)s at the end"
    sync
    e2e END
}

[ "${1:-}" = --lib ] || main
