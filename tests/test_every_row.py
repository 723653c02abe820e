"""Every op row, compiled at every shape kind, against numpy, sympy and central differences.

Issue 15 ("adding an op is one row"): for each elementwise row of ``symad.ops.OPS`` the op
is written as user code writes it (its numpy ufunc, ``x ** n``, ``np.where``) and compiled
at three shape kinds, on one set of points inside the row's domain:

- ``0-d``: scalar arguments, single calls of ``compile_grad`` (the scalar graph);
- ``vector``: arrays long enough for the array-level graph (``f.stats["array_level"]``);
- ``batch``: ``f.batch(columns)`` of the 0-d function, which agrees with its single calls
  bit for bit.

Values must match numpy (rtol 1e-13, NaN and inf in the same places, as in
tests/test_codegen.py); gradients must match central differences of the row's numpy
function at every point and ``sympy.diff`` of the row's ``sympy`` counterpart at the first
few (tests/test_ops.py's tolerances). Adding a row adds its cases here.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from test_ops import ATTRS, SYMPY_UNEVALUATED, points

import symad
from symad.ops import OPS, ufunc_names
from symad.policy import ARRAY_MIN_ELEMENTS
from symad.trace import apply

pytest.importorskip("llvmlite")

N_POINTS = ARRAY_MIN_ELEMENTS + 100     # every point at once: enough for the array level
N_SYMPY = 6                             # points checked against sympy.diff (evalf is slow)
KINDS = ("0-d", "vector", "batch")
# mul0 is AD's own masked product: no user spelling reaches the array level with it
NO_VECTOR = {"mul0"}


def _ufunc(row):
    """The row's numpy ufunc as users call it (scipy.special's for erf), or None."""
    for name, op in ufunc_names().items():
        if op != row.name:
            continue
        uf = getattr(np, name, None)
        if uf is None and name == "erf":
            uf = getattr(pytest.importorskip("scipy.special"), name)
        if isinstance(uf, np.ufunc):
            return uf
    return None


def spelling(name: str, attrs: tuple):
    """Op ``name`` as user code writes it: its numpy ufunc (np.arcsin, np.less), ``x ** n``
    for powi, np.where for where; other rows through ``symad.trace.apply``."""
    row = OPS[name]
    uf = _ufunc(row)
    if uf is not None:
        fn = uf
    elif name == "powi":
        (n,) = attrs

        def fn(x):
            return x ** n
    elif name == "where":
        fn = np.where
    else:
        def fn(*args):
            return apply(name, args, attrs)

    def op(*args):
        return fn(*args)
    op.__name__ = f"op_{name}"
    return op


def _cases():
    for name, row in OPS.items():
        if row.arity == 0 or row.structural:     # structural: tests/test_structural_ops.py
            continue
        for attrs in ATTRS.get(name, [()]):
            label = f"{name}{attrs[0] if attrs else ''}"
            for kind in KINDS:
                if kind == "vector" and name in NO_VECTOR:
                    continue
                yield pytest.param(name, attrs, kind, id=f"{label}-{kind}")


def _columns(name: str) -> list[np.ndarray]:
    """N_POINTS points inside the row's domain, one column per operand (with a few exact
    zeros for where's condition and ties for the maximum family: their documented
    conventions)."""
    row = OPS[name]
    cols = [c.copy() for c in np.array(points(row, N_POINTS, seed=3)).T]
    if name == "where":
        cols[0][::5] = 0.0             # the branch not taken: no gradient into it
    if name in ("maximum", "minimum", "fmax", "fmin"):
        cols[1][::4] = cols[0][::4]    # ties split the gradient 1/2, 1/2
    if name in ("floordiv", "mod", "fmod"):
        # divisors away from 0, where x / y would cross an integer (a jump) within the
        # step of central differences
        cols[1] = np.copysign(0.5 + 0.5 * np.abs(cols[1]), cols[1])
    return cols


@functools.cache
def _reference(name: str, attrs: tuple):
    """(numpy values, central differences per operand, sympy derivatives at the first
    N_SYMPY points per operand or None) at ``_columns(name)``."""
    row = OPS[name]
    cols = _columns(name)
    with np.errstate(all="ignore"):
        values = np.asarray(row.numpy(*cols, *attrs), dtype=np.float64)

    def scalar(*x):
        return float(row.numpy(*x, *attrs))
    argnums = tuple(range(row.arity))
    numeric = np.array([symad.numerical_grad(scalar, *pt, argnums=argnums)
                        for pt in zip(*(c.tolist() for c in cols))]).T
    exact = None
    if name not in SYMPY_UNEVALUATED:
        syms = sp.symbols(f"a0:{row.arity}", real=True)
        expr = row.sympy(*syms, *attrs)
        exact = np.array([[float(sp.diff(expr, s).evalf(30, subs=dict(zip(syms, pt))))
                           for pt in zip(*(c[:N_SYMPY] for c in cols))] for s in syms])
    return cols, values, numeric, exact


def _run(name: str, attrs: tuple, kind: str):
    """(values, gradients per operand) of the compiled op at ``_columns(name)``."""
    row = OPS[name]
    cols, _, _, _ = _reference(name, attrs)
    op = spelling(name, attrs)
    argnums = tuple(range(row.arity))
    if kind == "vector":
        f = symad.compile(op)
        values = f(*cols)
        assert f.stats.get("array_level"), f"{name}: not compiled at the array level"

        def total(*args):
            return np.sum(op(*args))
        g = symad.compile_grad(total, argnums=argnums)
        _, grads = g(*cols)
        assert g.stats.get("array_level"), f"{name}: gradient not at the array level"
        return values, np.array(grads)
    g = symad.compile_grad(op, argnums=argnums)
    if kind == "0-d":
        out = [g(*pt) for pt in zip(*(c.tolist() for c in cols))]
        return np.array([v for v, _ in out]), np.array([gr for _, gr in out]).T
    values, grads = g.batch(*cols)
    for k in range(0, N_POINTS, 7):        # the scalar entry agrees bit for bit
        v, gr = g(*(float(c[k]) for c in cols))
        np.testing.assert_array_equal([v, *gr], [values[k], *(a[k] for a in grads)])
    return values, np.array(grads)


def _inf_sign(a):
    return np.where(np.isinf(a), np.sign(a), 0.0)


@pytest.mark.parametrize("name,attrs,kind", list(_cases()))
def test_row_compiled_at_every_shape_kind(name, attrs, kind):
    _, want, numeric, exact = _reference(name, attrs)
    values, grads = _run(name, attrs, kind)
    where = f"{name}{attrs} ({kind})"
    np.testing.assert_allclose(values, want, rtol=1e-13, atol=0, equal_nan=True,
                               err_msg=f"{where}: values vs numpy")
    assert np.array_equal(np.isnan(values), np.isnan(want)), where
    assert np.array_equal(_inf_sign(values), _inf_sign(want)), where
    assert grads.shape == numeric.shape, where
    for i in range(len(grads)):
        np.testing.assert_allclose(grads[i], numeric[i], rtol=1e-5, atol=1e-8,
                                   err_msg=f"{where}: d/d arg{i} vs central differences")
        if exact is not None:
            np.testing.assert_allclose(grads[i][:N_SYMPY], exact[i], rtol=1e-10,
                                       atol=1e-14, err_msg=f"{where}: d/d arg{i} vs sympy")


# ---- the other places a row reaches --------------------------------------------------


# The ufuncs whose object loops call the element's method of the ufunc's name (numpy 2:
# np.sin(obj_array) calls x.sin()); the scalar tracer has one for each, made from the
# rows' numpy names. The rest use Python's operators (np.add), comparisons (np.maximum,
# which need symad.asarray), math.floor, or have no object loop (np.copysign).
CALLED_BY_NAME = (
    "arccos", "arccosh", "arcsin", "arcsinh", "arctan", "arctan2", "arctanh", "cbrt",
    "conjugate", "cos", "cosh", "deg2rad", "degrees", "exp", "exp2", "expm1", "fabs",
    "fmod", "hypot", "log", "log10", "log1p", "log2", "rad2deg", "radians", "sin", "sinh",
    "sqrt", "tan", "tanh",
)


@pytest.mark.parametrize("name", CALLED_BY_NAME)
def test_plain_object_arrays_of_tracers_take_every_ufunc_numpy_calls_by_name(name):
    uf = getattr(np, name)
    op = ufunc_names().get(name)
    lo, hi = OPS[op].domain if op else (-2.0, 2.0)
    x = lo + (hi - lo) * np.array([0.12, 0.47, 0.82])

    def operands(v):    # a binary ufunc's second operand differs from its first
        return (v, v[::-1] * 0.5 + 0.3)[:uf.nin]

    def f(x):
        v = np.array([x[0], x[1], x[2]], dtype=object)     # plain, not symad.asarray
        return np.sum(uf(*operands(v)) * np.array([1.0, 2.0, 3.0]))

    def reference(x):
        return np.sum(uf(*operands(x)) * np.array([1.0, 2.0, 3.0]))

    value, grad = symad.value_and_grad(f)(x)
    np.testing.assert_allclose(value, reference(x), rtol=1e-14)
    np.testing.assert_allclose(grad, symad.numerical_grad(reference, x), rtol=1e-6,
                               atol=1e-8)


def test_every_row_name_numpy_calls_by_name_is_listed():
    # a new row whose ufunc numpy calls by name must show up in CALLED_BY_NAME's test
    from symad.trace import Tracer
    methods = {n for n in dir(Tracer) if not n.startswith("_")} - {"graph", "node", "apply_op"}
    assert methods == set(CALLED_BY_NAME)


def _sympy_classes():
    for name, row in OPS.items():
        own = (row.sympy,) if isinstance(row.sympy, type) and \
            issubclass(row.sympy, sp.Function) else ()
        for cls in own + row.sympy_functions:
            yield pytest.param(name, cls, id=f"{name}-{cls.__name__}")


@pytest.mark.parametrize("name,cls", list(_sympy_classes()))
def test_from_sympy_reads_each_rows_sympy_class_as_the_row(name, cls):
    row = OPS[name]
    syms = sp.symbols(f"a0:{row.arity}", real=True)
    f = symad.sympy_bridge.from_sympy(cls(*syms), list(syms))
    cols = [c[:50] for c in _columns(name)]
    g = symad.trace(f, *(float(c[0]) for c in cols))
    assert name in g.count_ops(), f"{cls.__name__} did not become op {name!r}"
    with np.errstate(all="ignore"):
        want = row.numpy(*cols)
    np.testing.assert_allclose(f(*cols), want, rtol=1e-13, atol=0)


def test_dot_labels_operand_positions_of_every_ordered_row():
    from symad.dot import to_dot
    for name, row in OPS.items():
        if row.arity < 2:
            continue
        g = symad.trace(lambda *a, name=name: apply(name, a, ()), *([0.5] * row.arity))
        labelled = "[label=1]" in to_dot(g)
        assert labelled == (not row.commutative), name


@pytest.mark.parametrize("fn", [symad.where, symad.maximum, symad.minimum],
                         ids=["where", "maximum", "minimum"])
def test_symad_selection_functions_stay_at_the_array_level(fn):
    x = np.linspace(-1.0, 1.0, N_POINTS)
    args = (x > 0, x, -x) if fn is symad.where else (x, -x)
    f = symad.compile(lambda *a: fn(*a) * 2.0)
    expected = -2.0 * np.abs(x) if fn is symad.minimum else 2.0 * np.abs(x)
    np.testing.assert_array_equal(f(*(np.asarray(a, np.float64) for a in args)), expected)
    assert f.stats.get("array_level")


def test_unsupported_op_errors_point_at_the_recipe():
    recipe = (Path(__file__).parents[1] / "docs" / "ops.md").read_text()
    assert "\n## Adding an op\n" in recipe
    assert '"Adding an op"' in symad.UnsupportedOpError.__doc__
    with pytest.raises(symad.UnsupportedOpError,
                       match=r'np\.spacing has no symad rule.*"Adding an op" in docs/ops\.md'):
        symad.grad(lambda x: np.sum(np.spacing(x)))(np.ones(4))
    x = sp.Symbol("x")
    with pytest.raises(symad.UnsupportedOpError) as err:
        symad.sympy_bridge.from_sympy(sp.gamma(x), [x])
    message = str(err.value)
    assert "sympy gamma" in message and '"Adding an op" in docs/ops.md' in message
    # the functions it lists are the rows' sympy classes
    assert "asinh" in message and "log1p" in message and "Mod" in message
