#!/usr/bin/env bash
# Coverage-guided fuzzing of latflow's readers of untrusted input (cargo-fuzz, libFuzzer,
# AddressSanitizer; needs the nightly toolchain).
#
#   tools/fuzz.sh [RUNS] [TARGET...]      default: 1000000 executions of every target
#
# Targets (fuzz/fuzz_targets/): run_card, bench_card, checkpoint, train_checkpoint, gauge_file (ILDG/LIME and
# NERSC), ensemble (HDF5), weights (safetensors). Each starts from the committed seeds in
# fuzz/seeds/TARGET and grows a working corpus in fuzz/corpus/TARGET (not committed). A crash
# is saved under fuzz/artifacts/TARGET; once fixed, copy the input to fuzz/regressions/TARGET,
# where the ordinary test suite replays it (host/src/fuzzing.rs, plugins/flow-common io tests).
# Each target's final libFuzzer statistics go to fuzz/logs/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1000000}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(run_card bench_card checkpoint train_checkpoint gauge_file ensemble weights)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
mkdir -p fuzz/logs
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    # the HDF5 seeds are a few hundred kB; the other formats are small
    max_len=65536
    extra=()
    if [ "$t" = ensemble ]; then
        max_len=400000
        # HDF5 keeps some blocks of its free lists (H5FL) after an open fails on a damaged
        # file; LeakSanitizer reports them (about 100 bytes). They are HDF5's pooled memory,
        # not ours; unbounded growth would still stop the run at -rss_limit_mb.
        # HDF5 itself loops forever on one kind of damaged global heap (a free-space object of
        # size 0 makes H5HG__cache_heap_deserialize stop advancing; the input that shows it is
        # fuzz/known-upstream/ensemble/). Fork mode with -ignore_timeouts keeps fuzzing past
        # such hangs and counts them (oom/timeout/crash in the log).
        extra=(-detect_leaks=0 -fork=1 -ignore_timeouts=1)
        export ASAN_OPTIONS=detect_leaks=0
    fi
    echo "== $t: $runs runs"
    cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -runs="$runs" -max_len="$max_len" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 "${extra[@]}" \
        >"fuzz/logs/$t.log" 2>&1 || { echo "$t FAILED: see fuzz/logs/$t.log"; grep -E "ERROR|SUMMARY|panicked|Test unit written" "fuzz/logs/$t.log" | cut -c1-300; exit 1; }
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^Done" "fuzz/logs/$t.log" || true
done
