"""The Python of ``bench/gpu.sh``'s steps: the environment, a smoke test of every public path, and the
small programs that Nsight Compute and compute-sanitizer run.

``python -m bench.gpu_smoke STEP [--rehearse]``, STEP one of:

- ``environment``: GPU, driver, CuPy, CUDA runtime and NVRTC versions, whether
  CuPy finds the CUDA headers it compiles with (a float16 kernel of CuPy's
  own), the benchmark's peers that import, and the seconds from
  ``import cussim`` to the first ``cussim.ssim`` result (then a second call);
- ``smoke``: every public path once on CuPy arrays against the float64
  reference (cussim's NumPy path), one line each: ok or FAIL, the largest
  error with its tolerance (docs/spec.rst, section 7), seconds including
  compilation; exit status 1 when a line fails;
- ``profile``: ``ssim`` then ``ssim_with_gradient`` at 1x3x1080x1920
  float32, once each: the three hot launches (the value's forward, the exact
  gradient's forward, the backward) that bench/gpu.sh profiles;
- ``sanitize``: one small ``ssim_with_gradient`` and ``ms_ssim_with_gradient``
  through CUDA's own allocator (no memory pool, so compute-sanitizer knows
  every buffer's bounds).

``--rehearse`` runs the same code without a GPU: :mod:`bench.cupy_standin` in
CuPy's place (its arrays carry a device and a stream, the kernels run on the
CPU emulator, device and stream mistakes fail as on a GPU), PyTorch on the
CPU, small sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DTYPES = ("float32", "float64", "float16", "uint8", "uint16")
# (value: largest absolute error, gradient: relative L2 error) allowed, docs/spec.rst section 7; float16
# inputs are computed in float32 but their gradient is rounded to float16.
TOLERANCES = {"float64": (1e-10, 1e-9), "float16": (1e-5, 1e-3)}
FLOAT32_TOLERANCES = (1e-5, 1e-4)
PROFILE_SHAPE = (1, 3, 1080, 1920)


@dataclass(frozen=True)
class Sizes:
    """The shapes of a run: ``image`` for most checks, ``ms`` for MS-SSIM's five scales (sides above 160),
    ``volume`` for volumes (two MS-SSIM scales), ``large`` for the full-HD case."""

    image: tuple
    ms: tuple
    volume: tuple
    large: tuple


GPU_SIZES = Sizes(image=(2, 3, 67, 91), ms=(2, 3, 176, 200), volume=(2, 1, 40, 44, 48), large=(1, 3, 1080, 1920))
REHEARSAL_SIZES = Sizes(image=(1, 2, 21, 70), ms=(1, 1, 176, 178), volume=(1, 1, 24, 25, 26), large=(1, 3, 36, 72))


class Skip(Exception):
    """A check that does not apply here (the reason is its message)."""


def tolerances(dtype) -> tuple:
    """(value, gradient) tolerances of inputs of ``dtype``."""
    return TOLERANCES.get(np.dtype(dtype).name, FLOAT32_TOLERANCES)


def images(shape, dtype="float32", seed=0) -> tuple:
    """A host pair (x, y), y a noisy x; integer dtypes span their whole range."""
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    y = np.clip(x + 0.15 * rng.standard_normal(shape), 0, 1)
    if np.dtype(dtype).kind == "u":
        top = np.iinfo(dtype).max
        return (x * top).round().astype(dtype), (y * top).round().astype(dtype)
    return x.astype(dtype), y.astype(dtype)


@contextlib.contextmanager
def reference_backend():
    """Within the block NumPy inputs take the float64 reference, whatever CUSSIM_NUMPY_BACKEND says."""
    saved = os.environ.get("CUSSIM_NUMPY_BACKEND")
    os.environ["CUSSIM_NUMPY_BACKEND"] = "reference"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("CUSSIM_NUMPY_BACKEND")
        else:
            os.environ["CUSSIM_NUMPY_BACKEND"] = saved


def reference(function, *arrays, **options):
    """``function`` of cussim on host copies of ``arrays``, by the float64 reference."""
    with reference_backend():
        return function(*(np.asarray(a) for a in arrays), **options)


def value_error(got, expected) -> float:
    """Largest absolute difference (NaN when either holds a NaN)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)))


