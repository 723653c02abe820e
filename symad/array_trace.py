"""Tracing a call at the array level (trace -> **array graph** -> ad -> lower -> jit).

The entry to :mod:`symad.arrays`' tracer: :func:`trace_call` gives the function array-level
arguments (:class:`~symad.arrays.AArray`) and returns the one shaped graph of what it
computes (:class:`ArrayTrace`); :func:`evaluate` is its numpy reference value. Importing
this module installs the numpy functions of :mod:`symad.array_functions` into the tracer.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np

from . import array_functions, arrays, interp
from .arrays import AArray, Unsupported
from .graph import Graph, Node
from .tree import tree_flatten, tree_unflatten

arrays.install(array_functions.FUNCTIONS, array_functions.ufunc_method,
               {"vecdot": array_functions.vecdot} if hasattr(np, "vecdot") else {})


class ArrayTrace:
    """The traced program: graph, flat output nodes, and the pytree facts compile needs."""

    def __init__(self, graph, inputs, outputs, out_tree, out_shapes):
        self.graph = graph
        self.inputs = inputs            # one node per argument leaf
        self.outputs = outputs          # one node per output leaf
        self.out_tree = out_tree
        self.out_shapes = out_shapes

    def elements(self, outputs: Sequence[Node]) -> int:
        """Elements computed: the size of the scalar graph this stands for."""
        return sum(n.size for n in self.graph.live(outputs) if n.args)


def trace_call(f, args: tuple, shapes: Sequence[tuple]) -> ArrayTrace:
    """Trace ``f(*args)`` with each argument leaf an ``input`` node; raises Unsupported."""
    graph = Graph(getattr(f, "__name__", "f"))
    _, treedef, _ = tree_flatten(tuple(args), "")
    leaves = []
    for shape in shapes:
        if math.prod(shape) == 0:
            raise Unsupported("an empty array")     # every loop runs at least once
        leaves.append(AArray(graph, graph.input(size=math.prod(shape)), shape))
    inputs = list(graph.inputs)
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
            outputs.append(graph.const(arr.reshape(-1)) if arr.size else graph.const(0.0))
            out_shapes.append(arr.shape)
            if arr.size == 0:
                raise Unsupported("an empty output")
        else:
            raise Unsupported(f"an output of type {type(leaf).__name__}")
    return ArrayTrace(graph, inputs, outputs, out_tree, out_shapes)


def evaluate(graph: Graph, outputs: Sequence[Node], flat_inputs) -> list[np.ndarray]:
    """The numpy reference value (flat) of each output node, given the argument elements
    in ``graph.inputs`` order (:func:`symad.interp.evaluate` over their slices)."""
    x = np.asarray(flat_inputs, dtype=np.float64)
    bounds = np.cumsum([0] + [n.size for n in graph.inputs])
    env = {n: x[lo] if n.size == 1 else x[lo:hi]
           for n, lo, hi in zip(graph.inputs, bounds[:-1], bounds[1:])}
    return [np.array(v).reshape(-1) for v in interp.evaluate(graph, outputs, env)]
