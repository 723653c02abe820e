"""Options of the public API, checked where they are given (compile, compile_grad, the
transformations' argnums, batch's threads): a bad one is an OptionError that names the
option, the value and what is accepted, never a ctypes or iteration error later."""

from __future__ import annotations

import numbers

import numpy as np

from .errors import OptionError
from .ops import FASTMATH_FLAGS


def is_int(v) -> bool:
    """An int or a numpy integer, not a bool (``True`` as a count is a slip)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def check_opt_level(opt_level, fname: str):
    """``opt_level`` as ``"auto"``, an int 0..3 or a pair of them; else OptionError."""
    if opt_level is None or (isinstance(opt_level, str) and opt_level == "auto"):
        return "auto"
    levels = opt_level if isinstance(opt_level, tuple) and len(opt_level) == 2 \
        else (opt_level,)
    if not all(is_int(v) and 0 <= v <= 3 for v in levels):
        raise OptionError(f"opt_level={opt_level!r} for {fname}: expected 0, 1, 2 or 3 (an "
                          "int), a pair (IR level, machine-code level) of them, or 'auto'")
    ints = tuple(int(v) for v in levels)
    return ints if len(ints) == 2 else ints[0]


def check_fastmath(fastmath, fname: str):
    """``fastmath`` as a bool or a tuple of LLVM fast-math flag names; else OptionError."""
    if fastmath is None or isinstance(fastmath, (bool, np.bool_)):
        return bool(fastmath)
    flags = (fastmath,) if isinstance(fastmath, str) else fastmath
    if isinstance(flags, (tuple, list)) and all(isinstance(x, str) for x in flags):
        if all(x in FASTMATH_FLAGS for x in flags):
            return tuple(flags)
    raise OptionError(
        f"fastmath={fastmath!r} for {fname}: expected False (IEEE), True (the safe "
        "fast-math set) or a tuple of LLVM fast-math flags from "
        f"{tuple(sorted(FASTMATH_FLAGS))}")


def check_threads(threads, fname: str):
    if threads is None or (is_int(threads) and threads >= 1):
        return threads
    raise OptionError(f"{fname}.batch(threads={threads!r}): expected None (split large "
                      "batches over the CPU cores) or a number of threads, an int >= 1")


def check_argnums(argnums, fname: str):
    """``argnums`` as an int or a tuple of ints (numpy integers too), else OptionError.

    Whether it is one int decides whether a gradient comes back bare or in a tuple.
    """
    many = isinstance(argnums, (tuple, list))
    nums = []
    for k in (argnums if many else (argnums,)):
        if not is_int(k):
            raise OptionError(
                f"argnums={argnums!r} for {fname}: expected the position of a positional "
                f"argument (an int) or a tuple of them, got {type(k).__name__} {k!r}")
        nums.append(int(k))
    return tuple(nums) if many else nums[0]
