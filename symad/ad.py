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

from collections.abc import Sequence

import numpy as np

from .graph import Graph, Node
from .partials import (  # noqa: F401 (_MASKING, _CONSTANT_PARTIALS: ad's names for them)
    _CONSTANT_PARTIALS,
    _MASKING,
    STRUCTURAL_ADJOINTS,
    _as_node,
    _depends,
    _partials,
    _scale,
)
from .preaccumulate import vjp_preaccumulated


def vjp_plain(graph: Graph, outputs: Sequence[Node], cotangents: Sequence[Node | None],
              wrt: Sequence[Node]) -> list[Node | None]:
    """Reverse mode, adjoint by adjoint: the reference pass (read this one first).

    Every node between the outputs and ``wrt`` gets an adjoint node, the sum over its
    consumers ``c`` of ``bar(c) * dc/dv`` (for a linear row with an ``adjoint`` rule,
    ``gather`` or ``sum``, that rule applied to ``bar(c)``: the other one of the two,
    each being the other's transpose). It works on every graph, vectors included (the
    array-level kernels' gradients are built by it).
    Walking the nodes in reverse creation order (= reverse topological order) finishes
    each adjoint before it is passed on.
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
            if n.op in STRUCTURAL_ADJOINTS:        # a row's adjoint rule (gather, sum)
                (x,) = n.args
                if dep[x.id]:
                    if n in masked:
                        masked.add(x)
                    _accumulate(graph, bars, x, STRUCTURAL_ADJOINTS[n.op](graph, n, bar),
                                wrt_set)
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
    if contrib.size != v.size:      # v was broadcast (a scalar) into a vector node
        contrib = graph.segment_sum(contrib, np.zeros(contrib.size, np.int64), 1)
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
            if n.op in STRUCTURAL_ADJOINTS:        # linear (gather, sum): op(tangent)
                (x,) = n.args
                tans[n] = node(n.op, (tans[x],), n.attrs)
                if x in masked:
                    masked.add(n)
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
