#!/usr/bin/env bash
# Stops the Keystone started by keystone-start.sh, by its PID file only (SIGTERM, up to 10 s,
# then SIGKILL).
#   KS_DIR      state dir (default $CCB_SWIFT_RIG_DIR/keystone, i.e. /var/tmp/ccb-swift-rig/keystone)
#   KS_PURGE=1  also delete the state dir (database, keys, clouds.yaml): the next start creates
#               a new database, so project and application-credential ids change.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG_SELF=keystone-stop
# shellcheck source=scripts/swift-rig/rig-lib.sh
. "$HERE/rig-lib.sh"

KS_DIR=${KS_DIR:-$RIG_ROOT/keystone}
T0=$(rig_now)
if [[ -d $KS_DIR ]]; then
    # Same lock as keystone-start.sh: do not pull the server from under a start in progress.
    exec 8>"$KS_DIR.lock"
    flock -w 900 8 || rig_die "timed out waiting for the lock $KS_DIR.lock"
    rig_stop_pidfiles "$KS_DIR/run/keystone.pid:keystone-serve.py"
    if [[ ${KS_PURGE:-0} == 1 ]]; then
        rm -rf "$KS_DIR" "$KS_DIR.lock"
        rig_log "stopped and removed $KS_DIR ($(rig_elapsed "$T0") s)"
    else
        rig_log "stopped ($(rig_elapsed "$T0") s)"
    fi
else
    rig_log "nothing to stop: no $KS_DIR"
fi
