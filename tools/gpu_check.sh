#!/usr/bin/env bash
# The flow plugins on a CUDA GPU, in one run: the device-agreement tests, exactness end to end,
# and training-step times against the PyTorch peers on the same GPU and the same CPU.
# A check and benchmark for a machine with an NVIDIA GPU, not a test: never run it in CI.
#
# What it needs (nothing is built or installed here):
#   LATFLOW              the latflow binary
#   LATFLOW_PLUGIN_PATH  a folder with the phi4 and u1 theory plugins and flow-scalar and flow-u1
#                        built with `--features cuda` (README, "GPU")
#   TEST_BINS            the two plugins' test binaries, built with
#                        `cargo test --release -p latflow-flow-scalar -p latflow-flow-u1
#                        --features latflow-flow-scalar/cuda,latflow-flow-u1/cuda --no-run`
#   PEER_PYTHON          a python with torch (with CUDA) and numpy (default python3)
#   CPU_THREADS          threads for the CPU rows (default: all cores)
#   STEPS                training steps per timing (default 30; the median skips the first 5)
#   SIZES                "L:batch ..." for the timings (default "8:64 32:256")
#   GPU_DEVICE           the model's device in the GPU rows (default cuda; cpu for a dry run)
#   SECTIONS             which sections run (default "tests exactness timings")
#   EXACT                the theories of the exactness section (default "phi4 u1")
#   SIDES                the timing columns that run (default "latflow-gpu peer-gpu latflow-cpu
#                        peer-cpu"; the others print "-")
# Usage: tools/gpu_check.sh [OUT_DIR]      (default /tmp/gpu_check)
#
# Sections of OUT_DIR/summary.txt:
#   tests      each plugin's `cuda_*` tests: the model on the GPU against the same model on the
#              CPU through the Model trait (proposals, log q, log q of the CPU's proposals, the
#              round trip on the GPU, a training batch's gradient, three Adam steps), f64 and
#              f32, every coupling.
#   exactness  `latflow run --train` on the GPU of φ⁴ at the tutorial point (L = 8, m² = −4,
#              λ = 8, flow-Metropolis) and of 2D U(1) at β = 2, L = 8, against the reference
#              values in their cards (the run's own z-scores).
#   timings    median ms per training step (sample, log q, action and its gradient, backward,
#              Adam) for latflow on the GPU, latflow on the CPU, the peer on the GPU and the peer
#              on the CPU, same architecture (16 couplings, CNN 8-8, kernel 3, f32), per theory,
#              L and batch. latflow's figure is the median of its history's `seconds` column,
#              the peer's its own median (both skip the first 5 steps).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${1:-/tmp/gpu_check}
LATFLOW=${LATFLOW:-$root/target/release/latflow}
PY=${PEER_PYTHON:-python3}
CPU_THREADS=${CPU_THREADS:-$(nproc)}
STEPS=${STEPS:-30}
SIZES=${SIZES:-"8:64 32:256"}
TEST_BINS=${TEST_BINS:-}
GPU=${GPU_DEVICE:-cuda}
SECTIONS=${SECTIONS:-"tests exactness timings"}
EXACT=${EXACT:-"phi4 u1"}
SIDES=${SIDES:-"latflow-gpu peer-gpu latflow-cpu peer-cpu"}
has() { case " $1 " in *" $2 "*) return 0 ;; esac; return 1; }
mkdir -p "$OUT_DIR"
work=$(mktemp -d)
summary="$OUT_DIR/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }

say "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$summary"
say "cpus $(nproc), CPU rows with $CPU_THREADS threads; $("$LATFLOW" --version 2>&1)"

has "$SECTIONS" tests && say "== tests"
has "$SECTIONS" tests && for t in $TEST_BINS; do
    name=$(basename "$t")
    timeout 240 "$t" cuda --test-threads 1 --nocapture >"$OUT_DIR/tests_$name.log" 2>&1
    rc=$?
    grep -E '^test |test result|Deviations|panicked' "$OUT_DIR/tests_$name.log" | tee -a "$summary"
    say "$name: exit $rc"
done

# theory_toml THEORY L -> the [theory] section; model_toml THEORY DEVICE -> the [model] section
theory_toml() {
    case $1 in
    phi4) printf '[theory]\nplugin = "phi4"\nlattice = [%s, %s]\nm2 = -4.0\nlambda = 8.0\n' "$2" "$2" ;;
    u1) printf '[theory]\nplugin = "u1"\nlattice = [%s, %s]\nbeta = 2.0\n' "$2" "$2" ;;
    esac
}
model_toml() {
    case $1 in
    phi4) printf '[model]\nplugin = "flow-scalar"\nweights = "%s"\nlayers = 16\nhidden = [8, 8]\nkernel = 3\ndtype = "f32"\ndevice = "%s"\n' "$3" "$2" ;;
    u1) printf '[model]\nplugin = "flow-u1"\nweights = "%s"\nlayers = 16\nhidden = [8, 8]\nkernel = 3\ncoupling = "ncp"\nn_mix = 2\ndtype = "f32"\ndevice = "%s"\n' "$3" "$2" ;;
    esac
}
reference_toml() {
    case $1 in
    phi4) printf '[reference]\nchi2 = [0.7442, 0.0012]\nabs_magnetization = [0.08705, 0.00008]\nphi2 = [0.14348, 0.00002]\n' ;;
    # 2D U(1), L = 8, beta = 2: the character expansion (docs/reference.md §3)
    u1) printf '[reference]\nplaquette = 0.6977746580\ntopological_susceptibility = 0.01936404548\n' ;;
    esac
}

