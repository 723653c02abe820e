"""Shaped graph -> scalar graph: unrolling to elements as a lowering choice.

The array-level tracer (:mod:`symad.arrays`) records one node per numpy operation. When
the kernel policy prefers element-by-element code (few elements: straight code beats
loops, and the scalar reverse pass preaccumulates local Jacobians), this pass writes
every vector node out as one scalar node per element, in a graph of its own, instead of
tracing the user's function a second time with the scalar tracer:

- an elementwise node of ``n`` elements becomes ``n`` nodes (a scalar operand is used by
  each of them: broadcasting);
- a ``gather`` is no node at all: element ``k`` *is* its operand's element ``t[k]``;
- a ``sum`` adds the elements of each segment in increasing position, as numpy sums an
  object array, and is ``-0.0`` (the empty sum) where no element lands.

The scalar graph's own rules (interning, ``ops.EXACT_RULES``) apply to every new node, so
the result is the graph the scalar tracer builds for the same numpy code, up to the order
in which nodes were created.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import SymadError
from .graph import Graph, Node


def scalarize(graph: Graph, outputs: Sequence[Node], target: Graph,
              inputs: Mapping[Node, Sequence[Node]]) -> list[Node]:
    """The elements of ``outputs`` (flat, in order) as scalar nodes of ``target``.

    Args:
        graph: the shaped graph.
        outputs: nodes of ``graph``.
        target: the scalar graph to build in (usually a new one).
        inputs: for each input node of ``graph`` that ``outputs`` depend on, its elements
            as nodes of ``target`` (C order).

    Nodes are written out node by node (all elements of one, then the next: numpy's
    order for elementwise code), except in ``graph.regions`` (one reduction each: its
    output elements one by one, each with the products and additions it needs).
    """
    # A reduction's operands are written before it even where the array graph reads
    # them only through gathers pushed into the reduction: numpy computes them first.
    live = graph.live([*outputs, *(a for _, _, operands in graph.regions for a in operands)])
    lows = [lo for lo, _, _ in graph.regions]

    def region(node_id: int) -> int:       # the region's index, or -1
        r = bisect.bisect_right(lows, node_id) - 1
        return r if r >= 0 and node_id < graph.regions[r][1] else -1

    where = {n.id: region(n.id) for n in live} if lows else {}
    # region nodes read from outside their region: every element is needed
    wanted = {o.id for o in outputs}
    for n in live:
        wanted.update(a.id for a in n.args if where and where[a.id] != where[n.id])
    writer = _Writer(target, inputs)
    i = 0
    while i < len(live):
        r = where.get(live[i].id, -1)
        if r < 0:
            writer.whole(live[i])
            i += 1
            continue
        j = i
        while j < len(live) and where[live[j].id] == r:
            j += 1
        writer.region(live[i:j], wanted)
        i = j
    return [e for o in outputs for e in writer.elems[o.id]]


class _Writer:
    """The element lists of the shaped graph's nodes, as they are written out."""

    def __init__(self, target: Graph, inputs: Mapping[Node, Sequence[Node]]):
        self.target, self.inputs = target, inputs
        self.elems: dict[int, list] = {}

    def whole(self, n: Node) -> None:
        """All elements of ``n``, in order."""
        target, op = self.target, n.op
        elems = self.elems
        if op == "input":
            if n not in self.inputs:
                raise SymadError(f"no elements given for input {n.line()}")
            out = list(self.inputs[n])
        elif op == "const":
            v = n.attrs[0]
            out = [target.const(v)] if type(v) is float else \
                [target.const(x) for x in v.array.tolist()]
        elif op == "gather":
            src = elems[n.args[0].id]
            out = [src[i] for i in n.attrs[0].index.tolist()]
        elif op == "sum":
            out = _segment_sums(target, elems[n.args[0].id], n.attrs[0].index, n.size)
        elif n.size == 1:
            out = [target.node(op, [elems[a.id][0] for a in n.args], n.attrs)]
        else:
            columns = [elems[a.id] if a.size > 1 else elems[a.id] * n.size for a in n.args]
            node, attrs = target.node, n.attrs
            out = [node(op, operands, attrs) for operands in zip(*columns)]
        elems[n.id] = out

    def region(self, nodes: list, wanted: set) -> None:
        """The nodes of one reduction (its operands are written: those of its nodes that
        recompute their elements make the same scalar nodes), each output element with
        the products and additions it needs, depth first (an explicit stack: nothing
        recurses on graph depth)."""
        elems = self.elems
        for n in nodes:
            elems[n.id] = [None] * n.size
        ids = {n.id for n in nodes}
        read_inside = {a.id for n in nodes for a in n.args if a.id in ids}
        reads = {n.id: self._reads(n) for n in nodes}
        for n in nodes:
            if n.id not in read_inside or n.id in wanted:
                for k in range(n.size):
                    self._demand(n, k, reads)

    def _reads(self, n: Node) -> tuple:
        """How element k of region node ``n`` reads its operands' element lists."""
        if n.op == "gather":
            return ("gather", self.elems[n.args[0].id], n.attrs[0].index.tolist())
        if n.op == "sum":
            return ("sum", self.elems[n.args[0].id], _positions(n.attrs[0].index, n.size))
        if n.op == "const":
            v = n.attrs[0]
            return ("const", [v] if type(v) is float else v.array.tolist())
        return ("op", [self.elems[a.id] for a in n.args], [a.size == 1 for a in n.args])

    def _demand(self, root: Node, k: int, reads: dict) -> None:
        """Build element ``k`` of ``root`` and whatever of the region it needs first."""
        elems, target = self.elems, self.target
        stack = [(root, k)]
        while stack:
            n, k = stack[-1]
            out = elems[n.id]
            if out[k] is not None:
                stack.pop()
                continue
            kind, *how = reads[n.id]
            if kind == "op":
                lists, scalar = how
                values = [lst[0] if one else lst[k] for lst, one in zip(lists, scalar)]
                if None in values:
                    stack.extend(reversed([(a, 0 if one else k) for a, one, v in
                                           zip(n.args, scalar, values) if v is None]))
                    continue
                out[k] = target.node(n.op, values, n.attrs)
            elif kind == "gather":
                src, index = how
                v = src[index[k]]
                if v is None:
                    stack.append((n.args[0], index[k]))
                    continue
                out[k] = v
            elif kind == "sum":
                src, positions = how
                missing = [(n.args[0], j) for j in positions[k] if src[j] is None]
                if missing:
                    stack.extend(reversed(missing))
                    continue
                out[k] = _chain_sum(target, [src[j] for j in positions[k]])
            else:
                values = how[0]
                out[k] = target.const(values[k if len(values) > 1 else 0])
            stack.pop()


