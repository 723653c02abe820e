"""numpy functions on the array level (symad/array_functions.py): each compiled at sizes
where ``compile`` uses the array-level kernels, against numpy (bit for bit where numpy's
order is reproducible), and gradients of the compiled array kernels against the scalar
graph's (``symad.grad``) and central differences."""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest

import symad

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.problems import gmm_problem, numpy_namespace  # noqa: E402

RNG = np.random.default_rng(0)
A = RNG.normal(size=(6, 7, 12))          # 504 elements: the array level's sizes
SQ = RNG.normal(size=(24, 24))
V = RNG.normal(size=(40, 3))
W = RNG.normal(size=(12, 5))

# (id, function, argument, exact): exact means numpy's bits, else rel 1e-13
CASES = [
    # reductions
    ("-reductions",),
    ("max last axis", lambda x: np.max(x, axis=-1), A, True),
    ("max two axes keepdims", lambda x: np.max(x, axis=(0, 2), keepdims=True), A, True),
    ("amax all", lambda x: np.amax(x) * x, A, True),
    ("min axis", lambda x: np.min(x, axis=1), A, True),
    ("amin negative axis", lambda x: np.amin(x, axis=-3), A, True),
    ("method max", lambda x: x.max(axis=0), A, True),
    ("max long axis", lambda x: np.max(x.reshape(6, 84), axis=1), A, True),
    ("min long axis keepdims", lambda x: np.min(x.reshape(504), keepdims=True) + x, A, True),
    ("max where initial", lambda x: np.max(x, axis=2, where=x[0] > 0.0, initial=-5.0),
     A, True),
    ("maximum.reduce", lambda x: np.maximum.reduce(x, axis=1), A, True),
    ("minimum.reduce initial", lambda x: np.minimum.reduce(x, axis=None, initial=0.5) * x,
     A, True),
    ("prod short axis", lambda x: np.prod(x, axis=1), A, True),
    ("prod long axis", lambda x: np.prod(1.0 + 0.1 * x, axis=-1), A, False),
    ("method prod keepdims", lambda x: x.prod(axis=0, keepdims=True) * x, A, True),
    ("prod initial", lambda x: np.prod(x, axis=1, initial=2.0), A, True),
    ("prod where", lambda x: np.prod(x, axis=0, where=x[0] > 0.0), A, True),
    # scans
    ("-scans",),
    ("cumsum axis 0", lambda x: np.cumsum(x, axis=0), A, True),
    ("cumsum axis 1", lambda x: np.cumsum(x, axis=1), A, True),
    ("method cumsum last", lambda x: x.cumsum(axis=-1), A, True),
    ("cumsum flat (blocks)", lambda x: np.cumsum(x), A, False),
    ("cumprod", lambda x: np.cumprod(1.0 + 0.1 * x, axis=2), A, True),
    ("method cumprod flat", lambda x: (1.0 + 0.01 * x).cumprod(), A, False),
    ("add.accumulate", lambda x: np.add.accumulate(x, axis=1), A, True),
    ("maximum.accumulate", lambda x: np.maximum.accumulate(x, axis=2), A, True),
    # contractions
    ("-contractions",),
    ("einsum transpose", lambda x: np.einsum("ijk->kji", x), A, True),
    ("einsum contraction", lambda x: np.einsum("ijk,kl->ijl", x, W), A, False),
    ("einsum three operands", lambda x: np.einsum("ijk,ijk,ij->i", x, x, x[..., 0]),
     A, False),
    ("einsum implicit", lambda x: np.einsum("ijk,ljk", x, x), A, False),
    ("einsum ellipsis", lambda x: np.einsum("...k,...k->...", x, x), A, False),
    ("einsum ellipsis broadcast", lambda x: np.einsum("...ik,...k", x, x[0, 0]), A, False),
    ("einsum diagonal", lambda x: np.einsum("ii->i", x) * x, SQ, True),
    ("einsum trace", lambda x: np.einsum("ii", x) + x, SQ, False),
    ("einsum sublists", lambda x: np.einsum(x, [0, 1, 2], x, [0, 1, 3], [2, 3]), A, False),
    ("einsum optimize", lambda x: np.einsum("ij,jk,kl->il", x, x, x, optimize=True), SQ,
     False),
    ("tensordot int", lambda x: np.tensordot(x, W, axes=1), A, False),
    ("tensordot pairs", lambda x: np.tensordot(x, x, axes=([1, 2], [1, 2])), A, False),
    ("linalg tensordot", lambda x: np.linalg.tensordot(x, x[0], axes=2), A, False),
    ("dot 3-d", lambda x: np.dot(x, W), A, False),
    ("matmul function", lambda x: np.matmul(x, x.T), SQ, False),
    ("linalg outer", lambda x: np.linalg.outer(x[0], x[1]), SQ, True),
    ("vecdot", lambda x: np.vecdot(x, x[0, :1]), A, False),
    ("linalg vecdot axis", lambda x: np.linalg.vecdot(x, x, axis=0), A, False),
    ("multi_dot", lambda x: np.linalg.multi_dot([x[0], x, x.T, x, x[1]]), SQ, False),
    ("multi_dot matrices", lambda x: np.linalg.multi_dot([x[:, :3], x[:3], x]), SQ, False),
    ("trace", lambda x: np.trace(x) + x, SQ, False),
    ("trace offset axes", lambda x: np.trace(x, 1, 0, 2), A, True),
    ("method trace", lambda x: x.trace(-2) * x, SQ, False),
    ("linalg trace", lambda x: np.linalg.trace(x, offset=1), A, True),
    ("cross", lambda x: np.cross(x, x[::-1]), V, True),
    ("cross axes", lambda x: np.cross(x.T, x[::-1], axisa=0, axisc=0), V, True),
    ("linalg cross", lambda x: np.linalg.cross(x, x[0]), V, True),
    ("kron", lambda x: np.kron(x[:4, :5], x[:6, :4]), SQ, True),
    ("kron 3-d with 2-d", lambda x: np.kron(x[:2], x[0, :3, :4]), A, True),
    # placing elements
    ("-placing elements",),
    ("diag of a vector", lambda x: np.diag(x[0]), SQ, True),
    ("diag offset", lambda x: np.diag(x[2, :20], -3), SQ, True),
    ("diag of a matrix", lambda x: np.diag(x, 2) * x[0, :22], SQ, True),
    ("triu", lambda x: np.triu(x), SQ, True),
    ("tril offset 3-d", lambda x: np.tril(x, -1), A, True),
    ("triu offset", lambda x: np.triu(x, 2), SQ, True),
    ("pad constant", lambda x: np.pad(x, ((1, 2), (0, 3), (2, 0)), constant_values=1.5),
     A, True),
    ("pad edge", lambda x: np.pad(x, 2, mode="edge"), SQ, True),
    ("pad reflect", lambda x: np.pad(x, ((3, 1), (0, 2)), mode="reflect"), SQ, True),
    ("pad symmetric wrap", lambda x: np.pad(np.pad(x, 1, mode="symmetric"), 2, "wrap"),
     SQ, True),
    ("zeros_like", lambda x: np.zeros_like(x) + x, A, True),
    ("ones_like shape", lambda x: x * np.ones_like(x, shape=(7, 12)), A, True),
    ("full_like", lambda x: np.full_like(x, 3.5) * x, A, True),
    ("split", lambda x: np.split(x, 3, axis=0)[1] * 2.0, A, True),
    ("split at", lambda x: np.split(x, [2, 5], axis=2)[2] + x[..., :7], A, True),
    ("array_split", lambda x: np.array_split(x, 5, axis=1)[-1] + x[:, :1], A, True),
    ("append flat", lambda x: np.append(x, x[0]), A, True),
    ("append axis", lambda x: np.append(x, [[1.0] * 24], axis=0), SQ, True),
    ("block", lambda x: np.block([[x, x[:, :3]], [x[:2], x[:2, :3]]]), SQ, True),
    ("broadcast_arrays", lambda x: np.broadcast_arrays(x[:, None], x[0])[0], SQ, True),
]


