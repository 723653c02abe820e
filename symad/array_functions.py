"""numpy functions on array-level traces (trace -> **array graph** -> ad -> lower -> jit).

:class:`symad.arrays.AArray` dispatches numpy functions (``__array_function__``) through
``FUNCTIONS`` here, and ufunc reductions (``np.maximum.reduce``, ``np.add.accumulate``)
through :func:`ufunc_method`. Each builds one or a few array nodes per call with the
helpers of :mod:`symad.arrays`, never one per element:

- reductions other than sums (``np.max``, ``np.prod`` ...) fold up to ``FOLD_CHAIN``
  strided gathers at a time, in numpy's order, then store the partial results and fold
  those (nodes grow with the logarithm of the axis length);
- scans: a running sum is one sum node over each output's terms; other scans
  (``np.cumprod``, ``np.maximum.accumulate``) chain one gather and one operation per step,
  joined by a tree of distinct sums; long axes scan blocks, then the block totals;
- contractions (``np.einsum``, ``np.tensordot``, ``np.linalg.multi_dot`` ...) multiply
  their operands pairwise, left to right as numpy does without ``optimize=``, summing each
  index as soon as no later operand or the output has it;
- fills (``np.triu``, ``np.diag`` of a vector, ``np.pad``) select numpy's constant with
  ``where`` where no element lands.

A function missing here, or an argument it does not handle, raises
:class:`~symad.arrays.Unsupported`, and the scalar tracer runs the program instead.
"""

from __future__ import annotations

import math
import string
import warnings
from typing import Any

import numpy as np

from . import npfuncs
from .arrays import (
    AArray,
    Unsupported,
    _axes,
    _elementwise,
    _graph_of,
    _joining,
    _lift,
    _matmul,
    _rearranging,
    _region,
    _restructure,
    _sum,
    _where,
)

# Reductions (other than sums) over at most this many elements per output chain them all,
# each a strided gather (one loop, nothing stored; as arrays.SMALL_REDUCTION for sums).
# Longer rows fold groups of this many and store the groups' results: the GMM benchmark's
# max over 25 components, with its gradient, ran in 1.4 ms so and 2.2 ms as one chain.
FOLD_CHAIN = 8

# Running sums along at most SCAN_SUMS steps add each output's terms in one sum node;
# other scans along at most SCAN_CHAIN steps chain them (numpy's order, bit for bit).
# Longer ones scan blocks (SCAN_BLOCK steps of a sum, about sqrt(L) of the others), then
# the block totals (rounded differently from numpy's one pass).
SCAN_SUMS = 64
SCAN_CHAIN = 32
SCAN_BLOCK = 16


def _lifted(fn):
    """``fn`` (from symad.npfuncs) on the operand as an AArray (lists are refused here)."""
    def on_array(a, *args, **kwargs):
        return fn(_lift(_graph_of([a]), a), *args, **kwargs)
    return on_array


def _traced(*values) -> bool:
    return any(isinstance(v, AArray) for v in values)


# ---- reductions and scans -------------------------------------------------------------------

def _columns(a: AArray, axes: tuple) -> np.ndarray:
    """Positions of ``a``'s elements as ``(kept elements, reduced elements)``, each row in
    C order of the reduced axes (numpy's order of a reduction)."""
    kept = [ax for ax in range(a.ndim) if ax not in axes]
    pos = np.arange(a.size).reshape(a.shape).transpose(kept + list(axes))
    return pos.reshape(math.prod(a.shape[ax] for ax in kept), -1)


def _fold(op: str, a: AArray, axes: tuple, keepdims: bool = False, seed=None) -> AArray:
    """``op`` folded over ``axes`` left to right (``seed`` first), in numpy's order for
    up to FOLD_CHAIN elements per output. Longer rows fold groups of that many
    consecutive elements (and the rest), store the groups' results and fold those: a fold
    of an associative choice (``maximum`` keeps the last of equal values, as numpy) gives
    numpy's result, a product rounds in another order."""
    g = a.graph
    cols = _columns(a, axes)
    n_out, per = cols.shape
    if per == 0:
        raise Unsupported(f"a {op} over an empty axis")
    node, tails = a.node, []
    first = None if seed is None else _lift(g, seed).node

    def chain(columns, acc=None):
        for c in columns.T:
            x = g.gather(node, c)
            acc = x if acc is None else g.node(op, (acc, x))
        return acc
    while per > FOLD_CHAIN:
        groups, rest = divmod(per, FOLD_CHAIN)
        if rest:        # the last elements: folded into the result last
            tails.append(chain(cols[:, groups * FOLD_CHAIN:]))
        acc = g.gather(node, cols[:, 0:groups * FOLD_CHAIN:FOLD_CHAIN].reshape(-1))
        for r in range(1, FOLD_CHAIN):
            acc = g.node(op, (acc, g.gather(node, cols[:, r:groups * FOLD_CHAIN:FOLD_CHAIN]
                                            .reshape(-1))))
        if groups == 1:
            break
        # stored (a sum over distinct positions: a copy), as the next level reads it at
        # other positions: gathers of the elementwise ``acc`` would compute it again
        node = g.segment_sum(acc, np.arange(n_out * groups), n_out * groups)
        cols, per = np.arange(n_out * groups).reshape(n_out, groups), groups
    else:
        acc, first = chain(cols, first), None
    if first is not None:
        acc = g.node(op, (first, acc))
    for tail in reversed(tails):
        acc = g.node(op, (acc, tail))
    shape = tuple(1 if ax in axes else d for ax, d in enumerate(a.shape)) if keepdims \
        else tuple(d for ax, d in enumerate(a.shape) if ax not in axes)
    return AArray(g, acc, shape)


