"""Compile time of a Lennard-Jones energy + gradient against particle count.

    python benchmarks/lj_compile.py 40 80

Node count grows as n^2 (all pairs); compile time should grow with the node count.
"""

import sys
import time

import numpy as np

import symad


def lj_energy(x):
    n = x.shape[0] // 3
    p = x.reshape(n, 3)
    e = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            d = p[i] - p[j]
            r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
            s6 = 1.0 / (r2 * r2 * r2)
            e = e + 4.0 * (s6 * s6 - s6)
    return e


def main(*counts):
    for n in counts or (40, 80):
        x = np.random.default_rng(n).uniform(0, 3 * n ** (1 / 3), 3 * n)
        f = symad.compile_grad(lj_energy)
        t0 = time.perf_counter()
        f(x)
        wall = time.perf_counter() - t0
        st = f.stats
        print(f"n={n}: {st['nodes']['ad']} nodes, compile {wall:.2f} s "
              f"({1e6 * wall / st['nodes']['ad']:.1f} us/node), "
              + " ".join(f"{k}={v:.2f}" for k, v in st["seconds"].items()), flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
