"""The structural rows of the op table (``OpSpec.structural``: gather and segment sum),
table-driven as tests/test_ops.py is for the elementwise rows.

For every row with the flag and every kind of index table (affine, scattered, runs,
broadcast from one element, empty segments): the row's numpy semantics against a plain
loop, the reference evaluator against the row's numpy (batch axes included), the row's
adjoint as its transpose (the dot-product test), forward mode against the reverse pass,
compiled array-level kernels and unrolled (scalarized) code against numpy and central
differences, and the verifier refusing malformed tables. Adding a structural row adds
its cases here once it has tables in ``TABLES``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import symad
from symad import interp, policy
from symad.ad import jvp_nodes, vjp_plain
from symad.arrays import AArray
from symad.errors import SymadError
from symad.graph import Graph, Node, Table
from symad.ops import OPS

pytest.importorskip("llvmlite")

STRUCTURAL = [name for name, row in OPS.items() if row.structural]


def _rng(*key) -> np.random.Generator:
    return np.random.default_rng([sum(map(ord, str(k))) for k in key])


def _gather_tables():
    """kind -> (operand elements, the index table), a gather reads ``len(t)`` elements."""
    rng = _rng("gather")
    return {
        "affine": (40, 3 + 2 * np.arange(15)),                    # x[3:33:2]
        "reversed": (40, 39 - np.arange(40)),                      # x[::-1]: distinct
        "scattered": (30, rng.integers(0, 30, 50)),                # repeats, any order
        "permutation": (25, rng.permutation(25)),                   # distinct, scattered
        "runs": (12, np.repeat(np.arange(12), rng.integers(1, 4, 12))),
        "broadcast-from-one": (1, np.zeros(20, np.int64)),          # a scalar, broadcast
        "one-element-many-times": (9, np.full(17, 4)),
    }


def _sum_tables():
    """kind -> (operand elements, the segment table, the segment count)."""
    rng = _rng("sum")
    return {
        "affine": (30, np.arange(30), 30),                          # distinct, in order
        "to-one": (40, np.zeros(40, np.int64), 1),                  # np.sum(x)
        "runs": (36, np.repeat(np.arange(9), 4), 9),                # sum(axis=-1)
        "strided": (36, np.tile(np.arange(9), 4), 9),               # sum(axis=0)
        "scattered": (50, rng.integers(0, 20, 50), 20),
        "empty-segments": (24, rng.choice([1, 4, 5, 11], 24), 14),  # most get nothing
        "broadcast-from-one": (1, np.array([3]), 6),                 # one element placed
    }


def _attrs(name: str, case: tuple) -> tuple[int, tuple]:
    """(operand elements, node attributes) of a table case."""
    if name == "gather":
        size, index = case
        return size, (Table(index),)
    size, index, n = case
    return size, (Table(index), n)


TABLES = {"gather": _gather_tables(), "sum": _sum_tables()}
CASES = [pytest.param(name, kind, id=f"{name}-{kind}")
         for name in STRUCTURAL for kind in TABLES.get(name, {})]


def _case(name: str, kind: str) -> tuple[int, tuple]:
    return _attrs(name, TABLES[name][kind])


def _loop_reference(name: str, x: np.ndarray, attrs: tuple) -> np.ndarray:
    """The rows' documented semantics, one element at a time."""
    index = attrs[0].index.tolist()
    if name == "gather":
        return np.array([x[i] for i in index])
    out = [-0.0] * attrs[1]
    for k, j in enumerate(index):          # increasing k: numpy's order
        out[j] = out[j] + x[k]
    return np.array(out)


def _graph(name: str, kind: str):
    """A graph of one row node over an input; (graph, input, node)."""
    size, attrs = _case(name, kind)
    g = Graph(f"{name}_{kind}")
    x = g.input("x", size)
    node = g.node(name, (x,), attrs)
    g.outputs = [node]
    return g, x, node


def test_every_structural_row_has_tables_and_its_fields():
    assert set(STRUCTURAL) == {"gather", "sum"}
    for name in STRUCTURAL:
        row = OPS[name]
        assert TABLES.get(name), f"{name}: add its tables to TABLES"
        assert row.arity == 1 and row.numpy is not None
        assert row.adjoint is not None and row.shape_problem is not None
        # not an elementwise op: no partials, no sympy, no scalar lowering, no ufunc name
        assert row.partials is None and row.sympy is None and row.lower is None
    from symad.codegen import is_lowerable
    from symad.ops import DIFFERENTIABLE_OPS, ufunc_names
    assert not set(STRUCTURAL) & set(DIFFERENTIABLE_OPS)
    assert not set(STRUCTURAL) & set(ufunc_names().values())
    assert not any(is_lowerable(name) for name in STRUCTURAL)


