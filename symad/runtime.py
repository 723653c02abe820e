"""The calling convention of compiled code (... -> jit -> **runtime**): argument leaves
and shapes, the per-thread buffers a single call fills and unpacks, and the batch
runtime (scratch, ``out=`` checks, the thread pool). A specialization
(``symad/specialize.py``) is a :class:`Runtime`; ``CompiledFunction`` calls it.

Nothing here imports the back end at import time: a call reaches native code through
the specialization's ``native`` entries.
"""

from __future__ import annotations

import ctypes
import numbers
import os
import threading
from typing import Any

import numpy as np

from . import policy
from .errors import OptionError
from .tree import tree_flatten, tree_unflatten

_POOL = None
_POOL_LOCK = threading.Lock()
_ONE = ctypes.c_int64(1)


def _after_fork_in_child() -> None:
    """No thread pool and a fresh lock in a forked child: the pool's worker threads stayed
    in the parent, and a parent thread may have held the lock at the fork (see
    ``specialize._after_fork_in_child``)."""
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def leaf_info(leaf, path: str) -> tuple:
    """Shape of a numeric argument leaf; TypeError for anything that is not numeric."""
    if isinstance(leaf, float) or (isinstance(leaf, numbers.Real) and not
                                   isinstance(leaf, np.ndarray)):
        if isinstance(leaf, np.generic) and leaf.dtype.kind not in "biuf":
            raise TypeError(f"argument {path} has dtype {leaf.dtype}; expected float64 "
                            "(or a real number type convertible to it)")
        return ()
    if isinstance(leaf, np.ndarray):
        arr = leaf
        if type(leaf) is not np.ndarray:
            from .trace import refuse_array_subclass
            refuse_array_subclass(leaf, f"argument {path}")
    elif isinstance(leaf, (str, bytes)):
        raise TypeError(f"argument {path} is a {type(leaf).__name__} ({leaf!r:.40}); "
                        "expected a float or a numpy array of float64")
    else:
        from .trace import Tracer
        if isinstance(leaf, Tracer):
            raise TypeError(f"argument {path} is a traced value: a compiled function "
                            "runs native code on numbers. Transform the Python function "
                            "first and compile the result, e.g. compile(hessian(f)).")
        try:
            arr = np.asarray(leaf)
        except Exception as exc:  # noqa: BLE001 (any failure: not array-like)
            raise TypeError(f"argument {path} ({type(leaf).__name__}) is not numeric"
                            ) from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"argument {path} has dtype {arr.dtype}; expected float64 (or a "
                        "real number type convertible to it)")
    return arr.shape


_FLAT_TREEDEFS: dict[int, tuple] = {}


def _flat_treedef(n: int) -> tuple:
    td = _FLAT_TREEDEFS.get(n)
    if td is None:
        td = _FLAT_TREEDEFS[n] = ("tuple", (("leaf",),) * n)
    return td


def flatten_call(args: tuple):
    # Fast path for the common call: every argument a float or a numeric ndarray.
    shapes: Any = []
    for a in args:
        t = type(a)
        if t is float:
            shapes.append(())
        elif t is np.ndarray and a.dtype.kind in "fiub":
            shapes.append(a.shape)
        else:
            break
    else:
        return list(args), (_flat_treedef(len(args)), tuple(shapes))
    leaves, treedef, paths = tree_flatten(args, "")
    shapes = tuple(leaf_info(leaf, p or "[0]") for leaf, p in zip(leaves, paths))
    return leaves, (treedef, shapes)


