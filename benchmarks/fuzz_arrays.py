"""Long runs of the array-level fuzz (tests/fuzz_arrays.py): ``python benchmarks/fuzz_arrays.py
N [FIRST_SEED [SECONDS]]`` checks N random programs (or as many as SECONDS allow) and
prints each mismatch with its program; exit status 1 if any. Run under ``nice``: each
program compiles four kernels."""

from __future__ import annotations

import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from fuzz_arrays import check_program, describe, program_for  # noqa: E402


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 200
    first = int(argv[2]) if len(argv) > 2 else 0
    seconds = float(argv[3]) if len(argv) > 3 else float("inf")
    failed, done, t0 = 0, 0, time.perf_counter()
    for seed in range(first, first + n):
        if time.perf_counter() - t0 > seconds:
            break
        done += 1
        prog = program_for(seed)
        try:
            bad = check_program(prog)
        except Exception:       # noqa: BLE001 (a crash is a finding too)
            bad = ["crash: " + traceback.format_exc(limit=4)]
        if bad:
            failed += 1
            print(describe(prog, seed), *bad, sep="\n", end="\n\n", flush=True)
    print(f"{done} programs (seeds {first}..{first + done - 1}), {failed} failing, "
          f"{time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