def gradient_error(got, expected) -> float:
    """The L2 norm of the difference over that of ``expected``."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(got - expected) / np.linalg.norm(expected))


@contextlib.contextmanager
def device_allocations_refused():
    """Within the block, any CuPy allocation on the GPU raises an AssertionError (the in-place paths' promise)."""
    import cupy

    def refuse(size):
        raise AssertionError(f"allocated {size} bytes on the device")

    cupy.cuda.set_allocator(refuse)
    try:
        yield
    finally:
        cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)


class Smoke:
    """The smoke test's checks on ``xp`` (CuPy, or bench.cupy_standin) and, for cussim.torch, ``device``."""

    def __init__(self, xp, sizes: Sizes, on_gpu: bool):
        import cussim

        self.xp, self.sizes, self.on_gpu, self.cussim = xp, sizes, on_gpu, cussim

    def host(self, array):
        if hasattr(array, "detach"):  # a torch tensor
            return array.detach().cpu().numpy()
        return self.xp.asnumpy(array)

    def compare(self, got: dict, expected: dict, dtype="float32") -> list:
        """[(measure, error, tolerance)] for every key; keys ending in "gradient" compare as gradients."""
        value_tol, gradient_tol = tolerances(dtype)
        measures = []
        for key, value in got.items():
            if key.endswith("gradient"):
                measures.append((key, gradient_error(self.host(value), expected[key]), gradient_tol))
            else:
                measures.append((key, value_error(self.host(value), expected[key]), value_tol))
        return measures

    def value_and_gradient(self, function, gradient_function, shape, dtype="float32", **options) -> list:
        x, y = images(shape, dtype)
        dx, dy = self.xp.asarray(x), self.xp.asarray(y)
        value = function(dx, dy, **options)
        with_gradient, grad = gradient_function(dx, dy, **options)
        expected, expected_grad = reference(gradient_function, x, y, **options)
        return self.compare({"value": value, "value with gradient": with_gradient, "gradient": grad},
                            {"value": expected, "value with gradient": expected, "gradient": expected_grad}, dtype)

    def checks(self) -> list:
        """(name, check) of every line; a check returns [(measure, error, tolerance)] or raises Skip."""
        c, s = self.cussim, self.sizes
        shape, ms = "x".join(map(str, s.image)), "x".join(map(str, s.ms))
        lines = [(f"ssim, ssim_with_gradient {dtype} {shape}",
                  lambda dtype=dtype: self.value_and_gradient(c.ssim, c.ssim_with_gradient, s.image, dtype))
                 for dtype in DTYPES]
        lines += [
            (f"dssim, dssim_with_gradient into out, grad, make_workspace's workspace {shape}: no allocation",
             lambda: self.preallocated(c.dssim, c.dssim_with_gradient, c.make_workspace, s.image)),
            (f"ms_ssim_with_gradient into out, grad, make_ms_ssim_workspace's workspace {ms}: no allocation",
             lambda: self.preallocated(c.ms_ssim, c.ms_ssim_with_gradient, c.make_ms_ssim_workspace, s.ms,
                                       channel_axis=1)),
            (f"dssim_with_gradient captured in a CUDA graph, replayed {shape}", self.graph),
            (f"l1_dssim_loss_with_gradient {shape}",
             lambda: self.value_and_gradient(c.l1_dssim_loss, c.l1_dssim_loss_with_gradient, s.image)),
            (f"ssim_map reflect padding, uniform 7x7 window {shape}", self.ssim_map),
        ]
        lines += [(f"masked ({mode} mode, a float32 mask per image): {function.__name__} {shape}",
                   lambda mode=mode, function=function: self.masked(function, s.image, mode))
                  for mode in ("mean", "normalized")
                  for function in (c.ssim_with_gradient, c.l1_dssim_loss_with_gradient)]
        lines += [(f"masked (mean mode, a float32 mask per image): ms_ssim_with_gradient {variant} {ms}",
                   lambda variant=variant: self.masked(c.ms_ssim_with_gradient, s.ms, "mean", variant=variant,
                                                       channel_axis=1))
                  for variant in ("pytorch_msssim", "torchmetrics")]
        lines += [(f"ms_ssim, ms_ssim_with_gradient {variant} {ms}",
                   lambda variant=variant: self.value_and_gradient(c.ms_ssim, c.ms_ssim_with_gradient, s.ms,
                                                                   variant=variant, channel_axis=1))
                  for variant in ("pytorch_msssim", "tensorflow", "torchmetrics")]
        volume = "x".join(map(str, s.volume))
        lines += [
            (f"volumes: ssim, ssim_with_gradient {volume}",
             lambda: self.value_and_gradient(c.ssim, c.ssim_with_gradient, s.volume, spatial_dims=3)),
            *((f"volumes: masked ({mode} mode, a float32 mask per volume): ssim_with_gradient {volume}",
               lambda mode=mode: self.masked(c.ssim_with_gradient, s.volume, mode, spatial_dims=3))
              for mode in ("mean", "normalized")),
            # float64's normalized forward at win_size 15 keeps three window planes in its ring
            (f"volumes: masked (normalized mode), float64, win_size 15: ssim_with_gradient {volume}",
             lambda: self.masked(c.ssim_with_gradient, s.volume, "normalized", spatial_dims=3, dtype="float64",
                                 win_size=15)),
            (f"volumes: ms_ssim, ms_ssim_with_gradient, 2 scales {volume}",
             lambda: self.value_and_gradient(c.ms_ssim, c.ms_ssim_with_gradient, s.volume, spatial_dims=3,
                                             weights=(0.5, 0.5))),
            (f"volumes: masked (mean mode, a float32 mask per volume): ms_ssim_with_gradient, 2 scales {volume}",
             lambda: self.masked(c.ms_ssim_with_gradient, s.volume, "mean", spatial_dims=3, weights=(0.5, 0.5))),
            (f"structural_similarity uint8 channel_axis=-1 full gradient {shape}", self.structural_similarity),
            (f"ssim, ssim_with_gradient float32 {'x'.join(map(str, s.large))}",
             lambda: self.value_and_gradient(c.ssim, c.ssim_with_gradient, s.large)),
            (f"cussim.torch ssim, l1_dssim_loss backward on a side stream {shape}", self.torch_side_stream),
            (f"cussim.torch.fused_ssim drop-in, same and valid {shape}", self.fused_ssim_drop_in),
            (f"cussim.torch.pytorch_msssim drop-in, ssim and ms_ssim {ms}",
             self.pytorch_msssim_drop_in),
            (f"inputs on a second GPU {shape}", self.second_gpu),
        ]
        return lines

    def masked(self, gradient_function, shape, mask_mode, spatial_dims=2, dtype="float32", **extra) -> list:
        """A gradient function's value and gradient with a mask (one per image, a quarter of its weights 0, the
        others in (0, 2)) against the reference, per image (per volume with ``spatial_dims=3``); ``extra``: more
        options (MS-SSIM's)."""
        x, y = images(shape, dtype)
        rng = np.random.default_rng(1)
        mask_shape = (shape[0], 1, *shape[-spatial_dims:])
        mask = np.where(rng.random(mask_shape) < 0.25, 0.0, 2 * rng.random(mask_shape)).astype(dtype)
        options = dict(mask_mode=mask_mode, axis=tuple(range(1, len(shape))), spatial_dims=spatial_dims, **extra)
        value, grad = gradient_function(self.xp.asarray(x), self.xp.asarray(y), mask=self.xp.asarray(mask),
                                        **options)
        expected, expected_grad = reference(gradient_function, x, y, mask=mask, **options)
        return self.compare({"value": value, "gradient": grad}, {"value": expected, "gradient": expected_grad},
                            dtype)

    def preallocated(self, value_function, gradient_function, make_workspace, shape, **options) -> list:
        """The value, then the value with its gradient into the caller's out, grad and workspace twice: the
        second call allocates nothing (counted by cussim; on a GPU CuPy's allocator refuses too) and returns the
        caller's buffers."""
        from cussim import _arrays

        xp = self.xp
        x, y = images(shape)
        dx, dy = xp.asarray(x), xp.asarray(y)
        value = value_function(dx, dy, **options)
        out, grad = xp.empty((), xp.float32), xp.empty(x.shape, xp.float32)
        workspace = make_workspace(dx, **{k: v for k, v in options.items() if k in ("variant", "channel_axis")})
        gradient_function(dx, dy, out=out, grad=grad, workspace=workspace, **options)  # compiles, makes the plans
        before = _arrays.allocations
        with device_allocations_refused() if self.on_gpu else contextlib.nullcontext():
            returned_out, returned_grad = gradient_function(dx, dy, out=out, grad=grad, workspace=workspace, **options)
        if _arrays.allocations != before or returned_out is not out or returned_grad is not grad:
            raise AssertionError(f"{_arrays.allocations - before} buffers allocated, or not the caller's returned")
        expected, expected_grad = reference(gradient_function, x, y, **options)
        return self.compare({"value": value, "value into out": out, "gradient": grad},
                            {"value": expected, "value into out": expected, "gradient": expected_grad})

    def graph(self) -> list:
        """The value with its gradient captured in a CUDA graph and replayed; every step on one non-blocking stream,
        so that the copies, the direct call, the capture, the fills and the replay run in order."""
        c, cupy = self.cussim, self.xp
        x, y = images(self.sizes.image)
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            dx, dy = cupy.asarray(x), cupy.asarray(y)
            out, grad = cupy.empty((), cupy.float32), cupy.empty(x.shape, cupy.float32)
            workspace = c.make_workspace(dx)
            c.dssim_with_gradient(dx, dy, out=out, grad=grad, workspace=workspace)
            direct_out, direct_grad = out.copy(), grad.copy()
            stream.begin_capture()
            try:
                c.dssim_with_gradient(dx, dy, out=out, grad=grad, workspace=workspace)
            finally:  # a stream left capturing would fail every later line
                graph = stream.end_capture()
            out.fill(np.nan)
            grad.fill(np.nan)
            graph.launch(stream)
        stream.synchronize()
        return [("replayed value against the direct call", value_error(out.get(), direct_out.get()), 0.0),
                ("replayed gradient against the direct call", value_error(grad.get(), direct_grad.get()), 0.0)]

    def ssim_map(self) -> list:
        options = dict(padding="reflect", window="uniform", win_size=7)
        x, y = images(self.sizes.image)
        got = self.cussim.ssim_map(self.xp.asarray(x), self.xp.asarray(y), **options)
        return self.compare({"map": got}, {"map": reference(self.cussim.ssim_map, x, y, **options)})

    def structural_similarity(self) -> list:
        x, y = images(self.sizes.image[-2:] + (3,), "uint8")
        options = dict(channel_axis=-1, full=True, gradient=True)
        got = self.cussim.structural_similarity(self.xp.asarray(x), self.xp.asarray(y), **options)
        expected = reference(self.cussim.structural_similarity, x, y, **options)
        keys = ("value", "skimage's gradient", "map")
        return self.compare(dict(zip(keys, got)), dict(zip(keys, expected)))

    def tensors(self, shape):
        """(x requiring a gradient, y, the host pair) as float32 tensors on the GPU (the CPU when rehearsing)."""
        import torch

        x, y = images(shape)
        device = "cuda" if self.on_gpu else "cpu"
        return (torch.tensor(x, device=device, requires_grad=True), torch.tensor(y, device=device), (x, y))

    def side_stream(self):
        """A PyTorch stream other than the current one, made current within the block (none when rehearsing)."""
        if not self.on_gpu:
            return contextlib.nullcontext()
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        return torch.cuda.stream(stream)

    def backward(self, function, shape, expected_function, **expected_options) -> list:
        """``function(x, y)`` and x's gradient through autograd against ``expected_function`` of the reference."""
        import torch

        x, y, (hx, hy) = self.tensors(shape)
        with self.side_stream():
            value = function(x, y)
            value.backward()
            got = {"value": value, "gradient": x.grad}
            got = {key: tensor.detach().cpu() for key, tensor in got.items()}
        if self.on_gpu:
            torch.cuda.synchronize()
        expected, expected_grad = reference(expected_function, hx, hy, **expected_options)
        return self.compare(got, {"value": expected, "gradient": expected_grad})

    def torch_side_stream(self) -> list:
        import cussim.torch as ct

        c, shape = self.cussim, self.sizes.image
        return [(f"ssim {measure}", error, tol) for measure, error, tol in
                self.backward(ct.ssim, shape, c.ssim_with_gradient)] + \
               [(f"l1_dssim_loss {measure}", error, tol) for measure, error, tol in
                self.backward(lambda x, y: ct.l1_dssim_loss(x, y, weight=0.2), shape, c.l1_dssim_loss_with_gradient,
                              weight=0.2)]

    def fused_ssim_drop_in(self) -> list:
        from cussim.torch import fused_ssim

        measures = []
        for padding in ("same", "valid"):
            measures += [(f"{padding} {m}", e, t) for m, e, t in self.backward(
                lambda x, y, padding=padding: fused_ssim(x, y, padding=padding), self.sizes.image,
                self.cussim.ssim_with_gradient, padding=padding)]
        return measures

    def pytorch_msssim_drop_in(self) -> list:
        from cussim.torch import pytorch_msssim

        c, shape = self.cussim, self.sizes.ms
        return [(f"ssim {m}", e, t) for m, e, t in self.backward(
                    lambda x, y: pytorch_msssim.ssim(x, y, data_range=1.0), shape, c.ssim_with_gradient,
                    padding="valid")] + \
               [(f"ms_ssim {m}", e, t) for m, e, t in self.backward(
                    lambda x, y: pytorch_msssim.ms_ssim(x, y, data_range=1.0), shape, c.ms_ssim_with_gradient,
                    channel_axis=1)]

    def second_gpu(self) -> list:
        if self.xp.cuda.runtime.getDeviceCount() < 2:
            raise Skip("one GPU here")
        c, xp = self.cussim, self.xp
        x, y = images(self.sizes.image)
        with xp.cuda.Device(1):
            dx, dy = xp.asarray(x), xp.asarray(y)
        value, grad = c.ssim_with_gradient(dx, dy)
        if value.device.id != 1 or grad.device.id != 1:
            raise AssertionError(f"results on devices {value.device.id} and {grad.device.id}, not 1")
        expected, expected_grad = reference(c.ssim_with_gradient, x, y)
        return self.compare({"value": value, "gradient": grad}, {"value": expected, "gradient": expected_grad})


