#!/usr/bin/env bash
# The MPI build under mpirun (the `mpi` cargo feature). Checks, with 2 ranks:
#   1. a replica ladder (plain swaps, and flow-assisted swaps with untrained models) and the
#      independent chains of a plain card give the files of a one-process run, bit for bit
#      (every HDF5 dataset compared with h5py);
#   2. a rank killed mid-run (SIGKILL to one rank), then `mpirun -np 2 latflow run --resume`:
#      the result equals the uninterrupted run;
#   3. the domain-decomposed SU(3) HMC (`latflow scaling`) gives the trajectories of one
#      process: ΔH, acceptance and plaquette bit for bit; `latflow run` of one SU(3) chain
#      splits its lattice over the ranks and writes the one-process file, bit for bit; data-parallel training
#      (`[train] chunks = 4`) writes the weights of one process, byte for byte;
#   4. bad jobs are refused with a clear message: more ranks than couplings, ranks started on
#      different cards, a lattice that does not divide over the ranks, ranks started with
#      different scaling arguments.
# Installs OpenMPI (Debian packages) when mpirun is missing. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v mpirun >/dev/null || ! command -v mpicc >/dev/null; then
    echo "installing OpenMPI"
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev libclang-dev) >/dev/null
fi
cargo build -q --workspace
cargo build -q -p latflow-host --features mpi
# beside the plain build's plugins, under its own name (the next plain build relinks `latflow`)
cp target/debug/latflow target/debug/latflow-mpi
bin="$root/target/debug/latflow-mpi"
launcher=(mpirun --oversubscribe)
[ "$(id -u)" = 0 ] && launcher=(mpirun --allow-run-as-root --oversubscribe)
mpirun=("${launcher[@]}" -np 2)
export OMPI_MCA_rmaps_base_oversubscribe=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

card() { # card NAME MEASUREMENTS SWAP_FLOW MODEL
    cat > "$1.toml" <<CARD
[theory]
plugin = "phi4"
lattice = [4, 4]
m2 = 0.5
lambda = 0.0

[ladder]
parameter = "m2"
values = [0.3, 0.5, 0.8, 1.2, 1.8]

$4

[[chain]]
kind = "hmc"
md_steps = 5
trajectory_length = 1.0

[[chain]]
kind = "replica_exchange"
repeat = 2
flow = $3

[run]
output = "$1.h5"
seed = 17
thermalization = 5
measurements = $2
save_every = 7
checkpoint_every = 11
start = "hot"
CARD
}

same() { # same A.h5 B.h5: every dataset bit-identical
    python3 - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
def walk(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, np.asarray(o[()])) if isinstance(o, h5py.Dataset) else None)
    return out
a, b = walk(sys.argv[1]), walk(sys.argv[2])
bad = sorted(k for k in set(a) | set(b) if k not in a or k not in b or a[k].tobytes() != b[k].tobytes())
if bad or not a:
    sys.exit(f"{sys.argv[1]} and {sys.argv[2]} differ in {bad[:5]} ({len(bad)} datasets)")
print(f"  {len(a)} datasets bit-identical")
PY
}

echo "1. a ladder on 2 ranks against 1 process"
card plain 400 false ""
"$bin" run plain.toml -q >/dev/null && mv plain.h5 one.h5 && rm plain.h5.ckpt
"${mpirun[@]}" "$bin" run plain.toml -q >/dev/null
same one.h5 plain.h5
card flow 100 true $'[model]\nplugin = "flow-scalar"\nlayers = 2\nhidden = [4]\ndtype = "f64"'
"$bin" run flow.toml -q >/dev/null 2>&1 && mv flow.h5 one-flow.h5 && rm flow.h5.ckpt
"${mpirun[@]}" "$bin" run flow.toml -q >/dev/null 2>&1
same one-flow.h5 flow.h5

echo "   independent chains of a plain card on 2 ranks against 1 process"
cat > chains.toml <<CARD
[theory]
plugin = "phi4"
lattice = [4, 4]
m2 = 0.5
lambda = 0.0

[[chain]]
kind = "hmc"
md_steps = 5

[run]
output = "chains.h5"
seed = 5
measurements = 200
save_every = 10
start = "hot"
chains = 3
CARD
"$bin" run chains.toml -q >/dev/null
for c in 0 1 2; do mv chains.chain$c.h5 one.chain$c.h5; rm chains.chain$c.h5.ckpt; done
"${mpirun[@]}" "$bin" run chains.toml -q >/dev/null
for c in 0 1 2; do same one.chain$c.h5 chains.chain$c.h5; done

echo "2. one rank killed mid-run, then --resume on 2 ranks"
card long 20000 false ""
"$bin" run long.toml -q >/dev/null && mv long.h5 whole.h5 && rm long.h5.ckpt
"${mpirun[@]}" "$bin" run long.toml -q >/dev/null 2>&1 &
job=$!
for _ in $(seq 1 2000); do [ -e long.h5.ckpt ] && break; sleep 0.005; done
sleep 0.3
victim=$(pgrep -f "$bin run long.toml" | tail -1 || true)
[ -n "$victim" ] || { echo "no rank to kill: the run ended too soon" >&2; exit 1; }
kill -9 "$victim"
wait "$job" && { echo "the job did not notice a killed rank" >&2; exit 1; } || true
echo "  killed rank process $victim; resuming"
"${mpirun[@]}" "$bin" run long.toml --resume -q >/dev/null
same whole.h5 long.h5

