"""``f.batch`` over ``dask.array``: chunked along points, evaluated where the chunks live.

``f.batch(x)`` with any dask array leaf returns the same structure as a local batch but
with lazy dask arrays as leaves (``dask.compute(*tree)`` or ``.compute()`` them). Every
argument is viewed as ``(N, size)`` and chunked along points only (the chunks of the
first dask leaf); one ``blockwise`` task per chunk runs the native batch loop on that
chunk and returns an ``(n, n_outputs)`` block, which is split back into the output
leaves. The compiled function travels to the workers by pickling: its graphs and
options, never machine code (see :mod:`symad.persist`); each worker process compiles a
graph once (or loads it from the on-disk cache) and reuses it for every later chunk.

Scaling out: the same code runs on any ``dask.distributed`` cluster (``Client(address)``
for a scheduler on other machines, dask-jobqueue, dask-kubernetes). Workers need symad
installed; they compile for their own CPU. Give workers one thread per core
(``nthreads``): the native loop releases the GIL, so threads in one worker run chunks
in parallel too. Pick chunks of 10^5 to 10^6 points so per-task overhead (milliseconds)
stays small against native work (nanoseconds per point). Setting ``SYMAD_CACHE_DIR``
on workers to a shared folder lets them skip LLVM for graphs another worker compiled.
"""

from __future__ import annotations

import numpy as np

from .tree import tree_unflatten


def is_dask_array(x) -> bool:
    return type(x).__module__.split(".")[0] == "dask" and hasattr(x, "chunks")


class _Blocks:
    """The per-chunk task: picklable (carries the compiled function and its key)."""

    def __init__(self, compiled, key):
        self.compiled = compiled
        self.key = key

    def __call__(self, *blocks):
        # (compiled again here if evicted meanwhile: max_specializations)
        spec = self.compiled._spec_for(self.key)
        m = blocks[0].shape[0]
        leaves = [np.asarray(b, dtype=np.float64).reshape((m,) + tuple(s))
                  for b, s in zip(blocks, spec.shapes)]
        outs = spec.batch_flat(leaves, m, threads=1)
        # sizes spelled out: reshape(m, -1) cannot infer one for an empty chunk
        return np.concatenate([o.reshape(m, int(np.prod(o.shape[1:], dtype=np.int64)))
                               for o in outs], axis=1)


def dask_batch(compiled, leaves: list, treedef, paths: list):
    """The body of ``CompiledFunction.batch`` when a leaf is a dask array."""
    import dask.array as da

    lead = next(leaf for leaf in leaves if is_dask_array(leaf))
    if lead.ndim == 0:
        raise ValueError("a dask batch argument needs a leading axis of points")
    n = lead.shape[0]
    if not isinstance(n, (int, np.integer)) or any(np.isnan(c) for c in lead.chunks[0]):
        raise ValueError("dask batch arguments need known chunk sizes along the points "
                         "axis (call .compute_chunk_sizes() first)")
    chunks0 = lead.chunks[0]
    arrays, shapes = [], []
    for leaf, path in zip(leaves, paths):
        a = leaf if is_dask_array(leaf) else da.from_array(np.asarray(leaf))
        if a.dtype.kind not in "biuf":
            raise TypeError(f"batch argument {path or '[0]'} has dtype {a.dtype}; "
                            "expected float64 (or a real type convertible to it)")
        if a.ndim == 0:
            raise ValueError(f"batch argument {path or '[0]'} is a scalar; every leaf "
                             "needs a leading axis of points")
        if a.shape[0] != n:
            raise ValueError(f"batch argument {path or '[0]'} has {a.shape[0]} points but "
                             f"the first dask argument has {n}; all leading axes must agree")
        shape = tuple(int(d) for d in a.shape[1:])
        size = int(np.prod(shape, dtype=np.int64))
        a = a.astype(np.float64).rechunk({0: chunks0, **{i: -1 for i in range(1, a.ndim)}})
        arrays.append(a.reshape((n, size)))
        shapes.append(shape)
    key = (treedef, tuple(shapes))
    spec = compiled._specs.get(key)
    if spec is None:   # compile here once: workers then only rebuild the pickled graph
        example = tree_unflatten(treedef, [0.0 if s == () else np.zeros(s) for s in shapes])
        spec = compiled._specialize(key, example)
    pairs = []
    for k, a in enumerate(arrays):
        pairs += [a, ("i", f"a{k}")]
    flat = da.blockwise(_Blocks(compiled, key), ("i", "j"), *pairs,
                        new_axes={"j": spec.n_out}, dtype=np.float64, concatenate=True)

    def out_leaf(start: int, shape: tuple):
        size = int(np.prod(shape, dtype=np.int64))
        if shape == ():
            return flat[:, start]
        return flat[:, start:start + size].reshape((n,) + shape)

    if not spec.is_grad:
        pos, out = 0, []
        for s in spec.out_shapes:
            out.append(out_leaf(pos, s))
            pos += int(np.prod(s, dtype=np.int64))
        return tree_unflatten(spec.out_tree, out)
    value = out_leaf(0, ())
    pos, per_arg = 1, []
    for td, shps in zip(spec.grad_trees, spec.grad_shapes):
        out = []
        for s in shps:
            out.append(out_leaf(pos, s))
            pos += int(np.prod(s, dtype=np.int64))
        per_arg.append(tree_unflatten(td, out))
    return value, (per_arg[0] if spec.single else tuple(per_arg))
