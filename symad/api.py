"""Public transformations (trace -> graph -> ad -> interp | lower -> jit).

Every transformation traces the function with fresh variables for the differentiated
arguments, builds the derivative nodes in the same graph, and then either evaluates them
with the numpy reference interpreter (called with numbers) or, when called inside another
trace (``grad(grad(f))``, ``compile(hessian(f))``), substitutes the caller's traced values
for the variables and returns tracers. So every transformation composes with every other.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import interp
from .ad import jvp_nodes, vjp_nodes
from .errors import OptionError, SymadError, TracingError
from .graph import Graph, Node
from .options import check_argnums
from .trace import (
    TracedArray,
    Tracer,
    as_float_array,
    new_input_leaf,
    output_nodes,
    refuse_array_subclass,
)
from .tree import tree_flatten, tree_unflatten

_LOCAL = threading.local()
# SYMAD_VERIFY=1 checks every new graph's invariants when its trace ends (the test suite
# turns it on; it costs a pass over the graph).
_VERIFY = os.environ.get("SYMAD_VERIFY", "") not in ("", "0")


def _stack() -> list[Graph]:
    s = getattr(_LOCAL, "stack", None)
    if s is None:
        s = _LOCAL.stack = []
    return s


def _graph_of(*trees) -> Graph | None:
    """The graph of the first tracer found in ``trees``, else the innermost open trace."""
    for tree in trees:
        leaves, _, _ = tree_flatten(tree)
        for leaf in leaves:
            if isinstance(leaf, Tracer):
                return leaf.node.graph
            if isinstance(leaf, np.ndarray) and leaf.dtype == object:
                for v in leaf.reshape(-1):
                    if isinstance(v, Tracer):
                        return v.node.graph
    stack = _stack()
    return stack[-1] if stack else None


def _fn_name(f) -> str:
    return getattr(f, "__name__", type(f).__name__)


def _arg_names(f, n: int) -> list[str]:
    """Names for the first ``n`` positional arguments (for input names and messages)."""
    names: list[str] = []
    try:
        for p in inspect.signature(f).parameters.values():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                names.append(p.name)
            elif p.kind == p.VAR_POSITIONAL:
                break
    except (TypeError, ValueError):
        pass
    return [names[k] if k < len(names) else f"arg{k}" for k in range(n)]


def _normalize_argnums(argnums, nargs: int, fname: str) -> tuple[int, ...]:
    checked = check_argnums(argnums, fname)
    nums = (checked,) if isinstance(checked, int) else checked
    for k in nums:
        if not -nargs <= k < nargs:
            raise OptionError(f"argnums={argnums!r} does not fit {fname}, which was called "
                              f"with {nargs} positional argument(s)")
    return tuple(k % nargs for k in nums)


def _leaf_nodes(graph: Graph, leaf, path: str) -> tuple[list[Node], tuple]:
    """Nodes standing for an argument leaf's current value (nested mode) and its shape."""
    if isinstance(leaf, Tracer):
        return [leaf.node], ()
    if isinstance(leaf, np.ndarray) and leaf.dtype == object:
        nodes = []
        for v in leaf.reshape(-1):
            if isinstance(v, Tracer):
                if v.node.graph is not graph:
                    raise TracingError(f"{path} mixes values of two traces")
                nodes.append(v.node)
            else:
                nodes.append(graph.const(float(v)))
        return nodes, leaf.shape
    arr = as_float_array(leaf, path)
    return [graph.const(v) for v in arr.reshape(-1)], arr.shape


@dataclass
class Staged:
    """A function traced at some arguments: its graph and how leaves map to nodes.

    ``variables`` are the nodes that stand for the differentiated (or, for ``trace`` and
    ``compile``, all) argument leaves, in flat order; ``outputs`` the flat output nodes.
    """
    graph: Graph
    nested: bool
    argnums: tuple[int, ...]
    arg_trees: list = field(default_factory=list)     # treedef per argnum
    arg_shapes: list = field(default_factory=list)    # per argnum: list of leaf shapes
    variables: list[Node] = field(default_factory=list)
    actual: list = field(default_factory=list)        # nested: Node per variable; else value
    out_tree: Any = None
    out_shapes: list = field(default_factory=list)
    outputs: list[Node] = field(default_factory=list)

    def out_leaf_slices(self) -> list[slice]:
        return _slices(self.out_shapes)


