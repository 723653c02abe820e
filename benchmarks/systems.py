"""One adapter per system: build value+gradient for a problem, and its call/batch paths.

An adapter's ``build(problem)`` traces/differentiates/compiles and makes the first call
(so lazy compilation is inside the build time), returning an :class:`Impl`:

- ``call()``: the ordinary path at the test point (what a user writes), numbers out;
- ``fast()``: the fastest documented single-point path (``None``: same as ``call``);
- ``batch(X)``: given an (N, n) array, returns a zero-argument callable running the
  system's native batching on inputs already converted to its native layout;
- ``value()``: builds the value-only counterpart, returning ``(single, batch)`` like the
  above (used only for the cheap-gradient ratio; not part of the build time).

Library imports happen in ``setup()``, outside the build time.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

from .problems import Problem, object_namespace, symad_namespace


@dataclass
class Impl:
    call: Callable[[], Any]
    result: Callable[[Any], tuple]        # call() result -> (value, flat gradient)
    fast: Callable[[], Any] | None = None
    fast_label: str = ""
    batch: Callable[[np.ndarray], Callable[[], Any]] | None = None
    value: Callable[[], tuple] | None = None
    notes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class System:
    name: str
    modules: tuple              # import names that must be present
    build: Callable[[Problem], Impl]
    ordinary: str               # what the ordinary path is
    fastest: str                # what the fastest documented path is
    batching: str
    supports: Callable[[Problem], bool] = lambda p: True
    setup: Callable[[], None] = lambda: None

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)


def _flat(v, g) -> tuple:
    if isinstance(g, (tuple, list)):
        g = np.array([float(gi) for gi in g])
    return float(v), np.asarray(g, dtype=np.float64).ravel()


def _objarray(items) -> np.ndarray:
    a = np.empty(len(items), dtype=object)
    for i, s in enumerate(items):
        a[i] = s
    return a


# ---- symad ------------------------------------------------------------------------------

BATCH_FASTMATH = ("afn",)


def build_symad(p: Problem) -> Impl:
    import symad
    m = symad_namespace()

    def f(*a):
        return p.fn(m, *a)
    f.__name__ = p.name
    cf = symad.compile_grad(f, argnums=None)      # every argument
    args = p.args()
    cf(*args)

    # One thread, like every other system's batching here (symad's default would use
    # all cores once a batch is large); results into arrays allocated once, like the
    # hand-written numba loop's. Batches compile with fastmath=("afn",), symad's
    # documented fast path for transcendentals: glibc's libmvec, four points per call,
    # within a few ulp of scalar libm (JAX's CPU backend likewise vectorises its own
    # approximations); arithmetic stays IEEE. The single calls above use the default.
    batch_f = symad.compile_grad(f, argnums=None, fastmath=BATCH_FASTMATH)

    def batch(X):
        bargs = p.batch_args(X)
        out = batch_f.batch(*bargs, threads=1)
        return lambda: batch_f.batch(*bargs, threads=1, out=out)

    def value():
        cv = symad.compile(f)
        cv(*args)
        cvb = symad.compile(f, fastmath=BATCH_FASTMATH)

        def vbatch(X):
            bargs = p.batch_args(X)
            out = cvb.batch(*bargs, threads=1)
            return lambda: cvb.batch(*bargs, threads=1, out=out)
        return (lambda: cv(*args)), vbatch
    stats = cf.stats
    return Impl(call=lambda: cf(*args), result=lambda r: _flat(*r), batch=batch, value=value,
                extra={"stats": {"nodes": stats["nodes"], "seconds": stats["seconds"],
                                 "opt_level": stats["opt_level"]}})


# ---- JAX --------------------------------------------------------------------------------

def setup_symad():
    import scipy.special  # noqa: F401 (the problems' erf namespace: an import, not build)

    import symad  # noqa: F401
    from symad.codegen import batch_entry, jit, lower, py_entry, roll  # noqa: F401 (imports)
    jit._start()         # LLVM target start-up is not build time (as jax.devices() for JAX)


def setup_jax():
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    jax.devices()        # backend start-up is not build time


def build_jax(p: Problem) -> Impl:
    import jax
    import jax.numpy as jnp
    import jax.scipy.special
    m = SimpleNamespace(sin=jnp.sin, cos=jnp.cos, exp=jnp.exp, log=jnp.log, sqrt=jnp.sqrt,
                        tanh=jnp.tanh, erf=jax.scipy.special.erf, sum=jnp.sum, max=jnp.max,
                        einsum=jnp.einsum)

    def f(*a):
        return p.fn(m, *a)
    argnums = tuple(range(p.n)) if p.kind == "scalars" else 0
    vg = jax.jit(jax.value_and_grad(f, argnums=argnums))
    args = p.args()
    jax.block_until_ready(vg(*args))
    dev = [jax.device_put(a) for a in args]
    jax.block_until_ready(vg(*dev))

    def batch_of(fn):
        vm = jax.jit(jax.vmap(fn))

        def prep(X):
            b = [jax.device_put(a) for a in p.batch_args(X)]
            return lambda: jax.block_until_ready(vm(*b))
        return prep

    def value():
        jf = jax.jit(f)
        jax.block_until_ready(jf(*dev))
        return (lambda: jax.block_until_ready(jf(*dev))), batch_of(f)
    return Impl(call=lambda: jax.device_get(vg(*args)), result=lambda r: _flat(*r),
                fast=lambda: jax.block_until_ready(vg(*dev)),
                fast_label="jit, device arrays in, block_until_ready",
                batch=batch_of(jax.value_and_grad(f, argnums=argnums)), value=value,
                notes=["x64 enabled; CPU backend"])


# ---- autograd ---------------------------------------------------------------------------

def build_autograd(p: Problem) -> Impl:
    import autograd
    import autograd.numpy as anp
    import autograd.scipy.special as asp
    m = SimpleNamespace(sin=anp.sin, cos=anp.cos, exp=anp.exp, log=anp.log, sqrt=anp.sqrt,
                        tanh=anp.tanh, erf=asp.erf, sum=anp.sum, max=anp.max,
                        einsum=anp.einsum)
    if p.kind == "scalars":
        def f(x):
            return p.fn(m, *[x[..., i] for i in range(p.n)])
    else:
        def f(x):
            return p.fn(m, x)
    vg = autograd.value_and_grad(f)
    x0 = np.array(p.point, dtype=np.float64)
    vg(x0)
    bvg = autograd.value_and_grad(lambda X: anp.sum(f(X)))

    def value():
        return (lambda: f(x0)), (lambda X: (lambda: f(X)))
    return Impl(call=lambda: vg(x0), result=lambda r: _flat(*r),
                batch=lambda X: (lambda: bvg(X)), value=value,
                notes=["no compilation; batch = grad of the sum over a broadcast batch"])


# ---- SymPy ------------------------------------------------------------------------------

def _symbolic(p: Problem, lib, syms):
    m = object_namespace(lib)
    if p.kind == "scalars":
        return p.fn(m, *syms)
    return p.fn(m, _objarray(syms))


def build_sympy(p: Problem) -> Impl:
    import sympy as sp
    syms = sp.symbols(f"x0:{p.n}")
    expr = _symbolic(p, sp, syms)
    grads = [sp.diff(expr, s) for s in syms]
    mods = ["scipy", "numpy"]
    lam = sp.lambdify(syms, [expr, *grads], modules=mods, cse=True)
    args = tuple(float(v) for v in p.point)
    lam(*args)

    def result(r):
        return float(r[0]), np.array([float(v) for v in r[1:]])

    def batch(X):
        cols = [np.ascontiguousarray(X[:, i]) for i in range(p.n)]
        return lambda: lam(*cols)

    def value():
        lv = sp.lambdify(syms, expr, modules=mods, cse=True)
        lm = sp.lambdify(syms, expr, modules="math", cse=True)
        return (lambda: lm(*args)), (lambda X: (lambda c: (lambda: lv(*c)))(
            [np.ascontiguousarray(X[:, i]) for i in range(p.n)]))

    def fast_builder():
        lm = sp.lambdify(syms, [expr, *grads], modules="math", cse=True)
        return lambda: lm(*args)
    impl = Impl(call=lambda: lam(*args), result=result, batch=batch, value=value,
                fast_label="lambdify(modules='math', cse=True) on Python floats",
                notes=["lambdify(modules=['scipy','numpy'], cse=True); batch = numpy "
                       "broadcasting over columns"])
    impl.extra["fast_builder"] = fast_builder
    return impl


# ---- SymEngine --------------------------------------------------------------------------

def _symengine_backend():
    import symengine as se
    try:
        se.Lambdify([se.Symbol("t")], [se.Symbol("t")], backend="llvm")
        return "llvm"
    except Exception:   # noqa: BLE001 (a wheel without LLVM)
        return "lambda"


def build_symengine(p: Problem) -> Impl:
    import symengine as se
    syms = [se.Symbol(f"x{i}") for i in range(p.n)]
    expr = _symbolic(p, se, syms)
    grads = [expr.diff(s) for s in syms]
    backend = _symengine_backend()
    lam = se.Lambdify(syms, [expr, *grads], cse=True, backend=backend)
    x0 = np.array(p.point, dtype=np.float64)
    out = np.empty(p.n + 1)
    lam(x0)
    lam(x0, out=out)

    def value():
        lv = se.Lambdify(syms, [expr], cse=True, backend=backend)
        o1 = np.empty(1)
        return (lambda: lv(x0, out=o1)), (lambda X: (lambda: lv(X)))
    return Impl(call=lambda: lam(x0), result=lambda r: (float(r[0]), np.array(r[1:], float)),
                fast=lambda: lam(x0, out=out), fast_label="Lambdify(x, out=preallocated)",
                batch=lambda X: (lambda: lam(X)), value=value,
                notes=[f"Lambdify(cse=True, backend='{backend}'); batch = 2-D array"])


# ---- CasADi -----------------------------------------------------------------------------

def _casadi_function(p: Problem, name: str, with_grad=True):
    import casadi as ca
    if p.kind == "scalars":
        xs = [ca.SX.sym(f"x{i}") for i in range(p.n)]
        inputs, expr, xvec = xs, _symbolic(p, ca, xs), ca.vertcat(*xs)
    else:
        x = ca.SX.sym("x", p.n)
        inputs, xvec = [x], x
        expr = _symbolic(p, ca, [x[i] for i in range(p.n)])
    outs = [expr, ca.gradient(expr, xvec)] if with_grad else [expr]
    return ca.Function(name, inputs, outs), inputs, outs


def _casadi_paths(p: Problem, F, n_out_sizes):
    """Ordinary (DM) call, buffer call and map batch of a casadi Function."""
    import casadi as ca
    args = p.args()
    bufs_in = [np.array([a]) if p.kind == "scalars" else a.copy() for a in args]
    bufs_out = [np.empty(k) for k in n_out_sizes]
    buf, ev = F.buffer()
    for i, b in enumerate(bufs_in):
        buf.set_arg(i, memoryview(b))
    for i, b in enumerate(bufs_out):
        buf.set_res(i, memoryview(b))
    ev()
    keep = (buf, ev, bufs_in, bufs_out)     # casadi holds raw pointers, not references

    def fast():
        return keep[1]()

    def batch(X):
        fm = F.map(X.shape[0])
        if p.kind == "scalars":
            dms = [ca.DM(np.ascontiguousarray(X[:, i])[None, :]) for i in range(p.n)]
        else:
            dms = [ca.DM(np.ascontiguousarray(X.T))]
        return lambda: fm(*dms)
    return (lambda: F(*args)), fast, batch


def build_casadi(p: Problem, compiled_c=False) -> Impl:
    import casadi as ca
    F, inputs, outs = _casadi_function(p, "F")
    notes = ["SX Function (virtual machine); batch = Function.map (serial)"]
    tmp = None
    if compiled_c:
        tmp = tempfile.mkdtemp(prefix="symad_bench_casadi_")
        F = _compile_c(F, tmp)
        notes = [f"Function.generate + `{CC} {' '.join(CFLAGS)}`, loaded with "
                 "casadi.external; batch = map (serial)"]
    call, fast, batch = _casadi_paths(p, F, [1, p.n])

    def result(r):
        return float(r[0]), np.array(r[1]).ravel()

    def value():
        Fv = ca.Function("Fv", inputs, [outs[0]])
        if compiled_c:
            Fv = _compile_c(Fv, tmp)
        _, vfast, vbatch = _casadi_paths(p, Fv, [1])
        return vfast, vbatch
    return Impl(call=call, result=result, fast=fast,
                fast_label="Function.buffer() with preallocated numpy memoryviews",
                batch=batch, value=value, notes=notes)


CC = shutil.which("cc") or shutil.which("gcc")
CFLAGS = ("-O3", "-fPIC", "-shared")


def _compile_c(F, tmp: str):
    import casadi as ca
    cname = f"{F.name()}.c"
    here = os.getcwd()
    os.chdir(tmp)            # Function.generate writes into the working directory
    try:
        F.generate(cname, {"with_header": False})
    finally:
        os.chdir(here)
    src = os.path.join(tmp, cname)
    so = os.path.join(tmp, f"{F.name()}.so")
    subprocess.run([CC, *CFLAGS, src, "-o", so], check=True, capture_output=True)
    return ca.external(F.name(), so)


# ---- numba (hand-written gradients) -----------------------------------------------------

NUMBA_PROBLEMS = ("closed_form", "rosenbrock", "lennard_jones")


def _numba_kernels(p: Problem):
    import math

    from numba import njit
    if p.name == "closed_form":
        @njit
        def vg(x, g):
            g[0] = 1.0 / x[0] + x[1]
            g[1] = x[0] - math.cos(x[1])
            return math.log(x[0]) + x[0] * x[1] - math.sin(x[1])

        @njit
        def val(x):
            return math.log(x[0]) + x[0] * x[1] - math.sin(x[1])
    elif p.name.startswith("rosenbrock"):
        @njit
        def vg(x, g):
            n = x.shape[0]
            for i in range(n):
                g[i] = 0.0
            s = 0.0
            for i in range(n - 1):
                a = x[i + 1] - x[i] * x[i]
                b = 1.0 - x[i]
                s += 100.0 * a * a + b * b
                g[i] += -400.0 * a * x[i] - 2.0 * b
                g[i + 1] += 200.0 * a
            return s

        @njit
        def val(x):
            s = 0.0
            for i in range(x.shape[0] - 1):
                a = x[i + 1] - x[i] * x[i]
                b = 1.0 - x[i]
                s += 100.0 * a * a + b * b
            return s
    else:
        @njit
        def vg(x, g):
            n = x.shape[0] // 3
            for i in range(3 * n):
                g[i] = 0.0
            e = 0.0
            for i in range(n):
                for j in range(i + 1, n):
                    dx = x[3 * i] - x[3 * j]
                    dy = x[3 * i + 1] - x[3 * j + 1]
                    dz = x[3 * i + 2] - x[3 * j + 2]
                    inv = 1.0 / (dx * dx + dy * dy + dz * dz)
                    s6 = inv * inv * inv
                    e += 4.0 * (s6 * s6 - s6)
                    c = (-48.0 * s6 * s6 + 24.0 * s6) * inv   # dE/dr2 * 2
                    g[3 * i] += c * dx
                    g[3 * i + 1] += c * dy
                    g[3 * i + 2] += c * dz
                    g[3 * j] -= c * dx
                    g[3 * j + 1] -= c * dy
                    g[3 * j + 2] -= c * dz
            return e

        @njit
        def val(x):
            n = x.shape[0] // 3
            e = 0.0
            for i in range(n):
                for j in range(i + 1, n):
                    dx = x[3 * i] - x[3 * j]
                    dy = x[3 * i + 1] - x[3 * j + 1]
                    dz = x[3 * i + 2] - x[3 * j + 2]
                    inv = 1.0 / (dx * dx + dy * dy + dz * dz)
                    s6 = inv * inv * inv
                    e += 4.0 * (s6 * s6 - s6)
            return e
    return vg, val


def build_numba(p: Problem) -> Impl:
    import numpy as np_
    from numba import njit
    vg, val = _numba_kernels(p)

    @njit
    def call(x):
        g = np_.empty(x.shape[0])
        return vg(x, g), g

    @njit
    def batch_vg(X, V, G):
        for k in range(X.shape[0]):
            V[k] = vg(X[k], G[k])

    @njit
    def batch_val(X, V):
        for k in range(X.shape[0]):
            V[k] = val(X[k])
    x0 = np.array(p.point, dtype=np.float64)
    g0 = np.empty(p.n)
    call(x0)
    vg(x0, g0)
    val(x0)
    Xs = np.tile(x0, (2, 1))
    batch_vg(Xs, np.empty(2), np.empty((2, p.n)))
    batch_val(Xs, np.empty(2))

    def batch(X):
        V, G = np.empty(X.shape[0]), np.empty_like(X)
        return lambda: batch_vg(X, V, G)

    def value():
        def vb(X):
            V = np.empty(X.shape[0])
            return lambda: batch_val(X, V)
        return (lambda: val(x0)), vb
    return Impl(call=lambda: call(x0), result=lambda r: _flat(*r),
                fast=lambda: vg(x0, g0), fast_label="kernel(x, preallocated g)",
                batch=batch, value=value,
                notes=["hand-written gradient, @njit, serial loop over points; inputs as "
                       "one float64 vector"])


SYSTEMS: dict[str, System] = {s.name: s for s in (
    System("symad", ("llvmlite",), build_symad, "f(*args)", "f(*args) (same entry)",
           "f.batch(..., threads=1, out=preallocated), fastmath=('afn',): libmvec "
           "(native loop)", setup=setup_symad),
    System("jax", ("jax", "jaxlib"), build_jax, "jit(value_and_grad) on numpy in, numpy out",
           "jit(value_and_grad), device arrays, block_until_ready", "jit(vmap(...))",
           setup=setup_jax),
    System("casadi", ("casadi",), build_casadi, "Function(DM/numpy) call",
           "Function.buffer()", "Function.map(N)", supports=lambda p: p.symbolic),
    System("casadi_c", ("casadi",), lambda p: build_casadi(p, compiled_c=True),
           "external(generated C) call", "external Function.buffer()",
           "external Function.map(N)", supports=lambda p: CC is not None and p.symbolic),
    System("symengine", ("symengine",), build_symengine, "Lambdify(x)",
           "Lambdify(x, out=buf)", "Lambdify(2-D array)", supports=lambda p: p.symbolic),
    System("sympy", ("sympy", "scipy"), build_sympy, "lambdify numpy module, cse=True",
           "lambdify math module, cse=True", "numpy broadcasting",
           supports=lambda p: p.symbolic),
    System("autograd", ("autograd", "scipy"), build_autograd, "value_and_grad(f)(x)",
           "value_and_grad(f)(x) (no faster path)", "grad of sum over a broadcast batch"),
    System("numba", ("numba",), build_numba, "@njit value+grad returning (v, g)",
           "@njit kernel(x, preallocated g)", "@njit serial loop",
           supports=lambda p: p.name.startswith(NUMBA_PROBLEMS)),
)}

DEFAULT_SYSTEMS = tuple(SYSTEMS)
