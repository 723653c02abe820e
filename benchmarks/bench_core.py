"""Front-end cost: microseconds per traced op and per differentiated op.

Run: python benchmarks/bench_core.py [n_nodes]
"""

import sys
import time

import numpy as np

import symad
from symad import api
from symad.ad import vjp_nodes


def workload(x):
    # A mix of arithmetic and transcendental ops; each iteration adds 4 nodes.
    for i in range(N // 4):
        x = np.sin(x) * 0.9 + x * (1e-3 * (i % 7))
    return x


def main(n):
    global N
    N = n
    t0 = time.perf_counter()
    g = symad.trace(workload, 0.3)
    t1 = time.perf_counter()
    fwd_nodes = len(g.nodes)
    g._open += 1
    try:
        (bar,) = vjp_nodes(g, g.outputs, [g.const(1.0)], g.inputs)
    finally:
        g._open -= 1
    t2 = time.perf_counter()
    adj_nodes = len(g.nodes) - fwd_nodes
    vals = symad.interp.evaluate(g, [g.outputs[0], bar], {g.inputs[0]: 0.3})
    t3 = time.perf_counter()
    st = api.trace_call(workload, (0.3,), grad_argnums=0)
    t4 = time.perf_counter()
    print(f"forward graph: {fwd_nodes} nodes; trace {t1 - t0:.3f} s "
          f"= {(t1 - t0) / fwd_nodes * 1e6:.2f} us per traced node")
    print(f"adjoint: {adj_nodes} new nodes; reverse pass {t2 - t1:.3f} s "
          f"= {(t2 - t1) / fwd_nodes * 1e6:.2f} us per differentiated forward node")
    print(f"interpreter (forward + gradient, one point): {t3 - t2:.3f} s")
    print(f"trace_call with gradient (what compile_grad uses): {t4 - t3:.3f} s, "
          f"{len(st.graph.nodes)} nodes; value {float(vals[0]):.6f}, grad {float(vals[1]):.6g}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
