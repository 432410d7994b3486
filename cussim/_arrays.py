"""Array handling for the public API: what an input is, where it lives, what it may be.

Every array the public functions take passes through here: converted without
a copy (CuPy arrays, ``__cuda_array_interface__`` and ``__dlpack__`` objects
such as PyTorch CUDA tensors, NumPy arrays), checked for dtype and device, and
every output buffer is checked for shape, dtype, device, layout and overlap
with itself, the other outputs and the inputs. Buffers the library itself
creates go through :func:`empty`, which a test can count.
"""

from __future__ import annotations

import contextlib
import math
import os

import numpy as np

SUPPORTED_DTYPES = tuple(np.dtype(d) for d in (np.float16, np.float32, np.float64, np.uint8, np.uint16))
NUMPY_BACKENDS = ("reference", "emulator")
# What each backend is, for the lines that say what computed a result (the command line, the benchmark).
NUMPY_BACKEND_NAMES = {"reference": "cussim's NumPy reference",
                       "emulator": "cussim's CUDA kernels run by its CPU emulator"}
DLPACK_CPU, DLPACK_CUDA = 1, 2

# Incremented by every buffer the library creates (tests check the in-place path creates none).
allocations = 0


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            "GPU arrays need CuPy for the CUDA version you have: pip install cupy-cuda12x (or cupy-cuda13x), or "
            "cussim's cuda12 (cuda13) extra from a clone of cussim: pip install \".[cuda12]\""
        ) from exc
    return cupy


def is_numpy(array) -> bool:
    return isinstance(array, np.ndarray)


def array_module(array):
    """NumPy for NumPy arrays, CuPy for everything on a GPU."""
    return np if is_numpy(array) else _cupy()


def as_array(value, name: str):
    """A NumPy or CuPy array viewing ``value`` (no copy), or a TypeError naming ``name``."""
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array (numpy.ma); only the images x and y may be masked arrays "
                        f"(their masks become weights): pass {name} as a plain array, e.g. np.asarray({name})")
    if isinstance(value, np.ndarray):
        return value
    module = type(value).__module__.split(".")[0]
    if module == "cupy":
        return value
    if getattr(value, "requires_grad", False) is True:  # a PyTorch tensor in autograd exports neither interface
        raise TypeError(f"{name} requires grad: pass {name}.detach() to compute without autograd, or use "
                        "cussim.torch, whose functions back-propagate")
    # DLPack first: its stream handshake orders CuPy's current stream (where the kernels run) after the
    # producer's (PyTorch's current stream), which __cuda_array_interface__ without a stream does not.
    if hasattr(value, "__dlpack__") and hasattr(value, "__dlpack_device__"):
        device_type = int(value.__dlpack_device__()[0])
        if device_type == DLPACK_CPU:
            return np.from_dlpack(value)
        if device_type == DLPACK_CUDA:
            return _cupy().from_dlpack(value)
        raise TypeError(f"{name} lives on DLPack device type {device_type}; cussim takes CPU or CUDA arrays")
    if hasattr(value, "__cuda_array_interface__"):
        return _cupy().asarray(value)
    raise TypeError(
        f"{name} must be a CuPy or NumPy array, or an object with __cuda_array_interface__ or __dlpack__ "
        f"(e.g. a PyTorch tensor); got {type(value).__name__}"
    )


def check_dtype(dtype, name: str) -> None:
    """Refuses an array dtype the kernels do not take; ``name`` is the array's."""
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(d.name for d in SUPPORTED_DTYPES)
        raise TypeError(f"{name} has dtype {dtype}; cussim supports {names} (convert it with .astype)")


def device_of(array):
    """-1 for NumPy arrays, the CUDA device id otherwise."""
    return -1 if isinstance(array, np.ndarray) else array.device.id


def on_device(array):
    """A context for work on the array's GPU (nothing to enter for NumPy arrays)."""
    return contextlib.nullcontext() if is_numpy(array) else array.device


def where(array) -> str:
    device = device_of(array)
    return "host memory (NumPy)" if device < 0 else f"GPU {device}"


def check_same_place(reference, array, name: str, reference_name: str) -> None:
    if isinstance(reference, np.ndarray) and isinstance(array, np.ndarray):
        return
    if is_numpy(reference) != is_numpy(array):
        raise TypeError(
            f"{name} is in {where(array)} but {reference_name} is in {where(reference)}; pass both as NumPy "
            "arrays or both as GPU arrays"
        )
    if device_of(reference) != device_of(array):
        raise ValueError(
            f"{name} is on {where(array)} but {reference_name} is on {where(reference)}; move them to one device"
        )


def _byte_extent(array):
    """[low, high) of the bytes an array may touch; None for an empty array."""
    if array.size == 0:
        return None
    low = high = array.ctypes.data if is_numpy(array) else array.data.ptr
    for n, stride in zip(array.shape, array.strides):
        if stride < 0:
            low += stride * (n - 1)
        else:
            high += stride * (n - 1)
    return low, high + array.itemsize


