"""The back end resolves statically: ``symad/codegen`` is a link to the top-level
``codegen/`` folder (installed as ``symad.codegen`` by pyproject's package-dir), so path
lookups alone (mypy, IDEs, import-graph tools) find every ``symad.codegen`` module that
the code imports, and the import system needs no help at run time."""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKEND = os.path.join(ROOT, "codegen")
LINK = os.path.join(ROOT, "symad", "codegen")
MODULES = sorted(f[:-3] for f in os.listdir(BACKEND) if f.endswith(".py"))


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_symad_codegen_is_the_top_level_codegen_folder():
    assert os.path.isdir(LINK), "symad/codegen must lead to codegen/ (a symbolic link)"
    assert os.path.samefile(LINK, BACKEND)
    assert {"__init__", "builder", "jit", "lower", "batch_entry", "py_entry"} <= set(MODULES)
    for name in MODULES:
        assert os.path.samefile(os.path.join(LINK, name + ".py"),
                                os.path.join(BACKEND, name + ".py"))


def _backend_imports(path: str):
    """(line, module) for each import of a ``symad.codegen`` module in ``path``; ``from
    symad.codegen import x`` counts as ``symad.codegen.x`` when x is not a name that
    codegen/__init__.py defines."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("symad.codegen"):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.startswith("symad.codegen"):
            yield node.lineno, node.module
            if node.module == "symad.codegen":
                for alias in node.names:
                    if alias.name not in _PACKAGE_NAMES:
                        yield node.lineno, f"symad.codegen.{alias.name}"


def _package_names() -> set:
    with open(os.path.join(BACKEND, "__init__.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom)
            for a in n.names}


_PACKAGE_NAMES = _package_names()


def _python_files():
    for top in ("symad", "tests", "benchmarks"):
        for folder, dirs, files in os.walk(os.path.join(ROOT, top)):   # not into the link
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def test_every_backend_import_resolves_to_a_file():
    # What a static reader does: symad.codegen.x -> symad/codegen/x.py, no import hooks.
    found = 0
    for path in _python_files():
        for line, module in _backend_imports(path):
            parts = module.split(".")
            base = os.path.join(ROOT, *parts)
            assert os.path.isfile(base + ".py") or \
                os.path.isfile(os.path.join(base, "__init__.py")), \
                f"{os.path.relpath(path, ROOT)}:{line}: {module} has no file"
            found += 1
    assert found > 20       # compiled.py, persist.py, diskcache.py, tests, benchmarks


def test_every_backend_module_imports_without_a_path_hack():
    out = _run(
        "import importlib, os, sys, symad\n"
        "assert 'llvmlite' not in sys.modules, 'import symad imported llvmlite'\n"
        "symad.compile(lambda x: x * 2.0)   # traces and compiles lazily\n"
        "assert 'llvmlite' not in sys.modules, 'symad.compile imported llvmlite'\n"
        f"for name in {MODULES!r}:\n"
        "    m = importlib.import_module('symad.codegen' + ('' if name == '__init__'\n"
        "                                                  else '.' + name))\n"
        "    assert os.path.realpath(m.__file__).startswith(os.path.realpath(\n"
        f"        {BACKEND!r})), m.__file__\n"
        "assert symad.__path__ == [os.path.dirname(symad.__file__)], symad.__path__\n"
        "assert 'codegen' not in sys.modules\n"
        "print(symad.compile(lambda x, y: x * y + 1.0)(2.0, 3.0))\n")
    assert out.split() == ["7.0"]


def test_the_wheel_installs_codegen_as_symad_codegen():
    # The wheel takes the package from codegen/ itself (not through the link): pyproject
    # lists it and maps it there. (.ci/run builds and installs the wheel.)
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        tools = tomllib.load(f)["tool"]["setuptools"]
    assert "symad.codegen" in tools["packages"]
    assert tools["package-dir"] == {"symad.codegen": "codegen"}
