# kvmtune maintainer-script functions, shared by the .deb (postinst, prerm, postrm)
# and the .rpm (%post, %preun, %postun). packaging/build.sh pastes this file into
# each script, so every script stands alone.
#
# POSIX sh, and only commands every Debian and RHEL-family base system has
# (readlink, ln, mkdir, rm, rmdir, cat), so the scripts also run inside
# `rpm --root DIR`, which runs them chrooted into DIR. Nothing here may fail the
# package operation except creating the hook link itself: a failing prerm or
# %preun would block removal.

KVMTUNE_BIN=/usr/bin/kvmtune
KVMTUNE_HOOK=/etc/libvirt/hooks/qemu
KVMTUNE_HOOK_DIR=/etc/libvirt/hooks/qemu.d
KVMTUNE_DROPIN=/etc/libvirt/hooks/qemu.d/kvmtune
KVMTUNE_RESTART_FLAG=/etc/kvmtune/restart-libvirtd
KVMTUNE_LINK_CHANGED=0

kvmtune_say() {
    printf 'kvmtune: %s\n' "$*"
}

# True when $1 is a symbolic link to kvmtune's binary (spelled /usr/bin/kvmtune, or
# any path that resolves to it, such as /bin/kvmtune on merged-/usr systems).
kvmtune_is_ours() {
    [ -L "$1" ] || return 1
    [ "$(readlink "$1")" = "$KVMTUNE_BIN" ] && return 0
    [ "$(readlink -f "$1" 2>/dev/null)" = "$KVMTUNE_BIN" ]
}

# Makes libvirt call kvmtune: /etc/libvirt/hooks/qemu -> /usr/bin/kvmtune, or,
# when the admin already has a different /etc/libvirt/hooks/qemu (never touched),
# /etc/libvirt/hooks/qemu.d/kvmtune. An existing link of ours is kept as it is, so
# upgrades change nothing. Sets KVMTUNE_LINK_CHANGED=1 when it created a link.
kvmtune_link_hook() {
    KVMTUNE_LINK_CHANGED=0
    if kvmtune_is_ours "$KVMTUNE_HOOK"; then
        # Both would run kvmtune twice per call.
        if kvmtune_is_ours "$KVMTUNE_DROPIN"; then
            rm -f "$KVMTUNE_DROPIN"
        fi
        return 0
    fi
    if kvmtune_is_ours "$KVMTUNE_DROPIN"; then
        return 0
    fi
    mkdir -p /etc/libvirt/hooks
    if [ ! -e "$KVMTUNE_HOOK" ] && [ ! -L "$KVMTUNE_HOOK" ]; then
        ln -s "$KVMTUNE_BIN" "$KVMTUNE_HOOK"
        kvmtune_say "installed the libvirt hook: $KVMTUNE_HOOK -> $KVMTUNE_BIN"
        KVMTUNE_LINK_CHANGED=1
        return 0
    fi
    if [ -e "$KVMTUNE_DROPIN" ] || [ -L "$KVMTUNE_DROPIN" ]; then
        kvmtune_say "WARNING: $KVMTUNE_HOOK and $KVMTUNE_DROPIN both exist and are not links to $KVMTUNE_BIN; left both untouched, so libvirt does NOT call kvmtune. Make one of them a link to $KVMTUNE_BIN."
        return 0
    fi
    mkdir -p "$KVMTUNE_HOOK_DIR"
    ln -s "$KVMTUNE_BIN" "$KVMTUNE_DROPIN"
    kvmtune_say "$KVMTUNE_HOOK exists and is not kvmtune's: left it untouched and installed the hook as $KVMTUNE_DROPIN -> $KVMTUNE_BIN instead (libvirt >= 6.5 runs qemu.d/ hooks after $KVMTUNE_HOOK). If your hook already calls kvmtune, remove $KVMTUNE_DROPIN."
    KVMTUNE_LINK_CHANGED=1
}

# Removes the hook links that still point to kvmtune; anything else stays.
kvmtune_unlink_hook() {
    for kvmtune_link in "$KVMTUNE_HOOK" "$KVMTUNE_DROPIN"; do
        if kvmtune_is_ours "$kvmtune_link"; then
            if rm -f "$kvmtune_link"; then
                kvmtune_say "removed the libvirt hook $kvmtune_link"
            else
                kvmtune_say "WARNING: could not remove $kvmtune_link"
            fi
        fi
    done
    return 0
}

