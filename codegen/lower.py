"""Graph -> LLVM IR (trace -> graph -> ad -> **lower** -> jit).

``emit_kernel`` evaluates every output of a scalar graph at one point, in one of three
forms: straight-line SSA code (up to ``CHUNK_NODES`` operations), ``noinline`` chunk
functions called in turn for larger graphs (values crossing chunks pass through a scratch
buffer), or, with a ``roll.Plan`` (``rolled_plan``), straight stretches and counted loops
over the repeated ones (values read back live in a scratch buffer). In every form runs of
outputs that are copies, inputs or constants are stored by small loops.
``emit_vector_kernel`` and ``emit_rolled(width=4)`` do the same over four points at once
for the batch entry. Forward and adjoint nodes live in the same graph, so the gradient
part reuses forward values as plain SSA registers. Nodes are lowered by iterating the
topologically ordered live list with a ``dict[Node, ir.Value]``; nothing recurses on
graph depth. IR value names mirror node ids (``%v7`` is graph node ``%7``), so IR lines
trace back to graph lines.

The kernel's ABI::

    void NAME_kernel(const double* in, i64 in_stride, double* out, i64 out_stride)

Input leaf ``j`` is read from ``in[j * in_stride]`` and output ``k`` written to
``out[k * out_stride]``. A single point uses stride 1; the batch loop
(``batch_entry.py``) passes column-major tiles (stride = the tile's points) so
consecutive points are contiguous and vectorisable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llvmlite import ir

from symad import policy
from symad.graph import Graph, Node
from symad.ops import (
    DEFAULT_FASTMATH,  # noqa: F401  (re-exported with fastmath_flags)
    FASTMATH_FLAGS,
    OPS,
    Custom,
    Instr,
    Intrinsic,
    Libm,
    enabled_flags,
    fastmath_flags,  # noqa: F401  (codegen.fastmath_flags)
)

from .builder import (
    DOUBLE,
    I64,
    PTR,
    const_table,
    free_buffer,
    kernel_fn,
    loop_over,
    scratch_buffer,
)

# The fast-math options live with the op table (the graph's rewrites read them too).
ALL_FLAGS = FASTMATH_FLAGS


@functools.lru_cache(maxsize=64)
def instruction_flags(flags: tuple) -> tuple[tuple, tuple]:
    """(flags for arithmetic, flags for calls of math functions) from the user's
    fast-math ``flags``. Unless nnan and ninf are on, no instruction gets flags that let
    LLVM drop a NaN or an inf by an identity:

    - calls, and arithmetic on a call's result, get no reassoc: LLVM folds exp(log x),
      log(exp x) and exp2(log2 x) to x and exp(a) * exp(b) to exp(a + b) under it (single
      calls gave -1 for exp(log(-1)), batches, whose libmvec calls LLVM does not fold, NaN);
    - arithmetic with reassoc gets no nsz: reassoc and nsz together let LLVM cancel terms
      ((x + y) - y -> x, 1 for y = inf, in InstCombine and the Reassociate pass); reassoc
      alone still reorders sums (vectorised reductions)."""
    on = enabled_flags(flags)
    if {"nnan", "ninf"} <= on:
        return flags, flags
    arith = tuple(f for f in flags if f != "nsz") if "reassoc" in on else flags
    return arith, tuple(f for f in flags if f != "reassoc")


def _calls(node: Node) -> bool:
    spec = OPS.get(node.op)      # a structural row's (gather, sum) lower is None
    return spec is not None and isinstance(spec.lower, (Intrinsic, Libm))


def _fconst(v: float) -> ir.Constant:
    return ir.Constant(DOUBLE, float(v))


def _fc(like: ir.Value, v: float) -> ir.Constant:
    """The constant ``v`` in the type of ``like``: a double, or a splat for vector code."""
    ty = like.type
    if isinstance(ty, ir.VectorType):
        return ir.Constant(ty, [float(v)] * ty.count)
    return ir.Constant(DOUBLE, float(v))


def _flag(b: ir.IRBuilder, bit: ir.Value, name: str) -> ir.Value:
    ty = bit.type
    like = ir.Constant(ir.VectorType(DOUBLE, ty.count) if isinstance(ty, ir.VectorType)
                       else DOUBLE, None)
    return b.select(bit, _fc(like, 1.0), _fc(like, 0.0), name=name)


# ---- hand-written lowerings for the Custom() rows, keyed by op name ------------------
# Each takes (builder, operands, node, flags) and returns the node's value.

def _powi(b, args, node, flags):
    # Exact repeated multiplication by binary exponentiation, like numpy's integer power
    # for small exponents; a negative exponent divides 1 by the positive power.
    (x,), (n,) = args, node.attrs
    k = abs(int(n))
    name = f"v{node.id}"
    if k == 0:
        return _fc(x, 1.0)
    result, base = None, x
    while True:
        if k & 1:
            result = base if result is None else b.fmul(result, base, flags=flags)
        k >>= 1
        if not k:
            break
        base = b.fmul(base, base, flags=flags)
    if n < 0:
        return b.fdiv(_fc(x, 1.0), result, name=name, flags=flags)
    return result


def _sign(b, args, node, flags):
    # numpy: sign(x) = 1 / -1 for x > 0 / x < 0, +0.0 for either zero, NaN for NaN.
    (x,) = args
    zero_or_nan = b.fadd(x, _fc(x, 0.0))   # -0.0 + 0.0 == +0.0; NaN stays NaN
    neg = b.select(b.fcmp_ordered("<", x, _fc(x, 0.0)), _fc(x, -1.0), zero_or_nan)
    return b.select(b.fcmp_ordered(">", x, _fc(x, 0.0)), _fc(x, 1.0), neg,
                    name=f"v{node.id}")


def _choose(cmp: str, nan_operand: int):
    """``(x cmp y or isnan(args[nan_operand])) ? x : y``, with fcmp + select."""
    def lower(b, args, node, flags):
        x, y = args
        z = args[nan_operand]
        take_x = b.or_(b.fcmp_ordered(cmp, x, y), b.fcmp_unordered("uno", z, z))
        return b.select(take_x, x, y, name=f"v{node.id}")
    return lower


# numpy's maximum/minimum: NaN in either operand gives NaN (a NaN x is taken, a NaN y
# fails the comparison), and of two zeros the second operand wins; llvm.maxnum would drop
# the NaN. fmax/fmin (numpy's scalar loop): a NaN operand is ignored and of two zeros the
# first wins; not llvm.maxnum either, which leaves the sign of a zero open.
_maximum, _minimum = _choose(">", 0), _choose("<", 0)
_fmax, _fmin = _choose(">=", 1), _choose("<=", 1)


def _intrinsic(b, name: str, args: list) -> ir.Value:
    """Call ``llvm.NAME`` on doubles or vectors of doubles (its suffix from the type)."""
    ty = args[0].type
    sym = f"{name}.v{ty.count}f64" if isinstance(ty, ir.VectorType) else f"{name}.f64"
    fn = b.module.globals.get(sym) or ir.Function(
        b.module, ir.FunctionType(ty, [ty] * len(args)), name=sym)
    return b.call(fn, args)


def _divmod(b, x, y):
    """numpy's npy_divmod (floor quotient, remainder with the divisor's sign), for y != 0:
    from C fmod (LLVM's frem), which is exact, then corrected by one where the signs differ
    and rounded where (x - mod) / y is not quite an integer. No fast-math flags: the
    corrections rely on exact IEEE rounding (under arcp the quotient was off by one)."""
    flags = ()
    zero = _fc(x, 0.0)
    mod = b.frem(x, y)
    div = b.fdiv(b.fsub(x, mod, flags=flags), y, flags=flags)
    # NaN counts as nonzero (C's `if (mod)`), hence the unordered compares.
    fix = b.and_(b.fcmp_unordered("!=", mod, zero),
                 b.xor(b.fcmp_ordered("<", y, zero), b.fcmp_ordered("<", mod, zero)))
    div = b.select(fix, b.fsub(div, _fc(x, 1.0), flags=flags), div)
    mod = b.select(fix, b.fadd(mod, y, flags=flags), mod)
    mod = b.select(b.fcmp_ordered("==", mod, zero), _intrinsic(b, "llvm.copysign", [zero, y]),
                   mod)
    floor = _intrinsic(b, "llvm.floor", [div])
    up = b.fcmp_ordered(">", b.fsub(div, floor, flags=flags), _fc(x, 0.5))
    floor = b.select(up, b.fadd(floor, _fc(x, 1.0), flags=flags), floor)
    quotient = b.fdiv(x, y, flags=flags)
    signed_zero = _intrinsic(b, "llvm.copysign", [zero, quotient])
    floor = b.select(b.fcmp_ordered("==", div, zero), signed_zero, floor)
    return floor, mod, quotient


def _floordiv(b, args, node, flags):
    x, y = args
    floor, _, quotient = _divmod(b, x, y)
    by_zero = b.fcmp_ordered("==", y, _fc(y, 0.0))   # numpy: x / 0 (inf or NaN)
    return b.select(by_zero, quotient, floor, name=f"v{node.id}")


def _mod(b, args, node, flags):
    x, y = args
    _, mod, _ = _divmod(b, x, y)
    by_zero = b.fcmp_ordered("==", y, _fc(y, 0.0))   # numpy: fmod(x, 0), NaN
    return b.select(by_zero, b.frem(x, y), mod, name=f"v{node.id}")


def _compare(pred: str, ordered: bool = True) -> Callable:
    def lower(b, args, node, flags):
        cmp = b.fcmp_ordered if ordered else b.fcmp_unordered
        return _flag(b, cmp(pred, args[0], args[1]), f"v{node.id}")
    return lower


def _where(b, args, node, flags):
    # c != 0 takes a; NaN counts as true (unordered not-equal), as numpy's where does.
    c, x, y = args
    return b.select(b.fcmp_unordered("!=", c, _fc(c, 0.0)), x, y, name=f"v{node.id}")


def _mul0(b, args, node, flags):
    # z if z == 0 else z*y: a masked-out adjoint stays exactly 0 even when y is inf/NaN.
    z, y = args
    prod = b.fmul(z, y, flags=flags)
    return b.select(b.fcmp_ordered("==", z, _fc(z, 0.0)), z, prod, name=f"v{node.id}")


CUSTOM_LOWERINGS: dict[str, Callable] = {
    "powi": _powi, "sign": _sign, "maximum": _maximum, "minimum": _minimum,
    "fmax": _fmax, "fmin": _fmin, "floordiv": _floordiv, "mod": _mod,
    "lt": _compare("<"), "le": _compare("<="), "gt": _compare(">"), "ge": _compare(">="),
    "eq": _compare("=="), "ne": _compare("!=", ordered=False), "where": _where,
    "mul0": _mul0,
}


def is_lowerable(op: str) -> bool:
    """Can ``codegen`` lower this elementwise op-table row to scalar (or vector-lane)
    code? A structural row (``gather``, ``sum``) cannot: it is a loop over its table in
    ``codegen/arrays.py``, or unrolled by ``symad/scalarize.py`` before lowering."""
    spec = OPS[op]
    low = spec.lower
    if spec.structural:
        return False
    if op in ("const", "input"):
        return True
    if isinstance(low, Custom):
        return op in CUSTOM_LOWERINGS
    return isinstance(low, (Instr, Intrinsic, Libm))


def _callee(module: ir.Module, low, arity: int) -> ir.Function:
    fnty = ir.FunctionType(DOUBLE, [DOUBLE] * arity)
    if isinstance(low, Intrinsic):
        return module.declare_intrinsic(low.name, [DOUBLE], fnty=fnty)
    fn = module.globals.get(low.name)
    if fn is None:
        # A libm extern, resolved from the process (libm is loaded by CPython).
        fn = ir.Function(module, fnty, name=low.name)
    return fn


# Intrinsics that lower to plain vector instructions (no library call) on x86-64.
_VECTOR_NATIVE = frozenset(("llvm.sqrt", "llvm.fabs", "llvm.floor", "llvm.copysign"))


def vector_symbol(low, arity: int, width: int = 4) -> str | None:
    """glibc libmvec's AVX2 variant for a transcendental lowering (``_ZGVdN4v_sin``),
    or None when the op needs no library call in vector code."""
    if isinstance(low, Intrinsic):
        if low.name in _VECTOR_NATIVE:
            return None
        base = low.name[len("llvm."):]
    else:
        base = low.name
    return f"_ZGVdN{width}{'v' * arity}_{base}"


def lower_node(b: ir.IRBuilder, module: ir.Module, node: Node, args: list,
               flags: tuple, vector_math: bool = True) -> ir.Value:
    """The value of ``node`` from its operands' values (doubles, or vectors of doubles
    for several points at once). Vector transcendentals call libmvec when
    ``vector_math`` (only under fast-math: a few ulp from scalar libm), else scalar libm
    once per lane, bit-identical to scalar code."""
    spec = OPS.get(node.op)
    low = spec.lower
    name = f"v{node.id}"
    if flags:
        arith, calls = instruction_flags(flags)
        flags = calls if isinstance(low, (Intrinsic, Libm)) or any(map(_calls, node.args)) \
            else arith
    if isinstance(low, Instr):
        if spec.arity == 1:
            return getattr(b, low.name)(args[0], name=name, flags=flags)
        return getattr(b, low.name)(*args, name=name, flags=flags)
    if isinstance(low, (Intrinsic, Libm)) and isinstance(args[0].type, ir.VectorType):
        vty = args[0].type
        sym = vector_symbol(low, spec.arity, vty.count)
        if sym is not None and not vector_math:
            callee = _callee(module, low, spec.arity)
            out = ir.Constant(vty, ir.Undefined)
            for lane in range(vty.count):
                at = ir.Constant(ir.IntType(32), lane)
                x = b.call(callee, [b.extract_element(a, at) for a in args], fastmath=flags)
                out = b.insert_element(out, x, at)
            return out
        if sym is None:   # llvmlite's declare_intrinsic has no vector suffixes
            sym = f"{low.name}.v{vty.count}f64"
        fn = module.globals.get(sym) or ir.Function(
                module, ir.FunctionType(vty, [vty] * spec.arity), name=sym)
        return b.call(fn, args, name=name, fastmath=flags)
    if isinstance(low, (Intrinsic, Libm)):
        return b.call(_callee(module, low, spec.arity), args, name=name, fastmath=flags)
    custom = CUSTOM_LOWERINGS.get(node.op)
    if custom is None:
        raise NotImplementedError(f"no LLVM lowering for op {node.op!r} ({node.line()})")
    return custom(b, args, node, flags)


# Where straight code is chunked (policy.CHUNK_NODES) and when rolling pays
# (policy.ROLL_MIN_GAIN) is decided in symad/policy.py; see DECISIONS.md.


def rolled_plan(graph: Graph, outputs: Sequence[Node]):
    """A ``roll.Plan`` for ``outputs`` when rolling makes the code at least
    ``policy.ROLL_MIN_GAIN`` times smaller, else None (straight code is faster then)."""
    from .roll import plan
    found = plan(graph, outputs)
    if policy.rolling_pays(found.emitted_size(), len(found.schedule) + len(outputs)):
        return found
    return None


def extra_stores(graph: Graph, outputs: Sequence[Node]) -> int:
    """Output stores straight-line code emits besides one per output node it computes
    (constants, inputs, outputs listed again), a run of them stored by a loop counting
    one: with the live nodes, the size of what LLVM compiles."""
    from .roll import output_kinds, output_runs
    first: dict[Node, int] = {}
    for i, o in enumerate(outputs):
        if o.args:
            first.setdefault(o, i)
    index = {n: j for j, n in enumerate(graph.inputs)}
    kind, ref = output_kinds(outputs, {}, None, index, set(first.values()))
    return len(output_runs(kind, ref))


def emit_kernel(module: ir.Module, graph: Graph, outputs: Sequence[Node], name: str,
                flags: tuple = (), plan=None) -> ir.Function:
    """Emit ``void name(const double* in, i64 is, double* out, i64 os)`` for ``outputs``;
    with a ``plan`` (``rolled_plan``), repeated stretches run as loops."""
    if plan is not None:
        return emit_rolled(module, plan, outputs, name, flags)
    live = graph.live(outputs)
    ops = [n for n in live if n.op not in ("const", "input")]
    if len(ops) > policy.CHUNK_NODES:
        return _emit_chunked(module, graph, outputs, name, flags, live, ops)
    return _emit_single(module, graph, outputs, name, flags)


def _emit_chunked(module, graph, outputs, name, flags, live, ops):
    index = {n: j for j, n in enumerate(graph.inputs)}
    size = policy.CHUNK_NODES
    chunks = [ops[i:i + size] for i in range(0, len(ops), size)]
    chunk_of = {n: k for k, ch in enumerate(chunks) for n in ch}
    slot: dict[Node, int] = {}
    for k, ch in enumerate(chunks):
        for n in ch:
            for a in n.args:
                if chunk_of.get(a, k) < k and a not in slot:
                    slot[a] = len(slot)
    # A chunk writes each output it computes once, where it is first listed; the entry
    # stores the rest (copies of those, constants, inputs), runs of them by loops.
    out_at: dict[Node, int] = {}
    for i, o in enumerate(outputs):
        if o.args:
            out_at.setdefault(o, i)

    chunk_fns = []
    for k, ch in enumerate(chunks):
        fn = kernel_fn(module, f"{name}.chunk{k}", extra=(PTR,))
        fn.attributes.add("noinline")
        in_ptr, in_stride, out_ptr, out_stride, tmp = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        vals: dict[Node, ir.Value] = {}

        def get(a, b=b, vals=vals, k=k, in_ptr=in_ptr, in_stride=in_stride, tmp=tmp):
            v = vals.get(a)
            if v is not None:
                return v
            if a.op == "const":
                return _fconst(a.attrs[0])
            if a.op == "input":
                v = _load_input(b, in_ptr, in_stride, index, a)
            else:
                ptr = b.gep(tmp, [ir.Constant(I64, slot[a])], source_etype=DOUBLE)
                v = b.load(ptr, typ=DOUBLE, name=f"v{a.id}")
            vals[a] = v
            return v

        for n in ch:
            v = vals[n] = lower_node(b, module, n, [get(a) for a in n.args], flags)
            if n in slot:
                b.store(v, b.gep(tmp, [ir.Constant(I64, slot[n])], source_etype=DOUBLE))
            i = out_at.get(n)
            if i is not None:
                off = b.mul(out_stride, ir.Constant(I64, i))
                b.store(v, b.gep(out_ptr, [off], source_etype=DOUBLE))
        b.ret_void()
        chunk_fns.append(fn)

    fn = kernel_fn(module, name)
    in_ptr, in_stride, out_ptr, out_stride = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    # One slot per value crossing a chunk: 0.5-1 MiB at 190k nodes, on the heap then.
    tmp, heap = scratch_buffer(b, len(slot), out_ptr, out_stride, len(outputs), "tmp")
    for cf in chunk_fns:
        b.call(cf, [in_ptr, in_stride, out_ptr, out_stride, tmp])
    if heap:
        free_buffer(b, tmp)
    from .roll import output_kinds, output_runs
    kind, ref = output_kinds(outputs, {}, None, index, set(out_at.values()))
    store_outputs(_ChunkedOutputs(module, fn, b, index, out_at), outputs, kind, ref,
                  output_runs(kind, ref))
    b.ret_void()
    return fn


class _ChunkedOutputs:
    """``store_outputs`` in a chunked kernel's entry, after its chunks: an output a chunk
    computed is read back from where the chunk wrote it."""

    def __init__(self, module, fn, b, index, out_at):
        self.module, self.fn, self.b, self.index, self.out_at = module, fn, b, index, out_at
        self.in_ptr, self.in_stride, self.out_ptr, self.out_stride = fn.args[:4]

    def const(self, v: float) -> ir.Constant:
        return _fconst(v)

    def splat(self, v: ir.Value) -> ir.Value:
        return v

    def input(self, index: ir.Value) -> ir.Value:
        b = self.b
        return b.load(b.gep(self.in_ptr, [b.mul(index, self.in_stride)], source_etype=DOUBLE),
                      typ=DOUBLE)

    def output(self, k: ir.Value, v: ir.Value) -> None:
        b = self.b
        b.store(v, b.gep(self.out_ptr, [b.mul(k, self.out_stride)], source_etype=DOUBLE))

    def get(self, node: Node) -> ir.Value:
        if node.op == "const":
            return _fconst(node.attrs[0])
        if node.op == "input":
            return _load_input(self.b, self.in_ptr, self.in_stride, self.index, node)
        b = self.b
        at = b.mul(self.out_stride, ir.Constant(I64, self.out_at[node]))
        return b.load(b.gep(self.out_ptr, [at], source_etype=DOUBLE), typ=DOUBLE)


def emit_rolled(module: ir.Module, plan, outputs: Sequence[Node], name: str,
                flags: tuple = (), width: int = 1, vector_math: bool = False) -> ir.Function:
    """The kernel of ``plan`` (``roll.plan``): straight segments as SSA code, each loop as
    one counted loop whose body computes one iteration. A value read back by other code
    (a later iteration, another loop, straight code after a loop) is stored in the
    buffer slot the plan gave it (``Plan.slot_of``: affine in the counter, or read from a
    table); a loop element that is an output in every iteration writes it directly.

    ``void name(const double* in, i64 is, double* out, i64 os)`` over one point with the
    buffer on the stack (on the heap above ``policy.KERNEL_STACK_DOUBLES``); with
    ``width > 1`` the
    same over ``width`` consecutive points at once (as ``emit_vector_kernel``), the
    buffer (``rolled_buffer_doubles(plan, width)`` doubles) passed by the batch loop as a
    fifth argument. ``vector_math``: see ``lower_node``."""
    return _Rolled(module, plan, name, flags, width, vector_math).emit(outputs)


def rolled_buffer_doubles(plan, width: int) -> int:
    return plan.n_slots * width


@dataclass
class _Iteration:
    """What one loop of ``_Rolled`` reads its operands from, keyed by (row, operand)."""
    hoisted: dict = field(default_factory=dict)   # values computed once, before the loop
    carried: dict = field(default_factory=dict)   # row -> its value before the first iteration
    tables: dict = field(default_factory=dict)    # (global, element type, index offset)
    phis: dict = field(default_factory=dict)      # row -> the previous iteration's value
    j: ir.Value | None = None                     # the iteration counter (a phi)


class _Rolled:
    """The state of one ``emit_rolled`` call."""

    def __init__(self, module, plan, name, flags, width, vector_math):
        self.module, self.plan, self.flags = module, plan, flags
        self.width, self.vector_math = width, vector_math
        self.ty = DOUBLE if width == 1 else ir.VectorType(DOUBLE, width)
        # Several points at once take their buffer from the batch loop (if they need one).
        self.buffer_arg = width > 1 and plan.n_slots > 0
        self.fn = fn = kernel_fn(module, name, extra=(PTR,) if self.buffer_arg else ())
        self.in_ptr, self.in_stride, self.out_ptr, self.out_stride = fn.args[:4]
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.vals: dict[Node, ir.Value] = {}

    def const(self, v: float) -> ir.Constant:
        return ir.Constant(self.ty, float(v)) if self.width == 1 else \
            ir.Constant(self.ty, [float(v)] * self.width)

    def load(self, ptr, name: str = "") -> ir.Value:
        v = self.b.load(ptr, typ=self.ty, name=name)
        v.align = 8
        return v

    def store(self, v, ptr) -> None:
        self.b.store(v, ptr).align = 8

    def input(self, index: ir.Value, name: str = "") -> ir.Value:
        off = self.b.mul(index, self.in_stride)
        return self.load(self.b.gep(self.in_ptr, [off], source_etype=DOUBLE), name)

    def output(self, k: ir.Value, v: ir.Value) -> None:
        off = self.b.mul(k, self.out_stride)
        self.store(v, self.b.gep(self.out_ptr, [off], source_etype=DOUBLE))

    def emit(self, outputs) -> ir.Function:
        from .roll import Loop
        b, fn = self.b, self.fn
        n_slots = rolled_buffer_doubles(self.plan, 1)
        heap = False
        if self.buffer_arg:
            self.buf = fn.args[4]
            self.buf.add_attribute("noalias")
        elif n_slots == 0:
            self.buf = None          # straight code: every value stays in a register
        else:
            self.buf, heap = scratch_buffer(b, n_slots, self.out_ptr, self.out_stride,
                                            len(outputs))
        for seg in self.plan.segments:
            if isinstance(seg, Loop):
                self.loop(seg)
            else:
                self.straight(seg)
        self.outputs(outputs)
        if heap:
            free_buffer(b, self.buf)
        b.ret_void()
        return fn

    def slot(self, idx: ir.Value) -> ir.Value:
        return self.b.gep(self.buf, [idx], source_etype=self.ty)

    def get(self, a: Node) -> ir.Value:
        """A node's value in straight code (computed, loaded or hoisted before)."""
        v = self.vals.get(a)
        if v is None:
            if a.op == "const":
                return self.const(a.attrs[0])
            if a.op == "input":
                j = self.plan.input_index.get(a)
                if j is None:
                    raise NotImplementedError(f"{a.line()} is a free variable, not a graph "
                                              "input; only closed graphs can be compiled")
                v = self.input(ir.Constant(I64, j), f"v{a.id}")
            else:
                at = self.plan.slot_of[self.plan.position[a]]
                assert at >= 0, f"{a.line()} is read but was never stored"
                v = self.load(self.slot(ir.Constant(I64, int(at))), f"v{a.id}")
            self.vals[a] = v
        return v

    def lower(self, node: Node, args: list) -> ir.Value:
        return lower_node(self.b, self.module, node, args, self.flags, self.vector_math)

    def straight(self, seg: range) -> None:
        schedule, mem = self.plan.schedule, self.plan.in_memory
        for i in seg:
            node = schedule[i]
            v = self.vals[node] = self.lower(node, [self.get(a) for a in node.args])
            if mem[i]:
                self.store(v, self.slot(ir.Constant(I64, int(self.plan.slot_of[i]))))

    def loop(self, seg) -> None:
        """``seg`` (a ``roll.Loop``) as one counted loop: the operands that do not move
        with the counter evaluated once before it, the values carried from the previous
        iteration as phis, then the body."""
        b = self.b
        it = self._loop_operands(seg)
        pre = b.block
        head = self.fn.append_basic_block(f"loop{seg.start}")
        done = self.fn.append_basic_block(f"loop{seg.start}.end")
        b.branch(head)
        b.position_at_end(head)
        it.j = j = b.phi(I64, name=f"j{seg.start}")
        j.add_incoming(ir.Constant(I64, 0), pre)
        for rr, first in it.carried.items():
            it.phis[rr] = b.phi(self.ty, name=f"c{seg.start}.{rr}")
            it.phis[rr].add_incoming(first, pre)
        body = self._loop_body(seg, it)
        nxt = b.add(j, ir.Constant(I64, 1))
        j.add_incoming(nxt, b.block)
        for rr, phi in it.phis.items():
            phi.add_incoming(body[rr], b.block)
        b.cbranch(b.icmp_signed("<", nxt, ir.Constant(I64, seg.trips)), head, done)
        b.position_at_end(done)
        for r in seg.keeps:     # the last iteration's values, read after the loop
            self.vals[self.plan.schedule[seg.stop - seg.period + r]] = body[r]

    def _loop_operands(self, seg) -> _Iteration:
        """Before the loop: hoisted operands' values, carried values' first values, and
        the constant tables of operands read through one (tables equal, index tables up
        to a constant, share one)."""
        from .roll import INPUT, NODE, operand_home
        plan, p = self.plan, seg.period
        it = _Iteration()
        shared: dict = {}
        for r, row in enumerate(seg.operands):
            for k, op in enumerate(row):
                table = op.slot_table if op.kind == NODE else op.table
                if table is not None:
                    index_table = table.dtype.kind != "f"
                    first = int(table[0]) if index_table else 0
                    key = (index_table, (table - first).tobytes())
                    if key not in shared:
                        shared[key] = (*const_table(self.module, table, f"t{seg.start}.{r}.{k}"),
                                       first)
                    glob, elem, base = shared[key]
                    it.tables[r, k] = (glob, elem, first - base)
                elif op.kind == INPUT and op.step == 0:
                    it.hoisted[r, k] = self.get(plan.inputs[op.a])
                elif op.kind == NODE:
                    home = operand_home(seg, r, op)
                    if home == "hoisted":
                        it.hoisted[r, k] = self.get(plan.schedule[op.a])
                    elif home == "carried":
                        it.carried[op.a - (seg.start - p)] = self.get(plan.schedule[op.a])
        return it

    def _loop_body(self, seg, it: _Iteration) -> list[ir.Value]:
        """One iteration's values, one per row of ``seg``; stores the ones read back and
        writes the outputs."""
        b, j = self.b, it.j
        body: list[ir.Value] = []
        for r, row in enumerate(seg.operands):
            args = [self._loop_operand(seg, it, r, k, op, body) for k, op in enumerate(row)]
            v = self.lower(self.plan.schedule[seg.start + r], args)
            body.append(v)
            if seg.stores[r] >= 0:
                self.store(v, self.slot(b.add(ir.Constant(I64, seg.stores[r]), j)))
            if seg.writes[r] is not None:
                k0, kstep = seg.writes[r]
                self.output(b.add(ir.Constant(I64, k0), b.mul(j, ir.Constant(I64, kstep))), v)
        return body

    def _loop_operand(self, seg, it: _Iteration, r: int, k: int, op,
                      body: list[ir.Value]) -> ir.Value:
        """Operand ``k`` of row ``r`` in iteration ``it.j``."""
        from .roll import CONST, INPUT, operand_home
        if (r, k) in it.hoisted:
            return it.hoisted[r, k]
        if op.kind == CONST:
            return self.splat(self._index(it, op, (r, k))) if (r, k) in it.tables \
                else self.const(op.a)
        if op.kind == INPUT:
            return self.input(self._index(it, op, (r, k)))
        home = operand_home(seg, r, op)
        if home == "ssa":
            return body[op.a - seg.start]
        if home == "carried":
            return it.phis[op.a - (seg.start - seg.period)]
        return self.load(self.slot(self._index(it, op, (r, k))))

    def _index(self, it: _Iteration, op, at: tuple[int, int]) -> ir.Value:
        """The operand's slot / input index / constant in iteration ``it.j``."""
        from .roll import NODE
        b, j = self.b, it.j
        if at not in it.tables:
            a, step = (op.slot_a, op.slot_step) if op.kind == NODE else (op.a, op.step)
            return b.add(ir.Constant(I64, a), b.mul(j, ir.Constant(I64, step)))
        table, elem, offset = it.tables[at]
        v = b.load(b.gep(table, [j], source_etype=elem), typ=elem)
        if elem == DOUBLE:
            return v
        v = b.sext(v, I64)
        return b.add(v, ir.Constant(I64, offset)) if offset else v

    def splat(self, v: ir.Value) -> ir.Value:
        """A double as this kernel's value type (all lanes equal)."""
        if self.width == 1:
            return v
        i32 = ir.IntType(32)
        one = self.b.insert_element(ir.Constant(self.ty, ir.Undefined), v, ir.Constant(i32, 0))
        return self.b.shuffle_vector(one, ir.Constant(self.ty, ir.Undefined),
                                     ir.Constant(ir.VectorType(i32, self.width),
                                                 [0] * self.width))

    def outputs(self, outputs) -> None:
        plan = self.plan
        store_outputs(self, outputs, plan.out_kind, plan.out_ref, plan.out_runs)

    def slot_value(self, idx: ir.Value) -> ir.Value:
        return self.load(self.slot(idx))


