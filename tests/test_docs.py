"""The examples in the docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["cussim", "cussim._ssim", "cussim._msssim", "cussim._skimage", "cussim._params", "cussim._reference", "cussim._launch", "cussim._kernels", "cussim._precompile",
           "cussim._emulator._module", "cussim.torch"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name == "cussim.torch":
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0
