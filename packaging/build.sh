#!/usr/bin/env bash
# Builds the kvmtune .deb and .rpm from this repository (packaging/README.md):
#
#   packaging/build.sh [--release N] [--no-build] [--out DIR] [--install-deps]
#
#   --release N   package revision/release (default 1): kvmtune_VERSION-N_ARCH.deb,
#                 kvmtune-VERSION-N.ARCH.rpm
#   --no-build    package the existing release binary instead of building it (the
#                 xtask that writes the man pages and completions is still built)
#   --out DIR     where the packages go (default: $CARGO_TARGET_DIR or target/,
#                 then /packages)
#   --install-deps  install the missing tools first (as root: apt-get on Debian
#                 and Ubuntu, dnf on Fedora and RHEL); without it a missing tool
#                 is named in one line with what to install
#
# Needs Rust's cargo (https://rustup.rs), dpkg-deb and dpkg-shlibdeps (Debian
# package dpkg-dev), rpmbuild (Debian: rpm; Fedora/RHEL: rpm-build), binutils
# (objdump, strip) and gzip. Runs as any user. Prints the two package paths last.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PKG=$REPO/packaging
RELEASE=1
BUILD=1
OUT=""
INSTALL_DEPS=0

# The newest glibc symbol version the binary may need: the oldest glibc we support
# (Debian 12, Ubuntu 22.04, RHEL/Alma/Rocky 9). See packaging/README.md.
MAX_GLIBC=2.34
MAINTAINER=${KVMTUNE_MAINTAINER:-"kvmtune maintainers <maintainers@users.noreply.r-seed-7ae76ca9.example>"}
SUMMARY="Tune KVM guests to the host's policy as libvirt starts them"
DESCRIPTION="kvmtune makes every KVM guest that libvirt starts on this host follow the
host's tuning policy (/etc/kvmtune/policy.yaml): NUMA- and cache-local vCPU
pinning away from CPU0 and the interrupt CPUs, memory bound to the vCPUs' node,
no KSM, huge pages, disk cache='none', vhost-net with multiqueue, and no
host-passthrough CPU mode. One binary is both the libvirt qemu hook and the
admin's command-line tool (plan, check, apply, revert, status)."

die() { printf 'packaging/build.sh: %s\n' "$*" >&2; exit 1; }
say() { printf 'packaging/build.sh: %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
    case $1 in
        --release) RELEASE=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        --install-deps) INSTALL_DEPS=1; shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ $RELEASE =~ ^[0-9]+$ ]] || die "--release takes a number"