def _groups() -> dict[str, list]:
    groups: dict[str, list] = {}
    for case in CASES:
        if len(case) == 1:
            current = groups.setdefault(case[0][1:], [])
        else:
            current.append(case)
    return groups


GROUPS = _groups()
ARGS = {id(A): 0, id(SQ): 1, id(V): 2}


def _compare(name, got, want, exact: bool):
    assert np.shape(got) == np.shape(want), name
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=name)
    else:       # a sum or product in another order: within rounding of the magnitudes
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * np.max(np.abs(want)),
                                   err_msg=name)


@pytest.mark.parametrize("group", list(GROUPS))
def test_values_are_numpys_on_the_array_level(group):
    """One compiled program per group (compiling is most of the time) computes every
    case of the group."""
    cases = GROUPS[group]

    def program(*args):
        return tuple(f(args[ARGS[id(x)]]) for _, f, x, _ in cases)
    # the same function on the arrays of the cases (ids of the module's arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = program(A, SQ, V)
        cf = symad.compile(program)
        got = cf(A, SQ, V)
    assert cf.stats["array_level"] is True
    for (name, _, _, exact), g, w in zip(cases, got, want):
        if isinstance(w, list):
            for gi, wi in zip(g, w):
                _compare(name, gi, wi, exact)
        else:
            _compare(name, g, w, exact)


