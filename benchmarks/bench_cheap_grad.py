"""Cheap-gradient ratio: time(value + gradient) / time(value), single call and batch.

Run: python benchmarks/bench_cheap_grad.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_batch import baydin, lennard_jones, rosen  # noqa: E402

import symad  # noqa: E402


def _t(fn, number):
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def main() -> None:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(4.0)] * 3), -1).reshape(-1, 3)[:16] * 1.5
    problems = [("baydin", baydin, (2.0, 5.0)),
                ("rosenbrock n=100", rosen, (rng.uniform(-2, 2, 100),)),
                ("rosenbrock n=1000", rosen, (rng.uniform(-2, 2, 1000),)),
                ("lennard-jones 16", lennard_jones, (grid.reshape(-1) + 0.1,))]
    for name, fn, args in problems:
        val, vg = symad.compile(fn), symad.compile_grad(fn, argnums=None)
        val(*args)
        vg(*args)
        number = 20_000 if name == "baydin" else 500
        tv, tg = _t(lambda: val(*args), number), _t(lambda: vg(*args), number)
        pts = [np.asarray(a) + rng.uniform(-0.01, 0.01, (2000,) + np.shape(a)) for a in args]
        val.batch(*pts)
        vg.batch(*pts)
        bv = _t(lambda: val.batch(*pts, threads=1), 5)
        bg = _t(lambda: vg.batch(*pts, threads=1), 5)
        print(f"{name:20s} nodes {vg.stats['nodes']['trace']:6d} -> {vg.stats['nodes']['ad']:6d}"
              f"  call {tv * 1e6:7.2f} / {tg * 1e6:7.2f} us (ratio {tg / tv:4.2f})"
              f"  batch {bv / 2000 * 1e9:7.1f} / {bg / 2000 * 1e9:7.1f} ns/pt "
              f"(ratio {bg / bv:4.2f})")


if __name__ == "__main__":
    main()