@pytest.mark.parametrize("name,kind", CASES)
def test_numpy_semantics_and_the_evaluator(name, kind):
    row = OPS[name]
    g, x, node = _graph(name, kind)
    assert node.op == name, "the graph folded the node away"
    assert g.verify() is None
    values = _rng(name, kind).standard_normal(x.size)
    want = _loop_reference(name, values, node.attrs)
    np.testing.assert_array_equal(row.numpy(values, *node.attrs), want)
    # the row's numpy is the evaluator's: the same bits, -0.0 of empty segments included
    got = interp.evaluate(g, [node], {x: values if x.size > 1 else values[0]})[0]
    got = np.reshape(got, -1)
    assert got.tobytes() == want.tobytes()
    # batch axes before the elements axis
    batch = _rng(name, kind, "batch").standard_normal((3, 2, x.size))
    got = interp.evaluate(g, [node], {x: batch if x.size > 1 else batch[..., 0]})[0]
    want = np.stack([_loop_reference(name, b, node.attrs) for b in batch.reshape(6, -1)])
    np.testing.assert_array_equal(np.reshape(got, want.shape), want)


def _adjoint(g: Graph, x: Node, node: Node) -> tuple[Node, Node]:
    """(the cotangent input, the reverse pass's adjoint of ``x``)."""
    y = g.variable("y", node.size)
    (bar,) = vjp_plain(g, [node], [y], [x])
    return y, bar


@pytest.mark.parametrize("name,kind", CASES)
def test_the_adjoint_is_the_transpose(name, kind):
    row = OPS[name]
    g, x, node = _graph(name, kind)
    y, bar = _adjoint(g, x, node)
    # the reverse pass applies the row's own adjoint rule
    assert bar is row.adjoint(g, node, y) or bar.size != x.size
    g.verify()
    rng = _rng(name, kind, "dot")
    xv, yv = rng.standard_normal(x.size), rng.standard_normal(node.size)
    env = {x: xv if x.size > 1 else xv[0], y: yv if y.size > 1 else yv[0]}
    op_x, adj_y = (np.reshape(v, -1) for v in interp.evaluate(g, [node, bar], env))
    # <op(x), y> == <x, adj(y)>: fsum rounds each side's exact sum once, so where every
    # output element is one operand element (distinct positions) the products are the
    # same numbers and the sides agree bit for bit; otherwise adj(y) rounds its sums
    left = math.fsum((op_x * yv).tolist())
    right = math.fsum((xv * adj_y).tolist())
    index = node.attrs[0].index
    one_to_one = len(np.unique(index)) == len(index)
    if one_to_one:
        assert left == right
    else:
        assert left == pytest.approx(right, rel=1e-13, abs=1e-13)
    # the transpose's transpose: the adjoint of the adjoint is the row again
    z = g.variable("z", x.size)
    (bar2,) = vjp_plain(g, [bar], [z], [y])
    back = interp.evaluate(g, [bar2], {z: xv if z.size > 1 else xv[0]})[0]
    np.testing.assert_array_equal(np.reshape(back, -1), op_x)


@pytest.mark.parametrize("name,kind", CASES)
def test_forward_mode_passes_tangents_through_the_row(name, kind):
    g, x, node = _graph(name, kind)
    t = g.variable("t", x.size)
    (tan,) = jvp_nodes(g, [node], [x], [t])
    y, bar = _adjoint(g, x, node)
    rng = _rng(name, kind, "jvp")
    tv, yv = rng.standard_normal(x.size), rng.standard_normal(node.size)
    env = {t: tv if t.size > 1 else tv[0], y: yv if y.size > 1 else yv[0]}
    tan_v, bar_v = (np.reshape(v, -1) for v in interp.evaluate(g, [tan, bar], env))
    np.testing.assert_array_equal(tan_v, _loop_reference(name, tv, node.attrs))
    assert math.fsum((tan_v * yv).tolist()) == pytest.approx(
        math.fsum((tv * bar_v).tolist()), rel=1e-13, abs=1e-13)


def test_graph_node_builds_a_structural_row_by_its_construction_rules():
    g = Graph()
    x = g.input("x", 10)
    t = np.array([3, 1, 4, 1, 5])
    assert g.node("gather", (x,), (Table(t),)) is g.gather(x, t)
    assert g.node("gather", (x,), (Table(np.arange(10)),)) is x          # identity
    s = g.node("sum", (x,), (Table(np.arange(10) % 3), 3))
    assert s is g.segment_sum(x, np.arange(10) % 3, 3)
    # a gather of a gather is one gather
    inner = g.gather(x, np.arange(9, -1, -1))
    assert g.node("gather", (inner,), (Table(t),)) is g.gather(x, 9 - t)
    # constants fold: the row's numpy on the constant
    c = g.const(np.arange(10.0))
    folded = g.node("sum", (c,), (Table(np.arange(10) % 3), 3))
    assert folded.op == "const"
    np.testing.assert_array_equal(folded.attrs[0].array, [18.0, 12.0, 15.0])
    with pytest.raises(SymadError, match="attributes"):
        g.node("sum", (x,), (Table(np.zeros(10)),))


