"""Array-level graphs: one node per numpy operation, not per element.

The scalar tracer (:mod:`symad.trace`) records one node per element, so tracing,
differentiating and planning loops cost microseconds per element, and a Lennard-Jones
energy of 64 particles (2,016 pairs) becomes 77k nodes before LLVM sees it. Here the same
numpy code becomes a few dozen nodes, each a flat float64 vector, differentiated by the
same op table, and lowered by :mod:`symad.codegen.arrays` to a handful of fused loops.
``compile``/``compile_grad`` use it for the single-call and batch kernels of large array
programs (``symad.compiled.ARRAY_MIN_ELEMENTS``); graphs shown to users, transformed
functions (Hessians ...) and pickling stay on the scalar graph, built when first asked
for.

Nodes (every node is a vector of ``size`` doubles, C order of the array it stands for):

- ``input``  attrs ``(offset,)``: the flat argument elements ``in[offset:offset+size]``.
- ``const``  attrs ``(Values,)``: constant elements.
- an op-table row (``add``, ``sin``, ``powi`` ...): elementwise; each operand has the
  node's size, or size 1 (broadcast).
- ``gather`` attrs ``(Table,)``: ``out[k] = x[t[k]]`` (slicing, indexing, reshaping,
  transposing and broadcasting are all gathers of the flat vector).
- ``sum``    attrs ``(Table, n)``: ``out[j] = x[k0] + x[k1] + ...`` over the ``k`` with
  ``t[k] == j``, in increasing ``k`` (numpy's order for object arrays, hence the
  scalar graph's).

``gather`` and ``sum`` are each other's adjoints; every other rule is the op table's.
Joins (``np.concatenate`` ...) are sums over distinct positions, added. numpy's
functions (``np.einsum``, ``np.max``, ``np.cumsum`` ...) are built from these in
:mod:`symad.array_functions`. Anything outside this (``np.sort``, in-place assignment,
data-dependent control flow ...) raises
:class:`Unsupported`, and the caller uses the scalar tracer instead, which gives the
user-facing error if there is one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from . import composite, npfuncs
from .ops import EXACT_RULES, OPS
from .tree import tree_flatten

# Reductions over at most this many elements per output are unrolled into additions of
# strided gathers: elementwise, so they fuse with what they sum and what uses them (the
# three coordinates of a distance), where a ``sum`` node would add through memory.
SMALL_REDUCTION = 8


class Unsupported(Exception):
    """The program uses something array-level tracing does not cover."""


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


class Table(_Frozen):
    """An int64 index vector; ``affine`` is ``(start, step)`` or None."""

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
    """Constant elements; ``uniform`` is their one value when all are the same bits."""

    __slots__ = ("array", "uniform")

    def __init__(self, values):
        array = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        super().__init__(array)
        self.array = array
        bits = array.view(np.int64)
        self.uniform = float(array[0]) if len(array) and (bits == bits[0]).all() else None

    def __repr__(self):
        if self.uniform is not None:
            return repr(self.uniform)
        return f"values[{len(self.array)}]"


class ANode:
    __slots__ = ("op", "args", "attrs", "size", "id")

    def __init__(self, op, args, attrs, size, id):
        self.op, self.args, self.attrs, self.size, self.id = op, args, attrs, size, id

    def __repr__(self):
        return f"%{self.id}"

    def line(self) -> str:
        parts = [self.op, *(f"%{a.id}" for a in self.args), *map(repr, self.attrs)]
        return f"%{self.id}[{self.size}] = {' '.join(parts)}"


class AGraph:
    """Interned array nodes in creation (= topological) order; CSE as in ``Graph``."""

    def __init__(self, name: str = "f"):
        self.name = name
        self.nodes: list[ANode] = []
        self._table: dict = {}

    def _intern(self, op, args, attrs, size) -> ANode:
        if size == 0:
            raise Unsupported("an empty array")     # every loop runs at least once
        key = (op, args, attrs)
        node = self._table.get(key)
        if node is None:
            node = ANode(op, args, attrs, size, len(self.nodes))
            self.nodes.append(node)
            self._table[key] = node
        return node

    def input(self, offset: int, size: int) -> ANode:
        return self._intern("input", (), (offset,), size)

    def const(self, values) -> ANode:
        v = Values(values)
        return self._intern("const", (), (v,), len(v.array))

    def scalar(self, value: float) -> ANode:
        return self.const(np.array([float(value)]))

    def node(self, op: str, args: Sequence[ANode], attrs: tuple = ()) -> ANode:
        """The elementwise node ``op(*args)``: folded, simplified and interned."""
        args = tuple(args)
        size = max(a.size for a in args)
        for a in args:
            if a.size != size and a.size != 1:
                raise Unsupported(f"{op} of sizes {[x.size for x in args]}")
        spec = OPS[op]
        if all(a.op == "const" for a in args):
            with np.errstate(all="ignore"):
                out = spec.numpy(*(a.attrs[0].array for a in args), *attrs)
            return self.const(np.broadcast_to(np.asarray(out, dtype=np.float64), (size,)))
        if spec.commutative and args[0].id > args[1].id:
            args = (args[1], args[0])
        hit = self._table.get((op, args, attrs))
        if hit is not None:
            return hit
        rule = EXACT_RULES.get(op)     # the scalar graph's rewrites, one set
        if rule is not None:
            simpler = rule(_Sized(self, size), args, attrs)
            if simpler is not None and simpler.size == size:   # never a broadcast operand
                return simpler
        return self._intern(op, args, attrs, size)

    def gather(self, x: ANode, index) -> ANode:
        """``x[index]`` for a flat int index vector (any numpy indexing reduces to this)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if len(index) == x.size and np.array_equal(index, np.arange(x.size)):
            return x
        if x.op == "const":
            return self.const(x.attrs[0].array[index])
        if x.op == "gather":             # x[s][t] == x[s[t]]
            return self.gather(x.args[0], x.attrs[0].index[index])
        if x.op in OPS and x.op not in ("const", "input") and \
                len(np.unique(index)) == len(index):
            # An elementwise node read at distinct positions: those positions computed
            # where they are read (no element twice), fused with the reader.
            return self.node(x.op, [a if a.size == 1 else self.gather(a, index)
                                    for a in x.args], x.attrs)
        return self._intern("gather", (x,), (Table(index),), len(index))

    def segment_sum(self, x: ANode, segments, n: int) -> ANode:
        """``out[j] = sum of x[k] for segments[k] == j``, in increasing k."""
        segments = np.asarray(segments, dtype=np.int64).reshape(-1)
        if x.op == "const":
            out = np.full(n, -0.0)          # -0.0 + v == v for every v, -0.0 included
            np.add.at(out, segments, x.attrs[0].array)
            return self.const(out)
        return self._intern("sum", (x,), (Table(segments), int(n)), int(n))

    def live(self, outputs: Sequence[ANode]) -> list[ANode]:
        if not outputs:
            return []
        top = max(o.id for o in outputs)
        mark = bytearray(top + 1)
        for o in outputs:
            mark[o.id] = 1
        for i in range(top, -1, -1):
            if mark[i]:
                for a in self.nodes[i].args:
                    mark[a.id] = 1
        return [self.nodes[i] for i in range(top + 1) if mark[i]]


