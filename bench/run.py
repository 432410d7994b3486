"""Times cussim against every peer in one run, and each cussim case against its floor.

``python -m bench`` (from the repository root) measures, on the current GPU:

- the machine's two ceilings: device-to-device copy bandwidth and the float32
  FMA rate (a kernel of independent FMA chains);
- SSIM at 1x3x1080x1920, 5x1x1500x1500, 32x3x256x256 and 1x3x2160x3840, float32
  and float16 inputs, the value alone and the value with its gradient, in each
  convention a peer uses (``bench/peers.py``): cussim, then every peer that
  imports (fussim, pytorch-msssim, torchmetrics, kornia, piq, cuCIM, skimage on
  the CPU for cases up to ``SKIMAGE_MAX_PIXELS``), each peer's value checked
  against cussim's in its convention before it is timed;
- MS-SSIM (float32) against pytorch-msssim and torchmetrics, the same way;
- SSIM of volumes (``spatial_dims=3``) at 1x1x128x128x128 and 4x1x64x128x128,
  float32, the value and the value with its gradient, against pytorch-msssim
  and torchmetrics on 5-D tensors, the same way;
- ``cussim.torch``'s ``l1_dssim_loss`` and ``SSIMLoss``, forward plus backward
  at 1x3x1080x1920, against the same losses built on fussim and pytorch-msssim;
- ``cussim.torch``'s drop-ins (``fused_ssim``, ``pytorch_msssim.ssim`` and
  ``.ms_ssim``), the value and the value with its gradient at 1x3x1080x1920,
  against the functions they replace (fussim's ``fused_ssim``, pytorch-msssim).

Device events around each call, warm-up first, the median of the repeats;
where one input pair would fit in the L2 cache, the calls rotate over enough
pairs to overflow it. Each cussim case is reported as a fraction of its floor,
max(FLOPs / FMA rate, bytes / copy bandwidth) from :func:`work_per_pixel`.
Results: ``<output>/<gpu>/<date>.json``, ``.md`` and (with matplotlib)
``.png``, where ``--output`` says, by default under ``bench/local-results/``
(ignored by git). The results in ``bench/results/`` are committed on purpose:
``--output bench/results`` writes there.

Without a GPU it says so and runs the CPU cases instead: cussim's NumPy path
(the float64 reference) against skimage, written the same way under the
machine's name.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import peers as peer_adapters

RESULTS = Path(__file__).resolve().parent / "local-results"  # ignored by git; bench/results holds committed runs
SHAPES = {"1x3x1080x1920": (1, 3, 1080, 1920), "5x1x1500x1500": (5, 1, 1500, 1500),
          "32x3x256x256": (32, 3, 256, 256), "1x3x2160x3840": (1, 3, 2160, 3840)}
CPU_SHAPES = {"1x3x256x256": (1, 3, 256, 256), "1x1x720x1280": (1, 1, 720, 1280)}
VOLUME_SHAPES = {"1x1x128x128x128": (1, 1, 128, 128, 128), "4x1x64x128x128": (4, 1, 64, 128, 128)}
CPU_VOLUME_SHAPES = {"1x1x48x64x64": (1, 1, 48, 64, 64)}
DTYPES = ("float32", "float16")
SKIMAGE_MAX_PIXELS = 12_000_000  # skimage on the CPU takes seconds per call beyond this
# A peer's value must be this close to cussim's in its convention, and closer to it than to any other convention
# (PyTorch's float32 convolutions may run in TF32, near 1e-3 relative).
VALUE_TOLERANCE = {"float32": 1e-3}
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


def _time(cupy, fn, repeats: int, warmup: int = 3) -> float:
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


def _torch_time(torch, fn, repeats: int, warmup: int = 3) -> float:
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


def _host_time(fn, repeats: int, warmup: int = 1) -> float:
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
    copy = _time(cupy, lambda: cupy.copyto(target, source), repeats)
    kernel = cupy.RawKernel(FMA_KERNEL, "fma_chains")
    sms = cupy.cuda.Device().attributes["MultiProcessorCount"]
    blocks, threads, steps = sms * 32, 256, 4096
    out = cupy.empty(blocks * threads, dtype=cupy.float32)
    fma = _time(cupy, lambda: kernel((blocks,), (threads,), (out, cupy.int32(steps))), repeats)
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


def closest_convention(theirs: float, ours: dict) -> str:
    """Which of cussim's values (by convention) a peer's value is nearest."""
    return min(ours, key=lambda convention: abs(ours[convention] - theirs))


def _ours_row(metric, operation, convention, label, dtype, pixels, seconds, limits=None, win_size=11,
              work_case=None, spatial_dims=2):
    """A cussim timing, with its floor given ``limits``; ``work_case``: the case of work_per_pixel
    (default: the metric's, with the operation's)."""
    row = {"metric": metric, "operation": operation, "convention": convention, "shape": label, "dtype": dtype,
           "ms": seconds * 1e3, "gpx_per_s": pixels / seconds / 1e9}
    if limits:
        work = work_per_pixel(work_case or metric + OPERATIONS[operation], win_size, 2 if dtype == "float16" else 4,
                              spatial_dims)
        floor = floor_seconds(work, pixels, limits["fma_per_second"], limits["copy_bytes_per_second"])
        row.update(floor_ms=floor * 1e3, fraction_of_floor=floor / seconds)
    return row


def _peer_row(ours: dict, peer, seconds, difference, same):
    """A peer's timing beside cussim's row ``ours`` (cussim in ``cussim_convention``)."""
    return {**{k: ours[k] for k in ("metric", "operation", "shape", "dtype", "ms")}, "peer": peer.name,
            "convention": peer.convention, "cussim_convention": ours["convention"], "peer_ms": seconds * 1e3,
            "speedup": seconds * 1e3 / ours["ms"], "value_difference": difference, "same_computation": same}


class _TorchPeers:
    """Runs torch peers on CuPy arrays (zero-copy through DLPack) and times them with CUDA events."""

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("PyTorch sees no CUDA device")
        self.torch = torch

    def value(self, peer, x, y) -> float:
        with self.torch.no_grad():
            return float(peer.value(self.torch.from_dlpack(x), self.torch.from_dlpack(y)))

    def timed_call(self, peer, operation, pairs):
        """A no-argument call of the peer's operation, rotating over the pairs."""
        torch = self.torch
        if operation == "value":
            tensors = [(torch.from_dlpack(x), torch.from_dlpack(y)) for x, y in pairs]

            def call(x, y):
                with torch.no_grad():
                    peer.value(x, y)
        else:
            tensors = [(torch.from_dlpack(x).detach().requires_grad_(True), torch.from_dlpack(y)) for x, y in pairs]

            def call(x, y):
                x.grad = None
                peer.value(x, y).backward()

        return rotating(tensors, call)

    def time(self, fn, repeats: int) -> float:
        return _torch_time(self.torch, fn, repeats)