def _slices(shapes) -> list[slice]:
    out, start = [], 0
    for s in shapes:
        n = int(np.prod(s, dtype=np.int64))
        out.append(slice(start, start + n))
        start += n
    return out


def _stage(f, args, argnums, ctx: _tracing, name: str) -> Staged:
    """Trace ``f(*args)`` with fresh variables for ``args[k]``, ``k in argnums``.

    Must run inside ``ctx`` (the graph open and on the trace stack). In a new graph the
    variables are the graph's inputs; in the caller's graph they are free variables,
    substituted by the caller's values once the derivative is built (:func:`_finish`).
    """
    graph = ctx.graph
    st = Staged(graph=graph, nested=not ctx.new, argnums=argnums)
    new_args = list(args)
    arg_names = _arg_names(f, len(args))
    for k in range(len(args)):
        if k not in argnums:    # constants too: f would see a matrix or a masked array
            for leaf, path in zip(*tree_flatten(args[k], arg_names[k])[::2]):
                refuse_array_subclass(leaf, path)
    for k in argnums:
        leaves, td, paths = tree_flatten(args[k], arg_names[k])
        var_leaves, shapes = [], []
        for leaf, path in zip(leaves, paths):
            if st.nested:
                nodes, shape = _leaf_nodes(graph, leaf, path)
                flat = np.empty(len(nodes), dtype=object)
                for i, nd in enumerate(nodes):
                    var = graph.variable(f"{path}#{i}" if shape else path)
                    flat[i] = Tracer(var)
                    st.variables.append(var)
                    st.actual.append(nd)
                var_leaf = flat[0] if shape == () else flat.reshape(shape).view(TracedArray)
            else:
                var_leaf = new_input_leaf(graph, leaf, path)
                arr = as_float_array(leaf, path)
                shape = arr.shape
                vs = [var_leaf] if shape == () else list(var_leaf.reshape(-1))
                st.variables.extend(v.node for v in vs)
                st.actual.extend(arr.reshape(-1))
            var_leaves.append(var_leaf)
            shapes.append(shape)
        st.arg_trees.append(td)
        st.arg_shapes.append(shapes)
        new_args[k] = tree_unflatten(td, var_leaves)
    out = f(*new_args)
    leaves, st.out_tree, paths = tree_flatten(out, "output")
    for leaf, path in zip(leaves, paths):
        nodes, shape = output_nodes(graph, leaf, f"{name} {path}")
        st.outputs.extend(nodes)
        st.out_shapes.append(shape)
    return st


class _tracing:  # noqa: N801 (used as a context manager, reads like a statement)
    """Context: a graph (new, or the caller's) open for tracing and on the trace stack."""

    def __init__(self, graph: Graph | None, name: str):
        self.new = graph is None
        self.graph = Graph(name) if graph is None else graph

    def __enter__(self) -> _tracing:
        self.graph._open += 1
        _stack().append(self.graph)
        return self

    def __exit__(self, exc_type, *exc):
        _stack().pop()
        self.graph._open -= 1
        if self.new and exc_type is None and _VERIFY:
            self.graph.verify()
        return False


def _finish(st: Staged, result_nodes: Sequence[Node]) -> list:
    """Values of ``result_nodes``: numbers at top level, tracers when nested."""
    if st.nested:
        mapping = dict(zip(st.variables, st.actual))
        return [Tracer(n) for n in st.graph.substitute(result_nodes, mapping)]
    env = dict(zip(st.variables, st.actual))
    return interp.evaluate(st.graph, result_nodes, env)


def _leaf(values: list, shape: tuple, nested: bool):
    if shape == ():
        v = values[0]
        return v if nested else float(v)     # a Python float, as compiled calls return
    if nested:
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr.reshape(shape).view(TracedArray)
    return np.array([float(v) for v in values], dtype=np.float64).reshape(shape)


