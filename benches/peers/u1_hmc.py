#!/usr/bin/env python3
"""2D U(1) HMC baseline for latflow's comparisons (docs/reference.md §3).

Links theta[mu](x), mu = 0, 1, on an L x L torus; the plaquette
  P(x) = theta0(x) + theta1(x+e0) - theta0(x+e1) - theta1(x),   S = -beta sum_x cos P(x).
Forces: dS/dtheta0(x) = beta [sin P(x) - sin P(x-e1)], dS/dtheta1(x) = beta [sin P(x-e0) - sin P(x)].
The momenta are real (U(1)'s Lie algebra), so the plain leapfrog of hmc.py applies.
Reports trajectories per second, acceptance, tau_int of the geometric charge
Q = sum_x wrap(P(x)) / 2pi and of S, and <cos P> and chi_top = <Q^2>/V against the exact
values of docs/reference.md §3 (L = 8: beta = 2: 0.6977746580, 0.01936404548).

Run:  python3 u1_hmc.py [--beta 2] [--backend numpy|torch] [--chains 1] [--ntraj 20000]
Last stdout line: one JSON object.
"""
import math

import hmc
import peerlib
from peerlib import np


class U1:
    def __init__(self, xp, beta):
        self.xp, self.beta = xp, beta

    def plaquette(self, th):  # th: (B, 2, L, L), axis 2 is x0, axis 3 is x1
        r = self.xp.roll
        return th[:, 0] + r(th[:, 1], -1, 1) - r(th[:, 0], -1, 2) - th[:, 1]

    def action(self, th):
        return -self.beta * self.xp.cos(self.plaquette(th)).sum(axis=(1, 2))

    def force(self, th):
        r = self.xp.roll
        s = self.xp.sin(self.plaquette(th))
        return self.beta * self.xp.stack((s - r(s, 1, 2), r(s, 1, 1) - s), 1)

    def measure(self, th):
        p = self.plaquette(th)
        p = p if self.xp is np else p.double().numpy()
        v = p.shape[1] * p.shape[2]
        wrapped = np.remainder(p + math.pi, 2 * math.pi) - math.pi
        q = wrapped.sum(axis=(1, 2)) / (2 * math.pi)
        return {"Q": q, "plaq": np.cos(p).mean(axis=(1, 2)), "S": -self.beta * np.cos(p).sum(axis=(1, 2)),
                "Q2V": q * q / v}


def main():
    ap = hmc.cli(__doc__)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.set_defaults(scan="4,5,6,8,10,12,15,20,25,30")
    args = ap.parse_args()
    arr = hmc.Arrays(args.backend, args.seed, args.dtype, args.threads)
    theory = U1(arr.xp, args.beta)
    th = 0.0 * arr.normal((args.chains, 2, args.L, args.L))  # the unit configuration
    n_md, scan, rec = hmc.tune_and_run(args, arr, theory, th, warmup_nmd=20)

    t_q, t_s = peerlib.tau_int(rec["Q"]), peerlib.tau_int(rec["S"])
    worst = max(t_q["tau"], t_s["tau"])
    bin_size = max(1, int(4 * worst)) if math.isfinite(worst) else args.ntraj
    plaq = peerlib.binned_mean(rec["plaq"].mean(axis=1), bin_size)
    chi = peerlib.binned_mean(rec["Q2V"].mean(axis=1), bin_size)
    result = hmc.common_result(args, n_md, scan, rec)
    result.update({
        "tag": args.tag or f"u1_hmc_beta{args.beta:g}_{args.backend}_B{args.chains}_t{args.threads}",
        "theory": {"L": args.L, "beta": args.beta},
        "tau_int_Q": t_q,
        "tau_int_S": t_s,
        "indep_samples_per_s": result["traj_per_s_total"] / (2 * worst),
        "plaquette": list(plaq),
        "chi_top": list(chi),
    })
    print(f"n_md {n_md} acceptance {rec['acceptance']:.3f} traj/s {result['traj_per_s_total']:.1f} "
          f"tauQ {t_q['tau']:.2f} tauS {t_s['tau']:.2f} <cos P> {plaq[0]:.5f} +- {plaq[1]:.5f} "
          f"chi_top {chi[0]:.5f} +- {chi[1]:.5f}", flush=True)
    peerlib.report("u1_hmc", result)


if __name__ == "__main__":
    main()
