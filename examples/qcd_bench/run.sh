#!/usr/bin/env bash
# Reproduces the table of README "Dynamical fermions: pseudofermion HMC against a PyTorch peer":
# latflow's qcd plugin against benches/peers/qcd_hmc.py, both on one thread, same action,
# integrator, step counts and CG tolerance.
#
#   cargo build --release                      # target/release/latflow and the plugins
#   examples/qcd_bench/run.sh [PART ...]       # PART: check schwinger su3_4 su3_8 kappa hasenbusch
#                                              # (default: all of them, about an hour on one core)
#   python3 examples/qcd_bench/summary.py OUT  # the table (reads OUT/*.json and OUT/*.time)
#
# Environment: LATFLOW (default target/release/latflow), LATFLOW_PEER_PYTHON (default python3,
# which needs torch and numpy), OUT (default qcd_bench_out/ in the repository root).
# Each latflow run writes OUT/TAG.toml (the card as run), OUT/TAG.h5, OUT/TAG.json
# (`latflow analyze --json`) and OUT/TAG.time (wall and CPU seconds of `latflow run`, the load
# average before and after); each peer run writes OUT/TAG.json (its JSON record) and OUT/TAG.out.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
latflow=${LATFLOW:-$root/target/release/latflow}
py=${LATFLOW_PEER_PYTHON:-python3}
peer=$root/benches/peers/qcd_hmc.py
out=${OUT:-$root/qcd_bench_out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -x "$latflow" ] || { echo "run.sh: $latflow not found; run cargo build --release first" >&2; exit 1; }

# lf TAG CARD [SED-EXPRESSION ...]: runs the card (output OUT/TAG.h5, the sed expressions
# applied to it), timing the whole `latflow run -q`.
lf() {
    local tag=$1 card=$2
    shift 2
    local args=(-e "s|^output = .*|output = \"$tag.h5\"|")
    for e in "$@"; do args+=(-e "$e"); done
    sed "${args[@]}" "$here/$card" > "$out/$tag.toml"
    local load0 t0 t1
    load0=$(cut -d' ' -f1-3 /proc/loadavg)
    t0=$(date +%s.%N)
    (cd "$out" && TIMEFORMAT='%U %S' && { time "$latflow" run -q --force "$tag.toml" > "$tag.log" 2>&1; } 2> "$tag.cpu")
    t1=$(date +%s.%N)
    printf 'wall %s\ncpu %s\nload_start %s\nload_end %s\n' "$(echo "$t1 - $t0" | bc)" \
        "$(awk '{print $1 + $2}' "$out/$tag.cpu")" "$load0" "$(cut -d' ' -f1-3 /proc/loadavg)" > "$out/$tag.time"
    "$latflow" analyze --json "$out/$tag.h5" > "$out/$tag.json"
    echo "latflow $tag: $(tr '\n' ' ' < "$out/$tag.time")"
}

# peer TAG ARGS...: the PyTorch peer on one thread.
peer() {
    local tag=$1
    shift
    PEER_RESULTS_DIR=$out "$py" "$peer" --threads 1 --tag "$tag" "$@" > "$out/$tag.out"
    head -n -1 "$out/$tag.out"
}

start() { echo "/^\[run\]/a start = { file = \"$1\" }"; }

# therm N: a sed script for a warm-up run of N sweeps that stores only its last configuration
# (N - 1 thermalisation sweeps, then one measured sweep; save_every = 1).
therm() { echo "s/^thermalization = .*/thermalization = $(($1 - 1))/; s/^measurements = .*/measurements = 1/; s/^save_every = .*/save_every = 1/"; }

part_check() {
    PEER_RESULTS_DIR=$out "$py" "$peer" --check --threads 1 --tag peer_check > "$out/peer_check.out"
    head -n -1 "$out/peer_check.out"
    # plaquette cross-check on 8x8 (beta = 2, kappa = 0.25)
    lf lf_u1_8 schwinger8.toml
    peer peer_u1_8 --group u1 --L 8 --beta 2 --kappa 0.25 --md-steps 10 --inner-steps 2 \
        --ntherm 50 --ntraj 800 --bin 40 --seed 11
}

