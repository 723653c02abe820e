"""Tracing: Python and numpy code -> graph (**trace** -> graph -> ad -> lower -> jit).

A :class:`Tracer` stands for one scalar node and overloads Python's operators; a
:class:`TracedArray` is a numpy object array of tracers whose ``__array_ufunc__`` and
``__array_function__`` route numpy calls to the op table, so ordinary numpy code
(``np.sin``, ``@``, ``np.sum``, ``np.where``, ``np.maximum``) traces unchanged. Anything
numpy offers that symad has no rule for raises :class:`UnsupportedOpError` naming it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from . import composite, npfuncs
from .errors import ConcretizationError, LeakedTracerError, TracingError, UnsupportedOpError
from .graph import Graph, Node
from .ops import OPS


def _concrete_error(what: str) -> ConcretizationError:
    return ConcretizationError(
        f"{what} needs the concrete value of a traced number, but tracing records the "
        "computation for every input at once. Data-dependent Python control flow "
        "(`if x > 0:`, `while`, `float(x)`, `math.sin(x)`) cannot be traced: use "
        "symad.where(cond, a, b) to select values, numpy functions (np.sin) instead of "
        "math functions, and make loop counts independent of traced values. (numpy asks "
        "for bool() itself when it compares or takes the maximum of a plain object array "
        "such as np.array([x, y]) of traced values: build it with symad.asarray([x, y]).)")


def _binary_method(op: str, reflected_op: str | None = None):
    """``(method, reflected method)`` applying ``op``; reflected ops swap the operands."""
    def method(self, o):
        return NotImplemented if isinstance(o, np.ndarray) else apply(op, (self, o))

    def reflected(self, o):
        if isinstance(o, np.ndarray):
            return NotImplemented
        if reflected_op is not None:      # o < self  is  self > o
            return apply(reflected_op, (self, o))
        return apply(op, (o, self))

    return method, reflected


class Tracer:
    """A traced scalar: operations on it add nodes to its graph."""

    __slots__ = ("node",)
    __array_priority__ = 1000.0

    def __init__(self, node: Node):
        self.node = node

    @property
    def graph(self) -> Graph:
        return self.node.graph

    def __repr__(self) -> str:
        return f"Tracer({self.node.line()})"

    # ---- Python needs a concrete value: refuse with a teaching message ----
    def __bool__(self):
        raise _concrete_error(f"bool() of {self.node.line()} (an `if`, `and`, `or` or `while`)")

    def __float__(self):
        raise _concrete_error(f"float() of {self.node.line()}")

    def __int__(self):
        raise _concrete_error(f"int() of {self.node.line()}")

    def __index__(self):
        raise _concrete_error(f"using {self.node.line()} as an index")

    def __complex__(self):
        raise _concrete_error(f"complex() of {self.node.line()}")

    __hash__ = None  # == builds a node, so tracers cannot be dict keys (as in JAX)

    @staticmethod
    def apply_op(op: str, args: tuple, attrs: tuple = ()):
        """Build ``op(*args)`` (the op table's rules apply ops through this)."""
        return apply(op, args, attrs)

    # ---- arithmetic and comparisons (comparisons build 0/1 nodes for symad.where) ----
    # An ndarray operand returns NotImplemented so numpy broadcasts elementwise instead.
    __add__, __radd__ = _binary_method("add")
    __sub__, __rsub__ = _binary_method("sub")
    __mul__, __rmul__ = _binary_method("mul")
    __truediv__, __rtruediv__ = _binary_method("div")
    __lt__, __gt__ = _binary_method("lt", "gt")
    __le__, __ge__ = _binary_method("le", "ge")
    __eq__, _ = _binary_method("eq")  # type: ignore[assignment]
    __ne__, _ = _binary_method("ne")  # type: ignore[assignment]

    def __neg__(self): return apply("neg", (self,))
    def __pos__(self): return self
    def __abs__(self): return apply("abs", (self,))

    def __pow__(self, o):
        return NotImplemented if isinstance(o, np.ndarray) else power(self, o)

    def __rpow__(self, o):
        return NotImplemented if isinstance(o, np.ndarray) else power(o, self)

    # Python's and numpy's floor division and modulo (the divisor's sign) are one op each,
    # not floor(x / y) and x - floor(x / y) * y, which differ where x / y rounds.
    __floordiv__, __rfloordiv__ = _binary_method("floordiv")
    __mod__, __rmod__ = _binary_method("mod")

    def __divmod__(self, o): return self // o, self % o
    def __rdivmod__(self, o): return o // self, o % self

    # Element methods: numpy's object loops call np.sin(obj_array) as x.sin() (arcsin,
    # hypot, fmod, deg2rad, ... likewise, by the ufunc's name). They are made from UFUNCS
    # below (``_add_element_methods``), one for each name numpy calls that way.

    # numpy functions and ufuncs called on a scalar tracer go through the op table too
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _array_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _array_function(func, args, kwargs)


def _is_number(v) -> bool:
    return isinstance(v, (numbers.Real, np.bool_)) and not isinstance(v, Tracer)


def apply(op: str, args: tuple, attrs: tuple = ()):
    """Apply op ``op`` to tracers and numbers; returns a Tracer, or a float if no tracer.

    Numbers become constants of the tracers' graph. With no tracer among ``args`` the op is
    evaluated right away with numpy (so ``symad.where`` works on plain numbers too).
    """
    graph = None
    for a in args:
        if isinstance(a, Tracer):
            g = a.node.graph
            if graph is None:
                graph = g
            elif g is not graph:
                raise LeakedTracerError(
                    f"op {op!r} combines values of two different traces ({graph.name!r} and "
                    f"{g.name!r}). A traced value escaped the function that created it "
                    "(a global or a closure); pass it in as an argument instead.")
    if graph is None:
        for a in args:      # another traced type (an array-level operand) builds it
            apply_op = getattr(type(a), "apply_op", None)
            if apply_op is not None:
                return apply_op(op, args, attrs)
        vals = [_as_float(a, op, i) for i, a in enumerate(args)]
        with np.errstate(all="ignore"):
            return float(OPS[op].numpy(*vals, *attrs))
    if graph._open <= 0:
        raise LeakedTracerError(
            f"op {op!r} on a value of the trace {graph.name!r}, which has finished. A traced "
            "value escaped the function that created it (a global, a closure or an "
            "attribute); return it from the function or pass it in as an argument instead.")
    nodes = []
    for i, a in enumerate(args):
        if isinstance(a, Tracer):
            nodes.append(a.node)
        else:
            nodes.append(graph.const(_as_float(a, op, i)))
    return Tracer(graph.node(op, nodes, attrs))


def _as_float(a, op: str, i: int) -> float:
    if isinstance(a, TracedArray) or (isinstance(a, np.ndarray) and a.ndim > 0):
        raise TracingError(f"op {op!r} got an array as operand {i}; it takes scalars here")
    if isinstance(a, np.ndarray):
        a = a[()]
    if isinstance(a, (bool, np.bool_)):
        return float(a)
    if isinstance(a, numbers.Real):
        return float(a)
    if isinstance(a, numbers.Complex):
        raise TracingError(f"op {op!r} got the complex number {a!r} as operand {i}; "
                           "symad differentiates real (float64) code only")
    raise TracingError(f"op {op!r} got {type(a).__name__} {a!r:.60} as operand {i}; "
                       "expected a number or a traced value")


_INT32_MAX = 2**31 - 1


def power(x, y):
    """``x ** y``: an integer exponent becomes ``powi`` (exact multiplications)."""
    if isinstance(y, (int, np.integer)) and not isinstance(y, (bool, np.bool_)):
        n = int(y)
        if abs(n) > _INT32_MAX:
            raise TracingError(
                f"integer exponent {n} does not fit in 32 bits; write it as a float "
                f"(x ** {float(n)!r}) to use the real power function")
        if isinstance(x, Tracer):
            return apply("powi", (x,), (n,))
        return apply("pow", (x, float(n)))
    if isinstance(y, float) and y.is_integer() and abs(y) <= 64 and isinstance(x, Tracer):
        # numpy computes x ** 2.0 like x ** 2; so do we (exact, and defined for x < 0).
        return apply("powi", (x,), (int(y),))
    return apply("pow", (x, y))


# ---- traced arrays -------------------------------------------------------------------


class TracedArray(np.ndarray):
    """A numpy object array whose elements are tracers (or numbers).

    Its ``__array_ufunc__`` maps numpy ufuncs onto the op table elementwise and its
    ``__array_function__`` supports the numpy functions listed in ``ARRAY_FUNCTIONS``.
    """

    def __new__(cls, obj):
        return np.asarray(obj, dtype=object).view(cls)

    def __array_finalize__(self, obj):
        pass

    def __repr__(self) -> str:
        return f"TracedArray(shape={self.shape})"

    def __bool__(self):
        raise _concrete_error("bool() of a traced array")

    def __float__(self):
        raise _concrete_error("float() of a traced array")

    # ndarray's reduction methods run numpy's C code, which writes results in place
    # (out=) and drops initial=; the numpy functions (same parameters) trace instead.
    def sum(self, *args, **kwargs): return _array_function(np.sum, (self, *args), kwargs)
    def prod(self, *args, **kwargs): return _array_function(np.prod, (self, *args), kwargs)
    def mean(self, *args, **kwargs): return _array_function(np.mean, (self, *args), kwargs)
    def var(self, *args, **kwargs): return _array_function(np.var, (self, *args), kwargs)
    def std(self, *args, **kwargs): return _array_function(np.std, (self, *args), kwargs)
    def max(self, *args, **kwargs): return _array_function(np.max, (self, *args), kwargs)
    def min(self, *args, **kwargs): return _array_function(np.min, (self, *args), kwargs)

    def clip(self, min=None, max=None, out=None, **kwargs):  # noqa: A002 (ndarray's names)
        return _clip(self, min, max, out=out, **kwargs)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _array_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        return _array_function(func, args, kwargs)


def _array_ufunc(ufunc, method, inputs, kwargs):
    if ufunc in _OWN_UFUNCS:
        # symad's own elementwise ufuncs: a 0-d result of one is a bare Tracer, which a
        # chained call (np.clip's maximum, then minimum) hands back to the next one here
        return _wrap(getattr(ufunc, method)(*(_plain(i) for i in inputs), **kwargs))
    name = ufunc.__name__
    out = kwargs.pop("out", None)
    if out is not None:
        raise UnsupportedOpError(
            f"np.{name}(..., out=...) writes in place, which tracing does not support; "
            "assign the result instead")
    kwargs.pop("casting", None)     # only matters with dtype= or out=
    npfuncs.check_dtype(f"np.{name}", kwargs.pop("dtype", None))
    if kwargs.pop("where", True) is not True:
        raise UnsupportedOpError(f"np.{name}(..., where=...) is not supported; use "
                                 "symad.where on the result")
    if method == "__call__" and name in UFUNCS and not any(
            isinstance(i, np.ndarray) for i in inputs):
        return UFUNCS[name](*inputs)   # scalars only: no broadcasting needed
    plain = [_plain(i) for i in inputs]
    if name in _PRODUCT_UFUNCS and method == "__call__":   # numpy's object loops
        return _wrap(ufunc(*plain, **kwargs))
    fn = UFUNCS.get(name)
    if fn is None:
        raise UnsupportedOpError(
            f"numpy ufunc np.{name} has no symad rule (symad.supported_numpy() lists the "
            f"ufuncs and functions that trace: {', '.join(sorted(UFUNCS))}). Write it with "
            "those, or add an op: one OpSpec row in symad/ops.py, whose numpy names both "
            "tracers then accept (the recipe: \"Adding an op\" in docs/ops.md).")
    elem = _ELEMENTWISE[name]
    if method == "__call__":
        return _wrap(elem(*plain, **kwargs))
    if method in ("reduce", "accumulate") and ufunc.nin == 2:
        if name in ("add", "multiply"):   # object reductions use + and * directly
            return _wrap(getattr(ufunc, method)(plain[0], **kwargs))
        initial = kwargs.pop("initial", npfuncs.NO_VALUE)
        res = getattr(elem, method)(plain[0], **kwargs)
        if initial is not npfuncs.NO_VALUE and initial is not None:
            if method == "accumulate":
                raise UnsupportedOpError(f"np.{name}.accumulate(..., initial=...)")
            res = elem(_plain(res), initial)    # numpy starts the reduction from it
        return _wrap(res)
    raise UnsupportedOpError(f"np.{name}.{method} is not supported on traced arrays")


def _array_function(func, args, kwargs, impl=None):
    impl = impl or ARRAY_FUNCTIONS.get(func)
    if impl is None:
        name = getattr(func, "__module__", "numpy") + "." + func.__name__
        raise UnsupportedOpError(
            f"{name.replace('numpy.', 'np.', 1)} is not supported on traced values. "
            "Write it with supported numpy functions (symad.supported_numpy() lists them) "
            "or elementwise arithmetic.")
    if impl is _STRUCTURAL:
        args, kwargs = npfuncs.without_out_and_dtype(func, args, kwargs)
        res = func._implementation(*_plain_tree(args), **_plain_tree(kwargs))
        return _wrap(res)
    return impl(*args, **kwargs)


def asarray(values) -> TracedArray | np.ndarray:
    """An array of (possibly traced) numbers on which every numpy function symad supports
    works, also comparisons and ``np.maximum``; plain ``np.array([x, y])`` of tracers is a
    plain object array, on which numpy itself would ask for ``bool()`` of a tracer.

    >>> asarray([1.0, 2.0])
    array([1., 2.])
    """
    arr = np.asarray(values, dtype=object)
    for v in arr.reshape(-1):
        if isinstance(v, Tracer):
            return arr.view(TracedArray)
        stack = getattr(type(v), "stack_objects", None)     # array-level traced values
        if stack is not None:
            return stack(arr)
    return arr.astype(np.float64)


def _plain(a):
    """A plain object ndarray for traced values (so numpy does not dispatch back to us)."""
    if isinstance(a, TracedArray):
        return a.view(np.ndarray)
    if isinstance(a, Tracer):
        box = np.empty((), dtype=object)
        box[()] = a
        return box
    return a


def _plain_tree(x):
    if isinstance(x, TracedArray):
        return x.view(np.ndarray)
    if isinstance(x, (list, tuple)):
        return type(x)(_plain_tree(i) for i in x)
    if isinstance(x, dict):
        return {k: _plain_tree(v) for k, v in x.items()}
    return x


def _wrap(res):
    """Wrap numpy results: object arrays become TracedArray, scalars stay scalars."""
    if isinstance(res, np.ndarray):
        if res.dtype == object:
            if res.ndim == 0:
                return res[()]
            return res.view(TracedArray)
        return res
    if isinstance(res, tuple):
        return tuple(_wrap(r) for r in res)
    if isinstance(res, list):
        return [_wrap(r) for r in res]
    return res


def _unary(op):
    return lambda x: apply(op, (x,))


def _binary(op):
    return lambda x, y: apply(op, (x, y))


# numpy ufunc name -> scalar function on tracers/numbers: the op rows' numpy names and the
# ufuncs built from several ops (composite.ufunc_table, shared with the array level).
# ``where`` is defined below.
UFUNCS = composite.ufunc_table(_unary, _binary, power, lambda c, a, b: where(c, a, b))

_ELEMENTWISE = {name: np.frompyfunc(fn, fn.__code__.co_argcount, 1)
                for name, fn in UFUNCS.items()}


class _MethodProbe:
    """An object-array element that records which method numpy's object loop calls."""

    def __init__(self):
        self.called: str | None = None

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def method(*others):
            self.called = name
            return 0.0
        return method


def _numpy_calls_method(name: str) -> bool:
    """Does numpy's object loop of ``np.<name>`` call the element's method ``name``, as
    np.sin does (x.sin())? Others use Python's operators (np.add), comparisons
    (np.maximum), math.floor (np.floor) or have no object loop (np.copysign)."""
    ufunc = getattr(np, name, None)
    if not isinstance(ufunc, np.ufunc):
        return False
    probe = _MethodProbe()
    box = np.empty(1, dtype=object)
    box[0] = probe
    try:
        ufunc(*([box] * ufunc.nin))
    except Exception:   # TypeError today: whatever a loop says of an element it cannot use
        return False
    return probe.called == name


def _element_method(name: str, fn):
    def method(self, *others):
        return fn(self, *others)
    method.__name__ = name
    method.__qualname__ = f"Tracer.{name}"
    method.__doc__ = f"np.{name} of this value (numpy calls it on object arrays)."
    return method


def _add_element_methods() -> None:
    """A Tracer method for each UFUNCS name numpy calls by name on object arrays, so
    np.arcsin(np.array([x, y])) traces like np.arcsin(symad.asarray([x, y]))."""
    for name, fn in UFUNCS.items():
        if _numpy_calls_method(name):
            setattr(Tracer, name, _element_method(name, fn))


_add_element_methods()


def _where(cond, a=None, b=None):
    """np.where / symad.where on arrays (also plain object arrays of tracers)."""
    if a is None or b is None:
        raise UnsupportedOpError("np.where(cond) with one argument returns indices, which "
                                 "depend on traced values; use np.where(cond, a, b)")
    return _wrap(_ELEMENT_WHERE(_plain(cond), _plain(a), _plain(b)))


def where(cond, a, b):
    """Select ``a`` where ``cond`` is nonzero, else ``b``, elementwise; traceable ``if``.

    Gradients flow only into the branch taken: ``where(x > 0, sqrt(x), 0.0)`` has
    gradient 0 at ``x <= 0``, never NaN.

    >>> where(1.0 > 0.0, 2.0, 3.0)
    2.0
    """
    if any(isinstance(v, np.ndarray) for v in (cond, a, b)):
        return _where(cond, a, b)
    return apply("where", (cond, a, b))


_ELEMENT_WHERE = np.frompyfunc(lambda c, a, b: apply("where", (c, a, b)), 3, 1)
_OWN_UFUNCS = frozenset((*_ELEMENTWISE.values(), _ELEMENT_WHERE))
_PRODUCT_UFUNCS = ("matmul", "vecdot", "matvec", "vecmat")


def _clip(a, *args, **kwargs):
    lo, hi = npfuncs.clip_bounds(*args, **kwargs)
    r = _plain(a)
    if lo is not None:
        r = _ELEMENTWISE["maximum"](r, _plain(lo))
    if hi is not None:
        r = _ELEMENTWISE["minimum"](r, _plain(hi))
    return _wrap(r)


def _extreme(ufunc):
    reduce = npfuncs.extreme(ufunc)

    def traced(a, *args, **kwargs):     # a plain object array would ask for bool()
        return reduce(_wrap(np.asarray(_plain(a), dtype=object)), *args, **kwargs)
    return traced


_STRUCTURAL = object()  # numpy's own implementation works on object arrays of tracers

def _with_where(func, identity: float):
    """np.sum / np.prod: numpy's object loops need ``initial`` with ``where=`` (object has
    no identity); the float64 one, which adds (multiplies) exactly, is supplied. A traced
    mask (numpy would ask for its truth value) selects the identity instead."""
    def reduce(a, *args, **kwargs):
        mask = kwargs.get("where", True)
        if isinstance(mask, (Tracer, TracedArray)):
            a = _where(mask, a, np.full(np.shape(mask), identity))
            del kwargs["where"]
        elif mask is not True and "initial" not in kwargs and len(args) < 5:
            kwargs["initial"] = identity
        return _array_function(func, (a, *args), kwargs, impl=_STRUCTURAL)
    return reduce


ARRAY_FUNCTIONS: dict[Any, Any] = {f: _STRUCTURAL for f in (
    np.sum, np.prod, np.dot, np.vdot, np.inner, np.outer, np.matmul, np.tensordot,
    np.einsum, np.cumsum, np.cumprod, np.trace, np.diagonal, np.diag, np.diff, np.roll,
    np.reshape, np.ravel, np.transpose, np.swapaxes, np.moveaxis, np.squeeze,
    np.expand_dims, np.concatenate, np.stack, np.hstack, np.vstack, np.column_stack,
    np.atleast_1d, np.atleast_2d, np.broadcast_to, np.broadcast_arrays, np.tile,
    np.repeat, np.flip, np.fliplr, np.flipud, np.take, np.triu, np.tril, np.shape,
    np.ndim, np.size, np.zeros_like, np.ones_like, np.full_like, np.copy, np.split,
    np.array_split, np.append, np.kron, np.cross, np.pad, np.block,
    np.linalg.multi_dot,
)}
# numpy >= 2: array-API functions, dispatched by object like all of these (np.linalg.
# diagonal takes the last two axes where np.diagonal takes the first two)
ARRAY_FUNCTIONS.update({f: _STRUCTURAL for f in (
    getattr(np.linalg, name, None) for name in (
        "diagonal", "trace", "matmul", "outer", "cross", "vecdot", "matrix_transpose",
        "tensordot")) if f is not None})
if hasattr(np, "matrix_transpose"):
    ARRAY_FUNCTIONS[np.matrix_transpose] = _STRUCTURAL
ARRAY_FUNCTIONS.update({
    np.sum: _with_where(np.sum, -0.0), np.prod: _with_where(np.prod, 1.0),
    np.where: _where, np.clip: _clip, np.mean: npfuncs.mean, np.average: npfuncs.average,
    np.var: npfuncs.var, np.std: npfuncs.std, np.max: _extreme(np.maximum),
    np.amax: _extreme(np.maximum), np.min: _extreme(np.minimum),
    np.amin: _extreme(np.minimum),
    np.linalg.norm: npfuncs.norm,
})
if hasattr(np.linalg, "vector_norm"):
    ARRAY_FUNCTIONS[np.linalg.vector_norm] = npfuncs.vector_norm
    ARRAY_FUNCTIONS[np.linalg.matrix_norm] = npfuncs.matrix_norm


def supported_numpy() -> dict[str, list[str]]:
    """The numpy ufuncs and functions that trace, by name.

    Returns:
        ``{"ufuncs": [...], "functions": [...]}``, sorted; functions by their full name
        (``np.linalg.norm``), since namesakes in other namespaces may differ.

    >>> names = supported_numpy()
    >>> "arctan2" in names["ufuncs"], "np.linalg.norm" in names["functions"]
    (True, True)
    """
    functions = set()
    for f in ARRAY_FUNCTIONS:
        module = getattr(f, "__module__", None) or "numpy"
        if module.startswith("numpy.linalg"):
            module = "numpy.linalg"
        elif module.startswith("numpy"):
            module = "numpy"
        functions.add(module.replace("numpy", "np", 1) + "." + f.__name__)
    return {"ufuncs": sorted(UFUNCS), "functions": sorted(functions)}


def lift(value) -> Tracer | TracedArray:
    """Wrap a value built from nodes for the user: node -> Tracer, node array -> TracedArray."""
    if isinstance(value, Node):
        return Tracer(value)
    return value


# ---- tracing a function --------------------------------------------------------------


def new_input_leaf(graph: Graph, value, path: str):
    """Input node(s) for one argument leaf, shaped like ``value``."""
    arr = as_float_array(value, path)
    if arr.ndim == 0:
        return Tracer(graph.input(path))
    if arr.size == 0:   # np.ndindex would build an index over the shape: (0, 10**12) fails
        return np.empty(arr.shape, dtype=object).view(TracedArray)
    flat = np.empty(arr.size, dtype=object)
    for i, idx in enumerate(np.ndindex(arr.shape)):
        flat[i] = Tracer(graph.input(f"{path}[{','.join(map(str, idx))}]"))
    return flat.reshape(arr.shape).view(TracedArray)


def refuse_array_subclass(value, path: str) -> None:
    """Refuse ndarray subclasses whose semantics tracing would silently drop."""
    if isinstance(value, np.matrix):
        raise UnsupportedOpError(
            f"{path} is a numpy.matrix, whose * and ** are matrix products; symad traces "
            "it as a plain array, where they act elementwise. Pass np.asarray(...) and "
            "write matrix products with @.")
    if isinstance(value, np.ma.MaskedArray):
        raise UnsupportedOpError(
            f"{path} is a masked array (numpy.ma), whose mask symad would ignore: the "
            "function would see every element. Pass np.ma.filled(x, value) (or "
            "np.ma.getdata(x) and the mask np.ma.getmaskarray(x) as a separate argument, "
            "selecting with symad.where).")


def as_float_array(value, path: str = "argument") -> np.ndarray:
    """``value`` as a float64 ndarray, or a TypeError that names ``path`` and the fix."""
    if isinstance(value, (Tracer, TracedArray)):
        raise TracingError(f"{path} is already a traced value here")
    refuse_array_subclass(value, path)
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{path} is the string {value!r:.40}; symad differentiates "
                        "functions of float64 numbers and arrays")
    try:
        arr = np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{path} could not be converted to a numeric array: {e}") from None
    if arr.dtype.kind == "c":
        raise TypeError(f"{path} is complex ({arr.dtype}); symad differentiates real "
                        "(float64) functions only; pass the real and imaginary parts "
                        "as separate arguments")
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{path} has dtype {arr.dtype} ({type(value).__name__}); "
                        "expected a number or a numeric array (float64 or convertible)")
    return arr.astype(np.float64, copy=False)


