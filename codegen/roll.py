"""Loop rolling: run repeated stretches of a kernel's schedule as loops.

A traced numpy function is unrolled into scalars: Rosenbrock at n = 1000 is ~17k nodes of
value+gradient, and straight-line code that size costs LLVM seconds to compile and runs
out of the instruction cache. But its schedule (the op nodes in a topological order) is
made of stretches where the same few ops repeat: an elementwise numpy op creates its
scalar nodes one after another, and so does the reverse pass over them. This module
finds those stretches; ``lower.emit_rolled`` emits each as a loop.

A *loop* covers schedule positions ``start .. start + period*trips``. Body element ``r``
of iteration ``j`` is the node at ``start + j*period + r``; these nodes have the same op,
attributes and operand kinds for every ``j``. Each operand is *affine* in ``j`` where it
can be (schedule position or input index ``a + step*j``, or one constant), else read
from a constant table indexed by ``j`` (the particles of the pairs ``i < j``, a
different constant per element). Rolled code keeps the exact sequential order of the
straight-line code, so every such stretch is safe to roll; values cross iterations and
loops through a compact buffer (one contiguous array per stored loop element, see
``_assign_slots``), or stay in registers (operands from the same iteration, and
loop-carried values such as a running sum, through a phi).

Finding them is linear in the schedule and vectorised: a signature per node; for each
period ``p <= policy.ROLL_MAX_PERIOD`` the run length over which ``sig[i] == sig[i+p]``;
then greedy, left to right, the longest stretch, shortened, or its period multiplied,
where that keeps every operand affine (``_even_trips``, ``_uneven``). Three schedules are tried
(creation order; depth-first, which fuses each element's whole computation into one
loop body; the value depth-first, then the reverse pass in creation order) and the best
plan kept (``plan``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from symad import policy
from symad.graph import Graph, Node
from symad.ops import OPS

# Its thresholds (policy.ROLL_MIN_TRIPS, ROLL_MIN_BODY_NODES, ROLL_MAX_PERIOD,
# ROLL_LARGER) are in symad/policy.py; see DECISIONS.md.

# Operand kinds.
NONE, NODE, INPUT, CONST = 0, 1, 2, 3


@dataclass(frozen=True)
class Operand:
    """Operand ``k`` of a loop body element, as a function of the iteration ``j``.

    ``kind`` NODE: the value at schedule position ``a + step*j``; INPUT: input ``a +
    step*j``; CONST: the constant ``a``. With a ``table``, the position / input index /
    constant of iteration ``j`` is ``table[j]`` instead (operands that do not move
    evenly, such as the particles of the pairs ``i < j``)."""
    kind: int
    a: float
    step: int
    table: np.ndarray | None = None
    # A NODE operand read from the buffer: its slot in iteration j is slot_a +
    # slot_step*j, or slot_table[j] (see ``_assign_slots``).
    slot_a: int = 0
    slot_step: int = 0
    slot_table: np.ndarray | None = None


@dataclass(frozen=True)
class Loop:
    start: int
    period: int
    trips: int
    # operands[r]: the operands of body element r (commutative ops list theirs in kind
    # order, see ``_operands``, which may differ from the node's own order).
    operands: tuple
    # stores[r]: body element r of iteration j is stored at slot stores[r] + j, or not
    # at all (-1): each stored element has a contiguous array of its own.
    stores: tuple = ()
    # writes[r]: body element r of iteration j is output k0 + kstep*j, written by the
    # loop itself (k0, kstep), or None (see ``_direct_writes``).
    writes: tuple = ()
    # Body elements whose last iteration's value is read after the loop, and no other
    # iteration's: it stays in a register (a running sum's total), never stored.
    keeps: tuple = ()

    @property
    def stop(self) -> int:
        return self.start + self.period * self.trips


@dataclass
class Plan:
    """How to emit one kernel: ``segments`` are ``range`` (straight code) or ``Loop``."""
    schedule: list
    position: dict
    segments: list
    in_memory: np.ndarray      # bool per position: the value goes through the buffer
    inputs: list               # the graph's inputs, in order
    input_index: dict
    slot_of: np.ndarray        # buffer slot per position (-1: never in the buffer)
    n_slots: int
    # How the kernel stores each output (``output_kinds``) and the runs it stores by a
    # loop (``output_runs``): a gradient of n constants is one loop, not n stores.
    out_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    out_ref: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    out_runs: list = field(default_factory=list)

    @property
    def rolled_nodes(self) -> int:
        return sum(s.stop - s.start for s in self.segments if isinstance(s, Loop))

    def body_size(self) -> int:
        """Nodes emitted as instructions: straight nodes plus one body per loop."""
        return sum(len(s) if isinstance(s, range) else s.period for s in self.segments)

    def emitted_size(self) -> int:
        """What LLVM compiles, in nodes: ``body_size`` plus the output stores emitted one
        by one and one per loop of them (compile time follows this, not the nodes)."""
        return self.body_size() + len(self.out_runs)

    def work(self) -> int:
        """Estimated operations per call: every node, plus each loop's buffer stores and
        loads and table reads (straight code keeps its values in registers)."""
        total = 0
        for seg in self.segments:
            if isinstance(seg, range):
                total += len(seg)
                continue
            per_trip = seg.period + int(self.in_memory[seg.start:seg.stop]
                                        .reshape(seg.trips, seg.period).any(axis=0).sum())
            for r, row in enumerate(seg.operands):
                for op in row:
                    if op.table is not None or op.slot_table is not None:
                        per_trip += 2
                    elif op.kind == NODE and operand_home(seg, r, op) == "buffer":
                        per_trip += 1
            total += seg.trips * per_trip
        return total


def _operands(graph: Graph, creation: list) -> tuple:
    """Per op node in creation order: operand kinds and refs, shape (N, 3), and a
    signature (op, attributes, operand kinds). A NODE ref is the operand's creation
    position, an INPUT ref its input index, a CONST ref the constant's node id (constants
    are interned, so equal ids mean bit-identical values). Commutative binary ops take
    their operands in kind order (node, input, constant), so ``c*x`` and ``x*c`` look
    alike. Vectorised over node ids: a per-node Python loop costs more than the rest of
    planning together."""
    n = len(creation)
    at = {node: i for i, node in enumerate(creation)}
    keys: dict = {}
    key = np.fromiter((keys.setdefault((node.op, node.attrs), len(keys))
                       for node in creation), np.int64, n)
    arg_id = np.full((n, 3), -1, np.int64)
    for k in range(3):
        rows = [i for i, node in enumerate(creation) if len(node.args) > k]
        arg_id[rows, k] = [creation[i].args[k].id for i in rows]
    size = len(graph.nodes)
    pos_of = np.full(size + 1, -1, np.int64)        # index -1 (no operand) stays -1
    pos_of[[node.id for node in creation]] = np.arange(n)
    input_of = np.full(size + 1, -1, np.int64)
    input_of[[node.id for node in graph.inputs]] = np.arange(len(graph.inputs))
    present = arg_id >= 0
    pos, inp = pos_of[arg_id], input_of[arg_id]
    kind = np.where(~present, NONE, np.where(pos >= 0, NODE, np.where(inp >= 0, INPUT, CONST)))
    ref = np.where(kind == NODE, pos, np.where(kind == INPUT, inp,
                                               np.where(present, arg_id, 0)))
    for cid in np.unique(arg_id[kind == CONST]):
        node = graph.nodes[int(cid)]
        if node.op != "const":
            raise NotImplementedError(f"{node.line()} is a free variable, not a graph input; "
                                      "only closed graphs can be compiled")
    commutative = np.array([OPS[op].commutative for op, _ in keys], bool)
    swap = commutative[key] & present[:, 1] & ~present[:, 2] & (kind[:, 0] > kind[:, 1])
    kind[swap, :2] = kind[swap, 1::-1]
    ref[swap, :2] = ref[swap, 1::-1]
    kind = kind.astype(np.int8)
    sig = key * 64 + kind[:, 0] * 16 + kind[:, 1] * 4 + kind[:, 2]
    return creation, at, kind, ref, sig


def _reorder(table: tuple, schedule: list) -> tuple:
    """``_operands`` for ``schedule``, a reordering of the creation-order nodes: rows
    permuted, NODE refs renumbered to positions in ``schedule``."""
    creation, at, kind, ref, sig = table
    if schedule is creation:
        return kind, ref, sig
    order = np.fromiter((at[node] for node in schedule), np.int64, len(schedule))
    new_pos = np.empty_like(order)
    new_pos[order] = np.arange(len(order))
    kind, ref = kind[order], ref[order]
    nodes = kind == NODE
    ref[nodes] = new_pos[ref[nodes]]
    return kind, ref, sig[order]


def _streaks(sig: np.ndarray, p: int) -> np.ndarray:
    """``out[i]`` = how many consecutive ``t >= i`` have ``sig[t] == sig[t + p]``."""
    n = len(sig)
    out = np.zeros(n, np.int64)
    if n <= p:
        return out
    eq = sig[:-p] == sig[p:]
    idx = np.arange(n - p)
    nxt = np.where(eq, n - p, idx)                  # next mismatch at or after i
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]
    out[:n - p] = nxt - idx
    return out


def plan(graph: Graph, outputs: Sequence[Node]) -> Plan:
    """The best of the loops found in three schedules: creation order, depth-first order
    (``depth_first_schedule``), and the first output depth-first followed by the rest in
    creation order (``value_first_schedule``). Among the plans whose code is at most
    ``policy.ROLL_LARGER`` times the smallest (code size is what compile time follows),
    the one with the least ``work`` (measurements: DECISIONS.md, ROLL_LARGER)."""
    creation = creation_schedule(graph, outputs)
    table = _operands(graph, creation)
    orders = [creation, depth_first_schedule(graph, outputs),
              value_first_schedule(graph, outputs, creation)]
    plans = [plan_schedule(graph, order, outputs, table) for order in orders]
    smallest = min(p.emitted_size() for p in plans)
    return min((p for p in plans if p.emitted_size() <= policy.ROLL_LARGER * smallest),
               key=Plan.work)


def batch_plan(graph: Graph, outputs: Sequence[Node], single: Plan) -> Plan:
    """The plan for the kernel over four points at once: ``single`` (the single call's,
    from ``plan``) or, with less work and code at most ``policy.ROLL_LARGER`` times as
    large, the plan of ``contributions_first_schedule``, which fuses the reverse pass per
    element.

    A single call runs that plan slower than value-first, whose separate elementwise
    loops LLVM vectorises across iterations; the batch kernel is already vectorised
    across points and gains from the fusion (DECISIONS.md, ROLL_LARGER). One schedule
    more, not ``plan``'s three again: the batch is planned at its first call."""
    if not getattr(graph, "accumulations", None):
        return single
    fused = plan_schedule(graph, contributions_first_schedule(graph, outputs), outputs)
    if fused.work() < single.work() and \
            fused.emitted_size() <= policy.ROLL_LARGER * single.emitted_size():
        return fused
    return single


