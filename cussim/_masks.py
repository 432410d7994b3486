"""Masks and weights of the public functions (docs/spec.rst section 9): checked once, viewed in the kernels' layout.

A mask gives each pixel a weight: real, finite, >= 0 (bool: True is 1). It
has the images' spatial shape; its other axes broadcast against the images'
as NumPy broadcasts (a 1 or the images' length), and a mask of exactly the
spatial sides (``(H, W)`` for ``H x W x C`` images with ``channel_axis=-1``)
serves every image and channel. ``numpy.ma`` inputs give their mask as
weights: a pixel masked in x or in y has weight 0 (times ``mask`` where one is
passed too).

Examples
--------
>>> import numpy as np
>>> from cussim import _masks
>>> x = np.ma.masked_greater(np.arange(6.0).reshape(2, 3), 4)
>>> data, _, weights = _masks.unmasked(x, x.data, None)
>>> weights.astype(int)
array([[1, 1, 1],
       [1, 1, 0]])
"""

from __future__ import annotations

import numpy as np

from . import _arrays, _reference

MASK_MODES = _reference.MASK_MODES


def check_mask_mode(mask_mode, sample_covariance) -> str:
    """``mask_mode`` checked against the other options, or a ValueError naming the fix."""
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {', '.join(map(repr, MASK_MODES))}, got {mask_mode!r}")
    if mask_mode == "normalized" and sample_covariance:
        raise ValueError("mask_mode='normalized' takes population covariance only; pass sample_covariance=False "
                         "(or mask_mode='mean')")
    return mask_mode


def check_map_mask(mask, mask_mode) -> None:
    """A map takes a mask only in normalized mode: in mean mode the mask weighs only a mean."""
    if mask is not None and mask_mode == "mean":
        raise ValueError("ssim_map with mask_mode='mean' is the unmasked map (the mask weighs only the mean): pass "
                         "mask_mode='normalized' for the map of normalised convolution, or no mask")


def unmasked(x, y, mask):
    """(x, y, mask) with ``numpy.ma`` inputs replaced by their data and their masks folded into the weights.

    A pixel masked in either image weighs 0; the others weigh ``mask``'s
    weight, or 1 without one. Other inputs come back unchanged.
    """
    if not (isinstance(x, np.ma.MaskedArray) or isinstance(y, np.ma.MaskedArray)):
        return x, y, mask
    keep = ~(np.ma.getmaskarray(x) | np.ma.getmaskarray(y))
    if mask is not None:
        weights = _arrays.as_array(mask, "mask")
        if not _arrays.is_numpy(weights):
            raise TypeError("mask is a GPU array but x or y is a numpy.ma masked array; pass NumPy arrays together")
        _reference.check_weight_values(weights)
        keep = keep * weights
    return np.ma.getdata(x), np.ma.getdata(y), keep


def aligned_shape(mask_shape, shape, spatial_axes) -> tuple:
    """The mask's shape with the images' number of axes: a mask of the spatial sides alone gets 1 on every
    other axis (one mask for every channel wherever ``channel_axis`` is); others, 1s in front (NumPy's
    broadcasting). A mask of more axes than the images keeps its shape (the checks refuse it)."""
    mask_shape, shape = tuple(mask_shape), tuple(shape)
    if mask_shape == tuple(shape[a] for a in spatial_axes):
        return tuple(n if a in spatial_axes else 1 for a, n in enumerate(shape))
    return (1,) * max(0, len(shape) - len(mask_shape)) + mask_shape


def in_layout(mask, x, layout, check_values=True):
    """The caller's mask checked against x (the caller's array) and viewed in the kernels' layout (``layout``,
    the problem's :class:`cussim._ssim._Layout`): every axis of x, the spatial ones last.

    The weights' values are checked here for NumPy masks (``check_values``); a GPU mask's dtype only: the
    kernels check the weights they read (:func:`check_kernel_totals`), with no pass of their own.
    """
    m = _arrays.as_array(mask, "mask")
    _arrays.check_same_place(x, m, "mask", "x")
    shape, spatial = layout.original_shape, layout.params.spatial
    spatial_axes = sorted(layout.perm[-spatial:])
    given = tuple(m.shape)
    m = m.reshape(aligned_shape(given, shape, spatial_axes))
    if m.ndim != len(shape) or any(m.shape[a] != shape[a] for a in spatial_axes) or any(
            k not in (1, n) for k, n in zip(m.shape, shape)):
        raise ValueError(f"mask has shape {given} but x has shape {tuple(shape)}: a mask has the images' spatial "
                         f"shape {tuple(shape[a] for a in spatial_axes)}, and any other axes of 1 or of x's length")
    if check_values and _arrays.is_numpy(m):
        _reference.check_weight_values(m)
    else:
        _reference.check_weight_dtype(m)
    return m if layout.keeps_order else m.transpose(layout.perm)


def check_kernel_totals(totals, value_shape) -> None:
    """The total weights of a masked mean's results as the kernels summed them (NumPy, float64), or the error:
    NaN where a weight that the mean read was negative, NaN or infinite, 0 for a result of no weight
    (:func:`cussim._reference.check_total_weights`'s message)."""
    totals = totals.reshape(value_shape)
    if not np.isfinite(totals).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(totals))[0])
        where = f"the result at index {index}" if index else "the result"
        raise ValueError(f"mask holds negative, NaN or infinite weights ({where}); weights must be finite "
                         "numbers >= 0 (numpy.nan_to_num(mask, nan=0.0, posinf=0.0) and numpy.clip(mask, 0, None) "
                         "give such pixels weight 0)")
    _reference.check_total_weights(totals)