def _share_of_tolerance(measure) -> float:
    """error / tolerance of a (name, error, tolerance); infinite for a NaN or any error above a zero tolerance."""
    _, error, tolerance = measure
    if not error <= tolerance:
        return np.inf
    return error / tolerance if tolerance else 0.0


def run_checks(checks, stream=sys.stdout) -> int:
    """Runs each (name, check), one line each; returns the number of lines that failed."""
    failures = 0
    for name, check in checks:
        start = time.perf_counter()
        try:
            measures = check()
        except Skip as reason:
            print(f"skip  {name}: {reason}", file=stream, flush=True)
            continue
        except Exception as exc:  # noqa: BLE001  (every path gets its line, whatever fails)
            failures += 1
            print(f"FAIL  {name}: {type(exc).__name__}: {exc}", file=stream, flush=True)
            continue
        seconds = time.perf_counter() - start
        passed = all(error <= tolerance for _, error, tolerance in measures)  # a NaN error fails
        measure, error, tolerance = max(measures, key=_share_of_tolerance)
        failures += not passed
        print(f"{'ok' if passed else 'FAIL':<5} {name}: largest error {error:.1e} ({measure}, tolerance "
              f"{tolerance:.0e}), {seconds:.2f} s", file=stream, flush=True)
    return failures


