"""Array-level tracing: one graph node per numpy operation, not per element.

The scalar tracer (:mod:`symad.trace`) records one node per element, so tracing,
differentiating and planning loops cost microseconds per element, and a Lennard-Jones
energy of 64 particles (2,016 pairs) becomes 77k nodes before LLVM sees it. Here the same
numpy code becomes a few dozen nodes of the same :class:`symad.graph.Graph`, each a flat
float64 vector (slicing, reshaping and broadcasting are ``gather`` nodes, reductions and
joins ``sum`` nodes), differentiated by the same op table, and lowered by
:mod:`symad.codegen.arrays` to a handful of fused loops. ``compile``/``compile_grad`` use
it for the single-call and batch kernels of large array programs
(``symad.policy.ARRAY_MIN_ELEMENTS``); transformed functions (Hessians ...) and
pickling stay on the scalar graph, built when first asked for.

numpy's functions (``np.einsum``, ``np.max``, ``np.cumsum`` ...) are built from these in
:mod:`symad.array_functions`. Anything outside this (``np.sort``, in-place assignment,
data-dependent control flow ...) raises
:class:`Unsupported`, and the caller uses the scalar tracer instead, which gives the
user-facing error if there is one.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import composite, npfuncs, policy
from .graph import Graph, Node


class Unsupported(Exception):
    """The program uses something array-level tracing does not cover."""


# ---- the numpy-facing tracer ------------------------------------------------------------

class AArray:
    """A traced array: one graph node and the numpy shape it stands for."""

    __slots__ = ("graph", "node", "shape")
    __array_priority__ = 2000.0

    def __init__(self, graph: Graph, node: Node, shape: tuple):
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

    @staticmethod
    def stack_objects(values):
        """``symad.asarray`` of these: one traced array (see :func:`stack_objects`)."""
        return stack_objects(values)

    @staticmethod
    def apply_op(op: str, args: tuple, attrs: tuple = ()):
        """Build ``op(*args)`` elementwise (``symad.where``, ``symad.maximum`` and the op
        table's rules reach array operands through this)."""
        return _elementwise(op, *args, attrs=attrs)

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
        if method in _UFUNC_METHODS:
            return _UFUNC_METHODS[method](ufunc, method, inputs, kwargs)
        # anything else given (out=, where=, initial=, order= ...): the scalar tracer's
        if kwargs or method != "__call__" or ufunc.__name__ not in _UFUNCS:
            raise Unsupported(f"np.{ufunc.__name__}.{method} with {sorted(kwargs)}")
        return _UFUNCS[ufunc.__name__](*inputs)

    def __array_function__(self, func, types, args, kwargs):
        fn = _FUNCTIONS.get(func)
        if fn is None:
            raise Unsupported(f"{getattr(func, '__module__', '')}.{func.__name__}")
        args, kwargs = npfuncs.without_out_and_dtype(func, args, kwargs)
        return fn(*args, **kwargs)


def _graph_of(values) -> Graph:
    for v in values:
        if isinstance(v, AArray):
            return v.graph
    raise Unsupported("no traced operand")


def _lift(graph: Graph, v) -> AArray:
    if isinstance(v, AArray):
        if v.graph is not graph:
            raise Unsupported("values of two traces")
        return v
    if isinstance(v, (bool, np.bool_, numbers.Real)) and not isinstance(v, np.ndarray):
        return AArray(graph, graph.const(float(v)), ())
    if isinstance(v, (list, tuple)):
        v = np.asarray(v, dtype=object if any(isinstance(e, AArray) for e in v) else None)
    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
        return AArray(graph, graph.const(v.astype(np.float64).reshape(-1)), v.shape)
    if isinstance(v, np.ndarray) and v.dtype == object:
        return _from_objects(graph, v)
    raise Unsupported(f"operand of type {type(v).__name__}")


# An object array of traced numbers (``np.array([x[0] ** 2, x[1]])``) becomes one vector
# of at most this many elements: each element put in its place (-0.0 elsewhere) and added,
# exact, but work quadratic in the length in an array kernel.
MAX_OBJECT_ELEMENTS = 64


def _from_objects(graph: Graph, values: np.ndarray) -> AArray:
    """The vector of an object array whose elements are numbers and 0-d traced arrays."""
    flat = values.reshape(-1)
    if not 0 < flat.size <= MAX_OBJECT_ELEMENTS:
        raise Unsupported(f"an object array of {flat.size} elements")
    numbers_ = np.full(flat.size, -0.0)
    total = None
    for i, v in enumerate(flat):
        if isinstance(v, AArray):
            if v.graph is not graph or v.shape != ():
                raise Unsupported("an object array holding arrays or other traces")
            part = graph.segment_sum(v.node, [i], flat.size) if flat.size > 1 else v.node
            total = part if total is None else graph.node("add", (total, part))
        elif isinstance(v, (bool, np.bool_, numbers.Real)):
            numbers_[i] = float(v)
        else:
            raise Unsupported(f"an object array holding {type(v).__name__}")
    if total is None or np.any(numbers_ != 0) or np.any(~np.signbit(numbers_)):
        constants = graph.const(numbers_ if flat.size > 1 else float(numbers_[0]))
        total = constants if total is None else graph.node("add", (total, constants))
    return AArray(graph, total, values.shape)


def stack_objects(values):
    """``symad.asarray`` of numbers and 0-d traced arrays: one traced array."""
    arr = np.asarray(values, dtype=object)
    graph = next(v.graph for v in arr.reshape(-1) if isinstance(v, AArray))
    return _from_objects(graph, arr)


def _broadcast(a: AArray, shape: tuple) -> Node:
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


def _region(fn):
    """``fn`` (a numpy reduction) records the nodes it makes as one region of the graph:
    unrolled to elements (``symad.scalarize``), they are made element by element, each
    output's products and additions together, as numpy computes on object arrays."""
    def reduction(*args, **kwargs):
        graph = next((a.graph for a in args if isinstance(a, AArray)), None)
        if graph is None:
            return fn(*args, **kwargs)
        start = len(graph.nodes)
        result = fn(*args, **kwargs)
        regions = graph.regions
        while regions and regions[-1][0] >= start:      # inner regions: part of this one
            regions.pop()
        if len(graph.nodes) > start:        # (the operands numpy holds as arrays)
            operands = tuple(a.node for a in args if isinstance(a, AArray))
            regions.append((start, len(graph.nodes), operands))
        return result
    reduction.__name__ = fn.__name__
    reduction.__doc__ = fn.__doc__
    return reduction


@_region
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
    elif per <= policy.SMALL_REDUCTION:
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


@_region
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

# numpy's functions (np.einsum, np.max ...) and ufunc methods (np.add.accumulate) on
# traced arrays: symad.array_functions builds them on the helpers above and installs them
# here; symad.array_trace, the entry that traces a call, imports it first.
_FUNCTIONS: dict[Any, Any] = {}
_UFUNC_METHODS: dict[str, Any] = {}


def install(functions: dict, ufunc_method, ufuncs: dict) -> None:
    """Add numpy functions (by function object), the ufunc-method handler and ufuncs."""
    _FUNCTIONS.update(functions)
    _UFUNC_METHODS["reduce"] = _UFUNC_METHODS["accumulate"] = ufunc_method
    _UFUNCS.update(ufuncs)
