"""Native compilation, the public face (trace -> graph -> ad -> lower -> jit).

``symad.compile(f)`` and ``symad.compile_grad(f)`` return a :class:`CompiledFunction`.
It traces lazily at the first call: the structure and shapes of the arguments select a
specialization (``symad/specialize.py``: traced, differentiated, planned by
``symad/policy.py``, lowered to LLVM IR and JIT-compiled once), so a function called
with new shapes is compiled again for them. Native code is shared through a cache keyed
by the compiled graph's ``Graph.fingerprint`` and the options, so compiling the same
function twice does no LLVM work. Calls run through ``symad/runtime.py``.

The LLVM back end (``codegen``) is imported lazily, so ``import symad`` never imports
llvmlite.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import diskcache, logs, options, specialize
from .errors import OptionError, SymadError
from .persist import (
    PICKLE_FORMAT,
    RESTORED,
    RESTORED_MAX,
    Unavailable,
    checked_key,
    pickle_function,
    unpickle_error,
)
from .runtime import flatten_call as _flatten_call
from .runtime import leaf_info as _leaf_info
from .specialize import CompileOptions, Specialization, forget_natives, gc_paused
from .tree import tree_flatten, tree_unflatten

# Specializations (argument shapes) one CompiledFunction keeps by default, least recently
# used dropped first: each owns a JIT engine, about 1.3 MB (300 shapes held 380 MB).
# ``compile(f, max_specializations=n)`` sets it per function.
MAX_SPECIALIZATIONS = 32
_tick = itertools.count().__next__      # use order of specializations (atomic in CPython)


def _user_stacklevel() -> int:
    """The ``stacklevel`` of a warning that points at the first frame outside symad."""
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    frame: Any = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    return level


class CompiledFunction:
    """A function compiled to native code, specialised per argument structure and shapes.

    Calling it runs native code: for ``compile_grad`` it returns ``(value, gradient)``
    with the gradient in the structure of the differentiated arguments; for ``compile``
    it returns ``f``'s output structure. Inspection attributes describe the most recently
    compiled specialization: ``graph``, ``grad_graph``, ``llvm_ir``, ``optimized_ir``,
    ``asm``, ``stats``. At most ``max_specializations`` signatures keep native code
    (least recently used dropped first, compiled again when called); ``clear()`` drops
    them all.
    """

    def __init__(self, f: Callable, *, grad: bool, argnums=None, fastmath=False,
                 opt_level="auto", cache=None, max_specializations=None):
        if not callable(f):
            raise TypeError(f"expected a function to compile, got {type(f).__name__}")
        if max_specializations is None:
            max_specializations = MAX_SPECIALIZATIONS
        if type(max_specializations) is not int or max_specializations < 1:
            raise OptionError(f"max_specializations must be a positive int (or None for "
                             f"MAX_SPECIALIZATIONS = {MAX_SPECIALIZATIONS}), not "
                             f"{max_specializations!r}")
        functools.update_wrapper(self, f)
        name = getattr(self, "__name__", type(f).__name__)
        self._f = f
        self._grad = grad
        if argnums is not None and argnums is not _ALL_BY_DEFAULT:
            argnums = options.check_argnums(argnums, name)
        self._argnums = argnums
        self._fastmath = options.check_fastmath(fastmath, name)
        self._opt_level = options.check_opt_level(opt_level, name)
        if not (cache is None or isinstance(cache, (bool, str, os.PathLike))):
            raise OptionError(f"cache={cache!r} for {name}: expected None (follow "
                              f"${diskcache.ENV_VAR}), True, False or a folder path")
        diskcache.cache_dir(cache)
        self._cache = cache
        # key -> specialization; each has a ``used`` tick (bounded, see _admit)
        self._specs: dict = {}
        self._max_specs = max_specializations
        self._last: Specialization | None = None
        self._lock = threading.RLock()
        specialize.renew_lock_after_fork(self, threading.RLock)
        self._entry = self._slow_call
        if not hasattr(self, "__name__"):
            self.__name__ = type(f).__name__

    def __call__(self, *args):
        return self._entry(*args)

    def _options(self) -> CompileOptions:
        """The options a specialization compiles with (read at each compile)."""
        default = self._argnums is _ALL_BY_DEFAULT
        return CompileOptions(
            name=self.__name__, f=self._f, grad=self._grad,
            argnums=None if default else self._argnums, default_argnums=default,
            fastmath=self._fastmath, opt_level=self._opt_level, cache=self._cache,
            fallback=self._slow_call, warn_default_argnums=self._warn_default_argnums)

    def _warn_default_argnums(self, nargs: int) -> None:
        if getattr(self, "_warned_argnums", False):
            return
        self._warned_argnums = True
        import warnings
        warnings.warn(
            f"compile_grad({self.__name__}) differentiates all {nargs} arguments because "
            "no argnums was given; symad.grad and jax.grad differentiate argument 0, and "
            "compile_grad's default will become argnums=0. Pass argnums=None to keep "
            "differentiating every argument, or argnums=0 (or a tuple) to choose.",
            FutureWarning, stacklevel=_user_stacklevel())

    def _slow_call(self, *args):
        leaves, key = _flatten_call(args)
        spec = self._used(key)
        if spec is None:
            spec = self._specialize(key, args)
        return spec.call(leaves)

    def _used(self, key) -> Specialization | None:
        """The specialization for ``key``, marked most recently used, or None."""
        spec = self._specs.get(key)
        if spec is not None:
            spec.used = _tick()  # for eviction (cheaper than reordering: one hash less)
        return spec

    def _spec_for(self, key) -> Specialization:
        """The specialization for ``key``, compiled again from zeros if it was evicted."""
        spec = self._used(key)
        if spec is None:
            treedef, shapes = key
            spec = self._specialize(key, tree_unflatten(
                treedef, [0.0 if s == () else np.zeros(s) for s in shapes]))
        return spec

    def _specialize(self, key, args) -> Specialization:
        with self._lock:
            spec = self._specs.get(key)
            if spec is None:
                if isinstance(self._f, Unavailable):
                    raise self._f.error(key)
                with logs.watch(self.__name__), gc_paused():
                    spec = specialize.specialization(self._options(), key, args)
                self._admit(key, spec)
            self._last = spec
            return spec

    def _admit(self, key, spec: Specialization) -> None:
        """Add ``spec`` (under ``self._lock``), evicting the least recently used ones
        beyond ``max_specializations``: each holds a JIT engine (~1.3 MB)."""
        specs = self._specs
        specs[key] = spec
        spec.used = _tick()
        if spec.fast is not None and self._entry == self._slow_call:
            self._entry = spec.fast
        dropped = []
        while len(specs) > self._max_specs:
            # Calls through the fast entry never tick, so its specialization looks
            # unused: it goes last, when nothing else is left to evict.
            others = [k for k, s in specs.items() if s is not spec]
            victim = min(others, key=lambda k: (specs[k].fast is not None and
                                                specs[k].fast is self._entry,
                                                specs[k].used))
            old = specs.pop(victim)
            if old.fast is not None and old.fast is self._entry:
                self._entry = spec.fast if spec.fast is not None else self._slow_call
            if self._last is old:
                self._last = spec
            dropped.append(old)
        forget_natives(dropped)

    def clear(self) -> None:
        """Drop every specialization and its native code (unless another live function
        shares it): the next call traces and compiles again. Pickling afterwards carries
        no specialization."""
        with self._lock:
            dropped = list(self._specs.values())
            self._specs.clear()
            self._last = None
            self._entry = self._slow_call
        with specialize._CACHE_LOCK:
            # unpickling the same bytes again must rebuild them, not return this one
            for token in [t for t, cf in RESTORED.items() if cf is self]:
                del RESTORED[token]
        forget_natives(dropped)

    def batch(self, *args, threads: int | None = None, out=None):
        """Evaluate at N points in one native call (the leading axis of every leaf).

        Args:
            *args: the arguments, each leaf with an extra leading axis of length N.
            threads: split the batch over this many threads (native code runs without
                the GIL).
            out: arrays to write the results to, in the structure of the result (for
                ``compile_grad``: ``(values, gradients)``), each C-contiguous float64 of
                shape ``(N,) + leaf shape``; they are returned. Reusing them across calls
                saves allocating (and the kernel first-touching) fresh result memory,
                which dominates large batches of large gradients.

        With a ``dask.array`` leaf the batch is lazy and distributed: one native batch
        per chunk of points, results are dask arrays (see :mod:`symad.dask_batch`).

        Transcendentals (sin, exp, log, tanh, erf, ...) run through scalar libm, lane by
        lane, so every point equals a single call bit for bit. A function compiled with
        ``fastmath=("afn",)`` calls glibc's vector math library (libmvec) for them
        instead where the CPU has AVX2, four points at once, within a few ulp: several
        times faster on batches dominated by such functions, arithmetic still IEEE.

        Returns:
            Like a single call, with a leading axis N on every output leaf.
        """
        threads = options.check_threads(threads, self.__name__)
        leaves, treedef, paths = tree_flatten(args, "")
        if not leaves:
            raise TypeError(f"{self.__name__}.batch needs at least one array argument")
        if any(type(leaf).__module__.startswith("dask.") for leaf in leaves):
            if out is not None:
                raise OptionError(f"{self.__name__}.batch: out= is not supported with dask "
                                  "arrays (the results are lazy dask arrays)")
            from .dask_batch import dask_batch  # lazy dask arrays in, lazy dask arrays out
            return dask_batch(self, leaves, treedef, paths)
        arrays = []
        for leaf, path in zip(leaves, paths):
            shape = _leaf_info(leaf, path)
            if shape == ():
                raise ValueError(f"batch argument {path} is a scalar; every leaf needs a "
                                 "leading axis of points, e.g. an array of shape (N,)")
            arrays.append(np.asarray(leaf, dtype=np.float64))
        n = arrays[0].shape[0]
        for a, path in zip(arrays, paths):
            if a.shape[0] != n:
                raise ValueError(f"batch argument {path} has {a.shape[0]} points but "
                                 f"{paths[0] or '[0]'} has {n}; all leading axes must agree")
        key = (treedef, tuple(a.shape[1:] for a in arrays))
        spec = self._used(key)
        if spec is None:
            example = tree_unflatten(treedef, [a[0] if n else np.zeros(a.shape[1:])
                                               for a in arrays])
            spec = self._specialize(key, example)
        if out is not None:
            out = spec.check_out(out, n, arrays, self.__name__)
        return spec.batch(arrays, n, threads, out)

    @property
    def specializations(self) -> tuple[Specialization, ...]:
        """The signatures that keep native code (at most ``max_specializations``), a
        read-only snapshot in the order they were compiled; the last is the one ``graph``,
        ``grad_graph``, ``llvm_ir`` and ``stats`` describe. Each is a
        :class:`symad.specialize.Specialization`: its ``key`` (the arguments' structure
        and leaf shapes), ``stats``, ``graph``, ``grad_graph``, ``fast`` and ``native``
        (documented there). Empty before the first call and after ``clear()``."""
        with self._lock:
            last = self._last
            specs = [s for s in self._specs.values() if s is not last]
            if last is not None:
                specs.append(last)
        return tuple(specs)

    @property
    def fast_entry(self) -> Callable | None:
        """The native entry calls take first (the ``fast`` of one specialization; it hands
        arguments it does not take to the Python path), or ``None`` while every call goes
        through the Python path."""
        entry = self._entry
        return None if entry == self._slow_call else entry

    @property
    def max_specializations(self) -> int:
        """How many signatures keep native code (the ``compile`` option, pickled)."""
        return self._max_specs

    def _latest(self) -> Specialization:
        if self._last is None:
            raise SymadError(f"{self.__name__} is compiled lazily for the shapes of its "
                             "arguments: call it once (or .batch) before inspecting it")
        return self._last

    @property
    def graph(self):
        """The forward graph (the traced function); its ``outputs`` are the function's."""
        return self._latest().graph

    @property
    def grad_graph(self):
        """The extended graph: forward and adjoint nodes (``None`` for ``compile``); its
        ``outputs`` are the compiled ones: the value, then the gradient."""
        return self._latest().grad_graph

    @property
    def llvm_ir(self) -> str:
        return self._latest().native.text("llvm_ir")

    @property
    def optimized_ir(self) -> str:
        return self._latest().native.text("optimized_ir")

    @property
    def asm(self) -> str:
        return self._latest().native.text("asm")

    @property
    def stats(self) -> dict:
        """What compiling the latest specialization did, a dict:

        - ``nodes``: node counts per stage (``trace``, ``ad``, ``llvm_ir``,
          ``optimized_ir``; ``elements`` at the array level);
        - ``seconds``: per stage (``trace``, ``ad``, ``lowering``, ``llvm_opt``,
          ``machine_code``);
        - ``kernel``: the kernels ``symad.policy.choose_kernel`` chose, a dict: ``kind``
          (single calls: ``"array"``, ``"rolled"``, ``"chunked"`` or ``"straight"``),
          ``batch`` (``"array"``, ``"rolled"``, ``"vector"`` or ``"inlined"``),
          ``levels`` and ``batch_levels`` ((IR, machine code) optimisation levels), and
          ``reason``: why, with the counts and thresholds that decided, including why the
          array level declined (e.g. ``"array level declined: 62 elements <
          ARRAY_MIN_ELEMENTS = 400"``) or could not trace the function;
        - ``cached`` (native code shared from an earlier compile), ``rolled`` (loops of a
          rolled kernel, or None), ``array_level`` (present, True, at the array level),
          ``opt_level``, ``fastmath`` and ``disk_cache``.
        """
        return self._latest().stats

    # ---- pickling: by graph and options, never by machine code ----------------------------
    def __reduce__(self):
        return (restore_compiled, (self._pickle_state(),))

    def _pickle_state(self) -> dict:
        with self._lock:
            specs = [spec._pickle_state() for spec in self._specs.values()]
            last = self._last.key if self._last is not None else None
        function = pickle_function(self._f)
        # The cache folder stays here (None in its slot): it names a path on this machine,
        # and a receiving process (a Dask worker) follows its own SYMAD_CACHE_DIR.
        options = (self.__name__, self._grad, self._argnums, self._fastmath,
                   self._opt_level, None)
        token = hashlib.sha256(repr((options, function, [s["token"] for s in specs],
                                     self._max_specs)).encode()).hexdigest()
        return {"format": PICKLE_FORMAT, "options": options, "function": function,
                "specs": specs, "last": last, "token": token,
                "max_specializations": self._max_specs}

    def __repr__(self) -> str:
        kind = "compile_grad" if self._grad else "compile"
        return f"<symad {kind} {self.__name__}: {len(self._specs)} specialization(s)>"


