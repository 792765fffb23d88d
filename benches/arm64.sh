#!/usr/bin/env bash
# amd64 vs emulated arm64: the same image (default //images:debian12, CC-Debian12 and
# CC-Debian12-ARM64) built cold in fresh stores, then the arm64 disk booted with the
# Chameleon checks (qemu-system-aarch64 -M virt, AAVMF, TCG here). Prints the time of every
# action and of every step of each, side by side, and the arm64/amd64 ratio (goal: ≤ 4×).
# Package downloads are kept between the two builds' stores (the network is not measured).
# Needs root, mmdebstrap, the Debian mirror of the host's apt sources and arm64 emulation
# (scripts/host-deps.sh: ensure_arm64_emulation). About 30-60 min on a 2-core host.
#   [CCB_BIN=path/to/ccb] [CCB_BENCH_KEEP=1] [CCB_BENCH_DOWNLOADS=dir] [CCB_BENCH_NO_BOOT=1]
#   benches/arm64.sh [TARGET]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
target=${1:-//images:debian12}
# shellcheck source=scripts/host-deps.sh
source "$here/scripts/host-deps.sh"
ensure_arm64_emulation
# CCB_BIN: an already built ccb (the release build of nickel-lang-core takes long on 2 cores).
if [[ -n ${CCB_BIN:-} ]]; then
    ccb=$CCB_BIN
else
    cargo build --release --quiet --manifest-path "$here/Cargo.toml"
    ccb="$here/target/release/ccb"
fi
work=$(mktemp -d /var/tmp/ccb-arm64-bench.XXXXXX)
# CCB_BENCH_KEEP=1 keeps the stores (to compare the two root filesystems afterwards);
# CCB_BENCH_DOWNLOADS names a package download directory to reuse.
if [[ -z ${CCB_BENCH_KEEP:-} ]]; then
    trap 'rm -rf "$work"' EXIT
else
    echo "stores kept in $work" >&2
fi
downloads=${CCB_BENCH_DOWNLOADS:-$work/downloads}
mkdir -p "$downloads"

build() { # arch → $work/<arch>.json
    local arch=$1 store="$work/store-$1"
    mkdir -p "$store"
    ln -sfn "$downloads" "$store/downloads"
    CCB_CACHE_DIR="$store" "$ccb" -q --root "$here" build "$target" --arch "$arch" \
        --out "$work/out-$arch" --format json > "$work/$arch.json"
}

build amd64
build arm64

python3 - "$work/amd64.json" "$work/arm64.json" <<'PY'
import json, sys
amd, arm = (json.load(open(p)) for p in sys.argv[1:3])
def actions(doc):
    return {a["id"].rsplit(":", 1)[0]: a for a in doc["actions"] if a.get("duration_ms")}
a, b = actions(amd), actions(arm)
print(f"{'action / step':58} {'amd64':>9} {'arm64':>9} {'ratio':>6}")
for kind in a:
    if kind not in b:
        continue
    x, y = a[kind]["duration_ms"] / 1000, b[kind]["duration_ms"] / 1000
    print(f"{kind:58} {x:8.1f}s {y:8.1f}s {y / x if x else 0:5.1f}x")
    steps_a = {(s["phase"], s["name"]): s["duration_ms"] / 1000 for s in a[kind].get("steps", [])}
    for s in b[kind].get("steps", []):
        k = (s["phase"], s["name"])
        ys = s["duration_ms"] / 1000
        xs = steps_a.get(k)
        if ys < 1 and (xs or 0) < 1:
            continue
        ratio = f"{ys / xs:5.1f}x" if xs else "     "
        xs_s = f"{xs:8.1f}s" if xs is not None else "        -"
        print(f"  {s['phase'] + '/' + s['name']:56} {xs_s} {ys:8.1f}s {ratio}")
ta = amd["summary"]["duration_ms"] / 1000
tb = arm["summary"]["duration_ms"] / 1000
print(f"{'total (wall)':58} {ta:8.1f}s {tb:8.1f}s {tb / ta:5.1f}x   goal <= 4x")
PY

if [[ -n ${CCB_BENCH_NO_BOOT:-} ]]; then
    exit 0
fi
t0=$(date +%s)
CCB_CACHE_DIR="$work/store-arm64" "$ccb" -q --root "$here" test "$target" --arch arm64 \
    --firmware uefi --format json > "$work/boot.json" || true
t1=$(date +%s)
python3 - "$work/boot.json" "$((t1 - t0))" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
for r in doc["results"]:
    failed = [c["name"] for c in r["checks"] if not c["passed"]]
    print(f"arm64 boot ({r['firmware']}, {r['disk']}, {r['accel']}): {r['duration_ms'] / 1000:.0f} s, "
          f"{len(r['checks'])} checks, {'all passed' if not failed else 'FAILED: ' + ' '.join(failed)}")
print(f"ccb test wall time: {sys.argv[2]} s")
PY
