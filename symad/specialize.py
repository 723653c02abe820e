"""Specializations: one argument signature of a compiled function, traced, differentiated,
planned (``symad/policy.py``), lowered and JIT-compiled (trace -> ad -> **specialize** ->
lower -> jit).

A :class:`Specialization` is built one way: its constructor takes the options and the
signature, then ``traced`` (a call), ``restored`` (an unpickled state) or
:meth:`ArraySpecialization.attempt` (the array-level graph) fills it in, and all three
compile through :func:`build`, which writes the caches, the fast entry and ``stats``
once. Native code is shared through a cache keyed by ``Graph.fingerprint`` of the
compiled outputs, the options and the signature, so compiling the same function twice
does no LLVM work. Calls run through :class:`symad.runtime.Runtime`.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import hashlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import diskcache, logs, policy
from .errors import SymadError
from .kernels import Kernels, array_kernels, scalar_kernels
from .persist import (
    MAX_PICKLED_DEPTH,
    check_treedef,
    checked_key,
    checked_shapes,
    count_leaves,
    tree_depth,
    unpickle_error,
)
from .runtime import MAX_ENTRY_DEPTH, Runtime, result_spec, size_of, spec_depth
from .tree import tree_flatten, tree_unflatten

_CACHE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # key -> _Native
_RECENT: collections.OrderedDict = collections.OrderedDict()  # strong refs, bounded LRU
_RECENT_MAX = 64
_CACHE_LOCK = threading.Lock()
# Objects whose ``_lock`` a forked child replaces, with the factory of a new one.
_FORK_RENEW: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def renew_lock_after_fork(obj, factory=threading.Lock) -> None:
    """Give ``obj`` a fresh ``_lock`` from ``factory`` in a forked child."""
    _FORK_RENEW[obj] = factory


def _after_fork_in_child() -> None:
    """Fresh locks in a forked child.

    A parent thread may hold any of these locks at the fork (compiling under a function's
    lock, say); it does not exist in the child, so the lock would never be released. They
    are renewed rather than held across the fork like LLVM's (codegen/jit.py): a thread
    under ``_CACHE_LOCK`` may free an engine through LLVM's lock, so the fork would have
    to take them first, but jit's hook, registered later, runs first. The state they
    guard is consistent between bytecodes, and the child runs only the forking thread.
    """
    global _CACHE_LOCK
    _CACHE_LOCK = threading.Lock()
    for obj, factory in list(_FORK_RENEW.items()):
        obj._lock = factory()


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True, eq=False)
class CompileOptions:
    """What a specialization needs from its CompiledFunction, read once per compile."""
    name: str
    f: Callable
    grad: bool
    argnums: Any                  # checked; None: every argument
    default_argnums: bool         # argnums was not given (compile_grad's FutureWarning)
    fastmath: Any
    opt_level: Any
    cache: Any
    fallback: Callable            # the Python call path the fast entry falls back to
    warn_default_argnums: Callable[[int], None]


@contextlib.contextmanager
def gc_paused():
    """Tracing and AD allocate a node object per value, linked both ways to their graph:
    the collector's full passes over them cost 10-20% of a build (measured: Rosenbrock
    1000 0.245 -> 0.205 s) and find nothing to free while it runs."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Native:
    """Native code for one graph: the JIT module (owns the engine) and its entries.

    The batch entry is a second module, compiled at the first ``batch`` call: its
    vectorised loop with an inlined copy of the kernel costs as much LLVM time as the rest
    together (measured: closed form 33 -> 15 ms, Rosenbrock n=100 0.47 -> 0.19 s), and a
    function that is only ever called point by point never needs it.
    """

    __slots__ = ("module", "kernel", "py_address", "py_name", "py_spec", "_build_batch",
                 "_batch", "batch_module", "_lock", "rolled", "batch_buffer", "batch_levels",
                 "plan", "__weakref__")

    def __init__(self, module, kernel_name: str, py_name: str | None, py_spec, build_batch,
                 plan: policy.KernelPlan, rolled: dict | None = None):
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
        renew_lock_after_fork(self)
        self.plan = plan
        # {"loops", "rolled_nodes", "body_nodes"} of a rolled kernel (codegen/roll.py)
        self.rolled = rolled
        self.batch_buffer = 0    # doubles of scratch the batch kernel needs per thread
        self.batch_levels = plan.batch_levels  # (IR, machine code) of the batch entry

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


def forget_natives(specs: list) -> None:
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


