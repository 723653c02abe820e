"""The benchmark runner: one worker process per (problem, system), a report at the end.

Each (problem, system) pair is measured in its own fresh process, in one run: build time
(trace + differentiate + compile, including the first call), single-call latency of
value+gradient (median over many timed loops; the ordinary and the fastest documented
path), batch throughput at 10^4 and 10^6 points, the cheap-gradient ratio
t(value+grad)/t(value), and the gradient at the test point. The parent kills a worker that
exceeds the per-pair budget and reports it as a timeout; failures are reported, not
dropped. Gradients are compared with symad's (rtol 1e-9).
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .problems import PROBLEMS, Problem
from .systems import SYSTEMS

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
RTOL = 1e-9
BATCH_SIZES = (10_000, 1_000_000)
BATCH_MEMORY_LIMIT = 2.5e9       # bytes of inputs + outputs (x3 for copies) at 10^6 points
BIG_BATCH_MAX_S = 6.0            # skip a 10^6 batch predicted to take longer than this
# Timed runs of a 10^4 batch (median; fewer when they exceed the pair's time share). Three
# left the medians of sub-millisecond batches varying by 1.3x between suite runs.
BATCH_REPS = 11


# ---- timing -----------------------------------------------------------------------------

def time_call(fn, budget_s: float, min_samples: int = 7, max_samples: int = 101) -> dict:
    """Median per-call time of ``fn()`` over timed loops of k calls (k: loop >= 0.2 ms)."""
    pc = time.perf_counter
    k = 1
    while True:
        t0 = pc()
        for _ in range(k):
            fn()
        dt = pc() - t0
        if dt >= 2e-4 or k >= 1 << 22:
            break
        k = max(2 * k, int(k * 2.5e-4 / max(dt, 1e-9)))
    samples = [dt / k]
    if dt > budget_s / 3:                # slow call: few samples
        min_samples = 3
    end = pc() + budget_s
    while len(samples) < max_samples and (len(samples) < min_samples or pc() < end):
        t0 = pc()
        for _ in range(k):
            fn()
        samples.append((pc() - t0) / k)
    return {"us": statistics.median(samples) * 1e6, "calls": k * len(samples)}


def time_once(fn, reps: int, budget_s: float, window_s: float = 0.1,
              max_reps: int = 201) -> float:
    """Median seconds of ``fn()`` (after one warm-up call) over ``reps`` runs and, for
    quick ones, over at least ``window_s`` of runs (at most ``max_reps``), within
    ``budget_s``. Eleven runs of a 0.3 ms batch span 3 ms, which one disturbance of this
    VM can cover (the logistic map's 10^4 batch measured 25 M points/s in one run, 34 in
    the two before it and when measured again at once; its 10^6 batch stayed at 39)."""
    pc = time.perf_counter
    fn()
    times = []
    start = pc()
    end = start + budget_s
    while not times or (len(times) < max_reps and pc() < end and
                        (len(times) < reps or pc() - start < window_s)):
        t0 = pc()
        fn()
        times.append(pc() - t0)
    return statistics.median(times)


# ---- the worker ---------------------------------------------------------------------------

def measure(system: str, problem: str, budget_s: float) -> dict:
    """All measurements of one (problem, system) pair, in this process."""
    start = time.perf_counter()

    def left():
        return budget_s * 0.85 - (time.perf_counter() - start)
    sysd, prob = SYSTEMS[system], PROBLEMS[problem]
    out: dict = {"problem": problem, "system": system, "status": "ok", "skipped": {}}
    t0 = time.perf_counter()
    for mod in sysd.modules:
        importlib.import_module(mod)
    sysd.setup()
    out["import_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    impl = sysd.build(prob)
    out["build_s"] = time.perf_counter() - t0
    value, grad = impl.result(impl.call())
    out["value"], out["grad"] = value, grad.tolist()
    out["notes"], out["extra"] = list(impl.notes), {
        k: v for k, v in impl.extra.items() if not callable(v)}
    out["fast_label"] = impl.fast_label or sysd.fastest
    per = max(0.05, min(0.4, left() / 12))

    def step(name, fn):
        if left() <= 0:
            out["skipped"][name] = "budget"
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 (reported, the rest still measured)
            out["skipped"][name] = f"failed: {type(exc).__name__}: {str(exc)[:160]}"
            return None

    r = step("call", lambda: time_call(impl.call, per))
    out["call_us"] = r and r["us"]
    fast = impl.fast
    if fast is None and "fast_builder" in impl.extra and left() > 0.5 * budget_s * 0.85:
        fast = step("fast_build", impl.extra["fast_builder"])
    r = step("fast", lambda: time_call(fast, per)) if fast is not None else r
    out["fast_us"] = r and r["us"]
    vals = step("value_build", impl.value) if impl.value else None
    if vals:
        r = step("value_call", lambda: time_call(vals[0], per))
        out["value_us"] = r and r["us"]
        if out.get("value_us") and out.get("fast_us"):
            out["ratio_call"] = out["fast_us"] / out["value_us"]
    rng = np.random.default_rng(0)
    out["batch"], out["batch_value"] = {}, {}
    est = None
    for N in BATCH_SIZES:
        key = f"{N:.0e}".replace("+0", "")
        nbytes = N * (2 * prob.n + 1) * 8 * 3
        if impl.batch is None:
            out["skipped"][f"batch_{key}"] = "no native batching"
            continue
        if nbytes > BATCH_MEMORY_LIMIT:
            out["skipped"][f"batch_{key}"] = "memory"
            continue
        if est is not None and (est * N > min(BIG_BATCH_MAX_S, left() / 4)):
            out["skipped"][f"batch_{key}"] = "budget"
            continue
        if left() <= 0:
            out["skipped"][f"batch_{key}"] = "budget"
            continue
        X = prob.sampler(rng, N)
        run = step(f"batch_{key}_prep", lambda X=X: impl.batch(X))
        if run is None:
            continue
        t = step(f"batch_{key}", lambda run=run, N=N: time_once(
            run, BATCH_REPS if N <= 10_000 else 1, max(per, 0.2)))
        del run
        if t is None:
            continue
        out["batch"][key] = N / t
        est = t / N if est is None else max(est, t / N)
        if vals and left() > 0:
            vrun = step(f"batch_value_{key}", lambda X=X: vals[1](X))
            tv = step(f"batch_value_{key}", lambda vrun=vrun, N=N: time_once(
                vrun, BATCH_REPS if N <= 10_000 else 1, max(per, 0.2))) if vrun else None
            if tv:
                out["batch_value"][key] = N / tv
                if N == BATCH_SIZES[0]:
                    out["ratio_batch"] = t / tv
        del X
    out["worker_s"] = time.perf_counter() - start
    return out


def worker_main(system: str, problem: str, budget_s: float) -> int:
    try:
        res = measure(system, problem, budget_s)
    except Exception as exc:  # noqa: BLE001 (the parent reports it)
        res = {"problem": problem, "system": system,
               "status": f"failed: {type(exc).__name__}: {str(exc)[:300]}"}
    sys.stdout.write("\n@@RESULT@@" + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


# ---- the parent ---------------------------------------------------------------------------

def run_pair(system: str, problem: str, budget_s: float) -> dict:
    sysd, prob = SYSTEMS[system], PROBLEMS[problem]
    base = {"problem": problem, "system": system, "skipped": {}}
    if not sysd.supports(prob):
        return base | {"status": "n/a"}
    if not sysd.installed():
        return base | {"status": "not installed"}
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("SYMAD_VERIFY", None)    # the test suite's graph checks are not for timing
    cmd = [sys.executable, "-m", "benchmarks.runner", "--worker", system, problem,
           str(budget_s)]
    t0 = time.perf_counter()
    # A session of its own, so a timeout also ends the worker's children (a C compiler).
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=budget_s + 5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return base | {"status": f"timeout (> {budget_s:g} s)",
                       "worker_s": time.perf_counter() - t0}
    proc.stdout, proc.stderr = stdout, stderr
    marker = proc.stdout.rfind("@@RESULT@@")
    if marker < 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return base | {"status": f"failed: exit {proc.returncode}: {tail[:200]}"}
    return json.loads(proc.stdout[marker + len("@@RESULT@@"):].strip().splitlines()[0])


def agreement(res: dict, ref: np.ndarray) -> None:
    if "grad" not in res or ref is None:
        return
    g = np.asarray(res["grad"], dtype=np.float64)
    if g.shape != ref.shape:
        res["agrees"], res["max_rel_err"] = False, None
        return
    scale = np.max(np.abs(ref)) if ref.size else 1.0
    floor = 1e-12 * max(scale, 1e-300)
    err = np.abs(g - ref) / np.maximum(np.abs(ref), floor)
    res["max_rel_err"] = float(np.max(err)) if err.size else 0.0
    res["agrees"] = bool(np.allclose(g, ref, rtol=RTOL, atol=floor))


def reference_grad(prob: Problem) -> np.ndarray:
    """symad's interpreter (numpy) gradient: used only when compiled symad failed."""
    import symad

    from .problems import symad_namespace
    m = symad_namespace()
    argnums = tuple(range(prob.n)) if prob.kind == "scalars" else 0
    _, g = symad.value_and_grad(lambda *a: prob.fn(m, *a), argnums=argnums)(*prob.args())
    if isinstance(g, tuple):
        g = [float(v) for v in g]
    return np.asarray(g, dtype=np.float64).ravel()


