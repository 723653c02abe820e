"""Robustness II (issue 20), numpy functions: every keyword numpy accepts is honoured or
refused, functions are dispatched by function object (np.linalg.diagonal is not
np.diagonal), matrix norms, np.inner of matrices, np.clip on traced scalars, and
np.matrix / masked-array arguments are refused. Each check runs on both tracers: the
scalar tracer (symad.grad, compile on the scalar graph) and the array-level graph
(compile of a large enough array program)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import symad
from symad import array_trace, policy

pytest.importorskip("llvmlite")


def _array_traced(f, *args):
    """f traced on the array level: the numpy reference of its graph (no fallback)."""
    tr = array_trace.trace_call(f, args, [np.shape(a) for a in args])
    flat = np.concatenate([np.ravel(a) for a in args])
    return array_trace.evaluate(tr.graph, tr.outputs, flat)[0].reshape(tr.out_shapes[0])


def _compiled(monkeypatch, f, *args, array: bool):
    """``(f(*args) compiled, whether on the array-level graph)``; ``array`` asks for the
    array-level graph (used where it covers f) or the scalar graph."""
    level = 0 if array else 10**12
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", level)
    monkeypatch.setattr(policy, "ARRAY_MIN_LENGTH", level)
    cf = symad.compile(f)
    return cf(*args), bool(cf.stats.get("array_level"))


def _check_grad(f, *args):
    """The scalar tracer's gradient against central differences."""
    np.testing.assert_allclose(symad.grad(f)(*args), symad.numerical_grad(f, *args, argnums=0),
                               rtol=1e-5, atol=1e-8)


M = np.array([[1.5, -2.0, 0.3, 4.0], [0.7, 2.5, -1.2, 0.1], [3.3, 0.4, 1.1, -0.9],
              [-0.6, 1.8, 2.2, 0.5]])


# ---- item 24: np.clip(x, lo, hi) on a traced scalar ---------------------------------------

def test_clip_with_both_bounds_on_a_traced_scalar():
    def f(x):
        return np.clip(x, -1.0, 1.0) * x
    assert symad.grad(f)(0.5) == 1.0           # 2x inside the bounds
    assert symad.grad(f)(3.0) == 1.0           # clipped: 1 * x
    assert symad.compile(f)(3.0) == 3.0
    # chained symad elementwise calls on scalars (where of a maximum, maximum of a max)
    g = symad.grad(lambda x: symad.maximum(symad.maximum(x, 0.1), np.array(0.2)) * x)
    assert g(0.5) == 1.0 and g(0.0) == 0.2


# ---- item 11: np.matrix and masked arrays are refused -------------------------------------

