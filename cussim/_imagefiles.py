"""Image files for the command line: finding pairs, decoding them, writing SSIM heat maps.

Decoding uses imageio (which scikit-image brings). An image becomes a 2-D
grey array or an H x W x 3 colour array of its own integer (or float) type:
a single channel is squeezed and an alpha channel is dropped (SSIM compares
what is shown, not the transparency). Volumes (``volumes=True``: every page
of a multi-page TIFF, or a ``.npy`` array) become D x H x W grey or
D x H x W x 3 colour arrays the same way.

Masks (``--mask``, ``--mask-alpha``) are weights in [0, 1]: a grey image's
pixels, or an image's alpha channel, divided by the largest value of its
integer type (255, 65535); float pixels are taken as they are. A colour mask
image is averaged over its channels.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
VOLUME_SUFFIXES = (".npy", ".tif", ".tiff")
PIXEL_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


class ImageError(Exception):
    """A pair that cannot be compared: its message names the file and the reason."""


@dataclass(frozen=True)
class Pair:
    name: str  # the relative path shown in reports
    reference: Path
    test: Path


def suffixes(volumes: bool) -> tuple:
    """The file name endings read as images, or as volumes."""
    return VOLUME_SUFFIXES if volumes else IMAGE_SUFFIXES


def is_image(path: Path, volumes: bool = False) -> bool:
    return path.is_file() and path.suffix.lower() in suffixes(volumes)


def _images_under(folder: Path, volumes: bool) -> set[str]:
    """Relative paths (POSIX) of the images (or volumes) anywhere under folder."""
    return {Path(root, file).relative_to(folder).as_posix()
            for root, _, files in os.walk(folder) for file in files if is_image(Path(root, file), volumes)}


def find_pairs(reference: Path, test: Path, volumes: bool = False) -> list[Pair]:
    """Two files, or the images of two folders paired by relative path.

    An image found under only one of the folders is still a pair, whose
    missing partner is reported when it is read. Raises FileNotFoundError or
    NotADirectoryError (a usage error) for paths that cannot be paired.
    """
    for label, path in (("REF", reference), ("TEST", test)):
        if not path.exists():
            raise FileNotFoundError(f"{label} {str(path)!r} does not exist")
    if reference.is_file() != test.is_file():
        raise NotADirectoryError(f"REF {str(reference)!r} and TEST {str(test)!r} must be two files or two folders")
    if reference.is_file():
        return [Pair(test.name, reference, test)]
    names = _images_under(reference, volumes) | _images_under(test, volumes)
    return [Pair(name, reference / name, test / name) for name in sorted(names)]


def _decode(path: Path, volumes: bool) -> np.ndarray:
    import imageio.v3 as iio

    if not path.exists():
        raise ImageError(f"{path}: no such file")
    try:
        encoded = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read the file ({exc.strerror})") from None
    kind = "a volume" if volumes else "an image"
    try:
        if path.suffix.lower() == ".npy":
            return np.load(io.BytesIO(encoded), allow_pickle=False)
        pages = {"index": None} if volumes else {}  # every page of a TIFF stack
        return np.asarray(iio.imread(encoded, extension=path.suffix.lower(), **pages))
    except Exception as exc:  # every decoder error means the same to the user
        raise ImageError(f"{path}: cannot read it as {kind} ({type(exc).__name__}: {exc})") from None


def read_image(path: Path, volumes: bool = False) -> np.ndarray:
    """A grey (H x W) or colour (H x W x 3) array, or with ``volumes`` a grey (D x H x W) or colour
    (D x H x W x 3) one, or ImageError naming the file."""
    image = _decode(path, volumes)
    grey = 3 if volumes else 2
    if image.ndim == grey + 1 and image.shape[-1] in (2, 4):  # grey or colour with alpha
        image = image[..., :-1]
    if image.ndim == grey + 1 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (grey, grey + 1) or (image.ndim == grey + 1 and image.shape[-1] != 3):
        hint = ""
        if not volumes and path.suffix.lower() in (".tif", ".tiff") and image.ndim > 2:
            hint = (f"; a multi-page TIFF ({image.shape[0]} pages of {'x'.join(map(str, image.shape[1:]))}) is a "
                    "volume: pass --volumes to compare it as one")
        raise ImageError(f"{path}: shape {image.shape} is neither a grey nor a colour "
                         + ("volume (D x H x W, or D x H x W x 3)" if volumes else "image") + hint)
    if image.dtype == np.int16 or image.dtype == np.int32:  # some decoders widen 16-bit grey
        if image.min() >= 0 and image.max() <= 65535:
            image = image.astype(np.uint16)
    if image.dtype not in PIXEL_DTYPES:
        raise ImageError(f"{path}: pixels of type {image.dtype} are not supported (8 or 16 bit, or float)")
    return image


def _weights(values: np.ndarray) -> np.ndarray:
    """Pixel values as float64 weights: integers divided by their type's largest value."""
    if values.dtype.kind in "ui":
        return values.astype(np.float64) / np.iinfo(values.dtype).max
    return values.astype(np.float64)


