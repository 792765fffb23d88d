#!/usr/bin/env bash
# Step checkpoints on the default image's layer (//images:debian12, amd64), run as root:
#   1. the layer cold without checkpoints (CCB_CHECKPOINTS=0): what every step costs;
#   2. the layer cold with checkpoints: their overhead;
#   3. a one-line edit of a late post-install.d script (cc-motd's 70-cc-motd), rebuilt: the
#      layer resumes from the checkpoint before it. Goal: <= 10 % of the cold layer.
# Works on a copy of the project (the edit never touches the repo) and a store of its own
# (BENCH_STORE, default /var/tmp/ccb-bench-checkpoint), removed at the end unless KEEP=1.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
store=${BENCH_STORE:-/var/tmp/ccb-bench-checkpoint}
proj=$(mktemp -d)
cleanup() {
    rm -rf "$proj"
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$store"; fi
}
trap cleanup EXIT
cp -a "$here/manifests" "$here/elements" "$proj/"
cp -a "$here/ccb.lock" "$proj/" 2>/dev/null || true
export CCB_CACHE_DIR=$store
ccb=("$here/target/release/ccb" --root "$proj")
target=(//images:debian12 --arch amd64 --until layer)
layer=layer:debian12:amd64

# layer_build LABEL [ENV...]: builds the layer, prints its time and the steps that ran.
layer_build() {
    local label=$1
    shift
    env "$@" "${ccb[@]}" -q build "${target[@]}" --format json >"$proj/report.json"
    python3 - "$proj/report.json" "$layer" "$label" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
a = [a for a in r["actions"] if a["id"] == sys.argv[2]][0]
assert a["status"] == "built", a
print(f"== {sys.argv[3]}: {a['duration_ms'] / 1000:.1f} s, {len(a['steps'])} steps ran")
slow = sorted(a["steps"], key=lambda s: -s["duration_ms"])[:8]
for s in slow:
    print(f"   {s['phase']}/{s['name']:32} {s['duration_ms'] / 1000:6.1f} s")
open(sys.argv[1] + ".ms", "w").write(str(a["duration_ms"]))
PY
}

forget_layer() {
    local key
    key=$("${ccb[@]}" build "${target[@]}" --dry-run --format json |
        python3 -c 'import json,sys; print([a["key"] for a in json.load(sys.stdin)["actions"] if a["id"] == "'"$layer"'"][0])')
    "${ccb[@]}" -q cache rm "$key" >/dev/null 2>&1 || true
    rm -rf "$store/checkpoints" "$store/checkpoint-chains"
}

# The base first (mmdebstrap), so that only the layer is timed.
"${ccb[@]}" -q build //images:debian12 --arch amd64 --until base >/dev/null
forget_layer
layer_build "cold layer, no checkpoints" CCB_CHECKPOINTS=0
plain=$(cat "$proj/report.json.ms")
forget_layer
layer_build "cold layer, with checkpoints"
cold=$(cat "$proj/report.json.ms")
echo '# a one-line edit' >>"$proj/elements/cc-motd/post-install.d/70-cc-motd"
layer_build "after a one-line edit of post-install.d/70-cc-motd"
edit=$(cat "$proj/report.json.ms")
# Under load the package step alone varies by more than the checkpoints cost: compare runs
# on a quiet machine.
awk -v p="$plain" -v c="$cold" -v e="$edit" 'BEGIN {
    printf "cold layer with checkpoints: %+.1f %% against without;", (c - p) * 100 / p
    printf " the edit rebuilt in %.1f %% of the cold layer (%.1f %% of it without checkpoints;", e * 100 / c, e * 100 / p
    printf " goal <= 10 %%)\n"
}'
echo "store: $(du -sh "$store" | cut -f1), checkpoints $(du -sh "$store/checkpoints" 2>/dev/null | cut -f1)"
