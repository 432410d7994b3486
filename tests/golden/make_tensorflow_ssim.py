"""Writes tensorflow_ssim.json: tf.image.ssim's values on the MS-SSIM golden inputs.

TensorFlow is too heavy for CI, so its numbers are computed once and committed;
tests/test_compat.py checks ``cussim.ssim(..., padding="valid")`` against them.
To regenerate (any machine, no GPU needed):

    python -m venv /tmp/tf && /tmp/tf/bin/pip install tensorflow-cpu scikit-image
    /tmp/tf/bin/python tests/golden/make_tensorflow_ssim.py

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


def main():
    results = []
    for case in CASES:
        x, y = images(case)  # N x H x W x C, float64 in [0, data_range]
        value = tf.image.ssim(tf.constant(x), tf.constant(y), max_val=case["data_range"],
                              filter_size=case["win_size"], filter_sigma=case["sigma"])
        results.append({"name": case["name"], "values": [float(v) for v in np.asarray(value)]})
    out = Path(__file__).with_name("tensorflow_ssim.json")
    out.write_text(json.dumps({"tensorflow": tf.__version__, "numpy": np.__version__, "results": results},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
