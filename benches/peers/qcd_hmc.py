#!/usr/bin/env python3
"""Nf = 2 Wilson pseudofermion HMC baseline for latflow's qcd plugin: PyTorch, complex128, on
the CPU. 2D Schwinger model (U(1), L x L) or 4D SU(3) (L^4).

Conventions are latflow's (plugins/qcd, core::gauge::fermion, docs/reference.md §6):
  links U[mu], a tensor of shape (d, L, ..., L, N, N) (N = 1 for U(1)), the last lattice axis
  is time, antiperiodic for the fermions (folded into the time links that cross the boundary);
  S_g = -(beta/N) sum_{x, mu<nu} Re Tr U_P;
  D = 1 - kappa sum_mu [(1 - g_mu) U_mu(x) d_{y,x+mu} + (1 + g_mu) U_mu(x-mu)^dag d_{y,x-mu}],
  2D: g_0 = s1, g_1 = s2, g_5 = s3; 4D: the DeGrand-Rossi basis, g_5 = diag(1, 1, -1, -1);
  D^dag = g5 D g5; spinors of shape (L, ..., L, N, Ns);
  one pseudofermion, S_pf = phi^dag (D^dag D)^-1 phi, heat bath phi = D^dag eta with
  eta ~ exp(-eta^dag eta) at the start of every trajectory;
  CG on D^dag D from a zero guess to the true relative residual |b - A x| / |b| < tol (--tol
  for the action at both ends of the trajectory, --force-tol for the forces); no even-odd
  preconditioning, no Hasenbusch masses;
  momenta P = i sum_a p^a T^a with p^a ~ N(0, 1) and H = sum p^2 / 2 + S (U(1): T = 1;
  SU(3): T^a = lambda^a / 2); a drift is U <- exp(eps P) U (exact: exp for U(1),
  torch.linalg.matrix_exp for SU(3));
  if moving a link as U -> (1 + dP) U changes S by Re Tr(dP M), the kick is
  P <- P + eps c AH(M), AH the anti-Hermitian (traceless for SU(3)) part, c = Tr T^a T^a
  (1 for U(1), 1/2 for SU(3)); gauge: M = -(beta/N) U A with A the staple sum; pseudofermion
  (X = (D^dag D)^-1 phi, Y = D X):
  M = 2 kappa U_mu(x) sum_s [((1 - g_mu) X(x+mu))_s (x) Y(x)_s^* + Y(x+mu)_s (x) ((1 + g_mu) X(x))_s^*].
Integrator: latflow's nested scheme, the pseudofermion outermost (--md-steps steps per
trajectory of length --tau) and the gauge action innermost (--inner-steps sub-steps per outer
drift), leapfrog (default) or Omelyan-2 on both levels, consecutive kicks of one level merged
into one force evaluation (leapfrog with n outer steps: n + 1 pseudofermion forces); then the
Metropolis test, and an accepted configuration is reunitarised.

Every Dirac operator application is vectorised over the lattice with torch.roll (no Python
loop over sites). Cold start (or --start FILE, an ILDG file of SU(3) links), --ntherm warm-up
trajectories, then --ntraj timed ones; the plaquette (mean Re Tr U_P / N) and the CG iterations
(every solve of the trajectory) are recorded per trajectory.

Run:  python3 qcd_hmc.py --group u1 --L 16 --beta 2 --kappa 0.25 --md-steps 10 --threads 1
      python3 qcd_hmc.py --group su3 --L 4 --beta 5.6 --kappa 0.15 --threads 1
      python3 qcd_hmc.py --check     (free-field log det D against docs/reference.md §6,
                                      gamma5-hermiticity, forces against finite differences)
Last stdout line: one JSON object (traj_per_s by wall clock, traj_per_cpu_s, acceptance,
mean_exp_minus_dH, plaquette with a binned error, CG iterations per trajectory, settings,
machine).
"""
import argparse
import math
import time

