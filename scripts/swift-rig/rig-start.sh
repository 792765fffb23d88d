#!/usr/bin/env bash
# The one entry point for ccb's Swift integration tests: starts (or re-checks) a real Keystone v3
# and a real Swift using it, both on 127.0.0.1, and writes the combined env file
# $CCB_SWIFT_RIG_DIR/env (default /var/tmp/ccb-swift-rig/env) with the export lines of
# keystone/env and saio/env (except ST_AUTH/ST_USER/ST_KEY, see below). Idempotent and quick when the rig is already up with the same
# settings; a changed setting restarts only the half it concerns.
#
# Settings (environment), passed through to the two halves:
#   CCB_SWIFT_RIG_DIR    rig state root (/var/tmp/ccb-swift-rig): keystone/, saio/, env, lock
#   KS_TOKEN_EXPIRATION  Keystone token lifetime in seconds (3600)
#   SAIO_MAX_FILE_SIZE   Swift's single-object size limit in bytes (Swift's default 5368709122)
#   KS_PORT (5000), SAIO_PROXY_PORT (8080), SAIO_BACKEND_PORT_BASE (16200),
#   SAIO_MEMCACHED_PORT (21211), KS_DIR, SAIO_DIR: see keystone-start.sh and saio-start.sh.
# Note that an unset setting means its default: a run without KS_TOKEN_EXPIRATION restarts a
# Keystone that was started with a short one.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG_SELF=rig-start
# shellcheck source=scripts/swift-rig/rig-lib.sh
. "$HERE/rig-lib.sh"

export CCB_SWIFT_RIG_DIR=$RIG_ROOT
export KS_DIR=${KS_DIR:-$RIG_ROOT/keystone}
export SAIO_DIR=${SAIO_DIR:-$RIG_ROOT/saio}
export KS_PORT=${KS_PORT:-5000}
# Swift always uses the rig's own Keystone.
export SAIO_KEYSTONE_URL=http://127.0.0.1:$KS_PORT

T0=$(rig_now)
mkdir -p "$RIG_ROOT"
# Parallel test processes may all call this: the first one starts the rig, the others wait
# here and then find it up (a fresh install takes about two minutes, hence the long wait).
exec 9>"$RIG_ROOT/lock"
flock -w 900 9 || rig_die "timed out waiting for the lock $RIG_ROOT/lock"

# Both halves' packages in one apt run (apt's and dpkg's fixed costs once, not twice), plus
# python3-swiftclient: the `swift` CLI that ccb's interop tests run against the rig (nothing
# else pulls it in).
rig_ensure_packages swift swift-proxy swift-account swift-container swift-object memcached curl \
    python3-keystone python3-keystonemiddleware jq python3-swiftclient

# Keystone first: Swift's authtoken needs its swift service user. The halves print their env
# files on stdout; only the combined one is printed (their progress lines go to stderr).
"$HERE/keystone-start.sh" >/dev/null
"$HERE/saio-start.sh" >/dev/null

{
    echo "# ccb's Swift + Keystone loopback rig (scripts/swift-rig/rig-start.sh): the export lines"
    echo "# of $KS_DIR/env and $SAIO_DIR/env. Source it, or read the export NAME='value' lines."
    rig_export CCB_SWIFT_RIG_DIR "$RIG_ROOT"
    rig_export CCB_SWIFT_RIG_ENV "$RIG_ROOT/env"
    # ST_AUTH/ST_USER/ST_KEY are left out here: the swift CLI prefers them over its --os-*
    # options, so with them in the environment `swift --auth-version 3 --os-auth-url ...` sends
    # Keystone v3 auth to tempauth's /auth/v1.0 and fails (405). The same tempauth settings are
    # in SAIO_AUTH_URL, SAIO_TEMPAUTH_USER and SAIO_TEMPAUTH_KEY.
    grep -h '^export ' "$KS_DIR/env" "$SAIO_DIR/env" | grep -Ev '^export ST_(AUTH|USER|KEY)='
} | rig_write_atomic "$RIG_ROOT/env"
rig_log "rig ready in $(rig_elapsed "$T0") s; env: $RIG_ROOT/env"
cat "$RIG_ROOT/env"
