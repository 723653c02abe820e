"""Robustness II (runtime): re-entrant calls, Ctrl-C in threaded batches, fork during a
compile, and option validation at the API boundary."""

from __future__ import annotations

import numbers
import os
import subprocess
import sys
import textwrap

import numpy as np

import symad

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
    assert f._last.stats.get("array_level")
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
