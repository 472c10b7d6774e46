#!/usr/bin/env bash
# Package CI for kvmtune (packaging/README.md). As root on Debian 12:
#
#   packaging/ci.sh [--no-build] [--no-e2e] [--artifacts DIR]
#
#   --no-build      package the existing release binary (build.sh --no-build)
#   --no-e2e        skip the real-libvirtd suite against the installed package
#   --artifacts DIR keep packages, logs and e2e artifacts there
#                   (default: a new /tmp/kvmtune-pkg-ci.XXXXXX)
#
# 1. builds the .deb and the .rpm (packaging/build.sh), and a second release of
#    each for the upgrade checks;
# 2. checks their metadata and file lists (dpkg-deb -I/-c, rpm -qip/-qlp), the man
#    pages, completions and scripts, runs lintian and rpmlint (fails on errors),
#    and that the RPM holds the .deb's files;
# 3. installs the .deb with apt-get (dependencies resolved as for an admin), upgrades it with dpkg -i, runs
#    tests/e2e/run.sh --installed against the installed hook, removes and purges
#    it, and checks that nothing of kvmtune's is left (files, hook links, unit
#    enablement links and deb-systemd-helper state: this machine runs no systemd);
# 4. does it again with an admin's own /etc/libvirt/hooks/qemu, which must come
#    through install, upgrade and purge byte for byte (kvmtune goes to qemu.d/);
# 5. installs the .rpm into scratch roots (rpm -i --root DIR --nodeps, with a
#    minimal /bin/sh so the scriptlets really run chrooted), upgrades and erases it,
#    with and without an admin's hook, and compares its files with the .deb's.
#
# Installs what it lacks with apt-get (dpkg-dev, rpm, binutils, lintian, rpmlint,
# libvirt + QEMU).
# Moves an existing hook, /etc/kvmtune, /run/kvmtune and /var/lib/kvmtune aside
# for the run and puts them back at exit. Refuses to run while kvmtune is
# installed as a package, or (with the e2e suite) while libvirtd runs.

# Functions below are called through check/run/trap, which shellcheck cannot see.
# shellcheck disable=SC2317
set -uo pipefail

PKG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$PKG_DIR/.." && pwd)
BUILD_ARGS=()
E2E=1
ART=""
while [ $# -gt 0 ]; do
    case $1 in
        --no-build) BUILD_ARGS+=(--no-build); shift ;;
        --no-e2e) E2E=0; shift ;;
        --artifacts) ART=$2; shift 2 ;;
        -h | --help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "ci.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

HOOK=/etc/libvirt/hooks/qemu
HOOK_DIR=/etc/libvirt/hooks/qemu.d
DROPIN=$HOOK_DIR/kvmtune
LOCK=/run/kvmtune-e2e.lock
START=$(date +%s)
FAILS=0
STEP=""

say() { printf '[pkg-ci] %s\n' "$*"; }
fatal() { printf '[pkg-ci] FATAL: %s\n' "$*" >&2; exit 2; }
step() { STEP=$*; printf '\n[pkg-ci] === %s (%ss)\n' "$*" "$(($(date +%s) - START))"; }
pass() { printf '[pkg-ci] ok    %s\n' "$*"; }
fail() { printf '[pkg-ci] FAIL  %s  (in: %s)\n' "$*" "$STEP"; FAILS=$((FAILS + 1)); }
# check DESCRIPTION COMMAND...: one assertion.
check() {
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}
# Must-succeed step: COMMAND..., its output into LOG, shown on failure.
run() {
    local log=$1
    shift
    if ! "$@" >"$log" 2>&1; then
        sed 's/^/  | /' "$log"
        fatal "$* failed (log: $log)"
    fi
}
is_link_to() { [ -L "$1" ] && [ "$(readlink "$1")" = "$2" ]; }
absent() { [ ! -e "$1" ] && [ ! -L "$1" ]; }
contains() { grep -qF -- "$2" "$1"; }
running() {
    local f
    for f in /proc/[0-9]*/comm; do
        [ "$(cat "$f" 2>/dev/null)" = "$1" ] && return 0
    done
    return 1
}

[ "$(id -u)" = 0 ] || fatal "must run as root"
[ -r /etc/debian_version ] || fatal "needs a Debian machine (dpkg, apt-get)"

ART=${ART:-$(mktemp -d /tmp/kvmtune-pkg-ci.XXXXXX)}
mkdir -p "$ART" || fatal "cannot create $ART"
ART=$(cd "$ART" && pwd)
SAVE=$ART/saved
mkdir -p "$SAVE"

# ------------------------------------------------------------------ the machine
# One e2e run or package CI at a time; released while the e2e suite runs (it takes
# the lock itself).
take_lock() {
    exec 9>"$LOCK"
    flock -w 1200 9 || fatal "another e2e run or package CI holds $LOCK"
}
drop_lock() { flock -u 9; exec 9>&-; }
take_lock

if dpkg-query -W -f='${Status}' kvmtune 2>/dev/null | grep -q 'installed\|config-files'; then
    fatal "the kvmtune package is installed on this machine: purge it first (dpkg -P kvmtune)"
