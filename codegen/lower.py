"""Graph -> LLVM IR (trace -> graph -> ad -> **lower** -> jit).

One straight-line function evaluates every output of a graph at one point. Forward and
adjoint nodes live in the same graph, so the gradient part reuses forward values as plain
SSA registers. Nodes are lowered by iterating the topologically ordered live list with a
``dict[Node, ir.Value]``; nothing recurses on graph depth. IR value names mirror node ids
(``%v7`` is graph node ``%7``), so IR lines trace back to graph lines.

The kernel's ABI::

    void NAME_kernel(const double* in, i64 in_stride, double* out, i64 out_stride)

Input leaf ``j`` is read from ``in[j * in_stride]`` and output ``k`` written to
``out[k * out_stride]``. A single point uses stride 1; the batch loop (``abi.py``) passes
column-major buffers (stride N) so consecutive points are contiguous and vectorisable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llvmlite import ir

from symad.graph import Graph, Node
from symad.ops import OPS, Custom, Instr, Intrinsic, Libm

DOUBLE = ir.DoubleType()
I64 = ir.IntType(64)
PTR = ir.PointerType()

# Fast-math flags offered by ``fastmath=True``. nnan/ninf are left out on purpose: they
# let LLVM assume NaN and inf never occur, which silently changes results that numpy
# reports as nan/inf (log(-1), 1/0). Pass an explicit tuple to opt into them.
DEFAULT_FASTMATH = ("nsz", "arcp", "contract", "afn", "reassoc")
ALL_FLAGS = frozenset(("nnan", "ninf", "nsz", "arcp", "contract", "afn", "reassoc", "fast"))


def fastmath_flags(fastmath) -> tuple[str, ...]:
    """Normalise the user's ``fastmath`` option to a tuple of LLVM flag names."""
    if fastmath is False or fastmath is None:
        return ()
    if fastmath is True:
        return DEFAULT_FASTMATH
    flags = (fastmath,) if isinstance(fastmath, str) else tuple(fastmath)
    bad = [f for f in flags if f not in ALL_FLAGS]
    if bad:
        raise ValueError(f"unknown fast-math flag(s) {bad}; choose from {sorted(ALL_FLAGS)}")
    return flags


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


def _maximum(b, args, node, flags):
    # numpy: (x > y or isnan(x)) ? x : y. NaN in either operand gives NaN, and of two
    # zeros the second operand wins. llvm.maxnum would drop the NaN.
    x, y = args
    take_x = b.or_(b.fcmp_ordered(">", x, y), b.fcmp_unordered("uno", x, x))
    return b.select(take_x, x, y, name=f"v{node.id}")


def _minimum(b, args, node, flags):
    x, y = args
    take_x = b.or_(b.fcmp_ordered("<", x, y), b.fcmp_unordered("uno", x, x))
    return b.select(take_x, x, y, name=f"v{node.id}")


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
    "lt": _compare("<"), "le": _compare("<="), "gt": _compare(">"), "ge": _compare(">="),
    "eq": _compare("=="), "ne": _compare("!=", ordered=False), "where": _where,
    "mul0": _mul0,
}


def is_lowerable(op: str) -> bool:
    """Can ``codegen`` lower this op-table row?"""
    low = OPS[op].lower
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
_VECTOR_NATIVE = frozenset(("llvm.sqrt", "llvm.fabs", "llvm.floor"))


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
               flags: tuple) -> ir.Value:
    spec = OPS.get(node.op)
    low = spec.lower
    name = f"v{node.id}"
    if isinstance(low, Instr):
        if spec.arity == 1:
            return getattr(b, low.name)(args[0], name=name, flags=flags)
        return getattr(b, low.name)(*args, name=name, flags=flags)
    if isinstance(low, (Intrinsic, Libm)) and isinstance(args[0].type, ir.VectorType):
        vty = args[0].type
        sym = vector_symbol(low, spec.arity, vty.count)
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


# Graphs with more live nodes than this are split into chunk functions of this size.
# LLVM's machine-code time grows superlinearly in the size of one basic block (measured
# here: a 192k-node value+grad graph in one block took 275 s even at O0; in chunks it is
# linear). Only values used by a later chunk pass through a stack buffer. 10k nodes
# (not 4k): below it a kernel stays one function, which the batch loop inlines and
# vectorises (Lennard-Jones 16 value+grad, 4.9k nodes: 820 -> 242 ns/point).
CHUNK_NODES = 10_000


def emit_kernel(module: ir.Module, graph: Graph, outputs: Sequence[Node], name: str,
                flags: tuple = ()) -> ir.Function:
    """Emit ``void name(const double* in, i64 is, double* out, i64 os)`` for ``outputs``."""
    live = graph.live(outputs)
    ops = [n for n in live if n.op not in ("const", "input")]
    if len(ops) > CHUNK_NODES:
        return _emit_chunked(module, graph, outputs, name, flags, live, ops)
    return _emit_single(module, graph, outputs, name, flags)


def _kernel_fn(module, name, extra=()):
    fnty = ir.FunctionType(ir.VoidType(), [PTR, I64, PTR, I64, *extra])
    fn = ir.Function(module, fnty, name=name)
    in_ptr, in_stride, out_ptr, out_stride = fn.args[:4]
    in_ptr.name, in_stride.name, out_ptr.name, out_stride.name = "in", "is", "out", "os"
    for a in (in_ptr, out_ptr):
        a.add_attribute("noalias")
    fn.attributes.add("nounwind")
    return fn