def _positions(segments, n: int) -> list:
    """For each segment, the positions that land there, in increasing order."""
    out: list = [[] for _ in range(n)]
    for k, j in enumerate(segments.tolist()):
        out[j].append(k)
    return out


def _chain_sum(target: Graph, values: list) -> Node:
    if not values:
        return target.const(-0.0)
    total = values[0]
    for v in values[1:]:
        total = target.node("add", (total, v))
    return total


def _segment_sums(target: Graph, values: list, segments, n: int) -> list:
    totals: list = [None] * n
    for v, j in zip(values, segments.tolist()):
        t = totals[j]
        totals[j] = v if t is None else target.node("add", (t, v))
    if None in totals:
        empty = target.const(-0.0)
        totals = [empty if t is None else t for t in totals]
    return totals


def stage_array_trace(tr, args: tuple, name: str, arg_names: Sequence[str]):
    """A :class:`symad.api.Staged` (what the scalar tracer returns) for the array-level
    trace ``tr`` of ``f(*args)``: a new scalar graph with one input per argument element,
    named as the scalar tracer names them, and the outputs' elements."""
    from .api import Staged
    from .tree import tree_flatten
    target = Graph(name)
    st = Staged(graph=target, nested=False, argnums=tuple(range(len(args))))
    traced_inputs = iter(tr.inputs)
    env = {}
    for arg, arg_name in zip(args, arg_names):
        leaves, treedef, paths = tree_flatten(arg, arg_name)
        shapes = []
        for path, shape in zip(paths, (tuple(np.shape(leaf)) for leaf in leaves)):
            if shape == ():
                elems = [target.input(path)]
            else:
                elems = [target.input(f"{path}[{','.join(map(str, idx))}]")
                         for idx in np.ndindex(shape)]
            env[next(traced_inputs)] = elems
            st.variables.extend(elems)
            shapes.append(shape)
        st.arg_trees.append(treedef)
        st.arg_shapes.append(shapes)
    st.outputs = scalarize(tr.graph, tr.outputs, target, env)
    st.out_tree, st.out_shapes = tr.out_tree, list(tr.out_shapes)
    target.in_tree = tree_flatten(tuple(args))[1]
    target.outputs = list(st.outputs)
    target.out_tree = tr.out_tree
    return st
