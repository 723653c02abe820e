"""The two reverse passes: ``ad.vjp_plain`` (the reference, adjoint by adjoint) and the
preaccumulated pass every transformation runs (``symad/preaccumulate.py``).

They must give the same derivatives (exactly where the preaccumulated pass builds the
plain pass's nodes, else up to reassociation: rel 1e-12), also at kinks, where both mask
a selection's branch not taken with ``mul0``, and at second order; and preaccumulation
must not build more nodes than the plain pass, the reason it exists.
"""

from __future__ import annotations

import numpy as np
import pytest
from fuzz import random_program, run_program
from fuzz_kinks import kink_program, run
from programs import lennard_jones, rosen

import symad
from symad import api, interp
from symad.ad import jvp_nodes, vjp_nodes, vjp_plain
from symad.preaccumulate import vjp_preaccumulated
from symad.trace import apply

RTOL = 1e-12


def _trace(f, x):
    """(graph, its inputs, the scalar output) of ``f`` traced at ``x``."""
    st = api.trace_call(f, (np.asarray(x, dtype=np.float64),))
    return st.graph, list(st.graph.inputs), st.outputs[0]


def _grad(g, y, xs, preaccumulate: bool) -> list:
    bars = vjp_nodes(g, [y], [g.const(1.0)], xs, preaccumulate=preaccumulate)
    return [b if b is not None else g.const(0.0) for b in bars]


def _hessian(g, y, xs, preaccumulate: bool, mode: str) -> list:
    """Hessian nodes, row-major: reverse over reverse, or forward over reverse."""
    grads = _grad(g, y, xs, preaccumulate)
    if mode == "rev":
        return [h for gi in grads for h in _grad(g, gi, xs, preaccumulate)]
    cols = []
    for j in range(len(xs)):
        seed = [g.const(1.0) if k == j else None for k in range(len(xs))]
        cols.append([t if t is not None else g.const(0.0)
                     for t in jvp_nodes(g, grads, xs, seed)])
    return [cols[j][i] for i in range(len(xs)) for j in range(len(xs))]


def _values(g, xs, nodes, x) -> np.ndarray:
    return np.array(interp.evaluate(g, nodes, dict(zip(xs, np.ravel(x)))), dtype=np.float64)


def _assert_agree(got, want, what: str) -> None:
    """Equal non-finite entries (NaN where NaN, the same inf), finite ones within RTOL
    of the result's scale (reassociated sums may cancel)."""
    scale = 1.0 + float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, equal_nan=True,
                               err_msg=what)


def _fuzz_function(seed: int, max_steps: int = 25):
    rng = np.random.default_rng(seed)
    n_inputs = int(rng.integers(1, 4))
    steps = random_program(rng, n_inputs, int(rng.integers(1, max_steps)))

    def f(x):
        return run_program(steps, [x[i] for i in range(n_inputs)], apply, np.exp)
    return f, rng.uniform(-2, 2, n_inputs)


def _kink_function(seed: int, resolved: bool = False):
    steps, n_inputs, x, resolve, outs, _ = kink_program(seed)

    def f(x):
        vs = run(steps, [x[i] for i in range(n_inputs)], resolve if resolved else None, outs)
        return sum(vs[1:], vs[0])
    return f, x


def _logistic(x, n=30):
    r, v = x[0], x[1]
    for _ in range(n):
        v = r * v * (1.0 - v)
    return v


def _tanh_net(w):
    h = np.tanh(np.array([[0.3, -0.2], [0.5, 0.1], [-0.4, 0.7]]) @ w[:2].reshape(2, 1) + w[2])
    return np.sum((h * w[3] - 0.5) ** 2)


_X_LJ = np.array([0.0, 0, 0, 1.1, 0, 0, 0, 1.2, 0.1, 0.9, 0.8, 0.3])
PROGRAMS = [
    ("rosen", rosen, np.array([0.3, -0.7, 1.2, 0.5, -1.1])),
    ("lennard_jones", lennard_jones, _X_LJ),
    ("logistic", _logistic, np.array([3.2, 0.3])),     # periodic, not chaotic: FD works
    ("tanh_net", _tanh_net, np.array([0.4, -0.6, 0.1, 1.3])),
]


# ---- the plain pass on its own ---------------------------------------------------------------

def test_plain_pass_known_gradient():
    # d/dx (log x + x y - sin y) = 1/x + y, d/dy = x - cos y (Baydin et al.)
    g, xs, y = _trace(lambda v: np.log(v[0]) + v[0] * v[1] - np.sin(v[1]), [2.0, 5.0])
    bars = vjp_plain(g, [y], [g.const(1.0)], xs)
    assert _values(g, xs, bars, [2.0, 5.0]).tolist() == [5.5, 2.0 - np.cos(5.0)]


def test_plain_pass_structural_zeros():
    g, xs, y = _trace(lambda v: np.sin(v[0]) * 2.0, [0.5, 1.0])
    assert vjp_plain(g, [y], [g.const(1.0)], xs)[1] is None       # y ignores v[1]
    assert vjp_plain(g, [y], [None], xs) == [None, None]           # no cotangent
    assert vjp_plain(g, [y], [g.const(1.0)], []) == []
    seed = g.variable("ct")
    (bar,) = vjp_plain(g, [xs[0]], [seed], [xs[0]])                # d x / d x
    assert bar is seed


