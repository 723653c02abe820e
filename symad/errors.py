"""Exceptions raised across the pipeline (trace -> graph -> ad -> lower -> jit).

Every message says what happened, where, and what to do instead; each class's docstring
teaches the fix with an example.
"""

from __future__ import annotations


class SymadError(Exception):
    """Base class of every error symad raises on purpose."""


class OptionError(SymadError, TypeError, ValueError):
    """An option of a symad function has a wrong type or value.

    The message names the option, the value given and what is accepted; it is a
    ``TypeError`` and a ``ValueError`` so either ``except`` catches it::

        symad.compile_grad(f, argnums=1.0)       # not a float: argnums=1 or (0, 1)
        symad.compile(f, opt_level=3.0)          # opt_level=3, (3, 0) or "auto"
        f.batch(xs, threads=float("nan"))        # threads=None (automatic) or 4
    """


class TracingError(SymadError, TypeError):
    """A traced function did something that cannot be recorded in a graph.

    Typical causes: mixing values from two different traces, returning something that is
    not a number, an array or a nested tuple/list/dict of them.
    """


class ConcretizationError(TracingError):
    """Python needed a concrete number where only a traced value exists.

    ``if x > 0:``, ``float(x)``, ``math.sin(x)`` and ``int(x)`` all ask for the value of
    ``x`` while the function is being traced, but a traced value stands for every input at
    once. Use data-independent control flow, or select with ``symad.where``::

        # instead of:  y = x if x > 0 else -x
        y = symad.where(x > 0, x, -x)
        # instead of:  math.sin(x)
        y = np.sin(x)
    """


class LeakedTracerError(TracingError):
    """A traced value escaped the trace that created it and was used later.

    Values computed inside a traced function belong to that trace. Storing one in a global
    or a closure and using it in another call mixes graphs. Pass the value in as an
    argument instead::

        def f(x, y):          # not: y captured from a previous trace
            return x * y
    """


class UnsupportedOpError(SymadError, NotImplementedError):
    """The traced code used an operation symad has no rule for.

    ``symad.supported_numpy()`` lists the numpy ufuncs and functions that trace. Rewrite
    the computation with those, or add an op: one ``OpSpec`` row in ``symad/ops.py``
    (numpy semantics, partials as graph expressions, sympy counterpart, lowering), whose
    numpy names both tracers then accept and the table-driven tests check; the recipe is
    "Adding an op" on the op table page of the documentation (``docs/ops.md``)::

        np.fft.fft(x)   ->  not differentiable here: compute it outside the traced function
        np.sinc(x)      ->  symad.where(x == 0, 1.0, np.sin(np.pi * x) / (np.pi * x))
    """


class GradientCheckError(SymadError, AssertionError):
    """A gradient disagreed with finite differences beyond the tolerance.

    The message carries the transformation chain (e.g. "VJP of f"), the analytic and the
    numeric directional derivative and their relative error. Check the op rule or the
    function for a non-smooth point near the input (``abs``, ``maximum``, ``where``).
    """


class CodegenError(SymadError, RuntimeError):
    """Lowering to LLVM IR, verifying or JIT-compiling failed.

    This is a bug in symad, not in your function: the message carries the function name and
    the failing IR excerpt. Until it is fixed, the uncompiled transformations
    (``symad.grad``, ``symad.value_and_grad``) evaluate the same graph with numpy.
    """