def value_first_schedule(graph: Graph, outputs: Sequence[Node],
                         creation: list | None = None) -> list[Node]:
    """The first output's nodes depth-first (for ``compile_grad`` that is the value: its
    elementwise stages fuse into one loop), then everything else in creation order (the
    reverse pass, op by op)."""
    first = depth_first_schedule(graph, outputs[:1])
    seen = set(first)
    rest = creation if creation is not None else creation_schedule(graph, outputs)
    return first + [n for n in rest if n not in seen]


def contributions_first_schedule(graph: Graph, outputs: Sequence[Node],
                                 creation: list | None = None) -> list[Node]:
    """The first output depth-first (the value); then each contribution to a gradient
    depth-first, in the order the gradient's running sums take them; then those sums'
    additions (``Graph.accumulations``, recorded by the reverse pass) in creation order;
    then whatever is left, in creation order.

    The reverse pass works one op at a time over all elements; in this order each
    element's whole adjoint (a pair of particles: from the energy's adjoint to its three
    coordinates' contributions) is one loop body, its values in registers, and the
    additions into the gradient follow as loops of their own."""
    order = depth_first_schedule(graph, outputs[:1])
    seen = bytearray(len(graph.nodes))
    for n in order:
        seen[n.id] = 1
    is_sum = bytearray(len(graph.nodes))
    for i in getattr(graph, "accumulations", ()):
        is_sum[i] = 1
    rest = creation if creation is not None else creation_schedule(graph, outputs)
    sums = [n for n in rest if is_sum[n.id] and not seen[n.id]]
    for n in sums:
        for a in n.args:        # a contribution: its cone, depth-first, up to the sums
            if not seen[a.id] and not is_sum[a.id] and a.args:
                _post_order(a, seen, order, is_sum)
    for n in sums:
        seen[n.id] = 1
        order.append(n)
    return order + [n for n in rest if not seen[n.id]]


