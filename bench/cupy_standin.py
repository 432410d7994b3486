"""A strict stand-in for the part of CuPy that cussim and bench/gpu.sh use, so that cussim's GPU path runs in CI
without a GPU and ``bash bench/gpu.sh --rehearse`` runs the GPU steps' Python (:func:`install`).

Arrays are NumPy buffers that carry a device id; ``cupy.cuda.Device`` and
streams keep a current device and a current stream per device, as CuPy
does; ``RawModule`` / ``get_function`` launches run the kernels on the CPU
emulator, which checks every argument against the kernel's signature. Every
launch, array operation, allocation and host synchronisation is recorded in
:data:`record` with the device and stream it used. Strict where CuPy is:

- an array operation refuses arrays of another device than the current one
  (CuPy's "Array device must be same as the current device");
- a launch refuses an array of another device, a NumPy array, a pointer
  argument that is not an array or a 64-bit zero, and any array not yet
  ready on the launch's stream (a copy from the host still in flight on
  another stream, or a tensor another framework's stream writes);
- allocations and host synchronisations inside a stream capture fail, as
  CUDA refuses them there;
- implicit conversion to NumPy (``numpy.asarray`` of a device array) fails,
  as in CuPy.

It is no looser than CuPy either: :func:`check_against` (run by the fixture
that installs it, where CuPy is importable) fails unless every public name,
class attribute and call signature of the stand-in exists in the installed
CuPy with the same parameters (CuPy's Cython classes expose theirs in their
docstrings). What it does not show: the DLPack capsule ABI (its capsules are
Python objects), timing (its events read the host clock), true concurrency, a
real machine's size (:data:`ATTRIBUTES` is one multiprocessor, a 64 KiB L2).
"""

from __future__ import annotations

import inspect
import itertools
import re
import sys
import time
import types
from dataclasses import dataclass, field

import numpy as np

from cussim import _emulator

DEVICE_COUNT = 2
COMPUTE_CAPABILITY = "90"
ATTRIBUTES = {"MultiProcessorCount": 1, "L2CacheSize": 64 * 1024}  # a small machine, for the benchmark's rehearsal
LEGACY_DEFAULT_STREAM = 1  # DLPack's name for the legacy default (null) stream


class StandInError(AssertionError):
    """Something a GPU would get wrong or CuPy would refuse."""


@dataclass
class Event:
    """One recorded step: what ran (a kernel's name, an array operation, "alloc", "pinned" host memory, "sync"),
    where, on what."""

    kind: str
    name: str
    device: int
    stream: int
    nbytes: int = 0


@dataclass
class Record:
    events: list = field(default_factory=list)

    def of(self, kind):
        return [e for e in self.events if e.kind == kind]

    @property
    def launches(self):
        return self.of("launch")

    @property
    def allocations(self):
        return self.of("alloc")

    @property
    def syncs(self):
        return self.of("sync")

    def clear(self):
        self.events.clear()


record = Record()
_ptrs = itertools.count(0x7000)


# --- devices and streams ------------------------------------------------------------------------------


class _State:
    def __init__(self):
        self.device = 0
        self.streams = {}  # device id -> current Stream (absent: the null stream)
        self.allocator = None
        self.capturing = None  # the Stream capturing, if any


_state = _State()


class CUDARuntimeError(RuntimeError):
    def __init__(self, status):
        super().__init__(status)
        self.status = status


def _current_device() -> int:
    return _state.device


def _check_device_id(device_id):
    if not isinstance(device_id, (int, np.integer)) or not 0 <= device_id < DEVICE_COUNT:
        raise CUDARuntimeError(101)  # cudaErrorInvalidDevice
    return int(device_id)


class Device:
    """cupy.cuda.Device: a context making ``id`` the current device."""

    def __init__(self, device=None):
        self._id = _current_device() if device is None else _check_device_id(device)
        self._previous = []

    @property
    def id(self):
        return self._id

    @property
    def compute_capability(self):
        return COMPUTE_CAPABILITY

    @property
    def attributes(self):
        return dict(ATTRIBUTES)

    def use(self):
        _state.device = self._id

    def synchronize(self):
        _synchronise(f"Device({self._id}).synchronize", device=self._id)

    def __enter__(self):
        self._previous.append(_state.device)
        _state.device = self._id
        return self

    def __exit__(self, *exc):
        _state.device = self._previous.pop()

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self._id)

    def __repr__(self):
        return f"<CUDA Device {self._id}>"


