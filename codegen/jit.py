"""The one owner of LLVM state (trace -> graph -> ad -> lower -> **jit**).

Holds the target machines (one per machine-code optimisation level, created once) and
runs parse -> verify -> new-pass-manager pipeline -> MCJIT for each module
(``compile_module``), or links object code from the disk cache (``load_module``). Each
:class:`NativeModule` owns its own MCJIT engine, so native code is freed together with
the compiled function that references it (no process-wide list that only grows). The
symbols emitted code calls (CPython's C API, type objects) are made resolvable here
(``add_symbol``).

Optimisation levels. LLVM's machine-code generation dominates compile time and grows
superlinearly with the size of one straight-line basic block (DESIGN.md, Known traps:
50k instructions take 6.4 s at O1-O3 against 0.4 s at O0). ``symad.policy.choose_levels``
picks the levels of every kernel by the size of what LLVM compiles: full O3 for ordinary
functions, a cheap IR pipeline (O1) above ``MEDIUM_GRAPH_NODES``, and the fast O0
instruction selector and register allocator above ``LARGE_GRAPH_NODES``, so compile time
stays near linear.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time
from dataclasses import dataclass, field

import llvmlite
import llvmlite.binding as llvm
from llvmlite import ir
from llvmlite.binding import ffi

from symad.errors import CodegenError
from symad.policy import choose_levels  # noqa: F401 (the back end's name for it)

# The levels by graph size (MEDIUM_GRAPH_NODES, LARGE_GRAPH_NODES) are chosen in
# symad/policy.py (choose_levels, re-exported here); see DECISIONS.md.

# Held around symad's LLVM work (module compiles and loads, target set-up, symbols):
# this module is the one owner of LLVM state, and a fork waits on this lock (below).
_LOCK = threading.RLock()
_STATE: dict = {}


def _llvm_locked(fn):
    @functools.wraps(fn)
    def locked(*args, **kwargs):
        with _LOCK:
            return fn(*args, **kwargs)
    return locked


# llvmlite's own lock around each of its C API calls (engines are also freed through it,
# from whichever thread drops the last reference). It is private to llvmlite: without it
# (a future llvmlite) only symad's own calls are covered.
_FFI_LOCK = getattr(getattr(getattr(ffi, "lib", None), "_lock", None), "_lock", None)
if not (hasattr(_FFI_LOCK, "acquire") and hasattr(_FFI_LOCK, "release")):
    _FFI_LOCK = None


def _before_fork() -> None:
    # A child forked while another thread is inside LLVM inherits its locks held by a
    # thread that does not exist there and hangs at its first compile: fork waits until
    # no LLVM call is in progress (symad's lock first: its holders call into llvmlite).
    _LOCK.acquire()
    if _FFI_LOCK is not None:
        _FFI_LOCK.acquire()


def _after_fork() -> None:
    # In the child too: the forking thread is the child's only thread and owns both.
    if _FFI_LOCK is not None:
        _FFI_LOCK.release()
    _LOCK.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                    after_in_child=_after_fork)


def _version_ok() -> None:
    parts = tuple(int(p) for p in llvmlite.__version__.split(".")[:2] if p.isdigit())
    if parts < (0, 45):
        raise CodegenError(f"symad needs llvmlite >= 0.45 (new pass manager only); "
                           f"found {llvmlite.__version__}")


def _start() -> dict:
    """Initialise the native target once per process (never ``llvm.initialize()``)."""
    with _LOCK:
        if _STATE:
            return _STATE
        _version_ok()
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        try:
            llvm.check_jit_execution()
        except Exception as exc:  # noqa: BLE001 (any failure here means no JIT at all)
            raise CodegenError(f"this process cannot execute JIT-compiled code: {exc}. "
                               "Use the uncompiled transformations (symad.value_and_grad)."
                               ) from exc
        target = llvm.Target.from_triple(llvm.get_process_triple())
        try:
            features = llvm.get_host_cpu_features().flatten()
        except RuntimeError:  # odd hosts: numba falls back to no feature string too
            features = ""
        _STATE.update(target=target, cpu=llvm.get_host_cpu_name(), features=features,
                      tms={}, triple=llvm.get_process_triple())
        return _STATE


def _create_tm(codegen_level: int):
    st = _start()
    return st["target"].create_target_machine(
        cpu=st["cpu"], features=st["features"], opt=codegen_level,
        codemodel="jitdefault", jit=True)


def target_machine(codegen_level: int = 3):
    """The shared target machine for a machine-code level (0..3): data layout, passes,
    assembly. Engines get their own (an MCJIT engine takes ownership of its target
    machine and disposes of it when the engine is freed)."""
    st = _start()
    with _LOCK:
        tm = st["tms"].get(codegen_level)
        if tm is None:
            tm = st["tms"][codegen_level] = _create_tm(codegen_level)
        return tm


@_llvm_locked
def new_module(name: str) -> ir.Module:
    st = _start()
    mod = ir.Module(name=name)
    mod.triple = st["triple"]
    mod.data_layout = str(target_machine(3).target_data)
    return mod


def add_symbol(name: str, address: int) -> None:
    """Make ``name`` resolvable by the JIT linker (process-wide, idempotent)."""
    with _LOCK:
        llvm.add_symbol(name, address)


_VECTOR_MATH: dict = {}


def vector_math_available(symbols) -> bool:
    """Can native code call glibc's libmvec AVX2 variants ``symbols`` here? (The CPU has
    AVX2, ``libmvec.so.1`` loads and defines every symbol.) Checked once per symbol."""
    st = _start()
    with _LOCK:
        if "lib" not in _VECTOR_MATH:
            ok = "+avx2" in st["features"].split(",")
            if ok:
                try:
                    llvm.load_library_permanently("libmvec.so.1")
                except RuntimeError:
                    ok = False
            _VECTOR_MATH["lib"] = ok
        if not _VECTOR_MATH["lib"]:
            return False
        for sym in symbols:
            if sym not in _VECTOR_MATH:
                _VECTOR_MATH[sym] = bool(llvm.address_of_symbol(sym))
            if not _VECTOR_MATH[sym]:
                return False
        return True


def _excerpt(text: str, fn_name: str, limit: int = 1500) -> str:
    at = text.find(f"@{fn_name}(")
    start = max(0, text.rfind("\n", 0, at) if at >= 0 else 0)
    return text[start:start + limit]


@dataclass
class NativeModule:
    """A JIT-compiled module: its engine, symbol addresses, IR texts and timings."""
    engine: object
    addresses: dict[str, int]
    llvm_ir: str
    optimized_ir: str
    codegen_level: int
    speed_level: int
    seconds: dict[str, float] = field(default_factory=dict)
    _asm: str | None = None
    disk_cache: str | None = None     # "hit", "miss" or None (no on-disk cache in use)

    @property
    def asm(self) -> str:
        # Emitted on demand: assembly is a second machine-code run, which for a big
        # function costs as much as the JIT itself.
        if self._asm is None:
            with _LOCK:
                mod = llvm.parse_assembly(self.optimized_ir)
                self._asm = target_machine(self.codegen_level).emit_assembly(mod)
        return self._asm


@_llvm_locked
def compile_module(module: ir.Module, symbols: list[str], *, speed_level: int = 3,
                   codegen_level: int = 3, unroll: bool = True,
                   on_object=None) -> NativeModule:
    """Verify, optimise and JIT ``module``; return addresses of the emitted ``symbols``.

    ``unroll=False`` keeps LLVM from unrolling loops and from SLP vectorisation: for
    kernels whose loops symad rolled on purpose (``lower.rolled_plan``), unrolling them
    back costs compile time, and the loop vectoriser does their vector work (SLP cost
    Lennard-Jones 16 value+grad 25 of its 80 ms of optimisation, for the same code
    speed).

    ``on_object(bytes)``, when given, receives the object code MCJIT generated (through
    LLVM's object cache hook), for the on-disk compile cache.
    """
    _start()
    text = str(module)
    main = symbols[0] if symbols else module.name
    t0 = time.perf_counter()
    try:
        llmod = llvm.parse_assembly(text)
        llmod.verify()
    except RuntimeError as exc:
        raise CodegenError(f"LLVM rejected the IR of @{main}: {exc}\n"
                           f"--- IR excerpt ---\n{_excerpt(text, main)}") from exc
    tm = target_machine(codegen_level)
    # One pass builder and pipeline per compile, on purpose (llvmlite 0.50, LLVM 22,
    # measured on 2,000 small modules): a pipeline built by the pass builder cannot run
    # twice (the second run aborts the process in an LLVM assertion), and every run
    # registers instrumentation callbacks into its pass builder for good, so a shared
    # builder keeps the same memory per compile and makes each compile slower (20 ms
    # -> 77 ms after 3,000). What stays behind per compile is inside LLVM's pipeline
    # (~80 KB: 34 KB building it, the rest running it; ~24 KB more for the rest of a
    # symad compile), untouched by a per-module LLVMContext. In-memory cache hits do no
    # LLVM work, on-disk cache hits skip the pipeline (load_module).
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    pto.loop_vectorization = speed_level >= 2
    pto.slp_vectorization = speed_level >= 2 and unroll
    pto.loop_unrolling = unroll
    pb = llvm.create_pass_builder(tm, pto)
    mpm = pb.getModulePassManager()
    try:
        mpm.run(llmod, pb)
    finally:
        # Close explicitly: garbage collection alone leaves ~55 KB of LLVM memory per
        # compile behind (measured, llvmlite 0.50); closing leaves ~5 KB.
        mpm.close()
        pb.close()
        pto.close()
    optimized = str(llmod)
    t1 = time.perf_counter()
    try:
        engine = llvm.create_mcjit_compiler(llmod, _create_tm(codegen_level))
        if on_object is not None:
            engine.set_object_cache(lambda _m, buf: on_object(bytes(buf)), lambda _m: None)
        engine.finalize_object()
    except RuntimeError as exc:
        raise CodegenError(f"machine-code generation failed for @{main}: {exc}\n"
                           f"--- IR excerpt ---\n{_excerpt(optimized, main)}") from exc
    addresses = _addresses(engine, module, symbols)
    t2 = time.perf_counter()
    return NativeModule(engine=engine, addresses=addresses, llvm_ir=text,
                        optimized_ir=optimized, codegen_level=codegen_level,
                        speed_level=speed_level,
                        seconds={"llvm_opt": t1 - t0, "machine_code": t2 - t1})


def _addresses(engine, module: ir.Module, symbols: list[str]) -> dict[str, int]:
    # get_function_address aborts the process on a missing symbol: only ask for names
    # this module defines.
    emitted = {f.name for f in module.functions if not f.is_declaration}
    addresses = {}
    for name in symbols:
        if name not in emitted:
            raise CodegenError(f"@{name} is not defined by module {module.name!r}")
        addresses[name] = engine.get_function_address(name)
    return addresses


@_llvm_locked
def load_module(module: ir.Module, symbols: list[str], obj: bytes, optimized_ir: str, *,
                speed_level: int, codegen_level: int) -> NativeModule:
    """JIT ``module`` from previously generated object code (no optimisation, no codegen).

    ``obj`` must come from :func:`compile_module`'s ``on_object`` for the same IR, target
    and LLVM version (the caller's cache key guarantees it and checks its integrity): MCJIT
    asks the object cache first and links the cached object instead of compiling.
    """
    _start()
    text = str(module)
    main = symbols[0] if symbols else module.name
    t0 = time.perf_counter()
    try:
        llmod = llvm.parse_assembly(text)
        engine = llvm.create_mcjit_compiler(llmod, _create_tm(codegen_level))
        engine.set_object_cache(lambda _m, _buf: None, lambda _m: obj)
        engine.finalize_object()
    except RuntimeError as exc:
        raise CodegenError(f"loading cached object code for @{main} failed: {exc}") from exc
    addresses = _addresses(engine, module, symbols)
    t1 = time.perf_counter()
    return NativeModule(engine=engine, addresses=addresses, llvm_ir=text,
                        optimized_ir=optimized_ir, codegen_level=codegen_level,
                        speed_level=speed_level,
                        seconds={"llvm_opt": 0.0, "machine_code": t1 - t0},
                        disk_cache="hit")


def target_fingerprint() -> tuple:
    """What object code depends on besides the IR: LLVM, target triple, CPU and features."""
    st = _start()
    return (llvmlite.__version__, tuple(llvm.llvm_version_info), st["triple"], st["cpu"],
            st["features"])


def pythonapi_address(name: str) -> int:
    """Address of a CPython C-API function or data symbol, for :func:`add_symbol`."""
    try:
        return ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value
    except AttributeError:
        raise CodegenError(f"CPython C-API symbol {name!r} not found") from None
