"""Command line: ``python -m symad demo`` (or the ``symad`` console script)."""

from __future__ import annotations

import argparse
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
    value, grads = symad.value_and_grad(_baydin, (0, 1))(*x)
    print(f"\nvalue    = {float(value)!r}")
    print(f"gradient = ({float(grads[0])!r}, {float(grads[1])!r})")
    numeric = symad.numerical_grad(_baydin, *x)
    print(f"central differences = ({float(numeric[0])!r}, {float(numeric[1])!r})")
    symad.check_grad(_baydin, *x, order=2)
    print("check_grad (random directions, reverse and forward mode, order 2): passed")
    if hasattr(symad, "compile_grad"):
        import timeit
        f = symad.compile_grad(_baydin)
        cv, cg = f(*x)
        print(f"\ncompiled (LLVM): value {float(cv)!r}, gradient "
              f"({float(cg[0])!r}, {float(cg[1])!r})")
        n = 20000
        t = timeit.timeit(lambda: f(2.0, 5.0), number=n) / n
        print(f"one compiled call (value + gradient): {t * 1e6:.2f} µs")
        if args.ir:
            print("\nOptimised LLVM IR:\n" + f.optimized_ir)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="symad", description="symad: trace, differentiate and compile Python functions.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="trace, differentiate, check and compile an example",
                            description=demo.__doc__)
    p_demo.add_argument("--ir", action="store_true", help="also print the optimised LLVM IR")
    p_demo.set_defaults(run=demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
