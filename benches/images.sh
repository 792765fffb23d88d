#!/usr/bin/env bash
# Issue [5/8]'s figures on the real images, run as root:
#   - cold build of CC-Debian12 (amd64) in an empty store: bootstrap, every cc element, disk;
#     package downloads included (the store's download cache starts empty too);
#   - its child CC-Debian12-Devtools: first build (reusing the parent's layer), then the
#     rebuild after a change to one of its elements (a line added to cc-devtools'
#     package-installs.yaml), then the same after the change is undone (its old key: cached);
#   - the sizes of the outputs.
# The store is a throwaway directory (CCB_BENCH_STORE, default /var/tmp/ccb-bench), removed first.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
bin="$here/target/release/ccb"
export CCB_CACHE_DIR=${CCB_BENCH_STORE:-/var/tmp/ccb-bench}
rm -rf "$CCB_CACHE_DIR"
out=$(mktemp -d)
yaml="$here/elements/cc-devtools/package-installs.yaml"
backup=$(mktemp)
cp "$yaml" "$backup"
trap 'cp "$backup" "$yaml"; rm -rf "$out" "$backup"' EXIT

secs() {
    local start=$SECONDS
    "$@" > /dev/null 2>&1
    echo $((SECONDS - start))
}
ccb=("$bin" --root "$here" -q build --arch amd64 --out "$out")

cold=$(secs "${ccb[@]}" //images:debian12)
child=$(secs "${ccb[@]}" //images:debian12-devtools)
echo "# bench: one changed line" >> "$yaml"
edited=$(secs "${ccb[@]}" //images:debian12-devtools)
cp "$backup" "$yaml"
undone=$(secs "${ccb[@]}" //images:debian12-devtools)

printf 'CC-Debian12 cold build (empty store):             %4d s\n' "$cold"
printf 'CC-Debian12-Devtools first build (parent cached): %4d s\n' "$child"
printf 'CC-Debian12-Devtools after a cc-devtools change:  %4d s (%d%% of the cold parent)\n' \
    "$edited" $((edited * 100 / (cold > 0 ? cold : 1)))
printf 'CC-Debian12-Devtools after undoing it:            %4d s (cached)\n' "$undone"
for f in "$out"/*.qcow2 "$out"/*.raw; do
    printf '%-28s %s apparent, %s allocated\n' "$(basename "$f")" \
        "$(du -h --apparent-size "$f" | cut -f1)" "$(du -h "$f" | cut -f1)"
done
