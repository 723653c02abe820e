"""The op table: every primitive declared once (trace -> graph -> ad -> lower -> jit).

A row gives the op's name, arity, numpy reference semantics, local partial derivatives
written as graph expressions (so derivatives of derivatives work), its sympy counterpart
and, as plain data, how ``codegen`` lowers it. Adding an op is one row here; the
table-driven tests pick it up.

Partials receive the operands and the op's own output (``out``) as tracers, plus the
op's static attributes, and return one graph expression per operand, or ``None`` for a
structural zero (AD then builds nothing for that operand).

Two rows are *structural* (``structural=True``), not elementwise: ``gather`` and segment
``sum`` move and add elements by an index table. Their ``numpy`` works on the elements
axis (the last; batch axes before it), they have no partials but an ``adjoint`` (each is
the other's: they are linear, each the other's transpose), and ``shape_problem`` checks
a node's table against its sizes for ``Graph.verify``. They are built by
``Graph.gather``/``Graph.segment_sum`` (their folding rules are these rows' construction
rules; ``Graph.node`` sends the two there) and lowered by ``codegen/arrays.py`` (loops over
the table) or ``symad/scalarize.py`` (element by element). Everything that means "an
elementwise scalar op" (the scalar lowering, the numpy and sympy names, the elementwise
table-driven tests) skips the rows with the flag.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.codegen import cfunctions as spc

# ---- lowering hints: plain data, read by codegen/lower.py (symad never imports LLVM) ----


@dataclass(frozen=True, slots=True)
class Instr:
    """One LLVM instruction (``fadd``, ``fmul``, ``fneg``, ...)."""
    name: str


@dataclass(frozen=True, slots=True)
class Intrinsic:
    """An LLVM intrinsic of type ``double(double, ...)`` (``llvm.sin``, ``llvm.pow``, ...)."""
    name: str


@dataclass(frozen=True, slots=True)
class Libm:
    """A C math library function of type ``double(double, ...)`` resolved from the process."""
    name: str


@dataclass(frozen=True, slots=True)
class Custom:
    """Lowered by a hand-written function in ``codegen/lower.py``, keyed by op name."""


@dataclass(frozen=True, slots=True)
class OpSpec:
    name: str                          # mnemonic used in printing, errors, IR value names
    arity: int
    numpy: Callable                    # reference semantics: (*args, *attrs) -> float64
    partials: Callable | None          # (*args, out, *attrs) -> tuple[tracer | None, ...]
    sympy: Callable | None             # (*args, *attrs) -> sympy expression
    lower: object                      # Instr | Intrinsic | Libm | Custom (None: structural)
    domain: tuple = (-3.0, 3.0)        # where the table-driven tests sample
    commutative: bool = False
    selects: bool = False              # partials are selections: AD multiplies with mul0
    convention: str = ""               # documented choice at non-smooth points
    # numpy ufunc names besides ``numpy.__name__`` (np.arcsin is found by its name alone);
    # both tracers map every such name to this op (see ``ufunc_names``), and a scalar
    # tracer has a method of each name that numpy calls on object arrays (``x.arcsin()``)
    numpy_names: tuple = ()
    # sympy function classes ``from_sympy`` reads as this op besides ``sympy`` itself (when
    # that is a sympy function class, such as sp.sin): sympy.codegen's C functions
    sympy_functions: tuple = ()
    # a few instructions and no call: codegen/arrays.py recomputes such ops inside the
    # loop of a reduction that uses them instead of storing them
    cheap: bool = False
    # not elementwise: moves or adds elements by an index table (gather, sum); such a row
    # has ``lower=None`` (codegen/arrays.py and scalarize.py lower it), no partials and
    # no sympy counterpart, and the two fields below
    structural: bool = False
    # a linear row's reverse rule: (graph, node, bar) -> the contribution to the adjoint
    # of its operand (the transpose applied to ``bar``)
    adjoint: Callable | None = None
    # (node) -> what is wrong with a node of this row's attributes and sizes, or ""
    # (``Graph.verify``; the generic checks cover the elementwise rows)
    shape_problem: Callable | None = None


def _apply(name: str, args: tuple, attrs: tuple):
    """``name`` applied by the operands' own type: a traced value's class builds graph
    nodes through its ``apply_op`` (so this table imports no tracer)."""
    for a in args:
        apply_op = getattr(type(a), "apply_op", None)
        if apply_op is not None:
            return apply_op(name, args, attrs)
    with np.errstate(all="ignore"):
        return float(OPS[name].numpy(*(float(a) for a in args), *attrs))


def _op(name: str) -> Callable:
    def build(*args):
        return _apply(name, args, ())
    build.__name__ = name
    return build


add, sub, mul, div, neg = _op("add"), _op("sub"), _op("mul"), _op("div"), _op("neg")
exp, log, sqrt, sin, cos = _op("exp"), _op("log"), _op("sqrt"), _op("sin"), _op("cos")
sinh, cosh, sign = _op("sinh"), _op("cosh"), _op("sign")
lt, gt, eq, ne = _op("lt"), _op("gt"), _op("eq"), _op("ne")
floordiv, copysign = _op("floordiv"), _op("copysign")

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_LN2 = math.log(2.0)
_INV_LN2 = 1.0 / math.log(2.0)
_INV_LN10 = 1.0 / math.log(10.0)


def _div_partials(x, y, out):
    r = 1 / y
    return r, -out * r


def _erf_np(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _flag(fn: Callable) -> Callable:
    """numpy comparison returning 1.0/0.0 (symad has one scalar type, float64)."""
    return lambda x, y: np.asarray(fn(x, y), dtype=np.float64)


# Comparisons in sympy as Heaviside steps, not Piecewise: sympy's Piecewise constructor
# tries to solve its conditions, which can take minutes on large arguments.
def _sp_step(d, at_zero):
    return sp.Heaviside(d, at_zero)


def _sp_lt(x, y): return _sp_step(y - x, 0)
def _sp_le(x, y): return _sp_step(y - x, 1)
def _sp_gt(x, y): return _sp_step(x - y, 0)
def _sp_ge(x, y): return _sp_step(x - y, 1)
def _sp_ne(x, y): return _sp_step(x - y, 0) + _sp_step(y - x, 0)
def _sp_eq(x, y): return 1 - _sp_ne(x, y)


def _half_tie(x, y, win):
    # maximum/minimum split a tie evenly, so the gradient of max(x, x) is 1 in total.
    return win(x, y) + 0.5 * eq(x, y)


def _nan_tie(x, y, win):
    # fmax/fmin return the operand that is not NaN, so it takes the whole gradient; a tie
    # splits it evenly as in maximum/minimum. Both NaN: no gradient.
    return win(x, y) + 0.5 * eq(x, y) + ne(y, y) * eq(x, x)


def _sp_fmod(x, y):
    # C fmod truncates the quotient: the sign of the dividend, the size of |x| mod |y|.
    return sp.sign(x) * sp.Mod(sp.Abs(x), sp.Abs(y))


def _sp_copysign(x, y):
    # the sign of y as a step that is +1 at y = 0 (sympy's sign(0) is 0; copysign(x, +0.0)
    # is |x|)
    return sp.Abs(x) * (1 - 2 * sp.Heaviside(-y, 0))


def _where_np(c, a, b):
    return np.where(np.asarray(c) != 0, a, b)


def _mul0_np(z, y):
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(all="ignore"):
        return np.where(z == 0, z, z * y)


def _powi_np(x, n):
    return np.power(x, np.float64(n))


# ---- the structural rows: index tables on the elements axis -------------------------
# A table attribute is a ``graph.Table`` (``.index``, an int64 vector); this module reads
# only that field, so it imports nothing of the graph.


def add_segments(x, index, n: int):
    """``out[..., j] = x[..., k0] + x[..., k1] + ...`` over the ``k`` with ``index[k] ==
    j``, in increasing ``k``; -0.0 where no ``k`` lands (-0.0 + v == v for every v)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full(x.shape[:-1] + (n,), -0.0)
    np.add.at(out, (..., index), x)
    return out


