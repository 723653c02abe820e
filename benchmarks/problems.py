"""The benchmark problems, written once against a small math namespace.

Each problem is a plain function ``fn(m, *args)`` where ``m`` supplies the elementary
functions (``m.sin``, ``m.tanh``, ``m.erf``, ``m.sum`` ...). The same source is traced by
symad (``m`` = numpy), JAX (``jax.numpy``), autograd (``autograd.numpy``) and evaluated on
numpy object arrays of symbols for SymPy, SymEngine and CasADi SX. Array code uses
``...`` indexing and ``axis=-1`` reductions, so it also broadcasts over a leading batch
axis (autograd's and SymPy-lambdify's batching is numpy broadcasting).

A problem's arguments are either ``n`` scalars (``kind="scalars"``: ``f(x1, x2)``) or
one vector of length ``n`` (``kind="vector"``: ``f(x)``); gradients are compared
flattened, in that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Problem:
    name: str
    kind: str                    # "scalars" | "vector"
    n: int                       # number of scalar inputs
    fn: Callable                 # fn(m, *args) -> scalar
    point: tuple                 # the test point, n floats
    sampler: Callable            # sampler(rng, N) -> (N, n) array of batch points
    description: str = ""
    params: dict = field(default_factory=dict)
    symbolic: bool = True        # small enough for the symbolic systems (SymPy, CasADi ...)

    def args(self, x=None):
        """Arguments in the problem's calling convention from a flat point."""
        x = np.asarray(self.point if x is None else x, dtype=np.float64)
        if self.kind == "scalars":
            return tuple(float(v) for v in x)
        return (x.copy(),)

    def batch_args(self, X):
        """Batch arguments (leading axis N) from an (N, n) array."""
        if self.kind == "scalars":
            return tuple(np.ascontiguousarray(X[:, i]) for i in range(self.n))
        return (np.ascontiguousarray(X),)


# ---- math namespaces --------------------------------------------------------------------

def numpy_namespace():
    """Float numpy (reference evaluation) and symad tracing: numpy ufuncs trace."""
    import scipy.special
    return SimpleNamespace(sin=np.sin, cos=np.cos, exp=np.exp, log=np.log, sqrt=np.sqrt,
                           tanh=np.tanh, erf=scipy.special.erf, sum=np.sum, max=np.max,
                           einsum=np.einsum)


def symad_namespace():
    """numpy, plus symad's erf op (symad has no public erf; see the report)."""
    import scipy.special

    from symad.trace import TracedArray, Tracer, apply

    def erf(x):
        if isinstance(x, TracedArray):
            return np.frompyfunc(lambda v: apply("erf", (v,)), 1, 1)(x).view(TracedArray)
        if isinstance(x, Tracer):
            return apply("erf", (x,))
        return scipy.special.erf(x)
    ns = numpy_namespace()
    ns.erf = erf
    return ns


def object_namespace(lib, erf_name="erf"):
    """Elementwise functions of a symbolic library on numpy object arrays of symbols."""
    def lift(fn):
        ufunc = np.frompyfunc(fn, 1, 1)
        return lambda a: ufunc(a) if isinstance(a, np.ndarray) else fn(a)
    return SimpleNamespace(
        sin=lift(lib.sin), cos=lift(lib.cos), exp=lift(lib.exp), log=lift(lib.log),
        sqrt=lift(lib.sqrt), tanh=lift(lib.tanh), erf=lift(getattr(lib, erf_name)),
        sum=np.sum)


# ---- the functions ------------------------------------------------------------------------

def closed_form(m, x1, x2):
    """Baydin et al.'s example: ln(x1) + x1*x2 - sin(x2)."""
    return m.log(x1) + x1 * x2 - m.sin(x2)


def rosenbrock(m, x):
    return m.sum(100.0 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1.0 - x[..., :-1]) ** 2,
                 axis=-1)


def logistic_map(m, r, x0, *, steps):
    x = x0
    for _ in range(steps):
        x = r * x * (1.0 - x)
    return x


