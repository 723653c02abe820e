"""The CPython entry (trace -> graph -> ad -> lower -> jit; what a call ``f(x, y)`` runs).

``NAME_py(self, args, nargs)`` is a ``METH_FASTCALL`` function emitted in IR and wrapped as
a builtin function object (``make_py_callable``). It takes the arguments the function was
compiled for, as they are:

* an exact ``float`` or ``numpy.float64`` where the compiled argument is a scalar: its
  double is read straight from the object (``PyFloat_AS_DOUBLE``, after the header);
* an exact ``numpy.ndarray`` of native float64, C-contiguous, with exactly the compiled
  shape where it is an array: read through the buffer protocol, in place when it is the
  only argument, else copied with the others into one input buffer.

It calls the point kernel (``builder.emit_kernel_entry``) with unit strides on stack
buffers (one heap block above ``policy.ENTRY_STACK_DOUBLES``) and builds the result: floats
(``PyFloat_FromDouble``), fresh arrays (``numpy.empty``, filled through the buffer
protocol) and tuples of them, as the result spec says. Anything else (a wrong count,
ints, strings, other dtypes, shapes or layouts, a refused buffer, no memory) is handed
unchanged to ``self[0]``, the Python fallback, which validates, converts or raises. It
runs with the GIL held and never blocks.
"""

from __future__ import annotations

import ctypes
import sys

import numpy as np
from llvmlite import ir

from symad import policy

from . import jit
from .builder import DOUBLE, I8, I32, I64, PTR, declare, free_buffer, heap_doubles, i64

METH_FASTCALL = 0x0080

# Offsets in CPython's object layout (non-debug, GIL build): ob_refcnt, ob_type, then
# the double of a float object (PyFloat_AS_DOUBLE; numpy.float64 has the same layout).
_OB_TYPE_OFFSET = 8
_FLOAT_VALUE_OFFSET = 16

_PY_FUNCS = {
    # name: (return type, argument types)
    "PyFloat_FromDouble": (PTR, [DOUBLE]),
    "PyTuple_New": (PTR, [I64]),
    "PyTuple_SetItem": (I32, [PTR, I64, PTR]),
    "PyTuple_GetItem": (PTR, [PTR, I64]),
    "Py_DecRef": (ir.VoidType(), [PTR]),
    "PyObject_Vectorcall": (PTR, [PTR, PTR, I64, PTR]),
    "PyObject_GetBuffer": (I32, [PTR, PTR, I32]),
    "PyBuffer_Release": (ir.VoidType(), [PTR]),
    "PyErr_Clear": (ir.VoidType(), []),
}
_TYPE_SYMBOLS = {"symad_float_type": float, "symad_float64_type": np.float64,
                 "symad_ndarray_type": np.ndarray}

# Py_buffer (CPython >= 3.3, 64-bit): buf, obj, len, itemsize, readonly (int), ndim (int),
# format, shape, strides, suboffsets, internal.
_BUF_SIZE = 80
_BUF_BUF, _BUF_ITEMSIZE, _BUF_NDIM, _BUF_FORMAT, _BUF_SHAPE, _BUF_STRIDES = \
    0, 24, 36, 40, 48, 56
_PyBUF_WRITABLE = 0x0001
_PyBUF_RECORDS_RO = 0x001C          # PyBUF_STRIDES | PyBUF_FORMAT, read-only is fine


# Slots of the entry's ``self`` tuple: the Python fallback, numpy.empty, then one shape
# tuple per array output.
_SELF_FALLBACK, _SELF_EMPTY, _SELF_SHAPES = 0, 1, 2


class ArrayOut(tuple):
    """A result leaf that is an array: ``ArrayOut((start, shape))`` covers outputs
    ``start .. start + size(shape)`` of the kernel, returned as a fresh numpy array."""

    __slots__ = ()

    @property
    def start(self) -> int:
        return self[0]

    @property
    def shape(self) -> tuple:
        return self[1]

    def __repr__(self) -> str:
        return f"ArrayOut{tuple(self)!r}"


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def array_outs(spec) -> list:
    """The ``ArrayOut`` leaves of a result spec, in the order the entry numbers them."""
    found, stack = [], [spec]
    while stack:
        s = stack.pop()
        if isinstance(s, ArrayOut):
            found.append(s)
        elif isinstance(s, tuple):
            stack.extend(reversed(s))
    return found


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


def _load_at(b, ptr, offset: int, typ):
    return b.load(b.gep(ptr, [i64(offset)], source_etype=I8), typ=typ)


def _copy_doubles(b, memcpy, dst, src, n: int) -> None:
    b.call(memcpy, [dst, src, i64(8 * n), ir.Constant(ir.IntType(1), 0)])