def _meet(a, b) -> bool:
    """Whether two byte extents (or None) share a byte."""
    return a is not None and b is not None and a[0] < b[1] and b[0] < a[1]


def overlaps_itself(array) -> bool:
    """Whether two elements of an array may share memory (a 0 stride, or strides that interleave).

    The sufficient test: with the axes sorted by stride, each stride passes
    the extent of the axes inside it. Layouts that fail it only by
    interleaving without sharing are refused too; none arises from slicing,
    transposing or reshaping.
    """
    if array.size == 0 or array.flags.c_contiguous:
        return False
    extent = array.itemsize
    for stride, n in sorted((abs(s), n) for n, s in zip(array.shape, array.strides) if n > 1):
        if stride < extent:
            return True
        extent = stride * (n - 1) + extent
    return False


def _sharing_test(arrays):
    """shares(a, b) for two of ``arrays``: whether their byte ranges meet. NumPy's own bounds test (in C)
    where all are NumPy arrays; on a GPU, each array's byte extent computed once."""
    for a in arrays:
        if not isinstance(a, np.ndarray):
            extents = {id(a): _byte_extent(a) for a in arrays}
            return lambda a, b: _meet(extents[id(a)], extents[id(b)])
    return np.may_share_memory


def check_apart(outputs: dict, inputs: dict) -> None:
    """Every output (name: array or None) apart from itself, from the other outputs and from the inputs.

    The one overlap check of every public function, on every path: a shared
    byte gives a wrong result, so it is refused before anything is computed.
    """
    named = [(name, a) for name, a in outputs.items() if a is not None]
    for name, array in named:
        if overlaps_itself(array):
            raise ValueError(f"{name} has elements that share memory (strides {tuple(array.strides)}); outputs "
                             "need one element per value: pass a new array (e.g. from empty_like)")
    names = [name for name, _ in named] + list(inputs)
    arrays = [a for _, a in named] + list(inputs.values())
    shares = _sharing_test(arrays)
    # Two NumPy arrays that each own their buffer (distinct allocations) share no byte: no test needed.
    owners = [isinstance(a, np.ndarray) and a.flags.owndata for a in arrays]
    for i in range(len(named)):
        for j in range(i + 1, len(arrays)):
            if owners[i] and owners[j] and arrays[i] is not arrays[j]:
                continue
            if shares(arrays[i], arrays[j]):
                if j < len(named):
                    raise ValueError(f"{names[i]} overlaps {names[j]}; outputs must not share memory with each other")
                raise ValueError(f"{names[i]} overlaps {names[j]}; outputs must not share memory with the inputs")


def check_output(array, name: str, *, shape, dtype, like) -> None:
    """An output buffer (already through :func:`as_array`): right shape, dtype and place, writable.

    Overlaps are checked with all the outputs together (:func:`check_apart`).
    """
    check_same_place(like, array, name, "the inputs")
    if array.shape != shape and tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}; it must be {tuple(shape)}")
    if array.dtype != dtype:
        raise TypeError(f"{name} has dtype {array.dtype}; it must be {np.dtype(dtype).name}")
    if is_numpy(array) and not array.flags.writeable:
        raise ValueError(f"{name} is read-only")


def empty(xp, shape, dtype):
    """A new buffer; every buffer cussim creates comes from here."""
    global allocations
    allocations += 1
    return xp.empty(shape, dtype=dtype)


def to_host(array, out=None) -> np.ndarray:
    """A NumPy array of ``array``'s values: itself for a NumPy array, else a copy from its device (a host
    synchronisation), into ``out`` where given (a host array of its shape and dtype, C order)."""
    return array if is_numpy(array) else array.get(out=out)


def pinned_empty(like, shape, dtype):
    """A host array in page-locked memory (CuPy's pinned allocator) for copies from ``like``'s device (a device
    array: NumPy values need no copy)."""
    dtype = np.dtype(dtype)
    memory = array_module(like).cuda.alloc_pinned_memory(max(1, math.prod(shape)) * dtype.itemsize)
    return np.ndarray(shape, dtype, buffer=memory)


def numpy_backend() -> str:
    """How NumPy inputs are computed: "reference" (float64, default) or "emulator" (the kernels on the CPU).

    Set with the environment variable CUSSIM_NUMPY_BACKEND.
    """
    backend = os.environ.get("CUSSIM_NUMPY_BACKEND", "reference")
    if backend not in NUMPY_BACKENDS:
        choices = "; ".join(f"{name!r} ({NUMPY_BACKEND_NAMES[name]})" for name in NUMPY_BACKENDS)
        raise ValueError(f"CUSSIM_NUMPY_BACKEND={backend!r} names no backend: set it to one of {choices}, or unset "
                         "it (the reference)")
    return backend