def _on_host(array):
    """A NumPy copy of a CuPy array (a NumPy array as it is)."""
    return array.get() if hasattr(array, "get") else array


def _peer_value(peer, x, y, torch_peers) -> float:
    """The peer's value of one pair of CuPy arrays, in its own framework."""
    if peer.framework == "torch":
        return torch_peers.value(peer, x, y)
    if peer.framework == "numpy":
        return float(peer.value(_on_host(x), _on_host(y)))
    return float(peer.value(x, y))


def _time_peer(peer, operation, pairs, cupy, torch_peers, repeats) -> float:
    """Seconds of one peer operation on the case's pairs, in its own framework and with its clock."""
    if peer.framework == "torch":
        return torch_peers.time(torch_peers.timed_call(peer, operation, pairs), repeats)
    if peer.framework == "numpy":
        host = [(_on_host(x), _on_host(y)) for x, y in pairs[:1]]
        return _host_time(rotating(host, peer.value), max(1, min(repeats, 3)))
    return _time(cupy, rotating(pairs, peer.value), repeats)


def _peer_rows(peer, ours: dict, pairs, expected: float, same, cupy, torch_peers, repeats, where: str) -> list:
    """A peer's rows beside cussim's ``ours`` ({operation: row}).

    Its value on the first pair is compared with ``expected`` once;
    ``same(difference)`` says whether the two compute the same thing. Then
    each operation is timed (the gradient only where the peer has one). A
    failure is printed and skips the peer, or that operation.
    """
    try:
        difference = abs(_peer_value(peer, *pairs[0], torch_peers) - expected)
    except Exception as exc:  # noqa: BLE001  (a peer that fails on a case is reported, not fatal)
        print(f"{peer.name} {where} skipped: {type(exc).__name__}: {exc}")
        return []
    rows = []
    for operation, row in ours.items():
        if operation != "value" and not peer.differentiable:
            continue
        try:
            seconds = _time_peer(peer, operation, pairs, cupy, torch_peers, repeats)
        except Exception as exc:  # noqa: BLE001
            print(f"{peer.name} {operation} {where} skipped: {type(exc).__name__}: {exc}")
            continue
        rows.append(_peer_row(row, peer, seconds, difference, same(difference)))
    return rows