fi
absent /usr/bin/kvmtune || fatal "/usr/bin/kvmtune exists but no package owns it: remove it first"
# (An e2e run that just released the lock may still be stopping its libvirtd.)
for _ in $(seq 30); do
    running libvirtd || running virtqemud || break
    sleep 1
done
if [ "$E2E" = 1 ] && { running libvirtd || running virtqemud; }; then
    fatal "a libvirtd/virtqemud is running; the e2e suite starts its own: stop it first (or --no-e2e)"
fi

# Paths the tests create: moved aside now, put back at exit.
MOVED=()
for p in "$HOOK" "$DROPIN" /etc/kvmtune /run/kvmtune /var/lib/kvmtune; do
    if ! absent "$p"; then
        mv "$p" "$SAVE/$(echo "$p" | tr / _)" || fatal "cannot move $p aside"
        MOVED+=("$p")
        say "moved $p aside (restored at exit)"
    fi
done
HOOKS_EXISTED=0
[ -d /etc/libvirt/hooks ] && HOOKS_EXISTED=1
HOOK_DIR_EXISTED=0
[ -d "$HOOK_DIR" ] && HOOK_DIR_EXISTED=1
ROOTS=()

cleanup() {
    local rc=$? p r
    trap '' INT TERM
    if dpkg-query -W -f='${Status}' kvmtune 2>/dev/null | grep -q 'installed\|config-files'; then
        say "cleanup: purging the test package"
        dpkg -P kvmtune >"$ART/cleanup-purge.log" 2>&1 || say "cleanup: dpkg -P failed, see $ART/cleanup-purge.log"
    fi
    for r in "${ROOTS[@]}"; do rm -rf "$r"; done
    # Whatever the tests left at these paths is theirs.
    for p in "$HOOK" "$DROPIN" /etc/kvmtune /run/kvmtune /var/lib/kvmtune; do
        absent "$p" || rm -rf "$p"
    done
    [ "$HOOK_DIR_EXISTED" = 1 ] || rmdir "$HOOK_DIR" 2>/dev/null
    [ "$HOOKS_EXISTED" = 1 ] || rmdir /etc/libvirt/hooks 2>/dev/null
    for p in "${MOVED[@]}"; do
        mkdir -p "$(dirname "$p")"
        mv "$SAVE/$(echo "$p" | tr / _)" "$p" && say "restored $p"
    done
    say "artifacts: $ART ($(($(date +%s) - START)) s)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ tools
step "tools"
need=()
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v rpmbuild >/dev/null || need+=(rpm)
command -v objdump >/dev/null || need+=(binutils)
command -v lintian >/dev/null || need+=(lintian)
command -v rpmlint >/dev/null || need+=(rpmlint)
dpkg-query -W -f='${Status}' libvirt-daemon-driver-qemu 2>/dev/null | grep -q 'ok installed' ||
    need+=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 libxml2-utils)