def _gather_np(x, table):
    return np.asarray(x, dtype=np.float64)[..., table.index]


def _sum_np(x, table, n):
    return add_segments(x, table.index, n)


def _gather_adjoint(graph, node, bar):
    # each element read adds its adjoint back where it was read from
    return graph.segment_sum(bar, node.attrs[0].index, node.args[0].size)


def _sum_adjoint(graph, node, bar):
    # each added element gets its segment's adjoint
    return graph.gather(bar, node.attrs[0].index)


def _table_problem(node, what: str, source: int) -> str:
    """What is wrong with ``node``'s table (its first attribute) as int64 indices into
    ``source`` elements, or ""."""
    index = getattr(node.attrs[0], "index", None) if node.attrs else None
    if not isinstance(index, np.ndarray) or index.dtype != np.int64 or index.ndim != 1:
        return f"a {what} without an index table"
    if len(index) and (index.min() < 0 or index.max() >= source):
        return f"a {what} table that does not match its sizes"
    return ""


def _gather_problem(node) -> str:
    if len(node.attrs) != 1:
        return "a gather needs one attribute, its table"
    problem = _table_problem(node, "gather", node.args[0].size)
    if problem:
        return problem
    if len(node.attrs[0].index) != node.size:
        return "a gather table that does not match its sizes"
    return ""