def check_conventions(cupy, cussim, found, torch_peers, spatial_dims=2) -> tuple[list, dict]:
    """Runs each SSIM peer on a pair whose conventions differ by 2e-2 or more (peers.check_pair, or
    peers.volume_check_pair for the volume peers, ``spatial_dims=3``).

    Returns the peers that ran and {name: whether its value is cussim's in the
    peer's convention, to VALUE_TOLERANCE["float32"], and nearer it than any
    other}. A peer that fails here is skipped with the reason printed.
    """
    x, y = (peer_adapters.volume_check_pair if spatial_dims == 3 else peer_adapters.check_pair)(cupy)
    ours = peer_adapters.cussim_values(cussim, x, y, spatial_dims)
    ran, matches = [], {}
    for peer in found:
        try:
            theirs = _peer_value(peer, x, y, torch_peers)
        except Exception as exc:  # noqa: BLE001  (a peer that cannot run is reported, not fatal)
            print(f"{peer.name} skipped: it failed on the convention check: {type(exc).__name__}: {exc}")
            continue
        ran.append(peer)
        matches[peer.name] = (abs(theirs - ours[peer.convention]) <= VALUE_TOLERANCE["float32"]
                              and closest_convention(theirs, ours) == peer.convention)
        verdict = "matches" if matches[peer.name] else "does NOT match; its ratios do not compare the same computation:"
        print(f"{peer.name}: {theirs:.6f}, {verdict} cussim's {peer.convention!r} {ours[peer.convention]:.6f}")
    return ran, matches


def ssim_cases(cupy, cussim, label, shape, dtype, repeats, limits, cache_bytes, found, matches, torch_peers,
               spatial_dims=2) -> list:
    """SSIM rows of one shape and dtype: cussim in every convention a peer uses, then each peer.

    ``matches``: each peer's convention check (:func:`check_conventions`); the
    value difference on the case's own data is recorded beside it.
    ``spatial_dims=3``: N x C x D x H x W volumes (the metric "ssim3d").
    """
    pairs = input_pairs(cupy, shape, dtype, seed=0, cache_bytes=cache_bytes)
    pixels = math.prod(shape)
    out, grad = cupy.empty((), cupy.float32), cupy.empty(shape, dtype)
    x0, y0 = pairs[0]
    value_of = peer_adapters.cussim_values(cussim, x0, y0, spatial_dims)
    metric = "ssim3d" if spatial_dims == 3 else "ssim"
    timed_as = {p.convention: peer_adapters.TIMED_AS.get(p.convention, p.convention) for p in found}
    conventions = ["same"] + sorted(set(timed_as.values()) - {"same"})
    rows, ours = [], {}
    for convention in conventions:
        options = dict(peer_adapters.CONVENTIONS[convention], spatial_dims=spatial_dims)
        win_size = options.get("win_size", 11)
        workspace = cussim.make_workspace(x0, win_size=win_size, padding=options["padding"], spatial_dims=spatial_dims)
        calls = {
            "value": rotating(pairs, lambda x, y: cussim.ssim(x, y, out=out, **options)),
            "value+gradient": rotating(pairs, lambda x, y: cussim.ssim_with_gradient(
                x, y, out=out, grad=grad, workspace=workspace, **options)),
        }
        for operation, fn in calls.items():
            row = _ours_row(metric, operation, convention, label, dtype, pixels, _time(cupy, fn, repeats), limits,
                            win_size, work_case="ssim" + OPERATIONS[operation], spatial_dims=spatial_dims)
            ours[convention, operation] = row
            rows.append(row)
    for peer in found:
        if peer.framework == "numpy" and pixels > SKIMAGE_MAX_PIXELS:
            print(f"{peer.name}: {label} skipped (over {SKIMAGE_MAX_PIXELS} pixels on the CPU)")
            continue
        beside = {op: ours[timed_as[peer.convention], op] for op in OPERATIONS}
        rows += _peer_rows(peer, beside, pairs, value_of[peer.convention], lambda _, same=matches[peer.name]: same,
                           cupy, torch_peers, repeats, f"{label} {dtype}")
    return rows


