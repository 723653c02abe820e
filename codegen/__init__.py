"""symad's LLVM back end (trace -> graph -> ad -> **lower -> jit -> abi**).

``lower`` turns a graph into an ``llvmlite.ir`` module, ``jit`` owns the LLVM state
(target machines, pass pipeline, MCJIT engines) and ``abi`` holds the native entries
and how Python calls them. Users reach it through ``symad.compile`` /
``symad.compile_grad``; symad imports this package lazily.
"""

from .lower import CUSTOM_LOWERINGS, emit_kernel, fastmath_flags, is_lowerable

__all__ = ["CUSTOM_LOWERINGS", "emit_kernel", "fastmath_flags", "is_lowerable"]
