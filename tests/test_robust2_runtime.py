"""Robustness II (runtime): re-entrant calls, Ctrl-C in threaded batches, fork during a
compile, and option validation at the API boundary."""

from __future__ import annotations

import numbers
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import symad
from symad.errors import OptionError

# ---- re-entrant argument conversion ------------------------------------------------------


class _CallsBack:
    """An argument whose conversion to numbers calls the compiled function itself."""

    def __init__(self, f, value, inner_args):
        self.f, self.value, self.inner_args = f, value, inner_args
        self.inner = None

    def __array__(self, dtype=None, copy=None):
        self.inner = self.f(*self.inner_args)
        return np.asarray(self.value, dtype=dtype)


def _f32(n, v):
    # float32 arrays are not the native entry's signature: they take the Python path
    return np.full(n, v, dtype=np.float32)


def test_reentrant_conversion_in_python_call_path():
    # Non-ndarray leaves take the Python path (the native entry hands them over): the
    # inner call (float32: Python path too) fills the per-thread buffer the outer call is
    # filling.
    f = symad.compile(lambda a, b: a + 10.0 * b)
    sneaky = _CallsBack(f, [2.0, 2.0], (_f32(2, 5.0), _f32(2, 5.0)))
    got = f(np.array([1.0, 1.0]), sneaky)
    np.testing.assert_array_equal(got, [21.0, 21.0])
    np.testing.assert_array_equal(sneaky.inner, [55.0, 55.0])


class _FloatCallsBack:
    """A real number whose ``__float__`` calls the compiled function."""

    def __init__(self, f, value):
        self.f, self.value, self.inner = f, value, None

    def __float__(self):
        # np.float32: not the native entry's float64, so the Python path as well
        self.inner = self.f(np.float32(5.0), np.float32(5.0))
        return self.value


numbers.Real.register(_FloatCallsBack)


def test_reentrant_float_conversion():
    f = symad.compile(lambda a, b: a + 10.0 * b)
    assert f(1.0, 2.0) == 21.0        # compiled for two scalars
    sneaky = _FloatCallsBack(f, 2.0)
    assert f(1.0, sneaky) == 21.0
    assert sneaky.inner == 55.0


def test_reentrant_conversion_in_grad_call_path():
    f = symad.compile_grad(lambda a, b: np.sum(a * b))
    sneaky = _CallsBack(f, [3.0, 4.0], (_f32(2, 7.0), _f32(2, 7.0)))
    value, (ga, gb) = f(np.array([1.0, 2.0]), sneaky)
    assert value == 11.0
    np.testing.assert_array_equal(ga, [3.0, 4.0])
    np.testing.assert_array_equal(gb, [1.0, 2.0])
    assert sneaky.inner[0] == 98.0


def test_reentrant_conversion_in_array_level_call_path():
    # 500 elements: the array-level specialization (symad.compiled.ARRAY_MIN_ELEMENTS)
    f = symad.compile(lambda a, b: a * b + a)
    x = np.arange(500.0)
    sneaky = _CallsBack(f, np.full(500, 2.0), (_f32(500, 9.0), _f32(500, 9.0)))
    got = f(x, sneaky)
    assert f.stats.get("array_level")
    np.testing.assert_array_equal(got, 3.0 * x)
    np.testing.assert_array_equal(sneaky.inner, np.full(500, 90.0))


def test_reentrant_conversion_in_batch():
    f = symad.compile(lambda a, b: a + 10.0 * b)
    sneaky = _CallsBack(f, np.full(3, 2.0), (_f32(3, 5.0), _f32(3, 5.0)))
    got = f.batch(np.ones(3), sneaky)
    np.testing.assert_array_equal(got, [21.0, 21.0, 21.0])


