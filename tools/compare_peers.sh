#!/usr/bin/env bash
# Side-by-side φ⁴ HMC throughput: latflow (benches/hmc_throughput.rs) against the peer
# baselines benches/peers/phi4_hmc.py (numpy, PyTorch), measured in the same run on this machine.
# Regenerates the README's comparison table. A benchmark, not a test: never run it in CI.
#
# Usage (from anywhere; needs cargo, python3 and, for the peers, numpy and torch):
#   tools/compare_peers.sh            # 3 interleaved rounds (5-10 min on the 2-core machine)
#   QUICK=1 tools/compare_peers.sh    # 1 round, fewer peer trajectories (2-4 min)
#   PEER_PYTHON=/path/to/venv/bin/python LATTICES="32" THREADS=1 tools/compare_peers.sh
#
# Environment knobs (all optional):
#   ROUNDS=3              interleaved rounds (each round runs every configuration once)
#   LATTICES="8 32 128"   lattice sizes L (L×L, tutorial couplings m² = −4, λ = 8)
#   THREADS="1 2"         thread counts for latflow and for torch
#   NUMPY_THREADS="1"     numpy's elementwise ops are single-threaded whatever --threads says
#                         (it only sets OMP/BLAS variables), so by default numpy runs once per L
#   NMD="128=30"          fixed MD step counts per L; every other L is tuned like the peer
#                         (first of 4,5,6,8,10,12,15,20 with acceptance ≥ 0.80, by latflow) and
#                         the chosen n_md is then passed to everyone (--nmd / --md-steps), so all
#                         sides do the same work per trajectory. At L = 128 no n_md ≤ 20 reaches
#                         0.80 (τ = 1 leapfrog; from the peers' start even 20 accepts nothing),
#                         hence the explicit 30.
#   TORCH_B64_LATTICES="8 32"  also run torch with 64 vectorised chains (its best case; rates
#                         are summed over chains) at these L, 1 thread. Empty to skip.
#   PEERS_DIR             default: benches/peers in the repository
#   PEER_PYTHON           the python for the peers. Default: .tools/peer-venv if it exists; else
#                         python3 if it imports numpy and torch (numpy alone with INSTALL_TORCH=0);
#                         else .tools/peer-venv is created and `pip install numpy [torch]` run.
#   INSTALL_TORCH=1       install torch into that venv too (about 5 GB from PyPI, a few minutes);
#                         0: numpy only. Without torch the torch columns read "n/a".
#   RUN_TIMEOUT=600       seconds per single run before it is abandoned (recorded as failed)
#   OUT_DIR               where raw outputs and results.jsonl go (default: a fresh temp dir)
#
# Output: progress on stderr; then on stdout a Markdown table: traj/s (median over rounds),
# acceptance, and the ratios latflow/numpy and latflow/torch (median of the per-round ratios), at
# equal n_md, τ = 1, leapfrog, float64, one chain (plus torch B64 where run). A failed or missing
# run shows as "n/a"; the script only fails (exit 1) if the latflow example does not build.
# The machine's 2 cores are shared: quote the load average (logged) with the figures.

set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

QUICK=${QUICK:-0}
ROUNDS=${ROUNDS:-$([ "$QUICK" = 1 ] && echo 1 || echo 3)}
LATTICES=${LATTICES:-"8 32 128"}
THREADS=${THREADS:-"1 2"}
NUMPY_THREADS=${NUMPY_THREADS:-"1"}
NMD=${NMD:-"128=30"}
TORCH_B64_LATTICES=${TORCH_B64_LATTICES-"8 32"}
INSTALL_TORCH=${INSTALL_TORCH:-1}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
OUT_DIR=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/latflow-compare.XXXXXX")}
mkdir -p "$OUT_DIR"
results="$OUT_DIR/results.jsonl"
: >"$results"

log() { printf '[compare_peers] %s\n' "$*" >&2; }

# Peer trajectory counts per L (timed / thermalisation after the peer's fixed 200 at n_md = 20).
peer_counts() { # L chains -> "ntraj ntherm"
    local l=$1 b=$2
    # At L = 128 the peer's fixed start (0.1·N(0,1), then 200 trajectories at n_md = 20, which
    # are all rejected there) needs a few hundred trajectories at n_md = 30 to start moving;
    # a chain still stuck when the timing starts makes the peer's tau_int infinite and the
    # script crash after timing (OverflowError in bootstrap_mean), so thermalise generously.
    if [ "$b" -gt 1 ]; then
        case $l in 8) echo "300 100" ;; 32) echo "150 50" ;; *) echo "20 300" ;; esac
    elif [ "$QUICK" = 1 ]; then
        case $l in 8) echo "2000 300" ;; 32) echo "1000 200" ;; *) echo "100 300" ;; esac
    else
        case $l in 8) echo "5000 500" ;; 32) echo "2000 300" ;; *) echo "150 300" ;; esac
    fi
}

