"""Loop rolling (codegen/roll.py): rolled kernels compute exactly what straight-line
kernels compute, on the regular graphs it is meant for and on random programs rolled
with the thresholds lowered so that every odd corner becomes a loop."""

from __future__ import annotations

import re

import numpy as np
import pytest
from programs import lennard_jones, rosen

import symad
from symad import interp, policy
from symad.codegen import roll
from symad.compiled import clear_memory_cache


@pytest.fixture(autouse=True)
def scalar_graphs(monkeypatch):
    # Loops of the scalar graph: keep array programs off the array-level path here.
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 10**12)


def mixed(x):
    # where/maximum (mul0 adjoints), powi, transcendental, a running product and a
    # constant that changes along the array (a table of constants when rolled).
    y = np.where(x > 0.3, np.sin(x) * x ** 3, np.maximum(x, -0.5) ** -2)
    c = np.arange(1.0, x.shape[0] + 1.0)
    z = np.cumprod(1.0 + 0.01 * np.tanh(x)) * c
    return np.sum(y * z) + np.prod(1.0 + 0.001 * x)


def _pair(f, x):
    """(rolled, straight) value+grad of ``f`` at ``x``, and the rolled function."""
    clear_memory_cache()          # compiled code is cached by graph: build both anew
    fr = symad.compile_grad(f)
    rolled = fr(x)
    old = policy.ROLL_MIN_NODES
    policy.ROLL_MIN_NODES = 10**12
    try:
        clear_memory_cache()
        fs = symad.compile_grad(f)
        straight = fs(x)
    finally:
        policy.ROLL_MIN_NODES = old
        clear_memory_cache()
    assert fs.stats["rolled"] is None
    return rolled, straight, fr


@pytest.mark.parametrize("f, n", [(rosen, 400), (lennard_jones, 3 * 20), (mixed, 300)])
def test_rolled_kernels_match_straight_line_bit_for_bit(f, n):
    x = np.random.default_rng(n).uniform(0.2, 1.5, n)
    if f is lennard_jones:
        x = np.arange(n, dtype=float) * 0.37 % 3.0 + x * 0.1
    (v, g), (v0, g0), fr = _pair(f, x)
    stats = fr.stats
    assert stats["rolled"] is not None, "this graph should have been rolled"
    assert stats["rolled"]["rolled_nodes"] > 0.8 * stats["nodes"]["ad"]
    assert v == v0 and np.array_equal(g, g0)
    # and both agree with the numpy reference interpreter
    gr = fr.grad_graph
    ref = interp.evaluate(gr, gr.outputs, dict(zip(gr.inputs, x)))
    np.testing.assert_allclose(np.r_[v, g], np.array(ref), rtol=1e-12, atol=1e-300)


def test_rosenbrock_becomes_two_fused_loops():
    x = np.linspace(-1.0, 1.0, 1000)
    f = symad.compile_grad(rosen)
    f(x)
    st = f.stats["rolled"]
    assert st["loops"] <= 3
    assert st["body_nodes"] < 100                 # of ~17k value+grad nodes
    assert "loop" in f.llvm_ir
    # the code LLVM optimises is small: the point of rolling
    assert f.stats["nodes"]["llvm_ir"] < 1000
    np.testing.assert_allclose(f(x)[1], _rosen_grad(x), rtol=1e-12)


def test_running_sum_total_stays_in_a_register():
    # Only the last partial sum is read after the loop (the value output): the loop keeps
    # it in a register instead of storing every partial sum to the buffer.
    x = np.linspace(-1.0, 1.0, 500)
    f = symad.compile_grad(rosen)
    f(x)
    plan = roll.plan(f.grad_graph, f.grad_graph.outputs)
    loops = [seg for seg in plan.segments if isinstance(seg, roll.Loop)]
    kept = [(seg, r) for seg in loops for r in seg.keeps]
    assert kept, "the running sum's total should be kept, not stored"
    for seg, r in kept:
        assert seg.stores[r] < 0
        assert plan.slot_of[seg.stop - seg.period + r] < 0
    (v, g), (v0, g0), _ = _pair(rosen, x)
    assert v == v0 and np.array_equal(g, g0)


def _rosen_grad(x):
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * (x[1:] - x[:-1] ** 2)
    return g


