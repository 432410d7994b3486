"""Comparing image pairs, shared by the ``cussim`` command (:mod:`cussim._cli`) and its cluster runner
(:mod:`cussim._cluster`): the device that computes, and the loop that decodes a chunk of pairs while the
previous one computes, pairs of one shape sharing a launch, and yields one row per pair.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _arrays, _imagefiles
from ._imagefiles import ImageError
from ._ssim import INTEGER_RANGES, ssim, ssim_map

CHUNK = 32  # pairs decoded ahead and computed together


class UsageError(Exception):
    """A mistake in the command line or its paths: exit code 2, reported under the usage line."""


# ---- devices -----------------------------------------------------------------------------

def _gpu():
    """CuPy and the GPU's name, or (None, why not)."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy, cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        return None, "no CUDA device"
    except Exception as exc:  # no CuPy, no driver: the CPU path
        return None, f"{type(exc).__name__}: {exc}"


def select_device(choice: str):
    """(array module, a line saying what computes) for --device cpu, gpu or auto."""
    if choice != "cpu":
        cupy, detail = _gpu()
        if cupy is not None:
            return cupy, f"GPU 0 ({detail}), cussim's CUDA kernels in float32 arithmetic (float64 for float64 images)"
        if choice == "gpu":
            raise UsageError(f"--device gpu: no GPU available ({detail}); use --device cpu or auto")
    try:
        backend = _arrays.numpy_backend()
    except ValueError as exc:  # a CUSSIM_NUMPY_BACKEND that names no backend
        raise UsageError(str(exc)) from None
    # The CPU compares the images in float64, whichever backend computes.
    note = ("scikit-image's precision for 8 and 16-bit images" if backend == "reference"
            else f"CUSSIM_NUMPY_BACKEND={backend}")
    return np, f"CPU, {_arrays.NUMPY_BACKEND_NAMES[backend]} in float64 arithmetic ({note})"


def _numpy(array):
    return array if isinstance(array, np.ndarray) else array.get()


# ---- computing ------------------------------------------------------------------------------

FLOAT_PIXELS = ("float pixels have no implied value range: pass --data-range (1 for images in [0, 1], 255 for "
                "[0, 255])")


def on_device(xp, images, options):
    """(images on xp, options with their data range): integer images take their dtype's range, float images
    need --data-range (ValueError); on the CPU they are compared in float64, the reference's own precision."""
    options = dict(options)
    if options.get("data_range") is None:
        if images[0].dtype.kind == "f":
            raise ValueError(FLOAT_PIXELS)
        options["data_range"] = INTEGER_RANGES[images[0].dtype]
    if xp is np:
        images = [image.astype(np.float64) for image in images]
    return [xp.asarray(image) for image in images], options


def compute_chunk(xp, decoded, options, want_maps):
    """{index: (ssim, map or None) or an error message}; pairs of one shape and dtype share a launch.

    A decoded pair is (reference, test), or (reference, test, mask weights)
    with ``--mask`` or ``--mask-alpha``; in mean mode the map is the
    unmasked one (the mask weighs the mean), in normalized mode the
    masked one.
    """
    groups = {}
    for index, (reference, *_) in decoded.items():
        # One launch per shape on the GPU; on the CPU, a pair at a time keeps the work in cache.
        key = (reference.shape, reference.dtype) if xp is not np else (reference.shape, index)
        groups.setdefault(key, []).append(index)
    results = {}
    for (shape, _), indices in groups.items():
        grey = options.get("spatial_dims", 2)
        try:
            colour = len(shape) == grey + 1
            (reference, test), kwargs = on_device(xp, [np.stack([decoded[i][k] for i in indices]) for k in (0, 1)],
                                                  dict(options, channel_axis=-1 if colour else None))
            map_kwargs = kwargs
            if len(decoded[indices[0]]) == 3:  # a mask per pair: one for the pair's channels
                mask = xp.asarray(np.stack([decoded[i][2] for i in indices]))
                kwargs = dict(kwargs, mask=mask[..., None] if colour else mask)
                map_kwargs = kwargs if kwargs.get("mask_mode") == "normalized" else map_kwargs
            values = _numpy(ssim(test, reference, axis=tuple(range(1, test.ndim)), **kwargs))
            maps = _numpy(ssim_map(test, reference, **map_kwargs)) if want_maps else [None] * len(indices)
        except (ValueError, TypeError) as exc:  # e.g. images smaller than the window
            results.update({i: f"{'x'.join(map(str, shape))} images: {exc}" for i in indices})
            continue
        for k, i in enumerate(indices):
            results[i] = (float(values[k]), maps[k])
    return results


