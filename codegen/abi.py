"""Calling native code (trace -> graph -> ad -> lower -> jit -> **abi**).

Three entries per compiled graph, all sharing the kernel emitted by ``lower.py``:

* ``NAME_kernel(in, is, out, os)``: one point; called through a prebuilt ctypes
  prototype with preallocated per-thread buffers (the general path: arrays, pytrees).
* ``NAME_batch(in, is, out, os, n)``: a native loop over ``n`` points in column-major
  buffers (input leaf ``j`` of point ``i`` at ``in[j*is + i]``), so the kernel inlines
  into the loop and consecutive points are contiguous. ctypes foreign calls release
  the GIL, so batches run in parallel from a thread pool.
* ``NAME_py(self, args, nargs)``: a CPython ``METH_FASTCALL`` function emitted in IR,
  for functions whose arguments are all scalars. It reads exact ``float`` /
  ``numpy.float64`` arguments straight from the objects (``PyFloat_AS_DOUBLE``: the
  double after the object header), calls the kernel with stack buffers and builds the
  result tuple with ``PyFloat_FromDouble`` / ``PyTuple_New``. Anything else (wrong
  count, ints, strings, arrays) is handed unchanged to ``self``, the Python fallback,
  which validates and raises. It runs with the GIL held and never blocks.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
from llvmlite import ir

from . import jit
from .lower import DOUBLE, I64, PTR

I8 = ir.IntType(8)
I32 = ir.IntType(32)
METH_FASTCALL = 0x0080

KERNEL_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                ctypes.c_int64)
BATCH_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                               ctypes.c_int64, ctypes.c_int64)

# Offsets in CPython's object layout (non-debug, GIL build): ob_refcnt, ob_type, then
# the double of a float object (PyFloat_AS_DOUBLE; numpy.float64 has the same layout).
_OB_TYPE_OFFSET = 8
_FLOAT_VALUE_OFFSET = 16


def emit_batch(module: ir.Module, kernel: ir.Function, name: str) -> ir.Function:
    """``void name(const double* in, i64 is, double* out, i64 os, i64 n)``."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I64, PTR, I64, I64]),
                     name=name)
    in_ptr, in_stride, out_ptr, out_stride, n = fn.args
    for a, nm in zip(fn.args, ("in", "is", "out", "os", "n")):
        a.name = nm
    in_ptr.add_attribute("noalias")
    out_ptr.add_attribute("noalias")
    fn.attributes.add("nounwind")
    entry = fn.append_basic_block("entry")
    loop = fn.append_basic_block("loop")
    done = fn.append_basic_block("done")
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_signed(">", n, ir.Constant(I64, 0)), loop, done)
    b.position_at_end(loop)
    i = b.phi(I64, name="i")
    i.add_incoming(ir.Constant(I64, 0), entry)
    b.call(kernel, [b.gep(in_ptr, [i], source_etype=DOUBLE), in_stride,
                    b.gep(out_ptr, [i], source_etype=DOUBLE), out_stride])
    nxt = b.add(i, ir.Constant(I64, 1), name="i.next")
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, n), loop, done)
    b.position_at_end(done)
    b.ret_void()
    return fn


# ---- the CPython fast-call entry --------------------------------------------------

_PY_FUNCS = {
    # name: (return type, argument types)
    "PyFloat_FromDouble": (PTR, [DOUBLE]),
    "PyTuple_New": (PTR, [I64]),
    "PyTuple_SetItem": (I32, [PTR, I64, PTR]),
    "Py_DecRef": (ir.VoidType(), [PTR]),
    "PyObject_Vectorcall": (PTR, [PTR, PTR, I64, PTR]),
}
_TYPE_SYMBOLS = {"symad_float_type": float, "symad_float64_type": np.float64}


def fast_entry_supported() -> bool:
    """The emitted entry relies on the CPython object layout of a GIL build."""
    return (sys.implementation.name == "cpython" and not hasattr(sys, "gettotalrefcount")
            and getattr(sys, "_is_gil_enabled", lambda: True)()
            and ctypes.sizeof(ctypes.c_void_p) == 8)


def _register_symbols() -> None:
    for name in _PY_FUNCS:
        jit.add_symbol(name, jit.pythonapi_address(name))
    for name, typ in _TYPE_SYMBOLS.items():
        jit.add_symbol(name, id(typ))   # id() of a type object is its address in CPython


