"""The opt-in on-disk compile cache: object code keyed by a content hash.

Where it sits: after lowering (trace -> graph -> ad -> lower -> jit), around the JIT. A
hit links stored object code instead of running LLVM's optimisation and code generation.

Enabled per function (``symad.compile(f, cache=True)`` or ``cache="/some/folder"``) or
for every compile by the environment variable ``SYMAD_CACHE_DIR`` (a folder;
``cache=False`` opts a function out). ``cache=True`` without the variable uses
``$XDG_CACHE_HOME/symad`` (default ``~/.cache/symad``).

What is cached: the object code MCJIT generates for one graph (captured through LLVM's
object cache hook) plus the optimised IR text for ``f.optimized_ir``. A warm compile
still traces, differentiates and lowers (cheap), then links the cached object instead
of running the optimisation pipeline and machine-code generation (the expensive part).

The key is a SHA-256 over the caller's content key and everything object code depends
on: llvmlite and LLVM versions, target triple, host CPU name and features, the Python
implementation and version (the fast entry uses CPython's object layout), symad's
version and the cache format (``entry_key``). The content key is the one the in-memory
cache uses: ``Graph.fingerprint`` (a hash of the live graph's rows, input names left
out) with every compile option and what the entries bake in (fast-math flags,
optimisation levels, result spec, argument and result shapes), plus which module it is
(``:batch`` and a rolled batch kernel's buffer size for the batch entry). Entries are
written to a temporary file and renamed into place (``os.replace``), so readers never see
a partial file, and concurrent writers of the same key are harmless.

Trust model. Loading an entry runs its machine code, so an entry must come from this
user's own compiles:

- every entry carries an HMAC-SHA256 of its payload (which holds its key) under a random
  per-user secret, the key file ``$XDG_CONFIG_HOME/symad/cache.key`` (default
  ``~/.config/symad/cache.key``, or the file ``SYMAD_CACHE_KEY`` names), created 0600 in
  a 0700 folder. Entry keys are computable from public facts; the HMAC is not. An entry
  whose magic, HMAC, key or lengths do not match is removed and recompiled, never loaded;
- folders are created 0700, entries 0600. A cache folder that is not a directory owned
  by the user, or that group or others can write, and a key file that is not a regular
  file owned by the user and private to them (mode 0600 or stricter), are refused: one
  :class:`CacheWarning` per problem and process, and compiles go on without the disk
  cache (working code beats a crash; a silent skip would hide the problem);
- an entry is opened with ``O_NOFOLLOW | O_NONBLOCK`` and used only if it is a regular
  file owned by the user and at most :data:`MAX_ENTRY_BYTES` long: a symbolic link, FIFO,
  device or oversized file at an entry's path is logged, removed and recompiled over.

A cache shared between processes or machines is therefore only as trusted as everyone
who can write its folder or read or write the key file: share one among processes of
one user (for example a home directory on a cluster's shared file system, with the same
key file), never between users.

Size: once a store takes the folder past ``SYMAD_CACHE_MAX_BYTES`` bytes (default
512 MiB; suffixes K, M, G), the least recently used entries are removed down to 90% of
that bound. "Used" is the modification time, which a hit refreshes (access times are
unreliable under ``noatime``). Each process scans the folder on its first store, then
whenever its own estimate passes the bound or a minute has gone by, so concurrent
writers can overshoot the bound briefly.
:func:`cache_info` and :func:`clear_cache` (and ``symad cache info|clear``) inspect and
empty a folder.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import sys
import tempfile
import time
import warnings
import zlib

log = logging.getLogger("symad")

ENV_VAR = "SYMAD_CACHE_DIR"
KEY_ENV_VAR = "SYMAD_CACHE_KEY"
MAX_BYTES_ENV_VAR = "SYMAD_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 512 * 2**20
# Far above any real entry (Rosenbrock n=1000 value+grad is ~2 MiB); bounds what one
# read (or one decompression of the IR) may allocate.
MAX_ENTRY_BYTES = 256 * 2**20
# Bumped whenever the emitted code changes for the same graph (2: rolled loops; 3:
# streaming stores in batches, loop totals kept in registers; 4: batches planned apart;
# 5: entries signed with the per-user HMAC key; 6: stack buffers bounded, heap above,
# outputs stored alike by loops, fmax/floordiv/... ops and fastmath flag gating).
FORMAT = 6
MAGIC = b"SYMADOBJ"
_DIGEST = 32
_KEY_BYTES = 32
# A temporary file this old is left over from a writer that died; pruning removes it.
_STALE_TMP_SECONDS = 3600.0
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.obj")
_SUBDIR_NAME = re.compile(r"[0-9a-f]{2}")
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_CLOEXEC", 0))
_WARNED: set[str] = set()
# Pruning removes down to this fraction of the bound; see _after_store for rescans.
_LOW_WATER = 0.9
_RESCAN_SECONDS = 60.0
_USAGE: dict[str, tuple[int, float]] = {}     # folder -> (bytes at last scan + added, when)


class CacheWarning(RuntimeWarning):
    """The disk cache is not used: its folder or key file is unsafe or unusable.

    The message names the path, the problem and the fix (usually ``chmod 700 FOLDER`` or
    ``chmod 600 KEYFILE``); compiles go on without the disk cache meanwhile. To turn the
    cache off instead, unset ``SYMAD_CACHE_DIR`` or pass ``cache=False``.
    """


class _Unusable(Exception):
    """Internal: why the cache folder or key cannot be used (becomes a CacheWarning)."""


class _BadEntry(Exception):
    """Internal: why the file at an entry's path is not an entry we may read."""


