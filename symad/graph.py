"""The graph IR: immutable nodes interned per graph (trace -> **graph** -> ad -> lower -> jit).

Building the same ``(op, args, attrs)`` twice returns the same node, so common
subexpressions are removed as the graph is built, for traced code and for adjoints alike.
Creation order is topological order: operands always exist before their users, so every
pass here is a loop over ``graph.nodes`` and nothing recurses on graph depth.
"""

from __future__ import annotations

import hashlib
import operator
import pickle
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import SymadError, TracingError
from .ops import EXACT_RULES, OPS, fastmath_flags, fastmath_rules


class Node:
    """One value of a graph: ``op`` applied to ``args`` with static ``attrs``.

    Nodes are created only through :meth:`Graph.node`; identity is equality.
    ``shape`` is ``()`` today (arrays are traced as arrays of scalar nodes).
    """

    __slots__ = ("op", "args", "attrs", "shape", "id", "graph", "__weakref__")

    def __init__(self, graph: Graph, op: str, args: tuple, attrs: tuple, id: int):
        self.graph = graph
        self.op = op
        self.args = args
        self.attrs = attrs
        self.shape = ()
        self.id = id

    @property
    def value(self) -> float:
        """The number held by a ``const`` node."""
        if self.op != "const":
            raise SymadError(f"%{self.id} is a {self.op!r} node, not a constant")
        return self.attrs[0]

    def __repr__(self) -> str:
        return f"%{self.id}"

    def line(self) -> str:
        """This node as one SSA line, e.g. ``%7 = mul %3 %5``."""
        return f"%{self.id} = {_rhs(self)}"


def _fmt_const(v: float) -> str:
    return repr(float(v))


def _rhs(node: Node) -> str:
    if node.op == "const":
        return f"const {_fmt_const(node.attrs[0])}"
    if node.op == "input":
        return f"input {node.attrs[0]}"
    parts = [node.op, *(f"%{a.id}" for a in node.args)]
    parts += [repr(a) for a in node.attrs]
    return " ".join(parts)


# Python's float +, -, * and unary - are the IEEE double operations and never raise.
_PY_ARITHMETIC = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
                  "neg": operator.neg}


def _const_key(value: float) -> tuple:
    # Key constants by bits: 0.0 == -0.0 and nan != nan in Python, but they are
    # different IEEE values and must stay different nodes.
    return ("const", (), (struct.pack("<d", value),))


