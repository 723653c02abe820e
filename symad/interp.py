"""The numpy reference interpreter (trace -> graph -> ad -> **interp** | lower -> jit).

Evaluates the live part of a graph node by node with each op's numpy function (and
numpy indexing for ``gather`` and ``sum``). Input values may be scalars or arrays of any
common (broadcastable) shape, so one call evaluates a whole batch of points. This is the
semantics every compiled path is tested against, and the path uncompiled transformations
(``symad.grad``) use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .errors import SymadError
from .graph import Graph, Node
from .ops import OPS


def evaluate(graph: Graph, outputs: Sequence[Node], env: Mapping[Node, object]) -> list:
    """Values of ``outputs`` given values for the input/variable nodes in ``env``.

    Returns one float64 numpy value per output: a scalar node's is 0-d or batch-shaped,
    a vector node's has its elements on the last axis (``batch_shape + (size,)``).
    """
    values: dict[Node, object] = {}
    with np.errstate(all="ignore"):
        for n in graph.live(outputs):
            op = n.op
            if op == "const":
                v = n.attrs[0]
                values[n] = np.float64(v) if type(v) is float else v.array
            elif op == "input":
                try:
                    values[n] = np.asarray(env[n], dtype=np.float64)
                except KeyError:
                    raise SymadError(f"no value given for input {n.line()}") from None
            elif op == "gather" or op == "sum":
                x = _elements(values, n.args[0])
                if op == "gather":
                    out = x[..., n.attrs[0].index]
                else:
                    out = np.full(x.shape[:-1] + (n.size,), -0.0)
                    np.add.at(out, (..., n.attrs[0].index), x)
                values[n] = out[..., 0] if n.size == 1 else out
            elif n.size == 1:
                values[n] = OPS[op].numpy(*(values[a] for a in n.args), *n.attrs)
            else:
                values[n] = OPS[op].numpy(*(_elements(values, a) for a in n.args), *n.attrs)
    return [np.asarray(values[o], dtype=np.float64) for o in outputs]


def _elements(values: dict, node: Node) -> np.ndarray:
    """``node``'s value with its elements on the last axis (a scalar's: one)."""
    v = np.asarray(values[node])
    return v[..., None] if node.size == 1 else v


def evaluate_graph(graph: Graph, *input_values) -> list:
    """Evaluate ``graph.outputs`` with one value per ``graph.inputs`` (flat order)."""
    if len(input_values) != len(graph.inputs):
        raise TypeError(f"graph {graph.name!r} has {len(graph.inputs)} inputs, "
                        f"got {len(input_values)} values")
    return evaluate(graph, graph.outputs, dict(zip(graph.inputs, input_values)))
