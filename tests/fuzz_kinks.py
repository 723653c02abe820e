"""Differential fuzzing at kinks: random programs with ``where``, ``maximum``,
``minimum``, clips and ``abs`` evaluated exactly at their switch points (a condition's
operands equal, ties, a clip at its bound, ``abs`` at 0), with branches not taken that
are singular there (``sqrt``, ``log``, ``1/d`` at 0, or NaN beyond). Shared by
``tests/test_robust2_adwhere.py`` (a small CI budget) and ``benchmarks/fuzz_kinks.py``
(long runs).

Every derivative of every transformation order must equal the *resolved* program's:
the same program with each selection replaced by what it selects at the point (the
branch taken; ``a/2 + b/2`` for a tie of ``maximum``/``minimum``, whose gradient splits
evenly; ``sign(a) * a`` for ``abs``). The resolved program has no selection and no
singular value, so reverse-over-reverse AD of it is an independent reference that needs
no masking. Programs are built while evaluating them at the point, so each switch is
placed exactly: thresholds are values computed by IEEE-exact operations (``+ - * neg``
and selections), identical in numpy and in compiled code.

``check_kink_program`` returns a list of mismatch descriptions (empty: all agree).
"""

from __future__ import annotations

import math

import numpy as np

import symad
from symad.trace import apply

# Ops whose results are correctly rounded in numpy and in compiled code alike, so a
# switch placed on their value is at the same place in both.
_EXACT_OPS = frozenset(("add", "sub", "mul", "neg", "abs", "maximum", "minimum", "where"))
_SMOOTH_UNARY = ("sin", "cos", "tanh", "atan", "exp", "neg", "expm1")
_SMOOTH_BINARY = ("add", "sub", "mul")
_COMPARISONS = ("gt", "ge", "lt", "le", "eq", "ne")
_INPUT_VALUES = (0.0, 0.0, 1.0, -1.0, 0.5, 2.0, -0.5)


