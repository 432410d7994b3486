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
- masks at 1x3x1080x1920, float32 (bench/cases.py, ``masked_cases``): SSIM
  with a mask in mean and normalized mode and MS-SSIM with one, the value and
  the value with its gradient in place, beside the unmasked rows;
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

``--quick`` (bench/gpu.sh's case list): the two ceilings, then SSIM at
1x3x1080x1920 and 5x1x1500x1500, float32, the value and the value with its
gradient, cussim against fussim and the PyTorch peers that import, each
peer's value checked first, then the masked cases at the first shape (with
the unmasked MS-SSIM beside them). ``--quick --rehearse`` runs it without a GPU:
bench/cupy_standin.py in CuPy's place (the kernels on the emulator), PyTorch on
the CPU, small shapes; it checks the code, its times mean nothing.

This module is the command line; the run is in bench/cases.py (the cases and the whole GPU or CPU run),
bench/compare.py (each peer checked and timed beside cussim), bench/timing.py (the clocks, the ceilings and
the floors) and bench/report.py (the Markdown and the files).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from dataclasses import asdict
from pathlib import Path

from bench.cases import QUICK_SHAPES, REHEARSAL_SHAPES, SHAPES, cpu_run, gpu_run, quick_run
from bench.report import RESULTS, markdown, write_results
from bench.timing import CASES, work_per_pixel


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per case (median reported)")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for the results (default bench/local-results, which git ignores; "
                             "bench/results holds the runs committed on purpose)")
    parser.add_argument("--host-overhead", action="store_true",
                        help="only the host time per call, with kernel launches recorded instead of run (no GPU)")
    parser.add_argument("--quick", action="store_true",
                        help="only bench/gpu.sh's short case list: SSIM float32 at 1x3x1080x1920 and 5x1x1500x1500, "
                             "against fussim and the PyTorch peers, with the ceilings")
    parser.add_argument("--rehearse", action="store_true",
                        help="with --quick, without a GPU: bench/cupy_standin.py in CuPy's place (the kernels on the "
                             "emulator), small shapes; it checks the code, its times mean nothing")
    args = parser.parse_args(argv)
    if args.rehearse and not args.quick:
        parser.error("--rehearse rehearses --quick: give both")
    import cussim
    from bench.folders import machine

    if args.host_overhead:
        from bench import host

        print(host.markdown(host.run(cussim, args.repeats), machine()))
        return 0

    record = {"python": platform.python_version(), "date": datetime.date.today().isoformat(),
              "work_per_pixel": {case: asdict(work_per_pixel(case)) for case in CASES}}
    try:
        if args.rehearse:
            os.environ["CUSSIM_NUMPY_BACKEND"] = "emulator"
            from bench import cupy_standin

            cupy = cupy_standin.install()
        else:
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
        note = "A rehearsal on bench/cupy_standin.py (the emulator): these times mean nothing." \
            if args.rehearse else ""
        if args.quick:
            shapes = REHEARSAL_SHAPES if args.rehearse else {label: SHAPES[label] for label in QUICK_SHAPES}
            limits, rows = quick_run(cupy, cussim, args.repeats, shapes, args.rehearse)
        else:
            limits, rows = gpu_run(cupy, cussim, args.repeats)
        record.update(limits, cupy=cupy.__version__)
    record.update(machine=name, cases=rows)
    text = markdown(name, limits, rows, note)
    stem = write_results(args.output or RESULTS, name, record, text, rows)
    print(text)
    print(f"written: {stem}.json, .md")
    return 0
