"""The SymPy bridge: graphs to sympy expressions and back (graph <-> **sympy**; demos, checks).

``to_sympy`` turns the live part of a graph into sympy expressions using each op's sympy
counterpart from the op table. ``from_sympy`` goes the other way: it compiles a sympy
expression into a plain Python function of numbers that symad can trace, differentiate
and compile, so a SymPy model gets native AD gradients. ``symbolic_grad`` is the
``sympy.diff`` path, kept for comparisons, and ``swell_report`` measures how much larger
symbolic derivatives grow than the adjoint DAG.

Both directions walk their input in topological order with a memo table (graph nodes in
creation order; sympy trees by an explicit-stack postorder walk), never by recursion on
depth, and a subexpression shared in the input is built once in the output.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import sympy as sp

from .errors import SymadError, UnsupportedOpError
from .graph import Graph, Node
from .ops import OPS
from .trace import Tracer, apply, power

# Constants whose exact value has a denominator up to this become sympy Rationals (0.5 ->
# 1/2), so simplification against hand-written expressions works; others stay Floats.
_MAX_RATIONAL_DENOMINATOR = 1024


# ---- graph -> sympy ---------------------------------------------------------------------


def _symbol_name(name: str) -> str:
    # "x[0, 1]" -> "x_0_1": an input's path as a readable sympy symbol name.
    s = re.sub(r"[^0-9A-Za-z_]+", "_", str(name)).strip("_")
    return s or "x"


def input_symbols(graph: Graph, real: bool = False) -> list[sp.Symbol]:
    """One sympy Symbol per graph input, named after the input (``x[1]`` becomes ``x_1``).

    >>> import symad
    >>> input_symbols(symad.trace(lambda x, y: x * y, 1.0, 2.0))
    [x, y]
    """
    assumptions = {"real": True} if real else {}
    return [sp.Symbol(_symbol_name(n.attrs[0]), **assumptions) for n in graph.inputs]


def _const_to_sympy(v: float) -> sp.Expr:
    if math.isnan(v):
        return sp.nan
    if math.isinf(v):
        return sp.oo if v > 0 else -sp.oo
    if v.is_integer():
        return sp.Integer(int(v))
    fr = Fraction(v)   # the exact binary value
    if fr.denominator <= _MAX_RATIONAL_DENOMINATOR:
        return sp.Rational(fr.numerator, fr.denominator)
    return sp.Float(v)


def to_sympy(graph: Graph, outputs: Sequence[Node] | None = None,
             symbols: Sequence[sp.Symbol] | None = None, cse: bool = False):
    """The graph's outputs as sympy expressions, one per output.

    Args:
        graph: a traced graph (``symad.trace``), possibly extended with adjoint nodes.
        outputs: the nodes to convert; default ``graph.outputs``.
        symbols: one sympy symbol per ``graph.inputs``; default :func:`input_symbols`.
            Free variables of nested transformations get a symbol of their own name.
        cse: if true, return sympy's ``cse`` form ``(replacements, exprs)`` instead,
            where ``replacements`` is a list of ``(symbol, expr)`` pairs shared by the
            expressions.

    Returns:
        A list of sympy expressions (or the ``(replacements, exprs)`` pair).

    Raises:
        UnsupportedOpError: if an op of the graph has no sympy counterpart.

    >>> import numpy as np, symad
    >>> to_sympy(symad.trace(lambda x, y: np.sin(x) * y, 1.0, 2.0))
    [y*sin(x)]
    """
    outs = list(graph.outputs if outputs is None else outputs)
    syms = input_symbols(graph) if symbols is None else list(symbols)
    if len(syms) != len(graph.inputs):
        raise ValueError(f"to_sympy got {len(syms)} symbols for the {len(graph.inputs)} "
                         f"inputs of graph {graph.name!r}")
    env: dict[Node, sp.Expr] = dict(zip(graph.inputs, syms))
    for n in graph.live(outs):
        if n in env:
            continue
        if n.op == "const":
            env[n] = _const_to_sympy(n.attrs[0])
        elif n.op == "input":
            env[n] = sp.Symbol(_symbol_name(n.attrs[0]))
        else:
            spec = OPS[n.op]
            if spec.structural:
                raise UnsupportedOpError(
                    f"{n.line()} is a structural op of an array-level graph (it moves or "
                    "adds elements by an index table); to_sympy reads scalar graphs, "
                    "such as symad.trace's")
            rule = spec.sympy
            if rule is None:
                raise UnsupportedOpError(f"op {n.op!r} at {n.line()} has no sympy "
                                         "counterpart in the op table")
            env[n] = rule(*(env[a] for a in n.args), *n.attrs)
    exprs = [env[o] for o in outs]
    if cse:
        return sp.cse(exprs)
    return exprs


def symbolic_grad(f: Callable, *args) -> list[sp.Expr]:
    """The gradient of scalar ``f`` by ``sympy.diff``: one expression per scalar input.

    ``f`` is traced at ``args`` and converted with :func:`to_sympy`; the derivatives are
    with respect to the symbols of :func:`input_symbols` (arrays give one per element,
    ``x[1]`` as ``x_1``). This is the symbolic path, kept for comparisons with AD.

    >>> import numpy as np
    >>> symbolic_grad(lambda x1, x2: np.log(x1) + x1 * x2 - np.sin(x2), 2.0, 5.0)
    [x2 + 1/x1, x1 - cos(x2)]
    """
    from .api import trace

    graph = trace(f, *args)
    if len(graph.outputs) != 1:
        raise TypeError(f"symbolic_grad needs a function returning one scalar; "
                        f"{graph.name} returned {len(graph.outputs)} values")
    syms = input_symbols(graph)
    (expr,) = to_sympy(graph, symbols=syms)
    return [sp.diff(expr, s) for s in syms]


# ---- sympy -> a traceable Python function ----------------------------------------------


def _function_ops() -> dict[type, str]:
    """sympy function class -> op, from the rows: a row's ``sympy`` counterpart when it is a
    sympy function class (sp.sin, sp.atan2, sp.Abs, sp.Mod) and its ``sympy_functions``
    (sympy.codegen's log1p, hypot, ...). Add, Mul, Pow, Max and Min are not function
    classes; ``_plan`` reads them (and relations, Piecewise) itself."""
    found: dict[type, str] = {}
    for row in OPS.values():
        if row.structural:
            continue
        fn = row.sympy
        own = (fn,) if isinstance(fn, type) and issubclass(fn, sp.Function) else ()
        for cls in own + row.sympy_functions:
            if cls in found:
                raise ValueError(f"sympy {cls.__name__} is the counterpart of both op "
                                 f"{found[cls]!r} and op {row.name!r}")
            found[cls] = row.name
    return found


# sympy function class -> op of the table (evaluated through symad.trace.apply)
_FUNCTION_OPS: dict[type, str] = _function_ops()
_FUNCTION_NAMES = sorted(cls.__name__ for cls in _FUNCTION_OPS)
_RELATION_OPS: dict[type, str] = {
    sp.StrictLessThan: "lt", sp.LessThan: "le", sp.StrictGreaterThan: "gt",
    sp.GreaterThan: "ge", sp.Equality: "eq", sp.Unequality: "ne",
}


def _elementwise(fn: Callable, args: tuple):
    """``fn`` on numbers or tracers, or elementwise when an argument is a float array."""
    if any(isinstance(a, np.ndarray) and a.ndim > 0 for a in args):
        out = np.frompyfunc(fn, len(args), 1)(*args)
        if not any(isinstance(v, Tracer) for v in out.reshape(-1)):
            out = out.astype(np.float64)
        return out
    return fn(*args)


def _op(name: str, *args):
    """Apply a table op to numbers, tracers, or (elementwise) float arrays."""
    return _elementwise(lambda *v: apply(name, v), args)


def _power(b, e):
    return _elementwise(power, (b, e))


def _product(vals):
    out = vals[0]
    for v in vals[1:]:
        out = out * v
    return out


def _sum(vals):
    out = vals[0]
    for v in vals[1:]:
        out = out + v
    return out


def _pow_number(b, e: sp.Expr):
    """``b ** e`` for a numeric sympy exponent, choosing the exact op."""
    if e.is_Integer:
        return _power(b, int(e))              # powi: repeated multiplication
    if e == sp.Rational(1, 2):
        return _op("sqrt", b)
    if e == sp.Rational(-1, 2):
        return 1.0 / _op("sqrt", b)
    return _power(b, float(e))


@dataclass
class _Step:
    fn: Callable            # (*child values) -> value
    children: list[int]


@dataclass
class _Program:
    steps: list[_Step] = field(default_factory=list)
    slot: dict = field(default_factory=dict)   # sympy expr -> index of its value


def _plan(e: sp.Basic) -> tuple[list[sp.Basic], Callable]:
    """Children of ``e`` to evaluate first, and how to combine their values."""
    if e.is_Number or e.is_NumberSymbol:
        try:
            c = np.float64(float(e))
        except TypeError:
            raise UnsupportedOpError(f"sympy number {e} ({type(e).__name__}) is not a "
                                     "real float64 value") from None
        return [], lambda: c
    if e is sp.true or e is sp.false:
        c = np.float64(1.0 if e is sp.true else 0.0)
        return [], lambda: c
    if isinstance(e, sp.Add):
        return _plan_add(e)
    if isinstance(e, sp.Mul):
        return _plan_mul(e)
    if isinstance(e, sp.Pow):
        b, x = e.args
        if x.is_Number:
            return [b], lambda bv: _pow_number(bv, x)
        return [b, x], _power
    op = _FUNCTION_OPS.get(type(e))
    if op is not None:
        return list(e.args), lambda *v: _op(op, *v)
    op = _RELATION_OPS.get(type(e))
    if op is not None:
        return list(e.args), lambda a, b: _op(op, a, b)
    if isinstance(e, sp.ceiling):
        return list(e.args), lambda a: -_op("floor", -a)
    if isinstance(e, (sp.Max, sp.Min)):
        op = "maximum" if isinstance(e, sp.Max) else "minimum"

        def extremum(*v):
            out = v[0]
            for w in v[1:]:
                out = _op(op, out, w)
            return out
        return list(e.args), extremum
    if isinstance(e, sp.And):
        return list(e.args), lambda *v: _product(v)
    if isinstance(e, sp.Or):
        return list(e.args), lambda *v: _op("ne", _sum(v), 0.0)
    if isinstance(e, sp.Not):
        return list(e.args), lambda a: _op("eq", a, 0.0)
    if isinstance(e, sp.Piecewise):
        return _plan_piecewise(e)
    raise UnsupportedOpError(
        f"from_sympy does not support sympy {type(e).__name__} (in {str(e)[:80]}); "
        "rewrite it with + - * / **, Max, Min, ceiling, Piecewise, relations, And, Or, "
        f"Not and the functions {', '.join(_FUNCTION_NAMES)} (or add an op whose row "
        "names its sympy class: \"Adding an op\" in docs/ops.md)")


def _plan_add(e: sp.Add):
    # sympy writes x - y as x + (-1)*y; evaluate it as one sub, not a neg and an add.
    plus, minus = [], []
    for t in e.args:
        if t.could_extract_minus_sign():
            minus.append(-t)
        else:
            plus.append(t)
    k = len(plus)

    def add(*v):
        out = _sum(v[:k]) if k else -v[k]
        for w in v[k + (0 if k else 1):]:
            out = out - w
        return out
    return plus + minus, add


def _plan_mul(e: sp.Mul):
    # Negative powers go to a denominator and a rational coefficient p/q becomes
    # "* p / q", so x/y is one correctly rounded division, not x * (1/y).
    num, den, den_exps = [], [], []
    p, q = 1, 1
    for a in e.args:
        if a.is_Rational:
            p, q = p * int(a.p), q * int(a.q)
        elif a.is_Number or a.is_NumberSymbol:
            num.append(a)
        elif isinstance(a, sp.Pow) and a.args[1].is_Number and a.args[1].is_negative:
            den.append(a.args[0])
            den_exps.append(-a.args[1])
        else:
            num.append(a)
    children = num + den
    k = len(num)

    def mul(*v):
        top = _product(v[:k]) if k else None
        if p == -1 and top is not None:
            top = -top
        elif p != 1 or top is None:
            top = np.float64(p) if top is None else top * np.float64(p)
        bottom = [_pow_number(b, x) for b, x in zip(v[k:], den_exps)]
        if q != 1:
            bottom.append(np.float64(q))
        return top / _product(bottom) if bottom else top
    return children, mul


def _plan_piecewise(e: sp.Piecewise):
    pieces = list(e.args)
    children = []
    for value, cond in pieces:
        children += [value, cond]

    def select(*v):
        # The last piece whose condition is True is the default; without one, values
        # outside every condition are NaN (sympy leaves them undefined).
        out = np.float64(np.nan)
        for i in range(len(pieces) - 1, -1, -1):
            value, cond = v[2 * i], v[2 * i + 1]
            if pieces[i][1] is sp.true:
                out = value
            else:
                out = _op("where", cond, value, out)
        return out
    return children, select


def _compile(exprs: Sequence[sp.Basic], symbols: list[sp.Symbol]) -> _Program:
    """Plan the evaluation of ``exprs``: an explicit-stack postorder walk, memoised."""
    prog = _Program()
    for i, s in enumerate(symbols):
        prog.slot[s] = i
    pending: dict[sp.Basic, tuple] = {}
    for root in exprs:
        stack = [root]
        while stack:
            e = stack[-1]
            if e in prog.slot:
                stack.pop()
                continue
            if e not in pending:
                if isinstance(e, sp.Symbol):
                    names = ", ".join(str(s) for s in symbols)
                    raise SymadError(f"from_sympy: the expression uses the symbol {e}, "
                                     f"which is not among the symbols [{names}]; add it")
                pending[e] = _plan(e)
                stack.extend(c for c in reversed(pending[e][0]) if c not in prog.slot)
                continue
            stack.pop()
            children, fn = pending.pop(e)
            prog.slot[e] = len(symbols) + len(prog.steps)
            prog.steps.append(_Step(fn, [prog.slot[c] for c in children]))
    return prog


def _flat_symbols(symbols) -> tuple[list[sp.Symbol], list]:
    """Flatten symbols; an entry that is a sequence of symbols is one array argument."""
    flat, layout = [], []
    for s in symbols:
        if isinstance(s, sp.Symbol):
            layout.append(None)
            flat.append(s)
        else:
            group = list(s)
            if not all(isinstance(t, sp.Symbol) for t in group):
                raise TypeError(f"from_sympy: symbols must be sympy Symbols or sequences of "
                                f"them, got {s!r}")
            layout.append(len(group))
            flat.extend(group)
    if len(set(flat)) != len(flat):
        raise ValueError("from_sympy: a symbol appears twice in symbols")
    return flat, layout


def from_sympy(exprs, symbols) -> Callable:
    """A plain Python function evaluating sympy expression(s), which symad can trace.

    The sympy tree is walked once (shared subexpressions planned once), and each call
    evaluates the plan with symad's ops, so the function works on numbers, on numpy
    arrays (elementwise) and on traced values: ``symad.grad``, ``symad.compile_grad``
    and every other transformation apply to it.

    Args:
        exprs: a sympy expression, or a sequence (or Matrix) of them.
        symbols: the positional arguments, in order: a sympy Symbol per scalar argument,
            or a sequence of Symbols for an array argument (its elements, flattened).

    Returns:
        ``f(*args)`` returning a scalar for one expression, or a tuple for a sequence.

    Raises:
        UnsupportedOpError: naming a sympy type that has no symad counterpart.
        SymadError: if an expression has a free symbol not in ``symbols``.

    >>> import sympy as sp, symad
    >>> x, y = sp.symbols("x y")
    >>> f = from_sympy(sp.log(x) + x * y - sp.sin(y), [x, y])
    >>> [float(g) for g in symad.grad(f, (0, 1))(2.0, 5.0)]
    [5.5, 1.7163378145367738]
    """
    single = isinstance(exprs, sp.Basic) and not isinstance(exprs, sp.MatrixBase)
    expr_list = [exprs] if single else list(exprs)
    expr_list = [sp.sympify(e) for e in expr_list]
    if isinstance(symbols, sp.Symbol):
        symbols = [symbols]
    flat, layout = _flat_symbols(symbols)
    prog = _compile(expr_list, flat)
    out_slots = [prog.slot[e] for e in expr_list]
    nsym = len(flat)
    names = [str(s) if n is None else f"{s[0]}" for s, n in zip(symbols, layout)]

    def sympy_function(*args):
        if len(args) != len(layout):
            raise TypeError(f"this function of {len(layout)} argument(s) ({', '.join(names)}) "
                            f"was called with {len(args)}")
        values: list = []
        for a, n in zip(args, layout):
            if n is None:
                values.append(np.float64(a) if isinstance(a, (int, float)) else a)
            else:
                items = list(np.asarray(a, dtype=object).reshape(-1)) \
                    if not isinstance(a, np.ndarray) else list(a.reshape(-1))
                if len(items) != n:
                    raise ValueError(f"array argument has {len(items)} elements, "
                                     f"expected {n}")
                values.extend(np.float64(v) if isinstance(v, (int, float)) else v
                              for v in items)
        values.extend([None] * len(prog.steps))
        with np.errstate(all="ignore"):
            for i, step in enumerate(prog.steps):
                values[nsym + i] = step.fn(*(values[c] for c in step.children))
        outs = [values[s] for s in out_slots]
        return outs[0] if single else tuple(outs)

    sympy_function.__name__ = "sympy_function"
    sympy_function.__signature__ = _signature(names)
    return sympy_function


def _signature(names):
    import inspect
    params, seen = [], set()
    for i, n in enumerate(names):
        n = _symbol_name(n)
        if not n.isidentifier() or n in seen or n[0].isdigit():
            n = f"arg{i}"
        seen.add(n)
        params.append(inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD))
    return inspect.Signature(params)


# ---- expression swell --------------------------------------------------------------------


def _dag_ops(graph: Graph, outputs: Sequence[Node]) -> int:
    counts = graph.count_ops(outputs)
    return sum(c for op, c in counts.items() if op not in ("input", "const"))


def _cse_ops(exprs: list[sp.Expr]) -> int:
    repl, reduced = sp.cse(exprs)
    return int(sum(sp.count_ops(e) for _, e in repl) + sum(sp.count_ops(e) for e in reduced))


@dataclass
class SwellReport:
    """Op counts of a function and its gradient, symbolically (sympy) and as symad DAGs.

    ``sympy_*`` counts are ``sympy.count_ops`` of expression trees (a shared subtree counts
    each time it appears); ``*_cse`` after ``sympy.cse``; ``dag_*`` count op nodes (not
    inputs or constants) of symad's graph for f, and for f together with its gradient.
    ``seconds`` holds the time of each stage.
    """
    name: str
    n_inputs: int
    sympy_f: int
    sympy_grad: int
    sympy_f_cse: int | None
    sympy_f_grad_cse: int | None
    dag_f: int
    dag_f_grad: int
    seconds: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """DAG ops of f + gradient over DAG ops of f (reverse mode promises a small constant)."""
        return self.dag_f_grad / self.dag_f if self.dag_f else math.inf

    @property
    def sympy_ratio(self) -> float:
        """Tree ops of the symbolic gradient over tree ops of f."""
        return self.sympy_grad / self.sympy_f if self.sympy_f else math.inf

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("name", "n_inputs", "sympy_f", "sympy_grad",
                                           "sympy_f_cse", "sympy_f_grad_cse", "dag_f",
                                           "dag_f_grad")}
        d["ratio"] = self.ratio
        d["sympy_ratio"] = self.sympy_ratio
        d["seconds"] = dict(self.seconds)
        return d

    def __str__(self) -> str:
        rows = [
            ("sympy tree of f", self.sympy_f),
            ("sympy tree of grad f (sympy.diff)", self.sympy_grad),
            ("sympy cse of f", self.sympy_f_cse),
            ("sympy cse of f + grad f", self.sympy_f_grad_cse),
            ("symad DAG of f", self.dag_f),
            ("symad DAG of f + grad f", self.dag_f_grad),
        ]
        lines = [f"swell report for {self.name} ({self.n_inputs} inputs), op counts:"]
        lines += [f"  {label:<36}{'-' if v is None else v:>10}" for label, v in rows]
        lines.append(f"  {'DAG ratio (f + grad f) / f':<36}{self.ratio:>10.2f}")
        return "\n".join(lines)


def swell_report(f: Callable, *args, cse: bool = True) -> SwellReport:
    """Measure expression swell: sympy trees of f and its derivative vs symad's DAGs.

    Args:
        f: a function returning one scalar, traced at ``args``.
        cse: also run ``sympy.cse`` (slow for large trees); the ``*_cse`` fields are
            ``None`` without it.

    Returns:
        A :class:`SwellReport`; ``str()`` of it is a small table.

    >>> import numpy as np
    >>> r = swell_report(lambda x1, x2: np.log(x1) + x1 * x2 - np.sin(x2), 2.0, 5.0)
    >>> (r.dag_f, r.dag_f_grad, r.sympy_grad)
    (5, 9, 4)
    """
    from .api import trace_call

    seconds = {}
    t0 = time.perf_counter()
    st = trace_call(f, args)
    graph = st.graph
    seconds["trace"] = time.perf_counter() - t0
    if len(st.outputs) != 1:
        raise TypeError(f"swell_report needs a function returning one scalar; "
                        f"{graph.name} returned {len(st.outputs)} values")
    dag_f = _dag_ops(graph, st.outputs)
    t0 = time.perf_counter()
    st_grad = trace_call(f, args, grad_argnums=tuple(range(len(args))))
    seconds["trace_and_ad"] = time.perf_counter() - t0
    dag_f_grad = _dag_ops(st_grad.graph, st_grad.outputs)

    syms = input_symbols(graph)
    t0 = time.perf_counter()
    (expr,) = to_sympy(graph, symbols=syms)
    seconds["to_sympy"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    grads = [sp.diff(expr, s) for s in syms]
    seconds["sympy_diff"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    sympy_f = int(sp.count_ops(expr))
    sympy_grad = int(sum(sp.count_ops(g) for g in grads))
    seconds["count_ops"] = time.perf_counter() - t0
    f_cse = f_grad_cse = None
    if cse:
        t0 = time.perf_counter()
        f_cse = _cse_ops([expr])
        f_grad_cse = _cse_ops([expr, *grads])
        seconds["sympy_cse"] = time.perf_counter() - t0
    return SwellReport(graph.name, len(graph.inputs), sympy_f, sympy_grad, f_cse,
                       f_grad_cse, dag_f, dag_f_grad, seconds)