def test_pairs_of_particles_use_index_tables():
    x = np.arange(3 * 20, dtype=float) * 0.37 % 3.0
    f = symad.compile_grad(lennard_jones)
    f(x)
    g = f.grad_graph
    plan = roll.plan(g, g.outputs)
    tables = [op for seg in plan.segments if isinstance(seg, roll.Loop)
              for row in seg.operands for op in row if op.table is not None]
    assert tables, "the i < j pairs do not move evenly: they need index tables"
    # x[3i + c] for c = 0, 1, 2: tables equal up to a constant are one global in the IR
    emitted = [op for seg in plan.segments if isinstance(seg, roll.Loop)
               for row in seg.operands for op in row
               if (op.slot_table if op.kind == roll.NODE else op.table) is not None]
    globals_ = set(re.findall(r'@"(t\d+\.\d+\.\d+)" = internal constant', f.llvm_ir))
    assert 0 < len(globals_) < len(emitted)
    # The reverse pass over each pair's three coordinates moves evenly only per pair
    # (each coordinate's values are an array of their own): a loop of three times the
    # period, without tables, rather than one op per iteration with tables.
    loops = [seg for seg in plan.segments if isinstance(seg, roll.Loop)]
    coords = [seg for seg in loops if seg.trips >= 150 and
              sorted(plan.schedule[seg.start + r].op for r in range(seg.period)) ==
              ["add"] * 3 + ["mul"] * 3]
    assert coords and not any(op.table is not None or op.slot_table is not None
                              for seg in coords for row in seg.operands for op in row)
    # and each iteration is one whole pair: nothing carried from the one before, so LLVM
    # can vectorise the loop (see ``roll._rotated``)
    assert all(roll.operand_home(seg, r, op) != "carried" for seg in coords
               for r, row in enumerate(seg.operands) for op in row if op.kind == roll.NODE)
    # Likewise the additions into the gradient along a row of pairs (i, j > i): per pair,
    # so each coordinate's running sum for particle i is carried in a register.
    rows = [seg for seg in loops if
            [plan.schedule[seg.start + r].op for r in range(seg.period)] == ["sub", "add"] * 3]
    assert rows and all(sum(roll.operand_home(seg, r, op) == "carried"
                            for r, row in enumerate(seg.operands) for op in row) == 3
                        for seg in rows)


def test_heap_buffer_for_large_kernels(monkeypatch):
    monkeypatch.setattr(policy, "KERNEL_STACK_DOUBLES", 16)
    x = np.linspace(0.1, 0.9, 300)
    (v, g), (v0, g0), fr = _pair(rosen, x)
    assert fr.stats["rolled"] is not None
    assert '@"malloc"' in fr.llvm_ir and '@"free"' in fr.llvm_ir
    assert v == v0 and np.array_equal(g, g0)


def test_schedules_are_topological_and_complete():
    x = np.linspace(0.1, 0.9, 60)
    f = symad.compile_grad(mixed)
    f(x)
    g = f.grad_graph
    outs = g.outputs
    ops = {n for n in g.live(outs) if n.args}
    assert g.accumulations      # the reverse pass recorded its gradient sums
    for order in (roll.creation_schedule, roll.depth_first_schedule,
                  roll.value_first_schedule, roll.contributions_first_schedule):
        sched = order(g, outs)
        assert set(sched) == ops and len(sched) == len(ops)
        pos = {n: i for i, n in enumerate(sched)}
        assert all(pos[a] < pos[n] for n in sched for a in n.args if a in pos)


