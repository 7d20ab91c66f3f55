#!/usr/bin/env bash
# Flow-Metropolis acceptance at the φ⁴ tutorial point over three training seeds, in one command:
# trains card.toml with seeds 1, 2 and 3 (2500 steps each, about 6 min per seed on one core),
# then runs a 200 000-proposal chain from each and prints its acceptance and z-scores.
#
#   examples/phi4_acceptance/run.sh [WORKDIR]      (default: ./phi4_acceptance)
#
# Weights that already exist are kept (delete them to retrain). Needs a release build:
#   cargo build --release
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../common.sh" "${1:-phi4_acceptance}"
for seed in 1 2 3; do
  sed -e "s/^seed = 1$/seed = $seed/" -e "s/phi4_spline\./phi4_spline_s$seed./" "$here/card.toml" > "seed$seed.toml"
  [ -f "phi4_spline_s$seed.safetensors" ] || "$latflow" train "seed$seed.toml"
  "$latflow" run "seed$seed.toml" --force --json > "seed$seed.json"
  python3 - "seed$seed.json" "$seed" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
z = ", ".join(f"{r['name']} z = {r['z']:+.2f}" + ("" if r["reliable"] else " (unreliable)") for r in d["reference"])
print(f"seed {sys.argv[2]}: flow-Metropolis acceptance {d['analysis']['acceptance']['flow']:.4f}; {z}")
PY
done