# ---------------------------------------------------------------- peers and their python
peers=${PEERS_DIR:-$root/benches/peers}
if [ ! -f "$peers/phi4_hmc.py" ]; then
    log "peer scripts not found (set PEERS_DIR); running latflow only"
    peers=""
fi

py=""
have_torch=0
if [ -n "$peers" ]; then
    if [ -n "${PEER_PYTHON:-}" ]; then
        py=$PEER_PYTHON
    elif [ -x "$root/.tools/peer-venv/bin/python" ]; then
        py="$root/.tools/peer-venv/bin/python"
    elif python3 -c 'import numpy, torch' 2>/dev/null; then
        py=python3
    elif [ "$INSTALL_TORCH" != 1 ] && python3 -c 'import numpy' 2>/dev/null; then
        py=python3
    else
        log "creating $root/.tools/peer-venv (numpy$([ "$INSTALL_TORCH" = 1 ] && echo ' + torch'))"
        if python3 -m venv "$root/.tools/peer-venv" >&2; then
            py="$root/.tools/peer-venv/bin/python"
            timeout 900 "$py" -m pip install --quiet numpy >&2 || log "pip install numpy failed"
            if [ "$INSTALL_TORCH" = 1 ]; then
                timeout 1800 "$py" -m pip install --quiet torch >&2 || log "pip install torch failed or timed out"
            fi
        elif python3 -c 'import numpy' 2>/dev/null; then
            py=python3
        fi
    fi
    if [ -n "$py" ] && ! "$py" -c 'import numpy' 2>/dev/null; then
        if python3 -c 'import numpy' 2>/dev/null; then py=python3; else py=""; fi
    fi
    if [ -z "$py" ]; then
        log "no python with numpy: running latflow only"
        peers=""
    elif "$py" -c 'import torch' 2>/dev/null; then
        have_torch=1
    else
        log "torch is not importable by $py: numpy only"
    fi
fi
if [ -n "$peers" ]; then
    versions=$("$py" -c 'import numpy; print("numpy", numpy.__version__)' 2>/dev/null)
    [ $have_torch = 1 ] && versions="$versions, torch $("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
    log "peers: $peers; python: $py ($versions)"
fi

# ---------------------------------------------------------------- build latflow
log "building benches/hmc_throughput.rs (release)"
if ! cargo build --release -p latflow-benches --example hmc_throughput >&2; then
    log "build failed"
    exit 1
fi
target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$root/target")
ours="$target_dir/release/examples/hmc_throughput"

# Runs a command with a timeout; appends {"kind":..,"L":..,"threads":..,"round":..,"result":<last JSON line>}.
record() { # kind L threads round -- cmd...
    local kind=$1 l=$2 t=$3 r=$4
    shift 5
    local out="$OUT_DIR/$kind-L$l-t$t-r$r.out"
    log "round $r: $kind L=$l threads=$t"
    if timeout "$RUN_TIMEOUT" "$@" >"$out" 2>"$out.err"; then
        local last
        last=$(grep '^{' "$out" | tail -n 1)
        if [ -n "$last" ]; then
            printf '{"kind":"%s","L":%s,"threads":%s,"round":%s,"result":%s}\n' "$kind" "$l" "$t" "$r" "$last" >>"$results"
            return 0
        fi
    fi
    log "  failed (see $out.err)"
    return 1
}