def lennard_jones(m, x):
    """Total LJ energy (epsilon = sigma = 1) of n particles, x = flat positions (3n)."""
    n = x.shape[-1] // 3
    p = x.reshape(x.shape[:-1] + (n, 3))
    i, j = np.triu_indices(n, 1)
    d = p[..., i, :] - p[..., j, :]
    r2 = m.sum(d * d, axis=-1)
    s6 = 1.0 / (r2 * r2 * r2)
    return m.sum(4.0 * (s6 * s6 - s6), axis=-1)


NN_IN, NN_HIDDEN, NN_SAMPLES = 4, 8, 16
_rng = np.random.default_rng(1234)
NN_X = _rng.uniform(-1.0, 1.0, (NN_SAMPLES, NN_IN))
NN_Y = np.sin(NN_X @ np.linspace(0.5, 1.5, NN_IN))
NN_PARAMS = NN_IN * NN_HIDDEN + NN_HIDDEN + NN_HIDDEN + 1


def nn_loss(m, w):
    """Mean squared error of a 4-8-1 tanh network on 16 fixed samples; weights = inputs."""
    a, b = NN_IN * NN_HIDDEN, NN_IN * NN_HIDDEN + NN_HIDDEN
    w1 = w[..., :a].reshape(w.shape[:-1] + (NN_IN, NN_HIDDEN))
    b1 = w[..., a:b]
    w2 = w[..., b:b + NN_HIDDEN]
    b2 = w[..., b + NN_HIDDEN:]
    h = m.tanh(NN_X @ w1 + b1[..., None, :])                 # (..., samples, hidden)
    out = m.sum(h * w2[..., None, :], axis=-1) + b2          # (..., samples)
    return m.sum((out - NN_Y) ** 2, axis=-1) / NN_SAMPLES


def black_scholes(m, s, k, t, r, sigma):
    """European call price; its gradient is delta, (dC/dK), theta-like, rho and vega."""
    vol = sigma * m.sqrt(t)
    d1 = (m.log(s / k) + (r + 0.5 * sigma * sigma) * t) / vol
    d2 = d1 - vol
    ncdf1 = 0.5 * (1.0 + m.erf(d1 * (1.0 / math.sqrt(2.0))))
    ncdf2 = 0.5 * (1.0 + m.erf(d2 * (1.0 / math.sqrt(2.0))))
    return s * ncdf1 - k * m.exp(-r * t) * ncdf2


_LOG_2PI = math.log(2.0 * math.pi)


# ---- the same programs written with Python loops over scalars (issue 19) --------------------

def lennard_jones_loops(m, x):
    """:func:`lennard_jones` written the way a physicist writes it first: two loops over
    particle pairs and scalar arithmetic (``x[..., k]`` keeps a leading batch axis)."""
    n = x.shape[-1] // 3
    e = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            dx = x[..., 3 * i] - x[..., 3 * j]
            dy = x[..., 3 * i + 1] - x[..., 3 * j + 1]
            dz = x[..., 3 * i + 2] - x[..., 3 * j + 2]
            s6 = 1.0 / (dx * dx + dy * dy + dz * dz) ** 3
            e = e + 4.0 * (s6 * s6 - s6)
    return e


def nn_loss_loops(m, w):
    """:func:`nn_loss` written with loops over samples, hidden units and inputs."""
    a, b = NN_IN * NN_HIDDEN, NN_IN * NN_HIDDEN + NN_HIDDEN
    total = 0.0
    for s in range(NN_SAMPLES):
        out = w[..., b + NN_HIDDEN]
        for h in range(NN_HIDDEN):
            z = w[..., a + h]
            for i in range(NN_IN):
                z = z + NN_X[s, i] * w[..., i * NN_HIDDEN + h]
            out = out + m.tanh(z) * w[..., b + h]
        total = total + (out - NN_Y[s]) ** 2
    return total / NN_SAMPLES


# ---- transcendental-heavy objectives at the default options (issue 19) ---------------------

GAUSS_DATA = np.random.default_rng(11).normal(1.0, 2.0, 64)


