"""Robustness II: stack use of compiled code, and the size of what is emitted.

Compiled calls run in threads with small stacks (64 KiB here): every buffer a kernel or
the Python entry needs beyond a few KiB comes from the heap. Each case runs in a
subprocess, so a stack overflow (a segfault) fails the test instead of killing pytest.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import symad

pytest.importorskip("llvmlite")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL_STACK = 64 * 1024

# Shared by the subprocess cases: ``in_small_thread(fn)`` runs ``fn`` in a thread with a
# 64 KiB stack and returns its result (or re-raises its exception).
_PRELUDE = """
import json, sys, threading
import numpy as np
import symad

def in_small_thread(fn):
    box = {}
    def run():
        try:
            box["out"] = fn()
        except BaseException as exc:
            box["exc"] = exc
    threading.stack_size(%d)     # read when the thread starts
    t = threading.Thread(target=run)
    t.start()
    t.join()
    threading.stack_size(0)
    if "exc" in box:
        raise box["exc"]
    return box["out"]

def emit(**kw):
    print("RESULT " + json.dumps({k: np.asarray(v).tolist() for k, v in kw.items()}))
""" % SMALL_STACK


def _run(body: str, timeout: float = 300) -> dict:
    """Run ``body`` (after ``_PRELUDE``) in a fresh interpreter; the arrays it ``emit``s."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, (
        f"exit status {proc.returncode} (-11: segfault, a stack overflow)\n"
        f"{proc.stderr[-3000:]}")
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")][-1]
    return {k: np.asarray(v) for k, v in json.loads(line[len("RESULT "):]).items()}


def test_gradient_of_an_8000_vector_in_a_64k_thread():
    # The array-level kernel kept its 8,000-double buffer on the stack, and the Python
    # entry its 16,001 inputs and outputs: 128 KiB in all.
    out = _run("""
        f = symad.compile_grad(lambda v: np.sum(np.sin(v) * v))
        x = np.linspace(-1.0, 1.0, 8000)
        X = np.stack([x, 0.5 * x, -x])
        # Built in the main thread (compiling is LLVM's own deep recursion), then called
        # in the small one.
        f(x), f.batch(X[:1])
        v, g = in_small_thread(lambda: f(x))
        vb, gb = in_small_thread(lambda: f.batch(X, threads=1))
        assert f.stats.get("array_level"), f.stats
        emit(v=v, g=g, vb=vb, gb=gb)
    """)
    x = np.linspace(-1.0, 1.0, 8000)
    np.testing.assert_allclose(out["v"], np.sum(np.sin(x) * x), rtol=1e-12)
    np.testing.assert_allclose(out["g"], np.cos(x) * x + np.sin(x), rtol=1e-13, atol=1e-15)
    for k, s in enumerate((1.0, 0.5, -1.0)):
        y = s * x
        np.testing.assert_allclose(out["vb"][k], np.sum(np.sin(y) * y), rtol=1e-12)
        np.testing.assert_allclose(out["gb"][k], np.cos(y) * y + np.sin(y), rtol=1e-13,
                                   atol=1e-15)


def test_rolled_scalar_gradient_and_array_result_in_a_64k_thread():
    # A Python loop traces to a scalar graph that is rolled into loops: its value buffer
    # (one slot per stored value) and the entry's 6,001 doubles; and a plain compile
    # returning an 8,000-element array through the entry.
    out = _run("""
        def loopy(x):
            s = 0.0
            for i in range(len(x) - 1):
                s = s + (x[i + 1] - x[i] * x[i]) ** 2 + np.sin(x[i])
            return s
        f = symad.compile_grad(loopy)
        x = np.linspace(-1.0, 1.0, 3000)
        f(x), f.batch(x[None])
        v, g = in_small_thread(lambda: f(x))
        vb, gb = in_small_thread(lambda: f.batch(np.stack([x, -x]), threads=1))
        assert f.stats["rolled"] is not None and not f.stats.get("array_level"), f.stats
        h = symad.compile(lambda v: np.sin(v) * 2.0 + v)
        y = np.linspace(-2.0, 2.0, 8000)
        h(y)
        hy = in_small_thread(lambda: h(y))
        emit(v=v, g=g, vb=vb, gb=gb, hy=hy)
    """)
    x = np.linspace(-1.0, 1.0, 3000)

    def loopy_np(x):
        d = x[1:] - x[:-1] ** 2
        value = np.sum(d ** 2 + np.sin(x[:-1]))
        grad = np.zeros_like(x)
        grad[1:] += 2 * d
        grad[:-1] += -4 * d * x[:-1] + np.cos(x[:-1])
        return value, grad
    for got_v, got_g, y in ((out["v"], out["g"], x), (out["vb"][0], out["gb"][0], x),
                            (out["vb"][1], out["gb"][1], -x)):
        want_v, want_g = loopy_np(y)
        np.testing.assert_allclose(got_v, want_v, rtol=1e-12)
        np.testing.assert_allclose(got_g, want_g, rtol=1e-12, atol=1e-14)
    y = np.linspace(-2.0, 2.0, 8000)
    np.testing.assert_allclose(out["hy"], np.sin(y) * 2.0 + y, rtol=1e-15)


