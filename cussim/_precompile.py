"""``cussim precompile``: compile kernels ahead of time, so that a first call starts warm.

A call compiles the kernel specialisations it launches the first time it
launches them (NVRTC through CuPy on a GPU, g++ for the emulator), and both
keep what they compiled on disk. This command fills those caches ahead of
time, for a container image, a cluster worker or a notebook server::

    cussim precompile                            # every specialisation, every GPU present
    cussim precompile ssim                       # every specialisation of one family
    cussim precompile "ssim_forward<float, 5>" "ssim_backward<float, 5>"
    cussim precompile --emulator                 # the CPU emulator's modules instead
    cussim precompile --list                     # the names it knows

On a GPU, each specialisation is compiled through CuPy for every GPU CuPy
sees, exactly as a first call would, into CuPy's kernel cache
(``$CUPY_CACHE_DIR``, default ``~/.cupy/kernel_cache``); a later process with
the same CuPy, CUDA and GPU architecture loads it instead of compiling. CuPy
reads modules with name expressions back from its disk cache from version 14.2
on (14.0 always compiles them again; 14.1 looks their kernels up by demangled
name, which misses names holding enumerators or typedefs, as cussim's do). Architectures
cannot be named: CuPy compiles for the devices it sees and keys its cache by
them. ``--emulator`` builds the emulator's modules into
``$CUSSIM_CACHE_DIR/emulator`` (no GPU needed).

Unless ``--quiet``, it says on stderr what it compiles, where and why, and
shows a progress bar on a terminal.

Exit codes: 0 everything asked for was compiled; 2 a usage error (an unknown
name); 3 nothing could be compiled for a GPU here (no CuPy, no GPU, CuPy older
than 14.2, or ``CUPY_CACHE_IN_MEMORY`` set), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from . import _kernels

NO_GPU = 3  # the exit code when nothing can be compiled for a GPU here
CUPY_KEEPS_NAME_EXPRESSIONS = (14, 2)  # the first CuPy release that reads such modules back from its disk cache


def resolve(names) -> list:
    """(family, specialisation) for each name: a family stands for all of its specialisations, a name
    without its options argument (``ssim_forward<float, 5>``) for each of its option sets.

    Raises ValueError naming the first unknown name. No names: everything.

    Examples
    --------
    >>> resolve(["ssim_finish<float>"])
    [('ssim', 'ssim_finish<float>')]
    >>> len(resolve(["ssim_forward<float, 5>"])) == len(_kernels.FORWARD_OPTIONS)
    True
    >>> len(resolve([])) == sum(len(_kernels.specialisations(f)) for f in _kernels.FAMILIES)
    True
    """
    groups = {}
    for family in _kernels.FAMILIES:
        for name in _kernels.specialisations(family):
            groups.setdefault(name, []).append((family, name))
            if _kernels.without_options(name) != name:
                groups.setdefault(_kernels.without_options(name), []).append((family, name))
    chosen = []
    for name in names or list(_kernels.FAMILIES):
        if name in _kernels.FAMILIES:
            chosen += [(name, s) for s in _kernels.specialisations(name)]
        elif name in groups:
            chosen += groups[name]
        else:
            raise ValueError(f"unknown kernel {name!r}: name a family ({', '.join(_kernels.FAMILIES)}) or a "
                             "specialisation as `cussim precompile --list` prints it, e.g. 'ssim_forward<float, 5>'")
    return list(dict.fromkeys(chosen))


KEEPS_NAME_EXPRESSIONS_TEXT = ".".join(map(str, CUPY_KEEPS_NAME_EXPRESSIONS))


def release(version: str) -> tuple:
    """(major, minor) of a version string.

    >>> release("14.2.0"), release("15.0.0rc1")
    ((14, 2), (15, 0))
    """
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in version.split(".")[:2])


def gpu_devices():
    """(CuPy, [device ids]) where kernels can be compiled into CuPy's disk cache, or (None, why not)."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no CuPy, no driver
        return None, f"no GPU: CuPy cannot reach one ({type(exc).__name__}: {exc})"
    if count == 0:
        return None, "no GPU: CuPy sees no CUDA device"
    if release(cupy.__version__) < CUPY_KEEPS_NAME_EXPRESSIONS:
        return None, (f"CuPy {cupy.__version__} compiles modules with name expressions again in every process; "
                      f"CuPy {KEEPS_NAME_EXPRESSIONS_TEXT} or newer reads them back from its disk cache: upgrade CuPy")
    if os.environ.get("CUPY_CACHE_IN_MEMORY", "0") not in ("", "0"):
        return None, "CUPY_CACHE_IN_MEMORY is set: CuPy keeps nothing on disk; unset it to precompile"
    return cupy, list(range(count))


