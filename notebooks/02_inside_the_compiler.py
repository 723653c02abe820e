# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Inside the compiler
#
# We follow one function through every stage of symad:
#
# $$f(x_1, x_2) = \ln x_1 + x_1 x_2 - \sin x_2 \quad \text{at } (x_1, x_2) = (2, 5),$$
#
# the running example of Baydin et al., *Automatic differentiation in machine learning:
# a survey* (JMLR 2018, Table 3): the forward DAG, the adjoint DAG built by extending it in
# reverse topological order, then LLVM IR before and after optimisation, and the machine
# code.

# %%
import json

import matplotlib.pyplot as plt
import sympy as sp

import symad
from symad.ad import vjp_nodes
from symad.dot import draw, has_graphviz, to_dot
from symad.interp import evaluate
from symad.ops import OPS


def f(x1, x2):
    import numpy as np
    return np.log(x1) + x1 * x2 - np.sin(x2)


X = (2.0, 5.0)

# %% [markdown]
# ## 1. The forward DAG
#
# Tracing runs `f` once on tracers; each operation becomes an interned node (building the
# same operation on the same operands twice returns the same node). The listing is in
# creation order, which is a topological order.

# %%
g = symad.trace(f, *X)
print(g)
print(dict(g.count_ops()))

# %% [markdown]
# The primal trace: the value of every node at $(2, 5)$ (Baydin's $v_{-1} = x_1$,
# $v_0 = x_2$, $v_1 \dots v_5$ are our `%0 ... %6`).

# %%
fwd_nodes = g.live(g.outputs)
env = dict(zip(g.inputs, X))
values = dict(zip(fwd_nodes, evaluate(g, fwd_nodes, env)))
for n in fwd_nodes:
    print(f"{n.line():<22} = {float(values[n]): .6f}")

# %% [markdown]
# As a picture (Graphviz `dot` text is always available; the image uses Graphviz where it
# is installed, otherwise matplotlib):

# %%
print(to_dot(g))


# %%
def show(graph, outputs=None, split_at=None):
    if has_graphviz():
        from IPython.display import SVG, display

        from symad.dot import render
        display(SVG(filename=render(graph, "graph.svg", outputs=outputs, split_at=split_at)))
    else:
        draw(graph, outputs, split_at=split_at)
        plt.show()


show(g)

# %% [markdown]
# ## 2. The adjoint DAG, step by step
#
# Reverse mode seeds $\bar v_y = \partial y / \partial y = 1$ and visits the nodes in
# reverse topological order. A node $v_j$ with adjoint $\bar v_j$ sends each operand
# $v_i$ the *partial adjoint* $\bar v_{i \leftarrow j} = \bar v_j \, \partial v_j /
# \partial v_i$, and an operand's adjoint is the sum of the partial adjoints it receives:
# $\bar v_i = \sum_j \bar v_{i \leftarrow j}$. Every node has been visited once all its
# users have, because users come later in the order.
#
# Here is the sweep with numbers. Each op's local partials come from the op table (the
# same rows symad uses; we take them through the row's sympy column here so they print).

# %%
def local_partials(n):
    """d n / d arg_i at the current values, from the op table's sympy counterpart."""
    syms = sp.symbols(f"a0:{len(n.args)}")
    expr = OPS[n.op].sympy(*syms, *n.attrs)
    point = {s: float(values[a]) for s, a in zip(syms, n.args)}
    return [sp.diff(expr, s) for s in syms], [float(sp.diff(expr, s).subs(point))
                                               for s in syms]


(y,) = g.outputs
bar = {y: 1.0}
print(f"seed: bar{y} = 1")
for n in reversed(fwd_nodes):
    if n not in bar or not n.args:
        continue
    exprs, parts = local_partials(n)
    for a, e, p in zip(n.args, exprs, parts):
        contrib = bar[n] * p
        before = bar.get(a)
        bar[a] = contrib if before is None else before + contrib
        total = "" if before is None else f"; bar{a} = {before:.6f} + {contrib:.6f}"
        print(f"{n.line():<20} partial adjoint bar{a}<-{n} = bar{n} * ({e}) = "
              f"{bar[n]:.6f} * {p:.6f} = {contrib:.6f}{total}")
