"""Turns a .cu source into a loadable shared library for the emulator.

The source is compiled unchanged but for one rewrite (``extern __shared__``
arrays become pointers into the launch's dynamic buffer), wrapped in a
translation unit that includes ``cuda_emulator.h`` first and ends with a table
of the kernels: every non-template ``__global__`` function by its name, and
every name expression (``ssim_forward<float, 5>``) by its text. C++ deduces
each kernel's parameter types from its function pointer, so Python needs no
C++ parser.

Builds are cached by content hash in ``cache_dir()``; a file lock per hash and
an atomic rename make concurrent builds from several processes safe. A build
takes seconds, so on a terminal each one says so on stderr (the first of a
process also what is compiled and why); ``announce_builds`` turns that off or on.

``CUSSIM_EMULATOR_FPMODE`` (read when a module is built, so set it before a
process's first launch) picks the floating-point arithmetic: ``exact`` (the
default: no contraction the source did not ask for, denormals kept) or
``gpu``, closer to what NVRTC builds under CuPy's ``-ftz=true``: multiply-adds
contracted into FMAs (``-ffp-contract=fast -mfma``) and denormals flushed to
zero (the MXCSR's FTZ and DAZ bits, set around each launch by
:func:`mxcsr_library`'s functions; on the CPU this flushes float64 too, which a
GPU does not).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ._errors import CompileError

HERE = Path(__file__).resolve().parent
INCLUDE_DIR = HERE / "include"
RUNTIME_SOURCE = HERE / "runtime.cpp"

# -ffp-contract=off: no fused multiply-adds the source did not ask for.
# -Wl,-Bsymbolic: the module's assert() reaches the runtime's __assert_fail.
CXX_FLAGS = ("-O1", "-fPIC", "-fno-strict-aliasing", "-ffp-contract=off", "-fno-fast-math", "-pthread")
DEFAULT_STD = "-std=c++17"
# CUSSIM_EMULATOR_FPMODE: g++ flags of the kernels and the runtime, after CXX_FLAGS (the last -ffp-contract wins;
# at -O1, g++ contracts only with -fexpensive-optimizations)
FP_MODES = {"exact": (), "gpu": ("-ffp-contract=fast", "-mfma", "-fexpensive-optimizations")}
FLUSH_DENORMALS = 0x8040  # the MXCSR's FTZ (bit 15) and DAZ (bit 6)
_MXCSR_SOURCE = """
extern "C" unsigned int emu_get_mxcsr() { unsigned int v; __asm__ volatile("stmxcsr %0" : "=m"(v)); return v; }
extern "C" void emu_set_mxcsr(unsigned int v) { __asm__ volatile("ldmxcsr %0" : : "m"(v)); }
"""

_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+((?:__align__\s*\(\s*\d+\s*\)\s+)?)([A-Za-z_][\w:\s<>,]*?)\s*"
    r"((?:__align__\s*\(\s*\d+\s*\)\s*)?)\b([A-Za-z_]\w*)\s*\[\s*\]\s*;"
)
_GLOBAL_FUNCTION = re.compile(r"__global__\b(?P<decl>[^;{(]*?)\b(?P<name>[A-Za-z_]\w*)\s*\(")
_LAUNCH_BOUNDS = re.compile(r"__launch_bounds__\s*\([^)]*\)")

# Whether a build says so on stderr: None, the default, when stderr is a terminal (`cussim precompile` sets it
# False: it shows its own progress).
announce_builds: bool | None = None
_announced = threading.Event()  # the first notice of a process says what and why; later ones are one line


def cache_dir() -> Path:
    """Where compiled modules live: $CUSSIM_CACHE_DIR/emulator, else the user's cache."""
    root = os.environ.get("CUSSIM_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cussim"
    return base / "emulator"


def strip_comments(source: str) -> str:
    """The source with comments and string literals blanked (line numbers kept)."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"', re.S)
    return pattern.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), source)


def kernel_names(source: str) -> tuple[list[str], list[str]]:
    """(non-template kernels, template kernels) declared ``__global__`` in ``source``."""
    code = _LAUNCH_BOUNDS.sub(lambda m: " " * len(m.group(0)), strip_comments(source))
    plain, templates = [], []
    for match in _GLOBAL_FUNCTION.finditer(code):
        head = code[: match.start()]
        start = max(head.rfind(";"), head.rfind("}"), head.rfind("{"))
        is_template = re.search(r"\btemplate\b", head[start + 1 :]) is not None
        (templates if is_template else plain).append(match.group("name"))
    return plain, templates


def rewrite_extern_shared(source: str) -> str:
    """``extern __shared__ T name[];`` -> a pointer into the dynamic shared buffer."""

    def pointer(m: re.Match) -> str:
        ctype = " ".join(m.group(2).split())
        return f"{ctype}* {m.group(4)} = reinterpret_cast<{ctype}*>(::emu::dynamic_shared());"

    return _EXTERN_SHARED.sub(pointer, source)


def fp_mode() -> str:
    """``CUSSIM_EMULATOR_FPMODE``: "exact" (the default) or "gpu" (see the module's docstring)."""
    mode = os.environ.get("CUSSIM_EMULATOR_FPMODE", "exact").strip().lower() or "exact"
    if mode not in FP_MODES:
        raise ValueError(f"CUSSIM_EMULATOR_FPMODE={mode!r}: use one of {', '.join(FP_MODES)}")
    if mode == "gpu" and (platform.machine() != "x86_64" or not _cpu_has_fma()):
        raise ValueError("CUSSIM_EMULATOR_FPMODE=gpu needs an x86-64 CPU with FMA (it contracts with -mfma and "
                         f"flushes denormals through the MXCSR); this one is {platform.machine()} (FMA: "
                         f"{'yes' if _cpu_has_fma() else 'no'}): use CUSSIM_EMULATOR_FPMODE=exact")
    return mode


@functools.lru_cache(maxsize=None)
def _cpu_has_fma() -> bool:
    try:
        return any(line.startswith("flags") and " fma " in f"{line} " for line in Path("/proc/cpuinfo").open())
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def mxcsr_library():
    """emu_get_mxcsr() and emu_set_mxcsr(value): the calling thread's SSE control register (x86-64), which a
    launch's fibers take from the thread that launches them."""
    import ctypes

    target = cache_dir() / f"mxcsr-{_digest(_toolchain_identity(), _MXCSR_SOURCE)}.so"

    def build(tmp: Path) -> None:
        source = tmp.with_suffix(".cpp")
        source.write_text(_MXCSR_SOURCE)
        try:
            _run(_compiler() + ["-O1", "-fPIC", "-shared", str(source), "-o", str(tmp)], "emulator MXCSR helper")
        finally:
            source.unlink()

    library = ctypes.CDLL(str(_build_once(target, build)))
    library.emu_get_mxcsr.restype = ctypes.c_uint
    library.emu_set_mxcsr.argtypes = (ctypes.c_uint,)
    return library


def translate_options(options) -> tuple[list[str], str]:
    """NVRTC options -> (g++ preprocessor flags, -std flag). Code-generation options are ignored."""
    flags, std = [], DEFAULT_STD
    for option in options:
        for prefix, gcc in (("--define-macro=", "-D"), ("--undefine-macro=", "-U"), ("--include-path=", "-I")):
            if option.startswith(prefix):
                option = gcc + option[len(prefix):]
        if option.startswith(("-D", "-U", "-I")):
            flags.append(option)
        elif option.startswith(("-std=", "--std=")):
            std = "-std=" + option.split("=", 1)[1]
    return flags, std


def translation_unit(source: str, filename: str, entries: list[str]) -> str:
    """The C++ file g++ compiles: header, rewritten source, kernel table."""
    table = "\n".join(f'    ::emu::make_entry("{name}", &{name}),' for name in entries)
    sentinel = "" if entries else "    ::emu::KernelEntry{nullptr, nullptr, nullptr, nullptr},"
    return (
        '#include "cuda_emulator.h"\n'
        f'#line 1 "{filename}"\n'
        f"{rewrite_extern_shared(source)}\n"
        '#line 1 "<emulator kernel table>"\n'
        "namespace {\n"
        f"const ::emu::KernelEntry emu_table[] = {{\n{table}{sentinel}\n}};\n"
        "}\n"
        'extern "C" const ::emu::KernelEntry* emu_kernels(int* count) {\n'
        f"    *count = {len(entries)};\n"
        "    return emu_table;\n"
        "}\n"
    )


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CXX", "g++"))


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


@functools.lru_cache(maxsize=None)
def _toolchain_identity() -> str:
    cxx = _compiler()
    try:
        version = subprocess.run(cxx + ["--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise CompileError(
            f"the emulator needs a C++17 compiler: {shlex.join(cxx)} did not run ({exc}); install g++ or set CXX"
        ) from exc
    headers = b"".join(p.read_bytes() for p in sorted(INCLUDE_DIR.glob("*.h")))
    return _digest(" ".join(cxx), version, headers, RUNTIME_SOURCE.read_bytes(), CXX_FLAGS)


def _build_once(target: Path, build) -> Path:
    """Runs ``build(tmp_path)`` under a file lock unless ``target`` exists; atomic rename."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_suffix(target.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
            os.close(fd)
            try:
                build(Path(tmp))
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    return target


def _run(cmd: list[str], what: str, source_text: str | None = None) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"{what}: g++ failed ({shlex.join(cmd)})", log=result.stderr, source=source_text)


def _runtime_object(toolchain: str, std: str, fp_flags=()) -> Path:
    target = cache_dir() / f"runtime-{_digest(toolchain, std, *fp_flags)}.o"

    def build(tmp: Path) -> None:
        cmd = _compiler() + [std, *CXX_FLAGS, *fp_flags, f"-I{INCLUDE_DIR}", "-c", str(RUNTIME_SOURCE), "-o",
                             str(tmp)]
        _run(cmd, "emulator runtime")

    return _build_once(target, build)


def _announce(filename: str, name_expressions) -> None:
    """One line on stderr for a build about to run (on a terminal, unless ``announce_builds`` says otherwise)."""
    if not (sys.stderr.isatty() if announce_builds is None else announce_builds):
        return
    what = ", ".join(name_expressions) or "its kernels"
    if _announced.is_set():
        message = f"cussim: compiling {what} of {filename} for the CPU emulator"
    else:
        _announced.set()
        message = (f"cussim: compiling {what} of {filename} for the CPU emulator with g++: the first use of this "
                   f"kernel on this machine (seconds per kernel; kept in {cache_dir()}, so later calls and processes "
                   "load it; `cussim precompile --emulator` builds every kernel ahead of time)")
    sys.stderr.write(f"\r\x1b[2K{message}\n" if sys.stderr.isatty() else f"{message}\n")  # over any progress bar
    sys.stderr.flush()


def build_module(source: str, filename: str, options=(), name_expressions=()) -> Path:
    """Compiles ``source`` for the emulator (cached) and returns the shared library's path."""
    flags, std = translate_options(options)
    fp_flags = FP_MODES[fp_mode()]
    flags += fp_flags
    plain, _ = kernel_names(source)
    entries = list(dict.fromkeys(plain + list(name_expressions)))
    unit = translation_unit(source, filename, entries)
    toolchain = _toolchain_identity()
    runtime = _runtime_object(toolchain, std, fp_flags)
    target = cache_dir() / f"module-{_digest(toolchain, unit, std, flags)}.so"

    def build(tmp: Path) -> None:
        _announce(filename, name_expressions)
        unit_path = tmp.with_suffix(".cpp")
        unit_path.write_text(unit)
        try:
            cmd = _compiler() + [
                std, *CXX_FLAGS, *flags, f"-I{INCLUDE_DIR}", "-shared", "-Wl,-Bsymbolic",
                str(unit_path), str(runtime), "-o", str(tmp),
            ]
            _run(cmd, f"emulator build of {filename}", unit)
        finally:
            unit_path.unlink()

    return _build_once(target, build)
