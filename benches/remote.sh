#!/usr/bin/env bash
# The remote cache over loopback (a private nginx with WebDAV on 127.0.0.1, Bazel's HTTP cache
# protocol), for CC-Debian12 (default //images:debian12) and its devtools child:
#   1. cold: the image built in an empty store, no remote cache;
#   2. upload: the same store's results stored in an empty remote cache;
#   3. warm: a second empty store ("another host") builds the image from the warm cache
#      (goal: ≤ 15 % of the cold time);
#   4. sharing: that second host builds CC-Debian12-Devtools and uploads it: the chunks the
#      cache already held (shared with CC-Debian12's results) against the chunks it sent, by
#      count and by bytes.
# Prints times, bytes moved and the chunk sharing ratio. Package downloads are shared between
# the stores (the network is not measured). Needs root, mmdebstrap, nginx and the Debian
# mirror of the host's apt sources. About 20-40 min on a 2-core host.
# It needs about 2 × the image's store size free on /var/tmp (some 12 GiB for CC-Debian12):
# store A is removed once its results are uploaded (KEEP=1 keeps everything).
#   benches/remote.sh [IMAGE] [CHILD]        CCB=path/to/ccb to skip the release build,
#   ARCH=amd64 (default), ROOT=project (default: this repository), TINY=1: the test
#   fixture's small images (tests/fixtures/layered: tiny and tiny-child) instead
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
image=${1:-//images:debian12}
child=${2:-//images:debian12-devtools}
arch=${ARCH:-amd64}
root=${ROOT:-$here}
extra=()
if [ -z "${CCB:-}" ]; then
    cargo build --release --quiet --manifest-path "$here/Cargo.toml"
    CCB="$here/target/release/ccb"
fi
work=$(mktemp -d "${TMPDIR:-/var/tmp}/ccb-remote-bench.XXXXXX")
nginx_pid=
cleanup() {
    [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null
    [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/downloads" "$work/nginx/data"
if [ -n "${TINY:-}" ]; then
    cp -a "$here/tests/fixtures/layered" "$work/project"
    echo '{ build_repo = "https://github.com/ChameleonCloud/cc-images" }' \
        > "$work/project/manifests/project.ncl"
    root="$work/project" image=//images:tiny child=//images:tiny-child
    extra=(--element-path "$here/elements")
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
n="$work/nginx"
cat > "$n/nginx.conf" <<CONF
daemon off; master_process off; pid $n/nginx.pid; error_log $n/error.log;
events {}
http {
  access_log off; client_body_temp_path $n/body; proxy_temp_path $n/proxy;
  fastcgi_temp_path $n/fastcgi; uwsgi_temp_path $n/uwsgi; scgi_temp_path $n/scgi;
  server {
    listen 127.0.0.1:$port; root $n/data; client_max_body_size 0;
    location /cache/ { dav_methods PUT; create_full_put_path on; }
  }
}
CONF
nginx -p "$n" -e "$n/error.log" -c "$n/nginx.conf" &
nginx_pid=$!
url="http://127.0.0.1:$port/cache"
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

run() { # name store args... → $work/<name>.json, prints the wall time
    local name=$1 store="$work/store-$2"; shift 2
    mkdir -p "$store"
    ln -sfn "$work/downloads" "$store/downloads"
    local t0 t1
    t0=$(date +%s.%N)
    CCB_CACHE_DIR="$store" "$CCB" -q --root "$root" "$@" --arch "$arch" "${extra[@]}" \
        --out "$work/out-$name" --format json > "$work/$name.json"
    t1=$(date +%s.%N)
    python3 -c "print(f'{$t1 - $t0:.1f}')"
}

echo "== cold build of $image (store A, no remote cache)"
cold=$(run cold a build "$image" --no-remote-cache)
echo "== upload of store A's results to $url"
upload=$(run upload a build "$image" --remote-cache "$url" --remote-cache-upload)
# One image store at a time on a shared disk: store A is not read again.
[ -n "${KEEP:-}" ] || rm -rf "$work/store-a" "$work/out-cold" "$work/out-upload"
echo "== warm build of $image (store B, from the remote cache)"
warm=$(run warm b build "$image" --remote-cache "$url")
echo "== $child on store B, uploading"
share=$(run share b build "$child" --remote-cache "$url" --remote-cache-upload)

python3 - "$work" "$cold" "$upload" "$warm" "$share" <<'PY'
import json, sys
work, cold, upload, warm, share = sys.argv[1], *map(float, sys.argv[2:6])
def load(n): return json.load(open(f"{work}/{n}.json"))
def mib(b): return f"{b / 2**20:.1f} MiB"
up, w, s = load("upload")["remote"], load("warm")["remote"], load("share")["remote"]
print(f"cold build        {cold:8.1f} s")
print(f"upload            {upload:8.1f} s  {mib(up['bytes_up'])} sent in {up['chunks_sent']} blobs")
print(f"warm build        {warm:8.1f} s  {mib(w['bytes_down'])} received, {w['hits']} actions"
      f"  = {100 * warm / cold:.1f} % of cold (goal <= 15 %)")
for a in load("warm")["actions"]:
    print(f"   {a['id']:40} {a['status']}{' (remote)' if a.get('from') else ''}")
total = s["chunks_sent"] + s["chunks_present"]
print(f"child upload      {share:8.1f} s  {s['chunks_present']} of {total} blobs already in the cache"
      f" ({100 * s['chunks_present'] / max(total, 1):.1f} % shared), {mib(s['bytes_up'])} sent")
# By bytes too: a few large shared chunks save more than many small ones (stored, compressed
# sizes; bytes_up also counts the small action entries).
shared = s.get("bytes_present", 0)
print(f"                  {mib(shared)} of {mib(shared + s['bytes_up'])} already in the cache"
      f" ({100 * shared / max(shared + s['bytes_up'], 1):.1f} % of the bytes shared)")
for a in load("share")["actions"]:
    print(f"   {a['id']:40} {a['status']}{' (remote)' if a.get('from') else ''}")
PY
du -sh "$n/data/cache" | sed 's/^/cache size on the server: /'
