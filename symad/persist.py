"""Graphs as plain data, for pickling compiled functions (never machine code).

A graph's live part is written as a compact node table: one ``(op, operand indices,
attrs)`` row per node in topological order, the indices of the graph inputs and of the
outputs. Rebuilding interns the rows as they are (no rewrite rule runs again), so the
rebuilt graph has the same nodes in the same order and lowers to the same LLVM IR up to
value names: compiled with the same options it gives the same bits.

Tables come from untrusted bytes as far as this module is concerned: every row is
checked (known op, arity, operands precede users, attribute types) and a malformed table
raises :class:`symad.SymadError`, never crashes.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import SymadError
from .graph import Graph, Node
from .ops import OPS

TABLE_FORMAT = 1


def graph_table(graph: Graph, outputs: Sequence[Node]) -> dict:
    """The live part of ``graph`` for ``outputs`` (plus every input) as plain data."""
    keep = {n.id for n in graph.live(outputs)} | {n.id for n in graph.inputs}
    order = sorted(keep)
    index = {i: k for k, i in enumerate(order)}
    rows = []
    for i in order:
        n = graph.nodes[i]
        rows.append((n.op, tuple(index[a.id] for a in n.args), tuple(n.attrs)))
    return {"format": TABLE_FORMAT, "name": graph.name, "rows": rows,
            "inputs": [index[n.id] for n in graph.inputs],
            "outputs": [index[o.id] for o in outputs]}


def _bad(msg: str) -> SymadError:
    return SymadError(f"cannot rebuild a pickled symad graph: {msg}")


# The tracer refuses integer exponents beyond 32 bits (symad.trace.power); a larger one
# only comes from tampered bytes, and lowering it would emit a multiplication per bit.
_POWI_MAX = 2**31 - 1


def _check_attrs(k: int, op: str, attrs: tuple) -> None:
    """Every op takes no attributes except powi (one int exponent)."""
    if op == "powi":
        if not (len(attrs) == 1 and type(attrs[0]) is int and abs(attrs[0]) <= _POWI_MAX):
            raise _bad(f"row {k}: powi needs one integer exponent within 32 bits, got "
                       f"{_describe(attrs)}")
    elif attrs:
        raise _bad(f"row {k}: {op} takes no attributes, got {_describe(attrs)}")


def _describe(attrs: tuple) -> str:
    # repr of a huge int raises (Python's digit limit): name its size instead
    return ", ".join(f"an int of {a.bit_length()} bits" if type(a) is int and
                     a.bit_length() > 64 else f"{a!r:.40}" for a in attrs) or "none"


def graph_from_table(table: dict) -> tuple[Graph, list[Node]]:
    """Rebuild ``(graph, outputs)`` from :func:`graph_table`'s data (validated)."""
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise _bad("unknown table format (pickled by another symad version?)")
    name, rows = table.get("name", "f"), table.get("rows")
    if not isinstance(name, str) or not isinstance(rows, (list, tuple)):
        raise _bad("the table needs a name and a list of rows")
    graph = Graph(name)
    nodes: list[Node] = []
    for k, row in enumerate(rows):
        if not (isinstance(row, tuple) and len(row) == 3):
            raise _bad(f"row {k} is not (op, args, attrs)")
        op, args, attrs = row
        if not isinstance(attrs, tuple) or not isinstance(args, tuple):
            raise _bad(f"row {k} has malformed operands or attributes")
        if op == "const":
            if len(attrs) != 1 or not isinstance(attrs[0], float) or args:
                raise _bad(f"row {k}: a const needs one float")
            node = graph.const(attrs[0])
        elif op == "input":
            if len(attrs) != 1 or not isinstance(attrs[0], str) or args:
                raise _bad(f"row {k}: an input needs one name")
            node = graph.variable(attrs[0])
        else:
            spec = OPS.get(op)
            if spec is None:
                raise _bad(f"row {k}: unknown op {op!r}")
            if len(args) != spec.arity:
                raise _bad(f"row {k}: {op} takes {spec.arity} operands, got {len(args)}")
            if not all(type(a) is int and 0 <= a < len(nodes) for a in args):
                raise _bad(f"row {k}: operands must precede their user")
            _check_attrs(k, op, attrs)
            operands = tuple(nodes[a] for a in args)
            node = graph._intern((op, operands, attrs), op, operands, attrs)
        nodes.append(node)
    inputs, outs = table.get("inputs"), table.get("outputs")
    if not (isinstance(inputs, (list, tuple)) and isinstance(outs, (list, tuple)) and
            all(type(i) is int and 0 <= i < len(nodes) for i in (*inputs, *outs))):
        raise _bad("input or output index out of range")
    graph.inputs = [nodes[i] for i in inputs]
    outputs = [nodes[i] for i in outs]
    if any(n.op != "input" for n in graph.inputs):
        raise _bad("an input index names a non-input row")
    # lowering reads every input row from its slot in graph.inputs: exactly one each
    if len({n.id for n in graph.inputs}) != len(graph.inputs) or \
            sum(1 for n in nodes if n.op == "input") != len(graph.inputs):
        raise _bad("every input row must be listed once among the inputs")
    graph.outputs = outputs
    return graph, outputs
