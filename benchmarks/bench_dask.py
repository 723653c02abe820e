"""f.batch through Dask on a LocalCluster (2 worker processes) against f.batch alone.

    python benchmarks/bench_dask.py [N]      # default N = 10**7

The inputs are generated on the workers (``dask.array.random``) and the same arrays are
computed locally for the in-process reference, so both sides see identical points; the
Dask result is checked bit for bit against ``f.batch``. The inputs are persisted on the
workers first; two Dask timings follow: results reduced on the workers (the compute
throughput of the cluster) and results gathered to the client (3 x 8 bytes per point
through the scheduler's comms, which dominates on one machine).
"""

import sys
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

import symad


def f(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


def main(n: int) -> None:
    fg = symad.compile_grad(f, argnums=(0, 1))
    chunk = max(n // 16, 1)
    rng = da.random.default_rng(0)
    x = rng.uniform(0.5, 2.0, n, chunks=chunk)
    y = rng.uniform(-1.0, 1.0, n, chunks=chunk)
    xs, ys = dask.compute(x, y, scheduler="threads")
    fg.batch(xs[:10], ys[:10])                                   # compile outside the timing
    t0 = time.perf_counter()
    want = fg.batch(xs, ys)
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    want2 = fg.batch(xs, ys, threads=2)
    t_local2 = time.perf_counter() - t0
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        x, y = dask.persist(x, y)                               # inputs live on the workers
        wait((x, y))
        dask.compute(fg.batch(x[:chunk], y[:chunk]))            # warm the workers
        lazy = fg.batch(x, y)
        t0 = time.perf_counter()
        dask.compute(lazy[0].sum(), lazy[1][0].sum(), lazy[1][1].sum())
        t_reduce = time.perf_counter() - t0
        t0 = time.perf_counter()
        (v, (g1, g2)), = dask.compute(lazy)
        t_dask = time.perf_counter() - t0
    same = all(a.tobytes() == b.tobytes() for a, b in
               ((v, want[0]), (g1, want[1][0]), (g2, want[1][1])))
    same2 = all(a.tobytes() == b.tobytes() for a, b in
                ((want2[0], want[0]), (want2[1][0], want[1][0])))
    print(f"N = {n:,} points, value + gradient of log(x1) + x1*x2 - sin(x2)")
    print(f"f.batch (1 thread)           {t_local:7.3f} s  {n / t_local / 1e6:7.1f} M points/s")
    print(f"f.batch (threads=2)          {t_local2:7.3f} s  {n / t_local2 / 1e6:7.1f} M points/s"
          f"  equal: {same2}")
    print(f"Dask, results stay on workers {t_reduce:6.3f} s  {n / t_reduce / 1e6:7.1f} M points/s"
          "  (batch + a sum per output, inputs persisted)")
    print(f"Dask, results to the client  {t_dask:7.3f} s  {n / t_dask / 1e6:7.1f} M points/s"
          f"  ({len(x.chunks[0])} chunks, equal bit for bit: {same})")
    if not same:
        raise SystemExit("Dask result differs from f.batch")


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 10**7)
