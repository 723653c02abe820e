"""Automatic differentiation by extending the graph (trace -> graph -> **ad** -> lower -> jit).

Reverse mode walks the nodes in reverse creation (= reverse topological) order and sums
partial adjoints ``bar(v_i) += bar(v_j) * dv_j/dv_i`` as new nodes of the *same* graph, so
a gradient is itself a graph: it can be differentiated again (Hessians), interpreted or
compiled. Forward mode walks the nodes in creation order and sums ``dv_j/dv_i * tan(v_i)``.

A node used once passes its consumer's adjoint on without an adjoint node of its own, with
the product of the partials on the way as a weight (local Jacobians preaccumulated from
forward values, see ``_structure``): where two such paths meet, their weights add before
the one multiplication by the adjoint. Iterations such as ``x <- r x (1 - x)`` then cost
one dependent multiplication per step in the reverse pass instead of three, in as many
operations as adjoint by adjoint.

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


_UNIT_PARTIALS = frozenset(("add", "sub", "neg"))   # d(op)/d(operand) is +1 or -1
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


def _structure(graph: Graph, seeds, dep: bytearray, wrt_ids: set, lo: int, hi: int):
    """Which nodes of the reverse pass get no adjoint node of their own (``lazy``).

    A lazy node has one consumer: it passes that consumer's adjoint ``B`` on with a
    weight ``W``, the product of the partials from the nearest node that has an adjoint
    (its *base*), so the adjoint reaches a node as ``B * W`` with ``W`` computed from
    forward values alone. What this buys is the chain of dependent multiplications:
    ``x <- r x (1 - x)`` passes ``bar(x') * (r (1 - x) - r x)``, one multiplication per
    step after ``bar(x')``, where adjoint by adjoint it takes three. Edges from one base
    that meet at a node (``merge``) add their weights before multiplying by ``B``.

    Laziness is free where ``W`` is +-1 or the node has one operand; a node with two
    operands and another weight costs a multiplication more unless an operand merges,
    so it is lazy only then. Seeds, ``wrt`` nodes and selections' operands (whose exact
    zeros need ``mul0``) always get adjoints. Returns ``lazy``, ``base`` (each node's
    base id) and ``merge`` ((operand id, base id) pairs).
    """
    nodes = graph.nodes
    demoted = bytearray(hi + 1)
    lazy, base, merge, costly = _sweep(nodes, seeds, dep, wrt_ids, lo, hi, demoted)
    # Operands before consumers: a node stays lazy where that defers something (an
    # operand merges, or is lazy itself); a costly one only where an operand merges.
    for i in range(lo, hi + 1):
        if not lazy[i]:
            continue
        b = base[i]
        for a in nodes[i].args:
            j = a.id
            if dep[j] and ((j, b) in merge or (lazy[j] and not costly[i])):
                break
        else:
            lazy[i] = 0
            demoted[i] = 1
    if any(demoted):        # their operands' bases change: sweep again
        lazy, base, merge, _ = _sweep(nodes, seeds, dep, wrt_ids, lo, hi, demoted)
    return lazy, base, merge


def _sweep(nodes, seeds, dep: bytearray, wrt_ids: set, lo: int, hi: int,
           demoted: bytearray):
    """One pass from the seeds down (every consumer of a node before it): the lazy
    nodes (one consumer, not ``demoted``), each node's base, the merging (operand, base)
    pairs and the lazy nodes whose laziness costs a multiplication unless an operand
    merges (see ``_structure``)."""
    size = hi + 1
    needed = bytearray(size)
    consumers = bytearray(size)  # 0, 1 or 2 (= more than one)
    consumer = [0] * size
    masked = bytearray(size)     # may receive a selection's exact zero
    for o, _ in seeds:
        if dep[o.id]:
            needed[o.id] = 1
            consumers[o.id] = 2  # a seed is an arrival of its own
    lazy = bytearray(size)
    base = list(range(size))
    unit = bytearray(size)       # W is +-1: every partial from the base is
    last = [-1] * size           # the base of an operand's latest edge
    visitor = [-1] * size
    merge: set = set()
    costly = bytearray(size)
    for i in range(hi, lo - 1, -1):
        if not needed[i]:
            continue
        n = nodes[i]
        if consumers[i] == 1 and not masked[i] and not demoted[i] and i not in wrt_ids:
            lazy[i] = 1
            c = consumer[i]
            b = base[i] = base[c]
            unit[i] = (unit[c] or not lazy[c]) and nodes[c].op in _UNIT_PARTIALS
        else:
            b = i
        mask = masked[i] or n.op in _SELECTING
        operands = 0
        for a in n.args:
            j = a.id
            if not dep[j] or visitor[j] == i:     # x * x: one edge
                continue
            visitor[j] = i
            operands += 1
            needed[j] = 1
            consumers[j] = 1 if consumers[j] == 0 else 2
            consumer[j] = i
            if mask:
                masked[j] = 1
            if last[j] == b:
                merge.add((j, b))
            last[j] = b
        if lazy[i] and not unit[i] and operands > 1:
            costly[i] = 1
    return lazy, base, merge, costly


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
    lazy, base_of, merge = _structure(graph, seeds, dep, {w.id for w in wrt}, lo, hi)
    # The adjoint of v is sums[v] (contributions added as they arrive, as adjoint by
    # adjoint) plus, over the bases B of the weights waiting in deferred[v][B],
    # B * (their sum): weights are products of partials, forward values only.
    sums: dict[Node, Node] = {}
    deferred: dict[Node, dict[Node, Node | float]] = {}
    masked: set[Node] = set()   # adjoints that may be a selection's exact zero
    results: dict[Node, Node] = {}

    def contribute(v: Node, contrib: Node) -> None:
        prev = sums.get(v)
        if prev is None:
            sums[v] = contrib
        else:
            sums[v] = node("add", (prev, contrib))
            if v in wrt_set:
                graph.accumulations.add(sums[v].id)

    def defer(v: Node, b: Node, w) -> None:
        groups = deferred.get(v)
        if groups is None:
            deferred[v] = {b: w}
            return
        prev = groups.get(b)
        if prev is None:
            groups[b] = w
        elif type(prev) is float and type(w) is float:
            groups[b] = prev + w
        else:
            groups[b] = node("add", (_as_node(graph, prev), _as_node(graph, w)))

    for o, c in seeds:
        if dep[o.id]:
            contribute(o, c)
    graph._open += 1
    try:
        for i in range(hi, lo - 1, -1):
            n = nodes[i]
            groups = deferred.pop(n, None)
            if groups is None and n not in sums:
                continue
            bar = None
            if n not in sums and lazy[i] and len(groups) == 1:
                ((b, w),) = groups.items()  # n passes on b with weight w: no adjoint node
            else:
                for b, w in (groups or {}).items():
                    contribute(n, _product(graph, b, w))
                b = bar = sums.pop(n)
                w = 1.0
                if n in wrt_set:
                    results[n] = bar
            if not n.args:
                continue
            spec, parts = _partials(graph, n)
            eager = spec.selects or n in masked
            base = base_of[i]
            for a, p, masking in zip(n.args, parts, _MASKING[n.op]):
                if p is None or not dep[a.id]:
                    continue
                if type(p) is not float:
                    p = _as_node(graph, p)
                if not eager and (lazy[a.id] or (a.id, base) in merge):
                    defer(a, b, _product(graph, w, p))
                    continue
                if bar is None:
                    bar = _product(graph, b, w)
                if type(p) is float and p == 1.0 and not masking:   # bar * 1 is bar
                    contrib, is_masked = bar, n in masked
                else:
                    contrib, is_masked = _scale(node, masking, _as_node(graph, p), bar,
                                                n in masked)
                if is_masked:
                    masked.add(a)
                contribute(a, contrib)
    finally:
        graph._open -= 1
    return [results.get(w) for w in wrt]


def _product(graph: Graph, w, p):
    """``w * p`` for nodes or numbers, without multiplying by 1 (a weight, or an
    adjoint scaled by its weight)."""
    if type(w) is float:
        if w == 1.0:
            return p
        if type(p) is float:
            return w * p
    elif type(p) is float and p == 1.0:
        return w
    return graph.node("mul", (_as_node(graph, w), _as_node(graph, p)))


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