def _unflatten_args(st: Staged, values: list, single: bool):
    """Per-argnum structures (tuple, or the single one) from flat per-variable values."""
    per_arg, i = [], 0
    for td, shapes in zip(st.arg_trees, st.arg_shapes):
        leaves = []
        for s in shapes:
            n = int(np.prod(s, dtype=np.int64))
            leaves.append(_leaf(values[i:i + n], s, st.nested))
            i += n
        per_arg.append(tree_unflatten(td, leaves))
    return per_arg[0] if single else tuple(per_arg)


def _unflatten_out(st: Staged, values: list):
    leaves = [_leaf(values[s], shape, st.nested)
              for s, shape in zip(st.out_leaf_slices(), st.out_shapes)]
    return tree_unflatten(st.out_tree, leaves)


def _scalar_output(st: Staged, fname: str, what: str) -> Node:
    if len(st.out_shapes) != 1 or st.out_shapes[0] != ():
        shapes = ", ".join(str(s) for s in st.out_shapes) or "nothing"
        raise TypeError(f"{what} needs {fname} to return one scalar, but it returned "
                        f"shape(s) {shapes}. Reduce the output (e.g. np.sum) or use "
                        "symad.jacobian / symad.vjp for vector outputs.")
    return st.outputs[0]


def _grad_nodes(st: Staged, y: Node) -> list[Node]:
    g = st.graph
    bars = vjp_nodes(g, [y], [g.const(1.0)], st.variables)
    return [b if b is not None else g.const(0.0) for b in bars]


# ---- public transformations ------------------------------------------------------------


def trace(f: Callable, *example_args) -> Graph:
    """Trace ``f`` at the example arguments into a :class:`Graph`.

    Every numeric leaf of the arguments becomes graph inputs (arrays one input per
    element); the outputs are the flattened results.

    >>> import numpy as np
    >>> g = trace(lambda x, y: np.sin(x) * y + np.sin(x), 1.0, 2.0)
    >>> sorted(g.count_ops().items())
    [('add', 1), ('input', 2), ('mul', 1), ('sin', 1)]
    """
    st = trace_call(f, example_args)
    return st.graph


def trace_call(f: Callable, args: Sequence, grad_argnums=None) -> Staged:
    """Trace ``f(*args)`` with every argument leaf an input of a new graph.

    With ``grad_argnums`` the outputs are the value followed by the gradient with respect
    to those arguments (``f`` must return a scalar). This is the entry the compiler uses.
    """
    name = _fn_name(f)
    argnums = tuple(range(len(args)))
    with _tracing(None, name) as ctx:
        graph = ctx.graph
        st = _stage(f, args, argnums, ctx, name)
        graph.in_tree, _, _ = tree_flatten(tuple(args))
        if grad_argnums is not None:
            nums = _normalize_argnums(grad_argnums, len(args), name)
            y = _scalar_output(st, name, "compile_grad")
            wrt = []
            offsets = _slices([sum(int(np.prod(s, dtype=np.int64)) for s in shp)
                               for shp in st.arg_shapes])
            for k in nums:
                wrt.extend(st.variables[offsets[k]])
            bars = vjp_nodes(graph, [y], [graph.const(1.0)], wrt)
            st.outputs = [y] + [b if b is not None else graph.const(0.0) for b in bars]
        graph.outputs = list(st.outputs)
        graph.out_tree = st.out_tree
    return st


