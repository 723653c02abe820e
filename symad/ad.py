"""Automatic differentiation by extending the graph (trace -> graph -> **ad** -> lower -> jit).

Start with :func:`vjp_plain`, the reference reverse pass: it walks the nodes in reverse
creation (= reverse topological) order and sums partial adjoints
``bar(v_i) += bar(v_j) * dv_j/dv_i`` as new nodes of the *same* graph, so a gradient is
itself a graph: it can be differentiated again (Hessians), interpreted or compiled. Each
op's partials come from its row of the op table (``OpSpec.partials``, graph expressions).
Forward mode (:func:`jvp_nodes`) walks the nodes in creation order and sums
``dv_j/dv_i * tan(v_i)``.

The transformations call :func:`vjp_nodes`, which runs the *preaccumulated* reverse pass
of ``symad/preaccumulate.py``: the same partials and masking, but a node used once passes
its consumer's adjoint on with a weight (the product of the partials on the way) instead
of getting an adjoint node of its own, so chains such as ``x <- r x (1 - x)`` cost one
dependent multiplication per step instead of three. Read it second.

Adjoints that are known to be zero are never built (``None`` partials, nodes that do not
depend on the inputs, outputs with no cotangent). Selection ops (``where``, ``maximum``,
``minimum``) multiply with ``mul0``, which keeps an untaken branch's zero exact even when
the branch's own partials are inf or NaN (``where(x > 0, sqrt(x), 0)`` at ``x = 0``).
Both modes put the exact zero on the same factor: the selection's partial, or else an
adjoint or tangent that may be such a zero; so forward-over-reverse Hessians mask as
reverse-over-reverse ones do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .graph import Graph, Node
from .ops import OPS
from .trace import Tracer


def _as_node(graph: Graph, value) -> Node:
    if isinstance(value, Node):
        return value
    if isinstance(value, Tracer):
        return value.node
    return graph.const(value)


_SELECTING = frozenset(name for name, spec in OPS.items() if spec.selects)
# Per op, which partials are selections (a 0 that must stay exact against inf or NaN).
# mul0(z, y) masks with z: its partial for z is y, any number, and the exact zero there
# is z's own adjoint or tangent (``seed_masked``), not the partial.
_MASKING = {name: (False, True) if name == "mul0" else (spec.selects,) * spec.arity
            for name, spec in OPS.items()}

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


_FLAG_OPS = frozenset(("lt", "le", "gt", "ge", "eq", "ne", "const"))
_FLAG_ARITHMETIC = frozenset(("add", "sub", "mul", "neg"))


def _bounded(partial: Node) -> bool:
    """Is ``partial`` finite by construction: arithmetic on comparisons and constants, as
    the selections' partials are (``gt(x, y) + 0.5 * eq(x, y)``)? Looks a few nodes
    deep only; anything else may be inf."""
    todo = [partial]
    for _ in range(8):
        if not todo:
            return True
        n = todo.pop()
        if n.op in _FLAG_OPS:
            if n.op == "const" and not math.isfinite(n.attrs[0]):
                return False
            continue
        if n.op not in _FLAG_ARITHMETIC:
            return False
        todo.extend(n.args)
    return not todo


def _scale(node, masking: bool, partial: Node, seed: Node,
           seed_masked: bool) -> tuple[Node, bool]:
    """``seed * partial`` and whether the result may be a masked exact zero.

    A selection's partial (``masking``: 0 for the branch not taken) or a seed that may be
    such a zero multiplies with ``mul0``, so that zero stays exact against an inf or NaN
    factor.
    """
    if masking:
        if seed_masked and not _bounded(partial):
            # Either factor may be the exact zero, and the other inf: mul0's partial for
            # y is its z, a masked adjoint or tangent itself (reverse over forward, third
            # order). mul0 keeps only its first operand's zero, so put the zero first.
            # Both branches are products, so derivatives of this are a product's.
            zero = partial.graph.const(0.0)
            return node("where", (node("eq", (partial, zero)), node("mul0", (partial, seed)),
                                  node("mul0", (seed, partial)))), True
        return node("mul0", (partial, seed)), True
    if seed_masked:
        return node("mul0", (seed, partial)), True
    return node("mul", (seed, partial)), False


def vjp_plain(graph: Graph, outputs: Sequence[Node], cotangents: Sequence[Node | None],
              wrt: Sequence[Node]) -> list[Node | None]:
    """Reverse mode, adjoint by adjoint: the reference pass (read this one first).

    Every node between the outputs and ``wrt`` gets an adjoint node, the sum over its
    consumers ``c`` of ``bar(c) * dc/dv``. Walking the nodes in reverse creation order
    (= reverse topological order) finishes each adjoint before it is passed on.
    ``symad.preaccumulate`` builds the same derivatives with shorter dependent chains.

    Args:
        outputs: output nodes, seeded with ``cotangents`` (``None`` seeds nothing).
        wrt: the nodes to differentiate with respect to (inputs or variables).

    Returns:
        The adjoint node of each ``wrt`` node (``None`` = structural zero).
    """
    seeds = [(o, c) for o, c in zip(outputs, cotangents) if c is not None]
    if not seeds or not wrt:
        return [None] * len(wrt)
    lo = min(w.id for w in wrt)
    hi = max(o.id for o, _ in seeds)
    dep = _depends(graph, wrt, lo, hi)     # only these nodes can have a nonzero adjoint
    wrt_set = set(wrt)
    bars: dict[Node, Node] = {}
    masked: set[Node] = set()              # adjoints that may be a selection's exact zero
    for o, c in seeds:
        if dep[o.id]:
            _accumulate(graph, bars, o, c, wrt_set)
    graph._open += 1        # the partial rules build their nodes through tracers
    try:
        for n in reversed(graph.nodes[lo:hi + 1]):
            bar = bars.get(n)
            if bar is None or not n.args:
                continue
            _, parts = _partials(graph, n)
            for a, p, masking in zip(n.args, parts, _MASKING[n.op]):
                if p is None or not dep[a.id]:
                    continue
                if type(p) is float and p == 1.0 and not masking:   # bar * 1 is bar
                    contrib, is_masked = bar, n in masked
                else:
                    contrib, is_masked = _scale(graph.node, masking, _as_node(graph, p),
                                                bar, n in masked)
                if is_masked:
                    masked.add(a)
                _accumulate(graph, bars, a, contrib, wrt_set)
    finally:
        graph._open -= 1
    return [bars.get(w) for w in wrt]


def _accumulate(graph: Graph, bars: dict[Node, Node], v: Node, contrib: Node,
                wrt: set[Node]) -> None:
    """``bar(v) += contrib``; a sum at a ``wrt`` node is marked for ``codegen.roll``."""
    prev = bars.get(v)
    if prev is None:
        bars[v] = contrib
        return
    bars[v] = graph.node("add", (prev, contrib))
    if v in wrt:
        graph.accumulations.add(bars[v].id)


def vjp_nodes(graph: Graph, outputs: Sequence[Node], cotangents: Sequence[Node | None],
              wrt: Sequence[Node], *, preaccumulate: bool = True) -> list[Node | None]:
    """Reverse mode: the adjoint node of each ``wrt`` node (``None`` = structural zero).

    The reverse pass every transformation calls. It preaccumulates local Jacobians
    (``symad.preaccumulate``: fewer dependent multiplications, faster kernels);
    ``preaccumulate=False`` runs the plain reference pass, :func:`vjp_plain`. Arguments
    as :func:`vjp_plain`.
    """
    if not preaccumulate:
        return vjp_plain(graph, outputs, cotangents, wrt)
    # Imported here: symad.preaccumulate builds on this module's partials and masking.
    from .preaccumulate import vjp_preaccumulated
    return vjp_preaccumulated(graph, outputs, cotangents, wrt)


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
            _, parts = _partials(graph, n)
            acc = None
            for a, p, masking in zip(n.args, parts, _MASKING[n.op]):
                t = tans.get(a)
                if t is None or p is None:
                    continue
                term, is_masked = _scale(node, masking, _as_node(graph, p), t, a in masked)
                if is_masked:
                    masked.add(n)
                acc = term if acc is None else node("add", (acc, term))
            if acc is not None:
                tans[n] = acc
    finally:
        graph._open -= 1
    return [tans.get(o) for o in outputs]
