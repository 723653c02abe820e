"""Arrays built from traced numbers (``np.array([x[0] ** 2, x[1]])``, ``symad.asarray``)
stay on the array level: one vector, each element in its place, exact."""

import numpy as np
import pytest

import symad
from symad import policy


def components(x):
    v = np.array([x[0] ** 2, x[1] * x[2], np.sin(x[3]), 2.0, -0.0])
    m = np.array([[x[4], 1.0], [x[5], x[4] * x[5]]])
    w = symad.asarray([x[6], 0.5])
    return np.sum(v * x[:5]) + np.sum(m @ w) + np.sum(np.cos(x) * x[7])


@pytest.fixture
def array_level(monkeypatch):
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 0)
    monkeypatch.setattr(policy, "ARRAY_MIN_LENGTH", 0)


def test_object_arrays_of_traced_numbers_trace_at_the_array_level(array_level):
    x = np.linspace(0.1, 1.3, 40)
    cf = symad.compile_grad(components)
    value, grad = cf(x)
    assert cf.stats["array_level"] and cf.stats["kernel"]["kind"] == "array"
    ref_value, ref_grad = symad.value_and_grad(components)(x)
    assert value == ref_value                       # each element is its own, exactly
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(cf.batch(np.stack([x, x[::-1]]))[1][1],
                               symad.grad(components)(x[::-1]), rtol=1e-14, atol=1e-15)


def test_small_programs_unroll_them_to_the_scalar_tracers_graph():
    x = np.linspace(0.1, 1.3, 8)
    cf = symad.compile_grad(components)
    value, grad = cf(x)
    assert "cannot trace" not in cf.stats["kernel"]["reason"]
    assert value == symad.value_and_grad(components)(x)[0]
    np.testing.assert_array_equal(grad, symad.grad(components)(x))


def test_long_object_arrays_take_the_scalar_tracer_and_say_why(array_level):
    def f(x):
        return np.sum(np.array([x[i] * x[i + 1] for i in range(99)]) * x[1:])

    x = np.linspace(0.1, 1.0, 100)
    cf = symad.compile_grad(f)
    np.testing.assert_allclose(cf(x)[1], symad.grad(f)(x), rtol=1e-14)
    assert "object array of 99 elements" in cf.stats["kernel"]["reason"]