part_schwinger() {
    # 100 warm-up trajectories from the cold start, then 300 timed ones from their end
    lf lf_u1_16_therm schwinger16.toml "$(therm 10)"
    lf lf_u1_16 schwinger16.toml "$(start lf_u1_16_therm.h5)"
    lf lf_u1_16_eo schwinger16.toml "$(start lf_u1_16_therm.h5)" 's/^even_odd = false/even_odd = true/'
    peer peer_u1_16 --group u1 --L 16 --beta 2 --kappa 0.25 --md-steps 10 --inner-steps 2 \
        --ntherm 20 --ntraj 60 --bin 10
}

# su3 L CARD MEAS_THERM PEER_NTRAJ: latflow warm-up from the cold start, the timed runs from its
# last configuration, and the peer from the same configuration (as an ILDG file).
su3() {
    local L=$1 card=$2 therm=$3 ntraj=$4
    lf "lf_su3_${L}_therm" "$card" "$(therm "$therm")"
    rm -rf "$out/ildg_$L"
    "$latflow" export "$out/lf_su3_${L}_therm.h5" --ildg "$out/ildg_$L/"
    lf "lf_su3_$L" "$card" "$(start "lf_su3_${L}_therm.h5")"
    lf "lf_su3_${L}_eo" "$card" "$(start "lf_su3_${L}_therm.h5")" 's/^even_odd = false/even_odd = true/'
    peer "peer_su3_$L" --group su3 --L "$L" --beta 5.6 --kappa 0.15 --md-steps 8 --inner-steps 6 \
        --ntherm 0 --ntraj "$ntraj" --bin 1 --start "$(ls "$out/ildg_$L"/*.lime | head -1)"
}

part_su3_4() { su3 4 su3_4.toml 10 20; }
part_su3_8() { su3 8 su3_8.toml 8 2; }

part_kappa() {
    # 50 warm-up and 100 measured trajectories from the cold start per point
    for k in 0.20 0.23 0.25 0.26 0.27; do
        for eo in false true; do
            lf "lf_kappa_${k}_eo_$eo" schwinger16.toml "s/^kappa = .*/kappa = $k/" "s/^even_odd = .*/even_odd = $eo/" \
                's/^thermalization = .*/thermalization = 5/' 's/^measurements = .*/measurements = 10/'
        done
    done
}

part_hasenbusch() {
    # against the kappa = 0.27 even-odd run of part_kappa (10 steps), and with both step counts
    # moved towards equal acceptance: 14 steps without, 4 with the Hasenbusch mass
    lf lf_hasenbusch schwinger16_hasenbusch.toml 's/^thermalization = .*/thermalization = 5/'
    lf lf_hasenbusch_md4 schwinger16_hasenbusch.toml 's/^thermalization = .*/thermalization = 5/' 's/^md_steps = .*/md_steps = 4/'
    lf lf_kappa_0.27_eo_true_md14 schwinger16.toml 's/^kappa = .*/kappa = 0.27/' 's/^even_odd = .*/even_odd = true/' \
        's/^thermalization = .*/thermalization = 5/' 's/^measurements = .*/measurements = 10/' 's/^md_steps = .*/md_steps = 14/'
}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(check schwinger su3_4 su3_8 kappa hasenbusch)
for p in "${parts[@]}"; do
    case $p in
        check | schwinger | su3_4 | su3_8 | kappa | hasenbusch) "part_$p" ;;
        *) echo "run.sh: unknown part '$p' (expected check, schwinger, su3_4, su3_8, kappa or hasenbusch)" >&2; exit 2 ;;
    esac
done
echo "results in $out; the table: python3 $here/summary.py $out"
