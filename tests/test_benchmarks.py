"""Smoke test of the benchmark runner: smallest problem, symad and sympy, tiny budget.

Checks the structure of the JSON and the markdown, and that the gradients agree. The
systems of the [bench] extra need not be installed: a missing one must be reported as
"not installed", never crash the run.
"""

import json
import os
import sys

import pytest

pytest.importorskip("llvmlite")
# benchmarks/ is not installed with symad: import it from the checkout.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import runner  # noqa: E402
from benchmarks.problems import PROBLEMS, SMALLEST  # noqa: E402
from benchmarks.systems import SYSTEMS  # noqa: E402


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = runner.main(["--problems", SMALLEST, "--systems", "symad,sympy", "--budget", "20",
                      "--scaling", "1e3", "--scaling-irregular", "1e3", "--scaling-budget", "30",
                      "--out", str(out)])
    assert rc == 0
    return json.loads((out / "results.json").read_text()), (out / "RESULTS.md").read_text()


def test_json_structure(doc):
    d, _ = doc
    assert set(d) >= {"meta", "systems", "problems", "results", "scaling", "targets"}
    assert d["meta"]["machine"]["cores"] >= 1 and "numpy" in d["meta"]["versions"]
    rows = {r["system"]: r for r in d["results"]}
    assert set(rows) == {"symad", "sympy"}
    s = rows["symad"]
    assert s["status"] == "ok", s
    for key in ("build_s", "call_us", "fast_us", "value_us", "ratio_call", "ratio_batch"):
        assert s[key] > 0, key
    assert s["batch"]["1e4"] > 0
    graphs = {r["graph"]: r for r in d["scaling"]}
    assert set(graphs) == {"chain", "irregular"}
    for r in graphs.values():
        assert r["status"] == "ok" and r["forward_nodes"] > 500, r
    assert graphs["chain"]["rolled"] is not None         # the chain rolls into a loop
    assert graphs["irregular"]["rolled"] is None         # nothing repeats: straight code


def test_gradients_agree(doc):
    d, _ = doc
    for r in d["results"]:
        if r["status"] == "ok":
            assert r["agrees"], r
            assert r["grad"] == pytest.approx([5.5, 1.7163378145367738], rel=1e-12)


def test_markdown(doc):
    _, md = doc
    assert "## closed_form" in md and "| symad |" in md and "| sympy |" in md
    assert "## Targets" in md and "Compile-time scaling" in md


def test_missing_and_unsupported_systems_are_reported():
    missing = runner.SYSTEMS["symad"].__class__(
        "ghost", ("no_such_module_xyz",), lambda p: None, "", "", "")
    SYSTEMS["ghost"] = missing
    try:
        assert runner.run_pair("ghost", SMALLEST, 5)["status"] == "not installed"
    finally:
        del SYSTEMS["ghost"]
    assert runner.run_pair("numba", "nn_loss", 5)["status"] == "n/a"


def test_problems_evaluate_with_numpy():
    from benchmarks.problems import reference_value
    for p in PROBLEMS.values():
        assert len(p.point) == p.n
        v = reference_value(p)
        assert v == v  # not NaN