class _Sized:
    """What an ``ops.EXACT_RULES`` rule builds with, for one array node of ``size``
    elements: its constants are that long."""

    __slots__ = ("graph", "size")

    def __init__(self, graph: AGraph, size: int):
        self.graph, self.size = graph, size

    def node(self, op, args, attrs=()):
        return self.graph.node(op, args, attrs)

    def const(self, value: float):
        return self.graph.const(np.full(self.size, float(value)))


# ---- the numpy-facing tracer ------------------------------------------------------------

class AArray:
    """A traced array: one graph node and the numpy shape it stands for."""

    __slots__ = ("graph", "node", "shape")
    __array_priority__ = 2000.0

    def __init__(self, graph: AGraph, node: ANode, shape: tuple):
        self.graph, self.node, self.shape = graph, node, tuple(shape)

    # shape queries
    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return self.node.size

    @property
    def dtype(self):
        return np.dtype(np.float64)

    @property
    def T(self):
        return _restructure(self, lambda p: p.T)

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d traced array")
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return f"AArray(shape={self.shape}, {self.node.line()})"

    def __bool__(self):
        raise Unsupported("bool() of a traced array")

    def __float__(self):
        raise Unsupported("float() of a traced array")

    def __int__(self):
        raise Unsupported("int() of a traced array")

    def __index__(self):
        raise Unsupported("a traced array as an index")

    __hash__ = None  # type: ignore[assignment]

    def __setitem__(self, key, value):
        raise Unsupported("assignment into a traced array")

    # structure
    def __getitem__(self, key):
        if any(isinstance(k, AArray) for k in (key if isinstance(key, tuple) else (key,))):
            raise Unsupported("indexing with traced values")
        return _restructure(self, lambda p: p[key])

    def reshape(self, *shape, order="C"):
        if order != "C":
            raise Unsupported("reshape(order != 'C')")
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _restructure(self, lambda p: p.reshape(shape))

    def ravel(self):
        return AArray(self.graph, self.node, (self.size,))

    flatten = ravel

    def transpose(self, *axes):
        return _restructure(self, lambda p: p.transpose(*axes))

    # ndarray's methods: numpy's functions of the same parameters
    def sum(self, *args, **kwargs): return self._call(np.sum, args, kwargs)
    def prod(self, *args, **kwargs): return self._call(np.prod, args, kwargs)
    def max(self, *args, **kwargs): return self._call(np.max, args, kwargs)
    def min(self, *args, **kwargs): return self._call(np.min, args, kwargs)
    def mean(self, *args, **kwargs): return self._call(np.mean, args, kwargs)
    def var(self, *args, **kwargs): return self._call(np.var, args, kwargs)
    def std(self, *args, **kwargs): return self._call(np.std, args, kwargs)
    def cumsum(self, *args, **kwargs): return self._call(np.cumsum, args, kwargs)
    def cumprod(self, *args, **kwargs): return self._call(np.cumprod, args, kwargs)
    def trace(self, *args, **kwargs): return self._call(np.trace, args, kwargs)
    def diagonal(self, *args, **kwargs): return self._call(np.diagonal, args, kwargs)
    def squeeze(self, *args, **kwargs): return self._call(np.squeeze, args, kwargs)
    def swapaxes(self, *args, **kwargs): return self._call(np.swapaxes, args, kwargs)
    def repeat(self, *args, **kwargs): return self._call(np.repeat, args, kwargs)
    def take(self, *args, **kwargs): return self._call(np.take, args, kwargs)
    def copy(self): return self

    def clip(self, min=None, max=None, out=None, **kwargs):  # noqa: A002 (ndarray's names)
        return self._call(np.clip, (min, max, out), kwargs)

    def dot(self, other, out=None):
        return self._call(np.dot, (other, out), {})

    def _call(self, func, args: tuple, kwargs: dict):
        return self.__array_function__(func, (AArray,), (self, *args), kwargs)

    # arithmetic
    def __add__(self, o): return _elementwise("add", self, o)
    def __radd__(self, o): return _elementwise("add", o, self)
    def __sub__(self, o): return _elementwise("sub", self, o)
    def __rsub__(self, o): return _elementwise("sub", o, self)
    def __mul__(self, o): return _elementwise("mul", self, o)
    def __rmul__(self, o): return _elementwise("mul", o, self)
    def __truediv__(self, o): return _elementwise("div", self, o)
    def __rtruediv__(self, o): return _elementwise("div", o, self)
    def __floordiv__(self, o): return _elementwise("floordiv", self, o)
    def __rfloordiv__(self, o): return _elementwise("floordiv", o, self)
    def __mod__(self, o): return _elementwise("mod", self, o)
    def __rmod__(self, o): return _elementwise("mod", o, self)
    def __pow__(self, o): return _power(self, o)
    def __rpow__(self, o): return _power(o, self)
    def __neg__(self): return _elementwise("neg", self)
    def __pos__(self): return self
    def __abs__(self): return _elementwise("abs", self)
    def __matmul__(self, o): return _matmul(self, o)
    def __rmatmul__(self, o): return _matmul(o, self)
    def __lt__(self, o): return _elementwise("lt", self, o)
    def __le__(self, o): return _elementwise("le", self, o)
    def __gt__(self, o): return _elementwise("gt", self, o)
    def __ge__(self, o): return _elementwise("ge", self, o)
    def __eq__(self, o): return _elementwise("eq", self, o)  # type: ignore[override]
    def __ne__(self, o): return _elementwise("ne", self, o)  # type: ignore[override]

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        kwargs.pop("casting", None)     # only matters with dtype= or out=
        if kwargs.get("out", 0) is None or kwargs.get("out", 0) == ():
            del kwargs["out"]
        if kwargs.get("where", False) is True:
            del kwargs["where"]
        dtype = kwargs.pop("dtype", None)
        if dtype is not None and np.dtype(dtype) != np.float64:
            raise Unsupported(f"np.{ufunc.__name__} with dtype={dtype}")
        if method in ("reduce", "accumulate"):
            return _af.ufunc_method(ufunc, method, inputs, kwargs)
        # anything else given (out=, where=, initial=, order= ...): the scalar tracer's
        if kwargs or method != "__call__" or ufunc.__name__ not in _UFUNCS:
            raise Unsupported(f"np.{ufunc.__name__}.{method} with {sorted(kwargs)}")
        return _UFUNCS[ufunc.__name__](*inputs)

    def __array_function__(self, func, types, args, kwargs):
        fn = _af.FUNCTIONS.get(func)
        if fn is None:
            raise Unsupported(f"{getattr(func, '__module__', '')}.{func.__name__}")
        args, kwargs = npfuncs.without_out_and_dtype(func, args, kwargs)
        return fn(*args, **kwargs)


