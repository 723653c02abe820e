"""numpy functions written with numpy calls, shared by both tracers.

The scalar tracer (:mod:`symad.trace`) and the array-level tracer (:mod:`symad.arrays`)
both dispatch ``np.mean``, ``np.var``, ``np.average``, ``np.clip``, ``np.linalg.norm``
... here. Each takes numpy's full signature and honours every parameter, or raises an
:class:`UnsupportedOpError` naming it: a dropped keyword (``weights=``, ``where=``,
``correction=``, ``initial=``, ``ord=2``) gives a plausible wrong number. The bodies call
numpy functions on the traced operands, so each tracer's own rules do the work (on the
array level an operation it lacks raises ``Unsupported``, and the scalar tracer runs).
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import numpy as np

from .errors import UnsupportedOpError

NO_VALUE = np._NoValue      # numpy's "not given" default (differs from None for some)


def _fname(func) -> str:
    module = getattr(func, "__module__", "numpy") or "numpy"
    name = f"{module}.{func.__name__}".replace("numpy._core.fromnumeric", "numpy")
    for private in ("._core.multiarray", "._core.numeric", "._core.shape_base",
                    ".lib._function_base_impl", ".lib._shape_base_impl",
                    ".lib._twodim_base_impl", ".linalg._linalg"):
        name = name.replace(private, "" if private != ".linalg._linalg" else ".linalg")
    return name.replace("numpy.", "np.", 1)


def check_dtype(fname: str, dtype) -> None:
    """symad computes in float64: ``dtype=`` is fine when it says so, refused otherwise."""
    if dtype is None or np.dtype(dtype) == np.float64:
        return
    raise UnsupportedOpError(
        f"{fname}(..., dtype={np.dtype(dtype)}) on traced values: symad computes in "
        "float64 only. Drop dtype= (or pass np.float64) and convert the result outside "
        "the traced function.")


def check_out(fname: str, out) -> None:
    if out is not None:
        raise UnsupportedOpError(
            f"{fname}(..., out=...) writes into an array in place, which tracing does not "
            "support; drop out= and assign the result instead")


_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def without_out_and_dtype(func, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a call of numpy's ``func``, refused if it writes to ``out``
    or computes in a dtype other than float64 (given by keyword or by position; ``**kwargs``
    included, as np.einsum takes them); a float64 ``dtype`` is dropped (an object array
    cast to it would ask each traced element for its value)."""
    if func not in _SIGNATURES:
        try:
            _SIGNATURES[func] = inspect.signature(func)
        except (TypeError, ValueError):
            _SIGNATURES[func] = None
    sig = _SIGNATURES[func]
    if sig is None:
        return args, kwargs
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return args, kwargs                  # numpy itself reports the bad call
    given = dict(bound.arguments)
    extra: dict = next((given.pop(p.name) for p in sig.parameters.values()
                  if p.kind is p.VAR_KEYWORD and p.name in given), {})
    fname = _fname(func)
    for where in (given, extra):
        if where.get("out") is not None:
            check_out(fname, where["out"])
        if where.get("dtype") is not None:
            check_dtype(fname, where["dtype"])
    if given.get("dtype") is None and extra.get("dtype") is None:
        return args, kwargs
    if "dtype" in extra:
        del bound.arguments[next(p.name for p in sig.parameters.values()
                                 if p.kind is p.VAR_KEYWORD)]["dtype"]
    else:
        bound.arguments["dtype"] = None
    return bound.args, bound.kwargs


def _shape(a) -> tuple:
    return tuple(np.shape(a))


def _axes(axis, ndim: int) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, tuple) else (axis,)
    return tuple(sorted({int(ax) % ndim if ndim else int(ax) for ax in axes}))


def _count(shape: tuple, axis) -> int:
    return math.prod(shape[ax] for ax in _axes(axis, len(shape)))


def _is_constant(v) -> bool:
    """A plain number or numeric array (not traced)."""
    if isinstance(v, (bool, np.bool_, numbers.Number)):
        return type(v).__module__ in ("builtins", "numpy")
    return type(v) is np.ndarray and v.dtype.kind in "biuf"


def _mask(fname: str, where, shape: tuple):
    """``where=`` as an array of 0/1 of ``shape`` (a constant one as float64)."""
    if isinstance(where, (list, tuple)):
        where = np.asarray(where)
    if _is_constant(where):
        return np.broadcast_to(np.asarray(where, dtype=bool), shape).astype(np.float64)
    return np.broadcast_to(where, shape)


