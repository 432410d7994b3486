"""Where tests run: NumPy arrays (the emulator or the reference), or CuPy on a GPU."""

import numpy as np

from bench.gpu_smoke import device_allocations_refused  # noqa: F401  (the tests' use of it; bench/gpu.sh's too)


class Executor:
    """Moves test arrays to where a kernel runs and back."""

    def __init__(self, name):
        self.name = name

    def asarray(self, array):
        if self.name != "cupy":
            return np.asarray(array)
        import cupy

        return cupy.asarray(array)

    def asnumpy(self, array):
        if self.name != "cupy":
            return np.asarray(array)
        import cupy

        return cupy.asnumpy(array)

    def __repr__(self):
        return self.name