def _sum_problem(node) -> str:
    if len(node.attrs) != 2 or type(node.attrs[1]) is not int:
        return "a segment sum needs two attributes, its table and its segment count"
    problem = _table_problem(node, "segment", node.size)
    if problem:
        return problem
    if len(node.attrs[0].index) != node.args[0].size or node.attrs[1] != node.size:
        return "a segment table that does not match its sizes"
    return ""


def op_table(*rows: OpSpec) -> dict[str, OpSpec]:
    table: dict[str, OpSpec] = {}
    for row in rows:
        if row.name in table:
            raise ValueError(f"op {row.name!r} declared twice")
        table[row.name] = row
    return table


OPS = op_table(
    # ---- leaves (no operands; never differentiated through) ----
    OpSpec("const", 0, None, None, None, Custom()),
    OpSpec("input", 0, None, None, None, Custom()),
    # ---- arithmetic ----
    OpSpec("add", 2, np.add, lambda x, y, out: (1.0, 1.0), sp.Add, Instr("fadd"),
           commutative=True, cheap=True),
    OpSpec("sub", 2, np.subtract, lambda x, y, out: (1.0, -1.0), lambda x, y: x - y,
           Instr("fsub"), cheap=True),
    OpSpec("mul", 2, np.multiply, lambda x, y, out: (y, x), sp.Mul, Instr("fmul"),
           commutative=True, cheap=True),
    # d/dy = -out/y as -out * (1/y): one division for both partials, and none for a
    # reciprocal 1/y, whose 1/y is ``out`` itself (-out*out; divisions cost ~10x a mul).
    OpSpec("div", 2, np.divide, _div_partials, lambda x, y: x / y, Instr("fdiv"),
           numpy_names=("true_divide",)),
    OpSpec("neg", 1, np.negative, lambda x, out: (-1.0,), lambda x: -x, Instr("fneg"),
           cheap=True),
    # x ** y for a traced y: d/dy = out*log(x) is NaN for x < 0, as in every AD system.
    OpSpec("pow", 2, np.power, lambda x, y, out: (y * x ** (y - 1), out * log(x)),
           sp.Pow, Intrinsic("llvm.pow"), domain=(0.5, 2.5)),
    # x ** n for a Python int n (attribute): exact repeated multiplication, any sign of x.
    OpSpec("powi", 1, _powi_np, lambda x, out, n: (n * x ** (n - 1) if n else None,),
           lambda x, n: x**n, Custom(), cheap=True),
    # ---- exponentials and logarithms ----
    OpSpec("exp", 1, np.exp, lambda x, out: (out,), sp.exp, Intrinsic("llvm.exp")),
    OpSpec("log", 1, np.log, lambda x, out: (1 / x,), sp.log, Intrinsic("llvm.log"),
           domain=(0.1, 5.0)),
    # log1p/expm1 keep full precision near 0, where log(1+x) and exp(x)-1 cancel.
    # (sympy.codegen's log1p/expm1 classes print as the C functions; from_sympy reads them)
    OpSpec("log1p", 1, np.log1p, lambda x, out: (1 / (1 + x),), lambda x: sp.log(1 + x),
           Libm("log1p"), domain=(-0.5, 3.0), sympy_functions=(spc.log1p,)),
    OpSpec("expm1", 1, np.expm1, lambda x, out: (out + 1,), lambda x: sp.exp(x) - 1,
           Libm("expm1"), sympy_functions=(spc.expm1,)),
    # Dedicated rows, not log(x)/log(10) or 2**x: the quotient of logs rounds twice
    # (log(1000)/log(10) is 2.9999999999999996, so floor(log10(1000)) was 2).
    OpSpec("exp2", 1, np.exp2, lambda x, out: (_LN2 * out,), lambda x: 2**x,
           Intrinsic("llvm.exp2"), sympy_functions=(spc.exp2,)),
    OpSpec("log2", 1, np.log2, lambda x, out: (_INV_LN2 / x,), lambda x: sp.log(x, 2),
           Intrinsic("llvm.log2"), domain=(0.1, 5.0), sympy_functions=(spc.log2,)),
    OpSpec("log10", 1, np.log10, lambda x, out: (_INV_LN10 / x,), lambda x: sp.log(x, 10),
           Intrinsic("llvm.log10"), domain=(0.1, 5.0), sympy_functions=(spc.log10,)),
    OpSpec("sqrt", 1, np.sqrt, lambda x, out: (0.5 / out,), sp.sqrt, Intrinsic("llvm.sqrt"),
           domain=(0.1, 5.0), sympy_functions=(spc.Sqrt,)),
    # ---- trigonometric ----
    OpSpec("sin", 1, np.sin, lambda x, out: (cos(x),), sp.sin, Intrinsic("llvm.sin")),
    OpSpec("cos", 1, np.cos, lambda x, out: (-sin(x),), sp.cos, Intrinsic("llvm.cos")),
    OpSpec("tan", 1, np.tan, lambda x, out: (1 + out * out,), sp.tan, Libm("tan"),
           domain=(-1.2, 1.2)),
    OpSpec("asin", 1, np.arcsin, lambda x, out: (1 / sqrt(1 - x * x),), sp.asin,
           Libm("asin"), domain=(-0.9, 0.9)),
    OpSpec("acos", 1, np.arccos, lambda x, out: (-1 / sqrt(1 - x * x),), sp.acos,
           Libm("acos"), domain=(-0.9, 0.9)),
    OpSpec("atan", 1, np.arctan, lambda x, out: (1 / (1 + x * x),), sp.atan, Libm("atan")),
    OpSpec("atan2", 2, np.arctan2,
           lambda y, x, out: (x / (x * x + y * y), -y / (x * x + y * y)), sp.atan2,
           Libm("atan2"), domain=(0.2, 3.0)),
    # libm hypot scales internally: sqrt(x*x + y*y) overflows at 1e155 and underflows at
    # 1e-162. At (0, 0) the partials are 0/0 = NaN, as they were for that formula.
    OpSpec("hypot", 2, np.hypot, lambda x, y, out: (x / out, y / out),
           lambda x, y: sp.sqrt(x * x + y * y), Libm("hypot"), sympy_functions=(spc.hypot,)),
    # ---- hyperbolic and special ----
    OpSpec("sinh", 1, np.sinh, lambda x, out: (cosh(x),), sp.sinh, Libm("sinh")),
    OpSpec("cosh", 1, np.cosh, lambda x, out: (sinh(x),), sp.cosh, Libm("cosh")),
    OpSpec("tanh", 1, np.tanh, lambda x, out: (1 - out * out,), sp.tanh, Libm("tanh")),
    OpSpec("asinh", 1, np.arcsinh, lambda x, out: (1 / sqrt(x * x + 1),), sp.asinh,
           Libm("asinh")),
    OpSpec("acosh", 1, np.arccosh, lambda x, out: (1 / sqrt(x * x - 1),), sp.acosh,
           Libm("acosh"), domain=(1.1, 4.0)),
    OpSpec("atanh", 1, np.arctanh, lambda x, out: (1 / (1 - x * x),), sp.atanh,
           Libm("atanh"), domain=(-0.9, 0.9)),
    # The real cube root (libm cbrt), defined for x < 0, unlike x ** (1/3).
    OpSpec("cbrt", 1, np.cbrt, lambda x, out: (1 / (3 * out * out),),
           lambda x: sp.sign(x) * sp.Abs(x) ** sp.Rational(1, 3), Libm("cbrt"),
           domain=(0.1, 3.0), sympy_functions=(spc.Cbrt,)),
    OpSpec("erf", 1, _erf_np, lambda x, out: (_TWO_OVER_SQRT_PI * exp(-(x * x)),), sp.erf,
           Libm("erf"), numpy_names=("erf",)),   # scipy.special.erf is a ufunc named "erf"
    # ---- non-smooth ----
    OpSpec("abs", 1, np.abs, lambda x, out: (sign(x),), sp.Abs, Intrinsic("llvm.fabs"),
           convention="abs'(0) = 0 (sign(0) = 0)", numpy_names=("fabs",), cheap=True),
    OpSpec("sign", 1, np.sign, lambda x, out: (None,), sp.sign, Custom(),
           convention="sign' = 0 everywhere, also at 0", cheap=True),
    # |x| with the sign bit of y (also of -0.0 and NaN), so d/dx is copysign(1, y) for
    # x > 0: sign(y) would be 0 at y = ±0.
    OpSpec("copysign", 2, np.copysign,
           lambda x, y, out: (sign(x) * copysign(1.0, y), None),
           _sp_copysign, Intrinsic("llvm.copysign"),
           convention="copysign: d/dx = ±sign(x) (0 at x = 0), d/dy = 0"),
    OpSpec("floor", 1, np.floor, lambda x, out: (None,), sp.floor, Intrinsic("llvm.floor"),
           convention="floor' = 0 everywhere, also at integers", cheap=True),
    OpSpec("maximum", 2, np.maximum,
           lambda x, y, out: (_half_tie(x, y, gt), _half_tie(y, x, gt)), sp.Max, Custom(),
           selects=True, cheap=True,
           convention="maximum(x, y) at x == y: gradient split 1/2, 1/2"),
    OpSpec("minimum", 2, np.minimum,
           lambda x, y, out: (_half_tie(x, y, lt), _half_tie(y, x, lt)), sp.Min, Custom(),
           selects=True, cheap=True,
           convention="minimum(x, y) at x == y: gradient split 1/2, 1/2"),
    # fmax/fmin ignore a NaN operand (numpy, C99): llvm.maxnum/minnum have that NaN rule
    # but leave the sign of a zero result unspecified, so they are fcmp+select too.
    OpSpec("fmax", 2, np.fmax,
           lambda x, y, out: (_nan_tie(x, y, gt), _nan_tie(y, x, gt)), sp.Max, Custom(),
           selects=True, convention="fmax(x, y): the operand returned takes the gradient "
           "(the non-NaN one if one is NaN, none if both); at x == y split 1/2, 1/2"),
    OpSpec("fmin", 2, np.fmin,
           lambda x, y, out: (_nan_tie(x, y, lt), _nan_tie(y, x, lt)), sp.Min, Custom(),
           selects=True, convention="fmin(x, y): the operand returned takes the gradient "
           "(the non-NaN one if one is NaN, none if both); at x == y split 1/2, 1/2"),
    # ---- division with remainder (numpy's npy_divmod: fmod first, then corrected) ----
    # floor(x / y) is wrong where x / y rounds up to an integer (1.0 // 0.1 is 9, and
    # 1.0 / 0.1 rounds to 10.0), and x - floor(x/y)*y loses the remainder of big x.
    OpSpec("floordiv", 2, np.floor_divide, lambda x, y, out: (None, None),
           lambda x, y: sp.floor(x / y), Custom(),
           convention="floordiv' = 0 everywhere (a step function, like floor)"),
    OpSpec("mod", 2, np.remainder, lambda x, y, out: (1.0, -floordiv(x, y)), sp.Mod,
           Custom(), convention="mod: d/dx = 1, d/dy = -(x // y), also at the jumps"),
    # d/dy = -trunc(x / y), the integer quotient fmod took away: (out - x) / y.
    OpSpec("fmod", 2, np.fmod, lambda x, y, out: (1.0, (out - x) / y), _sp_fmod,
           Instr("frem"), convention="fmod: d/dx = 1, d/dy = -trunc(x / y), also at the "
           "jumps"),
    # ---- comparisons (1.0 true, 0.0 false; NaN compares false except in ne) ----
    OpSpec("lt", 2, _flag(np.less), lambda x, y, out: (None, None), _sp_lt,
           Custom(), numpy_names=("less",), cheap=True),
    OpSpec("le", 2, _flag(np.less_equal), lambda x, y, out: (None, None), _sp_le,
           Custom(), numpy_names=("less_equal",), cheap=True),
    OpSpec("gt", 2, _flag(np.greater), lambda x, y, out: (None, None), _sp_gt,
           Custom(), numpy_names=("greater",), cheap=True),
    OpSpec("ge", 2, _flag(np.greater_equal), lambda x, y, out: (None, None),
           _sp_ge, Custom(), numpy_names=("greater_equal",), cheap=True),
    OpSpec("eq", 2, _flag(np.equal), lambda x, y, out: (None, None), _sp_eq,
           Custom(), commutative=True, numpy_names=("equal",), cheap=True),
    OpSpec("ne", 2, _flag(np.not_equal), lambda x, y, out: (None, None), _sp_ne,
           Custom(), commutative=True, numpy_names=("not_equal",), cheap=True),
    # ---- selection ----
    # where(c, a, b) takes a where c != 0 (NaN counts as true, as in numpy). The branch
    # not taken gets an exact 0 adjoint even when its own partials are inf or NaN.
    OpSpec("where", 3, _where_np, lambda c, a, b, out: (None, ne(c, 0.0), eq(c, 0.0)),
           lambda c, a, b: b + (a - b) * _sp_ne(c, 0), Custom(),
           selects=True, cheap=True,
           convention="where: no gradient flows into the branch not taken"),
    # mul0(z, y) = z if z == 0 else z * y. AD uses it where z may be a masked-out
    # adjoint, so 0 * inf stays 0 instead of becoming NaN. It selects too: its own
    # derivatives must keep that zero exact, or Hessians of where(...) leak NaN again.
    OpSpec("mul0", 2, _mul0_np, lambda z, y, out: (y, z), sp.Mul, Custom(),
           selects=True, cheap=True),
    # ---- structural (not elementwise; see the module docstring) ----
    # gather attrs (Table,): out[k] = x[t[k]] (slicing, indexing, reshaping, transposing
    # and broadcasting are all gathers of the flat vector)
    OpSpec("gather", 1, _gather_np, None, None, None, structural=True,
           adjoint=_gather_adjoint, shape_problem=_gather_problem),
    # sum attrs (Table, n): out[j] = the sum of x[k] over t[k] == j, in increasing k
    # (numpy's order for object arrays, hence the scalar tracer's); -0.0 where none lands
    OpSpec("sum", 1, _sum_np, None, None, None, structural=True,
           adjoint=_sum_adjoint, shape_problem=_sum_problem),
)


