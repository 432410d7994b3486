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
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
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


def _runtime_object(toolchain: str, std: str) -> Path:
    target = cache_dir() / f"runtime-{_digest(toolchain, std)}.o"

    def build(tmp: Path) -> None:
        cmd = _compiler() + [std, *CXX_FLAGS, f"-I{INCLUDE_DIR}", "-c", str(RUNTIME_SOURCE), "-o", str(tmp)]
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
    plain, _ = kernel_names(source)
    entries = list(dict.fromkeys(plain + list(name_expressions)))
    unit = translation_unit(source, filename, entries)
    toolchain = _toolchain_identity()
    runtime = _runtime_object(toolchain, std)
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
