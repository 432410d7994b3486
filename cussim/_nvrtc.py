"""NVRTC without a GPU: compile kernels to cubin and read ptxas's report.

NVRTC (``libnvrtc``, from the ``nvidia-cuda-nvrtc-cu12`` wheel or a CUDA
toolkit) compiles for any architecture it knows, with no driver and no device.
With ``-arch=sm_XX --ptxas-options=-v`` its program log lists, per kernel, the
registers, barriers, shared memory, stack frame and spill bytes. The tests use
this to check every kernel specialisation the library can request; run
``python -m cussim._nvrtc`` for the table.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.util
import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path


class NVRTCError(RuntimeError):
    """NVRTC could not be loaded, or a compilation failed; ``log`` holds its messages."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(f"{message}\n{log}".rstrip())
        self.log = log


@dataclass(frozen=True)
class KernelResources:
    """ptxas's resource report for one kernel on one architecture."""

    name: str
    arch: int
    registers: int
    barriers: int
    shared_bytes: int
    stack_frame: int
    spill_stores: int
    spill_loads: int


@dataclass(frozen=True)
class CompileReport:
    arch: int
    log: str
    kernels: tuple  # of KernelResources, in name_expressions order

    @property
    def warnings(self) -> list[str]:
        """Warnings about the source (the toolchain's notice that an old architecture is deprecated is not one)."""
        return [line for line in self._warning_lines() if not _ARCH_DEPRECATION.search(line)]

    @property
    def notices(self) -> list[str]:
        """The toolchain's own notices, e.g. that sm_70 is deprecated in CUDA 12."""
        return [line for line in self._warning_lines() if _ARCH_DEPRECATION.search(line)]

    def _warning_lines(self) -> list[str]:
        return [line for line in self.log.splitlines() if re.search(r"\bwarning\b", line, re.I)]


def _candidate_paths():
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        yield from sorted(glob.glob(os.path.join(root, "cuda_nvrtc", "lib", "libnvrtc.so*")))
        yield from sorted(glob.glob(os.path.join(root, "cu1*", "lib", "libnvrtc.so*")))
    for env in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(env):
            yield from sorted(glob.glob(os.path.join(os.environ[env], "lib64", "libnvrtc.so*")))
    yield "libnvrtc.so"


@lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """Loads libnvrtc: the NVIDIA wheel first, then $CUDA_PATH, then the system's."""
    tried = []
    for path in _candidate_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            tried.append(f"{path}: {exc}")
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        return lib
    raise NVRTCError(
        'libnvrtc not found; install cussim\'s `test` extra from a clone of cussim, `pip install -e ".[test]"`, '
        'which brings NVRTC as the nvidia-cuda-nvrtc-cu12 wheel (or `pip install nvidia-cuda-nvrtc-cu12`)',
        "\n".join(tried),
    )


def version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    library().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def supported_archs() -> list[int]:
    """Architectures this NVRTC can compile for, e.g. [70, 75, 80, ..., 120]."""
    lib = library()
    count = ctypes.c_int()
    lib.nvrtcGetNumSupportedArchs(ctypes.byref(count))
    archs = (ctypes.c_int * count.value)()
    lib.nvrtcGetSupportedArchs(archs)
    return list(archs)


def _check(status: int, what: str, log: str = "") -> None:
    if status != 0:
        raise NVRTCError(f"{what}: {library().nvrtcGetErrorString(status).decode()}", log)


_ARCH_DEPRECATION = re.compile(r"nvrtc: warning: Architectures prior to .* are deprecated")
_PROPERTIES = re.compile(
    r"Function properties for (\S+)\s*\n[^\n]*?(\d+) bytes stack frame, (\d+) bytes spill stores, "
    r"(\d+) bytes spill loads"
)
_ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_\d+'")
_USED = re.compile(r"Used (\d+) registers")
_BARRIERS = re.compile(r"used (\d+) barriers")
_SMEM = re.compile(r"(\d+) bytes smem")


def _usage(log: str):
    """(mangled name, registers, barriers, shared bytes) per entry function, in log order."""
    usage, current = [], None
    for line in log.splitlines():
        entry = _ENTRY.search(line)
        if entry:
            current = entry.group(1)
        used = _USED.search(line)
        if used and current:
            barriers, smem = _BARRIERS.search(line), _SMEM.search(line)
            usage.append((current, int(used.group(1)), int(barriers.group(1)) if barriers else 0,
                          int(smem.group(1)) if smem else 0))
            current = None
    return usage


def _compile(source: str, options, name_expressions, arch: int, filename: str, want_cubin: bool):
    """(log, {mangled: name expression}, cubin bytes or None) of one NVRTC compilation for ``sm_{arch}``."""
    lib = library()
    program = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), filename.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        for name in name_expressions:
            _check(lib.nvrtcAddNameExpression(program, name.encode()), f"nvrtcAddNameExpression({name})")
        opts = [*options, f"-arch=sm_{arch}", "--ptxas-options=-v"]
        array = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        status = lib.nvrtcCompileProgram(program, len(opts), array)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        buffer = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(program, buffer)
        log = buffer.value.decode(errors="replace")
        _check(status, f"NVRTC compilation of {filename} for sm_{arch}", log)
        lowered = {}
        for name in name_expressions:
            mangled = ctypes.c_char_p()
            _check(lib.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(mangled)), f"lowered name of {name}")
            lowered[mangled.value.decode()] = name
        cubin = None
        if want_cubin:
            lib.nvrtcGetCUBINSize(program, ctypes.byref(size))
            data = ctypes.create_string_buffer(size.value)
            _check(lib.nvrtcGetCUBIN(program, data), "nvrtcGetCUBIN")
            cubin = data.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))
    return log, lowered, cubin