def _run(build, chosen, jobs: int, quiet: bool, why: str) -> float:
    """Calls ``build(family, name)`` for each chosen specialisation, ``jobs`` at a time, saying ``why`` first and
    showing a progress bar (unless ``quiet``); returns the seconds."""
    from ._progress import progress_bar

    if not quiet:
        print(f"cussim precompile: {why}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(jobs) as pool, progress_bar(len(chosen), unit="kernel", quiet=quiet) as bar:
        for _ in pool.map(lambda item: build(*item), chosen):  # NVRTC and g++ run outside the GIL
            bar.update()
    return time.perf_counter() - start


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cussim precompile", description="Compile cussim's kernels ahead of time into the on-disk caches "
        "that a first call reads (CuPy's for every GPU present, or the emulator's).",
        epilog=f"Exit codes: 0 done, 2 usage error, {NO_GPU} no GPU to compile for (or CuPy older than "
        f"{KEEPS_NAME_EXPRESSIONS_TEXT}, or CUPY_CACHE_IN_MEMORY set).")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="a family (ssim) or a specialisation ('ssim_forward<float, 5>'); default: all")
    p.add_argument("--emulator", action="store_true", help="build the CPU emulator's modules instead (no GPU needed)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="compilations at a time (default: the number of CPUs)")
    p.add_argument("--list", action="store_true", help="print every specialisation and exit")
    p.add_argument("--quiet", action="store_true",
                   help="print only the result: not what is compiled and why, nor the progress bar")
    return p


def main(argv=None) -> int:
    args_parser = parser()
    args = args_parser.parse_args(argv)
    if args.jobs < 1:
        args_parser.error(f"--jobs must be at least 1, got {args.jobs}")
    try:
        chosen = resolve(args.names)
    except ValueError as exc:
        args_parser.error(str(exc))
    if args.list:
        print("\n".join(name for _, name in chosen))
        return 0
    if args.emulator:
        from ._emulator import _build

        why = (f"building {len(chosen)} kernel specialisations for the CPU emulator with g++, {args.jobs} at a time "
               f"(seconds each), into {_build.cache_dir()}, so that a first call on NumPy arrays with "
               "CUSSIM_NUMPY_BACKEND=emulator loads them instead of compiling")
        announce, _build.announce_builds = _build.announce_builds, False  # the bar shows the progress
        try:
            seconds = _run(_kernels.emulated_kernel, chosen, args.jobs, args.quiet, why)
        finally:
            _build.announce_builds = announce
        print(f"emulator: {len(chosen)} specialisations built in {seconds:.1f} s into {_build.cache_dir()}")
        return 0
    cupy, devices = gpu_devices()
    if cupy is None:
        print(f"cussim precompile: {devices}; nothing compiled (exit code {NO_GPU}). "
              "`cussim precompile --emulator` fills the CPU emulator's cache.", file=sys.stderr)
        return NO_GPU
    for device in devices:
        name = cupy.cuda.runtime.getDeviceProperties(device)["name"].decode()
        arch = cupy.cuda.Device(device).compute_capability
        why = (f"compiling {len(chosen)} kernel specialisations with NVRTC for GPU {device} ({name}, sm_{arch}), "
               f"{args.jobs} at a time, into CuPy's kernel cache, so that a first call loads them instead of "
               "compiling")
        seconds = _run(lambda family, spec: _kernels.cupy_kernel(family, spec, device), chosen, args.jobs,
                       args.quiet, why)
        print(f"GPU {device} ({name}, sm_{arch}): {len(chosen)} specialisations compiled in {seconds:.1f} s "
              f"into CuPy's kernel cache ({os.environ.get('CUPY_CACHE_DIR', '~/.cupy/kernel_cache')})")
    return 0