def array_module(rehearse: bool):
    """CuPy, or bench.cupy_standin as ``cupy`` when rehearsing (cussim.torch's CPU tensors on the emulator)."""
    if rehearse:
        os.environ["CUSSIM_NUMPY_BACKEND"] = "emulator"
        from bench import cupy_standin

        return cupy_standin.install()
    import cupy

    return cupy


def environment(rehearse: bool) -> int:
    """Prints the versions and devices, CuPy's header check, the peers, and the seconds to a first result."""
    xp = array_module(rehearse)
    stand_in = " (the stand-in, bench/cupy_standin.py)" if getattr(xp, "__stand_in__", False) else ""
    print(f"python {sys.version.split()[0]}; numpy {np.__version__}; array module {xp.__version__}{stand_in}")
    if not rehearse:
        runtime = xp.cuda.runtime
        print(f"CUDA runtime {runtime.runtimeGetVersion()}, driver {runtime.driverGetVersion()}, "
              f"NVRTC {'.'.join(map(str, xp.cuda.nvrtc.getVersion()))}, CUDA path {xp.cuda.get_cuda_path()}")
        for device in range(runtime.getDeviceCount()):
            p = runtime.getDeviceProperties(device)
            print(f"device {device}: {p['name'].decode()}, sm_{p['major']}{p['minor']}, "
                  f"{p['multiProcessorCount']} SMs, {p['totalGlobalMem'] / 2**30:.1f} GiB, "
                  f"L2 {p['l2CacheSize'] / 2**20:.0f} MiB")
        try:  # CuPy's float16 kernels include cuda_fp16.h: they compile only where CuPy finds the headers
            float(xp.arange(4, dtype=xp.float16).sum())
            print("CuPy finds the CUDA headers: a float16 kernel of CuPy's own compiled")
        except Exception as exc:  # noqa: BLE001
            print(f"CuPy does NOT find the CUDA headers: {type(exc).__name__}: {exc}")
    _peers_report()
    x, y = images((1, 3, 256, 256))
    dx, dy = xp.asarray(x), xp.asarray(y)
    start = time.perf_counter()
    import cussim

    first = float(cussim.ssim(dx, dy))
    first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    float(cussim.ssim(dx, dy))
    print(f"import cussim to the first cussim.ssim result (1x3x256x256 float32, compiling): {first_seconds:.2f} s; "
          f"the second call {1e3 * (time.perf_counter() - start):.2f} ms; value {first:.6f}")
    if not rehearse:  # the volumes' forward sizes its ring by the architecture its kernel was compiled for
        from cussim import _kernels, _launch3d

        kernel = _kernels.get_kernel("ssim3d", "ssim3d_forward<float, 5>", dx)
        arch = _launch3d.kernel_arch(kernel)
        print(f"ssim3d_forward<float, 5>: ptx_version {arch}, binary_version {kernel.binary_version}, "
              f"{kernel.num_regs} registers, ring {_launch3d.forward_shared_bytes(np.float32, 5, None, arch)} bytes")
    return 0


