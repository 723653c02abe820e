"""symad in other people's loops: SciPy optimisers, pickling across processes, the
on-disk compile cache, logging, and distributed batches on Dask."""

import concurrent.futures
import functools
import gc
import logging
import multiprocessing
import os
import pickle

import numpy as np
import pytest

import symad
from symad import compiled as compiled_mod
from symad import diskcache, logs


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def baydin(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


# ---- SciPy ----------------------------------------------------------------------------

def test_minimize_lbfgsb_with_compiled_value_and_grad():
    optimize = pytest.importorskip("scipy.optimize")
    fg = symad.compile_grad(rosen)
    x0 = np.array([1.3, 0.7, 0.8, 1.9, 1.2])   # the SciPy tutorial start
    res = optimize.minimize(fg, x0, jac=True, method="L-BFGS-B",
                            options={"gtol": 1e-10, "maxiter": 2000})
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(5), atol=1e-5)
    assert res.fun < 1e-10


def test_minimize_trust_exact_with_compiled_hessian_and_hessp():
    optimize = pytest.importorskip("scipy.optimize")
    fg = symad.compile_grad(rosen)
    hess = symad.compile(symad.hessian(rosen))
    x0 = np.array([1.3, 0.7, 0.8, 1.9, 1.2])
    res = optimize.minimize(fg, x0, jac=True, hess=hess, method="trust-exact",
                            options={"gtol": 1e-10})
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(5), atol=1e-8)
    res = optimize.minimize(fg, x0, jac=True, hessp=functools.partial(symad.hvp, rosen),
                            method="trust-krylov", options={"gtol": 1e-10})
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(5), atol=1e-8)


def test_least_squares_curve_fit_with_compiled_jacobian():
    optimize = pytest.importorskip("scipy.optimize")
    t = np.linspace(0.0, 4.0, 40)
    truth = np.array([2.5, 1.3, 0.5])
    y = truth[0] * np.exp(-truth[1] * t) + truth[2]

    def residuals(p):
        return p[0] * np.exp(-p[1] * t) + p[2] - y

    fun = symad.compile(residuals)
    jac = symad.compile(symad.jacobian(residuals))
    res = optimize.least_squares(fun, np.array([1.0, 1.0, 0.0]), jac=jac,
                                 xtol=1e-14, ftol=1e-14, gtol=1e-14)
    assert res.success
    np.testing.assert_allclose(res.x, truth, rtol=1e-9)
    assert res.njev < 50


# ---- pickling -------------------------------------------------------------------------

def _same_bits(a, b):
    fa = [np.asarray(v, dtype=np.float64) for v in _leaves(a)]
    fb = [np.asarray(v, dtype=np.float64) for v in _leaves(b)]
    return len(fa) == len(fb) and all(x.shape == y.shape and x.tobytes() == y.tobytes()
                                      for x, y in zip(fa, fb))


def _leaves(tree):
    return symad.tree.tree_flatten(tree, "")[0]


def _call_pickled(blob, args):
    f = pickle.loads(blob)
    return f(*args), f.batch(*[np.stack([a, a]) for a in args])


def _examples():
    vec = np.linspace(-0.9, 1.7, 9)
    return [
        (symad.compile_grad(baydin), (2.0, 5.0)),
        (symad.compile_grad(lambda x: np.sum(np.tanh(x) ** 2) + x[0] * x[-1]), (vec,)),
        (symad.compile(lambda x: (np.sin(x) * 3.0, np.sum(x ** 2))), (vec,)),
        (symad.compile(symad.hessian(rosen)), (vec,)),
    ]


def test_pickle_round_trip_is_bit_for_bit_in_process():
    for f, args in _examples():
        want = f(*args)
        g = pickle.loads(pickle.dumps(f))
        assert g is not f
        assert _same_bits(g(*args), want)
        assert _same_bits(g.batch(*[np.stack([a, a]) for a in args]),
                          f.batch(*[np.stack([a, a]) for a in args]))
        assert pickle.loads(pickle.dumps(f)) is g    # restored once per process


def test_pickle_round_trip_is_bit_for_bit_in_worker_processes():
    cases = _examples()
    wants = [(f(*args), f.batch(*[np.stack([a, a]) for a in args])) for f, args in cases]
    blobs = [(pickle.dumps(f), args) for f, args in cases]
    ctx = multiprocessing.get_context("spawn")   # a fresh interpreter: nothing inherited
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        got = list(pool.map(_call_pickled, *zip(*blobs)))
    for (want_value, want_batch), (value, batch) in zip(wants, got):
        assert _same_bits(value, want_value)
        assert _same_bits(batch, want_batch)


def test_unpickled_lambda_explains_it_cannot_trace_new_shapes():
    f = symad.compile_grad(lambda x: np.sum(x ** 2))
    f(np.ones(3))
    g = pickle.loads(pickle.dumps(f))
    assert _same_bits(g(np.ones(3)), f(np.ones(3)))
    with pytest.raises(symad.SymadError, match="module level"):
        g(np.ones(4))


def test_unpickled_importable_function_traces_new_shapes():
    f = symad.compile_grad(rosen)
    f(np.ones(3))
    g = pickle.loads(pickle.dumps(f))
    value, grad = g(np.full(5, 2.0))
    assert value == rosen(np.full(5, 2.0))
    assert grad.shape == (5,)


