"""Bit-for-bit comparison of the derivatives two checkouts of symad compute.

Used when the reverse pass is restructured (issue 15: preaccumulation moved to its own
module): every gradient, Hessian, hvp and jvp-of-grad must keep its exact bits, and the
gradient graphs their exact text. Run the dump with each checkout on ``PYTHONPATH``, then
compare::

    PYTHONPATH=/tmp/base python benchmarks/reverse_bits.py dump /tmp/old.pkl
    PYTHONPATH=$PWD python benchmarks/reverse_bits.py dump /tmp/new.pkl
    python benchmarks/reverse_bits.py compare /tmp/old.pkl /tmp/new.pkl

The programs: ``tests/programs.py``, ``tests/fuzz.py`` random programs,
``tests/fuzz_kinks.py`` programs at their kinks (masked selections) and the objectives
of ``benchmarks/problems.py``. Results are keyed by program and transformation; a value
is the float64 bytes of the result (or the graph text, or the exception's type).
"""

from __future__ import annotations

import os
import pickle
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
# The program generators of this checkout's tests/ (before benchmarks/fuzz_kinks.py) and
# benchmarks/; symad itself comes from PYTHONPATH, the checkout under test.
sys.path.insert(0, os.path.join(_HERE, "..", "tests"))
sys.path.append(os.path.join(_HERE, ".."))

N_FUZZ = int(os.environ.get("REVERSE_BITS_FUZZ", "300"))
N_KINKS = int(os.environ.get("REVERSE_BITS_KINKS", "150"))
N_COMPILED = 40      # random programs also compiled (compile_grad, compile(hessian))
N_GRAPHS = 12        # programs whose gradient graph text is compared


def _bits(value):
    try:
        return np.asarray(value, dtype=np.float64).tobytes()
    except (TypeError, ValueError):
        return repr(value)


def _run(results: dict, key: str, thunk) -> None:
    try:
        with np.errstate(all="ignore"):
            results[key] = _bits(thunk())
    except Exception as e:      # the same failure on both sides is a match
        results[key] = f"error {type(e).__name__}"


def _transforms(results: dict, name: str, f, x, *, hessians=True, compiled=False,
                graph=False) -> None:
    import symad

    v = np.random.default_rng(len(name)).uniform(-1, 1, np.shape(x))
    _run(results, f"{name}/grad", lambda: symad.grad(f)(x))
    if hessians:
        _run(results, f"{name}/hessian fwd", lambda: symad.hessian(f)(x))
        _run(results, f"{name}/hessian rev", lambda: symad.hessian(f, mode="rev")(x))
        _run(results, f"{name}/hvp", lambda: symad.hvp(f, x, v))
        _run(results, f"{name}/jvp(grad)", lambda: symad.jvp(symad.grad(f), (x,), (v,))[1])
        _run(results, f"{name}/grad(jvp)",
             lambda: symad.grad(lambda x: symad.jvp(f, (x,), (v,))[1])(x))
    if compiled:
        cf = symad.compile_grad(f)
        _run(results, f"{name}/compile_grad", lambda: np.concatenate(
            [np.ravel(cf(x)[0]), np.ravel(cf(x)[1])]))
        if graph:
            results[f"{name}/grad_graph"] = _graph_text(cf)
            results[f"{name}/llvm_ir"] = cf.llvm_ir
        if hessians:
            _run(results, f"{name}/compile(hessian)", lambda: symad.compile(symad.hessian(f))(x))


def _graph_text(cf) -> str:
    g = cf.grad_graph
    if g is None:
        return "array-level"
    # Every node, dead ones included (their ids number the live ones), and the
    # accumulations the roller reads.
    return g.to_text(outputs=[]) + "\n" + g.to_text() + f"\n{sorted(g.accumulations)}"


def dump(path: str) -> None:
    import fuzz
    import fuzz_kinks
    import programs

    import symad
    from benchmarks import problems
    from symad.trace import apply
    print("symad from", os.path.dirname(symad.__file__))
    results: dict = {}
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 6)
    _transforms(results, "programs.rosen", programs.rosen, x, compiled=True, graph=True)
    xl = np.array([0.0, 0, 0, 1.1, 0, 0, 0, 1.2, 0.1, 0.9, 0.8, 0.3]) + rng.uniform(0, .1, 12)
    _transforms(results, "programs.lennard_jones", programs.lennard_jones, xl,
                compiled=True, graph=True)
    for seed in range(N_FUZZ):
        r = np.random.default_rng(seed)
        n_in = int(r.integers(1, 4))
        steps = fuzz.random_program(r, n_in, int(r.integers(1, 25)))
        point = r.uniform(-2, 2, n_in)

        def f(x, steps=steps, n_in=n_in):
            return fuzz.run_program(steps, [x[i] for i in range(n_in)], apply, np.exp)
        _transforms(results, f"fuzz{seed}", f, point, compiled=seed < N_COMPILED,
                    graph=seed < N_GRAPHS)
    for seed in range(N_KINKS):
        steps, n_in, point, _, outs, _ = fuzz_kinks.kink_program(seed)

        def g(x, steps=steps, n_in=n_in, outs=outs):
            vs = fuzz_kinks.run(steps, [x[i] for i in range(n_in)], None, outs)
            return sum(vs[1:], vs[0])
        _transforms(results, f"kinks{seed}", g, point, compiled=seed < N_COMPILED // 2,
                    graph=seed < N_GRAPHS // 2)
    ns = problems.symad_namespace()
    for p in problems.PROBLEMS.values():
        small = p.n <= 64

        def h(*args, p=p):
            return p.fn(ns, *args)
        if p.kind == "vector":
            point = np.array(p.point)
            _transforms(results, p.name, h, point, hessians=small, compiled=True, graph=True)
        else:
            # scalar arguments: differentiate with respect to all of them
            def hv(x, h=h, n=p.n):
                return h(*(x[i] for i in range(n)))
            _transforms(results, p.name, hv, np.array(p.point), compiled=True, graph=True)
    with open(path, "wb") as fh:
        pickle.dump(results, fh)
    print(f"{len(results)} results -> {path}")


def compare(old_path: str, new_path: str) -> int:
    with open(old_path, "rb") as fh:
        old = pickle.load(fh)
    with open(new_path, "rb") as fh:
        new = pickle.load(fh)
    kinds: dict[str, list[int]] = {}
    bad = []
    for key in sorted(set(old) | set(new)):
        kind = key.rsplit("/", 1)[1]
        same = old.get(key) == new.get(key)
        counts = kinds.setdefault(kind, [0, 0])
        counts[0 if same else 1] += 1
        if not same:
            bad.append(key)
    errors = sum(1 for v in old.values() if isinstance(v, str) and v.startswith("error"))
    for kind, (same, differ) in sorted(kinds.items()):
        print(f"{kind:20s} identical {same:5d}  different {differ}")
    print(f"total {len(old)} results ({errors} raise the same error on both sides), "
          f"{len(bad)} different")
    for key in bad[:20]:
        print("  DIFFERENT:", key)
    return 1 if bad else 0


if __name__ == "__main__":
    if sys.argv[1] == "dump":
        dump(sys.argv[2])
    else:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
