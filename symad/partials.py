"""What the reverse passes and forward mode share (trace -> graph -> **ad** -> lower -> jit).

Each op's partials as graph nodes (from its row of the op table), the masking convention
for selections (``mul0`` keeps an untaken branch's zero exact against inf or NaN), and
which nodes depend on the differentiated ones. :mod:`symad.ad` (the plain reverse pass and
forward mode) and :mod:`symad.preaccumulate` (the reverse pass the transformations run)
build on these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

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


def _finite(value) -> bool:
    """Is a constant's value (a number, or a vector's ``Values``) finite everywhere?"""
    return math.isfinite(value) if type(value) is float else bool(np.isfinite(value.array).all())


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
            if n.op == "const" and not _finite(n.attrs[0]):
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


# The linear rows' reverse rules, from the op table (``OpSpec.adjoint``: gather and segment
# sum, each the other's transpose): ``bar(x) += adjoint(graph, node, bar)``.
STRUCTURAL_ADJOINTS = {name: spec.adjoint for name, spec in OPS.items()
                       if spec.adjoint is not None}