def test_unpickling_a_malformed_state_raises_not_crashes():
    f = symad.compile(lambda x: np.sin(x) * 2.0)
    f(np.ones(2))
    _, (state,) = f.__reduce__()            # what pickle stores: (restore_compiled, (state,))
    bad = dict(state, token="x1")
    spec = dict(state["specs"][0])
    table = dict(spec["table"])
    table["rows"] = [("sin", (5,), ())] + list(table["rows"])  # operand after its user
    spec["table"] = table
    bad["specs"] = [spec]
    with pytest.raises(symad.SymadError, match="rebuild"):
        compiled_mod.restore_compiled(bad)
    spec2 = dict(state["specs"][0], key=(state["specs"][0]["key"][0], ((7,),)))
    with pytest.raises(symad.SymadError, match="inputs"):
        compiled_mod.restore_compiled(dict(state, token="x2", specs=[spec2]))
    with pytest.raises(symad.SymadError, match="format"):
        compiled_mod.restore_compiled({"format": 99})


# ---- on-disk compile cache --------------------------------------------------------------

def _fresh(fn, **kw):
    """Compile ``fn`` with the in-memory caches emptied (so only the disk can help)."""
    compiled_mod.clear_memory_cache()
    gc.collect()
    return symad.compile_grad(fn, **kw)


def _entries(folder):
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names
            if n.endswith(".obj")]


def test_disk_cache_cold_then_warm_gives_the_same_bits(tmp_path):
    fn = lambda x: np.sum(np.exp(-x ** 2) * np.cos(3.0 * x))  # noqa: E731
    x = np.linspace(-1, 1, 5)
    f = _fresh(fn, cache=tmp_path)
    want = f(x)
    assert f.stats["disk_cache"] == "miss" and len(_entries(tmp_path)) == 1
    assert "define" in f.optimized_ir
    del f
    g = _fresh(fn, cache=tmp_path)
    assert _same_bits(g(x), want)
    assert g.stats["disk_cache"] == "hit" and g.stats["seconds"]["llvm_opt"] == 0.0
    assert "define" in g.optimized_ir and "ret" in g.asm


def test_disk_cache_detects_corrupt_and_stale_entries(tmp_path, caplog):
    fn = lambda x, y: np.sqrt(x * x + y * y) + 0.25  # noqa: E731
    f = _fresh(fn, cache=tmp_path)
    want = f(3.0, 4.0)
    (path,) = _entries(tmp_path)
    del f
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with caplog.at_level(logging.WARNING, logger="symad"):
        g = _fresh(fn, cache=tmp_path)
        assert g(3.0, 4.0) == want
    assert g.stats["disk_cache"] == "miss" and "digest" in caplog.text
    del g
    # An intact entry filed under the wrong key (stale) is rejected by its stored key.
    good = open(path, "rb").read()
    key = os.path.basename(path)[:-4]
    other = "0" * 64
    with pytest.raises(ValueError, match="stale"):
        diskcache.decode(other, good)
    assert diskcache.decode(key, good)[0]
    with pytest.raises(ValueError):
        diskcache.decode(key, good[:-10])


def test_disk_cache_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(diskcache.ENV_VAR, str(tmp_path))
    f = _fresh(lambda x: x * np.tanh(x) - 0.125)
    f(0.5)
    assert len(_entries(tmp_path)) == 1
    g = _fresh(lambda x: x * np.tanh(x) - 0.5, cache=False)
    g(0.5)
    assert len(_entries(tmp_path)) == 1
    with pytest.raises(TypeError, match="cache"):
        symad.compile(rosen, cache=3)


# ---- logging ----------------------------------------------------------------------------

def test_stage_timings_and_progress_are_logged(caplog, monkeypatch):
    monkeypatch.setattr(logs, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(logs, "PROGRESS_EVERY", 0.005)
    with caplog.at_level(logging.DEBUG, logger="symad"):
        f = _fresh(lambda x: np.sum(np.sin(x) * np.cos(x[::-1]) ** 2) + 0.375)
        f(np.linspace(0, 1, 60))
    text = caplog.text
    assert "trace" in text and "machine_code" in text
    assert "compiling <lambda>" in text


# ---- Dask -------------------------------------------------------------------------------

def test_dask_batch_on_a_local_cluster_equals_the_local_batch():
    da = pytest.importorskip("dask.array", reason="dask is not installed (pip install "
                             "'symad[dask]')")
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not "
                                      "installed (pip install 'symad[dask]')")
    import dask

    f = symad.compile_grad(lambda x, y: np.log(x) + x * y - np.sin(y))
    rng = np.random.default_rng(1)
    n = 200_000
    x, y = rng.uniform(0.5, 2.0, n), rng.uniform(-1.0, 1.0, n)
    want = f.batch(x, y)
    lazy = f.batch(da.from_array(x, chunks=50_000), da.from_array(y, chunks=50_000))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        (v, (gx, gy)), = dask.compute(lazy)
    assert _same_bits((v, (gx, gy)), want)
    h = symad.compile(lambda p: (np.sum(p ** 2), p[:2] * 3.0))
    pts = rng.normal(size=(1000, 4))
    got = dask.compute(h.batch(da.from_array(pts, chunks=(300, 2))),
                       scheduler="synchronous")[0]
    assert _same_bits(got, h.batch(pts))
