"""symad: a symbolic-to-AD compiler for Python.

Trace a numeric Python function into an expression DAG (common subexpressions removed as
it is built), differentiate it by extending the same graph, and evaluate the result with
numpy or compile it to native code through LLVM.
"""

from .api import (
    grad,
    hessian,
    hvp,
    jacobian,
    jvp,
    logistic,
    maximum,
    minimum,
    softplus,
    trace,
    value_and_grad,
    vjp,
    where,
)
from .check import check_grad, numerical_grad
from .compiled import CompiledFunction, compile, compile_grad
from .diskcache import cache_info, clear_cache
from .errors import (
    CodegenError,
    ConcretizationError,
    GradientCheckError,
    LeakedTracerError,
    SymadError,
    TracingError,
    UnsupportedOpError,
)
from .graph import Graph, Node
from .sympy_bridge import from_sympy, swell_report, symbolic_grad, to_sympy
from .trace import asarray, supported_numpy
from .version import __version__ as __version__

__all__ = [
    "compile", "compile_grad", "CompiledFunction", "cache_info", "clear_cache",
    "trace", "grad", "value_and_grad", "jvp", "vjp", "jacobian", "hessian", "hvp",
    "numerical_grad", "check_grad",
    "where", "asarray", "maximum", "minimum", "logistic", "softplus", "supported_numpy",
    "Graph", "Node",
    "to_sympy", "from_sympy", "symbolic_grad", "swell_report",
    "SymadError", "TracingError", "ConcretizationError", "LeakedTracerError",
    "UnsupportedOpError", "GradientCheckError", "CodegenError",
]
