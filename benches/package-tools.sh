#!/usr/bin/env bash
# An emulated package step with and without the host's programs (src/action/native.rs): the
# same layer built twice in fresh stores (package downloads shared), every program emulated
# (CCB_HOST_TOOLS=0) and then with the host's first on the package step's PATH, each under
# strace (execve only, through seccomp: little overhead). Prints every step over 3 s of both
# builds and how many processes the package steps started, per program (`*`: the host's,
# run natively), and says whether the two layers' trees are the same (names, modes, owners,
# link targets, contents). Needs root, strace, arm64 emulation and a bookworm host.
#   [CCB_BIN=target/debug/ccb] benches/package-tools.sh PROJECT TARGET [ELEMENT_PATH]
# e.g. the arm64 boot test's arm-os image: about 10 min on a 2-core host.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
project=${1:?usage: package-tools.sh PROJECT TARGET [ELEMENT_PATH]}
target=${2:?usage: package-tools.sh PROJECT TARGET [ELEMENT_PATH]}
elements=${3:-$here/elements}
ccb=${CCB_BIN:-$here/target/debug/ccb}
work=$(mktemp -d /var/tmp/ccb-package-tools.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/downloads"

build() { # name host-tools(0|1)
    local store="$work/store-$1"
    mkdir -p "$store"
    ln -sfn "$work/downloads" "$store/downloads"
    CCB_HOST_TOOLS=$2 CCB_CHECKPOINTS=0 CCB_CACHE_DIR="$store" \
        strace -f --seccomp-bpf -qq -e trace=execve -e signal=none -o "$work/$1.strace" \
        "$ccb" -q --root "$project" build "$target" --until layer --element-path "$elements" \
        --format json > "$work/$1.json"
}

build emulated 0
build host 1

python3 - "$work" <<'PY'
import collections, json, os, re, stat, sys
work = sys.argv[1]

def steps(name):
    doc = json.load(open(f"{work}/{name}.json"))
    return {(a["id"], s["phase"], s["name"]): s["duration_ms"] / 1000
            for a in doc["actions"] for s in a.get("steps", [])}

def starts(name):
    # Between the start of the package step's install-packages and the next step's.
    inside, counts = False, collections.Counter()
    for line in open(f"{work}/{name}.strace", errors="replace"):
        m = re.match(r'\d+\s+execve\("([^"]*)", \[(.*?)\]', line)
        if not m or "= -1" in line:
            continue
        path, argv = m.groups()
        if '"ccb-run"' in argv:
            inside = "install-packages" in argv
        elif inside:
            counts[path.rsplit("/", 1)[-1] + ("*" if path.startswith("/tmp/ccb/") else "")] += 1
    return counts

a, b = steps("emulated"), steps("host")
print(f"{'step':60} {'emulated':>9} {'host':>9}")
for k in a:
    if max(a[k], b.get(k, 0)) > 3:
        print(f"{' '.join(k):60} {a[k]:8.1f}s {b.get(k, 0):8.1f}s")
ca, cb = starts("emulated"), starts("host")
print(f"\npackage steps' process starts: {sum(ca.values())} emulated build, {sum(cb.values())} host build")
names = sorted(set(k.rstrip("*") for k in list(ca) + list(cb)),
               key=lambda n: -(ca[n] + ca[n + "*"]))
for n in names[:40]:
    print(f"  {n:28} {ca[n] + ca[n + '*']:6}  {cb[n]:6} emulated  {cb[n + '*']:6} host")

def listing(root):
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n); st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode): k = ("l", os.readlink(p))
            elif stat.S_ISREG(st.st_mode): k = ("f", open(p, "rb").read())
            elif stat.S_ISDIR(st.st_mode): k = ("d",)
            else: k = ("o", st.st_rdev)
            out[os.path.relpath(p, root)] = (k, st.st_mode, st.st_uid, st.st_gid)
    return out

trees = []
for name in ("emulated", "host"):
    doc = json.load(open(f"{work}/{name}.json"))
    key = [a["key"] for a in doc["actions"] if a["id"].startswith("layer:")][-1]
    trees.append(listing(f"{work}/store-{name}/layers/{key}/tree"))
differ = sorted(p for p in set(trees[0]) | set(trees[1]) if trees[0].get(p) != trees[1].get(p))
print(f"\nlayer trees: {len(trees[0])} entries, {len(differ)} differ {differ[:20]}")
PY
