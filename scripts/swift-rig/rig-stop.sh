#!/usr/bin/env bash
# Stops the whole loopback rig (Swift, then Keystone), by PID files only.
#   CCB_SWIFT_RIG_DIR  rig state root (/var/tmp/ccb-swift-rig)
#   RIG_PURGE=1        also delete all rig state (Swift data, Keystone DB, env files)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG_SELF=rig-stop
# shellcheck source=scripts/swift-rig/rig-lib.sh
. "$HERE/rig-lib.sh"

export CCB_SWIFT_RIG_DIR=$RIG_ROOT
export KS_DIR=${KS_DIR:-$RIG_ROOT/keystone}
export SAIO_DIR=${SAIO_DIR:-$RIG_ROOT/saio}
T0=$(rig_now)
if [[ -d $RIG_ROOT ]]; then
    # Wait for a start in progress rather than stopping half of what it is starting.
    exec 9>"$RIG_ROOT/lock"
    flock -w 900 9 || rig_die "timed out waiting for the lock $RIG_ROOT/lock"
fi
purge=${RIG_PURGE:-0}
# Both halves stop in parallel: each mostly waits for its processes to exit after SIGTERM.
SAIO_PURGE=$purge "$HERE/saio-stop.sh" &
saio=$!
KS_PURGE=$purge "$HERE/keystone-stop.sh"
wait "$saio"
rm -f "$RIG_ROOT/env"
if [[ $purge == 1 ]]; then
    rm -rf "$RIG_ROOT"
fi
rig_log "rig stopped ($(rig_elapsed "$T0") s)"
