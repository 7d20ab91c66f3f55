#!/usr/bin/env bash
# Side-by-side timing of a normalizing flow, latflow against its PyTorch peer, with the same
# architecture, measured in the same run on this machine, interleaved. THEORY picks the flow:
#   phi4 (default)  latflow's flow-scalar model with the phi4 theory against
#                   benches/peers/phi4_flow.py: N(0,1) prior, 16 affine coupling layers,
#                   CNN 1 → 8 → 8 → 2, kernel 3, float32, L = 8, m² = −4, λ = 8.
#   u1              latflow's flow-u1 model with the u1 theory against benches/peers/u1_flow.py:
#                   2D U(1), Haar prior, 16 gauge-equivariant coupling layers (stripe masks),
#                   NCP mixtures of 2 components, CNN 2 → 8 → 8 → 3, kernel 3, float32,
#                   L = 8, β = 2.
# A benchmark, not a test: never run it in CI.
#
# What is measured (per thread count T, per round; the same definitions for both theories):
#   train step   latflow: `latflow train` of TRAIN_STEPS steps (batch 64, Adam lr 1e-3) with
#                [run] threads = T and RAYON_NUM_THREADS=T; the median of the history CSV's
#                `seconds` column (sample + log q + action and gradient (φ⁴, or the U(1) Wilson
#                action −β Σ cos P) + backward + Adam), skipping the first 5 steps.
#                peer: one reverse-KL step of the peer's model (sample + log q + action +
#                backward + Adam + .item(), as flowlib.train), median of PEER_STEPS steps
#                after one warm-up step.
#   proposals/s  latflow: wall time of a whole `latflow run` of a `kind = "reweight"` chain with
#                N_PROPOSALS measurements, `batch = B` in the step (B = 64 and 1024), untrained
#                model (the cost does not depend on the weights), no thermalisation, observables
#                only (save_every = 0). That includes process start, plugin loading, the
#                action, measurements and the HDF5 writes: nothing is subtracted.
#                peer: N_PROPOSALS draws with log q under no_grad, in batches of B, plus the
#                action of each batch (the peer scripts' own evaluation times the action
#                separately; here it is inside).
# Order: in each round and for each T, latflow then the peer on odd rounds, the peer then latflow
# on even rounds, so both see the same load. Figures are medians over rounds.
#
# Usage (from anywhere; needs cargo and a python with torch and numpy):
#   tools/compare_flow_peers.sh                  # φ⁴ flow
#   THEORY=u1 tools/compare_flow_peers.sh        # U(1) flow
#   PEER_PYTHON=/tmp/peervenv/bin/python ROUNDS=3 THREADS="1 2" tools/compare_flow_peers.sh
#
# Environment knobs (all optional):
#   THEORY=phi4           phi4 | u1: which flow (see above)
#   ROUNDS=3              interleaved rounds
#   THREADS="1 2"         thread counts (both sides)
#   TRAIN_STEPS=150       latflow training steps per measurement
#   PEER_STEPS=40         peer training steps per measurement
#   N_PROPOSALS=20000     proposals per rate measurement (both sides)
#   BATCHES="64 1024"     proposal batch sizes
#   PEERS_DIR             default: benches/peers in the repository
#   PEER_PYTHON           default: the first of /tmp/peervenv/bin/python, .tools/peer-venv/bin/python
#                         and python3 that imports torch and numpy (nothing is installed)
#   LATFLOW               the binary (default: target/release/latflow, built with cargo if missing
#                         or older than the sources: `cargo build --release`)
#   RUN_TIMEOUT=600       seconds per single measurement before it is abandoned ("n/a")
#   OUT_DIR               raw outputs and results.tsv (default: a fresh temp dir)
#
# Output: progress on stderr; on stdout a Markdown table with the medians (and min–max) per thread
# count, and the ratios latflow/peer (faster = larger). The load average is logged per round and
# printed with the table: the machine's 2 cores are shared, so quote it with the figures.
# Exit status: 1 when latflow cannot be built, 2 for an unknown THEORY; a failed single
# measurement shows as "n/a".

set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