def versions() -> dict:
    from importlib import metadata
    out = {"python": platform.python_version()}
    for name in ("numpy", "llvmlite", "sympy", "scipy", "jax", "jaxlib", "casadi",
                 "symengine", "autograd", "numba"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    cc = None
    from .systems import CC
    if CC:
        try:
            cc = subprocess.run([CC, "--version"], capture_output=True, text=True
                                ).stdout.splitlines()[0]
        except OSError:
            cc = CC
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "memory_gib": round(mem, 1) if mem else None, "cc": cc}


def run_suite(problems, systems, budget_s: float, log=print) -> dict:
    results = []
    systems = list(systems)
    if "symad" in systems:     # symad first: the others are compared with its gradient
        systems.remove("symad")
        systems.insert(0, "symad")
    for k, pname in enumerate(problems, 1):
        prob, ref = PROBLEMS[pname], None
        log(f"[{k}/{len(problems)}] {pname} ({prob.description})")
        for sname in systems:
            res = run_pair(sname, pname, budget_s)
            if sname == "symad" and "grad" in res:
                ref = np.asarray(res["grad"], dtype=np.float64)
            if ref is None and "grad" in res:
                try:
                    ref = reference_grad(prob)
                    res.setdefault("notes", []).append("compared with symad's interpreter")
                except Exception:  # noqa: BLE001
                    ref = None
            agreement(res, ref)
            results.append(res)
            log(f"  {pname:18s} {sname:10s} {_short(res)}")
    return {"results": results}