def store_outputs(w, outputs, kind, ref, runs) -> None:
    """Store ``outputs`` (see ``roll.output_runs``): each run by one loop (evenly spaced
    buffer slots or inputs copied, constants from a table or one constant, one register
    value), lone outputs one by one. ``w`` emits: ``output``, ``input``, ``const``,
    ``splat``, ``slot_value`` and ``get`` (a node's value), as ``_Rolled`` does."""
    import numpy as np

    from .roll import OUT_CONST, OUT_INPUT, OUT_SLOT
    b = w.b

    def at(a, step, t):
        return b.add(ir.Constant(I64, a), b.mul(t, ir.Constant(I64, step))) if step \
            else ir.Constant(I64, a)
    for k, count, step in runs:
        if count == 1:
            w.output(ir.Constant(I64, k), w.get(outputs[k]))
            continue
        kd, a = int(kind[k]), int(ref[k])
        if kd == OUT_SLOT:
            def body(b, t, a=a, step=step):
                return w.slot_value(at(a, step, t))
        elif kd == OUT_INPUT:
            def body(b, t, a=a, step=step):
                return w.input(at(a, step, t))
        elif kd == OUT_CONST and not (ref[k:k + count] == a).all():
            values = np.array([o.attrs[0] for o in outputs[k:k + count]], np.float64)
            table, _ = const_table(w.module, values, f"{w.fn.name}.outc{k}")

            def body(b, t, table=table):
                return w.splat(b.load(b.gep(table, [t], source_etype=DOUBLE), typ=DOUBLE))
        else:                       # one constant, or one value, stored many times
            v = w.get(outputs[k])

            def body(b, t, v=v):
                return v

        def copy(b, t, k=k, body=body):
            w.output(b.add(t, ir.Constant(I64, k)), body(b, t))
        loop_over(b, w.fn, count, copy, f"out{k}")


