"""Robustness II (issue 20): the native-code caches, pickling of compiled functions
(what travels, what a tampered pickle does), bounded specializations and the LLVM
memory each compile keeps."""

import gc
import os
import pickle
import shutil

import numpy as np
import pytest

import symad
from symad import compiled as compiled_mod


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _drop_memory_caches():
    """Forget natives held in memory, so only the disk cache (if any) can share code."""
    with compiled_mod._CACHE_LOCK:
        compiled_mod._RECENT.clear()
        compiled_mod._RESTORED.clear()
    gc.collect()


# ---- item 1: cache keys include the argument shapes ------------------------------------

def _same_graph_other_shapes(cache=None):
    # Both trace to sum(sin(v0), sin(v1), sin(v2)) over six inputs: one graph
    # fingerprint, but h takes a (6,) vector and f a (2, 3) matrix.
    h = symad.compile(lambda v: np.sum(np.sin(v[:3])), cache=cache)
    f = symad.compile(lambda v: np.sum(np.sin(v[0])), cache=cache)
    return h, f


def test_functions_with_one_graph_but_other_shapes_do_not_share_entries():
    h, f = _same_graph_other_shapes()
    assert h(np.arange(6.0)) == pytest.approx(np.sin(1.0) + np.sin(2.0))
    assert f(np.ones((2, 3))) == pytest.approx(3 * np.sin(1.0))
    assert f.graph.fingerprint(f.graph.outputs) == h.graph.fingerprint(h.graph.outputs)
    # (6,) is a new signature for f: v[0] is the scalar 0.0, not h's first three
    assert f(np.arange(6.0)) == 0.0
    assert h(np.arange(6.0)) == pytest.approx(np.sin(1.0) + np.sin(2.0))


def test_disk_cache_entries_of_other_shapes_are_not_shared(tmp_path):
    h, _ = _same_graph_other_shapes(cache=tmp_path)
    assert h(np.arange(6.0)) == pytest.approx(np.sin(1.0) + np.sin(2.0))
    del h, _
    _drop_memory_caches()     # as in another process: only the folder is shared
    _, f = _same_graph_other_shapes(cache=tmp_path)
    assert f(np.ones((2, 3))) == pytest.approx(3 * np.sin(1.0))
    assert f.stats["disk_cache"] == "miss"
    assert f(np.arange(6.0)) == 0.0
    np.testing.assert_array_equal(f.batch(np.stack([np.arange(6.0)] * 3)), [0.0] * 3)


# ---- item 19: the cache folder does not travel inside the pickle ----------------------

def test_pickle_leaves_the_cache_folder_behind(tmp_path, monkeypatch):
    monkeypatch.delenv("SYMAD_CACHE_DIR", raising=False)
    sender = tmp_path / "sender-only-folder"
    f = symad.compile_grad(_rosen, cache=sender)
    x = np.linspace(-1.0, 1.0, 4)
    want = f(x)
    blob = pickle.dumps(f)
    assert b"sender-only-folder" not in blob
    # a worker without SYMAD_CACHE_DIR: no disk cache, and no folder created
    del f
    _drop_memory_caches()
    shutil.rmtree(sender)
    g = pickle.loads(blob)
    assert g._cache is None and g.stats["disk_cache"] is None
    assert g(x)[0] == want[0]
    np.testing.assert_array_equal(g(x)[1], want[1])
    assert not sender.exists()
    # a worker with its own SYMAD_CACHE_DIR uses that folder
    worker = tmp_path / "worker"
    monkeypatch.setenv("SYMAD_CACHE_DIR", str(worker))
    del g
    _drop_memory_caches()
    h = pickle.loads(blob)
    assert h.stats["disk_cache"] == "miss"
    assert [n for _, _, names in os.walk(worker) for n in names if n.endswith(".obj")]
    assert not sender.exists()
