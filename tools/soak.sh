#!/usr/bin/env bash
# The kill-anywhere soak: RUNS runs (default 50) of a φ⁴ HMC chain, a flow + HMC hybrid chain,
# a replica-exchange ladder and flow training, each killed with SIGKILL one to three times at
# random moments (many of them during a checkpoint write) and resumed; every resumed run must
# be bit-identical to an uninterrupted one and no killed run may leave an unreadable file.
# The harness is tests/soak.rs; it prints a table of kills per scenario.
#
#   tools/soak.sh [RUNS] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export LATFLOW_SOAK_RUNS=${1:-50}
export LATFLOW_SOAK_SEED=${2:-1}
cargo build --workspace --quiet
cargo test -p latflow-tests --test soak -- --ignored --nocapture --test-threads=1
