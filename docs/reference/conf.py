"""Sphinx configuration of the ntt reference (built in CI by tests/test_docs.py).

Build: ``python -m sphinx -W --keep-going -b html docs/reference <out>``. Everything documented is imported for
real (the SDK, the core API and the CLI parser); nothing is mocked.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's ntt, also when it is not installed (editable) in this environment
sys.path.insert(0, str(Path(__file__).resolve().parent))  # cli_parser, for the CLI page
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

import ntt  # noqa: E402

project = "ntt"
author = "ntt authors"
release = version = ntt.__version__
copyright = "ntt authors, Apache-2.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings are Google style (Args:, Returns:, Raises:)
    "sphinxarg.ext",  # the CLI page, from ntt.cli.build_parser()
]

root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False
smartquotes = False  # keep "--flag" as typed (the CLI help)

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
autodoc_typehints_description_target = "documented"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autoclass_content = "both"  # the class docstring, then __init__'s (its Args)

html_theme = "alabaster"
html_title = f"ntt {release} reference"
html_static_path: list[str] = []