def value_and_grad(f: Callable, argnums=0) -> Callable:
    """Return a function computing ``(f(*args), gradient)`` by reverse mode.

    Args:
        f: a function of numbers/arrays (or nested tuples/lists/dicts of them) that
            returns one scalar.
        argnums: which positional argument(s) to differentiate: an int, or a tuple for a
            tuple of gradients.

    Returns:
        A function returning ``(value, grad)``; ``grad`` has the structure of the
        differentiated argument(s).

    Raises:
        TypeError: if ``f`` does not return a scalar, or ``argnums`` does not fit.

    >>> import numpy as np
    >>> value_and_grad(lambda x, y: np.log(x) + x * y - np.sin(y), (0, 1))(2.0, 5.0)[1]
    (5.5, 1.7163378145367738)
    """
    name = _fn_name(f)
    argnums = check_argnums(argnums, name)

    @functools.wraps(f)
    def value_and_grad_f(*args):
        nums = _normalize_argnums(argnums, len(args), name)
        with _tracing(_graph_of(args), name) as ctx:
            st = _stage(f, args, nums, ctx, name)
            y = _scalar_output(st, name, "grad")
            vals = _finish(st, [y] + _grad_nodes(st, y))
        value = _leaf(vals[:1], (), st.nested)
        return value, _unflatten_args(st, vals[1:], isinstance(argnums, int))

    return value_and_grad_f


def grad(f: Callable, argnums=0) -> Callable:
    """Return a function computing the gradient of scalar ``f`` (see :func:`value_and_grad`).

    >>> import numpy as np
    >>> float(grad(lambda x: x ** 3)(2.0))
    12.0
    >>> float(grad(grad(lambda x: x ** 3))(2.0))
    12.0
    """
    vg = value_and_grad(f, argnums)

    @functools.wraps(f)
    def grad_f(*args):
        return vg(*args)[1]

    return grad_f


def jvp(f: Callable, primals: Sequence, tangents: Sequence):
    """Forward mode: ``(f(*primals), J(primals) @ tangents)`` without forming J.

    Args:
        primals: tuple (or list) of the arguments of ``f``.
        tangents: same structure and shapes as ``primals``.

    Returns:
        ``(out, tangent_out)``, each with the structure of ``f``'s output.

    >>> import numpy as np
    >>> out, t = jvp(lambda x: x * x, (3.0,), (1.0,))
    >>> float(out), float(t)
    (9.0, 6.0)
    """
    name = _fn_name(f)
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError("jvp(f, primals, tangents) takes primals and tangents as tuples "
                        "(or lists) of arguments, e.g. jvp(f, (x,), (v,))")
    primals, tangents = tuple(primals), tuple(tangents)
    if len(primals) != len(tangents):
        raise TypeError(f"jvp got {len(primals)} primals but {len(tangents)} tangents")
    with _tracing(_graph_of(primals, tangents), name) as ctx:
        graph = ctx.graph
        st = _stage(f, primals, tuple(range(len(primals))), ctx, name)
        tans = _tangent_nodes(st, tangents, "tangents")
        tan_out = jvp_nodes(graph, st.outputs, st.variables, tans)
        tan_nodes = [t if t is not None else graph.const(0.0) for t in tan_out]
        vals = _finish(st, list(st.outputs) + tan_nodes)
    n = len(st.outputs)
    return _unflatten_out(st, vals[:n]), _unflatten_out(st, vals[n:])


def _tangent_nodes(st: Staged, tangents, what: str) -> list[Node]:
    """Flat nodes of tangent values that match the staged arguments' structure."""
    nodes = []
    for k, (td, shapes) in enumerate(zip(st.arg_trees, st.arg_shapes)):
        leaves, ttd, paths = tree_flatten(tangents[k], f"{what}[{k}]")
        if ttd != td:
            raise TypeError(f"{what}[{k}] has a different structure than primal {k}")
        for leaf, shape, path in zip(leaves, shapes, paths):
            leaf_nodes, tshape = _leaf_nodes(st.graph, leaf, path)
            if tuple(tshape) != tuple(shape):
                raise ValueError(f"{path} has shape {tuple(tshape)}, but the primal has "
                                 f"shape {tuple(shape)}")
            nodes.extend(leaf_nodes)
    return nodes