class _BaseStream:
    def __init__(self, ptr, device_id):
        self._ptr = ptr
        self._device_id = device_id
        self._previous = []
        self._graph = None

    @property
    def ptr(self):
        return self._ptr

    @property
    def device_id(self):
        return self._device_id

    def __enter__(self):
        if self._device_id != _current_device():
            raise StandInError(f"a stream of device {self._device_id} made current while device "
                               f"{_current_device()} is current")
        self._previous.append(_state.streams.get(self._device_id))
        _state.streams[self._device_id] = self
        return self

    def __exit__(self, *exc):
        previous = self._previous.pop()
        if previous is None:
            _state.streams.pop(self._device_id, None)
        else:
            _state.streams[self._device_id] = previous

    def use(self):
        _state.streams[self._device_id] = self
        return self

    def synchronize(self):
        _synchronise(f"stream {self._ptr:#x}.synchronize", stream=self._ptr)

    def is_capturing(self):
        return self._graph is not None

    def begin_capture(self, mode=None):
        if _state.capturing is not None:
            raise StandInError("a stream capture is already under way")
        self._graph = Graph()
        _state.capturing = self

    def end_capture(self):
        if self._graph is None:
            raise StandInError("end_capture without begin_capture")
        graph, self._graph = self._graph, None
        _state.capturing = None
        return graph


class Stream(_BaseStream):
    """cupy.cuda.Stream (made on the current device)."""

    null = None

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        super().__init__(0 if null else next(_ptrs) * 16, _current_device())


class ExternalStream(_BaseStream):
    """cupy.cuda.ExternalStream: a stream another library owns."""

    def __init__(self, ptr, device_id=-1):
        super().__init__(int(ptr), _current_device() if device_id == -1 else _check_device_id(device_id))


Stream.null = Stream(null=True)


def get_current_stream(device_id=-1):
    device = _current_device() if device_id == -1 else _check_device_id(device_id)
    current = _state.streams.get(device)
    if current is not None:
        return current
    return Stream.null if device == 0 else ExternalStream(0, device)


def _stream_ptr() -> int:
    return get_current_stream().ptr


class Graph:
    """cupy.cuda.Graph: the launches and operations captured on a stream, replayed by :meth:`launch`."""

    def __init__(self, *args, **kwargs):
        self._steps = []

    def launch(self, stream=None):
        stream = stream or get_current_stream()
        for name, device, step in self._steps:
            record.events.append(Event("graph-launch", name, device, stream.ptr))
            step()

    def upload(self, stream=None):
        pass


