"""Command line: ``python -m symad {demo, ir, bench, cache}`` (or the ``symad`` script)."""

from __future__ import annotations

import argparse
import os
import sys


def _baydin(x1, x2):
    import numpy as np
    return np.log(x1) + x1 * x2 - np.sin(x2)


def demo(args: argparse.Namespace) -> int:
    """Trace, differentiate, check and (when the back end is there) compile an example."""
    import symad
    from symad.api import trace_call

    x = (2.0, 5.0)
    print("f(x1, x2) = ln(x1) + x1*x2 - sin(x2)   at (x1, x2) = (2, 5)\n")
    g = symad.trace(_baydin, *x)
    print("Forward graph (common subexpressions merged as it is built):")
    print(g)
    print("\nExtended graph (forward + adjoint nodes, built in reverse topological order):")
    ext = trace_call(_baydin, x, grad_argnums=(0, 1)).graph
    print(ext)
    counts = ext.count_ops()
    print(f"\n{sum(counts.values())} live nodes: {dict(sorted(counts.items()))}")
    live = set(ext.live(ext.outputs))
    dead = [n for n in ext.nodes if n not in live]
    if dead:
        print("Numbers skip where a node was built but nothing live uses it: the reverse pass "
              "made\nthem as partials and an exact rewrite absorbed them into a later node "
              "(the listing\nshows live nodes only):")
        for n in dead:
            print(f"  {n.line()}")
    value, grads = symad.value_and_grad(_baydin, (0, 1))(*x)
    print(f"\nvalue    = {float(value)!r}")
    print(f"gradient = ({float(grads[0])!r}, {float(grads[1])!r})")
    numeric = symad.numerical_grad(_baydin, *x)
    print(f"central differences = ({float(numeric[0])!r}, {float(numeric[1])!r})"
          "   (O(h^2) error: agree to ~1e-10)")
    symad.check_grad(_baydin, *x, order=2)
    print("check_grad passed: for seeded random directions t, the directional derivative "
          "by reverse\nmode (gradient . t) and by forward mode (J t) match central "
          "differences, and so do\nthose of the gradient itself (order 2: the Hessian "
          "in random directions)")
    if hasattr(symad, "compile_grad"):
        import timeit
        f = symad.compile_grad(_baydin, argnums=(0, 1))
        cv, cg = f(*x)
        print(f"\ncompiled (LLVM): value {float(cv)!r}, gradient "
              f"({float(cg[0])!r}, {float(cg[1])!r})")
        n = 20000
        t = timeit.timeit(lambda: f(2.0, 5.0), number=n) / n
        print(f"one compiled call (value + gradient): {t * 1e6:.2f} µs")
        if args.ir:
            print("\nOptimised LLVM IR:\n" + f.optimized_ir)
    return 0


def _load_function(target: str):
    """``FILE.py:FUNC`` or ``package.module:FUNC`` (importable) -> the function object."""
    import importlib
    import importlib.util
    import os

    path, sep, name = target.rpartition(":")
    if not sep or not path or not name:
        raise SystemExit(f"symad ir: expected FILE.py:FUNC or MODULE:FUNC, got {target!r}")
    if path.endswith(".py") or os.sep in path or os.path.exists(path):
        if not os.path.exists(path):
            raise SystemExit(f"symad ir: no file {path!r}")
        spec = importlib.util.spec_from_file_location("_symad_user_module", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(path)
        except ImportError as exc:
            raise SystemExit(f"symad ir: cannot import module {path!r} ({exc}); give a "
                             "FILE.py or a module importable from here") from None
    obj = module
    for part in name.split("."):      # module:Class.method works too
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"symad ir: {path} defines no {name!r}") from None
    return obj


def _parse_args_spec(spec: str) -> tuple:
    """``"2.0, [1, 2, 3]"`` -> (2.0, array([1., 2., 3.])): Python literals, lists as arrays."""
    import ast

    import numpy as np

    try:
        value = ast.literal_eval(f"({spec},)")
    except (ValueError, SyntaxError) as e:
        raise SystemExit(f"symad ir: --args must be Python literals, e.g. "
                         f"--args '2.0, [1.0, 2.0]' ({e})") from None
    return tuple(np.asarray(v, dtype=np.float64) if isinstance(v, list) else v for v in value)


def ir(args: argparse.Namespace) -> int:
    """Print a stage of a user's function: graph, adjoint graph, LLVM IR or assembly."""
    import symad
    from symad.api import trace_call

    f = _load_function(args.target)
    call_args = _parse_args_spec(args.args)
    show = args.show
    if show == "graph":
        print(symad.trace(f, *call_args))
    elif show == "grad":
        print(trace_call(f, call_args, grad_argnums=tuple(range(len(call_args)))).graph)
    else:
        compiled = symad.compile_grad(f) if args.grad else symad.compile(f)
        compiled(*call_args)
        print({"ir": compiled.llvm_ir, "opt": compiled.optimized_ir, "asm": compiled.asm}[show])
    return 0


