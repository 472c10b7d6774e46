#!/usr/bin/env bash
# kvmtune on a real multi-NUMA kernel: boots an emulated 2-socket, 4-node machine
# (and a 3-node asymmetric one) under QEMU/TCG, with Debian's kernel, libvirtd and
# QEMU inside, installs the kvmtune .deb there, runs the cases (cases.sh) and
# prints one PASS/FAIL/SKIP/XFAIL line per case with the guest kernel's evidence.
# A third boot has systemd as PID 1 and runs systemd-cases.sh: the package's
# units for real (converge path unit, metrics timer, install and purge).
# Run as root:
#
#   tests/e2e/numa-vm/run.sh [--deb FILE] [--topology sym|asym|systemd|both|all]
#                            [--only ID,ID]
#                            [--cache DIR] [--artifacts DIR]
#
#   --deb FILE      the kvmtune .deb to install in the VM (default: built from this
#                   tree with packaging/build.sh, --no-build when
#                   target/release/kvmtune is newer than every source file)
#   --topology T    sym (2 sockets x 4 cores, 4 nodes of 1 GiB), asym (3 nodes:
#                   2 CPUs + 4 CPUs + a memory-only node), systemd (2 nodes,
#                   systemd as init: systemd-cases.sh), both (sym and asym) or
#                   all (the three: the default, or both with --only)
#   --only IDS      only these cases (see cases.sh; not for the systemd boot)
#   --cache DIR     base image cache (default /var/cache/kvmtune-numa-vm)
#   --artifacts DIR serial logs and the VMs' artifacts (default: new /tmp dir)
#
# Exit status: 0 all passed (XFAIL/SKIP allowed), 1 a case failed, 2 setup failed.
# See tests/e2e/README.md ("Multi-NUMA VM").
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
DEB=""
TOPOLOGY=""
ONLY=""
CACHE=${KVMTUNE_NUMA_VM_CACHE:-/var/cache/kvmtune-numa-vm}
ART=""
# Per boot: the whole VM (boot, cases, power-off) must end within this (seconds;
# measured here: sym 240-321 s at load 5-8 and 593 s at load 13-17 with 17 cases, asym 129-237 s).
SYM_TIMEOUT=${NUMA_VM_TIMEOUT:-900}
ASYM_TIMEOUT=${NUMA_VM_TIMEOUT:-360}
SYSTEMD_TIMEOUT=${NUMA_VM_TIMEOUT:-300}

while [ $# -gt 0 ]; do
    case $1 in
        --deb) DEB=$2; shift 2 ;;
        --topology) TOPOLOGY=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --cache) CACHE=$2; shift 2 ;;
        --artifacts) ART=$2; shift 2 ;;
        -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "numa-vm: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$TOPOLOGY" ] || { [ -n "$ONLY" ] && TOPOLOGY=both || TOPOLOGY=all; }
case $TOPOLOGY in sym | asym | systemd | both | all) ;; *) echo "numa-vm: --topology sym|asym|systemd|both|all" >&2; exit 2 ;; esac

