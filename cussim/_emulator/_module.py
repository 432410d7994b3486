"""CuPy's ``RawModule`` / ``RawKernel`` calling convention, on the CPU.

NumPy arrays stand in for device arrays (passed as pointers to their first
element, any strides), NumPy scalars are passed by value. Every argument is
checked against the kernel's own parameter types, which a GPU would not do: a
Python int where the kernel takes ``int`` would silently be misread there.

Launch settings come from the environment, read at each launch:

- ``CUSSIM_EMULATOR_ORDER``: ``forward`` (default), ``reverse`` or ``shuffle``,
  the order in which a block's threads (and the grid's blocks) run;
- ``CUSSIM_EMULATOR_SEED``: the seed of ``shuffle`` (default 0);
- ``CUSSIM_EMULATOR_GUARD=1``: every array argument is copied next to a
  PROT_NONE page for the launch, so reading or writing past its end faults;
- ``CUSSIM_EMULATOR_TIMEOUT``: seconds before a launch is stopped (default 300,
  0 for none);
- ``CUSSIM_EMULATOR_FPMODE=gpu``: denormals flushed to zero during the launch
  (and, when the module is built, multiply-adds contracted; see ``_build``).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _build
from ._errors import (
    ArgumentTypeError,
    DeviceAssertionError,
    EmulatorError,
    KernelFault,
    KernelTimeout,
    LaunchConfigError,
    SynchronisationError,
)

ORDERS = ("forward", "reverse", "shuffle")
# CUDA's limits: every GPU cussim supports (sm_70 and newer) has these.
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024
MAX_GRID = (2**31 - 1, 65535, 65535)
DEFAULT_SHARED_LIMIT = 48 * 1024
MAX_SHARED_OPT_IN = 227 * 1024

_STATUS_ERRORS = {
    1: KernelFault, 2: DeviceAssertionError, 3: SynchronisationError, 4: KernelFault, 5: KernelTimeout, 6: KernelFault,
}
_LAUNCH_LOCK = threading.Lock()  # signal handlers and module globals are process-wide
_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


@dataclass(frozen=True)
class LaunchSettings:
    order: str = "forward"
    seed: int = 0
    guard: bool = False
    timeout: float = 300.0

    @classmethod
    def from_environment(cls) -> "LaunchSettings":
        order = os.environ.get("CUSSIM_EMULATOR_ORDER", "forward").strip().lower()
        if order not in ORDERS:
            raise ValueError(f"CUSSIM_EMULATOR_ORDER={order!r}: use one of {', '.join(ORDERS)}")
        return cls(
            order=order,
            seed=int(os.environ.get("CUSSIM_EMULATOR_SEED", "0")),
            guard=os.environ.get("CUSSIM_EMULATOR_GUARD", "0") not in ("", "0", "false", "no"),
            timeout=float(os.environ.get("CUSSIM_EMULATOR_TIMEOUT", "300")),
        )


class _KernelEntry(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("invoke", ctypes.c_void_p),
        ("fn", ctypes.c_void_p),
        ("signature", ctypes.CFUNCTYPE(ctypes.c_char_p)),
    ]


class _Library:
    """A compiled module loaded with ctypes: its kernel table and launch entry point."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL | os.RTLD_NOW)
        self.lib.emu_kernels.restype = ctypes.POINTER(_KernelEntry)
        self.lib.emu_kernels.argtypes = (ctypes.POINTER(ctypes.c_int),)
        self.lib.emu_launch.restype = ctypes.c_int
        self.lib.emu_launch.argtypes = (
            ctypes.c_int, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_ulonglong, ctypes.c_double,
            ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
        )
        count = ctypes.c_int()
        table = self.lib.emu_kernels(ctypes.byref(count))
        self.kernels = {}
        for i in range(count.value):
            signature = table[i].signature().decode()
            params = tuple(p for p in signature.split(",") if p)
            self.kernels[table[i].name.decode()] = (i, params)


