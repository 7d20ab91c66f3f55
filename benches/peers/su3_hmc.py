#!/usr/bin/env python3
"""SU(3) pure-gauge HMC baseline in 4D (Wilson action) for latflow's comparisons: PyTorch,
complex128, on the CPU.

Conventions are latflow's (plugins/sun and core::gauge):
  links U[mu], a tensor of shape (4, L, L, L, L, 3, 3), the last lattice axis is time;
  S = -(beta/3) sum_{x, mu<nu} Re Tr U_P(x; mu, nu),
  U_P(x; mu, nu) = U_mu(x) U_nu(x+mu) U_mu(x+nu)^dag U_nu(x)^dag;
  momenta P = i sum_a p^a T^a with T^a = lambda^a/2 and p^a ~ N(0, 1), so that
  H = sum p^2/2 + S = -sum Tr P^2 + S;
  the force of a link is F = (beta/6) TA(U A), A its staple sum and TA the traceless
  anti-Hermitian part; a kick is P <- P - eps F, a drift U <- matrix_exp(eps P) U.
Leapfrog: half kick, (drift, kick) n-1 times, drift, half kick; then the Metropolis test,
and every link is reunitarised (Gram-Schmidt on the rows, third row the conjugate cross
product), as latflow does at the end of each trajectory.

Setup as latflow's sun_bench: cold start, --ntherm trajectories with --therm-nmd steps, then
--ntraj timed trajectories with --nmd steps and tau = 1. The plaquette (mean Re Tr U_P / 3) is
recorded after every trajectory (it comes with the action, so it costs nothing extra).

Run:  python3 su3_hmc.py [--L 4] [--beta 5.7] [--nmd 15] [--ntraj 100] [--threads 1]
Last stdout line: one JSON object (traj_per_s by wall clock, traj_per_cpu_s by process CPU
time, acceptance, mean_exp_minus_dH, plaquette with a naive error, settings, machine).
"""
import argparse
import math
import time

import peerlib
from peerlib import np


def generators(torch):
    """T^a = lambda^a / 2, a = 1..8 in Gell-Mann order, as a (8, 3, 3) complex tensor."""
    lam = np.zeros((8, 3, 3), dtype=complex)
    for a, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)]):
        lam[[0, 3, 5][a], i, j] = lam[[0, 3, 5][a], j, i] = 1.0
        lam[[1, 4, 6][a], i, j], lam[[1, 4, 6][a], j, i] = -1j, 1j
    lam[2] = np.diag([1.0, -1.0, 0.0])
    lam[7] = np.diag([1.0, 1.0, -2.0]) / math.sqrt(3.0)
    return torch.tensor(lam / 2.0, dtype=torch.complex128)


class WilsonSu3:
    """The Wilson gauge action of SU(3) links on an L^4 torus."""

    def __init__(self, torch, L, beta):
        self.torch, self.L, self.beta = torch, L, beta
        self.T = generators(torch)

    def up(self, field, mu, k=1):
        """field at x + k mu (roll along lattice axis mu)."""
        return self.torch.roll(field, shifts=-k, dims=mu)

    @staticmethod
    def dag(m):
        return m.conj().transpose(-1, -2)

    def plaquette_sum(self, u):
        """sum_{x, mu<nu} Re Tr U_P = sum Re Tr[(U_mu(x) U_nu(x+mu)) (U_nu(x) U_mu(x+nu))^dag]."""
        total = 0.0
        for mu in range(4):
            for nu in range(mu + 1, 4):
                a = u[mu] @ self.up(u[nu], mu)
                b = u[nu] @ self.up(u[mu], nu)
                total = total + (a * b.conj()).real.sum()
        return total

    def action(self, u):
        """(S, plaquette sum)."""
        p = self.plaquette_sum(u)
        return -self.beta / 3.0 * p, p

    def force(self, u):
        """F_mu(x) = (beta/6) TA(U_mu(x) A_mu(x)) with A the staple sum."""
        f = self.torch.empty_like(u)
        for mu in range(4):
            a = self.torch.zeros_like(u[mu])
            for nu in range(4):
                if nu == mu:
                    continue
                u_nu_fwd = self.up(u[nu], mu)  # U_nu(x + mu)
                a = a + u_nu_fwd @ self.dag(self.up(u[mu], nu)) @ self.dag(u[nu])
                lower = self.dag(self.up(u_nu_fwd, nu, -1)) @ self.dag(self.up(u[mu], nu, -1))
                a = a + lower @ self.up(u[nu], nu, -1)
            m = u[mu] @ a
            ah = 0.5 * (m - self.dag(m))
            tr = ah.diagonal(dim1=-2, dim2=-1).sum(-1) / 3.0
            ah = ah - tr[..., None, None] * self.torch.eye(3, dtype=u.dtype)
            f[mu] = (self.beta / 6.0) * ah
        return f

    def momenta(self, shape):
        p = self.torch.randn(shape + (8,), dtype=self.torch.float64)
        return 1j * self.torch.einsum("...a,aij->...ij", p.to(self.torch.complex128), self.T)

    @staticmethod
    def kinetic(p):
        """-sum Tr P^2 = sum |P_ij|^2 for anti-Hermitian P."""
        return (p.real ** 2 + p.imag ** 2).sum()

    def reunitarise(self, u):
        r0 = u[..., 0, :]
        r0 = r0 / self.torch.linalg.vector_norm(r0, dim=-1, keepdim=True)
        r1 = u[..., 1, :]
        r1 = r1 - (r0.conj() * r1).sum(-1, keepdim=True) * r0
        r1 = r1 / self.torch.linalg.vector_norm(r1, dim=-1, keepdim=True)
        c = [(1, 2), (2, 0), (0, 1)]
        r2 = self.torch.stack([(r0[..., i] * r1[..., j] - r0[..., j] * r1[..., i]).conj() for i, j in c], -1)
        return self.torch.stack([r0, r1, r2], -2)


