"""Native compilation, the public face (trace -> graph -> ad -> lower -> jit).

``symad.compile(f)`` and ``symad.compile_grad(f)`` return a :class:`CompiledFunction`.
It traces lazily at the first call: the structure and shapes of the arguments select a
specialization (traced, differentiated, lowered to LLVM IR and JIT-compiled once), so a
function called with new shapes is compiled again for them. Native code is shared
through a cache keyed by the graph's SSA text and the options, so compiling the same
function twice does no LLVM work.

The LLVM back end (``codegen``) is imported lazily here, so ``import symad`` never
imports llvmlite.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import gc
import hashlib
import itertools
import numbers
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from . import diskcache, logs, options
from .errors import OptionError, SymadError
from .persist import (
    MAX_PICKLED_DEPTH,
    PICKLE_FORMAT,
    RESTORED,
    Unavailable,
    check_treedef,
    checked_key,
    checked_shapes,
    count_leaves,
    pickle_function,
    restore_compiled,
    tree_depth,
    unpickle_error,
)
from .tree import tree_flatten, tree_unflatten

_CACHE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # key -> _Native
_RECENT: collections.OrderedDict = collections.OrderedDict()  # strong refs, bounded LRU
_RECENT_MAX = 64
# Specializations (argument shapes) one CompiledFunction keeps by default, least recently
# used dropped first: each owns a JIT engine, about 1.3 MB (300 shapes held 380 MB).
# ``compile(f, max_specializations=n)`` sets it per function.
MAX_SPECIALIZATIONS = 32
_tick = itertools.count().__next__      # use order of specializations (atomic in CPython)
_CACHE_LOCK = threading.Lock()
_POOL = None
_POOL_LOCK = threading.Lock()
_ONE = ctypes.c_int64(1)
# Objects with a ``_lock`` that a forked child replaces (see _after_fork_in_child).
_FORK_RENEW: weakref.WeakSet = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Fresh locks and no thread pool in a forked child.

    A parent thread may hold any of these locks at the fork (compiling under a function's
    lock, say); it does not exist in the child, so the lock would never be released. They
    are renewed rather than held across the fork like LLVM's (codegen/jit.py): a thread
    under ``_CACHE_LOCK`` may free an engine through LLVM's lock, so the fork would have
    to take them first, but jit's hook, registered later, runs first. The state they
    guard is consistent between bytecodes, and the child runs only the forking thread.
    """
    global _POOL, _CACHE_LOCK, _POOL_LOCK
    _POOL = None        # its worker threads stayed in the parent: the child makes its own
    _CACHE_LOCK = threading.Lock()
    _POOL_LOCK = threading.Lock()
    for obj in list(_FORK_RENEW):
        obj._lock = threading.RLock() if isinstance(obj, CompiledFunction) else \
            threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# Above this many live nodes the single-call entry gets machine code at O0 (the batch
# entry keeps the size-based level: its run time matters more). Measured: Lennard-Jones 16
# value+grad (4.9k nodes) builds in 0.14 s instead of 0.65 s and calls in 2.2 instead of
# 1.7 us; Rosenbrock n=1000 (18k nodes) 0.9 s instead of 3.9 s, 8.5 instead of 5.6 us.
# Register allocation at O1+ dominates machine-code time on long straight-line kernels.
FAST_BUILD_NODES = 2_000
# Graphs up to this many live nodes are never rolled into loops: straight-line code is
# faster to run and already cheap to build.
ROLL_MIN_NODES = 1_000
# The batch entry is rolled too (four points per call) above this many live nodes,
# where straight code would be split into chunk functions run point by point. Below, the
# straight kernel inlined into the batch loop and vectorised across points is faster
# (measured, value+grad M points/s rolled vs straight: Lennard-Jones 16 (4.5k nodes) 1.5
# vs 3.1, Rosenbrock n=100 4.3 vs 7.6; above, Lennard-Jones 64 (76k nodes) 0.11 vs 0.023,
# and its batch entry builds in 0.4 s instead of 5 s).
ROLLED_BATCH_NODES = 10_000


class _Native:
    """Native code for one graph: the JIT module (owns the engine) and its entries.

    The batch entry is a second module, compiled at the first ``batch`` call: its
    vectorised loop with an inlined copy of the kernel costs as much LLVM time as the rest
    together (measured: closed form 33 -> 15 ms, Rosenbrock n=100 0.47 -> 0.19 s), and a
    function that is only ever called point by point never needs it.
    """

    def __init__(self, module, kernel_name: str, py_name: str | None, py_spec, build_batch):
        from symad.codegen import builder
        self.module = module
        self.kernel = builder.KERNEL_PROTO(module.addresses[kernel_name])
        self.py_address = module.addresses[py_name] if py_name else None
        self.py_name = py_name
        self.py_spec = py_spec
        # () -> (JIT module holding the batch entry, its name, doubles of scratch its
        # kernel needs per thread besides the tile)
        self._build_batch = build_batch
        self._batch = None
        self.batch_module = None
        self._lock = threading.Lock()
        _FORK_RENEW.add(self)
        # {"loops", "rolled_nodes", "body_nodes"} of a rolled kernel (codegen/roll.py)
        self.rolled: dict | None = None
        self.batch_buffer = 0    # doubles of scratch the batch kernel needs per thread
        self.batch_levels = (3, 3)  # (IR, machine code) optimisation of the batch entry

    __slots__ = ("module", "kernel", "py_address", "py_name", "py_spec", "_build_batch",
                 "_batch", "batch_module", "_lock", "rolled", "batch_buffer", "batch_levels",
                 "__weakref__")

    @property
    def batch(self):
        fn = self._batch
        if fn is None:
            from symad.codegen import batch_entry
            with self._lock:
                if self._batch is None:
                    self.batch_module, name, self.batch_buffer = self._build_batch()
                    self._batch = batch_entry.BATCH_PROTO(self.batch_module.addresses[name])
                    self._build_batch = None        # drop the graph it closed over
                fn = self._batch
        return fn

    def text(self, attr: str) -> str:
        """``llvm_ir``, ``optimized_ir`` or ``asm`` of every entry (compiles the batch one)."""
        self.batch  # noqa: B018 (inspection shows every entry, so build the batch one)
        return getattr(self.module, attr) + "\n" + getattr(self.batch_module, attr)


