"""Preaccumulated reverse mode (trace -> graph -> **ad** -> lower -> jit).

Read ``ad.vjp_plain`` first: it gives every node between the outputs and the ``wrt``
nodes an adjoint node, ``bar(v) = sum over consumers c of bar(c) * dc/dv``. This module
builds the same derivatives with fewer dependent multiplications, and it is the reverse
pass every public transformation uses (``ad.vjp_nodes``).

**What.** A node used once needs no adjoint node of its own: its one consumer's adjoint
can pass through it with a *weight*, the product of the partials on the way from the
nearest node that has an adjoint (the lazy node's *base*). Weights are built from forward
values only. Where two weighted edges from one base meet at a node, their weights add
before the one multiplication by the base's adjoint: ``bar(B) * (w1 + w2)`` instead of
``bar(B) * w1 + bar(B) * w2``. This is the preaccumulation of local Jacobians of the AD
literature, restricted to single-use nodes.

**Why.** The multiplications by adjoints form the reverse pass's chain of dependent
operations; weights hang off the forward values and can be computed beside it. The
logistic map ``x <- r x (1 - x)`` takes three dependent operations per step adjoint by
adjoint (``bar(x) = bar(x') (1 - x) r - bar(x') r x``) and one preaccumulated
(``bar(x) = bar(x') * ((1 - x) r - r x)``), with no more operations in all: its compiled
gradient went from 23.9 to 34.2 M points/s (README, benchmarks). Recurrences, time
steppers and other chains of single-use scalar operations gain; graphs whose every
intermediate is shared are built exactly as the plain pass builds them.

**How it relates to the plain pass.** The same partials (``OpSpec.partials`` through
``partials._partials``), the same masking (``partials._MASKING``, ``mul0`` through
``partials._scale``), the same order of contributions at a node. The numbers agree with
``ad.vjp_plain`` where no node is lazy and up to reassociation (``bar * (w1 + w2)``) where
one is;
``tests/test_reverse.py`` checks both, at kinks too.

Two phases: :func:`_plan` decides from the graph's structure alone which nodes are lazy
and what their bases are; :func:`vjp_preaccumulated` then walks the nodes in reverse,
adding adjoints (:class:`_Adjoints`) for the others and weights for the lazy ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .graph import Graph, Node
from .partials import _MASKING, _SELECTING, _as_node, _depends, _partials, _scale

_UNIT_PARTIALS = frozenset(("add", "sub", "neg"))   # d(op)/d(operand) is +1 or -1


# ---- phase 1: which nodes get no adjoint node ----------------------------------------------

@dataclass
class _Uses:
    """Who uses each node of the reverse pass (ids ``lo..hi``), from the structure alone.

    Consumers are counted over the edges the reverse pass follows: from a needed node to
    its distinct operands that depend on ``wrt`` (``x * x`` is one edge).
    """
    needed: bytearray     # on a path from a seed down to a node that depends on wrt
    consumers: bytearray  # 0, 1 or 2 (= more than one; a seed is an arrival of its own)
    consumer: list[int]   # the one consumer, where consumers == 1
    masked: bytearray     # below a selection: may receive its exact zero (needs mul0)
    edges: list           # per needed node, its distinct operands' ids (``_edges``)


@dataclass
class _Plan:
    """The structure of one preaccumulated reverse pass (see :func:`_plan`)."""
    lazy: bytearray                # 1: no adjoint node; passes its consumer's on, weighted
    base: list[int]                # the node whose adjoint a weight multiplies (else itself)
    merge: set[tuple[int, int]]    # (operand, base): two weighted edges from base meet there
    costly: bytearray              # lazy at one multiplication more, unless an operand merges


def _edges(n: Node, dep: bytearray) -> list[int]:
    """Ids of ``n``'s distinct operands that depend on ``wrt``, in operand order."""
    out: list[int] = []
    for a in n.args:
        if dep[a.id] and a.id not in out:
            out.append(a.id)
    return out