def test_rolled_batch_is_planned_apart_and_matches_single_calls(monkeypatch):
    # The batch kernel (four points at once) may take the contributions-first plan, which
    # fuses each pair's adjoint; its results equal the single calls' bit for bit.
    monkeypatch.setattr(policy, "ROLLED_BATCH_NODES", 1000)
    clear_memory_cache()
    n = 3 * 20
    f = symad.compile_grad(lennard_jones)
    rng = np.random.default_rng(11)
    xs = np.arange(n, dtype=float) * 0.37 % 3.0 + rng.uniform(0, 0.1, (9, n))
    values, grads = f.batch(xs, threads=1)
    # the batch kernel is rolled: four points per call, its values in a buffer it takes
    # as a third pointer (after the inputs and outputs)
    assert f.stats["kernel"]["batch"] == "rolled"
    (kernel4,) = [line for line in f.llvm_ir.splitlines()
                  if line.startswith("define") and '_kernel4"(' in line]
    assert kernel4.count("ptr") == 3
    g = f.grad_graph
    outs = g.outputs
    single = roll.plan(g, outs)
    batch = roll.batch_plan(g, outs, single)
    assert batch.work() < single.work()     # the fused reverse pass won for the batch
    for i in range(len(xs)):
        v, gi = f(xs[i])
        assert v == values[i] and np.array_equal(gi, grads[i])
    clear_memory_cache()


def test_deep_chain_schedules_without_recursion():
    # a 200k-node chain: the depth-first schedule must not recurse on depth
    g = symad.Graph()
    x = g.input("x")
    v = x
    for _ in range(200_000):
        v = g.node("add", (g.node("mul", (v, g.const(0.999))), x))
    assert len(roll.depth_first_schedule(g, [v])) == 400_000


# ---- random programs, rolled with every threshold lowered ---------------------------

UNARY = ["sin", "cos", "exp", "tanh", "neg", "abs", "sqrt", "log"]
BINARY = ["add", "sub", "mul", "div", "maximum", "minimum"]


def _random_elementwise(rng, n_steps):
    """A random elementwise program over arrays, reduced in a random way."""
    steps = []
    for _ in range(n_steps):
        if rng.random() < 0.5:
            steps.append(("u", rng.choice(UNARY), int(rng.integers(0, 1 << 30))))
        else:
            steps.append(("b", rng.choice(BINARY), int(rng.integers(0, 1 << 30))))
    reduce = rng.choice(["sum", "prod", "cumsum", "dot", "pairs"])

    seed = int(rng.integers(0, 1 << 30))

    def f(x):
        # gathered inputs and a different constant per element: index and constant tables
        perm = np.random.default_rng(seed).permutation(len(x))
        vals = [x, np.roll(x, 1) * 0.5 + 0.25, x[perm] * np.linspace(0.5, 1.5, len(x)),
                x[0] * x]
        for kind, op, k in steps:
            a = vals[k % len(vals)]
            if kind == "u":
                a = np.abs(a) + 0.5 if op in ("sqrt", "log") else a
                vals.append(getattr(np, {"neg": "negative"}.get(op, op))(a))
            else:
                b = vals[(k >> 8) % len(vals)]
                if op == "div":
                    b = b * b + 1.0
                vals.append(getattr(np, {"add": "add", "sub": "subtract", "mul": "multiply",
                                         "div": "divide"}.get(op, op))(a, b))
        y = np.tanh(vals[-1])
        if reduce == "sum":
            return np.sum(y)
        if reduce == "prod":
            return np.prod(1.0 + 0.1 * y)
        if reduce == "cumsum":
            return np.sum(np.cumsum(y) * y)
        if reduce == "dot":
            h = len(y) // 2
            return y[:h] @ y[h:2 * h]
        i, j = np.triu_indices(len(y), 1)
        return np.sum(y[i] * y[j])
    return f


@pytest.mark.parametrize("seed", range(24))
def test_random_programs_rolled_aggressively(seed, monkeypatch):
    monkeypatch.setattr(policy, "ROLL_MIN_TRIPS", 2)
    monkeypatch.setattr(policy, "ROLL_MIN_BODY_NODES", 2)
    monkeypatch.setattr(policy, "ROLL_MAX_PERIOD", 7)
    monkeypatch.setattr(policy, "ROLL_MIN_GAIN", 1)
    monkeypatch.setattr(policy, "ROLL_MIN_NODES", 0)
    rng = np.random.default_rng(seed)
    f = _random_elementwise(rng, int(rng.integers(2, 9)))
    n = int(rng.integers(5, 14))
    x = rng.uniform(-2.0, 2.0, n)
    (v, g), (v0, g0), fr = _pair(f, x)
    assert fr.stats["rolled"] is not None and fr.stats["rolled"]["loops"] > 0
    np.testing.assert_array_equal(np.r_[v, g], np.r_[v0, g0])
