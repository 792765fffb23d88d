#!/usr/bin/env bash
# Starts a real Keystone v3 (Debian 12's python3-keystone library, sqlite, fernet tokens) on
# 127.0.0.1 for ccb's integration tests, and creates through its REST API what the tests and
# Swift's authtoken need:
#   project ccb,     user ccb/ccbpass      role member
#   project service, user swift/swiftpass  roles admin, service   (Swift's authtoken user)
#   service swift (object-store), endpoints public/internal/admin
#       http://127.0.0.1:$SAIO_PROXY_PORT/v1/AUTH_%(project_id)s in RegionOne
#   application credential ccb-ci (secret ccb-ci-secret) of user ccb
# Writes $KS_DIR/clouds.yaml (clouds ccb, ccb-appcred, admin) and $KS_DIR/env.
#
# Idempotent: when the server is up with the same settings, it only checks (by getting tokens)
# that the objects are there. A changed setting restarts the server; an existing database is
# reused (no db_sync), so a restart takes a few seconds.
#
# Settings (environment):
#   KS_DIR               state: config, sqlite DB, keys, PID file, logs
#                        (default $CCB_SWIFT_RIG_DIR/keystone, i.e. /var/tmp/ccb-swift-rig/keystone)
#   KS_PORT              port (5000)
#   KS_TOKEN_EXPIRATION  token lifetime in seconds (3600; at least 10, see the README)
#   SAIO_PROXY_PORT      Swift proxy port the object-store endpoints point at (8080)
#   KS_THREADED=1        serve requests in threads (default: one at a time)
#   KS_START_TIMEOUT     seconds to wait for the server (60)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG_SELF=keystone-start
# shellcheck source=scripts/swift-rig/rig-lib.sh
. "$HERE/rig-lib.sh"

KS_DIR=${KS_DIR:-$RIG_ROOT/keystone}
KS_PORT=${KS_PORT:-5000}
EXPIRATION=${KS_TOKEN_EXPIRATION:-3600}
PROXY_PORT=${SAIO_PROXY_PORT:-8080}
THREADED=${KS_THREADED:-0}
TIMEOUT=${KS_START_TIMEOUT:-60}
for v in KS_PORT EXPIRATION PROXY_PORT TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] || rig_die "$v must be a number, got '${!v}'"
done
# Keystone itself accepts any expiration >= 0, but a token must outlive the requests made with
# it (this script's own included).
((EXPIRATION >= 10)) || rig_die "KS_TOKEN_EXPIRATION must be at least 10 (seconds), got $EXPIRATION"

URL=http://127.0.0.1:$KS_PORT
AUTH_URL=$URL/v3
REGION=RegionOne
ADMIN_PASSWORD=adminpass
SWIFT_URL_TEMPLATE="http://127.0.0.1:$PROXY_PORT/v1/AUTH_%(project_id)s"
ETC=$KS_DIR/etc
LOG=$KS_DIR/log
RUN=$KS_DIR/run
DB=$KS_DIR/keystone.db
PIDFILE=$RUN/keystone.pid
SERVER_LOG=$LOG/keystone.log
MANAGE_LOG=$LOG/keystone-manage.log

T0=$(rig_now)
mkdir -p "$(dirname "$KS_DIR")"
# Serialize concurrent starts; the lock lives beside the state dir so a purge can delete it.
exec 8>"$KS_DIR.lock"
flock -w 900 8 || rig_die "timed out waiting for the lock $KS_DIR.lock"

rig_ensure_packages python3-keystone python3-keystonemiddleware jq curl
T_PKG=$(rig_now)
mkdir -p "$ETC" "$LOG" "$RUN"

# --- config --------------------------------------------------------------------------------
cat >"$ETC/keystone.conf.new" <<EOF
# Written by ccb's scripts/swift-rig/keystone-start.sh (loopback test rig).
[DEFAULT]
# Logs go to the server's stderr, i.e. $SERVER_LOG.
use_stderr = true

[database]
connection = sqlite:///$DB

[token]
provider = fernet
expiration = $EXPIRATION

[fernet_tokens]
key_repository = $KS_DIR/fernet-keys

[fernet_receipts]
key_repository = $KS_DIR/fernet-keys

[credential]
key_repository = $KS_DIR/credential-keys

[identity]
# The cheapest bcrypt: every password token and user creation hashes or checks one.
password_hash_algorithm = bcrypt
password_hash_rounds = 4

