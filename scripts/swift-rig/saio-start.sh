#!/usr/bin/env bash
# Starts a real OpenStack Swift "all in one" (Debian 12's Swift 2.30 packages) on 127.0.0.1 for
# ccb's integration tests: memcached, one account, container and object server (1-replica rings
# on a plain directory) and a proxy with the middleware a production cluster has (SLO, DLO,
# tempurl, bulk, copy, versioning, symlink). Auth is tempauth, or Keystone (keystoneauth +
# authtoken) with tempauth beside it when SAIO_KEYSTONE_URL is set.
#
# Idempotent: with the same settings and all servers up it only re-checks readiness; when a
# setting changed (or a server died) it stops everything and starts again. It returns once an
# auth token and a container/object round trip work, and writes $SAIO_DIR/env.
#
# Settings (environment):
#   SAIO_DIR                  state: configs, rings, data, PID files, logs
#                             (default $CCB_SWIFT_RIG_DIR/saio, i.e. /var/tmp/ccb-swift-rig/saio)
#   SAIO_PROXY_PORT           proxy port (8080)
#   SAIO_BACKEND_PORT_BASE    object server port; container +1, account +2 (16200)
#   SAIO_MEMCACHED_PORT       memcached port (21211)
#   SAIO_KEYSTONE_URL         e.g. http://127.0.0.1:5000: Keystone owns AUTH_, tempauth moves to TEMP_
#   SAIO_KEYSTONE_SWIFT_USER / _PASSWORD / _PROJECT   Swift's service user (swift/swiftpass/service,
#                             as keystone-start.sh creates it)
#   SAIO_MAX_FILE_SIZE        lower single-object limit in bytes (Swift's default: 5368709122)
#   SAIO_START_TIMEOUT        seconds to wait for readiness (90)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG_SELF=saio-start
# shellcheck source=scripts/swift-rig/rig-lib.sh
. "$HERE/rig-lib.sh"

SAIO_DIR=${SAIO_DIR:-$RIG_ROOT/saio}
PROXY_PORT=${SAIO_PROXY_PORT:-8080}
PORT_BASE=${SAIO_BACKEND_PORT_BASE:-16200}
MC_PORT=${SAIO_MEMCACHED_PORT:-21211}
KS_URL=${SAIO_KEYSTONE_URL:-}
KS_URL=${KS_URL%/}
KS_SWIFT_USER=${SAIO_KEYSTONE_SWIFT_USER:-swift}
KS_SWIFT_PASSWORD=${SAIO_KEYSTONE_SWIFT_PASSWORD:-swiftpass}
KS_SWIFT_PROJECT=${SAIO_KEYSTONE_SWIFT_PROJECT:-service}
MAX_FILE_SIZE=${SAIO_MAX_FILE_SIZE:-}
TIMEOUT=${SAIO_START_TIMEOUT:-90}

for v in PROXY_PORT PORT_BASE MC_PORT TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || rig_die "$v must be a number, got '${!v}'"
done
[[ -z $MAX_FILE_SIZE || $MAX_FILE_SIZE =~ ^[0-9]+$ ]] ||
    rig_die "SAIO_MAX_FILE_SIZE must be a number of bytes, got '$MAX_FILE_SIZE'"
OBJ_PORT=$PORT_BASE
CONT_PORT=$((PORT_BASE + 1))
ACC_PORT=$((PORT_BASE + 2))

ETC=$SAIO_DIR/etc
RUN=$SAIO_DIR/run
LOG=$SAIO_DIR/log
NODES=$SAIO_DIR/srv/node
PROXY=http://127.0.0.1:$PROXY_PORT
SWIFT_CONF=/etc/swift/swift.conf
# Keystone owns the AUTH_ prefix when it is on (it is what its catalog advertises); tempauth
# keeps working beside it under TEMP_.
if [[ -n $KS_URL ]]; then
    TEMP_PREFIX=TEMP
    AUTH_MODE=keystone
else
    TEMP_PREFIX=AUTH
    AUTH_MODE=tempauth
fi

T0=$(rig_now)
mkdir -p "$(dirname "$SAIO_DIR")"
# Two callers at once (parallel test processes) must not both start servers: serialize on a
# lock beside the state dir (not inside it, so SAIO_PURGE=1 can delete the dir).
exec 8>"$SAIO_DIR.lock"
flock -w 900 8 || rig_die "timed out waiting for the lock $SAIO_DIR.lock"

