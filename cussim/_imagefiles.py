"""Image files for the command line: finding pairs, decoding them, writing SSIM heat maps.

Decoding uses imageio (which scikit-image brings). An image becomes a 2-D
grey array or an H x W x 3 colour array of its own integer (or float) type:
a single channel is squeezed and an alpha channel is dropped (SSIM compares
what is shown, not the transparency).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
PIXEL_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


class ImageError(Exception):
    """A pair that cannot be compared: its message names the file and the reason."""


@dataclass(frozen=True)
class Pair:
    name: str  # the relative path shown in reports
    reference: Path
    test: Path


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def find_pairs(reference: Path, test: Path) -> list[Pair]:
    """Two files, or the images of two folders paired by relative path (missing partners included).

    Raises FileNotFoundError or NotADirectoryError (a usage error) for paths that cannot be paired.
    """
    for label, path in (("REF", reference), ("TEST", test)):
        if not path.exists():
            raise FileNotFoundError(f"{label} {str(path)!r} does not exist")
    if reference.is_file() != test.is_file():
        raise NotADirectoryError(f"REF {str(reference)!r} and TEST {str(test)!r} must be two files or two folders")
    if reference.is_file():
        return [Pair(test.name, reference, test)]
    pairs = []
    for root, _, files in os.walk(reference):
        for file in sorted(files):
            path = Path(root, file)
            if is_image(path):
                relative = path.relative_to(reference)
                pairs.append(Pair(relative.as_posix(), path, test / relative))
    return sorted(pairs, key=lambda pair: pair.name)


def read_image(path: Path) -> np.ndarray:
    """A grey (H x W) or colour (H x W x 3) array, or ImageError naming the file."""
    import imageio.v3 as iio

    if not path.exists():
        raise ImageError(f"{path}: no such file")
    try:
        encoded = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the file ({exc.strerror})") from None
    try:
        image = np.asarray(iio.imread(encoded, extension=path.suffix.lower()))
    except Exception as exc:  # every decoder error means the same to the user
        raise ImageError(f"{path}: cannot read it as an image ({type(exc).__name__}: {exc})") from None
    if image.ndim == 3 and image.shape[-1] in (2, 4):  # grey or colour with alpha
        image = image[..., :-1]
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ImageError(f"{path}: shape {image.shape} is neither a grey nor a colour image")
    if image.dtype == np.int16 or image.dtype == np.int32:  # some decoders widen 16-bit grey
        if image.min() >= 0 and image.max() <= 65535:
            image = image.astype(np.uint16)
    if image.dtype not in PIXEL_DTYPES:
        raise ImageError(f"{path}: pixels of type {image.dtype} are not supported (8 or 16 bit, or float)")
    return image


def read_pair(pair: Pair):
    """(reference, test) arrays of one shape and dtype, or ImageError."""
    reference, test = read_image(pair.reference), read_image(pair.test)
    if reference.shape != test.shape:
        raise ImageError(f"{pair.test}: {'x'.join(map(str, test.shape))} does not match the reference "
                         f"{pair.reference} ({'x'.join(map(str, reference.shape))})")
    if reference.dtype != test.dtype:
        raise ImageError(f"{pair.test}: {test.dtype} pixels, the reference {pair.reference} has {reference.dtype}")
    return reference, test


# Eight stops of a dark-blue to yellow ramp: low SSIM dark, high SSIM bright.
_RAMP = np.array([[13, 8, 135], [84, 2, 163], [139, 10, 165], [185, 50, 137], [219, 92, 104], [244, 136, 73],
                  [254, 188, 43], [240, 249, 33]], dtype=np.float64)


def heat_map(ssim_map: np.ndarray) -> np.ndarray:
    """An RGB uint8 picture of an SSIM map (channels averaged), 0 or less dark, 1 bright."""
    values = np.asarray(ssim_map, dtype=np.float64)
    if values.ndim == 3:
        values = values.mean(axis=-1)
    position = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    t = (position - low)[..., None]
    return ((1 - t) * _RAMP[low] + t * _RAMP[low + 1]).round().astype(np.uint8)


def write_heat_map(ssim_map: np.ndarray, folder: Path, name: str) -> Path:
    import imageio.v3 as iio

    target = folder / (Path(name).with_suffix("").as_posix() + ".ssim.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(target, heat_map(ssim_map))
    return target
