# kvmtune scriptlet functions of the .rpm only (after functions.sh). The units'
# enablement is the %systemd_post/%systemd_preun/%systemd_postun_with_restart
# macros' (preset 50-kvmtune.preset enables them); this only starts the enabled
# triggers on install, so that convergence and metrics work before the next boot.

KVMTUNE_UNITS="kvmtune-converge.path kvmtune-converge.timer kvmtune-metrics.timer"
KVMTUNE_METRICS_FILE=/var/lib/prometheus/node-exporter/kvmtune.prom

# DAEMON.service restarted under systemd, else through its init script.
kvmtune_restart_daemon() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl try-restart "$1.service"
    elif [ -x "/etc/init.d/$1" ]; then
        "/etc/init.d/$1" restart
    else
        return 1
    fi
}

# %post: $1 is rpm's count (1 install, 2 upgrade; upgrades restart through
# %systemd_postun_with_restart).
kvmtune_units_start() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        [ "$1" = 1 ] || return 0
        for kvmtune_u in $KVMTUNE_UNITS; do
            if systemctl --quiet is-enabled "$kvmtune_u" 2>/dev/null; then
                systemctl start "$kvmtune_u" >/dev/null 2>&1 || kvmtune_say "WARNING: could not start $kvmtune_u"
            fi
        done
    elif [ "$1" = 1 ]; then
        kvmtune_say "systemd does not run here: after a guest starts with violations, run 'kvmtune converge' to conform its definition (converge: after-start)."
    fi
    return 0
}