def _peers_report() -> None:
    """One line per benchmark peer: importable or the reason it is not (fussim's kernels load on first call)."""
    from bench import peers

    for group in (peers.SSIM_PEERS, peers.MS_SSIM_PEERS):
        found, reasons = peers.load(group)
        print("peers that import: " + (", ".join(sorted({p.name for p in found})) or "none"))
        for reason in reasons:
            print(f"  {reason}")


def smoke(rehearse: bool) -> int:
    xp = array_module(rehearse)
    checks = Smoke(xp, REHEARSAL_SIZES if rehearse else GPU_SIZES, on_gpu=not rehearse).checks()
    failures = run_checks(checks)
    print(f"smoke: {len(checks)} lines, {failures} FAIL")
    return 1 if failures else 0


def profile(rehearse: bool) -> int:
    """The hot launches, once each: ssim (forward, value) then ssim_with_gradient (forward, exact; backward)."""
    xp = array_module(rehearse)
    import cussim

    x, y = images(REHEARSAL_SIZES.large if rehearse else PROFILE_SHAPE)
    dx, dy = xp.asarray(x), xp.asarray(y)
    value = float(cussim.ssim(dx, dy))
    with_gradient, grad = cussim.ssim_with_gradient(dx, dy)
    print(f"profiled: ssim {value:.6f}, ssim_with_gradient {float(with_gradient):.6f}, "
          f"|gradient| {float(xp.abs(grad).max()):.3e}")
    return 0