# ---------------------------------------------------------------- n_md per L
declare -A nmd
for kv in $NMD; do nmd[${kv%%=*}]=${kv#*=}; done
for l in $LATTICES; do
    if [ -z "${nmd[$l]:-}" ]; then
        log "tuning n_md at L=$l like the peer (latflow, leapfrog, τ = 1)"
        line=$(timeout "$RUN_TIMEOUT" "$ours" --lattice "$l" --threads 1 --md-steps 0 --trajectories 2000 2>/dev/null | tail -n 1)
        nmd[$l]=$(printf '%s' "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["nmd"])' 2>/dev/null || echo 20)
    fi
    log "L=$l: n_md = ${nmd[$l]}"
done

# ---------------------------------------------------------------- interleaved rounds
log "load average before the rounds: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
    for l in $LATTICES; do
        n=${nmd[$l]}
        for t in $THREADS; do
            record ours "$l" "$t" "$r" -- "$ours" --lattice "$l" --threads "$t" --md-steps "$n" \
                --integrator leapfrog --seed $((4321 + r))
        done
        [ -z "$peers" ] && continue
        read -r ntraj ntherm <<<"$(peer_counts "$l" 1)"
        for t in $NUMPY_THREADS; do
            record numpy "$l" "$t" "$r" -- env PEER_RESULTS_DIR="$OUT_DIR/peer" "$py" "$peers/phi4_hmc.py" \
                --backend numpy --L "$l" --nmd "$n" --ntraj "$ntraj" --ntherm "$ntherm" --threads "$t" \
                --seed $((4321 + r))
        done
        if [ $have_torch = 1 ]; then
            for t in $THREADS; do
                record torch "$l" "$t" "$r" -- env PEER_RESULTS_DIR="$OUT_DIR/peer" "$py" "$peers/phi4_hmc.py" \
                    --backend torch --dtype float64 --L "$l" --nmd "$n" --ntraj "$ntraj" --ntherm "$ntherm" \
                    --threads "$t" --seed $((4321 + r))
            done
            if [[ " $TORCH_B64_LATTICES " == *" $l "* ]]; then
                read -r ntraj ntherm <<<"$(peer_counts "$l" 64)"
                record torch_b64 "$l" 1 "$r" -- env PEER_RESULTS_DIR="$OUT_DIR/peer" "$py" "$peers/phi4_hmc.py" \
                    --backend torch --dtype float64 --chains 64 --L "$l" --nmd "$n" --ntraj "$ntraj" \
                    --ntherm "$ntherm" --threads 1 --seed $((4321 + r))
            fi
        fi
    done
done

log "raw results: $results; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- table
python3 - "$results" "$LATTICES" "$THREADS" "$NUMPY_THREADS" <<'EOF'
import json, statistics, sys

path, lattices, threads, np_threads = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
rows = [json.loads(line) for line in open(path) if line.strip()]

def pick(kind, l, t):
    out = []
    for r in rows:
        if r["kind"] == kind and r["L"] == int(l) and r["threads"] == int(t):
            res = r["result"]
            if kind == "ours":
                run = res["runs"][0]
                out.append((run["traj_per_s"], run["acceptance"], run["nmd"]))
            else:
                out.append((res["traj_per_s_total"], res["acceptance"], res["hmc"]["nmd"]))
    return out

def med(xs):
    return statistics.median(xs) if xs else None

def rate(kind, l, t):
    xs = pick(kind, l, t)
    return (med([x[0] for x in xs]), med([x[1] for x in xs]), len(xs)) if xs else (None, None, 0)

def f(x, nd=0):
    if x is None:
        return "n/a"
    return f"{x:,.{nd}f}" if x >= 100 else f"{x:.{max(nd, 1)}f}"

def by_round(kind, l, t):
    out = {}
    for r in rows:
        if r["kind"] == kind and r["L"] == int(l) and r["threads"] == int(t):
            res = r["result"]
            out[r["round"]] = res["runs"][0]["traj_per_s"] if kind == "ours" else res["traj_per_s_total"]
    return out

def ratio(ours_t, kind, l, t):
    # median over rounds of the per-round ratio (the two runs minutes apart at most), which
    # follows the machine's changing load better than a ratio of medians
    a, b = by_round("ours", l, ours_t), by_round(kind, l, t)
    rs = [a[k] / b[k] for k in a if k in b and b[k] > 0]
    return f"{statistics.median(rs):.1f}×" if rs else "n/a"

print()
print("| L | n_md | threads | latflow traj/s | acc | numpy traj/s | latflow/numpy | torch traj/s | latflow/torch | torch B64 traj/s (total) | latflow/torch B64 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for l in lattices:
    nmd = next((x[2] for x in pick("ours", l, threads[0])), "?")
    npy = rate("numpy", l, np_threads[0])[0]
    b64 = rate("torch_b64", l, 1)[0]
    for t in threads:
        o, acc, n = rate("ours", l, t)
        tr = rate("torch", l, t)[0]
        first = t == threads[0]
        print(f"| {l} | {nmd} | {t} | {f(o)} | {f(acc, 2) if acc is not None else 'n/a'} | {f(npy)} "
              f"| {ratio(t, 'numpy', l, np_threads[0])} | {f(tr)} | {ratio(t, 'torch', l, t)} "
              f"| {f(b64) if first else ''} | {ratio(t, 'torch_b64', l, 1) if first else ''} |")
print()
n_rounds = max((r["round"] for r in rows), default=0)
print(f"traj/s: medians over {n_rounds} interleaved round(s); ratios: medians of the per-round ratios. One chain, "
      "leapfrog, tau = 1, float64, one |M| and S measurement per trajectory, equal n_md on all sides. numpy runs with "
      f"--threads {np_threads[0]} (its elementwise ops are single-threaded). torch B64 = 64 vectorised chains, 1 thread, "
      "rate summed over chains (its best case; latflow runs one chain). Load average at the start and end: see stderr.")
EOF