def _graph_of(values) -> AGraph:
    for v in values:
        if isinstance(v, AArray):
            return v.graph
    raise Unsupported("no traced operand")


def _lift(graph: AGraph, v) -> AArray:
    if isinstance(v, AArray):
        if v.graph is not graph:
            raise Unsupported("values of two traces")
        return v
    if isinstance(v, (bool, np.bool_, numbers.Real)) and not isinstance(v, np.ndarray):
        return AArray(graph, graph.scalar(float(v)), ())
    if isinstance(v, (list, tuple)) and not any(isinstance(e, AArray) for e in v):
        v = np.asarray(v)
    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
        return AArray(graph, graph.const(v.astype(np.float64).reshape(-1)), v.shape)
    raise Unsupported(f"operand of type {type(v).__name__}")


def _broadcast(a: AArray, shape: tuple) -> ANode:
    """``a``'s node read at ``shape`` (size-1 nodes broadcast by themselves)."""
    if a.shape == shape or a.size == 1:
        return a.node
    pos = np.broadcast_to(np.arange(a.size).reshape(a.shape), shape)
    return a.graph.gather(a.node, pos.reshape(-1))


def _elementwise(op: str, *operands, attrs: tuple = ()) -> AArray:
    g = _graph_of(operands)
    arrays = [_lift(g, v) for v in operands]
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    node = g.node(op, [_broadcast(a, shape) for a in arrays], attrs)
    if node.size != math.prod(shape):     # every operand a scalar, shape (1, 1, ...)
        node = g.gather(node, np.zeros(math.prod(shape), np.int64))
    return AArray(g, node, shape)