class TimingEvent:
    """cupy.cuda.Event: recorded on a stream of the current device, read off the host clock (its times mean
    nothing: the emulator's launches run when they are enqueued)."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self._timing = not disable_timing
        self._stream = self._seconds = None

    def record(self, stream=None):
        stream = stream or get_current_stream()
        if stream.device_id != _current_device():
            raise StandInError(f"an event recorded on a stream of device {stream.device_id} while device "
                               f"{_current_device()} is current")
        record.events.append(Event("event", "record", stream.device_id, stream.ptr))
        self._stream, self._seconds = stream.ptr, time.perf_counter()

    def synchronize(self):
        _synchronise("Event.synchronize", stream=self._stream)


def get_elapsed_time(start_event, end_event):
    """Milliseconds between two recorded timing events, as CUDA refuses them otherwise."""
    for which, event in (("start_event", start_event), ("end_event", end_event)):
        if event._seconds is None or not event._timing:
            raise StandInError(f"get_elapsed_time: {which} was not recorded, or was made with disable_timing")
    return (end_event._seconds - start_event._seconds) * 1e3


def _synchronise(what, *, device=None, stream=None):
    if _state.capturing is not None:
        raise StandInError(f"{what}: a host synchronisation inside a stream capture")
    record.events.append(Event("sync", what, _current_device() if device is None else device,
                               -1 if stream is None else stream))
    for allocation in _Allocation.live:
        if allocation.ready is not None and (stream is None or stream in allocation.ready):
            allocation.ready = None


def _enqueue(kind, name, step):
    """Runs ``step`` on the current device and stream, or adds it to the graph being captured."""
    device, stream = _current_device(), _stream_ptr()
    record.events.append(Event(kind, name, device, stream))
    capturing = _state.capturing
    if capturing is not None and capturing.ptr == stream:
        capturing._graph._steps.append((name, device, step))
    else:
        step()


# --- memory ---------------------------------------------------------------------------------------------


class _Allocation:
    """Device memory: a NumPy byte buffer, its device, and the streams it is ready on (None: all)."""

    live = []

    def __init__(self, nbytes, device):
        self.buffer = np.zeros(max(1, nbytes), np.uint8)
        self.nbytes = nbytes
        self.device = device
        self.ready = None
        self.ptr = self.buffer.ctypes.data
        _Allocation.live.append(self)
        if len(_Allocation.live) > 4096:
            del _Allocation.live[:2048]

    @classmethod
    def holding(cls, ptr):
        for allocation in reversed(cls.live):
            if allocation.ptr <= ptr < allocation.ptr + max(1, allocation.nbytes):
                return allocation
        raise StandInError(f"pointer {ptr:#x} is not stand-in device memory")


class MemoryPointer:
    """cupy.cuda.MemoryPointer: a position in device memory."""

    def __init__(self, mem, offset):
        self.mem = mem
        self._offset = offset

    @property
    def ptr(self):
        return self.mem.ptr + self._offset

    @property
    def device_id(self):
        return self.mem.device

    @property
    def device(self):
        return Device(self.mem.device)

    def memset_async(self, value, size, stream=None):
        _check_current(self.mem.device, "memset_async")
        start = self._offset

        def step():
            self.mem.buffer[start:start + size] = value

        _enqueue("memset", f"memset {size} bytes", step)


class MemoryPool:
    """cupy.cuda.MemoryPool: hands out stand-in device memory."""

    def __init__(self, allocator=None):
        self._used = 0

    def malloc(self, size):
        self._used += size
        return MemoryPointer(_Allocation(size, _current_device()), 0)

    def used_bytes(self):
        return self._used

    def total_bytes(self):
        return self._used

    def free_all_blocks(self, stream=None):
        pass


_pool = MemoryPool()


def get_default_memory_pool():
    return _pool


def set_allocator(allocator=None):
    _state.allocator = allocator


def get_allocator():
    return _state.allocator or _pool.malloc


def alloc_pinned_memory(size):
    """cupy.cuda.alloc_pinned_memory: page-locked host memory (here plain host memory), a buffer NumPy wraps."""
    record.events.append(Event("pinned", "alloc_pinned_memory", _current_device(), _stream_ptr(), size))
    return bytearray(size)


def _allocate(nbytes):
    if _state.capturing is not None:
        raise StandInError(f"an allocation of {nbytes} bytes inside a stream capture")
    record.events.append(Event("alloc", "alloc", _current_device(), _stream_ptr(), nbytes))
    pointer = get_allocator()(nbytes)
    if not isinstance(pointer, MemoryPointer):
        raise StandInError(f"the allocator returned {type(pointer).__name__}, not a MemoryPointer")
    return pointer


def _check_current(device, what):
    if device != _current_device():
        raise ValueError(f"{what}: Array device must be same as the current device: array device = {device} "
                         f"while current = {_current_device()}")


# --- arrays ---------------------------------------------------------------------------------------------


class _Flags:
    def __init__(self, host):
        self.c_contiguous = host.flags.c_contiguous
        self.f_contiguous = host.flags.f_contiguous
        self.owndata = False


def _new(shape, dtype):
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    pointer = _allocate(nbytes)
    host = pointer.mem.buffer[:nbytes].view(dtype).reshape(shape) if nbytes else np.empty(shape, dtype)
    return ndarray._wrap(host, pointer.mem)


class ndarray:
    """cupy.ndarray: a NumPy view (``_host``) of a stand-in allocation on its device."""

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None or order != "C":
            raise StandInError("the stand-in makes C-order arrays of new memory only")
        made = _new(shape, dtype)
        self._host, self._mem = made._host, made._mem

    @classmethod
    def _wrap(cls, host, mem):
        array = cls.__new__(cls)
        array._host, array._mem = host, mem
        return array

    # properties
    shape = property(lambda self: self._host.shape)
    strides = property(lambda self: self._host.strides)
    dtype = property(lambda self: self._host.dtype)
    ndim = property(lambda self: self._host.ndim)
    size = property(lambda self: self._host.size)
    itemsize = property(lambda self: self._host.itemsize)
    nbytes = property(lambda self: self._host.nbytes)
    flags = property(lambda self: _Flags(self._host))
    device = property(lambda self: Device(self._mem.device))
    T = property(lambda self: self.transpose())

    @property
    def data(self):
        return MemoryPointer(self._mem, self._host.ctypes.data - self._mem.ptr)

    def _operand(self, what):
        _check_current(self._mem.device, what)
        return self._host

    # views: no allocation, no launch (on any device, as in CuPy); a copy where NumPy's result is not a view
    def _view(self, host):
        return ndarray._wrap(host, self._mem)

    def reshape(self, *shape, order="C", copy=None):
        host = self._host.reshape(*shape)
        if host.size and not np.shares_memory(host, self._host):
            return _result(host)
        return self._view(host)

    def transpose(self, *axes):
        return self._view(self._host.transpose(*axes))

    def ravel(self, order="C"):
        return self.reshape(-1)

    def __getitem__(self, key):
        host = self._host[_unwrap(key)]
        if isinstance(host, np.ndarray) and (host.size == 0 or np.shares_memory(host, self._host)):
            return self._view(host)
        return _result(host)

    # operations: a launch on the current stream of the current device, which must be the array's
    def __setitem__(self, key, value):
        target = self._operand("__setitem__")
        key, value = _unwrap(key), _unwrap(value)
        _enqueue("op", "setitem", lambda: target.__setitem__(key, value))

    def fill(self, value):
        target = self._operand("fill")
        _enqueue("op", "fill", lambda: target.fill(value))

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return _result(self._operand("astype").astype(dtype))

    def copy(self, order="C"):
        return _result(self._operand("copy").copy())

    def sum(self, axis=None, dtype=None, out=None, keepdims=False):
        return _result(self._operand("sum").sum(axis=axis, dtype=dtype, keepdims=keepdims))

    def mean(self, axis=None, dtype=None, out=None, keepdims=False):
        return _result(self._operand("mean").mean(axis=axis, dtype=dtype, keepdims=keepdims))

    def max(self, axis=None, out=None, keepdims=False):
        _no_out(out)
        return _result(self._operand("max").max(axis=axis, keepdims=keepdims))

    def any(self, axis=None, out=None, keepdims=False):
        return _result(self._operand("any").any(axis=axis, keepdims=keepdims))

    def all(self, axis=None, out=None, keepdims=False):
        return _result(self._operand("all").all(axis=axis, keepdims=keepdims))

    # to the host: a synchronisation
    def get(self, stream=None, order="C", out=None, blocking=True):
        _synchronise("ndarray.get", device=self._mem.device)
        if out is None:
            return self._host.copy()
        if out.shape != self.shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError("Shape mismatch or dtype mismatch or out is not C-contiguous")
        out[...] = self._host
        return out

    def item(self):
        return self.get().item()

    def __float__(self):
        return float(self.get())

    def __int__(self):
        return int(self.get())

    def __bool__(self):
        return bool(self.get())

    def __len__(self):
        return len(self._host)

    def __repr__(self):
        return repr(self.get())

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
                        "a NumPy array explicitly.")

    # interfaces
    def __array_function__(self, func, types, args, kwargs):
        """NumPy's functions on these arrays (and ``like=`` them) run as the stand-in's, where it has one."""
        standin = _CUPY.get(func.__name__)
        if standin is not None:
            return standin(*args, **kwargs)
        if func.__name__ in ARRAY_FUNCTIONS:  # CuPy's own of these; NumPy's on the device's arrays here
            return _result(func(*_unwrap(tuple(args)), **{k: _unwrap(v) for k, v in kwargs.items()}))
        return NotImplemented

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """NumPy's ufuncs on these arrays: an elementwise kernel on the current device (CuPy runs its own)."""
        if method != "__call__" or kwargs:
            return NotImplemented
        return _result(ufunc(*_unwrap(inputs)))

    @property
    def __cuda_array_interface__(self):
        host = self._host
        return {"shape": host.shape, "typestr": host.dtype.str, "descr": [("", host.dtype.str)],
                "data": (host.ctypes.data, False), "version": 3,
                "strides": None if host.flags.c_contiguous else host.strides, "stream": _stream_ptr() or 1}

    def __dlpack_device__(self):
        return (2, self._mem.device)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        return _Capsule(self)