def test_chunked_gradient_in_a_64k_thread():
    # Above policy.CHUNK_NODES a kernel is split into chunk functions; the values passed
    # between chunks had one stack slot each.
    out = _run("""
        from symad.codegen import lower
        def chain(x):
            vals = [x[i] for i in range(8)]
            for i in range(5_000):
                a, b = vals[-1], vals[(i * 7919) % len(vals)]
                vals.append(np.sin(a) * b if i % 2 else a * 0.5 + np.tanh(b))
            return vals[-1] + vals[-2]
        f = symad.compile_grad(chain)
        x = np.linspace(-1.0, 1.0, 8)
        v, g = f(x)
        f.batch(x[None])
        assert ".chunk1" in f.llvm_ir
        vs, gs = in_small_thread(lambda: f(x))
        vb, gb = in_small_thread(lambda: f.batch(np.stack([x, 0.5 * x]), threads=1))
        vi, gi = symad.value_and_grad(chain)(x)      # the Python reference evaluator
        vi2, gi2 = symad.value_and_grad(chain)(0.5 * x)
        emit(v=v, g=g, vs=vs, gs=gs, vb=vb, gb=gb, vi=[vi, vi2], gi=[gi, gi2])
    """)
    for v, g in ((out["v"], out["g"]), (out["vs"], out["gs"]),
                 (out["vb"][0], out["gb"][0])):
        np.testing.assert_allclose(v, out["vi"][0], rtol=1e-12)
        np.testing.assert_allclose(g, out["gi"][0], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(out["vb"][1], out["vi"][1], rtol=1e-12)
    np.testing.assert_allclose(out["gb"][1], out["gi"][1], rtol=1e-10, atol=1e-13)


def _frames(asm: str) -> dict:
    """The stack frame each function of ``asm`` reserves (``sub $N, %rsp``), in bytes."""
    found: dict = {}
    fn = None
    for line in asm.splitlines():
        m = re.match(r'^([A-Za-z_."$][\w."$]*):', line)
        if m and not m.group(1).startswith(".L"):
            fn = m.group(1)
        m = re.search(r"sub[q]?\s+\$(\d+),\s*%rsp", line)
        if m and fn:
            found[fn] = max(found.get(fn, 0), int(m.group(1)))
    return found


def test_frames_stay_small_as_vectors_grow():
    # Whatever the size, a kernel or the Python entry reserves 16 KiB (the kernel's
    # buffer budget) and a few hundred bytes at most.
    for n in (500, 8000, 20000):
        f = symad.compile_grad(lambda v: np.sum(np.cos(v) * v * 1.5))
        x = np.linspace(-1.0, 1.0, n)
        v, g = f(x)
        np.testing.assert_allclose(g, 1.5 * (np.cos(x) - x * np.sin(x)), rtol=1e-13,
                                   atol=1e-15)
        frames = _frames(f.asm)
        assert frames and max(frames.values()) <= 16 * 1024 + 1024, (n, frames)


def test_heap_buffers_give_the_stack_paths_results(monkeypatch):
    # Every buffer on the heap: the same numbers, for floats, arrays, several arguments
    # and results, and arguments the entry hands to the Python path.
    from symad import policy
    monkeypatch.setattr(policy, "ENTRY_STACK_DOUBLES", 0)
    monkeypatch.setattr(policy, "KERNEL_STACK_DOUBLES", 0)
    x = np.linspace(-1.0, 1.0, 1500)

    def loopy(x):
        s = 0.0
        for i in range(len(x) - 1):
            s = s + (x[i + 1] - x[i] * x[i]) ** 2 * 1.25
        return s
    f = symad.compile_grad(loopy)
    v, g = f(x)
    d = x[1:] - x[:-1] ** 2
    want = np.zeros_like(x)
    want[1:] += 2.5 * d
    want[:-1] -= 5.0 * d * x[:-1]
    assert v == pytest.approx(1.25 * np.sum(d ** 2), rel=1e-12)
    np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-14)
    assert f.stats["rolled"] is not None
    assert '@"malloc"' in f.llvm_ir and '@"free"' in f.llvm_ir

    h = symad.compile(lambda a, y, b: (a * np.sin(y) + b, a - b * 3.5))
    y = np.linspace(0.0, 2.0, 7)
    r1, r2 = h(0.5, y, 2.0)
    np.testing.assert_allclose(r1, 0.5 * np.sin(y) + 2.0, rtol=1e-15)
    assert r2 == 0.5 - 7.0
    assert h.fast_entry is not None                          # the emitted entry
    r1, r2 = h(1, y.tolist(), 2.0)                           # the Python path converts
    np.testing.assert_allclose(r1, np.sin(y) + 2.0, rtol=1e-15)
    r1, r2 = h(0.5, y[:3], 2.0)                              # another shape: retraced
    np.testing.assert_allclose(r1, 0.5 * np.sin(y[:3]) + 2.0, rtol=1e-15)