def _power(x, y):
    if isinstance(y, (int, np.integer)) and not isinstance(y, (bool, np.bool_)):
        if isinstance(x, AArray) and abs(int(y)) <= 2**31 - 1:
            return _elementwise("powi", x, attrs=(int(y),))
        return _elementwise("pow", x, float(y))
    if isinstance(y, float) and y.is_integer() and abs(y) <= 64 and isinstance(x, AArray):
        return _elementwise("powi", x, attrs=(int(y),))
    return _elementwise("pow", x, y)


def _restructure(a: AArray, fn) -> AArray:
    """``fn`` (numpy indexing/reshaping) applied to ``a``'s element positions."""
    pos = fn(np.arange(a.size).reshape(a.shape))
    pos = np.asarray(pos)
    return AArray(a.graph, a.graph.gather(a.node, pos.reshape(-1)), pos.shape)


def _axes(axis, ndim: int) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    out = []
    for ax in axes:
        ax = int(ax)
        if not -ndim <= ax < ndim:
            raise Unsupported(f"axis {ax} of a {ndim}-d array")
        out.append(ax % ndim)
    return tuple(sorted(set(out)))


def _sum(a, axis=None, keepdims=False, dtype=None, out=None, **kw):
    if out is not None or kw.get("where", True) is not True or kw.get("initial") is not None:
        raise Unsupported("sum with out=, where= or initial=")
    g = _graph_of([a])
    a = _lift(g, a)
    axes = _axes(axis, a.ndim)
    kept = [ax for ax in range(a.ndim) if ax not in axes]
    out_shape = tuple(a.shape[ax] for ax in kept)
    pos = np.arange(a.size).reshape(a.shape).transpose(kept + list(axes))
    n_out = math.prod(out_shape)
    per = math.prod(a.shape[ax] for ax in axes)
    pos = pos.reshape(n_out, per)
    if per == 0:
        node = g.const(np.zeros(max(n_out, 1)))
    elif per <= SMALL_REDUCTION:
        node = g.gather(a.node, pos[:, 0])
        for r in range(1, per):
            node = g.node("add", (node, g.gather(a.node, pos[:, r])))
    else:
        segments = np.empty(a.size, np.int64)
        segments[pos.reshape(-1)] = np.repeat(np.arange(n_out), per)
        node = g.segment_sum(a.node, segments, n_out)
    if keepdims:
        out_shape = tuple(1 if ax in axes else d for ax, d in enumerate(a.shape))
    return AArray(g, node, out_shape)


