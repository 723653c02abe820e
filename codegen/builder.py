"""The IR-building toolkit shared by the kernel emitters and the entries (lower -> jit):
the kernel signature (in IR and as a ctypes prototype) and its exported entry, constant
tables, counted loops, declarations of C functions, and scratch buffers on the stack or
the heap (with one NaN-on-OOM policy). ``codegen/lower.py`` (scalar graphs),
``codegen/arrays.py`` (array-level graphs), ``codegen/batch_entry.py`` (the batch loop)
and ``codegen/py_entry.py`` (the CPython entry) build with these."""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import ir

from symad import policy

DOUBLE = ir.DoubleType()
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()

# How Python calls a kernel (``kernel_fn``'s signature): one point, through ctypes.
KERNEL_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                ctypes.c_int64)

# Scratch up to policy.KERNEL_STACK_DOUBLES stays on the stack (symad/policy.py).


def kernel_fn(module, name, extra=()):
    """``void name(const double* in, i64 is, double* out, i64 os, *extra)``: a kernel's
    signature, its pointers ``noalias``."""
    fnty = ir.FunctionType(ir.VoidType(), [PTR, I64, PTR, I64, *extra])
    fn = ir.Function(module, fnty, name=name)
    in_ptr, in_stride, out_ptr, out_stride = fn.args[:4]
    in_ptr.name, in_stride.name, out_ptr.name, out_stride.name = "in", "is", "out", "os"
    for a in (in_ptr, out_ptr):
        a.add_attribute("noalias")
    fn.attributes.add("nounwind")
    return fn


def emit_kernel_entry(module: ir.Module, body: ir.Function, name: str) -> ir.Function:
    """The exported point kernel: a call to ``body``, which is internal and
    ``alwaysinline`` so that the batch loop gets its own inlined (vectorisable) copy
    however big it is, while the Python entry calls this one copy."""
    body.attributes.add("alwaysinline")
    body.linkage = "internal"
    fn = ir.Function(module, body.function_type, name=name)
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.call(body, list(fn.args))
    b.ret_void()
    return fn


def i64(v: int) -> ir.Constant:
    """An i64 constant (indices, counts, byte offsets)."""
    return ir.Constant(I64, v)


def declare(module: ir.Module, name: str, ret, args) -> ir.Function:
    """The module's declaration of the C function ``name`` (added at the first use)."""
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(ret, args),
                                                   name=name)


def heap_doubles(b: ir.IRBuilder, n_doubles: int, name: str):
    """``malloc(8 * n_doubles)`` at the builder's position: the caller checks it for NULL
    and gives it back with ``free_buffer``."""
    malloc = declare(b.module, "malloc", PTR, [I64])
    return b.call(malloc, [i64(8 * n_doubles)], name=name)


def const_table(module: ir.Module, values, name: str) -> tuple:
    """A constant global array of i32 positions / input indices or of double constants,
    and its element type."""
    values = np.asarray(values)
    elem = DOUBLE if values.dtype.kind == "f" else ir.IntType(32)
    # As raw little-endian bytes: formatting one IR constant per element costs more.
    raw = values.astype("<f8" if elem == DOUBLE else "<i4").tobytes()
    ty = ir.ArrayType(ir.IntType(8), len(raw))
    g = ir.GlobalVariable(module, ty, name=name)
    g.global_constant = True
    g.linkage = "internal"
    g.align = 8
    g.initializer = ir.Constant(ty, bytearray(raw))
    return g, elem


def loop_over(b, fn, count: int, body, name: str) -> None:
    """``for k in range(count): body(b, k)`` at the builder's position."""
    pre = b.block
    head = fn.append_basic_block(name)
    done = fn.append_basic_block(f"{name}.end")
    b.cbranch(b.icmp_signed(">", ir.Constant(I64, count), ir.Constant(I64, 0)), head, done)
    b.position_at_end(head)
    k = b.phi(I64, name=name)
    k.add_incoming(ir.Constant(I64, 0), pre)
    body(b, k)
    nxt = b.add(k, ir.Constant(I64, 1))
    k.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, ir.Constant(I64, count)), head, done)
    b.position_at_end(done)


def loop_range(b: ir.IRBuilder, lo, hi, body, name: str = "i") -> None:
    """``for i in range(lo, hi): body(b, i)`` at the builder's position, for bounds that
    are IR values (skipped when ``lo >= hi``)."""
    fn = b.function
    head = b.block
    loop = fn.append_basic_block(f"{name}.loop")
    done = fn.append_basic_block(f"{name}.done")
    b.cbranch(b.icmp_signed("<", lo, hi), loop, done)
    b.position_at_end(loop)
    i = b.phi(I64, name=name)
    i.add_incoming(lo, head)
    body(b, i)
    nxt = b.add(i, ir.Constant(I64, 1), name=f"{name}.next")
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_signed("<", nxt, hi), loop, done)
    b.position_at_end(done)


def scratch_buffer(b: ir.IRBuilder, n_doubles: int, out_ptr, out_stride, n_out: int,
                   name: str = "buf") -> tuple:
    """(a buffer of ``n_doubles`` doubles, whether it is on the heap), emitted at the
    builder's position in a kernel's entry block: on the stack up to
    ``policy.KERNEL_STACK_DOUBLES``, else from malloc, which the kernel gives back with
    ``free_buffer`` before it returns. Without memory the kernel writes NaN to its
    ``n_out`` outputs (``out[k * out_stride]``) and returns: a NaN result, not a crash."""
    if n_doubles <= policy.KERNEL_STACK_DOUBLES:
        return b.alloca(DOUBLE, ir.Constant(I64, max(n_doubles, 1)), name=name), False
    fn = b.function
    buf = heap_doubles(b, n_doubles, name)
    run, fail = fn.append_basic_block(f"{name}.ok"), fn.append_basic_block(f"{name}.nomem")
    b.cbranch(b.icmp_unsigned("!=", buf, ir.Constant(PTR, None)), run, fail)
    b.position_at_end(fail)
    nan = ir.Constant(DOUBLE, float("nan"))
    loop_over(b, fn, n_out, lambda b, k: b.store(nan, b.gep(
        out_ptr, [b.mul(k, out_stride)], source_etype=DOUBLE)), f"{name}.nan")
    b.ret_void()
    b.position_at_end(run)
    return buf, True


def free_buffer(b: ir.IRBuilder, buf) -> None:
    """Give back a heap buffer from ``scratch_buffer`` or ``heap_doubles``."""
    b.call(declare(b.module, "free", ir.VoidType(), [PTR]), [buf])
