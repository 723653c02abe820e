import os

# Check graph invariants (operands precede users, arity, no duplicate interned keys)
# whenever a trace ends; symad.api reads this at import.
os.environ.setdefault("SYMAD_VERIFY", "1")

# Random programs are drawn from a fixed seed sequence, so every CI run checks the same
# programs and a failure reproduces; `python benchmarks/fuzz_long.py N` explores more.
from hypothesis import settings  # noqa: E402

settings.register_profile("symad", derandomize=True, print_blob=True)
settings.load_profile("symad")