def _stack_nodes(g, nodes: list, size: int) -> Any:
    """The nodes' elements (``size`` each) one after another (a pairwise tree of
    distinct sums)."""
    parts = [(n, size) for n in nodes]
    while len(parts) > 1:
        paired = []
        for (x, nx), (y, ny) in zip(parts[0::2], parts[1::2]):
            paired.append((g.node("add", (g.segment_sum(x, np.arange(nx), nx + ny),
                                          g.segment_sum(y, nx + np.arange(ny), nx + ny))),
                           nx + ny))
        if len(parts) % 2:
            paired.append(parts[-1])
        parts = paired
    return parts[0][0]


# op(identity, x) == x for every x (NaN and -0.0 included)
_IDENTITY = {"add": -0.0, "mul": 1.0, "maximum": -math.inf, "minimum": math.inf}


def _scan_rows(g, op: str, node, rows: np.ndarray):
    """The running ``op`` down the rows of ``rows`` (positions in ``node``, shape
    ``(steps, width)``): a node of ``steps * width`` elements in that layout."""
    steps, width = rows.shape
    if op == "add" and steps <= SCAN_SUMS:
        # Output j sums rows 0..j, in that order (a sum adds in increasing position):
        # numpy's running sum in two nodes, steps * (steps + 1) / 2 additions per column.
        js, its = np.tril_indices(steps)
        terms = g.gather(node, rows[its].T.reshape(-1))
        segments = (js[None, :] * width + np.arange(width)[:, None]).reshape(-1)
        return g.segment_sum(terms, segments, steps * width)
    if steps <= SCAN_CHAIN or op not in _IDENTITY:
        out = [g.gather(node, rows[0])]
        for i in range(1, steps):
            out.append(g.node(op, (out[-1], g.gather(node, rows[i]))))
        return _stack_nodes(g, out, width)
    # Blocks of ``size`` steps (the last padded with op's identity, which changes no
    # value): scan within the blocks, then the block totals, and apply each block's
    # total of the blocks before it.
    # (a running sum's blocks are short: its terms cost size / 2 gathered elements each)
    size = SCAN_BLOCK if op == "add" else math.isqrt(steps - 1) + 1
    blocks = -(-steps // size)
    padded = np.full((blocks * size, width), -1, np.int64)
    padded[:steps] = rows
    by_step = padded.reshape(blocks, size, width).transpose(1, 0, 2).reshape(size, -1)
    values = _fill(g, node, by_step, _IDENTITY[op])
    within = _scan_rows(g, op, values.node, np.arange(by_step.size).reshape(size, -1))
    totals = _scan_rows(g, op, within,
                        (size - 1) * blocks * width + np.arange(blocks * width).reshape(
                            blocks, width)[:-1])
    before = np.full((size, blocks, width), -1, np.int64)
    before[:, 1:] = np.arange((blocks - 1) * width).reshape(blocks - 1, width)
    offsets = _fill(g, totals, before, _IDENTITY[op])
    scanned = g.node(op, (offsets.node, within))
    # back to step-major order, without the padding
    order = np.arange(size * blocks * width).reshape(size, blocks, width).transpose(
        1, 0, 2).reshape(blocks * size, width)[:steps]
    return g.gather(scanned, order.reshape(-1))


def _scan(op: str, a, axis) -> AArray:
    """numpy's ``accumulate`` of ``op`` along ``axis`` (None: the flattened array)."""
    g = _graph_of([a])
    a = _lift(g, a)
    if axis is None:
        a = a.ravel()
        axis = 0
    if a.ndim == 0:
        raise Unsupported("a scan of a 0-d array")
    (ax,) = _axes(axis, a.ndim)
    moved = np.moveaxis(np.arange(a.size).reshape(a.shape), ax, 0)
    rows = moved.reshape(a.shape[ax], -1)
    node = _scan_rows(g, op, a.node, rows)
    back = np.moveaxis(np.arange(a.size).reshape(moved.shape), 0, ax)
    return AArray(g, g.gather(node, back.reshape(-1)), a.shape)


def _cumulative(op: str, name: str):
    def scan(a, axis=None, dtype=None, out=None):
        npfuncs.check_dtype(name, dtype)
        npfuncs.check_out(name, out)
        return _scan(op, a, axis)
    return scan


_REDUCING = {"add": "add", "multiply": "mul", "maximum": "maximum", "minimum": "minimum",
             "fmax": "fmax", "fmin": "fmin"}


def ufunc_method(ufunc, method: str, inputs: tuple, kwargs: dict):
    """``ufunc.reduce`` / ``ufunc.accumulate`` of one traced array (``out=None``,
    ``where=True`` and a float64 ``dtype`` already dropped)."""
    op = _REDUCING.get(ufunc.__name__)
    extra = set(kwargs) - {"axis", "keepdims", "initial"}
    if op is None or len(inputs) != 1 or extra or (method == "accumulate" and (
            set(kwargs) - {"axis"})):
        raise Unsupported(f"np.{ufunc.__name__}.{method} with {sorted(kwargs)}")
    g = _graph_of(inputs)
    a = _lift(g, inputs[0])
    axis = kwargs.get("axis", 0)
    if method == "accumulate":
        return _scan(op, a, axis)
    initial = kwargs.get("initial", npfuncs.NO_VALUE)
    initial = None if initial is npfuncs.NO_VALUE else initial
    keepdims = bool(kwargs.get("keepdims", False))
    if op == "add":
        if initial is not None:
            raise Unsupported("np.add.reduce with initial=")
        return _sum(a, axis, keepdims)
    if _traced(initial):
        raise Unsupported(f"np.{ufunc.__name__}.reduce with a traced initial=")
    return _fold(op, a, _axes(axis, a.ndim), keepdims, seed=initial)


def _prod(a, axis=None, dtype=None, out=None, keepdims=False, initial=npfuncs.NO_VALUE,
          where=npfuncs.NO_VALUE):
    """np.prod: numpy's order (the elements, after ``initial``, left to right)."""
    npfuncs.check_dtype("np.prod", dtype)
    npfuncs.check_out("np.prod", out)
    g = _graph_of([a])
    a = _lift(g, a)
    if where is not npfuncs.NO_VALUE and where is not True:   # numpy's identity elsewhere
        a = _elementwise("where", where if _traced(where) else
                         np.asarray(where, dtype=np.float64), a, 1.0)
    if initial is not npfuncs.NO_VALUE and _traced(initial):
        raise Unsupported("np.prod with a traced initial=")
    seed = None if initial is npfuncs.NO_VALUE else float(initial)
    return _fold("mul", a, _axes(axis, a.ndim), bool(keepdims), seed=seed)


def _np_sum(a, axis=None, dtype=None, out=None, keepdims=False, initial=npfuncs.NO_VALUE,
            where=npfuncs.NO_VALUE):
    """np.sum; ``initial=`` and ``where=`` are left to the scalar tracer."""
    npfuncs.check_dtype("np.sum", dtype)
    npfuncs.check_out("np.sum", out)
    if initial is not npfuncs.NO_VALUE or where is not npfuncs.NO_VALUE:
        raise Unsupported("np.sum with initial= or where=")
    return _sum(a, axis, keepdims)


def _trace(a, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    npfuncs.check_dtype("np.trace", dtype)
    npfuncs.check_out("np.trace", out)
    d = _restructure(_lift(_graph_of([a]), a),
                     lambda p: np.diagonal(p, offset, axis1, axis2))
    return _sum(d, -1)


def _linalg_trace(x, /, *, offset=0, dtype=None):
    return _trace(x, offset, -2, -1, dtype)


# ---- contractions ---------------------------------------------------------------------------

_LETTERS = string.ascii_letters


def _einsum_terms(operands: tuple) -> tuple[list[str], str | None, list]:
    """``(input terms, output term or None, arrays)`` of np.einsum's two call forms."""
    if isinstance(operands[0], str):
        spec = operands[0].replace(" ", "")
        arrays_ = list(operands[1:])
        ins, arrow, out = spec.partition("->")
        return ins.split(","), (out if arrow else None), arrays_

    def term(sublist) -> str:
        return "".join("..." if s is Ellipsis else _LETTERS[int(s)] for s in sublist)
    pairs = len(operands) // 2
    last = term(operands[-1]) if len(operands) % 2 else None   # the output sublist last
    return ([term(s) for s in operands[1:2 * pairs:2]], last,
            list(operands[0:2 * pairs:2]))


def _labels(term: str, ndim: int, width: int) -> list:
    """One label per axis: a letter, or ``('...', k)`` for the ellipsis axis k from the
    right of ``width`` broadcast ellipsis axes."""
    if "..." not in term:
        if len(term) != ndim:
            raise ValueError(f"einsum subscripts {term!r} for an array of {ndim} dimensions")
        return list(term)
    head, _, tail = term.partition("...")
    n = ndim - len(head) - len(tail)
    if n < 0:
        raise ValueError(f"einsum subscripts {term!r} for an array of {ndim} dimensions")
    return [*head, *(("...", k) for k in range(n - 1, -1, -1)), *tail]


def _diagonals(a: AArray, labels: list) -> tuple[AArray, list]:
    """Repeated labels of one operand: its diagonal over those axes (numpy puts the
    diagonal's axis last)."""
    while len(set(labels)) < len(labels):
        i = next(k for k, x in enumerate(labels) if labels.count(x) > 1)
        j = labels.index(labels[i], i + 1)
        a = _restructure(a, lambda p, i=i, j=j: np.diagonal(p, 0, i, j))
        labels = [x for k, x in enumerate(labels) if k not in (i, j)] + [labels[i]]
    return a, labels


def _contract(arrays_: list[AArray], labels: list[list], out: list) -> AArray:
    """The product of the labelled arrays summed over every label not in ``out``:
    pairwise, left to right; a label is summed as soon as no later array has it."""
    cur: AArray = arrays_[0]
    cur_labels: list = []
    for i, (b, b_labels) in enumerate(zip(arrays_, labels)):
        if i == 0:
            cur_labels = list(b_labels)
        else:
            union = cur_labels + [x for x in b_labels if x not in cur_labels]
            a = cur.reshape(cur.shape + (1,) * (len(union) - len(cur_labels)))
            perm = [b_labels.index(x) for x in union if x in b_labels]
            b = b.transpose(perm).reshape(tuple(
                b.shape[b_labels.index(x)] if x in b_labels else 1 for x in union))
            cur, cur_labels = a * b, union
        later = set(out).union(*(set(x) for x in labels[i + 1:]))
        done = tuple(k for k, x in enumerate(cur_labels) if x not in later)
        if done:
            cur = _sum(cur, done)
            cur_labels = [x for x in cur_labels if x in later]
    order = [cur_labels.index(x) for x in out]
    return cur.transpose(order) if order != list(range(len(order))) else cur


@_region
def _einsum(*operands, out=None, optimize=False, **kwargs):
    """np.einsum: every subscript form numpy accepts; ``optimize=`` is accepted and, as
    numpy without it, operands are contracted left to right."""
    npfuncs.check_out("np.einsum", out)
    kwargs.pop("order", None)             # the result's memory layout
    kwargs.pop("casting", None)           # only matters with dtype=
    npfuncs.check_dtype("np.einsum", kwargs.pop("dtype", None))
    if kwargs:
        raise TypeError(f"einsum() got unexpected keyword arguments {sorted(kwargs)}")
    terms, out_term, values = _einsum_terms(operands)
    if len(terms) != len(values):
        raise ValueError("more operands provided to einstein sum function than specified "
                         "in the subscripts string" if len(values) > len(terms) else
                         "fewer operands provided to einstein sum function than specified "
                         "in the subscripts string")
    g = _graph_of(values)
    arrays_ = [_lift(g, v) for v in values]
    width = max((a.ndim - len(t.replace("...", "")) for a, t in zip(arrays_, terms)
                 if "..." in t), default=0)
    labels = [_labels(t, a.ndim, width) for a, t in zip(arrays_, terms)]
    ellipsis = [("...", k) for k in range(width - 1, -1, -1)]
    if out_term is None:
        letters = [x for lab in labels for x in lab if isinstance(x, str)]
        out = ellipsis + sorted(x for x in set(letters) if letters.count(x) == 1)
    else:
        head, dots, tail = out_term.partition("...")
        out = [*head, *(ellipsis if dots else ()), *tail]
        if len(set(out)) != len(out):
            raise ValueError(f"einstein sum subscripts string includes output subscript "
                             f"more than once: {out_term!r}")
        known = {x for lab in labels for x in lab}
        if any(x not in known for x in out if isinstance(x, str)):
            raise ValueError(f"einstein sum subscripts string included output subscript "
                             f"not in the inputs: {out_term!r}")
        if not dots and any(not isinstance(x, str) for lab in labels for x in lab):
            raise ValueError("output has more dimensions than subscripts given in einstein "
                             "sum, but no '...' ellipsis provided to broadcast the extra "
                             "dimensions.")
    for k, a in enumerate(arrays_):
        arrays_[k], labels[k] = _diagonals(a, labels[k])
    return _contract(arrays_, labels, out)


@_region
def _tensordot(a, b, axes=2):
    """np.tensordot: ``axes`` an int N (the last N of ``a`` with the first N of ``b``)
    or a pair of axis lists."""
    g = _graph_of([a, b])
    a, b = _lift(g, a), _lift(g, b)
    if _traced(axes):
        raise Unsupported("np.tensordot with traced axes")
    try:
        axes_a, axes_b = axes
    except TypeError:
        n = int(axes)
        axes_a, axes_b = list(range(a.ndim - n, a.ndim)), list(range(n))
    axes_a = [axes_a] if np.ndim(axes_a) == 0 else list(axes_a)
    axes_b = [axes_b] if np.ndim(axes_b) == 0 else list(axes_b)
    if len(axes_a) != len(axes_b):
        raise ValueError("shape-mismatch for sum")
    axes_a = [int(x) % a.ndim if a.ndim else int(x) for x in axes_a]
    axes_b = [int(x) % b.ndim if b.ndim else int(x) for x in axes_b]
    if any(a.shape[x] != b.shape[y] for x, y in zip(axes_a, axes_b)):
        raise ValueError("shape-mismatch for sum")
    la = list(_LETTERS[:a.ndim])
    fresh = iter(_LETTERS[a.ndim:])
    lb = [la[axes_a[axes_b.index(k)]] if k in axes_b else next(fresh)
          for k in range(b.ndim)]
    out = [x for k, x in enumerate(la) if k not in axes_a] + \
        [x for k, x in enumerate(lb) if k not in axes_b]
    return _contract([a, b], [la, lb], out)


def _linalg_tensordot(x1, x2, /, *, axes=2):
    return _tensordot(x1, x2, axes)


def _chain_order(dims: list[int]) -> list:
    """numpy's multi_dot order for matrices ``dims[i] x dims[i + 1]``: the split of
    least multiplications (the first of equal ones), as a nested pair tree of indices."""
    n = len(dims) - 1
    cost = [[0.0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for length in range(1, n):
        for i in range(n - length):
            j = i + length
            cost[i][j] = math.inf
            for k in range(i, j):
                q = cost[i][k] + cost[k + 1][j] + dims[i] * dims[k + 1] * dims[j + 1]
                if q < cost[i][j]:
                    cost[i][j], split[i][j] = q, k

    def tree(i, j):
        return i if i == j else (tree(i, split[i][j]), tree(split[i][j] + 1, j))
    return tree(0, n - 1)


def _multi_dot(arrays, *, out=None):
    """np.linalg.multi_dot: numpy's order of the products (least multiplications)."""
    npfuncs.check_out("np.linalg.multi_dot", out)
    arrays = list(arrays)
    if len(arrays) < 2:
        raise ValueError("Expecting at least two arrays.")
    if len(arrays) == 2:
        return _dot(arrays[0], arrays[1])
    g = _graph_of(arrays)
    mats = [_lift(g, v) for v in arrays]
    first, last = mats[0].ndim == 1, mats[-1].ndim == 1
    if first:
        mats[0] = mats[0].reshape(1, -1)
    if last:
        mats[-1] = mats[-1].reshape(-1, 1)
    if any(m.ndim != 2 for m in mats):
        raise np.linalg.LinAlgError("multi_dot: the arrays between the ends must be 2-d")

    def product(t):
        return mats[t] if isinstance(t, int) else _matmul(product(t[0]), product(t[1]))
    res = product(_chain_order([m.shape[0] for m in mats] + [mats[-1].shape[1]]))
    if first and last:
        return res[0, 0]
    return res[0] if first else res[:, 0] if last else res


def _dot(x, y, out=None):
    npfuncs.check_out("np.dot", out)
    g = _graph_of([x, y])
    a, b = _lift(g, x), _lift(g, y)
    if a.ndim <= 2 and b.ndim <= 2 and a.ndim and b.ndim:
        return _matmul(a, b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    # the last axis of a with the second-to-last of b
    return _tensordot(a, b, ([a.ndim - 1], [max(b.ndim - 2, 0)]))


def _vecdot(x1, x2, /, *, axis=-1):
    """np.vecdot / np.linalg.vecdot of real vectors along ``axis``."""
    g = _graph_of([x1, x2])
    a, b = _lift(g, x1), _lift(g, x2)
    ax_a, ax_b = _axes(axis, a.ndim), _axes(axis, b.ndim)
    if a.shape[ax_a[0]] != b.shape[ax_b[0]]:
        raise ValueError(f"vecdot: the vectors have lengths {a.shape[ax_a[0]]} and "
                         f"{b.shape[ax_b[0]]}")
    a = _restructure(a, lambda p: np.moveaxis(p, ax_a[0], -1))
    b = _restructure(b, lambda p: np.moveaxis(p, ax_b[0], -1))
    return _sum(a * b, -1)


def vecdot(x1, x2):
    """The ufunc np.vecdot (numpy >= 2) called plainly: the sum over the last axes."""
    return _vecdot(x1, x2)


def _cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    """np.cross of 2- and 3-vectors, each component computed as numpy's does."""
    if axis is not None:
        axisa = axisb = axisc = axis
    g = _graph_of([a, b])
    a = _restructure(_lift(g, a), lambda p: np.moveaxis(p, axisa, -1))
    b = _restructure(_lift(g, b), lambda p: np.moveaxis(p, axisb, -1))
    if a.shape[-1] not in (2, 3) or b.shape[-1] not in (2, 3):
        raise ValueError("incompatible dimensions for cross product\n(dimension must be "
                         "2 or 3)")
    if a.shape[-1] == 2 or b.shape[-1] == 2:
        warnings.warn("Arrays of 2-dimensional vectors are deprecated. Use arrays of "
                      "3-dimensional vectors instead. (deprecated in NumPy 2.0)",
                      DeprecationWarning, stacklevel=4)
    a0, a1 = a[..., 0], a[..., 1]
    b0, b1 = b[..., 0], b[..., 1]
    if a.shape[-1] == 2 and b.shape[-1] == 2:
        return a0 * b1 - a1 * b0
    if a.shape[-1] == 2:
        b2 = b[..., 2]
        parts = [a1 * b2, -(a0 * b2), a0 * b1 - a1 * b0]
    elif b.shape[-1] == 2:
        a2 = a[..., 2]
        parts = [-(a2 * b1), a2 * b0, a0 * b1 - a1 * b0]
    else:
        a2, b2 = a[..., 2], b[..., 2]
        parts = [a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0]
    shape = np.broadcast_shapes(*(p.shape for p in parts))
    parts = [_restructure(p, lambda q: np.broadcast_to(q, shape)) for p in parts]
    res = _joining(np.stack)(parts, axis=-1)
    return _restructure(res, lambda p: np.moveaxis(p, -1, axisc))


def _linalg_cross(x1, x2, /, *, axis=-1):
    if np.shape(x1)[axis] != 3 or np.shape(x2)[axis] != 3:
        raise ValueError("Both input arrays must be (arrays of) 3-dimensional vectors, "
                         f"but they are {np.shape(x1)[axis]} and {np.shape(x2)[axis]} "
                         "dimensional instead.")
    return _cross(x1, x2, axis=axis)


def _outer(a, b, out=None):
    npfuncs.check_out("np.outer", out)
    g = _graph_of([a, b])
    return _lift(g, a).ravel()[:, None] * _lift(g, b).ravel()[None, :]


def _linalg_outer(x1, x2, /):
    if np.ndim(x1) != 1 or np.ndim(x2) != 1:
        raise ValueError("Input arrays must be one-dimensional, but they are "
                         f"x1.ndim={np.ndim(x1)} and x2.ndim={np.ndim(x2)}.")
    return _outer(x1, x2)


@_region
def _vdot(a, b):
    g = _graph_of([a, b])
    return _sum(_lift(g, a).ravel() * _lift(g, b).ravel())


@_region
def _inner(a, b):
    """np.inner: the sum over the last axes, shape ``a.shape[:-1] + b.shape[:-1]``."""
    g = _graph_of([a, b])
    a, b = _lift(g, a), _lift(g, b)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    if a.shape[-1] != b.shape[-1]:
        raise Unsupported(f"np.inner of shapes {a.shape} and {b.shape}")
    lead_a, lead_b = a.shape[:-1], b.shape[:-1]
    x = a.reshape(lead_a + (1,) * len(lead_b) + a.shape[-1:])
    y = b.reshape((1,) * len(lead_a) + b.shape)
    return _sum(x * y, -1)


def _kron(a, b):
    """np.kron: each product ``a[i] * b[j]`` once, at numpy's position."""
    g = _graph_of([a, b])
    a, b = _lift(g, a), _lift(g, b)
    nd = max(a.ndim, b.ndim)
    sa = (1,) * (nd - a.ndim) + a.shape
    sb = (1,) * (nd - b.ndim) + b.shape
    x = a.reshape(tuple(d for s in sa for d in (s, 1)))
    y = b.reshape(tuple(d for s in sb for d in (1, s)))
    return (x * y).reshape(tuple(p * q for p, q in zip(sa, sb)))


# ---- placing elements -----------------------------------------------------------------------

def _fill(g, node, index: np.ndarray, fill) -> AArray:
    """``node``'s elements at ``index`` (its shape), ``fill`` where the index is -1 (a
    number or a constant array of that shape)."""
    index = np.asarray(index, dtype=np.int64)
    gathered = AArray(g, g.gather(node, np.maximum(index, 0).reshape(-1)), index.shape)
    if (index >= 0).all():
        return gathered
    return _elementwise("where", (index >= 0).astype(np.float64), gathered, fill)


def _placing(a: AArray, fn, fill=0.0) -> AArray:
    """``fn`` (a numpy function that moves elements and puts zeros elsewhere) applied
    to ``a``'s positions; ``fill`` where it put zeros."""
    return _fill(a.graph, a.node, np.asarray(fn(np.arange(1, a.size + 1).reshape(a.shape))) - 1,
                 fill)


def _diag(v, k=0):
    a = _lift(_graph_of([v]), v)
    if a.ndim == 1:
        return _placing(a, lambda p: np.diag(p, k))
    if a.ndim == 2:
        return _restructure(a, lambda p: np.diag(p, k))
    raise ValueError("Input must be 1- or 2-d.")


def _triangle(upper: bool):
    def triangle(m, k=0):
        """np.triu / np.tril: numpy's where(mask, zeros(1), m), +0.0 where it masks."""
        a = _lift(_graph_of([m]), m)
        mask = np.tri(*a.shape[-2:], k=k - 1 if upper else k, dtype=bool)
        if upper:
            return _elementwise("where", mask.astype(np.float64), 0.0, a)
        return _elementwise("where", mask.astype(np.float64), a, 0.0)
    return triangle


_PAD_MOVES = ("edge", "wrap", "reflect", "symmetric")


def _pad(array, pad_width, mode="constant", **kwargs):
    """np.pad in the modes that move elements or add constants."""
    a = _lift(_graph_of([array]), array)
    if _traced(pad_width, *kwargs.values()):
        raise Unsupported("np.pad with traced widths or values")
    if mode in _PAD_MOVES and kwargs.get("reflect_type", "even") == "even":
        kwargs.pop("reflect_type", None)
        return _restructure(a, lambda p: np.pad(p, pad_width, mode, **kwargs))
    if mode != "constant" or set(kwargs) - {"constant_values"}:
        raise Unsupported(f"np.pad(mode={mode!r}) with {sorted(kwargs)}")
    fill = np.pad(np.zeros(a.shape), pad_width, "constant", **kwargs)
    return _placing(a, lambda p: np.pad(p, pad_width, "constant"), fill)


def _like(value: float | None):
    def like(a, *args, **kwargs):
        """np.zeros_like / np.ones_like / np.full_like: constants of ``a``'s shape (or
        ``shape=``)."""
        if value is None:
            if not args and "fill_value" not in kwargs:
                raise TypeError("full_like() missing required argument 'fill_value'")
            fill = kwargs.pop("fill_value") if "fill_value" in kwargs else args[0]
            args = args[1:]
        else:
            fill = value
        names = ("dtype", "order", "subok", "shape")
        kwargs.update(zip(names, args))
        kwargs.pop("device", None)
        npfuncs.check_dtype("np.full_like", kwargs.get("dtype"))
        shape = kwargs.get("shape")
        shape = np.shape(a) if shape is None else \
            tuple(np.atleast_1d(shape).tolist()) if np.ndim(shape) else (int(shape),)
        if _traced(fill):   # as on the scalar graph (numpy's copyto)
            raise Unsupported("np.full_like with a traced fill value")
        return np.full(shape, fill, dtype=np.float64)
    return like


def _splitting(func):
    """np.split / np.array_split: a gather per part."""
    def split(ary, indices_or_sections, axis=0):
        if _traced(indices_or_sections, axis):
            raise Unsupported(f"np.{func.__name__} at traced positions")
        a = _lift(_graph_of([ary]), ary)
        parts = func(np.arange(a.size).reshape(a.shape), indices_or_sections, axis)
        return [AArray(a.graph, a.graph.gather(a.node, p.reshape(-1)), p.shape)
                for p in parts]
    return split


def _append(arr, values, axis=None):
    def positions(parts, axis):
        return np.append(parts[0], parts[1], axis=axis)
    return _joining(positions)([arr, values], axis)


def _block(arrays):
    """np.block: the leaves' positions blocked by numpy, then joined."""
    leaves: list = []

    def flatten(x):
        if isinstance(x, list):
            return [flatten(v) for v in x]
        leaves.append(x)
        return len(leaves) - 1
    shape = flatten(arrays)

    def positions(parts):
        def build(x):
            return [build(v) for v in x] if isinstance(x, list) else parts[x]
        return np.block(build(shape))
    return _joining(positions)(leaves)


def _broadcast_arrays(*args, subok=False):
    g = _graph_of(args)
    lifted = [_lift(g, v) for v in args]
    shape = np.broadcast_shapes(*(a.shape for a in lifted))
    return tuple(_restructure(a, lambda p: np.broadcast_to(p, shape)) for a in lifted)


# ---- the rest: shapes, selections, differences --------------------------------------------

def _reshape(a, shape=None, order="C", newshape=None):
    return _lift(_graph_of([a]), a).reshape(shape if shape is not None else newshape,
                                            order=order)


def _clip(a, *args, **kwargs):
    lo, hi = npfuncs.clip_bounds(*args, **kwargs)
    r = a
    if lo is not None:
        r = _elementwise("maximum", r, lo)
    if hi is not None:
        r = _elementwise("minimum", r, hi)
    return r


def _diff(a, n=1, axis=-1, **kw):
    if kw or int(n) < 0:    # numpy's own raises for n < 0
        raise Unsupported("np.diff with prepend=, append= or n < 0")
    g = _graph_of([a])
    a = _lift(g, a)
    for _ in range(n):
        a = a[_slice_at(a.ndim, axis, slice(1, None))] - a[_slice_at(a.ndim, axis,
                                                                      slice(None, -1))]
    return a


def _slice_at(ndim: int, axis: int, sl: slice) -> tuple:
    key = [slice(None)] * ndim
    key[axis] = sl
    return tuple(key)


# Keyed by the function object, not its name: np.linalg.diagonal (the last two axes) is
# not np.diagonal (the first two), np.linalg.outer takes vectors only, and so on. A
# numpy function missing here is Unsupported: the scalar tracer runs it instead.
FUNCTIONS: dict[Any, Any] = {
    np.sum: _np_sum, np.prod: _prod, np.mean: _lifted(npfuncs.mean),
    np.average: _lifted(npfuncs.average), np.var: _lifted(npfuncs.var),
    np.std: _lifted(npfuncs.std), np.dot: _dot,
    np.max: _lifted(npfuncs.extreme(np.maximum)), np.amax: _lifted(npfuncs.extreme(np.maximum)),
    np.min: _lifted(npfuncs.extreme(np.minimum)), np.amin: _lifted(npfuncs.extreme(np.minimum)),
    np.cumsum: _cumulative("add", "np.cumsum"), np.cumprod: _cumulative("mul", "np.cumprod"),
    np.einsum: _einsum, np.tensordot: _tensordot, np.trace: _trace, np.matmul: _matmul,
    np.linalg.multi_dot: _multi_dot, np.cross: _cross, np.kron: _kron,
    np.where: _where, np.clip: _clip, np.linalg.norm: _lifted(npfuncs.norm), np.diff: _diff,
    np.outer: _outer, np.inner: _inner, np.vdot: _vdot, np.reshape: _reshape,
    np.diag: _diag, np.triu: _triangle(True), np.tril: _triangle(False), np.pad: _pad,
    np.zeros_like: _like(0.0), np.ones_like: _like(1.0), np.full_like: _like(None),
    np.split: _splitting(np.split), np.array_split: _splitting(np.array_split),
    np.append: _append, np.block: _block, np.broadcast_arrays: _broadcast_arrays,
    np.shape: lambda a: a.shape, np.ndim: lambda a: len(a.shape),
    np.size: lambda a, axis=None: a.size if axis is None else a.shape[axis],
    **{f: _rearranging(f) for f in (
        np.ravel, np.transpose, np.swapaxes, np.moveaxis, np.squeeze, np.expand_dims,
        np.atleast_1d, np.atleast_2d, np.broadcast_to, np.tile, np.repeat, np.flip,
        np.fliplr, np.flipud, np.roll, np.take, np.diagonal, np.copy)},
    **{f: _joining(f) for f in (
        np.concatenate, np.stack, np.hstack, np.vstack, np.column_stack)},
}
# numpy >= 2: the array-API functions (np.linalg's take the last axes, and keywords)
for _name, _impl in (("diagonal", None), ("matrix_transpose", None), ("matmul", _matmul),
                     ("vector_norm", _lifted(npfuncs.vector_norm)),
                     ("matrix_norm", _lifted(npfuncs.matrix_norm)),
                     ("trace", _linalg_trace), ("tensordot", _linalg_tensordot),
                     ("cross", _linalg_cross), ("outer", _linalg_outer),
                     ("vecdot", _vecdot)):
    if hasattr(np.linalg, _name):
        _f = getattr(np.linalg, _name)
        FUNCTIONS[_f] = _impl if _impl is not None else _rearranging(_f)
if hasattr(np, "matrix_transpose"):
    FUNCTIONS[np.matrix_transpose] = _rearranging(np.matrix_transpose)
