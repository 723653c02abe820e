"""Long differential fuzzing run: random programs over the whole op table through the
interpreter, the compiled code (value+gradient and compile(hessian(f))), sympy.diff at 30
digits and central differences (first and second order), plus "raw" programs that leave
the op domains and must reproduce numpy's NaN/inf pattern exactly.

    python benchmarks/fuzz_long.py [N_PROGRAMS] [FIRST_SEED]

Prints how many programs and comparisons ran and every mismatch; exits 1 on any.
"""

import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from fuzz_diff import check_program  # noqa: E402


def main(n: int = 1000, first: int = 0) -> int:
    warnings.simplefilter("ignore")
    stats: dict = {}
    raw_stats: dict = {}
    mismatches = []
    t0 = time.perf_counter()
    for seed in range(first, first + n):
        found = check_program(seed, stats=stats)
        found += check_program(seed, raw=True, use_sympy=False, stats=raw_stats)
        for m in found:
            print("MISMATCH " + m, flush=True)
        mismatches += found
        if (seed - first + 1) % 100 == 0:
            print(f"  {seed - first + 1} seeds, {len(mismatches)} mismatches, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    print(f"squashed programs: {stats}")
    print(f"raw (NaN/inf) programs: {raw_stats}")
    print(f"mismatches: {len(mismatches)}")
    for m in mismatches:
        print("  " + m)
    return 1 if mismatches else 0


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    sys.exit(main(*args))