THEORY=${THEORY:-phi4}
case "$THEORY" in
    phi4) peer_script=phi4_flow.py ;;
    u1) peer_script=u1_flow.py ;;
    *) printf '[compare_flow_peers] THEORY must be phi4 or u1, not %s\n' "$THEORY" >&2; exit 2 ;;
esac
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-"1 2"}
TRAIN_STEPS=${TRAIN_STEPS:-150}
PEER_STEPS=${PEER_STEPS:-40}
N_PROPOSALS=${N_PROPOSALS:-20000}
BATCHES=${BATCHES:-"64 1024"}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
OUT_DIR=${OUT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/latflow-flow-compare.XXXXXX")}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
results="$OUT_DIR/results.tsv"
: >"$results"

log() { printf '[compare_flow_peers] %s\n' "$*" >&2; }
load() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?"; }

# ---------------------------------------------------------------- latflow
LATFLOW=${LATFLOW:-$root/target/release/latflow}
if [ "$LATFLOW" = "$root/target/release/latflow" ]; then
    log "cargo build --release (no-op when up to date)"
    if ! cargo build --release >"$OUT_DIR/build.log" 2>&1; then
        log "build failed; see $OUT_DIR/build.log"
        exit 1
    fi
fi
if [ ! -x "$LATFLOW" ]; then
    log "no latflow binary at $LATFLOW"
    exit 1
fi

# ---------------------------------------------------------------- peer and its python
peers=${PEERS_DIR:-$root/benches/peers}
PY=${PEER_PYTHON:-}
if [ -z "$PY" ]; then
    for p in /tmp/peervenv/bin/python "$root/.tools/peer-venv/bin/python" python3; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch, numpy' >/dev/null 2>&1; then PY=$p; break; fi
    done
fi
have_peer=1
if [ -z "$peers" ] || [ ! -f "$peers/$peer_script" ]; then
    log "peer scripts not found (set PEERS_DIR); the peer columns read n/a"; have_peer=0
elif [ -z "$PY" ] || ! "$PY" -c 'import torch, numpy' >/dev/null 2>&1; then
    log "no python with torch and numpy (set PEER_PYTHON); the peer columns read n/a"; have_peer=0
fi
log "theory $THEORY; output in $OUT_DIR; latflow $LATFLOW; peers ${peers:-none}; python ${PY:-none}; load $(load)"

# ---------------------------------------------------------------- cards
if [ "$THEORY" = u1 ]; then
    theory='[theory]
plugin = "u1"
lattice = [8, 8]
beta = 2.0'
    model='plugin = "flow-u1"
layers = 16
hidden = [8, 8]
kernel = 3
coupling = "ncp"
n_mix = 2
dtype = "f32"'
else
    theory='[theory]
plugin = "phi4"
lattice = [8, 8]
m2 = -4.0
lambda = 8.0'
    model='plugin = "flow-scalar"
layers = 16
hidden = [8, 8]
kernel = 3
dtype = "f32"'
fi

train_card() { # threads -> card path
    local c="$OUT_DIR/train_t$1.toml"
    cat >"$c" <<EOF
$theory

[model]
$model
weights = "$OUT_DIR/train_t$1.safetensors"

[train]
steps = $TRAIN_STEPS
batch = 64
learning_rate = 1e-3
checkpoint_every = 1000000

[[chain]]
kind = "flow"

[run]
seed = 1
measurements = 1
output = "$OUT_DIR/unused.h5"
threads = $1
EOF
    echo "$c"
}

reweight_card() { # threads batch -> card path
    local c="$OUT_DIR/rw_t$1_b$2.toml"
    cat >"$c" <<EOF
$theory

[model]
$model

[[chain]]
kind = "reweight"
batch = $2

[run]
seed = 1
thermalization = 0
measurements = $N_PROPOSALS
save_every = 0
checkpoint_every = 1000000000
checkpoint_seconds = 1000000
output = "$OUT_DIR/rw_t$1_b$2.h5"
threads = $1
EOF
    echo "$c"
}

record() { # round threads side metric value
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$results"
}

# ms per training step: median of the history's seconds column after the first 5 steps
history_median_ms() {
    awk -F, 'NR > 6 { print $NF }' "$1" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f\n", 1e3 * m }'
}

run_latflow() { # round threads
    local r=$1 t=$2 c w s e ms
    c=$(train_card "$t")
    w="$OUT_DIR/train_t$t.safetensors"
    rm -f "$w" "$w".*
    if RAYON_NUM_THREADS=$t timeout "$RUN_TIMEOUT" "$LATFLOW" train "$c" --force -q \
        >"$OUT_DIR/train_r${r}_t$t.log" 2>&1 && [ -f "$w.history.csv" ]; then
        ms=$(history_median_ms "$w.history.csv")
        record "$r" "$t" latflow train_ms "$ms"
        log "round $r T=$t latflow train step ${ms} ms (load $(load))"
    else
        record "$r" "$t" latflow train_ms nan
        log "round $r T=$t latflow train FAILED (see $OUT_DIR/train_r${r}_t$t.log)"
    fi
    for b in $BATCHES; do
        c=$(reweight_card "$t" "$b")
        rm -f "$OUT_DIR/rw_t${t}_b$b.h5" "$OUT_DIR/rw_t${t}_b$b.h5.ckpt"
        s=$(date +%s.%N)
        if RAYON_NUM_THREADS=$t timeout "$RUN_TIMEOUT" "$LATFLOW" run "$c" --force -q \
            >"$OUT_DIR/rw_r${r}_t${t}_b$b.log" 2>&1; then
            e=$(date +%s.%N)
            local rate
            rate=$(awk -v n="$N_PROPOSALS" -v s="$s" -v e="$e" 'BEGIN { printf "%.0f", n / (e - s) }')
            record "$r" "$t" latflow "rate_b$b" "$rate"
            log "round $r T=$t latflow reweight batch $b: $rate proposals/s (load $(load))"
        else
            record "$r" "$t" latflow "rate_b$b" nan
            log "round $r T=$t latflow reweight batch $b FAILED (see $OUT_DIR/rw_r${r}_t${t}_b$b.log)"
        fi
    done
}

# The peer's setup per theory: `layers`, `action(x)` and `sample(n) -> (x, log q)`.
if [ "$THEORY" = u1 ]; then
    peer_setup='
import u1_flow
L = 8
beta = 2.0
layers, plaq = u1_flow.build_model(torch, L)
def action(x):
    return -beta * torch.cos(plaq(x)).sum(dim=(1, 2))
def sample(n):
    return u1_flow.sample(torch, layers, n, L)
'
else
    peer_setup='
import phi4_flow
L = 8
layers = phi4_flow.build_model(torch, L)
action = phi4_flow.make_action(torch, -4.0, 8.0)
def sample(n):
    return phi4_flow.sample(torch, layers, n, L)
'
fi
peer_py='
import sys, time, json
sys.path.insert(0, sys.argv[1])
threads, steps, n, batches = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), [int(b) for b in sys.argv[5].split()]
import peerlib
from peerlib import np
torch = peerlib.torch_cpu(11, "float32", threads=threads)
'"$peer_setup"'
opt = torch.optim.Adam(layers.parameters(), lr=1e-3)
def step():
    opt.zero_grad()
    x, lq = sample(64)
    loss = (lq + action(x)).mean()
    loss.backward()
    opt.step()
    return loss.item()
