#!/usr/bin/env bash
# Executor benchmarks on the layered test project (tests/fixtures/layered, run as root):
#   1. cold build of the chain tiny → tiny-child (empty store; then with package downloads kept)
#   2. no-op rebuild (goal ≤ 50 ms)
#   3. rebuild after a one-line change in the child's element, as a fraction of the cold chain
#      (goal ≤ 25 %)
# Needs root, mmdebstrap and the Debian mirror of the host's apt sources; hyperfine for (2).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
ccb="$here/target/release/ccb"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -a "$here/tests/fixtures/layered" "$work/project"
export CCB_CACHE_DIR="$work/store"
build=("$ccb" -q --root "$work/project" build tiny-child --until layer --element-path "$here/elements")

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

t0=$(now); "${build[@]}"; t1=$(now)
cold_empty=$(secs "$t0" "$t1")
# Keep the package downloads, drop everything else: a cold build on a machine that built before.
find "$CCB_CACHE_DIR" -mindepth 1 -maxdepth 1 ! -name downloads -exec rm -rf {} +
t0=$(now); "${build[@]}"; t1=$(now)
cold=$(secs "$t0" "$t1")

noop=$(hyperfine -N --warmup 3 --runs 30 --export-json "$work/noop.json" "${build[*]}" >/dev/null \
    && python3 -c "import json; r=json.load(open('$work/noop.json'))['results'][0]; print(f\"{r['mean']*1000:.1f} ms ± {r['stddev']*1000:.1f}\")")

echo "# bench: one-line change" >> "$work/project/elements/tiny-extra/install.d/30-tiny-extra"
t0=$(now); "${build[@]}"; t1=$(now)
child=$(secs "$t0" "$t1")

printf 'cold chain, empty store:              %6.1f s\n' "$cold_empty"
printf 'cold chain, package downloads cached: %6.1f s\n' "$cold"
printf 'no-op rebuild:                        %s\n' "$noop"
printf 'child rebuild after a one-line edit:  %6.2f s = %.1f %% of the cold chain\n' \
    "$child" "$(echo "100 * $child / $cold" | bc -l)"
