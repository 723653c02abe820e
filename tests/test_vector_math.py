"""Batch loops on <4 x double> with glibc libmvec under fastmath (codegen/lower.py)."""

import numpy as np
import pytest
import test_codegen as tc

import symad
from symad import interp


def _libmvec():
    from symad.codegen import jit
    return jit.vector_math_available(["_ZGVdN4v_sin"])


def test_default_batch_never_calls_vector_math():
    f = symad.compile_grad(lambda x, y: np.sin(x) * np.exp(y))
    f.batch(np.ones(8), np.ones(8))
    assert "_ZGVd" not in f.llvm_ir and "_kernel4" not in f.llvm_ir


@pytest.mark.parametrize("name,attrs", list(tc.cases()))
def test_fastmath_batch_matches_interpreter(name, attrs):
    pts = tc.points(name)
    cols = [pts[:, i].copy() for i in range(pts.shape[1])]
    f = symad.compile(tc.op_fn(name, attrs), fastmath=True)
    got = f.batch(*cols)
    if _libmvec():
        assert "_kernel4" in f.llvm_ir
    g = f.graph
    with np.errstate(all="ignore"):
        want = interp.evaluate(g, g.outputs, dict(zip(g.inputs, cols)))[0]
        want = np.broadcast_to(want, got.shape)
    # libmvec is within a few ulp of scalar libm: far inside the suite's tolerance.
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0, equal_nan=True)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(tc.inf_sign(got), tc.inf_sign(want))


def test_fastmath_gradient_batch_with_tails_and_threads():
    def f(x, y):
        return np.tanh(x) * np.log1p(y * y) + np.arctan2(x, y) + np.erf(x) \
            if hasattr(np, "erf") else np.tanh(x) * np.log1p(y * y) + np.arctan2(x, y)
    exact = symad.compile_grad(f)
    fast = symad.compile_grad(f, fastmath=True)
    rng = np.random.default_rng(0)
    for n in (1, 3, 4, 5, 257, 1003):
        x, y = rng.uniform(-3, 3, (2, n))
        v0, (gx0, gy0) = exact.batch(x, y)
        v1, (gx1, gy1) = fast.batch(x, y, threads=2)
        for a, b in ((v0, v1), (gx0, gx1), (gy0, gy1)):
            np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-15)
