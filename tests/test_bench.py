"""The benchmark's own logic (its timings need a GPU and are not tests)."""

import subprocess
import sys
from pathlib import Path

import pytest

from bench import run

ROOT = Path(__file__).resolve().parents[1]


def test_work_counts_and_floor():
    forward, gradient = run.work_per_pixel("ssim"), run.work_per_pixel("dssim_with_gradient")
    assert forward.bytes == 8 and gradient.bytes > forward.bytes and gradient.flops > forward.flops
    # compute-bound and memory-bound sides of the floor
    assert run.floor_seconds(run.Work(200, 8), 10**6, fma_per_second=1e12, bytes_per_second=1e15) == 1e-4
    assert run.floor_seconds(run.Work(2, 8), 10**6, fma_per_second=1e15, bytes_per_second=1e9) == 8e-3
    ms, ms_gradient = run.work_per_pixel("ms_ssim"), run.work_per_pixel("ms_ssim_with_gradient")
    assert forward.flops < ms.flops < 1.4 * forward.flops and gradient.bytes < ms_gradient.bytes
    with pytest.raises(ValueError, match="unknown case"):
        run.work_per_pixel("msssim")


def test_markdown_names_the_gpu():
    text = run.markdown("Some GPU", {"copy_bytes_per_second": 3e12, "fma_per_second": 3e13},
                        [{"case": "ssim", "shape": "1x3x1080x1920", "ms": 0.2, "floor_ms": 0.1, "times_floor": 2.0},
                         {"case": "ms_ssim vs torchmetrics", "shape": "32x3x256x256", "ms": 0.5, "peer_ms": 5.0,
                          "speedup": 10.0, "value_difference": 2e-7}])
    assert text.startswith("# cussim on Some GPU") and "| ssim | 1x3x1080x1920 | 0.200 | 0.100 | 2.00 |" in text
    assert "| ms_ssim vs torchmetrics | 32x3x256x256 | 0.500 | 5.000 | 10.0x | 2.0e-07 |" in text


def test_without_a_gpu_it_says_so():
    import conftest

    if conftest.gpu_available():
        pytest.skip("there is a GPU here: the benchmark would time it")
    result = subprocess.run([sys.executable, "-m", "bench", "--repeats", "1"], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert "no CUDA GPU here" in result.stdout and "nothing was timed" in result.stdout