# ---- outputs stored alike: one loop, counted in the size LLVM is given -----------------

@pytest.fixture
def scalar_graphs(monkeypatch):
    """The scalar graph (rolled), not the array-level one, whatever the size."""
    from symad import policy
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 10**12)


def _llvm_seconds(f) -> float:
    s = f.stats["seconds"]
    return s["llvm_opt"] + s["machine_code"]


def test_gradient_of_a_sum_of_100k_is_one_loop(scalar_graphs):
    # The 100,000 constant gradient stores were straight-line code compiled at O3 (the
    # rolled body was 2 nodes): 276 s and 4 GB; 10^6 aborted the process.
    n = 100_000
    x = np.linspace(0.1, 1.3, n)
    f = symad.compile_grad(lambda v: np.sum(v))
    v, g = f(x)
    assert v == pytest.approx(np.sum(x), rel=1e-12)
    np.testing.assert_array_equal(g, np.ones(n))
    assert f.stats["nodes"]["llvm_ir"] < 300, f.stats["nodes"]
    assert _llvm_seconds(f) < 2.0, f.stats["seconds"]
    vb, gb = f.batch(np.stack([x, 2.0 * x]), threads=1)
    np.testing.assert_array_equal(gb, np.ones((2, n)))
    np.testing.assert_allclose(vb, [np.sum(x), 2.0 * np.sum(x)], rtol=1e-12)


@pytest.mark.parametrize("name", ["mean", "sum+sin", "pysum+sin", "sum(v*c)", "sum(v*u)"])
def test_gradients_made_of_constants_and_inputs_are_loops(name, scalar_graphs):
    n = 20_000
    x = np.linspace(0.1, 1.3, n)
    u = np.cos(np.arange(n))
    c = np.arange(n) * 0.5 - 3.0          # a different constant per element: a table
    head = np.ones(n)
    head[0] += np.cos(x[0])
    fn, grad = {
        "mean": (lambda v: np.mean(v), np.full(n, 1.0 / n)),
        "sum+sin": (lambda v: np.sum(v) + np.sin(v[0]), head),
        "pysum+sin": (lambda v: sum(v) + np.sin(v[0]), head),
        "sum(v*c)": (lambda v: np.sum(v * c), c),
        "sum(v*u)": (lambda v, w: np.sum(v * w), (u, x)),   # gradients are the inputs
    }[name]
    if name == "sum(v*u)":
        f = symad.compile_grad(fn, argnums=(0, 1))
        v, (gv, gu) = f(x, u)
        np.testing.assert_array_equal(gv, u)
        np.testing.assert_array_equal(gu, x)
        vb, (gvb, gub) = f.batch(np.stack([x, -x]), np.stack([u, 2 * u]), threads=1)
        np.testing.assert_array_equal(gvb, np.stack([u, 2 * u]))
        np.testing.assert_array_equal(gub, np.stack([x, -x]))
    else:
        f = symad.compile_grad(fn)
        v, g = f(x)
        assert v == pytest.approx(fn(x), rel=1e-12)
        np.testing.assert_allclose(g, grad, rtol=1e-15)
        vb, gb = f.batch(np.stack([x, x[::-1]]), threads=1)
        np.testing.assert_allclose(gb[0], grad, rtol=1e-15)
        assert vb[1] == pytest.approx(fn(x[::-1]), rel=1e-12)
    assert f.stats["rolled"] is not None
    assert f.stats["nodes"]["llvm_ir"] < 600, f.stats["nodes"]
    assert _llvm_seconds(f) < 2.0, f.stats["seconds"]


