#!/usr/bin/env bash
# Coverage-guided fuzzing of latflow's readers of untrusted input (cargo-fuzz, libFuzzer,
# AddressSanitizer; needs the nightly toolchain).
#
#   tools/fuzz.sh [RUNS] [TARGET...]      default: 1000000 executions of every target
#   tools/fuzz.sh --smoke [SECONDS]       CI's smoke run: SECONDS (default 10) of every target
#
# Targets (fuzz/fuzz_targets/): run_card, bench_card, checkpoint, train_checkpoint, gauge_file (ILDG/LIME and
# NERSC), ensemble (HDF5), weights (safetensors). Each starts from the committed seeds in
# fuzz/seeds/TARGET and grows a working corpus in fuzz/corpus/TARGET (not committed). A crash
# is saved under fuzz/artifacts/TARGET; once fixed, copy the input to fuzz/regressions/TARGET,
# where the ordinary test suite replays it (host/src/fuzzing.rs, plugins/flow-common io tests).
# Each target's final libFuzzer statistics go to fuzz/logs/TARGET.log.
#
# The smoke run builds the targets unoptimised, which halves the build (the fuzz workspace's dev
# profile; HDF5 itself is optimised there, so that its debug-only assertions are off as in the
# release build a user runs: a damaged attribute table trips one of them), fuzzes each target for SECONDS from its seeds with a fixed libFuzzer seed into a
# scratch corpus, and fails on any crash, panic, sanitizer report or hang outside HDF5. It
# installs the nightly toolchain (rustup, minimal profile) and cargo-fuzz when missing; where
# neither can be had it says "SKIPPED" and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
if [ "${1:-}" = --smoke ]; then
    mode=smoke
    seconds=${2:-10}
    targets=(run_card bench_card checkpoint train_checkpoint gauge_file ensemble weights)
else
    runs=${1:-1000000}
    shift || true
    targets=("$@")
    if [ ${#targets[@]} -eq 0 ]; then
        targets=(run_card bench_card checkpoint train_checkpoint gauge_file ensemble weights)
    fi
fi

skip() { echo "fuzz smoke SKIPPED: $*"; exit 0; }
if ! cargo +nightly --version >/dev/null 2>&1; then
    [ "$mode" = smoke ] || { echo "the nightly toolchain is needed: rustup toolchain install nightly" >&2; exit 1; }
    command -v rustup >/dev/null || skip "no nightly toolchain and no rustup to install one"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 || skip "rustup could not install the nightly toolchain"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "$mode" = smoke ]; then
        cargo install -q cargo-fuzz --locked || skip "cargo-fuzz could not be installed"
    else
        cargo install cargo-fuzz --locked
    fi
fi

# per-target libFuzzer options: sets max_len and extra
target_options() {
    # the HDF5 seeds are a few hundred kB; the other formats are small
    max_len=65536
    extra=()
    if [ "$1" = ensemble ]; then
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
    else
        unset ASAN_OPTIONS
    fi
}

mkdir -p fuzz/logs
failed() { # target log
    echo "$1 FAILED: see $2"
    grep -E "ERROR|SUMMARY|panicked|Test unit written" "$2" | cut -c1-300
    exit 1
}

# The one hang HDF5 is known for (fuzz/known-upstream/ensemble/): a damaged global heap.
KNOWN_HANG=H5HG__cache_heap_deserialize

# Fork mode (the ensemble target) exits non-zero when any input timed out, even with
# -ignore_timeouts. The run passes if its last status line counts no crash and no OOM, the log
# holds no sanitizer report or panic, and every timeout it saved (newer than `since`) hangs
# again, when rerun alone for 3 s, inside $KNOWN_HANG (by its symbolised stack). Prints the
# count of such hangs.
only_known_hangs() { # target log since build
    local t=$1 log=$2 since=$3 bin=$4 n=0 f
    grep -qE "AddressSanitizer|LeakSanitizer|panicked" "$log" && return 1
    grep -oE "oom/timeout/crash: [0-9]+/[0-9]+/[0-9]+" "$log" | tail -1 | grep -qE ": 0/[0-9]+/0$" || return 1
    while IFS= read -r f; do
        ASAN_OPTIONS=detect_leaks=0 timeout 120 "$bin" -timeout=3 "$f" 2>&1 | grep -qE "^ +#[0-9]+ .* in $KNOWN_HANG" || {
            echo "$t: the timeout $f does not hang in $KNOWN_HANG" >&2
            return 1
        }
        n=$((n + 1))
    done < <(find "fuzz/artifacts/$t" -name "timeout-*" -newer "$since" 2>/dev/null)
    echo "$n"
}

if [ "$mode" = smoke ]; then
    cargo +nightly fuzz build --dev
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    for t in "${targets[@]}"; do
        target_options "$t"
        mkdir -p "$scratch/$t"
        cargo +nightly fuzz run --dev "$t" "$scratch/$t" "fuzz/seeds/$t" -- \
            -max_total_time="$seconds" -seed=1 -max_len="$max_len" -timeout=10 -rss_limit_mb=4096 \
            -print_final_stats=1 "${extra[@]}" >"fuzz/logs/$t.smoke.log" 2>&1 || failed "$t" "fuzz/logs/$t.smoke.log"
        # the executions: libFuzzer's final statistics, or in fork mode its last status line
        execs=$(grep -E "^stat::number_of_executed_units" "fuzz/logs/$t.smoke.log" | grep -oE "[0-9]+$" ||
            grep -oE "^#[0-9]+" "fuzz/logs/$t.smoke.log" | tail -1 | tr -d "#")
        echo "fuzz smoke: $t: ${execs:-?} executions in ${seconds} s, no crash"
    done
    exit 0
fi

for t in "${targets[@]}"; do
    target_options "$t"
    mkdir -p "fuzz/corpus/$t"
    echo "== $t: $runs runs"
    since=$(mktemp)
    if ! cargo +nightly fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -runs="$runs" -max_len="$max_len" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 "${extra[@]}" \
        >"fuzz/logs/$t.log" 2>&1; then
        hangs=$(only_known_hangs "$t" "fuzz/logs/$t.log" "$since" "fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release/$t") ||
            failed "$t" "fuzz/logs/$t.log"
        echo "$t: $hangs timeouts, every one inside HDF5's $KNOWN_HANG (fuzz/known-upstream/$t/)"
    fi
    rm -f "$since"
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb|^Done|^#[0-9]+: cov" "fuzz/logs/$t.log" | tail -2 || true
done
