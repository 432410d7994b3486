"""Compilation per need, and `cussim precompile` filling the caches that a later process reads.

Counted, not timed: which specialisations a cold first call builds, and
whether a later process builds anything at all. The timings are
``python -m bench.first_call``'s (bench/NOTES.md).
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import cussim
from cussim import _cli, _kernels, _precompile
from cussim._emulator import _build

ROOT = Path(__file__).resolve().parents[1]
# a default float32 ssim launches only this (the finish is folded in)
FIRST = ["ssim_forward<float, 5, cussim::FORWARD_VALUE>"]


@pytest.fixture
def cold_emulator(monkeypatch):
    """Nothing built in this process; yields the name expressions of every build it asks for.

    The disk cache stays the session's: what a first call builds is what it asks _build for, whether g++ then
    runs or the module is found on disk, so these tests share the modules the other tests compile.
    """
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    built, build = [], _build.build_module

    def recording(source, filename, options=(), name_expressions=()):
        built.append(tuple(name_expressions))
        return build(source, filename, options, name_expressions)

    monkeypatch.setattr(_build, "build_module", recording)
    _kernels.emulated_kernel.cache_clear()
    yield built
    _kernels.emulated_kernel.cache_clear()  # later tests load their modules again


def _images(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.random((2, 24, 24)).astype(dtype)
    return x, np.clip(x + 0.1, 0, 1).astype(dtype)


def test_a_first_call_builds_only_the_specialisations_it_launches(cold_emulator):
    x, y = _images()
    cussim.ssim(x, y)
    assert cold_emulator == [(name,) for name in FIRST]
    cussim.dssim_with_gradient(x, y)  # the forward that writes the gradient's partial maps, and the backward
    assert cold_emulator[1:] == [("ssim_forward<float, 5, cussim::FORWARD_EXACT>",), ("ssim_backward<float, 5>",)]
    cussim.dssim_with_gradient(x, y)  # rebuilds nothing
    cussim.ssim(x, y, win_size=7)
    cussim.ssim(*_images(np.float64))
    cussim.l1_dssim_loss(x, y)  # the L1 term in the block sums: its own forward
    assert cold_emulator[3:] == [("ssim_forward<float, 3, cussim::FORWARD_VALUE>",),
                                 ("ssim_forward<double, 5, cussim::FORWARD_VALUE>",),
                                 ("ssim_forward<float, 5, cussim::FORWARD_L1>",)]


def test_backward_options_build_their_own_specialisations(cold_emulator):
    """Adding into grad, the fused L1 term and MS-SSIM's terms are template arguments of their own, so that
    a plain gradient's kernel carries none of their code."""
    x, y = _images(np.float32)
    grad = np.zeros_like(x)
    cussim.dssim_with_gradient(x, y, grad=grad, accumulate=True)
    cussim.l1_dssim_loss_with_gradient(x, y)
    backwards = [names for names in cold_emulator if "backward" in names[0]]
    assert backwards == [("ssim_backward<float, 5, cussim::GRAD_ADD>",),
                         ("ssim_backward<float, 5, cussim::GRAD_WRITE_L1>",)]
    big = np.random.default_rng(0).random((1, 176, 176), dtype=np.float32)
    cussim.ms_ssim_with_gradient(big, big * 0.9)
    assert ("ssim_backward<float, 5, cussim::GRAD_MSSSIM>",) in cold_emulator
    assert ("ssim_backward<float, 5>",) not in cold_emulator


