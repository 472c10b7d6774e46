#!/bin/bash
# Run by the VM's PID 1 (stage1-init, in the base image) from the per-run e2e disk
# mounted at /e2e: brings the guest OS up without systemd as on the CI machine,
# installs the kvmtune .deb (postinst makes the hook link), starts virtlogd and
# libvirtd, runs the cases (cases.sh) and reports on the console as E2E: lines.
# Everything is bounded: each case by `timeout`, the whole VM by run.sh's timeout.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/root
OUT=/e2e/out
mkdir -p "$OUT"
e2e() { echo "E2E: $*"; }

mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm /run/lock
mount -t devpts devpts /dev/pts
ln -sf /proc/self/fd /dev/fd; ln -sf /proc/self/fd/0 /dev/stdin; ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo '+cpuset +cpu +memory +io +pids' >/sys/fs/cgroup/cgroup.subtree_control 2>"$OUT/cgroup.err"
echo 1 >/proc/sys/kernel/sysrq
hostname numa-vm 2>/dev/null

e2e NOTE vm "kernel $(uname -r), CPUs $(cat /sys/devices/system/cpu/online), nodes $(cat /sys/devices/system/node/online), topology $(cat /e2e/topology)"

getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
id libvirt-qemu >/dev/null 2>&1 || useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
mkdir -p /var/log/libvirt /run/libvirt /var/lib/libvirt/qemu /var/cache/libvirt /etc/libvirt/hooks

# syslog: kvmtune logs to /dev/log
/usr/bin/python3 /e2e/syslog_listener.py /dev/log "$OUT/syslog.log" /run/syslog-ready </dev/null >"$OUT/syslog-listener.err" 2>&1 &
for i in $(seq 50); do [ -S /dev/log ] && break; sleep 0.1; done

# The package under test, as an admin installs it (libvirt is there already).
if dpkg -i /e2e/kvmtune.deb >"$OUT/dpkg.log" 2>&1; then
    e2e NOTE vm "installed $(dpkg-query -W -f '${Package} ${Version}' kvmtune); hook $(readlink /etc/libvirt/hooks/qemu)"
else
    e2e FAIL install "dpkg -i kvmtune.deb failed: $(tail -n 3 "$OUT/dpkg.log" | tr '\n' ' ')"
fi

. /e2e/cases.sh
run_all

cp /run/kvmtune/ledger.json "$OUT/" 2>/dev/null
sync
e2e END