# Validates the installed policy against this host; a bad policy is reported,
# never fatal (the hook lets guests start untuned while its policy is invalid).
kvmtune_check_policy() {
    [ -x "$KVMTUNE_BIN" ] || return 0
    if kvmtune_out=$("$KVMTUNE_BIN" check 2>&1); then
        kvmtune_say "policy check: $kvmtune_out"
    else
        kvmtune_say "WARNING: 'kvmtune check' found problems with /etc/kvmtune/policy.yaml (installed anyway; until it is fixed the hook logs the error and lets guests start untuned):"
        printf '%s\n' "$kvmtune_out" | while IFS= read -r kvmtune_line; do
            printf '  %s\n' "$kvmtune_line"
        done
    fi
    return 0
}

# Prints the libvirt daemon that runs the qemu driver (virtqemud on modular
# daemons, else libvirtd) when it is running now.
kvmtune_running_daemon() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        for kvmtune_d in virtqemud libvirtd; do
            if systemctl is-active --quiet "$kvmtune_d.service" 2>/dev/null; then
                echo "$kvmtune_d"
                return 0
            fi
        done
    fi
    for kvmtune_d in virtqemud libvirtd; do
        kvmtune_pid=
        kvmtune_comm=
        # `read` fails at a missing final newline (and so would `set -e`).
        if [ -r "/run/$kvmtune_d.pid" ]; then
            read -r kvmtune_pid <"/run/$kvmtune_d.pid" || true
        fi
        if [ -n "$kvmtune_pid" ] && [ -r "/proc/$kvmtune_pid/comm" ]; then
            read -r kvmtune_comm <"/proc/$kvmtune_pid/comm" || true
        fi
        if [ "$kvmtune_comm" = "$kvmtune_d" ]; then
            echo "$kvmtune_d"
            return 0
        fi
    done
    return 1
}

kvmtune_restart_wanted() {
    [ "${KVMTUNE_RESTART_LIBVIRTD:-0}" = 1 ] || [ -e "$KVMTUNE_RESTART_FLAG" ]
}

kvmtune_restart_daemon() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl try-restart "$1.service"
    elif command -v invoke-rc.d >/dev/null 2>&1 && [ -x "/etc/init.d/$1" ]; then
        invoke-rc.d "$1" restart
    elif [ -x "/etc/init.d/$1" ]; then
        "/etc/init.d/$1" restart
    else
        return 1
    fi
}

# libvirt looks for hook files only when it starts: after a new link, say so, and
# restart the daemon only when the admin asked for it.
kvmtune_announce_restart() {
    [ "$KVMTUNE_LINK_CHANGED" = 1 ] || return 0
    if ! kvmtune_daemon=$(kvmtune_running_daemon); then
        kvmtune_say "libvirt is not running now; it calls kvmtune from its next start."
        return 0
    fi
    if kvmtune_restart_wanted; then
        if kvmtune_restart_daemon "$kvmtune_daemon" >/dev/null 2>&1; then
            kvmtune_say "restarted $kvmtune_daemon so that it calls the new hook (running guests keep running)."
            return 0
        fi
        kvmtune_say "WARNING: could not restart $kvmtune_daemon (no systemd unit or init script for it)."
    fi
    kvmtune_say "libvirt looks for hooks only when it starts: restart $kvmtune_daemon (e.g. 'systemctl restart $kvmtune_daemon') before it calls kvmtune. Running guests keep running. To let the package do this, install with KVMTUNE_RESTART_LIBVIRTD=1 in the environment, or create $KVMTUNE_RESTART_FLAG."
    return 0
}

# The runtime state goes; the backups of guest definitions stay, and we say where.
kvmtune_remove_state() {
    rm -rf /run/kvmtune
    rmdir /var/lib/kvmtune/backups 2>/dev/null || true
    rmdir /var/lib/kvmtune 2>/dev/null || true
    if [ -d /var/lib/kvmtune ]; then
        kvmtune_say "kept /var/lib/kvmtune/ (guest definitions backed up by 'kvmtune apply'); remove it yourself when you no longer need them."
    fi
    return 0
}

# ---------------------------------------------------------------- metrics timer
# kvmtune-metrics.timer writes `kvmtune status --format prometheus` for
# node_exporter every 30 s. Debian: the same steps as debhelper's
# dh_installsystemd snippets, through deb-systemd-helper/-invoke
# (init-system-helpers); the rpm uses the %systemd_* macros instead.
KVMTUNE_METRICS_UNITS="kvmtune-metrics.timer"
KVMTUNE_METRICS_FILE=/var/lib/prometheus/node-exporter/kvmtune.prom

# postinst configure / abort-*: enable the timer (unless the admin disabled it)
# and (re)start it when systemd runs.
kvmtune_metrics_enable() {
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper unmask $KVMTUNE_METRICS_UNITS >/dev/null || true
        if deb-systemd-helper --quiet was-enabled $KVMTUNE_METRICS_UNITS; then
            deb-systemd-helper enable $KVMTUNE_METRICS_UNITS >/dev/null || true
        else
            deb-systemd-helper update-state $KVMTUNE_METRICS_UNITS >/dev/null || true
        fi
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null 2>&1 || true
        if command -v deb-systemd-invoke >/dev/null 2>&1; then
            deb-systemd-invoke restart $KVMTUNE_METRICS_UNITS >/dev/null 2>&1 || true
        fi
    fi
    return 0
}

