"""Run the doctest examples of the public docstrings."""

import doctest
import importlib

import pytest

MODULES = ["symad.api", "symad.check", "symad.trace", "symad.sympy_bridge", "symad.dot",
           "symad.compiled"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no doctest examples"
    assert result.failed == 0