def _elementwise(name):
    def method(self, *others):
        hosts = [self._operand(name)] + [_unwrap(o) for o in others]
        return _result(getattr(hosts[0], name)(*hosts[1:]))

    method.__name__ = name
    return method


_OPERATORS = ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
              "__neg__", "__abs__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__pow__")
for _name in _OPERATORS:
    setattr(ndarray, _name, _elementwise(_name))
ndarray.__hash__ = None
ndarray.__module__ = "cupy"


@dataclass
class _Capsule:
    """A stand-in DLPack capsule: the exporter's array."""

    array: ndarray


def _unwrap(value):
    """NumPy operands for an operation on the current device: arrays (checked to be there), tuples, scalars."""
    if isinstance(value, ndarray):
        return value._operand("operand")
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, np.ndarray) and value.ndim:
        raise TypeError(f"Unsupported type {type(value)}")
    return value


def _result(host):
    """A new array on the current device holding ``host`` (an operation's result): an allocation and a launch."""
    host = np.asarray(host)
    array = _new(host.shape, host.dtype)
    target = array._host
    _enqueue("op", "result", lambda: target.__setitem__(..., host))
    return array


def _readable(array: ndarray, what):
    """The array's NumPy view for a launch on the current stream, if its memory is ready there."""
    _check_current(array._mem.device, what)
    ready = array._mem.ready
    if ready is not None and _stream_ptr() not in ready:
        raise StandInError(f"{what}: reads memory that is ready only on stream(s) "
                           f"{', '.join(hex(s) for s in sorted(ready))} but runs on stream {_stream_ptr():#x} "
                           "with nothing ordering the two (a GPU may read it before it is written)")
    return array._host