print()
for x in g.inputs:
    print(f"bar{x} ({x.attrs[0]}) = {bar[x]:.10f}")

# %% [markdown]
# symad does exactly this, but instead of numbers it builds **nodes**: each partial
# adjoint $\bar v_j \cdot \partial v_j/\partial v_i$ is a `mul` node, each sum an `add`
# node, all in the *same* graph as the forward pass (so forward values such as
# `%0 = x1` and `cos` of `%1` are reused, and interning merges repeated work). Structural
# zeros are never built and exact identities fold: the seed is 1, so $1 \cdot p$ is just
# $p$; $\bar v_3 = -1$ would be a `neg`, and adding a negated value is a `sub`
# ($a + (-b) = a - b$ exactly). What is left is the extended graph:

# %%
st = symad.api.trace_call(f, X, grad_argnums=(0, 1))
G = st.graph
n_forward = len(g.nodes)
print(G.to_text(st.outputs))
print(f"forward ops: {sum(1 for n in G.live(st.outputs[:1]) if n.args)}, "
      f"forward + adjoint ops: {sum(1 for n in G.live(st.outputs) if n.args)}")

# %% [markdown]
# The values of the adjoint nodes are the numbers of the sweep above: `%13 = x2 + 1/x1`
# is $\bar x_1 = 5.5$ and `%11 = x1 - cos x2` is $\bar x_2$.

# %%
ext_nodes = G.live(st.outputs)
ext_vals = evaluate(G, ext_nodes, dict(zip(G.inputs, X)))
for n, v in zip(ext_nodes, ext_vals):
    part = "adjoint" if n.id >= n_forward else "forward"
    print(f"{part:>8}  {n.line():<22} = {float(v): .10f}")
grad_graph_values = [float(v) for v in evaluate(G, st.outputs[1:], dict(zip(G.inputs, X)))]
assert all(abs(a - bar[x]) < 1e-12 for a, x in zip(grad_graph_values, g.inputs))

# %% [markdown]
# Forward nodes in blue, adjoint nodes in orange: the gradient is a DAG that grows out of
# the forward DAG, which is also why `grad(grad(f))` needs no new machinery.

# %%
print(to_dot(G, st.outputs, split_at=n_forward, output_names=["f", "df/dx1", "df/dx2"]))
show(G, st.outputs, split_at=n_forward)

# %% [markdown]
# The extended graph, converted to sympy, is the symbolic gradient:

# %%
value_expr, *grad_exprs = symad.to_sympy(G, st.outputs)
print(value_expr)
print(grad_exprs)
print(symad.symbolic_grad(f, *X))

# %% [markdown]
# One refinement of the sweep: a node used **once** (here `x1 * x2`, `log x1`, `sin x2`)
# does not need an adjoint node of its own. symad passes its consumer's adjoint on with a
# *weight*, the product of the partials on the way, computed from forward values alone;
# where two such paths meet, their weights add before the one multiplication by the
# adjoint (preaccumulating local Jacobians, in Griewank & Walther's *Evaluating
# Derivatives*). The number of operations stays the same, but the chain of operations
# that wait for an adjoint gets shorter. For the logistic map
# $x \leftarrow r x (1 - x)$, adjoint by adjoint, $\bar x = \bar x' (1 - x) r - \bar x' r x$
# is three dependent operations per step; with weights it is $\bar x = \bar x' \cdot J$,
# $J = (1 - x) r - r x$, one:

# %%
def logistic(r, x):
    for _ in range(10):
        x = r * x * (1.0 - x)
    return x


