"""Robustness II (issue 20): the native-code caches, pickling of compiled functions
(what travels, what a tampered pickle does), bounded specializations and the LLVM
memory each compile keeps."""

import concurrent.futures
import gc
import multiprocessing
import os
import pickle
import shutil
import threading
import weakref

import numpy as np
import pytest

import symad
from symad import compiled as compiled_mod
from symad.runtime import flatten_call


def _rosen(x):
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _drop_memory_caches():
    """Forget natives held in memory, so only the disk cache (if any) can share code."""
    compiled_mod.clear_memory_cache()
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
    assert g.stats["disk_cache"] is None
    assert g(x)[0] == want[0]
    np.testing.assert_array_equal(g(x)[1], want[1])
    assert not sender.exists()
    # a worker with its own SYMAD_CACHE_DIR uses that folder: g follows it (its cache
    # option is None), h too
    worker = tmp_path / "worker"
    monkeypatch.setenv("SYMAD_CACHE_DIR", str(worker))
    g(np.linspace(-1.0, 1.0, 5))
    assert g.stats["disk_cache"] == "miss"
    del g
    _drop_memory_caches()
    h = pickle.loads(blob)
    assert h.stats["disk_cache"] == "miss"
    assert [n for _, _, names in os.walk(worker) for n in names if n.endswith(".obj")]
    assert not sender.exists()


# ---- item 23: every result structure survives a pickle round trip ----------------------

_VEC = np.linspace(-0.9, 1.7, 6)


def _structures():
    """(name, compiled function, arguments) for every kind of result structure."""
    return [
        ("scalar", symad.compile(lambda x, y: np.sin(x) * y), (1.0, 2.0)),
        ("1-D array", symad.compile(lambda x: np.sin(x) * 2.0 - x), (_VEC,)),
        ("2-D array", symad.compile(lambda m: np.cos(m) * m), (_VEC.reshape(2, 3),)),
        ("tuple of mixed", symad.compile(lambda x: (np.sum(x ** 2), np.tanh(x),
                                                    (x[0] * x[1], np.exp(x[:2])))),
         (_VEC,)),
        ("dict", symad.compile(lambda x: {"norm": np.sum(x * x), "sin": np.sin(x)}),
         (_VEC,)),
        ("compile_grad, array args",
         symad.compile_grad(lambda x, w: np.sum(w * np.sin(x)) + x[0] * w[-1]),
         (_VEC, _VEC[::-1].copy())),
    ]


def _assert_same_tree(got, want):
    got_leaves, got_tree, _ = symad.tree.tree_flatten(got)
    want_leaves, want_tree, _ = symad.tree.tree_flatten(want)
    assert got_tree == want_tree
    for a, b in zip(got_leaves, want_leaves, strict=True):
        assert type(a) is type(b)
        assert np.shape(a) == np.shape(b)
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


@pytest.mark.parametrize("case", range(6), ids=[c[0] for c in _structures()])
def test_pickle_round_trip_of_every_result_structure(case):
    _, f, args = _structures()[case]
    want = f(*args)
    g = pickle.loads(pickle.dumps(f))
    assert g is not f
    _assert_same_tree(g(*args), want)
    assert (g.fast_entry is None) == (f.fast_entry is None)   # fast entry kept
    batch = [np.stack([a, 2 * np.asarray(a)]) for a in args]
    _assert_same_tree(g.batch(*batch), f.batch(*batch))


def _residuals_in_worker(blob, x):
    return pickle.loads(blob)(x)


def test_one_array_result_runs_in_a_spawned_process_pool():
    # the README's least_squares(symad.compile(res), ...): res returns one 1-D array
    res = symad.compile(lambda p: np.array([10.0 * (p[1] - p[0] ** 2), 1.0 - p[0]]))
    x = np.array([-1.2, 1.0])
    want = res(x)
    ctx = multiprocessing.get_context("spawn")   # a fresh interpreter, as on a cluster
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        got = pool.submit(_residuals_in_worker, pickle.dumps(res), x).result(timeout=120)
    assert isinstance(got, np.ndarray) and got.shape == (2,)
    assert got.tobytes() == want.tobytes()