class RawModule:
    """Emulated counterpart of ``cupy.RawModule``: compiles lazily, on first use.

    Examples
    --------
    >>> import numpy as np
    >>> from cussim._emulator import RawModule
    >>> code = '''
    ... template <class T> __global__ void scale(T* x, T a, int n) {
    ...     int i = blockIdx.x * blockDim.x + threadIdx.x;
    ...     if (i < n) x[i] *= a;
    ... }'''
    >>> mod = RawModule(code=code, name_expressions=["scale<float>"])
    >>> x = np.arange(5, dtype=np.float32)
    >>> mod.get_function("scale<float>")((1,), (32,), (x, np.float32(2), np.int32(5)))
    >>> x
    array([0., 2., 4., 6., 8.], dtype=float32)
    """

    def __init__(self, code=None, *, path=None, options=(), name_expressions=None, filename=None):
        if (code is None) == (path is None):
            raise ValueError("RawModule takes exactly one of code= or path=")
        if path is not None:
            code = Path(path).read_text()
            filename = filename or Path(path).name
        self.code = code
        self.filename = filename or "kernel.cu"
        self.options = tuple(options)
        self.name_expressions = tuple(name_expressions or ())
        self._library = None
        self._lock = threading.Lock()

    @property
    def library(self) -> _Library:
        with self._lock:
            if self._library is None:
                path = _build.build_module(self.code, self.filename, self.options, self.name_expressions)
                self._library = _Library(path)
            return self._library

    def compile(self) -> None:
        """Builds the module now rather than at the first ``get_function``."""
        self.library  # noqa: B018

    def get_function(self, name: str) -> "Function":
        kernels = self.library.kernels
        if name not in kernels:
            known = ", ".join(sorted(kernels)) or "none"
            raise EmulatorError(
                f"no kernel named {name!r} in {self.filename}; kernels: {known} "
                "(template kernels must be listed in name_expressions, spelt the same)"
            )
        index, params = kernels[name]
        return Function(self.library, name, index, params)


class Function:
    """A kernel of a :class:`RawModule`, called like ``cupy.RawKernel``."""

    def __init__(self, library: _Library, name: str, index: int, params: tuple):
        self._library = library
        self.name = name
        self._index = index
        self.params = params
        # Static shared memory is not known per kernel here (all of a module's
        # __shared__ variables live in one TLS block); the NVRTC compile check
        # reports it per kernel instead.
        self._max_dynamic_shared = DEFAULT_SHARED_LIMIT

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        """Dynamic shared memory a launch may ask for: 48 KiB unless raised, as on a GPU."""
        return self._max_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value: int) -> None:
        if not 0 <= value <= MAX_SHARED_OPT_IN:
            raise LaunchConfigError(
                f"{self.name}: max_dynamic_shared_size_bytes={value} is outside 0..{MAX_SHARED_OPT_IN}, "
                "the most a GPU block can opt in to (227 KiB on sm_90)"
            )
        self._max_dynamic_shared = value

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        grid = _dims("grid", grid, MAX_GRID)
        block = _dims("block", block, MAX_BLOCK)
        self._check_launch(grid, block, shared_mem)
        settings = LaunchSettings.from_environment()
        with _GuardedArrays(settings.guard) as guard:
            storage, pointers = self._marshal(args, guard)
            message = ctypes.create_string_buffer(4096)
            fault = ctypes.c_void_p()
            with _LAUNCH_LOCK, _denormals_flushed(_build.fp_mode() == "gpu"):
                status = self._library.lib.emu_launch(
                    self._index, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), shared_mem,
                    pointers, ORDERS.index(settings.order), settings.seed, settings.timeout,
                    message, len(message), ctypes.byref(fault),
                )
            del storage
            if status != 0:
                text = message.value.decode(errors="replace")
                raise _STATUS_ERRORS[status](f"{self.name}: {text}{guard.explain(fault.value)}")

    def _check_launch(self, grid, block, shared_mem):
        threads = block[0] * block[1] * block[2]
        if threads > MAX_THREADS_PER_BLOCK:
            raise LaunchConfigError(
                f"{self.name}: block {block} has {threads} threads; a GPU block has at most {MAX_THREADS_PER_BLOCK}"
            )
        if not isinstance(shared_mem, (int, np.integer)) or shared_mem < 0:
            raise LaunchConfigError(f"{self.name}: shared_mem must be a non-negative int, got {shared_mem!r}")
        if shared_mem > self.max_dynamic_shared_size_bytes:
            raise LaunchConfigError(
                f"{self.name}: shared_mem={shared_mem} bytes exceeds max_dynamic_shared_size_bytes="
                f"{self.max_dynamic_shared_size_bytes}; raise that attribute first (at most {MAX_SHARED_OPT_IN}), "
                "as on a GPU"
            )

    def _marshal(self, args, guard):
        if not isinstance(args, (tuple, list)):
            raise ArgumentTypeError(f"{self.name}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise ArgumentTypeError(
                f"{self.name} takes {len(self.params)} arguments ({', '.join(self.params)}), got {len(args)}"
            )
        storage = [_argument(self.name, i, param, arg, guard) for i, (param, arg) in enumerate(zip(self.params, args))]
        pointers = (ctypes.c_void_p * max(1, len(storage)))(*[ctypes.addressof(s) for s in storage])
        return storage, pointers


