#!/bin/bash
# ccb-fetch: download a file once and verify it before anyone uses it. ccb puts this on the
# PATH of scripts that run outside the chroot (root.d, extra-data.d, post-root.d).
#
#   ccb-fetch --sha256 HEX URL DEST     verify against a pinned digest
#   ccb-fetch --sums SUMS_URL URL DEST  verify against the SHA256SUMS file next to it
#
# DEST is reused when it already has the right digest (with --sums, the SUMS file is fetched
# again unless DIB_OFFLINE is set). A download goes to DEST.part and is renamed into place
# only after it verified: a mismatch leaves nothing behind.
set -eu
set -o pipefail

expected=
sums=
while [ $# -gt 2 ]; do
    case "$1" in
        --sha256) expected=$2; shift 2 ;;
        --sums) sums=$2; shift 2 ;;
        *) break ;;
    esac
done
if [ $# -ne 2 ] || { [ -z "$expected" ] && [ -z "$sums" ]; }; then
    echo "usage: ccb-fetch (--sha256 HEX | --sums SUMS_URL) URL DEST" >&2
    exit 2
fi
url=$1
dest=$2
name=${url##*/}
mkdir -p "$(dirname "$dest")"

get() {
    curl --fail --location --silent --show-error --retry 3 --connect-timeout 10 -o "$2" "$1"
}

if [ -z "$expected" ]; then
    sums_file=$dest.SHA256SUMS
    if [ -n "${DIB_OFFLINE:-}" ] && [ -s "$sums_file" ]; then
        :
    else
        get "$sums" "$sums_file.part"
        mv "$sums_file.part" "$sums_file"
    fi
    # GNU lines (HEX *name) or BSD ones (SHA256 (name) = HEX), as CentOS's CHECKSUM files.
    expected=$(awk -v n="$name" '
        $1 == "SHA256" && $2 == "(" n ")" && $3 == "=" { print $4; exit }
        { f = $2; sub(/^\*/, "", f) } f == n && length($1) == 64 { print $1; exit }' "$sums_file")
    if [ -z "$expected" ]; then
        echo "ccb-fetch: $sums has no entry for $name" >&2
        exit 1
    fi
fi
expected=${expected,,}

if [ -s "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$expected" ]; then
    echo "ccb-fetch: $name: cached, sha256 $expected"
    exit 0
fi
if [ -n "${DIB_OFFLINE:-}" ]; then
    echo "ccb-fetch: $name is not in the download cache and DIB_OFFLINE is set" >&2
    exit 1
fi
echo "ccb-fetch: downloading $url"
get "$url" "$dest.part"
actual=$(sha256sum "$dest.part" | cut -d' ' -f1)
if [ "$actual" != "$expected" ]; then
    rm -f "$dest.part"
    echo "ccb-fetch: $url: sha256 mismatch: expected $expected, got $actual" >&2
    exit 1
fi
mv "$dest.part" "$dest"
echo "ccb-fetch: $name: verified, sha256 $actual"
