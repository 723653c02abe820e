"""Automatic differentiation by extending the graph (trace -> graph -> **ad** -> lower -> jit).

Reverse mode walks the nodes in reverse creation (= reverse topological) order and sums
partial adjoints ``bar(v_i) += bar(v_j) * dv_j/dv_i`` as new nodes of the *same* graph, so
a gradient is itself a graph: it can be differentiated again (Hessians), interpreted or
compiled. Forward mode walks the nodes in creation order and sums ``dv_j/dv_i * tan(v_i)``.

Adjoints that are known to be zero are never built (``None`` partials, nodes that do not
depend on the inputs, outputs with no cotangent). Selection ops (``where``, ``maximum``,
``minimum``) multiply with ``mul0``, which keeps an untaken branch's zero exact even when
the branch's own partials are inf or NaN (``where(x > 0, sqrt(x), 0)`` at ``x = 0``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .graph import Graph, Node
from .ops import OPS
from .trace import Tracer


def _as_node(graph: Graph, value) -> Node:
    if isinstance(value, Tracer):
        return value.node
    return graph.const(value)


# Ops whose partials are plain numbers whatever the operands (add, sub, neg): found on
# first use, so the reverse pass builds no tracers for them afterwards.
_CONSTANT_PARTIALS: dict[str, tuple] = {}


def _partials(graph: Graph, node: Node):
    spec = OPS[node.op]
    parts = _CONSTANT_PARTIALS.get(node.op)
    if parts is not None:
        return spec, parts
    args = [Tracer(a) for a in node.args]
    parts = spec.partials(*args, Tracer(node), *node.attrs)
    # A partial rule sees only tracers and the op's attributes: numbers it returns for an
    # op without attributes are constants of the rule itself.
    if not node.attrs and all(p is None or type(p) is float for p in parts):
        _CONSTANT_PARTIALS[node.op] = parts
    return spec, parts


def _depends(graph: Graph, wrt: Sequence[Node], lo: int, hi: int) -> bytearray:
    """dep[i] == 1 when node i (lo <= i <= hi) depends on a node of ``wrt``."""
    nodes = graph.nodes
    dep = bytearray(len(nodes))
    for w in wrt:
        dep[w.id] = 1
    for i in range(lo, hi + 1):
        if not dep[i]:
            for a in nodes[i].args:
                if dep[a.id]:
                    dep[i] = 1
                    break
    return dep


def _scale(node, spec, partial: Node, seed: Node, seed_masked: bool) -> tuple[Node, bool]:
    """``seed * partial`` and whether the result may be a masked exact zero.

    A selection's partial (0 for the branch not taken) or a seed that may be such a zero
    multiplies with ``mul0``, so that zero stays exact against an inf or NaN factor.
    """
    if spec.selects:
        return node("mul0", (partial, seed)), True
    if seed_masked:
        return node("mul0", (seed, partial)), True
    return node("mul", (seed, partial)), False


def vjp_nodes(graph: Graph, outputs: Sequence[Node], cotangents: Sequence[Node | None],
              wrt: Sequence[Node]) -> list[Node | None]:
    """Reverse mode: the adjoint node of each ``wrt`` node (``None`` = structural zero).

    Args:
        outputs: output nodes, seeded with ``cotangents`` (``None`` seeds nothing).
        wrt: the nodes to differentiate with respect to (inputs or variables).
    """
    seeds = [(o, c) for o, c in zip(outputs, cotangents) if c is not None]
    if not seeds or not wrt:
        return [None] * len(wrt)
    lo = min(w.id for w in wrt)
    hi = max(o.id for o, _ in seeds)
    if hi < lo:
        return [None] * len(wrt)
    node = graph.node
    nodes = graph.nodes
    dep = _depends(graph, wrt, lo, hi)
    wrt_set = set(wrt)
    bars: dict[Node, Node] = {}
    masked: set[Node] = set()   # adjoints that may be an exact zero from a selection
    for o, c in seeds:
        if dep[o.id]:
            bars[o] = c if o not in bars else node("add", (bars[o], c))
    graph._open += 1
    try:
        for i in range(hi, lo - 1, -1):
            n = nodes[i]
            bar = bars.get(n)
            if bar is None or not n.args:
                continue
            spec, parts = _partials(graph, n)
            for a, p in zip(n.args, parts):
                if p is None or not dep[a.id]:
                    continue
                if type(p) is float and p == 1.0 and not spec.selects:   # bar * 1 is bar
                    contrib, is_masked = bar, n in masked
                else:
                    contrib, is_masked = _scale(node, spec, _as_node(graph, p), bar,
                                                n in masked)
                if is_masked:
                    masked.add(a)
                prev = bars.get(a)
                bars[a] = contrib if prev is None else node("add", (prev, contrib))
                if prev is not None and a in wrt_set:
                    graph.accumulations.add(bars[a].id)
    finally:
        graph._open -= 1
    return [bars.get(w) for w in wrt]


def jvp_nodes(graph: Graph, outputs: Sequence[Node], wrt: Sequence[Node],
              tangents: Sequence[Node | None]) -> list[Node | None]:
    """Forward mode: the tangent node of each output (``None`` = structural zero)."""
    tans: dict[Node, Node] = {w: t for w, t in zip(wrt, tangents) if t is not None}
    if not tans or not outputs:
        return [None] * len(outputs)
    lo = min(w.id for w in tans)
    hi = max(o.id for o in outputs)
    node = graph.node
    nodes = graph.nodes
    masked: set[Node] = set()
    graph._open += 1
    try:
        for i in range(lo, hi + 1):
            n = nodes[i]
            if not n.args or n in tans or not any(a in tans for a in n.args):
                continue
            spec, parts = _partials(graph, n)
            acc = None
            for a, p in zip(n.args, parts):
                t = tans.get(a)
                if t is None or p is None:
                    continue
                term, is_masked = _scale(node, spec, _as_node(graph, p), t, a in masked)
                if is_masked:
                    masked.add(n)
                acc = term if acc is None else node("add", (acc, term))
            if acc is not None:
                tans[n] = acc
    finally:
        graph._open -= 1
    return [tans.get(o) for o in outputs]