def _remember(key: str, native: _Native) -> None:
    with _CACHE_LOCK:
        _RECENT[key] = native
        _RECENT.move_to_end(key)
        while len(_RECENT) > _RECENT_MAX:
            _RECENT.popitem(last=False)


def _safe_name(name: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return s or "f"


def _count_instructions(text: str) -> int:
    return sum(1 for line in text.splitlines()
               if line.startswith("  ") and not line.lstrip().startswith(";"))


def _compiler(folder: str | None):
    """``compile(module, symbols, content_key, levels, unroll)``: JIT, through the disk
    cache in ``folder`` when there is one."""
    from symad.codegen import jit

    def compile_llvm(module, symbols, content_key, levels, unroll=True):
        if folder is None:
            return jit.compile_module(module, symbols, speed_level=levels[0],
                                      codegen_level=levels[1], unroll=unroll)
        return diskcache.compile_module(folder, content_key, module, symbols,
                                        speed_level=levels[0], codegen_level=levels[1],
                                        unroll=unroll)
    return compile_llvm


def build(spec: Specialization, opts: CompileOptions, plan_kernels: Callable[[], Kernels],
          *, key: str | None, flags: tuple, py_spec, seconds: dict, nodes: dict,
          why: str = "", extra_stats: dict | None = None) -> None:
    """Compile ``spec`` (or take its native code from the cache by ``key``; None: not
    cached), attach its fast entry and write its ``stats``."""
    native = None
    if key is not None:
        with _CACHE_LOCK:
            native = _CACHE.get(key)
    cached = native is not None
    if native is None:
        native = _compile(spec, opts, plan_kernels, key, py_spec, seconds)
        if key is not None:
            with _CACHE_LOCK:
                native = _CACHE.setdefault(key, native)
    else:
        seconds.update(lowering=0.0, llvm_opt=0.0, machine_code=0.0)
    if key is not None:
        _remember(key, native)
    spec.native = native
    spec._attach_fast_entry(opts)
    nodes["llvm_ir"] = _count_instructions(native.module.llvm_ir)
    nodes["optimized_ir"] = _count_instructions(native.module.optimized_ir)
    kernel = native.plan.stats()
    if why:
        kernel["reason"] = f"{why}; {kernel['reason']}"
    spec.stats = {"nodes": nodes, "seconds": seconds, "cached": cached,
                  "rolled": native.rolled, **(extra_stats or {}),
                  "opt_level": {"ir": native.module.speed_level,
                                "machine_code": native.module.codegen_level,
                                "batch_ir": native.batch_levels[0],
                                "batch_machine_code": native.batch_levels[1]},
                  "fastmath": flags, "disk_cache": native.module.disk_cache,
                  "kernel": kernel}
    logs.timings(opts.name, spec.stats)


def _compile(spec: Specialization, opts: CompileOptions, plan_kernels, key, py_spec,
             seconds: dict) -> _Native:
    from symad.codegen import builder, jit, py_entry
    t0 = time.perf_counter()
    kernels = plan_kernels()
    plan = kernels.plan
    base = f"symad_{_safe_name(opts.name)}"
    module = jit.new_module(base)
    body = kernels.emit(module, f"{base}_kernel.body")
    kernel = builder.emit_kernel_entry(module, body, f"{base}_kernel")
    py_name = None
    if py_spec is not None:
        py_name = f"{base}_py"
        py_entry.emit_py_entry(module, kernel, py_name, spec.shapes, spec.n_out, py_spec)
    seconds["lowering"] = time.perf_counter() - t0
    symbols = [f"{base}_kernel"] + ([py_name] if py_name else [])
    logs.stage("llvm", f"{kernels.size} nodes, O{plan.levels[0]} IR, O{plan.levels[1]} "
                       "machine code")
    folder = diskcache.cache_dir(opts.cache) if kernels.disk_cache else None
    compile_llvm = _compiler(folder)
    mod = compile_llvm(module, symbols, key, plan.levels, unroll=kernels.unroll)
    seconds.update(mod.seconds)
    return _Native(mod, symbols[0], py_name, py_spec,
                   functools.partial(kernels.batch, base, compile_llvm), plan, kernels.rolled)


def specialization(opts: CompileOptions, key, args: tuple) -> Specialization:
    """The array-level specialization when the policy takes it, else the scalar one (its
    ``stats["kernel"]["reason"]`` says why the array level declined): unrolled from the
    array-level trace when there is one (the function runs once), else traced by the
    scalar tracer."""
    why, array_trace = "", None
    if any(s != () for s in key[1]):
        spec, why, array_trace = ArraySpecialization.attempt(opts, key, args)
        if spec is not None:
            return spec
        if array_trace is not None:
            why += "; its trace unrolled to scalars"
    return Specialization.traced(opts, key, args, why, array_trace)


class Specialization(Runtime):
    """One traced, differentiated and compiled signature of a CompiledFunction.

    ``CompiledFunction.specializations`` lists them. For inspection (read, never assign):

    - ``key``: the signature, ``(treedef, shapes)``: the arguments' structure and the
      shapes of their leaves;
    - ``stats``, ``graph``, ``grad_graph``: as the CompiledFunction's (which shows those
      of its latest specialization);
    - ``fast``: the native entry emitted for this signature (a callable taking the
      function's arguments), or ``None``;
    - ``native``: the native code, shared through the cache by specializations of equal
      graphs; ``native.module`` is the single-call JIT module (its ``llvm_ir``,
      ``optimized_ir`` and ``asm``, without the batch entry's), which owns the LLVM
      engine: a weak reference to it says whether the engine was freed.
    """

    native: Any
    stats: dict
    used = 0       # when last called through the Python path (CompiledFunction._admit)

    def __init__(self, opts: CompileOptions, key):
        """The signature alone: ``traced``, ``restored`` or ``attempt`` compile it."""
        self.key = key
        self.treedef, self.shapes = key
        self.sizes = [size_of(s) for s in self.shapes]
        self.n_in = sum(self.sizes)
        self.is_grad = opts.grad
        self._owner_name = opts.name
        self._example = tree_unflatten(
            self.treedef, [0.0 if s == () else np.zeros(s) for s in self.shapes])
        self._f = opts.f
        self._local = threading.local()
        self.fast = None
        self._graph: Any = None       # the forward graph (built when first asked for)
        self._grad_graph: Any = None
        self._fwd_table: Any = None   # an unpickled forward graph, as a table
        self._outputs: list = []
        self._simple_grad = False
        self._py_spec: Any = None
        self._state: dict | None = None

    @classmethod
    def traced(cls, opts: CompileOptions, key, args: tuple, why: str = "",
               array_trace=None) -> Specialization:
        """Trace ``opts.f`` at ``args`` (of signature ``key``) and compile it; with an
        ``array_trace`` of it, unroll that instead of tracing again."""
        self = cls(opts, key)
        with gc_paused():
            self._build(opts, args, why, array_trace)
        return self

    def scalar(self) -> Specialization:
        """The scalar-graph specialization of this signature (graphs, pickling)."""
        return self

    @property
    def grad_graph(self):
        return self.scalar()._grad_graph if self.is_grad else None

    @property
    def outputs(self) -> list:
        return self.scalar()._outputs

    @property
    def graph(self):
        spec = self.scalar()
        if spec._graph is None and spec._fwd_table is not None:  # unpickled: forward part
            from .persist import graph_from_table
            g, outs = graph_from_table(spec._fwd_table)
            g.outputs = outs[:1]
            spec._graph = g
        if spec._graph is None:   # re-trace the forward function (the AD graph extends it)
            from .api import trace_call
            spec._graph = trace_call(spec._f, spec._example).graph
        return spec._graph

    def _grad_signature(self, opts: CompileOptions, nargs: int, arg_trees, arg_shapes):
        """The differentiated arguments (``argnums``) and the gradient's structure;
        returns ``(argnums as a tuple, the Python entry's result spec or None)``."""
        from .api import _normalize_argnums
        argnums = opts.argnums
        if opts.default_argnums and nargs > 1:
            opts.warn_default_argnums(nargs)
        if argnums is None:
            argnums = 0 if nargs == 1 else tuple(range(nargs))
        nums = _normalize_argnums(argnums, nargs, opts.name)
        self.grad_nums, self.single = nums, isinstance(argnums, int)
        self.grad_trees = [arg_trees[k] for k in nums]
        self.grad_shapes = [list(arg_shapes[k]) for k in nums]
        self._simple_grad = self.single and self.grad_trees[0] == ("leaf",)
        if not all(td == ("leaf",) for td in self.grad_trees):
            return nums, None
        shapes = [shp[0] for shp in self.grad_shapes]
        grad_spec = result_spec(("tuple", (("leaf",),) * len(nums)), shapes, 1)
        return nums, (0, grad_spec[0] if self.single else grad_spec)

    def _entry_spec(self, spec):
        """``spec`` when the CPython fast-call entry can serve this signature (flat
        float/array arguments, at most ``MAX_ENTRY_DOUBLES`` inputs and outputs), else None."""
        from symad.policy import MAX_ENTRY_DOUBLES
        flat_args = self.treedef == ("tuple", tuple(("leaf",) for _ in self.shapes))
        if not flat_args or self.n_in + self.n_out > MAX_ENTRY_DOUBLES:
            return None
        return spec if spec_depth(spec) <= MAX_ENTRY_DEPTH else None

    def _attach_fast_entry(self, opts: CompileOptions) -> None:
        from symad.codegen import py_entry
        native = self.native
        # The entry object holds this list (so its method table and the engine running
        # its code): a call in flight outlives the specialization being evicted.
        self._keepalive: list = [native]
        if native.py_address is not None:
            self.fast = py_entry.make_py_callable(native.py_address, opts.name,
                                                  opts.fallback, native.py_spec,
                                                  self._keepalive)

    # ---- staging: trace, AD, then build ------------------------------------------------
    def _build(self, opts: CompileOptions, args: tuple, why: str, array_trace=None) -> None:
        from .ad import vjp_nodes
        from .api import _scalar_output, _slices, _tracing, trace_call

        name = opts.name
        seconds = {}
        t0 = time.perf_counter()
        logs.stage("trace")
        if array_trace is None:
            st = trace_call(self._f, args)
        else:
            from .api import _arg_names
            from .scalarize import stage_array_trace
            st = stage_array_trace(array_trace, args, name, _arg_names(self._f, len(args)))
        graph = st.graph
        t1 = time.perf_counter()
        seconds["trace"] = t1 - t0
        nodes = {"trace": len(graph.live(st.outputs))}
        if opts.grad:
            nums, spec = self._grad_signature(opts, len(args), st.arg_trees, st.arg_shapes)
            y = _scalar_output(st, name, "compile_grad")
            offsets = _slices([sum(size_of(s) for s in shp) for shp in st.arg_shapes])
            wrt = [v for k in nums for v in st.variables[offsets[k]]]
            logs.stage("ad", f"{nodes['trace']} nodes")
            with _tracing(graph, name):
                bars = vjp_nodes(graph, [y], [graph.const(1.0)], wrt)
            outputs = [y] + [b if b is not None else graph.const(0.0) for b in bars]
            graph.outputs = outputs
            seconds["ad"] = time.perf_counter() - t1
            nodes["ad"] = len(graph.live(outputs))
            self._grad_graph = graph
        else:
            outputs = list(st.outputs)
            seconds["ad"] = 0.0
            self._graph = graph
            self.out_tree, self.out_shapes = st.out_tree, st.out_shapes
            spec = result_spec(st.out_tree, st.out_shapes, 0)
        self._outputs = outputs
        self.n_out = len(outputs)
        self._build_native(opts, graph, outputs, self._entry_spec(spec), seconds, nodes, why)

    def _build_native(self, opts: CompileOptions, graph, outputs, spec, seconds, nodes,
                      why: str = "") -> None:
        from symad.codegen import lower, py_entry

        flags = lower.fastmath_flags(opts.fastmath)
        self._py_spec = spec     # kept for pickling: the restored copy emits the same entries
        if not py_entry.fast_entry_supported():
            spec = None
        live = self.n_nodes = len(graph.live(outputs))
        leaf_sizes = (tuple(self.sizes), tuple(size_of(s) for s in self.out_leaf_shapes))
        # Everything the emitted entries bake in: the fast entry checks the argument
        # shapes and builds the results from the spec, the batch entry strides by the leaf
        # sizes, and "auto" picks the single-call machine-code level by itself. Two
        # functions with one graph but other shapes must not share an entry (a (6,)
        # entry would accept f's (6,) arguments, which f traces differently).
        key = hashlib.sha256(repr((
            graph.fingerprint(outputs), len(graph.inputs), flags,
            policy.choose_levels(live, opts.opt_level), opts.opt_level in (None, "auto"),
            spec, tuple(self.shapes), tuple(tuple(s) for s in self.out_leaf_shapes),
            leaf_sizes)).encode()).hexdigest()
        build(self, opts, functools.partial(scalar_kernels, graph, outputs, live, flags,
                                            opts, key, leaf_sizes),
              key=key, flags=flags, py_spec=spec, seconds=seconds, nodes=nodes, why=why)

    # ---- pickling (by graph, see symad.persist) -----------------------------------------
    def _pickle_state(self) -> dict:
        state = self._state
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
            graph = self._grad_graph if self.is_grad else self._graph
            from .persist import graph_table
            state = {"key": self.key, "table": graph_table(graph, self._outputs),
                     "py_spec": self._py_spec, "grad": None, "out": None}
            if self.is_grad:
                state["grad"] = (self.grad_nums, self.single, self.grad_trees,
                                 self.grad_shapes)
            else:
                state["out"] = (self.out_tree, self.out_shapes)
            state["token"] = hashlib.sha256(repr(state).encode()).hexdigest()
            self._state = state
        return state

    @classmethod
    def restored(cls, opts: CompileOptions, state: dict) -> Specialization:
        """Rebuild from :meth:`_pickle_state` data, which may have been tampered with:
        every field is checked against the others before anything is compiled, and the
        entry's result spec is derived again from the checked signature (never trusted)."""
        from .persist import graph_from_table
        fname = opts.name
        self = cls(opts, checked_key(state, fname))
        if (state["grad"] is not None) != opts.grad:
            raise unpickle_error(fname, "a gradient signature in a compile() function "
                                  "or the reverse")
        graph, outputs = graph_from_table(state["table"])
        self._outputs, self.n_out = outputs, len(outputs)
        if self.is_grad:
            spec = self._checked_grad_signature(opts, state["grad"])
            self._grad_graph = graph
            self._fwd_table = state["table"]
            n_expected = 1 + sum(size_of(s) for shp in self.grad_shapes for s in shp)
        else:
            self._graph = graph
            spec = self._checked_out_signature(fname, state["out"])
            n_expected = sum(size_of(s) for s in self.out_shapes)
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
        with gc_paused():
            self._build_native(opts, graph, outputs, spec, {"trace": 0.0, "ad": 0.0},
                               {"trace": len(graph.live(outputs))})
        return self

    def _checked_out_signature(self, fname: str, out):
        """Set the output structure from a pickled ``(tree, shapes)``; returns the spec."""
        if not (isinstance(out, tuple) and len(out) == 2):
            raise unpickle_error(fname, "the output structure is not (tree, shapes)")
        out_tree, out_shapes = out
        check_treedef(out_tree, fname, "output structure")
        out_shapes = checked_shapes(out_shapes, fname, "output")
        if count_leaves(out_tree) != len(out_shapes):
            raise unpickle_error(fname, f"the output structure has "
                                  f"{count_leaves(out_tree)} leaves but "
                                  f"{len(out_shapes)} shapes")
        self.out_tree, self.out_shapes = out_tree, list(out_shapes)
        return result_spec(out_tree, self.out_shapes, 0)

    def _checked_grad_signature(self, opts: CompileOptions, grad):
        """Set the gradient signature from the argument structure and the owner's
        ``argnums`` (as a compile does); the pickled one must agree. Returns the spec."""
        arg_trees = list(self.treedef[1])
        arg_shapes, pos = [], 0
        for td in arg_trees:
            n = count_leaves(td)
            arg_shapes.append(list(self.shapes[pos:pos + n]))
            pos += n
        nums, spec = self._grad_signature(opts, len(arg_trees), arg_trees, arg_shapes)
        expected = (nums, self.single, self.grad_trees, self.grad_shapes)
        if not (isinstance(grad, tuple) and len(grad) == 4) or \
                repr(tuple(grad)) != repr(expected):
            raise unpickle_error(opts.name, f"the gradient signature {grad!r:.200} does "
                                  "not match the arguments and argnums")
        return spec


class ArraySpecialization(Specialization):
    """Single calls and batches from an array-level graph; the scalar specialization
    (graphs to inspect, pickling) is built from the same arguments when first needed."""

    array_graph: Any
    array_outputs: list

    def __init__(self, opts: CompileOptions, key):
        super().__init__(opts, key)
        self._opts = opts
        self._scalar_spec: Specialization | None = None
        self._lock = threading.Lock()
        renew_lock_after_fork(self)

    @classmethod
    def attempt(cls, opts: CompileOptions, key, args: tuple
                ) -> tuple[ArraySpecialization | None, str, Any]:
        """``(the specialization, "", None)`` when the policy takes the array level for
        this signature, else ``(None, why not, the array-level trace to unroll or None)``."""
        from . import array_trace
        from .ad import vjp_plain
        t0 = time.perf_counter()
        shapes = key[1]
        try:
            tr = array_trace.trace_call(opts.f, args, shapes)
        except array_trace.Unsupported as exc:
            logs.log.debug("symad: %s: the scalar graph (array level: %s)",
                           opts.name, str(exc)[:200])
            return None, f"array level cannot trace it: {str(exc)[:200]}", None
        t1 = time.perf_counter()
        graph = tr.graph
        # decided on the traced function alone, before any work on its derivative
        declined = policy.array_level_declines(tr.elements(tr.outputs),
                                               len(graph.live(tr.outputs)))
        if declined is not None:
            return None, f"array level declined: {declined}", tr
        self = cls(opts, key)
        if opts.grad:
            per_arg = [tree_flatten(a, "") for a in args]
            starts = np.cumsum([0] + [len(leaves) for leaves, _, _ in per_arg])
            nums, spec = self._grad_signature(
                opts, len(args), [td for _, td, _ in per_arg],
                [shapes[starts[k]:starts[k + 1]] for k in range(len(args))])
            if tr.out_shapes != [()]:
                # the scalar path explains what is wrong
                return None, "array level declined: the output is not one number", tr
            wrt = [tr.inputs[j] for k in nums for j in range(starts[k], starts[k + 1])]
            y = tr.outputs[0]
            bars = vjp_plain(graph, [y], [graph.const(1.0)], wrt)
            outputs = [y] + [b if b is not None else graph.const(np.zeros(w.size))
                             for b, w in zip(bars, wrt)]
        else:
            outputs = list(tr.outputs)
            self.out_tree, self.out_shapes = tr.out_tree, tr.out_shapes
            spec = result_spec(tr.out_tree, tr.out_shapes, 0)
        self._compile_arrays(opts, graph, outputs, spec, tr.elements(outputs), (t0, t1),
                             (tr.elements(tr.outputs), len(graph.live(tr.outputs))))
        return self, "", None

    def _compile_arrays(self, opts: CompileOptions, graph, outputs, spec, elements: int,
                        times: tuple, traced: tuple[int, int]) -> None:
        """Compile the array graph's ``outputs`` (``elements``: what they compute;
        ``traced``: elements and nodes of the traced function)."""
        from symad.codegen import lower, py_entry
        t0, t1 = times
        live = len(graph.live(outputs))
        t2 = time.perf_counter()
        self.n_out = sum(o.size for o in outputs)
        spec = self._py_spec = self._entry_spec(spec)
        if not py_entry.fast_entry_supported():
            spec = None
        flags = lower.fastmath_flags(opts.fastmath)
        kplan = policy.choose_kernel(live=live, opt_level=opts.opt_level,
                                     array=traced)
        self.n_nodes = elements          # the work per point, for splitting batches
        leaf_sizes = (tuple(self.sizes), tuple(size_of(s) for s in self.out_leaf_shapes))
        build(self, opts, functools.partial(array_kernels, graph, outputs, flags, kplan,
                                            elements, leaf_sizes),
              key=None, flags=flags, py_spec=spec,
              seconds={"trace": t1 - t0, "ad": t2 - t1},
              nodes={"trace": traced[1], "ad": live, "elements": elements},
              extra_stats={"array_level": True})
        self.array_graph, self.array_outputs = graph, outputs
        graph.outputs = list(outputs)

    # The graphs shown are the array-level graph the kernel was compiled from (its IR's
    # ``%vN`` are their ``%N``): the gradient's extends the forward trace, and the forward
    # graph is traced again on its own (cheap at this level), as the scalar one is.
    @property
    def grad_graph(self):
        return self.array_graph if self.is_grad else None

    @property
    def graph(self):
        if self._graph is None:
            from . import array_trace
            tr = array_trace.trace_call(self._f, self._example, self.shapes)
            tr.graph.outputs = list(tr.outputs)
            self._graph = tr.graph
        return self._graph

    def scalar(self) -> Specialization:
        """The scalar-graph specialization of the same signature (built once)."""
        spec = self._scalar_spec
        if spec is None:
            with self._lock:
                if self._scalar_spec is None:
                    from . import array_trace
                    tr = array_trace.trace_call(self._f, self._example, self.shapes)
                    self._scalar_spec = Specialization.traced(self._opts, self.key,
                                                              self._example, "", tr)
                spec = self._scalar_spec
        return spec

    def _pickle_state(self) -> dict:
        return {**self.scalar()._pickle_state(), "array": True}
