"""The fixed image pairs of the MS-SSIM golden values (N x H x W x C, float64).

Bundled scikit-image images (scaled to [0, 1]: TensorFlow computes in float32,
where 8-bit ranges lose digits to cancellation) with deterministic
distortions, and uniform random data (PCG64's raw stream, stable across
NumPy versions).
"""

import numpy as np
from skimage import data

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
CASES = [
    {"name": "camera_quantised", "weights": WEIGHTS, "win_size": 11, "sigma": 1.5, "data_range": 1.0},
    {"name": "astronaut_shifted", "weights": WEIGHTS, "win_size": 11, "sigma": 1.5, "data_range": 1.0},
    {"name": "random_odd_sides", "weights": WEIGHTS, "win_size": 11, "sigma": 1.5, "data_range": 1.0},
    {"name": "random_negative", "weights": WEIGHTS, "win_size": 11, "sigma": 1.5, "data_range": 1.0},
    {"name": "random_three_scales_win7", "weights": (0.2, 0.3, 0.5), "win_size": 7, "sigma": 1.0,
     "data_range": 1.0},
]


def images(case):
    """(x, y) of a case: float64, N x H x W x C."""
    name = case["name"]
    if name == "camera_quantised":
        x = data.camera() / 255.0
        y = np.floor(x * 255.0 / 24.0) * 24.0 / 255.0
        return x[None, :, :, None], y[None, :, :, None]
    if name == "astronaut_shifted":
        x = data.astronaut()[100:361, 50:303] / 255.0  # odd sides: 261 x 253
        y = np.roll(x, (1, 2), axis=(0, 1)) * 0.9 + 0.04
        return x[None], y[None]
    rng = np.random.default_rng(7)
    if name == "random_odd_sides":
        x = rng.random((2, 181, 197, 1))
        y = 0.5 * x + 0.5 * rng.random(x.shape)
        return x, y
    if name == "random_negative":
        x = rng.random((1, 167, 170, 2))
        return x, 1.0 - x
    x = rng.random((3, 45, 50, 1))
    return x, 0.7 * x + 0.3 * rng.random(x.shape)
