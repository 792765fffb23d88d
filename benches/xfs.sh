#!/usr/bin/env bash
# The XFS root filesystem's fill, run as root: the copy the disk action did before it was
# deterministic (mkfs.xfs, a loop mount, `cp -a`, unmount) against ccb's (src/action/xfs.rs:
# one entry at a time with a log force each, then inodes and metadata LSNs normalised), on
# the same tree, twice each; says whether each pair is bit-identical.
#   TREE=/path/to/a/root/tree (default: a copy of this host's /usr/bin, /usr/sbin,
#        /usr/lib/x86_64-linux-gnu, /usr/lib/python3 and /etc, about a Debian cloud image)
#   SIZE=bytes of the filesystem (default 4 GiB)
# Debug builds are fine: the time is the kernel's and the disk's, not ccb's code.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work=$(mktemp -d /var/tmp/ccb-xfs-bench.XXXXXX)
trap 'umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
size=${SIZE:-$((4 << 30))}
tree=${TREE:-}
if [[ -z "$tree" ]]; then
    tree="$work/tree"
    mkdir -p "$tree/usr/lib"
    cp -a /usr/bin /usr/sbin "$tree/usr/"
    cp -a /usr/lib/x86_64-linux-gnu /usr/lib/python3 "$tree/usr/lib/"
    cp -a /etc "$tree/"
fi
printf 'tree: %s entries, %s\n' "$(find "$tree" | wc -l)" "$(du -sh "$tree" | cut -f1)"
mkdir -p "$work/mnt"
for run in 0 1; do
    img="$work/old$run.img"
    truncate -s "$size" "$img"
    mkfs.xfs -f -q -m uuid=0b5f1e62-3c6b-4a53-9d5e-2d1f0c9a7e11 "$img"
    start=$(date +%s.%N)
    mount -o loop,nouuid "$img" "$work/mnt"
    cp -a "$tree/." "$work/mnt/"
    umount "$work/mnt"
    printf 'xfs fill (cp -a, before), run %s: %.1f s\n' "$run" "$(echo "$(date +%s.%N) - $start" | bc)"
    sha256sum "$img" | cut -d' ' -f1 > "$work/old$run.sum"
    rm -f "$img"
done
if cmp -s "$work/old0.sum" "$work/old1.sum"; then echo "bit-identical: true"; else echo "bit-identical: false"; fi
CCB_BENCH_TREE="$tree" CCB_BENCH_SIZE="$size" TMPDIR="$work" \
    cargo test --quiet --manifest-path "$here/Cargo.toml" --lib -- --ignored --nocapture xfs_fill_bench 2>&1 |
    grep -E '^(xfs fill|bit-identical)'