[cache]
# In-process cache: API calls take about half the time. No memcached needed.
enabled = true
backend = dogpile.cache.memory
EOF
# The server's own settings: a change here restarts it just like a config change.
SERVE_ARGS=(--host 127.0.0.1 --port "$KS_PORT" --config-dir "$ETC")
[[ $THREADED != 1 ]] || SERVE_ARGS+=(--threaded)
echo "${SERVE_ARGS[*]}" >"$ETC/serve.params.new"

running=0
rig_pid_alive "$PIDFILE" "keystone-serve.py" >/dev/null && running=1
changed=0
cmp -s "$ETC/keystone.conf.new" "$ETC/keystone.conf" || changed=1
cmp -s "$ETC/serve.params.new" "$ETC/serve.params" || changed=1
if ((running && changed)); then
    rig_log "settings changed: restarting Keystone"
    rig_stop_pidfiles "$PIDFILE:keystone-serve.py"
    running=0
fi
mv -f "$ETC/keystone.conf.new" "$ETC/keystone.conf"
mv -f "$ETC/serve.params.new" "$ETC/serve.params"

manage() {
    # keystone-manage prints a harmless eventlet "Exception ignored ... getcurrent" traceback
    # at exit; its exit status is what counts.
    if ! "$RIG_PY" /usr/bin/keystone-manage --config-file "$ETC/keystone.conf" "$@" >>"$MANAGE_LOG" 2>&1; then
        rig_log_tail "$MANAGE_LOG" 40
        rig_die "keystone-manage $1 failed"
    fi
}

# --- database ------------------------------------------------------------------------------
T_DB0=$(rig_now)
if [[ ! -s $DB || ! -e $KS_DIR/bootstrap.done ]]; then
    ((running == 0)) || rig_stop_pidfiles "$PIDFILE:keystone-serve.py"
    running=0
    rm -f "$DB" "$DB-wal" "$DB-shm" "$KS_DIR/bootstrap.done" "$KS_DIR/appcred.id"
    # Keys written directly, as fernet_setup/credential_setup would (32 random bytes, urlsafe
    # base64): saves two keystone-manage runs of ~4.5 s each. 0 is the staged key, 1 primary.
    for d in fernet-keys credential-keys; do
        if [[ ! -s $KS_DIR/$d/0 || ! -s $KS_DIR/$d/1 ]]; then
            rm -rf "${KS_DIR:?}/$d"
            mkdir -m 0700 "$KS_DIR/$d"
            for k in 0 1; do
                (umask 077 && head -c 32 /dev/urandom | base64 | tr '+/' '-_' >"$KS_DIR/$d/$k")
            done
        fi
    done
    rig_log "creating the database (db_sync, bootstrap; ~10 s)"
    manage db_sync
    # Without WAL, some request path keeps a read transaction open on a pooled sqlite
    # connection and writes (e.g. POST /v3/roles) fail with 500 "database is locked".
    mode=$("$RIG_PY" -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("PRAGMA journal_mode=WAL").fetchone()[0])' "$DB")
    [[ $mode == wal ]] || rig_die "could not switch $DB to WAL (journal_mode=$mode)"
    manage bootstrap --bootstrap-username admin --bootstrap-password "$ADMIN_PASSWORD" \
        --bootstrap-project-name admin --bootstrap-role-name admin \
        --bootstrap-service-name keystone --bootstrap-region-id "$REGION" \
        --bootstrap-admin-url "$AUTH_URL/" --bootstrap-internal-url "$AUTH_URL/" \
        --bootstrap-public-url "$AUTH_URL/"
    touch "$KS_DIR/bootstrap.done"
fi
T_DB=$(rig_now)

# --- server --------------------------------------------------------------------------------
if ((running == 0)); then
    if (exec 3<>"/dev/tcp/127.0.0.1/$KS_PORT") 2>/dev/null; then
        rig_die "port $KS_PORT is already in use by another process (set KS_PORT)"
    fi
    rig_spawn "$PIDFILE" "$SERVER_LOG" "$RIG_PY" "$HERE/keystone-serve.py" "${SERVE_ARGS[@]}"
fi
deadline=$(($(date +%s) + TIMEOUT))
until [[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$AUTH_URL" 2>/dev/null)" == 200 ]]; do
    if ! rig_pid_alive "$PIDFILE" "keystone-serve.py" >/dev/null; then
        rig_log_tail "$SERVER_LOG" 40
        rig_die "Keystone died (port $KS_PORT in use? see $SERVER_LOG)"
    fi
    if (($(date +%s) >= deadline)); then
        rig_log_tail "$SERVER_LOG" 40
        rig_die "Keystone does not answer on $AUTH_URL after ${TIMEOUT}s"
    fi
    sleep 0.1