def ms_ssim_cases(cupy, cussim, label, shape, repeats, limits, cache_bytes, found, torch_peers) -> list:
    """MS-SSIM rows of one shape (float32): cussim's default variant, then each peer against its variant."""
    pairs = input_pairs(cupy, shape, "float32", seed=1, cache_bytes=cache_bytes)
    pixels = math.prod(shape)
    out, grad = cupy.empty((), cupy.float32), cupy.empty(shape, cupy.float32)
    x0, y0 = pairs[0]
    rows = []
    for variant in ["pytorch_msssim"] + sorted({p.convention for p in found} - {"pytorch_msssim"}):
        workspace = cussim.make_ms_ssim_workspace(x0, variant=variant, channel_axis=1)
        calls = {
            "value": rotating(pairs, lambda x, y: cussim.ms_ssim(x, y, variant=variant, channel_axis=1, out=out)),
            "value+gradient": rotating(pairs, lambda x, y: cussim.ms_ssim_with_gradient(
                x, y, variant=variant, channel_axis=1, out=out, grad=grad, workspace=workspace)),
        }
        ours = {op: _ours_row("ms_ssim", op, variant, label, "float32", pixels, _time(cupy, fn, repeats), limits)
                for op, fn in calls.items()}
        rows += ours.values()
        mine = float(cussim.ms_ssim(x0, y0, variant=variant, channel_axis=1))
        for peer in (p for p in found if p.convention == variant):
            rows += _peer_rows(peer, ours, pairs, mine, lambda d: d <= VALUE_TOLERANCE["float32"], cupy, torch_peers,
                               repeats, f"ms_ssim {label}")
    return rows


def torch_loss_cases(cupy, label, shape, repeats, limits, cache_bytes, found, torch_peers) -> list:
    """cussim.torch's l1_dssim_loss (weight 0.2) and SSIMLoss, forward plus backward, against the same
    losses built on fussim and pytorch-msssim; all timed with PyTorch's CUDA events."""
    import cussim.torch as ct

    pairs = input_pairs(cupy, shape, "float32", seed=2, cache_bytes=cache_bytes)
    x0, y0 = pairs[0]
    ours = {"l1_dssim_loss same": lambda r, t: ct.l1_dssim_loss(r, t, weight=0.2),
            "SSIMLoss same": ct.SSIMLoss(), "SSIMLoss valid": ct.SSIMLoss(padding="valid")}
    rows, timed, values = [], {}, {}
    for convention, loss in ours.items():
        mine = peer_adapters.Peer("cussim.torch", convention, "torch", loss, True)
        seconds = torch_peers.time(torch_peers.timed_call(mine, "value+gradient", pairs), repeats)
        timed[convention] = _ours_row("torch " + convention.split()[0], "value+gradient", convention, label,
                                      "float32", math.prod(shape), seconds, limits, work_case="ssim_with_gradient")
        values[convention] = torch_peers.value(mine, x0, y0)
        rows.append(timed[convention])
    for peer in found:
        # beside cussim in the peer's convention where cussim.torch has it, else beside its "same"
        beside = peer.convention if peer.convention in ours else peer.convention.split()[0] + " same"
        rows += _peer_rows(peer, {"value+gradient": timed[beside]}, pairs, values[beside],
                           lambda d, same=beside == peer.convention: same and d <= VALUE_TOLERANCE["float32"],
                           cupy, torch_peers, repeats, peer.convention)
    return rows


def drop_in_cases(cupy, label, shape, repeats, limits, cache_bytes, found, torch_peers) -> list:
    """cussim.torch's drop-ins (peers.drop_ins) beside the functions they replace, called the same way on the
    same tensors: the value, and the value with its gradient to x; all timed with PyTorch's CUDA events."""
    pairs = input_pairs(cupy, shape, "float32", seed=3, cache_bytes=cache_bytes)
    rows = []
    for convention, value in peer_adapters.drop_ins().items():
        mine = peer_adapters.Peer("cussim.torch", convention, "torch", value, True)
        work = "ms_ssim" if convention.endswith("ms_ssim") else "ssim"
        ours = {op: _ours_row(convention, op, convention, label, "float32", math.prod(shape),
                              torch_peers.time(torch_peers.timed_call(mine, op, pairs), repeats), limits,
                              work_case=work + suffix)
                for op, suffix in OPERATIONS.items()}
        rows += ours.values()
        expected = torch_peers.value(mine, *pairs[0])
        for peer in (p for p in found if p.convention == convention):
            rows += _peer_rows(peer, ours, pairs, expected, lambda d: d <= VALUE_TOLERANCE["float32"], cupy,
                               torch_peers, repeats, convention)
    return rows


