"""Unrolling a shaped graph to scalars (symad/scalarize.py) is a lowering step: it gives
the scalar graph the scalar tracer gives, so small array programs are traced once."""

import re

import numpy as np
import pytest

import symad
from symad import array_trace, interp
from symad.graph import Graph
from symad.scalarize import scalarize
from tests.programs import lennard_jones, rosen

W = np.linspace(-1.0, 1.0, 12).reshape(4, 3)


def mlp(x):
    h = np.tanh(x.reshape(2, 4) @ W + 0.5)
    return np.sum((h * h).sum(axis=-1) - np.mean(h, axis=0).sum())


def reductions(x):
    a = x.reshape(3, 4)
    return (np.sum(a, axis=0) @ np.cos(a).T @ np.ones(3) + np.var(a) * np.sum(a[:, 1:] * 2)
            + np.concatenate([a[0], a[2, ::-1]]).dot(np.arange(8.0)))


def joins(x):
    a, b = x[:6], x[6:]
    m = np.stack([a * b, a - b, np.maximum(a, b)])
    return np.sum(np.where(m > 0, m, 0.5 * m) ** 2) + np.linalg.norm(np.diff(x))


PROGRAMS = [(rosen, 12), (lennard_jones, 12), (mlp, 8), (reductions, 12), (joins, 12)]


def _scalarized(f, x):
    tr = array_trace.trace_call(f, (x,), [x.shape])
    target = Graph("f")
    elems = [target.input(f"x[{i}]") for i in range(x.size)]
    outs = scalarize(tr.graph, tr.outputs, target, {tr.inputs[0]: elems})
    target.outputs = outs
    target.verify()
    return tr, target


def _schedule(graph):
    """The graph's operations in creation order, without node numbers (constants, which
    are no instructions, left out)."""
    return [re.sub(r"%\d+", "%", n.line()) for n in graph.live() if n.args]


@pytest.mark.parametrize("f,n", PROGRAMS, ids=[f.__name__ for f, _ in PROGRAMS])
def test_scalarized_graph_is_the_scalar_tracers_graph(f, n):
    x = np.linspace(-0.9, 1.1, n)
    tr, g = _scalarized(f, x)
    traced = symad.trace(f, x)
    # the same values, bit for bit, as the shaped graph and as the scalar trace
    (shaped,) = array_trace.evaluate(tr.graph, tr.outputs, x)
    (value,) = interp.evaluate(g, g.outputs, dict(zip(g.inputs, x)))
    (scalar,) = interp.evaluate(traced, traced.outputs, dict(zip(traced.inputs, x)))
    assert value.tobytes() == shaped.reshape(()).tobytes() == scalar.tobytes()
    # the same nodes (interning removes what the shaped graph computes twice) ...
    assert g.count_ops() == traced.count_ops()
    # ... made in the same order: loop rolling and the reverse pass see the same graph
    assert _schedule(g) == _schedule(traced)


def test_gradients_of_small_array_programs_trace_the_function_once():
    calls = []

    def f(x):
        calls.append(1)
        return np.sum(np.sin(x) * x[::-1])

    x = np.linspace(0.1, 0.9, 5)
    cf = symad.compile_grad(f)
    value, grad = cf(x)
    assert len(calls) == 1                          # no second trace by the scalar tracer
    assert cf.stats.get("array_level") is None      # a small program: element code
    assert value == pytest.approx(np.sum(np.sin(x) * x[::-1]), rel=1e-15)
    np.testing.assert_allclose(grad, symad.grad(f)(x), rtol=0, atol=0)


def test_unsupported_array_code_still_traces_element_by_element():
    def f(x):
        return np.cumprod(x)[-1] + np.sum(x)    # not (yet) an array-level function

    cf = symad.compile_grad(f)
    x = np.array([1.0, 2.0, 3.0])
    value, grad = cf(x)
    assert value == 12.0
    np.testing.assert_array_equal(grad, [7.0, 4.0, 3.0])


def test_an_empty_segment_is_the_empty_sum():
    from symad.graph import Graph as G
    g = G("s")
    x = g.input(size=3)
    s = g.segment_sum(x, [0, 0, 2], 3)        # nothing lands in segment 1
    target = Graph("t")
    elems = [target.input(f"x{i}") for i in range(3)]
    out = scalarize(g, [s], target, {x: elems})
    assert out[1].op == "const" and np.copysign(1.0, out[1].value) == -1.0
    assert out[0].op == "add" and out[2] is elems[2]
