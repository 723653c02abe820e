"""Compile time of symad vs graph size: a chain of k traced nodes, 10^3 ... 10^6.

Each size runs in its own process with what is left of the scaling budget as its time
limit; after a timeout the larger sizes are reported as skipped. Run alone with
``python -m benchmarks.scaling 1e3,1e4,1e5``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np


def chain(nodes: int):
    """f(x, y) with about ``nodes`` forward nodes: x <- sin(x) * y + x, repeated."""
    steps = max(1, nodes // 3)

    def f(x, y):
        for _ in range(steps):
            x = np.sin(x) * y + x
        return x
    return f


def measure(nodes: int) -> dict:
    import symad
    f = symad.compile_grad(chain(nodes))
    t0 = time.perf_counter()
    f(0.3, 0.7)
    total = time.perf_counter() - t0
    s = f.stats
    return {"target_nodes": nodes, "forward_nodes": s["nodes"]["trace"],
            "graph_nodes": s["nodes"]["ad"], "llvm_instructions": s["nodes"]["llvm_ir"],
            "seconds": s["seconds"], "total_s": total, "opt_level": s["opt_level"]}


def run_scaling(sizes, budget_s: float, log=print) -> list:
    from .runner import ROOT
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SYMAD_VERIFY", None)
    out, end = [], time.perf_counter() + budget_s
    stop = None
    for n in sizes:
        left = end - time.perf_counter()
        if stop or left < 2:
            out.append({"target_nodes": n, "status": stop or "skipped (budget)"})
            log(f"  {n:>9,} nodes: {out[-1]['status']}")
            continue
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", str(n)]
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=left)
            res = json.loads(p.stdout.strip().splitlines()[-1])
            res["status"] = "ok"
        except subprocess.TimeoutExpired:
            res = {"target_nodes": n, "status": f"timeout (> {left:.0f} s)"}
            stop = "skipped (after a timeout)"
        except Exception as exc:  # noqa: BLE001
            res = {"target_nodes": n, "status": f"failed: {exc}"[:200]}
        out.append(res)
        if res["status"] == "ok":
            log(f"  {n:>9,} nodes: total {res['total_s']:.2f} s  "
                + " ".join(f"{k} {v:.2f}" for k, v in res["seconds"].items()))
        else:
            log(f"  {n:>9,} nodes: {res['status']}")
    return out


def slope(rows) -> float | None:
    """Log-log slope of total build time against forward nodes (1 = linear)."""
    pts = [(r["forward_nodes"], r["total_s"]) for r in rows if r.get("status") == "ok"
           and r["forward_nodes"] >= 1e4]
    if len(pts) < 2:
        return None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(measure(int(sys.argv[2]))))
    else:
        sizes = [int(float(s)) for s in (sys.argv[1] if len(sys.argv) > 1 else
                                         "1e3,1e4,1e5").split(",")]
        rows = run_scaling(sizes, 600)
        print("log-log slope:", slope(rows) if not math.isnan(slope(rows) or 0) else None)
