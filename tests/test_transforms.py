"""Forward mode, vjp, Jacobians in every mode, Hessian-vector products, pytrees."""

import numpy as np
import pytest

import symad


def f34(x):
    """R^3 -> R^4 with a known Jacobian."""
    return np.array([x[0] * x[1], np.sin(x[2]), x[0] ** 2 + x[2], np.exp(x[1]) * x[2]])


def f34_jacobian(x):
    return np.array([
        [x[1], x[0], 0.0],
        [0.0, 0.0, np.cos(x[2])],
        [2 * x[0], 0.0, 1.0],
        [0.0, np.exp(x[1]) * x[2], np.exp(x[1])],
    ])


X3 = np.array([0.7, -1.2, 2.1])


@pytest.mark.parametrize("mode", ["fwd", "rev", "auto"])
def test_jacobian_3_to_4_in_every_mode(mode):
    J = symad.jacobian(f34, mode=mode)(X3)
    assert J.shape == (4, 3)
    np.testing.assert_allclose(J, f34_jacobian(X3), rtol=1e-13)


def test_jvp_and_vjp_are_jacobian_products():
    t = np.array([0.3, -0.5, 1.1])
    c = np.array([1.0, 2.0, -1.0, 0.5])
    out, tan = symad.jvp(f34, (X3,), (t,))
    np.testing.assert_allclose(out, f34(X3), rtol=1e-15)
    np.testing.assert_allclose(tan, f34_jacobian(X3) @ t, rtol=1e-13)
    out, vjp_fn = symad.vjp(f34, X3)
    (ct,) = vjp_fn(c)
    np.testing.assert_allclose(ct, f34_jacobian(X3).T @ c, rtol=1e-13)
    (ct2,) = vjp_fn(2 * c)      # the pullback is reusable
    np.testing.assert_allclose(ct2, 2 * ct, rtol=1e-15)


def test_auto_mode_counts_passes():
    from symad.api import jacobian_nodes

    g = symad.Graph()
    xs = [g.input() for _ in range(2)]
    outs = [g.node("mul", (xs[0], xs[1])), g.node("sin", (xs[0],)), g.node("exp", (xs[1],))]
    before = len(g.nodes)
    jacobian_nodes(g, outs, xs, mode="auto")   # 2 inputs < 3 outputs: forward mode
    fwd_cost = len(g.nodes) - before
    g2 = symad.Graph()
    ys = [g2.input() for _ in range(2)]
    outs2 = [g2.node("mul", (ys[0], ys[1])), g2.node("sin", (ys[0],)), g2.node("exp", (ys[1],))]
    before = len(g2.nodes)
    jacobian_nodes(g2, outs2, ys, mode="rev")
    assert fwd_cost <= len(g2.nodes) - before


def rosenbrock(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def test_hvp_equals_hessian_times_vector():
    rng = np.random.default_rng(2)
    x, v = rng.standard_normal(6), rng.standard_normal(6)
    np.testing.assert_allclose(symad.hvp(rosenbrock, x, v), symad.hessian(rosenbrock)(x) @ v,
                               rtol=1e-12)


def test_params_dict_gradient_has_same_keys_and_shapes():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(3)}
    data = rng.standard_normal((4, 2))

    def loss(params, data):
        pred = np.tanh(data @ params["w"].T + params["b"])
        return np.mean(pred ** 2)

    g = symad.grad(loss)(params, data)
    assert set(g) == {"w", "b"}
    assert g["w"].shape == (3, 2) and g["b"].shape == (3,)
    eps = 1e-6
    num_b = np.array([(loss({**params, "b": params["b"] + eps * e}, data)
                       - loss({**params, "b": params["b"] - eps * e}, data)) / (2 * eps)
                      for e in np.eye(3)])
    np.testing.assert_allclose(g["b"], num_b, rtol=1e-6)
    symad.check_grad(loss, params, data)


