"""Jacobian modes: forward vs reverse vs auto for a wide (1000 -> 1) and a tall (1 -> 1000)
function. The pass count decides: reverse needs one pass per output, forward one per input.

Run: python benchmarks/bench_jacobian.py
"""

import time

import numpy as np

import symad

N = 1000


def wide(x):                       # R^1000 -> R
    return np.sum(np.sin(x) * x)


def tall(t):                       # R -> R^1000
    return np.sin(t * np.arange(1.0, N + 1.0)) * t


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main():
    x = np.linspace(0.1, 1.0, N)
    rows = []
    for name, f, arg in (("1000 -> 1", wide, x), ("1 -> 1000", tall, 0.7)):
        times = {mode: timed(symad.jacobian(f, mode=mode), arg) for mode in ("fwd", "rev", "auto")}
        rows.append((name, times))
    print("| function | fwd (s) | rev (s) | auto (s) |")
    print("| --- | --- | --- | --- |")
    for name, t in rows:
        print(f"| {name} | {t['fwd']:.3f} | {t['rev']:.3f} | {t['auto']:.3f} |")


if __name__ == "__main__":
    main()
