#!/usr/bin/env python3
"""φ⁴ normalizing-flow baseline for latflow's comparisons (tools/compare_flow_peers.sh).

The same architecture as latflow's flow-scalar model with its defaults (after Albergo,
Kanwar and Shanahan, arXiv 2101.08176): prior N(0, 1) per site; 16 affine coupling layers;
layer l updates the sites whose coordinate sum has parity l mod 2 from the others,
  x' = x e^s + t  on the updated sites,  log J = sum s,
with (s, t) = tanh(CNN(frozen sites, zero elsewhere)), CNN = Conv 1 -> 8 -> 8 -> 2, kernel 3,
circular padding, LeakyReLU. The theory is latflow's phi4 (docs/reference.md §2):
  S = sum_x [ sum_mu (phi(x+mu) - phi(x))^2 + m2 phi^2 + lam phi^4 ],  L = 8, m2 = -4, lam = 8.
Training: reverse KL, batch 64, Adam 1e-3. Evaluation: 10,000 proposals give the ESS per
sample, the flow-Metropolis acceptance and tau_int of |M|/V and S along that chain.

Run:  python3 phi4_flow.py [--steps 2500] [--threads 1] [--dtype float32]
Last stdout line: one JSON object.

The module also serves tools/compare_flow_peers.sh: build_model, make_action, sample.
"""
import argparse
import math

import flowlib
import peerlib
from peerlib import np


def build_model(torch, L, n_layers=16, hidden=(8, 8), kernel=3):
    """The coupling layers (a torch.nn.ModuleList) for an L x L lattice."""
    nn = torch.nn
    coords = torch.arange(L)
    parity = (coords[:, None] + coords[None, :]) % 2

    class AffineCoupling(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.register_buffer("frozen", (parity != p).to(torch.get_default_dtype()))
            self.net = flowlib.conditioner(torch, 1, hidden, 2, kernel, last=nn.Tanh())

        def forward(self, x):
            f = self.frozen
            st = self.net((f * x).unsqueeze(1))
            s, t = (1 - f) * st[:, 0], (1 - f) * st[:, 1]
            return f * x + (1 - f) * (x * torch.exp(s) + t), s.sum(dim=(1, 2))

    return nn.ModuleList([AffineCoupling(l % 2) for l in range(n_layers)])


def make_action(torch, m2, lam):
    """S(phi) for a batch (B, L, L) -> (B,)."""
    def action(phi):
        kinetic = (torch.roll(phi, -1, 1) - phi) ** 2 + (torch.roll(phi, -1, 2) - phi) ** 2
        return (kinetic + m2 * phi ** 2 + lam * phi ** 4).sum(dim=(1, 2))
    return action


def sample(torch, layers, n, L):
    """n draws (n, L, L) and their log q."""
    z = torch.randn(n, L, L)
    log_q = (-0.5 * z * z).sum(dim=(1, 2)) - 0.5 * L * L * math.log(2 * math.pi)
    return flowlib.push(layers, z, log_q)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, default=8)
    ap.add_argument("--m2", type=float, default=-4.0)
    ap.add_argument("--lam", type=float, default=8.0)
    ap.add_argument("--steps", type=int, default=2500)
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
    layers = build_model(torch, L)
    action = make_action(torch, args.m2, args.lam)
    draw = lambda n: sample(torch, layers, n, L)  # noqa: E731
    times, losses = flowlib.train(torch, layers, draw, action, args.steps, batch=args.batch)
    observables = {
        "absM": lambda x: np.abs(x.sum(axis=(1, 2))) / V,
        "M2V": lambda x: x.sum(axis=(1, 2)) ** 2 / V,
        "S": lambda x: (((np.roll(x, -1, 1) - x) ** 2 + (np.roll(x, -1, 2) - x) ** 2
                         + args.m2 * x ** 2 + args.lam * x ** 4).sum(axis=(1, 2))),
    }
    ev = flowlib.evaluate(torch, draw, action, observables, args.n_eval, args.seed)
    result = {
        "tag": args.tag or f"phi4_flow_{args.dtype}_t{args.threads}" + (f"_{args.device}" if args.device != "cpu" else ""),
        "theory": {"L": L, "m2": args.m2, "lam": args.lam},
        "model": {"layers": 16, "hidden": [8, 8], "kernel": 3, "coupling": "affine", "prior": "normal",
                  "parameters": sum(p.numel() for p in layers.parameters()), "dtype": args.dtype},
        "training": dict(flowlib.training_summary(times), final_loss=float(np.mean(losses[-100:])),
                         batch=args.batch, device=args.device),
        "evaluation": ev,
        "chi2_reference": [0.7442, 0.0012],
        "machine": peerlib.machine(),
    }
    print(f"{args.steps} steps, {result['training']['step_ms_median']:.1f} ms/step; acceptance "
          f"{ev['acceptance']:.3f}, ESS/N {ev['ess_per_sample']:.3f}, chi2 {ev['mean_M2V']:.4f}", flush=True)
    peerlib.report("phi4_flow", result)


if __name__ == "__main__":
    main()