def _expand(a: AArray, axis: int) -> AArray:
    return AArray(a.graph, a.node, a.shape[:axis] + (1,) + a.shape[axis:])


def _matmul(x, y):
    g = _graph_of([x, y])
    a, b = _lift(g, x), _lift(g, y)
    if a.ndim == 0 or b.ndim == 0:
        raise Unsupported("matmul of a scalar")
    va, vb = a.ndim == 1, b.ndim == 1
    if va:
        a = AArray(g, a.node, (1,) + a.shape)
    if vb:
        b = AArray(g, b.node, b.shape + (1,))
    # (..., m, k, 1) * (..., 1, k, n) summed over k: what matmul computes, in its order.
    prod = _expand(a, a.ndim) * _expand(b, b.ndim - 2)
    out = _sum(prod, -2)
    if va:
        out = out[..., 0, :]
    if vb:
        out = out[..., 0]
    return out


def _where(cond, a=None, b=None):
    if a is None or b is None:
        raise Unsupported("where with one argument")
    return _elementwise("where", cond, a, b)


def _unary(op):
    return lambda x: _elementwise(op, x)


def _binary(op):
    return lambda x, y: _elementwise(op, x, y)


def _ceil(x):
    return -_elementwise("floor", -_lift(_graph_of([x]), x))


def _rearranging(func):
    """A numpy function that only moves elements of one array (reshape, flip, roll,
    tile, take ...): applied to the element positions, it gives the gather."""
    def rearrange(a, *args, **kwargs):
        if any(isinstance(v, AArray) for v in (*args, *kwargs.values())):
            raise Unsupported(f"np.{func.__name__} with traced arguments besides the array")
        return _restructure(_lift(_graph_of([a]), a), lambda p: func(p, *args, **kwargs))
    return rearrange


def _joining(func):
    """A numpy function that joins arrays (concatenate, stack ...): each part's elements
    put where they land (a sum over distinct positions: -0.0 elsewhere), then added: x +
    -0.0 == x exactly, so every element is its part's, bit for bit."""
    def join(parts, *args, **kwargs):
        parts = list(parts)
        g = _graph_of(parts)
        arrays_ = [_lift(g, v) for v in parts]
        bases = np.cumsum([0] + [a.size for a in arrays_])
        pos = np.asarray(func([bases[i] + np.arange(a.size).reshape(a.shape)
                               for i, a in enumerate(arrays_)], *args, **kwargs))
        flat = pos.reshape(-1)
        total = None
        for i, a in enumerate(arrays_):
            mine = np.flatnonzero((flat >= bases[i]) & (flat < bases[i + 1]))
            if not len(mine):
                continue
            where_to = np.empty(a.size, np.int64)
            where_to[flat[mine] - bases[i]] = mine
            part = g.segment_sum(a.node, where_to, flat.size)
            total = part if total is None else g.node("add", (total, part))
        if total is None:
            raise Unsupported("an empty join")
        return AArray(g, total, pos.shape)
    return join


