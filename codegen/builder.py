"""The IR-building toolkit shared by the kernel emitters (lower -> jit): the kernel
signature, constant tables, counted loops, and scratch buffers on the stack or the heap
(with one NaN-on-OOM policy). ``codegen/lower.py`` (scalar graphs), ``codegen/arrays.py``
(array-level graphs) and ``codegen/abi.py`` (entries) build with these."""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from symad import policy

DOUBLE = ir.DoubleType()
I64 = ir.IntType(64)
PTR = ir.PointerType()

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


def scratch_buffer(b: ir.IRBuilder, n_doubles: int, out_ptr, out_stride, n_out: int,
                   name: str = "buf") -> tuple:
    """(a buffer of ``n_doubles`` doubles, whether it is on the heap), emitted at the
    builder's position in a kernel's entry block: on the stack up to
    ``policy.KERNEL_STACK_DOUBLES``, else from malloc, which the kernel gives back with
    ``free_buffer`` before it returns. Without memory the kernel writes NaN to its
    ``n_out`` outputs (``out[k * out_stride]``) and returns: a NaN result, not a crash."""
    if n_doubles <= policy.KERNEL_STACK_DOUBLES:
        return b.alloca(DOUBLE, ir.Constant(I64, max(n_doubles, 1)), name=name), False
    module, fn = b.module, b.function
    malloc = module.globals.get("malloc") or ir.Function(
        module, ir.FunctionType(PTR, [I64]), name="malloc")
    buf = b.call(malloc, [ir.Constant(I64, 8 * n_doubles)], name=name)
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
    """Give back a heap buffer from ``scratch_buffer``."""
    module = b.module
    free = module.globals.get("free") or ir.Function(
        module, ir.FunctionType(ir.VoidType(), [PTR]), name="free")
    b.call(free, [buf])
