"""Compile check without a GPU: every kernel specialisation through NVRTC, per architecture.

Every one but the rarer option sets of ssim_forward, checked at two radii
(``cussim._kernels.COMPILE_CHECKED``).

Compiles with the run-time options for sm_70, sm_80, sm_90 and every newer
architecture the installed NVRTC knows, prints ptxas's registers, shared
memory, stack frame and spills per kernel, and fails on a compile error, a
warning, a spill, a local-memory stack frame, or static shared memory past the
48 KiB a block may use without opting in.

The programs (one per family and architecture, holding every specialisation)
compile once for the module, in parallel processes, and their reports are kept
in ``$CUSSIM_CACHE_DIR/nvrtc`` under a hash of the source, options, names,
architecture and NVRTC's version: an unchanged kernel is not compiled again by
the next run, a changed one always is. The per-architecture check is slow
and left out of a plain ``pytest``: ``python -m pytest -m slow`` runs it (CI does).
"""

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from cussim import _kernels, _nvrtc
from cussim._emulator import _build

SHARED_LIMIT = 48 * 1024


def _archs():
    try:
        return _kernels.compile_check_archs(_nvrtc.supported_archs())
    except _nvrtc.NVRTCError as exc:  # the `test` extra installs NVRTC; say so rather than skip
        pytest.fail(str(exc))


def test_base_architectures_are_covered():
    assert set(_kernels.BASE_ARCHS) <= set(_archs())


# Prints, as JSON, CuPy's version and the options its RawModule gives NVRTC for the options in argv (the
# architecture aside): CuPy's own assembly (cupy._core.core, no GPU needed), then the two that
# cupy.cuda.compiler adds to every NVRTC compilation, each checked to be in its source still. --pch (CuPy 14
# with NVRTC 12.8 and newer) is left out: it caches parsed headers, and the kernels include none.
_CUPY_OPTIONS_SCRIPT = textwrap.dedent("""
    import inspect, json, sys
    import cupy, cupy._core.core as core, cupy.cuda.compiler as compiler
    options = list(core.assemble_cupy_compiler_options(tuple(sys.argv[1:])))
    source = inspect.getsource(compiler)
    for added in ("-ftz=true", "--device-as-default-execution-space"):
        assert repr(added) in source, added + " is no longer in cupy.cuda.compiler"
        options.append(added)
    print(json.dumps({"version": cupy.__version__, "options": options}))
""")