import peerlib
from peerlib import np

# gamma matrices as signed permutations: (gamma psi)_r = phase[r] * psi[col[r]]
GAMMA_2D = [([1, 0], [1, 1]), ([1, 0], [-1j, 1j])]
GAMMA_4D = [
    ([3, 2, 1, 0], [1j, 1j, -1j, -1j]),
    ([3, 2, 1, 0], [-1, 1, 1, -1]),
    ([2, 3, 0, 1], [1j, -1j, -1j, 1j]),
    ([2, 3, 0, 1], [1, 1, 1, 1]),
]
GAMMA5 = {2: [1.0, -1.0], 4: [1.0, 1.0, -1.0, -1.0]}


def su3_generators(torch):
    """T^a = lambda^a / 2 in Gell-Mann order, a (8, 3, 3) complex tensor."""
    lam = np.zeros((8, 3, 3), dtype=complex)
    for a, (i, j) in enumerate([(0, 1), (0, 2), (1, 2)]):
        lam[[0, 3, 5][a], i, j] = lam[[0, 3, 5][a], j, i] = 1.0
        lam[[1, 4, 6][a], i, j], lam[[1, 4, 6][a], j, i] = -1j, 1j
    lam[2] = np.diag([1.0, -1.0, 0.0])
    lam[7] = np.diag([1.0, 1.0, -2.0]) / math.sqrt(3.0)
    return torch.tensor(lam / 2.0, dtype=torch.complex128)


class NotConverged(RuntimeError):
    pass


