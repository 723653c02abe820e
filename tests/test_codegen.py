"""The LLVM back end against the numpy reference interpreter (lower -> jit -> entries)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import numpy as np
import pytest

import symad
from symad import interp
from symad.ops import OPS
from symad.trace import apply

pytest.importorskip("llvmlite")

from symad.codegen import is_lowerable  # noqa: E402

SPECIALS = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, np.inf, -np.inf, np.nan,
                     1e308, -1e-310, 7.25])
# the elementwise rows (gather and sum are loops of the array level: test_structural_ops)
ROW_OPS = [name for name, spec in OPS.items()
           if name not in ("const", "input") and not spec.structural]
POWI_EXPONENTS = (2, 3, -1, -2, 5, 0, 1)


def baydin(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rosen_grad(x):
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return g


def _points(name: str, n_random: int = 40):
    """Sample columns: random points in the row's domain plus every pair of specials."""
    spec = OPS[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    lo, hi = spec.domain
    rand = rng.uniform(lo, hi, size=(n_random, spec.arity))
    grids = np.meshgrid(*([SPECIALS] * spec.arity), indexing="ij")
    special = np.stack([g.ravel() for g in grids], axis=1)
    pts = np.concatenate([rand, special])
    if name in ("where", "mul0"):
        pts[::3, 0] = 0.0            # exercise the c == 0 / z == 0 branch
    if name in ("maximum", "minimum", "eq", "le", "ge"):
        pts[::4, 1] = pts[::4, 0]    # ties
    return pts


def _inf_sign(a):
    return np.where(np.isinf(a), np.sign(a), 0.0)


def _op_fn(name: str, attrs: tuple):
    arity = OPS[name].arity

    def f(*args):
        return apply(name, args[:arity], attrs)
    f.__name__ = f"op_{name}"
    return f


def _cases():
    for name in ROW_OPS:
        if name == "powi":
            for n in POWI_EXPONENTS:
                yield pytest.param(name, (n,), id=f"powi{n}")
        else:
            yield pytest.param(name, (), id=name)


@pytest.mark.parametrize("name", ROW_OPS)
def test_every_row_is_lowerable(name):
    assert is_lowerable(name), f"op {name!r} has no LLVM lowering"


@pytest.mark.parametrize("name,attrs", list(_cases()))
def test_op_compiled_matches_interpreter(name, attrs):
    pts = _points(name)
    cols = [pts[:, i].copy() for i in range(pts.shape[1])]
    f = symad.compile(_op_fn(name, attrs))
    got = f.batch(*cols)
    graph = f.graph
    with np.errstate(all="ignore"):
        want = interp.evaluate(graph, graph.outputs, dict(zip(graph.inputs, cols)))[0]
        want = np.broadcast_to(want, got.shape)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0, equal_nan=True,
                               err_msg=f"op {name}{attrs} batch")
    # NaN and ±inf in the same places as numpy, not only "close".
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(_inf_sign(got), _inf_sign(want))
    # Single calls go through the scalar entry; they agree with the batch bit for bit.
    for row in range(0, len(pts), 7):
        single = f(*pts[row])
        assert single == got[row] or (np.isnan(single) and np.isnan(got[row]))


@pytest.mark.parametrize("name,attrs", [c for c in _cases()
                                        if OPS[c.values[0]].partials is not None])
def test_op_gradient_compiled_matches_interpreter(name, attrs):
    spec = OPS[name]
    lo, hi = spec.domain
    pts = np.random.default_rng(1).uniform(lo, hi, size=(25, spec.arity))
    pts[0] = pts[0, 0]    # a tie for maximum/minimum
    cols = [pts[:, i].copy() for i in range(spec.arity)]
    f = symad.compile_grad(_op_fn(name, attrs))
    vals, grads = f.batch(*cols)
    g = f.grad_graph
    with np.errstate(all="ignore"):
        want = interp.evaluate(g, g.outputs, dict(zip(g.inputs, cols)))
    got = [vals] + (list(grads) if isinstance(grads, tuple) else [grads])
    for k, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, np.broadcast_to(b, a.shape), rtol=1e-13, atol=0,
                                   equal_nan=True, err_msg=f"{name} output {k}")