# prerm remove: stop the timer and a run in progress.
kvmtune_metrics_stop() {
    if [ -d /run/systemd/system ] && command -v deb-systemd-invoke >/dev/null 2>&1; then
        deb-systemd-invoke stop $KVMTUNE_METRICS_UNITS kvmtune-metrics.service >/dev/null 2>&1 || true
    fi
    return 0
}

# postrm remove/purge: forget the units (purge also drops the enablement state),
# and remove the metrics file so that node_exporter stops exporting stale values.
kvmtune_metrics_remove() { # kvmtune_metrics_remove remove|purge
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        if [ "$1" = purge ]; then
            deb-systemd-helper purge $KVMTUNE_METRICS_UNITS >/dev/null || true
            deb-systemd-helper unmask $KVMTUNE_METRICS_UNITS >/dev/null || true
        else
            deb-systemd-helper mask $KVMTUNE_METRICS_UNITS >/dev/null || true
        fi
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null 2>&1 || true
    fi
    rm -f "$KVMTUNE_METRICS_FILE"
    return 0
}


# ---- systemd units of `converge: after-start` (kvmtune-converge.path/.timer →
# kvmtune-converge.service). Enabled on install (like debhelper does: symlinks
# only, harmless without systemd), started only when systemd runs; on a machine
# without systemd nothing else happens. Failures are reported, never fatal.
KVMTUNE_CONVERGE_UNITS="kvmtune-converge.path kvmtune-converge.timer"

kvmtune_systemd_running() {
    [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# $1: deb (deb-systemd-helper keeps the admin's enable/disable over upgrades) or rpm.
kvmtune_units_enable() {
    for kvmtune_u in $KVMTUNE_CONVERGE_UNITS; do
        if [ "$1" = deb ] && command -v deb-systemd-helper >/dev/null 2>&1; then
            deb-systemd-helper unmask "$kvmtune_u" >/dev/null 2>&1 || true
            if deb-systemd-helper --quiet was-enabled "$kvmtune_u"; then
                deb-systemd-helper enable "$kvmtune_u" >/dev/null 2>&1 || kvmtune_say "WARNING: could not enable $kvmtune_u"
            else
                deb-systemd-helper update-state "$kvmtune_u" >/dev/null 2>&1 || true
            fi
        elif [ "$1" = rpm ] && command -v systemctl >/dev/null 2>&1; then
            systemctl enable "$kvmtune_u" >/dev/null 2>&1 || kvmtune_say "WARNING: could not enable $kvmtune_u"
        fi
    done
    if kvmtune_systemd_running; then
        systemctl --system daemon-reload >/dev/null 2>&1 || true
        for kvmtune_u in $KVMTUNE_CONVERGE_UNITS; do
            if systemctl is-enabled --quiet "$kvmtune_u" 2>/dev/null; then
                systemctl start "$kvmtune_u" >/dev/null 2>&1 || kvmtune_say "WARNING: could not start $kvmtune_u"
            fi
        done
    else
        kvmtune_say "no systemd here: after a guest starts with violations, run 'kvmtune converge' to conform its definition (converge: after-start)."
    fi
    return 0
}

# On removal: stop the units (and, rpm, disable them; deb masks them in postrm).
kvmtune_units_stop() {
    if kvmtune_systemd_running; then
        for kvmtune_u in $KVMTUNE_CONVERGE_UNITS kvmtune-converge.service; do
            systemctl stop "$kvmtune_u" >/dev/null 2>&1 || true
        done
    fi
    if [ "$1" = rpm ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable $KVMTUNE_CONVERGE_UNITS >/dev/null 2>&1 || true
    fi
    return 0
}

# postrm: $1 remove (deb: mask until purge, as debhelper does) or purge (forget
# every trace), rpm (erase). Then systemd rereads its units.
kvmtune_units_forget() {
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        for kvmtune_u in $KVMTUNE_CONVERGE_UNITS; do
            case $1 in
                remove) deb-systemd-helper mask "$kvmtune_u" >/dev/null 2>&1 || true ;;
                purge)
                    deb-systemd-helper purge "$kvmtune_u" >/dev/null 2>&1 || true
                    deb-systemd-helper unmask "$kvmtune_u" >/dev/null 2>&1 || true
                    ;;
            esac
        done
    fi
    if kvmtune_systemd_running; then
        systemctl --system daemon-reload >/dev/null 2>&1 || true
    fi
    return 0
}