# --- module functions -----------------------------------------------------------------------------------


def empty(shape, dtype=float, order="C"):
    return _new(shape, dtype)


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):
    return _new(prototype.shape if shape is None else shape, prototype.dtype if dtype is None else dtype)


def copyto(dst, src, casting="same_kind", where=None):
    if where is not None:
        raise StandInError("where= is not supported by the stand-in")
    target, source = dst._operand("copyto"), _unwrap(src)
    _enqueue("op", "copyto", lambda: np.copyto(target, source, casting=casting))


def zeros(shape, dtype=float, order="C"):
    array = _new(shape, dtype)
    array.fill(0)
    return array


def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    if hasattr(a, "__cuda_array_interface__"):
        return _from_interface(a.__cuda_array_interface__, dtype)
    host = np.asarray(a, dtype=dtype)
    array = _new(host.shape, host.dtype)
    array._host[...] = host
    record.events.append(Event("op", "copy from host", _current_device(), _stream_ptr()))
    if blocking:
        _synchronise("asarray(blocking=True)", stream=_stream_ptr())
    else:
        array._mem.ready = {_stream_ptr()}
    return array


def _from_interface(interface, dtype):
    ptr = interface["data"][0]
    allocation = _Allocation.holding(ptr)
    host_dtype = np.dtype(interface["typestr"])
    shape = tuple(interface["shape"])
    strides = interface.get("strides") or np.empty(shape, host_dtype).strides
    host = np.ndarray(shape, host_dtype, buffer=allocation.buffer, offset=ptr - allocation.ptr, strides=strides)
    array = ndarray._wrap(host, allocation)
    return array if dtype is None else asarray(array, dtype)


