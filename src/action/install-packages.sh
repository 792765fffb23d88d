#!/bin/bash
# install-packages: diskimage-builder's package command, provided by ccb inside the chroot
# (at /tmp/ccb/bin, never left in the image). Same contract as DIB's:
#   install-packages [-e] [-u] [-m ELEMENT] [PACKAGE...]
#   -e  remove the packages instead of installing them
#   -u  upgrade every installed package (dist-upgrade)
#   -m  map the names through ELEMENT's pkg-map first (unknown names pass through)
# Recommends/weak dependencies are off, as in DIB.
if [ "${DIB_DEBUG_TRACE:-0}" -gt 1 ]; then
    set -x
fi
set -eu
set -o pipefail

action=install
map_element=
while getopts "eum:" opt; do
    case "$opt" in
        e) action=remove ;;
        u) action=upgrade ;;
        m) map_element=$OPTARG ;;
        *) echo "usage: install-packages [-e] [-u] [-m ELEMENT] [PACKAGE...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

packages=()
if [ -n "$map_element" ]; then
    map=/tmp/ccb/pkg-map/$map_element
    for p in "$@"; do
        mapped=$p
        if [ -f "$map" ]; then
            while IFS=$'\t' read -r generic distro; do
                if [ "$generic" = "$p" ]; then
                    mapped=$distro
                    break
                fi
            done < "$map"
        fi
        # An empty mapping means "not on this distribution".
        for m in $mapped; do
            packages+=("$m")
        done
    done
else
    packages=("$@")
fi

if [ "$action" != upgrade ] && [ ${#packages[@]} -eq 0 ]; then
    exit 0
fi

family=
if command -v apt-get >/dev/null 2>&1; then
    family=deb
elif command -v dnf >/dev/null 2>&1; then
    family=rpm
else
    echo "install-packages: neither apt-get nor dnf is in the image" >&2
    exit 1
fi

if [ "$family" = deb ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-y -q -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef
        -o APT::Install-Recommends=false -o APT::Install-Suggests=false)
    # apt runs dpkg with PATH set to DPkg::Path (/usr/sbin:/usr/bin:/sbin:/bin), not its own:
    # ccb's directories of host programs (an emulated build) go first on it, for dpkg and
    # every maintainer script.
    if [ -n "${CCB_DPKG_PATH:-}" ]; then
        apt_opts+=(-o "DPkg::Path=$CCB_DPKG_PATH")
    fi
    # Lists are dropped when a root filesystem is bootstrapped, and age in a parent layer:
    # fetch them when they are missing or older than a day.
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name "*_Packages*" -mmin -1440 2>/dev/null | head -n 1)" ]; then
        if [ -z "${DIB_OFFLINE:-}" ]; then
            apt-get -q update
        elif ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
            echo "install-packages: no package lists in the image and DIB_OFFLINE is set" >&2
            exit 1
        fi
    fi
    case "$action" in
        install) apt-get "${apt_opts[@]}" install "${packages[@]}" ;;
        remove) apt-get "${apt_opts[@]}" remove "${packages[@]}" ;;
        upgrade) apt-get "${apt_opts[@]}" dist-upgrade ;;
    esac
else
    dnf_opts=(-y --setopt=install_weak_deps=False --setopt=keepcache=True)
    case "$action" in
        install) dnf "${dnf_opts[@]}" install "${packages[@]}" ;;
        remove) dnf "${dnf_opts[@]}" remove "${packages[@]}" ;;
        upgrade) dnf "${dnf_opts[@]}" upgrade ;;
    esac
fi
