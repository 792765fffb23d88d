# shellcheck shell=bash disable=SC2034 # the variables here are used by the scripts that source it
# Shared helpers for the Swift/Keystone loopback rig. Sourced (not run) by saio-start.sh,
# saio-stop.sh, keystone-start.sh, keystone-stop.sh, rig-start.sh and rig-stop.sh.
# Everything here works on PID files the rig wrote itself: nothing is ever found or killed by name.

# Root of all rig state; saio/ and keystone/ live below it unless SAIO_DIR/KS_DIR say otherwise.
RIG_ROOT=${CCB_SWIFT_RIG_DIR:-/var/tmp/ccb-swift-rig}

# Swift and Keystone code must run under Debian's interpreter: `python3` on PATH may be a pyenv
# build that cannot import Debian's python3-* packages.
RIG_PY=/usr/bin/python3

rig_log() { printf '%s: %s\n' "${RIG_SELF:-swift-rig}" "$*" >&2; }
rig_die() { rig_log "error: $*"; exit 1; }

# Seconds since the epoch with milliseconds, for the timings the scripts print.
rig_now() { date +%s.%N | cut -c1-14; }
rig_elapsed() { awk -v a="$1" -v b="$(rig_now)" 'BEGIN { printf "%.1f", b - a }'; }

# Debian packages among "$@" that are not installed.
rig_missing_packages() {
    local p
    for p in "$@"; do
        if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != installed ]]; then
            printf '%s\n' "$p"
        fi
    done
}

# Installs whichever of "$@" is missing. --no-install-recommends: the recommends of swift-proxy
# and python3-keystone pull in about 75 unrelated packages (GTK, autopkgtest, a newer apt).
# --force-confold keeps any config a previous run or an admin left in /etc. The lock timeout
# lets two installers (another rig start, scripts/test) queue instead of failing. The package
# lists are refreshed only when installing from the current ones fails (unknown package or a
# superseded version gone from the mirror), so a machine with fresh lists saves the update.
rig_ensure_packages() {
    local missing
    mapfile -t missing < <(rig_missing_packages "$@")
    ((${#missing[@]} == 0)) && return 0
    [[ $(id -u) -eq 0 ]] || rig_die "need root to install: ${missing[*]}"
    # apt's chatter (about 1000 lines for the whole rig) goes to a log, shown only on failure.
    local log=$RIG_ROOT/apt.log t0
    t0=$(rig_now)
    mkdir -p "$RIG_ROOT"
    rig_log "installing ${missing[*]} (log: $log)"
    local apt=(apt-get -y -q --no-install-recommends -o DPkg::Lock::Timeout=300
        -o Dpkg::Options::=--force-confold install)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}" >>"$log" 2>&1; then
        rig_log "install failed; refreshing the package lists and retrying"
        if ! { apt-get -q -o DPkg::Lock::Timeout=300 update &&
            DEBIAN_FRONTEND=noninteractive "${apt[@]}" "${missing[@]}"; } >>"$log" 2>&1; then
            rig_log_tail "$log" 30
            rig_die "could not install ${missing[*]}"
        fi
    fi
    rig_log "installed in $(rig_elapsed "$t0") s"
}

# Writes stdin to "$1" atomically (temp file + rename), so a concurrent reader of an env file
# never sees half of it.
rig_write_atomic() {
    local tmp
    tmp=$(mktemp "$1.XXXXXX")
    cat >"$tmp"
    chmod 0644 "$tmp"
    mv -f "$tmp" "$1"
}

# Prints the PID in pidfile "$1" if that process is alive AND its command line contains "$2".
# The second check keeps a stale PID file (after a reboot, PID reuse) from pointing at, and
# later killing, an unrelated process.
rig_pid_alive() {
    local pidfile=$1 match=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$match" || return 1
    printf '%s\n' "$pid"
}

# Starts "$@" in its own session (setsid: it survives the caller's terminal and process group,
# e.g. a test harness that kills its children) with stdout/stderr appended to log "$2". The
# child writes its own PID file just before exec, so the file holds the server's real PID
# whatever setsid does about forking.
rig_spawn() {
    local pidfile=$1 logfile=$2
    shift 2
    rm -f "$pidfile"
    printf '=== %s start: %s\n' "$(date -Is)" "$*" >>"$logfile"
    # shellcheck disable=SC2016 # $$ and "$@" are for the inner bash
    # 8>&- 9>&-: the start scripts hold their flock on fds 8 and 9; a server that inherited
    # them would hold the lock for its whole life and block every later start or stop.
    setsid bash -c 'echo $$ >"$0.tmp" && mv -f "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" \
        >>"$logfile" 2>&1 </dev/null 8>&- 9>&- &
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $pidfile ]] && return 0
        sleep 0.05
    done
    rig_die "$* did not start (no PID file $pidfile)"
}

# Stops the processes of the given "pidfile:match" pairs: SIGTERM to all at once (Swift's
# servers each take about 2 s to exit, so one by one would add up), up to 10 s for them to go,
# then SIGKILL for any left. PID files are removed.
rig_stop_pidfiles() {
    local entry pid pids=() files=()
    for entry in "$@"; do
        local f=${entry%%:*} m=${entry#*:}
        if pid=$(rig_pid_alive "$f" "$m"); then
            pids+=("$pid")
        fi
        files+=("$f")
    done
    if ((${#pids[@]})); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        local i alive
        for ((i = 0; i < 100; i++)); do
            alive=()
            for pid in "${pids[@]}"; do
                kill -0 "$pid" 2>/dev/null && alive+=("$pid")
            done
            ((${#alive[@]} == 0)) && break
            sleep 0.1
        done
        if ((${#alive[@]})); then
            rig_log "SIGKILL to ${alive[*]} (still running 10 s after SIGTERM)"
            kill -KILL "${alive[@]}" 2>/dev/null || true
        fi
    fi
    ((${#files[@]} == 0)) || rm -f "${files[@]}"
}

# Prints the last lines of log "$1" to stderr (used when a server died or never got ready).
rig_log_tail() {
    local f=$1 n=${2:-40}
    [[ -f $f ]] || return 0
    printf -- '--- last %s lines of %s ---\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2
}

# One `export NAME='value'` line. Values are single-quoted and must not contain a single quote,
# so the env files can be sourced by a shell and also parsed line by line by a test program.
rig_export() {
    [[ $2 != *"'"* ]] || rig_die "env value for $1 contains a single quote"
    printf "export %s='%s'\n" "$1" "$2"
}