class _Builder:
    """Steps ``(op, operand indices, attrs)`` (``("const", (), (v,))`` for constants)
    and their values at the point, computed as they are emitted."""

    def __init__(self, x):
        self.steps: list = []
        self.vals = [float(v) for v in x]
        self.exact = [True] * len(x)
        self.visible = list(range(len(x)))    # values later steps may use
        self.resolve: dict[int, tuple] = {}   # value index -> how the reference replaces it
        self.switches = 0                     # selections exactly at their switch point
        self.n_inputs = len(x)

    def emit(self, op, operands=(), attrs=(), visible=True, exact=None) -> int:
        if op == "const":
            v = float(attrs[0])
        else:
            v = apply(op, tuple(self.vals[i] for i in operands), attrs)
        self.steps.append((op, tuple(operands), tuple(attrs)))
        self.vals.append(v)
        if exact is None:
            exact = op == "const" or (op in _EXACT_OPS and
                                      all(self.exact[i] for i in operands))
        self.exact.append(exact)
        k = len(self.vals) - 1
        if visible and math.isfinite(v):
            self.visible.append(k)
        return k

    def const(self, v: float) -> int:
        return self.emit("const", (), (float(v),), visible=False)

    def pick(self, rng, exact=False) -> int:
        pool = [i for i in self.visible if self.exact[i]] if exact else self.visible
        if not pool:
            pool = list(range(self.n_inputs))
        # Prefer recent values so programs are deep, not just wide.
        back = min(len(pool), int(rng.geometric(0.45)))
        return pool[-back] if rng.random() < 0.75 else pool[int(rng.integers(len(pool)))]

    # ---- pieces -------------------------------------------------------------------

    def smooth(self, rng, depth=2) -> int | None:
        """A few smooth ops on visible values (None when they would overflow)."""
        for _ in range(1 + int(rng.integers(depth))):
            a = self.pick(rng)
            if rng.random() < 0.5:
                op = _SMOOTH_UNARY[int(rng.integers(len(_SMOOTH_UNARY)))]
                if op in ("exp", "expm1") and abs(self.vals[a]) > 5:
                    op = "tanh"
                operands, attrs = (a,), ()
            elif rng.random() < 0.2:
                op, operands, attrs = "powi", (a,), (int(rng.integers(2, 4)),)
            else:
                op = _SMOOTH_BINARY[int(rng.integers(len(_SMOOTH_BINARY)))]
                operands, attrs = (a, self.pick(rng)), ()
            v = apply(op, tuple(self.vals[i] for i in operands), attrs)
            if not (math.isfinite(v) and abs(v) < 1e4):
                return None
            self.emit(op, operands, attrs)
        return len(self.vals) - 1

    def distance(self, rng) -> int:
        """``d = a - t`` for an exactly computed ``a``: 0 at the point, or off by +-1/2, 1."""
        a = self.pick(rng, exact=True)
        off = 0.0 if rng.random() < 0.75 else float(rng.choice([-1.0, -0.5, 0.5, 1.0]))
        return self.emit("sub", (a, self.const(self.vals[a] + off)))

    def singular(self, rng, d: int) -> int:
        """A value with an infinite derivative at ``d == 0`` (or NaN beyond): hidden from
        later steps, it may only be a selection's operand that is not selected."""
        if rng.random() < 0.3:
            d = self.emit("neg", (d,), visible=False)
        kind = int(rng.integers(8))
        hide = {"visible": False}
        if kind == 0:
            return self.emit("sqrt", (d,), **hide)
        if kind == 1:
            return self.emit("log", (d,), **hide)
        if kind == 2:
            return self.emit("div", (self.const(1.0), d), **hide)
        if kind == 3:
            return self.emit("mul", (d, self.emit("log", (d,), **hide)), **hide)
        if kind == 4:
            return self.emit("pow", (d, self.const(0.5)), **hide)
        if kind == 5:
            return self.emit("powi", (d,), (-2,), **hide)
        if kind == 6:
            return self.emit("asin", (self.emit("add", (d, self.const(1.0)), **hide),), **hide)
        s = self.emit("sqrt", (d,), **hide)
        return self.emit("mul", (s, self.emit("sin", (s,), **hide)), **hide)

    def branch(self, rng, d: int, taken: bool) -> int:
        """A selection's operand: smooth where selected, often singular where not."""
        if not taken and rng.random() < 0.7:
            return self.singular(rng, d)
        r = rng.random()
        if r < 0.3:
            return self.emit("mul", (d, self.pick(rng)))
        if r < 0.5:
            return self.emit("sin", (d,))
        s = self.smooth(rng, 2)
        return d if s is None else s

    # ---- selections at their switch points --------------------------------------------

    def where(self, rng) -> None:
        d = self.distance(rng)
        if rng.random() < 0.2:
            c = d                           # where(d, ...): d != 0 selects the first
        else:
            op = _COMPARISONS[int(rng.integers(len(_COMPARISONS)))]
            if rng.random() < 0.5:
                c = self.emit(op, (d, self.const(0.0)))
            else:
                a = self.steps[d - self.n_inputs][1][0]         # d = a - t
                c = self.emit(op, (a, self.steps[d - self.n_inputs][1][1]))
        first = self.vals[c] != 0 or math.isnan(self.vals[c])
        a = self.branch(rng, d, first)
        b = self.branch(rng, d, not first)
        self.switches += self.vals[d] == 0
        k = self.emit("where", (c, a, b),
                      exact=self.exact[c] and self.exact[a if first else b])
        self.resolve[k] = ("pick", 1 if first else 2)

    def extreme(self, rng, op: str) -> None:
        """maximum/minimum at a tie, or with a singular operand it does not select."""
        a = self.pick(rng, exact=True)
        r = rng.random()
        if r < 0.4:
            ties = [i for i in self.visible if self.exact[i] and i != a and
                    self.vals[i] == self.vals[a]]
            b = ties[int(rng.integers(len(ties)))] if ties else self.const(self.vals[a])
        elif r < 0.8:
            b = self.singular(rng, self.distance(rng))
        else:
            b = self.pick(rng)
        va, vb = self.vals[a], self.vals[b]
        if 0.4 <= r < 0.8:
            if not (vb < va if op == "maximum" else vb > va):
                return                      # the singular operand would be selected
        elif va != vb and abs(va - vb) < 1e-9 * (1 + abs(va)):
            b = self.const(va)              # too close to call across libm and numpy
        else:
            self.switches += va == vb
        if rng.random() < 0.5:
            a, b = b, a
        k = self.emit(op, (a, b))
        self.resolve[k] = ("tie",) if self.vals[a] == self.vals[b] else \
            ("pick", 0 if self.vals[k] == self.vals[a] else 1)

    def clip(self, rng) -> None:
        """clip(a, lo, hi) = minimum(maximum(a, lo), hi) with a at a bound, or a singular
        value outside the bounds."""
        if rng.random() < 0.5:
            a = self.pick(rng, exact=True)
            v = self.vals[a]
            lo, hi = (v, v + 1.0) if rng.random() < 0.5 else (v - 1.0, v)
        else:
            a = self.singular(rng, self.distance(rng))
            v = self.vals[a]
            if math.isnan(v) or -1.5 <= v <= 1.5:
                return                      # NaN passes maximum; inside: selected
            lo, hi = -1.5, 1.5
        self.switches += v in (lo, hi)
        m = self.emit("maximum", (a, self.const(lo)))
        self.resolve[m] = ("tie",) if self.vals[a] == lo else \
            ("pick", 0 if self.vals[a] > lo else 1)
        k = self.emit("minimum", (m, self.const(hi)))
        self.resolve[k] = ("tie",) if self.vals[m] == hi else \
            ("pick", 0 if self.vals[m] < hi else 1)

    def absolute(self, rng) -> None:
        a = self.distance(rng) if rng.random() < 0.7 else self.pick(rng)
        if self.vals[a] != 0 and abs(self.vals[a]) < 1e-9:
            return
        self.switches += self.vals[a] == 0
        k = self.emit("abs", (a,))
        self.resolve[k] = ("sign", float(np.sign(self.vals[a])))