def from_dlpack(array, *, device=None, copy=None):
    device_type, device_id = array.__dlpack_device__()
    if int(device_type) != 2:
        raise ValueError(f"Unsupported device type {device_type}")
    with Device(int(device_id)):
        capsule = array.__dlpack__(stream=_stream_ptr() or LEGACY_DEFAULT_STREAM)
    if not isinstance(capsule, _Capsule):
        raise StandInError(f"{type(array).__name__}.__dlpack__ gave no stand-in capsule")
    return capsule.array


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def _on_device(name, args, kwargs=None, view_of=None):
    """NumPy's ``name`` on the current device's arrays: a view of ``view_of`` where NumPy's is a view, else a new
    array (an allocation and a launch)."""
    if view_of is not None:  # a view: no kernel, so no device check
        return view_of._view(getattr(np, name)(view_of._host, *args[1:]))
    host = getattr(np, name)(*_unwrap(tuple(args)), **{k: _unwrap(v) for k, v in (kwargs or {}).items()})
    return _result(host)


def _no_out(out):
    if out is not None:
        raise StandInError("out= is not supported by the stand-in")


def broadcast_to(array, shape):
    return _on_device("broadcast_to", (array, shape), view_of=array)


def moveaxis(a, source, destination):
    return _on_device("moveaxis", (a, source, destination), view_of=a)


