"""Bad input raises a clear exception that names the problem and the fix."""

import numpy as np
import pytest

import symad


def test_string_argument():
    with pytest.raises(TypeError, match="string"):
        symad.grad(lambda x: x * 2)("3.0")


def test_complex_argument():
    with pytest.raises(TypeError, match="complex"):
        symad.grad(lambda x: x * 2)(1 + 2j)


def test_object_argument():
    with pytest.raises(TypeError, match="numeric"):
        symad.grad(lambda x: x * 2)(object())


def test_huge_integer_exponent():
    with pytest.raises(symad.TracingError, match="32 bits"):
        symad.grad(lambda x: x ** (2 ** 40))(1.0)


def test_leaked_tracer():
    leaked = []

    def f(x):
        leaked.append(x)
        return x * 2

    symad.grad(f)(1.0)
    with pytest.raises(symad.LeakedTracerError, match="escaped"):
        symad.grad(lambda y: y * leaked[0])(2.0)


def test_math_function_on_tracer():
    import math
    with pytest.raises(symad.ConcretizationError, match="np.sin"):
        symad.grad(lambda x: math.sin(x))(1.0)


def test_while_on_tracer():
    def f(x):
        while x < 10:
            x = x * 2
        return x

    with pytest.raises(symad.ConcretizationError, match="symad.where"):
        symad.grad(f)(1.0)


def test_bad_argnums():
    with pytest.raises(TypeError, match="argnums"):
        symad.grad(lambda x: x, argnums=3)(1.0)


def test_function_returning_a_string():
    with pytest.raises(symad.TracingError, match="str"):
        symad.grad(lambda x: "x")(1.0)


def test_inplace_ufunc():
    def f(x):
        y = np.zeros(2, dtype=object)
        np.sin(x, out=y)
        return np.sum(y)

    with pytest.raises(symad.UnsupportedOpError, match="out="):
        symad.grad(f)(np.ones(2))


def test_unsupported_ufunc_named():
    with pytest.raises(symad.UnsupportedOpError, match="np.bitwise_and"):
        symad.grad(lambda x: np.sum(np.bitwise_and(x, x)))(np.ones(2))
