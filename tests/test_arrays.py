"""Array-level graphs (symad/arrays.py, codegen/arrays.py): traced numpy programs give the
values and gradients of the scalar graph, compiled kernels give the array graph's numpy
reference, and anything the array level does not cover falls back to the scalar graph."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from fuzz import random_program, run_program
from programs import lennard_jones, rosen

import symad
from symad import array_trace, arrays, policy
from symad.ad import vjp_plain
from symad.codegen import arrays as array_lower
from symad.compiled import clear_memory_cache


@pytest.fixture
def always_arrays(monkeypatch):
    """Array-level kernels for every array program, however small."""
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 0)
    monkeypatch.setattr(policy, "ARRAY_MIN_LENGTH", 0)
    clear_memory_cache()


W = np.linspace(-1.0, 1.0, 12).reshape(3, 4)


def network(x):                      # matmul with a constant, broadcasting, tanh, mean
    h = np.tanh(W @ x.reshape(4, 5) + x[:3, None])
    return np.mean(h ** 2) + np.sum(h.T @ h, axis=(0, 1)) * 1e-2


def selections(x):                   # where, maximum, abs, comparisons, sqrt at 0
    y = np.where(x > 0.0, np.sqrt(np.maximum(x, 0.0)), -x ** 3)
    return np.sum(np.abs(y - 0.2) * np.minimum(x, 0.5)) + np.sum(x >= 0.1)


def reductions(x):                   # axes, keepdims, long and short sums, flips, pow
    m = x.reshape(6, 10)
    a = m.sum(axis=1) @ m[::-1, 2]
    b = np.sum(m * m, axis=1, keepdims=True) / (1.0 + m[:, :1] ** 2)
    c = m[..., ::3].T.ravel()
    return a + np.sum(b) + np.dot(c, c[::-1]) + np.sum(np.exp(-np.abs(x)) ** 1.5)


def transcendental(x):
    u = 0.3 * x
    return np.sum(np.log1p(u ** 2) + np.sin(u) * np.cos(2 * u) + np.arctan2(u, 1.0 + u ** 2)
                  + np.expm1(-u ** 2) + np.tanh(u) / np.cosh(u) + np.arcsin(0.5 * np.tanh(u)))


def structural(x):                   # joins, rearrangements, statistics
    a = np.concatenate([x[:3], x[5:] ** 2, [1.0, 2.0]])
    b = np.stack([x[:4], np.flip(x[2:6])], axis=1)
    c = np.roll(x, 2)[:8] * np.tile(x[:2], 4)
    d = np.vstack([b.T, b.T * 2]).sum(axis=0)
    return (np.sum(a * np.linspace(0, 1, a.size)) + np.sum(b @ np.ones(2)) + np.sum(c)
            + np.dot(d, d) + np.linalg.norm(x) + np.var(x) + np.sum(np.diff(x, 2))
            + np.sum(np.clip(x, 0.1, 0.5)) + np.sum(np.outer(x[:3], x[3:5])) + np.std(x[:4])
            + np.sum(np.swapaxes(x[:12].reshape(3, 4), 0, 1)[::2] ** 3))


PROGRAMS = [(rosen, 30), (lennard_jones, 3 * 9), (network, 20), (selections, 25),
            (reductions, 60), (transcendental, 33), (structural, 14)]


def _point(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.arange(n) * 0.61 % 2.3 - 0.9 + rng.uniform(-0.05, 0.05, n)


@pytest.mark.parametrize("f, n", PROGRAMS, ids=[f.__name__ for f, _ in PROGRAMS])
def test_array_graph_gives_the_scalar_graphs_value_and_gradient(f, n):
    x = _point(n)
    tr = array_trace.trace_call(f, (x,), [(n,)])
    y = tr.outputs[0]
    (bar,) = vjp_plain(tr.graph, [y], [tr.graph.const(1.0)], tr.inputs)
    value, grad = array_trace.evaluate(tr.graph, [y, bar], x)
    ref_value, ref_grad = symad.value_and_grad(f)(x)
    assert value[0] == pytest.approx(float(ref_value), rel=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert value[0] == pytest.approx(float(f(x)), rel=1e-13)


@pytest.mark.parametrize("f, n", PROGRAMS, ids=[f.__name__ for f, _ in PROGRAMS])
def test_array_kernel_computes_the_array_graph(f, n, always_arrays):
    x = _point(n, 1)
    cf = symad.compile_grad(f)
    value, grad = cf(x)
    assert cf.stats["array_level"]
    g = cf.grad_graph                    # the array graph the kernel was compiled from
    ref = array_trace.evaluate(g, g.outputs, x)
    # numpy's own exp/log/pow may differ from the C library's by an ulp
    assert value == pytest.approx(ref[0][0], rel=1e-14)
    np.testing.assert_allclose(grad, ref[1], rtol=1e-14, atol=0)
    ref_value, ref_grad = symad.value_and_grad(f)(x)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-12)


def test_large_programs_take_the_array_graph_small_ones_the_scalar_graph():
    clear_memory_cache()
    big = symad.compile_grad(lennard_jones)
    big(_point(3 * 40))
    assert big.stats["array_level"]
    assert big.stats["nodes"]["ad"] < 100 < big.stats["nodes"]["elements"]
    small = symad.compile_grad(rosen)
    small(_point(10))
    assert "array_level" not in small.stats


def test_array_kernel_agrees_with_the_scalar_kernel(monkeypatch):
    x = _point(3 * 30, 2)
    cf = symad.compile_grad(lennard_jones)
    value, grad = cf(x)
    assert cf.stats["array_level"]
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 10**12)   # the scalar graph's kernel
    scalar = symad.compile_grad(lennard_jones)
    scalar_value, scalar_grad = scalar(x)
    assert "array_level" not in scalar.stats
    assert value == pytest.approx(scalar_value, rel=1e-14)
    np.testing.assert_allclose(grad, scalar_grad, rtol=1e-13, atol=1e-12)
    assert "define" in cf.llvm_ir


def test_inspected_graphs_are_the_compiled_array_graphs():
    """f.graph / f.grad_graph of an array-level function are the shaped graph its kernel
    was compiled from (a few dozen nodes, not the ~10k-node scalar unrolling), printed
    with element counts, verified, and evaluating to what the kernel returns."""
    x = _point(3 * 30, 2)
    cf = symad.compile_grad(lennard_jones)
    value, grad = cf(x)
    g = cf.grad_graph
    g.verify()
    assert len(g.live(g.outputs)) < 100
    assert [o.size for o in g.outputs] == [1, 90]
    assert "[435]" in g.to_text()        # the 30 * 29 / 2 pairs, one vector node each
    ref_value, ref_grad = symad.interp.evaluate(g, g.outputs, {g.inputs[0]: x})
    assert value == pytest.approx(float(ref_value), rel=1e-14)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-13, atol=1e-13)
    fwd = cf.graph
    fwd.verify()
    assert len(fwd.outputs) == 1 and fwd is not g
    (fwd_value,) = symad.interp.evaluate(fwd, fwd.outputs, {fwd.inputs[0]: x})
    assert float(fwd_value) == pytest.approx(value, rel=1e-14)


def test_array_specialization_pickles_through_its_scalar_graph():
    x = _point(3 * 30, 3)
    cf = symad.compile_grad(lennard_jones)
    value, grad = cf(x)
    back = pickle.loads(pickle.dumps(cf))
    assert back.stats["array_level"]
    v2, g2 = back(x)
    assert v2 == value
    np.testing.assert_array_equal(g2, grad)
    lam = symad.compile_grad(lambda x: lennard_jones(x))    # no importable function:
    lv, lg = lam(x)                                          # the scalar graph's kernel
    v3, g3 = pickle.loads(pickle.dumps(lam))(x)
    assert v3 == pytest.approx(lv, rel=1e-14)
    np.testing.assert_allclose(g3, lg, rtol=1e-13, atol=1e-12)


def test_argnums_pytrees_and_unused_arguments(always_arrays):
    def f(params, x, scale):
        return scale * np.sum(np.tanh(params["w"] * x) ** 2) + np.sum(params["b"] ** 3)

    params = {"w": np.linspace(0.1, 1.0, 7), "b": np.linspace(-1.0, 1.0, 7),
              "unused": np.ones(3)}
    x = np.linspace(-2.0, 2.0, 7)
    for argnums in (0, (0, 2), (1,)):
        cf = symad.compile_grad(f, argnums=argnums)
        value, grad = cf(params, x, 1.5)
        assert cf.stats.get("array_level")
        ref_value, ref_grad = symad.value_and_grad(f, argnums)(params, x, 1.5)
        assert value == pytest.approx(float(ref_value), rel=1e-14)
        for got, want in zip(*(symad.tree.tree_flatten(g)[0] for g in (grad, ref_grad))):
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    cf = symad.compile_grad(f, argnums=0)
    assert np.all(cf(params, x, 1.5)[1]["unused"] == 0.0)


def test_compile_returns_array_outputs(always_arrays):
    def f(x, y):
        return {"d": x[1:] - x[:-1], "s": np.sum(x * y), "m": np.sum(x, where=x > 0.5)}

    x, y = np.linspace(0.0, 1.0, 6), np.linspace(2.0, 3.0, 6)
    with pytest.raises(arrays.Unsupported):
        array_trace.trace_call(f, (x, y), [(6,), (6,)])          # np.sum(where=): not covered
    cf = symad.compile(f)
    out = cf(x, y)
    assert "array_level" not in cf.stats                     # the scalar graph instead
    np.testing.assert_allclose(out["m"], np.sum(x, where=x > 0.5), rtol=1e-15)

    def g(x, y):
        return {"d": x[1:] - x[:-1], "s": np.sum(x * y), "m": x[:, None] * y[::2]}
    cg = symad.compile(g)
    out = cg(x, y)
    assert cg.stats["array_level"]
    np.testing.assert_array_equal(out["d"], x[1:] - x[:-1])
    assert out["s"] == pytest.approx(np.sum(x * y), rel=1e-15)
    np.testing.assert_array_equal(out["m"], x[:, None] * y[::2])


def test_untraceable_code_falls_back_to_the_scalar_graph_and_its_errors(always_arrays):
    def branches(x):
        if x[0] > 0:                    # data-dependent control flow
            return np.sum(x)
        return np.sum(x * x)

    with pytest.raises(symad.ConcretizationError):
        symad.compile_grad(branches)(np.ones(5))

    def running(x):                     # np.sum(where=): not on the array level
        return np.sum(np.cumsum(x) * x, where=x > 0.5)
    cf = symad.compile_grad(running)
    value, grad = cf(np.arange(4.0))
    assert "array_level" not in cf.stats and value == 25.0
    np.testing.assert_array_equal(grad, symad.grad(running)(np.arange(4.0)))


def test_gradients_of_masked_branches_stay_exact(always_arrays):
    def f(x):
        return np.sum(np.where(x > 0.0, np.sqrt(x), 0.0) + np.where(x < 5.0, x, np.log(x)))

    x = np.array([0.0, 1.0, 4.0, -1.0, 9.0])
    value, grad = symad.compile_grad(f)(x)
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad, symad.grad(f)(x))


def test_large_buffers_on_the_heap_and_long_reductions(always_arrays):
    n = 200                             # 19,900 pairs: buffers beyond the stack limit
    x = np.stack(np.meshgrid(*(np.arange(6.0),) * 3, indexing="ij"), -1).reshape(-1, 3)
    x = (x[:n] * 1.1 + np.random.default_rng(5).uniform(-0.05, 0.05, (n, 3))).ravel()
    cf = symad.compile_grad(lennard_jones)
    value, grad = cf(x)
    assert cf.stats["array_level"]
    g = cf.grad_graph                    # the array graph the kernel was compiled from
    stored = array_lower.plan(g, g.outputs).stored
    assert sum(n.size for n in g.live(g.outputs) if n.id in stored) > policy.KERNEL_STACK_DOUBLES
    ref = array_trace.evaluate(g, g.outputs, x)
    assert value == ref[0][0]
    np.testing.assert_allclose(grad, ref[1], rtol=1e-15, atol=0)
    symad.check_grad(lennard_jones, x[:30])


def test_lennard_jones_is_two_loops_and_rosenbrock_adds_its_terms_as_it_computes_them():
    tr = array_trace.trace_call(lennard_jones, (_point(3 * 64),), [(3 * 64,)])
    outs = [tr.outputs[0], *vjp_plain(tr.graph, tr.outputs[:1], [tr.graph.const(1.0)], tr.inputs)]
    p = array_lower.plan(tr.graph, outs)
    assert [(g.kind, g.domain) for g in p.groups] == [("point", 2016), ("reduce", 2016)]
    assert len(p.family) == 6 and len(set(p.family.values())) == 1   # one gradient buffer
    tr = array_trace.trace_call(rosen, (_point(1000),), [(1000,)])
    outs = [tr.outputs[0], *vjp_plain(tr.graph, tr.outputs[:1], [tr.graph.const(1.0)], tr.inputs)]
    p = array_lower.plan(tr.graph, outs)
    (energy,) = [n for g in p.groups if g.kind == "reduce" for n in g.nodes]
    assert len(p.cones[energy.id]) >= 8        # the terms, computed where they are added
    assert len(p.views) == 2                   # both slices' adjoints: no scatter at all


def test_long_chains_of_array_operations_do_not_recurse(always_arrays):
    def logistic(x):
        for _ in range(3000):
            x = 3.7 * x * (1.0 - x)
        return np.sum(x)

    x = np.linspace(0.2, 0.3, 64)
    tr = array_trace.trace_call(logistic, (x,), [(64,)])
    (bar,) = vjp_plain(tr.graph, tr.outputs[:1], [tr.graph.const(1.0)], tr.inputs)
    assert len(tr.graph.live([tr.outputs[0], bar])) > 9000
    value, grad = symad.compile_grad(logistic)(x)
    ref = array_trace.evaluate(tr.graph, [tr.outputs[0], bar], x)
    assert value == ref[0][0]
    np.testing.assert_array_equal(grad, ref[1])


def _apply_elementwise(op, args, attrs):
    """One fuzz step on traced arrays: array-level nodes, or scalar tracers elementwise."""
    from symad.trace import TracedArray, apply
    if any(isinstance(a, arrays.AArray) for a in args):
        return arrays.AArray.apply_op(op, args, attrs)
    plain = [a.view(np.ndarray) if isinstance(a, np.ndarray) else a for a in args]
    return np.frompyfunc(lambda *a: apply(op, a, attrs), len(args), 1)(*plain).view(
        TracedArray)


@pytest.mark.parametrize("seed", range(40))
def test_random_array_programs_match_the_scalar_graph(seed, always_arrays):
    rng = np.random.default_rng(seed)
    steps = random_program(rng, 3, int(rng.integers(1, 9)))

    def f(x):   # three views of one vector: a slice, a strided slice, a reversed one
        inputs = [x[:8], x[8:24:2], x[:-9:-1]]
        return np.sum(run_program(steps, inputs, _apply_elementwise, np.exp) * x[4:12])

    x = rng.uniform(-1.5, 1.5, 24)
    cf = symad.compile_grad(f)
    value, grad = cf(x)
    assert cf.stats.get("array_level")
    ref_value, ref_grad = symad.value_and_grad(f)(x)
    # (a program may divide by a comparison that is 0: NaN on both paths)
    assert value == pytest.approx(float(ref_value), rel=1e-12, abs=1e-12, nan_ok=True)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("f, n", PROGRAMS, ids=[f.__name__ for f, _ in PROGRAMS])
def test_batches_of_array_programs_equal_single_calls_bit_for_bit(f, n, always_arrays):
    rng = np.random.default_rng(9)
    xs = _point(n) + rng.uniform(-0.01, 0.01, (11, n))      # a tile and a partial one
    cf = symad.compile_grad(f)
    values, grads = cf.batch(xs)
    assert cf.stats["array_level"]
    for i in (0, 4, 10):
        value, grad = cf(xs[i])
        assert values[i] == value
        np.testing.assert_array_equal(grads[i], grad)
    out = (np.empty(11), np.empty((11, n)))
    again = cf.batch(xs, out=out, threads=2)
    assert again[0] is out[0]
    np.testing.assert_array_equal(out[0], values)
    np.testing.assert_array_equal(out[1], grads)


def test_array_batch_with_vector_math(always_arrays):
    def f(x):
        return np.sum(np.sin(x[1:]) * np.exp(-x[:-1] ** 2))
    xs = np.random.default_rng(3).uniform(-2, 2, (37, 50))
    fast = symad.compile_grad(f, fastmath=("afn",))
    values, grads = fast.batch(xs)
    ref_values, ref_grads = symad.compile_grad(f).batch(xs)
    np.testing.assert_allclose(values, ref_values, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(grads, ref_grads, rtol=1e-13, atol=1e-14)


_MIX = np.random.default_rng(0).normal(size=(300, 2))


def _mixture_nll(logit):
    log_w = logit - np.log(np.sum(np.exp(logit)))
    return -np.sum(np.log(np.sum(np.exp(log_w[None, :] + _MIX[:, :1]), axis=-1)))


@pytest.mark.parametrize("pick", [lambda t: t.reshape(3, 5)[:, 4], lambda t: t[:3]],
                         ids=["strided", "slice"])
def test_reductions_added_into_one_buffer_are_read_as_their_total(monkeypatch, pick):
    # A log-sum-exp's adjoint: three sums added into one buffer (a family), read by a
    # further reduction (its loop recomputed them from that buffer: each counted the
    # total, a gradient off by 274) and by a slice's adjoint (a view into the family's
    # buffer, written before the family started: a KeyError).
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 0)
    monkeypatch.setattr(policy, "ARRAY_MIN_LENGTH", 0)
    x = np.linspace(-0.5, 0.5, 15)
    f = lambda t: _mixture_nll(pick(t))      # noqa: E731
    cf = symad.compile_grad(f)
    value, grad = cf(x)
    assert cf.stats["array_level"]
    ref_value, ref_grad = symad.value_and_grad(f)(x)
    assert value == pytest.approx(float(ref_value), rel=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-12)
    (batch_value, batch_grad) = cf.batch(np.stack([x, x + 0.1]))
    np.testing.assert_allclose(batch_grad[0], ref_grad, rtol=1e-12, atol=1e-12)
