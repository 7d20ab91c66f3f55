#!/usr/bin/env python3
"""2D SU(N) gauge-equivariant spectral flow baseline (N = 2, 3) for latflow's comparisons
(`sun_flow_bench`): the same architecture as latflow's flow-sun model with its defaults
(after Boyda et al., PRD 103, 074504 (2021)).

Links: a complex tensor (B, 2, L, L, N, N), U_mu(x) at [:, mu, x0, x1]; plaquettes
P(x) = U_0(x) U_1(x+e0) U_0(x+e1)^dag U_1(x)^dag. Prior: Haar on every link (complex Gaussian
matrix, QR with the phases of diag R, divided by det^(1/N)); log q is a density with respect to
the normalised Haar measure, so the prior has log q = 0 and log Z-hat estimates the log Z of
the normalised measure (docs/reference.md §4) directly.

16 coupling layers. Layer i moves direction mu = i mod 2 with stripe offset o = (i // 2) mod 4;
with c(x) = x_{1-mu} and class = (c - o) mod 4:
  active links      U_mu(x), class 0: U <- R U with R = W' W^dag, so that the loop W becomes W'
  active loops      the plaquette that starts at the active link: W = P(x) (mu = 0), P(x)^dag (mu = 1)
  passive plaquettes class 3: change as a consequence, neither read nor in the log-det
  frozen plaquettes class 1, 2: the CNN reads Re Tr P/N (and Im Tr P/N for SU(3)) there and
                     the identity's (1[, 0]) elsewhere
CNN: Conv C -> 8 -> 8 -> (N-1)(3K+1), kernel 3, circular padding, LeakyReLU between, K = 8.
Spectral coupling: the eigenphases of W sorted into the Weyl alcove (theta_0 >= ... , sum 0);
coordinates u = (theta_0 - theta_{N-1})/2pi and, for SU(3), v = (theta_0 - theta_1)/(theta_0 -
theta_2); u' = g_u(u) [, v' = g_v(v)], rational-quadratic splines of [0, 1] onto itself with K
bins (K widths and K heights through min + (1 - K min) softmax, K + 1 knot derivatives through
softplus(. + c) + min, min = 1e-3, c such that zero parameters give the identity);
log J = ln g_u' [+ ln g_v' + ln(u'/u)] + ln w(theta') - ln w(theta), w the Weyl density
prod_{i<j} 4 sin^2((theta_i - theta_j)/2). R = V e^{i(theta' - theta)} V^dag is built as a
polynomial in W by Lagrange interpolation in Newton form with divided differences from
half-angle sines (not torch.linalg.eig). The SU(2) phase is atan2(sqrt((Im a)^2 + |b|^2), Re a);
the SU(3) phases come from Tr W by Cardano's formula polished by Newton steps, with the
implicit-function derivative in a custom autograd function (as latflow's closed form);
`--check` compares them with torch.linalg.eigvals.
The theory is latflow's sun with the Wilson action, S = -(beta/N) sum_x Re Tr P(x).
Training: reverse KL, batch 64, Adam 1e-3. Evaluation: proposals give the ESS per sample, the
flow-Metropolis acceptance, tau_int of S and the plaquette along that chain.

Run:  python3 sun_flow.py [--n 3] [--L 8] [--beta 2] [--steps 300] [--threads 1] [--check]
Last stdout line: one JSON object.
"""
import argparse
import math

import flowlib
import peerlib
from peerlib import np

TWO_PI = 2 * math.pi
MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))
NEWTON_STEPS = 8


def dag(m):
    return m.conj().transpose(-1, -2)


def plaquettes(torch, links):
    """P(x) for links (B, 2, L, L, N, N) -> (B, L, L, N, N)."""
    u0, u1 = links[:, 0], links[:, 1]
    return u0 @ torch.roll(u1, -1, 1) @ dag(torch.roll(u0, -1, 2)) @ dag(u1)


def re_trace(m):
    return m.diagonal(dim1=-2, dim2=-1).sum(-1).real


def haar(torch, shape, n):
    """Haar-random SU(n) matrices of shape (*shape, n, n), complex in the default dtype."""
    z = torch.complex(torch.randn(*shape, n, n), torch.randn(*shape, n, n)) / math.sqrt(2)
    q, r = torch.linalg.qr(z)
    d = r.diagonal(dim1=-2, dim2=-1)
    q = q * (d / d.abs()).unsqueeze(-2)
    det = torch.linalg.det(q)
    root = torch.polar(torch.ones_like(det.real), det.angle() / n).to(q.dtype)
    return q / root[..., None, None]