def compile(f: Callable, *, fastmath=False, opt_level="auto",  # noqa: A001
            cache=None, max_specializations=None) -> CompiledFunction:
    """Compile any traceable function to native code.

    Args:
        f: a numeric function of numbers/arrays (or pytrees of them).
        fastmath: ``False`` (IEEE, default), ``True`` (``arcp contract afn reassoc``;
            never ``nnan``/``ninf``, and no rewrite that drops a NaN or an inf: see
            ``codegen.lower.instruction_flags``) or an explicit tuple of LLVM fast-math
            flags.
        opt_level: 0..3, or ``"auto"`` (O3, falling back to cheap code generation for
            very large graphs).
        cache: the on-disk compile cache (:mod:`symad.diskcache`): ``None`` follows the
            environment variable ``SYMAD_CACHE_DIR``, ``True`` enables it, ``False``
            disables it, a path names its folder. Not pickled: an unpickled copy
            follows the receiving process's ``SYMAD_CACHE_DIR``.
        max_specializations: how many argument signatures (structure and shapes) keep
            their native code, least recently used dropped first (each holds a JIT
            engine, ~1.3 MB; a dropped one compiles again when called). ``None``:
            ``symad.compiled.MAX_SPECIALIZATIONS`` (32). ``f.clear()`` drops them all.

    Returns:
        A :class:`CompiledFunction` returning ``f``'s output structure.

    >>> import numpy as np
    >>> g = compile(lambda x, y: np.sin(x) * y)
    >>> round(g(1.0, 2.0), 12)
    1.682941969616
    """
    return CompiledFunction(f, grad=False, fastmath=fastmath, opt_level=opt_level,
                            cache=cache, max_specializations=max_specializations)


