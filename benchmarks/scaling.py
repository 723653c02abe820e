"""Compile time of symad vs graph size, 10^3 ... 10^6 nodes, on two graphs.

``chain``: ``x = sin(x) * y + x`` repeated, as regular as a graph gets: it rolls into one
loop (codegen/roll.py), so LLVM sees a few dozen instructions at any size and the cost is
tracing, differentiating and planning. ``irregular``: each step applies a randomly chosen
op to two randomly chosen earlier values, so nothing repeats and nothing rolls: LLVM
compiles every node (chunked, levels dropping with size).

Each size runs in its own process with what is left of the scaling budget as its time
limit; after a timeout the larger sizes are reported as skipped. Run alone with
``python -m benchmarks.scaling 1e3,1e4,1e5 [chain|irregular]``.
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


def irregular(nodes: int):
    """f(x, y) with about ``nodes`` forward nodes and no repeating structure."""
    rng = np.random.default_rng(12345)
    steps = max(1, nodes // 2)
    picks = [(int(rng.integers(0, 4)), float(rng.random()), float(rng.random()))
             for _ in range(steps)]

    def f(x, y):
        vals = [x, y]
        for op, ra, rb in picks:
            a, b = vals[-1], vals[int(rb * (len(vals) - 1))]
            vals.append(np.sin(a) * b if op == 0 else np.tanh(a) + b if op == 1
                        else a * b * 0.5 if op == 2 else a - np.exp(-b * b) * ra)
        return vals[-1]
    return f


GRAPHS = {"chain": chain, "irregular": irregular}


def measure(nodes: int, graph: str = "chain") -> dict:
    import symad
    f = symad.compile_grad(GRAPHS[graph](nodes))
    t0 = time.perf_counter()
    f(0.3, 0.7)
    total = time.perf_counter() - t0
    s = f.stats
    return {"graph": graph, "target_nodes": nodes, "forward_nodes": s["nodes"]["trace"],
            "rolled": s["rolled"],
            "graph_nodes": s["nodes"]["ad"], "llvm_instructions": s["nodes"]["llvm_ir"],
            "seconds": s["seconds"], "total_s": total, "opt_level": s["opt_level"]}


def run_scaling(sizes, budget_s: float, log=print, graph: str = "chain") -> list:
    from .runner import ROOT
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("SYMAD_VERIFY", None)
    out, end = [], time.perf_counter() + budget_s
    stop = None
    for n in sizes:
        left = end - time.perf_counter()
        if stop or left < 2:
            out.append({"graph": graph, "target_nodes": n,
                        "status": stop or "skipped (budget)"})
            log(f"  {graph} {n:>9,} nodes: {out[-1]['status']}")
            continue
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--worker", str(n), graph]
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=left)
            res = json.loads(p.stdout.strip().splitlines()[-1])
            res["status"] = "ok"
        except subprocess.TimeoutExpired:
            res = {"graph": graph, "target_nodes": n, "status": f"timeout (> {left:.0f} s)"}
            stop = "skipped (after a timeout)"
        except Exception as exc:  # noqa: BLE001
            res = {"graph": graph, "target_nodes": n, "status": f"failed: {exc}"[:200]}
        out.append(res)
        if res["status"] == "ok":
            log(f"  {graph} {n:>9,} nodes: total {res['total_s']:.2f} s  "
                + " ".join(f"{k} {v:.2f}" for k, v in res["seconds"].items()))
        else:
            log(f"  {graph} {n:>9,} nodes: {res['status']}")
    return out


def slope(rows, graph: str = "chain") -> float | None:
    """Log-log slope of total build time against forward nodes (1 = linear)."""
    pts = [(r["forward_nodes"], r["total_s"]) for r in rows if r.get("status") == "ok"
           and r["forward_nodes"] >= 1e4 and r.get("graph", "chain") == graph]
    if len(pts) < 2:
        return None
    x = np.log([p[0] for p in pts])
    y = np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else None


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        print(json.dumps(measure(int(sys.argv[2]), sys.argv[3])))
    else:
        sizes = [int(float(s)) for s in (sys.argv[1] if len(sys.argv) > 1 else
                                         "1e3,1e4,1e5").split(",")]
        graph = sys.argv[2] if len(sys.argv) > 2 else "chain"
        rows = run_scaling(sizes, 600, graph=graph)
        sl = slope(rows, graph)
        print("log-log slope:", sl if not math.isnan(sl or 0) else None)