step()
ts = []
for _ in range(steps):
    t0 = time.perf_counter(); step(); ts.append(time.perf_counter() - t0)
out = {"train_ms": 1e3 * float(np.median(ts))}
with torch.no_grad():
    for b in batches:
        sample(b)  # warm-up
        t0 = time.perf_counter()
        left = n
        while left > 0:
            k = min(b, left)
            x, lq = sample(k)
            s = action(x)
            float(s.sum() + lq.sum())
            left -= k
        out["rate_b%d" % b] = n / (time.perf_counter() - t0)
print(json.dumps(out))
'

run_peer() { # round threads
    local r=$1 t=$2 line
    if [ "$have_peer" != 1 ]; then
        record "$r" "$t" peer train_ms nan
        for b in $BATCHES; do record "$r" "$t" peer "rate_b$b" nan; done
        return
    fi
    if OMP_NUM_THREADS=$t MKL_NUM_THREADS=$t timeout "$RUN_TIMEOUT" "$PY" -c "$peer_py" "$peers" "$t" \
        "$PEER_STEPS" "$N_PROPOSALS" "$BATCHES" >"$OUT_DIR/peer_r${r}_t$t.log" 2>&1; then
        line=$(tail -n 1 "$OUT_DIR/peer_r${r}_t$t.log")
        local k v
        for k in train_ms $(for b in $BATCHES; do echo "rate_b$b"; done); do
            v=$(printf '%s' "$line" | "$PY" -c "import json,sys; print(json.load(sys.stdin).get('$k', float('nan')))" 2>/dev/null || echo nan)
            record "$r" "$t" peer "$k" "$v"
        done
        log "round $r T=$t peer $line (load $(load))"
    else
        record "$r" "$t" peer train_ms nan
        for b in $BATCHES; do record "$r" "$t" peer "rate_b$b" nan; done
        log "round $r T=$t peer FAILED (see $OUT_DIR/peer_r${r}_t$t.log)"
    fi
}