def gauss_loglik(m, mu, log_sigma):
    """Negative log-likelihood of 64 fixed points under N(mu, exp(log_sigma)^2), written
    per point as -log(pdf) (an exp and a log per term, as users often write it)."""
    sigma = m.exp(log_sigma)
    total = 0.0
    for xk in GAUSS_DATA:
        z = (xk - mu) / sigma
        total = total - m.log(m.exp(-0.5 * z * z) / (math.sqrt(2.0 * math.pi) * sigma))
    return total


LOGREG_X = np.random.default_rng(12).normal(0.0, 1.0, (32, 4))
LOGREG_Y = np.where(LOGREG_X @ np.array([1.0, -2.0, 0.5, 0.0]) > 0.0, 1.0, -1.0)


def softplus_logreg(m, w):
    """Logistic-regression loss sum softplus(-y x.w) over 32 fixed samples, 4 weights."""
    z = -LOGREG_Y * (LOGREG_X[:, 0] * w[..., 0:1] + LOGREG_X[:, 1] * w[..., 1:2]
                     + LOGREG_X[:, 2] * w[..., 2:3] + LOGREG_X[:, 3] * w[..., 3:4])
    return m.sum(m.log(1.0 + m.exp(z)), axis=-1)


def gmm_einsum(m, theta, *, X, K):
    """Negative log-likelihood of the points ``X`` (N x d) under K diagonal Gaussians;
    ``theta`` holds K rows of (mean (d), log standard deviation (d), weight logit)."""
    N, d = X.shape
    p = theta.reshape(theta.shape[:-1] + (K, 2 * d + 1))
    mu, log_s, logit = p[..., :d], p[..., d:2 * d], p[..., 2 * d]
    diff = X[:, None, :] - mu[..., None, :, :]                       # (..., N, K, d)
    maha = m.einsum("...nkd,...kd,...nkd->...nk", diff, m.exp(-2.0 * log_s), diff)
    log_p = (logit - m.sum(log_s, axis=-1))[..., None, :] - 0.5 * maha
    top = m.max(log_p, axis=-1, keepdims=True)                        # log-sum-exp over K
    lse = top[..., 0] + m.log(m.sum(m.exp(log_p - top), axis=-1))
    # the weights' normaliser, log sum_k exp(logit_k), once for all N points
    top_w = m.max(logit, axis=-1, keepdims=True)
    norm = top_w[..., 0] + m.log(m.sum(m.exp(logit - top_w), axis=-1))
    return N * (norm + 0.5 * d * _LOG_2PI) - m.sum(lse, axis=-1)


def gmm_problem(K: int, d: int, N: int = 1000, name: str | None = None) -> Problem:
    """The Gaussian mixture objective for K components in d dimensions, N points drawn
    from a mixture near the test point."""
    rng = np.random.default_rng(100 * K + d)
    means = rng.normal(0.0, 3.0, (K, d))
    X = means[rng.integers(0, K, N)] + rng.normal(0.0, 1.0, (N, d))
    point = np.concatenate([means + rng.normal(0.0, 0.3, (K, d)),
                            rng.normal(0.0, 0.1, (K, d)), rng.normal(0.0, 0.1, (K, 1))],
                           axis=1).ravel()
    n = point.size
    return Problem(name or f"gmm_einsum_{K}x{d}", "vector", n, _bind(gmm_einsum, X=X, K=K),
                   tuple(point), lambda rng, B: point + rng.normal(0.0, 0.05, (B, n)),
                   f"Gaussian mixture NLL (np.einsum, log-sum-exp), N = {N} points, "
                   f"K = {K} components, d = {d}", {"K": K, "d": d, "N": N},
                   symbolic=False)


# ---- samplers -------------------------------------------------------------------------------

