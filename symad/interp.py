"""The numpy reference interpreter (trace -> graph -> ad -> **interp** | lower -> jit).

Evaluates the live part of a graph node by node with each op's numpy function. Input
values may be scalars or arrays of any common (broadcastable) shape, so one call
evaluates a whole batch of points. This is the semantics every compiled path is tested
against, and the path uncompiled transformations (``symad.grad``) use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import SymadError
from .graph import Graph, Node
from .ops import OPS


def evaluate(graph: Graph, outputs: Sequence[Node], env: Mapping[Node, object]) -> list:
    """Values of ``outputs`` given values for the input/variable nodes in ``env``.

    Returns one float64 numpy value (0-d or batch-shaped array) per output.
    """
    values: dict[Node, object] = {}
    with np.errstate(all="ignore"):
        for n in graph.live(outputs):
            op = n.op
            if op == "const":
                values[n] = np.float64(n.attrs[0])
            elif op == "input":
                try:
                    values[n] = np.asarray(env[n], dtype=np.float64)
                except KeyError:
                    raise SymadError(f"no value given for input {n.line()}") from None
            else:
                values[n] = OPS[op].numpy(*(values[a] for a in n.args), *n.attrs)
    return [np.asarray(values[o], dtype=np.float64) for o in outputs]


def evaluate_graph(graph: Graph, *input_values) -> list:
    """Evaluate ``graph.outputs`` with one value per ``graph.inputs`` (flat order)."""
    if len(input_values) != len(graph.inputs):
        raise TypeError(f"graph {graph.name!r} has {len(graph.inputs)} inputs, "
                        f"got {len(input_values)} values")
    return evaluate(graph, graph.outputs, dict(zip(graph.inputs, input_values)))
