"""The op table page, generated from ``symad/ops.py`` at each docs build.

Partials are symad's own rules (the reverse pass over one op, converted to SymPy), so the
page shows exactly what AD builds, not what ``sympy.diff`` would say.
"""

from __future__ import annotations

import sympy as sp

_ARG_NAMES = ("x", "y", "z")
_SAMPLE_ATTRS = {"powi": (3,)}      # an op with a static attribute: shown for n = 3
# the structural rows' cells (a new one needs its line here, or the page does not build:
# a KeyError)
_STRUCTURAL_DOCS = {
    "gather": "`(t,)` | `out[k] = x[t[k]]` | `sum(bar, t, len(x))`",
    "sum": "`(t, n)` | `out[j] = Σ x[k] over t[k] == j` (increasing k; -0.0 if none) | "
           "`gather(bar, t)`",
}


def _numpy_names(row) -> str:
    from symad.ops import ufunc_names

    names = [f"`np.{n}`" for n, op in ufunc_names().items() if op == row.name]
    return ", ".join(names) or "—"


def _partials(name: str, arity: int) -> str:
    from symad import to_sympy
    from symad.api import trace_call
    from symad.trace import apply

    attrs = _SAMPLE_ATTRS.get(name, ())
    st = trace_call(lambda *a: apply(name, a, attrs), (0.5,) * arity,
                    grad_argnums=tuple(range(arity)))
    exprs = to_sympy(st.graph, st.graph.outputs)
    names = {sp.Symbol(f"arg{k}"): sp.Symbol(_ARG_NAMES[k]) for k in range(arity)}
    cells = []
    for k, e in enumerate(exprs[1:]):
        e = e.subs(names, simultaneous=True)
        cells.append(f"∂/∂{_ARG_NAMES[k]}: `{sp.sstr(e)}`")
    return "<br>".join(cells)


def _sympy_name(row, arity: int) -> str:
    if row.sympy is None:
        return "—"
    try:
        e = row.sympy(*sp.symbols(_ARG_NAMES[:arity]), *_SAMPLE_ATTRS.get(row.name, ()))
    except Exception:  # noqa: BLE001 (a counterpart that needs other arguments)
        return "—"
    return f"`{sp.sstr(e)}`"


def ops_markdown() -> str:
    from symad.ops import OPS

    lines = ["| op | arity | numpy | partials (symad's rules) | sympy | lowering | "
             "convention |", "|---|---|---|---|---|---|---|"]
    for name, row in OPS.items():
        if row.arity == 0 or row.structural:
            continue
        lower = type(row.lower).__name__
        if hasattr(row.lower, "name"):
            lower += f" `{row.lower.name}`"
        conv = row.convention.replace("|", "\\|") or "—"
        lines.append(f"| `{name}` | {row.arity} | {_numpy_names(row)} | "
                     f"{_partials(name, row.arity)} | {_sympy_name(row, row.arity)} | "
                     f"{lower} | {conv} |")
    lines += ["", "Structural rows (not elementwise: they move or add elements by an index "
              "table; each one's adjoint is the other):", "",
              "| op | attributes | semantics (numpy, on the elements axis) | adjoint |",
              "|---|---|---|---|"]
    for name, row in OPS.items():
        if row.structural:
            lines.append(f"| `{name}` | {_STRUCTURAL_DOCS[name]} |")
    return "\n".join(lines) + "\n"
