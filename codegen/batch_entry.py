"""The batch entry (trace -> graph -> ad -> lower -> jit; the native loop ``f.batch`` calls).

``NAME_batch(ins, outs, start, end, scratch)`` evaluates points ``start .. end`` reading
and writing the caller's C-order arrays in place: one pointer per argument / result leaf,
whose leading axis is the point. Tiles of points are gathered into column-major scratch so
that the kernel (``builder.emit_kernel_entry``'s ``alwaysinline`` body, or a vector
kernel taking ``width`` points per call) inlines into a loop with constant strides and
vectorises across points; rows of 4 doubles or more move in 4x4 register transposes. A
call writing more results than fit in the cache writes them with streaming stores.
``BATCH_PROTO`` calls it through ctypes, which releases the GIL, so ``f.batch`` runs
slices of the points in parallel from a thread pool, each thread with its own scratch
(``batch_scratch_doubles``).
"""

from __future__ import annotations

import ctypes

from llvmlite import ir

from symad import policy

from .builder import DOUBLE, I32, I64, PTR, loop_range

BATCH_PROTO = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                               ctypes.c_int64, ctypes.c_void_p)




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
            loop_range(b, zero, m, per_point, f"p{k}")
        else:
            _copy_blocks(b, base, size, off, tile, i0, m, tile_buf, to_tile, move, k,
                         streaming)
        off += size


_TRANSPOSE = ((0, 4, 2, 6), (1, 5, 3, 7), (0, 1, 4, 5), (2, 3, 6, 7))


def _transpose4(b, rows: list) -> list:
    """The 4x4 transpose of four <4 x double> vectors (two rounds of shuffles)."""
    def mask(m):
        return ir.Constant(ir.VectorType(I32, 4), list(m))
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
        loop_range(b, zero, ir.Constant(I64, size4 // 4), lambda b, q: block(b, q, p), f"q{k}")
        if size4 < size:        # the last size % 4 elements of these four points
            i = b.mul(p, four)
            for lane in range(4):
                pt = b.add(i, ir.Constant(I64, lane))
                for e in range(size4, size):
                    move(b, ir.Constant(I64, e), pt)

    loop_range(b, zero, b.udiv(m4, four), four_points, f"b{k}")
    # the last m % 4 points, element by element
    loop_range(b, m4, m, lambda b, i: loop_range(
        b, zero, ir.Constant(I64, size), lambda b, e: move(b, e, i), f"e{k}"), f"r{k}")


def emit_batch(module: ir.Module, kernel: ir.Function | None, name: str, in_sizes,
               out_sizes, vector_kernel: ir.Function | None = None, width: int = 4,
               kernel_buffer: int = 0) -> ir.Function:
    """``void name(double** ins, double** outs, i64 start, i64 end, double* scratch)``.

    Input leaf ``k`` is a C-order array with ``in_sizes[k]`` doubles per point (its
    leading axis is the point); outputs likewise. Points ``start .. end`` are evaluated
    tile by tile: gather a tile into column-major scratch (``batch_tile`` points of
    ``n_in + n_out`` doubles), run the kernel over it (inlined and vectorised: its strides
    are the constant tile size), scatter the outputs. No copy of the caller's arrays.
    With ``vector_kernel`` (``width`` points per call: ``lower.emit_vector_kernel``,
    ``lower.emit_rolled`` or ``arrays.emit_kernel`` with ``width=4``) it runs over every
    tile instead and ``kernel`` may be None: a tile is a multiple of ``width`` points, so
    there is no scalar tail. ``kernel_buffer``: the vector kernel takes a fifth argument,
    a buffer of that many doubles (a rolled or array kernel's values), placed in
    ``scratch`` after the tile: the caller sizes scratch by ``batch_scratch_doubles``.
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
                              ir.Constant(I64, policy.STREAMING_OUT_DOUBLES), name="streaming")
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
            loop_range(b, ir.Constant(I64, 0), ir.Constant(I64, tile // width),
                       lambda b, v: b.call(vector_kernel, [
                           b.gep(tile_in, [b.mul(v, w)], source_etype=DOUBLE), t,
                           b.gep(tile_out, [b.mul(v, w)], source_etype=DOUBLE), t, *extra]),
                       "vec")
        else:
            loop_range(b, ir.Constant(I64, 0), t, lambda b, i: b.call(kernel, [
                b.gep(tile_in, [i], source_etype=DOUBLE), t,
                b.gep(tile_out, [i], source_etype=DOUBLE), t]), "pt")
        with b.if_else(streaming) as (stream, cached):
            with stream:
                _copy_leaves(b, outs, out_sizes, tile, i0, m, tile_out, False, True)
            with cached:
                _copy_leaves(b, outs, out_sizes, tile, i0, m, tile_out, False)

    loop_range(b, ir.Constant(I64, 0), n_tiles, per_tile, "tile")
    with b.if_then(streaming):
        b.fence("seq_cst")      # streaming stores are weakly ordered: drain them
    b.ret_void()
    return fn
