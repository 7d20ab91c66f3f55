"""Helpers shared by latflow's peer baselines (numpy / PyTorch on the CPU).

Import this module before numpy or torch: it reads ``--threads N`` from the command line
(default 2, or $PEER_THREADS) and sets the OpenMP/BLAS thread variables from it, which only
take effect if they are set before those libraries load.

Statistics follow docs/reference.md §8: tau_int = 1/2 + sum_{t=1}^{W} rho(t) with Wolff's
automatic window (S_tau = 1.5), so uncorrelated data give 0.5 and N samples are worth
N / (2 tau_int) independent ones; ESS per sample = (sum w)^2 / (N sum w^2) in log space.
"""
import json
import math
import os
import platform
import sys
import time

sys.dont_write_bytecode = True


def _requested_threads():
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return int(os.environ.get("PEER_THREADS", "2"))


THREADS = _requested_threads()
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import numpy as np  # noqa: E402  (after the thread variables)


def torch_cpu(seed, dtype="float32", threads=THREADS, device="cpu"):
    """Imports torch, fixes its threads (intra-op `threads`, inter-op 1), seed, default
    dtype ("float32" or "float64") and default device ("cpu", or "cuda" for a GPU peer: every
    tensor and module is then created there); returns the torch module."""
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed by an earlier call in this process
        pass
    torch.manual_seed(seed)
    torch.set_default_dtype({"float32": torch.float32, "float64": torch.float64}[dtype])
    if device != "cpu":
        torch.set_default_device(device)
    return torch


def sync(torch):
    """Waits for the GPU's queued work (a no-op on the CPU), so that a wall time covers it."""
    if torch.get_default_device().type == "cuda":
        torch.cuda.synchronize()


def machine():
    """Versions, core count and load average, for the JSON record."""
    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
        if torch.get_default_device().type == "cuda":
            out["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return out


def autocorrelation(x):
    """Normalised autocorrelation rho(t), t = 0..N-1, of a series of shape (N,) or (N, chains)
    (chains averaged, the global mean subtracted); None for a constant series."""
    a = np.asarray(x, dtype=float)
    if a.ndim == 1:
        a = a[:, None]
    n, chains = a.shape
    d = a - a.mean()
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(d, n=size, axis=0)
    gamma = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=0)[:n].sum(axis=1)
    gamma /= chains * (n - np.arange(n))
    if gamma[0] <= 0:
        return None
    return gamma / gamma[0]


def tau_int(x, s_tau=1.5):
    """Integrated autocorrelation time with Wolff's window: dict(tau, err, W, n, ok).
    A constant series (a frozen charge) has tau = inf."""
    a = np.asarray(x, dtype=float)
    n = a.shape[0]
    rho = autocorrelation(a)
    if rho is None:
        return {"tau": float("inf"), "err": None, "W": None, "n": int(a.size), "ok": False}
    tau, window = 0.5, None
    for w in range(1, n // 2):
        tau += rho[w]
        tau_exp = s_tau / math.log((2 * tau + 1) / (2 * tau - 1)) if tau > 0.5 else 1e-8
        if math.exp(-w / tau_exp) - tau_exp / math.sqrt(w * a.size) < 0:
            window = w
            break
    ok = window is not None
    if not ok:
        window = max(1, n // 2 - 1)
        tau = 0.5 + float(rho[1:window + 1].sum())
    tau = max(tau, 0.5)
    return {"tau": float(tau), "err": float(tau * math.sqrt((4 * window + 2) / a.size)),
            "W": int(window), "n": int(a.size), "ok": ok}


def ess_per_sample(log_w):
    """(sum w)^2 / (N sum w^2) for log-weights log_w."""
    lw = np.asarray(log_w, dtype=np.float64)
    w = np.exp(lw - lw.max())
    return float(w.sum() ** 2 / (lw.size * (w * w).sum()))


def independence_chain(log_w, rng):
    """Independence Metropolis over a stream of proposals with log-weights log_w = -S - log q:
    returns (index of the current state after each proposal, accepted flags). The first
    proposal starts the chain."""
    n = len(log_w)
    state = np.empty(n, dtype=np.int64)
    accepted = np.zeros(n, dtype=bool)
    log_u = np.log(rng.random(n))
    cur = 0
    state[0], accepted[0] = 0, True
    for i in range(1, n):
        if log_u[i] < log_w[i] - log_w[cur]:
            cur = i
            accepted[i] = True
        state[i] = cur
    return state, accepted


def binned_mean(x, bin_size):
    """Mean and naive error of the bin averages of x (bins of bin_size samples)."""
    a = np.asarray(x, dtype=float)
    nb = len(a) // bin_size
    bins = a[:nb * bin_size].reshape(nb, bin_size).mean(axis=1)
    return float(bins.mean()), float(bins.std(ddof=1) / math.sqrt(nb)) if nb > 1 else float("nan")


def report(name, result):
    """Prints `result` as the last stdout line (one JSON object); keeps a copy as
    $PEER_RESULTS_DIR/<tag>.json when that variable is set."""
    result = dict(result)
    result.setdefault("benchmark", name)
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    out_dir = os.environ.get("PEER_RESULTS_DIR")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"{result.get('tag') or name}.json"), "w") as f:
            json.dump(result, f, indent=1, default=float)
    print(json.dumps(result, default=float), flush=True)


def now():
    return time.perf_counter()
