"""Sphinx configuration: the symad documentation site.

Build: ``pip install '.[docs]' && sphinx-build -W -b html docs docs/_build/html``.
Pages include slices of README.md (one source of text), the op table is generated from
``symad/ops.py`` at each build, and the notebooks are executed as they render.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))     # a source checkout documents itself
sys.path.insert(0, str(HERE))

project = "symad"
author = "the symad developers"
copyright = "2026, the symad developers"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_nb"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
nb_execution_mode = "force"             # the notebooks render executed, every build
nb_execution_timeout = 600
nb_execution_raise_on_error = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints",
                    "_generated/*.py"]
# README sections are included under page titles, so they start a level deeper.
suppress_warnings = ["myst.header"]
try:
    import furo  # noqa: F401
    html_theme = "furo"
except ImportError:      # the default theme still builds
    html_theme = "alabaster"
html_title = "symad"


def _generate(app) -> None:
    """Write the op table page and copy the notebooks next to the pages that list them."""
    from optable import ops_markdown

    out = HERE / "_generated"
    out.mkdir(exist_ok=True)
    text = ops_markdown()
    page = out / "ops_table.md"
    if not page.exists() or page.read_text() != text:    # unchanged: no rebuild
        page.write_text(text)
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        dest = out / nb.name
        if not dest.exists() or dest.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, dest)


def setup(app):
    os.environ.setdefault("SYMAD_VERIFY", "0")
    app.connect("builder-inited", _generate)
