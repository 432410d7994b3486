"""Pairs per second for folders of PNGs: the cussim command against scikit-image in a loop.

``python -m bench.folders [--pairs 1000] [--size 512]`` writes that many
pairs of size x size RGB PNGs (a sample image and a noisy copy) to a temporary
folder, then times, each reading and decoding the files itself:

- ``cussim REF TEST --skimage`` on the CPU (the float64 reference path),
- the same on the GPU when CuPy finds one,
- ``skimage.metrics.structural_similarity`` in a loop over the pairs,

and writes ``folders-<machine>.json`` where ``--output`` says (default
``bench/local-results/``, ignored by git; ``--output bench/results`` for a
run to commit). Wall-clock seconds of whole runs (``time.perf_counter``), so
decoding and writing are included.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import RESULTS  # the default output folder, ignored by git


def write_pairs(root: Path, pairs: int, size: int) -> tuple[Path, Path]:
    import imageio.v3 as iio
    from skimage import data, transform

    base = (transform.resize(data.astronaut(), (size, size, 3)) * 255).astype(np.uint8)
    ref, test = root / "ref", root / "test"
    ref.mkdir()
    test.mkdir()
    rng = np.random.default_rng(0)
    for i in range(pairs):
        reference = np.roll(base, i, axis=1)
        iio.imwrite(ref / f"{i:05d}.png", reference)
        iio.imwrite(test / f"{i:05d}.png", np.clip(reference + rng.normal(0, 10, reference.shape), 0, 255)
                    .astype(np.uint8))
    return ref, test


def time_cussim(ref: Path, test: Path, device: str) -> float:
    from cussim import _cli

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = _cli.main([str(ref), str(test), "--skimage", "--format", "csv", "--device", device])
    if code != 0:
        raise RuntimeError(f"cussim exited with {code}")
    return time.perf_counter() - start


def time_skimage(ref: Path, test: Path) -> float:
    import imageio.v3 as iio
    from skimage.metrics import structural_similarity

    start = time.perf_counter()
    for path in sorted(ref.iterdir()):
        a, b = iio.imread(path), iio.imread(test / path.name)
        structural_similarity(a, b, channel_axis=-1, data_range=255)
    return time.perf_counter() - start


def machine() -> str:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # no GPU: the CPU names the machine
        pass
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = found.group(1).strip() if found else model
    return f"{model}, {os.cpu_count()} cores (no GPU)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.folders", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for the results (default bench/local-results, which git ignores)")
    args = parser.parse_args(argv)
    from cussim._pairs import _gpu

    name = machine()
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        ref, test = write_pairs(Path(folder), args.pairs, args.size)
        rows["cussim CPU"] = time_cussim(ref, test, "cpu")
        if _gpu()[0] is not None:
            rows["cussim GPU"] = time_cussim(ref, test, "gpu")
        rows["skimage loop"] = time_skimage(ref, test)
    print(f"{args.pairs} pairs of {args.size}x{args.size} RGB PNGs on {name}")
    for label, seconds in rows.items():
        print(f"{label:<14} {seconds:8.2f} s {args.pairs / seconds:9.1f} pairs/s")
    output = args.output or RESULTS
    output.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    (output / f"folders-{stem}.json").write_text(json.dumps({
        "machine": name, "pairs": args.pairs, "size": args.size,
        "seconds": rows, "pairs_per_second": {k: args.pairs / v for k, v in rows.items()},
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
