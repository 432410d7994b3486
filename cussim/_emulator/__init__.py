"""The CPU emulator: runs the unchanged kernels/*.cu sources on NumPy arrays.

Its Python side mirrors CuPy (``RawModule(code=..., options=...,
name_expressions=...)``, ``get_function(name)(grid, block, args,
shared_mem=0)``); see ``_module`` for the launch settings and ``runtime.cpp``
for how blocks, barriers and warps are run. It exists for tests, CI and
debugging: it shows barrier, warp and memory errors, not performance.
"""

from ._errors import (
    ArgumentTypeError,
    CompileError,
    DeviceAssertionError,
    EmulatorError,
    KernelFault,
    KernelTimeout,
    LaunchConfigError,
    SynchronisationError,
)
from ._module import ORDERS, Function, LaunchSettings, RawModule

__all__ = [
    "ORDERS", "ArgumentTypeError", "CompileError", "DeviceAssertionError", "EmulatorError", "Function",
    "KernelFault", "KernelTimeout", "LaunchConfigError", "LaunchSettings", "RawModule", "SynchronisationError",
]