def bench(args: argparse.Namespace) -> int:
    """Run the side-by-side benchmark suite (needs a source checkout and the [bench] extra)."""
    import os
    import runpy

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (os.getcwd(), here):
        if os.path.isfile(os.path.join(root, "benchmarks", "__main__.py")):
            sys.path.insert(0, root)
            sys.argv = ["benchmarks", *args.rest]
            runpy.run_module("benchmarks", run_name="__main__")
            return 0
    print("symad bench: the benchmark suite lives in the source repository's benchmarks/ "
          "folder; run it from a checkout (pip install '.[bench]' && symad bench).",
          file=sys.stderr)
    return 2


def cache(args: argparse.Namespace) -> int:
    """Show (info) or empty (clear) the on-disk compile cache."""
    from symad import diskcache

    folder = args.dir
    if args.action == "clear":
        removed = diskcache.clear_cache(folder)
        info = diskcache.cache_info(folder)
        print(f"removed {removed} entries from {info['folder']}")
        return 0
    info = diskcache.cache_info(folder)
    print(f"folder:    {info['folder']}")
    print(f"entries:   {info['entries']}")
    print(f"bytes:     {info['bytes']} ({info['bytes'] / 2**20:.1f} MiB)")
    print(f"max_bytes: {info['max_bytes']} ({info['max_bytes'] / 2**20:.1f} MiB, "
          f"{diskcache.MAX_BYTES_ENV_VAR})")
    print(f"key_file:  {info['key_file']}")
    if info["problem"]:
        print(f"problem:   {info['problem']}; compiles do not use this folder")
    return 0


_EXAMPLES = {
    "symad": """examples:
  symad demo                                      trace, differentiate and compile an example
  symad ir model.py:energy --args '[0.1, 0.2], 2.0' --show grad
  symad bench --quick                             a one-minute benchmark subset
  symad cache info                                the on-disk compile cache""",
    "demo": """example:
  symad demo --ir                                 also print the optimised LLVM IR""",
    "ir": """examples (model.py defines: def energy(x, k): return k * np.sum(np.cos(x))):
  symad ir model.py:energy --args '[0.1, 0.2], 2.0'              forward graph
  symad ir model.py:energy --args '[0.1, 0.2], 2.0' --show grad  forward + adjoint graph
  symad ir model.py:energy --args '[0.1, 0.2], 2.0' --show opt   optimised LLVM IR
  symad ir mypackage.models:energy --args '[0.1], 2.0' --show asm
                                                  a function of an importable module""",
    "cache": """examples:
  symad cache                                     folder, entries, size and bound
  symad cache clear --dir /some/folder            empty one cache folder""",
    "bench": """examples:
  symad bench --quick                             ~1 minute: two problems, installed systems
  symad bench --list                              problems and systems (installed or not)
  symad bench --problems closed_form --systems symad,jax --budget 10
  pip install '.[bench]' && symad bench           the whole suite (run from a checkout)""",
}


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader closed the pipe (``symad ir ... | head``): end quietly. Point stdout at
        # devnull so the interpreter's final flush does not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="symad", description="symad: trace, differentiate and compile Python functions.",
        epilog=_EXAMPLES["symad"], formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="trace, differentiate, check and compile an example",
                            description=demo.__doc__, epilog=_EXAMPLES["demo"],
                            formatter_class=fmt)
    p_demo.add_argument("--ir", action="store_true", help="also print the optimised LLVM IR")
    p_demo.set_defaults(run=demo)
    p_ir = sub.add_parser("ir", help="print the graph, adjoint graph, LLVM IR or assembly of "
                          "a function", description=ir.__doc__, epilog=_EXAMPLES["ir"],
                          formatter_class=fmt)
    p_ir.add_argument("target", help="FILE.py:FUNC, or MODULE:FUNC for an importable module")
    p_ir.add_argument("--args", required=True,
                      help="example arguments as Python literals, e.g. '2.0, [1.0, 2.0]'")
    p_ir.add_argument("--show", choices=["graph", "grad", "ir", "opt", "asm"], default="graph",
                      help="graph: forward graph; grad: forward + adjoint graph; ir / opt: "
                      "LLVM IR before / after optimisation; asm: native assembly")
    p_ir.add_argument("--no-grad", dest="grad", action="store_false",
                      help="for ir/opt/asm: compile the function alone, not value + gradient")
    p_ir.set_defaults(run=ir)
    p_bench = sub.add_parser("bench", help="run the benchmark suite", description=bench.__doc__,
                             epilog=_EXAMPLES["bench"], formatter_class=fmt)
    p_bench.add_argument("rest", nargs=argparse.REMAINDER,
                         help="arguments passed on to the benchmark runner")
    p_bench.set_defaults(run=bench)
    p_cache = sub.add_parser("cache", help="show or empty the on-disk compile cache",
                             description=cache.__doc__, epilog=_EXAMPLES["cache"],
                             formatter_class=fmt)
    p_cache.add_argument("action", nargs="?", choices=["info", "clear"], default="info")
    p_cache.add_argument("--dir", default=None,
                         help="the cache folder (default: SYMAD_CACHE_DIR, else "
                         "$XDG_CACHE_HOME/symad)")
    p_cache.set_defaults(run=cache)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"] and not {"-h", "--help"} & set(argv[1:]):
        # The benchmark runner's own options (--quick, --list, ...) pass through untouched.
        return bench(argparse.Namespace(rest=argv[1:]))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