def _load_input(b, in_ptr, in_stride, index, node):
    j = index.get(node)
    if j is None:
        raise NotImplementedError(f"{node.line()} is a free variable, not a graph "
                                  "input; only closed graphs can be compiled")
    off = b.mul(in_stride, ir.Constant(I64, j))
    return b.load(b.gep(in_ptr, [off], source_etype=DOUBLE), typ=DOUBLE,
                  name=f"v{node.id}")


def _emit_single(module, graph, outputs, name, flags):
    from .roll import straight_plan
    return _Rolled(module, straight_plan(graph, outputs), name, flags, 1, False).emit(outputs)


def calls_libm(graph: Graph, outputs: Sequence[Node]) -> bool:
    """Does the kernel call a libm function that is not an LLVM intrinsic (tanh, erf, ...)?
    LLVM's loop vectorizer leaves a loop with such a call scalar, so the batch entry
    vectorises explicitly (``emit_vector_kernel``). Measured, value+grad batch: Black-
    Scholes (erf) 14.8 -> 21.6 M points/s, the tanh network 0.39 -> 0.46; without such
    calls LLVM's own vectorisation is as fast or faster (logistic map 34 vs 22)."""
    return any(isinstance(OPS[n.op].lower, Libm) for n in graph.live(outputs) if n.args)


def vector_symbols(graph: Graph, outputs: Sequence[Node], width: int = 4) -> list[str]:
    """The libmvec functions a vector kernel for ``outputs`` calls."""
    found: dict[str, None] = {}
    for n in graph.live(outputs):
        if n.op in ("const", "input"):
            continue
        spec = OPS[n.op]
        if isinstance(spec.lower, (Intrinsic, Libm)):
            sym = vector_symbol(spec.lower, spec.arity, width)
            if sym is not None:
                found[sym] = None
    return list(found)


def emit_vector_kernel(module: ir.Module, graph: Graph, outputs: Sequence[Node], name: str,
                       flags: tuple = (), width: int = 4,
                       vector_math: bool = True) -> ir.Function:
    """``void name(const double* in, i64 is, double* out, i64 os)`` over ``width``
    consecutive points at once: input ``j`` of the points is the vector at ``in + j*is``.
    Transcendentals call libmvec with ``vector_math`` (see ``jit.vector_math_available``:
    within a few ulp of scalar libm, not bit-identical, hence only under fast-math), else
    scalar libm lane by lane (see ``lower_node``)."""
    from .roll import straight_plan
    return _Rolled(module, straight_plan(graph, outputs), name, flags, width,
                   vector_math).emit(outputs)