@pytest.mark.parametrize("x,y", [(-0.0, 0.0), (0.0, -0.0), (np.nan, 1.0), (1.0, np.nan),
                                 (np.nan, np.nan), (-np.inf, np.inf), (2.0, 2.0)])
@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_nan_and_signed_zero_like_numpy(op, x, y):
    f = symad.compile(_op_fn(op, ()))
    got = f(x, y)
    ref = getattr(np, op)(np.array([x]), np.array([y]))[0]
    assert np.isnan(got) == np.isnan(ref)
    if not np.isnan(ref):
        assert got == ref and np.signbit(got) == np.signbit(ref)


def test_log_minus_one_and_one_over_zero():
    f = symad.compile(lambda x, y: (np.log(x), 1.0 / y))
    a, b = f(-1.0, 0.0)
    assert np.isnan(a) and b == np.inf
    assert f(1.0, -0.0)[1] == -np.inf


# ---- the Baydin example, inspection ---------------------------------------------------

def test_baydin_compile_grad():
    f = symad.compile_grad(baydin)
    value, grad = f(2.0, 5.0)
    assert value == pytest.approx(11.652071455223084, rel=1e-15)
    assert grad == pytest.approx((5.5, 1.7163378145367738), rel=1e-15)
    ref_v, ref_g = symad.value_and_grad(baydin, (0, 1))(2.0, 5.0)
    assert value == ref_v and grad == tuple(ref_g)
    # Other ways in: ints, numpy scalars, the decorator forms.
    assert f(2, 5) == (value, grad)
    assert f(np.float64(2.0), np.float32(5.0)) == (value, grad)
    assert symad.compile_grad(argnums=1)(baydin)(2.0, 5.0) == (value, grad[1])
    assert symad.compile_grad(argnums=(0,))(baydin)(2.0, 5.0) == (value, (grad[0],))


def test_inspection():
    @symad.compile_grad
    def f(x1, x2):
        return baydin(x1, x2)

    with pytest.raises(symad.SymadError, match="call it once"):
        _ = f.llvm_ir
    f(2.0, 5.0)
    # Native code is shared by graph structure, so the name may be another function's
    # with the same graph (test_baydin_compile_grad's).
    assert re.search(r'define void @"symad_\w+_kernel"\(ptr', f.llvm_ir)
    assert re.search(r'define void @"symad_\w+_batch"\(ptr', f.llvm_ir)
    assert re.search(r"define void @symad_\w+_kernel\(ptr", f.optimized_ir)
    assert "@llvm.log.f64" in f.optimized_ir and "@llvm.sin.f64" in f.optimized_ir
    assert re.search(r"^symad_\w+_kernel:", f.asm, re.M)
    assert re.search(r"^\s+(vmulsd|mulsd|fmul)\s", f.asm, re.M) and "ret" in f.asm
    assert f.graph.count_ops()["sin"] == 1 and "cos" not in f.graph.count_ops()
    assert f.grad_graph.count_ops(f.grad_graph.outputs)["cos"] == 1
    st = f.stats
    for stage in ("trace", "ad", "lowering", "llvm_opt", "machine_code"):
        assert st["seconds"][stage] >= 0.0
    assert st["nodes"]["ad"] > st["nodes"]["trace"] > 0
    assert re.search(r"%\"?v\d+\"? = ", f.llvm_ir)   # IR value names mirror node ids


def test_fastmath_flags_are_opt_in():
    f = symad.compile_grad(baydin)
    f(2.0, 5.0)
    assert " fast " not in f.llvm_ir and "nnan" not in f.llvm_ir and "nsz" not in f.llvm_ir
    g = symad.compile_grad(baydin, fastmath=True)
    assert g(2.0, 5.0)[0] == pytest.approx(11.652071455223084, rel=1e-14)
    assert "reassoc" in g.llvm_ir and "nnan" not in g.llvm_ir and "ninf" not in g.llvm_ir
    # nsz with reassoc lets LLVM cancel (x + y) - y to x, also for y = inf
    assert "nsz" not in g.llvm_ir


# ---- Rosenbrock, batches, scipy ----------------------------------------------------------