# ---------------------------------------------------------------- interleaved rounds
loads=() # 1-minute load average at the start of each round, and at the end
for r in $(seq 1 "$ROUNDS"); do
    loads+=("$(load | cut -d' ' -f1)")
    log "round $r/$ROUNDS, load $(load)"
    for t in $THREADS; do
        if [ $((r % 2)) = 1 ]; then run_latflow "$r" "$t"; run_peer "$r" "$t"
        else run_peer "$r" "$t"; run_latflow "$r" "$t"; fi
    done
done
loads+=("$(load | cut -d' ' -f1)")

# ---------------------------------------------------------------- table
# median (min–max) of a side/metric/threads over rounds; "n/a" when no finite value
stat() { # threads side metric fmt
    awk -F'\t' -v t="$1" -v s="$2" -v m="$3" '$2 == t && $3 == s && $4 == m && $5 != "nan" && $5 != "" { print $5 }' "$results" |
        sort -g | awk -v f="$4" '{ a[NR] = $1 } END {
            if (NR == 0) { print "n/a"; exit }
            m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
            printf f " (" f "–" f ")\n", m, a[1], a[NR] }'
}
# median over rounds of the per-round ratio latflow/peer (inverted for times)
ratio() { # threads metric invert(0/1)
    awk -F'\t' -v t="$1" -v m="$2" -v inv="$3" '$2 == t && $4 == m { v[$1 "," $3] = $5; r[$1] = 1 }
        END { for (k in r) { a = v[k ",latflow"]; b = v[k ",peer"];
            if (a != "" && b != "" && a != "nan" && b != "nan" && a + 0 > 0 && b + 0 > 0) print (inv ? b / a : a / b) } }' "$results" |
        sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) { print "n/a"; exit }
            m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.2f×\n", m }'
}

echo
if [ "$THEORY" = u1 ]; then flow_desc="U(1) flow, L = 8, β = 2, 16 NCP layers (2 components)"
else flow_desc="φ⁴ flow, L = 8, 16 affine layers"; fi
echo "$flow_desc, f32; $ROUNDS interleaved rounds, medians (min–max); 1-min load average at each round's start and at the end: ${loads[*]} (2 cores)"
echo
echo "| threads | metric | latflow | peer (torch) | latflow ÷ peer speed |"
echo "|---|---|---|---|---|"
for t in $THREADS; do
    echo "| $t | train step, ms (batch 64) | $(stat "$t" latflow train_ms %.2f) | $(stat "$t" peer train_ms %.2f) | $(ratio "$t" train_ms 1) |"
    for b in $BATCHES; do
        echo "| $t | proposals/s with log q + action, batch $b | $(stat "$t" latflow "rate_b$b" %.0f) | $(stat "$t" peer "rate_b$b" %.0f) | $(ratio "$t" "rate_b$b" 0) |"
    done
done
echo
echo "raw: $results"