def ufunc_names() -> dict[str, str]:
    """numpy ufunc name -> op, from the rows: each row's numpy function's own name (when it
    is a ufunc) and its ``numpy_names``. Both tracers build their tables from this."""
    names: dict[str, str] = {}
    for row in OPS.values():
        if row.structural:
            continue
        if isinstance(row.numpy, np.ufunc):
            names[row.numpy.__name__] = row.name
        for alias in row.numpy_names:
            names[alias] = row.name
    return names


# ---- rewrites applied at construction ----------------------------------------------


# The rules serve the scalar graph and the array-level graph alike: a rule reads a
# constant through ``_const_value`` (a scalar constant's number, or the one value of an
# array constant whose elements are all the same bits), builds with ``g.node``/``g.const``,
# and the array level drops a result whose size differs from the node it replaces.

def _const_value(node) -> float | None:
    """The number a constant node holds everywhere, else None."""
    if node.op != "const":
        return None
    v = node.attrs[0]
    return v if type(v) is float else getattr(v, "uniform", None)


def _is(node, value: float) -> bool:
    """Is ``node`` the constant ``value``, bit for bit (so 0.0 and -0.0 differ)?"""
    if node.op != "const":        # the common case first: rules run on every new node
        return False
    v = node.attrs[0]
    if type(v) is not float:
        v = v.uniform
        if v is None:
            return False
    return v == value and math.copysign(1.0, v) == math.copysign(1.0, value)