def size_of(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def result_spec(treedef, shapes, start: int):
    """What the native entry returns: a nested tuple whose leaves are output indices
    (floats) or ``py_entry.ArrayOut`` (arrays), when the tree is tuples of leaves; else None."""
    from symad.codegen.py_entry import ArrayOut
    stack = [treedef]
    while stack:
        td = stack.pop()
        if td[0] == "tuple":
            stack.extend(td[1])
        elif td[0] != "leaf":
            return None
    leaves, pos = [], start
    for s in shapes:
        leaves.append(pos if s == () else ArrayOut((pos, tuple(int(d) for d in s))))
        pos += size_of(s)
    return tree_unflatten(treedef, leaves)


# Result trees nested deeper than this are returned by the Python path: emitting the
# native entry and keying the cache recurse on the result spec (a 5000-deep tuple hit
# Python's recursion limit); such a call costs far more than the entry saves anyway.
MAX_ENTRY_DEPTH = 32


def spec_depth(spec) -> int:
    depth, stack = 0, [(spec, 0)]
    while stack:
        s, d = stack.pop()
        depth = max(depth, d)
        if type(s) is tuple:        # (py_entry.ArrayOut, a tuple subclass, is a leaf)
            stack.extend((c, d + 1) for c in s)
    return depth


def _out_leaf(flat: np.ndarray, start: int, shape: tuple):
    if shape == ():
        return float(flat[start])
    return flat[start:start + size_of(shape)].reshape(shape)



class Runtime:
    """Calls of one specialization: its single-call buffers and batches. The
    specialization sets ``shapes``, ``sizes``, ``n_in``, ``n_out``, ``n_nodes``,
    ``is_grad``, the output structure, ``native`` and ``_local`` (a threading.local)."""

    shapes: list
    sizes: list
    n_in: int
    n_out: int
    n_nodes: int
    is_grad: bool
    native: Any
    out_tree: Any
    out_shapes: list
    grad_trees: list
    grad_shapes: list
    single: bool
    _simple_grad: bool
    _local: Any

    @property
    def out_leaf_shapes(self) -> list:
        """Shapes of the flat output leaves: value then gradient leaves, or f's outputs."""
        if self.is_grad:
            return [()] + [s for shp in self.grad_shapes for s in shp]
        return list(self.out_shapes)

    def _buffers(self):
        loc = self._local
        bufs = getattr(loc, "bufs", None)
        if bufs is None:
            # Per-thread buffers (calls from several threads never share one), with a
            # view of the input buffer per array leaf so filling it is one copy.
            inb = np.zeros(max(self.n_in, 1))
            outb = np.zeros(max(self.n_out, 1))
            fill, pos = [], 0
            for shape, n in zip(self.shapes, self.sizes):
                fill.append(pos if shape == () else inb[pos:pos + n].reshape(shape))
                pos += n
            bufs = loc.bufs = (inb, ctypes.c_void_p(inb.ctypes.data), outb,
                               ctypes.c_void_p(outb.ctypes.data), fill)
        return bufs

    def call(self, leaves: list):
        inb, inaddr, outb, outaddr, fill = self._buffers()
        # Convert every leaf before writing any: a conversion can run Python code
        # (``__array__``, ``__float__``) that calls this function again on this thread,
        # which refills the same buffer. Exact ndarrays run no Python code when copied.
        vals = [float(leaf) if type(dest) is int else
                leaf if type(leaf) is np.ndarray else np.asarray(leaf, dtype=np.float64)
                for leaf, dest in zip(leaves, fill)]
        for v, dest in zip(vals, fill):
            if type(dest) is int:
                inb[dest] = v
            else:
                dest[...] = v
        self.native.kernel(inaddr, _ONE, outaddr, _ONE)
        flat = outb[:self.n_out].copy()
        if self._simple_grad:       # one plain argument differentiated: skip the trees
            shape = self.grad_shapes[0][0]
            return float(flat[0]), (float(flat[1]) if shape == () else
                                    flat[1:].reshape(shape))
        return self._unpack(flat)

    def _unpack(self, flat: np.ndarray):
        leaf = _out_leaf
        if not self.is_grad:
            pos, leaves = 0, []
            for s in self.out_shapes:
                leaves.append(leaf(flat, pos, s))
                pos += size_of(s)
            return tree_unflatten(self.out_tree, leaves)
        value = leaf(flat, 0, ())
        pos, per_arg = 1, []
        for td, shapes in zip(self.grad_trees, self.grad_shapes):
            leaves = []
            for s in shapes:
                leaves.append(leaf(flat, pos, s))
                pos += size_of(s)
            per_arg.append(tree_unflatten(td, leaves))
        return value, (per_arg[0] if self.single else tuple(per_arg))

    def batch(self, leaves: list, n: int, threads: int | None, out=None):
        return self._unpack_leaves(self.batch_flat(leaves, n, threads, out))

    def batch_flat(self, leaves: list, n: int, threads: int | None,
                   out: list | None = None) -> list:
        """The flat output leaves, each of shape ``(n,) + leaf shape`` (``out``: the
        caller's arrays to write them to, already checked by ``check_out``)."""
        from symad.codegen.batch_entry import batch_scratch_doubles
        # The native loop reads C-order float64 arrays in place (no copy when the caller's
        # arrays already are) and writes the result arrays directly.
        ins = [np.ascontiguousarray(leaf, dtype=np.float64) for leaf in leaves]
        outs = out if out is not None else \
            [np.empty((n,) + tuple(s)) for s in self.out_leaf_shapes]
        in_ptrs = np.array([a.__array_interface__["data"][0] for a in ins], dtype=np.uintp)
        out_ptrs = np.array([a.__array_interface__["data"][0] for a in outs], dtype=np.uintp)
        fn = self.native.batch    # built at the first batch; then its scratch size is known
        per = batch_scratch_doubles(self.n_in, self.n_out, self.native.batch_buffer)
        per += -per % 8           # each thread's part on a cache line of its own
        chunks = policy.batch_chunks(n, self.n_nodes, threads)
        scratch = np.zeros(per * chunks + 8)   # zeros: no denormal garbage
        sp = scratch.__array_interface__["data"][0]
        sp += -sp % 64            # aligned: no vector of the tile straddles two lines
        ip, op = in_ptrs.ctypes.data, out_ptrs.ctypes.data
        if chunks == 1:
            fn(ip, op, 0, n, sp)      # ctypes releases the GIL during the call
        else:
            bounds = [n * i // chunks for i in range(chunks + 1)]
            run_parallel(_pool(chunks), fn, [(ip, op, a, b, sp + 8 * per * c) for c, (a, b)
                                              in enumerate(zip(bounds[:-1], bounds[1:]))])
        return outs

    def check_out(self, out, n: int, inputs: list, fname: str) -> list:
        """``out`` (a result-shaped structure of arrays) as flat leaves, or a clear error."""
        leaves, _, paths = tree_flatten(out, "out")
        shapes = [(n,) + tuple(s) for s in self.out_leaf_shapes]
        if len(leaves) != len(shapes):
            raise OptionError(f"{fname}.batch(out=...) needs {len(shapes)} array(s) shaped "
                              f"like the result {shapes}, got {len(leaves)}")
        for a, shape, path in zip(leaves, shapes, paths):
            if not isinstance(a, np.ndarray) or a.dtype != np.float64 or a.shape != shape \
                    or not a.flags.c_contiguous or not a.flags.writeable:
                got = (f"{type(a).__name__} {getattr(a, 'dtype', '')} "
                       f"{getattr(a, 'shape', '')}").strip()
                raise OptionError(f"{fname}.batch: {path} must be a writeable C-contiguous "
                                  f"float64 array of shape {shape}, got {got}; allocate it "
                                  f"with numpy.empty({shape})")
            if any(np.may_share_memory(a, x) for x in inputs):
                raise OptionError(f"{fname}.batch: {path} overlaps an input array; results "
                                  "are written while inputs are still read, so use a "
                                  "separate array")
        for i, a in enumerate(leaves):
            if any(np.may_share_memory(a, b) for b in leaves[i + 1:]):
                raise OptionError(f"{fname}.batch: {paths[i]} overlaps another out array")
        return leaves

    def _unpack_leaves(self, leaves: list):
        if not self.is_grad:
            return tree_unflatten(self.out_tree, leaves)
        pos, per_arg = 1, []
        for td, shapes in zip(self.grad_trees, self.grad_shapes):
            per_arg.append(tree_unflatten(td, leaves[pos:pos + len(shapes)]))
            pos += len(shapes)
        return leaves[0], (per_arg[0] if self.single else tuple(per_arg))



def run_parallel(pool, fn, calls: list) -> None:
    """Run ``fn(*args)`` for every ``args`` of ``calls`` on ``pool``; raise the first failure
    once none runs any more.

    The workers write into buffers owned by the caller's frame: an exception here
    (Ctrl-C while submitting or waiting, a failed chunk) must not unwind that frame while
    a worker still runs, or native code writes freed memory. Chunks not started are
    dropped.
    """
    futs: list = []
    try:
        for args in calls:
            futs.append(pool.submit(fn, *args))
        for fut in futs:
            fut.result()
    except BaseException:
        from concurrent.futures import wait
        for fut in futs:
            fut.cancel()
        while True:
            try:
                wait(futs)
                break
            except BaseException:  # noqa: BLE001 (a second Ctrl-C: keep waiting)
                continue
        raise


def _pool(n: int):
    global _POOL
    from concurrent.futures import ThreadPoolExecutor
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < n:
            _POOL = ThreadPoolExecutor(max_workers=max(n, 4), thread_name_prefix="symad")
        return _POOL


