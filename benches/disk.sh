#!/usr/bin/env bash
# Disk and boot benchmarks on the default image (//images:debian12, amd64), run as root:
#   - the disk action alone (its layers cached): time, and the sizes of the tree, the raw disk
#     (apparent and allocated) and the qcow2;
#   - with OLD_CCB=/path/to/an/older/ccb, the same disk action by that binary first, side by
#     side (e.g. one built from the commit before the disk action wrote ext4 with mkfs -d);
#   - ccb's qcow2 writer against `qemu-img convert -c` on the raw disk (cargo bench --bench qcow2);
#   - `ccb test` per firmware (TCG here, as KVM does not work on this machine).
# CCB=/path/to/ccb measures that binary instead of building the release one (a debug binary's
# qcow2 writer is much slower: figures for the goal come from a release build);
# NO_QCOW2_BENCH=1 skips the qcow2 writers' comparison (a `cargo bench` build), NO_BOOT_BENCH=1
# the boot tests.
# Uses the normal store ($CCB_CACHE_DIR or ~/.cache/ccb), so a previous build's layers are reused.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${CCB:-}" ]]; then
    cargo build --release --quiet --manifest-path "$here/Cargo.toml"
    CCB="$here/target/release/ccb"
fi
ccb=("$CCB" --root "$here")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# disk_action BINARY LABEL: rebuilds the disk action alone with BINARY and reports it.
disk_action() {
    local bin=$1 label=$2
    local c=("$bin" --root "$here")
    "${c[@]}" -q build //images:debian12 --arch amd64 --until layer
    key=$("${c[@]}" build //images:debian12 --arch amd64 --dry-run --format json |
        python3 -c 'import json,sys; print([a["key"] for a in json.load(sys.stdin)["actions"] if a["id"] == "disk:debian12:amd64"][0])')
    "${c[@]}" -q cache rm "$key" >/dev/null 2>&1 || true
    rm -rf "$out"/CC-Debian12.*
    # What earlier runs left to write back would slow this one's writes: start from a clean
    # page cache.
    sync
    "${c[@]}" -q build //images:debian12 --arch amd64 --out "$out" --format json > "$out/build.json"
    echo "== $label"
    python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "build.json")))
disk = [a for a in r["actions"] if a["id"] == "disk:debian12:amd64"][0]
print(f"disk action:            {disk['duration_ms'] / 1000:.1f} s")
for s in disk["steps"]:
    print(f"  {s['phase']}/{s['name']:28} {s['duration_ms'] / 1000:6.1f} s")
PY
    log=$(ls -t "${CCB_CACHE_DIR:-$HOME/.cache/ccb}"/logs/"$key".log)
    grep '^disk: ' "$log" | sed 's/^/  /'
    printf 'raw disk:               %s apparent, %s allocated\n' \
        "$(du -h --apparent-size "$out/CC-Debian12.raw" | cut -f1)" "$(du -h "$out/CC-Debian12.raw" | cut -f1)"
    printf 'qcow2:                  %s (%s bytes)\n' "$(du -h "$out/CC-Debian12.qcow2" | cut -f1)" \
        "$(stat -c %s "$out/CC-Debian12.qcow2")"
}

if [[ -n "${OLD_CCB:-}" ]]; then
    disk_action "$OLD_CCB" "old: $OLD_CCB"
fi
disk_action "${ccb[0]}" "this tree"

if [[ -z "${NO_QCOW2_BENCH:-}" ]]; then
    echo "== qcow2 writers on the raw disk"
    CCB_BENCH_RAW="$out/CC-Debian12.raw" cargo bench --quiet --manifest-path "$here/Cargo.toml" --bench qcow2
fi

if [[ -n "${NO_BOOT_BENCH:-}" ]]; then
    exit 0
fi
"${ccb[@]}" -q test //images:debian12 --arch amd64 --firmware both --format json > "$out/test.json" || true
python3 - "$out" <<'PY'
import json, os, sys
r = json.load(open(os.path.join(sys.argv[1], "test.json")))
for t in r["results"]:
    print(f"boot test {t['firmware']:4} ({t['accel']}): {t['duration_ms'] / 1000:.0f} s, "
          f"{'passed' if t['passed'] else 'FAILED'}")
PY
