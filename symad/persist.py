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

import collections
import math
from collections.abc import Sequence

import numpy as np

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


# ---- compiled functions: their pickled state, checked, and the rebuilt function --------
# (symad.compiled pickles a CompiledFunction as options, its function by reference when it
# can, and one graph table per specialization; everything read back is checked here.)

# ---- checks of pickled signatures (tampered bytes must raise SymadError, never crash) ----
# numpy's limit on dimensions, and a bound on any one extent: an array that large never
# fits a graph (one node per element), so only a tampered pickle names one.
MAX_NDIM = 64
MAX_EXTENT = 2**31 - 1
# Keys are hashed and compared by CPython recursively (no recursion guard in tuple
# hashing): a tampered key nested deeper than any real argument list could crash it.
MAX_TREE_DEPTH = 1_000
# Pickling itself recurses on the structures (two nested tuples per level), so a function
# whose arguments or results nest deeper than this does not pickle (a clear SymadError).
MAX_PICKLED_DEPTH = 256


def tree_depth(treedef) -> int:
    """Levels of a TreeDef (see symad.tree), without recursion."""
    depth, stack = 0, [(treedef, 0)]
    while stack:
        td, d = stack.pop()
        depth = max(depth, d)
        if td[0] in ("tuple", "list"):
            stack.extend((c, d + 1) for c in td[1])
        elif td[0] == "dict":
            stack.extend((c, d + 1) for c in td[2])
    return depth


def unpickle_error(fname: str, what: str) -> SymadError:
    return SymadError(f"cannot unpickle {fname}: {what}. The pickle is damaged or was not "
                      "written by symad; pickle the compiled function again.")


def check_treedef(treedef, fname: str, what: str) -> None:
    """A well-formed TreeDef (see symad.tree), checked without recursion."""
    stack = [(treedef, 0)]
    while stack:
        td, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise unpickle_error(fname, f"the {what} is nested over {MAX_TREE_DEPTH} "
                                  "levels deep")
        ok = isinstance(td, tuple) and len(td) >= 1
        if ok and td[0] in ("leaf", "none"):
            ok = len(td) == 1
        elif ok and td[0] in ("tuple", "list"):
            ok = len(td) == 2 and isinstance(td[1], tuple)
        elif ok and td[0] == "dict":
            ok = len(td) == 3 and isinstance(td[1], tuple) and isinstance(td[2], tuple) \
                and len(td[1]) == len(td[2])
            if ok:
                try:
                    hash(td[1])
                except TypeError:
                    ok = False
        else:
            ok = False
        if not ok:
            raise unpickle_error(fname, f"malformed {what} (at {td!r:.80})")
        if td[0] not in ("leaf", "none"):
            stack.extend((child, depth + 1) for child in td[-1])


def count_leaves(treedef) -> int:
    from .tree import num_leaves
    return num_leaves(treedef)


def checked_shapes(shapes, fname: str, what: str) -> tuple:
    if not isinstance(shapes, (tuple, list)):
        raise unpickle_error(fname, f"the {what} shapes are not a sequence")
    for shp in shapes:
        if not (isinstance(shp, tuple) and len(shp) <= MAX_NDIM and
                all(type(d) is int and 0 <= d <= MAX_EXTENT for d in shp)):
            raise unpickle_error(fname, f"bad {what} shape {shp!r:.80}")
    return tuple(shapes)


def checked_key(state, fname: str) -> tuple:
    """A specialization's pickled key ``(argument tree, leaf shapes)``, checked against
    its node table's inputs before anything is allocated for those shapes."""
    if not isinstance(state, dict):
        raise unpickle_error(fname, "a specialization's state is not a dict")
    missing = {"key", "table", "py_spec", "grad", "out"} - set(state)
    if missing:
        raise unpickle_error(fname, f"a specialization's state lacks {sorted(missing)}")
    key = state["key"]
    if not (isinstance(key, tuple) and len(key) == 2):
        raise unpickle_error(fname, "a specialization key is not (arguments, shapes)")
    treedef, shapes = key
    check_treedef(treedef, fname, "argument structure")
    if treedef[0] != "tuple":
        raise unpickle_error(fname, "the arguments are not a tuple")
    shapes = checked_shapes(shapes, fname, "argument")
    if count_leaves(treedef) != len(shapes):
        raise unpickle_error(fname, f"the argument structure has {count_leaves(treedef)} "
                              f"leaves but {len(shapes)} shapes")
    table = state["table"]
    inputs = table.get("inputs") if isinstance(table, dict) else None
    n_in = sum(math.prod(s) for s in shapes)
    if not isinstance(inputs, (list, tuple)) or len(inputs) != n_in:
        raise SymadError(f"cannot unpickle {fname}: the graph has "
                         f"{len(inputs) if isinstance(inputs, (list, tuple)) else 'no'} "
                         f"inputs, its signature needs {n_in}")
    return (treedef, shapes)


# 2: restore_compiled lives in symad.compiled, and ArrayOut in symad.codegen.py_entry
PICKLE_FORMAT = 2
RESTORED: collections.OrderedDict = collections.OrderedDict()   # token -> CompiledFunction
RESTORED_MAX = 32


class Unavailable:
    """Stands in for the Python function of an unpickled CompiledFunction that came
    without it (a lambda or a local function cannot be pickled by reference)."""

    def __init__(self, name: str, reason: str, signatures: list):
        self.__name__ = self.__qualname__ = name
        self.reason = reason
        self.signatures = signatures

    def error(self, key) -> SymadError:
        shapes = [list(k[1]) for k in self.signatures]
        return SymadError(
            f"{self.__name__} was unpickled without its Python function ({self.reason}): "
            f"it runs the argument shapes it was compiled for ({shapes}) but cannot trace "
            f"new ones (asked for {list(key[1])}). Define the function at module level in "
            "an importable module, or call it once with these shapes before pickling.")

    def __call__(self, *args):
        raise self.error(((), tuple(np.shape(a) for a in args)))


def pickle_function(f) -> bytes | None:
    """``f`` pickled by reference when possible (importable functions), else None."""
    if isinstance(f, Unavailable):
        return None
    import pickle
    try:
        return pickle.dumps(f)
    except Exception:  # noqa: BLE001 (lambdas, closures, local functions: pickle as data)
        return None