def emit_py_entry(module: ir.Module, kernel: ir.Function, name: str, arg_shapes,
                  n_out: int, result_spec) -> ir.Function:
    """Emit the METH_FASTCALL entry.

    ``arg_shapes`` holds one shape per positional argument: ``()`` takes an exact
    ``float``/``numpy.float64``, any other an exact ``numpy.ndarray`` of float64 in C
    order with exactly that shape (read through the buffer protocol). ``result_spec`` is
    a nested tuple whose leaves are output indices (a float) or :class:`ArrayOut`.
    Anything else goes, unchanged, to the Python fallback in slot 0 of ``self``.
    """
    _register_symbols()
    e = _PyEntry(module, name, arg_shapes, n_out)
    e.check_arguments()
    in_ptr = e.gather_inputs()
    b = e.b
    one = i64(1)
    b.call(kernel, [in_ptr, one, e.out_buf, one])
    e.release_views()
    e.return_result(result_spec)
    return e.fn


class _PyEntry:
    """One entry being emitted, phase by phase: the prologue (``__init__``: buffers and
    the argument count), ``check_arguments``, ``gather_inputs``, then the kernel call and
    ``return_result``. Every failed check jumps to ``release[k]``, which gives back the
    ``k`` buffer views taken so far and falls back to Python."""

    def __init__(self, module: ir.Module, name: str, arg_shapes, n_out: int):
        self.module, self.arg_shapes, self.n_out = module, arg_shapes, n_out
        self.decl = {fname: declare(module, fname, ret, args)
                     for fname, (ret, args) in _PY_FUNCS.items()}
        self.types = {}
        for tname in _TYPE_SYMBOLS:
            g = module.globals.get(tname)
            if g is None:
                g = ir.GlobalVariable(module, I8, name=tname)   # external declaration
            self.types[tname] = g
        self.n_arrays = sum(1 for s in arg_shapes if s != ())
        fn = self.fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, I64]), name=name)
        self.self_obj, self.args, self.nargs = fn.args
        self.self_obj.name, self.args.name, self.nargs.name = "self", "args", "nargs"
        entry = fn.append_basic_block("entry")
        self.fallback = fn.append_basic_block("fallback")
        b = self.b = ir.IRBuilder(entry)
        # One array argument is read in place; otherwise the inputs are gathered into in_buf.
        self.in_place = len(arg_shapes) == 1 and self.n_arrays > 0
        self.n_in_buf = 0 if self.in_place else sum(_size(s) for s in arg_shapes)
        self.heap = self.n_in_buf + n_out > policy.ENTRY_STACK_DOUBLES
        if not self.heap:
            self.in_buf = b.alloca(DOUBLE, i64(max(self.n_in_buf, 1)), name="in")
            self.out_buf = b.alloca(DOUBLE, i64(max(n_out, 1)), name="out")
        self.views = b.alloca(I8, i64(_BUF_SIZE * max(self.n_arrays, 1)), name="views")
        self.views.align = 8
        check = fn.append_basic_block("check")
        b.cbranch(b.icmp_signed("==", self.nargs, i64(len(arg_shapes))), check,
                  self.fallback)
        b.position_at_end(check)
        # release[k] gives back the first k buffers, then falls back to Python.
        self.release = [self.fallback]
        for k in range(self.n_arrays):
            blk = fn.append_basic_block(f"release{k + 1}")
            rb = ir.IRBuilder(blk)
            rb.call(self.decl["PyBuffer_Release"], [self.view(rb, k)])
            rb.branch(self.release[k])
            self.release.append(blk)
        self.objs: list = []
        self.held = 0           # buffer views taken so far

    def view(self, b, k: int):
        """The ``Py_buffer`` of the ``k``-th array argument."""
        return b.gep(self.views, [i64(_BUF_SIZE * k)], source_etype=I8)

    def require(self, cond, fail) -> None:
        nxt = self.fn.append_basic_block("ok")
        self.b.cbranch(cond, nxt, fail)
        self.b.position_at_end(nxt)

    def check_arguments(self) -> None:
        """Each argument's type; for arrays, a buffer view and its layout."""
        b, types = self.b, self.types
        for j, shape in enumerate(self.arg_shapes):
            obj = b.load(b.gep(self.args, [i64(j)], source_etype=PTR), typ=PTR, name=f"arg{j}")
            self.objs.append(obj)
            tp = _load_at(b, obj, _OB_TYPE_OFFSET, PTR)
            if shape == ():
                self.require(b.or_(b.icmp_unsigned("==", tp, types["symad_float_type"]),
                                   b.icmp_unsigned("==", tp, types["symad_float64_type"])),
                             self.release[self.held])
                continue
            self.require(b.icmp_unsigned("==", tp, types["symad_ndarray_type"]),
                         self.release[self.held])
            self.check_array(obj, shape)

    def check_array(self, obj, shape) -> None:
        """Take ``obj``'s buffer view; it must be float64 ('d', native order) with the
        compiled ndim, shape and C-order strides."""
        b, fn = self.b, self.fn
        view = self.view(b, self.held)
        rc = b.call(self.decl["PyObject_GetBuffer"],
                    [obj, view, ir.Constant(I32, _PyBUF_RECORDS_RO)])
        got = fn.append_basic_block("got")
        refused = fn.append_basic_block("refused")
        b.cbranch(b.icmp_signed("==", rc, ir.Constant(I32, 0)), got, refused)
        b.position_at_end(refused)
        b.call(self.decl["PyErr_Clear"], [])         # e.g. a dtype without a buffer format
        b.branch(self.release[self.held])
        b.position_at_end(got)
        self.held += 1
        fail = self.release[self.held]
        require = self.require
        require(b.icmp_signed("==", _load_at(b, view, _BUF_ITEMSIZE, I64), i64(8)), fail)
        fmt = _load_at(b, view, _BUF_FORMAT, PTR)
        require(b.icmp_unsigned("!=", fmt, ir.Constant(PTR, None)), fail)
        require(b.icmp_signed("==", b.load(fmt, typ=I8), ir.Constant(I8, ord("d"))), fail)
        require(b.icmp_signed("==", _load_at(b, fmt, 1, I8), ir.Constant(I8, 0)), fail)
        require(b.icmp_signed("==", _load_at(b, view, _BUF_NDIM, I32),
                              ir.Constant(I32, len(shape))), fail)
        dims = _load_at(b, view, _BUF_SHAPE, PTR)
        strides = _load_at(b, view, _BUF_STRIDES, PTR)
        stride = 8
        for d in reversed(range(len(shape))):
            require(b.icmp_signed("==", _load_at(b, dims, 8 * d, I64), i64(shape[d])), fail)
            if shape[d] > 1:
                require(b.icmp_signed("==", _load_at(b, strides, 8 * d, I64),
                                      i64(stride)), fail)
            stride *= int(shape[d])

    def gather_inputs(self):
        """The kernel's input pointer: the one array's own buffer, or ``in_buf`` filled
        with every argument's doubles (allocated here when on the heap)."""
        b = self.b
        if self.heap:
            self.in_buf = heap_doubles(b, self.n_in_buf + self.n_out, "in")
            # No memory: the Python path, which allocates its own buffers (or raises).
            self.require(b.icmp_unsigned("!=", self.in_buf, ir.Constant(PTR, None)),
                         self.release[self.held])
            self.out_buf = b.gep(self.in_buf, [i64(self.n_in_buf)], source_etype=DOUBLE,
                                 name="out")
        if self.in_place:
            return _load_at(b, self.views, _BUF_BUF, PTR)
        pos, k = 0, 0
        memcpy = self.module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
        for obj, shape in zip(self.objs, self.arg_shapes):
            dst = b.gep(self.in_buf, [i64(pos)], source_etype=DOUBLE)
            if shape == ():
                b.store(_load_at(b, obj, _FLOAT_VALUE_OFFSET, DOUBLE), dst)
            else:
                src = _load_at(b, self.views, _BUF_SIZE * k + _BUF_BUF, PTR)
                _copy_doubles(b, memcpy, dst, src, _size(shape))
                k += 1
            pos += _size(shape)
        return self.in_buf

    def release_views(self) -> None:
        for k in range(self.n_arrays):
            self.b.call(self.decl["PyBuffer_Release"], [self.view(self.b, k)])

    def return_result(self, result_spec) -> None:
        """Return the result objects (NULL with the exception set when building them
        fails), and the fallback block: the Python path's result for the same arguments."""
        b, fn, decl = self.b, self.fn, self.decl
        fail = fn.append_basic_block("fail")
        ctx = _ResultCtx(fn, decl, self.out_buf, self.self_obj, self.views,
                         array_outs(result_spec), self.module)
        result = _emit_result(b, ctx, result_spec, fail)
        if self.heap:
            free_buffer(b, self.in_buf)
        b.ret(result)
        b.position_at_end(fail)
        if self.heap:
            free_buffer(b, self.in_buf)
        b.ret(ir.Constant(PTR, None))
        b.position_at_end(self.fallback)
        # Not the compiled signature: let the Python path validate, convert or raise.
        py = b.call(decl["PyTuple_GetItem"], [self.self_obj, i64(_SELF_FALLBACK)])
        b.ret(b.call(decl["PyObject_Vectorcall"],
                     [py, self.args, self.nargs, ir.Constant(PTR, None)]))


