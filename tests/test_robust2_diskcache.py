"""The on-disk compile cache against a hostile or careless file system (issue 20, items
17, 18 and 20): forged entries, unsafe folders and key files, FIFOs and symbolic links
at entry paths, the size bound with LRU pruning, cache_info / clear_cache and the CLI."""

import doctest
import gc
import hashlib
import hmac
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import symad
from symad import compiled as compiled_mod
from symad import diskcache

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NOBODY = 65534
CacheWarning = getattr(diskcache, "CacheWarning", Warning)


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private key file per test, no cache from the environment, warnings shown anew."""
    monkeypatch.setenv("SYMAD_CACHE_KEY", str(tmp_path / "config" / "cache.key"))
    monkeypatch.delenv(diskcache.ENV_VAR, raising=False)
    monkeypatch.delenv("SYMAD_CACHE_MAX_BYTES", raising=False)
    # private: each warning is shown once per process by design; each test starts anew
    monkeypatch.setattr(diskcache, "_WARNED", set(), raising=False)


def _fresh(fn, compile_=symad.compile, **kw):
    """Compile ``fn`` with the in-memory caches emptied (as a fresh process would)."""
    compiled_mod.clear_memory_cache()
    gc.collect()
    return compile_(fn, **kw)


def _entries(folder):
    return {os.path.join(d, n) for d, _, names in os.walk(folder) for n in names
            if n.endswith(".obj")}


def _compile_new_entry(fn, folder, x=0.5):
    """Compile ``fn`` through the cache in ``folder``: (its value at x, its entry's path)."""
    before = _entries(folder)
    f = _fresh(fn, cache=folder)
    value = f(x)
    (path,) = _entries(folder) - before
    return value, path


def f_good(x):
    return 2.0 * x + 1.0


def f_bad(x):
    return 0.0 * x + 1e6


# ---- item 17: entries are authenticated; folders and key files must be private -------

def _resign(data, new_key, mac):
    """What an attacker can do without the user's key: file an entry under another key."""
    magic, payload = data[:8], data[40:]
    n = int.from_bytes(payload[:4], "little")
    header = json.loads(payload[4:4 + n])
    header["key"] = new_key
    h = json.dumps(header).encode()
    payload = len(h).to_bytes(4, "little") + h + payload[4 + n:]
    return magic + mac(payload) + payload


@pytest.mark.parametrize("mac", [
    lambda p: hashlib.sha256(p).digest(),                           # public facts only
    lambda p: hmac.new(b"attacker's own key" * 2, p, hashlib.sha256).digest(),
], ids=["sha256", "foreign-hmac"])
def test_a_planted_entry_resigned_under_another_key_is_not_run(tmp_path, caplog, mac):
    folder = tmp_path / "cache"
    assert _compile_new_entry(f_bad, folder)[0] == 1e6
    bad_path = next(iter(_entries(folder)))
    assert _compile_new_entry(f_good, folder)[0] == 2.0
    good_path = next(iter(_entries(folder) - {bad_path}))
    good_key = os.path.basename(good_path)[:-4]
    forged = _resign(open(bad_path, "rb").read(), good_key, mac)
    with open(good_path, "wb") as fh:
        fh.write(forged)
    with caplog.at_level(logging.WARNING, logger="symad"):
        g = _fresh(f_good, cache=folder)
        assert g(0.5) == 2.0
    assert g.stats["disk_cache"] == "miss" and "HMAC" in caplog.text
    # ... and the genuine entry written over the forgery is a hit next time.
    del g
    h = _fresh(f_good, cache=folder)
    assert h(0.5) == 2.0 and h.stats["disk_cache"] == "hit"


def test_new_folders_entries_and_key_file_are_private(tmp_path):
    folder = tmp_path / "a" / "cache"
    _, path = _compile_new_entry(f_good, folder)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(folder) == 0o700 and mode(os.path.dirname(path)) == 0o700
    assert mode(path) == 0o600
    key = tmp_path / "config" / "cache.key"
    assert mode(key) == 0o600 and mode(key.parent) == 0o700
    assert len(key.read_bytes()) == 32


def _warnings_of(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


def test_a_folder_others_can_write_is_refused_with_one_warning(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    f = _fresh(f_good, cache=folder)
    value, messages = _warnings_of(lambda: f(0.5))
    assert value == 2.0 and f.stats["disk_cache"] is None
    assert len(messages) == 1 and "writable by group or others (mode 0777)" in messages[0]
    assert f"chmod 700 {folder}" in messages[0] and _entries(folder) == set()
    # Once per problem and process: the next compile stays quiet (and still works).
    g = _fresh(lambda x: 3.0 * x, cache=folder)
    value, messages = _warnings_of(lambda: g(0.5))
    assert value == 1.5 and messages == [] and _entries(folder) == set()
    folder.chmod(0o700)
    h = _fresh(lambda x: 4.0 * x, cache=folder)
    assert h(0.5) == 2.0 and h.stats["disk_cache"] == "miss" and len(_entries(folder)) == 1


@pytest.mark.skipif(not ROOT, reason="needs root to give a folder away")
def test_a_folder_or_key_file_of_another_user_is_refused(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o755)
    os.chown(folder, NOBODY, NOBODY)
    f = _fresh(f_good, cache=folder)
    value, messages = _warnings_of(lambda: f(0.5))
    assert value == 2.0 and f.stats["disk_cache"] is None and _entries(folder) == set()
    assert len(messages) == 1 and f"owned by uid {NOBODY}" in messages[0]
    mine, f_five = tmp_path / "mine", lambda x: 5.0 * x   # noqa: E731
    _compile_new_entry(f_five, mine)
    os.chown(tmp_path / "config" / "cache.key", NOBODY, NOBODY)
    g = _fresh(f_five, cache=mine)
    value, messages = _warnings_of(lambda: g(0.5))
    assert value == 2.5 and g.stats["disk_cache"] is None
    assert len(messages) == 1 and "cache key file" in messages[0]


def test_a_key_file_others_can_read_is_refused(tmp_path):
    folder = tmp_path / "cache"
    _compile_new_entry(f_good, folder)
    key = tmp_path / "config" / "cache.key"
    key.chmod(0o644)
    f = _fresh(f_good, cache=folder)
    value, messages = _warnings_of(lambda: f(0.5))
    assert value == 2.0 and f.stats["disk_cache"] is None
    assert len(messages) == 1 and "readable or writable by group or others" in messages[0]
    assert f"chmod 600 {key}" in messages[0]
    assert "cache key file" in symad.cache_info(folder)["problem"]


# ---- item 18: whatever sits at an entry's path is opened safely -----------------------

def _compile_in_thread(fn, folder, seconds=60.0):
    """(value, f) from a compile in a thread; if it blocks, a FIFO at ``fifo`` is fed."""
    out = {}

    def work():
        f = _fresh(fn, cache=folder)
        out["value"], out["f"] = f(0.5), f

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    return t, out


def test_a_fifo_at_an_entry_path_does_not_block_the_compile(tmp_path, caplog):
    folder = tmp_path / "cache"
    _, path = _compile_new_entry(f_good, folder)
    os.remove(path)
    os.mkfifo(path)
    with caplog.at_level(logging.WARNING, logger="symad"):
        t, out = _compile_in_thread(f_good, folder)
        if t.is_alive():
            # The compile blocks opening the FIFO: give it a writer (and EOF) to free it.
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            t.join(60)
            pytest.fail("a FIFO at a cache entry's path blocked the compile")
    assert out["value"] == 2.0 and out["f"].stats["disk_cache"] == "miss"
    assert "not a regular file" in caplog.text
    assert stat.S_ISREG(os.lstat(path).st_mode)          # overwritten by the recompile


def test_a_symlink_to_dev_zero_is_a_miss_not_a_memory_error(tmp_path, caplog):
    folder = tmp_path / "cache"
    _, path = _compile_new_entry(f_good, folder)
    os.remove(path)
    os.symlink("/dev/zero", path)
    with caplog.at_level(logging.WARNING, logger="symad"):
        f = _fresh(f_good, cache=folder)
        assert f(0.5) == 2.0
    assert f.stats["disk_cache"] == "miss" and "symbolic link" in caplog.text
    assert stat.S_ISREG(os.lstat(path).st_mode)


def test_a_symlink_to_a_valid_entry_is_not_followed(tmp_path, caplog):
    folder = tmp_path / "cache"
    _, path = _compile_new_entry(f_good, folder)
    elsewhere = tmp_path / "elsewhere.obj"
    os.replace(path, elsewhere)
    os.symlink(elsewhere, path)
    with caplog.at_level(logging.WARNING, logger="symad"):
        f = _fresh(f_good, cache=folder)
        assert f(0.5) == 2.0
    assert f.stats["disk_cache"] == "miss" and "symbolic link" in caplog.text
    assert not os.path.islink(path) and elsewhere.exists()


def test_an_oversized_entry_is_not_read(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(diskcache, "MAX_ENTRY_BYTES", 2**20, raising=False)
    folder = tmp_path / "cache"
    _, path = _compile_new_entry(f_good, folder)
    os.truncate(path, 2**21)                            # sparse: costs no disk
    with caplog.at_level(logging.WARNING, logger="symad"):
        f = _fresh(f_good, cache=folder)
        assert f(0.5) == 2.0
    assert f.stats["disk_cache"] == "miss"
    assert f"{2**21} bytes exceed the {2**20} bound" in caplog.text
    assert os.path.getsize(path) < 2**20


@pytest.mark.skipif(not ROOT, reason="needs root to give a file away")
def test_an_entry_owned_by_another_user_is_not_loaded(tmp_path, caplog):
    folder = tmp_path / "cache"
    _, path = _compile_new_entry(f_good, folder)
    os.chown(path, NOBODY, NOBODY)
    with caplog.at_level(logging.WARNING, logger="symad"):
        f = _fresh(f_good, cache=folder)
        assert f(0.5) == 2.0
    assert f.stats["disk_cache"] == "miss" and f"owned by uid {NOBODY}" in caplog.text
    assert os.stat(path).st_uid == os.getuid()


def test_the_stored_ir_is_inflated_with_a_bound(monkeypatch):
    monkeypatch.setattr(diskcache, "MAX_ENTRY_BYTES", 2**20)
    key, secret = "ab" * 32, b"k" * 32
    bomb = diskcache.encode(key, b"\x7fELF", "x" * 2**21, secret)
    assert len(bomb) < 2**14
    with pytest.raises(ValueError, match="over 1048576 bytes"):
        diskcache.decode(key, bomb, secret)
    assert diskcache.decode(key, diskcache.encode(key, b"obj", "ir", secret), secret) == \
        (b"obj", "ir")


# ---- item 20: a size bound with LRU pruning, cache_info, clear_cache, the CLI ---------

def _scaled(c):
    return lambda x: np.sin(x) * c + np.cos(x * c)


def test_the_cache_is_pruned_least_recently_used_first(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    _, p1 = _compile_new_entry(_scaled(1.0), folder)
    size = os.path.getsize(p1)
    bound = int(2.5 * size)
    monkeypatch.setenv("SYMAD_CACHE_MAX_BYTES", str(bound))
    _, p2 = _compile_new_entry(_scaled(2.0), folder)
    hit = _fresh(_scaled(1.0), cache=folder)              # a hit makes entry 1 recent
    assert hit(0.5) == _scaled(1.0)(0.5) and hit.stats["disk_cache"] == "hit"
    del hit
    _, p3 = _compile_new_entry(_scaled(3.0), folder)
    assert _entries(folder) == {p1, p3}                    # entry 2 was least recent
    assert sum(os.path.getsize(p) for p in _entries(folder)) <= bound
    info = symad.cache_info(folder)
    assert info["entries"] == 2 and info["max_bytes"] == bound


def test_prune_goes_by_last_use_and_touches_only_what_the_cache_writes(tmp_path):
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    (folder / "ab").mkdir(parents=True)
    outside.mkdir()
    names = [f"{i:x}" * 64 for i in range(10)]
    for age, name in enumerate(names):                   # names[0] is the most recent
        path = folder / "ab" / f"{name}.obj"
        path.write_bytes(b"x" * 100)
        os.utime(path, (1e9 - age, 1e9 - age))
    (outside / f"{'e' * 64}.obj").write_bytes(b"x" * 10**6)
    os.symlink(outside, folder / "cd")                   # a linked subfolder: not entered
    os.symlink("/dev/zero", folder / "ab" / f"{'f' * 64}.obj")
    stale, fresh = folder / "ab" / ".tmp-old", folder / "ab" / ".tmp-new"
    stale.write_bytes(b"partial")
    os.utime(stale, (1e9, 1e9))
    fresh.write_bytes(b"being written")
    (folder / "ab" / "readme.txt").write_text("mine")
    # 1000 bytes over a bound of 550: down to 90% of it (495), least recently used first.
    assert diskcache.prune(folder, 550) == 6
    kept = sorted(p.name for p in (folder / "ab").iterdir())
    assert kept == sorted([".tmp-new", "readme.txt"] + [f"{n}.obj" for n in names[:4]])
    assert len(os.listdir(outside)) == 1
    assert diskcache.prune(folder, 550) == 0             # under the bound: nothing to do


def test_the_size_bound_from_the_environment(monkeypatch):
    for text, want in [("1000", 1000), ("64K", 2**16), ("512M", 2**29), ("2GiB", 2**31)]:
        monkeypatch.setenv("SYMAD_CACHE_MAX_BYTES", text)
        assert diskcache.max_bytes() == want
    monkeypatch.delenv("SYMAD_CACHE_MAX_BYTES")
    assert diskcache.max_bytes() == 512 * 2**20
    monkeypatch.setenv("SYMAD_CACHE_MAX_BYTES", "lots")
    with pytest.warns(CacheWarning, match="'lots' is not a size"):
        assert diskcache.max_bytes() == 512 * 2**20


def test_cache_info_and_clear_cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    _, p1 = _compile_new_entry(f_good, folder)
    _, p2 = _compile_new_entry(f_bad, folder)
    (folder / "notes.txt").write_text("not an entry")
    monkeypatch.setenv(diskcache.ENV_VAR, str(folder))
    monkeypatch.setenv("SYMAD_CACHE_MAX_BYTES", "1M")
    info = symad.cache_info()
    assert info == {"folder": str(folder), "entries": 2,
                    "bytes": os.path.getsize(p1) + os.path.getsize(p2), "max_bytes": 2**20,
                    "key_file": str(tmp_path / "config" / "cache.key"), "problem": None}
    assert symad.clear_cache(folder) == 2
    assert symad.cache_info(folder)["entries"] == 0 and _entries(folder) == set()
    assert (folder / "notes.txt").read_text() == "not an entry"
    assert "cache_info" in symad.__all__ and "clear_cache" in symad.__all__


def test_cli_cache_info_and_clear(tmp_path):
    folder = tmp_path / "cache"
    _, path = _compile_new_entry(f_good, folder)
    env = dict(os.environ, SYMAD_CACHE_DIR=str(folder), SYMAD_CACHE_MAX_BYTES="1M")

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "symad", "cache", *args], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    out = run("info")
    assert f"folder:    {folder}\n" in out and "entries:   1\n" in out
    assert f"bytes:     {os.path.getsize(path)} " in out and "max_bytes: 1048576 " in out
    assert "problem" not in out
    assert run("clear") == f"removed 1 entries from {folder}\n"
    assert "entries:   0\n" in run()                       # info is the default
    folder.chmod(0o777)
    assert "problem:   the cache folder" in run("info")


def test_docstring_examples():
    result = doctest.testmod(diskcache, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
