"""The native METH_FASTCALL entry (codegen/py_entry.py) with array arguments and results."""

import sys

import numpy as np
import pytest

import symad


def rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def mixed(a, x, m):
    return a * np.sum(np.sin(x)) + np.sum(m * m) * x[0]


def _fast(cf):
    return type(cf.fast_entry).__name__ == "builtin_function_or_method"


def test_array_argument_takes_the_native_entry_and_matches_the_python_path():
    f = symad.compile_grad(rosen)
    x = np.random.default_rng(0).uniform(-2, 2, 50)
    slow = f(x)                       # first call compiles through the Python path
    assert _fast(f)
    v, g = f(x)
    assert type(v) is float and type(g) is np.ndarray
    assert g.shape == (50,) and g.dtype == np.float64 and g.flags.c_contiguous
    assert g.flags.owndata and g.flags.writeable
    assert v == slow[0]
    np.testing.assert_array_equal(g, slow[1])


def test_mixed_scalars_arrays_and_matrix_shapes():
    f = symad.compile_grad(mixed)
    rng = np.random.default_rng(1)
    a, x, m = 1.5, rng.uniform(-1, 1, 4), rng.uniform(-1, 1, (2, 3))
    want = f(a, x, m)                 # first call compiles through the Python path
    assert _fast(f)
    v, (ga, gx, gm) = f(a, x, m)
    assert v == want[0] and ga == want[1][0]
    np.testing.assert_array_equal(gx, want[1][1])
    np.testing.assert_array_equal(gm, want[1][2])
    assert gm.shape == (2, 3) and gx.shape == (4,)


def test_compile_with_array_outputs():
    f = symad.compile(lambda x, y: (np.sin(x) * y, y * 2.0))
    x = np.linspace(0, 1, 5)
    f(x, 3.0)
    out = f(x, 3.0)
    np.testing.assert_array_equal(out[0], np.sin(x) * 3.0)
    assert out[1] == 6.0


def test_results_are_fresh_arrays_never_aliased():
    f = symad.compile_grad(rosen)
    x = np.arange(6.0)
    f(x)
    _, g1 = f(x)
    keep = g1.copy()
    _, g2 = f(x + 1.0)
    assert g1 is not g2 and not np.shares_memory(g1, g2)
    np.testing.assert_array_equal(g1, keep)
    g2[:] = 0.0                        # writing a result never affects later calls
    np.testing.assert_array_equal(f(x)[1], keep)


def test_reference_counts_stay_stable():
    f = symad.compile_grad(rosen)
    x = np.random.default_rng(2).uniform(-2, 2, 20)
    f(x)
    before = sys.getrefcount(x)
    _, g = f(x)
    g_before = sys.getrefcount(g)
    for _ in range(10_000):
        f(x)
    assert sys.getrefcount(x) == before
    assert sys.getrefcount(g) == g_before
    res = f(x)
    assert sys.getrefcount(res[1]) == 3    # the tuple, `res[1]`'s temporary, the argument
    # Inputs the entry refuses (non-contiguous, other dtype) are released too.
    y = np.random.default_rng(3).uniform(-2, 2, 40)[::2]
    z = np.arange(20)
    refs = sys.getrefcount(y), sys.getrefcount(z)
    for _ in range(2_000):
        f(y)
        f(z)
    assert (sys.getrefcount(y), sys.getrefcount(z)) == refs


class _Subclass(np.ndarray):
    pass


@pytest.mark.parametrize("arg", [
    np.arange(20.0)[::-1],                        # negative strides
    np.random.default_rng(4).uniform(size=40)[::2],  # non-contiguous
    np.arange(20),                                # int64
    np.arange(20, dtype=np.float32),
    np.arange(20.0).astype(">f8"),                # byte-swapped
    np.asfortranarray(np.arange(20.0)),
    np.arange(20.0).view(_Subclass),              # a subclass (masked arrays and
])                                                # np.matrix are refused instead)
def test_arguments_the_entry_refuses_fall_back_to_the_python_path(arg):
    f = symad.compile_grad(rosen)
    f(np.zeros(20))
    assert _fast(f)
    v, g = f(arg)
    # a fresh function's first call: the Python path
    want = symad.compile_grad(rosen)(np.asarray(arg, dtype=np.float64))
    assert v == want[0]
    np.testing.assert_array_equal(np.asarray(g), want[1])


def test_bad_arguments_raise_clear_errors_through_the_entry():
    f = symad.compile_grad(rosen)
    f(np.zeros(5))
    with pytest.raises(TypeError, match="dtype"):
        f(np.array(["a"] * 5))
    with pytest.raises(TypeError, match="str"):
        f("abcde")
    with pytest.raises(TypeError):
        f(np.zeros(5), np.zeros(5))
    with pytest.raises(TypeError):
        f(np.zeros(5, dtype=complex))
    v, g = f(np.zeros(7))             # another shape compiles another specialization
    assert g.shape == (7,)
    assert f(np.zeros(5))[1].shape == (5,)


def test_readonly_and_zero_length_arrays():
    f = symad.compile_grad(lambda x, y: np.sum(x * x) + y)
    x = np.arange(3.0)
    x.setflags(write=False)
    f(x, 1.0)
    assert f(x, 1.0)[0] == 6.0
    np.testing.assert_array_equal(f(x, 1.0)[1][0], 2 * x)
    e = symad.compile_grad(lambda x, y: np.sum(x) + y * y)
    e(np.zeros(0), 2.0)
    v, (gx, gy) = e(np.zeros(0), 2.0)
    assert v == 4.0 and gx.shape == (0,) and gy == 4.0
