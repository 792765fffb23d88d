#!/usr/bin/env bash
# Artifact store benchmarks (run as root):
#   1. hashing throughput on a 4 GiB file in the page cache (cargo bench --bench hash;
#      goal: blake3 ≥ 1.5 GB/s);
#   2. the layered test project's image `tiny` with 5 artifacts of 1 GiB each: the cold fetch,
#      the cold build, and the warm no-op, timed with hyperfine and traced with strace
#      (goal: no artifact file opened, neither the sources nor the store's copies).
# Needs root, mmdebstrap and the Debian mirror of the host's apt sources, 6 GiB free on the
# temporary directory's disk and 5 GiB in /dev/shm. KEEP=1 keeps the temporary directories.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
for tool in hyperfine strace; do
    command -v "$tool" >/dev/null || apt-get install -y "$tool"
done

echo "== hashing (cargo bench --bench hash)"
cargo bench --quiet --manifest-path "$here/Cargo.toml" --bench hash

cargo build --release --quiet --manifest-path "$here/Cargo.toml"
ccb="$here/target/release/ccb"
work=$(mktemp -d)
# The artifacts' sources in memory: the disk holds only the store's copies (5 GiB, not 10), and
# the cold fetch measures ccb (hash + write), not the source disk.
big=$(mktemp -d -p /dev/shm ccb-artifacts.XXXXXX)
if [[ "${KEEP:-}" == 1 ]]; then
    trap 'echo "kept $work $big"' EXIT
else
    trap 'rm -rf "$work" "$big"' EXIT
fi
free_kib=$(df --output=avail "$work" | tail -1)
if ((free_kib < 6 * 1024 * 1024)); then
    echo "need 6 GiB free for $work, have $((free_kib / 1024)) MiB" >&2
    exit 1
fi
project="$work/project"
cp -a "$here/tests/fixtures/layered" "$project"
export CCB_CACHE_DIR="$work/store"

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

echo "== 5 artifacts of 1 GiB"
# Random bytes, written for real: a sparse or constant file would make reading it cheap.
{
    echo "{"
    for i in 1 2 3 4 5; do
        f="$big/big-$i.bin"
        head -c 1G /dev/urandom >"$f"
        sha=$(sha256sum "$f" | cut -d' ' -f1)
        printf '  big-%s = { url = "file://%s", sha256 = "%s" },\n' "$i" "$f" "$sha"
    done
    echo "}"
} >"$project/manifests/artifacts.ncl"
# The image `tiny` names all five (BIG_1..BIG_5 → big-1..big-5).
python3 - "$project/manifests/images.ncl" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
anchor = "    formats = ['qcow2],\n"
assert text.count(anchor) == 1, "images.ncl changed: update benches/artifacts.sh"
arts = ", ".join(f'BIG_{i} = "big-{i}"' for i in range(1, 6))
open(path, "w").write(text.replace(anchor, anchor + f"    artifacts = {{ {arts} }},\n"))
EOF
tiny=("$ccb" -q --root "$project" build tiny --element-path "$here/elements")
build=("${tiny[@]}" --until layer)
# The manifests evaluate and the plan names the five fetches.
"$ccb" -q --root "$project" check --element-path "$here/elements"
"${build[@]}" --dry-run
sync
# Cold: the fetch of the 5 GiB alone, then the rest (debootstrap, the layer).
t0=$(now); "${tiny[@]}" --until fetch; t1=$(now)
cold_fetch=$(secs "$t0" "$t1")
t0=$(now); "${build[@]}"; t1=$(now)
cold_rest=$(secs "$t0" "$t1")

echo "== warm no-op"
noop=$(hyperfine -N --warmup 3 --runs 30 --export-json "$work/noop.json" "${build[*]}" >/dev/null \
    && python3 -c "import json; r=json.load(open('$work/noop.json'))['results'][0]; print(f\"{r['mean']*1000:.1f} ms ± {r['stddev']*1000:.1f} (median {r['median']*1000:.1f} ms)\")")

strace -f -e trace=openat,open -o "$work/trace.txt" "${build[@]}"
# Any open of an artifact: a source file, or the store's artifacts/<sha256> (not its .json record).
pattern="\"($big/big-[0-9]\.bin|$CCB_CACHE_DIR/artifacts/[0-9a-f]{64})\""
opens=$(grep -cE "$pattern" "$work/trace.txt" || true)
grep -E "$pattern" "$work/trace.txt" | head -5 || true

printf 'cold fetch of 5 × 1 GiB (file:// in tmpfs): %6.1f s = %.2f GB/s\n' \
    "$cold_fetch" "$(echo "5 * 2^30 / $cold_fetch / 10^9" | bc -l)"
printf 'cold build after the fetch (base + layer): %6.1f s\n' "$cold_rest"
printf 'warm no-op, 5 large artifacts declared:  %s\n' "$noop"
printf 'artifact files opened by the warm no-op: %d (goal 0): %s\n' \
    "$opens" "$([[ "$opens" == 0 ]] && echo MET || echo "NOT MET")"