echo "3. the domain-decomposed SU(3) HMC on 2 ranks against 1 process"
traj() { # traj FILE: the trajectory history (ΔH, accepted, plaquette) of a scaling report
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["ranks"], [(t["delta_h"].hex(), t["accepted"], t["plaquette"].hex()) for t in r["trajectories"]])' "$1"
}
# 8x4x8x8 = 2048 sites: each of 2 ranks holds whole reduction chunks, so ΔH has the same bits
"$bin" scaling --lattice 8,4,8,8 --trajectories 3 --md-steps 6 --json > dd1.json
"${mpirun[@]}" "$bin" scaling --lattice 8,4,8,8 --trajectories 3 --md-steps 6 --json > dd2.json
t1=$(traj dd1.json | cut -d' ' -f2-); t2=$(traj dd2.json | cut -d' ' -f2-)
[ "$(traj dd2.json | cut -d' ' -f1)" = 2 ] || { echo "the scaling run did not see 2 ranks" >&2; exit 1; }
[ "$t1" = "$t2" ] || { echo "decomposed HMC on 2 ranks differs from 1 process:" >&2; echo "$t1" >&2; echo "$t2" >&2; exit 1; }
echo "  3 trajectories: ΔH, accept and plaquette bit-identical"

echo "   latflow run of one SU(3) chain, its lattice split over 2 ranks, against 1 process"
cat > su3.toml <<CARD
[theory]
plugin = "sun"
lattice = [64, 32]
n = 3
beta = 4.0

[[chain]]
kind = "hmc"
md_steps = 6

[run]
output = "su3.h5"
seed = 9
measurements = 60
save_every = 5
start = "hot"
CARD
"$bin" run su3.toml -q >/dev/null && mv su3.h5 su3_one.h5 && mv su3.h5.ckpt su3_one.h5.ckpt
"${mpirun[@]}" "$bin" run su3.toml -q >/dev/null
same su3_one.h5 su3.h5
cmp su3_one.h5.ckpt su3.h5.ckpt && echo "  the checkpoints (global configuration gathered) are byte-identical"
expect_early() { if out=$("$@" 2>&1); then echo "should have failed: $*" >&2; exit 1; fi; grep -q "cannot be split" <<<"$out" || { echo "$out" >&2; exit 1; }; }
sed 's/plugin = "sun"/plugin = "u1"/; s/^n = 3$//; s/output = .*/output = "u1split.h5"/' su3.toml > u1split.toml
expect_early "${mpirun[@]}" "$bin" run u1split.toml -q
echo "  a theory without domain decomposition is refused"

echo "   data-parallel training ([train] chunks = 4) on 2 ranks against 1 process"
cat > dp.toml <<CARD
[theory]
plugin = "phi4"
lattice = [4, 4]
m2 = 0.5
lambda = 0.5

[model]
plugin = "flow-scalar"
layers = 2
hidden = [4]
dtype = "f64"
weights = "dp.safetensors"

[train]
steps = 8
batch = 16
chunks = 4
checkpoint_every = 5

[[chain]]
kind = "flow"

[run]
output = "dp.h5"
seed = 4
measurements = 10
CARD
"$bin" train dp.toml -q >/dev/null && mv dp.safetensors one.safetensors && cut -d, -f1-6 dp.safetensors.history.csv > one.history
"${mpirun[@]}" "$bin" train dp.toml -q --force >/dev/null
cmp one.safetensors dp.safetensors || { echo "data-parallel training on 2 ranks differs from 1 process" >&2; exit 1; }
cut -d, -f1-6 dp.safetensors.history.csv | cmp - one.history || { echo "training histories differ" >&2; exit 1; }
echo "  weights and history (without timings) byte-identical"

echo "4. bad jobs"
expect() { # expect NEEDLE CMD...
    local needle=$1; shift
    if out=$("$@" 2>&1); then echo "should have failed: $*" >&2; exit 1; fi
    grep -q -- "$needle" <<<"$out" || { echo "expected '$needle' from $*, got:" >&2; echo "$out" >&2; exit 1; }
    echo "  refused: $needle"
}
card few 10 false ""
sed -i 's/values = .*/values = [0.3, 0.5]/' few.toml
expect "the ladder has 2 couplings and the job 3 ranks" "${launcher[@]}" -np 3 "$bin" run few.toml -q
card other 400 false "" && sed -i 's/seed = 17/seed = 18/; s/output = .*/output = "plain2.h5"/' other.toml
cp plain.toml mine.toml && sed -i 's/output = .*/output = "plain2.h5"/' mine.toml
expect "rank 1 was started with another card" "${launcher[@]}" -np 1 "$bin" run mine.toml -q : -np 1 "$bin" run other.toml -q
expect "extent 8 along axis 0 is not divisible by the 3 ranks" "${launcher[@]}" -np 3 "$bin" scaling --lattice 8,4,4,4
sed -i 's/chunks = 4/chunks = 3/; s/batch = 16/batch = 15/' dp.toml
expect "chunks = 3 does not split over the job's 2 ranks" "${mpirun[@]}" "$bin" train dp.toml --force
expect "the scaling arguments" "${launcher[@]}" -np 1 "$bin" scaling --lattice 8,4,4,4 : -np 1 "$bin" scaling --lattice 8,4,4,4 --beta 6
echo "MPI checks passed"
