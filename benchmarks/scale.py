"""Compile-time scaling: seconds per stage for value+gradient graphs of 10^3 .. 10^6 nodes.

    python benchmarks/scale.py [MAX_NODES]     # default 1_000_000

Each graph is a random-looking but deterministic DAG (arithmetic and transcendental ops,
long-range and short-range operands), built by ``compile_grad`` on 64 inputs. Prints the
stages of ``f.stats["seconds"]`` (trace, ad, lowering, llvm_opt, machine_code), the
untimed rest of the first call ("other": cache key, bookkeeping), the first call's wall
time, microseconds per node, and peak RSS.
"""

import resource
import sys
import time

import numpy as np

import symad

N_INPUTS = 64
STEP_NODES = 7     # value+gradient nodes per program step, about


def make_program(n_steps: int):
    def f(x):
        vals = [x[i] for i in range(N_INPUTS)]
        for i in range(n_steps):
            a = vals[-1]                         # a chain: every node stays live
            b = vals[(i * 7919) % len(vals)]
            k = i % 4
            if k == 0:
                v = np.sin(a) * b
            elif k == 1:
                v = a * 0.5 + np.tanh(b)
            elif k == 2:
                v = a - b * b
            else:
                v = np.exp(-(a * a)) + b
            vals.append(v)
        return sum(vals[-8:])
    f.__name__ = f"scale_{n_steps}"
    return f


def run(n_steps: int) -> dict:
    f = symad.compile_grad(make_program(n_steps))
    x = np.linspace(-1.0, 1.0, N_INPUTS)
    t0 = time.perf_counter()
    value, grad = f(x)
    wall = time.perf_counter() - t0
    st = f.stats
    sec = dict(st["seconds"])
    sec["other"] = wall - sum(sec.values())
    return {"nodes": st["nodes"]["ad"], "seconds": sec, "wall": wall,
            "levels": st["opt_level"], "finite": bool(np.isfinite(value))}


def main(max_nodes: int = 1_000_000) -> None:
    stages = ["trace", "ad", "lowering", "llvm_opt", "machine_code", "other"]
    print(f"{'nodes':>9} " + " ".join(f"{s:>12}" for s in stages)
          + f" {'total s':>8} {'us/node':>8} {'levels':>7} {'peak MiB':>9}")
    n = 1_000
    while n <= max_nodes:
        r = run(max(1, n // STEP_NODES))
        sec = r["seconds"]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lv = r["levels"]
        print(f"{r['nodes']:>9} " + " ".join(f"{sec.get(s, 0.0):>12.3f}" for s in stages)
              + f" {r['wall']:>8.2f} {1e6 * r['wall'] / r['nodes']:>8.1f}"
              + f" {lv['ir']}/{lv['machine_code']:<5} {rss:>9.0f}", flush=True)
        n *= 10

if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
