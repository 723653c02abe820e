"""Robustness II (issue 20), numpy functions: every keyword numpy accepts is honoured or
refused, functions are dispatched by function object (np.linalg.diagonal is not
np.diagonal), matrix norms, np.inner of matrices, np.clip on traced scalars, and
np.matrix / masked-array arguments are refused. Each check runs on both tracers: the
scalar tracer (symad.grad, compile on the scalar graph) and the array-level graph
(compile of a large enough array program)."""

from __future__ import annotations

import numpy as np
import pytest

import symad
from symad import arrays, compiled

pytest.importorskip("llvmlite")


def _array_traced(f, *args):
    """f traced on the array level: the numpy reference of its graph (no fallback)."""
    tr = arrays.trace_call(f, args, [np.shape(a) for a in args])
    flat = np.concatenate([np.ravel(a) for a in args])
    return arrays.evaluate(tr.graph, tr.outputs, flat)[0].reshape(tr.out_shapes[0])


def _compiled(monkeypatch, f, *args, array: bool):
    """``(f(*args) compiled, whether on the array-level graph)``; ``array`` asks for the
    array-level graph (used where it covers f) or the scalar graph."""
    level = 0 if array else 10**12
    monkeypatch.setattr(compiled, "ARRAY_MIN_ELEMENTS", level)
    monkeypatch.setattr(compiled, "ARRAY_MIN_LENGTH", level)
    cf = symad.compile(f)
    return cf(*args), bool(cf.stats.get("array_level"))


def _check_grad(f, *args):
    """The scalar tracer's gradient against central differences."""
    np.testing.assert_allclose(symad.grad(f)(*args), symad.numerical_grad(f, *args, argnums=0),
                               rtol=1e-6, atol=1e-8)


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

@pytest.mark.parametrize("arg", [np.matrix([[1.0, 2.0], [3.0, 4.0]]),
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
    if name in ("diagonal", "matrix_transpose", "matmul"):     # the array level has them
        np.testing.assert_allclose(_array_traced(f, T3), want, rtol=1e-14)
    else:                                                      # and falls back for these
        with pytest.raises(arrays.Unsupported):
            _array_traced(f, T3)
    for array in (True, False):
        got, on_arrays = _compiled(monkeypatch, f, T3, array=array)
        assert on_arrays == (array and name in ("diagonal", "matrix_transpose", "matmul"))
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
