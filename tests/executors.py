"""Where tests run: NumPy arrays (the emulator or the reference), or CuPy on a GPU."""

import contextlib

import numpy as np


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


@contextlib.contextmanager
def device_allocations_refused():
    """Within the block, any CuPy allocation on the GPU fails the test (the in-place paths' promise)."""
    import cupy

    def refuse(size):
        raise AssertionError(f"allocated {size} bytes on the device")

    cupy.cuda.set_allocator(refuse)
    try:
        yield
    finally:
        cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)
