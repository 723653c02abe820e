"""Differential fuzzing: random programs over the op table, symad's values, gradients and
Hessians (both modes) against sympy.diff evaluated at 30 digits. A longer, standalone run:
``python benchmarks/fuzz_long.py``."""

import contextlib
import signal

import mpmath
import numpy as np
import sympy as sp
from fuzz import random_program, run_program
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

import symad
from symad.ops import OPS
from symad.trace import apply


def random_case(seed: int, max_inputs: int, min_steps: int, max_steps: int):
    """(rng, number of inputs, program, a point): below ``max_inputs`` inputs, from
    ``min_steps`` to below ``max_steps`` steps."""
    rng = np.random.default_rng(seed)
    n_inputs = int(rng.integers(1, max_inputs))
    steps = random_program(rng, n_inputs, int(rng.integers(min_steps, max_steps)))
    return rng, n_inputs, steps, rng.uniform(-2, 2, n_inputs)


def symad_fn(steps, n_inputs):
    def f(x):
        return run_program(steps, [x[i] for i in range(n_inputs)], apply, np.exp)
    return f


# Evaluate sympy results with mpmath at 30 digits through lambdify: sympy's own evalf
# tries to simplify steps and derivatives symbolically, which can take minutes.
mpmath.mp.dps = 30
_MP = [{"Heaviside": lambda d, h0=0.5: mpmath.mpf(1 if d > 0 else (0 if d < 0 else h0)),
        "DiracDelta": lambda *a: mpmath.mpf(0)}, "mpmath"]


def exact(expr, syms, x):
    return float(sp.lambdify(syms, expr, _MP)(*[mpmath.mpf(float(v)) for v in x]))


class _SympyTooSlow(Exception):
    pass


@contextlib.contextmanager
def sympy_budget(seconds=10):
    """Reject (not fail) the rare program whose sympy derivative takes too long to build."""
    def alarm(*_):
        raise _SympyTooSlow

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    except _SympyTooSlow:
        assume(False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def sympy_expr(steps, syms):
    def sp_apply(op, args, attrs):
        return OPS[op].sympy(*args, *attrs)
    return run_program(steps, list(syms), sp_apply, sp.exp)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_programs_agree_with_sympy(seed):
    _, n_inputs, steps, x = random_case(seed, 4, 1, 6)
    f = symad_fn(steps, n_inputs)
    value, g = symad.value_and_grad(f)(x)
    # A squashed operand can land exactly on a pole (1/0): IEEE says inf, sympy says zoo.
    assume(np.isfinite(value) and np.all(np.isfinite(g)))
    syms = sp.symbols(f"x0:{n_inputs}", real=True)
    with sympy_budget():
        expr = sympy_expr(steps, syms)
        exact_value = exact(expr, syms, x)
        exact_grad = [exact(sp.diff(expr, s), syms, x) for s in syms]
    np.testing.assert_allclose(value, exact_value, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g, exact_grad, rtol=1e-9, atol=1e-11,
                               err_msg=f"program {steps}")


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_programs_vjp_of_two_outputs(seed):
    # Two seeded outputs that share nodes (a program and one of its prefixes) and
    # symbolic cotangents: the reverse pass's adjoints from two bases, passed on through
    # single-use nodes and added where they meet, must give c1 grad F + c2 grad G.
    rng, n_inputs, steps, x = random_case(seed, 4, 2, 12)
    cut = int(rng.integers(1, len(steps)))
    f, g = symad_fn(steps, n_inputs), symad_fn(steps[:cut], n_inputs)
    _, grad_f = symad.value_and_grad(f)(x)
    _, grad_g = symad.value_and_grad(g)(x)
    assume(np.all(np.isfinite(grad_f)) and np.all(np.isfinite(grad_g)))
    c1, c2 = rng.uniform(-2, 2, 2)
    _, vjp_fn = symad.vjp(lambda x: (f(x), g(x)), x)
    (bar,) = vjp_fn((c1, c2))
    np.testing.assert_allclose(bar, c1 * grad_f + c2 * grad_g, rtol=1e-12, atol=1e-12,
                               err_msg=f"program {steps}, outputs at {cut}")


@settings(max_examples=25, deadline=None)
@example(seed=811636)   # 0/0 in the value, finite Hessian: must be rejected, not failed
@given(st.integers(0, 2**32 - 1))
def test_random_programs_second_order(seed):
    _, n_inputs, steps, x = random_case(seed, 3, 1, 5)
    f = symad_fn(steps, n_inputs)
    h_fwd = symad.hessian(f)(x)
    # A squashed operand exactly at a pole (0/0 = NaN in the value) leaves finite partial
    # derivatives in AD but a NaN sympy expression: nothing to compare there.
    assume(np.all(np.isfinite(h_fwd)) and np.isfinite(symad.value_and_grad(f)(x)[0]))
    h_rev = symad.hessian(f, mode="rev")(x)
    np.testing.assert_allclose(h_fwd, h_rev, rtol=1e-10, atol=1e-12)
    syms = sp.symbols(f"x0:{n_inputs}", real=True)
    with sympy_budget():
        expr = sympy_expr(steps, syms)
        h_exact = np.array([[exact(sp.diff(expr, a, b), syms, x) for b in syms] for a in syms])
    np.testing.assert_allclose(h_fwd, h_exact, rtol=1e-8, atol=1e-10, err_msg=f"program {steps}")