def kink_program(seed: int):
    """(steps, n_inputs, point, resolution, output indices, selections at their switch)
    for one seed; see the module docstring."""
    rng = np.random.default_rng(seed)
    n_inputs = int(rng.integers(1, 4))
    x = rng.choice(np.array(_INPUT_VALUES), n_inputs)
    x = np.where(rng.random(n_inputs) < 0.2, rng.uniform(-2, 2, n_inputs), x)
    b = _Builder(x)
    for _ in range(int(rng.integers(2, 7))):
        r = rng.random()
        if r < 0.35:
            b.where(rng)
        elif r < 0.55:
            b.extreme(rng, "maximum" if rng.random() < 0.5 else "minimum")
        elif r < 0.7:
            b.clip(rng)
        elif r < 0.82:
            b.absolute(rng)
        else:
            b.smooth(rng, 2)
    # The output: the last few visible values (their sum is the scalar program).
    outs = b.visible[-3:]
    return b.steps, n_inputs, x, b.resolve, outs, b.switches


def run(steps, xs, resolve=None, outs=()):
    """The program's output values (tracers or numbers) for inputs ``xs``; with
    ``resolve``, each selection replaced by what it selects at the point."""
    values = list(xs)
    n = len(xs)
    for k, (op, operands, attrs) in enumerate(steps):
        args = tuple(values[i] for i in operands)
        how = resolve.get(k + n) if resolve is not None else None
        if how is None:
            values.append(float(attrs[0]) if op == "const" else apply(op, args, attrs))
        elif how[0] == "pick":
            values.append(args[how[1]])
        elif how[0] == "tie":
            values.append(0.5 * args[0] + 0.5 * args[1])
        else:                                           # abs -> sign(a) * a
            values.append(how[1] * args[0])
    return [values[i] for i in outs]


_ARRAY_FNS = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "neg": lambda a: -a, "powi": lambda a, n: a ** n,
    "pow": lambda a, b: a ** b, "abs": np.abs, "asin": np.arcsin, "atan": np.arctan,
    "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
    "where": np.where, "maximum": np.maximum, "minimum": np.minimum,
}


def run_numpy(steps, xs, outs):
    """The program with numpy functions (for the array-level tracer)."""
    values = list(xs)
    for op, operands, attrs in steps:
        if op == "const":
            values.append(float(attrs[0]))
            continue
        fn = _ARRAY_FNS.get(op) or getattr(np, op)
        values.append(fn(*(values[i] for i in operands), *attrs))
    return [values[i] for i in outs]