# ---- Ctrl-C during a multi-threaded batch ---------------------------------------------

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_script(body: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``body`` in a fresh interpreter that imports this checkout's symad."""
    env = dict(os.environ, PYTHONPATH=_REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_ctrl_c_during_threaded_batch_waits_for_workers():
    # SIGINT reaches the main thread while it waits for the batch's worker threads. The
    # KeyboardInterrupt must not free the batch's buffers while workers still write them
    # (that segfaulted once the interrupted frame was gone and the memory reused).
    proc = _run_script("""
        import signal, threading, time
        import numpy as np
        import symad

        def f(x, y):
            s = 0.0
            for k in range(12):
                s = s + np.sin(x * (k + 1.0)) * np.exp(-y * k * 0.01)
            return s

        g = symad.compile(f)
        g.batch(np.ones(8), np.ones(8))            # builds the batch entry
        n = 1_500_000                              # threads=None splits this batch
        x, y = np.linspace(0, 1, n), np.linspace(1, 2, n)
        threading.Timer(0.05, signal.pthread_kill,
                        (threading.main_thread().ident, signal.SIGINT)).start()
        try:
            g.batch(x, y)
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        # the interrupted frame is gone: reuse memory, give stray workers time to write
        junk = [np.full(n, 7.0) for _ in range(8)]
        time.sleep(0.5)
        assert all((j == 7.0).all() for j in junk)
        out = g.batch(x[:1000], y[:1000], threads=2)
        print("after", float(np.max(np.abs(out - f(x[:1000], y[:1000])))))
        """, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    lines = proc.stdout.split()
    assert lines[0] == "interrupted", proc.stdout
    assert lines[1] == "after" and float(lines[2]) < 1e-12, proc.stdout


# ---- fork while another thread compiles -----------------------------------------------


def test_fork_while_another_thread_compiles():
    # A child forked while a thread is inside LLVM (or holds a function's lock, or the
    # parent's batch pool exists) must compile, call and batch on its own. Each child
    # gets a deadline: one that hangs fails the test instead of hanging it.
    proc = _run_script("""
        import multiprocessing, os, pickle, threading, time, warnings
        import numpy as np
        import symad

        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        stop = threading.Event()
        count = [0]
        shared = symad.compile(lambda x: np.sum(np.sin(x) * np.cos(x)))
        first = symad.compile(lambda x: x + 1.0)
        first.batch(np.ones(100), threads=2)       # the parent's worker pool exists

        def compile_loop():
            k = 0
            while not stop.is_set():
                k += 1
                shared(np.ones(k + 1))   # a new specialization, under shared's lock
                g = symad.compile(lambda x, k=k: sum(np.sin(x * (i + k)) for i in range(40)))
                g(0.3)                   # a new graph: LLVM work, no cache hit
                count[0] += 1

        def child_work(i):
            h = symad.compile_grad(lambda x, y: x * y + float(i))
            v, (gx, gy) = h(2.0, 3.0)
            b = first.batch(np.arange(100.0), threads=2)    # needs a pool of its own
            s = shared(np.full(3000 + i, 0.5))              # needs shared's lock
            return ((v, gx, gy) == (6.0 + i, 3.0, 2.0) and (b == np.arange(1.0, 101.0)).all()
                    and abs(s - (3000 + i) * np.sin(0.5) * np.cos(0.5)) < 1e-9)

        def pf(x, y):
            return np.sum(x * y * y)

        def call_pickled(blob):
            cf = pickle.loads(blob)                  # unpickling compiles its graph
            v, (gx, gy) = cf(np.full(2, 2.0), 3.0)   # and a new shape: traced, compiled
            return cf(2.0, 3.0), (float(v), gx.tolist(), float(gy))

        def wait(pid, seconds):
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    return os.waitstatus_to_exitcode(status)
                time.sleep(0.02)
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "hung"

        t = threading.Thread(target=compile_loop, daemon=True)
        t.start()
        while count[0] < 1:
            time.sleep(0.01)
        codes = []
        for i in range(4):
            time.sleep(0.03 * (i + 1))
            pid = os.fork()
            if pid == 0:
                try:
                    os._exit(0 if child_work(i) else 3)
                except BaseException:
                    os._exit(4)
            codes.append(wait(pid, 20))
        cpf = symad.compile_grad(pf)
        cpf(1.0, 1.0)
        blob = pickle.dumps(cpf)
        with multiprocessing.get_context("fork").Pool(1) as pool:
            try:
                codes.append(pool.apply_async(call_pickled, (blob,)).get(timeout=20))
            except multiprocessing.TimeoutError:
                codes.append("hung")
            pool.terminate()
        stop.set()
        t.join()
        print(codes)
        """, timeout=240)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-2000:])
    assert proc.stdout.strip() == \
        "[0, 0, 0, 0, ((18.0, (9.0, 12.0)), (36.0, [9.0, 9.0], 24.0))]", proc.stdout


# ---- options and sizes ----------------------------------------------------------------


def _xy(x, y):
    return x * y * y


@pytest.mark.parametrize("make, words", [
    (lambda: symad.compile(_xy, opt_level=3.0), ["opt_level=3.0", "0, 1, 2 or 3", "'auto'"]),
    (lambda: symad.compile(_xy, opt_level=True), ["opt_level=True"]),
    (lambda: symad.compile(_xy, opt_level=(3, 4)), ["opt_level=(3, 4)", "pair"]),
    (lambda: symad.compile(_xy, opt_level="fast"), ["opt_level='fast'"]),
    (lambda: symad.compile(_xy, fastmath=1), ["fastmath=1", "False", "True", "'afn'"]),
    (lambda: symad.compile(_xy, fastmath=("afn", 2)), ["fastmath=('afn', 2)"]),
    (lambda: symad.compile(_xy, fastmath="quick"), ["fastmath='quick'", "'reassoc'"]),
    (lambda: symad.compile_grad(_xy, argnums=1.0), ["argnums=1.0", "float", "tuple"]),
    (lambda: symad.compile_grad(_xy, argnums=(0, "1")), ["argnums=(0, '1')", "str"]),
    (lambda: symad.compile_grad(_xy, argnums=True), ["argnums=True", "bool"]),
    (lambda: symad.grad(_xy, argnums=1.0), ["argnums=1.0", "_xy"]),
    (lambda: symad.value_and_grad(_xy, argnums=None), ["argnums=None"]),
    (lambda: symad.jacobian(_xy, argnums=[0.0]), ["argnums=[0.0]"]),
    (lambda: symad.hessian(_xy, argnums=np.float64(0)), ["argnums=np.float64(0.0)"]),
    (lambda: symad.jacobian(_xy, mode="forward"), ["mode", "'forward'", "'fwd'"]),
    (lambda: symad.compile(_xy, cache=1), ["cache=1", "_xy", "folder path"]),
    (lambda: symad.compile(_xy).batch(np.ones(4), np.ones(4), out=np.empty(3)),
     ["_xy.batch", "out", "shape (4,)"]),
])
def test_bad_options_are_refused_when_given(make, words):
    # Refused where the option is given (not at the first call, not as a ctypes
    # ArgumentError or "'int' object is not iterable"), naming option, value and choices.
    with pytest.raises(OptionError) as info:
        make()
    for w in words:
        assert w in str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("threads", [float("nan"), 2.5, 0, -1, True, "2", np.float64(2)])
def test_bad_batch_threads_are_refused(threads):
    f = symad.compile(_xy)
    with pytest.raises(OptionError, match=r"_xy\.batch\(threads=.*int >= 1"):
        f.batch(np.ones(10), np.ones(10), threads=threads)


def test_failed_chunk_waits_for_the_other_workers():
    # One chunk fails at once; the exception may leave the batch's frame (freeing the
    # buffers every chunk writes) only after the others have finished.
    import time
    from concurrent.futures import ThreadPoolExecutor

    from symad.runtime import run_parallel
    started, finished = [], []

    def chunk(k):
        started.append(k)
        if k == 0:
            raise RuntimeError("chunk 0 failed")
        time.sleep(0.3)
        finished.append(k)

    with ThreadPoolExecutor(3) as pool:
        with pytest.raises(RuntimeError, match="chunk 0 failed"):
            run_parallel(pool, chunk, [(0,), (1,), (2,)])
        # Every chunk that started has finished (chunks not yet started are cancelled,
        # which depends on scheduling); none runs on after the call returned.
        done = sorted(finished)
        assert done == sorted(k for k in started if k != 0)
        time.sleep(0.5)
        assert sorted(finished) == done


def test_argnums_accepts_numpy_integers():
    x, y = 2.0, 3.0
    cg = symad.compile_grad(_xy, argnums=np.int64(1))
    assert cg(x, y) == (18.0, 12.0)                       # bare: one int
    assert symad.compile_grad(_xy, argnums=(np.int32(0), np.int64(-1)))(x, y) == \
        (18.0, (9.0, 12.0))
    assert float(symad.grad(_xy, argnums=np.int64(1))(x, y)) == 12.0
    value, g = symad.value_and_grad(_xy, argnums=[np.uint8(0)])(x, y)
    assert (float(value), float(g[0])) == (18.0, 9.0) and isinstance(g, tuple)
    jac = symad.jacobian(lambda v: v * v, argnums=np.int16(0))(np.array([1.0, 2.0]))
    np.testing.assert_array_equal(jac, [[2.0, 0.0], [0.0, 4.0]])
    hess = symad.hessian(_xy, argnums=np.int64(1))(x, y)
    assert float(hess) == 4.0
    grads = symad.check.numerical_grad(_xy, x, y, argnums=np.int64(1))
    assert abs(grads - 12.0) < 1e-6
    with pytest.raises(OptionError, match="does not fit _xy"):
        symad.grad(_xy, argnums=np.int64(2))(x, y)


def test_integer_like_levels_and_threads_are_accepted():
    f = symad.compile_grad(_xy, opt_level=np.int64(2))
    assert f(2.0, 3.0) == (18.0, (9.0, 12.0))
    assert f.stats["opt_level"]["ir"] == 2 and f.stats["opt_level"]["machine_code"] == 2
    g = symad.compile(_xy, opt_level=(np.int32(1), 0), fastmath=["nsz"])
    assert g(2.0, 3.0) == 18.0 and g.stats["fastmath"] == ("nsz",)
    values, grads = f.batch(np.arange(8.0), np.ones(8), threads=np.int64(2))
    np.testing.assert_array_equal(values, np.arange(8.0))
    np.testing.assert_array_equal(grads[1], 2.0 * np.arange(8.0))


def test_deeply_nested_output_tuple():
    # the native entry's emitter and the cache key recursed on the result's nesting
    def deep(x):
        r = (x, x + 1.0)
        for _ in range(5000):
            r = (r,)
        return r

    out = symad.compile(deep)(1.0)
    depth = 0
    while len(out) == 1:
        out, depth = out[0], depth + 1
    assert depth == 5000 and out == (1.0, 2.0)


def test_zero_size_array_arguments():
    # a (0, 10**12) array holds no numbers; tracing built an index over its shape
    z = np.zeros((0, 10**12))
    r = symad.compile(lambda x: x * 2.0)(z)
    assert r.shape == (0, 10**12)
    value, (gz, gy) = symad.compile_grad(lambda x, y: np.sum(x) + y * y)(z, 3.0)
    assert (value, gy) == (9.0, 6.0) and gz.shape == (0, 10**12)
    assert symad.grad(lambda x: np.sum(x))(z).shape == (0, 10**12)


def test_zero_length_dask_batch():
    da = pytest.importorskip("dask.array")
    f = symad.compile_grad(lambda x: np.sum(x * x))
    values, grads = f.batch(da.ones((0, 3), chunks=(1, 3)))
    assert values.compute().shape == (0,) and grads.compute().shape == (0, 3)
    out = symad.compile(lambda x: x * 2.0).batch(da.ones((0, 3))).compute()
    assert out.shape == (0, 3)
    # and a non-empty one still agrees with the local batch
    x = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(f.batch(da.from_array(x, chunks=(2, 3)))[1].compute(),
                                  2.0 * x)
