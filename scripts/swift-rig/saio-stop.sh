#!/usr/bin/env bash
# Stops the Swift loopback rig started by saio-start.sh: only the processes named by its PID
# files (never by process name, other Swift or memcached instances on the machine are left
# alone). SIGTERM to all at once, up to 10 s, then SIGKILL.
#   SAIO_DIR      state dir (default $CCB_SWIFT_RIG_DIR/saio, i.e. /var/tmp/ccb-swift-rig/saio)
#   SAIO_PURGE=1  also delete the state dir (data, rings, logs). /etc/swift/swift.conf stays.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG_SELF=saio-stop
# shellcheck source=scripts/swift-rig/rig-lib.sh
. "$HERE/rig-lib.sh"

SAIO_DIR=${SAIO_DIR:-$RIG_ROOT/saio}
T0=$(rig_now)
if [[ -d $SAIO_DIR ]]; then
    mkdir -p "$(dirname "$SAIO_DIR")"
    # Same lock as saio-start.sh: do not pull the servers from under a start in progress.
    exec 8>"$SAIO_DIR.lock"
    flock -w 900 8 || rig_die "timed out waiting for the lock $SAIO_DIR.lock"
    entries=("$SAIO_DIR/run/memcached.pid:memcached -l 127.0.0.1 -p ")
    for s in account-server container-server object-server proxy-server; do
        entries+=("$SAIO_DIR/run/$s.pid:$SAIO_DIR/etc/$s.conf")
    done
    rig_stop_pidfiles "${entries[@]}"
    if [[ ${SAIO_PURGE:-0} == 1 ]]; then
        rm -rf "$SAIO_DIR" "$SAIO_DIR.lock"
        rig_log "stopped and removed $SAIO_DIR ($(rig_elapsed "$T0") s)"
    else
        rig_log "stopped ($(rig_elapsed "$T0") s)"
    fi
else
    rig_log "nothing to stop: no $SAIO_DIR"
fi