def su3_roots(torch, t):
    """The three roots of l^3 - t l^2 + conj(t) l - 1 (t complex128, shape (M,)): Cardano, then
    Newton steps, normalised to |l| = 1."""
    p = t.conj() - t * t / 3
    q = -2.0 / 27 * t ** 3 + (t.abs() ** 2 / 3 - 1)
    sq = torch.sqrt(q * q / 4 + p ** 3 / 27)
    a1, a2 = -q / 2 + sq, -q / 2 - sq
    a3 = torch.where(a1.abs() >= a2.abs(), a1, a2)
    a = torch.where(a3.abs() > 0, torch.polar(a3.abs() ** (1 / 3), a3.angle() / 3), torch.zeros_like(a3))
    b = torch.where(a.abs() > 0, -p / 3 / torch.where(a.abs() > 0, a, torch.ones_like(a)), torch.zeros_like(a))
    w = complex(math.cos(TWO_PI / 3), math.sin(TWO_PI / 3))
    shift = t / 3
    roots = torch.stack([a + b + shift, w * a + w.conjugate() * b + shift, w.conjugate() * a + w * b + shift], -1)
    tt = t[:, None]
    for _ in range(NEWTON_STEPS):
        f = ((roots - tt) * roots + tt.conj()) * roots - 1
        df = (3 * roots - 2 * tt) * roots + tt.conj()
        ok = df.abs() > 0
        step = torch.where(ok, f / torch.where(ok, df, torch.ones_like(df)), torch.zeros_like(df))
        roots = roots - torch.where(torch.isfinite(step), step, torch.zeros_like(step))
    return roots / roots.abs()


def alcove(torch, th):
    """Phases (M, 3) with sum in {-2pi, 0, 2pi} -> the alcove representative (descending, sum 0,
    spread <= 2pi)."""
    th, _ = torch.sort(th, dim=-1, descending=True)
    turns = torch.round(th.sum(-1) / TWO_PI)
    th = th.clone()
    th[:, 0] -= TWO_PI * (turns >= 1)
    th[:, 2] += TWO_PI * (turns <= -1)
    for _ in range(3):
        th, _ = torch.sort(th, dim=-1, descending=True)
        wide = (th[:, 0] - th[:, 2] > TWO_PI).to(th.dtype)
        th = th + TWO_PI * wide[:, None] * th.new_tensor([-1.0, 0.0, 1.0])
    th, _ = torch.sort(th, dim=-1, descending=True)
    return th - th.mean(-1, keepdim=True)


def su3_phase_function(torch):
    class Su3Phases(torch.autograd.Function):
        """(Re Tr W, Im Tr W) (M,) each -> alcove phases (M, 3); backward by implicit
        differentiation of p(l_k) = 0: d theta_k/d Re t = Im((l_k - 1)/p'(l_k)),
        d theta_k/d Im t = Re((l_k + 1)/p'(l_k))."""

        @staticmethod
        def forward(ctx, tre, tim):
            t = torch.complex(tre.double(), tim.double())
            th = alcove(torch, su3_roots(torch, t).angle())
            ctx.save_for_backward(th)
            return th.to(tre.dtype)

        @staticmethod
        def backward(ctx, grad):
            (th,) = ctx.saved_tensors
            lam = torch.polar(torch.ones_like(th), th)
            dp = torch.stack([(lam[:, k] - lam[:, (k + 1) % 3]) * (lam[:, k] - lam[:, (k + 2) % 3]) for k in range(3)], -1)
            dre = ((lam - 1) / dp).imag
            dim = ((lam + 1) / dp).real
            g = grad.double()
            return (g * dre).sum(-1).to(grad.dtype), (g * dim).sum(-1).to(grad.dtype)

    return Su3Phases


def phases(torch, w, n, su3):
    """Alcove phases (B, A, n) of w (B, A, n, n)."""
    if n == 2:
        a, b = w[..., 0, 0], w[..., 0, 1]
        s = torch.sqrt(a.imag ** 2 + b.real ** 2 + b.imag ** 2)
        phi = torch.atan2(s, a.real)
        return torch.stack([phi, -phi], -1)
    t = w.diagonal(dim1=-2, dim2=-1).sum(-1)
    shape = t.shape
    return su3.apply(t.real.reshape(-1), t.imag.reshape(-1)).reshape(*shape, 3)


def knot_positions(torch, raw):
    k = raw.shape[-1]
    w = MIN_BIN + (1 - k * MIN_BIN) * torch.softmax(raw, -1)
    zeros = torch.zeros_like(raw[..., :1])
    return torch.cat([zeros, torch.cumsum(w, -1)[..., : k - 1], zeros + 1], -1)


