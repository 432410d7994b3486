"""What a cold first call compiles, and how long that takes, measured without a GPU.

``python -m bench.first_call [--arch 90]`` runs each case (float32
1x3x192x192, default parameters) once on the emulator to record the
specialisations it launches, then times, each in a fresh process:

- NVRTC: one program per specialisation, compiled for ``sm_{arch}`` with the
  run-time options plus the ``-ftz=true`` CuPy appends, after the empty
  program CuPy compiles once to identify the compiler: what CuPy compiles on a
  GPU at the first call;
- the emulator: the g++ builds of the call's first run with an empty cache
  directory (its specialisations and the emulator's runtime).

For comparison it times what every first call compiled before compilation per
need: all specialisations of the family in one program (NVRTC) and in one
emulator module (with its runtime). Each figure is CPU seconds (this process
and the compilers it ran; the same as wall seconds on an idle machine), with
the wall seconds beside it. Prints a Markdown table; the figures of this
machine are in ``bench/NOTES.md``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

CASES = ("ssim", "dssim_with_gradient", "ms_ssim", "ms_ssim_with_gradient")
SHAPE = (1, 3, 192, 192)  # MS-SSIM's five scales need sides above 160


def _inputs():
    rng = np.random.default_rng(0)
    x = rng.random(SHAPE, dtype=np.float32)
    return x, np.clip(x + 0.05 * rng.standard_normal(SHAPE, dtype=np.float32), 0, 1)


def launched_specialisations(case: str) -> list:
    """(family, name) of every kernel ``cussim.<case>`` asks for, in order, run on the emulator."""
    os.environ["CUSSIM_NUMPY_BACKEND"] = "emulator"
    import cussim
    from cussim import _kernels

    asked = []
    build = _kernels.emulated_kernel

    def recording(family, name):
        if (family, name) not in asked:
            asked.append((family, name))
        return build(family, name)

    _kernels.emulated_kernel = recording
    try:
        getattr(cussim, case)(*_inputs())
    finally:
        _kernels.emulated_kernel = build
    return asked


class Clock:
    """Wall and CPU seconds (this process and the children it waited for, such as g++) since creation."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), sum(os.times()[:4])

    def read(self) -> tuple:
        return time.perf_counter() - self.wall, sum(os.times()[:4]) - self.cpu


def _nvrtc_seconds(programs, arch: int) -> tuple:
    """(wall, CPU) seconds to compile ``programs``, (family, name expressions) each, as CuPy would."""
    from cussim import _kernels, _nvrtc

    options = _kernels.RUN_TIME_OPTIONS
    clock = Clock()
    _nvrtc.compile_report("", options, (), arch)
    for family, names in programs:
        _nvrtc.compile_report(_kernels.kernel_source(family), options, names, arch, f"{family}.cu")
    return clock.read()


def _emulator_first_call(case: str, cache: str) -> tuple:
    """(wall, CPU) seconds of the g++ builds in the first call on the emulator, with an empty cache directory."""
    os.environ.update(CUSSIM_CACHE_DIR=cache, CUSSIM_NUMPY_BACKEND="emulator")
    import cussim
    from cussim._emulator import _build

    spent, build = [0.0, 0.0], _build.build_module

    def timed(*args, **kwargs):
        clock = Clock()
        try:
            return build(*args, **kwargs)
        finally:
            spent[:] = [total + part for total, part in zip(spent, clock.read())]

    _build.build_module = timed
    getattr(cussim, case)(*_inputs())
    return tuple(spent)


def _emulator_one_module_seconds(family: str, cache: str) -> tuple:
    os.environ["CUSSIM_CACHE_DIR"] = cache
    from cussim import _emulator, _kernels

    clock = Clock()
    _emulator.RawModule(code=_kernels.kernel_source(family), options=_kernels.COMPILE_OPTIONS,
                        name_expressions=_kernels.specialisations(family), filename=f"{family}.cu").compile()
    return clock.read()


def _fresh(function, *args):
    """``function(*args)`` in a new process: nothing compiled or loaded before it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def measure(arch: int) -> list:
    """One row per case, then the whole family in one program: what each first call compiled before."""
    from cussim import _kernels

    rows = []
    for case in CASES:
        launched = _fresh(launched_specialisations, case)
        with tempfile.TemporaryDirectory() as cache:
            emulator = _fresh(_emulator_first_call, case, cache)
        nvrtc = _fresh(_nvrtc_seconds, [(family, (name,)) for family, name in launched], arch)
        rows.append((case, [name for _, name in launched], nvrtc, emulator))
    every = _kernels.specialisations("ssim")
    with tempfile.TemporaryDirectory() as cache:
        nvrtc = _fresh(_nvrtc_seconds, [("ssim", every)], arch)
        rows.append(("before: any first call", [f"all {len(every)} specialisations, one program"], nvrtc,
                     _fresh(_emulator_one_module_seconds, "ssim", cache)))
    return rows


def table(rows, arch: int) -> str:
    lines = [f"| first call, float32 {'x'.join(map(str, SHAPE))} | compiles | NVRTC sm_{arch}, CPU (wall) s "
             "| emulator's g++ builds, cold cache, CPU (wall) s |", "|---|---|---|---|"]
    for case, names, (nvrtc_wall, nvrtc_cpu), (emu_wall, emu_cpu) in rows:
        lines.append(f"| {case} | {', '.join(names)} | {nvrtc_cpu:.2f} ({nvrtc_wall:.2f}) "
                     f"| {emu_cpu:.2f} ({emu_wall:.2f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_call", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="NVRTC target, sm_ARCH (default 90)")
    args = parser.parse_args(argv)
    print(table(measure(args.arch), args.arch))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
          "CPU seconds equal wall seconds on an idle machine")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