def emit_py_entry(module: ir.Module, kernel: ir.Function, name: str, n_in: int,
                  n_out: int, result_spec) -> ir.Function:
    """Emit the METH_FASTCALL entry; ``result_spec`` is a nested tuple of output indices."""
    _register_symbols()
    decl = {}
    for fname, (ret, args) in _PY_FUNCS.items():
        decl[fname] = module.globals.get(fname) or ir.Function(
            module, ir.FunctionType(ret, args), name=fname)
    types = []
    for tname in _TYPE_SYMBOLS:
        g = module.globals.get(tname)
        if g is None:
            g = ir.GlobalVariable(module, I8, name=tname)   # external declaration
        types.append(g)

    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, I64]), name=name)
    self_obj, args, nargs = fn.args
    self_obj.name, args.name, nargs.name = "self", "args", "nargs"
    entry = fn.append_basic_block("entry")
    fallback = fn.append_basic_block("fallback")
    b = ir.IRBuilder(entry)
    in_buf = b.alloca(DOUBLE, ir.Constant(I64, max(n_in, 1)), name="in")
    out_buf = b.alloca(DOUBLE, ir.Constant(I64, max(n_out, 1)), name="out")
    ok_count = b.icmp_signed("==", nargs, ir.Constant(I64, n_in))
    check = fn.append_basic_block("check")
    b.cbranch(ok_count, check, fallback)
    b.position_at_end(check)
    ok = ir.Constant(ir.IntType(1), 1)
    objs = []
    for j in range(n_in):
        obj = b.load(b.gep(args, [ir.Constant(I64, j)], source_etype=PTR), typ=PTR,
                     name=f"arg{j}")
        tp = b.load(b.gep(obj, [ir.Constant(I64, _OB_TYPE_OFFSET)], source_etype=I8),
                    typ=PTR)
        is_float = b.or_(b.icmp_unsigned("==", tp, types[0]),
                         b.icmp_unsigned("==", tp, types[1]))
        ok = b.and_(ok, is_float)
        objs.append(obj)
    run = fn.append_basic_block("run")
    b.cbranch(ok, run, fallback)
    b.position_at_end(run)
    for j, obj in enumerate(objs):
        v = b.load(b.gep(obj, [ir.Constant(I64, _FLOAT_VALUE_OFFSET)], source_etype=I8),
                   typ=DOUBLE)
        b.store(v, b.gep(in_buf, [ir.Constant(I64, j)], source_etype=DOUBLE))
    one = ir.Constant(I64, 1)
    b.call(kernel, [in_buf, one, out_buf, one])
    fail = fn.append_basic_block("fail")
    result = _emit_result(b, fn, decl, out_buf, result_spec, fail)
    b.ret(result)
    b.position_at_end(fail)
    b.ret(ir.Constant(PTR, None))
    b.position_at_end(fallback)
    # Not the compiled signature: let the Python path validate, convert or raise.
    b.ret(b.call(decl["PyObject_Vectorcall"], [self_obj, args, nargs,
                                               ir.Constant(PTR, None)]))
    return fn


def _emit_result(b, fn, decl, out_buf, spec, fail_block):
    """Build the Python object for ``spec`` (int -> float, tuple -> tuple), or jump to
    ``fail_block`` with NULL after releasing what was built (an exception is set)."""
    null = ir.Constant(PTR, None)
    if isinstance(spec, int):
        v = b.load(b.gep(out_buf, [ir.Constant(I64, spec)], source_etype=DOUBLE),
                   typ=DOUBLE)
        obj = b.call(decl["PyFloat_FromDouble"], [v])
        cont = fn.append_basic_block("float.ok")
        b.cbranch(b.icmp_unsigned("==", obj, null), fail_block, cont)
        b.position_at_end(cont)
        return obj
    tup = b.call(decl["PyTuple_New"], [ir.Constant(I64, len(spec))])
    cont = fn.append_basic_block("tuple.ok")
    b.cbranch(b.icmp_unsigned("==", tup, null), fail_block, cont)
    b.position_at_end(cont)
    for i, sub in enumerate(spec):
        # A failing item releases the partly filled tuple (NULL slots are allowed).
        item_fail = fn.append_basic_block("item.fail")
        item = _emit_result(b, fn, decl, out_buf, sub, item_fail)
        b.call(decl["PyTuple_SetItem"], [tup, ir.Constant(I64, i), item])  # steals item
        here = b.block
        b.position_at_end(item_fail)
        b.call(decl["Py_DecRef"], [tup])
        b.branch(fail_block)
        b.position_at_end(here)
    return tup


class _PyMethodDef(ctypes.Structure):
    _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]


_NEW_CFUNCTION = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.py_object,
                                   ctypes.c_void_p)(("PyCFunction_NewEx", ctypes.pythonapi))


def make_py_callable(address: int, name: str, fallback, keepalive: list):
    """Wrap the emitted METH_FASTCALL entry as a builtin function object.

    ``fallback`` becomes the function's ``self`` (it is called for any argument list
    the entry does not handle). The ``PyMethodDef`` must outlive the function object, so
    it is appended to ``keepalive``, which the owner of the JIT engine holds.
    """
    name_b = name.encode()
    mdef = _PyMethodDef(name_b, address, METH_FASTCALL, None)
    keepalive.extend((mdef, name_b))
    return _NEW_CFUNCTION(ctypes.addressof(mdef), fallback, None)
