"""Times cussim on a GPU and reports each case against its floor.

``python -m bench`` (from the repository root) measures, on the current GPU:

- the machine's two ceilings: device-to-device copy bandwidth and the float32
  FMA rate (a kernel of independent FMA chains);
- ``ssim`` (forward) and ``dssim_with_gradient`` (in place, with a workspace)
  at 1x3x1080x1920 and 32x3x256x256 in float32, timed with CUDA events after
  warm-up, median of the repeats;
- ``ms_ssim`` and ``ms_ssim_with_gradient`` at the same shapes, side by side
  with pytorch-msssim and torchmetrics on the same data (their values checked
  against cussim's variant first; a peer that cannot be imported is skipped
  with the reason printed);

and writes ``bench/results/<gpu>.json`` and ``.md`` with the GPU named. Each
case's floor is max(FLOPs / FMA rate, bytes / copy bandwidth), from the counts
in :func:`work_per_pixel`. Without a GPU it says so and times nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CASES = ("ssim", "dssim_with_gradient", "ms_ssim", "ms_ssim_with_gradient")
SHAPES = {"1x3x1080x1920": (1, 3, 1080, 1920), "32x3x256x256": (32, 3, 256, 256)}
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


def work_per_pixel(case: str, win_size: int = 11, itemsize: int = 4) -> Work:
    """FLOPs and bytes per pixel that any implementation must spend (design.md, Performance method).

    Forward: five moments (x, y, x*x, y*y, x*y: 3 products), each a separable
    win_size-tap filter in two passes of one FMA (2 FLOPs) per tap, and about 30
    FLOPs of formula; it reads x and y once. The gradient adds three blurred
    partial maps (two passes each) and about 40 FLOPs of partials and combining;
    it writes and reads back three partial maps and writes the gradient.
    """
    forward_flops = 3 + 5 * 2 * win_size * 2 + 30
    if case == "ssim":
        return Work(forward_flops, 2 * itemsize)
    gradient = Work(forward_flops + 3 * 2 * win_size * 2 + 40, 2 * itemsize + 3 * 4 + 3 * 4 + 2 * itemsize + itemsize)
    if case == "dssim_with_gradient":
        return gradient
    # MS-SSIM: the scales after the first add 1/4 + 1/16 + ... < 1/3 of the work (counted as 1/3,
    # in float32), and each downsampling reads x and y and writes a quarter of them.
    if case == "ms_ssim":
        return Work(forward_flops * 4 / 3 + 8, 2 * itemsize + (2 * itemsize + 2 * 4 / 4) / 3)
    if case == "ms_ssim_with_gradient":
        return Work(gradient.flops * 4 / 3 + 12, gradient.bytes + (2 * itemsize + 2 * 4 / 4 + 44) / 3)
    raise ValueError(f"unknown case {case!r}")


def floor_seconds(work: Work, pixels: int, fma_per_second: float, bytes_per_second: float) -> float:
    """The case's floor: the larger of its compute time and its memory time at the ceilings."""
    return max(work.flops * pixels / (2 * fma_per_second), work.bytes * pixels / bytes_per_second)


def _time(cupy, fn, repeats: int, warmup: int = 3) -> float:
    """Median seconds of fn() between CUDA events on the current stream."""
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


def _peers():
    """([(name, cussim's matching variant, value function)], [skip reasons]) of the MS-SSIM peers."""
    found, reasons = [], []
    try:
        import pytorch_msssim

        def value(x, y):
            return pytorch_msssim.ms_ssim(x, y, data_range=1.0)

        found.append(("pytorch-msssim", "pytorch_msssim", value))
    except Exception as exc:  # noqa: BLE001  (any import failure skips the peer)
        reasons.append(f"pytorch-msssim skipped: {type(exc).__name__}: {exc}")
    try:
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm

        def value(x, y):
            return tm(x, y, data_range=1.0, normalize="relu")

        found.append(("torchmetrics", "torchmetrics", value))
    except Exception as exc:  # noqa: BLE001
        reasons.append(f"torchmetrics skipped: {type(exc).__name__}: {exc}")
    return found, reasons


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


def _images(cupy, shape, seed):
    """Random float32 x, a noisy y, and an output and a gradient buffer, on the GPU."""
    rng = cupy.random.default_rng(seed)
    x = rng.random(shape, dtype=cupy.float32)
    y = cupy.clip(x + 0.05 * rng.standard_normal(shape, dtype=cupy.float32), 0, 1)
    return x, y, cupy.empty((), cupy.float32), cupy.empty_like(x)