done
T_UP=$(rig_now)

# --- REST helpers --------------------------------------------------------------------------
BODY=$(mktemp)
HDRS=$(mktemp)
trap 'rm -f "$BODY" "$HDRS"' EXIT
# ks TOKEN METHOD PATH [JSON]: body to $BODY, headers to $HDRS, status to $CODE.
ks() {
    local tok=$1 method=$2 path=$3
    local args=(-s -o "$BODY" -D "$HDRS" -w '%{http_code}' --max-time 30 -X "$method"
        -H 'Content-Type: application/json')
    [[ -z $tok ]] || args+=(-H "X-Auth-Token: $tok")
    [[ $# -lt 4 ]] || args+=(--data-binary "$4")
    CODE=$(curl "${args[@]}" "$URL$path") || CODE=000
}
# ks_ok CODES TOKEN METHOD PATH [JSON]: like ks, but dies unless the status is one of CODES.
ks_ok() {
    local codes=$1
    shift
    ks "$@"
    if [[ " $codes " != *" $CODE "* ]]; then
        rig_log "$2 $3 -> HTTP $CODE: $(head -c 600 "$BODY")"
        rig_log_tail "$SERVER_LOG" 20
        rig_die "unexpected reply from Keystone"
    fi
}
subject_token() { awk 'tolower($1) == "x-subject-token:" { sub(/\r$/, "", $2); print $2 }' "$HDRS"; }
password_auth() { # user password project
    jq -cn --arg u "$1" --arg p "$2" --arg pr "$3" '{auth: {identity: {methods: ["password"],
        password: {user: {name: $u, domain: {id: "default"}, password: $p}}},
        scope: {project: {name: $pr, domain: {id: "default"}}}}}'
}
appcred_auth() { # id secret
    jq -cn --arg i "$1" --arg s "$2" '{auth: {identity: {methods: ["application_credential"],
        application_credential: {id: $i, secret: $s}}}}'
}