# ---- items 14 and 25: tampered pickles raise SymadError, never crash or leak ----------

def _state_of(f, *args):
    f(*args)
    _, (state,) = f.__reduce__()            # what pickle stores: (restore_compiled, (state,))
    return state


def _tampered(state, n, **spec_fields):
    """``state`` with its first specialization's fields replaced (a fresh token, so the
    per-process cache of restored functions does not answer)."""
    spec = dict(state["specs"][0], **spec_fields)
    return dict(state, token=f"tampered-{n}", specs=[spec] + list(state["specs"][1:]))


def _restore_raises(state, match):
    with pytest.raises(symad.SymadError, match=match) as info:
        compiled_mod.restore_compiled(state)
    return info.value


def test_result_spec_ranges_are_checked_against_the_outputs():
    from symad.codegen.py_entry import ArrayOut
    state = _state_of(symad.compile(lambda m: np.cos(m) * m), np.ones((2, 3)))
    assert state["specs"][0]["py_spec"] == ArrayOut((0, (2, 3)))
    # in range by the old check (every int below n_out = 6) but copying 25 doubles from
    # output 5 on: past the entry's stack buffer into the returned array
    _restore_raises(_tampered(state, 1, py_spec=ArrayOut((5, (5, 5)))), "result spec")
    _restore_raises(_tampered(state, 2, py_spec=ArrayOut((0, (3, 2)))), "result spec")
    _restore_raises(_tampered(state, 3, py_spec=ArrayOut((0, (4000, 4000)))),
                    "result spec")
    _restore_raises(_tampered(state, 4, py_spec=(0, 1)), "result spec")
    # output shapes must account for the graph's outputs
    _restore_raises(_tampered(state, 5, out=(("leaf",), [(7,)])), "outputs")
    _restore_raises(_tampered(state, 6, out=(("leaf",), [(2, -3)])), "shape")
    # the key's shapes must match the graph's inputs (before anything is allocated)
    _restore_raises(_tampered(state, 7, key=(("tuple", (("leaf",),)), ((10**6, 10**6),))),
                    "inputs")


def test_grad_signature_must_match_arguments_and_argnums():
    f = symad.compile_grad(lambda x, w: np.sum(w * np.sin(x)))
    state = _state_of(f, np.ones(3), np.ones(3))
    nums, single, trees, shapes = state["specs"][0]["grad"]
    _restore_raises(_tampered(state, 1, grad=(nums, single, trees, [[(9,)], [(3,)]])),
                    "gradient signature")
    _restore_raises(_tampered(state, 2, grad=((0,), True, trees[:1], shapes[:1])),
                    "gradient signature")
    _restore_raises(_tampered(state, 3, grad=None), "gradient")


def _replace_row(table, op, new_row):
    rows = list(table["rows"])
    k = next(i for i, r in enumerate(rows) if r[0] == op)
    rows[k] = new_row(rows[k])
    return dict(table, rows=rows)


@pytest.mark.parametrize("exponent", [2**31, 2**60000, -2**40, True, 3.0],
                         ids=["2**31", "2**60000", "-2**40", "True", "3.0"])
def test_attributes_are_checked_per_op(exponent):
    state = _state_of(symad.compile(lambda x: x ** 3 + np.sin(x)), 1.5)
    table = _replace_row(state["specs"][0]["table"], "powi",
                         lambda r: (r[0], r[1], (exponent,)))
    _restore_raises(_tampered(state, 1, table=table), "powi needs one integer exponent")


def test_attributes_on_ops_that_take_none_are_refused():
    state = _state_of(symad.compile(lambda x: x ** 3 + np.sin(x)), 1.5)
    table = _replace_row(state["specs"][0]["table"], "sin", lambda r: (r[0], r[1], (1,)))
    _restore_raises(_tampered(state, 1, table=table), "sin takes no attributes")
    # the untampered state restores and computes
    g = compiled_mod.restore_compiled(dict(state, token="untampered"))
    assert g(1.5) == 1.5 ** 3 + np.sin(1.5)


