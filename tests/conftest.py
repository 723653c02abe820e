import os

# Check graph invariants (operands precede users, arity, no duplicate interned keys)
# whenever a trace ends; symad.api reads this at import.
os.environ.setdefault("SYMAD_VERIFY", "1")
