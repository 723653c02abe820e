"""The front end's modules import each other without cycles: data flows one way
(trace -> graph -> ad -> lower -> jit), and each module can be read after the ones it
imports. Every import counts, also those inside functions (a lazy import that closes a
cycle is still a cycle: it only hides it from the import system)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "codegen":                 # installed as symad.codegen
        parts = ["symad", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, name: str, known: set) -> set:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # ``from . import x`` imports the module x; ``from .m import name``, m
            submodules = [f"{base}.{a.name}" for a in node.names
                          if f"{base}.{a.name}" in known]
            targets = submodules or [base]
        else:
            continue
        found.update(t for t in targets if t in known and t != name)
    return found


def import_graph() -> dict:
    paths = [*ROOT.glob("symad/*.py"), *ROOT.glob("codegen/*.py")]
    names = {_module_name(p): p for p in paths}
    known = set(names)
    return {name: _imports(path, name, known) for name, path in names.items()}


def _cycle(graph: dict) -> list:
    """One cycle of ``graph`` as a list of modules, or [] (iterative depth-first search)."""
    state: dict = {}
    for start in sorted(graph):
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = "open"
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = "done"
                stack.pop()
                path.pop()
            elif state.get(child) == "open":
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = "open"
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
    return []


def test_no_import_cycles_among_the_modules():
    graph = import_graph()
    assert len(graph) > 20
    cycle = _cycle(graph)
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