class WilsonQcd:
    """Wilson gauge action plus one Nf = 2 Wilson pseudofermion on an L^d torus."""

    def __init__(self, torch, group, L, beta, kappa, tol=1e-10, force_tol=None, max_iter=10000):
        if group not in ("u1", "su3"):
            raise ValueError(f"--group must be u1 or su3, not {group!r}")
        if not (kappa > 0 and math.isfinite(kappa)):
            raise ValueError(f"--kappa must be a finite number > 0, got {kappa}")
        if L < 2:
            raise ValueError(f"--L must be at least 2, got {L}")
        self.torch, self.group, self.L, self.beta, self.kappa = torch, group, L, beta, kappa
        self.d = 2 if group == "u1" else 4
        self.nc = 1 if group == "u1" else 3
        self.ns = self.d
        self.c = 1.0 if group == "u1" else 0.5
        self.tol, self.force_tol, self.max_iter = tol, force_tol or tol, max_iter
        self.lat = (L,) * self.d
        cplx = torch.complex128
        gam = GAMMA_2D if self.d == 2 else GAMMA_4D
        self.gcol = [torch.tensor(c) for c, _ in gam]
        self.gph = [torch.tensor(p, dtype=cplx) for _, p in gam]
        self.g5 = torch.tensor(GAMMA5[self.d], dtype=cplx)
        # -1 on the time links from x_t = L-1 to x_t = 0 (antiperiodic fermions)
        bc = torch.ones((self.d,) + self.lat + (1, 1), dtype=cplx)
        bc[(self.d - 1,) + (slice(None),) * (self.d - 1) + (L - 1,)] = -1.0
        self.bc = bc
        self.T = su3_generators(torch) if group == "su3" else None
        self.eye = torch.eye(self.nc, dtype=cplx)
        self.iterations = 0

    # ---- small helpers -------------------------------------------------------------------
    def mm(self, a, b):
        return a * b if self.nc == 1 else a @ b

    @staticmethod
    def dag(m):
        return m.conj().transpose(-1, -2)

    def shift(self, field, mu, k=1):
        """field at x + k mu."""
        return self.torch.roll(field, shifts=-k, dims=mu)

    def gamma(self, mu, psi):
        return psi[..., self.gcol[mu]] * self.gph[mu]

    def ah(self, m):
        """Anti-Hermitian part, traceless for SU(3)."""
        a = 0.5 * (m - self.dag(m))
        if self.nc > 1:
            tr = a.diagonal(dim1=-2, dim2=-1).sum(-1) / self.nc
            a = a - tr[..., None, None] * self.eye
        return a

    # ---- gauge action --------------------------------------------------------------------
    def plaquette_sum(self, u):
        total = 0.0
        for mu in range(self.d):
            for nu in range(mu + 1, self.d):
                a = self.mm(u[mu], self.shift(u[nu], mu))
                b = self.mm(u[nu], self.shift(u[mu], nu))
                total = total + (a * b.conj()).real.sum()
        return float(total)

    def plaquette(self, u):
        planes = self.d * (self.d - 1) // 2
        return self.plaquette_sum(u) / (self.nc * planes * self.L ** self.d)

    def gauge_action(self, u):
        return -self.beta / self.nc * self.plaquette_sum(u)

    def gauge_m(self, u):
        """M of the gauge action for every link: -(beta/N) U_mu(x) A_mu(x)."""
        out = self.torch.empty_like(u)
        for mu in range(self.d):
            a = self.torch.zeros_like(u[mu])
            for nu in range(self.d):
                if nu == mu:
                    continue
                u_nu_fwd = self.shift(u[nu], mu)
                a = a + self.mm(self.mm(u_nu_fwd, self.dag(self.shift(u[mu], nu))), self.dag(u[nu]))
                lower = self.mm(self.dag(self.shift(u_nu_fwd, nu, -1)), self.dag(self.shift(u[mu], nu, -1)))
                a = a + self.mm(lower, self.shift(u[nu], nu, -1))
            out[mu] = (-self.beta / self.nc) * self.mm(u[mu], a)
        return out

    # ---- Wilson-Dirac operator -----------------------------------------------------------
    def fermion_links(self, u):
        return u * self.bc

    def hop(self, uf, psi):
        """sum_mu [(1 - g_mu) U_mu(x) psi(x+mu) + (1 + g_mu) U_mu(x-mu)^dag psi(x-mu)]."""
        out = self.torch.zeros_like(psi)
        for mu in range(self.d):
            fwd = self.mm(uf[mu], self.shift(psi, mu))
            bwd = self.shift(self.mm(self.dag(uf[mu]), psi), mu, -1)
            s = fwd + bwd
            out = out + s - self.gamma(mu, fwd - bwd)
        return out

    def apply_d(self, uf, psi):
        return psi - self.kappa * self.hop(uf, psi)

    def apply_ddag(self, uf, psi):
        return self.g5 * self.apply_d(uf, self.g5 * psi)

    def normal(self, uf, psi):
        return self.apply_ddag(uf, self.apply_d(uf, psi))

    @staticmethod
    def dot(a, b):
        """Re <a, b>."""
        return float((a.conj() * b).real.sum())

    def cg(self, uf, b, tol):
        """x = (D^dag D)^-1 b from a zero guess, to the true relative residual tol."""
        x = self.torch.zeros_like(b)
        bb = self.dot(b, b)
        if bb == 0.0:
            return x
        r, p = b.clone(), b.clone()
        rr = bb
        target = tol * tol * bb
        for it in range(1, self.max_iter + 1):
            ap = self.normal(uf, p)
            alpha = rr / self.dot(p, ap)
            x = x + alpha * p
            r = r - alpha * ap
            rr_new = self.dot(r, r)
            if rr_new < target:
                true = b - self.normal(uf, x)
                rr_true = self.dot(true, true)
                if rr_true < target:
                    self.iterations += it
                    return x
                r, rr_new = true, rr_true
            p = r + (rr_new / rr) * p
            rr = rr_new
        raise NotConverged(f"pseudofermion: CG did not reach {tol} in {self.max_iter} iterations "
                           f"(relative residual {math.sqrt(rr / bb):.3e})")

    def fermion_action(self, u, phi, tol=None):
        x = self.cg(self.fermion_links(u), phi, tol or self.tol)
        return self.dot(phi, x)

    def fermion_m(self, u, phi):
        """M of the pseudofermion action for every link."""
        uf = self.fermion_links(u)
        x = self.cg(uf, phi, self.force_tol)
        y = self.apply_d(uf, x)
        out = self.torch.empty_like(u)
        ydag = self.dag(y)
        for mu in range(self.d):
            xf = self.shift(x, mu)
            yf = self.shift(y, mu)
            w = (xf - self.gamma(mu, xf)) @ ydag + yf @ self.dag(x + self.gamma(mu, x))
            out[mu] = (2.0 * self.kappa) * self.mm(uf[mu], w)
        return out

    # ---- HMC pieces ----------------------------------------------------------------------
    def heatbath(self, u):
        shape = self.lat + (self.nc, self.ns)
        eta = self.torch.randn(shape, dtype=self.torch.complex128)  # E|eta|^2 = 1 per component
        return self.apply_ddag(self.fermion_links(u), eta)

    def momenta(self):
        shape = (self.d,) + self.lat
        if self.nc == 1:
            return 1j * self.torch.randn(shape + (1, 1), dtype=self.torch.float64).to(self.torch.complex128)
        p = self.torch.randn(shape + (8,), dtype=self.torch.float64).to(self.torch.complex128)
        return 1j * self.torch.einsum("...a,aij->...ij", p, self.T)

    def kinetic(self, p):
        return float((p.real ** 2 + p.imag ** 2).sum()) / (2.0 * self.c)

    def drift(self, u, p, eps):
        if self.nc == 1:
            return self.torch.exp(eps * p) * u
        return self.torch.linalg.matrix_exp(eps * p) @ u

    def reunitarise(self, u):
        if self.nc == 1:
            return u / u.abs()
        r0 = u[..., 0, :]
        r0 = r0 / self.torch.linalg.vector_norm(r0, dim=-1, keepdim=True)
        r1 = u[..., 1, :]
        r1 = r1 - (r0.conj() * r1).sum(-1, keepdim=True) * r0
        r1 = r1 / self.torch.linalg.vector_norm(r1, dim=-1, keepdim=True)
        c = [(1, 2), (2, 0), (0, 1)]
        r2 = self.torch.stack([(r0[..., i] * r1[..., j] - r0[..., j] * r1[..., i]).conj() for i, j in c], -1)
        return self.torch.stack([r0, r1, r2], -2)

    def cold(self):
        return self.eye.expand((self.d,) + self.lat + (self.nc, self.nc)).clone()


