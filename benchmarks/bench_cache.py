"""Compile time cold vs warm with the on-disk cache, each in a fresh process.

    python benchmarks/bench_cache.py

For each function: a process with an empty cache folder (cold: trace, AD, lowering,
LLVM optimisation, machine code, then the object code is stored), then a second fresh
process with the populated folder (warm: trace, AD and lowering run; optimisation and
machine-code generation are replaced by loading the verified object).
"""

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import numpy as np
import symad
n, levels = int(sys.argv[1]), sys.argv[2]
def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)
f = symad.compile_grad(rosen, cache=True, opt_level=json.loads(levels))
x = np.linspace(-1, 1, n)
t0 = time.perf_counter()
v, g = f(x)
total = time.perf_counter() - t0
print(json.dumps({"total": total, "seconds": f.stats["seconds"],
                  "disk": f.stats["disk_cache"], "nodes": f.stats["nodes"]["ad"],
                  "bits": (np.float64(v).tobytes() + g.tobytes()).hex()[:64]}))
"""


def run(n, levels, folder):
    env = dict(os.environ, SYMAD_CACHE_DIR=folder)
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), json.dumps(levels)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    print(f"{'function':34} {'nodes':>7} {'cold s':>8} {'warm s':>8}  "
          f"{'cold opt+mc':>11} {'warm load':>9}  same bits")
    for n, levels in [(10, "auto"), (100, "auto"), (300, "auto"), (1000, "auto"),
                      (300, 3)]:
        with tempfile.TemporaryDirectory() as folder:
            cold = run(n, levels, folder)
            warm = run(n, levels, folder)
        assert cold["disk"] == "miss" and warm["disk"] == "hit", (cold, warm)
        c, w = cold["seconds"], warm["seconds"]
        name = f"rosenbrock n={n} grad (opt {levels})"
        print(f"{name:34} {cold['nodes']:7d} {cold['total']:8.3f} {warm['total']:8.3f}  "
              f"{c['llvm_opt'] + c['machine_code']:11.3f} {w['machine_code']:9.3f}  "
              f"{cold['bits'] == warm['bits']}")


if __name__ == "__main__":
    main()
