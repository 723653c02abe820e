"""Numerical gradient checks (a checker, never a differentiation method).

``numerical_grad`` is central differences, O(h^2). ``check_grad`` is the random-direction
inner-product test: for seeded random directions t (input) and c (output cotangent) it
compares <c, J t> from central differences with <J^T c, t> from reverse mode and with
<c, J t> from forward mode, and recurses to second order on request.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import GradientCheckError
from .tree import tree_flatten, tree_unflatten

# h ~ cbrt(machine epsilon) * max(1, |x|) balances O(h^2) truncation against round-off
# eps/h; the error floor of a central difference is then ~eps^(2/3) ~ 4e-11 relative.
EPS = float(np.finfo(np.float64).eps)
DEFAULT_STEP = EPS ** (1.0 / 3.0)
# The directional test uses a fixed absolute step (the direction is a unit vector).
DIRECTION_STEP = 1e-5
RTOL = 1e-5
ATOL = 1e-7


def _flat(args) -> tuple[np.ndarray, Callable]:
    """Flatten a tuple of argument structures to one float64 vector and back."""
    leaves, td, paths = tree_flatten(tuple(args), "argument")
    arrays = []
    for leaf in leaves:
        a = np.asarray(leaf, dtype=np.float64)
        arrays.append(a)
    shapes = [a.shape for a in arrays]
    vec = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)

    def unflat(v):
        out, i = [], 0
        for s in shapes:
            n = int(np.prod(s, dtype=np.int64))
            chunk = v[i:i + n]
            out.append(float(chunk[0]) if s == () else chunk.reshape(s).copy())
            i += n
        return tree_unflatten(td, out)

    return vec, unflat


def _out_vec(value) -> np.ndarray:
    leaves, _, _ = tree_flatten(value)
    if not leaves:
        return np.zeros(0)
    return np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in leaves])


def numerical_grad(f: Callable, *args, h: float | None = None, argnums=None):
    """Central-difference gradient of scalar ``f`` at ``args``, O(h^2).

    Args:
        f: a function returning one scalar.
        h: step; default ``cbrt(eps) * max(1, |x_i|)`` per element.
        argnums: which arguments (int or tuple); default all, returned as a tuple when
            ``f`` has several arguments and bare when it has one.

    Returns:
        The gradient with the structure of the argument(s).

    >>> import numpy as np
    >>> g = numerical_grad(lambda x: x ** 3, 2.0)
    >>> bool(abs(g - 12.0) < 1e-8)
    True
    """
    if argnums is None:
        argnums = 0 if len(args) == 1 else tuple(range(len(args)))
    from .options import check_argnums
    argnums = check_argnums(argnums, getattr(f, "__name__", "f"))
    nums = (argnums,) if isinstance(argnums, int) else argnums
    results = []
    for k in nums:
        vec, unflat = _flat((args[k],))
        g = np.empty_like(vec)
        for i in range(vec.size):
            step = h if h is not None else DEFAULT_STEP * max(1.0, abs(vec[i]))
            vp, vm = vec.copy(), vec.copy()
            vp[i] += step
            vm[i] -= step
            ap, am = list(args), list(args)
            ap[k] = unflat(vp)[0]
            am[k] = unflat(vm)[0]
            fp = float(np.asarray(f(*ap), dtype=np.float64))
            fm = float(np.asarray(f(*am), dtype=np.float64))
            g[i] = (fp - fm) / (vp[i] - vm[i])
        results.append(unflat(g)[0])
    return results[0] if isinstance(argnums, int) else tuple(results)


def check_grad(f: Callable, *args, order: int = 1, modes=("rev", "fwd"),
               directions: int = 3, rtol: float = RTOL, atol: float = ATOL,
               eps: float = DIRECTION_STEP, seed: int = 0) -> None:
    """Random-direction gradient test of ``f`` at ``args``; raises on failure.

    For ``directions`` seeded random unit vectors t over all argument elements (and
    random cotangents c over the outputs), checks

    * reverse mode: ``<J^T c, t>`` against ``(<c, f(x + eps t)> - <c, f(x - eps t)>) / 2 eps``
    * forward mode: ``<c, J t>`` (symad.jvp) against the same difference,

    and with ``order=2`` the same for the function ``x -> <J^T c, t'>`` (second order).

    Raises:
        GradientCheckError: naming the chain ("VJP of f"), the analytic and numeric
            values and the error.

    >>> import numpy as np
    >>> check_grad(lambda x: np.sin(x) * x, 1.3)
    """
    from .api import jvp, vjp

    rng = np.random.default_rng(seed)
    name = getattr(f, "__name__", "f")
    vec, unflat = _flat(args)
    out0 = _out_vec(f(*args))
    for _ in range(directions):
        t = rng.standard_normal(vec.size)
        t /= max(np.linalg.norm(t), 1e-300)
        c = rng.standard_normal(out0.size)

        def phi(s, t=t, c=c):
            return float(c @ _out_vec(f(*unflat(vec + s * t))))

        numeric = (phi(eps) - phi(-eps)) / (2 * eps)
        scale = max(1.0, float(np.sum(np.abs(c))) * float(np.max(np.abs(out0)) if out0.size
                                                           else 1.0))
        if "rev" in modes:
            out, vjp_fn = vjp(f, *args)
            ct_tree = _like_output(out, c)
            cts = vjp_fn(ct_tree)
            analytic = float(_flat(cts)[0] @ t)
            _compare(f"VJP of {name}", analytic, numeric, rtol, atol, scale)
        if "fwd" in modes:
            _, tan = jvp(f, tuple(args), tuple(unflat(t)))
            analytic = float(c @ _out_vec(tan))
            _compare(f"JVP of {name}", analytic, numeric, rtol, atol, scale)
        if order >= 2:
            def dir_deriv(*a, t=t, c=c):
                out, vjp_fn = vjp(f, *a)
                cts = vjp_fn(_like_output(out, c))
                return _dot_tree(cts, unflat(t))
            dir_deriv.__name__ = f"VJP of {name}"
            check_grad(dir_deriv, *args, order=order - 1, modes=modes, directions=1,
                       rtol=rtol * 10, atol=atol * 10, eps=eps * 10, seed=seed + 1)


def _dot_tree(a, b):
    la, _, _ = tree_flatten(a)
    lb, _, _ = tree_flatten(b)
    total = 0.0
    for x, y in zip(la, lb):
        total = total + np.sum(x * np.asarray(y, dtype=np.float64))
    return total


def _like_output(out, c: np.ndarray):
    leaves, td, _ = tree_flatten(out)
    res, i = [], 0
    for leaf in leaves:
        s = np.shape(leaf)
        n = int(np.prod(s, dtype=np.int64))
        res.append(np.float64(c[i]) if s == () else c[i:i + n].reshape(s))
        i += n
    return tree_unflatten(td, res)


def _compare(chain: str, analytic: float, numeric: float, rtol: float, atol: float,
             scale: float) -> None:
    err = abs(analytic - numeric)
    if not err <= atol * scale + rtol * abs(numeric):
        rel = err / max(abs(numeric), 1e-300)
        raise GradientCheckError(
            f"{chain}: analytic directional derivative {analytic!r} but central "
            f"differences give {numeric!r} (abs error {err:.3g}, rel error {rel:.3g}, "
            f"rtol {rtol:g}, atol {atol:g})")