def _add_rule(g, args, attrs):
    x, y = args
    if _is(y, -0.0):      # x + (-0.0) == x for every x, including -0.0 and NaN
        return x
    if _is(x, -0.0):
        return y
    # x + (-y) == x - y exactly (IEEE subtraction is addition of the negation): the
    # reverse pass accumulates negated partials, and this saves a node for each.
    if y.op == "neg":
        return g.node("sub", (x, y.args[0]))
    if x.op == "neg":
        return g.node("sub", (y, x.args[0]))
    return None


def _sub_rule(g, args, attrs):
    x, y = args
    if _is(y, 0.0):       # x - (+0.0) == x for every x, including -0.0
        return x
    if y.op == "neg":     # x - (-y) == x + y exactly
        return g.node("add", (x, y.args[0]))
    return None


def _mul_rule(g, args, attrs):
    x, y = args
    for a, b in ((x, y), (y, x)):
        if _is(a, 1.0):   # 1 * x == x exactly
            return b
        if _is(a, -1.0):  # -1 * x == -x exactly (sign flip only)
            return g.node("neg", (b,))
    return None


def _div_rule(g, args, attrs):
    x, y = args
    if _is(y, 1.0):       # x / 1 == x exactly
        return x
    if _is(y, -1.0):
        return g.node("neg", (x,))
    return None


