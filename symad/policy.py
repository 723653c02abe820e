"""Which kernel a compiled call gets, and every threshold behind it, in one place
(trace -> graph -> ad -> **policy** -> lower -> jit).

A specialization runs one of four single-call kernels, and its batch entry one of four
batch kernels:

- ``"array"``: loops over the array-level graph (``symad.arrays``, ``codegen/arrays.py``);
  its batch runs four points at once, one per vector lane;
- ``"rolled"``: the scalar graph with its repeated stretches as loops (``codegen/roll.py``);
  its batch is rolled too (four points per call) above ``ROLLED_BATCH_NODES``;
- ``"chunked"``: straight-line scalar code split into functions of ``CHUNK_NODES``;
- ``"straight"``: one straight-line function.

The batch of a scalar kernel that is not rolled is ``"vector"`` (the kernel inlined into
the batch loop plus a four-lane copy, for graphs that call libm or vector math) or
``"inlined"`` (the kernel inlined into the batch loop, which LLVM vectorises).

:func:`choose_kernel` makes that choice from counts the caller passes and returns a
:class:`KernelPlan`; ``f.stats["kernel"]`` reports it. Every threshold is defined here
once, with one line of why; the measurements behind them are in DECISIONS.md, keyed by
the constant's name. The back end (``codegen``) reads them from here, so a test changes
one with ``monkeypatch.setattr(policy, NAME, value)``. This module imports neither the
back end nor llvmlite.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- the array level ---------------------------------------------------------------
# Tracing, AD and lowering per numpy operation instead of per element pays once a
# program computes this many elements (the traced function; see DECISIONS.md).
ARRAY_MIN_ELEMENTS = 400
# ... and this many per numpy operation on average: shorter loops lose to scalar code.
ARRAY_MIN_LENGTH = 20

# ---- loops in scalar code (codegen/roll.py) ----------------------------------------------
# Graphs up to this many live nodes are never rolled: straight code runs faster and
# already builds cheaply.
ROLL_MIN_NODES = 1_000
# Roll only when that shrinks the emitted code this many times: a rolled value costs a
# buffer store and loads where straight code keeps it in a register.
ROLL_MIN_GAIN = 4
# The batch entry is rolled too (four points per call) above this many live nodes, where
# straight code would be chunked and run point by point.
ROLLED_BATCH_NODES = 10_000
# A loop needs this many iterations and body nodes to pay for its counter and buffer.
ROLL_MIN_TRIPS = 4
ROLL_MIN_BODY_NODES = 24
# The longest repeating period looked for (a search cost linear in it).
ROLL_MAX_PERIOD = 48
# Among the schedules' plans, code up to this many times the smallest competes on work.
ROLL_LARGER = 3

# ---- straight-line code ----------------------------------------------------------------
# Above this many computing nodes a kernel is split into chunk functions: LLVM's machine
# code time grows superlinearly in the size of one basic block.
CHUNK_NODES = 10_000

# ---- optimisation levels (with opt_level="auto") ----------------------------------------
# Above this many live nodes the single-call kernel gets machine code at O0: register
# allocation at O1+ dominates the build of long straight-line kernels.
FAST_BUILD_NODES = 2_000
# Above this many live nodes: IR O1 and machine code O1 (the kernel is chunked).
MEDIUM_GRAPH_NODES = 10_000
# Above this many: IR O1 and machine code O0, the cheapest build that stays linear.
LARGE_GRAPH_NODES = 40_000

# ---- scratch memory ------------------------------------------------------------------
# A kernel keeps its scratch buffer on the stack up to this many doubles (16 KiB), on the
# heap above, so a call needs well under a small thread stack of 64 KiB.
KERNEL_STACK_DOUBLES = 2_048
# The Python entry keeps its input and output buffers on the C stack up to this many
# doubles (8 KiB: with the kernel's own scratch a call stays far below 64 KiB), in one
# malloc'd block above (~0.1 us, against the microseconds such a call takes anyway).
ENTRY_STACK_DOUBLES = 1_024
# The Python entry is emitted for up to this many input and output doubles (above, the
# ctypes path costs microseconds, but such a call costs far more anyway).
MAX_ENTRY_DOUBLES = 16_384
# Batch calls writing more result doubles than this (16 MiB, half a typical L3) write them
# with streaming stores.
STREAMING_OUT_DOUBLES = 2 * 1024 * 1024

# ---- array-level kernels ------------------------------------------------------------------
# Reductions over at most this many elements per output are unrolled into additions of
# strided gathers, which fuse with what they sum and what uses them.
SMALL_REDUCTION = 8
# Cheap ops (OpSpec.cheap) a reduction loop may recompute: its sequential additions leave
# room for about this many, less 3 per sum it runs.
REDUCTION_BUDGET = 15

# ---- batches -----------------------------------------------------------------------------
# ``threads=None`` splits a batch over the cores from this many point x node evaluations
# on: below, handing chunks to a thread pool costs more than it saves.
AUTO_THREADS_WORK = 10_000_000

KINDS = ("array", "rolled", "chunked", "straight")
BATCH_KINDS = ("array", "rolled", "vector", "inlined")


@dataclass(frozen=True)
class KernelPlan:
    """The kernels of one specialization and why (``f.stats["kernel"]``).

    Attributes:
        kind: the single-call kernel, one of ``KINDS``.
        batch: the batch kernel, one of ``BATCH_KINDS``.
        levels: (IR, machine code) optimisation levels of the single-call entry.
        batch_levels: the same for the batch entry.
        reason: why, in words, with the counts and the thresholds that decided.
    """
    kind: str
    batch: str
    levels: tuple[int, int]
    batch_levels: tuple[int, int]
    reason: str

    def stats(self) -> dict:
        """The plan as ``f.stats["kernel"]`` shows it."""
        return {"kind": self.kind, "batch": self.batch, "levels": self.levels,
                "batch_levels": self.batch_levels, "reason": self.reason}


def choose_levels(n_nodes: int, opt_level) -> tuple[int, int]:
    """(IR speed level, machine-code level) for a kernel of ``n_nodes`` live nodes:
    ``opt_level`` itself (0..3 or a pair), or with ``"auto"``/None by the graph's size."""
    if opt_level in (None, "auto"):
        if n_nodes > LARGE_GRAPH_NODES:
            return 1, 0
        return (1, 1) if n_nodes > MEDIUM_GRAPH_NODES else (3, 3)
    levels = opt_level if isinstance(opt_level, tuple) else (opt_level, opt_level)
    if len(levels) != 2 or any(lv not in (0, 1, 2, 3) for lv in levels):
        raise ValueError(f"opt_level must be 0..3, a pair (IR level, machine-code level) "
                         f"or 'auto', not {opt_level!r}")
    return levels