def spline(torch, v, raw, k, inverse):
    """The rational-quadratic spline of [0, 1] (or its inverse) with parameters raw (..., 3k+1)
    at v (...): (image, ln |derivative| of the map applied)."""
    xs = knot_positions(torch, raw[..., :k])
    ys = knot_positions(torch, raw[..., k: 2 * k])
    ds = torch.nn.functional.softplus(raw[..., 2 * k:] + DERIVATIVE_SHIFT) + MIN_DERIVATIVE
    src = ys if inverse else xs
    idx = (v.detach()[..., None] >= src[..., 1:k].detach()).sum(-1, keepdim=True)
    pick = lambda t, j: t.gather(-1, idx + j).squeeze(-1)  # noqa: E731
    x0, x1, y0, y1, d0, d1 = pick(xs, 0), pick(xs, 1), pick(ys, 0), pick(ys, 1), pick(ds, 0), pick(ds, 1)
    xw, yh = x1 - x0, y1 - y0
    delta = yh / xw
    if inverse:
        dy = v - y0
        s = d0 + d1 - 2 * delta
        a = yh * (delta - d0) + dy * s
        b = yh * d0 - dy * s
        c = -delta * dy
        sq = torch.sqrt(torch.relu(b * b - 4 * a * c))
        pos = b >= 0
        theta = torch.where(pos, 2 * c / torch.where(pos, -b - sq, -torch.ones_like(b)),
                            (sq - b) / (2 * torch.where(pos, torch.ones_like(a), a)))
        out = x0 + theta * xw
    else:
        theta = (v - x0) / xw
        t1 = theta * (1 - theta)
        out = y0 + yh * (delta * theta ** 2 + d0 * t1) / (delta + (d0 + d1 - 2 * delta) * t1)
    t1 = theta * (1 - theta)
    num = delta ** 2 * (d1 * theta ** 2 + 2 * delta * t1 + d0 * (1 - theta) ** 2)
    den = delta + (d0 + d1 - 2 * delta) * t1
    ld = torch.log(num) - 2 * torch.log(den)
    return out, (-ld if inverse else ld)


def from_coordinates(torch, u, v):
    if v is None:
        return torch.stack([math.pi * u, -math.pi * u], -1)
    beta = u * v
    alpha = u - beta
    c = TWO_PI / 3
    return torch.stack([c * (alpha + 2 * beta), c * (alpha - beta), -c * (2 * alpha + beta)], -1)


def log_weyl(torch, u, v):
    ln_sin = lambda x: torch.log(torch.sin(math.pi * x))  # noqa: E731
    s = ln_sin(u)
    if v is not None:
        beta = u * v
        s = s + ln_sin(beta) + ln_sin(u - beta)
    return 2 * s


def rotation(torch, w, th, to, n):
    """R = V e^{i(to - th)} V^dag as a polynomial in w (Newton form)."""
    dl = to - th
    cis = lambda x: torch.polar(torch.ones_like(x), x)  # noqa: E731
    lam = [cis(th[..., k]) for k in range(n)]

    def divided(i, j):
        phase = 0.5 * (dl[..., i] + dl[..., j] - th[..., i] - th[..., j])
        ratio = torch.sin(0.5 * (dl[..., i] - dl[..., j])) / torch.sin(0.5 * (th[..., i] - th[..., j]))
        return cis(phase) * ratio

    d01 = divided(0, 1)
    c0 = cis(dl[..., 0]) - d01 * lam[0]
    eye = torch.eye(n, dtype=w.dtype)
    mat = lambda c: c[..., None, None]  # noqa: E731
    if n == 2:
        return mat(c0) * eye + mat(d01) * w
    d012 = (divided(1, 2) - d01) / (lam[2] - lam[0])
    c1 = d01 - d012 * (lam[0] + lam[1])
    c0 = c0 + d012 * lam[0] * lam[1]
    return mat(c0) * eye + mat(c1) * w + mat(d012) * (w @ w)


def couple(torch, w, raw, n, k, inverse, su3):
    """The spectral coupling of loops w (B, A, n, n) with parameters raw (B, A, (n-1)(3k+1)):
    (R with output = R input, ln J (B, A) of the map applied, w.r.t. Haar)."""
    th = phases(torch, w, n, su3)
    u = (th[..., 0] - th[..., n - 1]) / TWO_PI
    v = (th[..., 0] - th[..., 1]) / (th[..., 0] - th[..., 2]) if n == 3 else None
    p = 3 * k + 1
    u2, ld = spline(torch, u, raw[..., :p], k, inverse)
    v2 = None
    if v is not None:
        v2, ldv = spline(torch, v, raw[..., p: 2 * p], k, inverse)
        ld = ld + ldv + torch.log(u2) - torch.log(u)
    to = from_coordinates(torch, u2, v2)
    ld = ld + log_weyl(torch, u2, v2) - log_weyl(torch, u, v)
    return rotation(torch, w, th, to, n), ld


