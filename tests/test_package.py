"""The package as a user gets it: a wheel with the kernels inside, importable anywhere, without CuPy."""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

from cussim import _kernels

ROOT = Path(__file__).resolve().parents[1]
# Subprocesses that must not see this checkout through PYTHONPATH.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _checkout_on_path() -> dict:
    """The environment with this checkout first on PYTHONPATH (for subprocesses run from elsewhere)."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the checkout (building in place would leave build/ behind)."""
    source = tmp_path_factory.mktemp("source") / "cussim"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", ".venv", ".ci-venv", ".ci-cache", "__pycache__", ".pytest_cache", "_build",
        "local-results", "wheels"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
    )
    (path,) = out.glob("cussim-*.whl")
    return path


@pytest.mark.slow
def test_wheel_ships_kernels_and_emulator_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    kernels = [f"cussim/kernels/{path.name}" for path in sorted((ROOT / "kernels").glob("*.cu*"))]
    assert {f"cussim/kernels/{name}" for files in _kernels.SOURCES.values() for name in files} <= set(kernels)
    for required in (*kernels, "cussim/_emulator/include/cuda_emulator.h",
                     "cussim/_emulator/runtime.cpp", "cussim/_kernels.py", "cussim/torch/__init__.py",
                     "cussim/torch/pytorch_msssim.py"):
        assert required in names
    assert not [n for n in names if n.startswith("tests/")]


@pytest.mark.slow
def test_installed_wheel_finds_its_kernels_from_any_directory(wheel, tmp_path):
    env_dir = tmp_path / "fresh-venv"
    venv.create(env_dir)  # without pip of its own (seconds saved): this pip installs into it
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, env=CLEAN_ENV)
    # The fresh environment borrows only NumPy/SciPy from this one (appended to its path), never cussim.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, env=CLEAN_ENV).stdout.strip()
    Path(site, "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = textwrap.dedent("""
        import sys
        import cussim
        from cussim import _kernels
        assert "cupy" not in sys.modules
        print(cussim.__file__)
        print(_kernels.kernel_dir())
        print(len(_kernels.kernel_source("ssim")))
    """)
    result = subprocess.run([str(python), "-c", script], cwd=tmp_path, capture_output=True, text=True, env=CLEAN_ENV)
    assert result.returncode == 0, result.stderr
    module_file, kernel_dir, length = result.stdout.split()
    assert Path(module_file).is_relative_to(env_dir)
    assert Path(kernel_dir) == Path(site, "cussim", "kernels")
    assert int(length) > 1000


def test_import_without_cupy():
    script = "import sys, cussim, cussim._kernels, cussim._launch, cussim._emulator; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)


def test_readme_commands_are_the_ones_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ('pip install -e ".[test,peers,dask]"', "python -m pytest"):
        assert command in readme and command in ci
    assert 'pip install .' in readme and "cussim demo" in readme


def test_demo_prints_real_values_and_writes_nothing_unasked(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cussim", "demo", "--images", "camera"],
                            capture_output=True, text=True, cwd=tmp_path, check=True, env=_checkout_on_path())
    assert list(tmp_path.iterdir()) == [] and "--map DIR writes the SSIM maps" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("camera")]
    assert len(rows) == 5
    identical, noisy = rows[0], rows[2]
    assert float(identical[-4]) == 1.0 and 0.1 < float(noisy[-4]) < 0.9  # columns: SSIM, DSSIM, compat, skimage
    assert float(noisy[-3]) == pytest.approx((1 - float(noisy[-4])) / 2, abs=1e-5)
    # the skimage-conventions column agrees with skimage's own value
    assert all(abs(float(r[-2]) - float(r[-1])) < 1e-5 for r in rows)
    assert "computed by: CPU" in result.stdout or "computed by: GPU" in result.stdout


def test_without_nvrtc_the_message_names_the_extra(monkeypatch):
    from cussim import _nvrtc

    monkeypatch.setattr(_nvrtc, "_candidate_paths", lambda: [])
    _nvrtc.library.cache_clear()
    try:
        with pytest.raises(_nvrtc.NVRTCError, match=r'libnvrtc not found; install cussim\'s `test` extra, '
                                                    r'`pip install "cussim\[test\]"`'):
            _nvrtc.library()
    finally:
        _nvrtc.library.cache_clear()
