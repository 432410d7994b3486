"""A CuPy stand-in over NumPy and cussim's CPU emulator, to rehearse GPU scripts where there is no GPU.

``bash bench/gpu.sh --rehearse`` runs the Python of each GPU step with this
module in CuPy's place: its arrays are NumPy arrays (cussim computes them on
the emulator when ``CUSSIM_NUMPY_BACKEND=emulator``), :class:`RawKernel`
compiles and runs on the emulator, events read the host clock and the device
reports a small machine (one multiprocessor, a 64 KiB L2). It runs the code a
GPU run would run, at the sizes given; its timings mean nothing.

Everything CuPy has and this module does not define is NumPy's (``empty``,
``float32``, ``random``, ``clip``...).

Examples
--------
>>> from bench import standin
>>> x = standin.asarray([1.0, 2.0], dtype=standin.float32)
>>> standin.asnumpy(x).tolist(), standin.cuda.Device().attributes["MultiProcessorCount"]
([1.0, 2.0], 1)
"""

from __future__ import annotations

import time
import types

import numpy as np

__version__ = f"stand-in (NumPy {np.__version__}, cussim's emulator)"
DEVICE_NAME = "CuPy stand-in (NumPy, emulator)"


class _Event:
    """A CUDA event read off the host clock."""

    def __init__(self):
        self.seconds = None

    def record(self, stream=None):
        self.seconds = time.perf_counter()

    def synchronize(self):
        """Nothing to wait for: the emulator's launches return when they are done."""


def _get_elapsed_time(start: _Event, stop: _Event) -> float:
    """Milliseconds between two recorded events, as ``cupy.cuda.get_elapsed_time``."""
    return (stop.seconds - start.seconds) * 1e3


class _Device:
    """The one stand-in device: one multiprocessor, a 64 KiB L2 cache."""

    attributes = {"MultiProcessorCount": 1, "L2CacheSize": 64 * 1024}

    def __init__(self, device=0):
        self.id = int(device)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class RawKernel:
    """``cupy.RawKernel``: one ``extern "C"`` kernel of ``code``, compiled and run by the emulator."""

    def __init__(self, code: str, name: str, options=()):
        from cussim import _emulator

        self._function = _emulator.RawModule(code=code, options=tuple(options)).get_function(name)

    def __call__(self, grid, block, args, shared_mem=0):
        self._function(grid, block, args, shared_mem=shared_mem)


def asnumpy(array):
    return np.asarray(array)


cuda = types.SimpleNamespace(
    Event=_Event, get_elapsed_time=_get_elapsed_time, Device=_Device,
    runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                  getDeviceProperties=lambda device: {"name": DEVICE_NAME.encode()}),
)


def __getattr__(name):
    return getattr(np, name)
