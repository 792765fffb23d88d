#!/usr/bin/env bash
# The cost of `ccb verify` on the default image (//images:debian12, amd64), run as root:
#   1. a cold build in an empty store (every package downloaded);
#   2. `ccb verify`: the same actions rebuilt in a scratch store (the fetched artifacts and the
#      package downloads linked in, no result reused), then compared action by action;
# and the ratio. The rebuild dominates; the comparison (every file of the layers and of the
# root filesystem hashed on both sides) is reported apart. Goal: verify ≈ one cold build, the
# comparison a small fraction of it.
# A store of its own (BENCH_STORE, default /var/tmp/ccb-bench-verify), removed at the end
# unless KEEP=1. CCB=debug uses the debug binary (release figures are the ones to quote).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${CCB:-release}" = debug ]; then
    cargo build --quiet --manifest-path "$here/Cargo.toml"
    bin="$here/target/debug/ccb"
else
    cargo build --release --quiet --manifest-path "$here/Cargo.toml"
    bin="$here/target/release/ccb"
fi
store=${BENCH_STORE:-/var/tmp/ccb-bench-verify}
work=$(mktemp -d)
cleanup() {
    rm -rf "$work"
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$store"; fi
}
trap cleanup EXIT
rm -rf "$store"
export CCB_CACHE_DIR=$store
ccb=("$bin" --root "$here" -q)
target=(//images:debian12 --arch amd64)

start=$(date +%s.%N)
"${ccb[@]}" build "${target[@]}" --out "$work/out" >/dev/null
cold=$(echo "$(date +%s.%N) - $start" | bc)

start=$(date +%s.%N)
"${ccb[@]}" verify "${target[@]}" --format json >"$work/verify.json"
total=$(echo "$(date +%s.%N) - $start" | bc)

python3 - "$work/verify.json" "$cold" "$total" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cold, total = float(sys.argv[2]), float(sys.argv[3])
print(f"cold build:        {cold:8.1f} s")
print(f"ccb verify:        {total:8.1f} s  ({total / cold:.2f} x the cold build)")
print(f"  rebuild:         {r['rebuild_ms'] / 1000:8.1f} s")
print(f"  comparison:      {r['compare_ms'] / 1000:8.1f} s")
for a in r["actions"]:
    print(f"  {a['id']:28} {a['verdict']}" + (f" ({a['differing']} files)" if a["differing"] else ""))
print("identical" if r["identical"] else "DIFFERENT")
PY