def sanitize(rehearse: bool) -> int:
    """A small forward + backward and an MS-SSIM with its gradient, each buffer its own allocation."""
    xp = array_module(rehearse)
    import cussim

    if not rehearse:
        xp.cuda.set_allocator(None)  # cudaMalloc per buffer: the sanitizer sees each one's bounds
    x, y = images(REHEARSAL_SIZES.image if rehearse else (1, 3, 70, 90))
    value, grad = cussim.ssim_with_gradient(xp.asarray(x), xp.asarray(y))
    mx, my = images(REHEARSAL_SIZES.ms if rehearse else (1, 1, 176, 180))
    ms_value, ms_grad = cussim.ms_ssim_with_gradient(xp.asarray(mx), xp.asarray(my))
    print(f"sanitized: ssim {float(value):.6f}, ms_ssim {float(ms_value):.6f}, gradients finite: "
          f"{bool(np.isfinite(xp.asnumpy(grad)).all() and np.isfinite(xp.asnumpy(ms_grad)).all())}")
    return 0


NCU_METRICS = {"Duration": "{} us", "Compute (SM) Throughput": "SM {} %", "Memory Throughput": "memory {} %",
               "DRAM Throughput": "DRAM {} %", "Achieved Occupancy": "occupancy {} %",
               "Registers Per Thread": "{} registers"}
