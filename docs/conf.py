"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html`` (the ``docs`` extra)."""

import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # autodoc imports cussim from this checkout; no GPU or CuPy is needed

import cussim  # noqa: E402

project = "cussim"
author = "the cussim authors"
copyright = "the cussim authors"
version = release = cussim.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "numpydoc"]
exclude_patterns = ["_build"]
nitpicky = True  # every cross-reference must resolve
nitpick_ignore_regex = [("py:class", r"(array|array-like|optional|torch\.Tensor|torch\.nn\.Module|Workspace)")]

# The API reference imports cussim.torch and cussim.dask: PyTorch and Dask are mocked, installed or not, so
# the pages build without them (the docs extra installs neither; a CUDA build of PyTorch is gigabytes).
autodoc_mock_imports = ["torch", "dask", "distributed"]
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# numpydoc reports a docstring it cannot parse (an unknown section, a parameter
# listed twice) as a Python warning, which -W does not see: make it an error.
warnings.filterwarnings("error", category=UserWarning, module="numpydoc")

html_theme = "alabaster"
html_title = f"cussim {version}"
html_static_path = []