@pytest.fixture
def builds_without_compiler(tmp_path, monkeypatch):
    """An empty emulator cache whose builds run no compiler (each leaves an empty file), and a process that
    has announced nothing yet."""
    monkeypatch.setenv("CUSSIM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_build, "_run", lambda *args, **kwargs: None)
    monkeypatch.setattr(_build, "_announced", threading.Event())


def test_a_first_emulator_build_says_what_it_compiles_and_why_on_a_terminal(builds_without_compiler, capsys,
                                                                             monkeypatch):
    def build(number):
        _build.build_module(f"// source {number}", "ssim.cu", name_expressions=(f"kernel<{number}>",))

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    build(1)
    assert capsys.readouterr().err == ""  # quiet off a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    build(2)
    build(3)
    build(3)  # built: nothing to say
    first, second = capsys.readouterr().err.split("\n")[:-1]
    assert first.startswith("\r\x1b[2Kcussim: compiling kernel<2> of ssim.cu for the CPU emulator with g++: the "
                            "first use of this kernel on this machine")
    assert f"kept in {_build.cache_dir()}" in first and "`cussim precompile --emulator` builds" in first
    assert second == "\r\x1b[2Kcussim: compiling kernel<3> of ssim.cu for the CPU emulator"
    monkeypatch.setattr(_build, "announce_builds", False)
    build(4)
    assert capsys.readouterr().err == ""


def test_precompile_says_what_it_builds_and_why_unless_quiet(builds_without_compiler, capsys, monkeypatch):
    built = []

    def build(family, name):  # what the emulator's build would announce
        _build._announce(f"{family}.cu", (name,))
        built.append(name)

    monkeypatch.setattr(_kernels, "emulated_kernel", build)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    names = [*FIRST, "ssim_finish<float>"]
    assert _cli.main(["precompile", "--emulator", *names]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("cussim precompile: building 2 kernel specialisations for the CPU emulator with "
                                   "g++") and "instead of compiling" in captured.err
    assert "/2 [" in captured.err and "kernel/s]" in captured.err  # the bar, with its rate
    assert "cussim: compiling" not in captured.err and built == names  # no notice per kernel: the bar counts
    assert "emulator: 2 specialisations built" in captured.out
    assert _cli.main(["precompile", "--emulator", "--quiet", "ssim"]) == 0
    assert capsys.readouterr().err == "" and len(built) == 2 + len(_kernels.specialisations("ssim"))


def test_every_kernel_is_a_template():
    """A non-template kernel would be compiled into every module of its family, whatever the call needs."""
    for family in _kernels.FAMILIES:
        templates = []
        for name in _kernels.SOURCES[family]:  # its own files
            plain, file_templates = _build.kernel_names((_kernels.kernel_dir() / name).read_text())
            assert plain == [], f"kernels/{name}: make {', '.join(plain)} a template (see msssim_combine)"
            assert name.endswith(".cu") or file_templates == [], f"kernels/{name}: a header holds no kernel"
            templates += file_templates
        assert {name.split("<")[0] for name in _kernels.specialisations(family)} == set(templates)


def test_names_resolve_to_specialisations():
    every = _precompile.resolve([])
    assert len(every) == sum(len(_kernels.specialisations(f)) for f in _kernels.FAMILIES)
    assert _precompile.resolve(["ssim", "ssim_finish<float>"]) == _precompile.resolve(["ssim"])
    pair = ["ssim_finish<float>", "ssim_forward<float, 5, cussim::FORWARD_VALUE>"]
    assert _precompile.resolve(pair) == [("ssim", pair[0]), ("ssim", pair[1])]
    every_option = _precompile.resolve(["ssim_forward<float, 5>"])  # a forward without options: all of them
    assert [name for _, name in every_option] == [_kernels.forward_name("float", 5, *options)
                                                  for options in _kernels.FORWARD_OPTIONS]
    assert _precompile.resolve(["ssim_forward<float, 5>", pair[1]]) == every_option
    with pytest.raises(ValueError, match=r"unknown kernel 'ssim_forward<float,5>'.*--list"):
        _precompile.resolve(["ssim_forward<float,5>"])


def test_precompile_without_a_gpu_says_so_and_exits_3(monkeypatch, capsys):
    monkeypatch.setattr(_precompile, "gpu_devices", lambda: (None, "no GPU: CuPy sees no CUDA device"))
    assert _cli.main(["precompile", "ssim"]) == _precompile.NO_GPU == 3
    err = capsys.readouterr().err
    assert "no GPU" in err and "nothing compiled" in err and "--emulator" in err


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown kernel 'nope'"),
    (["--jobs", "0"], "--jobs must be at least 1"),
])
def test_precompile_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(["precompile", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def _python(code_or_args, env):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def _files(folder: Path):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


LATER_EMULATOR_PROCESS = """
import numpy as np, cussim
from cussim._emulator import _build
def refuse(*args, **kwargs):
    raise AssertionError("the later process compiled")
_build._run = refuse
x = np.random.default_rng(0).random((2, 24, 24), dtype=np.float32)
print(float(cussim.ssim(x, x)))
"""


def test_precompile_fills_the_emulator_cache_that_a_later_process_uses(empty_emulator_cache):
    cache = empty_emulator_cache
    env = {"CUSSIM_CACHE_DIR": str(cache), "CUSSIM_NUMPY_BACKEND": "emulator"}
    done = _python(["-m", "cussim", "precompile", "--emulator", *FIRST], env)
    assert done.returncode == 0, done.stderr
    assert f"emulator: {len(FIRST)} specialisations built" in done.stdout
    before = _files(cache / "emulator")
    later = _python(LATER_EMULATOR_PROCESS, env)
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip() == "1.0"
    assert _files(cache / "emulator") == before


LATER_GPU_PROCESS = """
import cupy, numpy, cussim
x = cupy.asarray(numpy.random.default_rng(0).random((2, 64, 64), dtype=numpy.float32))
print(float(cussim.ssim(x, x)))
"""
# CuPy saves each entry's source beside it (a .cu file) when asked: cussim's entries hold kernels/ssim_forward.cu.
CUPY_ENV = {"CUPY_CACHE_SAVE_CUDA_SOURCE": "1"}


def _cussim_entries(folder: Path):
    sources = [p for p in folder.rglob("*.cu") if "ssim_forward(" in p.read_text(errors="replace")]
    entries = sources + [p.with_suffix("") for p in sources if p.with_suffix("").exists()]
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in entries}


def _require_cupy_that_keeps_name_expressions():
    import cupy

    if _precompile.release(cupy.__version__) < _precompile.CUPY_KEEPS_NAME_EXPRESSIONS:
        pytest.skip(f"CuPy {cupy.__version__} does not read modules with name expressions back from its cache")


@pytest.mark.gpu
def test_precompile_fills_cupys_cache_that_a_later_process_uses(tmp_path):
    _require_cupy_that_keeps_name_expressions()
    env = {**CUPY_ENV, "CUPY_CACHE_DIR": str(tmp_path)}
    done = _python(["-m", "cussim", "precompile", *FIRST], env)
    assert done.returncode == 0, done.stderr
    before = _cussim_entries(tmp_path)
    assert len([name for name in before if name.endswith(".cu")]) == len(FIRST)
    later = _python(LATER_GPU_PROCESS, env)
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip() == "1.0"
    assert _cussim_entries(tmp_path) == before  # nothing compiled again, nothing added


@pytest.mark.gpu
def test_a_first_gpu_call_compiles_only_what_it_launches(tmp_path):
    _require_cupy_that_keeps_name_expressions()
    later = _python(LATER_GPU_PROCESS, {**CUPY_ENV, "CUPY_CACHE_DIR": str(tmp_path)})
    assert later.returncode == 0, later.stderr
    assert len([name for name in _cussim_entries(tmp_path) if name.endswith(".cu")]) == len(FIRST)


def test_list_prints_the_chosen_specialisations_and_builds_nothing(capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--list compiled")

    monkeypatch.setattr(_build, "_run", refuse)
    assert _cli.main(["precompile", "--list", "ssim_finish<float>", "ssim3d"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == [name for _, name in _precompile.resolve(["ssim_finish<float>", "ssim3d"])]
    assert listed[0] == "ssim_finish<float>" and len(listed) == 1 + len(_kernels.specialisations("ssim3d"))