SCHEMES = {
    "leapfrog": [("kick", 0.5), ("drift", 1.0), ("kick", 0.5)],
    "omelyan2": [("kick", 0.1931833275037836), ("drift", 0.5), ("kick", 1.0 - 2 * 0.1931833275037836),
                 ("drift", 0.5), ("kick", 0.1931833275037836)],
}


def evolve(th, levels, u, p, phi, level, time_, scheme):
    """latflow's nested integrator: level 0 = pseudofermion, level 1 = gauge (innermost)."""
    n = levels[level]
    h = time_ / n
    innermost = level + 1 == len(levels)
    pending = 0.0

    def kick(u, p, eps):
        m = th.fermion_m(u, phi) if level == 0 else th.gauge_m(u)
        return p + (eps * th.c) * th.ah(m)

    for _ in range(n):
        for op, c in SCHEMES[scheme]:
            if op == "kick":
                pending += c
                continue
            if pending != 0.0:
                p = kick(u, p, pending * h)
                pending = 0.0
            if innermost:
                u = th.drift(u, p, c * h)
            else:
                u, p = evolve(th, levels, u, p, phi, level + 1, c * h, scheme)
    if pending != 0.0:
        p = kick(u, p, pending * h)
    return u, p


def trajectory(th, u, levels, tau, scheme):
    """One HMC trajectory; returns (u, dH, accepted, CG iterations)."""
    it0 = th.iterations
    phi = th.heatbath(u)
    p = th.momenta()
    h0 = th.kinetic(p) + th.gauge_action(u) + th.fermion_action(u, phi)
    v, p = evolve(th, levels, u, p, phi, 0, tau, scheme)
    h1 = th.kinetic(p) + th.gauge_action(v) + th.fermion_action(v, phi)
    dh = h1 - h0
    if not math.isfinite(dh):
        dh = math.inf
    accept = float(th.torch.rand((), dtype=th.torch.float64)) < math.exp(min(0.0, -dh))
    if accept:
        u = th.reunitarise(v)
    return u, dh, accept, th.iterations - it0