def test_substitute_rebuilds_structural_nodes():
    g = Graph()
    x = g.input("x", 6)
    y = g.segment_sum(g.node("sin", (g.gather(x, [5, 0, 2, 2]),)), [1, 0, 1, 1], 2)
    v = g.variable("v", 6)
    (z,) = g.substitute([y], {x: v})
    values = np.linspace(-1.0, 1.0, 6)
    np.testing.assert_array_equal(interp.evaluate(g, [z], {v: values})[0],
                                  interp.evaluate(g, [y], {x: values})[0])
    assert z is not y


# ---- compiled: array-level kernels and unrolled code ----------------------------------


def _row_function(name: str, attrs: tuple):
    """User code that applies the row to its (flat) argument at the array level."""
    def apply_row(a):
        node = a.graph.node(name, (a.node,), attrs)
        return AArray(a.graph, node, (node.size,))
    return apply_row


@pytest.fixture(params=["array", "unrolled"])
def level(request, monkeypatch):
    """Array-level kernels for every size (ARRAY_MIN_* = 0), or the unrolled scalar graph
    (thresholds no program reaches)."""
    low = request.param == "array"
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 0 if low else 10**9)
    monkeypatch.setattr(policy, "ARRAY_MIN_LENGTH", 0 if low else 10**9)
    return request.param


@pytest.mark.parametrize("name,kind", CASES)
def test_compiled_through_the_row_against_numpy_and_central_differences(name, kind, level):
    row = OPS[name]
    size, attrs = _case(name, kind)
    apply_row = _row_function(name, attrs)
    n_out = len(attrs[0].index) if name == "gather" else attrs[1]
    w = np.cos(np.arange(n_out) + 0.5)
    rng = _rng(name, kind, "compiled")
    x = rng.uniform(-2.0, 2.0, size)

    def values(v):
        return apply_row(v) * 1.5 + 0.25

    def loss(v):
        return np.sum(np.sin(apply_row(v * v)) * w)

    def reference(v):
        with np.errstate(all="ignore"):
            return float(np.sum(np.sin(row.numpy(v * v, *attrs)) * w))

    f = symad.compile(values)
    got = f(x)
    np.testing.assert_allclose(got, row.numpy(x, *attrs) * 1.5 + 0.25, rtol=1e-15, atol=0)
    assert bool(f.stats.get("array_level")) == (level == "array"), f.stats.get("kernel")
    g = symad.compile_grad(loss)
    value, grad = g(x)
    assert bool(g.stats.get("array_level")) == (level == "array"), g.stats.get("kernel")
    np.testing.assert_allclose(value, reference(x), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(grad, symad.numerical_grad(reference, x), rtol=1e-6,
                               atol=1e-8)
    if level == "array":          # the kernel's graph has the row (not folded away)
        assert name in f.graph.count_ops()


# ---- the verifier ----------------------------------------------------------------------


def _malformed(op: str, source: int, attrs: tuple, size: int) -> Graph:
    """A graph with one ``op`` node built around the construction rules (as a bug in a
    pass or a tampered table could)."""
    g = Graph()
    x = g.input("x", source)
    g.nodes.append(Node(g, op, (x,), attrs, len(g.nodes), size))
    return g


MALFORMED = [
    pytest.param("gather", 5, (Table([0, 5]),), 2, "does not match", id="gather-past-end"),
    pytest.param("gather", 5, (Table([0, -1]),), 2, "does not match", id="gather-negative"),
    pytest.param("gather", 5, (Table([0, 1, 2]),), 2, "does not match",
                 id="gather-length"),
    pytest.param("gather", 5, ((0, 1),), 2, "without an index table", id="gather-no-table"),
    pytest.param("gather", 5, (), 2, "one attribute", id="gather-no-attrs"),
    pytest.param("sum", 4, (Table([0, 1, 2, 3]), 3), 3, "does not match", id="sum-past-end"),
    pytest.param("sum", 4, (Table([0, 1, -1, 0]), 3), 3, "does not match",
                 id="sum-negative"),
    pytest.param("sum", 4, (Table([0, 1, 1]), 2), 2, "does not match", id="sum-length"),
    pytest.param("sum", 4, (Table([0, 1, 1, 0]), 3), 2, "does not match",
                 id="sum-count-not-size"),
    pytest.param("sum", 4, (Table([0, 1, 1, 0]), 2.0), 2, "two attributes",
                 id="sum-float-count"),
    pytest.param("sum", 4, (Table([0, 1, 1, 0]),), 2, "two attributes", id="sum-no-count"),
]


@pytest.mark.parametrize("op,source,attrs,size,message", MALFORMED)
def test_the_verifier_rejects_malformed_tables(op, source, attrs, size, message):
    assert OPS[op].structural
    with pytest.raises(SymadError, match=message):
        _malformed(op, source, attrs, size).verify()


def test_the_verifier_accepts_what_the_construction_rules_build():
    for name, kind in ((c.values[0], c.values[1]) for c in CASES):
        g, x, node = _graph(name, kind)
        _adjoint(g, x, node)
        g.verify()
