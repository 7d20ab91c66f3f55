"""Plain leapfrog HMC over a batch of independent chains, on numpy or torch arrays.

A theory supplies ``action(x) -> (B,)``, ``force(x) = dS/dx`` (shape of x) and
``measure(x) -> {name: numpy array (B,)}``; x has the chain index first. H = p^2/2 + S with
p ~ N(0, 1); a trajectory of length tau is n_md leapfrog steps of size tau / n_md, followed
by the Metropolis test on exp(-dH). The cost that is timed includes the measurements.
"""
import argparse

import peerlib
from peerlib import np


class Arrays:
    """numpy (float64, its own Generator) or torch (float32/64, torch's generator)."""

    def __init__(self, backend, seed, dtype="float64", threads=peerlib.THREADS):
        self.backend = backend
        if backend == "numpy":
            self.xp = np
            self.rng = np.random.default_rng(seed)
        elif backend == "torch":
            self.xp = peerlib.torch_cpu(seed, dtype, threads)
        else:
            raise ValueError(f"backend must be numpy or torch, not {backend!r}")

    def normal(self, shape):
        if self.backend == "numpy":
            return self.rng.standard_normal(shape)
        return self.xp.randn(shape)

    def uniform(self, n):
        """n uniforms in [0, 1) as a float64 numpy array."""
        if self.backend == "numpy":
            return self.rng.random(n)
        return self.xp.rand(n, dtype=self.xp.float64).numpy()

    def numpy(self, a):
        return a if self.backend == "numpy" else a.double().numpy()

    def keep(self, accepted, new, old):
        """new where accepted (numpy bool (B,)), else old; any shape with the chain index first."""
        shape = (-1,) + (1,) * (new.ndim - 1)
        if self.backend == "numpy":
            return np.where(accepted.reshape(shape), new, old)
        return self.xp.where(self.xp.from_numpy(accepted).reshape(shape), new, old)


def kinetic(p):
    return 0.5 * (p * p).sum(axis=tuple(range(1, p.ndim)))


def trajectories(arr, theory, x, n_traj, n_md, tau=1.0, measure=True):
    """Runs n_traj trajectories on every chain of x. Returns (x, record) where record has
    seconds, acceptance (over all chains), and per measured quantity an array
    (n_traj, B), plus dH."""
    eps = tau / n_md
    chains = x.shape[0]
    accepted_total = 0
    series = {"dH": []}
    s_old = theory.action(x)
    start = peerlib.now()
    for _ in range(n_traj):
        p = arr.normal(tuple(x.shape))
        h_old = kinetic(p) + s_old
        y = x
        p = p - 0.5 * eps * theory.force(y)
        for step in range(n_md):
            y = y + eps * p
            if step + 1 < n_md:
                p = p - eps * theory.force(y)
        p = p - 0.5 * eps * theory.force(y)
        s_new = theory.action(y)
        dh = arr.numpy(kinetic(p) + s_new - h_old)
        accept = np.log(arr.uniform(chains)) < -dh
        accepted_total += int(accept.sum())
        x = arr.keep(accept, y, x)
        s_old = arr.keep(accept, s_new, s_old)
        if measure:
            series["dH"].append(dh)
            for name, value in theory.measure(x).items():
                series.setdefault(name, []).append(value)
    record = {"seconds": peerlib.now() - start, "acceptance": accepted_total / (n_traj * chains)}
    if measure:
        record.update({k: np.array(v) for k, v in series.items()})
    return x, record


def cli(description):
    """The options every HMC baseline takes."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="torch only")
    ap.add_argument("--chains", type=int, default=1, help="independent chains, vectorised")
    ap.add_argument("--L", type=int, default=8)
    ap.add_argument("--ntraj", type=int, default=20000, help="measured trajectories per chain")
    ap.add_argument("--ntherm", type=int, default=1000)
    ap.add_argument("--tau", type=float, default=1.0, help="trajectory length")
    ap.add_argument("--nmd", type=int, default=0, help="leapfrog steps; 0: the first of --scan "
                    "whose acceptance reaches --target-acc")
    ap.add_argument("--scan", default="4,5,6,8,10,12,15,20")
    ap.add_argument("--scan-traj", type=int, default=300)
    ap.add_argument("--target-acc", type=float, default=0.80)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--threads", type=int, default=peerlib.THREADS)
    ap.add_argument("--tag", default=None)
    return ap


def tune_and_run(args, arr, theory, x, warmup_nmd):
    """Warm-up, n_md choice (unless args.nmd), thermalisation and the measured run; returns
    (n_md, scan, record)."""
    x, _ = trajectories(arr, theory, x, 200, warmup_nmd, args.tau, measure=False)
    scan = []
    n_md = args.nmd
    if n_md <= 0:
        for n in [int(s) for s in args.scan.split(",")]:
            x, r = trajectories(arr, theory, x, args.scan_traj, n, args.tau, measure=False)
            scan.append({"nmd": n, "acceptance": r["acceptance"]})
            print(f"scan n_md = {n}: acceptance {r['acceptance']:.3f}", flush=True)
            n_md = n
            if r["acceptance"] >= args.target_acc:
                break
    x, _ = trajectories(arr, theory, x, args.ntherm, n_md, args.tau, measure=False)
    _, record = trajectories(arr, theory, x, args.ntraj, n_md, args.tau, measure=True)
    return n_md, scan, record


def common_result(args, n_md, scan, record):
    """The JSON fields every HMC baseline reports (rates summed over chains)."""
    rate = args.ntraj * args.chains / record["seconds"]
    return {
        "hmc": {"backend": args.backend, "dtype": "float64" if args.backend == "numpy" else args.dtype,
                "chains": args.chains, "tau": args.tau, "nmd": n_md, "ntraj_per_chain": args.ntraj,
                "ntherm": args.ntherm, "seed": args.seed, "threads": args.threads, "scan": scan},
        "acceptance": record["acceptance"],
        "mean_exp_minus_dH": float(np.exp(-record["dH"]).mean()),
        "traj_per_s_total": rate,
        "traj_per_s_per_chain": rate / args.chains,
        "machine": peerlib.machine(),
    }