if [ ${#need[@]} -gt 0 ]; then
    say "apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    run "$ART/apt-update.log" apt-get update -q
    # qemu-utils from backports may be installed and blocks QEMU 7.2 (LIBVIRT-FACTS.md)
    qu=$(apt-cache madison qemu-utils | awk '/bookworm\/main/ {print $3; exit}')
    case " ${need[*]} " in *" qemu-system-x86 "*) need+=("qemu-utils${qu:+=$qu}") ;; esac
    run "$ART/apt-install.log" apt-get install -y -q --no-install-recommends --allow-downgrades "${need[@]}"
fi
pass "dpkg-deb, dpkg-shlibdeps, rpmbuild, lintian, rpmlint, libvirt-daemon-driver-qemu present"

# ------------------------------------------------------------------ build
step "build (packaging/build.sh)"
OUT=$ART/packages
run "$ART/build.log" "$PKG_DIR/build.sh" "${BUILD_ARGS[@]}" --out "$OUT"
mapfile -t built < <(tail -n 2 "$ART/build.log")
DEB=${built[0]}
RPM=${built[1]}
run "$ART/build2.log" "$PKG_DIR/build.sh" --no-build --release 2 --out "$OUT"
mapfile -t built < <(tail -n 2 "$ART/build2.log")
DEB2=${built[0]}
RPM2=${built[1]}
for f in "$DEB" "$RPM" "$DEB2" "$RPM2"; do [ -f "$f" ] || fatal "build.sh did not make $f"; done
say "$(basename "$DEB") $(basename "$RPM") (+ release 2 of each)"
say "$(grep 'needs glibc' "$ART/build.log")"

# ------------------------------------------------------------------ inspect
step "inspect the .deb (dpkg-deb -I / -c)"
dpkg-deb -I "$DEB" >"$ART/deb-info.txt"
dpkg-deb -c "$DEB" >"$ART/deb-contents.txt"
dpkg-deb -f "$DEB" Depends >"$ART/deb-depends.txt"
check "Package: kvmtune" test "$(dpkg-deb -f "$DEB" Package)" = kvmtune
check "Depends on libvirt's qemu driver" contains "$ART/deb-depends.txt" "libvirt-daemon-driver-qemu | libvirt-daemon-system"
check "Depends on a libc6 version" grep -q 'libc6 (>= 2\.[0-9]*)' "$ART/deb-depends.txt"
check "Section admin, a Description" test -n "$(dpkg-deb -f "$DEB" Description)" -a "$(dpkg-deb -f "$DEB" Section)" = admin
dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles >"$ART/deb-conffiles.txt"
check "conffiles = /etc/kvmtune/policy.yaml" test "$(cat "$ART/deb-conffiles.txt")" = /etc/kvmtune/policy.yaml
for s in postinst prerm postrm; do
    dpkg-deb --ctrl-tarfile "$DEB" | tar -xO "./$s" >"$ART/deb-$s"
    check "$s parses (sh -n)" sh -n "$ART/deb-$s"
done
REQUIRED=(
    /usr/bin/kvmtune
    /etc/kvmtune/policy.yaml
    /usr/share/man/man8/kvmtune.8.gz
    /usr/share/man/man5/kvmtune-policy.5.gz
    /usr/share/bash-completion/completions/kvmtune
    /usr/share/doc/kvmtune/README.md
    /usr/share/doc/kvmtune/policy.md
)
deb_files() { awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }' "$ART/deb-contents.txt" | LC_ALL=C sort; }
deb_files >"$ART/deb-files.txt"
for f in "${REQUIRED[@]}" /usr/share/zsh/vendor-completions/_kvmtune /usr/share/doc/kvmtune/changelog.gz /usr/share/doc/kvmtune/copyright; do
    check "deb holds $f" grep -qx -- "$f" "$ART/deb-files.txt"
done
check "deb ships no file under /etc/libvirt (the hook link is made by postinst)" \
    bash -c "! grep -q '^/etc/libvirt/' '$ART/deb-files.txt'"
check "deb owns /etc/libvirt/hooks/qemu.d" grep -q ' \./etc/libvirt/hooks/qemu\.d/$' "$ART/deb-contents.txt"
check "every file is root:root" bash -c "! awk '\$2 != \"root/root\"' '$ART/deb-contents.txt' | grep -q ."
UNITS=(kvmtune-converge.path kvmtune-converge.service kvmtune-converge.timer kvmtune-metrics.service kvmtune-metrics.timer)
ENABLED_UNITS=(kvmtune-converge.path kvmtune-converge.timer kvmtune-metrics.timer)
for u in "${UNITS[@]}"; do
    check "deb ships /lib/systemd/system/$u" grep -qx "/lib/systemd/system/$u" "$ART/deb-files.txt"
done
check "deb ships no unit under /usr/lib/systemd (Debian 12: /lib/systemd/system)" bash -c "! grep -q '^/usr/lib/systemd/' '$ART/deb-files.txt'"
check "the systemd units pass systemd-analyze verify" "$PKG_DIR/systemd/verify.sh" "$DEB"
check "postinst enables the units with deb-systemd-helper, starts them with deb-systemd-invoke" \
    bash -c "grep -q 'deb-systemd-helper enable' '$ART/deb-postinst' && grep -q 'deb-systemd-invoke \"\$kvmtune_action\"' '$ART/deb-postinst'"
check "no maintainer script calls systemctl but for daemon-reload" \
    bash -c "! cat '$ART/deb-postinst' '$ART/deb-prerm' '$ART/deb-postrm' | grep -v '^ *#' | grep -E '(^|[;&|] *| )systemctl ' | grep -v 'daemon-reload' | grep -v 'kvmtune_say'"

step "lintian (fails on errors; overrides with their reasons: packaging/deb/lintian-overrides)"
# As root lintian only warns that it runs as root.
# One run: every tag, the overridden ones (O:) and the overrides' reasons (N:)
# shown; --fail-on would count the overridden ones, so the errors are counted here.
lintian --fail-on none --display-info --pedantic --show-overrides "$DEB" >"$ART/lintian.txt" 2>&1
lintian_rc=$?
grep -v '^running with root privileges' "$ART/lintian.txt" | sed 's/^/  | /'
if [ "$lintian_rc" = 0 ] && ! grep -q '^E: ' "$ART/lintian.txt"; then
    pass "lintian: no errors ($(grep -c '^W: ' "$ART/lintian.txt") warnings, $(grep -c '^I: ' "$ART/lintian.txt") info, $(grep -c '^P: ' "$ART/lintian.txt") pedantic)"
else
    fail "lintian found $(grep -c '^E: ' "$ART/lintian.txt") error(s) (exit $lintian_rc)"
fi
check "lintian used the shipped overrides ($(grep -c '^O: ' "$ART/lintian.txt"))" grep -q '^O: kvmtune: embedded-library' "$ART/lintian.txt"

step "inspect the .rpm (rpm -qip / -qlp)"
# Queries open an rpm database: a scratch one, not ~/.rpmdb on the build machine
# (Debian's rpm creates ~/.rpmdb whatever --dbpath says, hence HOME).
rpm() { HOME=$ART command rpm --dbpath "$ART/rpmdb" "$@"; }
rpm -qip "$RPM" >"$ART/rpm-info.txt" 2>&1
rpm -qp --requires "$RPM" >"$ART/rpm-requires.txt" 2>&1
rpm -qp --scripts "$RPM" >"$ART/rpm-scripts.txt" 2>&1
rpm -qp --qf '[%{FILEMODES:perms}|%{FILEFLAGS:fflags}|%{FILEUSERNAME}:%{FILEGROUPNAME}|%{FILENAMES}\n]' "$RPM" >"$ART/rpm-contents.txt" 2>&1
rpm -qlp "$RPM" >"$ART/rpm-list.txt" 2>&1
check "Name kvmtune, License MIT" bash -c "grep -q '^Name *: kvmtune' '$ART/rpm-info.txt' && grep -q '^License *: MIT' '$ART/rpm-info.txt'"
check "Requires libvirt-daemon-driver-qemu" grep -qx libvirt-daemon-driver-qemu "$ART/rpm-requires.txt"
check "Requires a glibc symbol version (libc.so.6(GLIBC_2.x))" grep -q '^libc.so.6(GLIBC_2\.' "$ART/rpm-requires.txt"
check "policy.yaml is %config(noreplace)" grep -qx -- '-rw-r--r--|cn|root:root|/etc/kvmtune/policy.yaml' "$ART/rpm-contents.txt"
check "%post links the hook" contains "$ART/rpm-scripts.txt" "kvmtune_link_hook"
# shellcheck disable=SC2016 # the literal text of the scriptlet
check "%preun unlinks only on erase" grep -q 'if \[ "$1" = 0 \]; then' "$ART/rpm-scripts.txt"
check "scriptlets keep printf's %s (no rpm macro damage)" grep -q "printf 'kvmtune: %s" "$ART/rpm-scripts.txt"
rpm_files() { awk -F'|' '$1 !~ /^d/ { print $4 }' "$ART/rpm-contents.txt" | LC_ALL=C sort; }
rpm_files >"$ART/rpm-files.txt"
for f in "${REQUIRED[@]}" /usr/share/zsh/site-functions/_kvmtune /usr/share/licenses/kvmtune/LICENSE /usr/share/doc/kvmtune/CHANGELOG.md; do
    check "rpm holds $f" grep -qx -- "$f" "$ART/rpm-files.txt"
done
check "rpm ships no file under /etc/libvirt" bash -c "! grep -q '^/etc/libvirt/' '$ART/rpm-files.txt'"
for d in /etc/kvmtune /etc/libvirt/hooks /etc/libvirt/hooks/qemu.d; do
    check "rpm owns $d" grep -q "^d[^|]*|[^|]*|root:root|$d\$" "$ART/rpm-contents.txt"
done
check "every file is root:root" bash -c "! awk -F'|' '\$3 != \"root:root\"' '$ART/rpm-contents.txt' | grep -q ."
for u in "${UNITS[@]}"; do
    check "rpm ships /usr/lib/systemd/system/$u" grep -qx "/usr/lib/systemd/system/$u" "$ART/rpm-files.txt"
done
check "%post presets the units (%systemd_post)" grep -q 'preset kvmtune-converge.path kvmtune-converge.timer kvmtune-metrics.timer' "$ART/rpm-scripts.txt"
check "%preun disables and stops them on erase (%systemd_preun)" grep -q 'disable --now kvmtune-converge.path' "$ART/rpm-scripts.txt"

step "rpmlint (fails on errors; filters with their reasons: packaging/rpm/rpmlint.toml)"
(cd "$ART" && HOME=$ART rpmlint -c "$PKG_DIR/rpm/rpmlint.toml" "$RPM") >"$ART/rpmlint.txt" 2>&1
rpmlint_rc=$?
sed -n '/^kvmtune\|packages and/p' "$ART/rpmlint.txt" | sed 's/^/  | /'
if [ "$rpmlint_rc" = 0 ] && grep -q ' 0 errors' "$ART/rpmlint.txt"; then
    pass "rpmlint: no errors ($(sed -n 's/.* \([0-9]*\) warnings.*/\1/p' "$ART/rpmlint.txt") warnings)"
else
    fail "rpmlint found errors (exit $rpmlint_rc)"
fi

step "the RPM holds the .deb's files (family conventions mapped)"
# Where the families differ by convention (packaging/README.md).
normalize() {
    sed -e 's|^/usr/share/zsh/vendor-completions/_kvmtune$|ZSH-COMPLETION|' \
        -e 's|^/usr/share/zsh/site-functions/_kvmtune$|ZSH-COMPLETION|' \
        -e 's|^/usr/share/doc/kvmtune/changelog\.gz$|CHANGELOG|' \
        -e 's|^/usr/share/doc/kvmtune/CHANGELOG\.md$|CHANGELOG|' \
        -e 's|^/usr/share/doc/kvmtune/copyright$|LICENSE|' \
        -e 's|^/usr/share/licenses/kvmtune/LICENSE$|LICENSE|' \
        -e '/^\/usr\/share\/doc\/kvmtune\/changelog\.Debian\.gz$/d' \
        -e 's|^/lib/systemd/system/|UNITDIR/|' -e 's|^/usr/lib/systemd/system/|UNITDIR/|' \
        -e '/^\/usr\/lib\/systemd\/system-preset\/50-kvmtune\.preset$/d' \
        -e '/^\/usr\/share\/lintian\/overrides\/kvmtune$/d' | LC_ALL=C sort
}
normalize <"$ART/deb-files.txt" >"$ART/deb-files.norm"
normalize <"$ART/rpm-files.txt" >"$ART/rpm-files.norm"
if diff -u "$ART/deb-files.norm" "$ART/rpm-files.norm" >"$ART/files.diff"; then
    pass "same $(wc -l <"$ART/deb-files.norm") files in both"
else
    fail "file lists differ:"
    sed 's/^/  | /' "$ART/files.diff"
fi

step "man pages and completions"
EXTRACT=$ART/deb-tree
rm -rf "$EXTRACT"
dpkg-deb -x "$DEB" "$EXTRACT"
for m in "$EXTRACT"/usr/share/man/man*/*.gz; do
    if command -v man >/dev/null; then
        warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$m" 2>&1 >/dev/null)
        if [ -z "$warnings" ]; then pass "$(basename "$m") renders without warnings"; else
            fail "$(basename "$m"): $warnings"
        fi
    else
        check "$(basename "$m") is gzip" gzip -t "$m"
    fi
done
check "the packaged policy is config/policy.yaml" cmp "$EXTRACT/etc/kvmtune/policy.yaml" "$REPO/config/policy.yaml"
check "kvmtune.8 names kvmtune-policy(5)" bash -c "zcat '$EXTRACT/usr/share/man/man8/kvmtune.8.gz' | grep -q 'kvmtune\\\\-policy'"
check "bash completion parses" bash -n "$EXTRACT/usr/share/bash-completion/completions/kvmtune"
check "bash completion completes subcommands" bash -c ". '$EXTRACT/usr/share/bash-completion/completions/kvmtune'; COMP_WORDS=(kvmtune ch); COMP_CWORD=1; _kvmtune kvmtune ch kvmtune; printf '%s\n' \"\${COMPREPLY[@]}\" | grep -qx check"
check "zsh completion starts with #compdef" grep -q '^#compdef kvmtune' "$EXTRACT/usr/share/zsh/vendor-completions/_kvmtune"
need_glibc=$(objdump -T "$EXTRACT/usr/bin/kvmtune" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
check "binary needs glibc <= 2.34 (has $need_glibc)" test "$(printf '%s\n2.34\n' "$need_glibc" | sort -V | tail -n 1)" = 2.34

# ------------------------------------------------------------------ .deb on this machine
left_behind() { # prints what of kvmtune's is still on the machine
    local p
    for p in /usr/bin/kvmtune /etc/kvmtune /run/kvmtune /usr/share/doc/kvmtune \
        /usr/share/man/man8/kvmtune.8.gz /usr/share/bash-completion/completions/kvmtune; do
        absent "$p" || echo "$p"
    done
    is_link_to "$HOOK" /usr/bin/kvmtune && echo "$HOOK"
    absent "$DROPIN" || echo "$DROPIN"
    dpkg-query -W kvmtune >/dev/null 2>&1 && echo "dpkg still knows kvmtune"
    # units, their enablement links and masks, deb-systemd-helper's state, metrics
    find /lib/systemd /usr/lib/systemd /etc/systemd /var/lib/systemd /run/systemd \
        /var/lib/prometheus /usr/share/lintian/overrides -name '*kvmtune*' 2>/dev/null
    return 0
}
# The unit enablement deb-systemd-helper made (links and state) without systemd.
units_enabled_offline() {
    local u
    for u in "${ENABLED_UNITS[@]}"; do
        [ -n "$(find /etc/systemd/system -name "$u" -type l 2>/dev/null)" ] || return 1
        [ -e "/var/lib/systemd/deb-systemd-helper-enabled/$u.dsh-also" ] || return 1
    done
}

step "deb: install on a host without a hook (apt-get install ./kvmtune_*.deb, as an admin does)"
run "$ART/deb-install.log" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$DEB"
sed 's/^/  | /' "$ART/deb-install.log"
check "kvmtune is installed" bash -c "dpkg-query -W -f='\${Status}' kvmtune | grep -q 'ok installed'"
check "/usr/bin/kvmtune runs (--version)" /usr/bin/kvmtune --version
check "$HOOK -> /usr/bin/kvmtune" is_link_to "$HOOK" /usr/bin/kvmtune
check "no qemu.d drop-in as well" absent "$DROPIN"
check "policy.yaml is the packaged one" cmp /etc/kvmtune/policy.yaml "$EXTRACT/etc/kvmtune/policy.yaml"
check "dpkg lists policy.yaml as a conffile" bash -c "dpkg-query -W -f='\${Conffiles}' kvmtune | grep -q /etc/kvmtune/policy.yaml"
check "postinst said it installed the hook" contains "$ART/deb-install.log" "installed the libvirt hook: $HOOK -> /usr/bin/kvmtune"
check "postinst ran kvmtune check" grep -q 'kvmtune: policy check: \|kvmtune check. found problems' "$ART/deb-install.log"
check "postinst said when libvirt calls the hook" grep -q 'libvirt is not running now\|restart libvirtd\|restart virtqemud' "$ART/deb-install.log"
check "man finds kvmtune(8) and kvmtune-policy(5)" bash -c "! command -v man >/dev/null || { man -w 8 kvmtune && man -w 5 kvmtune-policy; }"
# No systemd here (the CI machine's PID 1 is not systemd): deb-systemd-helper only
# makes the enablement links and its state, nothing is started, nothing fails.
if [ -d /run/systemd/system ]; then
    say "systemd runs on this machine: the no-systemd checks are skipped (the NUMA VM's systemd boot covers systemd)"
else
    check "units enabled offline: links in /etc/systemd/system + deb-systemd-helper state" units_enabled_offline
    check "nothing started without systemd (no /run/kvmtune/converge)" absent /run/kvmtune/converge
    check "postinst said how to converge without systemd" contains "$ART/deb-install.log" "systemd does not run here: after a guest starts with violations, run 'kvmtune converge'"
    check "postinst printed no warning, and no complaint of deb-systemd-helper" bash -c "! grep -qi '^kvmtune: warning\\|deb-systemd-helper\\|deb-systemd-invoke\\|not been booted with systemd\\|failed to connect' '$ART/deb-install.log'"
fi

step "deb: upgrade keeps the link and the admin's policy"
echo "# changed by the admin (package CI)" >>/etc/kvmtune/policy.yaml
cp /etc/kvmtune/policy.yaml "$ART/policy.changed"
run "$ART/deb-upgrade.log" dpkg -i "$DEB2"
check "upgraded to release 2" bash -c "dpkg-query -W -f='\${Version}' kvmtune | grep -q -- '-2\$'"
check "hook link kept" is_link_to "$HOOK" /usr/bin/kvmtune
check "no drop-in after the upgrade" absent "$DROPIN"
check "the changed policy is kept" cmp /etc/kvmtune/policy.yaml "$ART/policy.changed"
check "upgrade did not announce a new hook" bash -c "! grep -q 'installed the libvirt hook' '$ART/deb-upgrade.log'"

step "e2e: the real-libvirtd suite against the INSTALLED hook"
if [ "$E2E" = 0 ]; then
    say "skipped (--no-e2e)"
elif [ -x "$REPO/tests/e2e/run.sh" ] && "$REPO/tests/e2e/run.sh" --help 2>/dev/null | grep -q -- --installed; then
    drop_lock
    "$REPO/tests/e2e/run.sh" --installed --artifacts "$ART/e2e" 2>&1 | tee "$ART/e2e.log" | sed 's/^/  | /'
    e2e_rc=${PIPESTATUS[0]}
    take_lock
    if [ "$e2e_rc" = 0 ]; then pass "tests/e2e/run.sh --installed"; else fail "tests/e2e/run.sh --installed exited $e2e_rc (artifacts: $ART/e2e)"; fi
    check "the e2e suite left the hook link alone" is_link_to "$HOOK" /usr/bin/kvmtune
else
    fail "tests/e2e/run.sh is missing or does not take --installed"
fi

step "deb: remove, then purge"
mkdir -p /run/kvmtune /var/lib/kvmtune/backups/ci-guest
echo '{}' >/run/kvmtune/ledger.json
echo '<domain/>' >/var/lib/kvmtune/backups/ci-guest/ci.xml
run "$ART/deb-remove.log" dpkg -r kvmtune
sed 's/^/  | /' "$ART/deb-remove.log"
check "binary removed" absent /usr/bin/kvmtune
check "hook link removed" absent "$HOOK"
check "policy kept after remove (conffile)" test -f /etc/kvmtune/policy.yaml
check "units gone after remove (only deb-systemd-helper's masks stay until purge)" bash -c "! ls /lib/systemd/system/kvmtune* >/dev/null 2>&1"
run "$ART/deb-purge.log" dpkg -P kvmtune
sed 's/^/  | /' "$ART/deb-purge.log"
check "/etc/kvmtune purged" absent /etc/kvmtune
check "/run/kvmtune purged" absent /run/kvmtune
check "backups kept" test -f /var/lib/kvmtune/backups/ci-guest/ci.xml
check "purge said where the backups are" contains "$ART/deb-purge.log" "kept /var/lib/kvmtune/"
check "qemu.d removed again (empty, owned by the package)" bash -c "[ $HOOK_DIR_EXISTED = 1 ] || [ ! -e '$HOOK_DIR' ]"
leftovers=$(left_behind)
if [ -z "$leftovers" ]; then pass "nothing of kvmtune's is left"; else fail "left behind: ${leftovers//$'\n'/ }"; fi
rm -rf /var/lib/kvmtune

step "deb: an admin's own $HOOK survives install, upgrade and purge"
mkdir -p /etc/libvirt/hooks
printf '#!/bin/sh\n# the admin'"'"'s own qemu hook (package CI)\nexit 0\n' >"$HOOK"
chmod 0750 "$HOOK"
admin_state() { stat -c '%F %a %U:%G %s' "$HOOK"; sha256sum <"$HOOK"; }
admin_unchanged() { diff <(admin_state) "$ART/admin-hook.before"; }
admin_state >"$ART/admin-hook.before"
run "$ART/deb-admin-install.log" dpkg -i "$DEB"
sed 's/^/  | /' "$ART/deb-admin-install.log"
check "admin hook untouched after install" admin_unchanged
check "hook installed as $DROPIN -> /usr/bin/kvmtune" is_link_to "$DROPIN" /usr/bin/kvmtune
check "postinst said so" contains "$ART/deb-admin-install.log" "installed the hook as $DROPIN"
run "$ART/deb-admin-upgrade.log" dpkg -i "$DEB2"
check "admin hook untouched after upgrade" admin_unchanged
check "drop-in kept by the upgrade" is_link_to "$DROPIN" /usr/bin/kvmtune
run "$ART/deb-admin-purge.log" dpkg -P kvmtune
check "admin hook untouched after purge" admin_unchanged
check "drop-in removed" absent "$DROPIN"
leftovers=$(left_behind)
if [ -z "$leftovers" ]; then pass "nothing of kvmtune's is left"; else fail "left behind: ${leftovers//$'\n'/ }"; fi
rm -f "$HOOK"

# ------------------------------------------------------------------ .rpm in scratch roots
# A scratch root with just enough for the scriptlets: rpm runs them chrooted into
# it with /bin/sh, so sh and the few commands functions.sh uses are copied in with
# their libraries (and kvmtune's, so %post's `kvmtune check` runs too).
make_root() {
    local root=$1 c lib
    mkdir -p "$root/usr/bin" "$root/var/tmp" "$root/tmp" "$root/dev" "$root/etc" "$root/run"
    ln -s usr/bin "$root/bin"
    mknod -m 0666 "$root/dev/null" c 1 3
    for c in sh readlink ln mkdir rm rmdir cat; do
        cp -L "$(command -v "$c")" "$root/usr/bin/$c"
    done
    for lib in $( { for c in "$root"/usr/bin/* "$EXTRACT/usr/bin/kvmtune"; do ldd "$c"; done; } |
        grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    command rpm --root "$root" --initdb
}
rpm_in() { local root=$1; shift; command rpm --root "$root" "$@"; }

step "rpm: install into a scratch root (rpm -i --root DIR --nodeps)"
R1=$ART/rpmroot-fresh
rm -rf "$R1"
ROOTS+=("$R1")
make_root "$R1"
run "$ART/rpm-install.log" rpm_in "$R1" -i --nodeps "$RPM"
sed 's/^/  | /' "$ART/rpm-install.log"
check "rpm knows kvmtune in the root" rpm_in "$R1" -q kvmtune
check "no scriptlet failed" bash -c "! grep -qi 'scriptlet failed\|error:' '$ART/rpm-install.log'"
for f in "${REQUIRED[@]}"; do
    check "root has $f" test -f "$R1$f"
done
check "%post made $HOOK -> /usr/bin/kvmtune in the root" is_link_to "$R1$HOOK" /usr/bin/kvmtune
check "no drop-in in the root" absent "$R1$DROPIN"
for u in "${ENABLED_UNITS[@]}"; do
    check "the preset enables $u" grep -qx "enable $u" "$R1/usr/lib/systemd/system-preset/50-kvmtune.preset"
done
check "%post said how to converge without systemd" contains "$ART/rpm-install.log" "systemd does not run here"
check "%post said it installed the hook" contains "$ART/rpm-install.log" "installed the libvirt hook: $HOOK -> /usr/bin/kvmtune"
check "%post ran kvmtune check" grep -q 'kvmtune: policy check: \|kvmtune check. found problems' "$ART/rpm-install.log"
# The same bytes as the .deb wherever both have a file.
same=0
differ=()
while read -r f; do
    if [ ! -f "$EXTRACT$f" ] || [ ! -f "$R1$f" ]; then continue; fi
    if cmp -s "$EXTRACT$f" "$R1$f"; then same=$((same + 1)); else differ+=("$f"); fi
done <"$ART/deb-files.txt"
if [ ${#differ[@]} = 0 ] && [ "$same" -gt 10 ]; then pass "$same files identical in the .deb and the .rpm"; else
    fail "files differ between the .deb and the .rpm: ${differ[*]:-(only $same compared)}"
fi

step "rpm: upgrade and erase in the scratch root"
echo "# changed by the admin (package CI)" >>"$R1/etc/kvmtune/policy.yaml"
cp "$R1/etc/kvmtune/policy.yaml" "$ART/rpm-policy.changed"
run "$ART/rpm-upgrade.log" rpm_in "$R1" -U --nodeps "$RPM2"
check "upgraded to release 2" bash -c "rpm --root '$R1' -q --qf '%{RELEASE}' kvmtune | grep -qx 2"
check "hook link kept" is_link_to "$R1$HOOK" /usr/bin/kvmtune
check "changed policy kept" cmp "$R1/etc/kvmtune/policy.yaml" "$ART/rpm-policy.changed"
mkdir -p "$R1/run/kvmtune"
echo '{}' >"$R1/run/kvmtune/ledger.json"
run "$ART/rpm-erase.log" rpm_in "$R1" -e kvmtune
sed 's/^/  | /' "$ART/rpm-erase.log"
check "binary erased" absent "$R1/usr/bin/kvmtune"
check "hook link removed by %preun" absent "$R1$HOOK"
check "/run/kvmtune removed by %postun" absent "$R1/run/kvmtune"
check "the changed policy is saved as policy.yaml.rpmsave" test -f "$R1/etc/kvmtune/policy.yaml.rpmsave"

step "rpm: an admin's own $HOOK in the scratch root"
R2=$ART/rpmroot-admin
rm -rf "$R2"
ROOTS+=("$R2")
make_root "$R2"
mkdir -p "$R2/etc/libvirt/hooks"
printf '#!/bin/sh\nexit 0\n' >"$R2$HOOK"
chmod 0700 "$R2$HOOK"
sha_before=$(sha256sum <"$R2$HOOK")
run "$ART/rpm-admin-install.log" rpm_in "$R2" -i --nodeps "$RPM"
check "admin hook untouched" test "$(sha256sum <"$R2$HOOK")" = "$sha_before" -a ! -L "$R2$HOOK"
check "%post made the drop-in" is_link_to "$R2$DROPIN" /usr/bin/kvmtune
check "%post said so" contains "$ART/rpm-admin-install.log" "installed the hook as $DROPIN"
run "$ART/rpm-admin-upgrade.log" rpm_in "$R2" -U --nodeps "$RPM2"
check "drop-in kept by the upgrade" is_link_to "$R2$DROPIN" /usr/bin/kvmtune
run "$ART/rpm-admin-erase.log" rpm_in "$R2" -e kvmtune
check "admin hook untouched after erase" test "$(sha256sum <"$R2$HOOK")" = "$sha_before"
check "drop-in removed" absent "$R2$DROPIN"

step "rpm: the restart switch, with a (fake) running libvirtd in the scratch root"
# The chroot has no /proc mounted, so a plain file stands in for the running
# daemon's /proc/PID/comm; an init script records how it was called.
R3=$ART/rpmroot-restart
rm -rf "$R3"
ROOTS+=("$R3")
make_root "$R3"
mkdir -p "$R3/proc/4242" "$R3/etc/init.d"
echo 4242 >"$R3/run/libvirtd.pid"
echo libvirtd >"$R3/proc/4242/comm"
printf '#!/bin/sh\necho "$*" >>/var/tmp/initd-calls\n' >"$R3/etc/init.d/libvirtd"
chmod 0755 "$R3/etc/init.d/libvirtd"
run "$ART/rpm-restart-none.log" rpm_in "$R3" -i --nodeps "$RPM"
check "no switch: libvirtd not restarted" absent "$R3/var/tmp/initd-calls"
check "no switch: told to restart libvirtd" contains "$ART/rpm-restart-none.log" "restart libvirtd (e.g. 'systemctl restart libvirtd') before it calls kvmtune"
run "$ART/rpm-restart-none-erase.log" rpm_in "$R3" -e kvmtune
run "$ART/rpm-restart-env.log" env KVMTUNE_RESTART_LIBVIRTD=1 rpm --root "$R3" -i --nodeps "$RPM"
check "KVMTUNE_RESTART_LIBVIRTD=1: libvirtd restarted" grep -qx restart "$R3/var/tmp/initd-calls"
check "KVMTUNE_RESTART_LIBVIRTD=1: said so" contains "$ART/rpm-restart-env.log" "restarted libvirtd so that it calls the new hook"
run "$ART/rpm-restart-env-erase.log" rpm_in "$R3" -e kvmtune
rm -f "$R3/var/tmp/initd-calls"
mkdir -p "$R3/etc/kvmtune"
touch "$R3/etc/kvmtune/restart-libvirtd"
run "$ART/rpm-restart-flag.log" rpm_in "$R3" -i --nodeps "$RPM"
check "/etc/kvmtune/restart-libvirtd: libvirtd restarted" grep -qx restart "$R3/var/tmp/initd-calls"
rm -f "$R3/var/tmp/initd-calls"
run "$ART/rpm-restart-upgrade.log" rpm_in "$R3" -U --nodeps "$RPM2"
check "an upgrade (link unchanged) restarts nothing" absent "$R3/var/tmp/initd-calls"

# ------------------------------------------------------------------ result
step "result"
if [ "$FAILS" = 0 ]; then
    say "all package checks passed in $(($(date +%s) - START)) s"
    exit 0
fi
say "$FAILS check(s) failed"
exit 1
