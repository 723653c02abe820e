"""Calling native code (trace -> graph -> ad -> lower -> jit -> **abi**).

Three entries per compiled graph, all sharing the kernel emitted by ``lower.py``:

* ``NAME_kernel(in, is, out, os)``: one point; called through a prebuilt ctypes
  prototype with preallocated per-thread buffers (the general path: arrays, pytrees).
* ``NAME_batch(ins, outs, start, end, scratch)``: a native loop over points
  ``start .. end`` reading and writing the caller's C-order arrays in place (one pointer
  per argument / result leaf, leading axis = point). Tiles of points are gathered into
  column-major scratch so the kernel inlines into a loop with constant strides and
  vectorises across points. A call writing more results than fit in the cache writes them
  with streaming stores. ctypes foreign calls release the GIL, so batches run in
  parallel from a thread pool.
* ``NAME_py(self, args, nargs)``: a CPython ``METH_FASTCALL`` function emitted in IR,
  for functions whose arguments are all scalars. It reads exact ``float`` /
  ``numpy.float64`` arguments straight from the objects (``PyFloat_AS_DOUBLE``: the
  double after the object header), calls the kernel with stack buffers (one heap block
  above ``ENTRY_STACK_DOUBLES``) and builds the result tuple with ``PyFloat_FromDouble``
  / ``PyTuple_New``. Anything else (wrong count, ints, strings, arrays) is handed
  unchanged to ``self``, the Python fallback, which validates and raises. It runs with
  the GIL held and never blocks.
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
BATCH_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                               ctypes.c_int64, ctypes.c_void_p)

# Offsets in CPython's object layout (non-debug, GIL build): ob_refcnt, ob_type, then
# the double of a float object (PyFloat_AS_DOUBLE; numpy.float64 has the same layout).
_OB_TYPE_OFFSET = 8
_FLOAT_VALUE_OFFSET = 16


# Batch calls writing more result doubles than this (16 MiB, half this machine's L3)
# write them with streaming stores.
STREAMING_OUT_DOUBLES = 2 * 1024 * 1024


def batch_tile(n_in: int, n_out: int) -> int:
    """Points per tile (a multiple of 8): the input and output tiles together stay near
    32 KiB (L1)."""
    t = 4096 // max(n_in + n_out, 1)
    tile = 8
    while tile * 2 <= min(t, 256):
        tile *= 2
    return tile


def batch_scratch_doubles(n_in: int, n_out: int, kernel_buffer: int = 0) -> int:
    """Doubles of scratch one ``emit_batch`` entry needs per thread."""
    return (n_in + n_out) * batch_tile(n_in, n_out) + kernel_buffer


def _loop(b: ir.IRBuilder, lo, hi, body, name: str = "i"):
    """Emit ``for i in range(lo, hi): body(b, i)`` (skipped when ``lo >= hi``)."""
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


def _nontemporal(b, store):
    """Mark a store to the caller's arrays as streaming (no read of the line first)."""
    store.set_metadata("nontemporal", b.module.add_metadata([ir.Constant(I32, 1)]))
    return store


def _copy_leaves(b, leaves, sizes, tile, i0, m, tile_buf, to_tile: bool,
                 streaming: bool = False):
    """Move leaf ``k``'s rows (``sizes[k]`` doubles per point, C order) between the
    caller's arrays and the column-major tile (element ``e`` of point ``i`` at
    ``tile_buf[e * tile + i]``). ``streaming``: the caller's rows are written with
    non-temporal stores."""
    zero = ir.Constant(I64, 0)
    off = 0
    for k, size in enumerate(sizes):
        base = b.load(b.gep(leaves, [ir.Constant(I64, k)], source_etype=PTR), typ=PTR,
                      name=f"leaf{k}")

        def move(b, e, i, base=base, size=size, off=off):
            row = b.add(i0, i)
            src = b.gep(base, [b.add(b.mul(row, ir.Constant(I64, size)), e)],
                        source_etype=DOUBLE)
            dst = b.gep(tile_buf, [b.add(b.mul(b.add(e, ir.Constant(I64, off)),
                                               ir.Constant(I64, tile)), i)],
                        source_etype=DOUBLE)
            if not to_tile:
                src, dst = dst, src
            store = b.store(b.load(src, typ=DOUBLE), dst)
            if streaming:
                _nontemporal(b, store)

        # Rows of fewer than 4 doubles: unrolled, one pass over the points. Longer ones in
        # 4x4 blocks, from 4 on (Rosenbrock n=10, rows of 10: 63 -> 104 M points/s).
        if size < 4:
            def per_point(b, i, move=move, size=size):
                for e in range(size):
                    move(b, ir.Constant(I64, e), i)
            _loop(b, zero, m, per_point, f"p{k}")
        else:
            _copy_blocks(b, base, size, off, tile, i0, m, tile_buf, to_tile, move, k,
                         streaming)
        off += size