def test_rosenbrock_100_matches_analytic_gradient():
    f = symad.compile_grad(rosen)
    x = np.random.default_rng(0).uniform(-2, 2, 100)
    value, grad = f(x)
    assert isinstance(grad, np.ndarray) and grad.shape == (100,)
    np.testing.assert_allclose(grad, rosen_grad(x), rtol=1e-11)
    assert value == pytest.approx(rosen(x), rel=1e-13)


def test_batch_equals_single_calls():
    f = symad.compile_grad(rosen)
    xs = np.random.default_rng(1).uniform(-2, 2, (1000, 7))
    values, grads = f.batch(xs)
    assert values.shape == (1000,) and grads.shape == (1000, 7)
    for i in range(0, 1000, 37):
        v, g = f(xs[i])
        assert v == values[i]
        np.testing.assert_array_equal(g, grads[i])
    v2, g2 = f.batch(xs, threads=4)
    np.testing.assert_array_equal(v2, values)
    np.testing.assert_array_equal(g2, grads)


@pytest.mark.parametrize("n_points, sizes", [(1, (37, 18)), (3, (37, 18)), (4, (37, 18)),
                                             (7, (5, 10)), (257, (37, 18)), (1003, (4, 7))])
def test_batch_long_rows_equal_single_calls(n_points, sizes):
    # Leaves of 4 or more doubles per point move through the batch tile in 4x4 blocks:
    # every tail (points % 4, elements % 4, several leaves at offsets) must land right.
    def f(x, y):
        return np.sum(np.sin(x) * x[0]) + np.sum(y * y) * x[-1]
    g = symad.compile_grad(f)
    rng = np.random.default_rng(n_points)
    xs, ys = rng.uniform(-1, 1, (n_points, sizes[0])), rng.uniform(-1, 1, (n_points, sizes[1]))
    values, (gx, gy) = g.batch(xs, ys)
    for i in {0, n_points // 2, n_points - 1}:
        v, (gxi, gyi) = g(xs[i], ys[i])
        assert v == values[i]
        np.testing.assert_array_equal(gxi, gx[i])
        np.testing.assert_array_equal(gyi, gy[i])
    every = np.array([g(xs[i], ys[i])[1][0] for i in range(n_points)])
    np.testing.assert_array_equal(every, gx)


def test_batch_with_libm_calls_is_vectorised_and_bit_identical():
    # tanh/arctan/sinh are libm functions, not LLVM intrinsics: the batch entry runs them
    # lane by lane inside an explicitly 4-wide kernel, so results equal single calls.
    def f(x, y):
        return np.tanh(x * y) + np.arctan(x) * np.sinh(y) - np.exp(-x * x)
    g = symad.compile_grad(f)
    rng = np.random.default_rng(5)
    xs, ys = rng.uniform(-2, 2, 1003), rng.uniform(-2, 2, 1003)
    values, (gx, gy) = g.batch(xs, ys)
    assert "_kernel4" in g.llvm_ir and "_ZGV" not in g.llvm_ir   # no libmvec by default
    for i in range(0, 1003, 17):
        v, (a, b) = g(xs[i], ys[i])
        assert (v, a, b) == (values[i], gx[i], gy[i])



def test_batch_beyond_the_cache_streams_results_bit_identically():
    # Calls writing more than STREAMING_OUT_DOUBLES results use non-temporal stores, for
    # short rows and for long rows (the 4x4 block copies) alike; same numbers either way.
    from symad import policy

    def f(x, y):
        return np.sum(np.sin(x) * x[0]) + y * y
    g = symad.compile_grad(f)
    n = policy.STREAMING_OUT_DOUBLES // 22 + 1003      # 22 results per point; a ragged tail
    rng = np.random.default_rng(9)
    xs, ys = rng.uniform(-1, 1, (n, 20)), rng.uniform(-1, 1, n)
    values, (gx, gy) = g.batch(xs, ys, threads=1)
    assert "movnt" in g.asm
    step = policy.STREAMING_OUT_DOUBLES // 22 // 3     # calls small enough to write cached
    for lo in range(0, n, step):
        v, (a, b) = g.batch(xs[lo:lo + step], ys[lo:lo + step], threads=1)
        np.testing.assert_array_equal(v, values[lo:lo + step])
        np.testing.assert_array_equal(a, gx[lo:lo + step])
        np.testing.assert_array_equal(b, gy[lo:lo + step])
    i = n - 1
    v, (a, b) = g(xs[i], ys[i])
    assert (v, b) == (values[i], gy[i])
    np.testing.assert_array_equal(a, gx[i])

def test_batch_into_preallocated_out_arrays():
    f = symad.compile_grad(baydin)
    rng = np.random.default_rng(3)
    x1, x2 = rng.uniform(0.5, 3, 300), rng.uniform(-3, 3, 300)
    want_v, (want_g1, want_g2) = f.batch(x1, x2)
    out = (np.full(300, np.nan), (np.full(300, np.nan), np.full(300, np.nan)))
    got = f.batch(x1, x2, out=out, threads=2)
    assert got[0] is out[0] and got[1][1] is out[1][1]   # written in place, returned
    np.testing.assert_array_equal(out[0], want_v)
    np.testing.assert_array_equal(out[1][0], want_g1)
    np.testing.assert_array_equal(out[1][1], want_g2)


@pytest.mark.parametrize("bad, message", [
    (lambda n: (np.empty(n), np.empty(n)), "needs 3 array"),
    (lambda n: (np.empty(n), (np.empty(n), np.empty(n + 1))), r"shape \(300,\)"),
    (lambda n: (np.empty(n, np.float32), (np.empty(n), np.empty(n))), "float64"),
    (lambda n: (np.empty(2 * n)[::2], (np.empty(n), np.empty(n))), "C-contiguous"),
    (lambda n: [np.empty(n)] * 3, "overlaps another"),
])
def test_batch_out_errors_name_the_problem(bad, message):
    f = symad.compile_grad(baydin)
    x = np.linspace(0.5, 2.0, 300)
    with pytest.raises(ValueError, match=message):
        f.batch(x, x + 1.0, out=bad(300))


def test_batch_out_may_not_overlap_inputs():
    f = symad.compile_grad(rosen)
    xs = np.random.default_rng(4).uniform(-2, 2, (50, 7))
    with pytest.raises(ValueError, match="overlaps an input"):
        f.batch(xs, out=(np.empty(50), xs))


def test_batch_two_args_and_threads():
    f = symad.compile_grad(baydin)
    rng = np.random.default_rng(2)
    x1, x2 = rng.uniform(0.5, 3, 1000), rng.uniform(-3, 3, 1000)
    values, (g1, g2) = f.batch(x1, x2, threads=3)
    for i in (0, 500, 999):
        v, g = f(x1[i], x2[i])
        assert (values[i], g1[i], g2[i]) == (v, g[0], g[1])


def test_scipy_minimize_with_jac_true():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    f = symad.compile_grad(rosen)
    res = scipy_optimize.minimize(f, np.zeros(5), jac=True, method="BFGS")
    assert res.success
    np.testing.assert_allclose(res.x, np.ones(5), atol=1e-4)


def test_compile_hessian_equals_interpreted():
    x = np.array([1.2, 0.7, -0.3, 2.0])
    h = symad.compile(symad.hessian(rosen))
    np.testing.assert_allclose(h(x), symad.hessian(rosen)(x), rtol=1e-13)
    assert h(x).shape == (4, 4)


def test_pytree_arguments_and_outputs():
    def f(p, scale):
        return np.sum(p["w"] ** 2) * scale + np.sin(p["b"][0])

    cf = symad.compile_grad(f, argnums=0)
    p = {"w": np.array([1.0, 2.0]), "b": (0.5,)}
    v, g = cf(p, 3.0)
    rv, rg = symad.value_and_grad(f)(p, 3.0)
    assert v == pytest.approx(float(rv), rel=1e-15)
    np.testing.assert_allclose(g["w"], rg["w"], rtol=1e-15)
    assert g["b"][0] == pytest.approx(float(rg["b"][0]), rel=1e-15)
    c = symad.compile(lambda x: {"a": x * 2.0, "b": [np.sum(x), x[0]]})
    out = c(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(out["a"], [2.0, 4.0])
    assert out["b"] == [3.0, 1.0]


# ---- validation: bad input raises, never crashes ----------------------------------------

def test_bad_arguments_raise():
    f = symad.compile_grad(baydin)
    f(2.0, 5.0)
    with pytest.raises(TypeError):
        f(2.0)
    with pytest.raises(TypeError):
        f(2.0, 5.0, 1.0)
    with pytest.raises(TypeError, match="str"):
        f("2.0", 5.0)
    with pytest.raises(TypeError, match="complex"):
        f(1j, 5.0)
    with pytest.raises(TypeError):
        f(None, 5.0)
    g = symad.compile_grad(rosen)
    g(np.ones(4))
    with pytest.raises(TypeError, match="dtype"):
        g(np.array(["a", "b"]))
    with pytest.raises(ValueError, match="points"):
        g.batch(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="scalar"):
        symad.compile_grad(baydin).batch(1.0, 2.0)
    with pytest.raises(TypeError, match="one scalar"):
        symad.compile_grad(lambda x: x * 2.0)(np.ones(3))
    with pytest.raises(TypeError, match="argnums"):
        symad.compile_grad(baydin, argnums=5)(1.0, 2.0)


def test_new_shape_recompiles():
    f = symad.compile_grad(rosen)
    for n in (3, 5, 3):
        x = np.linspace(-1, 1, n)
        np.testing.assert_allclose(f(x)[1], rosen_grad(x), rtol=1e-12)
    assert len(f.specializations) == 2


def test_cache_does_no_llvm_work_the_second_time():
    def h(x, y):
        return np.exp(x) * np.cos(y) + x ** 3
    a = symad.compile_grad(h)
    a(1.0, 2.0)
    b = symad.compile_grad(h)
    assert b(1.0, 2.0) == a(1.0, 2.0)
    assert not a.stats["cached"] and b.stats["cached"]
    assert b.stats["seconds"]["machine_code"] == 0.0


def test_threads_call_concurrently():
    f = symad.compile_grad(rosen)
    g = symad.compile_grad(baydin)
    xs = np.random.default_rng(3).uniform(-1, 1, (8, 6))
    want = [f(x) for x in xs]
    errors = []

    def work(i):
        for _ in range(200):
            v, gr = f(xs[i])
            if v != want[i][0] or not np.array_equal(gr, want[i][1]):
                errors.append(i)
            if g(2.0, 5.0)[0] != 11.652071455223084:
                errors.append(-i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_large_graph_uses_cheap_codegen():
    from symad import policy
    from symad.codegen import jit
    assert jit.choose_levels(policy.LARGE_GRAPH_NODES + 1, "auto") == (1, 0)
    assert jit.choose_levels(100, "auto") == (3, 3)
    f = symad.compile_grad(rosen, opt_level=0)
    x = np.linspace(-1, 1, 5)
    np.testing.assert_allclose(f(x)[1], rosen_grad(x), rtol=1e-12)


def test_symad_ad_imports_without_llvmlite():
    code = ("import sys; sys.modules['llvmlite'] = None; "
            "sys.modules['llvmlite.binding'] = None; sys.modules['llvmlite.ir'] = None\n"
            "import symad.ad, symad\n"
            "print(symad.grad(lambda x: x * x)(3.0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "6.0"


def test_chunked_kernel_for_big_graphs(monkeypatch):
    # Big graphs are split into chunk functions; force it on a small graph.
    from symad import policy
    monkeypatch.setattr(policy, "CHUNK_NODES", 7)
    f = symad.compile_grad(rosen, opt_level=(1, 0))
    x = np.random.default_rng(5).uniform(-2, 2, 20)
    value, grad = f(x)
    assert ".chunk1" in f.llvm_ir
    np.testing.assert_allclose(grad, rosen_grad(x), rtol=1e-11)
    assert value == pytest.approx(rosen(x), rel=1e-13)
    values, grads = f.batch(np.stack([x, x + 0.5]))
    np.testing.assert_array_equal(grads[0], grad)


def test_backend_is_symad_codegen_not_a_top_level_package():
    # A top-level "codegen" would collide with an unrelated PyPI project of that name.
    import sys

    import symad.codegen
    symad.compile(lambda x: x * 2.0)(1.0)
    assert symad.codegen.__name__ == "symad.codegen"
    assert "codegen" not in sys.modules


# The cases and helpers tests/test_vector_math.py runs again under fastmath.
cases, points, op_fn, inf_sign = _cases, _points, _op_fn, _inf_sign