def compile_cubin(source: str, options=(), name_expressions=(), arch: int = 90, filename: str = "kernel.cu"):
    """(cubin bytes, {mangled name: name expression}) of ``source`` for ``sm_{arch}`` (for a disassembler)."""
    _, lowered, cubin = _compile(source, options, name_expressions, arch, filename, True)
    return cubin, lowered


def compile_report(source: str, options=(), name_expressions=(), arch: int = 90, filename: str = "kernel.cu"):
    """Compiles ``source`` to a cubin for ``sm_{arch}`` and returns its :class:`CompileReport`.

    Raises :class:`NVRTCError` with NVRTC's log when the compilation fails.
    """
    log, lowered, _ = _compile(source, options, name_expressions, arch, filename, False)
    return CompileReport(arch=arch, log=log, kernels=kernel_resources(log, lowered, arch))


def kernel_resources(log: str, lowered: dict, arch: int) -> tuple:
    """The :class:`KernelResources` of each entry function in ptxas's report ``log``, named by ``lowered``
    ({mangled name: name expression}; a name not in it stays mangled), or NVRTCError where a figure is missing."""
    frames = {m.group(1): tuple(int(g) for g in m.groups()[1:]) for m in _PROPERTIES.finditer(log)}
    kernels = []
    for mangled, registers, barriers, shared in _usage(log):
        if mangled not in frames:
            raise NVRTCError(f"no stack and spill figures for {mangled} in ptxas's report", log)
        stack, stores, loads = frames[mangled]
        kernels.append(KernelResources(
            name=lowered.get(mangled, mangled), arch=arch, registers=registers, barriers=barriers,
            shared_bytes=shared, stack_frame=stack, spill_stores=stores, spill_loads=loads,
        ))
    return tuple(kernels)


def _report_from_cache(path: Path):
    data = json.loads(path.read_text())
    return CompileReport(arch=data["arch"], log=data["log"],
                         kernels=tuple(KernelResources(**k) for k in data["kernels"]))


def _report_to_cache(path: Path, report: CompileReport) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(report)))
    os.replace(tmp, path)


def _cache_key(job: dict) -> str:
    return hashlib.sha256(json.dumps([version(), job], sort_keys=True).encode()).hexdigest()[:32]


def compile_reports(jobs, *, workers: int | None = None, cache: Path | None = None) -> list:
    """:func:`compile_report` of each job (a dict of its keyword arguments), in parallel processes.

    ``workers`` processes at a time (default: one per CPU). With ``cache``, a
    folder, each report is kept there under a hash of the job and NVRTC's
    version, and read back instead of compiling the same inputs again.
    """
    jobs = [dict(job) for job in jobs]
    paths = [cache / f"report-{_cache_key(job)}.json" if cache is not None else None for job in jobs]
    reports = [_report_from_cache(path) if path is not None and path.exists() else None for path in paths]
    missing = [i for i, report in enumerate(reports) if report is None]
    if missing:
        # spawn: the compiling processes share nothing with this one (which may hold threads, e.g. PyTorch's)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(len(missing), workers or os.cpu_count() or 1), mp_context=context) as pool:
            futures = {i: pool.submit(_compile_job, jobs[i]) for i in missing}
            for i, future in futures.items():
                reports[i] = future.result()
                if paths[i] is not None:
                    _report_to_cache(paths[i], reports[i])
    return reports


def _compile_job(job: dict) -> CompileReport:
    return compile_report(**job)


def format_table(reports) -> str:
    """One line per kernel and architecture: registers, barriers, shared memory, stack, spills."""
    lines = [f"{'kernel':<40} {'arch':>6} {'regs':>5} {'bars':>5} {'smem':>6} {'stack':>6} {'spill st/ld':>12}"]
    for report in reports:
        for k in report.kernels:
            lines.append(
                f"{k.name:<40} sm_{k.arch:<3} {k.registers:>5} {k.barriers:>5} {k.shared_bytes:>6} "
                f"{k.stack_frame:>6} {k.spill_stores:>5}/{k.spill_loads:<6}"
            )
    return "\n".join(lines)


def main() -> None:
    # This module's importable copy, also when it runs as __main__: the compiling processes unpickle the jobs'
    # function and their reports by module name, which __main__ is not wherever runpy ran it (a test).
    from . import _kernels, _nvrtc

    reports = _nvrtc.compile_reports(_kernels.compile_check_jobs(_nvrtc.supported_archs()))
    print(f"NVRTC {'.'.join(map(str, _nvrtc.version()))}")
    print(_nvrtc.format_table(reports))


if __name__ == "__main__":
    main()