def _close(got, want) -> bool:
    """No NaN where the reference has a number, and within ~1e-9 of its scale."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not np.all(np.isfinite(got)):
        return False
    scale = 1.0 + float(np.max(np.abs(want), initial=0.0))
    return bool(np.all(np.abs(got - want) <= 1e-9 * scale))


def check_kink_program(seed: int, *, compiled=True, arrays=False, third=True,
                       stats=None) -> list[str]:
    """Every transformation order of one program at its kinks against the resolved
    program's reverse-over-reverse derivatives; ``stats`` counts what ran."""
    stats = {} if stats is None else stats

    def count(k, n=1):
        stats[k] = stats.get(k, 0) + n

    steps, n_in, x, resolve, outs, switches = kink_program(seed)

    def f(x):
        vs = run(steps, [x[i] for i in range(n_in)], None, outs)
        return sum(vs[1:], vs[0])

    def f_ref(x):
        vs = run(steps, [x[i] for i in range(n_in)], resolve, outs)
        return sum(vs[1:], vs[0])

    def vec(x):
        return np.array(run(steps, [x[i] for i in range(n_in)], None, outs), dtype=object)

    def vec_ref(x):
        return np.array(run(steps, [x[i] for i in range(n_in)], resolve, outs), dtype=object)

    v = np.random.default_rng(seed + 1).uniform(-1, 1, n_in)
    with np.errstate(all="ignore"):
        value, g_ref = symad.value_and_grad(f_ref)(x)
        h_ref = symad.hessian(f_ref, mode="rev")(x)
        j_ref = symad.jacobian(vec_ref, mode="rev")(x)
    if not (np.isfinite(value) and np.all(np.isfinite(g_ref)) and
            np.all(np.isfinite(h_ref)) and np.all(np.isfinite(j_ref))):
        count("rejected")       # overflow in the program itself: nothing to compare
        return []
    count("programs")
    count("selections", len(resolve))
    count("at_switch", switches)
    tag = f"seed={seed} x={x.tolist()} program={steps} outputs={outs}"
    bad = []

    def compare(name, got, want):
        count("comparisons")
        if not _close(got, want):
            bad.append(f"{name} {np.asarray(got).tolist()} != reference "
                       f"{np.asarray(want).tolist()}: {tag}")

    hv_ref = h_ref @ v
    with np.errstate(all="ignore"):
        compare("value", symad.value_and_grad(f)(x)[0], value)
        compare("grad", symad.grad(f)(x), g_ref)
        compare("jacobian(f, fwd)", symad.jacobian(f, mode="fwd")(x), g_ref)
        compare("hessian fwd", symad.hessian(f)(x), h_ref)
        compare("hessian rev", symad.hessian(f, mode="rev")(x), h_ref)
        compare("hvp", symad.hvp(f, x, v), hv_ref)
        compare("jvp(grad)", symad.jvp(symad.grad(f), (x,), (v,))[1], hv_ref)
        compare("grad(jvp)", symad.grad(lambda x: symad.jvp(f, (x,), (v,))[1])(x), hv_ref)
        compare("jacobian fwd", symad.jacobian(vec, mode="fwd")(x), j_ref)
        compare("jacobian rev", symad.jacobian(vec, mode="rev")(x), j_ref)
        if third:
            t_ref = symad.jacobian(symad.hessian(f_ref, mode="rev"), mode="rev")(x)
            if np.all(np.isfinite(t_ref)):
                compare("d hessian fwd", symad.jacobian(symad.hessian(f), mode="fwd")(x),
                        t_ref)
                compare("d hessian rev", symad.jacobian(symad.hessian(f, mode="rev"),
                                                        mode="rev")(x), t_ref)
    if compiled:
        cv, cg = symad.compile_grad(f)(x)
        compare("compile_grad value", cv, value)
        compare("compile_grad", cg, g_ref)
        compare("compile(hessian fwd)", symad.compile(symad.hessian(f))(x), h_ref)
        compare("compile(hessian rev)", symad.compile(symad.hessian(f, mode="rev"))(x),
                h_ref)
        compare("compile(hvp)", symad.compile(lambda x, v: symad.hvp(f, x, v))(x, v), hv_ref)
        compare("compile(jacobian fwd)", symad.compile(symad.jacobian(vec, mode="fwd"))(x),
                j_ref)
        count("compiled")
    if arrays:
        # The array-level reverse pass (compile_grad of a program over 400 points, all
        # this one): each column's gradient is the point's.
        cols = 400
        xs = np.repeat(x[:, None], cols, axis=1)

        def f_cols(xs):
            vs = run_numpy(steps, [xs[i] for i in range(n_in)], outs)
            return np.sum(sum(vs[1:], vs[0]))

        cf = symad.compile_grad(f_cols)
        cv, cg = cf(xs)
        if cf.stats.get("array_level"):
            compare("array-level value", cv / cols, value)
            compare("array-level grad", cg, np.repeat(g_ref[:, None], cols, axis=1))
            count("array_level")
    return bad