def _uid() -> int | None:
    # The effective uid: the one that owns the files this process creates.
    return os.geteuid() if hasattr(os, "geteuid") else None


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


def key_file() -> str:
    """Path of the per-user secret that signs entries (``SYMAD_CACHE_KEY`` overrides)."""
    env = os.environ.get(KEY_ENV_VAR)
    if env:
        return env
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".config")
    return os.path.join(base, "symad", "cache.key")


def max_bytes() -> int:
    """The size bound from ``SYMAD_CACHE_MAX_BYTES`` (bytes, or with a K/M/G suffix)."""
    text = os.environ.get(MAX_BYTES_ENV_VAR, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    m = re.fullmatch(r"(\d+)\s*([kmg]?)i?b?", text, re.IGNORECASE)
    if m is None:
        _warn_once(f"symad: {MAX_BYTES_ENV_VAR}={text!r} is not a size (bytes, or a number "
                   f"with a K, M or G suffix, e.g. 512M); using the default "
                   f"{DEFAULT_MAX_BYTES // 2**20} MiB")
        return DEFAULT_MAX_BYTES
    return int(m.group(1)) * 1024 ** " kmg".index((m.group(2) or " ").lower())


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, CacheWarning, stacklevel=3)


def _check_private(st: os.stat_result, path: str, what: str, mask: int, risk: str,
                   fix: str) -> None:
    """Refuse ``path`` unless the user owns it and no one else has the ``mask`` bits."""
    uid = _uid()
    if uid is None:
        return                              # no POSIX owners or modes to go by (Windows)
    if st.st_uid != uid:
        raise _Unusable(f"the {what} {path} is owned by uid {st.st_uid}, not by you "
                        f"(uid {uid}), so {risk}; use a {what} of your own")
    if st.st_mode & mask:
        access = "writable" if mask == 0o022 else "readable or writable"
        raise _Unusable(f"the {what} {path} is {access} by group or others (mode "
                        f"{stat.S_IMODE(st.st_mode):04o}), so {risk}; {fix}")