def _neg_rule(g, args, attrs):
    (x,) = args
    return x.args[0] if x.op == "neg" else None     # --x == x exactly


def _powi_rule(g, args, attrs):
    (n,) = attrs
    if n == 1:            # x ** 1 == x
        return args[0]
    if n == 0:            # x ** 0 == 1, also for NaN and inf (IEEE pow, numpy)
        return g.const(1.0)
    return None


def _where_rule(g, args, attrs):
    c, a, b = args
    v = _const_value(c)
    if v is not None:     # a constant condition picks its branch
        return a if (v != 0 or math.isnan(v)) else b
    if a is b:            # both branches the same value
        return a
    return None


def _same_rule(g, args, attrs):
    x, y = args
    return x if x is y else None    # max(x, x) == min(x, x) == x (fmax, fmin too)


def _mul0_rule(g, args, attrs):
    z, y = args
    if _const_value(z) == 0.0:      # mul0(0, y) == 0, whatever y is
        return z
    if _is(y, 1.0):       # mul0(z, 1) == z (z == 0 gives z too)
        return z
    if _is(z, 1.0):       # mul0(1, y) == 1 * y == y
        return y
    return None


EXACT_RULES: dict[str, Callable] = {
    "add": _add_rule, "sub": _sub_rule, "mul": _mul_rule, "div": _div_rule,
    "neg": _neg_rule, "powi": _powi_rule, "where": _where_rule,
    "maximum": _same_rule, "minimum": _same_rule, "fmax": _same_rule, "fmin": _same_rule,
    "mul0": _mul0_rule,
}


