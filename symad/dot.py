"""Graph pictures: a graph as Graphviz dot text (trace -> **graph** -> pictures).

``to_dot`` needs nothing beyond the standard library. ``render`` runs the ``dot`` binary
when it is installed; ``draw`` draws with matplotlib (a layered layout computed here) for
notebooks on machines without Graphviz.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from .graph import Graph, Node
from .ops import OPS

_FORWARD_COLOR = "lightblue"
_ADJOINT_COLOR = "lightsalmon"
_INPUT_COLOR = "palegreen"
_CONST_COLOR = "lightgrey"
# ops whose operand order matters: their edges carry the operand's position
# (the elementwise rows: a structural row has one operand and its table)
_ORDERED_OPS = frozenset(name for name, row in OPS.items()
                         if row.arity > 1 and not row.commutative and not row.structural)


def _label(n: Node) -> str:
    if n.op == "const":
        return f"{n.attrs[0]:.6g}"
    if n.op == "input":
        return str(n.attrs[0])
    extra = "".join(f" {a}" for a in n.attrs)
    return f"%{n.id} {n.op}{extra}"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(graph: Graph, outputs: Sequence[Node] | None = None, split_at: int | None = None,
           output_names: Sequence[str] | None = None, rankdir: str = "BT") -> str:
    """Graphviz dot text for the live part of ``graph``.

    Args:
        graph: the graph.
        outputs: nodes to draw with their dependencies; default ``graph.outputs``.
        split_at: nodes with ``id >= split_at`` are drawn in the adjoint colour (pass
            ``len(forward_graph.nodes)`` to tell an extension's adjoint nodes apart).
        output_names: labels for the outputs (default ``out0``, ``out1``, ...).
        rankdir: Graphviz direction; ``"BT"`` puts inputs at the bottom.

    Returns:
        The dot source: one node statement per live node, one edge per operand (edges
        into non-commutative ops are labelled with the operand position).

    >>> import symad
    >>> print(to_dot(symad.trace(lambda x: x * x, 1.0)))  # doctest: +ELLIPSIS
    digraph "<lambda>" {
    ...
      n0 -> n1;
    ...
    """
    outs = list(graph.outputs if outputs is None else outputs)
    names = list(output_names) if output_names is not None else \
        [f"out{i}" for i in range(len(outs))]
    lines = [f"digraph {_quote(graph.name)} {{", f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=11, style=filled];']
    for n in graph.live(outs):
        if n.op == "input":
            attrs = f"shape=box, fillcolor={_INPUT_COLOR}"
        elif n.op == "const":
            attrs = f"shape=plaintext, fillcolor={_CONST_COLOR}"
        else:
            adjoint = split_at is not None and n.id >= split_at
            attrs = f"shape=ellipse, fillcolor={_ADJOINT_COLOR if adjoint else _FORWARD_COLOR}"
        lines.append(f"  n{n.id} [label={_quote(_label(n))}, {attrs}];")
        for i, a in enumerate(n.args):
            edge = f" [label={i}]" if n.op in _ORDERED_OPS else ""
            lines.append(f"  n{a.id} -> n{n.id}{edge};")
    for i, (o, name) in enumerate(zip(outs, names)):
        lines.append(f"  o{i} [label={_quote(name)}, shape=box, style=rounded];")
        lines.append(f"  n{o.id} -> o{i} [style=dashed];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def has_graphviz() -> bool:
    """Whether the Graphviz ``dot`` program is installed."""
    return shutil.which("dot") is not None


def render(graph: Graph, path: str, fmt: str = "svg", **kwargs) -> str:
    """Write the picture of :func:`to_dot` to ``path`` with Graphviz; returns ``path``.

    Raises:
        RuntimeError: if the ``dot`` program is not installed (use :func:`draw` instead).
    """
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError("Graphviz's dot program is not installed; install graphviz, or "
                           "draw the graph with symad.dot.draw (matplotlib)")
    subprocess.run([exe, f"-T{fmt}", "-o", path], input=to_dot(graph, **kwargs).encode(),
                   check=True)
    return path


def _layers(nodes: list[Node]) -> dict[Node, int]:
    # Longest distance from a leaf, one pass in topological order.
    depth: dict[Node, int] = {}
    for n in nodes:
        depth[n] = 1 + max((depth[a] for a in n.args), default=-1)
    return depth


def draw(graph: Graph, outputs: Sequence[Node] | None = None, split_at: int | None = None,
         ax=None, hide_consts: bool = False):
    """Draw the live graph with matplotlib (layers by depth, inputs at the bottom).

    A fallback picture where Graphviz is missing; returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    outs = list(graph.outputs if outputs is None else outputs)
    nodes = [n for n in graph.live(outs) if not (hide_consts and n.op == "const")]
    shown = set(nodes)
    depth = _layers(nodes)
    rows: dict[int, list[Node]] = {}
    for n in nodes:
        rows.setdefault(depth[n], []).append(n)
    pos = {}
    for d, row in rows.items():
        for i, n in enumerate(row):
            pos[n] = (i - (len(row) - 1) / 2, d)
    if ax is None:
        width = max(len(r) for r in rows.values())
        _, ax = plt.subplots(figsize=(max(4, 1.6 * width), max(3, 1.1 * len(rows))))
    for n in nodes:
        for a in n.args:
            if a in shown:
                ax.annotate("", xy=pos[n], xytext=pos[a],
                            arrowprops=dict(arrowstyle="->", color="grey", shrinkA=12,
                                            shrinkB=12))
    for n in nodes:
        if n.op == "input":
            color = _INPUT_COLOR
        elif n.op == "const":
            color = _CONST_COLOR
        else:
            color = _ADJOINT_COLOR if split_at is not None and n.id >= split_at \
                else _FORWARD_COLOR
        ax.text(*pos[n], _label(n), ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", facecolor=color, edgecolor="grey"))
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    ax.set_ylim(-0.7, max(rows) + 0.7)
    ax.axis("off")
    return ax