class _AllArgumentsByDefault:
    """compile_grad's argnums when none is given: every argument, with a FutureWarning
    where that differs from symad.grad's (and JAX's) default, argument 0."""

    def __repr__(self) -> str:
        return "<every argument, by default>"

    def __reduce__(self):
        return "_ALL_BY_DEFAULT"


_ALL_BY_DEFAULT = _AllArgumentsByDefault()


def compile_grad(f: Callable | None = None, *, argnums=_ALL_BY_DEFAULT, fastmath=False,
                 opt_level="auto", cache=None, max_specializations=None):
    """Compile ``f`` and its gradient into one native function returning both.

    Usable bare (``@compile_grad``) or with options (``@compile_grad(argnums=0)``).

    Args:
        f: a function returning one scalar.
        argnums: an int (that argument's gradient, bare), a tuple of ints (a tuple of
            gradients) or ``None`` (every positional argument: one argument gives its
            gradient bare, several a tuple). Not given, it means ``None`` today, with a
            ``FutureWarning`` for functions of several arguments: the default will become
            ``0``, as for :func:`symad.grad` (and JAX). Pass it to choose.
        fastmath, opt_level, cache, max_specializations: as for :func:`compile`.

    Returns:
        A :class:`CompiledFunction`; calling it returns ``(value, gradient)``.

    Raises:
        TypeError: a non-scalar output, a bad ``argnums`` or non-numeric arguments.

    >>> import numpy as np
    >>> f = compile_grad(lambda x1, x2: np.log(x1) + x1 * x2 - np.sin(x2), argnums=(0, 1))
    >>> f(2.0, 5.0)
    (11.652071455223084, (5.5, 1.7163378145367738))
    """
    def wrap(fn):
        return CompiledFunction(fn, grad=True, argnums=argnums, fastmath=fastmath,
                                opt_level=opt_level, cache=cache,
                                max_specializations=max_specializations)
    return wrap if f is None else wrap(f)


