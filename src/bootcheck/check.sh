#!/bin/bash
# ccb-boot-check: runs in the booted image (as root, from a systemd unit started by cloud-init)
# and reports every check on the console, one line each:
#   CCB-CHECK|<name>|PASS|<detail>   or   CCB-CHECK|<name>|FAIL|<detail>
# then CCB-CHECKS-DONE, and powers the machine off.
# Arguments: the smallest root filesystem size (bytes) that proves the root was grown.
set -u
exec > /dev/console 2>&1
min_root=${1:-0}

report() {
    # name, status, detail (one line, no separators)
    local detail=${3//|/\/}
    echo "CCB-CHECK|$1|$2|${detail//$'\n'/ }"
}

check() {
    # name, command...: PASS when the command exits 0; its last output line is the detail.
    local name=$1 out rc
    shift
    out=$("$@" 2>&1)
    rc=$?
    if [ $rc -eq 0 ]; then
        report "$name" PASS "$(printf '%s' "$out" | tail -n 1)"
    else
        report "$name" FAIL "$(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')(exit $rc)"
    fi
}

multi_user() {
    # Not `is-system-running --wait`: this unit's own job keeps the system "starting".
    local i failed
    for i in $(seq 300); do
        systemctl is-active --quiet multi-user.target && break
        sleep 1
    done
    if ! systemctl is-active --quiet multi-user.target; then
        echo "multi-user.target is not active after 300 s ($(systemctl is-system-running))"
        return 1
    fi
    failed=$(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')
    echo "multi-user.target active${failed:+; failed units: $failed}"
}

cloud_init() {
    local out
    out=$(cloud-init status --long 2>&1)
    echo "$out" | grep -q '^status: done' || { echo "$out" | head -n 3; return 1; }
    if echo "$out" | grep -q '^errors:' && ! echo "$out" | grep -q '^errors: \[\]'; then
        echo "$out" | sed -n '/^errors:/,$p' | head -n 5
        return 1
    fi
    if [ -r /run/cloud-init/result.json ] && command -v python3 >/dev/null 2>&1; then
        python3 -c 'import json,sys; e=json.load(open("/run/cloud-init/result.json"))["v1"]["errors"]; print("errors:", e); sys.exit(1 if e else 0)' || return 1
    fi
    echo "cloud-init finished without errors"
}

root_grown() {
    local src size
    src=$(findmnt -no SOURCE /)
    size=$(df -B1 --output=size / | tail -n 1 | tr -d ' ')
    if [ "$size" -lt "$min_root" ]; then
        echo "root filesystem on $src is $size bytes, not grown to the disk (expected at least $min_root)"
        return 1
    fi
    echo "root filesystem on $src grown to $size bytes"
}

provenance() {
    local f=/opt/chameleon/provenance.json
    test -s "$f" || { echo "$f is missing"; return 1; }
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("build-tag", r.get("build-tag"))' "$f"
    else
        echo "$f present"
    fi
}

# Wait for cloud-init to finish (it started this unit, but its final stage may still run).
timeout 600 cloud-init status --wait >/dev/null 2>&1 || true

# Units ordered after cloud-final (the elements' boot-time actions) may still be queued:
# wait until no job but this unit's own is left.
for i in $(seq 120); do
    [ -z "$(systemctl list-jobs --no-legend --plain 2>/dev/null | grep -v ccb-boot-check)" ] && break
    sleep 1
done

check multi-user multi_user
check cloud-init cloud_init
check root-grown root_grown
check provenance provenance

# Element checks: /var/lib/ccb-checks/<element>/<name>, run in order.
for f in /var/lib/ccb-checks/*/*; do
    [ -x "$f" ] || continue
    element=$(basename "$(dirname "$f")")
    check "$element/$(basename "$f")" "$f"
done

echo "CCB-CHECKS-DONE"
sync
systemctl poweroff --no-block
