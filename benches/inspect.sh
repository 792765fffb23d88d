#!/usr/bin/env bash
# Issue [7/8]'s figure: `ccb inspect` vs libguestfs on the same image of a few GiB, in one run.
#   IMAGE (default out/images/CC-Debian12.qcow2, the default image's build output)
# libguestfs runs its appliance under TCG here (KVM aborts on this machine); both sides do the
# same work: stat the required executables and read /var/lib/dpkg/status.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
image=${IMAGE:-$here/out/images/CC-Debian12.qcow2}
[ -f "$image" ] || { echo "no $image: build it first (./scripts/ccb build //images:debian12)" >&2; exit 1; }
{ command -v guestfish > /dev/null && ls /boot/vmlinuz-* > /dev/null 2>&1; } || {
    echo "installing libguestfs-tools (for the comparison only)..." >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libguestfs-tools linux-image-amd64 > /dev/null
}
cargo build --release --quiet --manifest-path "$here/Cargo.toml"
ccb="$here/target/release/ccb"
export LIBGUESTFS_BACKEND_SETTINGS=force_tcg

# The root partition, as guestfish names it (ccb finds it by itself).
root=$("$ccb" --root "$here" inspect "$image" --format json |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["images"][0]["root"]; print(r.split("partition ")[1].split()[0])')
gf_script="stat /usr/bin/cloud-init
stat /usr/bin/rclone
stat /usr/local/bin/cc-read-vendordata
stat /usr/local/bin/cc-generate-openrc
stat /usr/local/bin/cc-load-public-keys
stat /usr/local/bin/cc-mount-object-store
download /var/lib/dpkg/status /dev/null"

echo "image: $image ($(du -h --apparent-size "$image" | cut -f1) file, virtual $(qemu-img info --output=json "$image" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"] >> 30)') GiB)"
hyperfine --warmup 1 --runs 10 --export-json /tmp/ccb-inspect-bench.json \
    "$ccb --root $here -q inspect $image"
# guestfish: a few runs only, each boots an appliance.
hyperfine --shell bash --runs 3 --export-json /tmp/guestfish-bench.json \
    "guestfish --ro -a $image -m /dev/sda$root <<< '$gf_script'"
python3 - <<'PY'
import json
c = json.load(open("/tmp/ccb-inspect-bench.json"))["results"][0]["mean"]
g = json.load(open("/tmp/guestfish-bench.json"))["results"][0]["mean"]
print(f"ccb inspect: {c*1000:.1f} ms   guestfish (TCG): {g:.1f} s   ratio: {g/c:,.0f}x")
PY