T0=$(date +%s)
say() { printf '[numa-vm %3ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
fatal() { say "FATAL: $*"; echo "numa-vm: 0 passed, 1 failed, 0 skipped, 0 xfail (setup failed)"; exit 2; }
[ "$(id -u)" = 0 ] || fatal "must run as root"

ART=${ART:-$(mktemp -d /tmp/kvmtune-numa-vm.XXXXXX)}
mkdir -p "$ART" && ART=$(cd "$ART" && pwd)
WORK=$(mktemp -d /tmp/kvmtune-numa-vm-work.XXXXXX)
QEMU_PID=""
cleanup() {
    [ -n "$QEMU_PID" ] && kill -KILL "$QEMU_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------ host prerequisites
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v mke2fs >/dev/null || need+=(e2fsprogs)
command -v debugfs >/dev/null || need+=(e2fsprogs)
if [ -z "$DEB" ]; then
    command -v dpkg-deb >/dev/null && command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
    command -v rpmbuild >/dev/null || need+=(rpm)
    command -v objdump >/dev/null || need+=(binutils)
fi
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${need[@]}"; } >"$ART/apt-host.log" 2>&1 ||
        { tail -n 20 "$ART/apt-host.log"; fatal "apt-get install failed"; }
fi

# ------------------------------------------------------------ the .deb under test
if [ -z "$DEB" ]; then
    bin=$REPO/target/release/kvmtune
    nb=""
    if [ -x "$bin" ] && [ -z "$(find "$REPO/src" "$REPO/Cargo.toml" "$REPO/Cargo.lock" "$REPO/config" -newer "$bin" -type f 2>/dev/null | head -n 1)" ]; then
        nb=--no-build
    fi
    say "packaging/build.sh $nb --out $WORK/pkg"
    "$REPO/packaging/build.sh" $nb --out "$WORK/pkg" >"$ART/build.log" 2>&1 ||
        { tail -n 20 "$ART/build.log"; fatal "packaging/build.sh failed"; }
    DEB=$(ls "$WORK"/pkg/kvmtune_*.deb | head -n 1)
fi
[ -f "$DEB" ] || fatal "no .deb at $DEB"
DEB=$(readlink -f "$DEB")
say "kvmtune package: $DEB"

# ------------------------------------------------------------ base image (cached)
# Everything that goes into the base image is in this recipe; its hash is the key.
SUITE=bookworm
# systemd-sysv, dbus, systemd-container (machined, as libvirt-daemon-system pulls
# in): only the systemd boot starts them; the other boots' PID 1 is stage1-init.
PACKAGES=mount,util-linux,procps,kmod,systemd-sysv,dbus,systemd-container,libvirt-daemon,libvirt-daemon-driver-qemu,libvirt-clients,qemu-system-x86,numactl,python3
KVER=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n 1)
[ -n "$KVER" ] || { apt-get update -q >/dev/null 2>&1; KVER=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n 1); }
[ -n "$KVER" ] || fatal "cannot resolve linux-image-cloud-amd64"
KEY=$({ echo "$SUITE $PACKAGES $KVER"; cat "$HERE/stage1-init"; } | sha256sum | cut -c1-16)
BASE=$CACHE/$KEY
mkdir -p "$CACHE" || fatal "cannot create $CACHE"
exec 8>"$CACHE/.lock"
flock -w 900 8 || fatal "another run holds $CACHE/.lock"
# Older images (other keys) are not needed any more.
for d in "$CACHE"/*/; do [ "$d" = "$BASE/" ] || rm -rf "$d"; done
if [ -f "$BASE/ok" ]; then
    say "base image: cached $BASE ($KVER)"
else
    say "base image: building $BASE ($SUITE + $KVER)"
    rm -rf "$BASE" && mkdir -p "$BASE" || fatal "cannot create $BASE"
    tb=$(date +%s)
    mmdebstrap --variant=apt --include="$PACKAGES" "$SUITE" "$BASE/rootfs.tar" >"$ART/mmdebstrap.log" 2>&1 ||
        { tail -n 20 "$ART/mmdebstrap.log"; fatal "mmdebstrap failed"; }
    (cd "$WORK" && apt-get download "$KVER" >"$ART/kernel-download.log" 2>&1) ||
        { tail -n 5 "$ART/kernel-download.log"; fatal "apt-get download $KVER failed"; }
    mkdir -p "$WORK/kernel" && dpkg-deb -x "$WORK"/linux-image-*.deb "$WORK/kernel" || fatal "dpkg-deb -x kernel"
    cp "$WORK"/kernel/boot/vmlinuz-* "$BASE/vmlinuz" || fatal "no vmlinuz in $KVER"
    mkdir -p "$WORK/root" && tar -C "$WORK/root" -xf "$BASE/rootfs.tar" || fatal "untar rootfs"
    install -m 0755 "$HERE/stage1-init" "$WORK/root/sbin/kvmtune-e2e-init"
    mkdir -p "$WORK/root/e2e"
    mke2fs -q -t ext4 -L root -d "$WORK/root" "$BASE/root.img" 3G >/dev/null || fatal "mke2fs root"
    rm -rf "$WORK/root" "$WORK/kernel" "$BASE/rootfs.tar"
    touch "$BASE/ok"
    say "base image built in $(($(date +%s) - tb))s"
fi

# ------------------------------------------------------------ per-run disk: suite + .deb
mkdir -p "$WORK/e2e"
cp "$DEB" "$WORK/e2e/kvmtune.deb"
cp "$HERE/init.sh" "$HERE/cases.sh" "$HERE/systemd-cases.sh" "$REPO/tests/e2e/syslog_listener.py" "$WORK/e2e/"
cp "$REPO/config/policy.yaml" "$WORK/e2e/shipped-policy.yaml"
printf %s "$ONLY" >"$WORK/e2e/only"
mkdir -p "$WORK/e2e/out"

# ------------------------------------------------------------ boot
PASSED=0 FAILED=0 SKIPPED=0 XFAILED=0
FAILED_IDS=()

boot() { # TOPOLOGY
    local topo=$1 args=() log=$ART/serial-$1.log disk=$WORK/e2e-$1.img tb rc VM_TIMEOUT=$SYM_TIMEOUT
    local init=init=/sbin/kvmtune-e2e-init
    [ "$1" = sym ] || VM_TIMEOUT=$ASYM_TIMEOUT
    case $topo in
        systemd)
            # systemd as PID 1, booted into the unit it makes of systemd.run=
            # (kernel-command-line.service: mounts the e2e disk, runs
            # systemd-cases.sh, then powers off); 2 sockets x 2 cores, 2 nodes.
            VM_TIMEOUT=$SYSTEMD_TIMEOUT
            args=(-m 2048 -smp 4,sockets=2,cores=2,threads=1
                -object memory-backend-ram,id=m0,size=1G -numa node,nodeid=0,cpus=0-1,memdev=m0
                -object memory-backend-ram,id=m1,size=1G -numa node,nodeid=1,cpus=2-3,memdev=m1)
            init='init=/lib/systemd/systemd systemd.firstboot=off systemd.show_status=0'
            init+=' systemd.run="/bin/mkdir -p /e2e" systemd.run="/bin/mount -t ext4 /dev/nvme1n1 /e2e"'
            init+=' systemd.run="/bin/bash /e2e/systemd-cases.sh"'
            init+=' systemd.run_success_action=poweroff systemd.run_failure_action=poweroff'
            ;;
        sym)
            # 2 sockets x 4 cores; node N = CPUs 2N..2N+1, 1 GiB each; distances
            # 10 local, 11 same socket, 21 the other socket.
            args=(-m 4096 -smp 8,sockets=2,cores=4,threads=1)
            local n
            for n in 0 1 2 3; do
                args+=(-object "memory-backend-ram,id=m$n,size=1G" -numa "node,nodeid=$n,cpus=$((2 * n))-$((2 * n + 1)),memdev=m$n")
            done
            local s d v
            for s in 0 1 2 3; do
                for d in 0 1 2 3; do
                    [ "$s" -lt "$d" ] || continue
                    if [ $((s / 2)) = $((d / 2)) ]; then v=11; else v=21; fi
                    args+=(-numa "dist,src=$s,dst=$d,val=$v")
                done
            done
            ;;
        asym)
            # 3 sockets x 2 cores: node 0 = socket 0 (CPUs 0-1, 768 MiB), node 1 =
            # sockets 1-2 (CPUs 2-5, 1536 MiB), node 2 = memory only (768 MiB).
            args=(-m 3072 -smp 6,sockets=3,cores=2,threads=1
                -object memory-backend-ram,id=m0,size=768M -numa node,nodeid=0,cpus=0-1,memdev=m0
                -object memory-backend-ram,id=m1,size=1536M -numa node,nodeid=1,cpus=2-5,memdev=m1
                -object memory-backend-ram,id=m2,size=768M -numa node,nodeid=2,memdev=m2
                -numa dist,src=0,dst=1,val=21 -numa dist,src=0,dst=2,val=17 -numa dist,src=1,dst=2,val=28)
            ;;
    esac
    echo "$topo" >"$WORK/e2e/topology"
    rm -rf "$WORK/e2e/out" && mkdir -p "$WORK/e2e/out"
    rm -f "$disk"
    mke2fs -q -t ext4 -L e2e -d "$WORK/e2e" "$disk" 256M >/dev/null || fatal "mke2fs e2e disk"
    say "booting the $topo topology (timeout ${VM_TIMEOUT}s, serial log $log)"
    tb=$(date +%s)
    timeout -k 10 "$VM_TIMEOUT" qemu-system-x86_64 -machine q35 -accel tcg,thread=multi -cpu max \
        "${args[@]}" -kernel "$BASE/vmlinuz" \
        -append "console=ttyS0 root=/dev/nvme0n1 rw $init panic=1 quiet loglevel=3" \
        -drive "file=$BASE/root.img,if=none,id=d0,format=raw,snapshot=on" -device nvme,drive=d0,serial=root,addr=0x4 \
        -drive "file=$disk,if=none,id=d1,format=raw" -device nvme,drive=d1,serial=e2e,addr=0x5 \
        -nographic -no-reboot -nic none </dev/null >"$log" 2>&1 &
    QEMU_PID=$!
    wait "$QEMU_PID"
    rc=$?
    QEMU_PID=""
    tr -d '\r' <"$log" >"$log.txt" && mv "$log.txt" "$log"
    say "the $topo VM ran $(($(date +%s) - tb))s (qemu exit $rc)"
    # The VM's artifacts (libvirtd log, syslog, per-case logs) from the e2e disk.
    mkdir -p "$ART/$topo"
    debugfs -R "rdump /out $ART/$topo" "$disk" >/dev/null 2>&1
    parse "$topo" "$log" "$rc"
}

# The line protocol: "E2E: RESULT ID (SECONDS s) TEXT", "E2E: EV ID TEXT" (evidence),
# "E2E: NOTE TEXT", "E2E: END". Anything else on the console is ignored.
parse() { # TOPOLOGY LOG QEMU_RC
    local topo=$1 log=$2 rc=$3 kind id rest ended=0 line
    while IFS= read -r line; do
        case $line in *"E2E: "*) line=${line#*E2E: } ;; *) continue ;; esac
        read -r kind id rest <<<"$line"
        case $kind in
            PASS) PASSED=$((PASSED + 1)); printf 'PASS   %s/%s %s\n' "$topo" "$id" "$rest" ;;
            FAIL) FAILED=$((FAILED + 1)); FAILED_IDS+=("$topo/$id"); printf 'FAIL   %s/%s %s\n' "$topo" "$id" "$rest" ;;
            SKIP) SKIPPED=$((SKIPPED + 1)); printf 'SKIP   %s/%s %s\n' "$topo" "$id" "$rest" ;;
            XFAIL) XFAILED=$((XFAILED + 1)); printf 'XFAIL  %s/%s %s\n' "$topo" "$id" "$rest" ;;
            XPASS) PASSED=$((PASSED + 1)); printf 'XPASS  %s/%s %s (remove it from the expected-to-fail list)\n' "$topo" "$id" "$rest" ;;
            EV) printf '       | %s\n' "$rest" ;;
            NOTE) printf '       %s %s\n' "$id" "$rest" ;;
            END) ended=1 ;;
        esac
    done <"$log"
    if [ "$ended" = 0 ]; then
        FAILED=$((FAILED + 1)); FAILED_IDS+=("$topo/vm")
        printf 'FAIL   %s/vm the VM did not finish the suite (qemu exit %s); last console lines:\n' "$topo" "$rc"
        grep -v '^$' "$log" | tail -n 25 | sed 's/^/       | /'
    fi
}

case $TOPOLOGY in
    sym) boot sym ;;
    asym) boot asym ;;
    systemd) boot systemd ;;
    both) boot sym; boot asym ;;
    all) boot sym; boot asym; boot systemd ;;
esac

say "artifacts: $ART"
line="numa-vm: $PASSED passed, $FAILED failed, $SKIPPED skipped, $XFAILED xfail ($(($(date +%s) - T0))s)"
[ "$FAILED" = 0 ] || line+=" failed: ${FAILED_IDS[*]}"
echo "$line"
[ "$FAILED" = 0 ]
