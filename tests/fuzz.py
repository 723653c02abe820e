"""Random straight-line programs over the op table, for differential fuzzing.

A program is a list of steps ``(op, operand indices, attrs)`` over a growing list of
values (the inputs first). Each operand is squashed into its op's domain with a smooth
map ``lo + (hi - lo) * logistic(v)`` so every op stays where it is defined; the same
program is built with any "backend" (symad tracers, sympy symbols).
"""

import numpy as np

from symad.ops import OPS

# floor, sign, floordiv, mod, fmod: sympy leaves their derivatives (floor's, Mod's)
# unevaluated and recurses evaluating them (checked against central differences in
# test_ops); mul0 is internal to AD; the structural rows are not scalar ops.
FUZZ_OPS = sorted(n for n, s in OPS.items()
                  if s.arity > 0 and not s.structural and
                  n not in ("floor", "sign", "floordiv", "mod", "fmod", "mul0"))


def random_program(rng: np.random.Generator, n_inputs: int, n_steps: int) -> list:
    steps = []
    n_values = n_inputs
    for _ in range(n_steps):
        op = FUZZ_OPS[rng.integers(len(FUZZ_OPS))]
        arity = OPS[op].arity
        # Prefer recent values so programs are deep, not just wide.
        operands = tuple(int(max(0, n_values - 1 - rng.geometric(0.5) + 1)) if rng.random() < 0.7
                         else int(rng.integers(n_values)) for _ in range(arity))
        attrs = (int(rng.integers(-2, 5)),) if op == "powi" else ()
        steps.append((op, operands, attrs))
        n_values += 1
    return steps


def run_program(steps, inputs, apply, exp):
    """Evaluate ``steps`` with ``apply(op, args, attrs)``; ``exp`` builds the squash."""
    values = list(inputs)
    for op, operands, attrs in steps:
        lo, hi = OPS[op].domain
        args = []
        for i in operands:
            v = values[i]
            args.append(lo + (hi - lo) / (1 + exp(-v)))
        if op == "powi" and attrs[0] < 0:
            args[0] = args[0] + 0.5     # keep negative powers away from 0
        values.append(apply(op, tuple(args), attrs))
    # Sum the last few values so more of the program reaches the output.
    out = values[-1]
    for v in values[-3:-1]:
        out = out + v
    return out