def gpu_run(cupy, cussim, repeats: int) -> tuple[dict, list]:
    limits = ceilings(cupy, repeats)
    cache_bytes = cupy.cuda.Device().attributes["L2CacheSize"]
    try:
        torch_peers = _TorchPeers()
    except Exception as exc:  # noqa: BLE001
        torch_peers = None
        print(f"the PyTorch peers are skipped: {type(exc).__name__}: {exc}")
    found, reasons = peer_adapters.load(peer_adapters.SSIM_PEERS)
    found_ms, reasons_ms = peer_adapters.load(peer_adapters.MS_SSIM_PEERS)
    for reason in reasons + reasons_ms:
        print(reason)
    found_losses, reasons_losses = peer_adapters.load(peer_adapters.TORCH_LOSS_PEERS)
    for reason in reasons_losses:
        print(reason)
    found_drop_ins, reasons_drop_ins = peer_adapters.load(peer_adapters.DROP_IN_PEERS)
    for reason in reasons_drop_ins:
        print(reason)
    found_volumes, reasons_volumes = peer_adapters.load(peer_adapters.VOLUME_PEERS)
    for reason in reasons_volumes:
        print(reason)
    if torch_peers is None:
        found, found_ms, found_losses, found_volumes = [p for p in found if p.framework != "torch"], [], [], []
    found, matches = check_conventions(cupy, cussim, found, torch_peers)
    found_volumes, volume_matches = check_conventions(cupy, cussim, found_volumes, torch_peers, spatial_dims=3)
    rows = []
    if torch_peers is not None:
        label = "1x3x1080x1920"
        rows += torch_loss_cases(cupy, label, SHAPES[label], repeats, limits, cache_bytes, found_losses, torch_peers)
        rows += drop_in_cases(cupy, label, SHAPES[label], repeats, limits, cache_bytes, found_drop_ins, torch_peers)
    for label, shape in SHAPES.items():
        for dtype in DTYPES:
            rows += ssim_cases(cupy, cussim, label, shape, dtype, repeats, limits, cache_bytes, found, matches,
                               torch_peers)
        rows += ms_ssim_cases(cupy, cussim, label, shape, repeats, limits, cache_bytes, found_ms, torch_peers)
    for label, shape in VOLUME_SHAPES.items():
        rows += ssim_cases(cupy, cussim, label, shape, "float32", repeats, limits, cache_bytes, found_volumes,
                           volume_matches, torch_peers, spatial_dims=3)
    return limits, rows


def cpu_run(cussim, repeats: int) -> list:
    """cussim's NumPy path (the backend CUSSIM_NUMPY_BACKEND picks) against skimage, on small images and a small
    volume."""
    import numpy as np

    found, reasons = peer_adapters.load(peer_adapters.SSIM_PEERS, ["skimage"])
    for reason in reasons:
        print(reason)
    rows = []
    for spatial_dims, shapes in ((2, CPU_SHAPES), (3, CPU_VOLUME_SHAPES)):
        _, matches = check_conventions(np, cussim, found, None, spatial_dims)
        rows += _cpu_cases(cussim, shapes, found, matches, repeats, spatial_dims)
    return rows


def _cpu_cases(cussim, shapes, found, matches, repeats, spatial_dims) -> list:
    import numpy as np

    rows = []
    for label, shape in shapes.items():
        pairs = input_pairs(np, shape, "float32", seed=0)
        pixels = math.prod(shape)
        value_of = peer_adapters.cussim_values(cussim, *pairs[0], spatial_dims)
        metric = "ssim3d" if spatial_dims == 3 else "ssim"
        for convention in ("same", "skimage"):
            options = dict(peer_adapters.CONVENTIONS[convention], spatial_dims=spatial_dims)
            calls = {"value": lambda x, y: cussim.ssim(x, y, **options),
                     "value+gradient": lambda x, y: cussim.ssim_with_gradient(x, y, **options)}
            ours = {op: _ours_row(metric, op, convention, label, "float32", pixels,
                                  _host_time(rotating(pairs, call), repeats)) for op, call in calls.items()}
            rows += ours.values()
            for peer in (p for p in found if p.convention == convention):
                seconds = _host_time(rotating(pairs, peer.value), repeats)
                difference = abs(peer.value(*pairs[0]) - value_of[convention])
                rows.append(_peer_row(ours["value"], peer, seconds, difference, matches[peer.name]))
    return rows


