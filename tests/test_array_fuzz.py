"""The array-level fuzz (tests/fuzz_arrays.py) on a CI budget, and the bugs it found, each
as the smallest program that showed it. Longer runs: ``benchmarks/fuzz_arrays.py N``."""

from __future__ import annotations

import numpy as np
import pytest
from fuzz_arrays import Program, check_program, describe, program_for

import symad
from symad import compiled, policy


@pytest.fixture
def always_arrays(monkeypatch):
    """Array-level kernels for every array program, however small."""
    monkeypatch.setattr(policy, "ARRAY_MIN_ELEMENTS", 0)
    monkeypatch.setattr(policy, "ARRAY_MIN_LENGTH", 0)
    compiled.clear_memory_cache()


@pytest.mark.parametrize("seed", range(30))
def test_random_array_programs_agree_with_their_references(seed):
    prog = program_for(seed)
    bad = check_program(prog)
    assert not bad, describe(prog, seed) + "\n".join(bad)


def test_the_checker_finds_a_wrong_kernel(monkeypatch):
    """The fuzz's comparison is live: a kernel that computes the wrong op is reported."""
    from symad.codegen import arrays as array_lower
    real = array_lower.lower_node

    def wrong(b, module, node, args, *rest):        # sin(v) -> v + v
        if node.op == "sin":
            return b.fadd(args[0], args[0])
        return real(b, module, node, args, *rest)
    monkeypatch.setattr(array_lower, "lower_node", wrong)
    prog = Program("def f(x):\n    return np.sum(np.sin(x[1:] * x[:-1]))\n", [(9,)],
                   [np.linspace(-1.0, 1.0, 9)])
    bad = check_program(prog, batch=0)
    assert any("reference" in b for b in bad)


# -- regressions: each failed before its fix --------------------------------------------

def test_a_scalar_argument_broadcast_into_a_vector_is_read_as_its_one_element(always_arrays):
    # A size-1 input in an elementwise op over n elements was read at element k of the
    # kernel's input (the next argument's elements): sum(y * x) was off by 3.6.
    def f(x, y):
        return np.sum(np.sin(y * x) + (y * x[0])[1:].sum())

    x, y = np.array([0.7]), np.linspace(-1.0, 1.0, 30)
    cf = symad.compile_grad(f, argnums=(0, 1))
    value, (gx, gy) = cf(x, y)
    assert cf.stats["array_level"]
    ref_value, (rx, ry) = symad.value_and_grad(f, (0, 1))(x, y)
    assert value == pytest.approx(float(ref_value), rel=1e-13)
    np.testing.assert_allclose(gx, rx, rtol=1e-12)
    np.testing.assert_allclose(gy, ry, rtol=1e-12, atol=1e-14)
    assert symad.compile(f)(x, y) == pytest.approx(float(ref_value), rel=1e-13)
