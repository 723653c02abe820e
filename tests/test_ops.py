"""Table-driven checks of every op row: numpy, sympy, central differences, second order.

Adding a row to ``symad.ops.OPS`` adds its tests here automatically.
"""

import math

import numpy as np
import pytest
import sympy as sp

import symad
from symad.ops import OPS
from symad.trace import apply

# the elementwise rows (the structural ones, gather and sum: tests/test_structural_ops.py)
ROWS = [name for name, spec in OPS.items() if spec.arity > 0 and not spec.structural]
# Extra static attributes a row needs (powi's integer exponent).
ATTRS = {"powi": [(3,), (-2,), (5,)]}
# sympy leaves d/dx floor(x) and Mod(x, y) unevaluated (and recurses evaluating them);
# these rows' derivatives are checked against central differences instead.
SYMPY_UNEVALUATED = {"floor", "floordiv", "mod", "fmod"}


def _cases():
    for name in ROWS:
        for attrs in ATTRS.get(name, [()]):
            yield pytest.param(name, attrs, id=f"{name}{attrs[0] if attrs else ''}")


CASES = list(_cases())


def points(spec, count=4, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = spec.domain
    return [tuple(rng.uniform(lo, hi, spec.arity)) for _ in range(count)]


def op_fn(name, attrs):
    def f(*xs):
        return apply(name, xs, attrs)
    f.__name__ = name
    return f


@pytest.mark.parametrize("name,attrs", CASES)
def test_interpreter_matches_numpy(name, attrs):
    spec = OPS[name]
    xs = np.array(points(spec, 16)).T
    g = symad.trace(op_fn(name, attrs), *[x[0] for x in xs])
    batch = symad.interp.evaluate(g, g.outputs, dict(zip(g.inputs, xs)))[0]
    with np.errstate(all="ignore"):
        expected = spec.numpy(*xs, *attrs)
    np.testing.assert_array_equal(batch, expected)


@pytest.mark.parametrize("name,attrs", CASES)
def test_derivative_matches_sympy_and_central_differences(name, attrs):
    spec = OPS[name]
    f = op_fn(name, attrs)
    syms = sp.symbols(f"a0:{spec.arity}", real=True)
    expr = spec.sympy(*syms, *attrs)
    argnums = tuple(range(spec.arity))
    for x in points(spec):
        grads = symad.grad(f, argnums)(*x)
        numeric = symad.numerical_grad(f, *x, argnums=argnums)
        for i, s in enumerate(syms):
            np.testing.assert_allclose(grads[i], numeric[i], rtol=1e-6, atol=1e-8,
                                       err_msg=f"{name}: d/d{s} vs central differences")
            if name in SYMPY_UNEVALUATED:
                continue
            exact = float(sp.diff(expr, s).evalf(30, subs=dict(zip(syms, x))))
            np.testing.assert_allclose(grads[i], exact, rtol=1e-10, atol=1e-14,
                                       err_msg=f"{name}: d/d{s} vs sympy.diff")


@pytest.mark.parametrize("name,attrs", CASES)
def test_second_order(name, attrs):
    spec = OPS[name]
    f = op_fn(name, attrs)
    syms = sp.symbols(f"a0:{spec.arity}", real=True)
    expr = spec.sympy(*syms, *attrs)
    x = points(spec, 1, seed=7)[0]
    symad.check_grad(f, *x, order=2)
    if name in SYMPY_UNEVALUATED:
        return
    h = symad.hessian(lambda v: f(*v))(np.array(x))
    subs = dict(zip(syms, x))
    exact = np.array([[float(sp.diff(expr, a, b).evalf(30, subs=subs)) for b in syms]
                      for a in syms])
    np.testing.assert_allclose(h, exact, rtol=1e-9, atol=1e-12)


def test_every_row_is_complete():
    for name in ROWS:
        spec = OPS[name]
        assert spec.numpy is not None and spec.sympy is not None, name
        assert spec.partials is not None, name
        lo, hi = spec.domain
        assert lo < hi, name


CONVENTIONS = {
    "abs": (lambda x: np.abs(x), 0.0, 0.0),
    "sign": (lambda x: np.sign(x), 0.0, 0.0),
    "floor": (lambda x: np.floor(x), 2.0, 0.0),
    "maximum": (lambda x: np.maximum(x, 1.0), 1.0, 0.5),
    "minimum": (lambda x: np.minimum(x, 1.0), 1.0, 0.5),
    "where": (lambda x: symad.where(x > 0, np.sqrt(x), 0.0), 0.0, 0.0),
}


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_documented_convention_at_the_kink(name):
    assert OPS[name].convention, f"{name} has no documented convention"
    f, x, expected = CONVENTIONS[name]
    assert symad.grad(f)(x) == expected


def test_maximum_tie_splits_evenly():
    gx, gy = symad.grad(lambda x, y: np.maximum(x, y), (0, 1))(2.0, 2.0)
    assert (gx, gy) == (0.5, 0.5)


def test_nan_and_inf_semantics_match_numpy():
    cases = [
        (lambda x: np.log(x), -1.0), (lambda x: 1.0 / x, 0.0), (lambda x: -1.0 / x, 0.0),
        (lambda x: np.sqrt(x), -4.0), (lambda x: np.maximum(x, np.nan), 1.0),
        (lambda x: np.minimum(np.nan, x), 1.0), (lambda x: x * np.inf, 0.0),
        (lambda x: np.exp(x), 1000.0), (lambda x: symad.where(x, 1.0, 2.0), math.nan),
    ]
    for f, x in cases:
        with np.errstate(all="ignore"):
            expected = f(np.float64(x))
        got = symad.value_and_grad(f)(x)[0]
        np.testing.assert_array_equal(got, expected)
