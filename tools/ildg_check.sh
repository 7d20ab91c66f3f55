#!/usr/bin/env bash
# Third-party check of latflow's ILDG export: lyncs-io (from PyPI, no latflow code) reads the
# exported files, tools/ildg_check.py computes the plaquette from them in numpy, and it must
# equal the plaquette `latflow export` printed to 1e-12 (64- and 32-bit files).
#
# Usage (from anywhere):
#   tools/ildg_check.sh           # tests/ildg.rs's lyncs_io test: random and smooth SU(3)
#                                 # ensembles written by the test, exported, read, compared
#                                 # (also one link's 18 reals, bit for bit)
#   tools/ildg_check.sh ENS.h5    # exports every configuration of ENS.h5 (an SU(3) ensemble
#                                 # on a 4D lattice, e.g. from the sun plugin) and compares each
#
# lyncs-io needs numpy < 2, so it gets its own virtual environment: ILDG_VENV (default
# .tools/ildg-venv in the repository), made with `python3 -m venv` and
# `pip install 'numpy<2' lyncs-io` on first use. If that fails (no network, no venv module)
# the check is skipped with a message and exit code 0; a disagreement exits 1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${ILDG_VENV:-$root/.tools/ildg-venv}"
py="$venv/bin/python"

if ! "$py" -c "import lyncs_io, numpy" 2>/dev/null; then
    echo "ildg_check: installing lyncs-io and numpy<2 into $venv"
    if ! { python3 -m venv "$venv" && "$py" -m pip install --quiet --disable-pip-version-check 'numpy<2' lyncs-io; } \
        || ! "$py" -c "import lyncs_io, numpy" 2>/dev/null; then
        echo "ildg_check: SKIPPED: could not install lyncs-io (pip install 'numpy<2' lyncs-io failed);" \
             "the third-party ILDG check did not run" >&2
        exit 0
    fi
fi

cd "$root"
if [ $# -eq 0 ]; then
    log=$(mktemp)
    trap 'rm -f "$log"' EXIT
    rc=0
    LATFLOW_LYNCS_PYTHON="$py" LATFLOW_REQUIRE_LYNCS=1 \
        cargo test -p latflow-tests --test ildg a_third_party_reader_agrees_on_the_plaquette -- --nocapture >"$log" 2>&1 || rc=$?
    grep -E "^lyncs_io|^test result" "$log" || true
    if [ $rc -ne 0 ]; then
        tail -n 40 "$log" >&2
        echo "ildg_check: FAILED (see above)" >&2
        exit 1
    fi
    echo "ildg_check: lyncs_io agrees with latflow"
    exit 0
fi

ens="$1"
cargo build -q -p latflow-host
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for bits in 64 32; do
    "$root/target/debug/latflow" export "$ens" --ildg "$out/p$bits" --precision "$bits" >"$out/printed$bits.txt"
    while read -r file _ index _ sweep _ plaq; do
        theirs=$("$py" tools/ildg_check.py "$file" | "$py" -c 'import json,sys; print(repr(json.load(sys.stdin)["plaquette"]))')
        if "$py" -c "import sys; d=abs($plaq-$theirs); print(f'{sys.argv[1]} bits, configuration $index (sweep $sweep): latflow $plaq lyncs_io/numpy $theirs |diff| {d:.1e}'); sys.exit(0 if d < 1e-12 else 1)" "$bits"; then
            :
        else
            status=1
        fi
    done <"$out/printed$bits.txt"
done
if [ $status -ne 0 ]; then
    echo "ildg_check: FAILED: lyncs_io's plaquette differs from latflow's by 1e-12 or more" >&2
    exit 1
fi
echo "ildg_check: lyncs_io agrees with latflow on every configuration"