def output_nodes(graph: Graph, value, path: str) -> tuple[list[Node], tuple]:
    """Flatten one output leaf to nodes (numbers become constants) and its shape."""
    if isinstance(value, Tracer):
        _check_own(graph, value.node, path)
        return [value.node], ()
    if isinstance(value, np.ndarray) and value.dtype == object:
        nodes = []
        for v in value.reshape(-1):
            if isinstance(v, Tracer):
                _check_own(graph, v.node, path)
                nodes.append(v.node)
            else:
                nodes.append(graph.const(_as_output_float(v, path)))
        return nodes, value.shape
    if isinstance(value, (numbers.Real, np.ndarray, np.generic)):
        arr = as_float_array(value, path)
        return [graph.const(v) for v in arr.reshape(-1)], arr.shape
    raise TracingError(f"{path} is a {type(value).__name__}; a traced function must return "
                       "numbers, numpy arrays, or nested tuples/lists/dicts of them")


def _as_output_float(v, path):
    if isinstance(v, numbers.Real):
        return float(v)
    raise TracingError(f"{path} holds a {type(v).__name__}; expected numbers")


def _check_own(graph: Graph, node: Node, path: str) -> None:
    if node.graph is not graph:
        raise LeakedTracerError(
            f"{path} is a traced value of another trace ({node.graph.name!r}); a value "
            "escaped the function that created it. Return values computed from this "
            "call's arguments.")
