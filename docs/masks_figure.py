"""Draws docs/masks.png, the picture of docs/masks.rst: ``python docs/masks_figure.py``.

One pair (scikit-image's camera against a noisy copy whose outside of a disc
is garbage, as a render has where no ground truth exists) and one mask (the
disc, the rest weight 0), as the command line draws its
heat maps (``cussim REF TEST --mask MASK --map DIR``): the SSIM map of
``mask_mode="mean"`` (the unmasked map; the mask weights only its mean) and
of ``"normalized"`` (masked-out pixels read by no window), the masked-out
pixels grey in both, each with its weighted mean above it.
"""

from pathlib import Path

import imageio.v3 as iio
import numpy as np
from skimage import data

import cussim
from cussim import _imagefiles

TARGET = Path(__file__).resolve().parent / "masks.png"


def main(target=TARGET):
    reference = data.camera()[40:200, 100:260].astype(np.float64)
    noisy = np.clip(reference + np.random.default_rng(0).normal(0, 20, reference.shape), 0, 255)
    rows, cols = np.mgrid[: reference.shape[0], : reference.shape[1]]
    mask = ((rows - 80) ** 2 + (cols - 75) ** 2 < 60**2).astype(np.float64)
    noisy = np.where(mask > 0, noisy, np.random.default_rng(1).uniform(0, 255, reference.shape))
    panels = []
    for mode in ("mean", "normalized"):
        value = float(cussim.ssim(noisy, reference, data_range=255, mask=mask, mask_mode=mode))
        full = cussim.ssim_map(noisy, reference, data_range=255,
                               **(dict(mask=mask, mask_mode=mode) if mode == "normalized" else {}))
        panels.append(_imagefiles.labelled_heat_map(full, value, mask=mask))
    gap = np.full((panels[0].shape[0], 12, 3), 255, np.uint8)
    iio.imwrite(target, np.hstack([panels[0], gap, panels[1]]), optimize=True)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