def test_jvp_with_lists_and_tuples():
    def f(pair, items):
        a, b = pair
        return [a * b, (items[0] + items[1] * a, np.sin(b))]

    primals = ((2.0, 3.0), [1.0, 4.0])
    tangents = ((1.0, 0.0), [0.0, 1.0])
    out, tan = symad.jvp(f, primals, tangents)
    assert isinstance(out, list) and isinstance(out[1], tuple)
    assert float(out[0]) == 6.0 and float(out[1][0]) == 9.0
    # d/da (a*b) = b = 3; d(items0 + items1*a) = items1*da + a*d(items1) = 4 + 2 = 6
    assert float(tan[0]) == 3.0 and float(tan[1][0]) == 6.0 and float(tan[1][1]) == 0.0


def test_transformations_compose():
    v = np.array([0.5, -1.0, 2.0])
    x = np.array([0.3, 0.2, -0.4])

    def f(x):
        return np.sum(np.sin(x) * x[::-1]) + x[0] ** 3

    jg = symad.jacobian(symad.grad(f))(x)
    np.testing.assert_allclose(jg, symad.hessian(f)(x), rtol=1e-13)
    dir_grad = symad.grad(lambda x: symad.jvp(f, (x,), (v,))[1])(x)
    np.testing.assert_allclose(dir_grad, symad.hessian(f)(x) @ v, rtol=1e-12)


def test_where_sqrt_has_zero_gradient_in_every_mode():
    f = lambda x: symad.where(x > 0, np.sqrt(x), 0.0)   # noqa: E731
    for x in (0.0, -2.0):
        assert symad.grad(f)(x) == 0.0
        assert float(symad.jvp(f, (x,), (1.0,))[1]) == 0.0
        assert float(symad.hessian(f)(x)) == 0.0


def test_jvp_errors():
    with pytest.raises(TypeError, match="tuples"):
        symad.jvp(f34, X3, X3)
    with pytest.raises(ValueError, match="shape"):
        symad.jvp(f34, (X3,), (np.ones(2),))


def test_compiled_pytrees_and_composed_transformations():
    rng = np.random.default_rng(5)
    params = {"w": rng.standard_normal((3, 2)), "b": rng.standard_normal(3)}
    data = rng.standard_normal((4, 2))

    def loss(params, data):
        return np.mean(np.tanh(data @ params["w"].T + params["b"]) ** 2)

    value, (g, gdata) = symad.compile_grad(loss)(params, data)
    ref_value, ref = symad.value_and_grad(loss)(params, data)
    assert value == pytest.approx(float(ref_value), rel=1e-14)
    assert set(g) == {"w", "b"} and g["w"].shape == (3, 2) and g["b"].shape == (3,)
    np.testing.assert_allclose(g["w"], ref["w"], rtol=1e-13)
    np.testing.assert_allclose(g["b"], ref["b"], rtol=1e-13)
    gw = symad.compile_grad(loss, argnums=0)(params, data)[1]
    np.testing.assert_allclose(gw["b"], ref["b"], rtol=1e-13)

    def f(x):
        return np.sum(np.sin(x) * x[::-1]) + x[0] ** 3

    x = np.array([0.3, 0.2, -0.4])
    np.testing.assert_allclose(symad.compile(symad.jacobian(symad.grad(f)))(x),
                               symad.hessian(f)(x), rtol=1e-13)
    v = np.array([0.5, -1.0, 2.0])
    out, tan = symad.compile(lambda x: symad.jvp(f, (x,), (v,)))(x)
    assert out == pytest.approx(f(x), rel=1e-14)
    assert tan == pytest.approx(float(np.cos(x) * x[::-1] @ v + np.sin(x)[::-1] @ v
                                      + 3 * x[0] ** 2 * v[0]), rel=1e-13)
    jl = symad.compile(lambda pair: symad.jvp(lambda a, b: [a * b, (a + b,)], pair,
                                              (1.0, 0.0)))((2.0, 3.0))
    assert float(jl[1][0]) == 3.0 and float(jl[1][1][0]) == 1.0