def _check_folder(folder: str, create: bool = True) -> bool:
    """Check (and with ``create``, make 0700) the cache folder; False if it is missing."""
    if create:
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise _Unusable(f"cannot create the cache folder {folder} ({exc.strerror})"
                            ) from None
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        if create:
            raise _Unusable(f"the cache folder {folder} vanished") from None
        return False
    except OSError as exc:
        raise _Unusable(f"cannot inspect the cache folder {folder} ({exc.strerror})"
                        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise _Unusable(f"the cache folder {folder} is not a directory")
    _check_private(st, folder, "cache folder", 0o022,
                   "whoever can write there could choose the machine code you run",
                   f"use a folder only you can write (chmod 700 {folder} if it is yours), "
                   f"or unset {ENV_VAR} / pass cache=False")
    return True


def _read_key(path: str) -> bytes | None:
    """The secret in ``path``, or None if there is no file; _Unusable if it is unsafe."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Unusable(f"cannot open the cache key file {path} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Unusable(f"the cache key file {path} is not a regular file")
        _check_private(st, path, "cache key file", 0o077,
                       "others could sign cache entries, choosing the machine code you run",
                       f"run chmod 600 {path} if it is yours (or delete it: a new one is "
                       f"made, and existing entries are recompiled once)")
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if len(data) < _KEY_BYTES:
        raise _Unusable(f"the cache key file {path} holds {len(data)} bytes, fewer than "
                        f"{_KEY_BYTES}; delete it and a new one is made")
    return data


def _user_key() -> bytes:
    """The per-user HMAC secret, created (0600, in a 0700 folder) on first use."""
    path = key_file()
    key = _read_key(path)
    if key is not None:
        return key
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        # Written aside and linked into place: a concurrent creator's key is never
        # overwritten (os.link fails if the name exists) and never seen half written.
        fd, tmp = tempfile.mkstemp(prefix=".cache.key-", dir=folder)   # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(_KEY_BYTES))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.remove(tmp)
    except OSError as exc:
        raise _Unusable(f"cannot create the cache key file {path} ({exc.strerror}); set "
                        f"{KEY_ENV_VAR} to a file path you can write") from None
    key = _read_key(path)
    if key is None:
        raise _Unusable(f"the cache key file {path} vanished while it was created")
    return key


def _prepare(folder: str) -> bytes | None:
    """The HMAC secret if ``folder`` may be used, else None (after one warning)."""
    try:
        _check_folder(folder)
        return _user_key()
    except _Unusable as exc:
        _warn_once(f"symad: not using the disk cache: {exc}. Compiling without it.")
        return None


def entry_key(content_key: str) -> str:
    """The on-disk key: the graph/options hash plus what object code depends on."""
    from symad.codegen import jit

    from .version import __version__
    parts = (FORMAT, content_key, jit.target_fingerprint(), sys.implementation.cache_tag,
             sys.version, __version__)
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _path(folder: str, key: str) -> str:
    return os.path.join(folder, key[:2], key + ".obj")


def _mac(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()


def encode(key: str, obj: bytes, optimized_ir: str, secret: bytes | None = None) -> bytes:
    """An entry: magic, HMAC of the payload under ``secret`` (the user's key), payload."""
    secret = _user_key() if secret is None else secret
    ir_z = zlib.compress(optimized_ir.encode(), 1)
    header = json.dumps({"key": key, "format": FORMAT, "obj": len(obj),
                         "ir": len(ir_z)}).encode()
    payload = len(header).to_bytes(4, "little") + header + obj + ir_z
    return MAGIC + _mac(secret, payload) + payload


def decode(key: str, data: bytes, secret: bytes | None = None) -> tuple[bytes, str]:
    """(object code, optimised IR) of an entry; ValueError if forged, corrupt or stale."""
    secret = _user_key() if secret is None else secret
    if data[:len(MAGIC)] != MAGIC:
        raise ValueError("bad magic")
    digest = data[len(MAGIC):len(MAGIC) + _DIGEST]
    payload = data[len(MAGIC) + _DIGEST:]
    if not hmac.compare_digest(_mac(secret, payload), digest):
        raise ValueError("HMAC mismatch: the payload digest does not match (a corrupt entry, "
                         "or one not written with your cache key)")
    n = int.from_bytes(payload[:4], "little")
    header = json.loads(payload[4:4 + n])
    if not isinstance(header, dict):
        raise ValueError("bad header")
    if header.get("key") != key or header.get("format") != FORMAT:
        raise ValueError("entry was written for another key or format (stale)")
    rest = payload[4 + n:]
    n_obj, n_ir = int(header["obj"]), int(header["ir"])
    if len(rest) != n_obj + n_ir:
        raise ValueError("length mismatch")
    # Bounded: a compressed stream can expand a thousandfold.
    inflate = zlib.decompressobj()
    ir_bytes = inflate.decompress(rest[n_obj:], MAX_ENTRY_BYTES)
    if inflate.unconsumed_tail or not inflate.eof:
        raise ValueError(f"the IR text is truncated or over {MAX_ENTRY_BYTES} bytes")
    return rest[:n_obj], ir_bytes.decode()


def _open_entry(path: str) -> int | None:
    """A read-only descriptor of the regular file at ``path``, None if there is none.

    Never follows a symbolic link or blocks on a FIFO; raises _BadEntry for anything at
    the path that is not a regular file of the user's, at most MAX_ENTRY_BYTES long.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _BadEntry("it is a symbolic link") from None
        raise _BadEntry(f"cannot open it ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        uid = _uid()
        if not stat.S_ISREG(st.st_mode):
            raise _BadEntry("it is not a regular file")
        if uid is not None and st.st_uid != uid:
            raise _BadEntry(f"it is owned by uid {st.st_uid}, not by you")
        if st.st_size > MAX_ENTRY_BYTES:
            raise _BadEntry(f"its {st.st_size} bytes exceed the {MAX_ENTRY_BYTES} bound")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, got = [], 0
    while got <= size:                      # one byte past the size detects growth
        chunk = os.read(fd, min(size + 1 - got, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got != size:
        raise _BadEntry("it changed size while it was read")
    return b"".join(chunks)


def _discard(path: str, why: str) -> None:
    log.warning("symad: discarding cache entry %s: %s", path, why)
    try:
        os.remove(path)                     # the link or FIFO itself, never its target
    except OSError:
        pass


def load(folder: str, key: str, secret: bytes | None = None) -> tuple[bytes, str] | None:
    """A verified entry, or ``None`` (missing; a bad one is logged and removed).

    A hit refreshes the entry's modification time, the last-use stamp pruning goes by.
    """
    path = _path(folder, key)
    try:
        fd = _open_entry(path)
        if fd is None:
            return None
        try:
            data = _read_fd(fd)
            hit = decode(key, data, secret)
            try:
                os.utime(fd)
            except (OSError, NotImplementedError):
                pass
            return hit
        finally:
            os.close(fd)
    except Exception as exc:  # noqa: BLE001 (any failure means: do not use it)
        _discard(path, str(exc))
        return None


def store(folder: str, key: str, obj: bytes, optimized_ir: str,
          secret: bytes | None = None, *, bound: int | None = None) -> None:
    """Write an entry atomically, then prune; failures (full disk, ...) only log."""
    path = _path(folder, key)
    data = encode(key, obj, optimized_ir, secret)
    bound = max_bytes() if bound is None else bound
    if len(data) > min(bound, MAX_ENTRY_BYTES):
        log.info("symad: not caching %s: its %d bytes exceed the cache bound", path,
                 len(data))
        return
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))  # 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            # Replaces whatever is at the path (a bad entry, a link) without following it.
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        log.warning("symad: cannot write cache entry %s: %s", path, exc)
        return
    _after_store(folder, len(data), bound, path)


def _scan(folder: str) -> tuple[list[tuple[float, int, str]], list[str]]:
    """(entries as (mtime, size, path), other removable paths) of a cache folder.

    Looks only at two-hex-digit subfolders (never through symbolic links) and at names
    the cache writes, so pointing it at the wrong folder removes nothing else.
    """
    entries: list[tuple[float, int, str]] = []
    junk: list[str] = []
    now = time.time()
    try:
        subdirs = [d for d in os.scandir(folder)
                   if _SUBDIR_NAME.fullmatch(d.name) and d.is_dir(follow_symlinks=False)]
    except OSError:
        return entries, junk
    for sub in subdirs:
        try:
            items = list(os.scandir(sub.path))
        except OSError:
            continue
        for item in items:
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue
            if _ENTRY_NAME.fullmatch(item.name):
                if stat.S_ISREG(st.st_mode):
                    entries.append((st.st_mtime, st.st_size, item.path))
                else:
                    junk.append(item.path)
            elif item.name.startswith(".tmp-") and now - st.st_mtime > _STALE_TMP_SECONDS:
                junk.append(item.path)
    return entries, junk


def _remove_all(paths) -> int:
    removed = 0
    for path in paths:
        try:
            os.remove(path)
            removed += 1
        except OSError:
            pass                            # another process pruned it first
    return removed


def prune(folder: str, bound: int | None = None, *, keep: str | None = None) -> int:
    """Remove least recently used entries once ``folder`` holds more than ``bound`` bytes.

    Removes down to 90% of the bound, so that a full cache is not rescanned on every
    store. Returns the number of entries removed. ``keep`` (the entry just written) goes
    last of all, only if it alone exceeds the target.
    """
    bound = max_bytes() if bound is None else bound
    entries, junk = _scan(folder)
    _remove_all(junk)
    total = sum(size for _, size, _ in entries)
    removed = 0
    if total > bound:
        target = int(bound * _LOW_WATER)
        entries.sort(key=lambda e: (e[2] == keep, e[0]))
        doomed = []
        for _, size, path in entries:
            if total <= target:
                break
            doomed.append(path)
            total -= size
        removed = _remove_all(doomed)
        log.debug("symad: pruned %d cache entries from %s (bound %d bytes)", removed,
                  folder, bound)
    _USAGE[os.path.abspath(folder)] = (total, time.monotonic())
    return removed


def _after_store(folder: str, added: int, bound: int, keep: str) -> None:
    """Prune when this process's estimate of the folder's size passes the bound.

    A scan stats every entry (about 10 ms per 1,000): it runs on a process's first store,
    when the estimate (last scan plus what this process added since) exceeds the bound,
    and at least every _RESCAN_SECONDS, which catches what other processes added.
    """
    folder_id = os.path.abspath(folder)
    estimate, scanned = _USAGE.get(folder_id, (None, 0.0))
    if (estimate is not None and estimate + added <= bound
            and time.monotonic() - scanned < _RESCAN_SECONDS):
        _USAGE[folder_id] = (estimate + added, scanned)
        return
    prune(folder, bound, keep=keep)


def _folder(folder: str | os.PathLike | None) -> str:
    if folder is not None:
        return os.fspath(folder)
    default = cache_dir(True)
    assert default is not None              # cache_dir(True) always names a folder
    return default


def cache_info(folder: str | os.PathLike | None = None) -> dict:
    """What the disk cache holds: its folder, entry count, bytes and size bound.

    Args:
        folder: the cache folder; ``None`` means the one ``cache=True`` uses
            (``SYMAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/symad``). Nothing is created.

    Returns:
        A dict with ``folder``, ``entries`` (count), ``bytes`` (their total size),
        ``max_bytes`` (the pruning bound, ``SYMAD_CACHE_MAX_BYTES``), ``key_file`` (the
        signing key's path) and ``problem`` (``None``, or why compiles would not use the
        folder or key file).

    >>> import tempfile
    >>> info = cache_info(tempfile.mkdtemp())
    >>> info["entries"], info["bytes"], info["problem"]
    (0, 0, None)
    """
    folder = _folder(folder)
    problem = None
    try:
        _check_folder(folder, create=False)
        _read_key(key_file())               # a missing key is no problem: it is made
    except _Unusable as exc:
        problem = str(exc)
    entries, _ = _scan(folder)
    return {"folder": folder, "entries": len(entries),
            "bytes": sum(size for _, size, _ in entries), "max_bytes": max_bytes(),
            "key_file": key_file(), "problem": problem}


def clear_cache(folder: str | os.PathLike | None = None) -> int:
    """Remove every entry of the disk cache (the folder and the key file stay).

    Args:
        folder: the cache folder; ``None`` means the one ``cache=True`` uses
            (``SYMAD_CACHE_DIR``, else ``$XDG_CACHE_HOME/symad``).

    Returns:
        The number of entries removed. Only names the cache writes are touched.

    >>> import tempfile
    >>> clear_cache(tempfile.mkdtemp())
    0
    """
    folder = _folder(folder)
    entries, junk = _scan(folder)
    _remove_all(junk)
    removed = _remove_all(path for _, _, path in entries)
    _USAGE.pop(os.path.abspath(folder), None)
    for sub in {os.path.dirname(path) for _, _, path in entries}:
        try:
            os.rmdir(sub)                   # only if empty
        except OSError:
            pass
    return removed


def compile_module(folder: str, content_key: str, module, symbols: list[str], *,
                   speed_level: int, codegen_level: int, unroll: bool = True):
    """Like ``jit.compile_module``, through the cache in ``folder``.

    An unsafe folder or key file (see the module docstring) warns once and compiles
    without the cache (``disk_cache`` stays ``None``).
    """
    from symad.codegen import jit
    from symad.errors import CodegenError

    secret = _prepare(folder)
    if secret is None:
        return jit.compile_module(module, symbols, speed_level=speed_level,
                                  codegen_level=codegen_level, unroll=unroll)
    key = entry_key(content_key)
    t0 = time.perf_counter()
    hit = load(folder, key, secret)
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
        store(folder, key, captured[-1], mod.optimized_ir, secret)
    mod.disk_cache = "miss"
    log.debug("symad: disk cache miss %s (stored)", key[:16])
    return mod