Lst = symad.api.trace_call(logistic, (3.7, 0.3))
L, (r_in, x_in) = Lst.graph, Lst.graph.inputs
seed = L.variable("seed")          # a symbolic seed, so adjoint nodes stand out
bar_r, bar_x0 = vjp_nodes(L, Lst.outputs, [seed], [r_in, x_in])
depth = {seed: 0}
for n in L.nodes[seed.id + 1:]:
    if any(a in depth for a in n.args):
        depth[n] = 1 + max(depth[a] for a in n.args if a in depth)
print(f"10 steps: {depth[bar_x0]} dependent operations from the seed to bar(x0)")
chain_depth = depth[bar_x0]

# %% [markdown]
# ## 3. LLVM IR, before and after optimisation
#
# `symad.compile_grad` lowers the extended graph to one LLVM function that computes the
# value and the gradient together: one SSA instruction per node, named after it (`%v6` is
# node `%6`), built by walking the nodes in order. The module also holds a batch loop and
# a Python entry point; we show the kernel.


# %%
def function_text(text, name, end_marker):
    """The lines of one function of an IR or assembly listing."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if name in ln and
                  (ln.startswith("define") or ln.startswith(name + ":"))), None)
    if start is None:
        return text[:3000]
    out = []
    for ln in lines[start:]:
        out.append(ln)
        if ln.strip().startswith(end_marker):
            break
    return "\n".join(out)


compile_grad = getattr(symad, "compile_grad", None)
if compile_grad is None:
    print("symad.compile_grad is not available in this build (issue 3); "
          "the IR and assembly cells below are skipped.")
else:
    cf = compile_grad(f, argnums=None)
    value, grads = cf(*X)
    print("compiled value and gradient:", value, grads)
    kernel = next(ln.split("@")[1].split("(")[0].strip('"') for ln in cf.llvm_ir.splitlines()
                  if ln.startswith("define") and "kernel" in ln)
    print(function_text(cf.llvm_ir, kernel, "}"))

# %% [markdown]
# After LLVM's optimisation pipeline (IEEE-exact, no fast-math flags): the index
# arithmetic is simplified and, typically, `fneg` + `fadd` has become one `fsub` (exact in
# IEEE: $a + (-b) = a - b$). The transcendental calls stay.

# %%
if compile_grad is not None:
    opt_kernel = function_text(cf.optimized_ir, kernel, "}")
    print(opt_kernel)
    raw_kernel = function_text(cf.llvm_ir, kernel, "}")
    n_raw = sum(1 for ln in raw_kernel.splitlines() if " = " in ln or "store" in ln)
    n_opt = sum(1 for ln in opt_kernel.splitlines() if " = " in ln or "store" in ln)
    print(f"\ninstructions in the kernel: {n_raw} before, {n_opt} after optimisation")
    print("fneg left after optimisation:", "fneg" in opt_kernel)

# %% [markdown]
# ## 4. Assembly
#
# The native code for the host CPU. The sine and cosine of the same $x_2$ are usually
# fused into one `sincos` call by the code generator.

# %%
if compile_grad is not None:
    asm_kernel = function_text(cf.asm, kernel, ".Lfunc_end")
    print(asm_kernel)
    print("\nuses sincos:", "sincos" in asm_kernel)
    print(cf.stats)

# %% [markdown]
# The numbers this notebook's test checks (`tests/test_notebooks.py`):

# %%
KEY = {
    "forward_ops": sum(1 for n in fwd_nodes if n.args),
    "extended_ops": sum(1 for n in ext_nodes if n.args),
    "sweep_grad": [bar[x] for x in g.inputs],
    "logistic_reverse_chain_10_steps": chain_depth,
    "graph_grad": grad_graph_values,
    "compiled_grad": None if compile_grad is None else [float(v) for v in grads],
}
print("SYMAD_KEY_NUMBERS " + json.dumps(KEY))