def _emit_chunked(module, graph, outputs, name, flags, live, ops):
    index = {n: j for j, n in enumerate(graph.inputs)}
    chunks = [ops[i:i + CHUNK_NODES] for i in range(0, len(ops), CHUNK_NODES)]
    chunk_of = {n: k for k, ch in enumerate(chunks) for n in ch}
    slot: dict[Node, int] = {}
    for k, ch in enumerate(chunks):
        for n in ch:
            for a in n.args:
                if chunk_of.get(a, k) < k and a not in slot:
                    slot[a] = len(slot)
    out_at: dict[Node, list[int]] = {}
    for i, o in enumerate(outputs):
        out_at.setdefault(o, []).append(i)

    chunk_fns = []
    for k, ch in enumerate(chunks):
        fn = _kernel_fn(module, f"{name}.chunk{k}", extra=(PTR,))
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
            for i in out_at.get(n, ()):
                off = b.mul(out_stride, ir.Constant(I64, i))
                b.store(v, b.gep(out_ptr, [off], source_etype=DOUBLE))
        b.ret_void()
        chunk_fns.append(fn)

    fn = _kernel_fn(module, name)
    in_ptr, in_stride, out_ptr, out_stride = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    tmp = b.alloca(DOUBLE, ir.Constant(I64, max(len(slot), 1)), name="tmp")
    for cf in chunk_fns:
        b.call(cf, [in_ptr, in_stride, out_ptr, out_stride, tmp])
    for i, o in enumerate(outputs):
        if o.op in ("const", "input"):
            v = _fconst(o.attrs[0]) if o.op == "const" else \
                _load_input(b, in_ptr, in_stride, index, o)
            off = b.mul(out_stride, ir.Constant(I64, i))
            b.store(v, b.gep(out_ptr, [off], source_etype=DOUBLE))
    b.ret_void()
    return fn


def _load_input(b, in_ptr, in_stride, index, node):
    j = index.get(node)
    if j is None:
        raise NotImplementedError(f"{node.line()} is a free variable, not a graph "
                                  "input; only closed graphs can be compiled")
    off = b.mul(in_stride, ir.Constant(I64, j))
    return b.load(b.gep(in_ptr, [off], source_etype=DOUBLE), typ=DOUBLE,
                  name=f"v{node.id}")


def _emit_single(module, graph, outputs, name, flags):
    fnty = ir.FunctionType(ir.VoidType(), [PTR, I64, PTR, I64])
    fn = ir.Function(module, fnty, name=name)
    in_ptr, in_stride, out_ptr, out_stride = fn.args
    in_ptr.name, in_stride.name, out_ptr.name, out_stride.name = "in", "is", "out", "os"
    for a in (in_ptr, out_ptr):
        a.add_attribute("noalias")
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    index = {n: j for j, n in enumerate(graph.inputs)}
    vals: dict[Node, ir.Value] = {}
    for node in graph.live(outputs):
        if node.op == "const":
            vals[node] = _fconst(node.attrs[0])
        elif node.op == "input":
            j = index.get(node)
            if j is None:
                raise NotImplementedError(f"{node.line()} is a free variable, not a graph "
                                          "input; only closed graphs can be compiled")
            off = b.mul(in_stride, ir.Constant(I64, j))
            vals[node] = b.load(b.gep(in_ptr, [off], source_etype=DOUBLE), typ=DOUBLE,
                                name=f"v{node.id}")
        else:
            vals[node] = lower_node(b, module, node, [vals[a] for a in node.args], flags)
    for k, o in enumerate(outputs):
        off = b.mul(out_stride, ir.Constant(I64, k))
        b.store(vals[o], b.gep(out_ptr, [off], source_etype=DOUBLE))
    b.ret_void()
    return fn


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
                       flags: tuple = (), width: int = 4) -> ir.Function:
    """``void name(const double* in, i64 is, double* out, i64 os)`` over ``width``
    consecutive points at once: input ``j`` of the points is the vector at ``in + j*is``.
    Transcendentals call libmvec (see ``jit.vector_math_available``): within a few ulp
    of scalar libm, not bit-identical, hence only under fast-math (``afn``)."""
    vty = ir.VectorType(DOUBLE, width)
    fn = _kernel_fn(module, name)
    in_ptr, in_stride, out_ptr, out_stride = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    index = {n: j for j, n in enumerate(graph.inputs)}
    vals: dict[Node, ir.Value] = {}
    for node in graph.live(outputs):
        if node.op == "const":
            vals[node] = ir.Constant(vty, [float(node.attrs[0])] * width)
        elif node.op == "input":
            j = index.get(node)
            if j is None:
                raise NotImplementedError(f"{node.line()} is a free variable, not a graph "
                                          "input; only closed graphs can be compiled")
            off = b.mul(in_stride, ir.Constant(I64, j))
            ld = b.load(b.gep(in_ptr, [off], source_etype=DOUBLE), typ=vty,
                        name=f"v{node.id}")
            ld.align = 8
            vals[node] = ld
        else:
            vals[node] = lower_node(b, module, node, [vals[a] for a in node.args], flags)
    for k, o in enumerate(outputs):
        off = b.mul(out_stride, ir.Constant(I64, k))
        st = b.store(vals[o], b.gep(out_ptr, [off], source_etype=DOUBLE))
        st.align = 8
    b.ret_void()
    return fn