class _ResultCtx:
    def __init__(self, fn, decl, out_buf, self_obj, views, array_leaves, module):
        self.fn, self.decl, self.out_buf, self.self_obj = fn, decl, out_buf, self_obj
        self.view = views                     # reused: the inputs are released by now
        self.slot = {id(a): _SELF_SHAPES + i for i, a in enumerate(array_leaves)}
        self.memcpy = module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])


def _new_array(b, ctx, leaf, fail_block):
    """A fresh numpy array (``numpy.empty(shape)``) filled from the output buffer."""
    null = ir.Constant(PTR, None)
    decl = ctx.decl
    empty = b.call(decl["PyTuple_GetItem"], [ctx.self_obj, i64(_SELF_EMPTY)])
    shape = b.call(decl["PyTuple_GetItem"], [ctx.self_obj, i64(ctx.slot[id(leaf)])])
    argv = b.alloca(PTR, i64(1))
    b.store(shape, argv)
    arr = b.call(decl["PyObject_Vectorcall"], [empty, argv, i64(1), null])
    cont = ctx.fn.append_basic_block("array.ok")
    b.cbranch(b.icmp_unsigned("==", arr, null), fail_block, cont)
    b.position_at_end(cont)
    rc = b.call(decl["PyObject_GetBuffer"], [arr, ctx.view, ir.Constant(I32, _PyBUF_WRITABLE)])
    filled = ctx.fn.append_basic_block("array.buffer")
    refused = ctx.fn.append_basic_block("array.refused")
    b.cbranch(b.icmp_signed("==", rc, ir.Constant(I32, 0)), filled, refused)
    b.position_at_end(refused)
    b.call(decl["Py_DecRef"], [arr])
    b.branch(fail_block)
    b.position_at_end(filled)
    n = _size(leaf.shape)
    if n:
        dst = _load_at(b, ctx.view, _BUF_BUF, PTR)
        src = b.gep(ctx.out_buf, [i64(leaf.start)], source_etype=DOUBLE)
        _copy_doubles(b, ctx.memcpy, dst, src, n)
    b.call(decl["PyBuffer_Release"], [ctx.view])
    return arr