_TRANSPOSE = ((0, 4, 2, 6), (1, 5, 3, 7), (0, 1, 4, 5), (2, 3, 6, 7))


def _transpose4(b, rows: list) -> list:
    """The 4x4 transpose of four <4 x double> vectors (two rounds of shuffles)."""
    i32 = ir.IntType(32)

    def mask(m):
        return ir.Constant(ir.VectorType(i32, 4), list(m))
    lo, hi, first, second = (mask(m) for m in _TRANSPOSE)
    t0 = b.shuffle_vector(rows[0], rows[1], lo)
    t1 = b.shuffle_vector(rows[0], rows[1], hi)
    t2 = b.shuffle_vector(rows[2], rows[3], lo)
    t3 = b.shuffle_vector(rows[2], rows[3], hi)
    return [b.shuffle_vector(t0, t2, first), b.shuffle_vector(t1, t3, first),
            b.shuffle_vector(t0, t2, second), b.shuffle_vector(t1, t3, second)]


def _copy_blocks(b, base, size, off, tile, i0, m, tile_buf, to_tile, move, k,
                 streaming=False):
    """Long rows in 4x4 blocks: four points' rows read (or written) as vectors and
    transposed in registers, so both the rows and the tile are accessed contiguously.
    Element by element, LLVM gathers across rows instead, at ~1.5 ns per double here
    (Rosenbrock n=100 value+grad batch: 300 -> ~100 ns per point)."""
    vty = ir.VectorType(DOUBLE, 4)
    zero, four = ir.Constant(I64, 0), ir.Constant(I64, 4)
    m4 = b.and_(m, ir.Constant(I64, -4))
    size4 = size - size % 4

    def row_ptr(b, i, e):
        at = b.add(b.mul(b.add(i0, i), ir.Constant(I64, size)), e)
        return b.gep(base, [at], source_etype=DOUBLE)

    def tile_ptr(b, e, i):
        at = b.add(b.mul(b.add(e, ir.Constant(I64, off)), ir.Constant(I64, tile)), i)
        return b.gep(tile_buf, [at], source_etype=DOUBLE)

    def block(b, q, p):
        i, e = b.mul(p, four), b.mul(q, four)
        points = [b.add(i, ir.Constant(I64, lane)) for lane in range(4)]
        elems = [b.add(e, ir.Constant(I64, lane)) for lane in range(4)]
        if to_tile:
            vecs = [b.load(row_ptr(b, pt, e), typ=vty) for pt in points]
            ptrs = [tile_ptr(b, el, i) for el in elems]
        else:
            vecs = [b.load(tile_ptr(b, el, i), typ=vty) for el in elems]
            ptrs = [row_ptr(b, pt, e) for pt in points]
        for v in vecs:
            v.align = 8
        for v, ptr in zip(_transpose4(b, vecs), ptrs):
            store = b.store(v, ptr)
            store.align = 8
            if streaming:
                _nontemporal(b, store)

    def four_points(b, p):
        _loop(b, zero, ir.Constant(I64, size4 // 4), lambda b, q: block(b, q, p), f"q{k}")
        if size4 < size:        # the last size % 4 elements of these four points
            i = b.mul(p, four)
            for lane in range(4):
                pt = b.add(i, ir.Constant(I64, lane))
                for e in range(size4, size):
                    move(b, ir.Constant(I64, e), pt)

    _loop(b, zero, b.udiv(m4, four), four_points, f"b{k}")
    # the last m % 4 points, element by element
    _loop(b, m4, m, lambda b, i: _loop(b, zero, ir.Constant(I64, size),
                                       lambda b, e: move(b, e, i), f"e{k}"), f"r{k}")


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


def emit_batch(module: ir.Module, kernel: ir.Function | None, name: str, in_sizes,
               out_sizes, vector_kernel: ir.Function | None = None, width: int = 4,
               kernel_buffer: int = 0) -> ir.Function:
    """``void name(double** ins, double** outs, i64 start, i64 end, double* scratch)``.

    Input leaf ``k`` is a C-order array with ``in_sizes[k]`` doubles per point (its
    leading axis is the point); outputs likewise. Points ``start .. end`` are evaluated
    tile by tile: gather a tile into column-major scratch (``batch_tile`` points of
    ``n_in + n_out`` doubles), run the kernel over it (inlined and vectorised: its strides
    are the constant tile size), scatter the outputs. No copy of the caller's arrays.
    With ``vector_kernel`` (``width`` points per call, see ``lower.emit_vector_kernel``)
    whole groups of ``width`` points use it and only the tail runs the scalar kernel.
    ``kernel_buffer``: the vector kernel takes a fifth argument, a buffer of that many
    doubles (a rolled kernel's values, ``lower.emit_rolled``), placed in ``scratch``
    after the tile: the caller sizes scratch by ``batch_scratch_doubles``.
    """
    n_in, n_out = sum(in_sizes), sum(out_sizes)
    tile = batch_tile(n_in, n_out)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64, I64, PTR]),
                     name=name)
    ins, outs, start, end, scratch = fn.args
    for a, nm in zip(fn.args, ("ins", "outs", "start", "end", "scratch")):
        a.name = nm
    scratch.add_attribute("noalias")
    fn.attributes.add("nounwind")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    tile_in = scratch
    tile_out = b.gep(scratch, [ir.Constant(I64, n_in * tile)], source_etype=DOUBLE)
    t = ir.Constant(I64, tile)
    # Results far larger than the cache are written with streaming stores: an ordinary
    # store first reads the line it writes (read for ownership), a third more traffic.
    streaming = b.icmp_signed(">", b.mul(b.sub(end, start), ir.Constant(I64, n_out)),
                              ir.Constant(I64, STREAMING_OUT_DOUBLES), name="streaming")
    # Tiles: i0 = start, start + tile, ... (the loop counter counts tiles).
    n_tiles = b.sdiv(b.add(b.sub(end, start), ir.Constant(I64, tile - 1)), t)

    def per_tile(b, k):
        i0 = b.add(start, b.mul(k, t), name="i0")
        left = b.sub(end, i0)
        m = b.select(b.icmp_signed("<", left, t), left, t, name="m")
        _copy_leaves(b, ins, in_sizes, tile, i0, m, tile_in, True)
        # Always a whole tile (a constant trip count, a multiple of the vector width, so
        # no scalar epilogue): points past ``m`` in the last tile compute on stale
        # scratch and are never copied out.
        if vector_kernel is not None:
            w = ir.Constant(I64, width)
            extra = [b.gep(scratch, [ir.Constant(I64, (n_in + n_out) * tile)],
                           source_etype=DOUBLE)] if kernel_buffer else []
            _loop(b, ir.Constant(I64, 0), ir.Constant(I64, tile // width),
                  lambda b, v: b.call(vector_kernel, [
                      b.gep(tile_in, [b.mul(v, w)], source_etype=DOUBLE), t,
                      b.gep(tile_out, [b.mul(v, w)], source_etype=DOUBLE), t, *extra]),
                  "vec")
        else:
            _loop(b, ir.Constant(I64, 0), t, lambda b, i: b.call(kernel, [
                b.gep(tile_in, [i], source_etype=DOUBLE), t,
                b.gep(tile_out, [i], source_etype=DOUBLE), t]), "pt")
        with b.if_else(streaming) as (stream, cached):
            with stream:
                _copy_leaves(b, outs, out_sizes, tile, i0, m, tile_out, False, True)
            with cached:
                _copy_leaves(b, outs, out_sizes, tile, i0, m, tile_out, False)

    _loop(b, ir.Constant(I64, 0), n_tiles, per_tile, "tile")
    with b.if_then(streaming):
        b.fence("seq_cst")      # streaming stores are weakly ordered: drain them
    b.ret_void()
    return fn


# ---- the CPython fast-call entry --------------------------------------------------

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

# The entry is emitted for up to this many input and output doubles (above, the ctypes
# path costs microseconds, but such a call costs far more anyway).
MAX_ENTRY_DOUBLES = 16_384
# It keeps them on the C stack up to this many (8 KiB; with the kernel's own
# builder.KERNEL_STACK_DOUBLES a call stays far below a small thread stack of 64 KiB), in
# one malloc'd block above: ~0.1 us, against the microseconds such a call takes anyway.
ENTRY_STACK_DOUBLES = 1_024

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


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _load_at(b, ptr, offset: int, typ):
    return b.load(b.gep(ptr, [_i64(offset)], source_etype=I8), typ=typ)


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
    decl = {}
    for fname, (ret, args) in _PY_FUNCS.items():
        decl[fname] = module.globals.get(fname) or ir.Function(
            module, ir.FunctionType(ret, args), name=fname)
    types = {}
    for tname in _TYPE_SYMBOLS:
        g = module.globals.get(tname)
        if g is None:
            g = ir.GlobalVariable(module, I8, name=tname)   # external declaration
        types[tname] = g

    n_in = sum(_size(s) for s in arg_shapes)
    arrays = [j for j, s in enumerate(arg_shapes) if s != ()]
    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, I64]), name=name)
    self_obj, args, nargs = fn.args
    self_obj.name, args.name, nargs.name = "self", "args", "nargs"
    entry = fn.append_basic_block("entry")
    fallback = fn.append_basic_block("fallback")
    b = ir.IRBuilder(entry)
    # One array argument is read in place; otherwise the inputs are gathered into in_buf.
    in_place = len(arg_shapes) == 1 and bool(arrays)
    n_in_buf = 0 if in_place else n_in
    heap = n_in_buf + n_out > ENTRY_STACK_DOUBLES
    if not heap:
        in_buf = b.alloca(DOUBLE, _i64(max(n_in_buf, 1)), name="in")
        out_buf = b.alloca(DOUBLE, _i64(max(n_out, 1)), name="out")
    views = b.alloca(I8, _i64(_BUF_SIZE * max(len(arrays), 1)), name="views")
    views.align = 8
    check = fn.append_basic_block("check")
    b.cbranch(b.icmp_signed("==", nargs, _i64(len(arg_shapes))), check, fallback)
    b.position_at_end(check)

    # release[k] gives back the first k buffers, then falls back to Python.
    release = [fallback]
    for k, _ in enumerate(arrays):
        blk = fn.append_basic_block(f"release{k + 1}")
        rb = ir.IRBuilder(blk)
        rb.call(decl["PyBuffer_Release"], [rb.gep(views, [_i64(_BUF_SIZE * k)],
                                                  source_etype=I8)])
        rb.branch(release[k])
        release.append(blk)

    def require(cond, fail):
        nxt = fn.append_basic_block("ok")
        b.cbranch(cond, nxt, fail)
        b.position_at_end(nxt)

    objs, held = [], 0
    for j, shape in enumerate(arg_shapes):
        obj = b.load(b.gep(args, [_i64(j)], source_etype=PTR), typ=PTR, name=f"arg{j}")
        objs.append(obj)
        tp = _load_at(b, obj, _OB_TYPE_OFFSET, PTR)
        if shape == ():
            require(b.or_(b.icmp_unsigned("==", tp, types["symad_float_type"]),
                          b.icmp_unsigned("==", tp, types["symad_float64_type"])),
                    release[held])
            continue
        require(b.icmp_unsigned("==", tp, types["symad_ndarray_type"]), release[held])
        view = b.gep(views, [_i64(_BUF_SIZE * held)], source_etype=I8)
        rc = b.call(decl["PyObject_GetBuffer"], [obj, view, ir.Constant(I32,
                                                                        _PyBUF_RECORDS_RO)])
        got = fn.append_basic_block("got")
        refused = fn.append_basic_block("refused")
        b.cbranch(b.icmp_signed("==", rc, ir.Constant(I32, 0)), got, refused)
        b.position_at_end(refused)
        b.call(decl["PyErr_Clear"], [])         # e.g. a dtype without a buffer format
        b.branch(release[held])
        b.position_at_end(got)
        held += 1
        fail = release[held]
        # float64 ('d', native order), the compiled ndim, shape and C-order strides.
        require(b.icmp_signed("==", _load_at(b, view, _BUF_ITEMSIZE, I64), _i64(8)), fail)
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
            require(b.icmp_signed("==", _load_at(b, dims, 8 * d, I64), _i64(shape[d])), fail)
            if shape[d] > 1:
                require(b.icmp_signed("==", _load_at(b, strides, 8 * d, I64),
                                      _i64(stride)), fail)
            stride *= int(shape[d])

    if heap:
        malloc = module.globals.get("malloc") or ir.Function(
            module, ir.FunctionType(PTR, [I64]), name="malloc")
        in_buf = b.call(malloc, [_i64(8 * (n_in_buf + n_out))], name="in")
        # No memory: the Python path, which allocates its own buffers (or raises).
        require(b.icmp_unsigned("!=", in_buf, ir.Constant(PTR, None)), release[held])
        out_buf = b.gep(in_buf, [_i64(n_in_buf)], source_etype=DOUBLE, name="out")
    if in_place:
        in_ptr = _load_at(b, views, _BUF_BUF, PTR)
    else:
        in_ptr, pos, k = in_buf, 0, 0
        memcpy = module.declare_intrinsic("llvm.memcpy", [PTR, PTR, I64])
        for obj, shape in zip(objs, arg_shapes):
            dst = b.gep(in_buf, [_i64(pos)], source_etype=DOUBLE)
            if shape == ():
                b.store(_load_at(b, obj, _FLOAT_VALUE_OFFSET, DOUBLE), dst)
            else:
                src = _load_at(b, views, _BUF_SIZE * k + _BUF_BUF, PTR)
                b.call(memcpy, [dst, src, _i64(8 * _size(shape)), ir.Constant(ir.IntType(1), 0)])
                k += 1
            pos += _size(shape)
    one = _i64(1)
    b.call(kernel, [in_ptr, one, out_buf, one])
    for k in range(len(arrays)):
        b.call(decl["PyBuffer_Release"], [b.gep(views, [_i64(_BUF_SIZE * k)],
                                                source_etype=I8)])
    fail = fn.append_basic_block("fail")
    ctx = _ResultCtx(fn, decl, out_buf, self_obj, views, array_outs(result_spec), module)
    result = _emit_result(b, ctx, result_spec, fail)
    free = None
    if heap:
        free = module.globals.get("free") or ir.Function(
            module, ir.FunctionType(ir.VoidType(), [PTR]), name="free")
        b.call(free, [in_buf])
    b.ret(result)
    b.position_at_end(fail)
    if heap:
        b.call(free, [in_buf])
    b.ret(ir.Constant(PTR, None))
    b.position_at_end(fallback)
    # Not the compiled signature: let the Python path validate, convert or raise.
    py = b.call(decl["PyTuple_GetItem"], [self_obj, _i64(_SELF_FALLBACK)])
    b.ret(b.call(decl["PyObject_Vectorcall"], [py, args, nargs, ir.Constant(PTR, None)]))
    return fn


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
    empty = b.call(decl["PyTuple_GetItem"], [ctx.self_obj, _i64(_SELF_EMPTY)])
    shape = b.call(decl["PyTuple_GetItem"], [ctx.self_obj, _i64(ctx.slot[id(leaf)])])
    argv = b.alloca(PTR, _i64(1))
    b.store(shape, argv)
    arr = b.call(decl["PyObject_Vectorcall"], [empty, argv, _i64(1), null])
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
        src = b.gep(ctx.out_buf, [_i64(leaf.start)], source_etype=DOUBLE)
        b.call(ctx.memcpy, [dst, src, _i64(8 * n), ir.Constant(ir.IntType(1), 0)])
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
        v = b.load(b.gep(ctx.out_buf, [_i64(spec)], source_etype=DOUBLE), typ=DOUBLE)
        obj = b.call(decl["PyFloat_FromDouble"], [v])
        cont = fn.append_basic_block("float.ok")
        b.cbranch(b.icmp_unsigned("==", obj, null), fail_block, cont)
        b.position_at_end(cont)
        return obj
    tup = b.call(decl["PyTuple_New"], [_i64(len(spec))])
    cont = fn.append_basic_block("tuple.ok")
    b.cbranch(b.icmp_unsigned("==", tup, null), fail_block, cont)
    b.position_at_end(cont)
    for i, sub in enumerate(spec):
        # A failing item releases the partly filled tuple (NULL slots are allowed).
        item_fail = fn.append_basic_block("item.fail")
        item = _emit_result(b, ctx, sub, item_fail)
        b.call(decl["PyTuple_SetItem"], [tup, _i64(i), item])  # steals item
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