_NCU_KERNEL = re.compile(r"^  (?:void )?(\S.*) \(\d+, \d+, \d+\)x\(\d+, \d+, \d+\), Context")
_NCU_METRIC = re.compile(r"^\s+(" + "|".join(map(re.escape, NCU_METRICS)) + r")\s+\S+\s+([\d.,]+)\s*$")


def without_parameters(signature: str) -> str:
    """A demangled kernel name without its trailing parameter list: ``f<float, (E)1>(const float *)`` -> ``f<float, (E)1>``."""
    if not signature.endswith(")"):
        return signature
    depth = 0
    for index in range(len(signature) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(signature[index], 0)
        if depth == 0:
            return signature[:index]
    return signature


def ncu_lines(details: str) -> list:
    """One line per profiled launch of ``ncu --page details`` output: its name and the first value of
    each of NCU_METRICS (Speed Of Light's memory throughput, in %, comes before Memory Workload Analysis's)."""
    launches = []
    for line in details.splitlines():
        kernel = _NCU_KERNEL.match(line)
        if kernel:
            launches.append((without_parameters(kernel.group(1))[:90], {}))
            continue
        metric = _NCU_METRIC.match(line)
        if metric and launches:
            launches[-1][1].setdefault(metric.group(1), metric.group(2))
    return [f"{name}: " + ", ".join(form.format(values[m]) for m, form in NCU_METRICS.items() if m in values)
            for name, values in launches]


def bench_lines(record: dict) -> list:
    """The benchmark's record in a few lines: the ceilings, then per case cussim's time and share of its floor
    (convention "same"; MS-SSIM's pytorch_msssim) and every peer's speed-up (the peer's time over cussim's, in
    the peer's convention)."""
    lines = []
    if "copy_bytes_per_second" in record:
        lines.append(f"ceilings: copy {record['copy_bytes_per_second'] / 1e9:.0f} GB/s, "
                     f"FMA {record['fma_per_second'] / 1e12:.1f} T/s ({record['machine']})")
    cases = {}
    for row in record["cases"]:
        key = (row["metric"], row["operation"], row["shape"], row["dtype"])
        if "peer" in row:
            cases.setdefault(key, []).append(f"{row['peer']} {row['speedup']:.2f}x"
                                             + ("" if row["same_computation"] else " (differs)"))
        elif row["convention"] == "same" or row["convention"].startswith("pytorch_msssim"):  # MS-SSIM's default
            floor = f", {row['fraction_of_floor']:.2f} of floor" if "fraction_of_floor" in row else ""
            cases.setdefault(key, []).insert(0, f"cussim {row['ms']:.3f} ms{floor}")
    lines += [f"{metric} {operation} {shape} {dtype}: " + parts[0] + ("; peer time / cussim's: " if parts[1:] else "")
              + "; ".join(parts[1:])
              for (metric, operation, shape, dtype), parts in cases.items()]
    return lines


def newest_record(folder: Path) -> dict:
    """The newest <machine>/<date>.json under ``folder``."""
    records = sorted(folder.glob("*/*.json"), key=lambda path: path.stat().st_mtime)
    if not records:
        raise FileNotFoundError(f"no benchmark results (*/*.json) under {folder}")
    return json.loads(records[-1].read_text())


def bench_summary(results: Path) -> int:
    try:
        record = newest_record(results)
    except FileNotFoundError as exc:
        print(exc)
        return 1
    print("\n".join(bench_lines(record)))
    return 0


def ncu_summary(results: Path) -> int:
    lines = ncu_lines(results.read_text())
    print("\n".join(lines) if lines else f"no profiled launch in {results}")
    return 0 if lines else 1


STEPS = {"environment": environment, "smoke": smoke, "profile": profile, "sanitize": sanitize}
SUMMARIES = {"bench-summary": bench_summary, "ncu-summary": ncu_summary}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=[*STEPS, *SUMMARIES])
    parser.add_argument("--rehearse", action="store_true",
                        help="without a GPU: the CuPy stand-in on the emulator (bench.cupy_standin), small sizes")
    parser.add_argument("--results", type=Path,
                        help="bench-summary: the folder python -m bench wrote to; ncu-summary: ncu's details page")
    args = parser.parse_args(argv)
    if args.step in SUMMARIES:
        if args.results is None:
            parser.error(f"{args.step} needs --results")
        return SUMMARIES[args.step](args.results)
    return STEPS[args.step](args.rehearse)


if __name__ == "__main__":
    raise SystemExit(main())