def array_level_declines(elements: int, n_nodes: int) -> str | None:
    """Why a traced array program that computes ``elements`` elements in ``n_nodes``
    live array nodes stays on the scalar graph, or None when the array level takes it."""
    if elements < ARRAY_MIN_ELEMENTS:
        return f"{elements} elements < ARRAY_MIN_ELEMENTS = {ARRAY_MIN_ELEMENTS}"
    if elements < ARRAY_MIN_LENGTH * n_nodes:
        return (f"{elements} elements in {n_nodes} nodes: < ARRAY_MIN_LENGTH = "
                f"{ARRAY_MIN_LENGTH} per node")
    return None


def tries_rolling(live: int) -> bool:
    """Is a graph of ``live`` nodes big enough to look for loops in (``roll.plan``)?"""
    return live > ROLL_MIN_NODES


def rolling_pays(rolled_size: int, straight_size: int) -> bool:
    """Does a rolled kernel of ``rolled_size`` emitted nodes shrink straight code of
    ``straight_size`` nodes enough (``ROLL_MIN_GAIN``)?"""
    return rolled_size * ROLL_MIN_GAIN <= straight_size


def choose_kernel(*, live: int, opt_level="auto", array: tuple[int, int] | None = None,
                  ops: int | None = None, straight_size: int | None = None,
                  rolled_size: int | None = None, calls_libm: bool = False,
                  fast_vector_math: bool = False) -> KernelPlan:
    """The kernels of a specialization, from counts alone.

    Args:
        live: live nodes of the graph compiled (after AD for ``compile_grad``).
        opt_level: the function's ``opt_level`` option.
        array: for an array-level graph (``array_level_declines`` took it), the
            (elements, live nodes) of the traced function; None for a scalar graph.
        ops: computing nodes of a scalar graph (``live`` less inputs and constants;
            default ``live``).
        straight_size: what LLVM compiles for straight code: the live nodes plus the
            output stores that are not nodes (default ``live``).
        rolled_size: the emitted size of the loop plan when one was found and pays
            (``tries_rolling`` and ``rolling_pays``), else None.
        calls_libm: the graph calls a libm function LLVM cannot vectorise (tanh, erf...).
        fast_vector_math: the fast-math flags allow vector math (``afn`` or ``fast``).

    Returns:
        A :class:`KernelPlan`.
    """
    if array is not None:
        levels = choose_levels(live, opt_level)
        elements, n_nodes = array
        return KernelPlan("array", "array", levels, levels,
                          f"array level: {elements} elements >= ARRAY_MIN_ELEMENTS = "
                          f"{ARRAY_MIN_ELEMENTS}, {elements // max(n_nodes, 1)} per node "
                          f">= ARRAY_MIN_LENGTH = {ARRAY_MIN_LENGTH}")
    size = straight_size if straight_size is not None else live
    ops = live if ops is None else ops
    if rolled_size is not None:
        size, kind = rolled_size, "rolled"
        reason = f"rolled: {live} live nodes > ROLL_MIN_NODES, loops emit {rolled_size}"
    else:
        kind = "chunked" if ops > CHUNK_NODES else "straight"
        if tries_rolling(live):
            reason = (f"{kind}: {live} live nodes > ROLL_MIN_NODES but loops shrink the "
                      f"code less than ROLL_MIN_GAIN = {ROLL_MIN_GAIN} times")
        else:
            reason = f"{kind}: {live} live nodes <= ROLL_MIN_NODES = {ROLL_MIN_NODES}"
        if kind == "chunked":
            reason += f", {ops} ops > CHUNK_NODES = {CHUNK_NODES}"
    levels = choose_levels(size, opt_level)
    if opt_level in (None, "auto") and size > FAST_BUILD_NODES:
        levels = (levels[0], 0)
        reason += f"; machine code O0: {size} nodes > FAST_BUILD_NODES = {FAST_BUILD_NODES}"
    if kind == "rolled" and live > ROLLED_BATCH_NODES:
        return KernelPlan(kind, "rolled", levels, levels,
                          f"{reason}; batch rolled: > ROLLED_BATCH_NODES = "
                          f"{ROLLED_BATCH_NODES}")
    batch = "inlined"
    if live <= CHUNK_NODES and calls_libm:
        batch = "vector"
        reason += "; batch vector: calls libm"
    elif live <= CHUNK_NODES and fast_vector_math:
        # where glibc's libmvec cannot be loaded, the batch is "inlined" after all
        batch = "vector"
        reason += "; batch vector: fast-math vector math (libmvec)"
    return KernelPlan(kind, batch, levels, choose_levels(live, opt_level), reason)


def batch_chunks(n: int, work_per_point: int, threads) -> int:
    """How many parts a batch of ``n`` points runs in (``threads``: the ``batch`` option;
    None splits over up to 8 cores from ``AUTO_THREADS_WORK`` evaluations on)."""
    if threads is None:
        if n * work_per_point < AUTO_THREADS_WORK:
            return 1
        import os
        threads = min(os.cpu_count() or 1, 8)
    threads = int(threads)
    return 1 if threads <= 1 or n < 2 * threads else threads