@contextlib.contextmanager
def _denormals_flushed(flush: bool):
    """With ``flush``, this thread's MXCSR flushes denormals (FTZ and DAZ) inside the block, as -ftz=true does on
    a GPU; the launch's fibers take the register from this thread."""
    if not flush:
        yield
        return
    mxcsr = _build.mxcsr_library()
    saved = mxcsr.emu_get_mxcsr()
    mxcsr.emu_set_mxcsr(saved | _build.FLUSH_DENORMALS)
    try:
        yield
    finally:
        mxcsr.emu_set_mxcsr(saved)


def _dims(what, value, limits):
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise LaunchConfigError(f"{what} must be an int or a tuple of 1 to 3 ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, (d, limit) in enumerate(zip(dims, limits)):
        if not 1 <= d <= limit:
            raise LaunchConfigError(f"{what} dimension {'xyz'[axis]} = {d} is outside 1..{limit}, the GPU's limit")
    return dims


def _scalar_dtype(code):
    return np.dtype(np.bool_) if code == "bool" else np.dtype(code)


def _argument(kernel, index, param, arg, guard):
    """ctypes storage for one argument, after checking it against the parameter type."""
    where = f"{kernel}: argument {index} ({param})"
    if param.endswith("*"):
        pointee = param[:-1].removeprefix("const ")
        if arg is None:
            return ctypes.c_void_p(None)
        if not isinstance(arg, np.ndarray):
            raise ArgumentTypeError(f"{where} is a pointer: pass a NumPy array, got {type(arg).__name__}")
        matches = pointee == "void" or arg.dtype.name == pointee or (
            pointee == "bfloat16" and arg.dtype == np.uint16
        )
        if not matches:
            raise ArgumentTypeError(f"{where}: the array's dtype is {arg.dtype}, the kernel reads {pointee}")
        if not arg.dtype.isnative:
            raise ArgumentTypeError(f"{where}: the array is {arg.dtype.str} (byte-swapped); pass a native-order copy")
        if not param.startswith("const ") and not arg.flags.writeable:
            raise ArgumentTypeError(f"{where}: the kernel may write through it, but the array is read-only")
        return ctypes.c_void_p(guard.address(arg, index))
    if isinstance(arg, np.ndarray) or not isinstance(arg, np.generic):
        raise ArgumentTypeError(
            f"{where}: pass a NumPy scalar of dtype {_scalar_dtype(param)} (e.g. numpy.{_scalar_dtype(param)}(...)), "
            f"got {type(arg).__name__}; a GPU would misread a value of another width"
        )
    if arg.dtype != _scalar_dtype(param):
        raise ArgumentTypeError(f"{where}: got a NumPy {arg.dtype} scalar, the kernel takes {_scalar_dtype(param)}")
    return ctypes.create_string_buffer(arg.tobytes(), arg.dtype.itemsize)


class _GuardedArrays:
    """With the guard on, copies arrays to memory that ends at a PROT_NONE page.

    Each array's whole byte extent (any strides) is copied so that its last
    byte lies just before the guard page; after a successful launch the copy is
    written back. With the guard off, arrays are passed in place.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.regions = []  # (array, argument index, map, start of the copy, bytes)

    def __enter__(self):
        return self

    def address(self, array: np.ndarray, index: int) -> int:
        if not self.enabled or array.size == 0:
            return array.ctypes.data
        low, high = _byte_bounds(array)
        extent = high - low
        pages = (extent + _PAGE - 1) // _PAGE + 1
        region = mmap.mmap(-1, pages * _PAGE)
        guard_page = ctypes.addressof(ctypes.c_char.from_buffer(region)) + (pages - 1) * _PAGE
        if _libc.mprotect(guard_page, _PAGE, 0) != 0:
            raise EmulatorError("the emulator could not protect a guard page (mprotect failed)")
        start = guard_page - extent
        ctypes.memmove(start, low, extent)
        self.regions.append((array, index, region, start, extent))
        return start + (array.ctypes.data - low)

    def explain(self, fault_address) -> str:
        """Which argument a fault address overran, if any."""
        for array, index, _, start, extent in self.regions:
            if fault_address is not None and start + extent <= fault_address < start + extent + _PAGE:
                return (
                    f" (argument {index}, an array of {array.size} {array.dtype} elements: the access is "
                    f"{fault_address - start - extent} bytes past the end of its memory)"
                )
        return ""

    def __exit__(self, exc_type, exc, tb):
        for array, _, region, start, extent in self.regions:
            if exc_type is None and array.flags.writeable:
                ctypes.memmove(_byte_bounds(array)[0], start, extent)
            region.close()
        self.regions.clear()
        return False


def _byte_bounds(array: np.ndarray):
    return getattr(np.lib, "array_utils", np).byte_bounds(array)