def vjp(f: Callable, *primals):
    """Reverse mode for any output: ``(f(*primals), vjp_fn)``.

    ``vjp_fn(cotangent)`` takes a cotangent with the structure of the output and returns
    a tuple with one cotangent per primal (``Jᵀ @ cotangent``).

    >>> import numpy as np
    >>> out, vjp_fn = vjp(lambda x: x * np.array([1.0, 2.0]), 3.0)
    >>> [float(c) for c in vjp_fn(np.array([1.0, 1.0]))]
    [3.0]
    """
    name = _fn_name(f)
    argnums = tuple(range(len(primals)))
    with _tracing(_graph_of(primals), name) as ctx:
        graph = ctx.graph
        st = _stage(f, primals, argnums, ctx, name)
        out_vals = _finish(st, st.outputs)
        if not st.nested:
            ct_vars = [graph.variable(f"ct{i}") for i in range(len(st.outputs))]
            bars = vjp_nodes(graph, st.outputs, ct_vars, st.variables)
            bars = [b if b is not None else graph.const(0.0) for b in bars]
    out = _unflatten_out(st, out_vals)

    def vjp_fn(cotangent):
        leaves, td, paths = tree_flatten(cotangent, "cotangent")
        if td != st.out_tree:
            raise TypeError("the cotangent must have the structure of f's output")
        cts = []
        for leaf, shape, path in zip(leaves, st.out_shapes, paths):
            if st.nested:
                nodes, cshape = _leaf_nodes(graph, leaf, path)
                cts.extend(nodes)
            else:
                arr = as_float_array(leaf, path)
                cshape = arr.shape
                cts.extend(arr.reshape(-1))
            if tuple(cshape) != tuple(shape):
                raise ValueError(f"{path} has shape {tuple(cshape)}, but f's output has "
                                 f"shape {tuple(shape)}")
        if st.nested:
            with _tracing(graph, name):
                nodes = vjp_nodes(graph, st.outputs, cts, st.variables)
                nodes = [b if b is not None else graph.const(0.0) for b in nodes]
                vals = _finish(st, nodes)
        else:
            env = dict(zip(st.variables, st.actual))
            env.update(zip(ct_vars, cts))
            vals = interp.evaluate(graph, bars, env)
        return _unflatten_args(st, vals, single=False)

    return out, vjp_fn


def jacobian(f: Callable, argnums=0, mode: str = "auto") -> Callable:
    """Return a function computing the Jacobian of ``f``.

    Args:
        argnums: int or tuple of ints, as in :func:`grad`.
        mode: ``"fwd"`` (one forward pass per input element), ``"rev"`` (one reverse
            pass per output element) or ``"auto"``: forward when the inputs have fewer
            elements than the outputs, reverse otherwise — the fewer passes win.

    Returns:
        A function returning, for each output leaf of shape ``so`` and each input leaf of
        shape ``si``, an array of shape ``so + si`` (output structure outside, argument
        structure inside, as in JAX).

    >>> import numpy as np
    >>> jacobian(lambda x: np.array([x[0] * x[1], x[0]]))(np.array([2.0, 3.0])).tolist()
    [[3.0, 2.0], [1.0, 0.0]]
    """
    if mode not in ("auto", "fwd", "rev"):
        raise OptionError(f"mode must be 'auto', 'fwd' or 'rev', not {mode!r}")
    name = _fn_name(f)
    argnums = check_argnums(argnums, name)

    @functools.wraps(f)
    def jacobian_f(*args):
        nums = _normalize_argnums(argnums, len(args), name)
        with _tracing(_graph_of(args), name) as ctx:
            st = _stage(f, args, nums, ctx, name)
            rows = jacobian_nodes(ctx.graph, st.outputs, st.variables, mode)
            flat = [n for row in rows for n in row]
            vals = _finish(st, flat)
        return _assemble_jacobian(st, vals, isinstance(argnums, int))

    return jacobian_f


def jacobian_nodes(graph: Graph, outputs: Sequence[Node], wrt: Sequence[Node],
                   mode: str = "auto") -> list[list[Node]]:
    """Jacobian entries as nodes, ``rows[i][j] = d outputs[i] / d wrt[j]``."""
    m, n = len(outputs), len(wrt)
    if mode == "auto":
        mode = "fwd" if n < m else "rev"
    zero = graph.const(0.0)
    one = graph.const(1.0)
    rows = [[zero] * n for _ in range(m)]
    if mode == "rev":
        for i, y in enumerate(outputs):
            bars = vjp_nodes(graph, [y], [one], wrt)
            rows[i] = [b if b is not None else zero for b in bars]
    else:
        for j in range(n):
            seed: list[Node | None] = [None] * n
            seed[j] = one
            tans = jvp_nodes(graph, outputs, wrt, seed)
            for i, t in enumerate(tans):
                if t is not None:
                    rows[i][j] = t
    return rows


