"""Test configuration: GPU detection, the executors kernels run on, and the emulator's cache.

Tests marked ``gpu`` skip cleanly where CuPy or a CUDA device is missing;
``pytest -m gpu`` runs them on a GPU machine. Kernel tests take the
``executor`` fixture and run once per executor present: the emulator always,
CuPy where a GPU is.
"""

import functools

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
