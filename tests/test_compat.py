"""Rows of docs/compatibility.rst that no other test file covers: TensorFlow's SSIM and cuCIM."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import cussim

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import msssim_inputs  # noqa: E402


@pytest.mark.parametrize("case", msssim_inputs.CASES, ids=[c["name"] for c in msssim_inputs.CASES])
def test_tensorflow_ssim_golden_values(case):
    """tf.image.ssim's values (float32 inside TensorFlow), from tests/golden/make_tensorflow_ssim.py."""
    golden = {r["name"]: r["values"] for r in json.loads((GOLDEN / "tensorflow_ssim.json").read_text())["results"]}
    x, y = msssim_inputs.images(case)
    value = cussim.ssim(x, y, padding="valid", win_size=case["win_size"], sigma=case["sigma"],
                        data_range=case["data_range"], channel_axis=-1, axis=(1, 2, 3))
    # TensorFlow computes the moments in float32, unscaled and unclamped: 1.2e-4 off on the quantised camera's
    # flat sky, 8e-6 on the astronaut, 1e-6 on random data; zero padding ("same") is 4e-3 to 5e-2 away
    tolerance = {"camera_quantised": 2e-4, "astronaut_shifted": 2e-5}.get(case["name"], 2e-6)
    np.testing.assert_allclose(value, golden[case["name"]], rtol=0, atol=tolerance)


@pytest.mark.gpu
def test_cucim_matches_skimages_convention():
    """cuCIM's structural_similarity is scikit-image's algorithm on CuPy: cussim's skimage settings match it."""
    cupy = pytest.importorskip("cupy")
    metrics = pytest.importorskip("cucim.skimage.metrics")
    rng = np.random.default_rng(3)
    x = cupy.asarray(rng.random((48, 64, 3)))
    y = cupy.asarray(np.clip(cupy.asnumpy(x) + 0.1 * rng.standard_normal((48, 64, 3)), 0, 1))
    theirs = float(metrics.structural_similarity(x, y, data_range=1.0, channel_axis=-1))
    ours = float(cussim.ssim(x, y, window="uniform", win_size=7, padding="reflect", sample_covariance=True,
                             channel_axis=-1))
    assert ours == pytest.approx(theirs, abs=1e-10)
    assert float(cussim.structural_similarity(x, y, data_range=1.0, channel_axis=-1)) == pytest.approx(theirs,
                                                                                                      abs=1e-10)