def _masked_sum(a, axis, keepdims, mask):
    """The sum of the elements where ``mask``: others are -0.0, which adds exactly."""
    if mask is None:
        return np.sum(a, axis=axis, keepdims=keepdims)
    return np.sum(np.where(mask, a, -0.0), axis=axis, keepdims=keepdims)


def mean(a, axis=None, dtype=None, out=None, keepdims=NO_VALUE, *, where=NO_VALUE):
    """np.mean: also ``where=`` (a constant or traced mask) and ``keepdims=``."""
    check_dtype("np.mean", dtype)
    check_out("np.mean", out)
    keepdims = False if keepdims is NO_VALUE else bool(keepdims)
    shape = _shape(a)
    if where is NO_VALUE or where is True:
        return np.sum(a, axis=axis, keepdims=keepdims) / float(_count(shape, axis))
    mask = _mask("np.mean", where, shape)
    return _masked_sum(a, axis, keepdims, mask) / np.sum(mask, axis=axis, keepdims=keepdims)


def var(a, axis=None, dtype=None, out=None, ddof=0, keepdims=NO_VALUE, *, where=NO_VALUE,
        mean=NO_VALUE, correction=NO_VALUE, what="np.var"):  # noqa: A002 (numpy's name)
    """np.var with numpy's every parameter: ``ddof``/``correction``, ``where=`` and a
    precomputed ``mean=`` (of keepdims shape)."""
    check_dtype(what, dtype)
    check_out(what, out)
    if correction is not NO_VALUE:
        if ddof != 0:
            raise ValueError("ddof and correction can't be provided simultaneously.")
        ddof = correction
    keepdims = False if keepdims is NO_VALUE else bool(keepdims)
    shape = _shape(a)
    mask = None if where is NO_VALUE or where is True else _mask(what, where, shape)
    if mask is None:
        count = float(_count(shape, axis))
    else:
        count = np.sum(mask, axis=axis, keepdims=keepdims)
    if mean is NO_VALUE:
        if mask is None:
            mean = np.sum(a, axis=axis, keepdims=True) / count
        else:
            mean = _masked_sum(a, axis, True, mask) / np.sum(mask, axis=axis, keepdims=True)
    d = a - mean
    total = _masked_sum(d * d, axis, keepdims, mask)
    if isinstance(count, float):
        return total / max(count - ddof, 0.0)
    return total / np.maximum(count - ddof, 0.0)


def std(a, axis=None, dtype=None, out=None, ddof=0, keepdims=NO_VALUE, *, where=NO_VALUE,
        mean=NO_VALUE, correction=NO_VALUE):  # noqa: A002 (numpy's name)
    return np.sqrt(var(a, axis, dtype, out, ddof, keepdims, where=where, mean=mean,
                       correction=correction, what="np.std"))


def average(a, axis=None, weights=None, returned=False, *, keepdims=NO_VALUE):
    """np.average: ``weights=`` (numpy's shape rules), ``returned=``, ``keepdims=``."""
    keepdims = False if keepdims is NO_VALUE else bool(keepdims)
    shape = _shape(a)
    ndim = len(shape)
    if axis is not None:
        axis = tuple(int(ax) % ndim for ax in (axis if isinstance(axis, tuple) else (axis,)))
    if weights is None:
        avg = mean(a, axis, keepdims=keepdims)
        scl = float(math.prod(shape) / max(math.prod(_shape(avg)), 1))
        if returned:
            return avg, (np.full(_shape(avg), scl) if _shape(avg) else scl)
        return avg
    w = weights if not isinstance(weights, (list, tuple)) else np.asarray(weights)
    if _shape(w) != shape:
        if axis is None:
            raise TypeError("Axis must be specified when shapes of a and weights differ.")
        if _shape(w) != tuple(shape[ax] for ax in axis):
            raise ValueError("Shape of weights must be consistent with shape of a along "
                             "specified axis.")
        w = np.transpose(w, np.argsort(axis))
        w = np.reshape(w, tuple(s if ax in axis else 1 for ax, s in enumerate(shape)))
    scl = np.sum(w, axis=axis, keepdims=keepdims)
    if _is_constant(scl) and np.any(np.asarray(scl) == 0.0):
        raise ZeroDivisionError("Weights sum to zero, can't be normalized")
    avg = np.sum(a * w, axis=axis, keepdims=keepdims) / scl
    if returned:
        if _shape(scl) != _shape(avg):
            scl = np.broadcast_to(scl, _shape(avg)) + 0.0
        return avg, scl
    return avg


