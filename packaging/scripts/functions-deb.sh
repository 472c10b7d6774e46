# kvmtune maintainer-script functions of the .deb only (after functions.sh): the
# systemd units the way debhelper's dh_installsystemd snippets handle them,
# through init-system-helpers (deb-systemd-helper keeps the admin's enable or
# disable over upgrades and works without systemd running: links and state only;
# deb-systemd-invoke honours policy-rc.d). systemctl itself only for daemon-reload.

# Enabled at install: the convergence path unit and its retry timer
# (converge: after-start), the metrics timer (skipped while node_exporter's
# textfile directory does not exist). The services are started by them.
KVMTUNE_UNITS="kvmtune-converge.path kvmtune-converge.timer kvmtune-metrics.timer"
KVMTUNE_SERVICES="kvmtune-converge.service kvmtune-metrics.service"
KVMTUNE_METRICS_FILE=/var/lib/prometheus/node-exporter/kvmtune.prom

# DAEMON.service restarted under systemd, else through its init script.
kvmtune_restart_daemon() {
    if [ -d /run/systemd/system ]; then
        deb-systemd-invoke try-restart "$1.service"
    elif command -v invoke-rc.d >/dev/null 2>&1 && [ -x "/etc/init.d/$1" ]; then
        invoke-rc.d "$1" restart
    elif [ -x "/etc/init.d/$1" ]; then
        "/etc/init.d/$1" restart
    else
        return 1
    fi
}

# postinst configure / abort-*: $1 is the version configured before (postinst's
# $2; empty on a first install). Enable (or, when the admin disabled a unit,
# only update the state), then under systemd start them (restart on upgrades).
kvmtune_units_enable() {
    for kvmtune_u in $KVMTUNE_UNITS; do
        # Removes only the masks deb-systemd-helper made at package removal.
        deb-systemd-helper unmask "$kvmtune_u" >/dev/null || true
        if deb-systemd-helper --quiet was-enabled "$kvmtune_u"; then
            deb-systemd-helper enable "$kvmtune_u" >/dev/null || true
        else
            deb-systemd-helper update-state "$kvmtune_u" >/dev/null || true
        fi
    done
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$1" ]; then kvmtune_action=restart; else kvmtune_action=start; fi
        # shellcheck disable=SC2086 # one word per unit
        deb-systemd-invoke "$kvmtune_action" $KVMTUNE_UNITS >/dev/null || true
    elif [ -z "$1" ]; then
        kvmtune_say "systemd does not run here: after a guest starts with violations, run 'kvmtune converge' to conform its definition (converge: after-start)."
    fi
    return 0
}

# prerm remove / deconfigure: stop the units and a run in progress.
kvmtune_units_stop() {
    if [ -d /run/systemd/system ]; then
        # shellcheck disable=SC2086
        deb-systemd-invoke stop $KVMTUNE_UNITS $KVMTUNE_SERVICES >/dev/null || true
    fi
    return 0
}

# postrm remove|purge: remove masks the units until a purge or a reinstall (as
# debhelper does); purge forgets every trace of their enablement. Both delete the
# metrics file, so that node_exporter stops exporting stale values.
kvmtune_units_forget() {
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
    fi
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        # shellcheck disable=SC2086 # one word per unit
        case $1 in
            remove) deb-systemd-helper mask $KVMTUNE_UNITS >/dev/null || true ;;
            purge)
                deb-systemd-helper purge $KVMTUNE_UNITS >/dev/null || true
                deb-systemd-helper unmask $KVMTUNE_UNITS >/dev/null || true
                ;;
        esac
    fi
    rm -f "$KVMTUNE_METRICS_FILE"
    return 0
}
