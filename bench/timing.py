"""Timing and ceilings of ``python -m bench``: the work any implementation must do per pixel and its floor
at the GPU's measured ceilings (copy bandwidth, FMA rate), the clocks (CUDA events for CuPy and PyTorch, the
host clock for CPU code) and the timed inputs (pairs that overflow the L2 cache, called in rotation).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import dataclass

CASES = ("ssim", "ssim_with_gradient", "ms_ssim", "ms_ssim_with_gradient")
OPERATIONS = {"value": "", "value+gradient": "_with_gradient"}
FMA_KERNEL = r"""
extern "C" __global__ void fma_chains(float* out, int steps) {
    float a = threadIdx.x * 1e-3f, b = 1.0001f, c0 = 0.f, c1 = 1.f, c2 = 2.f, c3 = 3.f;
    for (int i = 0; i < steps; ++i) {
        c0 = fmaf(a, b, c0); c1 = fmaf(a, b, c1); c2 = fmaf(a, b, c2); c3 = fmaf(a, b, c3);
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = c0 + c1 + c2 + c3;
}
"""


@dataclass(frozen=True)
class Work:
    flops: float  # per pixel
    bytes: float  # per pixel, DRAM traffic at the least


def work_per_pixel(case: str, win_size: int = 11, itemsize: int = 4, spatial_dims: int = 2) -> Work:
    """FLOPs and bytes per pixel (voxel) that any implementation must spend (the floor of the benchmark).

    Forward: five moments (x, y, x*x, y*y, x*y: 3 products), each a separable
    win_size-tap filter in two passes of one FMA (2 FLOPs) per tap, and about 30
    FLOPs of formula; it reads x and y once (``itemsize`` bytes each). The
    gradient adds three blurred partial maps (two passes each) and about 40
    FLOPs of partials and combining; it writes and reads back three float32
    partial maps, reads x and y again and writes the gradient. Volumes
    (``spatial_dims=3``) filter in three passes instead of two.
    """
    forward_flops = 3 + 5 * 2 * win_size * spatial_dims + 30
    if case == "ssim":
        return Work(forward_flops, 2 * itemsize)
    gradient = Work(forward_flops + 3 * 2 * win_size * spatial_dims + 40, 2 * itemsize + 3 * 4 + 3 * 4 + 2 * itemsize + itemsize)
    if case == "ssim_with_gradient":
        return gradient
    # MS-SSIM: the scales after the first add 1/4 + 1/16 + ... < 1/3 of the work (counted as 1/3,
    # in float32), and each downsampling reads x and y and writes a quarter of them.
    if case == "ms_ssim":
        return Work(forward_flops * 4 / 3 + 8, 2 * itemsize + (2 * 4 + 2 * 4 / 4) / 3)
    if case == "ms_ssim_with_gradient":
        return Work(gradient.flops * 4 / 3 + 12, gradient.bytes + (2 * 4 + 2 * 4 / 4 + 44) / 3)
    raise ValueError(f"unknown case {case!r}")


def floor_seconds(work: Work, pixels: int, fma_per_second: float, bytes_per_second: float) -> float:
    """The case's floor: the larger of its compute time and its memory time at the ceilings."""
    return max(work.flops * pixels / (2 * fma_per_second), work.bytes * pixels / bytes_per_second)


def event_time(cupy, fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() between CUDA events on CuPy's current stream."""
    for _ in range(warmup):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def torch_event_time(torch, fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() between CUDA events on PyTorch's current stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times)


def host_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of fn() by the host clock (CPU code)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ceilings(cupy, repeats: int) -> dict:
    """Copy bandwidth (bytes/s, read + write) and FMA rate (FMA/s) measured on this GPU."""
    source = cupy.empty(256 * 2**20, dtype=cupy.uint8)
    target = cupy.empty_like(source)
    copy = event_time(cupy, lambda: cupy.copyto(target, source), repeats)
    kernel = cupy.RawKernel(FMA_KERNEL, "fma_chains")
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    blocks, threads, steps = sms * 32, 256, 4096
    out = cupy.empty(blocks * threads, dtype=cupy.float32)
    fma = event_time(cupy, lambda: kernel((blocks,), (threads,), (out, cupy.int32(steps))), repeats)
    return {"copy_bytes_per_second": 2 * source.nbytes / copy, "fma_per_second": blocks * threads * steps * 4 / fma}


def input_pairs(xp, shape, dtype, seed: int, cache_bytes: int = 0) -> list:
    """Random (x, y) pairs, y a noisy x in [0, 1]: enough pairs that together they overflow ``cache_bytes`` 3x."""
    itemsize = xp.dtype(dtype).itemsize
    count = min(8, max(1, math.ceil(3 * cache_bytes / (2 * math.prod(shape) * itemsize))))
    rng = xp.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        x = rng.random(shape, dtype=xp.float32)
        y = xp.clip(x + 0.05 * rng.standard_normal(shape, dtype=xp.float32), 0, 1)
        pairs.append((x.astype(dtype), y.astype(dtype)))
    return pairs


def rotating(pairs, call):
    """A no-argument function that calls ``call(x, y)`` on the next pair each time."""
    cycle = itertools.cycle(pairs)
    return lambda: call(*next(cycle))

