"""The README runs as written: its Python blocks in order, in one fresh namespace.

Checks the results the README states, by two conventions:

- a statement followed by ``# -> LITERAL`` (on its line or the next ones) has that value
  (an assignment: its right-hand side), compared as numbers (rtol 1e-9, or ``(to TOL)``
  after the literal) or exactly for anything else;
- ``print(...)`` followed by comment lines prints exactly those lines.

A block whose first line is ``# file: NAME`` is also written to ``NAME`` in the working
folder, and the ``symad ...`` lines of the README's shell blocks run there (``pip install``
and ``symad bench`` lines excepted: they install or take minutes).
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_EXPECT = re.compile(r"#\s*->\s*(.*?)\s*(?:\(to ([0-9.e+-]+)\))?\s*$")


def _blocks(lang: str) -> list[tuple[int, str]]:
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(2))
            for m in _FENCE.finditer(text) if m.group(1) == lang]


def _close(got, want, tol: float) -> bool:
    if isinstance(want, (tuple, list)) and not isinstance(got, np.ndarray):
        return (isinstance(got, (tuple, list)) and len(got) == len(want)
                and all(_close(g, w, tol) for g, w in zip(got, want)))
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(
            _close(got[k], want[k], tol) for k in want)
    if isinstance(want, (int, float, list, tuple)):
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        return got.shape == want.shape and bool(np.allclose(got, want, rtol=tol, atol=tol))
    return got == want


def _expectations(lines: list[str], end: int) -> tuple[str | None, float, list[str]]:
    """The ``# -> ...`` literal and the comment lines right after line ``end`` (1-based)."""
    comments = []
    for line in lines[end:]:
        s = line.strip()
        if not s.startswith("#"):
            break
        comments.append(s[2:] if s.startswith("# ") else s[1:])
    same_line = _EXPECT.search(lines[end - 1]) if "# ->" in lines[end - 1] else None
    first = _EXPECT.match(lines[end].strip()) if end < len(lines) and \
        lines[end].strip().startswith("# ->") else None
    found = same_line or first
    if found is None:
        return None, 0.0, comments
    return found.group(1), float(found.group(2) or 1e-9), comments


def _run_block(src: str, where: str, ns: dict) -> None:
    lines = src.splitlines()
    for stmt in ast.parse(src).body:
        code = ast.get_source_segment(src, stmt)
        literal, tol, comments = _expectations(lines, stmt.end_lineno)
        if literal is not None and isinstance(stmt, (ast.Expr, ast.Assign)):
            value = eval(compile(ast.Expression(stmt.value), where, "eval"), ns)
            if isinstance(stmt, ast.Assign):       # bind the value computed once
                ns["_readme_value"] = value
                bind = ast.Assign(stmt.targets, ast.Name("_readme_value", ast.Load()))
                exec(compile(ast.fix_missing_locations(ast.Module([bind], [])), where,
                             "exec"), ns)
            want = ast.literal_eval(literal)
            assert _close(value, want, tol), f"{where}:{stmt.lineno}: {code!r} gave " \
                f"{value!r}, the README says {literal}"
            continue
        is_print = (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
                    and getattr(stmt.value.func, "id", None) == "print")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(ast.Module([stmt], []), where, "exec"), ns)
        if is_print and comments:
            assert out.getvalue().rstrip("\n").splitlines() == comments, \
                f"{where}:{stmt.lineno}: {code!r} printed\n{out.getvalue()}"


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ns: dict = {"__name__": "__readme__"}
    blocks = _blocks("python")
    assert len(blocks) >= 6
    for line, src in blocks:
        first = src.splitlines()[0]
        if first.startswith("# file: "):
            (tmp_path / first[len("# file: "):].strip()).write_text(src)
        try:
            _run_block(src, f"README.md:{line}", ns)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("dask", "distributed"):
                continue        # the [dask] extra is optional
            raise


def test_readme_command_lines_run(tmp_path):
    for _, src in _blocks("python"):
        first = src.splitlines()[0]
        if first.startswith("# file: "):
            (tmp_path / first[len("# file: "):].strip()).write_text(src)
    commands = []
    for _, src in _blocks("bash"):
        for line in src.splitlines():
            cmd = line.split("#", 1)[0].strip()
            if cmd.startswith("symad ") and not cmd.startswith("symad bench"):
                commands.append(cmd)
    assert any(c.startswith("symad ir ") for c in commands)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), str(README.parent), os.environ.get("PYTHONPATH", "")]))
    for cmd in commands:
        argv = [sys.executable, "-m", "symad", *shlex.split(cmd)[1:]]
        r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env=env)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
        assert r.stdout.strip(), cmd


@pytest.mark.parametrize("lang", ["python", "bash"])
def test_readme_has_blocks(lang):
    assert _blocks(lang)
