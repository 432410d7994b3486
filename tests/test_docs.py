"""The documentation: docstring examples run, and docs/ is complete and true to the repository.

CI builds docs/ with Sphinx, warnings as errors (.ci/run); these checks need no Sphinx.
"""

import doctest
import importlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.rst"))
MODULES = ["cussim", "cussim._ssim", "cussim._msssim", "cussim._skimage", "cussim._params", "cussim._masks", "cussim._reference", "cussim._launch",
           "cussim._kernels", "cussim._precompile", "cussim._emulator._module", "cussim.torch", "cussim.torch._functions",
           "cussim.torch._fused_ssim", "cussim.torch.pytorch_msssim"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.startswith("cussim.torch"):
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0


def _public_names():
    """Every public function and class: the ``__all__`` of each public module."""
    import cussim
    import cussim.dask
    import cussim.torch

    names = []
    for module in (cussim, cussim.torch, cussim.torch.pytorch_msssim, cussim.dask):
        names += [f"{module.__name__}.{name}" for name in module.__all__ if name != "pytorch_msssim"]
    return names


def test_every_public_name_is_in_the_api_reference():
    documented = set(re.findall(r"^\.\. auto(?:function|class):: (\S+)", (DOCS / "api.rst").read_text(), re.M))
    names = _public_names()
    assert len(names) > 15 and set(names) <= documented, sorted(set(names) - documented)
    assert documented <= set(names), sorted(documented - set(names))  # nothing stale


def test_the_toctree_takes_every_page():
    index = (DOCS / "index.rst").read_text()
    assert re.search(r":glob:\n(?:\s+\S+\n)*\s+\*\n", index), "index.rst's toctree must end with the glob *"


def test_every_test_the_pages_name_exists():
    named = {m for page in PAGES for m in re.findall(r"tests/(\w+\.py)::(\w+)", page.read_text())}
    assert len(named) >= 15
    for file, test in sorted(named):
        source = ROOT / "tests" / file
        assert source.exists(), f"{file} (named in docs/) does not exist"
        assert re.search(rf"^def {test}\(", source.read_text(), re.M), f"{file}::{test} (named in docs/) does not exist"


def test_pages_and_readme_name_only_files_of_the_repository():
    """Every file named with a path (``dir/name.ext``) exists, and no internal file outside the repository is named."""
    made = [line.strip("/") for line in (ROOT / ".gitignore").read_text().split() if "/" in line.strip("/")]
    for document in [*PAGES, ROOT / "README.md"]:
        text = document.read_text()
        for path in re.findall(r"(?<![\w/.<-])((?:bench|cussim|docs|kernels|tests|\.ci)/[\w./-]*\w)", text):
            if any(path.startswith(folder) for folder in made):  # made by the commands shown, ignored by git
                continue
            assert (ROOT / path).exists(), f"{document.name} names {path}, which is not in the repository"
        for markdown in re.findall(r"[\w/.-]+\.md\b", text):
            assert (ROOT / markdown).exists(), f"{document.name} names {markdown}, which is not in the repository"


BLOCKS = [(page.name, code) for page in PAGES
          for code in re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", page.read_text())]


@pytest.mark.parametrize("code", [pytest.param(code, marks=[pytest.mark.gpu] if "cupy" in code else [],
                                               id=f"{name}-{i}") for i, (name, code) in enumerate(BLOCKS)])
def test_page_examples_run(code, capsys):
    if "torch" in code:
        pytest.importorskip("torch")
    if "dask" in code:
        pytest.importorskip("dask")
    exec(compile(textwrap.dedent(code), "docs", "exec"), {})


def test_the_readmes_first_example_is_3dgs_loss():
    """A 3DGS user copies the first example: it must give 3DGS's loss, not DSSIM (half its SSIM term)."""
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "l1_dssim_loss(" in first and "weight=0.2" in first and not re.search(r"\bdssim\(", first)
    assert "dssim(render, gt)" not in readme and "(1 - SSIM) / 2" in readme


@pytest.mark.slow
def test_the_pages_build_without_pytorch_or_dask(tmp_path):
    """docs/conf.py mocks PyTorch and Dask, so the docs extra needs neither: here they are importable only as
    packages that refuse to import, and the build (warnings as errors) still passes."""
    pytest.importorskip("sphinx")
    blocked = tmp_path / "blocked"
    for name in ("torch", "dask", "distributed"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked), str(ROOT)]))
    built = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                            str(tmp_path / "html")], capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr
    assert "cussim.torch.ssim" in (tmp_path / "html" / "api.html").read_text()


def test_the_docs_extra_installs_no_pytorch():
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    docs = config["options.extras_require"]["docs"]
    assert "torch" not in docs and "dask" not in docs and "sphinx" in docs