def build_model(torch, L, n, n_layers=16, hidden=(8, 8), kernel=3, period=4, bins=8):
    """The coupling layers (a torch.nn.ModuleList; each maps links -> (links, ln J) and has
    .inverse) for an L x L lattice, L a multiple of `period`."""
    nn = torch.nn
    grid = torch.arange(L)
    su3 = su3_phase_function(torch) if n == 3 else None
    channels = 1 if n == 2 else 2

    class SpectralCoupling(nn.Module):
        def __init__(self, mu, offset):
            super().__init__()
            across = (grid[None, :] if mu == 0 else grid[:, None]).expand(L, L)  # c(x) = x_{1-mu}
            phase = (across - offset) % period
            self.mu = mu
            self.register_buffer("frozen", (phase >= 1) & (phase <= period - 2))
            self.active = tuple(torch.nonzero(phase == 0, as_tuple=True))
            self.net = flowlib.conditioner(torch, channels, hidden, (n - 1) * (3 * bins + 1), kernel)

        def apply(self, links, inverse):
            p = plaquettes(torch, links)
            tr = p.diagonal(dim1=-2, dim2=-1).sum(-1) / n
            feats = [torch.where(self.frozen, tr.real, torch.ones_like(tr.real))]
            if n == 3:
                feats.append(torch.where(self.frozen, tr.imag, torch.zeros_like(tr.imag)))
            raw = self.net(torch.stack(feats, 1))[:, :, self.active[0], self.active[1]].transpose(1, 2)
            u = links[:, self.mu]
            ua = u[:, self.active[0], self.active[1]]
            w = p[:, self.active[0], self.active[1]]
            if self.mu == 1:
                w = dag(w)
            r, ld = couple(torch, w, raw, n, bins, inverse, su3)
            moved = u.clone()
            moved[:, self.active[0], self.active[1]] = r @ ua
            links = torch.stack([moved if m == self.mu else links[:, m] for m in (0, 1)], 1)
            return links, ld.sum(1)

        def forward(self, links):
            return self.apply(links, False)

        def inverse(self, links):
            return self.apply(links, True)

    return nn.ModuleList([SpectralCoupling(i % 2, (i // 2) % period) for i in range(n_layers)])


def sample(torch, layers, b, L, n):
    """b draws (b, 2, L, L, n, n) and their log q (normalised Haar measure)."""
    z = haar(torch, (b, 2, L, L), n)
    return flowlib.push(layers, z, torch.zeros(b))


def pull_back(layers, links):
    """The inverse flow: (z, sum of ln J of the inverse layers) = (F^-1(U), log q(U))."""
    log_q = 0
    for layer in reversed(layers):
        links, ld = layer.inverse(links)
        log_q = log_q + ld
    return links, log_q


def wilson(beta, n):
    return lambda torch, links: -(beta / n) * re_trace(plaquettes(torch, links)).sum(dim=(1, 2))


def checks(torch, L, n, seed):
    """Cheap numerical checks in float64 (the default dtype must be float64)."""
    out = {}
    layers = build_model(torch, L, n)
    with torch.no_grad():
        z = haar(torch, (4, 2, L, L), n)
        eye = torch.eye(n, dtype=z.dtype)
        u, lq = flowlib.push(layers, z, torch.zeros(4))
        out["su_n_deviation"] = float(((u @ dag(u) - eye).abs().amax() + (torch.linalg.det(u) - 1).abs().amax()).item())
        back, lq_back = pull_back(layers, u)
        out["round_trip_max_abs"] = float((back - z).abs().max().item())
        out["round_trip_log_q_diff"] = float((lq - lq_back).abs().max().item())
        g = haar(torch, (4, L, L), n)
        shifted = lambda mu: torch.roll(g, -1, 1 + mu)  # noqa: E731
        gauge = lambda x: torch.stack([g @ x[:, mu] @ dag(shifted(mu)) for mu in (0, 1)], 1)  # noqa: E731
        ug, lqg = flowlib.push(layers, gauge(z), torch.zeros(4))
        out["equivariance_max_abs"] = float((ug - gauge(u)).abs().max().item())
        out["equivariance_log_q_diff"] = float((lqg - lq).abs().max().item())
        w = plaquettes(torch, z).reshape(1, -1, n, n)
        ours = phases(torch, w, n, su3_phase_function(torch) if n == 3 else None).reshape(-1, n)
        ref = torch.linalg.eigvals(w.reshape(-1, n, n)).angle()
        ref = alcove(torch, ref) if n == 3 else torch.sort(ref.abs(), -1, descending=True)[0] * torch.tensor([1.0, -1.0])
        out["phases_vs_eigvals_max_abs"] = float((ours - ref).abs().max().item())
    if n == 3:
        tr = plaquettes(torch, z).diagonal(dim1=-2, dim2=-1).sum(-1).reshape(-1)[:32]
        args = (tr.real.clone().requires_grad_(), tr.imag.clone().requires_grad_())
        out["su3_phase_gradcheck_ok"] = float(torch.autograd.gradcheck(su3_phase_function(torch).apply, args))
    with torch.no_grad():
        for p in layers.parameters():
            p.zero_()
        u0, lq0 = flowlib.push(layers, z, torch.zeros(4))
        out["zero_params_log_q_max_abs"] = float(lq0.abs().max().item())
        out["zero_params_identity_max_abs"] = float((u0 - z).abs().max().item())
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3, choices=[2, 3])
    ap.add_argument("--L", type=int, default=8)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n-eval", type=int, default=4096)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=peerlib.THREADS)
    ap.add_argument("--check", action="store_true", help="only the numerical checks (float64)")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    if args.L % 4 != 0:
        ap.error(f"--L must be a multiple of the mask period 4, got {args.L}")
    if args.check:
        torch = peerlib.torch_cpu(args.seed, "float64", args.threads)
        result = {"tag": args.tag or f"sun_flow_check_su{args.n}", "theory": {"n": args.n, "L": args.L},
                  "checks": checks(torch, args.L, args.n, args.seed), "machine": peerlib.machine()}
        print(" ".join(f"{k} {v:.2e}" for k, v in result["checks"].items()), flush=True)
        peerlib.report("sun_flow", result)
        return
    torch = peerlib.torch_cpu(args.seed, args.dtype, args.threads)
    L, n = args.L, args.n
    layers = build_model(torch, L, n)
    act = wilson(args.beta, n)
    action = lambda x: act(torch, x)  # noqa: E731
    draw = lambda b: sample(torch, layers, b, L, n)  # noqa: E731
    times, losses = flowlib.train(torch, layers, draw, action, args.steps)

    # evaluation on real views (flowlib converts the proposals to float64 numpy arrays)
    def draw_real(b):
        x, lq = draw(b)
        return torch.view_as_real(x), lq

    def np_plaq(x):
        c = x[..., 0] + 1j * x[..., 1]
        u0, u1 = c[:, 0], c[:, 1]
        p = u0 @ np.roll(u1, -1, 1) @ np.conj(np.swapaxes(np.roll(u0, -1, 2), -1, -2)) @ np.conj(np.swapaxes(u1, -1, -2))
        return np.trace(p, axis1=-2, axis2=-1).real / n

    observables = {
        "S": lambda x: -args.beta * np_plaq(x).sum(axis=(1, 2)),
        "plaq": lambda x: np_plaq(x).mean(axis=(1, 2)),
    }
    ev = flowlib.evaluate(torch, draw_real, lambda x: action(torch.view_as_complex(x)), observables, args.n_eval,
                          args.seed)
    result = {
        "tag": args.tag or f"sun_flow_su{n}_L{L}_beta{args.beta:g}_{args.dtype}_t{args.threads}",
        "theory": {"n": n, "L": L, "beta": args.beta, "action": "wilson"},
        "model": {"layers": 16, "hidden": [8, 8], "kernel": 3, "spline_bins": 8, "mask_period": 4,
                  "prior": "haar", "rotation": "newton-form Lagrange interpolation",
                  "phases": "closed form" if n == 2 else "Cardano + Newton, implicit-function backward",
                  "parameters": sum(p.numel() for p in layers.parameters()), "dtype": args.dtype},
        "training": dict(flowlib.training_summary(times), batch=64, learning_rate=1e-3,
                         final_loss=float(np.mean(losses[-max(1, len(losses) // 10):]))),
        "evaluation": ev,
        "log_z_measure": "normalised Haar measure (docs/reference.md §4)",
        "machine": peerlib.machine(),
    }
    print(f"SU({n}) L={L} beta={args.beta:g}: {args.steps} steps, {result['training']['step_ms_median']:.1f} ms/step; "
          f"acceptance {ev['acceptance']:.3f}, ESS/N {ev['ess_per_sample']:.3f}, <plaq> {ev['mean_plaq']:.4f}",
          flush=True)
    peerlib.report("sun_flow", result)


if __name__ == "__main__":
    main()
