"""Float64 NumPy/SciPy implementation of spec.md sections 1 to 4.

This module is the oracle of the tests and the path for NumPy inputs. It is
written for clarity, not speed: every quantity of the spec appears by name.

The image plane is always the last two axes; any leading axes are a batch.
A window is a 1-D array of taps (odd length, symmetric), applied separably.

Example
-------
>>> import numpy as np
>>> from cussim import _reference as ref
>>> rng = np.random.default_rng(0)
>>> x = rng.random((32, 32)); y = x + 0.05 * rng.standard_normal((32, 32))
>>> taps = ref.window_taps("gaussian", 11, 1.5)
>>> round(float(ref.ssim(x, y, taps)), 6)
0.985257
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PADDINGS = ("same", "valid", "reflect")
WINDOWS = ("gaussian", "uniform")

_SCIPY_MODE = {"same": "constant", "valid": "constant", "reflect": "reflect"}


def gaussian_taps(radius: int, sigma: float) -> np.ndarray:
    """Gaussian taps exp(-(i-r)^2 / (2 sigma^2)), i = 0..2r, normalised in float64 (sigma 0: the identity)."""
    if sigma == 0:
        return np.eye(1, 2 * radius + 1, radius).ravel()
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return taps / taps.sum()


def uniform_taps(win_size: int) -> np.ndarray:
    """Box taps 1/win_size."""
    return np.full(win_size, 1.0 / win_size)


def window_taps(window: str, win_size: int, sigma: float) -> np.ndarray:
    """The native API's window: ``win_size`` taps, Gaussian or uniform."""
    if window == "gaussian":
        return gaussian_taps((win_size - 1) // 2, sigma)
    if window == "uniform":
        return uniform_taps(win_size)
    raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")


def skimage_gaussian_taps(sigma: float) -> np.ndarray:
    """skimage's Gaussian: radius int(3.5 * sigma + 0.5), whatever win_size says."""
    return gaussian_taps(int(3.5 * sigma + 0.5), sigma)


def filter_plane(img: np.ndarray, taps: np.ndarray, padding: str) -> np.ndarray:
    """The window filter F over the last two axes.

    "same" pads with zeros (no renormalisation), "reflect" is half-sample
    symmetric, "valid" returns only the (H-2r) x (W-2r) interior.
    """
    r = (len(taps) - 1) // 2
    out = img
    for axis in (-2, -1):
        out = ndimage.correlate1d(out, taps, axis=axis, mode=_SCIPY_MODE[padding], cval=0.0)
    if padding == "valid":
        out = out[..., r : out.shape[-2] - r, r : out.shape[-1] - r]
    return out


def filter_plane_adjoint(g: np.ndarray, taps: np.ndarray, padding: str, shape: tuple) -> np.ndarray:
    """F^T: the adjoint of :func:`filter_plane`, mapping a map-shaped array to ``shape``.

    For "valid" the map is embedded in a zero plane of the image's shape first.
    The taps are flipped, which is the adjoint for zero padding with any taps
    and, for the symmetric taps used here, for "reflect" as well (the reflect
    filter matrix of a symmetric window is symmetric).
    """
    if padding == "valid":
        r = (len(taps) - 1) // 2
        embedded = np.zeros(shape[:-2] + shape[-2:], dtype=np.float64)
        embedded[..., r : shape[-2] - r, r : shape[-1] - r] = g
        g = embedded
    flipped = np.ascontiguousarray(taps[::-1])
    return filter_plane(g, flipped, "reflect" if padding == "reflect" else "same")


def _check(x, taps, padding):
    """The few conditions the reference itself needs; the public API checks the rest."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if len(taps) % 2 != 1:
        raise ValueError(f"the window must have an odd number of taps, got {len(taps)}")
    if np.ndim(x) < 2:
        raise ValueError(f"images need two spatial axes (the last two), got shape {np.shape(x)}")
    if padding == "valid" and min(np.shape(x)[-2:]) < len(taps):
        raise ValueError(f'padding="valid" needs images of at least {len(taps)} pixels a side, got {np.shape(x)}')


def _moments(x, y, taps, padding, data_range, cov):
    """Filtered moments and the quantities of spec.md section 1 on values scaled by 1/L."""
    _check(x, taps, padding)
    xs = np.asarray(x, dtype=np.float64) / data_range
    ys = np.asarray(y, dtype=np.float64) / data_range
    xs, ys = np.broadcast_arrays(xs, ys)
    mx = filter_plane(xs, taps, padding)
    my = filter_plane(ys, taps, padding)
    exx = filter_plane(xs * xs, taps, padding)
    eyy = filter_plane(ys * ys, taps, padding)
    exy = filter_plane(xs * ys, taps, padding)
    sxx_raw = cov * (exx - mx * mx)
    syy_raw = cov * (eyy - my * my)
    # Clamp the variances at 0. A flat window has no covariance either
    # (Cauchy-Schwarz), so sxy is 0 where either variance is clamped; this keeps
    # S exactly 1 for an image compared with itself.
    sxx_free = sxx_raw > 0
    syy_free = syy_raw > 0
    sxx = np.where(sxx_free, sxx_raw, 0.0)
    syy = np.where(syy_free, syy_raw, 0.0)
    sxy_free = sxx_free & syy_free
    sxy = np.where(sxy_free, cov * (exy - mx * my), 0.0)
    return xs, ys, mx, my, sxx, syy, sxy, sxx_free, sxy_free


def _map_and_partials(x, y, taps, *, K1, K2, padding, data_range, cov, want_partials):
    xs, ys, mx, my, sxx, syy, sxy, sxx_free, sxy_free = _moments(
        x, y, taps, padding, data_range, cov
    )
    C1, C2 = K1 * K1, K2 * K2
    A1 = 2.0 * mx * my + C1
    A2 = 2.0 * sxy + C2
    B1 = mx * mx + my * my + C1
    B2 = sxx + syy + C2
    S_raw = (A1 * A2) / (B1 * B2)
    S = np.clip(S_raw, -1.0, 1.0)
    if not want_partials:
        return S, None
    D = B1 * B2
    s_free = S == S_raw
    # Partial derivatives of S at each window centre (spec.md section 4), with
    # the clamps' derivatives zeroed, in units of the scaled values.
    p_mu = np.where(sxy_free, 2.0 * my * (A2 - cov * A1) / D, 2.0 * my * A2 / D)
    p_mu = p_mu - 2.0 * mx * S / B1 + np.where(sxx_free, 2.0 * cov * mx * S / B2, 0.0)
    p_xx = np.where(sxx_free, -cov * S / B2, 0.0)
    p_xy = np.where(sxy_free, 2.0 * cov * A1 / D, 0.0)
    partials = tuple(np.where(s_free, p, 0.0) for p in (p_mu, p_xx, p_xy))
    return S, (xs, ys, partials)


def ssim_map(x, y, taps, *, K1=0.01, K2=0.03, padding="same", data_range=1.0, cov=1.0):
    """The SSIM map S over the last two axes (H x W, or the valid interior).

    ``cov`` is the covariance factor c: 1, or NP/(NP-1) for sample covariance.
    """
    S, _ = _map_and_partials(
        x, y, taps, K1=K1, K2=K2, padding=padding, data_range=data_range, cov=cov,
        want_partials=False,
    )
    return S


def mean_weights_crop(padding: str, win_size: int) -> int:
    """Border of the map left out of the mean: (win_size-1)//2 for "reflect", else 0."""
    return (win_size - 1) // 2 if padding == "reflect" else 0


def _normalise_axis(axis, ndim):
    """Axes of the mean as a sorted tuple; they must include the two spatial axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    axes = tuple(sorted({int(a) % ndim for a in axes}))
    if ndim - 1 not in axes or ndim - 2 not in axes:
        raise ValueError(
            f"axis={axis!r} must include both spatial axes (the last two, "
            f"{ndim - 2} and {ndim - 1}); SSIM is a mean over the image plane"
        )
    return axes


def _crop(S, crop):
    return S[..., crop : S.shape[-2] - crop, crop : S.shape[-1] - crop] if crop else S


def ssim(x, y, taps, *, axis=None, crop=0, **kwargs):
    """Mean SSIM over ``axis`` (which includes the last two axes), in float64.

    ``crop`` leaves that many map pixels out of the mean on every side
    (skimage's (win_size-1)//2 for "reflect"). Other keywords as :func:`ssim_map`.
    """
    S = ssim_map(x, y, taps, **kwargs)
    return _crop(S, crop).mean(axis=_normalise_axis(axis, S.ndim))


def ssim_with_gradient(x, y, taps, *, axis=None, crop=0, K1=0.01, K2=0.03, padding="same",
                       data_range=1.0, cov=1.0):
    """(mean SSIM over ``axis``, d sum(mean) / dx), the exact gradient of spec.md section 4.

    The gradient is with respect to the first argument x and has x's shape.
    """
    x = np.asarray(x, dtype=np.float64)
    S, (xs, ys, (p_mu, p_xx, p_xy)) = _map_and_partials(
        x, y, taps, K1=K1, K2=K2, padding=padding, data_range=data_range, cov=cov,
        want_partials=True,
    )
    axes = _normalise_axis(axis, S.ndim)
    value = _crop(S, crop).mean(axis=axes)
    # g: weight of each map pixel in the returned means (0 where cropped away).
    g = np.zeros(S.shape)
    _crop(g, crop)[...] = 1.0 / np.prod([_crop(S, crop).shape[a] for a in axes])
    shape = xs.shape
    blur = lambda p: filter_plane_adjoint(g * p, taps, padding, shape)  # noqa: E731
    grad_scaled = blur(p_mu) + 2.0 * xs * blur(p_xx) + ys * blur(p_xy)
    grad = grad_scaled / data_range
    # Leading axes that x broadcast over (y had them, x did not) sum back.
    extra = grad.ndim - x.ndim
    grad = grad.sum(axis=tuple(range(extra))) if extra else grad
    for a, n in enumerate(x.shape):
        if n == 1 and grad.shape[a] != 1:
            grad = grad.sum(axis=a, keepdims=True)
    return value, grad


def skimage_gradient(x, y, taps, *, K1=0.01, K2=0.03, padding="reflect", data_range=1.0, cov=1.0):
    """scikit-image's ``gradient=True`` result, per plane (spec.md section 5).

    Not the gradient of the returned mean: skimage's formula, of the
    uncropped map's mean over each plane, with respect to the second image,
    (2/N) (F(A1/D) x + F(-S/B2) y + F((mx (A2 - A1) - my (B2 - B1) S) / D)),
    N the plane's pixel count, the filter's adjoint standing for F.
    """
    xs, ys, mx, my, sxx, syy, sxy, _, _ = _moments(x, y, taps, padding, data_range, cov)
    C1, C2 = K1 * K1, K2 * K2
    A1, A2 = 2.0 * mx * my + C1, 2.0 * sxy + C2
    B1, B2 = mx * mx + my * my + C1, sxx + syy + C2
    D = B1 * B2
    S = np.clip(A1 * A2 / D, -1.0, 1.0)
    weight = 2.0 / (xs.shape[-2] * xs.shape[-1])
    blur = lambda p: filter_plane_adjoint(weight * p, taps, padding, xs.shape)  # noqa: E731
    grad = blur(A1 / D) * xs + blur(-S / B2) * ys + blur((mx * (A2 - A1) - my * (B2 - B1) * S) / D)
    return grad / data_range