# ------------------------------------------------------------------ tools
# Each tool with the package that has it: Debian/Ubuntu, then Fedora/RHEL.
TOOLS="dpkg-deb:dpkg:dpkg dpkg-shlibdeps:dpkg-dev:dpkg-dev rpmbuild:rpm:rpm-build objdump:binutils:binutils strip:binutils:binutils gzip:gzip:gzip"
missing_tools() { # prints "TOOL DEBPKG RPMPKG" per missing tool
    local t tool
    for t in $TOOLS; do
        tool=${t%%:*}
        command -v "$tool" >/dev/null || printf '%s %s\n' "$tool" "$(echo "${t#*:}" | tr : ' ')"
    done
}
uniq_words() { tr ' ' '\n' | awk 'NF && !seen[$0]++' | paste -sd ' ' -; }
MISSING=$(missing_tools)
if [ -n "$MISSING" ] && [ "$INSTALL_DEPS" = 1 ]; then
    [ "$(id -u)" = 0 ] || die "--install-deps installs packages: run it as root (sudo packaging/build.sh --install-deps)"
    if command -v apt-get >/dev/null; then
        pkgs=$(awk '{ print $2 }' <<<"$MISSING" | uniq_words)
        say "apt-get install $pkgs"
        # shellcheck disable=SC2086 # one word per package
        { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs ||
            { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs; }; } >&2 ||
            die "apt-get install $pkgs failed"
    elif command -v dnf >/dev/null; then
        pkgs=$(awk '{ print $3 }' <<<"$MISSING" | uniq_words)
        say "dnf install $pkgs"
        # shellcheck disable=SC2086
        dnf install -y $pkgs >&2 || die "dnf install $pkgs failed"
    else
        die "--install-deps knows apt-get and dnf, and this machine has neither"
    fi
    MISSING=$(missing_tools)
fi
if [ -n "$MISSING" ]; then
    tools=$(awk '{ print $1 }' <<<"$MISSING" | uniq_words | sed 's/ /, /g')
    [ "$INSTALL_DEPS" = 0 ] || die "still lacks $tools after installing their packages (not on PATH?)"
    die "needs $tools (Debian/Ubuntu: apt-get install $(awk '{ print $2 }' <<<"$MISSING" | uniq_words); Fedora/RHEL: dnf install $(awk '{ print $3 }' <<<"$MISSING" | uniq_words)), or run it with --install-deps"
fi
command -v cargo >/dev/null || die "needs cargo: install Rust with rustup (https://rustup.rs), then open a new shell"

TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$REPO/$TARGET_DIR ;; esac
OUT=${OUT:-$TARGET_DIR/packages}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The root package's version, or the workspace's when it says `version.workspace = true`.
VERSION=$(awk -F'"' '/^\[/ { in_pkg = ($0 == "[package]" || $0 == "[workspace.package]") } in_pkg && /^version *=/ { print $2; exit }' "$REPO/Cargo.toml")
[ -n "$VERSION" ] || die "no version in Cargo.toml [package] or [workspace.package]"
DEB_ARCH=$(dpkg --print-architecture)
RPM_ARCH=$(uname -m)

# Reproducible dates (man pages, changelog entries): the last commit, else now.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH

# ------------------------------------------------------------------ the binary
# The man pages and completions come from the xtask (xtask/, `cargo xtask man`),
# built from the same sources next to kvmtune; with --no-build it is still built
# (a no-op when it is up to date), since the existing binary may have been built
# without it.
if [ "$BUILD" = 1 ]; then
    say "cargo build --release --locked -p kvmtune -p xtask"
    (cd "$REPO" && cargo build --release --locked -p kvmtune -p xtask)
else
    say "cargo build --release --locked -p xtask (--no-build: kvmtune as built)"
    (cd "$REPO" && cargo build --release --locked -p xtask)
fi
BIN=$TARGET_DIR/release/kvmtune
XTASK=$TARGET_DIR/release/xtask
[ -x "$BIN" ] || die "no binary at $BIN"
[ -x "$XTASK" ] || die "no xtask at $XTASK"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvmtune-pkg.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

cp "$BIN" "$WORK/kvmtune"
# As debhelper's dh_strip: no symbols beyond the dynamic ones, no .comment/.note.
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$WORK/kvmtune"

# The oldest glibc the binary runs on is the newest GLIBC_x.y symbol it needs.
NEED_GLIBC=$(objdump -T "$WORK/kvmtune" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
[ -n "$NEED_GLIBC" ] || die "cannot read the binary's glibc symbol versions"
if [ "$(printf '%s\n%s\n' "$NEED_GLIBC" "$MAX_GLIBC" | sort -V | tail -n 1)" != "$MAX_GLIBC" ]; then
    die "the binary needs glibc $NEED_GLIBC, newer than the supported minimum $MAX_GLIBC: build on an older system (packaging/README.md)"
fi
say "kvmtune $VERSION-$RELEASE, needs glibc >= $NEED_GLIBC"

# ------------------------------------------------------------------ generated docs
"$XTASK" man "$WORK/man" >/dev/null
"$XTASK" completions "$WORK/completions" >/dev/null

# Both families get the same tree, except where their conventions differ:
#   zsh completion   deb /usr/share/zsh/vendor-completions   rpm /usr/share/zsh/site-functions
#   changelog        deb doc/kvmtune/changelog.gz (+ changelog.Debian.gz)
#                    rpm doc/kvmtune/CHANGELOG.md (+ the spec's %changelog)
#   license          deb doc/kvmtune/copyright               rpm /usr/share/licenses/kvmtune/LICENSE
stage() { # stage FAMILY ROOT
    local family=$1 root=$2 f
    install -D -m 0755 "$WORK/kvmtune" "$root/usr/bin/kvmtune"
    install -D -m 0644 "$REPO/config/policy.yaml" "$root/etc/kvmtune/policy.yaml"
    install -d -m 0755 "$root/etc/libvirt/hooks/qemu.d"
    install -d -m 0755 "$root/usr/share/man/man8" "$root/usr/share/man/man5"
    # shellcheck disable=SC2094 # reads $WORK/man, writes $root
    for f in "$WORK"/man/*.8; do gzip -9n <"$f" >"$root/usr/share/man/man8/$(basename "$f").gz"; done
    # shellcheck disable=SC2094
    for f in "$WORK"/man/*.5; do gzip -9n <"$f" >"$root/usr/share/man/man5/$(basename "$f").gz"; done
    install -D -m 0644 "$WORK/completions/kvmtune.bash" "$root/usr/share/bash-completion/completions/kvmtune"
    local doc=$root/usr/share/doc/kvmtune
    install -D -m 0644 "$REPO/README.md" "$doc/README.md"
    install -D -m 0644 "$REPO/docs/policy.md" "$doc/policy.md"
    chmod 0755 "$root/usr/share/doc" "$doc"
    case $family in
        deb)
            install -D -m 0644 "$WORK/completions/_kvmtune" "$root/usr/share/zsh/vendor-completions/_kvmtune"
            gzip -9n <"$REPO/CHANGELOG.md" >"$doc/changelog.gz"
            gzip -9n >"$doc/changelog.Debian.gz" <<EOF
kvmtune ($VERSION-$RELEASE) unstable; urgency=medium

  * Package of kvmtune $VERSION; its changes are in changelog.gz.

 -- $MAINTAINER  $(date -u -R -d "@$SOURCE_DATE_EPOCH")
EOF
            {
                printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n'
                printf 'Upstream-Name: kvmtune\n\nFiles: *\nLicense: MIT\n'
                sed -e 's/^$/./' -e 's/^/ /' "$REPO/LICENSE"
            } >"$doc/copyright"
            chmod 0644 "$doc"/*
            install -D -m 0644 "$PKG/deb/lintian-overrides" "$root/usr/share/lintian/overrides/kvmtune"
            ;;
        rpm)
            install -D -m 0644 "$WORK/completions/_kvmtune" "$root/usr/share/zsh/site-functions/_kvmtune"
            install -D -m 0644 "$REPO/CHANGELOG.md" "$doc/CHANGELOG.md"
            install -D -m 0644 "$REPO/LICENSE" "$root/usr/share/licenses/kvmtune/LICENSE"
            ;;
    esac
    stage_units "$family" "$root"
    find "$root" -type d -exec chmod 0755 {} +
}

# The systemd units (packaging/systemd/): kvmtune-converge.path/.timer/.service
# (converge: after-start) and kvmtune-metrics.timer/.service (Prometheus metrics
# for node_exporter's textfile collector). They go to deb /lib/systemd/system
# (where debhelper puts them on Debian 12), rpm /usr/lib/systemd/system; the rpm
# also gets a preset that enables the path unit and the timers (Debian's postinst
# enables them with deb-systemd-helper).
UNITS="kvmtune-converge.path kvmtune-converge.service kvmtune-converge.timer kvmtune-metrics.service kvmtune-metrics.timer"
stage_units() { # stage_units FAMILY ROOT
    local family=$1 root=$2 unitdir u
    case $family in
        deb) unitdir=$root/lib/systemd/system ;;
        rpm) unitdir=$root/usr/lib/systemd/system ;;
    esac
    for u in $UNITS; do
        install -D -m 0644 "$PKG/systemd/$u" "$unitdir/$u"
    done
    if [ "$family" = rpm ]; then
        install -d -m 0755 "$root/usr/lib/systemd/system-preset"
        {
            printf '# kvmtune: convergence after a start (converge: after-start) and\n'
            printf '# Prometheus metrics for node_exporter (skipped without it).\n'
            printf 'enable kvmtune-converge.path\nenable kvmtune-converge.timer\nenable kvmtune-metrics.timer\n'
        } >"$root/usr/lib/systemd/system-preset/50-kvmtune.preset"
        chmod 0644 "$root/usr/lib/systemd/system-preset/50-kvmtune.preset"
    fi
}

# A maintainer script: the template with the shared functions and the family's
# own pasted in where it says #KVMTUNE_FUNCTIONS# (with % doubled for rpm, which
# expands macros there).
script() { # script TEMPLATE deb|rpm
    local line functions
    functions=$(cat "$PKG/scripts/functions.sh" "$PKG/scripts/functions-$2.sh")
    [ "$2" = rpm ] && functions=${functions//%/%%}
    while IFS= read -r line || [ -n "$line" ]; do
        if [ "$line" = "#KVMTUNE_FUNCTIONS#" ]; then
            printf '%s\n' "$functions"
        else
            printf '%s\n' "$line"
        fi
    done <"$1"
}

# ------------------------------------------------------------------ .deb
DEBROOT=$WORK/deb
stage deb "$DEBROOT"
install -d -m 0755 "$DEBROOT/DEBIAN"
for s in postinst prerm postrm; do
    script "$PKG/deb/$s" deb >"$DEBROOT/DEBIAN/$s"
    chmod 0755 "$DEBROOT/DEBIAN/$s"
done
printf '/etc/kvmtune/policy.yaml\n' >"$DEBROOT/DEBIAN/conffiles"
(cd "$DEBROOT" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$DEBROOT/DEBIAN/md5sums"

# Shared-library dependencies the way Debian computes them.
mkdir -p "$WORK/shlibs/debian"
printf 'Source: kvmtune\n\nPackage: kvmtune\nArchitecture: any\n' >"$WORK/shlibs/debian/control"
SHLIBS=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O -e "$DEBROOT/usr/bin/kvmtune" 2>"$WORK/shlibdeps.err" | sed -n 's/^shlibs:Depends=//p')
# (Outside Debian dpkg-shlibdeps may know no library packages: then from the symbols.)
[ -n "$SHLIBS" ] || say "dpkg-shlibdeps gave nothing ($(head -n 1 "$WORK/shlibdeps.err")): Depends from the binary's glibc symbols"
SHLIBS=${SHLIBS:-"libc6 (>= $NEED_GLIBC), libgcc-s1"}
INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$DEBROOT" | cut -f1)
{
    printf 'Package: kvmtune\nVersion: %s-%s\nArchitecture: %s\n' "$VERSION" "$RELEASE" "$DEB_ARCH"
    printf 'Maintainer: %s\nInstalled-Size: %s\n' "$MAINTAINER" "$INSTALLED_SIZE"
    printf 'Depends: %s, libvirt-daemon-driver-qemu | libvirt-daemon-system\n' "$SHLIBS"
    printf 'Section: admin\nPriority: optional\n'
    printf 'Description: %s\n' "$SUMMARY"
    printf '%s\n' "$DESCRIPTION" | sed 's/^/ /'
} >"$DEBROOT/DEBIAN/control"
DEB=$OUT/kvmtune_${VERSION}-${RELEASE}_${DEB_ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$DEBROOT" "$DEB" >/dev/null

# ------------------------------------------------------------------ .rpm
RPMROOT=$WORK/rpmstage
stage rpm "$RPMROOT"
SPEC=$WORK/kvmtune.spec
RPM_DATE=$(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" '+%a %b %d %Y')
{
    script "$PKG/rpm/kvmtune.spec.in" rpm
} | awk -v version="$VERSION" -v release="$RELEASE" -v summary="$SUMMARY" \
    -v description="$DESCRIPTION" \
    -v changelog="* $RPM_DATE $MAINTAINER - $VERSION-$RELEASE
- Package of kvmtune $VERSION; its changes are in /usr/share/doc/kvmtune/CHANGELOG.md." '
    { gsub(/@VERSION@/, version); gsub(/@RELEASE@/, release); gsub(/@SUMMARY@/, summary) }
    $0 == "@DESCRIPTION@" { print description; next }
    $0 == "@CHANGELOG@" { print changelog; next }
    { print }' >"$SPEC"
# (Debian's rpmbuild creates ~/.rpmdb whatever --dbpath says: keep it in $WORK.)
HOME=$WORK rpmbuild -bb --quiet --dbpath "$WORK/rpmdb" \
    --target "$RPM_ARCH" \
    --define "_topdir $WORK/rpmbuild" \
    --define "_rpmdir $OUT" \
    --define "_rpmfilename %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "kvmtune_stage $RPMROOT" \
    --define "_source_date_epoch_from_changelog 0" \
    --define "use_source_date_epoch_as_buildtime 1" \
    --define "clamp_mtime_to_source_date_epoch 1" \
    "$SPEC" >"$WORK/rpmbuild.log" 2>&1 || { cat "$WORK/rpmbuild.log" >&2; die "rpmbuild failed"; }
RPM=$OUT/kvmtune-${VERSION}-${RELEASE}.${RPM_ARCH}.rpm
[ -f "$RPM" ] || { cat "$WORK/rpmbuild.log" >&2; die "rpmbuild made no $RPM"; }

echo "$DEB"
echo "$RPM"