def _short(res: dict) -> str:
    if res.get("status") != "ok":
        return res.get("status", "?")
    parts = [f"build {res['build_s']:.3g} s"]
    if res.get("call_us"):
        parts.append(f"call {res['call_us']:.3g} us")
    if res.get("fast_us"):
        parts.append(f"fast {res['fast_us']:.3g} us")
    for k, v in res.get("batch", {}).items():
        parts.append(f"batch {k} {v / 1e6:.3g} Mpt/s")
    if "agrees" in res:
        parts.append("agrees" if res["agrees"] else f"DIFFERS {res.get('max_rel_err'):.2g}")
    return ", ".join(parts)


# A one-minute subset: the smallest problem and one with arrays (symad bench --quick).
QUICK_PROBLEMS = ("closed_form", "rosenbrock_10")
# Seconds a (problem, system) pair takes in practice: ~3 s of process start and imports
# plus its measurements, which stop early within the budget (measured on the 2-core VM).
TYPICAL_PAIR_S = 6.0


def expected_seconds(n_problems: int, n_systems: int, budget_s: float, scaling: bool,
                     scaling_budget_s: float, irregular: bool) -> float:
    """A rough duration for the progress header: typical pairs plus the scaling runs."""
    total = n_problems * n_systems * min(budget_s, TYPICAL_PAIR_S)
    if scaling:
        total += scaling_budget_s
    if irregular:
        total += scaling_budget_s / 2
    return total


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--worker", nargs=3, metavar=("SYSTEM", "PROBLEM", "BUDGET"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--problems", default=",".join(PROBLEMS),
                    help="comma-separated problem names (default: all)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="comma-separated systems (default: all)")
    ap.add_argument("--budget", type=float, default=20.0,
                    help="seconds per (problem, system) pair, hard limit (default 20)")
    ap.add_argument("--scaling", default="1e3,1e4,1e5,1e6",
                    help="node counts for the compile-time scaling run ('' to skip)")
    ap.add_argument("--scaling-budget", type=float, default=150.0,
                    help="seconds for the whole scaling run (default 150)")
    ap.add_argument("--scaling-irregular", default="1e3,1e4,1e5",
                    help="node counts for the scaling run on a graph that does not roll "
                         "into loops ('' to skip; its own budget, --scaling-budget / 2)")
    ap.add_argument("--out", default=None,
                    help="directory for RESULTS.md and results.json (default benchmarks/; "
                         "with --quick a new temporary folder, so the recorded results stay)")
    ap.add_argument("--list", action="store_true", help="list problems and systems")
    ap.add_argument("--quick", action="store_true",
                    help=f"a subset that takes about a minute: {', '.join(QUICK_PROBLEMS)} (the "
                         "first alone with more than 4 systems) on the installed systems, 8 s "
                         "per pair, scaling to 10^4 nodes; results go to a temporary folder")
    a = ap.parse_args(argv)
    if a.quick:
        installed = [s for s in SYSTEMS if SYSTEMS[s].installed()]
        # With the whole [bench] extra installed, one problem keeps it near a minute.
        a.problems = ",".join(QUICK_PROBLEMS if len(installed) <= 4 else QUICK_PROBLEMS[:1])
        a.systems = ",".join(installed)
        a.budget = min(a.budget, 8.0)
        a.scaling, a.scaling_irregular, a.scaling_budget = "1e3,1e4", "", 20.0
        if a.out is None:
            import tempfile
            a.out = tempfile.mkdtemp(prefix="symad-bench-quick-")
    if a.out is None:
        a.out = str(HERE)
    if a.worker:
        return worker_main(a.worker[0], a.worker[1], float(a.worker[2]))
    if a.list:
        for p in PROBLEMS.values():
            print(f"problem {p.name:18s} {p.description}")
        for s in SYSTEMS.values():
            print(f"system  {s.name:10s} installed={s.installed()}")
        return 0
    problems = [p for p in a.problems.split(",") if p]
    systems = [s for s in a.systems.split(",") if s]
    for p in problems:
        if p not in PROBLEMS:
            ap.error(f"unknown problem {p!r}; choose from {', '.join(PROBLEMS)}")
    for s in systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}; choose from {', '.join(SYSTEMS)}")
    t0 = time.perf_counter()
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(), "budget_s": a.budget,
            "command": "python -m benchmarks " + " ".join(argv if argv is not None
                                                           else sys.argv[1:])}
    installed = [s for s in systems if SYSTEMS[s].installed()]
    missing = [s for s in systems if s not in installed]
    print(f"symad benchmarks: {len(problems)} problems x {len(systems)} systems, "
          f"budget {a.budget:g} s per pair")
    print(f"installed: {', '.join(installed) or 'none'}"
          + (f"; not installed (reported as such; pip install '.[bench]'): "
             f"{', '.join(missing)}" if missing else ""))
    expected = expected_seconds(len(problems), len(installed), a.budget,
                                bool(a.scaling.strip()), a.scaling_budget,
                                bool(a.scaling_irregular.strip()))
    print(f"expected duration: about {expected / 60:.0f} min (at most "
          f"{len(problems) * len(installed) * a.budget / 60:.0f} min if every pair uses its "
          "whole budget)", flush=True)
    suite = run_suite(problems, systems, a.budget)
    scaling = []
    sizes = [int(float(s)) for s in a.scaling.split(",") if s.strip()]
    if sizes:
        from .scaling import run_scaling
        print("compile-time scaling (symad):")
        scaling = run_scaling(sizes, a.scaling_budget, log=print)
    sizes = [int(float(s)) for s in a.scaling_irregular.split(",") if s.strip()]
    if sizes:
        from .scaling import run_scaling
        scaling += run_scaling(sizes, a.scaling_budget / 2, log=print, graph="irregular")
    meta["total_s"] = round(time.perf_counter() - t0, 1)
    meta["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {"meta": meta, "systems": {s: {"ordinary": SYSTEMS[s].ordinary,
                                         "fastest": SYSTEMS[s].fastest,
                                         "batching": SYSTEMS[s].batching}
                                     for s in systems},
           "problems": {p: PROBLEMS[p].description for p in problems},
           "results": suite["results"], "scaling": scaling}
    from .report import markdown, targets
    doc["targets"] = targets(doc)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    (out / "RESULTS.md").write_text(markdown(doc))
    print(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'} "
          f"({meta['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