def cupy_options(python=sys.executable, env=None) -> dict:
    """{"version", "options"}: what CuPy under ``python`` compiles cussim's RawModules with (see above)."""
    result = subprocess.run([str(python), "-c", _CUPY_OPTIONS_SCRIPT, *_kernels.COMPILE_OPTIONS],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        message = f"CuPy's option assembly failed under {python} (the test extra brings CuPy): {result.stderr}"
        if "No module named 'cupy'" in result.stderr and not os.environ.get("CI"):
            pytest.skip(message)
        pytest.fail(message)
    return json.loads(result.stdout)


def run_time_options(options) -> tuple:
    """CuPy's options without its include paths: the kernels include no header, so no path changes what
    compiles (test_kernels_include_no_header), and the paths differ between environments."""
    return tuple(o for o in options if not o.startswith("-I"))


def test_the_run_time_options_are_cupys():
    """The compile check and bench.sass compile with _kernels.RUN_TIME_OPTIONS: what CuPy gives NVRTC."""
    assert run_time_options(cupy_options()["options"]) == _kernels.RUN_TIME_OPTIONS


def test_kernels_include_no_header():
    for family in _kernels.FAMILIES:
        assert "#include" not in _build.strip_comments(_kernels.kernel_source(family)), family


def test_cupys_options_keep_cussims_standard():
    """CuPy adds a standard where the options name none (13.x: C++11, which the kernels' `if constexpr`
    fails under), so cussim names its own, and CuPy's assembly keeps it as the only one."""
    options = cupy_options()["options"]
    assert [o for o in options if "-std=" in o] == ["--std=c++17"]
    assert {"-ftz=true", "--device-as-default-execution-space"} <= set(options)


@pytest.fixture(scope="module")
def reports():
    """{(family, arch): CompileReport} of the whole compile check, with the options CuPy compiles with
    (test_the_run_time_options_are_cupys)."""
    jobs = _kernels.compile_check_jobs(_nvrtc.supported_archs())
    done = _nvrtc.compile_reports(jobs, cache=_build.cache_dir().with_name("nvrtc"))
    return {(job["filename"].removesuffix(".cu"), job["arch"]): report for job, report in zip(jobs, done)}


@pytest.mark.slow
@pytest.mark.parametrize("arch", _kernels.compile_check_archs(_nvrtc.supported_archs()))
@pytest.mark.parametrize("family", sorted(_kernels.FAMILIES))
def test_every_specialisation_compiles_cleanly(reports, family, arch):
    names = _kernels.COMPILE_CHECKED[family]
    report = reports[family, arch]
    print(f"\n{family}.cu, NVRTC {'.'.join(map(str, _nvrtc.version()))}", *report.notices, sep="\n")
    print(_nvrtc.format_table([report]))
    assert not report.warnings, "\n".join(report.warnings)
    assert sorted(k.name for k in report.kernels) == sorted(names)
    for k in report.kernels:
        assert k.spill_stores == 0 and k.spill_loads == 0, f"{k.name} spills on sm_{arch}"
        assert k.stack_frame == 0, f"{k.name} has a {k.stack_frame}-byte local-memory stack frame on sm_{arch}"
        assert k.shared_bytes <= SHARED_LIMIT, f"{k.name} uses {k.shared_bytes} bytes of static shared memory"


# The oldest and the newest CuPy that setup.cfg's extras allow, for CUDA 12 and 13 (with the NumPy the oldest
# was built against).
CUPY_RELEASES = {
    "oldest, CUDA 12": ("cupy-cuda12x==13.0.0", "numpy<2", "cuda-toolkit[cudart,nvrtc]==12.*"),
    "newest, CUDA 12": ("cupy-cuda12x", "cuda-toolkit[cudart,nvrtc]==12.*"),
    "oldest, CUDA 13": ("cupy-cuda13x==14.0.0", "cuda-toolkit[cudart,nvrtc]==13.*"),
    "newest, CUDA 13": ("cupy-cuda13x", "cuda-toolkit[cudart,nvrtc]==13.*"),
}


@pytest.mark.slow
@pytest.mark.parametrize("release", CUPY_RELEASES)
def test_oldest_and_newest_cupy_compile_with_the_checked_options(tmp_path, release):
    """Each CuPy release's own option assembly, in a fresh environment, gives the options the compile check
    above compiles every specialisation with (include paths aside): a new option in a CuPy release fails here
    until the check compiles with it."""
    env_dir = tmp_path / "cupy-venv"
    venv.create(env_dir)
    python = env_dir / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CUDA_PATH", "CUDA_HOME")}
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    *CUPY_RELEASES[release]], check=True, env=clean)
    theirs = cupy_options(python, env=clean)
    assert run_time_options(theirs["options"]) == run_time_options(cupy_options()["options"]), theirs["version"]


