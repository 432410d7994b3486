"""Writes tensorflow_msssim.json: tf.image.ssim_multiscale's values on fixed inputs.

TensorFlow is too heavy for CI, so its numbers are computed once and committed;
tests/test_msssim.py checks the "tensorflow" variant against them. To
regenerate (any machine, no GPU needed):

    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu scikit-image
    /tmp/tf/bin/python tests/golden/make_tensorflow_msssim.py

The inputs are rebuilt by tests/golden/msssim_inputs.py, which both sides
import, so only the values are stored.
"""

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from msssim_inputs import CASES, images  # noqa: E402


def write(filename, metric):
    """Writes ``filename`` beside this file: ``metric(case, x, y)``'s per-image values for every case."""
    results = []
    for case in CASES:
        x, y = images(case)  # N x H x W x C, float64 in [0, data_range]
        value = metric(case, tf.constant(x), tf.constant(y))
        results.append({"name": case["name"], "values": [float(v) for v in np.asarray(value)]})
    out = Path(__file__).with_name(filename)
    out.write_text(json.dumps({"tensorflow": tf.__version__, "numpy": np.__version__, "results": results},
                              indent=1) + "\n")
    print(f"wrote {out}")


def main():
    write("tensorflow_msssim.json", lambda case, x, y: tf.image.ssim_multiscale(
        x, y, max_val=case["data_range"], power_factors=case["weights"], filter_size=case["win_size"],
        filter_sigma=case["sigma"]))


if __name__ == "__main__":
    main()