def test_vjp_nodes_chooses_the_pass():
    for preaccumulate, vjp in ((True, vjp_preaccumulated), (False, vjp_plain)):
        g, xs, y = _trace(_logistic, [3.7, 0.3])
        want = vjp(g, [y], [g.const(1.0)], xs)
        assert vjp_nodes(g, [y], [g.const(1.0)], xs, preaccumulate=preaccumulate) == want


def test_transformations_use_the_preaccumulated_pass():
    x = np.array([3.7, 0.3])
    g, xs, y = _trace(_logistic, x)
    want = _values(g, xs, vjp_preaccumulated(g, [y], [g.const(1.0)], xs), x)
    assert symad.grad(_logistic)(x).tobytes() == want.tobytes()


# ---- the two passes agree ----------------------------------------------------------------------

@pytest.mark.parametrize("name, f, x", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_passes_agree_on_programs(name, f, x):
    g, xs, y = _trace(f, x)
    plain = _values(g, xs, _grad(g, y, xs, False), x)
    pre = _values(g, xs, _grad(g, y, xs, True), x)
    _assert_agree(pre, plain, name)
    np.testing.assert_allclose(pre, symad.check.numerical_grad(f, x), rtol=1e-6, atol=1e-6)


def test_passes_agree_on_random_programs():
    exact = 0
    for seed in range(200):
        f, x = _fuzz_function(seed)
        g, xs, y = _trace(f, x)
        plain_nodes = _grad(g, y, xs, False)
        pre_nodes = _grad(g, y, xs, True)
        plain, pre = _values(g, xs, plain_nodes, x), _values(g, xs, pre_nodes, x)
        if pre_nodes == plain_nodes:
            # the same (interned) nodes: nothing was preaccumulated, nothing reassociated
            assert pre.tobytes() == plain.tobytes()
            exact += 1
        _assert_agree(pre, plain, f"fuzz seed {seed}")
    assert 0 < exact < 200      # both cases occur


def test_passes_agree_at_kinks():
    # Selections exactly at their switch points with singular branches not taken: both
    # passes mask alike, and match the program with each selection resolved.
    for seed in range(120):
        f, x = _kink_function(seed)
        f_ref, _ = _kink_function(seed, resolved=True)
        with np.errstate(all="ignore"):
            want = symad.grad(f_ref)(x)
        if not np.all(np.isfinite(want)):
            continue            # the program itself overflows
        g, xs, y = _trace(f, x)
        plain = _values(g, xs, _grad(g, y, xs, False), x)
        pre = _values(g, xs, _grad(g, y, xs, True), x)
        _assert_agree(pre, plain, f"kink seed {seed}")
        np.testing.assert_allclose(plain, want, rtol=1e-9, atol=1e-9 * (1 + np.max(abs(want))),
                                   err_msg=f"kink seed {seed}")


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_hessians_agree(mode):
    cases = [(name, f, x) for name, f, x in PROGRAMS if name != "lennard_jones"]
    cases += [(f"fuzz {s}", *_fuzz_function(s, 12)) for s in range(60)]
    cases += [(f"kink {s}", *_kink_function(s)) for s in range(60)]
    for name, f, x in cases:
        g, xs, y = _trace(f, x)
        plain = _values(g, xs, _hessian(g, y, xs, False, mode), x)
        pre = _values(g, xs, _hessian(g, y, xs, True, mode), x)
        _assert_agree(pre, plain, f"{name} hessian {mode}")


# ---- what preaccumulation buys ---------------------------------------------------------------

def _gradient_ops(f, x, preaccumulate: bool) -> int:
    """Operations the gradient adds to the traced graph."""
    g, xs, y = _trace(f, x)
    before = len(g.nodes)
    bars = _grad(g, y, xs, preaccumulate)
    return sum(1 for n in g.live(bars) if n.id >= before and n.args)


@pytest.mark.parametrize("name, f, x", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_preaccumulation_builds_no_more_nodes(name, f, x):
    assert _gradient_ops(f, x, True) <= _gradient_ops(f, x, False)


def test_preaccumulation_shortens_the_logistic_chain():
    # x <- r x (1 - x): three dependent operations per step adjoint by adjoint, one
    # preaccumulated, and as many operations in all.
    depth = {}
    for preaccumulate in (False, True):
        g, xs, y = _trace(_logistic, [3.7, 0.3])
        seed = g.variable("seed")
        (_, bar_x0) = vjp_nodes(g, [y], [seed], xs, preaccumulate=preaccumulate)
        chain = {seed: 0}
        for n in g.nodes[seed.id + 1:bar_x0.id + 1]:
            reached = [chain[a] for a in n.args if a in chain]
            if reached:
                chain[n] = 1 + max(reached)
        depth[preaccumulate] = chain[bar_x0]
    assert depth == {False: 3 * 30, True: 30}
    x = np.array([3.7, 0.3])
    assert _gradient_ops(_logistic, x, True) == _gradient_ops(_logistic, x, False)


def test_preaccumulation_builds_fewer_nodes_on_random_programs_in_all():
    # Not on every program: where a costly lazy node's merge saves less than its weight
    # costs, one node more (3 of these 200 programs), one fewer on 8.
    plain = pre = worst = 0
    for seed in range(200):
        f, x = _fuzz_function(seed)
        a, b = _gradient_ops(f, x, False), _gradient_ops(f, x, True)
        plain, pre, worst = plain + a, pre + b, max(worst, b - a)
    assert pre < plain and worst <= 1