def _malformed_states(state):
    spec0 = state["specs"][0]
    table = spec0["table"]
    yield "specs", dict(state, specs=5)
    yield "spec-dict", dict(state, specs=["not a dict"])
    yield "spec-missing", dict(state, specs=[{"key": spec0["key"]}])
    yield "key", _tampered(state, 0, key="nonsense")
    yield "key-tree", _tampered(state, 0, key=(("tuple", "x"), ((3,),)))
    yield "key-leaves", _tampered(state, 0, key=(("tuple", (("leaf",),) * 2), ((3,),)))
    yield "key-deep", _tampered(state, 0, key=(_deep_tree(100_000), ((3,),)))
    yield "key-dims", _tampered(state, 0, key=(spec0["key"][0], ((3.0,),)))
    yield "table", _tampered(state, 0, table="nonsense")
    yield "rows", _tampered(state, 0, table=dict(table, rows=None))
    yield "row", _tampered(state, 0, table=dict(table, rows=[("sin",)]))
    yield "row-op", _tampered(state, 0, table=dict(table, rows=[([], (), ())]))
    yield "inputs", _tampered(state, 0, table=dict(table, inputs=[0, "1", 2]))
    yield "inputs-repeated", _tampered(state, 0, table=dict(table, inputs=[0, 0, 0]))
    yield "outputs", _tampered(state, 0, table=dict(table, outputs=[10**9]))
    yield "out", _tampered(state, 0, out=None)
    yield "out-tree", _tampered(state, 0, out=(("dict", ("a",), ()), [(3,)]))
    yield "options", dict(state, token="t-options", options=("f", True))
    yield "fastmath", dict(state, token="t-fastmath",
                           options=state["options"][:3] + ("bogus",) + state["options"][4:])
    yield "opt_level", dict(state, token="t-opt",
                            options=state["options"][:4] + (9,) + state["options"][5:])
    yield "token", dict(state, token=["unhashable"])
    yield "function", dict(state, token="t-function", function="not bytes")
    yield "no-token", {k: v for k, v in state.items() if k != "token"}


def _deep_tree(depth):
    td = ("leaf",)
    for _ in range(depth):
        td = ("tuple", (td,))
    return ("tuple", (td,))


def test_malformed_states_raise_symad_errors_naming_the_problem():
    state = _state_of(symad.compile(lambda x: np.sin(x) * 2.0), np.ones(3))
    _restore_raises(_tampered(state, 0, key=(_deep_tree(100_000), ((3,),))), "nested")
    for what, bad in _malformed_states(state):
        try:
            compiled_mod.restore_compiled(bad)
        except symad.SymadError as exc:
            assert "unpickle" in str(exc) or "rebuild" in str(exc), (what, exc)
        else:
            pytest.fail(f"{what}: restored a malformed state")


# ---- item 21: specializations are bounded (LRU) and clear() drops them ----------------

def _shapes(f):
    return {s.key[1] for s in f.specializations}


def _natives(f):
    return [weakref.ref(s.native) for s in f.specializations]


def _spec_of(f, *args):
    (spec,) = [s for s in f.specializations if s.key == flatten_call(args)[1]]
    return spec


def test_specializations_are_bounded_least_recently_used_first():
    f = symad.compile(lambda x: np.sum(np.sin(x)) * 2.0, max_specializations=3)
    for n in range(1, 7):
        assert f(np.ones(n)) == pytest.approx(2.0 * n * np.sin(1.0))
    # the first shape serves the fast entry and stays; the two most recent stay
    assert _shapes(f) == {((1,),), ((5,),), ((6,),)}
    assert f.fast_entry is _spec_of(f, np.ones(1)).fast
    f(np.ones(5))             # now used more recently than (6,)
    assert f(np.ones(2)) == pytest.approx(4.0 * np.sin(1.0))    # compiled again
    assert _shapes(f) == {((1,),), ((5,),), ((2,),)}
    assert repr(f).endswith("3 specialization(s)>")