def markdown(machine: str, limits: dict | None, rows: list, note: str = "") -> str:
    """The results as Markdown: cussim's cases (with their floors on a GPU), then the peers' ratios."""
    lines = [f"# cussim on {machine}", ""]
    if note:
        lines += [note, ""]
    if limits:
        lines += [f"Ceilings measured in the same run: copy {limits['copy_bytes_per_second'] / 1e9:.0f} GB/s, "
                  f"FMA {limits['fma_per_second'] / 1e12:.1f} T/s.", ""]
    lines += ["| metric | operation | convention | shape | dtype | ms | Gpx/s | fraction of floor |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "peer" not in r:
            floor = f"{r['fraction_of_floor']:.2f}" if "fraction_of_floor" in r else "-"
            lines.append(f"| {r['metric']} | {r['operation']} | {r['convention']} | {r['shape']} | {r['dtype']} | "
                         f"{r['ms']:.3f} | {r['gpx_per_s']:.3g} | {floor} |")
    against = [r for r in rows if "peer" in r]
    if against:
        lines += ["", "Speed-up: the peer's time over cussim's on the same inputs, cussim in the peer's convention "
                  "(for torchmetrics' whole-sample reflection, which cussim lacks, cussim's \"same\": the same work). "
                  "Value difference: |peer - cussim| on the case's first pair; \"differs\" marks a peer whose value "
                  "failed the convention check, so its ratio does not compare the same computation.", "",
                  "| metric | operation | shape | dtype | peer (convention) | peer ms | cussim ms | speed-up "
                  "| value difference |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in against:
            marker = "" if r["same_computation"] else " (differs)"
            lines.append(f"| {r['metric']} | {r['operation']} | {r['shape']} | {r['dtype']} | "
                         f"{r['peer']} ({r['convention']}) | "
                         f"{r['peer_ms']:.3f} | {r['ms']:.3f} | {r['speedup']:.1f}x | "
                         f"{r['value_difference']:.1e}{marker} |")
    return "\n".join(lines) + "\n"


def write_results(folder: Path, machine: str, record: dict, text: str, rows: list) -> Path:
    """Writes <folder>/<machine>/<date>.json, .md and (with matplotlib) .png; returns the stem."""
    stem = folder / re.sub(r"[^A-Za-z0-9]+", "-", machine).strip("-").lower() / datetime.date.today().isoformat()
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    try:
        from bench import plot

        plot.plot(rows, stem.with_suffix(".png"), f"cussim on {machine}")
    except ImportError as exc:
        print(f"no plot: {exc}")
    return stem


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per case (median reported)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for the results (default bench/local-results, which git ignores; "
                             "bench/results holds the runs committed on purpose)")
    parser.add_argument("--host-overhead", action="store_true",
                        help="only the host time per call, with kernel launches recorded instead of run (no GPU)")
    args = parser.parse_args(argv)
    import cussim
    from bench.folders import machine

    if args.host_overhead:
        from bench import host

        print(host.markdown(host.run(cussim, args.repeats), machine()))
        return 0

    record = {"python": platform.python_version(), "date": datetime.date.today().isoformat(),
              "work_per_pixel": {case: asdict(work_per_pixel(case)) for case in CASES}}
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise RuntimeError("no CUDA device")
    except Exception as exc:  # no CuPy, no driver, no device
        from cussim import _arrays

        note = (f"No CUDA GPU here ({type(exc).__name__}: {exc}): the GPU cases were not run. These are the CPU "
                f"cases: cussim's NumPy path, computed by {_arrays.NUMPY_BACKEND_NAMES[_arrays.numpy_backend()]}, "
                "against skimage.")
        print(note)
        name, limits, rows = machine(), None, cpu_run(cussim, args.repeats)
    else:
        name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
        note = ""
        limits, rows = gpu_run(cupy, cussim, args.repeats)
        record.update(limits, cupy=cupy.__version__)
    record.update(machine=name, cases=rows)
    text = markdown(name, limits, rows, note)
    stem = write_results(args.output or RESULTS, name, record, text, rows)
    print(text)
    print(f"written: {stem}.json, .md")
    return 0
