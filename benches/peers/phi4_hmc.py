#!/usr/bin/env python3
"""φ⁴ HMC baseline for latflow's comparisons (tools/compare_peers.sh).

The theory is latflow's phi4 plugin (docs/reference.md §2, convention B), 2D, periodic:
  S = sum_x [ sum_mu (phi(x+mu) - phi(x))^2 + m2 phi^2 + lam phi^4 ]
  dS/dphi(x) = 2 m2 phi + 4 lam phi^3 + 2 sum_mu (2 phi(x) - phi(x+mu) - phi(x-mu))
Defaults: the tutorial point L = 8, m2 = -4, lam = 8. Leapfrog, tau = 1.
Reports trajectories per second (measurements included, summed over chains), acceptance,
<exp(-dH)>, tau_int of |M|/V and of S, and chi2 = <M^2>/V (reference 0.7442(12)).

Run:  python3 phi4_hmc.py [--backend numpy|torch] [--chains 1] [--ntraj 20000] [--nmd N]
Last stdout line: one JSON object.
"""
import hmc
import peerlib
from peerlib import np


class Phi4:
    def __init__(self, xp, m2, lam):
        self.xp, self.m2, self.lam = xp, m2, lam

    def neighbours(self, phi):
        """sum_mu (phi(x+mu) + phi(x-mu))"""
        r = self.xp.roll
        return r(phi, 1, 1) + r(phi, -1, 1) + r(phi, 1, 2) + r(phi, -1, 2)

    def action(self, phi):
        r = self.xp.roll
        kinetic = (r(phi, -1, 1) - phi) ** 2 + (r(phi, -1, 2) - phi) ** 2
        return (kinetic + self.m2 * phi ** 2 + self.lam * phi ** 4).sum(axis=(1, 2))

    def force(self, phi):
        return (2 * self.m2 + 8.0) * phi + 4 * self.lam * phi ** 3 - 2 * self.neighbours(phi)

    def measure(self, phi):
        v = phi.shape[1] * phi.shape[2]
        m = phi.sum(axis=(1, 2))
        to_np = (lambda a: a) if self.xp is np else (lambda a: a.double().numpy())
        return {"absM": np.abs(to_np(m)) / v, "S": to_np(self.action(phi))}


def main():
    ap = hmc.cli(__doc__)
    ap.add_argument("--m2", type=float, default=-4.0)
    ap.add_argument("--lam", type=float, default=8.0)
    args = ap.parse_args()
    arr = hmc.Arrays(args.backend, args.seed, args.dtype, args.threads)
    theory = Phi4(arr.xp, args.m2, args.lam)
    phi = 0.1 * arr.normal((args.chains, args.L, args.L))
    n_md, scan, rec = hmc.tune_and_run(args, arr, theory, phi, warmup_nmd=20)

    t_abs_m, t_s = peerlib.tau_int(rec["absM"]), peerlib.tau_int(rec["S"])
    worst = max(t_abs_m["tau"], t_s["tau"])
    volume = args.L * args.L
    chi2 = peerlib.binned_mean((volume * rec["absM"] ** 2).mean(axis=1), max(1, int(4 * worst)))  # M^2/V
    result = hmc.common_result(args, n_md, scan, rec)
    result.update({
        "tag": args.tag or f"phi4_hmc_{args.backend}_B{args.chains}_t{args.threads}",
        "theory": {"L": args.L, "m2": args.m2, "lam": args.lam},
        "tau_int_absM": t_abs_m,
        "tau_int_S": t_s,
        "indep_samples_per_s": result["traj_per_s_total"] / (2 * worst),
        "chi2": list(chi2),
        "chi2_reference": [0.7442, 0.0012],
    })
    print(f"n_md {n_md} acceptance {rec['acceptance']:.3f} traj/s {result['traj_per_s_total']:.1f} "
          f"tau|M| {t_abs_m['tau']:.2f} tauS {t_s['tau']:.2f} chi2 {chi2[0]:.4f} +- {chi2[1]:.4f}", flush=True)
    peerlib.report("phi4_hmc", result)


if __name__ == "__main__":
    main()
