"""Batch throughput (ns/point, value + gradient) against a hand-written numba loop.

Run: python benchmarks/bench_batch.py [N]   (numba is optional: pip install numba)
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import symad  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_call import baydin, lennard_jones, rosen  # noqa: E402 (the same problem code)


def _numba_lj():
    import numba

    @numba.njit(fastmath=False, cache=False)
    def lj_batch(xs, values, grads):
        npts, m = xs.shape
        k = m // 3
        for p in range(npts):
            x = xs[p]
            g = grads[p]
            g[:] = 0.0
            e = 0.0
            for i in range(k):
                for j in range(i + 1, k):
                    dx = x[3 * i] - x[3 * j]
                    dy = x[3 * i + 1] - x[3 * j + 1]
                    dz = x[3 * i + 2] - x[3 * j + 2]
                    r2 = dx * dx + dy * dy + dz * dz
                    s6 = 1.0 / (r2 * r2 * r2)
                    e += 4.0 * (s6 * s6 - s6)
                    # dE/dr2 = 4 * (-12 s6^2 + 6 s6) / (2 r2) ... written per component
                    c = 4.0 * (-12.0 * s6 * s6 + 6.0 * s6) / r2
                    g[3 * i] += c * dx
                    g[3 * i + 1] += c * dy
                    g[3 * i + 2] += c * dz
                    g[3 * j] -= c * dx
                    g[3 * j + 1] -= c * dy
                    g[3 * j + 2] -= c * dz
            values[p] = e
    return lj_batch


def per_point_ns(fn, n, number=3) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number / n * 1e9


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rng = np.random.default_rng(0)
    f = symad.compile_grad(baydin, argnums=(0, 1))
    x1, x2 = rng.uniform(0.5, 3, (2, n))
    f.batch(x1[:4], x2[:4])
    for threads in (1, None):
        print(f"baydin batch threads={threads}: "
              f"{per_point_ns(lambda: f.batch(x1, x2, threads=threads), n):7.1f} ns/point")
    r = symad.compile_grad(rosen)
    xs = rng.uniform(-2, 2, (n, 10))
    r.batch(xs[:4])
    for threads in (1, None):
        print(f"rosenbrock n=10 batch threads={threads}: "
              f"{per_point_ns(lambda: r.batch(xs, threads=threads), n):7.1f} ns/point")
    try:
        lj_numba = _numba_lj()
    except ImportError:
        lj_numba = None
    for k in (16, 64):
        m = max(n // (k * k // 16), 200)
        grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3), -1).reshape(-1, 3)[:k] * 1.5
        pts = (grid.reshape(1, -1) + rng.uniform(-0.2, 0.2, (m, 3 * k)))
        cf = symad.compile_grad(lennard_jones)
        cf.batch(pts[:2])
        v, g = cf.batch(pts, threads=1)
        line = (f"lennard-jones {k} particles ({cf.stats['nodes']['ad']} nodes): symad "
                f"{per_point_ns(lambda: cf.batch(pts, threads=1), m):8.1f} ns/point")
        if lj_numba is not None:
            vals, grads = np.empty(m), np.empty((m, 3 * k))
            lj_numba(pts, vals, grads)
            np.testing.assert_allclose(vals, v, rtol=1e-10)
            np.testing.assert_allclose(grads, g, rtol=1e-8, atol=1e-8)
            line += (f", numba loop "
                     f"{per_point_ns(lambda: lj_numba(pts, vals, grads), m):8.1f} ns/point")
        print(line)


if __name__ == "__main__":
    main()
