"""Float64 NumPy/SciPy implementation of docs/spec.rst sections 1 to 4.

This module is the oracle of the tests and the path for NumPy inputs. It is
written for clarity first: every quantity of the spec appears by name. For
speed it filters with whole-row slices and works on the map chunk by chunk,
so that the arrays stay in cache.

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

PADDINGS = ("same", "valid", "reflect")
WINDOWS = ("gaussian", "uniform")

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


def _extend(img: np.ndarray, radius: int, padding: str) -> np.ndarray:
    """The planes extended by ``radius`` on every side as ``padding`` says: zeros ("same"), half-sample
    symmetric ("reflect", scipy's "reflect" is NumPy's "symmetric"), or not at all ("valid")."""
    if padding == "valid" or radius == 0:
        return img
    widths = [(0, 0)] * (img.ndim - 2) + [(radius, radius), (radius, radius)]
    return np.pad(img, widths, mode="constant" if padding == "same" else "symmetric")


def _along(axis: int):
    """part(a, i, n): a[..., i : i + n, :] for axis -2, a[..., i : i + n] for axis -1 (whole-row slices, which
    NumPy streams through the cache)."""
    return (lambda a, i, n: a[..., i : i + n, :]) if axis == -2 else (lambda a, i, n: a[..., i : i + n])


def _box_sums(block: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Sums of k consecutive entries along ``axis`` (-2 or -1), by doubling: 4 additions for k = 7."""
    part, n = _along(axis), block.shape[axis] - k + 1
    out, start, width, sums = None, 0, 1, block  # sums[i]: the sum of ``width`` entries from i
    while width <= k:
        if k & width:
            out = part(sums, start, n).copy() if out is None else np.add(out, part(sums, start, n), out=out)
            start += width
        if 2 * width <= k:
            length = sums.shape[axis] - width
            sums = part(sums, 0, length) + part(sums, width, length)
        width *= 2
    return out