def test_reports_are_kept_by_their_inputs(tmp_path):
    """A kept report is read back only for the same source, options, names and architecture."""
    job = dict(source="template <int N> __global__ void k(float* x) { x[0] = N; }", name_expressions=("k<1>",),
               arch=80, filename="k.cu")
    first, = _nvrtc.compile_reports([job], cache=tmp_path)
    kept = list(tmp_path.iterdir())
    again, other = _nvrtc.compile_reports([job, {**job, "arch": 90}], cache=tmp_path)
    assert again == first and other.arch == 90 and other.kernels[0].name == "k<1>"
    assert len(list(tmp_path.iterdir())) == 2 and kept[0].exists()
    changed, = _nvrtc.compile_reports([{**job, "source": job["source"].replace("= N", "= 2 * N")}], cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3 and changed.kernels[0].name == "k<1>"


def test_emulator_test_kernels_compile_with_nvrtc():
    """The emulator's test kernels are real CUDA: what the emulator accepts, NVRTC must accept too."""
    source = Path(__file__).with_name("emulator_kernels.cu").read_text()
    names = ("block_sum<float>", "block_sum<double>", "block_sum<int>")
    report = _nvrtc.compile_report(source, _kernels.COMPILE_OPTIONS, names, 80, "emulator_kernels.cu")
    assert not report.warnings, "\n".join(report.warnings)


def test_compile_errors_carry_the_log():
    with pytest.raises(_nvrtc.NVRTCError, match="undefined_name"):
        _nvrtc.compile_report("__global__ void k(float* x) { x[0] = undefined_name; }", arch=80)


def test_report_parser_reads_spills_and_stack():
    """The figures come from ptxas's own wording; a kernel that spills must be seen to spill."""
    log = (
        "ptxas info    : Compiling entry function '_Z1kv' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z1kv\n"
        "ptxas         .     16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads\n"
        "ptxas info    : Used 48 registers, used 1 barriers, 16 bytes cumulative stack size, 21288 bytes smem\n"
    )
    assert _nvrtc.kernel_resources(log, {"_Z1kv": "k"}, 90) == (_nvrtc.KernelResources(
        name="k", arch=90, registers=48, barriers=1, shared_bytes=21288, stack_frame=16, spill_stores=12,
        spill_loads=8),)
    assert _nvrtc.kernel_resources(log, {}, 90)[0].name == "_Z1kv"
    without_figures = "\n".join(line for line in log.splitlines() if "spill" not in line)
    with pytest.raises(_nvrtc.NVRTCError, match="no stack and spill figures for _Z1kv") as error:
        _nvrtc.kernel_resources(without_figures, {}, 90)
    assert error.value.log == without_figures


def test_the_deprecation_notice_is_a_notice_not_a_warning():
    notice = "nvrtc: warning: Architectures prior to '<compute/sm>_75' are deprecated and may be removed"
    warning = 'k.cu(3): warning #177-D: variable "unused" was declared but never referenced'
    report = _nvrtc.CompileReport(arch=70, log=f"{notice}\nptxas info    : 0 bytes gmem\n{warning}\n", kernels=())
    assert report.notices == [notice] and report.warnings == [warning]


def test_nvrtc_is_looked_for_in_the_wheels_then_cuda_path_then_the_system(monkeypatch, tmp_path):
    for env in ("CUDA_PATH", "CUDA_HOME"):
        (tmp_path / env / "lib64").mkdir(parents=True)
        (tmp_path / env / "lib64" / "libnvrtc.so.12").write_bytes(b"")
        monkeypatch.setenv(env, str(tmp_path / env))
    paths = list(_nvrtc._candidate_paths())
    assert paths[-3:] == [str(tmp_path / "CUDA_PATH" / "lib64" / "libnvrtc.so.12"),
                          str(tmp_path / "CUDA_HOME" / "lib64" / "libnvrtc.so.12"), "libnvrtc.so"]
    wheel = [p for p in paths[:-3] if "cuda_nvrtc" in p]
    assert wheel and paths[: len(wheel)] == wheel  # the test extra's wheel comes first


def test_a_library_that_does_not_load_is_skipped_and_named_when_none_does(monkeypatch, tmp_path):
    broken = tmp_path / "libnvrtc.so.12"
    broken.write_bytes(b"not a shared object")
    found = next(p for p in _nvrtc._candidate_paths() if Path(p).is_file())
    try:
        monkeypatch.setattr(_nvrtc, "_candidate_paths", lambda: iter([str(broken), found]))
        _nvrtc.library.cache_clear()
        assert _nvrtc.library()._name == found and _nvrtc.version() >= (12, 0)
        monkeypatch.setattr(_nvrtc, "_candidate_paths", lambda: iter([str(broken)]))
        _nvrtc.library.cache_clear()
        with pytest.raises(_nvrtc.NVRTCError, match="libnvrtc not found.*nvidia-cuda-nvrtc-cu12") as error:
            _nvrtc.library()
        assert error.value.log.startswith(f"{broken}: ")
    finally:
        _nvrtc.library.cache_clear()


def test_python_m_cussim_nvrtc_prints_the_table_of_the_check(monkeypatch, capsys):
    """`python -m cussim._nvrtc`: NVRTC's version, then one line per kernel of the check's jobs (here one
    small job, as the whole check takes minutes)."""
    import runpy
    import warnings

    names = ("block_sum<float>", "block_sum<int>")
    job = dict(source=Path(__file__).with_name("emulator_kernels.cu").read_text(), options=_kernels.COMPILE_OPTIONS,
               name_expressions=names, arch=80, filename="emulator_kernels.cu")
    monkeypatch.setattr(_kernels, "compile_check_jobs", lambda supported: [job] if 80 in supported else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: cussim._nvrtc is imported already
        runpy.run_module("cussim._nvrtc", run_name="__main__")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"NVRTC {'.'.join(map(str, _nvrtc.version()))}" and lines[1].split()[0] == "kernel"
    rows = [line.split()[:2] for line in lines[2:]]
    assert {arch for _, arch in rows} == {"sm_80"} and set(names) <= {name for name, _ in rows}


def test_the_check_is_one_job_per_family_and_architecture():
    jobs = _kernels.compile_check_jobs([61, 70, 75, 80, 86, 90, 100, 120])
    assert [(job["filename"], job["arch"]) for job in jobs] == [
        (f"{family}.cu", arch) for family in _kernels.FAMILIES for arch in (70, 80, 90, 100, 120)]
    for job in jobs:
        family = job["filename"].removesuffix(".cu")
        assert job["name_expressions"] == _kernels.COMPILE_CHECKED[family]
        assert job["source"] == _kernels.kernel_source(family) and job["options"] == _kernels.RUN_TIME_OPTIONS


def test_the_check_covers_every_option_set_and_every_window():
    """Each forward option set for every element type (at two radii), the common ones at every radius."""
    checked = set(_kernels.COMPILE_CHECKED["ssim"])
    assert checked <= set(_kernels.specialisations("ssim"))
    assert set(_kernels.COMPILE_CHECKED["ssim3d"]) == set(_kernels.specialisations("ssim3d"))
    for element in _kernels.ELEMENT_TYPES:
        for options in _kernels.FORWARD_OPTIONS:
            assert _kernels.forward_name(element, max(_kernels.RADII), *options) in checked
        for radius in _kernels.RADII:
            for options in _kernels.COMMON_FORWARD_OPTIONS:
                assert _kernels.forward_name(element, radius, *options) in checked
            assert f"ssim_backward<{element}, {radius}>" in checked


def test_format_table_has_one_line_per_kernel_and_arch():
    kernel = _nvrtc.KernelResources(name="ssim_2d<float>", arch=80, registers=64, barriers=1, shared_bytes=4096,
                                    stack_frame=0, spill_stores=2, spill_loads=3)
    table = _nvrtc.format_table([_nvrtc.CompileReport(arch=80, log="", kernels=(kernel,))]).splitlines()
    assert table[0].split() == ["kernel", "arch", "regs", "bars", "smem", "stack", "spill", "st/ld"]
    assert table[1].split() == ["ssim_2d<float>", "sm_80", "64", "1", "4096", "0", "2/3"]


def test_kernel_dir_names_the_folders_it_looked_in(monkeypatch, tmp_path):
    monkeypatch.setattr(_kernels, "KERNEL_DIRS", (tmp_path,))
    with pytest.raises(FileNotFoundError, match=rf"cussim's kernels/\*\.cu not found in {tmp_path}"):
        _kernels.kernel_dir()


def test_kernel_source_names_the_known_families():
    with pytest.raises(KeyError, match=r"unknown kernel family 'ssim4d'; known: ssim"):
        _kernels.kernel_source("ssim4d")
