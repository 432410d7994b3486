"""Writes tensorflow_ssim.json: tf.image.ssim's values on the MS-SSIM golden inputs.

tests/test_compat.py checks ``cussim.ssim(..., padding="valid")`` against them.
Regenerate as make_tensorflow_msssim.py says (the same inputs, the same
environment): ``/tmp/tf/bin/python tests/golden/make_tensorflow_ssim.py``.
"""

import sys
from pathlib import Path

import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tensorflow_msssim import write  # noqa: E402

if __name__ == "__main__":
    write("tensorflow_ssim.json", lambda case, x, y: tf.image.ssim(
        x, y, max_val=case["data_range"], filter_size=case["win_size"], filter_sigma=case["sigma"]))