# ---- checks ---------------------------------------------------------------------------------
def read_ildg(th, path):
    """SU(3) links from an ILDG file (LIME record `ildg-binary-data`, 64-bit big-endian, sites t
    slowest and x fastest, then mu = 0..3, 3x3 row-major), as the peer's (4, L, L, L, L, 3, 3)
    tensor: latflow's axes (a0..a3) are ILDG's (x, y, z, t), so the site axes are reversed."""
    with open(path, "rb") as f:
        data = f.read()
    at, payload = 0, None
    while at + 144 <= len(data):
        magic, length = int.from_bytes(data[at:at + 4], "big"), int.from_bytes(data[at + 8:at + 16], "big")
        if magic != 0x456789AB:
            raise SystemExit(f"{path}: not a LIME file (bad magic number at offset {at})")
        kind = data[at + 16:at + 144].split(b"\0", 1)[0].decode("ascii", "replace")
        if kind == "ildg-binary-data":
            payload = data[at + 144:at + 144 + length]
        at += 144 + length + (-length) % 8
    n = th.L ** 4 * 4 * 9
    if payload is None or len(payload) != 16 * n:
        raise SystemExit(f"{path}: no 64-bit ildg-binary-data record for SU(3) on {th.L}^4")
    a = np.frombuffer(payload, dtype=">c16").astype(np.complex128).reshape((th.L,) * 4 + (4, 3, 3))
    u = th.torch.from_numpy(np.ascontiguousarray(np.transpose(a, (4, 3, 2, 1, 0, 5, 6))))
    return th.reunitarise(u)


def dense(th, u):
    """The dense matrix of D on the links u (columns: unit sources)."""
    torch = th.torch
    n = th.L ** th.d * th.nc * th.ns
    uf = th.fermion_links(u)
    eye = torch.eye(n, dtype=torch.complex128)
    cols = [th.apply_d(uf, eye[k].reshape(th.lat + (th.nc, th.ns))).reshape(-1) for k in range(n)]
    return torch.stack(cols, 1)


def free_log_det(d, L, kappa, nc):
    """Free-field log det D: sum_p ln[(1 - 2k sum cos p)^2 + 4k^2 sum sin^2 p]^(Ns/2) times N."""
    ks = [2 * math.pi * np.arange(L) / L] * (d - 1) + [2 * math.pi * (np.arange(L) + 0.5) / L]
    grids = np.meshgrid(*ks, indexing="ij")
    cs = sum(np.cos(g) for g in grids)
    sn = sum(np.sin(g) ** 2 for g in grids)
    return float(nc * (d / 2) * np.log((1 - 2 * kappa * cs) ** 2 + 4 * kappa ** 2 * sn).sum())


def random_links(th, spread):
    """exp(spread * random algebra element) on every link."""
    p = th.momenta()
    return th.drift(th.cold(), p, spread)