def clip_bounds(a_min=NO_VALUE, a_max=NO_VALUE, out=None, *, min=NO_VALUE,  # noqa: A002
                max=NO_VALUE, **kwargs):                                   # noqa: A002
    """np.clip's bounds ``(lo, hi)`` (None: none), its argument rules and keywords."""
    check_out("np.clip", out)
    check_dtype("np.clip", kwargs.pop("dtype", None))
    kwargs.pop("casting", None)         # only matters with dtype= or out=
    if kwargs.pop("where", True) is not True:
        raise UnsupportedOpError("np.clip(..., where=...) on traced values is not "
                                 "supported; use symad.where(mask, np.clip(...), x)")
    if kwargs:
        raise UnsupportedOpError(f"np.clip(..., {', '.join(kwargs)}=...) is not supported "
                                 "on traced values")
    if a_min is NO_VALUE and a_max is NO_VALUE:
        return (None if min is NO_VALUE else min), (None if max is NO_VALUE else max)
    if a_min is NO_VALUE:
        raise TypeError("clip() missing 1 required positional argument: 'a_min'")
    if a_max is NO_VALUE:
        raise TypeError("clip() missing 1 required positional argument: 'a_max'")
    if min is not NO_VALUE or max is not NO_VALUE:
        raise ValueError("Passing `min` or `max` keyword argument when `a_min` and `a_max` "
                         "are provided is forbidden.")
    return a_min, a_max


def clip(a, *args, **kwargs):
    lo, hi = clip_bounds(*args, **kwargs)
    r = a
    if lo is not None:
        r = np.maximum(r, lo)
    if hi is not None:
        r = np.minimum(r, hi)
    return r


def extreme(ufunc):
    """np.max / np.min (amax, amin) from the tracer's ``ufunc.reduce``: also
    ``initial=`` and ``where=`` (which numpy requires ``initial`` for)."""
    fname = f"np.{'max' if ufunc is np.maximum else 'min'}"

    def reduce(a, axis=None, out=None, keepdims=NO_VALUE, initial=NO_VALUE,
               where=NO_VALUE):
        check_out(fname, out)
        keepdims = False if keepdims is NO_VALUE else bool(keepdims)
        shape = _shape(a)
        if where is not NO_VALUE and where is not True:
            if initial is NO_VALUE:
                raise ValueError(f"reduction operation '{ufunc.__name__}' does not have an "
                                 "identity, so to use a where mask one has to specify "
                                 "'initial'")
            a = np.where(_mask(fname, where, shape), a, initial)
        axes = _axes(axis, len(shape))
        if not axes:
            r = a
        elif len(axes) == 1:
            r = ufunc.reduce(a, axis=axes[0], keepdims=keepdims)
        else:   # symad's elementwise ufuncs reduce over one axis: the others moved to it
            kept = [ax for ax in range(len(shape)) if ax not in axes]
            r = ufunc.reduce(np.reshape(np.transpose(a, kept + list(axes)),
                                        [shape[ax] for ax in kept] + [-1]), axis=-1)
            if keepdims:
                r = np.reshape(r, tuple(1 if ax in axes else d for ax, d in enumerate(shape)))
        if initial is not NO_VALUE:
            r = ufunc(r, initial)
        return r
    return reduce


def _axis_index(axis, ndim: int) -> int:
    ax = int(axis)
    if not -ndim <= ax < ndim:
        raise getattr(np, "exceptions", np).AxisError(ax, ndim)
    return ax % ndim


def _svd_norm(ord) -> UnsupportedOpError:    # noqa: A002 (numpy's name)
    return UnsupportedOpError(
        f"np.linalg.norm of a matrix with ord={ord!r} needs its singular values, which "
        "symad has no rule for (an SVD is not an op). Use ord='fro', 1, -1, np.inf or "
        "-np.inf, or bound the spectral norm: it is at most the Frobenius norm and at "
        "least that over sqrt(min(m, n)).")


