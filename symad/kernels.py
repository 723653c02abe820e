"""The kernels a specialization compiles, as the policy planned them (compiled -> **kernels**).

:class:`Kernels` pairs a :class:`symad.policy.KernelPlan` with how to emit it: the
single-call kernel body and the batch entry, for a scalar graph (straight, chunked or
rolled code; a batch kernel inlined, vectorised over four points, or rolled) or an
array-level graph (fused loops; four points per vector lane in a batch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from . import logs, policy
from .errors import SymadError


@dataclass
class Kernels:
    """What a specialization compiles, as planned (by ``policy.choose_kernel``)."""
    plan: policy.KernelPlan
    emit: Callable            # (module, name) -> the single-call kernel body
    batch: Callable           # (base name, compile_llvm) -> (module, entry name, buffer)
    size: int                 # nodes LLVM compiles for the single call (for the log)
    unroll: bool = True       # LLVM's loop unrolling (off for code that has loops)
    rolled: dict | None = None
    disk_cache: bool = True



def _emit_body(module, graph, outputs, name: str, flags, fname: str, plan=None):
    from symad.codegen import lower
    try:
        return lower.emit_kernel(module, graph, outputs, name, flags, plan)
    except NotImplementedError as exc:
        raise SymadError(f"cannot compile {fname}: {exc}") from exc


def _fast_vector_math(flags) -> bool:
    return "afn" in flags or "fast" in flags


def scalar_kernels(graph, outputs, live: int, flags, opts, key: str,
                    leaf_sizes) -> Kernels:
    """The policy's plan for a scalar graph, and how to emit it."""
    from symad.codegen import lower
    logs.stage("lowering", f"{live} nodes")
    # The single-call kernel runs repeated stretches as loops when that shrinks it
    # (codegen/roll.py): small code compiles at full optimisation in milliseconds.
    try:
        plan = lower.rolled_plan(graph, outputs) if policy.tries_rolling(live) else None
    except NotImplementedError as exc:
        raise SymadError(f"cannot compile {opts.name}: {exc}") from exc
    # Everything LLVM compiles counts: n constant outputs stored one by one cost it as
    # much as n nodes (now a loop; see roll.output_runs).
    straight = live + lower.extra_stores(graph, outputs) if plan is None else None
    ops = live
    if plan is None and live > policy.CHUNK_NODES:
        ops = sum(1 for n in graph.live(outputs) if n.op not in ("const", "input"))
    libm = live <= policy.CHUNK_NODES and lower.calls_libm(graph, outputs)
    kplan = policy.choose_kernel(
        live=live, opt_level=opts.opt_level, ops=ops, straight_size=straight,
        rolled_size=plan.emitted_size() if plan is not None else None,
        calls_libm=libm, fast_vector_math=_fast_vector_math(flags))
    rolled = None
    if plan is not None:
        rolled = {"loops": sum(1 for s in plan.segments if not isinstance(s, range)),
                  "rolled_nodes": plan.rolled_nodes, "body_nodes": plan.body_size()}

    def emit(module, name):
        return _emit_body(module, graph, outputs, name, flags, opts.name, plan)

    batch = functools.partial(_scalar_batch, graph, outputs, plan, kplan, flags, opts.name,
                              key, leaf_sizes, libm)
    size = plan.emitted_size() if plan is not None else (straight or live)
    return Kernels(kplan, emit, batch, size, unroll=plan is None, rolled=rolled)


def _scalar_batch(graph, outputs, plan, kplan: policy.KernelPlan, flags, name: str, key,
                  leaf_sizes, libm: bool, base: str, compile_llvm):
    """The batch entry of a scalar graph: a rolled kernel over four points per call, or
    the straight kernel inlined into the batch loop (with a four-lane copy for libm)."""
    from symad.codegen import batch_entry, jit, lower
    bmodule = jit.new_module(f"{base}_b")
    use_vector_math = _fast_vector_math(flags) and \
        jit.vector_math_available(lower.vector_symbols(graph, outputs))
    if kplan.batch == "rolled":
        from symad.codegen.roll import batch_plan
        bplan = batch_plan(graph, outputs, plan)    # for four points at once
        vector = lower.emit_rolled(bmodule, bplan, outputs, f"{base}_kernel4", flags,
                                   width=4, vector_math=use_vector_math)
        buffer = lower.rolled_buffer_doubles(bplan, 4)
        batch_entry.emit_batch(bmodule, None, f"{base}_batch", leaf_sizes[0],
                               leaf_sizes[1], vector, kernel_buffer=buffer)
        # the buffer size in the key: cached code must match this plan's
        return compile_llvm(bmodule, [f"{base}_batch"], f"{key}:batch:{buffer}",
                            kplan.batch_levels, unroll=False), f"{base}_batch", buffer
    bbody = _emit_body(bmodule, graph, outputs, f"{base}_kernel.body", flags, name)
    bbody.attributes.add("alwaysinline")   # one copy, inlined into the loop
    bbody.linkage = "internal"
    vector = None
    if kplan.batch == "vector" and (use_vector_math or libm):
        # Vector math (libmvec) only under fast-math: a few ulp from scalar libm. Without
        # it, libm functions are called lane by lane, and the rest of the kernel still
        # runs four points at once.
        vector = lower.emit_vector_kernel(bmodule, graph, outputs, f"{base}_kernel4",
                                          flags, vector_math=use_vector_math)
    batch_entry.emit_batch(bmodule, bbody, f"{base}_batch", leaf_sizes[0], leaf_sizes[1],
                           vector)
    return compile_llvm(bmodule, [f"{base}_batch"], key + ":batch", kplan.batch_levels), \
        f"{base}_batch", 0


def array_kernels(graph, outputs, flags, kplan: policy.KernelPlan, elements: int,
                   leaf_sizes) -> Kernels:
    from symad.codegen import arrays as array_lower

    def emit(module, name):
        return array_lower.emit_kernel(module, graph, outputs, name, flags)

    batch = functools.partial(_array_batch, graph, outputs, flags, kplan, leaf_sizes)
    # Its loops are written to be vectorised as they are: no unrolling, no SLP.
    return Kernels(kplan, emit, batch, elements, unroll=False, disk_cache=False)


def _array_batch(graph, outputs, flags, kplan: policy.KernelPlan, leaf_sizes, base: str,
                 compile_llvm):
    """The batch entry: the array graph over four points at once, one per vector lane,
    each point computed as a single call computes it."""
    from symad.codegen import arrays as array_lower
    from symad.codegen import batch_entry, jit, lower
    from symad.ops import OPS, Intrinsic, Libm
    module = jit.new_module(f"{base}_b")
    symbols = {lower.vector_symbol(OPS[n.op].lower, OPS[n.op].arity)
               for n in graph.live(outputs) if n.op in OPS and
               isinstance(OPS[n.op].lower, (Intrinsic, Libm))} - {None}
    vector_math = _fast_vector_math(flags) and jit.vector_math_available(sorted(symbols))
    kernel = array_lower.emit_kernel(module, graph, outputs, f"{base}_kernel4", flags,
                                     width=4, vector_math=vector_math)
    # (at least one double: the kernel always takes its buffer argument)
    buffer = max(array_lower.buffer_doubles(graph, outputs, 4), 1)
    batch_entry.emit_batch(module, None, f"{base}_batch", leaf_sizes[0], leaf_sizes[1],
                           kernel, kernel_buffer=buffer)
    return compile_llvm(module, [f"{base}_batch"], None, kplan.batch_levels,
                        unroll=False), f"{base}_batch", buffer