def _matrix():
    with warnings.catch_warnings():      # numpy discourages np.matrix: that is the point
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        return np.matrix([[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("arg", [_matrix(),
                                 np.ma.array([[1.0, 2.0], [3.0, 4.0]],
                                             mask=[[0, 1], [0, 0]])],
                         ids=["matrix", "masked"])
def test_matrix_and_masked_arguments_are_refused(arg):
    def f(x):
        return np.sum(x * x)

    what = "numpy.matrix" if isinstance(arg, np.matrix) else "masked array"
    calls = {
        "compile": lambda: symad.compile(f)(arg),
        "compile_grad": lambda: symad.compile_grad(f)(arg),
        "grad": lambda: symad.grad(f)(arg),
        "jacobian": lambda: symad.jacobian(f)(arg),
        "hessian": lambda: symad.hessian(f)(arg),
        "vjp": lambda: symad.vjp(f, arg),
        "jvp tangent": lambda: symad.jvp(f, (np.ones((2, 2)),), (arg,)),
        "constant argument": lambda: symad.grad(lambda x, c: np.sum(x * c))(
            np.ones((2, 2)), arg),
        "batch": lambda: symad.compile(f).batch(arg),
    }
    for call in calls.values():
        with pytest.raises(symad.UnsupportedOpError, match=what):
            call()
    cf = symad.compile(f)             # after a plain call: the fast entry refuses too
    assert cf(np.ones((2, 2))) == 4.0
    with pytest.raises(symad.UnsupportedOpError, match=what):
        cf(arg)


# ---- item 3: np.inner of matrices ---------------------------------------------------------

A = np.linspace(-1.0, 2.0, 24).reshape(4, 6)
B = np.linspace(0.5, 3.0, 18).reshape(3, 6)


@pytest.mark.parametrize("a, b", [(A, B), (A[0], B), (A, B[0]), (A.reshape(2, 2, 6), B)],
                         ids=["2d-2d", "1d-2d", "2d-1d", "3d-2d"])
def test_inner_sums_over_the_last_axes(monkeypatch, a, b):
    def f(x, y):
        return np.inner(x, y) * 1.5

    want = np.inner(a, b) * 1.5
    np.testing.assert_allclose(_array_traced(f, a, b), want, rtol=1e-14)
    for array in (True, False):
        got, on_arrays = _compiled(monkeypatch, f, a, b, array=array)
        assert on_arrays == array
        np.testing.assert_allclose(got, want, rtol=1e-14)
    _check_grad(lambda x, y: np.sum(np.sin(np.inner(x, y))), a, b)


# ---- item 4: numpy functions dispatched by function object --------------------------------

T3 = np.linspace(-2.0, 2.0, 5 * 4 * 4).reshape(5, 4, 4) ** 3


@pytest.mark.parametrize("name", ["diagonal", "matrix_transpose", "matmul", "trace", "outer",
                                  "cross", "vecdot", "tensordot"])
def test_linalg_functions_have_numpys_semantics(monkeypatch, name):
    fn = getattr(np.linalg, name, None)
    if fn is None:
        pytest.skip(f"numpy {np.__version__} has no np.linalg.{name}")
    v = np.array([0.3, -1.2, 2.0])
    call = {"diagonal": lambda x: fn(x, offset=1), "matrix_transpose": fn,
            "matmul": lambda x: fn(x, x[::-1]), "trace": fn,
            "outer": lambda x: fn(x[0, 0], x[1, 1]),
            "cross": lambda x: fn(x[0, :, :3], v), "vecdot": lambda x: fn(x, x[0]),
            "tensordot": lambda x: fn(x, x[0], axes=1)}[name]

    def f(x):
        return call(x) * 2.0

    want = f(T3)
    np.testing.assert_allclose(_array_traced(f, T3), want, rtol=1e-14)   # the array level
    for array in (True, False):
        got, on_arrays = _compiled(monkeypatch, f, T3, array=array)
        assert on_arrays == array
        np.testing.assert_allclose(got, want, rtol=1e-14)
    _check_grad(lambda x: np.sum(np.tanh(call(x))), T3 * 0.01)


def test_linalg_diagonal_is_not_np_diagonal():
    # the two differ on a stack of matrices: the last two axes, not the first two
    f = symad.compile(lambda x: np.linalg.diagonal(x) + 0.0)
    np.testing.assert_array_equal(f(T3), np.linalg.diagonal(T3))
    assert not np.array_equal(np.linalg.diagonal(T3), np.diagonal(T3))


@pytest.mark.parametrize("name", ["vecdot", "matvec", "vecmat"])
def test_product_ufuncs_trace(name):
    fn = getattr(np, name, None)
    if fn is None:
        pytest.skip(f"numpy {np.__version__} has no np.{name}")
    m = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    w = m[0] if name != "vecmat" else m[:, 0]

    def f(x):
        return np.sum(np.sin(fn(x, w) if name != "vecmat" else fn(w, x)))
    assert symad.compile(f)(m) == pytest.approx(f(m), rel=1e-14)
    _check_grad(f, m)


# ---- item 5: every keyword numpy accepts is honoured, or refused by name ------------------

X = np.linspace(-1.3, 1.7, 48).reshape(6, 8) ** 3
MASK = np.sin(7 * X) > -0.3
W8 = np.linspace(0.5, 2.0, 8)
W6 = np.linspace(1.0, 2.0, 6)

# (name, f, whether the array level covers it: else it falls back to the scalar graph)
KEYWORD_CASES = [
    ("average weights", lambda x: np.average(x, weights=X + 2.0), True),
    ("average weights axis", lambda x: np.average(x, axis=1, weights=W8), True),
    ("average keepdims", lambda x: np.average(x, axis=0, weights=W6, keepdims=True), True),
    ("average returned", lambda x: np.multiply(*np.average(x, axis=1, weights=W8,
                                                           returned=True)), True),
    ("average traced weights", lambda x: np.average(x[0], weights=np.exp(x[1])), True),
    ("mean where", lambda x: np.mean(x, where=MASK), True),
    ("mean where axis keepdims", lambda x: np.mean(x, axis=1, where=MASK, keepdims=True),
     True),
    ("mean dtype float64", lambda x: np.mean(x, 0, np.float64), True),
    ("method mean where", lambda x: x.mean(where=MASK), True),
    ("var correction", lambda x: np.var(x, correction=1), True),
    ("var where", lambda x: np.var(x, axis=1, where=MASK), True),
    ("var mean", lambda x: np.var(x, axis=1, mean=np.mean(x, axis=1, keepdims=True) + 0.1),
     True),
    ("std correction", lambda x: np.std(x, axis=1, correction=1), True),
    ("std where keepdims", lambda x: np.std(x, where=MASK, keepdims=True), True),
    ("method var ddof", lambda x: x.var(ddof=1), True),
    ("max initial", lambda x: np.max(x, initial=5.0) * x, True),
    ("max initial axis", lambda x: np.max(x, axis=1, initial=0.5), True),
    ("max where", lambda x: np.max(x, axis=0, where=MASK, initial=-10.0), True),
    ("min keepdims", lambda x: np.min(x, keepdims=True), True),
    ("amin axes", lambda x: np.amin(x, axis=(0, 1)), True),
    ("method max initial", lambda x: x.max(initial=1.0), True),
    ("maximum.reduce initial", lambda x: np.maximum.reduce(x, axis=0, initial=3.0), True),
    ("sum initial", lambda x: np.sum(x, initial=3.0), False),
    ("sum where", lambda x: np.sum(x, axis=0, where=MASK), False),
    ("sum traced where", lambda x: np.sum(x, axis=0, where=x > 0.2), False),
    ("prod traced where", lambda x: np.prod(x[4], where=x[4] > 0.2, initial=2.0), True),
    ("sum positional keepdims", lambda x: np.sum(x, 1, None, None, True), True),
    ("method sum positional", lambda x: x.sum(0, np.float64, None, True), True),
    ("add.reduce initial", lambda x: np.add.reduce(x, axis=1, initial=2.0), False),
    ("prod where initial", lambda x: np.prod(x, axis=1, where=MASK, initial=2.0), True),
    ("clip min keyword", lambda x: np.clip(x, min=-0.5), True),
    ("clip max keyword", lambda x: np.clip(x, max=0.5), True),
    ("method clip", lambda x: x.clip(-0.5, 0.5), True),
    ("concatenate axis None", lambda x: np.concatenate([x, x[:2]], axis=None), True),
    ("size axis", lambda x: x * np.size(x, 1), True),
]


@pytest.mark.parametrize("f, on_arrays", [c[1:] for c in KEYWORD_CASES],
                         ids=[c[0] for c in KEYWORD_CASES])
def test_reduction_keywords_are_honoured(monkeypatch, f, on_arrays):
    want = f(X)
    for array in (True, False):
        got, used_arrays = _compiled(monkeypatch, f, X, array=array)
        assert used_arrays == (array and on_arrays)
        assert np.shape(got) == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    _check_grad(lambda x: np.sum(np.sin(f(x))), X)


def test_diff_of_negative_order_raises_numpys_error(monkeypatch):
    def f(x):
        return np.diff(x, -1)
    for array in (True, False):       # the array level ran it as n=0: x unchanged
        with pytest.raises(ValueError, match="order must be non-negative"):
            _compiled(monkeypatch, f, X[0], array=array)


OUT = np.empty(8)
REFUSED = [
    ("np.sum(..., dtype=float32)", lambda x: np.sum(x, None, np.float32)),
    ("np.sum(..., out=...)", lambda x: np.sum(x, axis=0, out=OUT)),
    ("np.sum(..., dtype=float32)", lambda x: x.sum(dtype=np.float32)),
    ("np.mean(..., out=...)", lambda x: np.mean(x, axis=0, out=OUT)),
    ("np.mean(..., dtype=int64)", lambda x: np.mean(x, dtype=np.int64)),
    ("np.var(..., dtype=float32)", lambda x: np.var(x, dtype=np.float32)),
    ("np.std(..., out=...)", lambda x: np.std(x, 0, None, OUT)),
    ("np.max(..., out=...)", lambda x: np.max(x, axis=0, out=OUT)),
    ("np.clip(..., out=...)", lambda x: np.clip(x, 0, 1, out=np.empty((6, 8)))),
    ("np.clip(..., order=...)", lambda x: np.clip(x, 0, 1, order="F")),
    ("np.dot(..., out=...)", lambda x: np.dot(x, x.T, np.empty((6, 6)))),
    ("np.outer(..., out=...)", lambda x: np.outer(x[0], x[0], out=np.empty((8, 8)))),
    ("np.concatenate(..., out=...)", lambda x: np.concatenate([x, x], None, np.empty(96))),
    ("np.concatenate(..., dtype=float32)", lambda x: np.concatenate([x, x],
                                                                   dtype=np.float32)),
    ("np.take(..., out=...)", lambda x: np.take(x, [0, 1], axis=0, out=np.empty((2, 8)))),
    ("np.cumsum(..., dtype=int64)", lambda x: np.cumsum(x, dtype=np.int64)),
    ("np.add(..., dtype=float32)", lambda x: np.add(x, x, dtype=np.float32)),
    ("np.einsum(..., dtype=float32)", lambda x: np.einsum("ij->", x, dtype=np.float32)),
    ("np.trace(..., dtype=float32)", lambda x: np.trace(x, dtype=np.float32)),
]


@pytest.mark.parametrize("what, f", REFUSED, ids=[f"{i}-{c[0]}" for i, c in
                                                  enumerate(REFUSED)])
def test_unsupported_keywords_are_refused_by_name(monkeypatch, what, f):
    for array in (True, False):
        with pytest.raises(symad.UnsupportedOpError, match=re.escape(what)):
            _compiled(monkeypatch, f, X, array=array)
    with pytest.raises(symad.UnsupportedOpError, match=re.escape(what)):
        symad.grad(lambda x: np.sum(f(x)))(X)


# ---- item 6: np.linalg.norm: every ord, axis and keepdims, or a clear refusal -------------

INF = np.inf
# gradients away from 0 (|x| ** -1 and ** 0.5 have poles there), no ties in |x|
AWAY = np.linspace(0.3, 1.9, 48).reshape(6, 8) * np.where(np.arange(48) % 3, 1.0, -1.0
                                                          ).reshape(6, 8)
NORM_CASES = [(f"vector ord={o}", (lambda x, o=o: np.linalg.norm(x.ravel(), o)),
               True) for o in (None, 2, 1, INF, -INF, 0, 3, -1, 0.5)]
NORM_CASES += [(f"vector ord={o} axis keepdims",
                (lambda x, o=o: np.linalg.norm(x, o, axis=1, keepdims=True)),
                True) for o in (None, 1, INF, 3)]
NORM_CASES += [(f"matrix ord={o}", (lambda x, o=o: np.linalg.norm(x, o)),
                True) for o in (None, "fro", 1, -1, INF, -INF)]
NORM_CASES += [(f"matrix ord={o} axes keepdims",
                (lambda x, o=o: np.linalg.norm(x.reshape(2, 3, 8), o, axis=(2, 0),
                                               keepdims=True)),
                True) for o in (None, "fro", 1, -1, INF, -INF)]
if hasattr(np.linalg, "matrix_norm"):
    NORM_CASES += [(f"matrix_norm ord={o}",
                    (lambda x, o=o: np.linalg.matrix_norm(x.reshape(2, 3, 8), ord=o,
                                                          keepdims=True)),
                    True) for o in ("fro", 1, INF)]
    NORM_CASES += [(f"vector_norm ord={o}",
                    (lambda x, o=o: np.linalg.vector_norm(x.reshape(2, 3, 8), ord=o,
                                                          axis=(0, 2), keepdims=True)),
                    True) for o in (2, 1, INF, 0)]


@pytest.mark.parametrize("f, on_arrays", [c[1:] for c in NORM_CASES],
                         ids=[c[0] for c in NORM_CASES])
def test_norms_have_numpys_orders_axes_and_keepdims(monkeypatch, f, on_arrays):
    want = f(X)
    for array in (True, False):
        got, used_arrays = _compiled(monkeypatch, f, X, array=array)
        assert used_arrays == (array and on_arrays)
        assert np.shape(got) == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=1e-13)
    _check_grad(lambda x: np.sum(f(x)), AWAY)


@pytest.mark.parametrize("ord", [2, -2, "nuc"])
def test_singular_value_norms_are_refused(monkeypatch, ord):   # noqa: A002
    def f(x):
        return np.linalg.norm(x, ord)
    for array in (True, False):
        with pytest.raises(symad.UnsupportedOpError, match="singular values"):
            _compiled(monkeypatch, f, X, array=array)
    with pytest.raises(symad.UnsupportedOpError, match=f"ord={ord!r}"):
        symad.grad(lambda x: np.linalg.norm(x[None], ord, axis=(1, 2))[0])(X)


def test_invalid_norm_orders_raise_numpys_errors():
    with pytest.raises(ValueError, match="Invalid norm order 'fro' for vectors"):
        symad.grad(lambda x: np.linalg.norm(x, "fro"))(X[0])
    with pytest.raises(ValueError, match="Invalid norm order for matrices"):
        symad.grad(lambda x: np.linalg.norm(x, 3))(X)
