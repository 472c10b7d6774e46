# kvmtune maintainer-script functions, shared by the .deb (postinst, prerm, postrm)
# and the .rpm (%post, %preun, %postun). packaging/build.sh pastes this file, then
# the family's own (functions-deb.sh: deb-systemd-helper/-invoke; functions-rpm.sh:
# systemctl beside the %systemd_* macros), into each script, so every script
# stands alone.
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
# daemons, else libvirtd) when it is running now: its pid file names a live
# process of that name (both daemons write one, also under systemd).
kvmtune_running_daemon() {
    for kvmtune_d in virtqemud libvirtd; do
        kvmtune_pid=$(cat "/run/$kvmtune_d.pid" 2>/dev/null) || kvmtune_pid=
        kvmtune_comm=
        if [ -n "$kvmtune_pid" ]; then
            kvmtune_comm=$(cat "/proc/$kvmtune_pid/comm" 2>/dev/null) || kvmtune_comm=
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

# kvmtune_restart_daemon DAEMON: in the family's functions (deb-systemd-invoke or
# systemctl under systemd, else the init script).

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
