"""Test configuration: GPU detection, the executors kernels run on, and the emulator's cache.

Tests marked ``gpu`` skip cleanly where CuPy or a CUDA device is missing;
``pytest -m gpu`` runs them on a GPU machine. Kernel tests take the
``executor`` fixture and run once per executor present: the emulator always,
CuPy where a GPU is.
"""

import functools
import importlib
import shutil
import sys

import pytest
from executors import Executor

from bench import cupy_standin


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


@pytest.fixture
def on_kernels(monkeypatch, executor):
    """The executor, with NumPy arrays computed by the kernels on the emulator."""
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    return executor


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

@functools.lru_cache(maxsize=None)
def standin_differences():
    """What the CuPy stand-in has that the installed CuPy lacks (None: no CuPy installed to compare with)."""
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        return None
    return tuple(cupy_standin.check_against(cupy))


def _clear_gpu_caches():
    from cussim import _kernels, _launch

    _kernels.cupy_kernel.cache_clear()
    _launch._device_constants.cache_clear()
    _launch._PLANS.clear()


@pytest.fixture
def standin_cupy(monkeypatch):
    """The strict CuPy stand-in (bench/cupy_standin.py) installed as ``cupy``: cussim's GPU path on the CPU.

    Fails where the stand-in has a name, attribute or parameter that the installed CuPy lacks.
    """
    differences = standin_differences()
    if differences:
        pytest.fail("the CuPy stand-in differs from the installed CuPy:\n" + "\n".join(differences))
    for name, module in cupy_standin.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "cupyx", None)  # an ImportError: the stand-in has no cupyx (Dask tries it)
    cupy_standin.reset()
    _clear_gpu_caches()
    yield sys.modules["cupy"]
    _clear_gpu_caches()
    cupy_standin.reset()


@pytest.fixture(params=["standin", pytest.param("cupy", marks=pytest.mark.gpu)])
def gpu_cupy(request):
    """CuPy for tests of the GPU path: the stand-in everywhere, the real one on a GPU."""
    if request.param == "standin":
        return request.getfixturevalue("standin_cupy")
    import cupy

    return cupy
