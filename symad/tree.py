"""Nested data structures (pytrees) of numbers and arrays, flattened to leaves and back.

Arguments and results of traced functions may be nested tuples, lists and dicts of
numbers and numpy arrays; gradients, tangents and cotangents come back in the same
structure. A ``TreeDef`` is hashable, so it can key compile caches.
"""

from __future__ import annotations

from typing import Any

# A TreeDef is ("leaf",), ("none",), ("tuple", children), ("list", children) or
# ("dict", keys, children): plain tuples, hashable and comparable.
LEAF = ("leaf",)
NONE = ("none",)


def tree_flatten(tree: Any, path: str = "") -> tuple[list, tuple, list[str]]:
    """Return ``(leaves, treedef, paths)``; each path names the leaf for error messages."""
    leaves: list = []
    paths: list[str] = []
    # Explicit stack: a deep nest must not hit the recursion limit.
    out_stack: list = []
    work: list = [("visit", tree, path)]
    while work:
        kind, node, p = work.pop()
        if kind == "build":
            tag, extra, n = node
            children = [out_stack.pop() for _ in range(n)][::-1]
            out_stack.append((tag, tuple(children)) if extra is None
                             else (tag, extra, tuple(children)))
            continue
        if node is None:
            out_stack.append(NONE)
        elif isinstance(node, tuple) and not hasattr(node, "_fields"):
            work.append(("build", ("tuple", None, len(node)), p))
            for i in range(len(node) - 1, -1, -1):
                work.append(("visit", node[i], f"{p}[{i}]"))
        elif isinstance(node, list):
            work.append(("build", ("list", None, len(node)), p))
            for i in range(len(node) - 1, -1, -1):
                work.append(("visit", node[i], f"{p}[{i}]"))
        elif isinstance(node, dict):
            keys = tuple(node.keys())
            work.append(("build", ("dict", keys, len(keys)), p))
            for k in reversed(keys):
                work.append(("visit", node[k], f"{p}[{k!r}]"))
        else:
            leaves.append(node)
            paths.append(p)
            out_stack.append(LEAF)
    return leaves, out_stack[0], paths


def tree_unflatten(treedef: tuple, leaves: list) -> Any:
    """Inverse of :func:`tree_flatten`."""
    it = iter(leaves)
    # Post-order rebuild with an explicit stack.
    result_stack: list = []
    work: list = [("visit", treedef)]
    while work:
        kind, td = work.pop()
        if kind == "build":
            tag = td[0]
            children = td[-1]
            vals = [result_stack.pop() for _ in range(len(children))][::-1]
            if tag == "tuple":
                result_stack.append(tuple(vals))
            elif tag == "list":
                result_stack.append(vals)
            else:
                result_stack.append(dict(zip(td[1], vals)))
            continue
        tag = td[0]
        if tag == "leaf":
            result_stack.append(next(it))
        elif tag == "none":
            result_stack.append(None)
        else:
            work.append(("build", td))
            for child in reversed(td[-1]):
                work.append(("visit", child))
    return result_stack[0]


def tree_map(fn, tree: Any) -> Any:
    leaves, td, _ = tree_flatten(tree)
    return tree_unflatten(td, [fn(leaf) for leaf in leaves])


def num_leaves(treedef: tuple) -> int:
    count = 0
    work = [treedef]
    while work:
        td = work.pop()
        if td[0] == "leaf":
            count += 1
        elif td[0] != "none":
            work.extend(td[-1])
    return count
