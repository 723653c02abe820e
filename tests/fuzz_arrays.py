"""Random numpy programs for the array level (``codegen/arrays.py``'s planner and loops).

A program is Python source: ``def f(x)`` or ``def f(x, y)`` over arguments of small random
shapes (1-D and 2-D, 1..40 elements), one assignment a line, returning a scalar. Lines
are drawn from what the array tracer covers: safe elementwise ufuncs (or ``np.where``
guards), broadcasting, basic/strided/fancy indexing, reshape/transpose, reductions over
axes (keepdims too), cumsum, ``@``, ``np.einsum``, concatenate/stack, log-sum-exp, and
values reused several times and only through slices (what makes the planner's families
of sums, slice-adjoint views and recomputed cones). Each line is run on the point while
the program is built, so shapes are known and a line whose values leave a modest range
is drawn again. Source text, so a failure prints as a program to paste into a test.

``check_program`` compiles one with the array level forced and returns a list of
mismatches (empty: all agree) against the shaped graph's numpy reference, ``symad.grad``
(the scalar graph), the batch entry and ``symad.compile``. Shared by
``tests/test_array_fuzz.py`` (a CI budget) and ``benchmarks/fuzz_arrays.py`` (long runs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import symad
from symad import array_trace, compiled, policy
from symad.ad import vjp_plain

MAX_ELEMENTS = 400          # a line whose value is larger is drawn again
MAX_ABS = 1e3               # ... or whose values are larger (or not finite)

_UNARY = ("np.sin({a})", "np.cos({a})", "np.tanh({a})", "np.exp(-{a} ** 2)",
          "np.log1p({a} ** 2)", "np.sqrt({a} ** 2 + 0.5)", "np.arctan({a})", "{a} ** 2",
          "{a} ** 3", "np.abs({a})", "np.maximum({a}, 0.1)", "-{a}", "1.0 / (1.0 + {a} ** 2)",
          "np.where({a} > 0.0, np.sqrt(np.abs({a}) + 1e-3), 0.5 * {a})", "np.exp(np.tanh({a}))",
          "np.log(np.cosh({a}))", "np.clip({a}, -0.5, 0.8)", "2.5 * {a} - 0.3")
_BINARY = ("{a} + {b}", "{a} - {b}", "{a} * {b}", "{a} / (1.5 + np.sin({b}))",
           "np.maximum({a}, {b})", "np.minimum({a}, {b})", "np.arctan2({a}, 1.0 + {b} ** 2)",
           "np.where({a} > {b}, {a} * {b}, {a} - {b})", "np.hypot({a}, {b})")
_REDUCE = ("np.sum", "np.mean", "np.max", "np.min", "np.prod")


@dataclass
class Program:
    source: str          # ``def f(...)``: the program
    shapes: list         # one shape per argument
    point: list          # one array per argument

    def function(self):
        space: dict = {"np": np}
        exec(compile(self.source, "<fuzz_arrays>", "exec"), space)   # noqa: S102 (our text)
        return space["f"]


class _Builder:
    """Lines and the values they compute at the point, drawn until ``n_lines`` hold."""

    def __init__(self, rng: np.random.Generator, point: list):
        self.rng = rng
        self.names = ["x", "y"][:len(point)]
        self.values = list(point)
        self.lines: list[str] = []

    def pick(self, ndim=None, min_size=1) -> int:
        """A value, recent ones more often (deep programs), old ones sometimes (reuse)."""
        ok = [i for i, v in enumerate(self.values)
              if (ndim is None or v.ndim == ndim) and v.size >= min_size]
        if not ok:
            return -1
        if self.rng.random() < 0.6:
            return ok[max(0, len(ok) - int(self.rng.geometric(0.5)))]
        return ok[int(self.rng.integers(len(ok)))]

    def add(self, expr: str) -> bool:
        """Append ``v<k> = expr`` if it runs and stays in range."""
        space = {"np": np, **dict(zip(self.names, self.values))}
        try:
            with np.errstate(all="raise"):
                v = np.asarray(eval(expr, space), dtype=np.float64)    # noqa: S307
        except (ValueError, IndexError, FloatingPointError, ZeroDivisionError, TypeError):
            return False
        if v.ndim > 2 or v.size == 0 or v.size > MAX_ELEMENTS or \
                not np.all(np.isfinite(v)) or np.max(np.abs(v)) > MAX_ABS:
            return False
        name = f"v{len(self.lines)}"
        self.lines.append(f"{name} = {expr}")
        self.names.append(name)
        self.values.append(v)
        return True

    # -- kinds of line --------------------------------------------------------------------
    def unary(self):
        a = self.names[self.pick()]
        return _UNARY[self.rng.integers(len(_UNARY))].format(a=a)

    def binary(self):
        i = self.pick()
        shape = self.values[i].shape
        ok = [j for j, v in enumerate(self.values) if _broadcasts(shape, v.shape)]
        j = ok[int(self.rng.integers(len(ok)))]
        a, b = self.names[i], self.names[j]
        if self.rng.random() < 0.5:
            a, b = b, a
        return _BINARY[self.rng.integers(len(_BINARY))].format(a=a, b=b)

    def index(self):
        rng = self.rng
        i = self.pick()
        v, a = self.values[i], self.names[i]
        n = v.shape[0] if v.ndim else 1
        if v.ndim == 0:
            return f"{a} * np.ones({int(rng.integers(1, 6))})"
        lo = int(rng.integers(0, n))
        hi = int(rng.integers(lo + 1, n + 1))
        step = int(rng.choice([1, 1, 2, 3, -1]))
        choice = rng.integers(8)
        if choice == 0:
            return f"{a}[{lo}:{hi}]" if step != -1 else f"{a}[{hi - 1}::-1]"
        if choice == 1:
            return f"{a}[{lo}::{abs(step)}]"
        if choice == 2:                     # fancy: repeats and any order
            idx = rng.integers(0, n, int(rng.integers(1, 2 * n + 2))).tolist()
            return f"{a}[{idx}]"
        if choice == 3 and v.ndim == 2:
            m = v.shape[1]
            c0 = int(rng.integers(0, m))
            return f"{a}[{lo}:{hi}, {c0}:]" if rng.random() < 0.5 else f"{a}[:, {c0}]"
        if choice == 4:                     # used only through slices (a difference)
            if v.ndim == 2 and rng.random() < 0.5:
                return f"{a}[:, 1:] - {a}[:, :-1]"
            return f"{a}[1:] * {a}[:-1]" if rng.random() < 0.5 else f"{a}[1:] - {a}[:-1]"
        if choice == 5:
            return f"{a}[:, None]" if v.ndim == 1 else f"{a}[{lo}]"
        if choice == 6 and v.ndim == 2:
            return f"{a}.T" if rng.random() < 0.5 else f"{a}[::-1, ::{abs(step)}]"
        return f"{a}[{lo}:{hi}:{step}]" if step > 0 else f"{a}[::-1]"

    def reshape(self):
        i = self.pick()
        v, a = self.values[i], self.names[i]
        if v.ndim == 2:
            return f"{a}.ravel()" if self.rng.random() < 0.5 else f"{a}.reshape(-1)"
        divisors = [d for d in range(2, v.size) if v.size % d == 0]
        if not divisors:
            return f"{a}.reshape(1, -1)" if v.ndim == 1 else f"np.reshape({a}, (1, 1))"
        d = int(self.rng.choice(divisors))
        return f"{a}.reshape({d}, -1)" if self.rng.random() < 0.7 else \
            f"{a}.reshape(-1, {d}).T"

    def reduce(self):
        rng = self.rng
        i = self.pick()
        v, a = self.values[i], self.names[i]
        fn = _REDUCE[rng.integers(len(_REDUCE))]
        if fn == "np.prod":
            a = f"np.tanh({a})"             # a product of 40 values stays in range
        if v.ndim == 0 or rng.random() < 0.25:
            return f"{fn}({a})"
        axis = int(rng.integers(-1, v.ndim))
        keep = ", keepdims=True" if rng.random() < 0.4 else ""
        if rng.random() < 0.2:
            return f"np.cumsum({a}, axis={axis})"
        return f"{fn}({a}, axis={axis}{keep})"

    def logsumexp(self):
        i = self.pick(min_size=2)
        v, a = self.values[i], self.names[i]
        axis = int(self.rng.integers(-1, v.ndim)) if v.ndim else None
        if self.rng.random() < 0.5:
            return f"np.log(np.sum(np.exp({a}), axis={axis}))"
        return (f"np.log(np.sum(np.exp({a} - np.max({a}, axis={axis}, keepdims=True)), "
                f"axis={axis}, keepdims=True)) + np.max({a}, axis={axis}, keepdims=True)")

    def contract(self):
        rng = self.rng
        i = self.pick()
        v, a = self.values[i], self.names[i]
        if v.ndim == 0:
            return f"{a} * {self.names[self.pick()]}"
        k = v.shape[-1]
        partners = [j for j, w in enumerate(self.values) if w.ndim >= 1 and w.shape[0] == k]
        j = partners[int(rng.integers(len(partners)))]
        w, b = self.values[j], self.names[j]
        if rng.random() < 0.5:
            return f"{a} @ {b}"
        sa = "ij"[2 - v.ndim:] if v.ndim == 2 else "j"
        sb = "jk"[:w.ndim]
        out = "".join(c for c in sa + sb if c != "j")
        if rng.random() < 0.3 and v.ndim == 2 and v.shape[0] == v.shape[1]:
            return f"np.einsum('ii->i', {a})"
        return f"np.einsum('{sa},{sb}->{out}', {a}, {b})"

    def join(self):
        rng = self.rng
        i = self.pick()
        v, a = self.values[i], self.names[i]
        if v.ndim == 0:
            return f"np.stack([{a}, 2.0 * {a}])"
        same = [j for j, w in enumerate(self.values) if w.ndim == v.ndim and
                w.shape[1:] == v.shape[1:]]
        j = same[int(rng.integers(len(same)))]
        b = self.names[j]
        if self.values[j].shape == v.shape and rng.random() < 0.4:
            return f"np.stack([{a}, {b}], axis={int(rng.integers(0, v.ndim + 1))})"
        return f"np.concatenate([{a}, {b}])"

    def stencil(self):
        """A value used only through several overlapping slices (its adjoint: a family of
        sums; a slice's adjoint: a view)."""
        i = self.pick(ndim=1, min_size=3)
        if i < 0:
            return self.index()
        a = self.names[i]
        return (f"{a}[2:] - 2.0 * {a}[1:-1] + {a}[:-2]", f"{a}[::2] * {a}[::-1][::2]",
                f"np.sin({a}[1:]) * {a}[:-1] + {a}[1:] ** 2",
                f"np.concatenate([{a}[:2], {a}[1:-1] * {a}[2:]])")[self.rng.integers(4)]

    def pairs(self):
        """Every pair of elements (the pair's first element in runs: Lennard-Jones'
        reductions), or random pairs with repeats (segments added in their buffer)."""
        i = self.pick(ndim=1, min_size=2)
        if i < 0:
            return self.index()
        v, a = self.values[i], self.names[i]
        n = min(v.size, 12)
        if self.rng.random() < 0.5:
            first, second = (t.tolist() for t in np.triu_indices(n, 1))
        else:
            m = int(self.rng.integers(1, 3 * n))
            first, second = (self.rng.integers(0, n, m).tolist() for _ in range(2))
        return f"{a}[{first}] - {a}[{second}]" if self.rng.random() < 0.5 else \
            f"np.exp(-({a}[{first}] - {a}[{second}]) ** 2) * {a}[{first}]"

    def outer(self):
        """A value broadcast against itself (or used through two reductions): its adjoint
        adds several reducing sums, a family added into one buffer."""
        i = self.pick()
        v, a = self.values[i], self.names[i]
        if v.ndim == 2:
            return (f"{a} * np.mean({a}, axis=0, keepdims=True) - np.sum({a}, axis=1, "
                    f"keepdims=True)", f"np.exp({a} - np.max({a}, axis=0))")[
                self.rng.integers(2)]
        if v.ndim == 0:
            return f"{a} * np.ones(3) + {a}"
        return (f"{a}[:, None] * {a}[None, :]", f"np.exp({a}[:, None] - {a})",
                f"np.log1p(({a}[:, None] - {a}[None, ::-1]) ** 2)",
                f"{a}[:, None] + {a}[::2]")[self.rng.integers(4)]

    KINDS = ("outer", "outer", "unary", "unary", "binary", "binary", "index", "index",
             "reshape", "reduce", "reduce", "logsumexp", "contract", "join", "stencil",
             "pairs")


def _broadcasts(s, t) -> bool:
    try:
        np.broadcast_shapes(s, t)
    except ValueError:
        return False
    return True


def _shape(rng: np.random.Generator) -> tuple:
    if rng.random() < 0.1:              # edges: one element, two
        return ((1,), (2,), (1, 1), (1, 3), (3, 1))[rng.integers(5)]
    if rng.random() < 0.5:
        return (int(rng.integers(1, 41)),)
    r = int(rng.integers(1, 8))
    return (r, int(rng.integers(1, 40 // r + 1)))


def random_program(rng: np.random.Generator, n_lines: int | None = None) -> Program:
    """A program of ``n_lines`` (random: 2..12) lines over one or two arguments."""
    shapes = [_shape(rng) for _ in range(int(rng.integers(1, 3)))]
    point = [rng.uniform(-1.5, 1.5, s) for s in shapes]
    bld = _Builder(rng, point)
    n_lines = int(rng.integers(2, 13)) if n_lines is None else n_lines
    tries = 0
    while len(bld.lines) < n_lines and tries < 50 * n_lines:
        tries += 1
        kind = _Builder.KINDS[rng.integers(len(_Builder.KINDS))]
        try:
            expr = getattr(bld, kind)()
        except (ValueError, IndexError):
            continue
        bld.add(expr)
    # The result: the last value, and a smooth function of two more (so more of the
    # program reaches the output, some of it several times).
    names = bld.names[len(point):] or bld.names[:1]
    terms = [f"np.sum({names[-1]})"]
    for nm in names[-3:-1]:
        terms.append(f"0.5 * np.sum(np.sin({nm}) ** 2)")
    args = ", ".join(["x", "y"][:len(point)])
    body = "".join(f"    {line}\n" for line in bld.lines)
    source = f"def f({args}):\n{body}    return {' + '.join(terms)}\n"
    return Program(source, shapes, point)


def _close(got, want, rtol, atol=0.0) -> bool:
    """Elementwise within tolerance; NaN where both are NaN (hypot's gradient at 0 ...)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = (np.abs(got - want) <= atol + rtol * np.abs(want)) | (got == want) | \
            (np.isnan(got) & np.isnan(want))
    return got.shape == want.shape and bool(np.all(ok))


def _scale(v) -> float:
    """The largest finite magnitude, at least 1 (an absolute tolerance's unit)."""
    v = np.abs(np.asarray(v, dtype=np.float64))
    v = v[np.isfinite(v)]
    return max(1.0, float(np.max(v))) if v.size else 1.0


def check_program(prog: Program, rtol: float = 1e-12, loose: float = 1e-8,
                  batch: int = 3, rng: np.random.Generator | None = None) -> list[str]:
    """Mismatches between the array-level kernels and their references (empty: none).
    Forces the array level (``policy.ARRAY_MIN_*`` = 0) for the duration."""
    saved = policy.ARRAY_MIN_ELEMENTS, policy.ARRAY_MIN_LENGTH
    policy.ARRAY_MIN_ELEMENTS = policy.ARRAY_MIN_LENGTH = 0
    compiled.clear_memory_cache()
    try:
        return _check(prog, rtol, loose, batch, rng or np.random.default_rng(0))
    finally:
        policy.ARRAY_MIN_ELEMENTS, policy.ARRAY_MIN_LENGTH = saved
        compiled.clear_memory_cache()


def _check(prog, rtol, loose, n_batch, rng) -> list[str]:
    f = prog.function()
    args = tuple(prog.point)
    argnums = tuple(range(len(args)))
    bad: list[str] = []
    # the shaped graph's numpy reference
    tr = array_trace.trace_call(f, args, prog.shapes)
    g = tr.graph
    (y,) = tr.outputs
    bars = vjp_plain(g, [y], [g.const(1.0)], tr.inputs)
    flat = np.concatenate([a.ravel() for a in args])
    reached = [b for b in bars if b is not None]        # None: an argument not used
    ref = iter(array_trace.evaluate(g, [y, *reached], flat))
    ref_value = next(ref)[0]
    ref_grads = [np.zeros(a.size) if b is None else next(ref) for a, b in zip(args, bars)]
    # the compiled kernel
    cf = symad.compile_grad(f, argnums=argnums)
    value, grads = cf(*args)
    if not cf.stats.get("array_level"):
        return [f"not on the array level: {cf.stats.get('kernel')}"]
    if not _close(value, ref_value, rtol):
        bad.append(f"value {value!r} != reference {ref_value!r}")
    for k, (got, want) in enumerate(zip(grads, ref_grads)):
        if not _close(np.ravel(got), want, rtol, rtol * _scale(want)):
            err = np.max(np.abs(np.ravel(got) - want))
            bad.append(f"gradient {k}: max error {err:.3g} against the reference")
    # the scalar graph (ties and kinks may differ in their last bits only)
    s_value, s_grads = symad.value_and_grad(f, argnums)(*args)
    if not _close(value, s_value, loose, loose):
        bad.append(f"value {value!r} != scalar graph's {float(s_value)!r}")
    for k, (got, want) in enumerate(zip(grads, s_grads)):
        if not _close(got, want, loose, loose):
            bad.append(f"gradient {k} != scalar graph's (max error "
                       f"{np.max(np.abs(np.asarray(got) - want)):.3g})")
    # the value alone
    cv = symad.compile(f)
    v_only = cv(*args)
    if not cv.stats.get("array_level"):
        bad.append("compile(f): not on the array level")
    elif not _close(v_only, ref_value, rtol):
        bad.append(f"compile(f) value {v_only!r} != reference {ref_value!r}")
    # the batch entry: each point as its single call computes it
    if n_batch:
        n = int(rng.integers(2, n_batch + 3))
        pts = [a + rng.uniform(-0.01, 0.01, (n, *a.shape)) for a in args]
        values, bgrads = cf.batch(*pts)
        for i in range(n):
            v1, g1 = cf(*(p[i] for p in pts))
            if not _close(values[i], v1, 1e-13):
                bad.append(f"batch point {i}: value {values[i]!r} != single call {v1!r}")
            for k in argnums:
                if not _close(bgrads[k][i], g1[k], 1e-13, 1e-13 * _scale(g1[k])):
                    bad.append(f"batch point {i}: gradient {k} != single call's")
    return bad


def describe(prog: Program, seed=None) -> str:
    shapes = ", ".join(str(s) for s in prog.shapes)
    head = f"seed {seed}: " if seed is not None else ""
    return f"{head}shapes {shapes}\n{prog.source}"


def program_for(seed: int) -> Program:
    return random_program(np.random.default_rng(seed))