def concatenate(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    _no_out(out)
    return _on_device("concatenate", (list(tup),), dict(axis=axis, dtype=dtype, casting=casting))


def stack(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    _no_out(out)
    return _on_device("stack", (list(tup),), dict(axis=axis, dtype=dtype, casting=casting))


def pad(array, pad_width, mode="constant", **kwargs):
    return _on_device("pad", (array, pad_width), dict(mode=mode, **kwargs))


def isnan(x, /, out=None, *, casting="same_kind", dtype=None):
    _no_out(out)
    return _on_device("isnan", (x,))


def abs(x, /, out=None, *, casting="same_kind", dtype=None):  # noqa: A001  (CuPy's name)
    _no_out(out)
    return _on_device("abs", (x,))


def clip(a, a_min, a_max, out=None):
    _no_out(out)
    return _on_device("clip", (a, a_min, a_max))


def take(a, indices, axis=None, out=None):  # Dask registers it for CuPy chunks
    _no_out(out)
    return _on_device("take", (a, indices), dict(axis=axis))


def tensordot(a, b, axes=2):  # Dask registers it for CuPy chunks
    return _on_device("tensordot", (a, b), dict(axes=axes))


def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    return _on_device("allclose", (a, b), dict(rtol=rtol, atol=atol, equal_nan=equal_nan))


# --- kernels --------------------------------------------------------------------------------------------


class RawModule:
    """cupy.RawModule: compiled by the emulator; its kernels launch on the current device and stream."""

    def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                 enable_cooperative_groups=False, name_expressions=None, jitify=None):
        if not isinstance(options, tuple):
            raise TypeError(f"options must be a tuple, got {type(options).__name__}")
        self._emulated = _emulator.RawModule(code=code, path=path, options=options,
                                             name_expressions=name_expressions)
        self._names = tuple(name_expressions or ())

    @property
    def name_expressions(self):
        return self._names

    def compile(self, log_stream=None):
        record.events.append(Event("compile", ",".join(self._names), _current_device(), -1))
        self._emulated.compile()

    def get_function(self, name):
        if name not in self._names:
            raise StandInError(f"{name!r} was not given in name_expressions (CuPy cannot look it up)")
        return RawKernel._of(self._emulated.get_function(name))


class RawKernel:
    """A kernel of a RawModule, or ``RawKernel(code, name)``'s ``extern "C"`` one (the benchmark's FMA ceiling):
    ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, code, name, options=(), backend="nvrtc", translate_cucomplex=False, *,
                 enable_cooperative_groups=False, jitify=None):
        if not isinstance(options, tuple):
            raise TypeError(f"options must be a tuple, got {type(options).__name__}")
        self._function = _emulator.RawModule(code=code, options=options).get_function(name)

    @classmethod
    def _of(cls, function):
        kernel = cls.__new__(cls)
        kernel._function = function
        return kernel

    @property
    def name(self):
        return self._function.name

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._function.max_dynamic_shared_size_bytes

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        self._function.max_dynamic_shared_size_bytes = value

    def __call__(self, grid, block, args, *, shared_mem=0):
        function = self._function
        launch_args = tuple(_kernel_argument(function, i, a) for i, a in enumerate(args))
        _enqueue("launch", function.name, lambda: function(grid, block, launch_args, shared_mem=shared_mem))


def _kernel_argument(function, index, value):
    where = f"{function.name}: argument {index}"
    if isinstance(value, ndarray):
        return _readable(value, where)
    if isinstance(value, np.ndarray):
        raise StandInError(f"{where} is a NumPy array; a kernel takes device arrays")
    if index < len(function.params) and function.params[index].endswith("*"):
        if isinstance(value, np.uint64) and value == 0:
            return None
        raise StandInError(f"{where} is a pointer: pass a device array or numpy.uint64(0), got {value!r}")
    return value


# --- random numbers ---------------------------------------------------------------------------------------


class Generator:
    """cupy.random.Generator: NumPy's generator, its draws written to new arrays on the current device."""

    def __init__(self, bit_generator):
        self._numpy = np.random.default_rng(bit_generator)

    def random(self, size=None, dtype=np.float64, out=None):
        _no_out(out)
        return _result(self._numpy.random(size, dtype=dtype))

    def standard_normal(self, size=None, dtype=np.float64, out=None):
        _no_out(out)
        return _result(self._numpy.standard_normal(size, dtype=dtype))


def default_rng(seed=None):
    return Generator(seed)


# --- the runtime ------------------------------------------------------------------------------------------


def getDeviceCount():
    return DEVICE_COUNT


def getDeviceProperties(device):
    _check_device_id(device)
    return {"name": f"Stand-in GPU {device}".encode(), "major": 9, "minor": 0}


def deviceSynchronize():
    _synchronise("deviceSynchronize")


# --- the modules ----------------------------------------------------------------------------------------

# name in CuPy: this module's object
_RUNTIME = {"getDeviceCount": getDeviceCount, "getDeviceProperties": getDeviceProperties,
            "deviceSynchronize": deviceSynchronize, "CUDARuntimeError": CUDARuntimeError}
_CUDA = {"Device": Device, "Stream": Stream, "Event": TimingEvent, "get_elapsed_time": get_elapsed_time, "ExternalStream": ExternalStream, "Graph": Graph,
         "MemoryPointer": MemoryPointer, "MemoryPool": MemoryPool, "set_allocator": set_allocator,
         "get_allocator": get_allocator, "get_current_stream": get_current_stream,
         "alloc_pinned_memory": alloc_pinned_memory}
_CUPY = {"ndarray": ndarray, "RawModule": RawModule, "RawKernel": RawKernel, "empty": empty, "zeros": zeros,
         "asarray": asarray, "empty_like": empty_like, "copyto": copyto, "abs": abs, "clip": clip, "from_dlpack": from_dlpack, "asnumpy": asnumpy, "get_default_memory_pool":
         get_default_memory_pool, "broadcast_to": broadcast_to, "moveaxis": moveaxis, "concatenate": concatenate,
         "stack": stack, "pad": pad, "isnan": isnan, "allclose": allclose, "take": take, "tensordot": tensordot}
# NumPy functions that run on the arrays through __array_function__ as CuPy's do (Dask's reductions call them)
ARRAY_FUNCTIONS = ("sum", "mean", "prod", "max", "min", "amax", "amin", "any", "all", "where", "full_like",
                   "zeros_like", "ones_like", "empty_like", "nansum", "count_nonzero", "squeeze", "expand_dims",
                   "reshape", "transpose", "result_type", "may_share_memory", "shares_memory")
_DTYPES = ("float16", "float32", "float64", "uint8", "uint16", "int32", "int64", "bool_")
# (CuPy's path to the real object, the stand-in) for each class and callable that check_against compares
_RANDOM = {"Generator": Generator, "default_rng": default_rng}
CHECKED = ([(f"cuda.runtime.{n}", o) for n, o in _RUNTIME.items()] + [(f"cuda.{n}", o) for n, o in _CUDA.items()]
           + [(f"random.{n}", o) for n, o in _RANDOM.items()] + [(n, o) for n, o in _CUPY.items()])
VERSION = "14.2.0"  # the CuPy release the stand-in's behaviour follows (precompile's disk cache, asarray)


def modules():
    """{name: module} for sys.modules: cupy, cupy.cuda, cupy.cuda.runtime, cupy.cuda.memory, cupy.random."""
    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.__dict__.update(_RUNTIME)
    memory = types.ModuleType("cupy.cuda.memory")
    memory.__dict__.update({n: _CUDA[n] for n in ("MemoryPointer", "MemoryPool", "set_allocator", "get_allocator")})
    cuda = types.ModuleType("cupy.cuda")
    cuda.__dict__.update(_CUDA, runtime=runtime, memory=memory)
    random = types.ModuleType("cupy.random")
    random.__dict__.update(_RANDOM)
    cupy = types.ModuleType("cupy")
    cupy.__dict__.update(_CUPY, cuda=cuda, random=random, dtype=np.dtype, __version__=VERSION,
                         **{n: getattr(np, n) for n in _DTYPES})
    cupy.__stand_in__ = True
    return {"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.runtime": runtime, "cupy.cuda.memory": memory,
            "cupy.random": random}


def install() -> types.ModuleType:
    """The stand-in in a fresh state as ``cupy`` in sys.modules, for a whole process (bench/gpu.sh's rehearsal;
    tests install it per test with the ``standin_cupy`` fixture); returns it."""
    sys.modules.update(modules())
    reset()
    return sys.modules["cupy"]


def reset():
    """A fresh state: device 0 current, null streams, the default allocator, nothing recorded."""
    global _state
    _state = _State()
    record.clear()
    _Allocation.live.clear()


# --- strictness against the installed CuPy ---------------------------------------------------------------


_TYPED_PARAMETER = re.compile(r"^(?:(?:unsigned |const )?[A-Za-z_][\w.]*\s+)(?=[A-Za-z_*])")


def real_signature(obj):
    """The call signature of a CuPy object: from its Cython docstring's first line, or inspect's; None where it
    exposes only (*args, **kwargs)."""
    for doc in (getattr(obj, "__doc__", None), getattr(getattr(obj, "__init__", None), "__doc__", None)):
        line = (doc or "").strip().split("\n")[0]
        match = re.match(r"^[\w.]+\((.*)\)\s*(?:->.*)?$", line)
        if match:
            parameters = [_TYPED_PARAMETER.sub("", p.strip()).replace("\\*", "*") for p in match.group(1).split(",")]
            namespace = {}
            source = f"def f({', '.join(p for p in parameters if p and p != 'self')}): pass"
            exec(source, {"numpy": np}, namespace)  # noqa: S102  (defaults such as numpy.float64 name NumPy)
            return inspect.signature(namespace["f"])
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    kinds = {p.kind for p in signature.parameters.values() if p.name != "self"}
    return None if kinds <= {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} else signature


def _parameters(signature):
    return [(p.name, p.kind, p.default) for p in signature.parameters.values() if p.name != "self"]


def _compare(path, real, standin, problems):
    theirs = real_signature(real)
    ours = inspect.signature(standin)
    if theirs is not None and _parameters(ours) != _parameters(theirs):
        problems.append(f"{path}{ours} but CuPy has {path}{theirs}")
    if not inspect.isclass(standin):
        return
    for name, member in vars(standin).items():
        if name.startswith("_") and name not in _CHECKED_DUNDERS:
            continue
        if not hasattr(real, name):
            problems.append(f"{path}.{name}: CuPy has no such attribute")
        elif inspect.isfunction(member) and name not in _OPERATORS and not name.startswith("__"):
            theirs = real_signature(getattr(real, name))
            ours = inspect.signature(member)
            if theirs is not None and _parameters(ours) != _parameters(theirs):
                problems.append(f"{path}.{name}{ours} but CuPy has {path}.{name}{theirs}")


_CHECKED_DUNDERS = ("__cuda_array_interface__", "__dlpack__", "__dlpack_device__", "__enter__", "__exit__",
                    "__array_function__", "__array_ufunc__")


def check_against(cupy) -> list:
    """Every difference between the stand-in and the installed ``cupy`` (an empty list: none)."""
    problems = []
    for path, standin in CHECKED:
        real = cupy
        try:
            for part in path.split("."):
                real = getattr(real, part)
        except AttributeError:
            problems.append(f"cupy.{path}: CuPy has no such name")
            continue
        _compare(f"cupy.{path}", real, standin, problems)
    problems += [f"cupy.{name}: CuPy has no such function" for name in ARRAY_FUNCTIONS if not hasattr(cupy, name)]
    return problems