pkgs=(swift swift-proxy swift-account swift-container swift-object memcached curl)
# authtoken is keystonemiddleware, which swift-proxy only recommends;
# jq reads Keystone's token replies in the readiness check.
[[ -z $KS_URL ]] || pkgs+=(python3-keystonemiddleware jq)
rig_ensure_packages "${pkgs[@]}"
T_PKG=$(rig_now)

mkdir -p "$ETC" "$RUN" "$LOG" "$NODES/d1"
NEW=$SAIO_DIR/etc.new
rm -rf "$NEW"
mkdir -p "$NEW"

# --- configs ---------------------------------------------------------------------------------
# Swift 2.30's servers read /etc/swift/swift.conf whatever swift_dir says (swift_dir only
# moves the rings), so the hash settings, policy and constraints must go there.
{
    cat <<EOF
# Written by ccb's scripts/swift-rig/saio-start.sh (loopback test rig; original, if any, in
# swift.conf.pre-saio).
[swift-hash]
swift_hash_path_prefix = ccb-saio
swift_hash_path_suffix = ccb-saio

[storage-policy:0]
name = Policy-0
default = yes
EOF
    if [[ -n $MAX_FILE_SIZE ]]; then
        printf '\n[swift-constraints]\nmax_file_size = %s\n' "$MAX_FILE_SIZE"
    fi
} >"$NEW/swift.conf"

# Common to all four servers: loopback only; workers = 0 so each server is one process with
# no fork (the PID file is the real server); run as whoever runs the rig; data on a plain
# directory (mount_check off); rings from our own etc/.
common() {
    cat <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $1
workers = 0
user = $(id -un)
swift_dir = $ETC
devices = $NODES
mount_check = false
log_name = $2
EOF
}