def trajectory(torch, th, u, s_old, p_old, n_md, tau):
    """One leapfrog trajectory and Metropolis test; returns (u, S, plaquette sum, dH, accepted)."""
    eps = tau / n_md
    p = th.momenta(tuple(u.shape[:-2]))
    h_old = th.kinetic(p) + s_old
    v = u
    p = p - 0.5 * eps * th.force(v)
    for step in range(n_md):
        v = torch.linalg.matrix_exp(eps * p) @ v
        if step + 1 < n_md:
            p = p - eps * th.force(v)
    p = p - 0.5 * eps * th.force(v)
    s_new, p_new = th.action(v)
    dh = float(th.kinetic(p) + s_new - h_old)
    accept = math.isfinite(dh) and float(torch.rand((), dtype=torch.float64)) < math.exp(min(0.0, -dh))
    if accept:
        v = th.reunitarise(v)
        return v, float(s_new), float(p_new), dh, True
    return u, s_old, p_old, dh, False


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, default=4)
    ap.add_argument("--beta", type=float, default=5.7)
    ap.add_argument("--nmd", type=int, default=15, help="leapfrog steps of the timed trajectories")
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--ntherm", type=int, default=30, help="warm-up trajectories from the cold start")
    ap.add_argument("--therm-nmd", type=int, default=40, help="leapfrog steps of the warm-up trajectories")
    ap.add_argument("--ntraj", type=int, default=100, help="timed trajectories")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=peerlib.THREADS)
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    torch = peerlib.torch_cpu(args.seed, "float64", args.threads)
    th = WilsonSu3(torch, args.L, args.beta)
    shape = (4,) + (args.L,) * 4
    u = torch.eye(3, dtype=torch.complex128).expand(shape + (3, 3)).clone()
    s, ps = th.action(u)
    s, ps = float(s), float(ps)
    for _ in range(args.ntherm):
        u, s, ps, _, _ = trajectory(torch, th, u, s, ps, args.therm_nmd, args.tau)
    dhs, plaq, accepted = [], [], 0
    norm = 18.0 * args.L ** 4
    wall, cpu = peerlib.now(), time.process_time()
    for _ in range(args.ntraj):
        u, s, ps, dh, acc = trajectory(torch, th, u, s, ps, args.nmd, args.tau)
        dhs.append(dh)
        plaq.append(ps / norm)
        accepted += acc
    wall, cpu = peerlib.now() - wall, time.process_time() - cpu
    plaq = np.array(plaq)
    result = {
        "benchmark": "su3_hmc", "tag": args.tag,
        "settings": {"L": args.L, "beta": args.beta, "nmd": args.nmd, "tau": args.tau, "ntherm": args.ntherm,
                     "therm_nmd": args.therm_nmd, "ntraj": args.ntraj, "seed": args.seed, "threads": args.threads,
                     "dtype": "complex128", "start": "cold"},
        "traj_per_s": args.ntraj / wall,
        "traj_per_cpu_s": args.ntraj / cpu,
        "seconds": wall,
        "acceptance": accepted / args.ntraj,
        "mean_exp_minus_dH": float(np.mean(np.exp(-np.array(dhs)))),
        "plaquette": float(plaq.mean()),
        "plaquette_naive_err": float(plaq.std(ddof=1) / math.sqrt(len(plaq))) if len(plaq) > 1 else None,
        "machine": peerlib.machine(),
    }
    print(f"SU(3) {args.L}^4 beta={args.beta}: {result['traj_per_s']:.2f} traj/s "
          f"({result['traj_per_cpu_s']:.2f} per CPU second), acceptance {result['acceptance']:.3f}, "
          f"<exp(-dH)> {result['mean_exp_minus_dH']:.3f}, plaquette {result['plaquette']:.4f}", flush=True)
    peerlib.report("su3_hmc", result)


if __name__ == "__main__":
    main()
