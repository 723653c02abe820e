"""The kernel policy (symad/policy.py): its decisions at their thresholds, from counts
alone, and what ``f.stats["kernel"]`` reports for the functions that reach each kernel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from programs import rosen

import symad
from symad import policy
from symad.compiled import clear_memory_cache
from symad.policy import choose_kernel

ROOT = Path(__file__).parents[1]


# ---- decisions from counts -------------------------------------------------------------
def test_levels_by_size_and_explicit_levels():
    assert policy.choose_levels(policy.MEDIUM_GRAPH_NODES, "auto") == (3, 3)
    assert policy.choose_levels(policy.MEDIUM_GRAPH_NODES + 1, "auto") == (1, 1)
    assert policy.choose_levels(policy.LARGE_GRAPH_NODES, None) == (1, 1)
    assert policy.choose_levels(policy.LARGE_GRAPH_NODES + 1, None) == (1, 0)
    assert policy.choose_levels(10**6, 2) == (2, 2)
    assert policy.choose_levels(5, (1, 0)) == (1, 0)
    with pytest.raises(ValueError, match="opt_level must be 0..3"):
        policy.choose_levels(5, 4)


def test_array_level_thresholds():
    n = policy.ARRAY_MIN_ELEMENTS
    assert policy.array_level_declines(n, 1) is None
    reason = policy.array_level_declines(n - 1, 1)
    assert reason == f"{n - 1} elements < ARRAY_MIN_ELEMENTS = {n}"
    per = policy.ARRAY_MIN_LENGTH
    nodes = 10 * n // per
    assert policy.array_level_declines(10 * n, nodes) is None
    assert "ARRAY_MIN_LENGTH" in policy.array_level_declines(10 * n - 1, nodes)


def test_rolling_thresholds():
    assert not policy.tries_rolling(policy.ROLL_MIN_NODES)
    assert policy.tries_rolling(policy.ROLL_MIN_NODES + 1)
    gain = policy.ROLL_MIN_GAIN
    assert policy.rolling_pays(100, 100 * gain)
    assert not policy.rolling_pays(100, 100 * gain - 1)


def test_small_graphs_run_straight_at_full_optimisation():
    plan = choose_kernel(live=policy.ROLL_MIN_NODES)
    assert (plan.kind, plan.batch, plan.levels, plan.batch_levels) == \
        ("straight", "inlined", (3, 3), (3, 3))
    assert "ROLL_MIN_NODES" in plan.reason


def test_fast_build_above_fast_build_nodes_with_auto_only():
    at = choose_kernel(live=policy.ROLL_MIN_NODES + 1,
                       straight_size=policy.FAST_BUILD_NODES)
    above = choose_kernel(live=policy.ROLL_MIN_NODES + 1,
                          straight_size=policy.FAST_BUILD_NODES + 1)
    assert at.levels == (3, 3) and above.levels == (3, 0)
    assert "FAST_BUILD_NODES" in above.reason and "ROLL_MIN_GAIN" in above.reason
    assert above.batch_levels == (3, 3)           # the batch keeps the size-based level
    explicit = choose_kernel(live=5000, straight_size=5000, opt_level=2)
    assert explicit.levels == explicit.batch_levels == (2, 2)


def test_chunked_above_chunk_nodes():
    live = policy.CHUNK_NODES + 50
    assert choose_kernel(live=live, ops=policy.CHUNK_NODES).kind == "straight"
    plan = choose_kernel(live=live, ops=policy.CHUNK_NODES + 1)
    assert plan.kind == "chunked" and "CHUNK_NODES" in plan.reason
    assert plan.batch == "inlined"
    assert plan.levels == (1, 0) and plan.batch_levels == (1, 1)


def test_rolled_batch_above_rolled_batch_nodes():
    below = choose_kernel(live=policy.ROLLED_BATCH_NODES, rolled_size=300)
    above = choose_kernel(live=policy.ROLLED_BATCH_NODES + 1, rolled_size=300)
    assert (below.kind, below.batch) == ("rolled", "inlined")
    assert (above.kind, above.batch) == ("rolled", "rolled")
    assert above.batch_levels == above.levels == (3, 3)     # the rolled code's size
    assert below.batch_levels == (3, 3)


def test_vector_batch_for_libm_and_fast_vector_math_in_small_graphs():
    assert choose_kernel(live=50, calls_libm=True).batch == "vector"
    assert choose_kernel(live=50, fast_vector_math=True).batch == "vector"
    assert choose_kernel(live=50).batch == "inlined"
    big = policy.CHUNK_NODES + 1
    assert choose_kernel(live=big, ops=big, calls_libm=True).batch == "inlined"


def test_array_plan():
    plan = choose_kernel(live=12, array=(5000, 10))
    assert (plan.kind, plan.batch, plan.levels) == ("array", "array", (3, 3))
    assert "500 per node" in plan.reason
    assert plan.stats() == {"kind": "array", "batch": "array", "levels": (3, 3),
                            "batch_levels": (3, 3), "reason": plan.reason}


def test_batch_threads():
    work = policy.AUTO_THREADS_WORK
    assert policy.batch_chunks(work - 1, 1, None) == 1
    assert policy.batch_chunks(work, 1, None) == min(os.cpu_count() or 1, 8)
    assert policy.batch_chunks(100, 1, 4) == 4
    assert policy.batch_chunks(7, 1, 4) == 1         # fewer than two points per thread
    assert policy.batch_chunks(10**9, 1, 1) == 1


def test_every_threshold_is_in_decisions_md():
    text = (ROOT / "DECISIONS.md").read_text()
    names = [k for k, v in vars(policy).items() if k.isupper() and type(v) is int]
    assert len(names) >= 15
    for name in names:
        assert re.search(rf"^## .*\b{name}\b", text, re.M), name


def test_policy_imports_without_llvmlite():
    code = ("import sys; sys.modules['llvmlite'] = None\n"
            "import symad.policy as p\n"
            "print(p.choose_kernel(live=10).kind)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "straight"


# ---- what f.stats["kernel"] reports -------------------------------------------------------
@pytest.fixture
def fresh():
    clear_memory_cache()            # native code is cached by graph: build each anew
    yield
    clear_memory_cache()


def _plan_was_built(stats):
    kernel = stats["kernel"]
    assert set(kernel) == {"kind", "batch", "levels", "batch_levels", "reason"}
    opt = stats["opt_level"]
    assert kernel["levels"] == (opt["ir"], opt["machine_code"])
    assert kernel["batch_levels"] == (opt["batch_ir"], opt["batch_machine_code"])
    return kernel


def test_stats_small_scalar_function(fresh):
    f = symad.compile_grad(lambda x, y: np.sin(x) * y, argnums=(0, 1))
    v, (gx, gy) = f(1.0, 2.0)
    assert (v, gx, gy) == (np.sin(1.0) * 2.0, np.cos(1.0) * 2.0, np.sin(1.0))
    kernel = _plan_was_built(f.stats)
    assert (kernel["kind"], kernel["batch"], kernel["levels"]) == \
        ("straight", "inlined", (3, 3))
    assert kernel["reason"].startswith("straight:") and "ROLL_MIN_NODES" in kernel["reason"]
    g = symad.compile_grad(lambda x, y: np.sin(x) * y, argnums=(0, 1))
    g(1.0, 2.0)
    assert g.stats["cached"] and g.stats["kernel"] == f.stats["kernel"]


def test_stats_libm_function_gets_a_vector_batch(fresh):
    f = symad.compile(lambda x: np.tanh(x) * 2.0)
    values = f.batch(np.linspace(-1, 1, 9))
    np.testing.assert_array_equal(values, np.tanh(np.linspace(-1, 1, 9)) * 2.0)
    assert _plan_was_built(f.stats)["batch"] == "vector"


def test_stats_big_array_program(fresh):
    f = symad.compile_grad(rosen)
    x = np.linspace(-1, 1, 1000)
    v, g = f(x)
    v_ref, g_ref = symad.value_and_grad(rosen)(x)
    assert v == pytest.approx(v_ref, rel=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)
    kernel = _plan_was_built(f.stats)
    assert (kernel["kind"], kernel["batch"]) == ("array", "array")
    assert "ARRAY_MIN_ELEMENTS" in kernel["reason"] and f.stats["array_level"]


def test_stats_rolled_program(fresh, monkeypatch):
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 10**12)
    f = symad.compile_grad(rosen)
    x = np.linspace(-1, 1, 1000)
    v, g = f(x)
    v_ref, g_ref = symad.value_and_grad(rosen)(x)
    assert v == pytest.approx(v_ref, rel=1e-12)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)
    kernel = _plan_was_built(f.stats)
    assert (kernel["kind"], kernel["batch"]) == ("rolled", "rolled")   # ~17k nodes
    assert kernel["reason"].startswith(
        "array level declined: 8992 elements < ARRAY_MIN_ELEMENTS = 1000000000000; "
        "its trace unrolled to scalars; rolled:")
    assert f.stats["rolled"]["loops"] >= 1 and "array_level" not in f.stats


def test_stats_chunked_program_is_chunked(fresh, monkeypatch):
    monkeypatch.setattr(policy, "CHUNK_NODES", 50)
    monkeypatch.setattr(policy, "ROLL_MIN_NODES", 10**12)
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 10**12)
    f = symad.compile_grad(rosen)
    x = np.linspace(-1, 1, 30)
    np.testing.assert_allclose(f(x)[1], symad.grad(rosen)(x), rtol=1e-12)
    assert _plan_was_built(f.stats)["kind"] == "chunked"
    assert ".chunk1" in f.llvm_ir          # the back end chunked it as planned


def test_stats_say_why_the_array_level_cannot_trace(fresh):
    # np.sum(initial=) traces on the scalar graph only (today): the array level says so.
    def f(x):
        return np.sum(np.sin(x) ** 2, initial=1.0)

    cf = symad.compile_grad(f)
    x = np.linspace(0.1, 1.0, 500)
    v, g = cf(x)
    assert v == pytest.approx(np.sum(np.sin(x) ** 2, initial=1.0), rel=1e-12)
    kernel = _plan_was_built(cf.stats)
    assert kernel["reason"].startswith("array level cannot trace it: ")
    assert "initial" in kernel["reason"]
    assert kernel["kind"] == "rolled"