def _uses(nodes: list[Node], seeds, dep: bytearray, lo: int, hi: int) -> _Uses:
    """The ``_Uses`` of the nodes reached from the seeds (they do not change when nodes
    are demoted, so both sweeps share them)."""
    size = hi + 1
    uses = _Uses(bytearray(size), bytearray(size), [0] * size, bytearray(size), [()] * size)
    needed, consumers, consumer, masked = uses.needed, uses.consumers, uses.consumer, \
        uses.masked
    for o, _ in seeds:
        if dep[o.id]:
            needed[o.id] = 1
            consumers[o.id] = 2
    for i in range(hi, lo - 1, -1):         # every consumer of a node before it
        if not needed[i]:
            continue
        mask = masked[i] or nodes[i].op in _SELECTING
        edges = uses.edges[i] = _edges(nodes[i], dep)
        for j in edges:
            needed[j] = 1
            consumers[j] = 1 if consumers[j] == 0 else 2
            consumer[j] = i
            if mask:
                masked[j] = 1
    return uses


def _sweep(nodes: list[Node], uses: _Uses, dep: bytearray, wrt_ids: set[int], lo: int,
           hi: int, demoted: bytearray) -> _Plan:
    """One pass from the seeds down: a needed node with one consumer is lazy unless it may
    receive a selection's exact zero, is a ``wrt`` node or was ``demoted``."""
    size = hi + 1
    plan = _Plan(bytearray(size), list(range(size)), set(), bytearray(size))
    lazy, base = plan.lazy, plan.base
    unit = bytearray(size)       # the weight from the base is +-1: every partial on the way
    last = [-1] * size           # per operand, the base of its latest edge
    for i in range(hi, lo - 1, -1):
        if not uses.needed[i]:
            continue
        if (uses.consumers[i] == 1 and not uses.masked[i] and not demoted[i]
                and i not in wrt_ids):
            lazy[i] = 1
            c = uses.consumer[i]
            b = base[i] = base[c]
            unit[i] = (unit[c] or not lazy[c]) and nodes[c].op in _UNIT_PARTIALS
        else:
            b = i
        edges = uses.edges[i]
        for j in edges:
            if last[j] == b:
                plan.merge.add((j, b))
            last[j] = b
        if lazy[i] and not unit[i] and len(edges) > 1:
            plan.costly[i] = 1
    return plan


def _demote(nodes: list[Node], plan: _Plan, dep: bytearray, lo: int, hi: int) -> bytearray:
    """Clear the lazy flag of nodes whose laziness defers nothing (no operand merges, and
    no operand is lazy itself, or the node is costly, where only a merge pays) and return
    them. Operands first, so a node sees its operands' final state."""
    demoted = bytearray(hi + 1)
    lazy = plan.lazy
    for i in range(lo, hi + 1):
        if not lazy[i]:
            continue
        b = plan.base[i]
        for a in nodes[i].args:
            j = a.id
            if dep[j] and ((j, b) in plan.merge or (lazy[j] and not plan.costly[i])):
                break
        else:
            lazy[i] = 0
            demoted[i] = 1
    return demoted


def _plan(nodes: list[Node], seeds, dep: bytearray, wrt_ids: set[int], lo: int,
          hi: int) -> _Plan:
    """Which nodes of the reverse pass get no adjoint node (``lazy``), and their bases.

    A lazy node has one consumer: it passes that consumer's adjoint ``bar(B)`` on with a
    weight ``W``, the product of the partials from its base ``B``, so the adjoint reaches
    it as ``bar(B) * W``. Laziness is free where ``W`` is +-1 or the node has one operand;
    a node with two operands and another weight costs a multiplication more unless an
    operand merges, so it stays lazy only then. Seeds, ``wrt`` nodes and nodes below a
    selection (whose exact zeros need ``mul0``) always get adjoints.
    """
    uses = _uses(nodes, seeds, dep, lo, hi)
    plan = _sweep(nodes, uses, dep, wrt_ids, lo, hi, bytearray(hi + 1))
    demoted = _demote(nodes, plan, dep, lo, hi)
    if any(demoted):        # their operands' bases change: sweep again
        plan = _sweep(nodes, uses, dep, wrt_ids, lo, hi, demoted)
    return plan


# ---- phase 2: the reverse pass ---------------------------------------------------------------

