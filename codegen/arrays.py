"""Array-level graph -> LLVM IR: loops over whole-vector nodes (see :mod:`symad.graph`).

Two kinds of loop. A *pointwise* loop computes elementwise nodes, gathers, and sums whose
segments are all distinct (each element its one operand element or -0.0; a slice's
adjoint is its operand's own buffer, a "view") over one size, every value of an element
in registers: LLVM vectorises it. A *reduction* loop runs the other sums (into one value, or
added into a buffer at their segments) over their operands, read back from buffers: their
additions are sequential (numpy's order), so they are kept out of the vectorised loops.
Nodes join the first loop of their kind and size at or after the loops their operands
need, in creation order. A node read at other positions (a gather's source), after a sum
finished, by a reduction or in a later loop is stored in a buffer of its own; size-1
values are registers, computed in straight-line code between loops.

Lennard-Jones 64 (energy and gradient) becomes a pointwise loop over the 2,016 pairs and
a reduction loop adding each pair's energy and forces into the totals (the six
per-coordinate force sums into the gradient itself: sums only ever added together share
one buffer).

The single-point kernel has the scalar kernels' signature (``lower.py``) and is called
with unit strides only (by the Python entry and ``CompiledFunction`` calls). The batch
entry's kernel runs four points at once, one per vector lane, reading and writing the
batch tile (``batch_entry.emit_batch``); there sums run in their operand's loop (``plan(...,
fuse=True)``): the lanes are its vectors, and a fused loop stores less.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from symad import policy
from symad.graph import Graph, Node
from symad.ops import OPS

from .builder import DOUBLE, I32, I64, PTR, const_table, free_buffer, kernel_fn, scratch_buffer
from .lower import lower_node


class _Group:
    __slots__ = ("kind", "domain", "nodes")

    def __init__(self, kind: str, domain: int):
        self.kind, self.domain = kind, domain
        self.nodes: list[Node] = []


def _reduces(n: Node) -> bool:
    """A sum that adds (into one value, or several elements into one segment)."""
    return n.op == "sum" and (n.size == 1 or n.attrs[0].runs() != "distinct")


def _view_of(n: Node) -> Node | None:
    """For a sum that puts its operand's elements at consecutive distinct positions
    (the adjoint of a slice ``x[a:b]``), that operand: its buffer is then the sum's,
    from the first position on, and the sum costs nothing but -0.0 around it."""
    if n.op != "sum" or n.size == 1:
        return None
    x, table = n.args[0], n.attrs[0]
    if x.args and x.op != "sum" and x.size > 1 and table.affine is not None and \
            table.affine[1] == 1:
        return x
    return None


# Ops a reduction loop may recompute (its additions leave the core idle; see
# policy.REDUCTION_BUDGET and DECISIONS.md).
_CHEAP = frozenset(name for name, row in OPS.items() if row.cheap)


def _cone(n: Node, limit: int, heads) -> tuple[list, list]:
    """(the nodes a reduction loop computes for sum ``n``'s operand, in creation order;
    the nodes it reads them from). A family's head (``heads``) is read from its buffer,
    never recomputed: its member sums have no values of their own (they add into it)."""
    cone: dict[int, Node] = {}
    frontier: dict[int, Node] = {}
    stack = [n.args[0]]
    while stack:
        a = stack.pop()
        if a.id in cone or a.id in frontier or not a.args:
            continue
        if a.size == 1 or a.op == "sum" or len(cone) >= limit or a.id in heads or \
                (a.op not in _CHEAP and a.op != "gather"):
            frontier[a.id] = a
            continue
        cone[a.id] = a
        if a.op == "gather":
            src = a.args[0]
            if src.args:
                frontier[src.id] = src
        else:
            stack.extend(a.args)
    return sorted(cone.values(), key=lambda x: x.id), list(frontier.values())


@dataclass
class LoopPlan:
    """What ``plan`` decided: the loops, and where each value lives."""
    groups: list[_Group]            # the loops, in order
    stored: set[int]                # ids of the nodes with a buffer
    views: dict[int, Node]          # a slice-adjoint sum's id -> its operand (buffer inside)
    cones: dict[int, list]          # a reduction's id -> the nodes its loop recomputes
    family: dict[int, int]          # a family member sum's id -> its head's id


def _families(live: list, outputs: Sequence[Node]) -> dict[int, list]:
    """{head id: member sums}. Sums only ever added together (a particle's force from
    each coordinate of each pair it is in) add into one buffer: its head, the last
    addition, is that buffer."""
    uses: dict[int, int] = {}
    for a in [*(a for n in live for a in n.args), *outputs]:
        uses[a.id] = uses.get(a.id, 0) + 1
    members: dict[int, list] = {}
    for n in live:
        if n.op == "add" and n.size > 1 and all(
                uses[a.id] == 1 and a.size == n.size and (a.id in members or _reduces(a))
                for a in n.args):
            members[n.id] = [m for a in n.args for m in members.pop(a.id, [a])]
    return members


def _cones(live: list, members: dict) -> tuple[dict, dict]:
    """({reduction id: the nodes its loop recomputes}, {reduction id: what it reads}):
    cheap operands are recomputed where they are added (a reduction loop's core is
    idle), within a budget per domain (policy.REDUCTION_BUDGET, 3 per reduction)."""
    budget: dict[int, int] = {}
    for n in live:
        if _reduces(n):
            d = n.args[0].size
            budget[d] = budget.get(d, policy.REDUCTION_BUDGET) - 3
    cones: dict[int, list] = {}
    reads: dict[int, list] = {}
    for n in live:
        if _reduces(n):
            d = n.args[0].size
            cones[n.id], reads[n.id] = _cone(n, max(budget[d], 0), members)
            budget[d] -= len(cones[n.id])
    return cones, reads


def _needed(outputs: Sequence[Node], reads: dict, members: dict) -> set[int]:
    """Ids of the nodes computed in loops of their own (not only inside a cone)."""
    needed: set[int] = set()
    stack = list(outputs)
    while stack:
        n = stack.pop()
        if n.id not in needed:
            needed.add(n.id)
            stack.extend(reads[n.id] if n.id in reads else
                         members[n.id] if n.id in members else n.args)
    return needed


def _operands(n: Node, kind: str, dom: int, p: LoopPlan, group_of: dict, reads: dict,
              members: dict) -> tuple[int, list]:
    """(the first loop ``n`` may join, its operands read as registers there). Operands
    read otherwise (another position, after a sum, by a reduction) are stored."""
    need, same = 0, []
    reduces = _reduces(n)
    for a in reads.get(n.id, n.args):
        if not a.args:
            continue                    # inputs and constants are read in place
        ga = group_of[a.id]
        if a.size == 1 and a.op != "sum" and kind == "point" and dom == 1:
            need = max(need, ga)        # a register of the same straight code
        elif a.size == 1:
            need = max(need, ga + 1)    # a register, after a's loop
        elif kind == "point" and (n.op not in ("gather", "sum") or reduces) and \
                a.op != "sum" and a.id not in members:
            need = max(need, ga)        # the same element: a register in a's loop
            same.append(a)
        else:
            need = max(need, ga + 1)
            p.stored.add(a.id)
    return need, same


def _join(p: LoopPlan, kind: str, dom: int, need: int) -> int:
    """The first loop of ``kind`` over ``dom`` from ``need`` on (a new one at the end)."""
    for j in range(need, len(p.groups)):
        if p.groups[j].domain == dom and p.groups[j].kind == kind:
            return j
    p.groups.append(_Group(kind, dom))
    return len(p.groups) - 1


def plan(graph: Graph, outputs: Sequence[Node], fuse: bool = False) -> LoopPlan:
    """The loops of a kernel and where each value lives. With ``fuse``, sums run in
    their operand's loop (a kernel over several points, vectorised across them, has no
    vectorising of elements to keep them apart for)."""
    live = graph.live(outputs)
    members = _families(live, outputs)
    cones, reads = _cones(live, members) if not fuse else ({}, {})
    family = {m.id: head for head, ms in members.items() for m in ms}
    p = LoopPlan([], set(), {}, cones, family)
    needed = _needed(outputs, reads, members)
    group_of: dict[int, int] = {}
    viewed: set[int] = set()
    for n in live:
        if n.id in members:         # a family head: computed by its sums' loops
            group_of[n.id] = max(group_of[m.id] for m in members[n.id])
            p.stored.add(n.id)
            continue
        if not n.args or n.id not in needed:
            continue
        x = _view_of(n)
        # (a family head's buffer is its sums': a view into it would be written before
        # the family starts adding)
        if x is not None and x.id not in viewed and x.id not in members:
            p.views[n.id] = x
            viewed.add(x.id)
            group_of[n.id] = group_of[x.id]
            p.stored.update((n.id, x.id))
            continue
        reduces = _reduces(n)
        kind = "reduce" if reduces and not fuse else "point"
        dom = n.args[0].size if reduces else n.size
        need, same = _operands(n, kind, dom, p, group_of, reads, members)
        g = group_of[n.id] = _join(p, kind, dom, need)
        p.groups[g].nodes.append(n)
        p.stored.update(a.id for a in same if group_of[a.id] != g)
        if reduces and n.size > 1 and n.id not in family:
            p.stored.add(n.id)
    p.stored.update(o.id for o in outputs if o.args and o.size > 1)
    return p


class _Emitter:
    """Emits one kernel; ``width`` > 1 evaluates that many points at once, one per
    vector lane (the batch entry's tile: input ``j`` of the lanes at ``in + j * is``)."""

    def __init__(self, module, graph, outputs, name, flags, width=1, vector_math=False):
        self.module, self.graph, self.flags = module, graph, flags
        self.outputs, self.name = outputs, name
        self.width, self.vector_math = width, vector_math
        self.ty = DOUBLE if width == 1 else ir.VectorType(DOUBLE, width)
        self.scalars: dict[int, ir.Value] = {}     # size-1 values in registers
        self.buffer: dict[int, ir.Value] = {}      # stored node id -> its buffer
        self.stride: dict[int, ir.Value] = {}      # ... and its elements' distance
        self.tables: dict[tuple, tuple] = {}
        # the arguments' elements, in graph.inputs order, are the kernel's ``in``
        bounds = np.cumsum([0] + [n.size for n in graph.inputs])
        self.offsets = {n.id: int(at) for n, at in zip(graph.inputs, bounds)}
        self.b: ir.IRBuilder
        self.fn: ir.Function

    # -- reading values --------------------------------------------------------------
    def table(self, key: bytes, values, kind: str):
        hit = self.tables.get((kind, key))
        if hit is None:
            hit = const_table(self.module, values, f"{self.name}.{kind}{len(self.tables)}")
            self.tables[(kind, key)] = hit
        return hit

    def load(self, base, index: ir.Value, ty=DOUBLE) -> ir.Value:
        return self.b.load(self.b.gep(base, [index], source_etype=ty), typ=ty)

    def const(self, v: float) -> ir.Constant:
        c = ir.Constant(DOUBLE, v)
        return c if self.width == 1 else ir.Constant(self.ty, [c] * self.width)

    def splat(self, v: ir.Value) -> ir.Value:
        if self.width == 1:
            return v
        b = self.b
        one = b.insert_element(ir.Constant(self.ty, ir.Undefined), v, ir.Constant(I32, 0))
        return b.shuffle_vector(one, ir.Constant(self.ty, ir.Undefined),
                                ir.Constant(ir.VectorType(I32, self.width), [0] * self.width))

    def element(self, base, idx: ir.Value, stride=None) -> ir.Value:
        """The address of element ``idx`` (all its lanes) in a buffer, or with ``stride``
        in the tile."""
        b = self.b
        w = stride if stride is not None else ir.Constant(I64, self.width)
        at = idx if self.width == 1 and stride is None else b.mul(idx, w)
        return b.gep(base, [at], source_etype=DOUBLE)

    def read(self, ptr) -> ir.Value:
        v = self.b.load(ptr, typ=self.ty)
        v.align = 8
        return v

    def write(self, v, ptr) -> None:
        self.b.store(v, ptr).align = 8

    def position(self, table, k: ir.Value) -> ir.Value:
        """Element ``k`` of an index table (arithmetic when the table is affine)."""
        b = self.b
        if table.affine is not None:
            start, step = table.affine
            v = b.mul(k, ir.Constant(I64, step)) if step != 1 else k
            return b.add(v, ir.Constant(I64, start)) if start else v
        # Tables equal up to a constant (x[3i], x[3i+1], x[3i+2]) share one global, and
        # LLVM one load per element.
        first = int(table.index[0])
        rel = table.index - first
        g, _ = self.table(rel.tobytes(), rel, "idx")
        v = b.sext(self.load(g, k, I32), I64)
        return b.add(v, ir.Constant(I64, first)) if first else v

    def at(self, a: Node, idx: ir.Value) -> ir.Value:
        """Node ``a``'s element ``idx`` (an input, a constant, a register or stored)."""
        b = self.b
        if a.op == "input":
            off = self.offsets[a.id]
            if a.size == 1:         # a scalar argument, broadcast: its one element
                idx = ir.Constant(I64, 0)
            j = b.add(idx, ir.Constant(I64, off)) if off else idx
            return self.read(self.element(self.in_ptr, j,
                                          self.in_stride if self.width > 1 else None))
        if a.op == "const":
            values = a.attrs[0]
            if type(values) is float:
                return self.const(values)
            if values.uniform is not None:
                return self.const(values.uniform)
            g, _ = self.table(values.key, values.array, "const")
            return self.splat(self.load(g, idx))
        if a.id in self.scalars:
            return self.scalars[a.id]
        return self.read(self.slot(a, idx))

    def slot(self, n: Node, idx: ir.Value) -> ir.Value:
        """The address of stored node ``n``'s element ``idx``."""
        return self.element(self.buffer[n.id], idx, self.stride.get(n.id))

    def store(self, n: Node, idx: ir.Value, v: ir.Value) -> None:
        self.write(v, self.slot(n, idx))

    # -- emitting ----------------------------------------------------------------------
    def emit(self) -> ir.Function:
        p = plan(self.graph, self.outputs, fuse=self.width > 1)
        groups, stored, views, self.cones, self.family = \
            p.groups, p.stored, p.views, p.cones, p.family
        viewed = {x.id for x in views.values()}
        # Stored outputs are stored where they are returned (a second output of the same
        # node is copied).
        direct: dict[int, int] = {}
        pos = 0
        for o in self.outputs:
            if o.id in stored and o.id not in direct and o.id not in viewed:
                direct[o.id] = pos
            pos += o.size
        live = [n for n in self.graph.live(self.outputs)
                if n.id in stored and n.id not in direct and n.id not in viewed]
        # The loops run in a function of their own whose buffers are ``noalias``
        # arguments: LLVM then knows that no store into one buffer changes another.
        fnty = ir.FunctionType(ir.VoidType(), [PTR, I64, PTR, I64] + [PTR] * len(live))
        inner = ir.Function(self.module, fnty, name=f"{self.name}.loops")
        inner.linkage = "internal"
        inner.attributes.add("alwaysinline")
        inner.attributes.add("nounwind")
        for arg in inner.args:
            if isinstance(arg.type, ir.PointerType):
                arg.add_attribute("noalias")
        self.fn = inner
        self.b = b = ir.IRBuilder(inner.append_basic_block("entry"))
        self.in_ptr, self.in_stride, self.out_ptr, self.out_stride = inner.args[:4]
        for n, arg in zip(live, inner.args[4:]):
            self.buffer[n.id] = arg
        for node_id, at in direct.items():
            if self.width > 1:
                self.stride[node_id] = self.out_stride
            self.buffer[node_id] = self.element(self.out_ptr, ir.Constant(I64, at),
                                                self.stride.get(node_id))
        minus_zero = self.const(-0.0)
        for head in set(self.family.values()):      # families: added into from the start
            node = self.graph.nodes[head]
            self.loop(node.size, lambda k, n=node: self.store(n, k, minus_zero))
        for m, head in self.family.items():
            self.buffer[m] = self.buffer[head]
            if head in self.stride:
                self.stride[m] = self.stride[head]
        for view_id, x in views.items():
            view = self.graph.nodes[view_id]
            start = view.attrs[0].affine[0]
            if view_id in self.stride:
                self.stride[x.id] = self.stride[view_id]
            self.buffer[x.id] = self.slot(view, ir.Constant(I64, start))
            for lo, hi in ((0, start), (start + x.size, view.size)):
                if hi > lo:
                    self.loop(hi, lambda k, v=view: self.store(v, k, minus_zero),
                              start=ir.Constant(I64, lo))
        for group in groups:
            self.group(group)
        pos = 0
        for o in self.outputs:
            if direct.get(o.id) == pos:
                pos += o.size
                continue

            def copy(k, o=o, pos=pos):
                at = b.add(k, ir.Constant(I64, pos)) if pos else k
                self.write(self.at(o, k), self.element(
                    self.out_ptr, at, self.out_stride if self.width > 1 else None))
            if o.size == 1:
                copy(ir.Constant(I64, 0))
            else:
                self.loop(o.size, copy)
            pos += o.size
        b.ret_void()
        return self.outer(inner, live)

    def outer(self, inner: ir.Function, live: list) -> ir.Function:
        """The kernel: scratch for the buffers (stack, or heap when large; the batch's
        scratch for a kernel over several points), then the loops."""
        total = self.width * sum(n.size for n in live)
        if self.width > 1:
            fn = kernel_fn(self.module, self.name, (PTR,))
            b = ir.IRBuilder(fn.append_basic_block("entry"))
            self.call_inner(b, fn, inner, live, fn.args[4])
            b.ret_void()
            return fn
        fn = kernel_fn(self.module, self.name)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        n_out = sum(o.size for o in self.outputs)
        buf, heap = scratch_buffer(b, total, fn.args[2], fn.args[3], n_out) if total \
            else (None, False)
        self.call_inner(b, fn, inner, live, buf)
        if heap:
            free_buffer(b, buf)
        b.ret_void()
        return fn

    def call_inner(self, b, fn, inner, live, buf) -> None:
        pointers, off = [], 0
        for n in live:
            pointers.append(b.gep(buf, [ir.Constant(I64, off)], source_etype=DOUBLE))
            off += self.width * n.size
        b.call(inner, [*fn.args[:4], *pointers])

    def loop(self, stop, body, carried: Sequence[ir.Value] = (), start=None) -> list:
        """``for k in range(start, stop): carried = body(k, *carried)`` (at least one
        iteration; bounds ints or i64 values); the carried values after the last."""
        b, fn = self.b, self.fn
        start = ir.Constant(I64, 0) if start is None else start
        stop = ir.Constant(I64, stop) if isinstance(stop, int) else stop
        pre = b.block
        head = fn.append_basic_block("loop")
        done = fn.append_basic_block("loop.end")
        b.branch(head)
        b.position_at_end(head)
        k = b.phi(I64, name="k")
        k.add_incoming(start, pre)
        phis = []
        for v in carried:
            p = b.phi(v.type)
            p.add_incoming(v, pre)
            phis.append(p)
        new = body(k, *phis) if phis else (body(k), ())[1]
        nxt = b.add(k, ir.Constant(I64, 1))
        k.add_incoming(nxt, b.block)
        for p, v in zip(phis, new):
            p.add_incoming(v, b.block)
        b.cbranch(b.icmp_signed("<", nxt, stop), head, done)
        b.position_at_end(done)
        return list(new)            # the exit's only predecessor is the latch

    def scattered(self, n: Node, j: ir.Value) -> ir.Value:
        """Element ``j`` of a sum whose segments are distinct: the one operand element
        that lands there, or -0.0 (the empty sum) where none does."""
        b = self.b
        table, x = n.attrs[0], n.args[0]
        zero = ir.Constant(I64, 0)
        if table.affine is not None and table.affine[1] == 1:
            start, count = table.affine[0], len(table.index)
            k = b.sub(j, ir.Constant(I64, start)) if start else j
            inside = b.icmp_unsigned("<", k, ir.Constant(I64, count))
        else:
            inverse = np.full(n.size, -1, np.int64)
            inverse[table.index] = np.arange(len(table.index))
            g, _ = self.table(inverse.tobytes(), inverse, "inv")
            k = b.sext(self.load(g, j, I32), I64)
            inside = b.icmp_signed(">=", k, zero)
        k = b.select(inside, k, zero)            # in bounds whatever the select picks
        return b.select(inside, self.at(x, k), self.const(-0.0))

    def group(self, group: _Group) -> None:
        """One loop over a group's domain (straight code for size 1). Sums add in numpy's
        order: into one value, a register; into segments that come in runs of
        consecutive elements (a pair's first particle), a loop per run adding in a
        register and storing its total; into other segments, added in their buffer."""
        minus_zero = self.const(-0.0)
        singles, runs, starts = _accumulators(group.nodes)
        for n in group.nodes:
            if _reduces(n) and n.size > 1 and n.id not in self.family:
                self.loop(n.size, lambda k, n=n: self.store(n, k, minus_zero))

        def element(k, singles_acc, runs_acc):
            acc = dict(zip((n.id for n in singles + runs), (*singles_acc, *runs_acc)))
            self.elements(group, k, acc)
            return [acc[n.id] for n in singles], [acc[n.id] for n in runs]

        start = [minus_zero] * len(singles)
        if group.domain == 1:
            finals = element(ir.Constant(I64, 0), start, [])[0]
        elif not runs:
            finals = self.loop(group.domain, lambda k, *acc: element(k, acc, [])[0], start)
        else:
            finals = self.runs_loop(element, singles, runs, starts)
        for n, v in zip(singles, finals):
            self.scalars[n.id] = v

    def elements(self, group: _Group, k: ir.Value, acc: dict) -> None:
        """Element ``k`` of every node of the group: pointwise values in registers (stored
        where they have a buffer), sums added into ``acc`` (their registers) or their
        buffer at ``k``'s segment."""
        b = self.b
        vals: dict[int, ir.Value] = {}

        def get(a):
            v = vals.get(a.id)
            return v if v is not None else self.at(a, k)
        for n in group.nodes:
            if _reduces(n):
                for c in self.cones.get(n.id, ()):     # its operand, recomputed here
                    if c.id not in vals:
                        vals[c.id] = self.at(c.args[0], self.position(c.attrs[0], k)) \
                            if c.op == "gather" else \
                            lower_node(b, self.module, c, [get(a) for a in c.args],
                                       self.flags, self.vector_math)
                x = get(n.args[0])
                if n.id in acc:
                    acc[n.id] = b.fadd(acc[n.id], x, flags=self.flags)
                else:
                    p = self.slot(n, self.position(n.attrs[0], k))
                    self.write(b.fadd(self.read(p), x, flags=self.flags), p)
                continue
            if n.op == "gather":
                src = n.args[0]
                v = self.at(src, self.position(n.attrs[0], k)) if src.size > 1 \
                    else self.at(src, ir.Constant(I64, 0))
            elif n.op == "sum":             # distinct segments: -0.0 + x == x
                v = self.scattered(n, k)
            else:
                v = lower_node(b, self.module, n, [get(a) for a in n.args], self.flags,
                               self.vector_math)
            vals[n.id] = v
            if n.id in self.buffer:
                self.store(n, k, v)
        if group.domain == 1:
            self.scalars.update(vals)

    def runs_loop(self, element, singles: list, runs: list, starts: np.ndarray) -> list:
        """A loop over the runs, each an inner loop over its elements adding the run sums
        in registers and storing (or, a family's, adding) their totals at the run's
        segment; the single sums' registers carried through. Their final values."""
        b, minus_zero, n_single = self.b, self.const(-0.0), len(singles)
        g, _ = self.table(starts.tobytes(), starts, "runs")

        def run(r, *singles_acc):
            lo = b.sext(self.load(g, r, I32), I64)
            hi = b.sext(self.load(g, b.add(r, ir.Constant(I64, 1)), I32), I64)

            def step(k, *acc):
                one, many = element(k, acc[:n_single], acc[n_single:])
                return one + many
            out = self.loop(hi, step, list(singles_acc) + [minus_zero] * len(runs), lo)
            for n, total in zip(runs, out[n_single:]):
                p = self.slot(n, self.position(n.attrs[0], lo))
                if n.id in self.family:         # into the family's buffer
                    total = b.fadd(self.read(p), total, flags=self.flags)
                self.write(total, p)
            return out[:n_single]
        return self.loop(len(starts) - 1, run, [minus_zero] * n_single)


def _accumulators(nodes: list) -> tuple[list, list, np.ndarray]:
    """(sums into one value, sums over runs sharing one loop over them, those runs'
    starts): the sums of a group that add in registers."""
    sums = [n for n in nodes if _reduces(n)]
    singles = [n for n in sums if n.size == 1]
    runs = [n for n in sums if n.size > 1 and n.attrs[0].runs() == "runs"]
    starts = _run_starts(runs[0].attrs[0].index) if runs else np.zeros(1, np.int64)
    # several run sums share the loop over runs only where their runs coincide
    runs = [n for n in runs if np.array_equal(_run_starts(n.attrs[0].index), starts)]
    return singles, runs, starts


def _run_starts(index: np.ndarray) -> np.ndarray:
    """Where each run of equal values starts, and the end: ``[0, ..., len(index)]``."""
    cut = np.flatnonzero(index[1:] != index[:-1]) + 1
    return np.concatenate(([0], cut, [len(index)]))


def emit_kernel(module: ir.Module, graph: Graph, outputs: Sequence[Node], name: str,
                flags: tuple = (), width: int = 1, vector_math: bool = False) -> ir.Function:
    """``void name(const double* in, i64 1, double* out, i64 1)`` for ``outputs``, each
    written in turn to ``out`` (all its elements). With ``width`` > 1: ``void name(in,
    is, out, os, double* buffer)`` over that many points of the batch entry's tile, one
    per lane, each computed as a single call computes it (libm lane by lane unless
    ``vector_math``); ``buffer`` holds ``buffer_doubles(...)`` doubles."""
    return _Emitter(module, graph, outputs, name, flags, width, vector_math).emit()


def buffer_doubles(graph: Graph, outputs: Sequence[Node], width: int) -> int:
    """Scratch doubles the ``width``-point kernel needs (its stored values)."""
    p = plan(graph, outputs, fuse=width > 1)
    elsewhere = {x.id for x in p.views.values()} | {o.id for o in outputs}
    return width * sum(n.size for n in graph.live(outputs)
                       if n.id in p.stored and n.id not in elsewhere)
