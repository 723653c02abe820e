"""The graph IR: immutable nodes interned per graph (trace -> **graph** -> ad -> lower -> jit).

Building the same ``(op, args, attrs)`` twice returns the same node, so common
subexpressions are removed as the graph is built, for traced code and for adjoints alike.
Creation order is topological order: operands always exist before their users, so every
pass here is a loop over ``graph.nodes`` and nothing recurses on graph depth.

Every node has a shape: ``()`` for a scalar, ``(n,)`` for a flat float64 vector of ``n``
elements (the C order of the numpy array it stands for; the tracer keeps the array's own
shape). A scalar graph (the scalar tracer's, element by element) holds only ``()`` nodes;
the array-level tracer (:mod:`symad.arrays`) builds one node per numpy operation. Both are
this one class: the same interning, rewrites (``ops.EXACT_RULES``), verifier, printer and
reference evaluator (:mod:`symad.interp`). Nodes:

- ``input`` attrs ``(name,)``: an argument leaf (its elements, in ``graph.inputs`` order).
- ``const`` attrs ``(value,)``: a float, or :class:`Values` for a vector.
- an elementwise op-table row (``add``, ``sin``, ``powi`` ...): each operand has the
  node's shape or is a scalar (broadcast).
- the structural rows (``OpSpec.structural``): ``gather`` attrs ``(Table,)``: ``out[k] =
  x[t[k]]`` (slicing, indexing, reshaping, transposing and broadcasting are all gathers
  of the flat vector); ``sum`` attrs ``(Table, n)``: ``out[j] = x[k0] + x[k1] + ...``
  over the ``k`` with ``t[k] == j``, in increasing ``k`` (numpy's order for object
  arrays, hence the scalar tracer's), -0.0 where no ``k`` lands.

``gather`` and ``sum`` are each other's adjoints (their rows' ``adjoint``). They are built
by :meth:`Graph.gather` and :meth:`Graph.segment_sum`, whose folding rules are the rows'
construction rules (as ``ops.EXACT_RULES`` are the elementwise rows'); ``Graph.node``
sends a structural row there.
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
from .ops import EXACT_RULES, OPS, add_segments, fastmath_flags, fastmath_rules


class _Frozen:
    """A read-only vector as a node attribute: equal and hashed by its bytes (so 0.0 and
    -0.0 differ), interned with the node."""

    __slots__ = ("key", "_hash")

    def __init__(self, array: np.ndarray):
        array.flags.writeable = False
        self.key = array.tobytes()
        self._hash = hash(self.key)

    def __eq__(self, other):
        return type(other) is type(self) and self.key == other.key

    def __hash__(self):
        return self._hash

    def __reduce__(self):           # pickled (and fingerprinted) as its bytes
        return (_from_key, (type(self), self.key))


def _from_key(cls, key: bytes):
    return cls(np.frombuffer(key, dtype=np.int64 if cls is Table else np.float64).copy())


class Table(_Frozen):
    """An int64 index vector (of ``gather`` and ``sum``); ``affine`` is ``(start, step)``
    or None."""

    __slots__ = ("index", "affine", "_runs")

    def __init__(self, index):
        index = np.ascontiguousarray(index, dtype=np.int64).reshape(-1)
        super().__init__(index)
        self.index = index
        self._runs: str | None = None
        n = len(index)
        self.affine = None
        if n == 1:
            self.affine = (int(index[0]), 0)
        elif n > 1:
            step = int(index[1] - index[0])
            if np.array_equal(index, index[0] + step * np.arange(n)):
                self.affine = (int(index[0]), step)

    def runs(self) -> str:
        """``"distinct"`` (no value twice), ``"runs"`` (each value's positions contiguous,
        e.g. the first index of all pairs i < j) or ``"scattered"``."""
        if self._runs is None:
            index = self.index
            changes = 1 + int(np.count_nonzero(index[1:] != index[:-1])) if len(index) else 0
            distinct = len(np.unique(index))
            self._runs = "distinct" if distinct == len(index) else \
                "runs" if changes == distinct else "scattered"
        return self._runs

    def __repr__(self):
        if self.affine is not None:
            return f"[{self.affine[0]} + {self.affine[1]}k for k < {len(self.index)}]"
        return f"table[{len(self.index)}]"


class Values(_Frozen):
    """A vector constant's elements; ``uniform`` is their one value when all are the same
    bits."""

    __slots__ = ("array", "uniform")

    def __init__(self, values):
        array = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        super().__init__(array)
        self.array = array
        bits = array.view(np.int64)
        self.uniform = float(array[0]) if len(array) and (bits == bits[0]).all() else None

    def __repr__(self):
        if self.uniform is not None:
            return f"{self.uniform!r}..."
        return f"values[{len(self.array)}]"


class Node:
    """One value of a graph: ``op`` applied to ``args`` with static ``attrs``.

    Nodes are created only through :meth:`Graph.node` (and ``const``, ``input``,
    ``gather``, ``segment_sum``); identity is equality. ``size`` is the number of
    elements: ``shape`` is ``()`` when it is 1, else ``(size,)``.
    """

    __slots__ = ("op", "args", "attrs", "size", "id", "graph", "__weakref__")

    def __init__(self, graph: Graph, op: str, args: tuple, attrs: tuple, id: int,
                 size: int = 1):
        self.graph = graph
        self.op = op
        self.args = args
        self.attrs = attrs
        self.size = size
        self.id = id

    @property
    def shape(self) -> tuple:
        return () if self.size == 1 else (self.size,)

    @property
    def value(self) -> float:
        """The number held by a ``const`` node."""
        if self.op != "const":
            raise SymadError(f"%{self.id} is a {self.op!r} node, not a constant")
        return self.attrs[0]

    def __repr__(self) -> str:
        return f"%{self.id}"

    def line(self) -> str:
        """This node as one SSA line, e.g. ``%7 = mul %3 %5`` (a vector of 64 elements:
        ``%7[64] = mul %3 %5``)."""
        size = f"[{self.size}]" if self.size != 1 else ""
        return f"%{self.id}{size} = {_rhs(self)}"


def _fmt_const(v: float) -> str:
    return repr(float(v))


def _rhs(node: Node) -> str:
    if node.op == "const":
        v = node.attrs[0]
        return f"const {_fmt_const(v) if type(v) is float else repr(v)}"
    if node.op == "input":
        return f"input {node.attrs[0]}"
    parts = [node.op, *(f"%{a.id}" for a in node.args)]
    parts += [repr(a) for a in node.attrs]
    return " ".join(parts)


def _const_array(node: Node) -> np.ndarray | np.float64:
    """A constant node's value for numpy: its elements, or the number."""
    v = node.attrs[0]
    return np.float64(v) if type(v) is float else v.array


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
        # (start, end, operands): the ids [start, end) of the nodes the array-level
        # tracer made for one numpy reduction (``x @ y``, ``np.sum``) of ``operands``;
        # ``scalarize`` writes each out element by element, in the order numpy computes
        # on an object array (a lowering hint).
        self.regions: list[tuple[int, int, tuple]] = []
        # Pytree structure of the traced function (set by trace); shapes of arg/out leaves.
        self.in_tree: Any = None
        self.out_tree: Any = None

    # ---- construction -------------------------------------------------------------
    def _intern(self, key: tuple, op: str, args: tuple, attrs: tuple,
                size: int = 1) -> Node:
        node = self._table.get(key)
        if node is None:
            node = Node(self, op, args, attrs, len(self.nodes), size)
            self.nodes.append(node)
            self._table[key] = node
        return node

    def const(self, value) -> Node:
        """The constant node holding ``value``: a number (interned by its bits), or an
        array of them (a vector constant of its elements in C order; one element is the
        scalar constant)."""
        if type(value) is not float:
            if isinstance(value, (np.ndarray, list, tuple)):
                return self._const_vector(value)
            value = float(value)
        return self._intern(_const_key(value), "const", (), (value,))

    def _const_vector(self, values) -> Node:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
        if array.size == 1:
            return self.const(float(array[0]))
        if array.size == 0:
            raise SymadError("a constant with no elements (every node has at least one)")
        v = Values(array.copy())
        return self._intern(("const", (), (v,)), "const", (), (v,), array.size)

    def input(self, name: str | None = None, size: int = 1) -> Node:
        """A new input node of the graph (``size`` elements); inputs are never merged."""
        node = self.variable(name if name is not None else f"x{len(self.inputs)}", size)
        self.inputs.append(node)
        return node

    def variable(self, name: str, size: int = 1) -> Node:
        """A fresh free variable: an ``input`` node that is not one of ``graph.inputs``.

        Nested transformations differentiate with respect to fresh variables and then
        :meth:`substitute` the actual operands, so a value captured by a closure is never
        confused with the variable of an inner derivative.
        """
        if size < 1:
            raise SymadError(f"input {name!r} of {size} elements (at least one is needed)")
        node = Node(self, "input", (), (name,), len(self.nodes), size)
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

        This is the only way elementwise nodes are made: it checks arity and shapes, puts
        commutative operands in canonical order, applies the rewrite rules and interns.
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
        if spec.structural:
            return self._structural(op, args[0], attrs)
        all_const = True
        size = 1
        for a in args:
            if a.graph is not self:
                raise TracingError(
                    f"op {op!r} mixes nodes of two graphs ({a.graph.name!r} and "
                    f"{self.name!r}); a value from one trace was used in another")
            if a.op != "const":
                all_const = False
            if a.size != 1:
                if size != 1 and a.size != size:
                    raise SymadError(f"op {op!r} of operands with {size} and {a.size} "
                                     "elements (each has the node's elements, or one)")
                size = a.size
        if all_const:
            return self._fold(spec, args, attrs, size)
        if spec.commutative and args[0].id > args[1].id:
            args = (args[1], args[0])
            hit = self._table.get((op, args, attrs))
            if hit is not None:
                return hit
        # A rule builds on the graph; for a vector node, its constants are vectors too,
        # and a rewrite to another shape (a broadcast operand) is not taken.
        builder = self if size == 1 else _Sized(self, size)
        rule = EXACT_RULES.get(op)
        if rule is not None:
            rewritten = rule(builder, args, attrs)
            if rewritten is not None and rewritten.size == size:
                return rewritten
        if self._fast_rules:
            for rule in self._fast_rules.get(op, ()):
                rewritten = rule(builder, args, attrs)
                if rewritten is not None and rewritten.size == size:
                    return rewritten
        return self._intern((op, args, attrs), op, args, attrs, size)

    def _fold(self, spec, args: tuple, attrs: tuple, size: int = 1) -> Node:
        if size != 1:
            with np.errstate(all="ignore"):
                out = spec.numpy(*(_const_array(a) for a in args), *attrs)
            return self.const(np.broadcast_to(np.asarray(out, dtype=np.float64), (size,)))
        exact = _PY_ARITHMETIC.get(spec.name)
        if exact is not None:     # the same IEEE operation, without numpy's scalar costs
            return self.const(exact(*(a.attrs[0] for a in args)))
        with np.errstate(all="ignore"):
            value = spec.numpy(*(np.float64(a.attrs[0]) for a in args), *attrs)
        return self.const(value)

    def gather(self, x: Node, index) -> Node:
        """``x[index]`` for a flat int index vector (any numpy indexing reduces to this):
        the ``gather`` row's construction rules (folding, then interning)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) == x.size and np.array_equal(index, np.arange(x.size)):
            return x
        if x.op == "const":
            return self.const(_const_array(x)[index] if x.size > 1 else
                              np.full(len(index), x.attrs[0]))
        if x.op == "gather":             # x[s][t] == x[s[t]]
            return self.gather(x.args[0], x.attrs[0].index[index])
        if x.args and not OPS[x.op].structural and len(np.unique(index)) == len(index):
            # An elementwise node read at distinct positions: those positions computed
            # where they are read (no element twice), fused with the reader.
            return self.node(x.op, [a if a.size == 1 else self.gather(a, index)
                                    for a in x.args], x.attrs)
        if len(index) == 0:
            raise SymadError("a gather of no elements (every node has at least one)")
        table = Table(index)
        return self._intern(("gather", (x,), (table,)), "gather", (x,), (table,), len(index))

    def segment_sum(self, x: Node, segments, n: int) -> Node:
        """``out[j] = sum of x[k] for segments[k] == j``, in increasing k (-0.0 where no
        k lands: -0.0 + v == v for every v, -0.0 included): the ``sum`` row's
        construction rules (a constant folds by the row's numpy)."""
        segments = np.asarray(segments, dtype=np.int64).reshape(-1)
        if x.op == "const":
            values = _const_array(x) if x.size > 1 else np.full(len(segments), x.attrs[0])
            return self.const(add_segments(values, segments, n))
        attrs = (Table(segments), int(n))
        return self._intern(("sum", (x,), attrs), "sum", (x,), attrs, int(n))

    def _structural(self, op: str, x: Node, attrs: tuple) -> Node:
        """A structural row's node through its construction rules (``Graph.node`` of
        ``gather``/``sum``, e.g. when :meth:`substitute` rebuilds one)."""
        if x.graph is not self:
            raise TracingError(f"op {op!r} mixes nodes of two graphs ({x.graph.name!r} and "
                               f"{self.name!r}); a value from one trace was used in another")
        table = attrs[0] if attrs else None
        index = table.index if isinstance(table, Table) else table
        if op == "gather" and len(attrs) == 1:
            return self.gather(x, index)
        if op == "sum" and len(attrs) == 2:
            return self.segment_sum(x, index, attrs[1])
        raise SymadError(f"op {op!r} with {len(attrs)} attributes (gather takes (Table,), "
                         "sum (Table, n))")

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
        rows = [(n.op, *[a.id for a in n.args], *n.attrs) if n.op != "input" else
                ("input",) if n.size == 1 else ("input", n.size)
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
        head = f"graph {self.name}({', '.join(_input_text(n) for n in self.inputs)}):"
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
                key = (n.op, n.args, n.attrs)
                if key in seen:
                    raise SymadError(f"duplicate interned key at {n.line()}")
                seen[key] = n
            for a in n.args:
                if a.id >= n.id or a.graph is not self:
                    raise SymadError(f"operand {a!r} does not precede its user {n.line()}")
            problem = _shape_problem(n)
            if problem:
                raise SymadError(f"{problem} at {n.line()}")
        for o in self.outputs:
            if o.graph is not self:
                raise SymadError(f"output {o!r} belongs to another graph")


def _shape_problem(n: Node) -> str:
    """What is wrong with node ``n``'s arity or element count, or ``""``."""
    if n.size < 1:
        return "a node with no elements"
    if n.op == "const":
        v = n.attrs[0]
        return "" if (n.size == 1) == (type(v) is float) and \
            (n.size == 1 or len(v.array) == n.size) else "a constant of the wrong size"
    if n.op == "input":
        return ""
    spec = OPS.get(n.op)
    if spec is None:
        return f"unknown op {n.op!r}"
    if len(n.args) != spec.arity:
        return "arity mismatch"
    if spec.shape_problem is not None:
        return spec.shape_problem(n)
    if any(a.size != 1 and a.size != n.size for a in n.args):
        return "operands of other sizes"
    return ""


def _input_text(n: Node) -> str:
    return f"%{n.id} {n.attrs[0]}" + (f"[{n.size}]" if n.size != 1 else "")


class _Sized:
    """What an ``ops.EXACT_RULES`` rule builds with for a node of ``size`` elements: its
    constants have that many elements."""

    __slots__ = ("graph", "size")

    def __init__(self, graph: Graph, size: int):
        self.graph, self.size = graph, size

    def node(self, op, args, attrs=()):
        return self.graph.node(op, args, attrs)

    def const(self, value: float):
        return self.graph.const(np.full(self.size, float(value)))