def norm(x, ord=None, axis=None, keepdims=False):   # noqa: A002 (numpy's names)
    """np.linalg.norm with numpy's rules for ``ord``, ``axis`` and ``keepdims``: vector
    norms of every order, matrix norms 'fro', 1, -1, inf, -inf; the singular-value ones
    (2, -2, 'nuc') are refused."""
    shape = _shape(x)
    nd = len(shape)
    inf = np.inf
    if axis is None and (ord is None or (isinstance(ord, str) and ord in ("f", "fro")
                                         and nd == 2)
                         or (not isinstance(ord, str) and ord == 2 and nd == 1)):
        return np.sqrt(np.sum(x * x, axis=None, keepdims=bool(keepdims)))
    if axis is None:
        axis = tuple(range(nd))
    elif not isinstance(axis, tuple):
        try:
            axis = (int(axis),)
        except Exception as e:
            raise TypeError("'axis' must be None, an integer or a tuple of integers") from e
    if len(axis) == 1:
        ax = axis[0]
        if isinstance(ord, str):
            raise ValueError(f"Invalid norm order '{ord}' for vectors")
        if ord == inf:
            return np.max(np.abs(x), axis=ax, keepdims=keepdims, initial=0.0)
        if ord == -inf:
            return np.min(np.abs(x), axis=ax, keepdims=keepdims)
        if ord == 0:     # the count of nonzeros: piecewise constant
            return np.sum(np.where(x != 0.0, 1.0, 0.0), axis=ax, keepdims=keepdims)
        if ord == 1:
            return np.sum(np.abs(x), axis=ax, keepdims=keepdims)
        if ord is None or ord == 2:
            return np.sqrt(np.sum(x * x, axis=ax, keepdims=keepdims))
        return np.sum(np.abs(x) ** ord, axis=ax, keepdims=keepdims) ** (1.0 / ord)
    if len(axis) == 2:
        row, col = reduced = tuple(_axis_index(a, nd) for a in axis)
        if row == col:
            raise ValueError("Duplicate axes given.")
        if isinstance(ord, str) and ord == "nuc" or not isinstance(ord, str) and \
                ord in (2, -2):
            raise _svd_norm(ord)
        if isinstance(ord, str) or ord is None:
            if ord not in (None, "fro", "f"):
                raise ValueError("Invalid norm order for matrices.")
            ret = np.sqrt(np.sum(x * x, axis=(row, col)))
        elif ord in (1, -1):      # the largest (smallest) column sum
            sums = np.sum(np.abs(x), axis=row)
            col = col - 1 if col > row else col
            ret = np.max(sums, axis=col, initial=0.0) if ord == 1 else np.min(sums, axis=col)
        elif ord in (inf, -inf):  # the largest (smallest) row sum
            sums = np.sum(np.abs(x), axis=col)
            row = row - 1 if row > col else row
            ret = np.max(sums, axis=row, initial=0.0) if ord == inf else \
                np.min(sums, axis=row)
        else:
            raise ValueError("Invalid norm order for matrices.")
        if keepdims:
            ret = np.reshape(ret, tuple(1 if ax in reduced else d
                                        for ax, d in enumerate(shape)))
        return ret
    raise ValueError("Improper number of dimensions to norm.")


def vector_norm(x, /, *, axis=None, keepdims=False, ord=2):  # noqa: A002
    """np.linalg.vector_norm (numpy >= 2): any number of axes, flattened into one."""
    shape = _shape(x)
    if axis is None:
        flat, one = np.reshape(x, (-1,)), 0
    elif isinstance(axis, tuple):
        axes = tuple(_axis_index(a, len(shape)) for a in axis)
        rest = tuple(i for i in range(len(shape)) if i not in axes)
        flat = np.reshape(np.transpose(x, axes + rest),
                          (math.prod(shape[i] for i in axes), *(shape[i] for i in rest)))
        one = 0
    else:
        flat, one = x, axis
    res = norm(flat, ord=ord, axis=one)
    if keepdims:
        axes = range(len(shape)) if axis is None else \
            (axis if isinstance(axis, tuple) else (axis,))
        axes = {_axis_index(a, len(shape)) for a in axes}
        res = np.reshape(res, tuple(1 if i in axes else d for i, d in enumerate(shape)))
    return res


def matrix_norm(x, /, *, keepdims=False, ord="fro"):  # noqa: A002
    """np.linalg.matrix_norm (numpy >= 2): a norm over the last two axes."""
    return norm(x, ord=ord, axis=(-2, -1), keepdims=keepdims)