def check_fits_window(pair, image: np.ndarray, options) -> None:
    """ImageError naming the test file, its size and the --win-size that fits, for an image smaller than the
    window."""
    spatial_dims = options.get("spatial_dims", 2)
    sides = image.shape[:spatial_dims]
    window = options["win_size"]
    if min(sides) >= window:
        return
    largest = min(sides) if min(sides) % 2 else min(sides) - 1
    fix = (f"pass --win-size {largest} or less (odd)" if largest >= 3
           else "no window fits (--win-size 3, the smallest, needs 3 pixels a side)")
    kind = "volume" if spatial_dims == 3 else "image"
    raise ImageError(f"{pair.test}: the {kind} is {'x'.join(map(str, sides))}, smaller than the "
                     f"{'x'.join([str(window)] * spatial_dims)} window: {fix}")


def non_finite_message(pair, reference: np.ndarray, test: np.ndarray, value: float) -> str:
    """Why a pair's SSIM is NaN or infinite, naming the file with NaN or infinite pixels."""
    bad = [(path, int(np.count_nonzero(~np.isfinite(image)))) for path, image in
           ((pair.reference, reference), (pair.test, test)) if image.dtype.kind == "f"]
    named = [f"{path} has {count} NaN or infinite pixel{'s' * (count > 1)}" for path, count in bad if count]
    why = "; ".join(named) if named else "the arithmetic overflowed (check --data-range)"
    return f"SSIM is {value}, not a number to report: {why}"


def run_pairs(pairs, xp, options, *, map_folder=None, strict=False, masks=None):
    """Yields (pair, ssim, error message) in order, decoding the next chunk while this one computes.

    A pair whose SSIM is NaN or infinite (a NaN pixel in a float image) is a failed pair, with the reason.
    ``masks``: a :class:`Masks` giving each pair's weights, or None.
    """
    def decode(pair):
        try:
            images = _imagefiles.read_pair(pair, volumes=options.get("spatial_dims") == 3)
            check_fits_window(pair, images[0], options)
            return images if masks is None else (*images, masks.read(pair))
        except ImageError as exc:
            return exc

    chunks = [pairs[i : i + CHUNK] for i in range(0, len(pairs), CHUNK)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        pending = [pool.submit(decode, pair) for pair in chunks[0]] if chunks else []
        for number, chunk in enumerate(chunks):
            decoded_or_errors = [future.result() for future in pending]
            pending = [pool.submit(decode, pair) for pair in chunks[number + 1]] if number + 1 < len(chunks) else []
            decoded = {i: d for i, d in enumerate(decoded_or_errors) if not isinstance(d, ImageError)}
            results = compute_chunk(xp, decoded, options, map_folder is not None) if decoded else {}
            for i, pair in enumerate(chunk):
                result = results.get(i, str(decoded_or_errors[i]))
                if isinstance(result, str):
                    yield pair, None, result
                    if strict:
                        return
                    continue
                value, full = result
                if not math.isfinite(value):
                    yield pair, None, non_finite_message(pair, *decoded[i][:2], value)
                    if strict:
                        return
                    continue
                if map_folder is not None:
                    _imagefiles.write_heat_map(full, value, map_folder, pair.name,
                                               f"{pair.test} against {pair.reference}",
                                               None if masks is None else masks.in_map(decoded[i][2], options))
                yield pair, value, None


class Masks:
    """Where each pair's weights come from: one mask image for every pair, a folder of them matched by the
    pairs' relative paths, or the reference image's alpha channel (docs/spec.rst section 9)."""

    def __init__(self, source, alpha: bool, mode: str, volumes: bool):
        self.source, self.alpha, self.mode, self.volumes = source, alpha, mode, volumes
        self.one = None if alpha or source.is_dir() else _imagefiles.read_mask(source, volumes)

    @property
    def description(self) -> str:
        """What the reports say about the mask."""
        return f"{'alpha' if self.alpha else self.source} ({self.mode})"

    def read(self, pair):
        """The pair's weights, or ImageError naming the file."""
        if self.alpha:
            return _imagefiles.read_alpha(pair.reference, self.volumes)
        if self.one is not None:
            return self.one
        return _imagefiles.read_mask(self.source / pair.name, self.volumes)

    @staticmethod
    def in_map(weights, options):
        """The weights of the map's pixels (a "valid" map is smaller than the image)."""
        if options.get("padding") != "valid":
            return weights
        r = (options.get("win_size", 11) - 1) // 2
        return weights[(Ellipsis,) + (slice(r, -r),) * weights.ndim]
