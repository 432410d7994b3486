"""bench/gpu.sh and its Python (bench/gpu_smoke.py on bench/cupy_standin.py) rehearsed without a GPU, so that
the first GPU run cannot fail on a typo, a missing import or a step that does not exist."""

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import cussim
from bench import cases, cupy_standin, gpu_smoke, peers, run

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "bench" / "gpu.sh"


def test_every_smoke_line_passes_on_the_stand_in_and_every_public_function_has_one(standin_cupy, monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    checks = gpu_smoke.Smoke(standin_cupy, gpu_smoke.REHEARSAL_SIZES, on_gpu=False).checks()
    lines = io.StringIO()
    assert gpu_smoke.run_checks(checks, lines) == 0, lines.getvalue()
    names = " ".join(name for name, _ in checks)
    functions = [f for f in cussim.__all__ if not isinstance(getattr(cussim, f), type)]  # not Workspace, warnings
    assert [f for f in functions if not re.search(rf"\b{f}\b", names)] == []
    assert all(dtype in names for dtype in gpu_smoke.DTYPES)
    assert len(lines.getvalue().splitlines()) == len(checks)


def test_a_smoke_line_fails_on_an_error_above_its_tolerance_a_nan_or_an_exception():
    def raises():
        raise RuntimeError("no such kernel")

    def skipped():
        raise gpu_smoke.Skip("one GPU here")

    checks = [("close", lambda: [("value", 1e-6, 1e-5)]), ("far", lambda: [("value", 1e-6, 1e-5), ("gradient", 2e-4, 1e-4)]),
              ("nan", lambda: [("value", float("nan"), 1e-5)]), ("raises", raises), ("skipped", skipped),
              ("bitwise", lambda: [("replay", 0.0, 0.0)]), ("not bitwise", lambda: [("replay", 1e-9, 0.0)])]
    lines = io.StringIO()
    assert gpu_smoke.run_checks(checks, lines) == 4
    verdicts = {line.split(":")[0].split(maxsplit=1)[1]: line.split()[0] for line in lines.getvalue().splitlines()}
    assert verdicts == {"close": "ok", "far": "FAIL", "nan": "FAIL", "raises": "FAIL", "skipped": "skip",
                        "bitwise": "ok", "not bitwise": "FAIL"}
    assert "gradient" in lines.getvalue().splitlines()[1]  # the largest share of its tolerance is named


def test_errors_compare_values_absolutely_and_gradients_by_their_norm():
    assert gpu_smoke.value_error(np.float32(0.5), 0.5 + 1e-6) == pytest.approx(1e-6, rel=1e-2)
    assert gpu_smoke.gradient_error(np.array([3.0, 4.0]), np.array([3.0, 4.0]) * 1.01) == pytest.approx(0.01 / 1.01)
    assert np.isnan(gpu_smoke.value_error(np.array([np.nan]), np.array([0.0])))
    assert gpu_smoke.tolerances("float64") < gpu_smoke.tolerances("float32") < gpu_smoke.tolerances("float16")


def test_the_stand_in_times_with_events_and_runs_raw_kernels_on_the_emulator(standin_cupy):
    from bench.timing import FMA_KERNEL

    cupy = standin_cupy
    out = cupy.empty(2 * 32, dtype=cupy.float32)
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    with pytest.raises(cupy_standin.StandInError, match="start_event was not recorded"):
        cupy.cuda.get_elapsed_time(start, stop)
    start.record()
    cupy.RawKernel(FMA_KERNEL, "fma_chains")((2,), (32,), (out, cupy.int32(3)))
    stop.record()
    stop.synchronize()
    assert cupy.cuda.get_elapsed_time(start, stop) >= 0
    assert [e.kind for e in cupy_standin.record.events[-3:]] == ["launch", "event", "sync"]
    a = np.float32(1e-3) * np.arange(32, dtype=np.float32)  # thread x's a; c0..c3 start at 0..3
    expected = 4 * 3 * (a * np.float32(1.0001)) + 6
    np.testing.assert_allclose(out[32:].get(), expected, rtol=1e-6)
    with cupy.cuda.Device(1), pytest.raises(cupy_standin.StandInError, match="recorded on a stream of device 0"):
        stop.record(cupy.cuda.Stream.null)
    with cupy.cuda.Device(1), pytest.raises(ValueError, match="Array device must be same"):
        cupy.copyto(out, cupy.empty_like(out))


NCU_DETAILS = """==PROF== Disconnected from process 4242
[4242] python3@127.0.0.1
  void ssim_forward<float, 5, (cussim::ForwardOption)1>(const T1 *, const T1 *, cussim::Params) (120, 17, 3)x(256, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Section: GPU Speed Of Light Throughput
    ----------------------- ----------- ------------
    Metric Name             Metric Unit Metric Value
    ----------------------- ----------- ------------
    Memory Throughput                 %        55.01
    DRAM Throughput                   %        40.10
    Duration                         us        87.23
    Compute (SM) Throughput           %        71.30
    Section: Launch Statistics
    Registers Per Thread    register/thread       64
    Section: Occupancy
    Achieved Occupancy                %        48.20
    Section: Memory Workload Analysis
    Memory Throughput           Gbyte/s     1,650.00
  ssim_backward<float, 5> (120, 17, 3)x(256, 1, 1), Context 1, Stream 7, Device 0, CC 9.0
    Duration                         us       120.50
"""


def test_ncu_lines_give_each_launch_its_name_and_first_figures():
    assert gpu_smoke.ncu_lines(NCU_DETAILS) == [
        "ssim_forward<float, 5, (cussim::ForwardOption)1>: 87.23 us, SM 71.30 %, memory 55.01 %, DRAM 40.10 %, "
        "occupancy 48.20 %, 64 registers",
        "ssim_backward<float, 5>: 120.50 us"]
    assert gpu_smoke.without_parameters("k<int>") == "k<int>"


def test_bench_lines_put_each_case_on_one_line(tmp_path):
    ours = {"metric": "ssim", "operation": "value", "shape": "1x3x1080x1920", "dtype": "float32"}
    record = {"machine": "NVIDIA H100", "copy_bytes_per_second": 3.0e12, "fma_per_second": 3.3e13, "cases": [
        {**ours, "convention": "same", "ms": 0.087, "fraction_of_floor": 0.52},
        {**ours, "convention": "valid", "ms": 0.085, "fraction_of_floor": 0.53},
        {**ours, "peer": "fussim", "speedup": 1.3, "same_computation": True},
        {**ours, "peer": "kornia", "speedup": 9.0, "same_computation": False}]}
    assert gpu_smoke.bench_lines(record) == [
        "ceilings: copy 3000 GB/s, FMA 33.0 T/s (NVIDIA H100)",
        "ssim value 1x3x1080x1920 float32: cussim 0.087 ms, 0.52 of floor; peer time / cussim's: fussim 1.30x; "
        "kornia 9.00x (differs)"]
    (tmp_path / "nvidia-h100").mkdir()
    (tmp_path / "nvidia-h100" / "2026-12-07.json").write_text(json.dumps(record))
    assert gpu_smoke.newest_record(tmp_path) == record
    with pytest.raises(FileNotFoundError, match="no benchmark results"):
        gpu_smoke.newest_record(tmp_path / "nvidia-h100")


def test_the_quick_case_list_names_shapes_and_peers_that_exist():
    assert set(cases.QUICK_SHAPES) <= set(cases.SHAPES) and set(cases.QUICK_PEERS) <= set(peers.SSIM_PEERS)
    assert [cases.SHAPES[label][:2] for label in cases.QUICK_SHAPES] == [
        s[:2] for s in cases.REHEARSAL_SHAPES.values()]
    with pytest.raises(SystemExit):
        run.main(["--rehearse"])  # a rehearsal of the quick cases only


def test_gpu_sh_parses_and_calls_only_steps_that_exist():
    subprocess.run(["bash", "-n", str(GPU_SH)], check=True)
    text = GPU_SH.read_text()
    called = set(re.findall(r"-m bench\.gpu_smoke ([\w-]+)", text))
    assert called and called <= {*gpu_smoke.STEPS, *gpu_smoke.SUMMARIES}
    assert "-m bench --quick" in text


@pytest.mark.slow
def test_the_rehearsal_runs_every_step_and_writes_the_summary_and_the_logs(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("CUSSIM_NUMPY_BACKEND", None)
    result = subprocess.run(["bash", str(GPU_SH), "--rehearse"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    summary = (tmp_path / "summary.txt").read_text()
    assert result.returncode == 0, summary + result.stderr
    for letter in "abcdef":
        assert re.search(rf"^{letter} .*: ok, ", summary, re.M), summary
    assert re.search(r"^tools missing: ", summary, re.M) and "every step ok" in summary
    with tarfile.open(tmp_path / "logs.tar.gz") as logs:
        names = {Path(n).name for n in logs.getnames()}
    assert {"tools.log", "a-environment.log", "b-smoke.log", "c-pytest.log", "d-bench.log"} <= names
    returned = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(returned) <= 8 and all(len(p.relative_to(tmp_path).parts) <= 3 for p in returned)
