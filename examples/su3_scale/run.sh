#!/usr/bin/env bash
# The SU(3) scale-setting example: generate a 16^4 beta = 6.0 Wilson-action ensemble with
# heat-bath + overrelaxation, then flow every configuration with the Wilson flow and solve
# t^2 <E(t)> = 0.3 for t0/a^2 (and t d/dt t^2 E = 0.3 for w0/a).
#
#   examples/su3_scale/run.sh [OUTDIR]      (default: a fresh directory under /tmp)
#
# Environment: THREADS (rayon threads, default: all cores), TMAX (default 3.2), EPS (flow
# step, default 0.025). Prints the run summary (plaquette against Boyd et al.) and the flow
# table with t0/a^2 and w0/a; wall times of both stages are printed at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$(mktemp -d /tmp/su3_scale.XXXXXX)}"
mkdir -p "$out"
cd "$root"
cargo build --release -q
latflow="$root/target/release/latflow"
export RAYON_NUM_THREADS="${THREADS:-$(nproc)}"
cd "$out"
cp "$here/su3_b6_16.toml" .
t0=$(date +%s)
"$latflow" run su3_b6_16.toml
t1=$(date +%s)
"$latflow" flow su3_b6_16.h5 --tmax "${TMAX:-3.2}" --dt 0.1 --eps "${EPS:-0.025}" --out flow.csv
t2=$(date +%s)
echo "generation: $((t1 - t0)) s; flow: $((t2 - t1)) s; threads: $RAYON_NUM_THREADS; output in $out"