# ---- the in-memory caches ---------------------------------------------------------------

def memory_cache_info() -> dict:
    """What the in-memory caches hold (the disk cache's counterpart:
    :func:`symad.cache_info`).

    Returns:
        A dict: ``entries``, native code held by any live compiled function or by the
        LRU, looked up by graph fingerprint, shapes and options (compiling a graph found
        here does no LLVM work); ``recent`` and ``recent_max``, the LRU that keeps the
        most recent of them alive when no function holds them; ``restored``, unpickled
        functions remembered by their pickle's token (unpickling the same bytes again
        returns the same function).

    >>> sorted(memory_cache_info())
    ['entries', 'recent', 'recent_max', 'restored']
    """
    with specialize._CACHE_LOCK:
        return {"entries": len(specialize._CACHE), "recent": len(specialize._RECENT),
                "recent_max": specialize._RECENT_MAX, "restored": len(RESTORED)}


def clear_memory_cache() -> None:
    """Empty the in-memory caches, as in a fresh process: the next compile of any graph
    does its LLVM work again (or reads the disk cache), and unpickling builds a new
    function. Compiled functions keep their native code. The cache key does not include
    the :mod:`symad.policy` thresholds: clear it after changing one to compile with it.
    """
    with specialize._CACHE_LOCK:
        specialize._CACHE.clear()
        specialize._RECENT.clear()
        RESTORED.clear()