def read_mask(path: Path, volumes: bool = False) -> np.ndarray:
    """The weights of a mask image (H x W, or D x H x W with ``volumes``) in [0, 1], or ImageError."""
    image = read_image(path, volumes)
    grey = 3 if volumes else 2
    return _weights(image).mean(axis=-1) if image.ndim == grey + 1 else _weights(image)


def read_alpha(path: Path, volumes: bool = False) -> np.ndarray:
    """An image's alpha channel as weights in [0, 1], or ImageError when it has none."""
    image = _decode(path, volumes)
    grey = 3 if volumes else 2
    if image.ndim != grey + 1 or image.shape[-1] not in (2, 4):
        raise ImageError(f"{path}: no alpha channel to take as the mask (shape {image.shape}); pass --mask instead")
    return _weights(image[..., -1])


def read_pair(pair: Pair, volumes: bool = False):
    """(reference, test) arrays of one shape and dtype, or ImageError."""
    reference, test = read_image(pair.reference, volumes), read_image(pair.test, volumes)
    if reference.shape != test.shape:
        raise ImageError(f"{pair.test}: {'x'.join(map(str, test.shape))} does not match the reference "
                         f"{pair.reference} ({'x'.join(map(str, reference.shape))})")
    if reference.dtype != test.dtype:
        raise ImageError(f"{pair.test}: {test.dtype} pixels, the reference {pair.reference} has {reference.dtype}")
    return reference, test


# Eight stops of a dark-blue to yellow ramp: low SSIM dark, high SSIM bright.
_RAMP = np.array([[13, 8, 135], [84, 2, 163], [139, 10, 165], [185, 50, 137], [219, 92, 104], [244, 136, 73],
                  [254, 188, 43], [240, 249, 33]], dtype=np.float64)
_LINE, _BAR, _GAP, _LABELS = 14, 12, 4, 34  # pixels: a caption line, colour bar, gaps, bar labels
_CAPTION = 2 * _LINE + 2  # the caption band: the pair's names, then its SSIM
_CHARACTER = 6  # the width of one character of Pillow's default font, in pixels
_NAMES = 120  # characters of the pair's names shown at most (their start elided)


_MASKED_GREY = 128  # masked-out pixels (weight 0) in a heat map


def heat_map(ssim_map: np.ndarray, mask=None) -> np.ndarray:
    """An RGB uint8 picture of an SSIM map (channels averaged): 0 or less dark blue, 1 bright yellow; where
    ``mask`` (the map's plane) is 0, grey."""
    values = np.asarray(ssim_map, dtype=np.float64)
    if values.ndim == 3:
        values = values.mean(axis=-1)
    position = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    t = (position - low)[..., None]
    picture = ((1 - t) * _RAMP[low] + t * _RAMP[low + 1]).round().astype(np.uint8)
    if mask is not None:
        picture[np.asarray(mask) == 0] = _MASKED_GREY
    return picture


def labelled_heat_map(ssim_map: np.ndarray, ssim: float, names: str = "", mask=None) -> np.ndarray:
    """The heat map under a caption (the pair's ``names``, its mean SSIM), beside a colour bar labelled 1, 0.5
    and <=0 (pixels where ``mask`` is 0 grey)."""
    from PIL import Image, ImageDraw

    picture = heat_map(ssim_map, mask)
    rows, cols = picture.shape[:2]
    if len(names) > _NAMES:
        names = "..." + names[3 - _NAMES:]
    caption = f"{names}\nSSIM {ssim:.6f}" if names else f"SSIM {ssim:.6f}"
    bar_rows = max(rows, 48)
    width = max(cols + _GAP + _BAR + _GAP + _LABELS, _CHARACTER * max(map(len, caption.split("\n"))) + 4)
    canvas = Image.new("RGB", (width, _CAPTION + bar_rows), "white")
    canvas.paste(Image.fromarray(picture), (0, _CAPTION))
    ramp = np.linspace(1.0, 0.0, bar_rows)[:, None].repeat(_BAR, axis=1)
    left = cols + _GAP
    canvas.paste(Image.fromarray(heat_map(ramp)), (left, _CAPTION))
    draw = ImageDraw.Draw(canvas)
    draw.multiline_text((2, 2), caption, fill="black", spacing=4)
    for label, fraction in (("1", 0.0), ("0.5", 0.5), ("<=0", 1.0)):
        top = _CAPTION + fraction * (bar_rows - 1) - 5
        draw.text((left + _BAR + _GAP, min(max(top, _CAPTION), _CAPTION + bar_rows - 11)), label, fill="black")
    return np.asarray(canvas)


def heat_map_path(folder: Path, name: str) -> Path:
    """``folder/<name>.ssim.png``: a pair's relative path, extension and folders kept, so that no two pairs
    (cam.png and cam.jpg, a/cam.png and b/cam.png) share a heat map."""
    return folder / (name + ".ssim.png")


def write_heat_map(ssim_map: np.ndarray, ssim: float, folder: Path, name: str, names: str = "", mask=None) -> Path:
    """:func:`labelled_heat_map` of one pair, captioned with ``names`` (``mask``'s zeros grey), at
    :func:`heat_map_path`."""
    import imageio.v3 as iio

    target = heat_map_path(folder, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(target, labelled_heat_map(ssim_map, ssim, names, mask))
    return target
