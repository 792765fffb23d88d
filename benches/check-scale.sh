#!/usr/bin/env bash
# Times `ccb check` on generated projects of N images (default 2000 4000 20000), cold (empty
# store: Nickel evaluation, validation, every image's element resolution and environment.d)
# and warm (everything cached). The project is examples/nickel-project with its images
# replaced by N generated ones: one root image per 20, the others layered on a root (`from`),
# each built for amd64 and arm64, each with its own published name and DIB_RELEASE, so no two
# resolutions are equal. The goal (issue [9/9]): 4,000 images <= 3 s cold, warm <= 30 ms.
#
#   benches/check-scale.sh                 # release build, N = 2000 4000 20000
#   benches/check-scale.sh 500 1000        # other sizes
#   CCB=target/debug/ccb benches/check-scale.sh 1000   # an existing binary, no build
#   TIMEOUT=120 ...                        # give up on a cold run after this many seconds
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(2000 4000 20000)
if [ -z "${CCB:-}" ]; then
    cargo build --release --quiet
    CCB="$PWD/target/release/ccb"
fi
CCB="$(realpath "$CCB")"
timeout="${TIMEOUT:-300}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Generates a project of $1 images in $2.
generate() {
    local n=$1 dir=$2
    cp -r examples/nickel-project "$dir"
    {
        echo 'let ccb = import "ccb.ncl" in'
        echo 'let common = {'
        echo '  elements | priority -1 = ["tinyos", "hello"],'
        echo "  arch | priority -1 = ['amd64, 'arm64],"
        echo "  formats | priority -1 = ['qcow2],"
        echo '  provenance = { distro = "debian", variant = "base" },'
        echo '} in'
        echo '{'
        for ((i = 0; i < n; i++)); do
            if ((i % 20 == 0)); then
                printf '  img%d = common & { name = "Scale-%d", env.DIB_RELEASE = "r%d" },\n' \
                    "$i" "$i" "$i"
            else
                printf '  img%d = common & { name = "Scale-%d", from = "img%d", elements = [], env.DIB_RELEASE = "r%d" },\n' \
                    "$i" "$i" "$((i - i % 20))" "$i"
            fi
        done
        echo '}'
    } >"$dir/manifests/images.ncl"
}

seconds() { date +%s.%N; }

printf '%-8s %-12s %-14s %-12s\n' images cold_s cold_cpu_s warm_ms
for n in "${sizes[@]}"; do
    project="$work/p$n"
    store="$work/store$n"
    generate "$n" "$project"
    # Nickel's cache ignores files younger than 2 s (racy stamps): let them age.
    touch -d '-1 min' "$project/manifests/"*
    # Wall and CPU time (user + system, children included: Nickel's process, bash).
    if ! CCB_CACHE_DIR="$store" /usr/bin/time -f '%e %U %S' -o "$work/time" \
        timeout "$timeout" "$CCB" --root "$project" -q check >/dev/null; then
        printf '%-8s %-12s %-14s %-12s\n' "$n" "> $timeout (or failed)" - -
        rm -rf "$project" "$store"
        continue
    fi
    read -r cold user sys <"$work/time"
    cpu=$(echo "$user + $sys" | bc)
    # Warm: the best of 10 runs (the first one fills any cache the cold run left).
    CCB_CACHE_DIR="$store" "$CCB" --root "$project" -q check >/dev/null
    best=
    for _ in $(seq 10); do
        s=$(seconds)
        CCB_CACHE_DIR="$store" "$CCB" --root "$project" -q check >/dev/null
        t=$(echo "($(seconds) - $s) * 1000" | bc)
        if [ -z "$best" ] || (($(echo "$t < $best" | bc))); then best=$t; fi
    done
    printf '%-8s %-12.2f %-14.2f %-12.1f\n' "$n" "$cold" "$cpu" "$best"
    rm -rf "$project" "$store"
done