# ---- unpickling ---------------------------------------------------------------------------

# What a malformed state raises where a check did not see it coming: each becomes a
# SymadError naming the function (a last line of defence after the explicit checks).
MALFORMED = (ValueError, TypeError, LookupError, StopIteration, AttributeError,
              ArithmeticError, RecursionError)


def restore_compiled(state: dict):
    """Rebuild a CompiledFunction from its pickled graphs (compiles or hits the caches).

    The reconstructor of a pickle: ``f.__reduce__()`` is ``(restore_compiled, (state,))``.
    The state may have been tampered with; anything malformed raises :class:`SymadError`.
    """
    if not isinstance(state, dict) or state.get("format") != PICKLE_FORMAT:
        raise SymadError("cannot unpickle a symad compiled function: unknown format "
                         "(pickled by another symad version?)")
    name = "a symad compiled function"
    options = state.get("options")
    if isinstance(options, tuple) and options and isinstance(options[0], str):
        name = options[0]
    try:
        return _restore_checked(state, name)
    except SymadError:
        raise
    except MALFORMED as exc:
        raise unpickle_error(name, f"malformed state ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from exc


def _restore_checked(state: dict, name: str):
    import pickle

    from symad.codegen import lower

    from .policy import choose_levels
    from .specialize import ArraySpecialization
    missing = {"options", "function", "specs", "last", "token"} - set(state)
    if missing:
        raise unpickle_error(name, f"the state lacks {sorted(missing)}")
    token = state["token"]
    if not isinstance(token, str):
        raise unpickle_error(name, "its token is not a string")
    with specialize._CACHE_LOCK:
        hit = RESTORED.get(token)
        if hit is not None:
            RESTORED.move_to_end(token)
            return hit
    options = state["options"]
    if not (isinstance(options, tuple) and len(options) == 6 and isinstance(options[0], str)
            and isinstance(options[1], bool)):
        raise unpickle_error(name, f"malformed options {options!r:.200}")
    # the last slot (the sender's cache option) is ignored: older pickles carried it
    name, grad, argnums, fastmath, opt_level, _ = options
    lower.fastmath_flags(fastmath)        # ValueError for a bad option, here and not later
    choose_levels(1, opt_level)
    specs = state["specs"]
    if not isinstance(specs, (list, tuple)):
        raise unpickle_error(name, "its specializations are not a list")
    keys = [checked_key(sstate, name) for sstate in specs]
    f = None
    reason = "it was not picklable by reference"
    if state["function"] is not None:
        if not isinstance(state["function"], bytes):
            raise unpickle_error(name, "its function is not pickled bytes")
        try:
            f = pickle.loads(state["function"])
        except Exception as exc:  # noqa: BLE001 (e.g. defined in another process's __main__)
            reason = f"it could not be imported here: {type(exc).__name__}: {exc}"
    if f is None:
        f = Unavailable(name, reason, keys)
    # (absent from older pickles; a bad one is a ValueError, reported as malformed)
    cf = CompiledFunction(f, grad=grad, argnums=argnums, fastmath=fastmath,
                          opt_level=opt_level, cache=None,
                          max_specializations=state.get("max_specializations"))
    cf.__name__ = name
    opts = cf._options()
    for sstate, key in zip(specs, keys):
        spec: Specialization | None = None
        if sstate.get("array") and not isinstance(f, Unavailable):
            # traced again, so the copy runs the same array-level kernel as the original
            treedef, shapes = key
            example = tree_unflatten(treedef, [0.0 if s == () else np.zeros(s)
                                               for s in shapes])
            spec = ArraySpecialization.attempt(opts, key, example)[0]
        if spec is None:
            spec = Specialization.restored(opts, sstate)
        cf._admit(spec.key, spec)
        if spec.key == state["last"]:
            cf._last = spec
    with specialize._CACHE_LOCK:
        RESTORED[token] = cf
        while len(RESTORED) > RESTORED_MAX:
            RESTORED.popitem(last=False)
    return cf


# Pickles of version 0.1.0 before the pickled-state checks moved to symad.persist name
# this function.
_restore_compiled = restore_compiled
