"""symad's LLVM back end (trace -> graph -> ad -> **lower -> jit**, then the entries).

``lower`` turns a scalar graph into an ``llvmlite.ir`` kernel (``roll`` finds its loops),
``arrays`` an array-level graph; ``builder`` holds the IR toolkit they and the entries
share. ``jit`` owns the LLVM state (target machines, pass pipeline, MCJIT engines).
``batch_entry`` emits the native loop ``f.batch`` calls, ``py_entry`` the CPython entry a
plain call ``f(x)`` runs. Users reach it through ``symad.compile`` /
``symad.compile_grad``; symad imports this package lazily (it imports llvmlite).
"""

from .lower import CUSTOM_LOWERINGS, emit_kernel, fastmath_flags, is_lowerable

__all__ = ["CUSTOM_LOWERINGS", "emit_kernel", "fastmath_flags", "is_lowerable"]
