"""Host overhead per call, with every kernel launch recorded instead of run.

``python -m bench --host-overhead`` runs the public functions on the kernel
path (NumPy arrays with CUSSIM_NUMPY_BACKEND=emulator, so no GPU is needed)
with each launch replaced by a recorder that only counts it. What remains is
the Python work of a call: argument checks, layouts, allocations, launch
arguments. On a GPU the same code runs before each launch, so these figures
are the floor of a call's time when the kernels themselves are fast, and
the launches per call are exact.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import numpy as np

SHAPE = (1, 3, 1080, 1920)


class _Recorder:
    """Stands in for a compiled kernel: counts the launches, runs nothing."""

    max_dynamic_shared_size_bytes = 48 * 1024  # as a kernel's before it opts in to more

    def __init__(self, counts, name):
        self.counts, self.name = counts, name

    def __call__(self, grid, block, args, shared_mem=0):
        self.counts[self.name] = self.counts.get(self.name, 0) + 1


@contextlib.contextmanager
def recorded_launches():
    """Within the block, NumPy inputs take the kernel path and every launch is counted in the dict yielded."""
    from cussim import _kernels

    counts = {}
    saved, saved_env = _kernels.emulated_kernel, os.environ.get("CUSSIM_NUMPY_BACKEND")
    _kernels.emulated_kernel = lambda family, name: _Recorder(counts, name)
    os.environ["CUSSIM_NUMPY_BACKEND"] = "emulator"
    try:
        yield counts
    finally:
        _kernels.emulated_kernel = saved
        if saved_env is None:
            os.environ.pop("CUSSIM_NUMPY_BACKEND")
        else:
            os.environ["CUSSIM_NUMPY_BACKEND"] = saved_env


def cases(cussim, shape=SHAPE):
    """(label, call) of the calls the host figures are for, on float32 images of ``shape``."""
    rng = np.random.default_rng(0)
    x = rng.random(shape, dtype=np.float32)
    y = rng.random(shape, dtype=np.float32)
    out = np.empty((), np.float32)
    grad = np.empty_like(x)
    workspace = cussim.make_workspace(x)
    return [
        ("ssim(x, y)", lambda: cussim.ssim(x, y, data_range=1.0)),
        ("dssim_with_gradient(x, y, out=, grad=, workspace=)",
         lambda: cussim.dssim_with_gradient(x, y, data_range=1.0, out=out, grad=grad, workspace=workspace)),
        ("ms_ssim_with_gradient(x, y)", lambda: cussim.ms_ssim_with_gradient(x, y, data_range=1.0)),
    ]


def run(cussim, repeats: int, shape=SHAPE) -> list:
    """One row per case: microseconds per call (median of ``repeats``) and launches per call."""
    rows = []
    with recorded_launches() as counts:
        for label, call in cases(cussim, shape):
            call()  # warm: kernels looked up, constants made
            counts.clear()
            call()
            launches = sum(counts.values())
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            rows.append({"case": label, "shape": "x".join(map(str, shape)), "host_us": statistics.median(times) * 1e6,
                         "launches": launches})
    return rows


def markdown(rows, machine: str) -> str:
    lines = [f"Host time per call, launches recorded instead of run (`python -m bench --host-overhead`), {machine}:",
             "", "| call | images | host us per call (median) | launches |", "|---|---|---:|---:|"]
    lines += [f"| `{r['case']}` | {r['shape']} float32 | {r['host_us']:.1f} | {r['launches']} |" for r in rows]
    return "\n".join(lines)
