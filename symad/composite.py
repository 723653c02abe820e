"""numpy ufuncs that symad builds from several ops (trace -> graph), by numpy's own
definitions (its npymath C functions), so edge inputs (inf, NaN, ±0) give numpy's values
and each branch's gradient is its own. ``where`` is the caller's select: ``symad.where``
on scalar tracers, the array level's ``np.where`` on whole arrays.

``ufunc_table`` is the one numpy-name table: both tracers build theirs from it, so they
accept the same ufuncs.
"""

from __future__ import annotations

import numpy as np

# numpy's NPY_LOGE2 and NPY_LOG2E, as the C compiler rounds them
_LOGE2 = 0.693147180559945309417232121458176568
_LOG2E = 1.442695040888963407359924681001892137
_DEG_PER_RAD = 180.0 / np.pi      # npy_rad2deg: x * (180.0 / NPY_PI)
_RAD_PER_DEG = np.pi / 180.0      # npy_deg2rad: x * (NPY_PI / 180.0)


def logaddexp(x, y, where):
    """log(exp(x) + exp(y)) as npy_logaddexp: ``x == y`` gives ``x + log 2`` (also for
    equal infinities), else the larger plus log1p(exp(-|x - y|)); NaN stays NaN."""
    d = x - y
    # At a tie 0.5*x + 0.5*y is x (a subnormal's rounding vanishes in + log 2), and it
    # splits the gradient evenly, as the smooth function does.
    return where(x == y, 0.5 * x + 0.5 * y + _LOGE2,
                 where(d > 0, x + np.log1p(np.exp(-d)),
                       where(d <= 0, y + np.log1p(np.exp(d)), d)))


def logaddexp2(x, y, where):
    """log2(2**x + 2**y) as npy_logaddexp2 (log2(1 + t) is LOG2E * log1p(t) there)."""
    d = x - y
    return where(x == y, 0.5 * x + 0.5 * y + 1.0,
                 where(d > 0, x + _LOG2E * np.log1p(np.exp2(-d)),
                       where(d <= 0, y + _LOG2E * np.log1p(np.exp2(d)), d)))


def heaviside(x, h0, where):
    """npy_heaviside: 0 for x < 0, ``h0`` at ±0, 1 for x > 0, NaN for NaN."""
    return where(x != x, x, where(x == 0, h0, where(x > 0, 1.0, 0.0)))


def deg2rad(x):
    return x * _RAD_PER_DEG


def rad2deg(x):
    return x * _DEG_PER_RAD


def ufunc_table(unary, binary, power, where, **extra) -> dict:
    """numpy ufunc name -> function, for one tracer: every elementwise op row's numpy names
    (see ``ops.ufunc_names``) through that tracer's ``unary(op)``/``binary(op)``, then the
    ufuncs built from several ops, then ``extra`` (a tracer's own versions).

    Functions take exactly the ufunc's operands (the scalar tracer reads their argument
    count to vectorise them)."""
    from .ops import OPS, ufunc_names

    table: dict = {name: (unary if OPS[op].arity == 1 else binary)(op)
                   for name, op in ufunc_names().items()}
    table.update({
        "power": lambda x, y: power(x, y), "float_power": lambda x, y: power(x, y),
        "square": lambda x: power(x, 2), "reciprocal": lambda x: binary("div")(1.0, x),
        "positive": lambda x: x, "conjugate": lambda x: x,
        "ceil": lambda x: -unary("floor")(-x),
        "logaddexp": lambda x, y: logaddexp(x, y, where),
        "logaddexp2": lambda x, y: logaddexp2(x, y, where),
        "heaviside": lambda x, h0: heaviside(x, h0, where),
        "deg2rad": lambda x: deg2rad(x), "radians": lambda x: deg2rad(x),
        "rad2deg": lambda x: rad2deg(x), "degrees": lambda x: rad2deg(x),
    })
    table.update(extra)
    return table
