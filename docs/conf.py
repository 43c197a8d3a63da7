"""Sphinx configuration of the pyro_scvae documentation (``make docs``).

The notebooks are rendered from their committed outputs (``nb_execution_mode = "off"``):
building the site never trains a model. The API reference comes from the numpy-style
docstrings (autodoc, autosummary, napoleon), the command-line reference from the argparse
parsers (sphinx-argparse), and MathJax is served from the built site itself
(sphinx-mathjax-offline), so the pages work without a network.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # document this tree, whatever is installed

import pyro_scvae  # noqa: E402

project = "pyro_scvae"
author = "the pyro_scvae developers"
copyright = "2026, the pyro_scvae developers"
release = version = pyro_scvae.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "sphinxarg.ext",
]

# .rst first: autosummary writes its generated pages (reStructuredText) with the first suffix.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "notebooks/README.md"]
root_doc = "index"

# MyST: $…$ and $$…$$ maths, ::: fences, and headings as link targets.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # show the committed outputs of a full run; never execute

# API reference
autosummary_generate = True
autodoc_default_options = {"members": True, "member-order": "bysource"}
# Only this package's own docstrings: the methods that override torch's or Lightning's
# would otherwise show theirs, with cross-references to those projects' docs.
autodoc_inherit_docstrings = False
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_class_signature = "separated"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False

html_theme = "sphinx_book_theme"
html_title = f"pyro_scvae {version}"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
