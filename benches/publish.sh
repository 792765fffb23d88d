#!/usr/bin/env bash
# Issue [6/8]'s figures, on the loopback Swift + Keystone rig (scripts/swift-rig), as root:
#   - upload throughput of a 2 GiB file: `ccb publish` vs python-swiftclient's `swift upload`,
#     same segment size (256 MiB, SLO) and the same number of parallel segment uploads (4);
#   - an idempotent re-publish of the same image (goal: no bytes sent).
# SIZE_MIB (default 2048) and SEGMENT_MIB (default 256) change the file and segment sizes.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
size_mib=${SIZE_MIB:-2048}
seg_mib=${SEGMENT_MIB:-256}
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
"$here/scripts/swift-rig/rig-start.sh" > /dev/null
# shellcheck disable=SC1091
. "${CCB_SWIFT_RIG_DIR:-/var/tmp/ccb-swift-rig}/env"

work=$(mktemp -d /var/tmp/ccb-bench-publish.XXXXXX)
swift_() {
    swift --os-auth-url "$KS_AUTH_URL" --auth-version 3 --os-username "$KS_USER" \
        --os-password "$KS_PASSWORD" --os-project-name "$KS_PROJECT" \
        --os-user-domain-name Default --os-project-domain-name Default "$@"
}
# The rig is shared and long-lived: leave no GiB behind.
trap 'rm -rf "$work"; swift_ delete ccb-bench > /dev/null 2>&1 || true; swift_ delete ccb-bench-swift > /dev/null 2>&1 || true' EXIT
token=$(curl -sS -D - -o /dev/null -H 'Content-Type: application/json' -d "{\"auth\":{\"identity\":{\"methods\":[\"password\"],\"password\":{\"user\":{\"name\":\"$KS_USER\",\"domain\":{\"name\":\"Default\"},\"password\":\"$KS_PASSWORD\"}}},\"scope\":{\"project\":{\"name\":\"$KS_PROJECT\",\"domain\":{\"name\":\"Default\"}}}}}" "$KS_AUTH_URL/auth/tokens" | awk 'tolower($1) == "x-subject-token:" { print $2 }' | tr -d '\r')
for c in ccb-bench ccb-bench-swift; do
    # Start from empty containers: a previous run's segments would be "already there".
    swift_ delete "$c" > /dev/null 2>&1 || true
    curl -sS -o /dev/null -X PUT -H "X-Auth-Token: $token" "$KS_SWIFT_STORAGE_URL/$c"
done

mkdir -p "$work/proj/manifests" "$work/images/CC-Bench.d"
echo '{}' > "$work/proj/manifests/images.ncl"
cat > "$work/proj/manifests/sites.ncl" <<NCL
{ rig = { name = "Rig", baremetal = true, kind = 'swift, cloud = "ccb", container = "ccb-bench", formats = ['qcow2] } }
NCL
echo "generating a ${size_mib} MiB file..."
head -c $((size_mib << 20)) /dev/urandom > "$work/images/CC-Bench.qcow2"
echo '{"build-tag": "CC-Bench"}' > "$work/images/CC-Bench.d/CC-Bench_provenance.json"
(cd "$work/images" && sha256sum CC-Bench.qcow2 > SHA256SUMS)

ccb=("$here/target/release/ccb" --root "$work/proj" -q publish --outputs "$work/images" CC-Bench
    --scope bench --segment-size "${seg_mib}MiB" --jobs 4)
t0=$(date +%s.%N)
"${ccb[@]}"
t1=$(date +%s.%N)
"${ccb[@]}" > "$work/again.txt"
t2=$(date +%s.%N)
swift_ upload --use-slo --segment-size $((seg_mib << 20)) --segment-threads 4 \
    --object-name CC-Bench.qcow2 ccb-bench-swift "$work/images/CC-Bench.qcow2" > /dev/null
t3=$(date +%s.%N)

python3 - "$size_mib" "$t0" "$t1" "$t2" "$t3" "$work/again.txt" <<'PY'
import sys
mib, t0, t1, t2, t3 = int(sys.argv[1]), *map(float, sys.argv[2:6])
again = open(sys.argv[6]).read().strip()
print(f"file: {mib} MiB")
print(f"ccb publish:            {t1 - t0:6.1f} s  {mib / (t1 - t0):6.1f} MiB/s (upload with MD5 per segment, SHA-256 re-check alongside)")
print(f"swift upload (CLI):     {t3 - t2:6.1f} s  {mib / (t3 - t2):6.1f} MiB/s")
print(f"idempotent re-publish:  {t2 - t1:6.2f} s  ({again})")
PY