def _time_against_floor(cupy, calls: dict, label: str, pixels: int, repeats: int, limits: dict):
    """Times each of cussim's calls: ({case: seconds}, table rows with the case's floor)."""
    seconds = {case: _time(cupy, fn, repeats) for case, fn in calls.items()}
    rows = []
    for case, t in seconds.items():
        floor = floor_seconds(work_per_pixel(case), pixels, limits["fma_per_second"], limits["copy_bytes_per_second"])
        rows.append({"case": case, "shape": label, "ms": t * 1e3, "floor_ms": floor * 1e3, "times_floor": t / floor})
    return seconds, rows


def ms_ssim_cases(cupy, cussim, repeats: int, limits: dict) -> list:
    """MS-SSIM value and value-with-gradient, cussim and the peers on the same images."""
    try:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("PyTorch sees no CUDA device")
        peers_reason = None
    except Exception as exc:  # noqa: BLE001
        torch, peers_reason = None, f"peers skipped: PyTorch unusable ({type(exc).__name__}: {exc})"
    if peers_reason:
        print(peers_reason)
    rows = []
    for label, shape in SHAPES.items():
        x, y, out, grad = _images(cupy, shape, seed=1)
        workspace = cussim.make_ms_ssim_workspace(x, channel_axis=1)
        ours = {
            "ms_ssim": lambda: cussim.ms_ssim(x, y, channel_axis=1, out=out),
            "ms_ssim_with_gradient": lambda: cussim.ms_ssim_with_gradient(x, y, channel_axis=1, out=out, grad=grad,
                                                                          workspace=workspace),
        }
        seconds, timed = _time_against_floor(cupy, ours, label, x.size, repeats, limits)
        rows += timed
        if torch is None:
            continue
        tx = torch.from_dlpack(x).requires_grad_(True)
        ty = torch.from_dlpack(y)
        found, reasons = _peers()
        for reason in reasons:
            print(reason)
        for name, variant, value in found:
            theirs = float(value(tx.detach(), ty))
            mine = float(cussim.ms_ssim(x, y, variant=variant, channel_axis=1))

            def forward_only(value=value):
                value(tx.detach(), ty)

            def with_gradient(value=value):
                tx.grad = None
                value(tx, ty).backward()

            for case, fn, t in (("ms_ssim", forward_only, seconds["ms_ssim"]),
                                ("ms_ssim_with_gradient", with_gradient, seconds["ms_ssim_with_gradient"])):
                peer = _torch_time(torch, fn, repeats)
                rows.append({"case": f"{case} vs {name}", "shape": label, "ms": t * 1e3, "peer_ms": peer * 1e3,
                             "speedup": peer / t, "value_difference": abs(mine - theirs)})
    return rows


def run_cases(cupy, cussim, repeats: int) -> list:
    limits = ceilings(cupy, repeats)
    rows = []
    for label, shape in SHAPES.items():
        x, y, out, grad = _images(cupy, shape, seed=0)
        workspace = cussim.make_workspace(x)
        calls = {
            "ssim": lambda: cussim.ssim(x, y, out=out),
            "dssim_with_gradient": lambda: cussim.dssim_with_gradient(x, y, out=out, grad=grad, workspace=workspace),
        }
        rows += _time_against_floor(cupy, calls, label, x.size, repeats, limits)[1]
    rows += ms_ssim_cases(cupy, cussim, repeats, limits)
    return [limits, rows]


def markdown(gpu: str, limits: dict, rows: list) -> str:
    lines = [
        f"# cussim on {gpu}", "",
        f"Ceilings measured in the same run: copy {limits['copy_bytes_per_second'] / 1e9:.0f} GB/s, "
        f"FMA {limits['fma_per_second'] / 1e12:.1f} T/s.", "",
        "| case | shape (float32) | time (ms) | floor (ms) | x floor |", "|---|---|---|---|---|",
    ]
    lines += [f"| {r['case']} | {r['shape']} | {r['ms']:.3f} | {r['floor_ms']:.3f} | {r['times_floor']:.2f} |"
              for r in rows if "floor_ms" in r]
    against = [r for r in rows if "peer_ms" in r]
    if against:
        lines += ["", "| case | shape (float32) | cussim (ms) | peer (ms) | speed-up | value difference |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['shape']} | {r['ms']:.3f} | {r['peer_ms']:.3f} | {r['speedup']:.1f}x | "
                  f"{r['value_difference']:.1e} |" for r in against]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per case (median reported)")
    args = parser.parse_args(argv)
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            raise RuntimeError("no CUDA device")
    except Exception as exc:  # no CuPy, no driver, no device
        print(f"no CUDA GPU here ({type(exc).__name__}: {exc}); the benchmark times GPUs only, nothing was timed")
        return 0
    import cussim

    gpu = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    limits, rows = run_cases(cupy, cussim, args.repeats)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    record = {"gpu": gpu, "cupy": cupy.__version__, "python": platform.python_version(), **limits, "cases": rows,
              "work_per_pixel": {case: asdict(work_per_pixel(case)) for case in CASES}}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(gpu, limits, rows))
    print(markdown(gpu, limits, rows))
    return 0