def _emit_result(b, ctx, spec, fail_block):
    """Build the Python object for ``spec`` (int -> float, ArrayOut -> array, tuple ->
    tuple), or jump to ``fail_block`` with NULL after releasing what was built (an
    exception is set)."""
    null = ir.Constant(PTR, None)
    fn, decl = ctx.fn, ctx.decl
    if isinstance(spec, ArrayOut):
        return _new_array(b, ctx, spec, fail_block)
    if isinstance(spec, int):
        v = b.load(b.gep(ctx.out_buf, [i64(spec)], source_etype=DOUBLE), typ=DOUBLE)
        obj = b.call(decl["PyFloat_FromDouble"], [v])
        cont = fn.append_basic_block("float.ok")
        b.cbranch(b.icmp_unsigned("==", obj, null), fail_block, cont)
        b.position_at_end(cont)
        return obj
    tup = b.call(decl["PyTuple_New"], [i64(len(spec))])
    cont = fn.append_basic_block("tuple.ok")
    b.cbranch(b.icmp_unsigned("==", tup, null), fail_block, cont)
    b.position_at_end(cont)
    for i, sub in enumerate(spec):
        # A failing item releases the partly filled tuple (NULL slots are allowed).
        item_fail = fn.append_basic_block("item.fail")
        item = _emit_result(b, ctx, sub, item_fail)
        b.call(decl["PyTuple_SetItem"], [tup, i64(i), item])  # steals item
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


def make_py_callable(address: int, name: str, fallback, result_spec, keepalive: list):
    """Wrap the emitted METH_FASTCALL entry as a builtin function object.

    Its ``self`` is the tuple ``(fallback, numpy.empty, *shapes of array results)``;
    ``fallback`` is called for any argument list the entry does not handle. The
    ``PyMethodDef`` must outlive the function object, so it is appended to
    ``keepalive``, which the caller fills with what else the code needs alive (the JIT
    engine) and which ends ``self``: the function object keeps it all, whoever else
    lets go. The emitted code never reads that last slot.
    """
    name_b = name.encode()
    mdef = _PyMethodDef(name_b, address, METH_FASTCALL, None)
    keepalive.extend((mdef, name_b))
    shapes = tuple(tuple(int(d) for d in leaf.shape) for leaf in array_outs(result_spec))
    return _NEW_CFUNCTION(ctypes.addressof(mdef), (fallback, np.empty) + shapes +
                          (keepalive,), None)