class _Adjoints:
    """What has reached each node so far in the reverse pass.

    The adjoint of ``v`` is ``sums[v]`` (contributions added as they arrive, as in the
    plain pass) plus, for each base ``B`` in ``weights[v]``, ``bar(B) * weights[v][B]``
    (the weights from ``B`` summed first; a weight is a node or a plain float).
    """

    def __init__(self, graph: Graph, wrt: Sequence[Node]):
        self.graph = graph
        self.wrt = set(wrt)
        self.sums: dict[Node, Node] = {}
        self.weights: dict[Node, dict[Node, Node | float]] = {}
        self.masked: set[Node] = set()      # adjoints that may be a selection's exact zero
        self.results: dict[Node, Node] = {}

    def add(self, v: Node, contrib: Node) -> None:
        prev = self.sums.get(v)
        if prev is None:
            self.sums[v] = contrib
            return
        total = self.sums[v] = self.graph.node("add", (prev, contrib))
        if v in self.wrt:
            self.graph.accumulations.add(total.id)

    def add_weight(self, v: Node, base: Node, weight: Node | float) -> None:
        groups = self.weights.setdefault(v, {})
        prev = groups.get(base)
        if prev is None:
            groups[base] = weight
        elif type(prev) is float and type(weight) is float:
            groups[base] = prev + weight
        else:
            groups[base] = self.graph.node("add", (_as_node(self.graph, prev),
                                                   _as_node(self.graph, weight)))

    def arrive(self, n: Node, lazy: int):
        """What reaches ``n``: ``None`` (nothing), or ``(base, weight, bar)``: its adjoint
        is ``bar(base) * weight``, and ``bar`` is that adjoint's node if ``n`` gets one
        (then ``base`` is ``bar`` and ``weight`` 1.0)."""
        groups = self.weights.pop(n, None)
        if n not in self.sums:
            if groups is None:
                return None
            if lazy and len(groups) == 1:
                ((base, weight),) = groups.items()      # passed on: no adjoint node
                return base, weight, None
        for base, weight in (groups or {}).items():
            self.add(n, _product(self.graph, base, weight))
        bar = self.sums.pop(n)
        if n in self.wrt:
            self.results[n] = bar
        return bar, 1.0, bar


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


def _propagate(graph: Graph, plan: _Plan, adj: _Adjoints, dep: bytearray, n: Node,
               base: Node, weight, bar: Node | None) -> None:
    """Send ``n``'s adjoint, ``bar(base) * weight``, on to its operands: as a weight to
    a lazy or merging operand, else as a contribution to the operand's adjoint (``bar``
    is built on first need when ``n`` has no adjoint node)."""
    spec, parts = _partials(graph, n)
    eager = spec.selects or n in adj.masked      # exact zeros go out as adjoints
    n_base = plan.base[n.id]
    for a, p, masking in zip(n.args, parts, _MASKING[n.op]):
        if p is None or not dep[a.id]:
            continue
        if type(p) is not float:
            p = _as_node(graph, p)
        if not eager and (plan.lazy[a.id] or (a.id, n_base) in plan.merge):
            adj.add_weight(a, base, _product(graph, weight, p))
            continue
        if bar is None:
            bar = _product(graph, base, weight)
        if type(p) is float and p == 1.0 and not masking:   # bar * 1 is bar
            contrib, is_masked = bar, n in adj.masked
        else:
            contrib, is_masked = _scale(graph.node, masking, _as_node(graph, p), bar,
                                        n in adj.masked)
        if is_masked:
            adj.masked.add(a)
        adj.add(a, contrib)


def vjp_preaccumulated(graph: Graph, outputs: Sequence[Node],
                       cotangents: Sequence[Node | None],
                       wrt: Sequence[Node]) -> list[Node | None]:
    """Reverse mode with preaccumulated local Jacobians: the adjoint node of each ``wrt``
    node (``None`` = structural zero). Arguments as :func:`symad.ad.vjp_plain`."""
    seeds = [(o, c) for o, c in zip(outputs, cotangents) if c is not None]
    if not seeds or not wrt:
        return [None] * len(wrt)
    lo = min(w.id for w in wrt)
    hi = max(o.id for o, _ in seeds)
    if hi < lo:
        return [None] * len(wrt)
    nodes = graph.nodes
    dep = _depends(graph, wrt, lo, hi)
    plan = _plan(nodes, seeds, dep, {w.id for w in wrt}, lo, hi)
    adj = _Adjoints(graph, wrt)
    for o, c in seeds:
        if dep[o.id]:
            adj.add(o, c)
    graph._open += 1
    try:
        for i in range(hi, lo - 1, -1):
            n = nodes[i]
            arrived = adj.arrive(n, plan.lazy[i])
            if arrived is not None and n.args:
                _propagate(graph, plan, adj, dep, n, *arrived)
    finally:
        graph._open -= 1
    return [adj.results.get(w) for w in wrt]
