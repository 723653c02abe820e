"""One argnums rule: grad's default (argument 0) and compile_grad's, which still means
every argument for now, with a FutureWarning where the two differ."""

import pickle
import warnings

import numpy as np
import pytest

import symad


def loss(params, data):
    return np.sum((data * params) ** 2)


def test_compile_grad_without_argnums_warns_for_several_arguments_and_keeps_all():
    p, d = np.array([1.0, 2.0]), np.array([3.0, 4.0])
    f = symad.compile_grad(loss)
    with pytest.warns(FutureWarning, match=r"compile_grad\(loss\) differentiates all 2 "
                                           r"arguments.*argnums=0") as rec:
        value, (gp, gd) = f(p, d)
    assert rec[0].filename == __file__          # points at the caller's line
    np.testing.assert_allclose(gp, symad.grad(loss)(p, d))
    np.testing.assert_allclose(gd, symad.grad(loss, argnums=1)(p, d))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(p, d)                                  # once per function
        f(np.ones(3), np.ones(3))                # also for a new shape


@pytest.mark.parametrize("argnums", [0, (0, 1), None])
def test_explicit_argnums_never_warn(argnums):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = symad.compile_grad(loss, argnums=argnums)
        _, g = f(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    expected = symad.grad(loss, argnums=(0, 1) if argnums is None else argnums)(
        np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    if argnums == 0:
        np.testing.assert_allclose(g, expected)
    else:
        for a, b in zip(g, expected):
            np.testing.assert_allclose(a, b)


def test_one_argument_functions_do_not_warn_and_the_default_pickles():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = symad.compile_grad(lambda x: np.sum(x ** 2))
        assert f(np.array([1.0, 2.0]))[1].tolist() == [2.0, 4.0]
        g = pickle.loads(pickle.dumps(f))
        assert g(np.array([1.0, 2.0]))[1].tolist() == [2.0, 4.0]


def test_uncompiled_and_compiled_return_python_floats():
    f = lambda x, y: x * y  # noqa: E731
    v, g = symad.value_and_grad(f)(2.0, 3.0)
    assert type(v) is float and type(g) is float and (v, g) == (6.0, 3.0)
    cv, cg = symad.compile_grad(f, argnums=0)(2.0, 3.0)
    assert type(cv) is float and type(cg) is float and (cv, cg) == (v, g)
    assert type(symad.hessian(lambda x: x ** 3)(2.0)) is float
