#!/usr/bin/env bash
# 4D SU(3) flow, exact by reweighting: train flow-sun on the 4^4 Wilson action at beta = 1.0
# (250 steps x 64 configurations, about 20 min on 2 cores), draw 8192 proposals, reweight them
# to the exact action, and print the weighted plaquette with its error, the ESS per sample and
# log Z-hat next to the small-volume heat-bath value of docs/reference.md section 5
# (<P> = 0.060101(81), P = Re Tr U_P / 3).
#
#   examples/sun4d_flow/run.sh [WORKDIR]      (default: ./sun4d_flow)
#
# Weights that already exist are kept (delete them to retrain). Needs a release build:
#   cargo build --release
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../common.sh" "${1:-sun4d_flow}"
if [ ! -f b1.safetensors ]; then
  echo "== training (4^4, SU(3), beta = 1.0)"
  "$latflow" train "$here/b1_train.toml"
fi
echo "== reweighting 8192 proposals"
"$latflow" run "$here/b1_reweight.toml" --force
"$latflow" analyze b1_reweight.h5
echo "reference (heat bath, docs/reference.md section 5): <P> = 0.060101(81)"