def test_repeated_outputs_are_loops(scalar_graphs):
    # One node listed 5,000 times, then an input 3,000 times, then constants.
    n = 3_000
    x = np.linspace(0.1, 1.3, n)

    def f(v):
        s = np.sum(np.sin(v))
        return np.concatenate([np.full(5_000, s * 2.0), np.full(3_000, v[3]),
                               np.arange(4_000) * 0.25, v])
    h = symad.compile(f)
    out = h(x)
    np.testing.assert_allclose(out[:5000], 2.0 * np.sum(np.sin(x)), rtol=1e-12)
    np.testing.assert_array_equal(out[5000:8000], x[3])
    np.testing.assert_array_equal(out[8000:12000], np.arange(4_000) * 0.25)
    np.testing.assert_array_equal(out[12000:], x)
    assert h.stats["nodes"]["llvm_ir"] < 600, h.stats["nodes"]


def test_chunked_kernel_stores_constant_and_repeated_outputs_by_loops(monkeypatch):
    # Straight code split into chunks (small chunks here, so the graph stays small): the
    # gradient's 3,000 zeros, and the value listed many times, are loops in its entry.
    from symad import policy
    monkeypatch.setattr(policy, "CHUNK_NODES", 200)
    monkeypatch.setattr(policy, "ROLL_MIN_NODES", 10**12)

    def chain(x):
        vals = [x[i] for i in range(8)]
        for i in range(300):
            a, b = vals[-1], vals[(i * 7919) % len(vals)]
            vals.append(np.sin(a) * b if i % 2 else a * 0.5 + np.tanh(b))
        return vals[-1] + vals[-2]
    x = np.linspace(-1.0, 1.0, 3_008)
    f = symad.compile_grad(chain)
    v, g = f(x)
    assert ".chunk1" in f.llvm_ir
    vi, gi = symad.value_and_grad(chain)(x)
    assert v == pytest.approx(vi, rel=1e-12)
    np.testing.assert_allclose(g, gi, rtol=1e-10, atol=1e-13)
    assert not g[8:].any()
    vb, gb = f.batch(np.stack([x, 0.5 * x]), threads=1)
    np.testing.assert_allclose(gb[0], gi, rtol=1e-10, atol=1e-13)
    # (one store per op node a chunk computes, not one per zero of the gradient)
    assert f.specializations[-1].native.module.llvm_ir.count("store double") < 1_000

    h = symad.compile(lambda v: np.full(2_000, chain(v)))
    np.testing.assert_allclose(h(x), vi, rtol=1e-12)
    assert h.specializations[-1].native.module.llvm_ir.count("store double") < 1_000


def test_constant_outputs_in_the_batch_entrys_two_kernels(scalar_graphs):
    # A batch module holds the straight kernel and a four-point one (tanh is a libm
    # call): both store the gradient's constants from a table of their own.
    n = 400
    c = np.arange(n) * 0.5 - 3.0
    f = symad.compile_grad(lambda v: np.sum(np.tanh(v[:3])) + np.sum(v * c))
    x = np.linspace(0.1, 1.3, n)
    want = c.copy()
    want[:3] += 1 - np.tanh(x[:3]) ** 2
    np.testing.assert_allclose(f(x)[1], want, rtol=1e-15)
    vb, gb = f.batch(np.stack([x, x[::-1]]), threads=1)
    np.testing.assert_allclose(gb[0], want, rtol=1e-15)
    np.testing.assert_allclose(gb[1][3:], c[3:], rtol=1e-15)
