"""Reads ILDG files with lyncs_io (a third-party reader, no latflow code) and prints, per file,
one JSON object: the array shape and dtype lyncs_io found, the mean plaquette
<Re Tr U_P>/3 over all sites and the six planes computed here in numpy, and optionally the 18
reals (row-major, re/im) of one link U_mu(x, y, z, t).

Usage: python ildg_check.py FILE... [--link X Y Z T MU]

lyncs_io returns the ILDG array as [t, z, y, x, mu, row, col] (complex); direction mu = 0..3 is
x, y, z, t, i.e. array axis 3 - mu.
"""

import json
import sys

import lyncs_io
import numpy as np


def plaquette(u):
    """<Re Tr U_P>/3 for U of shape [t, z, y, x, 4, 3, 3]."""
    u = np.asarray(u, dtype=np.complex128)
    links = [u[..., mu, :, :] for mu in range(4)]

    def up(field, mu):
        # field(x + mu): the site axis of direction mu is array axis 3 - mu
        return np.roll(field, -1, axis=3 - mu)

    def mul(a, b):
        return np.einsum("...ij,...jk->...ik", a, b)

    def dag(a):
        return np.conj(np.swapaxes(a, -1, -2))

    total, planes = 0.0, 0
    for mu in range(4):
        for nu in range(mu + 1, 4):
            p = mul(mul(links[mu], up(links[nu], mu)), mul(dag(up(links[mu], nu)), dag(links[nu])))
            total += np.einsum("...ii->...", p).real.mean()
            planes += 1
    return total / (planes * 3)


def main(argv):
    link = None
    if "--link" in argv:
        i = argv.index("--link")
        link = [int(v) for v in argv[i + 1 : i + 6]]
        argv = argv[:i] + argv[i + 6 :]
    for path in argv:
        u = lyncs_io.load(path, format="lime")
        out = {"file": path, "shape": list(u.shape), "dtype": str(u.dtype), "plaquette": float(plaquette(u))}
        if link is not None:
            x, y, z, t, mu = link
            m = np.asarray(u[t, z, y, x, mu], dtype=np.complex128)
            out["link"] = [float(v) for c in m.reshape(-1) for v in (c.real, c.imag)]
        print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
