"""Call latency, batch throughput and compile time of symad's native back end.

Run: python benchmarks/bench_call.py   (prints one line per measurement)
"""

from __future__ import annotations

import math
import sys
import time
import timeit
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import symad  # noqa: E402


def baydin(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def lennard_jones(pos):
    pos = pos.reshape(-1, 3)
    e = 0.0
    n = len(pos)
    for i in range(n):
        for j in range(i + 1, n):
            d = pos[i] - pos[j]
            r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
            s6 = 1.0 / (r2 * r2 * r2)
            e = e + 4.0 * (s6 * s6 - s6)
    return e


def per_call_us(fn, *args, number=200_000) -> float:
    t = min(timeit.repeat(lambda: fn(*args), number=number, repeat=5))
    return t / number * 1e6


def stage_line(cf) -> str:
    s = cf.stats
    secs = ", ".join(f"{k} {v:.3f}" for k, v in s["seconds"].items())
    return (f"nodes {s['nodes']}  levels {s['opt_level']}\n      seconds: {secs} "
            f"(total {sum(s['seconds'].values()):.2f} s)")


def main() -> None:
    f = symad.compile_grad(baydin, argnums=(0, 1))
    f(2.0, 5.0)
    print(f"baydin value+grad, compiled call:     {per_call_us(f, 2.0, 5.0):6.3f} us")
    py = lambda a, b: (math.log(a) + a * b - math.sin(b), (1 / a + b, a - math.cos(b)))  # noqa: E731
    print(f"baydin value+grad, hand-written math: {per_call_us(py, 2.0, 5.0):6.3f} us")

    r = symad.compile_grad(rosen)
    x = np.random.default_rng(0).uniform(-2, 2, 100)
    r(x)
    print(f"rosenbrock n=100 value+grad call:     {per_call_us(r, x, number=50_000):6.3f} us")
    r1k = symad.compile_grad(rosen)
    x1k = np.random.default_rng(0).uniform(-2, 2, 1000)
    r1k(x1k)
    print(f"rosenbrock n=1000 value+grad call:    {per_call_us(r1k, x1k, number=5_000):6.3f} us")

    n = 100_000
    x1, x2 = np.random.default_rng(1).uniform(0.5, 3, (2, n))
    f.batch(x1, x2)
    for threads in (None, 2):
        t = min(timeit.repeat(lambda threads=threads: f.batch(x1, x2, threads=threads),
                              number=5, repeat=3)) / 5
        print(f"baydin batch 1e5 points (threads={threads}): {t * 1e3:7.2f} ms  "
              f"({t / n * 1e9:5.1f} ns/point)")
    xs = np.random.default_rng(2).uniform(-2, 2, (n, 10))
    rb = symad.compile_grad(rosen)
    rb.batch(xs[:10])
    t = min(timeit.repeat(lambda: rb.batch(xs), number=3, repeat=3)) / 3
    print(f"rosenbrock n=10 batch 1e5 points:      {t * 1e3:7.2f} ms  "
          f"({t / n * 1e9:5.1f} ns/point)")

    for name, fn, arg in (("rosenbrock n=1000", rosen,
                           np.random.default_rng(3).uniform(-2, 2, 1000)),
                          ("lennard-jones 40 particles", lennard_jones,
                           np.random.default_rng(4).uniform(0, 5, 120))):
        cf = symad.compile_grad(fn)
        t0 = time.perf_counter()
        cf(arg)
        total = time.perf_counter() - t0
        print(f"compile {name}: {total:.2f} s wall\n      {stage_line(cf)}")
        print(f"      call: {per_call_us(cf, arg, number=2000):.2f} us")


if __name__ == "__main__":
    main()
