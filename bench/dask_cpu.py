"""cussim on Dask, on the CPU: one pair larger than memory allows in float64, and the command line on workers.

``python -m bench.dask_cpu`` measures, each case in a fresh Python process
(peak resident memory is the child's own VmHWM from /proc, Dask's threads
included):

- ``big``: ``cussim.dask.ssim`` of a ``--side`` x ``--side`` float32 pair
  (default 20,000 x 20,000, made chunk by chunk from a seeded generator, never
  whole in memory) in ``--chunk``-sized chunks, with the threaded scheduler;
  the in-memory float64 path would hold each 1.6 GB float32 image as a
  3.2 GB float64 copy and several float64 moment planes on top;
- ``held``: how many chunk-sized arrays Dask's synchronous scheduler holds at
  once (``chunks_held``) for each ``cussim.dask`` computation on a 6 x 6 grid
  of 64 x 64 float64 chunks of x and y, each chunk made by its own task (as
  read from files): about a row of chunks means the graph streams;
- ``cli``: the ``cussim`` command (``--skimage``, CSV) on ``--pairs`` pairs of
  ``--size`` x ``--size`` RGB PNGs in one process, and with ``--workers 1`` and
  ``--workers 2`` (each run's wall clock includes starting its cluster).

It prints a Markdown table; ``--output FILE`` also writes the numbers as JSON.
Wall clock from ``time.perf_counter`` around the whole computation (for ``big``,
building the lazy graph included).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_gb() -> float:
    """This process's peak resident set (VmHWM), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def big_pair(side: int, chunk: int) -> dict:
    import dask
    import dask.array as da
    import numpy as np

    import cussim.dask

    rng = da.random.default_rng(0)
    x = rng.random((side, side), dtype=np.float32, chunks=chunk)
    y = da.clip(x + rng.standard_normal((side, side), dtype=np.float32, chunks=chunk) * np.float32(0.1), 0, 1)
    start = time.perf_counter()  # building the graph counts: it once copied both images whole
    lazy = cussim.dask.ssim(x, y)
    with dask.config.set(scheduler="threads"):
        value = float(lazy.compute())
    return {"case": "big", "side": side, "chunk": chunk, "ssim": value, "seconds": time.perf_counter() - start,
            "peak_rss_gb": peak_rss_gb()}


def chunks_held(lazy, chunk_bytes: int) -> int:
    """The most arrays of at least half ``chunk_bytes`` that Dask's synchronous scheduler holds at once while
    computing ``lazy`` (a view counts as the array it views, which it keeps alive)."""
    import dask
    import numpy as np
    from dask.callbacks import Callback

    most = 0

    def count(key, result, dsk, state, worker_id):
        nonlocal most
        held = set()
        for value in state["cache"].values():
            for a in value if isinstance(value, tuple) else (value,):
                while isinstance(a, np.ndarray) and isinstance(a.base, np.ndarray):
                    a = a.base
                if isinstance(a, np.ndarray) and a.nbytes >= chunk_bytes // 2:
                    held.add(id(a))
        most = max(most, len(held))

    with Callback(posttask=count), dask.config.set(scheduler="synchronous"):
        lazy.compute()
    return most


def held_grid(n: int = 6, side: int = 64) -> list[dict]:
    import dask.array as da
    import numpy as np

    import cussim.dask as cd

    def read(which, block_info=None):
        return np.random.default_rng([which, *block_info[None]["chunk-location"]]).random((side, side))

    x, y = (da.map_blocks(read, which, chunks=((side,) * n,) * 2, dtype=np.float64) for which in (0, 1))
    computations = {"ssim": cd.ssim(x, y), 'ssim(padding="valid")': cd.ssim(x, y, padding="valid"),
                    "ssim_with_gradient's value": cd.ssim_with_gradient(x, y)[0], "ms_ssim": cd.ms_ssim(x, y),
                    "ssim_map(...).sum()": cd.ssim_map(x, y).sum(),
                    "ssim_with_gradient(...)[1].sum()": cd.ssim_with_gradient(x, y)[1].sum()}
    rows = []
    for label, lazy in computations.items():
        start = time.perf_counter()
        held = chunks_held(lazy, side * side * 8)
        rows.append({"case": "held", "run": label, "grid": n, "side": side, "seconds": time.perf_counter() - start,
                     "chunks_held": held, "input_chunks": 2 * n * n})
    return rows


def cli_runs(pairs: int, size: int) -> list[dict]:
    from bench.folders import write_pairs
    from cussim import _cli

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ref, test = write_pairs(Path(tmp), pairs, size)
        outputs = {}
        for label, extra in (("one process", []), ("--workers 1", ["--workers", "1"]),
                             ("--workers 2", ["--workers", "2"])):
            out = io.StringIO()
            start = time.perf_counter()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                code = _cli.main([str(ref), str(test), "--skimage", "--format", "csv", "--device", "cpu", *extra])
            seconds = time.perf_counter() - start
            outputs[label] = out.getvalue()
            rows.append({"case": "cli", "run": label, "pairs": pairs, "size": size, "exit_code": code,
                         "seconds": seconds, "pairs_per_second": pairs / seconds,
                         "same_rows_as_one_process": outputs[label] == outputs["one process"]})
    return rows


def child(case: str, args) -> list[dict]:
    """Runs one case in a fresh interpreter (so its peak memory is its own) and returns its rows."""
    command = [sys.executable, "-m", "bench.dask_cpu", "--child", case, "--side", str(args.side), "--chunk",
               str(args.chunk), "--pairs", str(args.pairs), "--size", str(args.size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.splitlines()[-1])


def machine() -> str:
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} CPUs"


def table(rows) -> str:
    lines = ["| case | seconds | result |", "|---|---|---|"]
    for r in rows:
        if r["case"] == "big":
            lines.append(f"| {r['side']} x {r['side']} float32 pair, chunks {r['chunk']} | {r['seconds']:.1f} | "
                         f"SSIM {r['ssim']:.6f}, peak RSS {r['peak_rss_gb']:.2f} GB |")
        elif r["case"] == "held":
            lines.append(f"| `{r['run']}`, {r['grid']} x {r['grid']} chunks of {r['side']}^2 float64 | "
                         f"{r['seconds']:.1f} | {r['chunks_held']} of {r['input_chunks']} input chunks' worth held |")
        else:
            lines.append(f"| `cussim` {r['run']}, {r['pairs']} pairs of {r['size']}x{r['size']} RGB | "
                         f"{r['seconds']:.1f} | {r['pairs_per_second']:.1f} pairs/s, exit {r['exit_code']}, "
                         f"rows {'identical' if r['same_rows_as_one_process'] else 'DIFFERENT'} |")
    return "\n".join(lines)


CASES = ("big", "held", "cli")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.dask_cpu", description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20_000, help="side of the big pair (default 20000)")
    parser.add_argument("--chunk", type=int, default=2048, help="chunk side of the big pair (default 2048)")
    parser.add_argument("--pairs", type=int, default=200, help="PNG pairs for the command line (default 200)")
    parser.add_argument("--size", type=int, default=512, help="side of those PNGs (default 512)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--output", metavar="FILE", help="also write the rows as JSON to FILE")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        rows = {"big": lambda: [big_pair(args.side, args.chunk)], "held": held_grid,
                "cli": lambda: cli_runs(args.pairs, args.size)}[args.child]()
        print(json.dumps(rows))
        return
    rows = [row for case in args.cases for row in child(case, args)]
    print(f"machine: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(table(rows))
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