def test_evicted_native_code_is_freed():
    f = symad.compile(lambda x: np.sum(np.cos(x)) - 1.0, max_specializations=2)
    f(np.ones(11))
    f(np.ones(12))
    (_, second) = _natives(f)
    f(np.ones(13))            # evicts (12,): the fast entry's (11,) stays
    gc.collect()
    assert second() is None
    assert f(np.ones(12)) == pytest.approx(12 * np.cos(1.0) - 1.0)


def test_a_bound_of_one_moves_the_fast_entry():
    f = symad.compile_grad(lambda x: np.sum(x ** 3), max_specializations=1)
    value, grad = f(np.full(2, 2.0))
    old_entry = f.fast_entry
    assert value == 16.0 and list(grad) == [12.0, 12.0]
    value, grad = f(np.full(3, 2.0))
    assert value == 24.0 and list(grad) == [12.0] * 3
    assert len(f.specializations) == 1 and f.fast_entry is not old_entry
    assert f.fast_entry is f.specializations[0].fast
    assert old_entry(np.full(2, 2.0))[0] == 16.0    # a stale entry object still works


def test_clear_drops_every_specialization():
    f = symad.compile(lambda x, y: np.sin(x) * y - 0.125)   # a graph no other test has
    assert f(1.0, 2.0) == np.sin(1.0) * 2.0 - 0.125
    f(np.ones(2), 3.0)
    natives = _natives(f)
    f.clear()
    assert len(f.specializations) == 0 and f.fast_entry is None
    with pytest.raises(symad.SymadError, match="call it once"):
        f.stats  # noqa: B018
    gc.collect()
    assert all(r() is None for r in natives)
    assert f(1.0, 2.0) == np.sin(1.0) * 2.0 - 0.125
    assert len(f.specializations) == 1


def test_clearing_an_unpickled_lambda_does_not_spoil_the_next_unpickle():
    f = symad.compile(lambda x: np.tan(x) * 0.5)
    want = f(0.3)
    blob = pickle.dumps(f)
    g = pickle.loads(blob)
    g.clear()
    with pytest.raises(symad.SymadError, match="without its Python function"):
        g(0.3)
    assert pickle.loads(blob)(0.3) == want


def test_max_specializations_is_checked_and_pickled():
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError, match="max_specializations"):
            symad.compile(np.sin, max_specializations=bad)
    f = symad.compile(lambda x: np.sin(x) + 1.0, max_specializations=2)
    for n in (1, 2, 3):
        f(np.ones(n))
    g = pickle.loads(pickle.dumps(f))
    assert g.max_specializations == 2 and len(g.specializations) == 2
    assert compiled_mod.MAX_SPECIALIZATIONS == symad.compile(np.sin).max_specializations


def test_eviction_while_other_threads_call_the_fast_entry():
    f = symad.compile(lambda x: np.sum(x * x), max_specializations=1)
    x = np.arange(4.0)
    assert f(x) == 14.0
    stop, errors = threading.Event(), []

    def caller():
        entry = f.fast_entry or f   # keep calling one entry object while it is evicted
        while not stop.is_set():
            if entry(x) != 14.0:
                errors.append("wrong value")

    threads = [threading.Thread(target=caller) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for n in range(5, 15):
            assert f(np.ones(n)) == n
            gc.collect()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors


def test_deeply_nested_results_refuse_to_pickle_with_a_clear_error():
    import pickle

    def nest(n):
        def f(x):
            out = x
            for _ in range(n):
                out = (out,)
            return out
        return f

    for n in (900, 5000):       # RecursionError in repr(state) before
        c = symad.compile(nest(n))
        c(1.0)
        with pytest.raises(symad.SymadError, match="nested over 256 levels"):
            pickle.dumps(c)
    c = symad.compile(nest(200))
    c(1.0)
    r = pickle.loads(pickle.dumps(c))(2.0)
    for _ in range(200):
        r = r[0]
    assert r == 2.0
