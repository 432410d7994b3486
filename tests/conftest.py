"""Test configuration: GPU detection, the executors kernels run on, and the emulator's cache.

Tests marked ``gpu`` skip cleanly where CuPy or a CUDA device is missing;
``pytest -m gpu`` runs them on a GPU machine. Kernel tests take the
``executor`` fixture and run once per executor present: the emulator always,
CuPy where a GPU is.
"""

import functools
import shutil

import pytest
from executors import Executor


@functools.lru_cache(maxsize=None)
def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["emulator", pytest.param("cupy", marks=pytest.mark.gpu)])
def executor(request):
    return Executor(request.param)


@pytest.fixture(scope="session")
def emulator_runtime(tmp_path_factory):
    """The emulator's runtime object (runtime.cpp through g++, about 2 s), built once per test process."""
    from cussim._emulator import _build

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CUSSIM_CACHE_DIR", str(tmp_path_factory.mktemp("emulator-runtime")))
        return _build._runtime_object(_build._toolchain_identity(), _build.DEFAULT_STD)


@pytest.fixture
def empty_emulator_cache(tmp_path, monkeypatch, emulator_runtime):
    """CUSSIM_CACHE_DIR set to a folder of this test's that holds no module, only the session's runtime object
    (what every module links, and no test here is about)."""
    cache = tmp_path / "cache"
    (cache / "emulator").mkdir(parents=True)
    shutil.copy2(emulator_runtime, cache / "emulator" / emulator_runtime.name)
    monkeypatch.setenv("CUSSIM_CACHE_DIR", str(cache))
    return cache