def check(args, torch):
    """Free-field log det D against docs/reference.md §6, gamma5-hermiticity, the free-field
    formula in 4D, and both forces against central finite differences."""
    rows, ok = [], True

    def record(name, value, expect, tol):
        nonlocal ok
        good = abs(value - expect) <= tol
        ok &= good
        rows.append({"check": name, "value": value, "expected": expect, "tolerance": tol, "ok": good})
        print(f"{'ok ' if good else 'BAD'} {name}: {value:.10f} (expected {expect:.10f})", flush=True)

    for L, kappa, ref in [(4, 0.25, 1.3478411184), (8, 0.25, 4.5113399914), (16, 0.276, 33.1493803706)]:
        th = WilsonQcd(torch, "u1", L, 1.0, kappa)
        ld = float(torch.linalg.slogdet(dense(th, th.cold()))[1])
        record(f"u1 {L}x{L} kappa={kappa} free log det D (reference)", ld, ref, 2e-9)
    th = WilsonQcd(torch, "su3", 2, 5.6, 0.15)
    ld = float(torch.linalg.slogdet(dense(th, th.cold()))[1])
    record("su3 2^4 kappa=0.15 free log det D (momentum-space formula)", ld, free_log_det(4, 2, 0.15, 3), 1e-9)
    for group, L in [("u1", 4), ("su3", 2)]:
        th = WilsonQcd(torch, group, L, 2.0 if group == "u1" else 5.6, 0.2)
        u = random_links(th, 0.7)
        m = dense(th, u)
        g5 = torch.diag(th.g5.repeat(th.L ** th.d * th.nc))
        record(f"{group} gamma5-hermiticity |g5 D g5 - D^dag|", float((g5 @ m @ g5 - m.conj().T).abs().max()), 0.0, 1e-13)
        phi = th.heatbath(u)
        p = th.momenta()
        for name, s_of, m_of in [("gauge", th.gauge_action, th.gauge_m),
                                 ("pseudofermion", lambda v: th.fermion_action(v, phi, 1e-12),
                                  lambda v: th.fermion_m(v, phi))]:
            th.force_tol = 1e-12
            predicted = float((p * m_of(u).transpose(-1, -2)).real.sum())  # sum Re Tr(P M)
            t = 1e-5
            fd = (s_of(th.drift(u, p, t)) - s_of(th.drift(u, p, -t))) / (2 * t)
            record(f"{group} {name} force: dS/dt against finite differences (relative)",
                   (fd - predicted) / max(abs(predicted), 1e-300), 0.0, 1e-6)
    return {"benchmark": "qcd_hmc_check", "ok": bool(ok), "checks": rows, "machine": peerlib.machine()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group", choices=["u1", "su3"], default="u1")
    ap.add_argument("--L", type=int, default=None, help="extent (default 16 for u1, 4 for su3)")
    ap.add_argument("--beta", type=float, default=None, help="default 2 for u1, 5.6 for su3")
    ap.add_argument("--kappa", type=float, default=None, help="default 0.25 for u1, 0.15 for su3")
    ap.add_argument("--md-steps", type=int, default=10, help="outer (pseudofermion) steps per trajectory")
    ap.add_argument("--inner-steps", type=int, default=2, help="gauge sub-steps per outer drift")
    ap.add_argument("--integrator", choices=sorted(SCHEMES), default="leapfrog")
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-10, help="CG relative residual, action and heat bath")
    ap.add_argument("--force-tol", type=float, default=None, help="CG relative residual, forces (default --tol)")
    ap.add_argument("--max-iter", type=int, default=10000)
    ap.add_argument("--ntherm", type=int, default=20, help="warm-up trajectories from the cold start")
    ap.add_argument("--ntraj", type=int, default=50, help="timed trajectories")
    ap.add_argument("--bin", type=int, default=10, help="bin size of the plaquette error")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--threads", type=int, default=peerlib.THREADS)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--start", default=None,
                    help="SU(3) only: start from this ILDG file (e.g. from latflow export --ildg) instead of cold")
    ap.add_argument("--check", action="store_true", help="run the correctness checks and exit")
    args = ap.parse_args()
    torch = peerlib.torch_cpu(args.seed, "float64", args.threads)
    if args.check:
        result = check(args, torch)
        result["tag"] = args.tag
        print(f"qcd_hmc checks: {'all passed' if result['ok'] else 'FAILED'}", flush=True)
        peerlib.report("qcd_hmc_check", result)
        raise SystemExit(0 if result["ok"] else 1)
    u1 = args.group == "u1"
    L = args.L or (16 if u1 else 4)
    beta = args.beta if args.beta is not None else (2.0 if u1 else 5.6)
    kappa = args.kappa if args.kappa is not None else (0.25 if u1 else 0.15)
    if args.md_steps < 1 or args.inner_steps < 1 or args.ntraj < 1:
        raise SystemExit("--md-steps, --inner-steps and --ntraj must be at least 1")
    th = WilsonQcd(torch, args.group, L, beta, kappa, args.tol, args.force_tol, args.max_iter)
    levels = [args.md_steps, args.inner_steps]
    u = th.cold()
    if args.start:
        if u1:
            raise SystemExit("--start reads ILDG files, which hold SU(3) links in 4D only")
        u = read_ildg(th, args.start)
        print(f"start: {args.start}, plaquette {th.plaquette(u):.10f}", flush=True)
    for _ in range(args.ntherm):
        u, _, _, _ = trajectory(th, u, levels, args.tau, args.integrator)
    dhs, plaq, iters, accepted = [], [], [], 0
    wall, cpu = peerlib.now(), time.process_time()
    for _ in range(args.ntraj):
        u, dh, acc, it = trajectory(th, u, levels, args.tau, args.integrator)
        dhs.append(dh)
        plaq.append(th.plaquette(u))
        iters.append(it)
        accepted += acc
    wall, cpu = peerlib.now() - wall, time.process_time() - cpu
    pm, pe = peerlib.binned_mean(plaq, args.bin) if args.ntraj >= 2 * args.bin else (float(np.mean(plaq)), None)
    emdh = np.exp(-np.array(dhs))
    result = {
        "benchmark": "qcd_hmc", "tag": args.tag,
        "settings": {"group": args.group, "L": L, "dim": th.d, "beta": beta, "kappa": kappa,
                     "md_steps": args.md_steps, "inner_steps": args.inner_steps, "integrator": args.integrator,
                     "tau": args.tau, "tol": th.tol, "force_tol": th.force_tol, "even_odd": False,
                     "ntherm": args.ntherm, "ntraj": args.ntraj, "seed": args.seed, "threads": args.threads,
                     "dtype": "complex128", "start": args.start or "cold"},
        "traj_per_s": args.ntraj / wall,
        "traj_per_cpu_s": args.ntraj / cpu,
        "seconds": wall,
        "acceptance": accepted / args.ntraj,
        "mean_exp_minus_dH": float(emdh.mean()),
        "mean_exp_minus_dH_err": float(emdh.std(ddof=1) / math.sqrt(len(emdh))) if len(emdh) > 1 else None,
        "plaquette": pm,
        "plaquette_err": pe,
        "plaquette_bin": args.bin,
        "plaquette_tau_int": peerlib.tau_int(plaq)["tau"] if args.ntraj >= 20 else None,
        "cg_iterations_per_traj": float(np.mean(iters)),
        "plaquette_series": plaq,
        "machine": peerlib.machine(),
    }
    name = "Schwinger" if u1 else "SU(3)"
    print(f"{name} {'x'.join([str(L)] * th.d)} beta={beta} kappa={kappa}: {result['traj_per_s']:.3f} traj/s "
          f"({result['traj_per_cpu_s']:.3f} per CPU second), acceptance {result['acceptance']:.3f}, "
          f"<exp(-dH)> {result['mean_exp_minus_dH']:.3f}, plaquette {pm:.5f}"
          + (f"({pe:.5f})" if pe else "") + f", {result['cg_iterations_per_traj']:.0f} CG iterations/traj",
          flush=True)
    peerlib.report("qcd_hmc", result)


if __name__ == "__main__":
    main()
