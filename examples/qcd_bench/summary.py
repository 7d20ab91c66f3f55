#!/usr/bin/env python3
"""Prints the tables of README "Dynamical fermions: pseudofermion HMC against a PyTorch peer"
from the output directory of run.sh (default qcd_bench_out/): latflow's cards as run
(TAG.toml), timings (TAG.time), `latflow analyze --json` (TAG.json) and per-trajectory step
records (TAG.h5, read with h5py), and the peer's JSON records.

Rates: trajectories / wall seconds of the whole `latflow run` (start-up, measurements and file
writing included) and trajectories / CPU seconds; for the peer its timed loop. Acceptance of
latflow's pf_hmc steps is the mean of the metropolis_accepted column.

Run:  python3 examples/qcd_bench/summary.py [OUT]
"""
import json
import math
import os
import sys
import tomllib

import h5py
import numpy as np


def latflow(out, tag):
    """A latflow run's figures, or None when it is missing."""
    if not os.path.exists(os.path.join(out, f"{tag}.time")):
        return None
    with open(os.path.join(out, f"{tag}.toml"), "rb") as f:
        card = tomllib.load(f)
    times = {}
    for line in open(os.path.join(out, f"{tag}.time")):
        key, _, value = line.partition(" ")
        times[key] = value.strip()
    repeat = card["chain"][0].get("repeat", 1)
    ntraj = (card["run"]["thermalization"] + card["run"]["measurements"]) * repeat
    analysis = json.load(open(os.path.join(out, f"{tag}.json")))
    with h5py.File(os.path.join(out, f"{tag}.h5"), "r") as f:
        step = f["steps/pf_hmc"]
        acc = np.asarray(step["metropolis_accepted"])
        iters = np.asarray(step["cg_iterations"])
    wall, cpu = float(times["wall"]), float(times["cpu"])
    obs = analysis["observables"]
    return {
        "ntraj": ntraj, "wall": wall, "cpu": cpu, "per_s": ntraj / wall, "per_cpu_s": ntraj / cpu,
        "load": times["load_start"].split()[0] + "–" + times["load_end"].split()[0],
        "acceptance": float(acc.mean()), "cg_traj": float(iters.mean()),
        "cg_action": obs["cg_iterations"]["mean"],
        "plaquette": (obs["plaquette"]["mean"], obs["plaquette"]["error"]),
        "exp_mdh": analysis["steps"]["pf_hmc"]["exp_minus_delta_h"],
    }


def peer(out, tag):
    path = os.path.join(out, f"{tag}.json")
    if not os.path.exists(path):
        return None
    r = json.load(open(path))
    r["load"] = f"{r['load_end'][0]} (at the end)"
    return r


def speed_table(out):
    print("| setup | code | trajectories | traj/s (wall) | traj/CPU s | latflow ÷ peer (wall, CPU) "
          "| acceptance | CG iterations/traj | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    setups = [("Schwinger 16², β = 2, κ = 0.25", "lf_u1_16", "peer_u1_16"),
              ("SU(3) 4⁴, β = 5.6, κ = 0.15", "lf_su3_4", "peer_su3_4"),
              ("SU(3) 8⁴, β = 5.6, κ = 0.15", "lf_su3_8", "peer_su3_8")]
    for name, lf_tag, peer_tag in setups:
        p = peer(out, peer_tag)
        for label, r in [("latflow", latflow(out, lf_tag)), ("latflow even-odd", latflow(out, lf_tag + "_eo"))]:
            if r is None:
                continue
            ratio = (f"{r['per_s'] / p['traj_per_s']:.1f}×, {r['per_cpu_s'] / p['traj_per_cpu_s']:.1f}×"
                     if p else "–")
            print(f"| {name} | {label} | {r['ntraj']} | {r['per_s']:.3g} | {r['per_cpu_s']:.3g} | {ratio} "
                  f"| {r['acceptance']:.2f} | {r['cg_traj']:.0f} | {r['load']} |")
        if p:
            print(f"| {name} | PyTorch peer | {p['settings']['ntraj']} | {p['traj_per_s']:.3g} "
                  f"| {p['traj_per_cpu_s']:.3g} | 1 | {p['acceptance']:.2f} | {p['cg_iterations_per_traj']:.0f} "
                  f"| {p['load']} |")


def kappa_table(out):
    print("\n| κ | CG its per solve: plain | even-odd | its/traj: plain | even-odd | traj/CPU s: plain "
          "| even-odd | even-odd speed-up | acceptance: plain, even-odd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in ["0.20", "0.23", "0.25", "0.26", "0.27"]:
        a, b = latflow(out, f"lf_kappa_{k}_eo_false"), latflow(out, f"lf_kappa_{k}_eo_true")
        if a is None or b is None:
            continue
        print(f"| {k} | {a['cg_action']:.0f} | {b['cg_action']:.0f} | {a['cg_traj']:.0f} | {b['cg_traj']:.0f} "
              f"| {a['per_cpu_s']:.3g} | {b['per_cpu_s']:.3g} | {b['per_cpu_s'] / a['per_cpu_s']:.2f}× "
              f"| {a['acceptance']:.2f}, {b['acceptance']:.2f} |")
    print("\n| κ = 0.27, even-odd | outer steps | CG its/traj | traj/CPU s | acceptance | ⟨e^{−ΔH}⟩ "
          "| accepted traj/CPU s |")
    print("|---|---|---|---|---|---|---|")
    for label, tag in [("no Hasenbusch mass", "lf_kappa_0.27_eo_true"), ("no Hasenbusch mass", "lf_kappa_0.27_eo_true_md14"),
                       ("Hasenbusch κ₁ = 0.24", "lf_hasenbusch"), ("Hasenbusch κ₁ = 0.24", "lf_hasenbusch_md4")]:
        r = latflow(out, tag)
        if r is None:
            continue
        with open(os.path.join(out, f"{tag}.toml"), "rb") as f:
            chain = tomllib.load(f)["chain"][0]
        steps = "/".join(str(n) for n in [chain["md_steps"]] + chain.get("inner_steps", []))
        print(f"| {label} | {steps} | {r['cg_traj']:.0f} | {r['per_cpu_s']:.3g} | {r['acceptance']:.2f} "
              f"| {r['exp_mdh'][0]:.3f}({r['exp_mdh'][1] * 1000:.0f}) | {r['per_cpu_s'] * r['acceptance']:.3g} |")


def checks(out):
    c = peer(out, "peer_check")
    if c:
        for row in c["checks"]:
            print(f"check {'ok ' if row['ok'] else 'BAD'} {row['check']}: {row['value']:.10f} "
                  f"(expected {row['expected']:.10f})")
    a, p = latflow(out, "lf_u1_8"), peer(out, "peer_u1_8")
    if a and p:
        (m1, e1), m2, e2 = a["plaquette"], p["plaquette"], p["plaquette_err"]
        z = (m1 - m2) / math.hypot(e1, e2)
        print(f"plaquette 8x8 beta=2 kappa=0.25: latflow {m1:.5f}({e1:.5f}) [{a['ntraj']} traj], peer {m2:.5f}({e2:.5f}) "
              f"[{p['settings']['ntraj']} traj], z = {z:+.2f}; <exp(-dH)>: latflow {a['exp_mdh'][0]:.4f}({a['exp_mdh'][1]:.4f}), "
              f"peer {p['mean_exp_minus_dH']:.4f}({p['mean_exp_minus_dH_err']:.4f})")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..", "qcd_bench_out")
    checks(out)
    print()
    speed_table(out)
    kappa_table(out)


if __name__ == "__main__":
    main()
