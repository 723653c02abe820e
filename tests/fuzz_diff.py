"""Differential checks of one random program: interpreter, compiled code, sympy, central
differences; values, gradients and Hessians. Shared by ``tests/test_fuzz_compiled.py``
(bounded budget) and ``benchmarks/fuzz_long.py`` (hundreds to thousands of programs).

Two kinds of program, both over the whole op table:

- *squashed* (``tests/fuzz.py``): every operand is mapped smoothly into its op's domain,
  so every value is finite and sympy's exact derivatives apply;
- *raw*: operands are used as they are, so programs leave the domains and produce NaN
  and ±inf; the compiled code must give the interpreter's (numpy's) NaN/inf pattern in
  value and gradient, exactly.

``check_program`` returns a list of mismatch descriptions (empty: all agree).
"""

from __future__ import annotations

import contextlib
import signal

import mpmath
import numpy as np
import sympy as sp
from fuzz import random_program, run_program

import symad
from symad.ops import OPS
from symad.trace import apply

# Every elementwise op but mul0 (internal to AD); floor/sign are compared numerically
# (not by sympy).
ALL_OPS = sorted(n for n, s in OPS.items()
                 if s.arity > 0 and not s.structural and n != "mul0")
NON_SMOOTH = frozenset(n for n, s in OPS.items()
                       if s.convention or n in ("floor", "sign", "where", "lt", "le", "gt",
                                                "ge", "eq", "ne", "maximum", "minimum",
                                                "abs"))

mpmath.mp.dps = 30
_MP = [{"Heaviside": lambda d, h0=0.5: mpmath.mpf(1 if d > 0 else (0 if d < 0 else h0)),
        "DiracDelta": lambda *a: mpmath.mpf(0)}, "mpmath"]


def raw_program(rng, n_inputs: int, n_steps: int) -> list:
    steps = []
    n = n_inputs
    for _ in range(n_steps):
        op = ALL_OPS[rng.integers(len(ALL_OPS))]
        operands = tuple(int(rng.integers(n)) for _ in range(OPS[op].arity))
        attrs = (int(rng.integers(-3, 6)),) if op == "powi" else ()
        steps.append((op, operands, attrs))
        n += 1
    return steps


def run_raw(steps, inputs):
    values = list(inputs)
    for op, operands, attrs in steps:
        values.append(apply(op, tuple(values[i] for i in operands), attrs))
    out = values[-1]
    for v in values[-3:-1]:
        out = out + v
    return out


def program_fn(steps, n_inputs, raw=False):
    def f(x):
        xs = [x[i] for i in range(n_inputs)]
        return run_raw(steps, xs) if raw else run_program(steps, xs, apply, np.exp)
    return f


def _same_ieee(a, b, rtol, atol):
    """Equal NaN pattern, equal infinities, finite parts close."""
    a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    if a.shape != b.shape:
        return False
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    inf = np.isinf(a) | np.isinf(b)
    if not np.array_equal(a[inf], b[inf]):
        return False
    fin = np.isfinite(a) & np.isfinite(b)
    return bool(np.all(np.abs(a[fin] - b[fin]) <= atol + rtol * np.abs(b[fin])))


class _TooSlow(Exception):
    pass


@contextlib.contextmanager
def _budget(seconds):
    def alarm(*_):
        raise _TooSlow
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _exact(expr, syms, x):
    return float(sp.lambdify(syms, expr, _MP)(*[mpmath.mpf(float(v)) for v in x]))


def _sympy_expr(steps, syms):
    return run_program(steps, list(syms), lambda op, a, at: OPS[op].sympy(*a, *at), sp.exp)


