"""Long differential fuzzing run at kinks: random programs with where/maximum/minimum/
clip/abs evaluated exactly at their switch points (ties, bounds, 0), every
transformation order (grad, forward Jacobians, Hessians forward and reverse, hvp,
jvp of grad, grad of jvp, Jacobians of vector outputs both ways, third order),
interpreted, compiled and on the array level, against reverse-over-reverse AD of the
program with each selection resolved (``tests/fuzz_kinks.py``).

    python benchmarks/fuzz_kinks.py [SECONDS] [FIRST_SEED]

Every 10th program is also compiled (and its 400-point copy run through the array-level
gradient). Prints the counts and every mismatch; exits 1 on any. The CI budget
(``tests/test_robust2_adwhere.py``) runs 60 interpreted and 4 compiled programs;
``SYMAD_FUZZ_KINKS=N`` there runs N and N/15.
"""

import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from fuzz_kinks import check_kink_program  # noqa: E402


def main(seconds: float = 120.0, first: int = 0) -> int:
    warnings.simplefilter("ignore")
    stats: dict = {}
    mismatches = []
    t0 = time.perf_counter()
    seed = first
    while time.perf_counter() - t0 < seconds:
        found = check_kink_program(seed, compiled=seed % 10 == 0, arrays=seed % 10 == 0,
                                   stats=stats)
        for m in found:
            print("MISMATCH " + m, flush=True)
        mismatches += found
        seed += 1
        if (seed - first) % 500 == 0:
            print(f"  {seed - first} seeds, {len(mismatches)} mismatches, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    print(f"seeds {first}..{seed - 1} in {time.perf_counter() - t0:.0f} s: {stats}")
    print(f"mismatches: {len(mismatches)}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    args = sys.argv[1:3]
    sys.exit(main(float(args[0]) if args else 120.0, int(args[1]) if len(args) > 1 else 0))
