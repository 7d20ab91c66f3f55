#!/usr/bin/env python3
"""2D U(1) gauge-equivariant flow baseline for latflow's comparisons
(THEORY=u1 tools/compare_flow_peers.sh).

The same architecture as latflow's flow-u1 model with its defaults (after Kanwar et al.,
PRL 125, 121601, and Albergo et al., arXiv 2101.08176): links theta[mu][x0][x1] in [0, 2pi)
with a uniform (Haar) prior; plaquettes P(x) = theta0(x) + theta1(x+e0) - theta0(x+e1) -
theta1(x); 16 coupling layers. Layer i moves direction mu = i mod 2 with stripe offset
o = (i // 2) mod 4; with c(x) = x_{1-mu}:
  active plaquettes  c = o      P -> H(P) = mean_k 2 atan(e^{s_k} tan(P/2)) + t  (k = 1, 2)
  frozen plaquettes  c = o+1, o+2 (mod 4): the CNN reads (cos P, sin P) there, (1, 0) elsewhere
  active links       theta_mu(x) with c = o: theta_mu += sigma_mu (H(P) - P), sigma = (+1, -1)
  log J = sum over active plaquettes of log H'(P).
CNN: Conv 2 -> 8 -> 8 -> 3 (s_1, s_2, t), kernel 3, circular padding, LeakyReLU between.
The theory is latflow's u1 (docs/reference.md §3): S = -beta sum_x cos P(x), L = 8, beta = 2.
Training: reverse KL, batch 64, Adam 1e-3. Evaluation: 10,000 proposals give the ESS, the
flow-Metropolis acceptance, tau_int of Q and S along that chain, and chi_top = <Q^2>/V.
log q is a density with respect to plain d(theta), so log Z-hat estimates log Z + 2V ln 2pi.

Run:  python3 u1_flow.py [--steps 1000] [--beta 2] [--threads 1]
Last stdout line: one JSON object.

The module also serves tools/compare_flow_peers.sh: build_model, sample.
"""
import argparse
import math

import flowlib
import peerlib
from peerlib import np

TWO_PI = 2 * math.pi


def plaquettes(torch, links):
    """P(x) for links (B, 2, L, L) -> (B, L, L)."""
    return links[:, 0] + torch.roll(links[:, 1], -1, 1) - torch.roll(links[:, 0], -1, 2) - links[:, 1]


def build_model(torch, L, n_layers=16, n_mix=2, hidden=(8, 8), kernel=3, period=4):
    """(coupling layers, plaquette function) for an L x L lattice; L a multiple of `period`."""
    nn = torch.nn
    grid = torch.arange(L)

    class StripeCoupling(nn.Module):
        def __init__(self, mu, offset):
            super().__init__()
            dt = torch.get_default_dtype()
            across = (grid[None, :] if mu == 0 else grid[:, None]).expand(L, L)  # c(x) = x_{1-mu}
            phase = (across - offset) % period
            self.mu, self.sigma = mu, 1.0 if mu == 0 else -1.0
            self.register_buffer("active", (phase == 0).to(dt))
            self.register_buffer("frozen", ((phase >= 1) & (phase <= period - 2)).to(dt))
            self.net = flowlib.conditioner(torch, 2, hidden, n_mix + 1, kernel)

        def forward(self, links):
            p = plaquettes(torch, links)
            seen = self.frozen * p
            out = self.net(torch.stack((torch.cos(seen), torch.sin(seen)), dim=1))
            s, t = out[:, :-1], out[:, -1]
            half = 0.5 * (torch.remainder(p + math.pi, TWO_PI) - math.pi).unsqueeze(1)  # in (-pi/2, pi/2]
            sin_h, cos_h = torch.sin(half), torch.cos(half)
            h = (2 * torch.atan2(torch.exp(s) * sin_h, cos_h)).mean(dim=1)
            log_d = torch.log(torch.exp(-s) * cos_h ** 2 + torch.exp(s) * sin_h ** 2)
            log_h1 = torch.logsumexp(-log_d, dim=1) - math.log(n_mix)
            shift = self.active * (h + t - 2 * half[:, 0])  # H(P) - P on the active plaquettes
            moved = torch.remainder(links[:, self.mu] + self.sigma * shift, TWO_PI)
            links = torch.stack([moved if m == self.mu else links[:, m] for m in (0, 1)], dim=1)
            return links, (self.active * log_h1).sum(dim=(1, 2))

    layers = nn.ModuleList([StripeCoupling(i % 2, (i // 2) % period) for i in range(n_layers)])
    return layers, lambda links: plaquettes(torch, links)


def sample(torch, layers, n, L):
    """n draws (n, 2, L, L) and their log q (density in plain d(theta))."""
    links = TWO_PI * torch.rand(n, 2, L, L)
    log_q = torch.full((n,), -2 * L * L * math.log(TWO_PI))
    return flowlib.push(layers, links, log_q)


def np_plaquettes(x):
    return x[:, 0] + np.roll(x[:, 1], -1, 1) - np.roll(x[:, 0], -1, 2) - x[:, 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, default=8)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--n-eval", type=int, default=10000)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=peerlib.THREADS)
    ap.add_argument("--batch", type=int, default=64, help="training batch")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for a GPU peer")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args()
    torch = peerlib.torch_cpu(args.seed, args.dtype, args.threads, args.device)
    L, V = args.L, args.L * args.L
    layers, plaq = build_model(torch, L)
    action = lambda x: -args.beta * torch.cos(plaq(x)).sum(dim=(1, 2))  # noqa: E731
    draw = lambda n: sample(torch, layers, n, L)  # noqa: E731
    times, losses = flowlib.train(torch, layers, draw, action, args.steps, batch=args.batch)

    def charge(x):
        p = np_plaquettes(x)
        return (np.remainder(p + math.pi, TWO_PI) - math.pi).sum(axis=(1, 2)) / TWO_PI

    observables = {
        "Q": charge,
        "Q2V": lambda x: charge(x) ** 2 / V,
        "S": lambda x: -args.beta * np.cos(np_plaquettes(x)).sum(axis=(1, 2)),
        "plaq": lambda x: np.cos(np_plaquettes(x)).mean(axis=(1, 2)),
    }
    ev = flowlib.evaluate(torch, draw, action, observables, args.n_eval, args.seed)
    result = {
        "tag": args.tag or f"u1_flow_beta{args.beta:g}_{args.dtype}_t{args.threads}" + (f"_{args.device}" if args.device != "cpu" else ""),
        "theory": {"L": L, "beta": args.beta},
        "model": {"layers": 16, "hidden": [8, 8], "kernel": 3, "mixture": 2, "prior": "haar",
                  "parameters": sum(p.numel() for p in layers.parameters()), "dtype": args.dtype},
        "training": dict(flowlib.training_summary(times), final_loss=float(np.mean(losses[-100:])),
                         batch=args.batch, device=args.device),
        "evaluation": ev,
        "log_z_measure": "plain d(theta): log Z (docs/reference.md §3) + 2V ln 2pi",
        "machine": peerlib.machine(),
    }
    print(f"{args.steps} steps, {result['training']['step_ms_median']:.1f} ms/step; acceptance "
          f"{ev['acceptance']:.3f}, ESS/N {ev['ess_per_sample']:.3f}, <cos P> {ev['mean_plaq']:.4f}", flush=True)
    peerlib.report("u1_flow", result)


if __name__ == "__main__":
    main()
