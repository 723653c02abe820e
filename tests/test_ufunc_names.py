"""One numpy-name table: both tracers accept the same ufuncs (built from the op rows'
numpy names by composite.ufunc_table), and each gives numpy's values on both paths."""

import importlib.util

import numpy as np
import pytest

import symad
from symad import array_trace
from symad.ops import OPS, ufunc_names

trace_mod = importlib.import_module("symad.trace")


def _ufunc(name):
    if name == "erf":
        special = pytest.importorskip("scipy.special")
        return special.erf
    return getattr(np, name)


def _numpy_ufuncs():
    """Every ufunc numpy exposes, by its own name (np.true_divide is divide)."""
    found = {}
    for name in dir(np):
        uf = getattr(np, name)
        if isinstance(uf, np.ufunc):
            found.setdefault(uf.__name__, uf)
    return found


def _array_level_traces(uf) -> bool:
    """Whether the array-level tracer builds ``uf`` (it raises Unsupported for ufuncs it
    leaves to the scalar tracer)."""
    args = tuple(np.full(4, 0.5) for _ in range(uf.nin))
    try:
        array_trace.trace_call(lambda *a: uf(*a), args, [(4,)] * uf.nin)
    except array_trace.Unsupported:
        return False
    return True


def test_both_tracers_accept_the_same_ufunc_names():
    scalar, ufuncs = set(trace_mod.UFUNCS), _numpy_ufuncs()
    array = {name for name, uf in ufuncs.items() if _array_level_traces(uf)}
    # object arrays of scalars run np.matmul and np.vecdot themselves
    assert array - scalar == {"matmul", "vecdot"} & set(dir(np))
    assert scalar & set(ufuncs) <= array
    # the scalar tracer's other names: numpy's aliases, and scipy.special.erf
    others = scalar - set(ufuncs) - {"erf"}
    assert all(getattr(np, name).__name__ in array for name in others)
    if "erf" in scalar and importlib.util.find_spec("scipy") is not None:
        assert _array_level_traces(importlib.import_module("scipy.special").erf)
    # every op row with a numpy ufunc is reachable by numpy's name
    for name, op in ufunc_names().items():
        assert trace_mod.UFUNCS[name] is not None and OPS[op].name == op
    assert {"arcsin", "true_divide", "fabs", "less_equal", "floor_divide"} <= scalar


def _domain(name):
    op = ufunc_names().get(name)
    lo, hi = OPS[op].domain if op else (-2.0, 2.0)
    return lo + 0.05 * (hi - lo), hi - 0.05 * (hi - lo)


@pytest.mark.parametrize("name", sorted(trace_mod.UFUNCS))
def test_every_ufunc_name_gives_numpy_values_on_both_paths(name):
    # libm and numpy's own (SIMD) loops may differ by an ulp or two: rtol 1e-13, not bits
    # (tests/test_robust2_opsem.py checks edge inputs bit for bit where they must agree).
    uf = _ufunc(name)
    lo, hi = _domain(name)
    n_in = uf.nin
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    xs = [rng.uniform(lo, hi, 400) for _ in range(n_in)]
    if name == "float_power":
        xs[0] = np.abs(xs[0])                          # a real power of a negative is NaN
    if name in ("heaviside",):
        xs[0][::3] = 0.0
    if name in ("equal", "not_equal", "less_equal", "greater_equal", "maximum", "minimum",
                "fmax", "fmin"):
        xs[1][::4] = xs[0][::4]                       # ties
    # an affine map after the ufunc keeps identities (positive, conjugate) real programs
    want = np.asarray(uf(*xs), dtype=np.float64) * 1.5 + 0.25
    f = symad.compile(lambda *a: uf(*a) * 1.5 + 0.25)
    got = f(*xs)
    assert f.stats.get("array_level"), name           # the array-level graph
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15, err_msg=name)
    g = symad.compile(lambda *a: uf(*a) * 1.5 + 0.25)  # scalars: the scalar graph
    for k in range(0, 400, 97):
        got1 = g(*(float(x[k]) for x in xs))
        np.testing.assert_allclose(got1, want[k], rtol=1e-13, atol=1e-15, err_msg=name)


def test_supported_numpy_lists_what_traces_and_errors_point_to_it():
    names = symad.supported_numpy()
    assert names["ufuncs"] == sorted(trace_mod.UFUNCS)
    assert {"np.linalg.norm", "np.sum", "np.einsum"} <= set(names["functions"])
    with pytest.raises(symad.UnsupportedOpError, match=r"symad\.supported_numpy\(\)"):
        symad.grad(lambda x: np.sum(np.fft.fft(x).real))(np.ones(4))
    with pytest.raises(symad.UnsupportedOpError, match=r"np\.spacing has no symad rule.*"
                                                       r"supported_numpy"):
        symad.grad(lambda x: np.sum(np.spacing(x)))(np.ones(4))