GRAD_CASES = ["max two axes keepdims", "min long axis keepdims", "max where initial",
              "prod long axis", "prod where", "cumsum axis 1", "cumsum flat (blocks)",
              "cumprod", "einsum three operands", "einsum ellipsis broadcast",
              "einsum trace", "tensordot pairs", "multi_dot", "trace offset axes", "cross",
              "kron", "diag offset", "tril offset 3-d", "pad constant", "pad reflect",
              "split at", "block"]


@pytest.mark.parametrize("part", [0, 1])
def test_gradients_agree_with_the_scalar_graph_and_differences(part):
    cases = [c for c in CASES if c[0] in GRAD_CASES][part::2]

    def loss(*args):
        return sum(np.sum(np.sin(f(args[ARGS[id(x)]]))) for _, f, x, _ in cases)
    args = (A, SQ, V)
    cg = symad.compile_grad(loss, argnums=(0, 1, 2))
    value, grad = cg(*args)
    assert cg.stats["array_level"] is True
    assert value == pytest.approx(loss(*args), rel=1e-12)
    for g, want in zip(grad, symad.grad(loss, argnums=(0, 1, 2))(*args)):
        np.testing.assert_allclose(g, want, rtol=1e-11, atol=1e-11)
    # central differences along random directions
    for seed in range(2):
        rng = np.random.default_rng(seed)
        t = [rng.normal(size=x.shape) for x in args]
        h = 1e-6
        slope = (loss(*(x + h * d for x, d in zip(args, t))) -
                 loss(*(x - h * d for x, d in zip(args, t)))) / (2 * h)
        assert sum(np.sum(g * d) for g, d in zip(grad, t)) == pytest.approx(slope, rel=1e-6)


def test_max_propagates_nan_and_keeps_numpys_zero():
    x = A.copy()
    x[2, 3, 4] = np.nan
    f = symad.compile(lambda y: np.max(y, axis=-1) + np.min(y.reshape(6, 84), axis=1)[:, None])
    np.testing.assert_array_equal(f(x), np.max(x, axis=-1) + np.min(x.reshape(6, 84),
                                                                       axis=1)[:, None])
    assert f.stats["array_level"] is True
    assert np.isnan(f(x)[2]).all() and not np.isnan(f(x)[3]).any()
    zeros = np.zeros((30, 20))
    zeros[:, 1::3] = -0.0                    # ties of +0.0 and -0.0: numpy keeps the last
    for f in (lambda y: np.max(y, axis=1), lambda y: np.min(y, axis=0),
              lambda y: np.triu(-0.0 * y) + np.tril(y, -1) * 2.0):   # triu fills +0.0
        cf = symad.compile(f)
        np.testing.assert_array_equal(np.signbit(cf(zeros)), np.signbit(f(zeros)))
        assert cf.stats["array_level"] is True


def test_nodes_do_not_grow_with_elements():
    x = np.random.default_rng(1).normal(size=50_000)
    for f in (lambda y: np.max(y), lambda y: np.cumsum(y) * y,
              lambda y: np.prod(1.0 + 1e-6 * y.reshape(250, 200), axis=0)):
        cf = symad.compile(f)
        got = cf(x)
        assert cf.stats["array_level"] is True
        assert cf.stats["nodes"]["trace"] < 2_000
        want = f(x)
        scale = np.max(np.abs(want)) + (np.sum(np.abs(x)) if np.size(got) == x.size else 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15 * scale)


def test_arguments_it_does_not_cover_fall_back_to_the_scalar_graph():
    # np.pad's computed modes and np.sum's where=: the scalar tracer runs them
    for f in (lambda y: np.pad(y, 1, mode="mean") * y[0, 0],
              lambda y: np.sum(y, axis=0, where=y[0] > 0.0)):
        cf = symad.compile(f)
        np.testing.assert_allclose(cf(SQ), f(SQ), rtol=1e-14)
        assert "array_level" not in cf.stats


def test_gmm_benchmark_problem_on_the_array_level():
    p = gmm_problem(3, 2, N=300)
    m = numpy_namespace()

    def nll(theta):
        return p.fn(m, theta)
    x = np.array(p.point)
    cg = symad.compile_grad(nll)
    value, grad = cg(x)
    assert cg.stats["array_level"] is True
    assert value == pytest.approx(nll(x), rel=1e-13)
    np.testing.assert_allclose(grad, symad.grad(nll)(x), rtol=1e-11)
    np.testing.assert_allclose(grad, symad.numerical_grad(nll, x), rtol=1e-6, atol=1e-6)