def straight_plan(graph: Graph, outputs: Sequence[Node]) -> Plan:
    """The plan without loops: every op node of ``outputs`` as straight-line code, in
    creation order (what ``lower`` emits for graphs that are not rolled)."""
    schedule = creation_schedule(graph, outputs)
    n = len(schedule)
    return _with_outputs(Plan(schedule, {node: i for i, node in enumerate(schedule)},
                              [range(0, n)] if n else [], np.zeros(n, bool),
                              list(graph.inputs),
                              {node: j for j, node in enumerate(graph.inputs)},
                              np.full(n, -1, np.int64), 0), outputs)


def creation_schedule(graph: Graph, outputs: Sequence[Node]) -> list[Node]:
    """The op nodes ``outputs`` depend on, in creation order."""
    return [n for n in graph.live(outputs) if n.args]


def plan_schedule(graph: Graph, schedule: list, outputs: Sequence[Node],
                  table: tuple | None = None) -> Plan:
    """Loops over ``schedule``, a topological order of the op nodes of ``outputs``
    (``table``: ``_operands`` of the same nodes in creation order, when already known)."""
    min_trips, min_nodes = policy.ROLL_MIN_TRIPS, policy.ROLL_MIN_BODY_NODES
    max_period = policy.ROLL_MAX_PERIOD
    position = {n: i for i, n in enumerate(schedule)}
    input_index = {n: j for j, n in enumerate(graph.inputs)}
    n = len(schedule)
    if table is None:
        table = _operands(graph, creation_schedule(graph, outputs))
    kind, ref, sig = _reorder(table, schedule)

    # Per start position: the longest stretch a loop could cover (equal signatures one
    # period apart), and the smallest period that covers it.
    best = np.zeros(n, np.int64)
    best_p = np.zeros(n, np.int64)
    for p in range(1, min(max_period, n // min_trips) + 1):
        trips = 1 + _streaks(sig, p) // p
        cover = np.where(trips >= min_trips, trips * p, 0)
        better = cover > best
        best[better] = cover[better]
        best_p[better] = p

    segments: list = []
    in_loop = np.zeros(n, bool)
    straight_from = 0
    s = 0
    starts = np.flatnonzero(best >= min_nodes)
    for s in starts:
        if s < straight_from:
            continue
        p = int(best_p[s])
        trips = int(best[s]) // p
        # Operands that move evenly stay in registers or take computed addresses; only
        # when that breaks off early do tables take over (see ``Operand``).
        s = int(s)

        def even_enough(even, trips, p=p):
            return even >= min_trips and even * p >= min_nodes and 2 * even >= trips
        even = _even_trips(kind, ref, s, p, trips)
        if even_enough(even, trips):
            trips = even
        else:
            p, trips, s = _uneven(kind, ref, s, p, trips, even_enough, max_period)
        loop = _rotated(graph, kind, ref, _loop(graph, kind, ref, s, p, trips))
        s, trips = loop.start, loop.trips
        if straight_from < s:
            segments.append(range(straight_from, s))
        segments.append(loop)
        in_loop[s:s + trips * p] = True
        straight_from = s + trips * p
    if straight_from < n:
        segments.append(range(straight_from, n))
    segments = _direct_writes(segments, position, outputs)
    in_memory, by_slot = _in_memory(schedule, position, segments, in_loop, outputs)
    segments = _keep_last(segments, in_memory, by_slot)
    segments, slot_of, n_slots = _assign_slots(segments, in_memory)
    return _with_outputs(Plan(schedule, position, segments, in_memory, list(graph.inputs),
                              input_index, slot_of, n_slots), outputs)


# How a kernel stores an output (``output_kinds``): written by a loop of the plan, copied
# from a buffer slot, read from an input, a constant, or a value in a register.
OUT_DONE, OUT_SLOT, OUT_INPUT, OUT_CONST, OUT_VALUE = range(5)
# Outputs stored alike at least this many times in a row are stored by a loop.
MIN_OUTPUT_RUN = 8


def _with_outputs(p: Plan, outputs: Sequence[Node]) -> Plan:
    done = written_by_loops(p)
    p.out_kind, p.out_ref = output_kinds(outputs, p.position, p.slot_of, p.input_index, done)
    p.out_runs = output_runs(p.out_kind, p.out_ref)
    return p


def output_kinds(outputs: Sequence[Node], position: dict, slot_of, input_index: dict,
                 done=()) -> tuple:
    """(kind, ref) per output: ``OUT_DONE`` for indices in ``done``; ``OUT_SLOT`` and the
    buffer slot; ``OUT_INPUT`` and the input index; ``OUT_CONST`` and the node id
    (constants are interned: equal ids, equal values); else ``OUT_VALUE`` and the id."""
    n = len(outputs)
    kind = np.full(n, OUT_VALUE, np.int8)
    ref = np.zeros(n, np.int64)
    for k, o in enumerate(outputs):
        if k in done:
            kind[k] = OUT_DONE
            continue
        q = position.get(o)
        if q is not None and slot_of[q] >= 0:
            kind[k], ref[k] = OUT_SLOT, slot_of[q]
        elif o.op == "input" and o in input_index:
            kind[k], ref[k] = OUT_INPUT, input_index[o]
        else:
            kind[k], ref[k] = OUT_CONST if o.op == "const" else OUT_VALUE, o.id
    return kind, ref


def output_runs(kind: np.ndarray, ref: np.ndarray) -> list:
    """The outputs in order as ``(first, count, step)``: ``count >= MIN_OUTPUT_RUN``
    outputs of one kind stored by one loop (slots and inputs at ``ref[first] + step*t``;
    constants, one each, or the same register value, ``step`` 0), or one output stored
    by itself (``count`` 1). Outputs a loop of the plan writes are left out. Linear:
    a Python step per run or lone output, the rest vectorised."""
    n = len(kind)
    if n < 2:
        return [(k, 1, 0) for k in range(n) if kind[k] != OUT_DONE]
    runs: list = []
    d = ref[1:] - ref[:-1]
    pair = (kind[1:] == kind[:-1]) & (kind[:-1] != OUT_DONE)
    const = pair & (kind[:-1] == OUT_CONST)
    d = np.where(const, 0, d)               # a run of constants may hold any values
    pair &= (kind[:-1] != OUT_VALUE) | (d == 0)
    # stretch_end[i]: the last output of the stretch of pairs with step d[i] from i on
    m = n - 1
    new = np.ones(m, bool)
    new[1:] = ~pair[1:] | ~pair[:-1] | (d[1:] != d[:-1])
    ids = np.cumsum(new) - 1
    last = np.zeros(int(ids[-1]) + 1, np.int64)
    last[ids] = np.arange(m)                # the last pair of each stretch
    k = 0
    while k < n:
        if kind[k] == OUT_DONE:
            k += 1
            continue
        count = int(last[ids[k]]) - k + 2 if k < m and pair[k] else 1
        if count >= MIN_OUTPUT_RUN:
            runs.append((k, count, int(d[k])))
            k += count
        else:
            runs.append((k, 1, 0))
            k += 1
    return runs


def _direct_writes(segments: list, position: dict, outputs: Sequence[Node]) -> list:
    """Loop elements whose every iteration is an output, at output indices affine in the
    iteration (a gradient computed element by element): the loop writes them itself
    instead of keeping them in the buffer for a copy afterwards."""
    k_of = np.full(len(position) + 1, -1, np.int64)
    seen: set = set()
    for k, o in enumerate(outputs):
        j = position.get(o)
        if j is None:
            continue
        # an output listed twice is written by the output phase, from the buffer
        k_of[j] = -1 if j in seen else k
        seen.add(j)
    out = []
    for seg in segments:
        if isinstance(seg, range):
            out.append(seg)
            continue
        writes = []
        for r in range(seg.period):
            ks = k_of[seg.start + r:seg.stop:seg.period]
            step = int(ks[1] - ks[0]) if seg.trips > 1 else 0
            ok = (ks >= 0).all() and (np.diff(ks) == step).all()
            writes.append((int(ks[0]), step) if ok else None)
        out.append(replace(seg, writes=tuple(writes)))
    return out


def _keep_last(segments: list, mem: np.ndarray, by_slot: np.ndarray) -> list:
    """Loop elements of which code after the loop reads only the last iteration's value,
    and reads it by name, not through a computed slot: that value stays in a register
    (``Loop.keeps``), and ``mem`` drops it, so the loop stores nothing for it."""
    out = []
    for seg in segments:
        if isinstance(seg, range):
            out.append(seg)
            continue
        keeps = []
        last = seg.stop - seg.period
        for r in range(seg.period):
            col = mem[seg.start + r:seg.stop:seg.period]
            if col[-1] and not col[:-1].any() and not by_slot[last + r]:
                mem[last + r] = False
                keeps.append(r)
        out.append(replace(seg, keeps=tuple(keeps)) if keeps else seg)
    return out


def written_by_loops(plan: Plan) -> set:
    """Output indices that loops write themselves (``Loop.writes``)."""
    done: set = set()
    for seg in plan.segments:
        if isinstance(seg, range):
            continue
        for w in seg.writes:
            if w is not None:
                done.update(range(w[0], w[0] + w[1] * seg.trips, w[1]) if w[1] else (w[0],))
    return done


def _assign_slots(segments: list, mem: np.ndarray) -> tuple:
    """Buffer slots: straight values one by one, and for each loop one contiguous array
    per stored body element (structure of arrays: a loop reading another loop's values
    walks them with unit or constant stride, which LLVM vectorises without gathers, and
    the buffer holds only values that are read back). Operands read from the buffer get
    their slots as affine functions of the iteration where they are, tables where not."""
    slot_of = np.full(len(mem), -1, np.int64)
    n_slots = 0
    for seg in segments:
        if isinstance(seg, range):
            at = np.flatnonzero(mem[seg.start:seg.stop]) + seg.start
            slot_of[at] = np.arange(n_slots, n_slots + len(at))
            n_slots += len(at)
            continue
        stored = mem[seg.start:seg.stop].reshape(seg.trips, seg.period).any(axis=0)
        for r in np.flatnonzero(stored):
            slot_of[seg.start + r:seg.stop:seg.period] = np.arange(n_slots,
                                                                  n_slots + seg.trips)
            n_slots += seg.trips
    out = []
    for seg in segments:
        if isinstance(seg, range):
            out.append(seg)
            continue
        stores = tuple(int(slot_of[seg.start + r]) for r in range(seg.period))
        operands = []
        for r, row in enumerate(seg.operands):
            new_row = []
            for op in row:
                if op.kind == NODE and operand_home(seg, r, op) == "buffer":
                    at = op.table if op.table is not None else \
                        op.a + op.step * np.arange(seg.trips)
                    slots = slot_of[at]
                    assert (slots >= 0).all(), "an operand read from a slot never stored"
                    step = int(slots[1] - slots[0]) if seg.trips > 1 else 0
                    if np.all(np.diff(slots) == step):
                        op = replace(op, slot_a=int(slots[0]), slot_step=step)
                    else:
                        op = replace(op, slot_table=slots.astype(np.int32))
                new_row.append(op)
            operands.append(tuple(new_row))
        out.append(replace(seg, operands=tuple(operands), stores=stores))
    return out, slot_of, n_slots


def depth_first_schedule(graph: Graph, outputs: Sequence[Node]) -> list[Node]:
    """The op nodes ``outputs`` depend on, in depth-first post-order (each node right
    after the last of its operands that was not yet scheduled), iteratively.

    Creation order runs one numpy op at a time over all elements: each loop found there
    covers one elementwise op and passes every value to the next loop through memory.
    Depth-first order visits one element's whole computation before the next (a sum's
    chain pulls in its terms one by one), so a loop covers all of an element's ops and
    keeps them in registers, as a hand-written loop would."""
    seen = bytearray(len(graph.nodes))
    order: list[Node] = []
    for out in outputs:
        if not seen[out.id] and out.args:
            _post_order(out, seen, order)
    return order


def _post_order(root: Node, seen: bytearray, order: list, stop: bytearray | None = None):
    """Append ``root`` and the op nodes it needs that are not ``seen`` yet to ``order``,
    depth-first post-order, iteratively (graphs are deep); nodes marked in ``stop`` are
    not entered. Leaves (inputs, constants) are not scheduled."""
    seen[root.id] = 1
    stack = [(root, iter(_latest_first(root.args)))]
    while stack:
        node, todo = stack[-1]
        for a in todo:
            if not seen[a.id] and not (stop is not None and stop[a.id]):
                seen[a.id] = 1
                if a.args:
                    stack.append((a, iter(_latest_first(a.args))))
                    break
        else:
            stack.pop()
            order.append(node)


def _latest_first(args: tuple) -> tuple:
    # The operand created last first: in a running sum ``acc + t`` that is ``acc`` (the
    # chain), so each term is computed right before the addition that consumes it.
    if len(args) == 2 and args[0].id < args[1].id:
        return (args[1], args[0])
    return args


def _even_trips(kind, ref, start, p, trips) -> int:
    """How many leading iterations have every operand affine in the iteration number
    (each constant operand the same constant), checked in growing prefixes so a stretch
    that breaks early costs little."""
    check = min(trips, 8)
    while True:
        block = ref[start:start + check * p].reshape(check, p, 3)
        step = block[1] - block[0]
        if np.any(step[kind[start:start + p] == CONST] != 0):
            return 1
        ok = np.all(block[1:] - block[:-1] == step, axis=(1, 2))
        bad = np.flatnonzero(~ok)
        if bad.size:
            return int(bad[0]) + 1
        if check == trips:
            return trips
        check = min(trips, check * 4)


def _uneven(kind, ref, s, p, trips, even_enough, max_period) -> tuple:
    """Period, trips and start for a stretch whose operands do not all move evenly with
    period ``p``. Often only the first iteration differs (an end of the array): peel it.
    Or a small multiple of the period moves evenly where ``p`` does not (the reverse
    pass over the three coordinates of each pair: one op per coordinate, each
    coordinate's values in an array of their own). Else ``p`` as it is, with tables for
    the uneven operands."""
    for q in range(p, min(4 * p, max_period) + 1, p):
        # starting up to one iteration of the new period later (peeled, or in phase)
        for start in range(s + p if q == p else s, s + q + 1, p):
            tq = (s + trips * p - start) // q
            if tq < policy.ROLL_MIN_TRIPS:
                return p, trips, s
            even = _even_trips(kind, ref, start, q, tq)
            if even_enough(even, tq, q):
                return q, even, start
    return p, trips, s


def _carried(loop: Loop) -> list:
    """(r, q) for each operand of body element ``r`` that is element ``q`` of the
    previous iteration."""
    return [(r, op.a - (loop.start - loop.period))
            for r, row in enumerate(loop.operands) for op in row
            if op.kind == NODE and operand_home(loop, r, op) == "carried"]


def _rotated(graph, kind, ref, loop: Loop) -> Loop:
    """``loop``, or the same stretch started ``t`` nodes later (one iteration fewer) when
    that leaves no value carried from one iteration into the next. An iteration that
    starts in the middle of an element's computation hands its last values on through
    phis, which keeps LLVM from vectorising the loop (Lennard-Jones' reverse pass per
    pair). Body element ``r`` reading element ``q`` of the previous iteration reads it
    within the iteration once the loop starts at ``r < t <= q``. A running sum reads
    itself (``q == r``) and stays carried however the loop is cut; such a loop stays as
    it is, which also keeps a sum's terms a step ahead of their addition (Rosenbrock
    n=1000 rotated anyway: 1.8 -> 2.4 us)."""
    pairs = _carried(loop)
    if not pairs or loop.trips <= policy.ROLL_MIN_TRIPS:
        return loop
    t = max(r for r, _ in pairs) + 1
    if t > min(q for _, q in pairs):
        return loop
    cand = _loop(graph, kind, ref, loop.start + t, loop.period, loop.trips - 1)
    return loop if _carried(cand) else cand


def _loop(graph, kind, ref, s, p, trips) -> Loop:
    operands = []
    for r in range(p):
        row = []
        for k in range(3):
            kd = int(kind[s + r, k])
            if kd == NONE:
                break
            refs = ref[s + r:s + trips * p:p, k]
            step = int(refs[1] - refs[0])
            affine = bool(np.all(np.diff(refs) == step))
            if kd == CONST:
                if affine and step == 0:
                    row.append(Operand(CONST, graph.nodes[int(refs[0])].attrs[0], 0))
                else:
                    values = np.array([graph.nodes[int(i)].attrs[0] for i in refs])
                    row.append(Operand(CONST, 0.0, 0, values))
            elif affine:
                row.append(Operand(kd, int(refs[0]), step))
            else:
                row.append(Operand(kd, 0, 0, refs.astype(np.int32)))
        operands.append(tuple(row))
    return Loop(s, p, trips, tuple(operands))


def operand_home(loop: Loop, r: int, op: Operand) -> str:
    """Where body element ``r`` finds a NODE operand: ``"ssa"`` (earlier in the same
    iteration), ``"carried"`` (the previous iteration, a phi; before the first, the node
    at ``a``), ``"hoisted"`` (one node computed before the loop) or ``"buffer"``."""
    a, step = op.a, op.step
    if op.table is None:
        if step == loop.period and loop.start <= a < loop.start + r:
            return "ssa"
        if step == loop.period and loop.start - loop.period <= a < loop.start:
            return "carried"
        if step == 0 and a < loop.start:
            return "hoisted"
    return "buffer"


def _in_memory(schedule, position, segments, in_loop, outputs) -> tuple:
    """Positions whose value some code reads back from the buffer, and of those the ones
    a loop reads through a computed slot (affine or a table), not by name."""
    mem = np.zeros(len(schedule), bool)
    by_slot = np.zeros(len(schedule), bool)
    for seg in segments:
        if isinstance(seg, range):
            for i in seg:
                for a in schedule[i].args:
                    j = position.get(a)
                    if j is not None and in_loop[j]:
                        mem[j] = True
            continue
        for r, row in enumerate(seg.operands):
            for op in row:
                if op.kind != NODE:
                    continue
                home = operand_home(seg, r, op)
                if op.table is not None:
                    mem[op.table] = by_slot[op.table] = True
                elif home == "buffer":
                    at = op.a + op.step * np.arange(seg.trips)
                    mem[at] = by_slot[at] = True
                elif home in ("hoisted", "carried") and in_loop[op.a]:
                    mem[op.a] = True
    written = np.zeros(len(schedule), bool)    # outputs the loops write themselves
    for seg in segments:
        if not isinstance(seg, range):
            for r, w in enumerate(seg.writes):
                if w is not None:
                    written[seg.start + r:seg.stop:seg.period] = True
    for o in outputs:
        j = position.get(o)
        if j is not None and in_loop[j] and not written[j]:
            mem[j] = True
    return mem, by_slot
