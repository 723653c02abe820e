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
    np.testing.assert_allclose(symad.grad(f)(*args), symad.numerical_grad(f, *args),
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
