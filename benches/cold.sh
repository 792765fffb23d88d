#!/usr/bin/env bash
# A cold root filesystem, ccb against diskimage-builder, side by side (issue [6/9] item 4). Run
# as root on a machine as quiet as you can find. The same request to both: Debian 12 minbase
# plus linux-image-amd64, cloud-init, openssh-server, chrony and sudo, from empty caches (no
# package downloads kept), the mirror from the host's apt sources:
#   - DIB: `disk-image-create -t tar debian-minimal -p ...`: a tarball of the tree, as DIB's
#     disk needs kpartx (device-mapper), which build hosts like this one lack; the tree is what
#     is compared;
#   - ccb: `build --until layer` of an image of ccb's debian-minimal plus an element that asks
#     for the same packages, and for those DIB's own elements add to every image (below).
# The same root filesystem, not just the same command line: DIB's debian-minimal, debootstrap
# and base elements install packages of their own whatever is asked (tzdata with the
# bootstrap; adduser, ca-certificates, locales, lsb-release, netbase; cloud-initramfs-growroot
# is mapped away on bookworm; base's apt-transport-https, software-properties-common and
# open-iscsi; and systemd-sysv, busybox, sudo, gnupg2 and python3 in root.d, before its dpkg
# element turns Recommends off, so with their Recommends: dirmngr, gpg-agent, pinentry...). Measured without
# this, DIB installed 276 packages and ccb 199, and the times compared different work. ccb's
# side asks for the same (its debian-minimal adds nothing), in the same order and with
# Recommends where DIB has them, so both trees hold the same packages: the benchmark prints
# the packages only one side installed, which should be none. Changing DIB's side instead
# would mean patching its elements, and would no longer measure DIB as operators run it.
# Prints both times, their ratio (goal: ccb <= 0.5 x DIB), the installed package counts and
# the packages only one of them installed.
# Needs: diskimage-builder in a venv (DIB_VENV, default /var/tmp/dib-venv: `python3 -m venv`,
# then `pip install diskimage-builder`), debootstrap and sudo (DIB calls both), mmdebstrap.
# CCB=/path/to/ccb uses that binary instead of building the release one.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${CCB:-}" ]]; then
    cargo build --release --quiet --manifest-path "$here/Cargo.toml"
    CCB="$here/target/release/ccb"
