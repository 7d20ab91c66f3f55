#!/usr/bin/env bash
# The 2D U(1) headline in one command: train a gauge-equivariant flow for L = 16, beta = 6 by
# transfer (beta ladder 2 -> 3 -> 4 -> 6 at L = 8, then L = 8 -> 16), train the same flow from
# scratch at beta = 6, L = 8 for comparison, then bench HMC against flow Metropolis and a hybrid
# chain at L = 16, beta = 6; then HMC against the non-equilibrium defect sampler (`anneal`) and
# replica exchange at L = 16, beta = 6 and 7 (no training; about 30 min more); then HMC against
# stochastic normalizing flows at L = 16, beta = 6 (about 5 min); then HMC against the flow over
# the defect (`defect_snf`, trained in about 1 s by the step itself) at L = 16, beta = 6 and 7,
# and at L = 32 (about 30 min).
#
#   examples/u1_headline/run.sh [WORKDIR]      (default: ./u1_headline; about 15 min on 2 cores)
#
# Weights that already exist are kept (delete them to retrain). Needs a release build:
#   cargo build --release
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../common.sh" "${1:-u1_headline}"
for rung in b2_L8 b3_L8 b4_L8 b6_L8 b6_L8_ft b6_L16 b6_L8_scratch b2_L16; do
  if [ ! -f "$rung.safetensors" ]; then
    echo "== training $rung"
    "$latflow" train "$here/$rung.toml"
  fi
done
"$latflow" bench "$here/bench_L8.toml"
"$latflow" bench "$here/bench.toml"
"$latflow" bench "$here/bench_anneal.toml"
"$latflow" bench "$here/bench_anneal_b7.toml"
"$latflow" bench "$here/bench_snf.toml"
"$latflow" bench "$here/bench_defect_snf.toml"
"$latflow" bench "$here/bench_defect_snf_b7.toml"
"$latflow" bench "$here/bench_defect_snf_L32.toml"
