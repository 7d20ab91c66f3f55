"""What the two PyTorch flow baselines share: the conditioner CNN, training by reverse KL, and
the evaluation of a trained model as a proposal distribution.

A model here is a list of coupling layers, each a ``torch.nn.Module`` whose forward maps a
batch x to (x', log|det J|); ``sample(n)`` draws n configurations with their log q.
"""
import math

import peerlib
from peerlib import np


def conditioner(torch, channels_in, hidden, channels_out, kernel, last=None):
    """Periodic CNN: Conv2d layers of odd `kernel` with circular padding, LeakyReLU between
    them, and `last` (a module or None) after the final one."""
    nn = torch.nn
    sizes = [channels_in, *hidden, channels_out]
    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Conv2d(a, b, kernel, padding=kernel // 2, padding_mode="circular"))
        if i + 2 < len(sizes):
            mods.append(nn.LeakyReLU())
    if last is not None:
        mods.append(last)
    return nn.Sequential(*mods)


def push(layers, x, log_q):
    """Applies the coupling layers in order, subtracting each log-determinant from log q."""
    for layer in layers:
        x, log_j = layer(x)
        log_q = log_q - log_j
    return x, log_q


def train(torch, layers, sample, action, steps, batch=64, lr=1e-3):
    """Reverse-KL training, loss = mean(log q + S) over `batch` draws, Adam(lr). Returns the
    per-step wall times (s) and the losses. Each step ends with `loss.item()`, which waits for
    a GPU's work, so a step's time covers it."""
    opt = torch.optim.Adam(layers.parameters(), lr=lr)
    times, losses = [], []
    for _ in range(steps):
        t0 = peerlib.now()
        opt.zero_grad()
        x, log_q = sample(batch)
        loss = (log_q + action(x)).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        times.append(peerlib.now() - t0)
    return times, losses


def draw(torch, sample, n, batch):
    """n draws in batches, under no_grad; returns (x, log q, seconds)."""
    xs, lqs = [], []
    t0 = peerlib.now()
    with torch.no_grad():
        left = n
        while left > 0:
            x, lq = sample(min(batch, left))
            xs.append(x)
            lqs.append(lq)
            left -= x.shape[0]
    x, lq = torch.cat(xs), torch.cat(lqs)
    peerlib.sync(torch)
    return x, lq, peerlib.now() - t0


def evaluate(torch, sample, action, observables, n, seed):
    """Draws n proposals (batches of 64 and of 1000, both timed), then reports the
    reweighting ESS per sample, the independence-Metropolis acceptance, and for each
    observable (a function of the numpy batch -> (n,)) its tau_int along that chain and its
    chain mean."""
    _, _, seconds_64 = draw(torch, sample, n, 64)
    x, log_q, seconds_1000 = draw(torch, sample, n, 1000)
    t0 = peerlib.now()
    with torch.no_grad():
        s = action(x)
    peerlib.sync(torch)
    seconds_action = peerlib.now() - t0
    log_w = (-s - log_q).double().cpu().numpy()
    state, accepted = peerlib.independence_chain(log_w, np.random.default_rng(seed))
    xd = x.double().cpu().numpy()
    out = {
        "n": n,
        "ess_per_sample": peerlib.ess_per_sample(log_w),
        "acceptance": float(accepted[1:].mean()),
        "proposals_per_s_bs64": n / (seconds_64 + seconds_action),
        "proposals_per_s_bs1000": n / (seconds_1000 + seconds_action),
        "log_z_estimate": float(np.logaddexp.reduce(log_w) - math.log(n)),
    }
    for name, fn in observables.items():
        values = fn(xd)[state]
        out[f"tau_int_{name}"] = peerlib.tau_int(values)
        out[f"mean_{name}"] = float(values.mean())
    return out


def training_summary(times):
    ts = np.asarray(times[5:] if len(times) > 10 else times)
    return {"step_ms_median": 1e3 * float(np.median(ts)), "step_ms_p10": 1e3 * float(np.percentile(ts, 10)),
            "step_ms_p90": 1e3 * float(np.percentile(ts, 90)), "steps": len(times)}