def _correlate(block: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """sum_i taps[i] * block[i : i + n] along ``axis`` (-2 or -1): the valid correlation; a symmetric
    window adds its mirrored terms before their product."""
    part, k = _along(axis), len(taps)
    n = block.shape[axis] - k + 1
    symmetric = (taps == taps[::-1]).all()
    half = k // 2 if symmetric else 0
    out = taps[half] * part(block, half, n)
    for i in range(half) if symmetric else range(1, k):
        term = part(block, i, n) + part(block, k - 1 - i, n) if symmetric else part(block, i, n).copy()
        term *= taps[i]
        out += term
    return out


def _filter_valid(block: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """The separable window over the last two axes where it fits whole: (h - 2r) x (w - 2r) from h x w.

    A box window sums first and multiplies once by its squared tap.
    """
    if (taps == taps[0]).all():
        out = _box_sums(_box_sums(block, len(taps), -2), len(taps), -1)
        out *= taps[0] * taps[0]
        return out
    return _correlate(_correlate(block, taps, -2), taps, -1)


_CHUNK_PIXELS = 1 << 14  # map pixels per chunk: a chunk's arrays stay in a core's cache (bench/NOTES.md)


def _chunks(planes: int, height: int, width: int):
    """(plane slice, row slice) of the map in chunks of about _CHUNK_PIXELS pixels, at least 16 rows
    high where the map has them (each chunk reads 2r rows more than it writes)."""
    rows = min(height, max(16, _CHUNK_PIXELS // max(1, width)))
    per_chunk = max(1, _CHUNK_PIXELS // max(1, rows * width))
    for p in range(0, planes, per_chunk):
        for r in range(0, height, rows):
            yield slice(p, min(planes, p + per_chunk)), slice(r, min(height, r + rows))


def _by_chunks(compute, images, taps: np.ndarray, padding: str, outputs: int):
    """``compute(*blocks)`` over chunks of the map, assembled: ``outputs`` arrays of the map's shape.

    ``images`` (of one shape) are extended as ``padding`` says; each block
    holds a chunk's rows and planes with their 2r-pixel halo, and compute
    returns the chunk's ``outputs`` arrays (valid filtering of the blocks).
    Working chunk by chunk keeps the arrays in cache: 1.1 to 2.2 times
    faster than whole arrays on the CPU (bench/NOTES.md), the same numbers
    to about 1e-15.
    """
    k = len(taps)
    extended = [_extend(img, (k - 1) // 2, padding) for img in images]
    lead, (height, width) = extended[0].shape[:-2], extended[0].shape[-2:]
    flat = [e.reshape((-1, height, width)) for e in extended]
    results = [np.empty((flat[0].shape[0], height - k + 1, width - k + 1)) for _ in range(outputs)]
    for planes, rows in _chunks(*results[0].shape):
        halo = slice(rows.start, rows.stop + k - 1)
        for result, part in zip(results, compute(*(f[planes, halo] for f in flat))):
            result[planes, rows] = part
    return [r.reshape(lead + r.shape[-2:]) for r in results]


def filter_plane(img: np.ndarray, taps: np.ndarray, padding: str) -> np.ndarray:
    """The window filter F over the last two axes, in float64.

    "same" pads with zeros (no renormalisation), "reflect" is half-sample
    symmetric, "valid" returns only the (H-2r) x (W-2r) interior.
    """
    img = np.asarray(img, dtype=np.float64)
    return _by_chunks(lambda block: (_filter_valid(block, taps),), [img], taps, padding, 1)[0]


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


def _scaled(x, y, taps, padding, data_range):
    """x and y as float64 values scaled by 1/L, broadcast to one shape."""
    _check(x, taps, padding)
    xs = np.divide(x, data_range, dtype=np.float64)
    ys = np.divide(y, data_range, dtype=np.float64)
    return np.broadcast_arrays(xs, ys)


def _moments(xs, ys, taps, cov):
    """Filtered moments and the quantities of docs/spec.rst section 1, from scaled images extended by r
    on every side (each moment is the window where it fits whole)."""
    mx = _filter_valid(xs, taps)
    my = _filter_valid(ys, taps)
    exx = _filter_valid(xs * xs, taps)
    eyy = _filter_valid(ys * ys, taps)
    exy = _filter_valid(xs * ys, taps)
    mxx, myy, mxy = mx * mx, my * my, mx * my
    sxx_raw = _covariance(exx, mxx, cov)
    syy_raw = _covariance(eyy, myy, cov)
    # Clamp the variances at 0. A flat window has no covariance either
    # (Cauchy-Schwarz), so sxy is 0 where either variance is clamped; this keeps
    # S exactly 1 for an image compared with itself. The derivatives (below)
    # are those of the unclamped covariance: at a flat window of x, sxx changes
    # only to second order with x but sxy to first order, so dS/dExy must stay.
    # A clamped variance's own derivative is zero (and at a flat window its
    # first-order effect is zero anyway).
    sxx_free = sxx_raw > 0
    syy_free = syy_raw > 0
    sxx = np.where(sxx_free, sxx_raw, 0.0)
    syy = np.where(syy_free, syy_raw, 0.0)
    sxy = np.where(sxx_free & syy_free, _covariance(exy, mxy, cov), 0.0)
    return mx, my, mxx, myy, mxy, sxx, syy, sxy, sxx_free


def _covariance(second, product, cov):
    """cov * (second - product), in place in ``second`` (a filtered moment used once)."""
    second -= product
    if cov != 1.0:
        second *= cov
    return second


def _bounded(bounds, limit) -> bool:
    """Whether every value of every array in ``bounds`` is at most ``limit`` (False for a NaN)."""
    return all(np.max(b, initial=-np.inf) <= limit for b in bounds)


def _map_and_partials(x, y, taps, *, K1, K2, padding, data_range, cov, want_partials, term="ssim", limit=None):
    """The map of ``term`` ("ssim": S, or "cs": the contrast-structure A2/B2) and, if asked,
    (the scaled x and y, its partial derivatives with respect to mx, Exx and Exy (zero where a clamp is
    active)), computed chunk by chunk of the map (:func:`_by_chunks`).

    ``limit``: the largest number of the compute dtype (float32's for the
    kernels' float32 arithmetic). Where the denominators of finite windows
    pass it, that arithmetic overflows: the map pixel and its partials are
    NaN there (docs/spec.rst section 1), so the gradient is NaN, never 0.
    """
    xs, ys = _scaled(x, y, taps, padding, data_range)

    def chunk(x_block, y_block):
        value, partials = _terms(x_block, y_block, taps, K1=K1, K2=K2, cov=cov, want_partials=want_partials,
                                 term=term, limit=limit)
        return (value, *partials) if want_partials else (value,)

    maps = _by_chunks(chunk, [xs, ys], taps, padding, 4 if want_partials else 1)
    return (maps[0], (xs, ys, tuple(maps[1:]))) if want_partials else (maps[0], None)


def _terms(xs, ys, taps, *, K1, K2, cov, want_partials, term, limit):
    """The map of ``term`` and, if asked, its three partials, from scaled images extended by r."""
    mx, my, mxx, myy, mxy, sxx, syy, sxy, sxx_free = _moments(xs, ys, taps, cov)
    C1, C2 = K1 * K1, K2 * K2
    A1 = 2.0 * mxy + C1
    A2 = 2.0 * sxy + C2
    B1 = mxx + myy + C1
    B2 = sxx + syy + C2
    D = B1 * B2
    raw = (A1 * A2) / D if term == "ssim" else A2 / B2
    value = np.clip(raw, -1.0, 1.0)
    overflow = False
    bounds = (B2,) if term == "cs" else (B1, B2, D)
    if limit is not None and not _bounded(bounds, limit):  # rare: whole-chunk maxima decide the common case
        bounded = np.logical_and.reduce([b <= limit for b in bounds])
        overflow = np.isfinite(mx) & np.isfinite(my) & ~bounded
        value = np.where(overflow, np.nan, value)
    if not want_partials:
        return value, None
    free = value == raw
    if term == "ssim":
        S = value
        # Partial derivatives of S at each window centre (docs/spec.rst section 4), with
        # the clamps' derivatives zeroed, in units of the scaled values.
        p_mu = 2.0 * my * (A2 - cov * A1) / D - 2.0 * mx * S / B1 + np.where(sxx_free, 2.0 * cov * mx * S / B2, 0.0)
        p_xx = np.where(sxx_free, -cov * S / B2, 0.0)
        p_xy = 2.0 * cov * A1 / D
    else:  # cs = A2 / B2: A2 depends on Exy - mx my, B2 on Exx - mx^2
        cs = value
        p_mu = -2.0 * cov * my / B2 + np.where(sxx_free, 2.0 * cov * mx * cs / B2, 0.0)
        p_xx = np.where(sxx_free, -cov * cs / B2, 0.0)
        p_xy = 2.0 * cov / B2
    return value, tuple(np.where(overflow, np.nan, np.where(free, p, 0.0)) for p in (p_mu, p_xx, p_xy))


def ssim_map(x, y, taps, *, K1=0.01, K2=0.03, padding="same", data_range=1.0, cov=1.0, limit=None):
    """The SSIM map S over the last two axes (H x W, or the valid interior).

    ``cov`` is the covariance factor c: 1, or NP/(NP-1) for sample covariance;
    ``limit`` as in :func:`_map_and_partials`.
    """
    S, _ = _map_and_partials(
        x, y, taps, K1=K1, K2=K2, padding=padding, data_range=data_range, cov=cov,
        want_partials=False, limit=limit,
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
                       data_range=1.0, cov=1.0, limit=None):
    """(mean SSIM over ``axis``, d sum(mean) / dx), the exact gradient of docs/spec.rst section 4.

    The gradient is with respect to the first argument x and has x's shape.
    """
    x = np.asarray(x, dtype=np.float64)
    S, (xs, ys, (p_mu, p_xx, p_xy)) = _map_and_partials(
        x, y, taps, K1=K1, K2=K2, padding=padding, data_range=data_range, cov=cov,
        want_partials=True, limit=limit,
    )
    axes = _normalise_axis(axis, S.ndim)
    value = _crop(S, crop).mean(axis=axes)
    # g: weight of each map pixel in the returned means (0 where cropped away).
    g = np.zeros(S.shape)
    _crop(g, crop)[...] = 1.0 / np.prod([_crop(S, crop).shape[a] for a in axes])
    grad = _gradient_from_partials(xs, ys, (p_mu, p_xx, p_xy), g, taps, padding) / data_range
    # Leading axes that x broadcast over (y had them, x did not) sum back.
    extra = grad.ndim - x.ndim
    grad = grad.sum(axis=tuple(range(extra))) if extra else grad
    for a, n in enumerate(x.shape):
        if n == 1 and grad.shape[a] != 1:
            grad = grad.sum(axis=a, keepdims=True)
    return value, grad


def _gradient_from_partials(xs, ys, partials, g, taps, padding):
    """d/dx of sum(g * map) in scaled units: F^T(g Pmu) + 2 x F^T(g Pxx) + y F^T(g Pxy) (docs/spec.rst section 4)."""
    p_mu, p_xx, p_xy = partials
    blur = lambda p: filter_plane_adjoint(g * p, taps, padding, xs.shape)  # noqa: E731
    return blur(p_mu) + 2.0 * xs * blur(p_xx) + ys * blur(p_xy)


def skimage_gradient(x, y, taps, *, K1=0.01, K2=0.03, padding="reflect", data_range=1.0, cov=1.0):
    """scikit-image's ``gradient=True`` result, per plane (docs/spec.rst section 5).

    Not the gradient of the returned mean: skimage's formula, of the
    uncropped map's mean over each plane, with respect to the second image,
    (2/N) (F(A1/D) x + F(-S/B2) y + F((mx (A2 - A1) - my (B2 - B1) S) / D)),
    N the plane's pixel count, the filter's adjoint standing for F.
    """
    xs, ys = _scaled(x, y, taps, padding, data_range)
    radius = (len(taps) - 1) // 2
    mx, my, _, _, _, sxx, syy, sxy, _ = _moments(_extend(xs, radius, padding), _extend(ys, radius, padding), taps,
                                                  cov)
    C1, C2 = K1 * K1, K2 * K2
    A1, A2 = 2.0 * mx * my + C1, 2.0 * sxy + C2
    B1, B2 = mx * mx + my * my + C1, sxx + syy + C2
    D = B1 * B2
    S = np.clip(A1 * A2 / D, -1.0, 1.0)
    weight = 2.0 / (xs.shape[-2] * xs.shape[-1])
    blur = lambda p: filter_plane_adjoint(weight * p, taps, padding, xs.shape)  # noqa: E731
    grad = blur(A1 / D) * xs + blur(-S / B2) * ys + blur((mx * (A2 - A1) - my * (B2 - B1) * S) / D)
    return grad / data_range


# ---- MS-SSIM (docs/spec.rst section 6) ---------------------------------------------------------------

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_VARIANTS = ("pytorch_msssim", "tensorflow", "torchmetrics")
_GUARD = 1e-12  # the smallest mean a power's derivative divides by


def _pad_last_two(image, before, after, mode="constant"):
    widths = [(0, 0)] * (image.ndim - 2) + [(before[0], after[0]), (before[1], after[1])]
    return np.pad(image, widths, mode=mode)


def downsampled_shape(shape, variant):
    """The plane after one 2x2 mean of ``variant``: ceil halving, or floor for torchmetrics."""
    h, w = shape[-2:]
    if variant == "torchmetrics":
        return tuple(shape[:-2]) + (h // 2, w // 2)
    return tuple(shape[:-2]) + ((h + 1) // 2, (w + 1) // 2)


def downsample(image, variant):
    """One 2x2 mean over the last two axes, as ``variant`` does it (docs/spec.rst section 6).

    pytorch_msssim pads an odd side with a zero on both sides and counts the
    zeros; tensorflow repeats the last row or column; torchmetrics drops it.
    """
    h, w = image.shape[-2:]
    if variant == "pytorch_msssim":
        padded = _pad_last_two(image, (h % 2, w % 2), (h % 2, w % 2))
    elif variant == "tensorflow":
        padded = _pad_last_two(image, (0, 0), (h % 2, w % 2), mode="edge")
    elif variant == "torchmetrics":
        padded = image
    else:
        raise ValueError(f"variant must be one of {MS_SSIM_VARIANTS}, got {variant!r}")
    oh, ow = downsampled_shape(image.shape, variant)[-2:]
    p = padded[..., : 2 * oh, : 2 * ow]
    return 0.25 * (p[..., 0::2, 0::2] + p[..., 1::2, 0::2] + p[..., 0::2, 1::2] + p[..., 1::2, 1::2])


def downsample_adjoint(g, variant, shape):
    """The adjoint of :func:`downsample`: each output's g/4 back to its four sources (``shape``: the input's)."""
    h, w = shape[-2:]
    spread = 0.25 * np.repeat(np.repeat(g, 2, axis=-2), 2, axis=-1)
    if variant == "pytorch_msssim":
        ph, pw = h % 2, w % 2
        full = np.zeros(spread.shape[:-2] + (h + 2 * ph, w + 2 * pw))
        full[..., : spread.shape[-2], : spread.shape[-1]] = spread
        return full[..., ph : ph + h, pw : pw + w]
    if variant == "tensorflow":
        full = spread  # (h + h%2) x (w + w%2): the repeated row and column fold back onto the last ones
        if h % 2:
            full[..., h - 1, :] += full[..., h, :]
        if w % 2:
            full[..., :, w - 1] += full[..., :, w]
        return full[..., :h, :w]
    full = np.zeros(spread.shape[:-2] + (h, w))
    full[..., : spread.shape[-2], : spread.shape[-1]] = spread
    return full


def _mirror_fold(n, margin):
    """The (n, n + 2 margin) matrix that sums each position of a whole-sample extension onto its pixel."""
    source = np.abs(np.arange(-margin, n + margin))
    source = np.where(source >= n, 2 * (n - 1) - source, source)
    fold = np.zeros((n, n + 2 * margin))
    fold[source, np.arange(n + 2 * margin)] = 1.0
    return fold


def mirror_extend(image, margin):
    """The image extended by ``margin`` on every side by whole-sample reflection (dcb|abcd|cba)."""
    return _pad_last_two(image, (margin, margin), (margin, margin), mode="reflect")


def mirror_extend_adjoint(g, margin, shape):
    """The adjoint of :func:`mirror_extend`: each extended position's g added onto its pixel of ``shape``."""
    return _mirror_fold(shape[-2], margin) @ g @ _mirror_fold(shape[-1], margin).T


def ms_ssim_min_size(win_size, scales, variant):
    """The smallest image side that keeps every scale at least win_size wide (valid padding)."""
    side = win_size
    for _ in range(scales - 1):
        side = 2 * side if variant == "torchmetrics" else 2 * side - 1
    return side


def ms_ssim_with_gradient(x, y, taps, *, weights=MS_SSIM_WEIGHTS, variant="pytorch_msssim", K1=0.01, K2=0.03,
                          data_range=1.0, axis=None, pool_axes=(), want_gradient=True, limit=None):
    """MS-SSIM (mean over ``axis``, which includes the plane) and d sum(value) / dx.

    Per image: prod_j relu(mean cs_j)^w_j * relu(mean S_M)^w_M over the scales
    of ``variant``, population covariance, the cs maps over the valid
    interior, S_M too except for torchmetrics, whose S_M is the full map with
    whole-sample reflection (torchmetrics >= 1.5). An image is one plane, or
    the planes along ``pool_axes`` (torchmetrics pools an image's channels
    into each mean). The per-image values are averaged over the other axes
    of ``axis``. The gradient of a relu'd (zero) mean is zero, and a power's
    derivative divides by the mean only down to 1e-12, so finite inputs never
    give NaN or infinity.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = np.broadcast_arrays(x, y)
    scales = len(weights)
    if scales < 2:
        raise ValueError(f"MS-SSIM needs at least two scales (weights), got {scales}")
    needed = ms_ssim_min_size(len(taps), scales, variant)
    if min(x.shape[-2:]) < needed:
        raise ValueError(f"images of {x.shape[-2]}x{x.shape[-1]} are too small for {scales} scales of "
                         f"{variant!r} with a {len(taps)}-tap window: the smaller side must be at least {needed}")
    xs, ys = [x], [y]
    for _ in range(scales - 1):
        xs.append(downsample(xs[-1], variant))
        ys.append(downsample(ys[-1], variant))
    # torchmetrics: the last scale's S over the full map, the image extended by whole-sample reflection
    margin = (len(taps) - 1) // 2 if variant == "torchmetrics" else 0
    extended = [mirror_extend(a, margin) if margin else a for a in (xs[-1], ys[-1])]
    kwargs = dict(K1=K1, K2=K2, padding="valid", data_range=data_range, cov=1.0, want_partials=want_gradient,
                  limit=limit)
    terms = [_map_and_partials(xs[j], ys[j], taps, term="cs", **kwargs) for j in range(scales - 1)]
    terms.append(_map_and_partials(*extended, taps, term="ssim", **kwargs))
    nd = x.ndim
    mean_axes = tuple(sorted({a % nd for a in pool_axes} | {nd - 2, nd - 1}))
    means = [np.maximum(t[0].mean(axis=mean_axes, keepdims=True), 0.0) for t in terms]  # per image
    per_image = np.prod([m**w for m, w in zip(means, weights)], axis=0)
    axes = _normalise_axis(axis, nd)
    if not set(mean_axes) <= set(axes):
        raise ValueError(f"axis={axis!r} must include the pooled axes {pool_axes}")
    value = per_image.mean(axis=axes)
    if not want_gradient:
        return value, None
    images_per_value = np.prod([per_image.shape[a] for a in axes], dtype=np.int64)
    grad = None
    for j in reversed(range(scales)):
        d_mean = np.where(means[j] > 0, weights[j] * np.maximum(means[j], _GUARD) ** (weights[j] - 1), 0.0)
        for k in range(scales):
            if k != j:
                d_mean = d_mean * means[k] ** weights[k]
        value_map, (x_scaled, y_scaled, partials) = terms[j]
        averaged = np.prod([value_map.shape[a] for a in mean_axes], dtype=np.int64)
        g = np.broadcast_to(d_mean / (averaged * images_per_value), value_map.shape)
        grad_j = _gradient_from_partials(x_scaled, y_scaled, partials, g, taps, "valid") / data_range
        if j == scales - 1 and margin:
            grad_j = mirror_extend_adjoint(grad_j, margin, xs[j].shape)
        grad = grad_j if grad is None else grad_j + downsample_adjoint(grad, variant, xs[j].shape)
    return value, grad
