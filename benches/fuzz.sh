#!/usr/bin/env bash
# Runs every cargo-fuzz target for N seconds each (default 600), one at a time on one job at
# the lowest priority, and prints each target's executions, coverage and crashes.
#
#   benches/fuzz.sh [SECONDS] [TARGET...]
#
# Needs `cargo install cargo-fuzz` and a nightly toolchain (`cargo +nightly`). A crash leaves
# its input in fuzz/artifacts/<target>/; keep it as a unit test before fixing (fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do nice -n 19 cargo +nightly fuzz build -O "$t"; done
status=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    # The committed seeds (seeds/<target>) start the corpus; what the run adds stays untracked.
    if [ -d "seeds/$t" ]; then cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true; fi
    log=$(mktemp)
    if nice -n 19 cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
        -max_total_time="$secs" -jobs=1 -workers=1 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 > "$log" 2>&1; then
        result=ok
    else
        result="CRASH (see fuzz/artifacts/$t/)"
        status=1
    fi
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
    corpus=$(find "corpus/$t" -type f | wc -l)
    printf '%-18s %6ss  execs %-10s %-22s corpus %-6s %s\n' "$t" "$secs" "${execs:-?}" "${cov:-?}" "$corpus" "$result"
    if [ "$result" != ok ]; then tail -40 "$log" >&2; fi
    rm -f "$log"
done
exit $status
