"""The notebooks run top to bottom, and the numbers they report are the ones we claim.

Each notebook is executed once with nbclient on the ``python3`` kernel of the running
interpreter (ipykernel in the test environment), with ``symad`` importable from wherever
this test imports it (the source tree or the installed wheel). Each notebook ends with a
``SYMAD_KEY_NUMBERS {...}`` line whose values are asserted here, and recomputed through
the library where that is cheap.
"""

import json
import os
import pathlib

import numpy as np
import pytest

import symad

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 180
KEY_PREFIX = "SYMAD_KEY_NUMBERS "
NAMES = ["01_symbolic_vs_ad", "02_inside_the_compiler", "03_checking_gradients"]


def _execute(name: str, tmp_path_factory) -> "nbformat.NotebookNode":
    path = NOTEBOOKS / f"{name}.ipynb"
    if not path.exists():
        pytest.skip(f"{path} is not in this checkout (notebooks are not part of the wheel)")
    nb = nbformat.read(path, as_version=4)
    workdir = tmp_path_factory.mktemp(name)
    # The kernel is a new process: make it import the same symad as this test does.
    package_root = str(pathlib.Path(symad.__file__).resolve().parent.parent)
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "MPLBACKEND")}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, old["PYTHONPATH"]) if p)
    os.environ.pop("MPLBACKEND", None)          # the kernel's inline backend makes images
    try:
        client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(workdir)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _stream_text(nb) -> str:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                out.append(o.get("text", ""))
            elif o.get("output_type") in ("execute_result", "display_data"):
                out.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


def _key_numbers(nb) -> dict:
    lines = [ln for ln in _stream_text(nb).splitlines() if ln.startswith(KEY_PREFIX)]
    assert len(lines) == 1, "the notebook must print its key numbers exactly once"
    return json.loads(lines[0][len(KEY_PREFIX):])


def _images(nb) -> int:
    return sum(1 for cell in nb.cells for o in cell.get("outputs", [])
               if "image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {}))


def _errors(nb) -> list:
    return [o for cell in nb.cells for o in cell.get("outputs", [])
            if o.get("output_type") == "error"]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    cache = {}

    def run(name):
        if name not in cache:
            cache[name] = _execute(name, tmp_path_factory)
        return cache[name]
    return run


def test_paired_scripts_match_notebooks():
    jupytext = pytest.importorskip("jupytext")
    for name in NAMES:
        ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        script = jupytext.read(NOTEBOOKS / f"{name}.py")
        assert [c.source for c in ipynb.cells] == [c.source for c in script.cells], (
            f"{name}.ipynb and {name}.py differ; run `jupytext --sync notebooks/{name}.py`")


def test_notebook_1_symbolic_vs_ad(executed):
    nb = executed("01_symbolic_vs_ad")
    assert not _errors(nb)
    assert _images(nb) >= 2                       # swell plots and the product plot
    key = _key_numbers(nb)
    # The 10th term of the logistic map: the bar from the issue and SymPy's tree.
    assert key["logistic_n10_dag_f_grad"] <= 100
    assert 33_000 <= key["logistic_n10_sympy_grad"] <= 35_000
    assert key["logistic_n10_dag_f"] == 27
    assert key["logistic_max_n"] >= 10            # the loop reached n = 10 at least
    assert key["grad_rel_diff_n10"] < 1e-12       # symbolic and AD derivatives agree
    assert key["product_n64_sympy_grad"] == 64 * 62
    assert key["product_n64_dag_f_grad"] <= 3 * 64
    # the same numbers straight from the library
    r = symad.swell_report(_logistic_map(10), 0.3, cse=False)
    assert (r.dag_f_grad, r.sympy_grad) == (key["logistic_n10_dag_f_grad"],
                                            key["logistic_n10_sympy_grad"])
    text = _stream_text(nb)
    assert "impractical" in "".join(c.source for c in nb.cells)
    assert "extrapolated: one minute at n ~" in text


def test_notebook_2_inside_the_compiler(executed):
    nb = executed("02_inside_the_compiler")
    assert not _errors(nb)
    assert _images(nb) >= 2                       # forward DAG and extended DAG pictures
    key = _key_numbers(nb)
    assert key["forward_ops"] == 5
    assert key["extended_ops"] == 9
    assert key["sweep_grad"] == pytest.approx([5.5, 1.7163378145367738], rel=1e-15)
    assert key["graph_grad"] == key["sweep_grad"]
    assert key["logistic_reverse_chain_10_steps"] == 10     # one multiplication per step
    text = _stream_text(nb)
    assert "digraph" in text and "partial adjoint" in text
    if hasattr(symad, "compile_grad"):
        assert key["compiled_grad"] == pytest.approx(key["graph_grad"], rel=1e-15)
        assert "define" in text and "fmul double" in text    # IR was printed
        assert ".Lfunc_end" in text                              # and the assembly
    else:
        assert "compile_grad is not available" in text


def test_notebook_3_checking_gradients(executed):
    nb = executed("03_checking_gradients")
    assert not _errors(nb)
    assert _images(nb) >= 1                       # error vs h, log-log
    key = _key_numbers(nb)
    assert 1.8 < key["slope_truncation"] < 2.2    # O(h^2)
    assert 1e-7 <= key["best_h"] <= 1e-3          # the optimum sits near cbrt(eps)
    assert key["best_rel_error"] < 1e-9           # the round-off floor, far above eps
    assert key["best_rel_error"] > 1e-16
    assert key["max_direction_rel_error"] < 1e-6  # right gradient passes the test
    assert key["min_buggy_rel_error"] > 0.1       # wrong gradient fails it clearly
    assert key["floor_jump_caught"] is True
    # the library's own step choice lands in the same basin
    g = symad.numerical_grad(lambda x: np.log(x) + 5.0 * x - np.sin(5.0), 2.0)
    assert abs(g - 5.5) / 5.5 < 1e-9


def _logistic_map(n):
    def l_n(x):
        for _ in range(n - 1):
            x = 4 * x * (1 - x)
        return x
    return l_n
