"""The opt-in on-disk compile cache: object code keyed by a content hash.

Enabled per function (``symad.compile(f, cache=True)`` or ``cache="/some/folder"``) or
for every compile by the environment variable ``SYMAD_CACHE_DIR`` (a folder;
``cache=False`` opts a function out). ``cache=True`` without the variable uses
``$XDG_CACHE_HOME/symad`` (default ``~/.cache/symad``).

What is cached: the object code MCJIT generates for one graph (captured through LLVM's
object cache hook) plus the optimised IR text for ``f.optimized_ir``. A warm compile
still traces, differentiates and lowers (cheap), then links the cached object instead
of running the optimisation pipeline and machine-code generation (the expensive part).

The key is a SHA-256 over the graph's SSA text and every compile option (fast-math
flags, optimisation levels, entry points) plus everything object code depends on:
llvmlite and LLVM versions, target triple, host CPU name and features, the Python
implementation and version (the fast entry uses CPython's object layout) and the cache
format. An entry stores its own key and a SHA-256 of its payload; an entry whose magic,
key, digest or lengths do not match is stale or corrupt: it is removed and the function
recompiled, never loaded. Entries are written to a temporary file and renamed into place
(``os.replace``), so readers never see a partial file, and concurrent writers of the same
key are harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import zlib

log = logging.getLogger("symad")

ENV_VAR = "SYMAD_CACHE_DIR"
# Bumped whenever the emitted code changes for the same graph (2: rolled loops; 3:
# streaming stores in batches, loop totals kept in registers; 4: batches planned apart;
# 5: stack buffers bounded, heap above; outputs stored alike by loops).
FORMAT = 5
MAGIC = b"SYMADOBJ"
_DIGEST = 32


def cache_dir(option) -> str | None:
    """The folder to use for a function's ``cache`` option, or ``None`` (no disk cache).

    ``None`` follows the environment (``SYMAD_CACHE_DIR``), ``False`` disables, ``True``
    enables (the environment's folder or the user cache folder), a path names the folder.
    """
    if option is False:
        return None
    env = os.environ.get(ENV_VAR) or None
    if option is None:
        return env
    if option is True:
        if env:
            return env
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".cache")
        return os.path.join(base, "symad")
    if isinstance(option, (str, os.PathLike)):
        return os.fspath(option)
    raise TypeError(f"cache must be True, False, None or a folder path, not {option!r}")


def entry_key(content_key: str) -> str:
    """The on-disk key: the graph/options hash plus what object code depends on."""
    from symad.codegen import jit

    from . import __version__
    parts = (FORMAT, content_key, jit.target_fingerprint(), sys.implementation.cache_tag,
             sys.version, __version__)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _path(folder: str, key: str) -> str:
    return os.path.join(folder, key[:2], key + ".obj")


def encode(key: str, obj: bytes, optimized_ir: str) -> bytes:
    ir_z = zlib.compress(optimized_ir.encode(), 1)
    header = json.dumps({"key": key, "format": FORMAT, "obj": len(obj),
                         "ir": len(ir_z)}).encode()
    payload = len(header).to_bytes(4, "little") + header + obj + ir_z
    return MAGIC + hashlib.sha256(payload).digest() + payload


def decode(key: str, data: bytes) -> tuple[bytes, str]:
    """(object code, optimised IR) of an entry; ValueError if it is corrupt or stale."""
    if data[:len(MAGIC)] != MAGIC:
        raise ValueError("bad magic")
    digest = data[len(MAGIC):len(MAGIC) + _DIGEST]
    payload = data[len(MAGIC) + _DIGEST:]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("payload digest mismatch (corrupt entry)")
    n = int.from_bytes(payload[:4], "little")
    header = json.loads(payload[4:4 + n])
    if header.get("key") != key or header.get("format") != FORMAT:
        raise ValueError("entry was written for another key or format (stale)")
    rest = payload[4 + n:]
    if len(rest) != header["obj"] + header["ir"]:
        raise ValueError("length mismatch")
    obj = rest[:header["obj"]]
    optimized_ir = zlib.decompress(rest[header["obj"]:]).decode()
    return obj, optimized_ir


def load(folder: str, key: str) -> tuple[bytes, str] | None:
    """A verified entry, or ``None`` (missing; a corrupt or stale one is removed)."""
    path = _path(folder, key)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    try:
        return decode(key, data)
    except Exception as exc:  # noqa: BLE001 (any decoding failure means: do not use it)
        log.warning("symad: discarding cache entry %s: %s", path, exc)
        try:
            os.remove(path)
        except OSError:
            pass
        return None


def store(folder: str, key: str, obj: bytes, optimized_ir: str) -> None:
    """Write an entry atomically; failures (read-only folder, full disk) only log."""
    path = _path(folder, key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(encode(key, obj, optimized_ir))
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        log.warning("symad: cannot write cache entry %s: %s", path, exc)


def compile_module(folder: str, content_key: str, module, symbols: list[str], *,
                   speed_level: int, codegen_level: int, unroll: bool = True):
    """Like ``jit.compile_module``, through the cache in ``folder``."""
    from symad.codegen import jit
    from symad.errors import CodegenError

    key = entry_key(content_key)
    t0 = time.perf_counter()
    hit = load(folder, key)
    if hit is not None:
        obj, optimized_ir = hit
        try:
            mod = jit.load_module(module, symbols, obj, optimized_ir,
                                  speed_level=speed_level, codegen_level=codegen_level)
            mod.seconds["disk_read"] = time.perf_counter() - t0 - mod.seconds["machine_code"]
            log.debug("symad: disk cache hit %s", key[:16])
            return mod
        except CodegenError as exc:
            log.warning("symad: cached object %s did not load (%s); recompiling",
                        key[:16], exc)
    captured: list[bytes] = []
    mod = jit.compile_module(module, symbols, speed_level=speed_level,
                             codegen_level=codegen_level, unroll=unroll,
                             on_object=captured.append)
    if captured:
        store(folder, key, captured[-1], mod.optimized_ir)
    mod.disk_cache = "miss"
    log.debug("symad: disk cache miss %s (stored)", key[:16])
    return mod
