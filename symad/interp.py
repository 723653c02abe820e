"""The numpy reference interpreter (trace -> graph -> ad -> **interp** | lower -> jit).

Evaluates the live part of a graph node by node with each op's numpy function (a
structural row's, ``gather`` and ``sum``, on the elements axis). Input values may be
scalars or arrays of any common (broadcastable) shape, so one call evaluates a whole
batch of points. This is the semantics every compiled path is tested against, and the
path uncompiled transformations (``symad.grad``) use.
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
            else:
                spec = OPS[op]
                if n.size == 1 and not spec.structural:
                    values[n] = spec.numpy(*(values[a] for a in n.args), *n.attrs)
                    continue
                # elements on the last axis (a structural row's numpy reads them there)
                out = spec.numpy(*(_elements(values, a) for a in n.args), *n.attrs)
                values[n] = out[..., 0] if n.size == 1 else out
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