def _assemble_jacobian(st: Staged, vals: list, single: bool):
    n = len(st.variables)
    out_leaves = []
    for sl, oshape in zip(st.out_leaf_slices(), st.out_shapes):
        per_arg, col = [], 0
        for td, shapes in zip(st.arg_trees, st.arg_shapes):
            in_leaves = []
            for ishape in shapes:
                size = int(np.prod(ishape, dtype=np.int64))
                block = [vals[i * n + j] for i in range(sl.start, sl.stop)
                         for j in range(col, col + size)]
                in_leaves.append(_leaf(block, tuple(oshape) + tuple(ishape), st.nested))
                col += size
            per_arg.append(tree_unflatten(td, in_leaves))
        out_leaves.append(per_arg[0] if single else tuple(per_arg))
    return tree_unflatten(st.out_tree, out_leaves)


def hessian(f: Callable, argnums=0, mode: str = "fwd") -> Callable:
    """Return a function computing the Hessian of scalar ``f``.

    The default ``mode="fwd"`` is forward-over-reverse: one forward pass over the gradient
    graph per input element, which builds fewer nodes than ``"rev"`` (reverse-over-reverse,
    one reverse pass per gradient element) because a tangent pass touches only the nodes
    that depend on its input element. Both give the same numbers.

    >>> import numpy as np
    >>> hessian(lambda x: x[0] ** 2 * x[1])(np.array([1.0, 2.0])).tolist()
    [[4.0, 2.0], [2.0, 0.0]]
    """
    if mode not in ("fwd", "rev"):
        raise OptionError(f"mode must be 'fwd' (forward-over-reverse) or 'rev', "
                          f"not {mode!r}")
    return jacobian(grad(f, argnums), argnums, mode)


def hvp(f: Callable, x, v):
    """Hessian-vector product ``H(x) @ v`` of scalar ``f(x)``, without forming ``H``.

    Forward-over-reverse: the directional derivative of the gradient along ``v``.

    >>> import numpy as np
    >>> hvp(lambda x: np.sum(x ** 3), np.array([1.0, 2.0]), np.array([1.0, 1.0])).tolist()
    [6.0, 12.0]
    """
    return jvp(grad(f), (x,), (v,))[1]


def where(cond, a, b):
    """Traceable ``a if cond else b``, elementwise (see :func:`symad.trace.where`)."""
    from .trace import where as _where
    return _where(cond, a, b)


def maximum(a, b):
    """Elementwise maximum; NaN propagates as in numpy; ties split the gradient evenly.

    Works on numbers, tracers and arrays, also plain object arrays of tracers such as
    ``np.array([x, y])``, where ``np.maximum`` itself would need ``bool()`` of a tracer.

    >>> maximum(1.0, 2.0)
    2.0
    """
    return _elementwise("maximum", a, b)


def minimum(a, b):
    """Elementwise minimum; NaN propagates as in numpy; ties split the gradient evenly."""
    return _elementwise("minimum", a, b)


def _elementwise(op, *args):
    from .trace import _ELEMENTWISE, _plain, _wrap, apply
    if any(isinstance(a, np.ndarray) for a in args):
        return _wrap(_ELEMENTWISE[op](*(_plain(a) for a in args)))
    return apply(op, args)


def logistic(x):
    """The logistic sigmoid ``1 / (1 + exp(-x))``, built from table ops."""
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    """``log(1 + exp(x))`` without overflow: ``max(x, 0) + log1p(exp(-|x|))``."""
    return maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


__all__ = ["Staged", "trace", "trace_call", "value_and_grad", "grad", "jvp", "vjp",
           "jacobian", "jacobian_nodes", "hessian", "hvp", "where", "maximum", "minimum",
           "logistic", "softplus", "SymadError"]