def check_program(seed: int, *, raw=False, use_sympy=True, hessian=True,
                  sympy_seconds=10, stats=None) -> list[str]:
    """Run one random program through every path; return mismatch descriptions.

    ``stats`` (a dict) counts which comparisons ran.
    """
    stats = {} if stats is None else stats

    def count(k):
        stats[k] = stats.get(k, 0) + 1

    rng = np.random.default_rng(seed)
    n_in = int(rng.integers(1, 4))
    if raw:
        steps = raw_program(rng, n_in, int(rng.integers(1, 8)))
        x = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, 2.5, -3.0, 0.5, np.inf, -np.inf,
                                 np.nan, 40.0, 1e-300]), n_in)
        x = np.where(rng.random(n_in) < 0.5, rng.uniform(-3, 3, n_in), x)
    else:
        steps = random_program(rng, n_in, int(rng.integers(1, 7)))
        x = rng.uniform(-2, 2, n_in)
    f = program_fn(steps, n_in, raw)
    tag = f"seed={seed} raw={raw} x={x.tolist()} program={steps}"
    bad = []

    # -- interpreter vs compiled, value and gradient ------------------------------------
    with np.errstate(all="ignore"):
        v_i, g_i = symad.value_and_grad(f)(x)
    cf = symad.compile_grad(f)
    v_c, g_c = cf(x)
    count("programs")
    # libm and numpy's own transcendental kernels may differ in the last ulp; in raw
    # programs cancellation can amplify that, so raw compares finite parts loosely and
    # the NaN/inf pattern exactly.
    rtol, atol = (1e-6, 1e-9) if raw else (1e-11, 1e-13)
    sympy_rtol = 1e-9
    if not raw and np.all(np.isfinite(g_i)):
        # Ill-conditioned programs (cancellation next to a pole, e.g. seed 1598: a div
        # whose squashed denominator is ~1e-3 from a difference of O(1) terms) amplify
        # last-ulp differences between glibc and numpy's own exp/sinh. Measure the
        # amplification by moving x a few ulps and widen tolerances by it.
        with np.errstate(all="ignore"):
            v_p, g_p = symad.value_and_grad(f)(x + 4e-16 * np.maximum(1.0, np.abs(x)))
        amp = np.max(np.abs(np.append(g_p - g_i, v_p - v_i)) /
                     (1e-300 + np.abs(np.append(g_i, v_i)))) / 4e-16
        if amp > 1e3:
            count("ill_conditioned")
            rtol = sympy_rtol = min(1e-6, max(rtol, 1e-15 * amp))
    if not _same_ieee(v_c, v_i, rtol, atol):
        bad.append(f"compiled value {v_c!r} != interpreter {v_i!r}: {tag}")
    if not _same_ieee(g_c, g_i, rtol, atol):
        bad.append(f"compiled grad {g_c} != interpreter {g_i}: {tag}")
    count("value_grad")

    # -- second order: compiled Hessian vs interpreted (forward-over-reverse) ------------
    if hessian:
        with np.errstate(all="ignore"):
            h_i = symad.hessian(f)(x)
        h_c = symad.compile(symad.hessian(f))(x)
        if not _same_ieee(h_c, h_i, rtol, atol * 10):
            bad.append(f"compiled Hessian {h_c.tolist()} != interpreter {h_i.tolist()}: "
                       f"{tag}")
        count("hessian")

    if raw or not (np.isfinite(v_i) and np.all(np.isfinite(g_i))):
        return bad

    # -- central differences (smooth programs only: a step may cross a kink) -------------
    if not any(op in NON_SMOOTH for op, _, _ in steps):
        value = symad.compile(f)
        g_n = symad.numerical_grad(lambda y: value(y), x)
        scale = 1.0 + abs(v_c) + np.max(np.abs(g_c))
        if not np.all(np.abs(g_n - g_c) <= 1e-6 * scale):
            bad.append(f"central differences {g_n} vs compiled grad {g_c}: {tag}")
        count("central_diff")
        if hessian and np.all(np.isfinite(h_c)):
            grad_only = symad.compile(symad.grad(f))
            h_n = np.array([symad.numerical_grad(lambda y, k=k: grad_only(y)[k], x)
                            for k in range(n_in)])
            hscale = 1.0 + np.max(np.abs(g_c)) + np.max(np.abs(h_c))
            if not np.all(np.abs(h_n - h_c) <= 1e-5 * hscale):
                bad.append(f"central differences of grad {h_n.tolist()} vs compiled "
                           f"Hessian {h_c.tolist()}: {tag}")
            count("central_diff_2")

    # -- sympy.diff at 30 digits ---------------------------------------------------------
    if use_sympy and not any(op in ("floor", "sign") for op, _, _ in steps):
        syms = sp.symbols(f"x0:{n_in}", real=True)
        try:
            with _budget(sympy_seconds):
                expr = _sympy_expr(steps, syms)
                v_e = _exact(expr, syms, x)
                g_e = np.array([_exact(sp.diff(expr, s), syms, x) for s in syms])
                h_e = None
                if hessian and n_in <= 2 and len(steps) <= 5:
                    h_e = np.array([[_exact(sp.diff(expr, a, b), syms, x) for b in syms]
                                    for a in syms])
        except _TooSlow:
            count("sympy_too_slow")
            return bad
        except ValueError as exc:
            # sympy leaves some derivatives unevaluated (d/dx of a function of a non-
            # symbol, e.g. from Abs or piecewise pieces): no exact reference here.
            if "Derivative" not in str(exc):
                raise
            count("sympy_unevaluated")
            return bad
        for name, got, want, rt, at in (("value", v_c, v_e, sympy_rtol, 1e-12),
                                        ("grad", g_c, g_e, sympy_rtol, 1e-11)):
            if not np.allclose(got, want, rtol=rt, atol=at):
                bad.append(f"compiled {name} {got} vs sympy {want}: {tag}")
        count("sympy_grad")
        if h_e is not None and np.all(np.isfinite(h_e)):
            if not np.allclose(h_c, h_e, rtol=1e-8, atol=1e-10):
                bad.append(f"compiled Hessian {h_c.tolist()} vs sympy {h_e.tolist()}: "
                           f"{tag}")
            count("sympy_hessian")
    return bad