for s in account:$ACC_PORT container:$CONT_PORT object:$OBJ_PORT; do
    name=${s%%:*}
    port=${s#*:}
    {
        common "$port" "$name-server"
        cat <<EOF

[pipeline:main]
# healthcheck lets saio-start.sh wait for each backend before the first real request: a proxy
# that meets refused connections error-limits the node for 60 s.
pipeline = healthcheck $name-server

[filter:healthcheck]
use = egg:swift#healthcheck

[app:$name-server]
use = egg:swift#$name
EOF
        # Legacy versioned_writes (X-Versions-Location) needs the container server's consent.
        [[ $name != container ]] || echo "allow_versions = true"
    } >"$NEW/$name-server.conf"
done

if [[ -n $KS_URL ]]; then
    AUTH_PIPE="authtoken keystoneauth tempauth"
else
    AUTH_PIPE="tempauth"
fi
{
    common "$PROXY_PORT" proxy-server
    cat <<EOF

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk tempurl ratelimit $AUTH_PIPE copy slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
# Keystone projects and tempauth accounts come into existence on first use.
account_autocreate = true
allow_account_management = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
# tempauth keeps its tokens in memcached and authtoken uses it (through swift.cache) as its
# token cache, so memcached is not optional.
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$MC_PORT

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:bulk]
use = egg:swift#bulk

[filter:tempurl]
use = egg:swift#tempurl

[filter:ratelimit]
use = egg:swift#ratelimit

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo

[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
allow_object_versioning = true

[filter:symlink]
use = egg:swift#symlink

[filter:tempauth]
use = egg:swift#tempauth
reseller_prefix = $TEMP_PREFIX
# user_<account>_<user> = <key> [groups]; .admin = account owner, .reseller_admin = all accounts
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test_tester2 = testing2
user_test2_tester2 = testing2 .admin
EOF
    if [[ -n $KS_URL ]]; then
        cat <<EOF

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory
www_authenticate_uri = $KS_URL
auth_url = $KS_URL
auth_type = password
username = $KS_SWIFT_USER
password = $KS_SWIFT_PASSWORD
project_name = $KS_SWIFT_PROJECT
user_domain_id = default
project_domain_id = default
# Let requests without a Keystone token through to tempauth (TEMP_ accounts, /auth/v1.0,
# temp URLs).
delay_auth_decision = true
cache = swift.cache
include_service_catalog = false
# The swift user has the service role; without this keystonemiddleware logs a deprecation.
service_token_roles_required = true

[filter:keystoneauth]
use = egg:swift#keystoneauth
reseller_prefix = AUTH
operator_roles = admin, member, swiftoperator
EOF
    fi
} >"$NEW/proxy-server.conf"

# Ring parameters: part power 6, 1 replica, one device per ring, all on loopback.
echo "6 1 127.0.0.1 object:$OBJ_PORT container:$CONT_PORT account:$ACC_PORT" >"$NEW/ring.params"

CONFS=(account-server.conf container-server.conf object-server.conf proxy-server.conf)
# memcached has no config file: its settings are its command line.
SERVERS=(memcached account-server container-server object-server proxy-server)
pidfile() { echo "$RUN/$1.pid"; }
logfile() { echo "$LOG/$1.log"; }
match() {
    # What the server's command line must contain for its PID file to be believed.
    # memcached's port is left out so that one started with an old port is still recognised
    # (and stopped); a port change shows up as a changed proxy-server.conf anyway.
    if [[ $1 == memcached ]]; then echo "memcached -l 127.0.0.1 -p "; else echo "$ETC/$1.conf"; fi
}
pid_entries() {
    local s
    for s in "${SERVERS[@]}"; do echo "$(pidfile "$s"):$(match "$s")"; done
}

changed=()
for f in "${CONFS[@]}" ring.params; do
    cmp -s "$NEW/$f" "$ETC/$f" || changed+=("$f")
done
cmp -s "$NEW/swift.conf" "$SWIFT_CONF" || changed+=("$SWIFT_CONF")
dead=()
for s in "${SERVERS[@]}"; do
    rig_pid_alive "$(pidfile "$s")" "$(match "$s")" >/dev/null || dead+=("$s")
done

# --- readiness ---------------------------------------------------------------------------------
DEADLINE=0
fail() {
    # $1: message, rest: servers whose log tails to show.
    rig_log "error: $1"
    shift
    local s
    for s in "$@"; do rig_log_tail "$(logfile "$s")" 30; done
    exit 1
}
check_alive() {
    local s
    for s in "${SERVERS[@]}"; do
        rig_pid_alive "$(pidfile "$s")" "$(match "$s")" >/dev/null ||
            fail "$s is not running (port in use? see its log)" "$s"
    done
}
past_deadline() { (($(date +%s) >= DEADLINE)); }
wait_port() {
    # memcached speaks no HTTP; a TCP connect is enough.
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        check_alive
        past_deadline && fail "nothing answers on 127.0.0.1:$1" "$2"
        sleep 0.1
    done
}
wait_healthcheck() {
    until [[ "$(curl -s --max-time 2 "http://127.0.0.1:$1/healthcheck" 2>/dev/null)" == OK ]]; do
        check_alive
        past_deadline && fail "http://127.0.0.1:$1/healthcheck does not answer OK" "$2"
        sleep 0.1
    done
}
# Sets HTTP_CODE and writes the body to $BODY; extra args go to curl.
BODY=$(mktemp)
HDRS=$(mktemp)
trap 'rm -f "$BODY" "$HDRS"' EXIT
req() {
    HTTP_CODE=$(curl -s -o "$BODY" -D "$HDRS" -w '%{http_code}' --max-time 20 "$@") || HTTP_CODE=000
}
header() { awk -v h="$1:" 'tolower($1) == tolower(h) { sub(/\r$/, "", $2); print $2 }' "$HDRS"; }

# One full pass: a tempauth token, then container PUT, object PUT/GET/DELETE, container DELETE
# (touches all three backends), and in Keystone mode a token from Keystone that the proxy's
# authtoken + keystoneauth accept. Prints why it failed and returns 1 on the first failure.
round_trip() {
    req -H "X-Auth-User: test:tester" -H "X-Auth-Key: testing" "$PROXY/auth/v1.0"
    [[ $HTTP_CODE == 200 ]] || { echo "tempauth GET /auth/v1.0: HTTP $HTTP_CODE"; return 1; }
    local tok url c o
    tok=$(header X-Auth-Token)
    url=$(header X-Storage-Url)
    [[ -n $tok && $url == "$PROXY/v1/${TEMP_PREFIX}_test" ]] ||
        { echo "tempauth gave token '$tok', storage URL '$url'"; return 1; }
    c="$url/ccb-rig-ready-$$"
    o="$c/probe"
    req -X PUT -H "X-Auth-Token: $tok" -H 'Content-Length: 0' "$c"
    [[ $HTTP_CODE == 201 || $HTTP_CODE == 202 ]] || { echo "container PUT: HTTP $HTTP_CODE"; return 1; }
    req -X PUT -H "X-Auth-Token: $tok" -H 'Content-Type: text/plain' --data-binary "ready $$" "$o"
    [[ $HTTP_CODE == 201 ]] || { echo "object PUT: HTTP $HTTP_CODE"; return 1; }
    req -H "X-Auth-Token: $tok" "$o"
    [[ $HTTP_CODE == 200 && "$(<"$BODY")" == "ready $$" ]] ||
        { echo "object GET: HTTP $HTTP_CODE"; return 1; }
    req -X DELETE -H "X-Auth-Token: $tok" "$o"
    [[ $HTTP_CODE == 204 ]] || { echo "object DELETE: HTTP $HTTP_CODE"; return 1; }
    req -X DELETE -H "X-Auth-Token: $tok" "$c"
    [[ $HTTP_CODE == 204 ]] || { echo "container DELETE: HTTP $HTTP_CODE"; return 1; }
    if [[ -n $KS_URL ]]; then
        local auth
        auth=$(printf '{"auth":{"identity":{"methods":["password"],"password":{"user":{"name":"%s","domain":{"id":"default"},"password":"%s"}}},"scope":{"project":{"name":"%s","domain":{"id":"default"}}}}}' \
            "$KS_SWIFT_USER" "$KS_SWIFT_PASSWORD" "$KS_SWIFT_PROJECT")
        req -H 'Content-Type: application/json' --data-binary "$auth" "$KS_URL/v3/auth/tokens?nocatalog"
        [[ $HTTP_CODE == 201 ]] ||
            { echo "Keystone token for $KS_SWIFT_USER at $KS_URL: HTTP $HTTP_CODE (is keystone-start.sh done?)"; return 1; }
        tok=$(header X-Subject-Token)
        local project
        project=$(jq -r '.token.project.id // empty' "$BODY" 2>/dev/null)
        [[ -n $project ]] || { echo "no project id in Keystone's token reply"; return 1; }
        req -I -H "X-Auth-Token: $tok" "$PROXY/v1/AUTH_$project"
        [[ $HTTP_CODE == 2?? ]] || { echo "HEAD /v1/AUTH_$project with a Keystone token: HTTP $HTTP_CODE"; return 1; }
    fi
    return 0
}

wait_ready() {
    DEADLINE=$(($(date +%s) + TIMEOUT))
    check_alive
    wait_port "$MC_PORT" memcached
    wait_healthcheck "$ACC_PORT" account-server
    wait_healthcheck "$CONT_PORT" container-server
    wait_healthcheck "$OBJ_PORT" object-server
    wait_healthcheck "$PROXY_PORT" proxy-server
    local why
    until why=$(round_trip); do
        check_alive
        past_deadline && fail "not ready after ${TIMEOUT}s: $why" proxy-server account-server container-server object-server
        sleep 0.5
    done
}

# --- start or re-check ---------------------------------------------------------------------
if ((${#changed[@]} == 0 && ${#dead[@]} == 0)); then
    rm -rf "$NEW"
    wait_ready
    rig_log "already running with these settings; ready ($(rig_elapsed "$T0") s)"
else
    if ((${#dead[@]} < ${#SERVERS[@]})); then
        rig_log "restarting (changed: ${changed[*]:-none}; not running: ${dead[*]:-none})"
    fi
    mapfile -t entries < <(pid_entries)
    rig_stop_pidfiles "${entries[@]}"

    if ! cmp -s "$NEW/swift.conf" "$SWIFT_CONF"; then
        mkdir -p /etc/swift
        # Keep whatever was there before the rig first touched it (once).
        if [[ -e $SWIFT_CONF && ! -e $SWIFT_CONF.pre-saio ]] && ! grep -q "ccb's scripts/swift-rig" "$SWIFT_CONF"; then
            cp -p "$SWIFT_CONF" "$SWIFT_CONF.pre-saio"
        fi
        cp "$NEW/swift.conf" "$SWIFT_CONF.tmp.$$"
        mv -f "$SWIFT_CONF.tmp.$$" "$SWIFT_CONF"
    fi
    if ! cmp -s "$NEW/ring.params" "$ETC/ring.params" ||
        [[ ! -e $ETC/object.ring.gz || ! -e $ETC/container.ring.gz || ! -e $ETC/account.ring.gz ]]; then
        # One Python process with RingBuilder: ~1 s, against ~5-7 s for nine swift-ring-builder runs.
        "$RIG_PY" - "$ETC" "$OBJ_PORT" "$CONT_PORT" "$ACC_PORT" <<'EOF'
import sys
from swift.common.ring import RingBuilder

etc = sys.argv[1]
for name, port in zip(("object", "container", "account"), map(int, sys.argv[2:5])):
    b = RingBuilder(6, 1, 1)  # part power 6, 1 replica, min_part_hours 1
    b.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
               "replication_ip": "127.0.0.1", "replication_port": port,
               "device": "d1", "weight": 1.0, "meta": ""})
    b.rebalance()
    b.save(f"{etc}/{name}.builder")
    b.get_ring().save(f"{etc}/{name}.ring.gz")
EOF
    fi
    for f in "${CONFS[@]}" ring.params swift.conf; do
        mv -f "$NEW/$f" "$ETC/$f"
    done
    rm -rf "$NEW"
    T_CONF=$(rig_now)

    # A port taken by something else would only show after Swift's 30 s of bind retries.
    for s in "memcached:$MC_PORT" "account-server:$ACC_PORT" "container-server:$CONT_PORT" \
        "object-server:$OBJ_PORT" "proxy-server:$PROXY_PORT"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/${s#*:}") 2>/dev/null; then
            rig_die "port ${s#*:} (${s%%:*}) is already in use by another process; see SAIO_*_PORT* in $0"
        fi
    done
    # memcached as root needs -u; -U 0: no UDP listener.
    rig_spawn "$(pidfile memcached)" "$(logfile memcached)" \
        memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -m 64 -u "$(id -un)"
    # -v: log to stderr too (so to $LOG) besides syslog, which this machine does not have.
    for s in account-server container-server object-server proxy-server; do
        rig_spawn "$(pidfile "$s")" "$(logfile "$s")" "swift-$s" "$ETC/$s.conf" -v
    done
    wait_ready
    rig_log "started and ready in $(rig_elapsed "$T0") s (packages $(awk -v a="$T0" -v b="$T_PKG" 'BEGIN{printf "%.1f", b-a}') s, configs+rings $(awk -v a="$T_PKG" -v b="$T_CONF" 'BEGIN{printf "%.1f", b-a}') s)"
fi

# --- env file ----------------------------------------------------------------------------------
{
    echo "# Swift loopback rig (scripts/swift-rig/saio-start.sh); source it or read the export lines."
    rig_export SAIO_DIR "$SAIO_DIR"
    rig_export SAIO_AUTH_MODE "$AUTH_MODE"
    rig_export SAIO_PROXY_URL "$PROXY"
    rig_export SAIO_PROXY_PORT "$PROXY_PORT"
    rig_export SAIO_BACKEND_PORT_BASE "$PORT_BASE"
    rig_export SAIO_MEMCACHED_PORT "$MC_PORT"
    rig_export SAIO_INFO_URL "$PROXY/info"
    rig_export SAIO_MAX_FILE_SIZE "${MAX_FILE_SIZE:-5368709122}"
    rig_export SAIO_KEYSTONE_URL "$KS_URL"
    rig_export SAIO_TEMPAUTH_PREFIX "${TEMP_PREFIX}_"
    rig_export SAIO_AUTH_URL "$PROXY/auth/v1.0"
    rig_export SAIO_TEMPAUTH_USER "test:tester"
    rig_export SAIO_TEMPAUTH_KEY "testing"
    # The swift CLI (python-swiftclient) reads ST_AUTH/ST_USER/ST_KEY as its v1 defaults.
    rig_export ST_AUTH "$PROXY/auth/v1.0"
    rig_export ST_USER "test:tester"
    rig_export ST_KEY "testing"
    rig_export SAIO_STORAGE_URL "$PROXY/v1/${TEMP_PREFIX}_test"
    rig_export SAIO_NONADMIN_USER "test:tester2"
    rig_export SAIO_NONADMIN_KEY "testing2"
    rig_export SAIO_OTHER_USER "test2:tester2"
    rig_export SAIO_OTHER_KEY "testing2"
    rig_export SAIO_OTHER_STORAGE_URL "$PROXY/v1/${TEMP_PREFIX}_test2"
    rig_export SAIO_RESELLER_USER "admin:admin"
    rig_export SAIO_RESELLER_KEY "admin"
} | rig_write_atomic "$SAIO_DIR/env"
cat "$SAIO_DIR/env"