class Graph:
    """An append-only DAG of interned scalar nodes.

    Attributes:
        nodes: every node in creation (= topological) order.
        inputs: the input nodes, in argument order (flattened).
        outputs: the output nodes (flattened), set by :func:`symad.trace`.
        fastmath: the fast-math flags (``ops.fastmath_flags``: ``True`` is
            ``ops.DEFAULT_FASTMATH``); the rewrites of ``ops.FASTMATH_RULES`` that they
            license run too.
    """

    def __init__(self, name: str = "f", fastmath=False):
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: list[Node] = []
        self.outputs: list[Node] = []
        self.fastmath = fastmath_flags(fastmath)
        self._fast_rules = fastmath_rules(self.fastmath)
        self._table: dict[tuple, Node] = {}
        self._open = 0  # >0 while a trace or an AD pass may add nodes through tracers
        # Ids of the additions the reverse pass made to sum a gradient's contributions
        # (``ad.vjp_nodes``): a scheduling hint for ``codegen.roll``, nothing more.
        self.accumulations: set[int] = set()
        # Pytree structure of the traced function (set by trace); shapes of arg/out leaves.
        self.in_tree: Any = None
        self.out_tree: Any = None

    # ---- construction -------------------------------------------------------------
    def _intern(self, key: tuple, op: str, args: tuple, attrs: tuple) -> Node:
        node = self._table.get(key)
        if node is None:
            node = Node(self, op, args, attrs, len(self.nodes))
            self.nodes.append(node)
            self._table[key] = node
        return node

    def const(self, value: float) -> Node:
        """The constant node holding ``float(value)`` (interned by its bits)."""
        value = float(value)
        return self._intern(_const_key(value), "const", (), (value,))

    def input(self, name: str | None = None) -> Node:
        """A new input node of the graph; inputs are never merged."""
        node = self.variable(name if name is not None else f"x{len(self.inputs)}")
        self.inputs.append(node)
        return node

    def variable(self, name: str) -> Node:
        """A fresh free variable: an ``input`` node that is not one of ``graph.inputs``.

        Nested transformations differentiate with respect to fresh variables and then
        :meth:`substitute` the actual operands, so a value captured by a closure is never
        confused with the variable of an inner derivative.
        """
        node = Node(self, "input", (), (name,), len(self.nodes))
        self.nodes.append(node)
        return node

    def substitute(self, outputs: Sequence[Node], mapping: dict[Node, Node]) -> list[Node]:
        """``outputs`` rebuilt with each key of ``mapping`` replaced by its value."""
        if not mapping:
            return list(outputs)
        lo = min(k.id for k in mapping)
        new: dict[Node, Node] = dict(mapping)
        for n in self.live(outputs):
            if n.id <= lo or n in new or not n.args:
                continue
            if any(a in new for a in n.args):
                new[n] = self.node(n.op, [new.get(a, a) for a in n.args], n.attrs)
        return [new.get(o, o) for o in outputs]

    def node(self, op: str, args: Sequence[Node] = (), attrs: tuple = ()) -> Node:
        """Return the node ``op(*args)``, folding constants and exact identities.

        This is the only way nodes are made: it checks arity, puts commutative
        operands in canonical order, applies the rewrite rules and interns.
        """
        args = tuple(args)
        hit = self._table.get((op, args, attrs))
        if hit is not None:            # common subexpression: no rules, no checks needed
            return hit
        spec = OPS.get(op)
        if spec is None:
            raise SymadError(f"unknown op {op!r}; known ops: {', '.join(sorted(OPS))}")
        if len(args) != spec.arity:
            raise SymadError(f"op {op!r} takes {spec.arity} operands, got {len(args)}")
        all_const = True
        for a in args:
            if a.graph is not self:
                raise TracingError(
                    f"op {op!r} mixes nodes of two graphs ({a.graph.name!r} and "
                    f"{self.name!r}); a value from one trace was used in another")
            if a.op != "const":
                all_const = False
        if all_const:
            return self._fold(spec, args, attrs)
        if spec.commutative and args[0].id > args[1].id:
            args = (args[1], args[0])
            hit = self._table.get((op, args, attrs))
            if hit is not None:
                return hit
        rule = EXACT_RULES.get(op)
        if rule is not None:
            rewritten = rule(self, args, attrs)
            if rewritten is not None:
                return rewritten
        if self._fast_rules:
            for rule in self._fast_rules.get(op, ()):
                rewritten = rule(self, args, attrs)
                if rewritten is not None:
                    return rewritten
        return self._intern((op, args, attrs), op, args, attrs)

    def _fold(self, spec, args: tuple, attrs: tuple) -> Node:
        exact = _PY_ARITHMETIC.get(spec.name)
        if exact is not None:     # the same IEEE operation, without numpy's scalar costs
            return self.const(exact(*(a.attrs[0] for a in args)))
        with np.errstate(all="ignore"):
            value = spec.numpy(*(np.float64(a.attrs[0]) for a in args), *attrs)
        return self.const(value)

    # ---- queries -----------------------------------------------------------------
    def live(self, outputs: Iterable[Node] | None = None) -> list[Node]:
        """The nodes the given outputs depend on, in topological order."""
        outs = list(self.outputs if outputs is None else outputs)
        if not outs:
            return []
        top = max(o.id for o in outs)
        mark = bytearray(top + 1)
        for o in outs:
            mark[o.id] = 1
        nodes = self.nodes
        for i in range(top, -1, -1):
            if mark[i]:
                for a in nodes[i].args:
                    mark[a.id] = 1
        return [nodes[i] for i in range(top + 1) if mark[i]]

    def count_ops(self, outputs: Iterable[Node] | None = None) -> Counter:
        """``Counter`` of op names over the nodes the outputs depend on.

        Default: the live part of ``graph.outputs``, or every node if none are set.
        """
        if outputs is None and not self.outputs:
            return Counter(n.op for n in self.nodes)
        nodes = self.live(outputs)
        return Counter(n.op for n in nodes)

    def fingerprint(self, outputs: Sequence[Node]) -> str:
        """A digest of how ``outputs`` are computed: equal for equal live graphs.

        Built from (op, operand ids, attributes) per live node; input names are left out,
        so functions that differ only in argument names share compiled code.
        """
        rows = [(n.op, *[a.id for a in n.args], *n.attrs) if n.op != "input" else ("input",)
                for n in self.live(outputs)]
        rows.append(tuple(o.id for o in outputs))
        # pickle, not repr: exact for floats (-0.0, NaN payloads) and ~3x faster.
        return hashlib.sha256(pickle.dumps(rows, protocol=5)).hexdigest()

    def __len__(self) -> int:
        return len(self.nodes)

    def to_text(self, outputs: Sequence[Node] | None = None, max_lines: int | None = None) -> str:
        """SSA listing of the live part of the graph, one line per node."""
        outs = list(self.outputs if outputs is None else outputs)
        nodes = self.live(outs) if outs else list(self.nodes)
        body = [n for n in nodes if n.op != "input"]
        head = f"graph {self.name}({', '.join(f'%{n.id} {n.attrs[0]}' for n in self.inputs)}):"
        lines = [head]
        shown = body if max_lines is None else body[:max_lines]
        lines += ["  " + n.line() for n in shown]
        if len(shown) < len(body):
            lines.append(f"  ... {len(body) - len(shown)} more nodes")
        lines.append("  return " + ", ".join(f"%{o.id}" for o in outs))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return (f"<symad.Graph {self.name!r}: {len(self.nodes)} nodes, "
                f"{len(self.inputs)} inputs, {len(self.outputs)} outputs>")

    def verify(self) -> None:
        """Check the invariants every pass relies on; raise ``SymadError`` if one fails."""
        seen: dict[tuple, Node] = {}
        for i, n in enumerate(self.nodes):
            if n.id != i or n.graph is not self:
                raise SymadError(f"node {n.line()} has a wrong id or graph")
            if n.op not in ("const", "input"):
                if len(n.args) != OPS[n.op].arity:
                    raise SymadError(f"arity mismatch at {n.line()}")
                key = (n.op, n.args, n.attrs)
                if key in seen:
                    raise SymadError(f"duplicate interned key at {n.line()}")
                seen[key] = n
            for a in n.args:
                if a.id >= n.id or a.graph is not self:
                    raise SymadError(f"operand {a!r} does not precede its user {n.line()}")
            if n.shape != ():
                raise SymadError(f"non-scalar shape at {n.line()}")
        for o in self.outputs:
            if o.graph is not self:
                raise SymadError(f"output {o!r} belongs to another graph")