# ---- rewrites that need fast-math flags -------------------------------------------
# ``fastmath`` names LLVM's fast-math flags (``codegen/lower.py`` passes the same tuple to
# LLVM). A rewrite that is not IEEE-exact runs only when every flag that licenses it is
# named: nnan/ninf to assume NaN/inf away, nsz to ignore the sign of a zero.

FASTMATH_FLAGS = frozenset(("nnan", "ninf", "nsz", "arcp", "contract", "afn", "reassoc",
                            "fast"))
# ``fastmath=True``: no nnan/ninf (NaN and inf stay possible), and no nsz either: LLVM
# takes reassoc with nsz to license cancelling terms ((x + y) - y -> x, which is 1, not
# NaN, for y = inf). ``codegen/lower.py`` keeps reassoc off math calls (``instruction_flags``).
DEFAULT_FASTMATH = ("arcp", "contract", "afn", "reassoc")


def fastmath_flags(fastmath) -> tuple[str, ...]:
    """Normalise the user's ``fastmath`` option to a tuple of LLVM flag names: ``False``
    none, ``True`` ``DEFAULT_FASTMATH``, else the flags named (one string or several)."""
    if fastmath is False or fastmath is None:
        return ()
    if fastmath is True:
        return DEFAULT_FASTMATH
    flags = (fastmath,) if isinstance(fastmath, str) else tuple(fastmath)
    bad = [f for f in flags if f not in FASTMATH_FLAGS]
    if bad:
        raise ValueError(f"unknown fast-math flag(s) {bad}; choose from "
                         f"{sorted(FASTMATH_FLAGS)}")
    return flags