def _forget_natives(specs: list) -> None:
    """Let the native code of dropped specializations go: out of the strong LRU of recent
    natives (the weak cache keeps it for any other function still using it)."""
    gone = set()
    for spec in specs:
        for s in (spec, getattr(spec, "_scalar_spec", None)):
            native = getattr(s, "native", None)
            if native is not None:
                gone.add(id(native))
    if gone:
        with _CACHE_LOCK:
            for key in [k for k, v in _RECENT.items() if id(v) in gone]:
                del _RECENT[key]


def _emit_body(lower, module, graph, outputs, name: str, flags, fname: str, plan=None):
    try:
        return lower.emit_kernel(module, graph, outputs, name, flags, plan)
    except NotImplementedError as exc:
        raise SymadError(f"cannot compile {fname}: {exc}") from exc


def _user_stacklevel() -> int:
    """The ``stacklevel`` of a warning that points at the first frame outside symad."""
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    frame: Any = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    return level


def _safe_name(name: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return s or "f"


def _leaf_info(leaf, path: str) -> tuple:
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


def _flatten_call(args: tuple):
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
    shapes = tuple(_leaf_info(leaf, p or "[0]") for leaf, p in zip(leaves, paths))
    return leaves, (treedef, shapes)


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _result_spec(treedef, shapes, start: int):
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
        pos += _size(s)
    return tree_unflatten(treedef, leaves)


# Result trees nested deeper than this are returned by the Python path: emitting the
# native entry and keying the cache recurse on the result spec (a 5000-deep tuple hit
# Python's recursion limit); such a call costs far more than the entry saves anyway.
MAX_ENTRY_DEPTH = 32


def _depth(spec) -> int:
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
    return flat[start:start + _size(shape)].reshape(shape)


class _Specialization:
    """One traced, differentiated and compiled signature of a CompiledFunction."""

    _graph: Any
    grad_graph: Any
    _fwd_table: Any
    native: Any
    used = 0       # when last called through the Python path (CompiledFunction._admit)

    def __init__(self, owner: CompiledFunction, key, args: tuple, array_trace=None):
        self._init_signature(owner, key)
        self._graph = None
        self.is_grad = owner._grad
        # Tracing and AD allocate a node object per value, linked both ways to their
        # graph: the collector's full passes over them cost 10-20% of a build (measured:
        # Rosenbrock 1000 0.245 -> 0.205 s) and find nothing to free while it runs.
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._build(owner, args, array_trace)
        finally:
            if enabled:
                gc.enable()

    def _init_signature(self, owner: CompiledFunction, key) -> None:
        """What every specialization knows from its argument structure and shapes."""
        self.key = key
        self.treedef, self.shapes = key
        self.sizes = [_size(s) for s in self.shapes]
        self.n_in = sum(self.sizes)
        self._owner_name = owner.__name__
        self._example = tree_unflatten(
            self.treedef, [0.0 if s == () else np.zeros(s) for s in self.shapes])
        self._f = owner._f
        self._local = threading.local()
        self.fast = None

    def _grad_signature(self, owner: CompiledFunction, nargs: int, arg_trees,
                        arg_shapes):
        """The differentiated arguments (``argnums``) and the gradient's structure;
        returns ``(argnums as a tuple, the Python entry's result spec or None)``."""
        from .api import _normalize_argnums
        argnums = owner._argnums
        if argnums is _ALL_BY_DEFAULT:
            if nargs > 1:
                owner._warn_default_argnums(nargs)
            argnums = None
        if argnums is None:
            argnums = 0 if nargs == 1 else tuple(range(nargs))
        nums = _normalize_argnums(argnums, nargs, owner.__name__)
        self.grad_nums, self.single = nums, isinstance(argnums, int)
        self.grad_trees = [arg_trees[k] for k in nums]
        self.grad_shapes = [list(arg_shapes[k]) for k in nums]
        self._simple_grad = self.single and self.grad_trees[0] == ("leaf",)
        if not all(td == ("leaf",) for td in self.grad_trees):
            return nums, None
        shapes = [shp[0] for shp in self.grad_shapes]
        grad_spec = _result_spec(("tuple", (("leaf",),) * len(nums)), shapes, 1)
        return nums, (0, grad_spec[0] if self.single else grad_spec)

    def _entry_spec(self, spec):
        """``spec`` when the CPython fast-call entry can serve this signature (flat
        float/array arguments, at most ``MAX_ENTRY_DOUBLES`` inputs and outputs), else None."""
        from symad.codegen.py_entry import MAX_ENTRY_DOUBLES
        flat_args = self.treedef == ("tuple", tuple(("leaf",) for _ in self.shapes))
        if not flat_args or self.n_in + self.n_out > MAX_ENTRY_DOUBLES:
            return None
        return spec if _depth(spec) <= MAX_ENTRY_DEPTH else None

    def _attach_fast_entry(self, owner: CompiledFunction) -> None:
        from symad.codegen import py_entry
        native = self.native
        # The entry object holds this list (so its method table and the engine running
        # its code): a call in flight outlives the specialization being evicted.
        self._keepalive: list = [native]
        if native.py_address is not None:
            self.fast = py_entry.make_py_callable(native.py_address, owner.__name__,
                                                  owner._slow_call, native.py_spec,
                                                  self._keepalive)

    # ---- staging: trace, AD, lower, JIT ----------------------------------------------
    def _build(self, owner: CompiledFunction, args: tuple, array_trace=None) -> None:
        from .ad import vjp_nodes
        from .api import _scalar_output, _slices, _tracing, trace_call

        name = owner.__name__
        seconds = {}
        t0 = time.perf_counter()
        logs.stage("trace")
        if array_trace is None:
            st = trace_call(self._f, args)
        else:       # unrolled from the array-level trace: the function runs once
            from .api import _arg_names
            from .scalarize import stage_array_trace
            st = stage_array_trace(array_trace, args, name, _arg_names(self._f, len(args)))
        graph = st.graph
        t1 = time.perf_counter()
        seconds["trace"] = t1 - t0
        nodes = {"trace": len(graph.live(st.outputs))}
        if owner._grad:
            nums, spec = self._grad_signature(owner, len(args), st.arg_trees, st.arg_shapes)
            y = _scalar_output(st, name, "compile_grad")
            offsets = _slices([sum(_size(s) for s in shp) for shp in st.arg_shapes])
            wrt = [v for k in nums for v in st.variables[offsets[k]]]
            logs.stage("ad", f"{nodes['trace']} nodes")
            with _tracing(graph, name):
                bars = vjp_nodes(graph, [y], [graph.const(1.0)], wrt)
            outputs = [y] + [b if b is not None else graph.const(0.0) for b in bars]
            graph.outputs = outputs
            seconds["ad"] = time.perf_counter() - t1
            nodes["ad"] = len(graph.live(outputs))
            self.grad_graph = graph
        else:
            outputs = list(st.outputs)
            seconds["ad"] = 0.0
            self.grad_graph = None
            self._simple_grad = False
            self._graph = graph
            self.out_tree, self.out_shapes = st.out_tree, st.out_shapes
            spec = _result_spec(st.out_tree, st.out_shapes, 0)
        self.outputs = outputs
        self.n_out = len(outputs)
        self._build_native(owner, graph, outputs, self._entry_spec(spec), seconds, nodes)

    def _build_native(self, owner, graph, outputs, spec, seconds, nodes) -> None:
        from symad.codegen import batch_entry, builder, jit, lower, py_entry

        flags = lower.fastmath_flags(owner._fastmath)
        self._py_spec = spec     # kept for pickling: the restored copy emits the same entries
        if not py_entry.fast_entry_supported():
            spec = None
        live = self.n_nodes = len(graph.live(outputs))
        levels = jit.choose_levels(live, owner._opt_level)
        leaf_sizes = (tuple(self.sizes), tuple(_size(s) for s in self.out_leaf_shapes))
        # Everything the emitted entries bake in: the fast entry checks the argument
        # shapes and builds the results from the spec, the batch entry strides by the leaf
        # sizes, and "auto" picks the single-call machine-code level by itself. Two
        # functions with one graph but other shapes must not share an entry (a (6,)
        # entry would accept f's (6,) arguments, which f traces differently).
        key = hashlib.sha256(repr((
            graph.fingerprint(outputs), len(graph.inputs), flags, levels,
            owner._opt_level in (None, "auto"), spec, tuple(self.shapes),
            tuple(tuple(s) for s in self.out_leaf_shapes), leaf_sizes)).encode()).hexdigest()
        with _CACHE_LOCK:
            native = _CACHE.get(key)
        cached = native is not None
        if native is None:
            t0 = time.perf_counter()
            logs.stage("lowering", f"{live} nodes")
            base = f"symad_{_safe_name(owner.__name__)}"
            module = jit.new_module(base)
            # The single-call kernel runs repeated stretches as loops when that shrinks it
            # (codegen/roll.py): small code compiles at full optimisation in milliseconds.
            try:
                plan = lower.rolled_plan(graph, outputs) if live > ROLL_MIN_NODES else None
            except NotImplementedError as exc:
                raise SymadError(f"cannot compile {owner.__name__}: {exc}") from exc
            # Everything LLVM compiles counts: n constant outputs stored one by one cost
            # it as much as n nodes (now a loop; see roll.output_runs).
            size = plan.emitted_size() if plan is not None else \
                live + lower.extra_stores(graph, outputs)
            call_levels = jit.choose_levels(size, owner._opt_level)
            if owner._opt_level in (None, "auto") and size > FAST_BUILD_NODES:
                call_levels = (call_levels[0], 0)
            rolled_batch = plan is not None and live > ROLLED_BATCH_NODES
            body = _emit_body(lower, module, graph, outputs, f"{base}_kernel.body", flags,
                              owner.__name__, plan)
            kernel = builder.emit_kernel_entry(module, body, f"{base}_kernel")
            py_name = None
            if spec is not None:
                py_name = f"{base}_py"
                py_entry.emit_py_entry(module, kernel, py_name, self.shapes, self.n_out, spec)
            seconds["lowering"] = time.perf_counter() - t0
            symbols = [f"{base}_kernel"] + ([py_name] if py_name else [])
            logs.stage("llvm", f"{size} nodes, O{call_levels[0]} IR, O{call_levels[1]} "
                               "machine code")
            folder = diskcache.cache_dir(owner._cache)

            def compile_llvm(module, symbols, content_key, levels, unroll=True):
                if folder is None:
                    return jit.compile_module(module, symbols, speed_level=levels[0],
                                              codegen_level=levels[1], unroll=unroll)
                return diskcache.compile_module(folder, content_key, module, symbols,
                                                speed_level=levels[0],
                                                codegen_level=levels[1], unroll=unroll)

            mod = compile_llvm(module, symbols, key, call_levels, unroll=plan is None)
            seconds.update(mod.seconds)
            name = owner.__name__

            def build_batch():
                bmodule = jit.new_module(f"{base}_b")
                use_vector_math = ("afn" in flags or "fast" in flags) and \
                    jit.vector_math_available(lower.vector_symbols(graph, outputs))
                if rolled_batch:
                    from symad.codegen.roll import batch_plan
                    bplan = batch_plan(graph, outputs, plan)    # for four points at once
                    vector = lower.emit_rolled(bmodule, bplan, outputs, f"{base}_kernel4",
                                               flags, width=4, vector_math=use_vector_math)
                    buffer = lower.rolled_buffer_doubles(bplan, 4)
                    batch_entry.emit_batch(bmodule, None, f"{base}_batch", *leaf_sizes,
                                           vector, kernel_buffer=buffer)
                    # the buffer size in the key: cached code must match this plan's
                    return compile_llvm(bmodule, [f"{base}_batch"],
                                        f"{key}:batch:{buffer}", call_levels,
                                        unroll=False), f"{base}_batch", buffer
                bbody = _emit_body(lower, bmodule, graph, outputs, f"{base}_kernel.body",
                                   flags, name)
                bbody.attributes.add("alwaysinline")   # one copy, inlined into the loop
                bbody.linkage = "internal"
                vector = None
                if live <= lower.CHUNK_NODES and (
                        use_vector_math or lower.calls_libm(graph, outputs)):
                    # Vector math (libmvec) only under fast-math: a few ulp from scalar
                    # libm. Without it, libm functions are called lane by lane, and the
                    # rest of the kernel still runs four points at once.
                    vector = lower.emit_vector_kernel(bmodule, graph, outputs,
                                                      f"{base}_kernel4", flags,
                                                      vector_math=use_vector_math)
                batch_entry.emit_batch(bmodule, bbody, f"{base}_batch", *leaf_sizes, vector)
                return compile_llvm(bmodule, [f"{base}_batch"], key + ":batch", levels), \
                    f"{base}_batch", 0

            native = _Native(mod, symbols[0], py_name, spec, build_batch)
            native.batch_levels = call_levels if rolled_batch else levels
            if plan is not None:
                native.rolled = {"loops": sum(1 for s in plan.segments
                                              if not isinstance(s, range)),
                                 "rolled_nodes": plan.rolled_nodes,
                                 "body_nodes": plan.body_size()}
            with _CACHE_LOCK:
                native = _CACHE.setdefault(key, native)
        else:
            seconds.update(lowering=0.0, llvm_opt=0.0, machine_code=0.0)
        with _CACHE_LOCK:
            _RECENT[key] = native
            _RECENT.move_to_end(key)
            while len(_RECENT) > _RECENT_MAX:
                _RECENT.popitem(last=False)
        self.native = native
        self._attach_fast_entry(owner)
        nodes["llvm_ir"] = _count_instructions(native.module.llvm_ir)
        nodes["optimized_ir"] = _count_instructions(native.module.optimized_ir)
        self.stats = {"nodes": nodes, "seconds": seconds, "cached": cached,
                      "rolled": native.rolled,
                      "opt_level": {"ir": native.module.speed_level,
                                    "machine_code": native.module.codegen_level,
                                    "batch_ir": native.batch_levels[0],
                                    "batch_machine_code": native.batch_levels[1]},
                      "fastmath": flags, "disk_cache": native.module.disk_cache}
        logs.timings(owner.__name__, self.stats)

    # ---- pickling (by graph, see symad.persist) -----------------------------------------
    def _pickle_state(self) -> dict:
        state = getattr(self, "_state", None)
        if state is None:
            # repr and pickle recurse on nested tuples (two per level of a structure): say
            # so here rather than fail with a RecursionError halfway.
            trees = self.grad_trees if self.is_grad else [self.out_tree]
            for tree in [self.treedef, *trees]:
                if tree_depth(tree) > MAX_PICKLED_DEPTH:
                    raise SymadError(
                        f"cannot pickle {self._owner_name}: its arguments or results are "
                        f"nested over {MAX_PICKLED_DEPTH} levels deep; flatten them (e.g. "
                        "return a list or an array) to pickle it")
            graph = self.grad_graph if self.is_grad else self._graph
            from .persist import graph_table
            state = {"key": self.key, "table": graph_table(graph, self.outputs),
                     "py_spec": self._py_spec, "grad": None, "out": None}
            if self.is_grad:
                state["grad"] = (self.grad_nums, self.single, self.grad_trees,
                                 self.grad_shapes)
            else:
                state["out"] = (self.out_tree, self.out_shapes)
            state["token"] = hashlib.sha256(repr(state).encode()).hexdigest()
            self._state = state
        return state

    @property
    def out_leaf_shapes(self) -> list:
        """Shapes of the flat output leaves: value then gradient leaves, or f's outputs."""
        if self.is_grad:
            return [()] + [s for shp in self.grad_shapes for s in shp]
        return list(self.out_shapes)

    @classmethod
    def _restore(cls, owner: CompiledFunction, state: dict) -> _Specialization:
        """Rebuild from :meth:`_pickle_state` data, which may have been tampered with:
        every field is checked against the others before anything is compiled, and the
        entry's result spec is derived again from the checked signature (never trusted)."""
        from .persist import graph_from_table
        fname = owner.__name__
        key = checked_key(state, fname)
        self = cls.__new__(cls)
        self._init_signature(owner, key)
        self.is_grad = state["grad"] is not None
        if self.is_grad != owner._grad:
            raise unpickle_error(fname, "a gradient signature in a compile() function "
                                  "or the reverse")
        graph, outputs = graph_from_table(state["table"])
        self.outputs, self.n_out = outputs, len(outputs)
        if self.is_grad:
            spec = self._checked_grad_signature(owner, state["grad"])
            self.grad_graph, self._graph = graph, None
            self._fwd_table = state["table"]
            n_expected = 1 + sum(_size(s) for shp in self.grad_shapes for s in shp)
        else:
            out = state["out"]
            if not (isinstance(out, tuple) and len(out) == 2):
                raise unpickle_error(fname, "the output structure is not (tree, shapes)")
            out_tree, out_shapes = out
            check_treedef(out_tree, fname, "output structure")
            out_shapes = checked_shapes(out_shapes, fname, "output")
            if count_leaves(out_tree) != len(out_shapes):
                raise unpickle_error(fname, f"the output structure has "
                                      f"{count_leaves(out_tree)} leaves but "
                                      f"{len(out_shapes)} shapes")
            self.grad_graph, self._graph, self._simple_grad = None, graph, False
            self.out_tree, self.out_shapes = out_tree, list(out_shapes)
            spec = _result_spec(out_tree, self.out_shapes, 0)
            n_expected = sum(_size(s) for s in self.out_shapes)
        if len(graph.inputs) != self.n_in or self.n_out != n_expected:
            raise SymadError(f"cannot unpickle {fname}: the graph has "
                             f"{len(graph.inputs)} inputs and {self.n_out} outputs, its "
                             f"signature needs {self.n_in} and {n_expected}")
        # Derived, so every index and ArrayOut range lies inside the output buffer; a
        # pickled spec that differs was not written by this signature.
        spec = self._entry_spec(spec)
        if repr(spec) != repr(state["py_spec"]):
            raise unpickle_error(fname, f"the result spec {state['py_spec']!r:.200} does "
                                  f"not match its signature (expected {spec!r:.200})")
        self._state = state
        self._build_native(owner, graph, outputs, spec, {"trace": 0.0, "ad": 0.0},
                           {"trace": len(graph.live(outputs))})
        return self

    def _checked_grad_signature(self, owner: CompiledFunction, grad):
        """Set the gradient signature from the argument structure and the owner's
        ``argnums`` (as a compile does); the pickled one must agree. Returns the spec."""
        fname = owner.__name__
        arg_trees = list(self.treedef[1])
        arg_shapes, pos = [], 0
        for td in arg_trees:
            n = count_leaves(td)
            arg_shapes.append(list(self.shapes[pos:pos + n]))
            pos += n
        nums, spec = self._grad_signature(owner, len(arg_trees), arg_trees, arg_shapes)
        expected = (nums, self.single, self.grad_trees, self.grad_shapes)
        if not (isinstance(grad, tuple) and len(grad) == 4) or \
                repr(tuple(grad)) != repr(expected):
            raise unpickle_error(fname, f"the gradient signature {grad!r:.200} does not "
                                  "match the arguments and argnums")
        return spec

    @property
    def graph(self):
        table: Any = getattr(self, "_fwd_table", None)
        if self._graph is None and table is not None:   # unpickled: the forward part
            from .persist import graph_from_table
            g, outs = graph_from_table(table)
            g.outputs = outs[:1]
            self._graph = g
        if self._graph is None:   # re-trace the forward function (the AD graph extends it)
            from .api import trace_call
            self._graph = trace_call(self._f, self._example).graph
        return self._graph

    # ---- calling ----------------------------------------------------------------------
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
                pos += _size(s)
            return tree_unflatten(self.out_tree, leaves)
        value = leaf(flat, 0, ())
        pos, per_arg = 1, []
        for td, shapes in zip(self.grad_trees, self.grad_shapes):
            leaves = []
            for s in shapes:
                leaves.append(leaf(flat, pos, s))
                pos += _size(s)
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
        chunks = _batch_chunks(n, self.n_nodes, threads)
        scratch = np.zeros(per * chunks + 8)   # zeros: no denormal garbage
        sp = scratch.__array_interface__["data"][0]
        sp += -sp % 64            # aligned: no vector of the tile straddles two lines
        ip, op = in_ptrs.ctypes.data, out_ptrs.ctypes.data
        if chunks == 1:
            fn(ip, op, 0, n, sp)      # ctypes releases the GIL during the call
        else:
            bounds = [n * i // chunks for i in range(chunks + 1)]
            _run_parallel(_pool(chunks), fn, [(ip, op, a, b, sp + 8 * per * c) for c, (a, b)
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


# Array programs that compute at least ARRAY_MIN_ELEMENTS elements, ARRAY_MIN_LENGTH per
# numpy operation on average (the traced function, before differentiation), compile
# their single-call and batch kernels from the array-level graph (``symad.arrays``):
# tracing, AD and lowering then cost per numpy operation, not per element, and the
# kernel is a few loops. Measured value+grad (build s, single call us, batch of 10^4
# M points/s; scalar graph -> array graph): Lennard-Jones 64 (40k elements) 1.25 ->
# 0.06 s, 11.4 -> 9.9 us; Lennard-Jones 12 (1.3k, 55 per operation) 0.13 -> 0.045 s,
# 0.80 -> 0.74 us, 6.5 -> 7.7; Lennard-Jones 8 (561, 23) 0.096 -> 0.047 s, 0.60 -> 0.59
# us, 14.2 -> 16.4; Rosenbrock 100 (892, 69) 0.057 -> 0.040 s, 0.52 -> 0.56 us, 5.4 ->
# 11.5; Rosenbrock 50 (442, 34) 0.085 -> 0.039 s, 0.54 -> 0.48 us, 22.7 -> 23.9. Below:
# Rosenbrock 20 (172 elements) about even; the 4-8-1 network loss (2.2k elements, 15 per
# operation: short loops) 0.13 -> 0.12 s, 2.52 -> 2.49 us, but 2.10 -> 1.64 in batches.
ARRAY_MIN_ELEMENTS = 400
ARRAY_MIN_LENGTH = 20


def _specialization(owner: CompiledFunction, key, args: tuple) -> _Specialization:
    """The array-level specialization when it applies (``ARRAY_MIN_ELEMENTS``), else the
    scalar one: unrolled from the array-level trace when there is one, else traced by the
    scalar tracer."""
    array_trace = None
    if any(s != () for s in key[1]):
        spec = _ArraySpecialization.attempt(owner, key, args)
        if isinstance(spec, _Specialization):
            return spec
        array_trace = spec
    return _Specialization(owner, key, args, array_trace)


class _ArraySpecialization(_Specialization):
    """Single calls and batches from an array-level graph; the scalar specialization
    (graphs to inspect, pickling) is built from the same arguments when first needed."""

    _owner: Any
    _flags: tuple
    _scalar_spec: _Specialization | None
    array_graph: Any
    array_outputs: list

    @classmethod
    def attempt(cls, owner: CompiledFunction, key, args: tuple):
        """The array-level specialization; or, when the policy prefers element-by-element
        code, the array-level trace to unroll; or None if the array level cannot trace
        the function."""
        from . import arrays
        t0 = time.perf_counter()
        shapes = key[1]
        try:
            tr = arrays.trace_call(owner._f, args, shapes)
        except arrays.Unsupported as exc:
            logs.log.debug("symad: %s: the scalar graph (array level: %s)",
                           owner.__name__, str(exc)[:200])
            return None
        t1 = time.perf_counter()
        graph = tr.graph
        # decided on the traced function alone, before any work on its derivative
        elements = tr.elements(tr.outputs)
        if elements < ARRAY_MIN_ELEMENTS or \
                elements < ARRAY_MIN_LENGTH * len(graph.live(tr.outputs)):
            return tr
        self = cls.__new__(cls)
        self._init_signature(owner, key)
        self._owner = owner
        self._graph = None
        self._scalar_spec = None
        self.is_grad = owner._grad
        if owner._grad:
            per_arg = [tree_flatten(a, "") for a in args]
            starts = np.cumsum([0] + [len(leaves) for leaves, _, _ in per_arg])
            nums, spec = self._grad_signature(
                owner, len(args), [td for _, td, _ in per_arg],
                [shapes[starts[k]:starts[k + 1]] for k in range(len(args))])
            if tr.out_shapes != [()]:
                return tr           # the scalar path explains what is wrong
            wrt = [tr.inputs[j] for k in nums for j in range(starts[k], starts[k + 1])]
            y = tr.outputs[0]
            bars = arrays.vjp(graph, y, wrt)
            outputs = [y] + [b if b is not None else graph.const(np.zeros(w.size))
                             for b, w in zip(bars, wrt)]
        else:
            outputs = list(tr.outputs)
            self._simple_grad = False
            self.out_tree, self.out_shapes = tr.out_tree, tr.out_shapes
            spec = _result_spec(tr.out_tree, tr.out_shapes, 0)
        elements = tr.elements(outputs)
        live = len(graph.live(outputs))
        t2 = time.perf_counter()
        self.n_out = sum(o.size for o in outputs)
        from symad.codegen import arrays as array_lower
        from symad.codegen import builder, jit, lower, py_entry
        spec = self._py_spec = self._entry_spec(spec)
        if not py_entry.fast_entry_supported():
            spec = None
        flags = lower.fastmath_flags(owner._fastmath)
        levels = jit.choose_levels(live, owner._opt_level)
        base = f"symad_{_safe_name(owner.__name__)}"
        module = jit.new_module(base)
        body = array_lower.emit_kernel(module, graph, outputs, f"{base}_kernel.body", flags)
        kernel = builder.emit_kernel_entry(module, body, f"{base}_kernel")
        py_name = None
        if spec is not None:
            py_name = f"{base}_py"
            py_entry.emit_py_entry(module, kernel, py_name, self.shapes, self.n_out, spec)
        t3 = time.perf_counter()
        symbols = [f"{base}_kernel"] + ([py_name] if py_name else [])
        # Its loops are written to be vectorised as they are: no unrolling, no SLP.
        mod = jit.compile_module(module, symbols, speed_level=levels[0],
                                 codegen_level=levels[1], unroll=False)
        self.n_nodes = elements          # the work per point, for splitting batches
        self._flags = flags
        self.native = native = _Native(mod, symbols[0], py_name, spec, self._array_batch)
        native.batch_levels = levels
        self._attach_fast_entry(owner)
        self.stats = {
            "nodes": {"trace": len(graph.live(tr.outputs)), "ad": live, "elements": elements,
                      "llvm_ir": _count_instructions(mod.llvm_ir),
                      "optimized_ir": _count_instructions(mod.optimized_ir)},
            "seconds": {"trace": t1 - t0, "ad": t2 - t1, "lowering": t3 - t2,
                        **mod.seconds},
            "cached": False, "rolled": None, "array_level": True,
            "opt_level": {"ir": mod.speed_level, "machine_code": mod.codegen_level,
                          "batch_ir": levels[0], "batch_machine_code": levels[1]},
            "fastmath": flags, "disk_cache": None}
        self.array_graph, self.array_outputs = graph, outputs
        graph.outputs = list(outputs)
        logs.timings(owner.__name__, self.stats)
        return self

    def scalar(self) -> _Specialization:
        """The scalar-graph specialization of the same signature (built once)."""
        spec = self._scalar_spec
        if spec is None:
            owner = self._owner
            with owner._lock:
                if self._scalar_spec is None:
                    from . import arrays
                    tr = arrays.trace_call(self._f, self._example, self.shapes)
                    self._scalar_spec = _Specialization(owner, self.key, self._example, tr)
                spec = self._scalar_spec
        return spec

    def _array_batch(self):
        """The batch entry: the array graph over four points at once, one per vector
        lane, each point computed as a single call computes it."""
        from symad.codegen import arrays as array_lower
        from symad.codegen import batch_entry, jit, lower
        from symad.ops import OPS, Intrinsic, Libm
        graph, outputs, flags = self.array_graph, self.array_outputs, self._flags
        base = f"symad_{_safe_name(self._owner_name)}"
        module = jit.new_module(f"{base}_b")
        symbols = {lower.vector_symbol(OPS[n.op].lower, OPS[n.op].arity)
                   for n in graph.live(outputs) if n.op in OPS and
                   isinstance(OPS[n.op].lower, (Intrinsic, Libm))} - {None}
        vector_math = ("afn" in flags or "fast" in flags) and \
            jit.vector_math_available(sorted(symbols))
        kernel = array_lower.emit_kernel(module, graph, outputs, f"{base}_kernel4", flags,
                                         width=4, vector_math=vector_math)
        # (at least one double: the kernel always takes its buffer argument)
        buffer = max(array_lower.buffer_doubles(graph, outputs, 4), 1)
        leaf_sizes = (tuple(self.sizes), tuple(_size(s) for s in self.out_leaf_shapes))
        batch_entry.emit_batch(module, None, f"{base}_batch", *leaf_sizes, kernel,
                               kernel_buffer=buffer)
        levels = self.native.batch_levels
        mod = jit.compile_module(module, [f"{base}_batch"], speed_level=levels[0],
                                 codegen_level=levels[1], unroll=False)
        return mod, f"{base}_batch", buffer

    # The graphs shown are the array-level graph the kernel was compiled from (its IR's
    # ``%vN`` are their ``%N``): the gradient's extends the forward trace, and the forward
    # graph is traced again on its own (cheap at this level), as the scalar one is.
    @property  # type: ignore[override]
    def grad_graph(self):
        return self.array_graph if self.is_grad else None

    @property
    def graph(self):
        if self._graph is None:
            from . import arrays
            tr = arrays.trace_call(self._f, self._example, self.shapes)
            tr.graph.outputs = list(tr.outputs)
            self._graph = tr.graph
        return self._graph

    @property  # type: ignore[override]
    def outputs(self):
        return self.scalar().outputs

    def _pickle_state(self) -> dict:
        return {**self.scalar()._pickle_state(), "array": True}



# ``threads=None`` splits a batch over the CPU cores once it holds this many
# point x value evaluations (below, a thread pool hand-off costs more than it saves).
AUTO_THREADS_WORK = 10_000_000


def _batch_chunks(n: int, width: int, threads) -> int:
    if threads is None:
        if n * width < AUTO_THREADS_WORK:
            return 1
        threads = min(os.cpu_count() or 1, 8)
    threads = int(threads)
    return 1 if threads <= 1 or n < 2 * threads else threads


def _run_parallel(pool, fn, calls: list) -> None:
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


def _count_instructions(text: str) -> int:
    return sum(1 for line in text.splitlines()
               if line.startswith("  ") and not line.lstrip().startswith(";"))


class CompiledFunction:
    """A function compiled to native code, specialised per argument structure and shapes.

    Calling it runs native code: for ``compile_grad`` it returns ``(value, gradient)``
    with the gradient in the structure of the differentiated arguments; for ``compile``
    it returns ``f``'s output structure. Inspection attributes describe the most recently
    compiled specialization: ``graph``, ``grad_graph``, ``llvm_ir``, ``optimized_ir``,
    ``asm``, ``stats``. At most ``max_specializations`` signatures keep native code
    (least recently used dropped first, compiled again when called); ``clear()`` drops
    them all.
    """

    def __init__(self, f: Callable, *, grad: bool, argnums=None, fastmath=False,
                 opt_level="auto", cache=None, max_specializations=None):
        if not callable(f):
            raise TypeError(f"expected a function to compile, got {type(f).__name__}")
        if max_specializations is None:
            max_specializations = MAX_SPECIALIZATIONS
        if type(max_specializations) is not int or max_specializations < 1:
            raise OptionError(f"max_specializations must be a positive int (or None for "
                             f"MAX_SPECIALIZATIONS = {MAX_SPECIALIZATIONS}), not "
                             f"{max_specializations!r}")
        functools.update_wrapper(self, f)
        name = getattr(self, "__name__", type(f).__name__)
        self._f = f
        self._grad = grad
        if argnums is not None and argnums is not _ALL_BY_DEFAULT:
            argnums = options.check_argnums(argnums, name)
        self._argnums = argnums
        self._fastmath = options.check_fastmath(fastmath, name)
        self._opt_level = options.check_opt_level(opt_level, name)
        if not (cache is None or isinstance(cache, (bool, str, os.PathLike))):
            raise OptionError(f"cache={cache!r} for {name}: expected None (follow "
                              f"${diskcache.ENV_VAR}), True, False or a folder path")
        diskcache.cache_dir(cache)
        self._cache = cache
        # key -> specialization; each has a ``used`` tick (bounded, see _admit)
        self._specs: dict = {}
        self._max_specs = max_specializations
        self._last: _Specialization | None = None
        self._lock = threading.RLock()
        _FORK_RENEW.add(self)
        self._entry = self._slow_call
        if not hasattr(self, "__name__"):
            self.__name__ = type(f).__name__

    def __call__(self, *args):
        return self._entry(*args)

    def _warn_default_argnums(self, nargs: int) -> None:
        if getattr(self, "_warned_argnums", False):
            return
        self._warned_argnums = True
        import warnings
        warnings.warn(
            f"compile_grad({self.__name__}) differentiates all {nargs} arguments because "
            "no argnums was given; symad.grad and jax.grad differentiate argument 0, and "
            "compile_grad's default will become argnums=0. Pass argnums=None to keep "
            "differentiating every argument, or argnums=0 (or a tuple) to choose.",
            FutureWarning, stacklevel=_user_stacklevel())

    def _slow_call(self, *args):
        leaves, key = _flatten_call(args)
        spec = self._used(key)
        if spec is None:
            spec = self._specialize(key, args)
        return spec.call(leaves)

    def _used(self, key) -> _Specialization | None:
        """The specialization for ``key``, marked most recently used, or None."""
        spec = self._specs.get(key)
        if spec is not None:
            spec.used = _tick()  # for eviction (cheaper than reordering: one hash less)
        return spec

    def _spec_for(self, key) -> _Specialization:
        """The specialization for ``key``, compiled again from zeros if it was evicted."""
        spec = self._used(key)
        if spec is None:
            treedef, shapes = key
            spec = self._specialize(key, tree_unflatten(
                treedef, [0.0 if s == () else np.zeros(s) for s in shapes]))
        return spec

    def _specialize(self, key, args) -> _Specialization:
        with self._lock:
            spec = self._specs.get(key)
            if spec is None:
                if isinstance(self._f, Unavailable):
                    raise self._f.error(key)
                with logs.watch(self.__name__):
                    enabled = gc.isenabled()
                    gc.disable()     # see _Specialization.__init__
                    try:
                        spec = _specialization(self, key, args)
                    finally:
                        if enabled:
                            gc.enable()
                self._admit(key, spec)
            self._last = spec
            return spec

    def _admit(self, key, spec: _Specialization) -> None:
        """Add ``spec`` (under ``self._lock``), evicting the least recently used ones
        beyond ``max_specializations``: each holds a JIT engine (~1.3 MB)."""
        specs = self._specs
        specs[key] = spec
        spec.used = _tick()
        if spec.fast is not None and self._entry == self._slow_call:
            self._entry = spec.fast
        dropped = []
        while len(specs) > self._max_specs:
            # Calls through the fast entry never tick, so its specialization looks
            # unused: it goes last, when nothing else is left to evict.
            others = [k for k, s in specs.items() if s is not spec]
            victim = min(others, key=lambda k: (specs[k].fast is not None and
                                                specs[k].fast is self._entry,
                                                specs[k].used))
            old = specs.pop(victim)
            if old.fast is not None and old.fast is self._entry:
                self._entry = spec.fast if spec.fast is not None else self._slow_call
            if self._last is old:
                self._last = spec
            dropped.append(old)
        _forget_natives(dropped)

    def clear(self) -> None:
        """Drop every specialization and its native code (unless another live function
        shares it): the next call traces and compiles again. Pickling afterwards carries
        no specialization."""
        with self._lock:
            dropped = list(self._specs.values())
            self._specs.clear()
            self._last = None
            self._entry = self._slow_call
        with _CACHE_LOCK:
            # unpickling the same bytes again must rebuild them, not return this one
            for token in [t for t, cf in RESTORED.items() if cf is self]:
                del RESTORED[token]
        _forget_natives(dropped)

    def batch(self, *args, threads: int | None = None, out=None):
        """Evaluate at N points in one native call (the leading axis of every leaf).

        Args:
            *args: the arguments, each leaf with an extra leading axis of length N.
            threads: split the batch over this many threads (native code runs without
                the GIL).
            out: arrays to write the results to, in the structure of the result (for
                ``compile_grad``: ``(values, gradients)``), each C-contiguous float64 of
                shape ``(N,) + leaf shape``; they are returned. Reusing them across calls
                saves allocating (and the kernel first-touching) fresh result memory,
                which dominates large batches of large gradients.

        With a ``dask.array`` leaf the batch is lazy and distributed: one native batch
        per chunk of points, results are dask arrays (see :mod:`symad.dask_batch`).

        Transcendentals (sin, exp, log, tanh, erf, ...) run through scalar libm, lane by
        lane, so every point equals a single call bit for bit. A function compiled with
        ``fastmath=("afn",)`` calls glibc's vector math library (libmvec) for them
        instead where the CPU has AVX2, four points at once, within a few ulp: several
        times faster on batches dominated by such functions, arithmetic still IEEE.

        Returns:
            Like a single call, with a leading axis N on every output leaf.
        """
        threads = options.check_threads(threads, self.__name__)
        leaves, treedef, paths = tree_flatten(args, "")
        if not leaves:
            raise TypeError(f"{self.__name__}.batch needs at least one array argument")
        if any(type(leaf).__module__.startswith("dask.") for leaf in leaves):
            if out is not None:
                raise OptionError(f"{self.__name__}.batch: out= is not supported with dask "
                                  "arrays (the results are lazy dask arrays)")
            from .dask_batch import dask_batch  # lazy dask arrays in, lazy dask arrays out
            return dask_batch(self, leaves, treedef, paths)
        arrays = []
        for leaf, path in zip(leaves, paths):
            shape = _leaf_info(leaf, path)
            if shape == ():
                raise ValueError(f"batch argument {path} is a scalar; every leaf needs a "
                                 "leading axis of points, e.g. an array of shape (N,)")
            arrays.append(np.asarray(leaf, dtype=np.float64))
        n = arrays[0].shape[0]
        for a, path in zip(arrays, paths):
            if a.shape[0] != n:
                raise ValueError(f"batch argument {path} has {a.shape[0]} points but "
                                 f"{paths[0] or '[0]'} has {n}; all leading axes must agree")
        key = (treedef, tuple(a.shape[1:] for a in arrays))
        spec = self._used(key)
        if spec is None:
            example = tree_unflatten(treedef, [a[0] if n else np.zeros(a.shape[1:])
                                               for a in arrays])
            spec = self._specialize(key, example)
        if out is not None:
            out = spec.check_out(out, n, arrays, self.__name__)
        return spec.batch(arrays, n, threads, out)

    def _latest(self) -> _Specialization:
        if self._last is None:
            raise SymadError(f"{self.__name__} is compiled lazily for the shapes of its "
                             "arguments: call it once (or .batch) before inspecting it")
        return self._last

    @property
    def graph(self):
        """The forward graph (the traced function)."""
        return self._latest().graph

    @property
    def grad_graph(self):
        """The extended graph: forward and adjoint nodes (``None`` for ``compile``)."""
        return self._latest().grad_graph

    @property
    def llvm_ir(self) -> str:
        return self._latest().native.text("llvm_ir")

    @property
    def optimized_ir(self) -> str:
        return self._latest().native.text("optimized_ir")

    @property
    def asm(self) -> str:
        return self._latest().native.text("asm")

    @property
    def stats(self) -> dict:
        """Node counts per stage and seconds per stage (trace, ad, lowering, llvm_opt,
        machine_code) of the latest specialization."""
        return self._latest().stats

    # ---- pickling: by graph and options, never by machine code ----------------------------
    def __reduce__(self):
        return (restore_compiled, (self._pickle_state(),))

    def _pickle_state(self) -> dict:
        with self._lock:
            specs = [spec._pickle_state() for spec in self._specs.values()]
            last = self._last.key if self._last is not None else None
        function = pickle_function(self._f)
        # The cache folder stays here (None in its slot): it names a path on this machine,
        # and a receiving process (a Dask worker) follows its own SYMAD_CACHE_DIR.
        options = (self.__name__, self._grad, self._argnums, self._fastmath,
                   self._opt_level, None)
        token = hashlib.sha256(repr((options, function, [s["token"] for s in specs],
                                     self._max_specs)).encode()).hexdigest()
        return {"format": PICKLE_FORMAT, "options": options, "function": function,
                "specs": specs, "last": last, "token": token,
                "max_specializations": self._max_specs}

    def __repr__(self) -> str:
        kind = "compile_grad" if self._grad else "compile"
        return f"<symad {kind} {self.__name__}: {len(self._specs)} specialization(s)>"


# Pickles written before the pickling code moved to symad.persist name this function.
_restore_compiled = restore_compiled
_RESTORED = RESTORED


def compile(f: Callable, *, fastmath=False, opt_level="auto",  # noqa: A001
            cache=None, max_specializations=None) -> CompiledFunction:
    """Compile any traceable function to native code.

    Args:
        f: a numeric function of numbers/arrays (or pytrees of them).
        fastmath: ``False`` (IEEE, default), ``True`` (``arcp contract afn reassoc``;
            never ``nnan``/``ninf``, and no rewrite that drops a NaN or an inf: see
            ``codegen.lower.instruction_flags``) or an explicit tuple of LLVM fast-math
            flags.
        opt_level: 0..3, or ``"auto"`` (O3, falling back to cheap code generation for
            very large graphs).
        cache: the on-disk compile cache (:mod:`symad.diskcache`): ``None`` follows the
            environment variable ``SYMAD_CACHE_DIR``, ``True`` enables it, ``False``
            disables it, a path names its folder. Not pickled: an unpickled copy
            follows the receiving process's ``SYMAD_CACHE_DIR``.
        max_specializations: how many argument signatures (structure and shapes) keep
            their native code, least recently used dropped first (each holds a JIT
            engine, ~1.3 MB; a dropped one compiles again when called). ``None``:
            ``symad.compiled.MAX_SPECIALIZATIONS`` (32). ``f.clear()`` drops them all.

    Returns:
        A :class:`CompiledFunction` returning ``f``'s output structure.

    >>> import numpy as np
    >>> g = compile(lambda x, y: np.sin(x) * y)
    >>> round(g(1.0, 2.0), 12)
    1.682941969616
    """
    return CompiledFunction(f, grad=False, fastmath=fastmath, opt_level=opt_level,
                            cache=cache, max_specializations=max_specializations)


class _AllArgumentsByDefault:
    """compile_grad's argnums when none is given: every argument, with a FutureWarning
    where that differs from symad.grad's (and JAX's) default, argument 0."""

    def __repr__(self) -> str:
        return "<every argument, by default>"

    def __reduce__(self):
        return "_ALL_BY_DEFAULT"


_ALL_BY_DEFAULT = _AllArgumentsByDefault()


def compile_grad(f: Callable | None = None, *, argnums=_ALL_BY_DEFAULT, fastmath=False,
                 opt_level="auto", cache=None, max_specializations=None):
    """Compile ``f`` and its gradient into one native function returning both.

    Usable bare (``@compile_grad``) or with options (``@compile_grad(argnums=0)``).

    Args:
        f: a function returning one scalar.
        argnums: an int (that argument's gradient, bare), a tuple of ints (a tuple of
            gradients) or ``None`` (every positional argument: one argument gives its
            gradient bare, several a tuple). Not given, it means ``None`` today, with a
            ``FutureWarning`` for functions of several arguments: the default will become
            ``0``, as for :func:`symad.grad` (and JAX). Pass it to choose.
        fastmath, opt_level, cache, max_specializations: as for :func:`compile`.

    Returns:
        A :class:`CompiledFunction`; calling it returns ``(value, gradient)``.

    Raises:
        TypeError: a non-scalar output, a bad ``argnums`` or non-numeric arguments.

    >>> import numpy as np
    >>> f = compile_grad(lambda x1, x2: np.log(x1) + x1 * x2 - np.sin(x2), argnums=(0, 1))
    >>> f(2.0, 5.0)
    (11.652071455223084, (5.5, 1.7163378145367738))
    """
    def wrap(fn):
        return CompiledFunction(fn, grad=True, argnums=argnums, fastmath=fastmath,
                                opt_level=opt_level, cache=cache,
                                max_specializations=max_specializations)
    return wrap if f is None else wrap(f)