fi
venv=${DIB_VENV:-/var/tmp/dib-venv}
[[ -x "$venv/bin/disk-image-create" ]] || {
    echo "no diskimage-builder in $venv (python3 -m venv $venv && $venv/bin/pip install diskimage-builder)" >&2
    exit 1
}
packages=(linux-image-amd64 cloud-init openssh-server chrony sudo)
# The archive the host's apt uses (deb822 or one-line sources).
mirror=$({ grep -rhoE '^(URIs:[[:space:]]*|deb[[:space:]]+)[^[:space:]]+/debian/?([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } |
    awk '{print $NF}' | head -n 1)
[[ -n "$mirror" ]] || { echo "no Debian archive in the host's apt sources" >&2; exit 1; }
security=$({ grep -rhoE '^(URIs:[[:space:]]*|deb[[:space:]]+)[^[:space:]]+/debian-security/?([[:space:]]|$)' \
    /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true; } |
    awk '{print $NF}' | head -n 1)

work=$(mktemp -d /var/tmp/ccb-bench-cold.XXXXXX)
trap 'rm -rf "$work"' EXIT
now() { date +%s.%N; }

# --- diskimage-builder ---------------------------------------------------------------------
mkdir -p "$work/dib"
t0=$(now)
env PATH="$venv/bin:$PATH" DIB_RELEASE=bookworm DIB_DEBIAN_COMPONENTS=main \
    DIB_DISTRIBUTION_MIRROR="$mirror" DIB_DEBIAN_SECURITY_MIRROR="${security:-$mirror-security}" \
    DIB_IMAGE_CACHE="$work/dib-cache" \
    "$venv/bin/disk-image-create" -a amd64 -t tar -o "$work/dib/rootfs" \
    -p "$(IFS=,; echo "${packages[*]}")" debian-minimal >"$work/dib.log" 2>&1 ||
    { tail -n 30 "$work/dib.log" >&2; exit 1; }
t1=$(now)
dib=$(echo "$t1 - $t0" | bc)
tar -xOf "$work/dib/rootfs.tar" ./var/lib/dpkg/status >"$work/dib.status"

# --- ccb -----------------------------------------------------------------------------------
proj="$work/project"
mkdir -p "$proj/manifests" "$proj/elements/cold-packages"
cat >"$proj/manifests/images.ncl" <<'NCL'
{
  cold = {
    name = "Cold-Debian12",
    description = "Debian 12 minbase with a kernel, cloud-init, sshd, chrony and sudo",
    elements = ["debian-minimal", "cold-packages"],
    arch = ['amd64],
    formats = ['raw],
    # ccb's base element adds a baseline DIB's (this version's) does not: curl, less,
    # iputils-ping. The package lists below already name what DIB's elements add.
    env = { DIB_RELEASE = "bookworm", DIB_SKIP_BASE_PACKAGE_INSTALL = "1" },
  },
}
NCL
echo "The packages of the cold-build benchmark." >"$proj/elements/cold-packages/README.rst"
echo package-installs >"$proj/elements/cold-packages/element-deps"
# What DIB's debian-minimal root.d installs before its dpkg element disables Recommends.
mkdir -p "$proj/elements/cold-packages/pre-install.d"
cat >"$proj/elements/cold-packages/pre-install.d/02-as-dib-baseinstall" <<'SH'
#!/bin/bash
set -eu
DEBIAN_FRONTEND=noninteractive apt-get -y -o APT::Install-Recommends=1 install \
    systemd-sysv busybox sudo gnupg2 python3
SH
chmod +x "$proj/elements/cold-packages/pre-install.d/02-as-dib-baseinstall"
# What DIB's bootstrap (tzdata), debootstrap and base elements add, then what both were asked
# for.
printf '%s:\n' tzdata adduser ca-certificates locales lsb-release netbase apt-transport-https \
    software-properties-common open-iscsi iproute2 procps "${packages[@]}" \
    >"$proj/elements/cold-packages/package-installs.yaml"
export CCB_CACHE_DIR="$work/store"
t0=$(now)
"$CCB" -q --root "$proj" build cold --until layer --element-path "$here/elements" \
    --format json >"$work/ccb.json"
t1=$(now)
ccb=$(echo "$t1 - $t0" | bc)
key=$("$CCB" -q --root "$proj" cache ls --format json |
    python3 -c 'import json,sys; print([e["key"] for e in json.load(sys.stdin)["entries"] if e["id"] == "layer:cold:amd64" and e["current"]][0])')
cp "$CCB_CACHE_DIR/layers/$key/tree/var/lib/dpkg/status" "$work/ccb.status"

echo "== cold root filesystem, Debian 12 + ${packages[*]}"
printf 'diskimage-builder (-t tar):  %6.1f s\n' "$dib"
printf 'ccb (build --until layer):   %6.1f s = %.2f x DIB (goal <= 0.5)\n' "$ccb" \
    "$(echo "$ccb / $dib" | bc -l)"
python3 - "$work/ccb.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for a in r["actions"]:
    if a["id"].startswith(("base:", "layer:")):
        print(f"  {a['id']:24} {a['duration_ms'] / 1000:6.1f} s")
        steps = sorted(a.get("steps", []), key=lambda s: -s["duration_ms"])[:6]
        for s in steps:
            print(f"    {s['phase']}/{s['name']:34} {s['duration_ms'] / 1000:6.1f} s")
PY
python3 - "$work/dib.status" "$work/ccb.status" <<'PY'
import sys
def installed(path):
    pkgs, name = set(), None
    for line in open(path, encoding="utf-8", errors="replace"):
        if line.startswith("Package: "):
            name = line.split()[1]
        elif line.startswith("Status: ") and line.split()[-1] == "installed" and name:
            pkgs.add(name)
    return pkgs
dib, ccb = installed(sys.argv[1]), installed(sys.argv[2])
print(f"packages: DIB {len(dib)}, ccb {len(ccb)}")
print("  only DIB:", " ".join(sorted(dib - ccb)) or "-")
print("  only ccb:", " ".join(sorted(ccb - dib)) or "-")
PY