_UFUNCS = composite.ufunc_table(_unary, _binary, _power, _where, ceil=_ceil, matmul=_matmul)

# numpy's functions (np.einsum, np.max ...) on traced arrays: their own module, which
# builds on the helpers above.
from . import array_functions as _af  # noqa: E402

_FUNCTIONS = _af.FUNCTIONS
if hasattr(np, "vecdot"):          # a ufunc in numpy >= 2
    _UFUNCS["vecdot"] = _af.vecdot

# ---- reverse mode -------------------------------------------------------------------------

class _Operand:
    """A node as the op table's partial rules see it: arithmetic builds nodes."""

    __slots__ = ("graph", "node")

    def __init__(self, graph: AGraph, node: ANode):
        self.graph, self.node = graph, node

    def __add__(self, o): return apply("add", (self, o))
    def __radd__(self, o): return apply("add", (o, self))
    def __sub__(self, o): return apply("sub", (self, o))
    def __rsub__(self, o): return apply("sub", (o, self))
    def __mul__(self, o): return apply("mul", (self, o))
    def __rmul__(self, o): return apply("mul", (o, self))
    def __truediv__(self, o): return apply("div", (self, o))
    def __rtruediv__(self, o): return apply("div", (o, self))
    def __neg__(self): return apply("neg", (self,))

    def __pow__(self, n):
        if isinstance(n, (int, np.integer)):
            return apply("powi", (self,), (int(n),))
        return apply("pow", (self, n))


def apply(op: str, args: tuple, attrs: tuple = ()):
    """The op table's rules call this (through ``symad.trace.apply``) on ``_Operand``s."""
    graph = next(a.graph for a in args if isinstance(a, _Operand))
    nodes = [a.node if isinstance(a, _Operand) else graph.scalar(float(a)) for a in args]
    return _Operand(graph, graph.node(op, nodes, attrs))


def is_operand(value) -> bool:
    return isinstance(value, _Operand)


def vjp(graph: AGraph, y: ANode, wrt: Sequence[ANode]) -> list[ANode | None]:
    """Reverse mode over array nodes: the adjoint of each ``wrt`` node (None: zero)."""
    from .ad import _CONSTANT_PARTIALS, _MASKING
    lo = min((w.id for w in wrt), default=y.id + 1)
    dep = bytearray(len(graph.nodes))
    for w in wrt:
        dep[w.id] = 1
    for n in graph.nodes[lo:y.id + 1]:
        if not dep[n.id] and any(dep[a.id] for a in n.args):
            dep[n.id] = 1
    if not dep[y.id]:
        return [None] * len(wrt)
    bars: dict[int, ANode] = {y.id: graph.const(np.ones(y.size))}
    masked: set[int] = set()
    node = graph.node
    for i in range(y.id, lo - 1, -1):
        n = graph.nodes[i]
        bar = bars.get(i)
        if bar is None or not n.args:
            continue
        if n.op == "gather":
            x = n.args[0]
            if dep[x.id]:
                _accumulate(graph, bars, x, graph.segment_sum(bar, n.attrs[0].index, x.size))
                if i in masked:
                    masked.add(x.id)
            continue
        if n.op == "sum":
            x = n.args[0]
            if dep[x.id]:
                _accumulate(graph, bars, x, graph.gather(bar, n.attrs[0].index))
                if i in masked:
                    masked.add(x.id)
            continue
        spec = OPS[n.op]
        parts = _CONSTANT_PARTIALS.get(n.op)
        if parts is None:
            parts = spec.partials(*(_Operand(graph, a) for a in n.args),
                                  _Operand(graph, n), *n.attrs)
        for a, p, masking in zip(n.args, parts, _MASKING[n.op]):
            if p is None or not dep[a.id]:
                continue
            if isinstance(p, _Operand):
                p = p.node
            elif type(p) is float and p == 1.0 and not masking:
                _accumulate(graph, bars, a, bar)
                if i in masked:
                    masked.add(a.id)
                continue
            else:
                p = graph.scalar(float(p))
            # As ad._scale: the selections' partials are finite, so mul0 keeps their zero
            # (array graphs hold no mul0 of their own to differentiate).
            if masking:
                contrib, is_masked = node("mul0", (p, bar)), True
            elif i in masked:
                contrib, is_masked = node("mul0", (bar, p)), True
            else:
                contrib, is_masked = node("mul", (bar, p)), False
            if is_masked:
                masked.add(a.id)
            _accumulate(graph, bars, a, contrib)
    return [bars.get(w.id) for w in wrt]


