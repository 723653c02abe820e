"""Robustness of the compiled path: differential fuzzing of native code (bounded budget;
``benchmarks/fuzz_long.py`` runs thousands), threads, memory, and scale structure."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
from fuzz_diff import check_program
from hypothesis import given, settings
from hypothesis import strategies as st

import symad
from symad import compiled

pytest.importorskip("llvmlite")


# ---- differential fuzzing: interp vs compiled vs sympy vs central differences ---------

@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_compiled_programs_agree_everywhere(seed):
    stats: dict = {}
    bad = check_program(seed, stats=stats)
    assert not bad, "\n".join(bad)
    assert stats["value_grad"] == stats["hessian"] == 1


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_compiled_nan_inf_pattern_is_numpys(seed):
    bad = check_program(seed, raw=True, use_sympy=False)
    assert not bad, "\n".join(bad)


def test_fuzz_checker_can_fail(monkeypatch):
    # A wrong lowering must be caught: make every compiled sin return cos.
    from symad.codegen import lower
    from symad.ops import OPS
    monkeypatch.setitem(OPS, "sin", OPS["sin"].__class__(
        **{**{f: getattr(OPS["sin"], f) for f in OPS["sin"].__dataclass_fields__},
           "lower": OPS["cos"].lower}))
    assert lower.is_lowerable("sin")
    bad = []
    for seed in range(40):
        bad += check_program(seed, hessian=False, use_sympy=False)
    assert bad


# ---- threads ---------------------------------------------------------------------------

def test_eight_threads_call_one_function():
    def energy(x):
        return np.sum(np.sin(x) * np.exp(-x * x)) + np.prod(np.cos(x[:3]))
    f = symad.compile_grad(energy)
    xs = np.random.default_rng(0).uniform(-1, 1, (8, 12))
    want = [symad.value_and_grad(energy)(x) for x in xs]
    f(xs[0])
    errors = []
    start = threading.Barrier(8)

    def work(i):
        start.wait()
        for _ in range(300):
            v, g = f(xs[i])
            if not (np.isclose(v, want[i][0], rtol=1e-13) and
                    np.allclose(g, want[i][1], rtol=1e-13)):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_concurrent_compiles_of_different_functions():
    def make(i):
        c = 1.0 + i / 7

        def f(x, y):
            return np.sin(c * x) * y + np.log1p(x * x) * c
        return f
    results: dict = {}
    errors = []

    def work(k):
        try:
            for j in range(6):
                i = 6 * k + j
                results[i] = symad.compile_grad(make(i))(0.3, 1.7)
                # the same function compiled by two threads: both must agree
                results[-1 - i] = symad.compile_grad(make(i % 4))(0.3, 1.7)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(24):
        v, g = symad.value_and_grad(make(i), argnums=(0, 1))(0.3, 1.7)
        assert results[i][0] == pytest.approx(v, rel=1e-13)
        np.testing.assert_allclose(results[i][1], g, rtol=1e-13)


# ---- memory ----------------------------------------------------------------------------

def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def test_engines_of_dropped_functions_are_freed():
    def make(i):
        c = 0.5 + i * 1e-3

        def f(x, y):
            return np.sin(x * c) * y + np.exp(-(x * y)) * (c + i)
        return f

    recent_max = compiled.memory_cache_info()["recent_max"]
    for i in range(recent_max + 10):     # fill the LRU first
        symad.compile_grad(make(10_000 + i))(1.0, 2.0)
    gc.collect()
    before = _rss_mib()
    natives = []
    n = 300
    for i in range(n):
        g = symad.compile_grad(make(i))
        g(1.0, 2.0)
        natives.append(weakref.ref(g.specializations[-1].native.module))
    del g
    gc.collect()
    alive = sum(r() is not None for r in natives)
    growth = _rss_mib() - before
    # Only the bounded LRU keeps native code of functions nobody references.
    assert alive <= recent_max
    # llvmlite leaks ~50 KB per run of its default pipeline (measured: it grows with the
    # number of pipelines built, not with engines kept); engines themselves are freed.
    # Keeping all 300 engines alive would add well over this bound.
    assert growth < 80, f"RSS grew {growth:.1f} MiB over {n} compilations"


# ---- scale -------------------------------------------------------------------------------

def test_big_graph_compiles_in_chunks_without_recursion():
    import sys
    import time

    from symad import policy

    def chain(x):
        vals = [x[i] for i in range(8)]
        for i in range(2_500):
            a, b = vals[-1], vals[(i * 7919) % len(vals)]
            vals.append(np.sin(a) * b if i % 2 else a * 0.5 + np.tanh(b))
        return vals[-1] + vals[-2]

    f = symad.compile_grad(chain)
    x = np.linspace(-1, 1, 8)
    old = sys.getrecursionlimit()
    t0 = time.perf_counter()
    sys.setrecursionlimit(400)           # the graph is 2,500 deep: no stage may recurse
    try:
        v, g = f(x)
    finally:
        sys.setrecursionlimit(old)
    wall = time.perf_counter() - t0
    st = f.stats
    n_ops = st["nodes"]["ad"]
    assert n_ops > policy.MEDIUM_GRAPH_NODES and n_ops > policy.CHUNK_NODES
    assert (st["opt_level"]["ir"], st["opt_level"]["batch_machine_code"]) == \
        policy.choose_levels(n_ops, None) == (1, 1)
    assert st["opt_level"]["machine_code"] == 0     # single calls: fast build
    n_chunks = sum(1 for line in f.llvm_ir.splitlines() if line.startswith("define")
                   and ".chunk" in line)
    assert n_chunks >= max(2, n_ops // policy.CHUNK_NODES - 1)
    v_i, g_i = symad.value_and_grad(chain)(x)
    assert v == pytest.approx(v_i, rel=1e-12)
    np.testing.assert_allclose(g, g_i, rtol=1e-10, atol=1e-13)
    assert wall < 120                    # sanity cap only (about 3 s here)