def _uniform(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return lambda rng, N: rng.uniform(lo, hi, (N, lo.size))


def _lattice(n_particles, spacing=1.2, jitter=0.1):
    side = math.ceil(n_particles ** (1 / 3))
    g = np.stack(np.meshgrid(*(np.arange(side),) * 3, indexing="ij"), -1).reshape(-1, 3)
    base = (g[:n_particles] * spacing).ravel()

    def sample(rng, N):
        return base + rng.uniform(-jitter, jitter, (N, base.size))
    return base, sample


def _bind(fn, **kw):
    def bound(m, *args):
        return fn(m, *args, **kw)
    bound.__name__ = fn.__name__
    return bound


def _make_problems() -> list[Problem]:
    out = [Problem("closed_form", "scalars", 2, closed_form, (2.0, 5.0),
                   _uniform([0.5, 0.5], [3.0, 6.0]), "ln(x1) + x1*x2 - sin(x2)")]
    for n in (10, 100, 1000):
        pt = tuple(np.random.default_rng(n).uniform(-2.0, 2.0, n))
        out.append(Problem(f"rosenbrock_{n}", "vector", n, rosenbrock, pt,
                           _uniform([-2.0] * n, [2.0] * n), f"Rosenbrock, n = {n}", {"n": n}))
    for steps in (10, 40):
        out.append(Problem(f"logistic_{steps}", "scalars", 2,
                           _bind(logistic_map, steps=steps), (3.2, 0.3),
                           _uniform([2.9, 0.2], [3.3, 0.8]),
                           f"logistic map x <- r x (1 - x), {steps} steps, inputs (r, x0)",
                           {"steps": steps}))
    for n in (16, 64):
        base, sample = _lattice(n)
        pt = tuple(base + np.random.default_rng(n).uniform(-0.1, 0.1, base.size))
        out.append(Problem(f"lennard_jones_{n}", "vector", 3 * n, lennard_jones, pt, sample,
                           f"Lennard-Jones energy, {n} particles ({n * (n - 1) // 2} pairs)",
                           {"particles": n}))
    w0 = tuple(np.random.default_rng(7).normal(0.0, 0.5, NN_PARAMS))
    out.append(Problem("nn_loss", "vector", NN_PARAMS, nn_loss, w0,
                       lambda rng, N: rng.normal(0.0, 0.5, (N, NN_PARAMS)),
                       f"MSE of a {NN_IN}-{NN_HIDDEN}-1 tanh net, {NN_SAMPLES} samples, "
                       f"{NN_PARAMS} weights as inputs"))
    out.append(Problem("black_scholes", "scalars", 5, black_scholes,
                       (100.0, 95.0, 0.75, 0.03, 0.25),
                       _uniform([80, 80, 0.1, 0.0, 0.1], [120, 120, 2.0, 0.08, 0.5]),
                       "Black-Scholes call price (S, K, T, r, sigma); gradient = Greeks"))
    for n in (16, 64):
        base, sample = _lattice(n)
        pt = tuple(base + np.random.default_rng(n).uniform(-0.1, 0.1, base.size))
        out.append(Problem(f"lennard_jones_loops_{n}", "vector", 3 * n, lennard_jones_loops,
                           pt, sample, f"Lennard-Jones energy, {n} particles, written with "
                           "Python loops over pairs", {"particles": n}, symbolic=n <= 16))
    out.append(Problem("nn_loss_loops", "vector", NN_PARAMS, nn_loss_loops, w0,
                       lambda rng, N: rng.normal(0.0, 0.5, (N, NN_PARAMS)),
                       "nn_loss written with Python loops over samples, units and inputs"))
    out.append(Problem("gauss_loglik", "scalars", 2, gauss_loglik, (0.8, 0.5),
                       _uniform([-1.0, 0.0], [3.0, 1.5]),
                       "Gaussian NLL of 64 points, per-point loop (exp, log)"))
    out.append(Problem("softplus_logreg", "vector", 4, softplus_logreg,
                       (0.5, -1.0, 0.2, 0.1), _uniform([-2.0] * 4, [2.0] * 4),
                       "logistic regression, softplus loss over 32 samples (exp, log)"))
    out.append(gmm_problem(25, 10, name="gmm_einsum"))
    return out


PROBLEMS: dict[str, Problem] = {p.name: p for p in _make_problems()}
SMALLEST = "closed_form"


def reference_value(problem: Problem, x=None) -> float:
    """Float evaluation of the problem with numpy (no AD)."""
    return float(problem.fn(numpy_namespace(), *problem.args(x)))
