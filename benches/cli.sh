#!/usr/bin/env bash
# Times ccb's front end on the real manifests: `check`, `query targets`, `query deps` and
# `build --dry-run //...`, warm (caches filled) and cold (empty cache: Nickel evaluation,
# element digests and environment computation all redone). Prints hyperfine's tables.
#
#   benches/cli.sh            # release build, 30 runs each
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v hyperfine >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q hyperfine
fi
cargo build --release --quiet
ccb="$PWD/target/release/ccb --root $PWD"
cache="$(mktemp -d)"
trap 'rm -rf "$cache"' EXIT
export CCB_CACHE_DIR="$cache"
$ccb check >/dev/null

echo "## warm (caches filled)"
hyperfine -N --warmup 3 --runs 30 \
    "$ccb check" \
    "$ccb query targets" \
    "$ccb query deps //images:ubuntu24.04-cuda" \
    "$ccb build --dry-run //..."

echo "## cold (empty cache before every run)"
hyperfine -N --runs 10 --prepare "rm -rf $cache" \
    "$ccb check" \
    "$ccb build --dry-run //..."

echo "## empty stat cache only (evaluation cache kept)"
hyperfine -N --runs 10 --prepare "rm -rf $cache/stat" \
    "$ccb build --dry-run //..."
