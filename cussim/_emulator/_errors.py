"""Exceptions of the emulator: each says what went wrong and where."""


class EmulatorError(RuntimeError):
    """Base class of everything the emulator raises."""


class CompileError(EmulatorError):
    """g++ could not compile a module; ``log`` holds its messages."""

    def __init__(self, message: str, log: str = "", source: str | None = None):
        super().__init__(f"{message}\n{log}".rstrip())
        self.log = log
        self.source = source


class LaunchConfigError(EmulatorError, ValueError):
    """A grid, block or shared-memory size that a GPU would refuse."""


class ArgumentTypeError(EmulatorError, TypeError):
    """A kernel argument that does not match the kernel's parameter type."""


class KernelFault(EmulatorError):
    """A device-side fault: invalid or out-of-bounds memory access, stack overflow, __trap()."""


class DeviceAssertionError(KernelFault):
    """A device-side assert() failed."""


class SynchronisationError(KernelFault):
    """A deadlock, a warp divergence or a barrier that not every thread reaches."""


class KernelTimeout(KernelFault):
    """The launch ran past CUSSIM_EMULATOR_TIMEOUT seconds."""