def enabled_flags(flags) -> frozenset:
    """The flags in effect: ``fast`` stands for all of them."""
    flags = frozenset(flags)
    return FASTMATH_FLAGS if "fast" in flags else flags


@dataclass(frozen=True, slots=True)
class FastRule:
    """A rewrite that is not IEEE-exact; it runs when the flags in ``needs`` are all on."""
    rewrite: Callable
    needs: frozenset


def _fast_mul_zero(g, args, attrs):
    x, y = args
    if _is(x, 0.0) or _is(y, 0.0):   # 0 * inf and 0 * NaN are NaN, 0 * -1 is -0
        return g.const(0.0)
    return None


def _fast_sub_self(g, args, attrs):
    x, y = args
    return g.const(0.0) if x is y else None     # inf - inf and NaN - NaN are NaN


def _fast_add_zero(g, args, attrs):
    x, y = args
    if _is(x, 0.0):                  # only the sign of a zero: -0.0 + 0.0 is +0.0
        return y
    if _is(y, 0.0):
        return x
    return None


FASTMATH_RULES: dict[str, tuple[FastRule, ...]] = {
    "mul": (FastRule(_fast_mul_zero, frozenset(("nnan", "ninf", "nsz"))),),
    "sub": (FastRule(_fast_sub_self, frozenset(("nnan", "ninf"))),),
    "add": (FastRule(_fast_add_zero, frozenset(("nsz",))),),
}


def fastmath_rules(flags) -> dict[str, tuple[Callable, ...]]:
    """The rewrites of ``FASTMATH_RULES`` that the fast-math ``flags`` license, by op."""
    on = enabled_flags(flags)
    found = {op: tuple(r.rewrite for r in rules if r.needs <= on)
             for op, rules in FASTMATH_RULES.items()}
    return {op: rules for op, rules in found.items() if rules}


# the elementwise rows with operands (the structural rows are differentiated through their
# ``adjoint``)
DIFFERENTIABLE_OPS = tuple(n for n, s in OPS.items() if s.arity > 0 and not s.structural)
