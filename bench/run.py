"""Times cussim on a GPU and reports each case against its floor.

``python -m bench`` (from the repository root) measures, on the current GPU:

- the machine's two ceilings: device-to-device copy bandwidth and the float32
  FMA rate (a kernel of independent FMA chains);
- ``ssim`` (forward) and ``dssim_with_gradient`` (in place, with a workspace)
  at 1x3x1080x1920 and 32x3x256x256 in float32, timed with CUDA events after
  warm-up, median of the repeats;

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
    if case == "dssim_with_gradient":
        return Work(forward_flops + 3 * 2 * win_size * 2 + 40, 2 * itemsize + 3 * 4 + 3 * 4 + 2 * itemsize + itemsize)
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


def run_cases(cupy, cussim, repeats: int) -> list:
    limits = ceilings(cupy, repeats)
    rows = []
    for label, shape in SHAPES.items():
        rng = cupy.random.default_rng(0)
        x = rng.random(shape, dtype=cupy.float32)
        y = cupy.clip(x + 0.05 * rng.standard_normal(shape, dtype=cupy.float32), 0, 1)
        out, grad = cupy.empty((), cupy.float32), cupy.empty_like(x)
        workspace = cussim.make_workspace(x)
        calls = {
            "ssim": lambda: cussim.ssim(x, y, out=out),
            "dssim_with_gradient": lambda: cussim.dssim_with_gradient(x, y, out=out, grad=grad, workspace=workspace),
        }
        pixels = x.size
        for case, fn in calls.items():
            seconds = _time(cupy, fn, repeats)
            floor = floor_seconds(work_per_pixel(case), pixels, limits["fma_per_second"],
                                  limits["copy_bytes_per_second"])
            rows.append({"case": case, "shape": label, "ms": seconds * 1e3, "floor_ms": floor * 1e3,
                         "times_floor": seconds / floor})
    return [limits, rows]


def markdown(gpu: str, limits: dict, rows: list) -> str:
    lines = [
        f"# cussim on {gpu}", "",
        f"Ceilings measured in the same run: copy {limits['copy_bytes_per_second'] / 1e9:.0f} GB/s, "
        f"FMA {limits['fma_per_second'] / 1e12:.1f} T/s.", "",
        "| case | shape (float32) | time (ms) | floor (ms) | x floor |", "|---|---|---|---|---|",
    ]
    lines += [f"| {r['case']} | {r['shape']} | {r['ms']:.3f} | {r['floor_ms']:.3f} | {r['times_floor']:.2f} |"
              for r in rows]
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
              "work_per_pixel": {case: asdict(work_per_pixel(case)) for case in ("ssim", "dssim_with_gradient")}}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(gpu, limits, rows))
    print(markdown(gpu, limits, rows))
    return 0