# --- objects -------------------------------------------------------------------------------
# Quick check for a re-run: the tokens the tests and Swift use can be had, and the catalog has
# the object-store endpoints for this proxy port. Sets PROJECT_ID, USER_ID, APPCRED_ID.
objects_ok() {
    [[ -s $KS_DIR/appcred.id ]] || return 1
    APPCRED_ID=$(<"$KS_DIR/appcred.id")
    ks "" POST /v3/auth/tokens "$(password_auth ccb ccbpass ccb)"
    [[ $CODE == 201 ]] || return 1
    PROJECT_ID=$(jq -r '.token.project.id' "$BODY")
    USER_ID=$(jq -r '.token.user.id' "$BODY")
    local want got
    want=$(printf '%s\n' admin internal public | sed "s|\$| http://127.0.0.1:$PROXY_PORT/v1/AUTH_$PROJECT_ID|")
    got=$(jq -r --arg r "$REGION" '.token.catalog[] | select(.type == "object-store") | .endpoints[]
        | select(.region_id == $r) | "\(.interface) \(.url)"' "$BODY" | sort)
    [[ $got == "$want" ]] || return 1
    got=$(jq -r '.token.catalog[] | select(.type == "identity") | .endpoints[]
        | select(.interface == "public") | .url' "$BODY")
    [[ $got == "$AUTH_URL/" ]] || return 1
    ks "" POST "/v3/auth/tokens?nocatalog" "$(appcred_auth "$APPCRED_ID" ccb-ci-secret)"
    [[ $CODE == 201 ]] || return 1
    ks "" POST "/v3/auth/tokens?nocatalog" "$(password_auth swift swiftpass service)"
    [[ $CODE == 201 ]] && jq -e '[.token.roles[].name] | index("admin") and index("service")' "$BODY" >/dev/null
}

# Each ensure_* prints the object's id, creating the object if it is missing.
ensure_project() {
    ks_ok 200 "$ADMIN" GET "/v3/projects?name=$1&domain_id=default"
    local id
    id=$(jq -r '.projects[0].id // empty' "$BODY")
    if [[ -z $id ]]; then
        ks_ok 201 "$ADMIN" POST /v3/projects \
            "$(jq -cn --arg n "$1" '{project: {name: $n, domain_id: "default", description: "ccb swift rig"}}')"
        id=$(jq -r '.project.id' "$BODY")
    fi
    echo "$id"
}
ensure_user() { # name password default_project_id
    ks_ok 200 "$ADMIN" GET "/v3/users?name=$1&domain_id=default"
    local id
    id=$(jq -r '.users[0].id // empty' "$BODY")
    if [[ -z $id ]]; then
        # An existing user's password is left alone: changing it would revoke live tokens.
        ks_ok 201 "$ADMIN" POST /v3/users \
            "$(jq -cn --arg n "$1" --arg p "$2" --arg pr "$3" '{user: {name: $n, password: $p, domain_id: "default", default_project_id: $pr}}')"
        id=$(jq -r '.user.id' "$BODY")
    fi
    echo "$id"
}
ensure_role() {
    ks_ok 200 "$ADMIN" GET "/v3/roles?name=$1"
    local id
    id=$(jq -r '.roles[0].id // empty' "$BODY")
    if [[ -z $id ]]; then
        ks_ok 201 "$ADMIN" POST /v3/roles "$(jq -cn --arg n "$1" '{role: {name: $n}}')"
        id=$(jq -r '.role.id' "$BODY")
    fi
    echo "$id"
}
grant() { # project user role (PUT is idempotent)
    ks_ok 204 "$ADMIN" PUT "/v3/projects/$1/users/$2/roles/$3"
}
ensure_service() { # type name
    ks_ok 200 "$ADMIN" GET "/v3/services?type=$1"
    local id
    id=$(jq -r --arg n "$2" '[.services[] | select(.name == $n)][0].id // empty' "$BODY")
    if [[ -z $id ]]; then
        ks_ok 201 "$ADMIN" POST /v3/services "$(jq -cn --arg t "$1" --arg n "$2" '{service: {type: $t, name: $n}}')"
        id=$(jq -r '.service.id' "$BODY")
    fi
    echo "$id"
}
ensure_endpoints() { # service_id url: public, internal and admin in $REGION, fixed if they differ
    local sid=$1 url=$2 iface eid cur
    ks_ok 200 "$ADMIN" GET "/v3/endpoints?service_id=$sid"
    local listing
    listing=$(cat "$BODY")
    for iface in public internal admin; do
        eid=$(jq -r --arg i "$iface" --arg r "$REGION" '[.endpoints[] | select(.interface == $i and .region_id == $r)][0].id // empty' <<<"$listing")
        cur=$(jq -r --arg i "$iface" --arg r "$REGION" '[.endpoints[] | select(.interface == $i and .region_id == $r)][0].url // empty' <<<"$listing")
        if [[ -z $eid ]]; then
            ks_ok 201 "$ADMIN" POST /v3/endpoints "$(jq -cn --arg s "$sid" --arg i "$iface" --arg u "$url" --arg r "$REGION" \
                '{endpoint: {service_id: $s, interface: $i, url: $u, region_id: $r}}')"
        elif [[ $cur != "$url" ]]; then
            ks_ok 200 "$ADMIN" PATCH "/v3/endpoints/$eid" "$(jq -cn --arg u "$url" '{endpoint: {url: $u}}')"
        fi
    done
}

if objects_ok; then
    rig_log "projects, users, endpoints and application credential present"
else
    rig_log "creating projects, users, roles, endpoints and the application credential"
    ks_ok 201 "" POST "/v3/auth/tokens?nocatalog" "$(password_auth admin "$ADMIN_PASSWORD" admin)"
    ADMIN=$(subject_token)
    member=$(ensure_role member)
    admin_role=$(ensure_role admin)
    # Not made by bootstrap in Zed; Swift's service user conventionally has it.
    service_role=$(ensure_role service)
    PROJECT_ID=$(ensure_project ccb)
    USER_ID=$(ensure_user ccb ccbpass "$PROJECT_ID")
    grant "$PROJECT_ID" "$USER_ID" "$member"
    service_project=$(ensure_project service)
    swift_user=$(ensure_user swift swiftpass "$service_project")
    grant "$service_project" "$swift_user" "$admin_role"
    grant "$service_project" "$swift_user" "$service_role"
    ensure_endpoints "$(ensure_service identity keystone)" "$AUTH_URL/"
    ensure_endpoints "$(ensure_service object-store swift)" "$SWIFT_URL_TEMPLATE"

    # The application credential is created by its own user (ccb), with the secret given, so
    # the secret is known; an existing one is kept if its secret still works.
    ks_ok 201 "" POST "/v3/auth/tokens?nocatalog" "$(password_auth ccb ccbpass ccb)"
    CCB=$(subject_token)
    ks_ok 200 "$CCB" GET "/v3/users/$USER_ID/application_credentials?name=ccb-ci"
    APPCRED_ID=$(jq -r '.application_credentials[0].id // empty' "$BODY")
    if [[ -n $APPCRED_ID ]]; then
        ks "" POST "/v3/auth/tokens?nocatalog" "$(appcred_auth "$APPCRED_ID" ccb-ci-secret)"
        if [[ $CODE != 201 ]]; then
            ks_ok 204 "$CCB" DELETE "/v3/users/$USER_ID/application_credentials/$APPCRED_ID"
            APPCRED_ID=
        fi
    fi
    if [[ -z $APPCRED_ID ]]; then
        ks_ok 201 "$CCB" POST "/v3/users/$USER_ID/application_credentials" \
            '{"application_credential": {"name": "ccb-ci", "secret": "ccb-ci-secret", "description": "ccb swift rig"}}'
        APPCRED_ID=$(jq -r '.application_credential.id' "$BODY")
    fi
    echo "$APPCRED_ID" >"$KS_DIR/appcred.id"
    objects_ok || rig_die "objects created, but the token/catalog check still fails"
fi
T_OBJ=$(rig_now)

# --- clouds.yaml and env -------------------------------------------------------------------
rig_write_atomic "$KS_DIR/clouds.yaml" <<EOF
# Written by ccb's scripts/swift-rig/keystone-start.sh. OS_CLIENT_CONFIG_FILE points here.
clouds:
  ccb:
    auth_type: password
    auth:
      auth_url: $AUTH_URL
      username: ccb
      password: ccbpass
      project_name: ccb
      user_domain_name: Default
      project_domain_name: Default
    region_name: $REGION
    interface: public
    identity_api_version: 3
  ccb-appcred:
    auth_type: v3applicationcredential
    auth:
      auth_url: $AUTH_URL
      application_credential_id: $APPCRED_ID
      application_credential_secret: ccb-ci-secret
    region_name: $REGION
    interface: public
    identity_api_version: 3
  admin:
    auth_type: password
    auth:
      auth_url: $AUTH_URL
      username: admin
      password: $ADMIN_PASSWORD
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: $REGION
    interface: public
    identity_api_version: 3
EOF
{
    echo "# Keystone loopback rig (scripts/swift-rig/keystone-start.sh); source it or read the export lines."
    rig_export OS_CLIENT_CONFIG_FILE "$KS_DIR/clouds.yaml"
    rig_export KS_DIR "$KS_DIR"
    rig_export KS_PORT "$KS_PORT"
    rig_export KS_URL "$URL"
    rig_export KS_AUTH_URL "$AUTH_URL"
    rig_export KS_REGION "$REGION"
    rig_export KS_TOKEN_EXPIRATION "$EXPIRATION"
    rig_export KS_USER "ccb"
    rig_export KS_PASSWORD "ccbpass"
    rig_export KS_PROJECT "ccb"
    rig_export KS_USER_DOMAIN "Default"
    rig_export KS_PROJECT_DOMAIN "Default"
    rig_export KS_USER_ID "$USER_ID"
    rig_export KS_PROJECT_ID "$PROJECT_ID"
    rig_export KS_APP_CRED_NAME "ccb-ci"
    rig_export KS_APP_CRED_ID "$APPCRED_ID"
    rig_export KS_APP_CRED_SECRET "ccb-ci-secret"
    rig_export KS_SWIFT_STORAGE_URL "http://127.0.0.1:$PROXY_PORT/v1/AUTH_$PROJECT_ID"
    rig_export KS_ADMIN_USER "admin"
    rig_export KS_ADMIN_PASSWORD "$ADMIN_PASSWORD"
    rig_export KS_ADMIN_PROJECT "admin"
} | rig_write_atomic "$KS_DIR/env"

d() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
rig_log "ready in $(rig_elapsed "$T0") s (packages $(d "$T0" "$T_PKG"), database $(d "$T_DB0" "$T_DB"), server $(d "$T_DB" "$T_UP"), objects $(d "$T_UP" "$T_OBJ"))"
cat "$KS_DIR/env"