def _accumulate(graph: AGraph, bars: dict, a: ANode, contrib: ANode) -> None:
    if contrib.size != a.size:      # a was broadcast (size 1) into a larger node
        contrib = graph.segment_sum(contrib, np.zeros(contrib.size, np.int64), 1)
    prev = bars.get(a.id)
    bars[a.id] = contrib if prev is None else graph.node("add", (prev, contrib))


# ---- tracing a call --------------------------------------------------------------------------

class ArrayTrace:
    """The traced program: graph, flat output nodes, and the pytree facts compile needs."""

    def __init__(self, graph, inputs, outputs, out_tree, out_shapes):
        self.graph = graph
        self.inputs = inputs            # one node per argument leaf
        self.outputs = outputs          # one node per output leaf
        self.out_tree = out_tree
        self.out_shapes = out_shapes

    def elements(self, outputs: Sequence[ANode]) -> int:
        """Elements computed: the size of the scalar graph this stands for."""
        return sum(n.size for n in self.graph.live(outputs) if n.args)


def trace_call(f, args: tuple, shapes: Sequence[tuple]) -> ArrayTrace:
    """Trace ``f(*args)`` with each argument leaf an ``input`` node; raises Unsupported."""
    from .tree import tree_unflatten
    graph = AGraph(getattr(f, "__name__", "f"))
    _, treedef, _ = tree_flatten(tuple(args), "")
    leaves, offset = [], 0
    inputs = []
    for shape in shapes:
        n = math.prod(shape)
        node = graph.input(offset, n)
        inputs.append(node)
        leaves.append(AArray(graph, node, shape))
        offset += n
    traced_args = tree_unflatten(treedef, leaves)
    try:
        result = f(*traced_args)
    except Unsupported:
        raise
    except Exception as exc:   # noqa: BLE001 (the scalar tracer reports user errors)
        raise Unsupported(f"{type(exc).__name__}: {exc}") from exc
    out_leaves, out_tree, _ = tree_flatten(result, "")
    outputs, out_shapes = [], []
    for leaf in out_leaves:
        if isinstance(leaf, AArray):
            if leaf.graph is not graph:
                raise Unsupported("an output of another trace")
            outputs.append(leaf.node)
            out_shapes.append(leaf.shape)
        elif isinstance(leaf, (numbers.Real, np.ndarray)) and \
                np.asarray(leaf).dtype.kind in "biuf":
            arr = np.asarray(leaf, dtype=np.float64)
            outputs.append(graph.const(arr.reshape(-1)) if arr.size else graph.scalar(0.0))
            out_shapes.append(arr.shape)
            if arr.size == 0:
                raise Unsupported("an empty output")
        else:
            raise Unsupported(f"an output of type {type(leaf).__name__}")
    return ArrayTrace(graph, inputs, outputs, out_tree, out_shapes)


def evaluate(graph: AGraph, outputs: Sequence[ANode], flat_inputs) -> list[np.ndarray]:
    """The numpy reference value of each output node (tests check compiled code with it)."""
    x = np.asarray(flat_inputs, dtype=np.float64)
    vals: dict[int, np.ndarray] = {}
    for n in graph.live(outputs):
        if n.op == "input":
            v = x[n.attrs[0]:n.attrs[0] + n.size]
        elif n.op == "const":
            v = n.attrs[0].array
        elif n.op == "gather":
            v = vals[n.args[0].id][n.attrs[0].index]
        elif n.op == "sum":
            v = np.full(n.size, -0.0)
            np.add.at(v, n.attrs[0].index, vals[n.args[0].id])
        else:
            with np.errstate(all="ignore"):
                v = np.broadcast_to(np.asarray(OPS[n.op].numpy(
                    *(vals[a.id] for a in n.args), *n.attrs), dtype=np.float64), (n.size,))
        vals[n.id] = v
    return [np.array(vals[o.id]) for o in outputs]