has "$SECTIONS" exactness && say "== exactness (GPU: training, then a flow-Metropolis chain)"
has "$SECTIONS" exactness && for th in $EXACT; do
    c="$work/exact_$th.toml"
    {
        theory_toml $th 8
        model_toml $th "$GPU" "$work/exact_$th.safetensors"
        # the tutorial's budget for φ⁴ (2500 steps); U(1) at β = 2 needs less
        printf '[train]\nsteps = %s\nbatch = 64\nlearning_rate = 1e-3\n' "$([ $th = phi4 ] && echo 2500 || echo 1000)"
        printf '[[chain]]\nkind = "flow"\nbatch = 256\n'
        printf '[run]\nseed = 3\nthermalization = 1000\nmeasurements = 50000\nsave_every = 0\noutput = "%s"\nthreads = %s\n' \
            "$work/exact_$th.h5" "$CPU_THREADS"
        reference_toml $th
    } >"$c"
    s=$(date +%s.%N)
    timeout 240 "$LATFLOW" run --train "$c" >"$OUT_DIR/exact_$th.log" 2>&1
    rc=$?
    e=$(date +%s.%N)
    say "$th: exit $rc, $(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.0f", e - s }') s"
    grep -v -E '^\s*$|%|\[=|it/s' "$OUT_DIR/exact_$th.log" | tail -n 25 | tee -a "$summary"
done

# median ms of a history file's `seconds` column after the first 5 steps
history_median_ms() {
    awk -F, 'NR > 6 { print $NF }' "$1" | sort -g | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.2f\n", 1e3 * m }'
}

latflow_ms() { # theory L batch device -> ms per step
    local c="$work/t_$1_$2_$3_$4.toml" w="$work/t_$1_$2_$3_$4.safetensors"
    {
        theory_toml "$1" "$2"
        model_toml "$1" "$4" "$w"
        printf '[train]\nsteps = %s\nbatch = %s\nlearning_rate = 1e-3\ncheckpoint_every = 1000000\n' "$STEPS" "$3"
        printf '[[chain]]\nkind = "flow"\n'
        printf '[run]\nseed = 1\nmeasurements = 1\noutput = "%s"\nthreads = %s\n' "$work/unused.h5" "$CPU_THREADS"
    } >"$c"
    if RAYON_NUM_THREADS=$CPU_THREADS timeout 150 "$LATFLOW" train "$c" --force -q \
        >"$OUT_DIR/train_$1_$2_$3_$4.log" 2>&1 && [ -f "$w.history.csv" ]; then
        history_median_ms "$w.history.csv"
    else
        echo "failed"
    fi
}

peer_ms() { # theory L batch device -> ms per step
    local script=phi4_flow.py
    [ "$1" = u1 ] && script=u1_flow.py
    if timeout 150 "$PY" "$root/benches/peers/$script" --L "$2" --batch "$3" --device "$4" --steps "$STEPS" \
        --n-eval 1000 --threads "$CPU_THREADS" >"$OUT_DIR/peer_$1_$2_$3_$4.log" 2>&1; then
        tail -1 "$OUT_DIR/peer_$1_$2_$3_$4.log" | "$PY" -c 'import json, sys; print("%.2f" % json.load(sys.stdin)["training"]["step_ms_median"])'
    else
        echo "failed"
    fi
}

has "$SECTIONS" timings && say "== timings: ms per training step (f32; peer = PyTorch, same architecture)"
has "$SECTIONS" timings && say "theory L batch | latflow GPU | peer GPU | latflow CPU | peer CPU"
has "$SECTIONS" timings && for th in phi4 u1; do
    for sz in $SIZES; do
        L=${sz%:*} B=${sz#*:}
        a=- b=- c=- d=-
        has "$SIDES" latflow-gpu && a=$(latflow_ms $th "$L" "$B" "$GPU")
        has "$SIDES" peer-gpu && b=$(peer_ms $th "$L" "$B" "$GPU")
        has "$SIDES" latflow-cpu && c=$(latflow_ms $th "$L" "$B" cpu)
        has "$SIDES" peer-cpu && d=$(peer_ms $th "$L" "$B" cpu)
        say "$th $L $B | $a | $b | $c | $d"
    done
done
rm -rf "$work"
