"""Float64 NumPy/SciPy implementation of docs/spec.rst sections 1 to 4, 6 and 8.

This module is the oracle of the tests and the path for NumPy inputs. It is
written for clarity first: every quantity of the spec appears by name. For
speed it works on the map chunk by chunk, each chunk's images held flat and
contiguous (so that every pass streams one array that stays in cache), and
computes only the map pixels a mean counts.

The image is always the last ``spatial`` axes (2, a plane, by default; 3 for
a D x H x W volume); any leading axes are a batch. A window is a 1-D array of
taps (odd length, symmetric), applied separably along each spatial axis, or
one such array per spatial axis (the first for the first spatial axis):
``taps`` arguments take either (:func:`axis_windows`), and the borders that
follow from a window (``crop``, radii) are one int or one per spatial axis.

Examples
--------
>>> import numpy as np
>>> from cussim import _reference as ref
>>> rng = np.random.default_rng(0)
>>> x = rng.random((32, 32)); y = x + 0.05 * rng.standard_normal((32, 32))
>>> taps = ref.window_taps("gaussian", 11, 1.5)
>>> round(float(ref.ssim(x, y, taps)), 6)
0.985257
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np

PADDINGS = ("same", "valid", "reflect")
WINDOWS = ("gaussian", "uniform")

NUMBER_WORDS = {2: "two", 3: "three"}  # spatial axes, in messages


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


def axis_windows(taps, spatial=2) -> list:
    """One float64 window per spatial axis: ``taps`` (one 1-D window for every axis) repeated, or ``taps`` as
    given where it holds one window per axis (a sequence of 1-D windows, or a 2-D array of equal ones)."""
    if np.ndim(taps[0]) == 0:
        return [np.asarray(taps, dtype=np.float64)] * spatial
    if len(taps) != spatial:
        raise ValueError(f"taps holds {len(taps)} windows; images with {spatial} spatial axes take one window, "
                         f"or one per axis")
    return [np.asarray(t, dtype=np.float64) for t in taps]


def axis_radii(taps, spatial=2) -> tuple:
    """The radius of each spatial axis' window (:func:`axis_windows`)."""
    return tuple((len(t) - 1) // 2 for t in axis_windows(taps, spatial))


def per_axis(value, spatial=2) -> tuple:
    """``value`` (an int, or one per spatial axis) as one int per spatial axis."""
    return tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * spatial


def cropped(array, border, spatial=2):
    """``array`` without ``border`` elements (an int, or one per spatial axis) on both ends of each of its last
    ``spatial`` axes."""
    borders = per_axis(border, spatial)
    if not any(borders):
        return array
    return array[(Ellipsis,) + tuple(slice(b, n - b) for b, n in zip(borders, array.shape[-spatial:]))]


def _extend(img: np.ndarray, radius, padding: str, spatial: int, crop=0) -> np.ndarray:
    """The images as the windows of a map cropped by ``crop`` read them: extended by ``radius`` on every side of
    their last ``spatial`` axes as ``padding`` says (zeros for "same"; half-sample symmetric for "reflect",
    scipy's "reflect" is NumPy's "symmetric"; not at all for "valid"), less ``crop`` on every side (each an int,
    or one per spatial axis)."""
    margins = [(0 if padding == "valid" else r) - c for r, c in zip(per_axis(radius, spatial), per_axis(crop, spatial))]
    img = cropped(img, [max(0, -m) for m in margins], spatial)
    if max(margins) <= 0:
        return img
    widths = [(0, 0)] * (img.ndim - spatial) + [(max(0, m), max(0, m)) for m in margins]
    return np.pad(img, widths, mode="constant" if padding == "same" else "symmetric")


# A block is a C-order array held flat: a window along an axis whose elements lie ``step`` apart reads the
# entries j, j + step, ... of the flat array, so every pass of the filter and of the formula runs over one
# contiguous array, which NumPy streams fastest (bench/NOTES.md). The entries whose window runs past the end
# of a row or plane hold mixtures of two rows or planes: they are computed and never read back.


def _steps(shape, spatial: int) -> list:
    """How far apart, in the flat block of C-order ``shape``, neighbours along each of the last ``spatial`` axes lie."""
    return [math.prod(shape[axis + 1 :]) for axis in range(len(shape) - spatial, len(shape))]


def _box_sums(flat: np.ndarray, k: int, step: int) -> np.ndarray:
    """Sums of k entries ``step`` apart (the first len(flat) - (k-1) step of them), by doubling: 4 additions for
    k = 7."""
    n = len(flat) - (k - 1) * step
    pieces, start, width, sums = [], 0, 1, flat  # sums[j]: the sum of ``width`` entries from j
    while width <= k:
        if k & width:
            pieces.append(sums[start * step : start * step + n])
            start += width
        if 2 * width <= k:
            length = len(sums) - width * step
            sums = sums[:length] + sums[width * step : width * step + length]
        width *= 2
    out = pieces[0] + pieces[1] if len(pieces) > 1 else pieces[0].copy()
    for piece in pieces[2:]:
        out += piece
    return out


def _correlate(flat: np.ndarray, taps: np.ndarray, step: int) -> np.ndarray:
    """sum_i taps[i] * flat[j + i step] (the first len(flat) - (k-1) step of them); a symmetric window adds its
    mirrored terms before their product."""
    k = len(taps)
    n = len(flat) - (k - 1) * step
    part = lambda i: flat[i * step : i * step + n]  # noqa: E731
    symmetric = (taps == taps[::-1]).all()
    half = k // 2 if symmetric else 0
    out = taps[half] * part(half)
    term = np.empty(n)
    for i in range(half) if symmetric else range(1, k):
        if symmetric:
            np.add(part(i), part(k - 1 - i), out=term)
            term *= taps[i]
        else:
            np.multiply(part(i), taps[i], out=term)
        out += term
    return out


def _filter_valid(flat: np.ndarray, taps, shape, spatial: int) -> np.ndarray:
    """The separable window (``taps``: one window, or one per axis) over the last ``spatial`` axes of the flat
    block of C-order ``shape``, where it fits whole: a flat array whose entries at the map's places
    (:func:`_map_view`) hold the map.

    Box windows sum first and multiply once by the product of their taps (a
    tap to the power ``spatial`` where the axes share it).
    """
    windows = axis_windows(taps, spatial)
    box = all((w == w[0]).all() for w in windows)
    for step, w in zip(_steps(shape, spatial), windows):
        flat = _box_sums(flat, len(w), step) if box else _correlate(flat, w, step)
    if box:
        firsts = [w[0] for w in windows]
        flat *= firsts[0] ** spatial if len(set(firsts)) == 1 else math.prod(firsts)
    return flat


def _map_view(flat: np.ndarray, shape, sizes, spatial: int) -> np.ndarray:
    """The map held by ``flat``, filtered from a block of C-order ``shape`` by windows of ``sizes`` taps (one
    per spatial axis): each of the last ``spatial`` sides shrinks by its size - 1, the places keep the block's
    strides (the last place is the flat array's last entry)."""
    strides = [flat.itemsize * step for step in _steps(shape, len(shape))]
    sides = tuple(shape[: -spatial]) + tuple(n - k + 1 for n, k in zip(shape[-spatial:], sizes))
    return np.lib.stride_tricks.as_strided(flat, sides, strides, writeable=False)


_CHUNK_PIXELS = 1 << 14  # map pixels per chunk: a chunk's arrays stay in a core's cache (bench/NOTES.md)


def _chunks(planes: int, first: int, rest: int):
    """(image slice, slice of the first spatial axis) of the map in chunks of about _CHUNK_PIXELS pixels
    (``rest``: the pixels of one step along the first spatial axis), at least 8 steps long where the map
    has them (each chunk reads 2r steps more than it writes); none for an empty map."""
    if not first or not rest:
        return
    steps = min(first, max(8, _CHUNK_PIXELS // rest))
    per_chunk = max(1, _CHUNK_PIXELS // (steps * rest))
    for p in range(0, planes, per_chunk):
        for r in range(0, first, steps):
            yield slice(p, min(planes, p + per_chunk)), slice(r, min(first, r + steps))


def _by_chunks(compute, images, taps, padding: str, outputs: int, spatial: int, crop=0, divisor: float = 1.0,
               shifts=None):
    """``compute(blocks, shape, offsets)`` over chunks of the map (cropped by ``crop`` on every side), assembled:
    ``outputs`` arrays of the map's shape.

    ``images`` (of one shape) are extended as ``padding`` says; a chunk's
    block holds some images and steps along the first spatial axis with
    their 2r halo, less each image's shift (``shifts``: one array per image,
    of :func:`_shifts`; none: 0), divided by ``divisor`` (one for all, or one
    per image) in float64, C-order and flat, of N-d ``shape`` (planes first);
    ``offsets`` holds each image's shift divided by its divisor at every entry
    of a filtered block (a number where the block holds one plane); compute
    returns ``outputs`` flat arrays (:func:`_filter_valid` of the blocks, and
    what follows elementwise). A
    chunk's arrays stay in cache: the CPU path is 1.1 to 2.2 times faster
    than on whole arrays (bench/NOTES.md), and each map pixel is computed
    by the same operations whatever the chunks.
    """
    sizes = [len(w) for w in axis_windows(taps, spatial)]
    divisors = divisor if isinstance(divisor, (tuple, list)) else [divisor] * len(images)
    extended = [_extend(img, axis_radii(taps, spatial), padding, spatial, crop) for img in images]
    lead, sides = extended[0].shape[: -spatial], extended[0].shape[-spatial:]
    flat = [e.reshape((-1,) + sides) for e in extended]
    flat_shifts = [np.zeros((len(flat[0]),) + (1,) * spatial)] * len(images) if shifts is None else [
        s.reshape((-1,) + (1,) * spatial) for s in shifts]
    map_sides = tuple(max(0, n - k + 1) for n, k in zip(sides, sizes))
    results = [np.empty(flat[0].shape[:1] + map_sides) for _ in range(outputs)]
    for planes, steps in _chunks(flat[0].shape[0], map_sides[0], math.prod(map_sides[1:])):
        parts = [f[planes, steps.start : steps.stop + sizes[0] - 1] for f in flat]
        blocks = []
        for part, shift, d in zip(parts, flat_shifts, divisors):
            block = np.subtract(part, shift[planes], out=np.empty(part.shape), dtype=np.float64)
            block /= d
            blocks.append(block.ravel())
        shape = parts[0].shape
        filtered = blocks[0].size - sum((k - 1) * step for k, step in zip(sizes, _steps(shape, spatial)))
        offsets = [s[planes].ravel() / d for s, d in zip(flat_shifts, divisors)]
        offsets = [o[0] if len(o) == 1 else np.repeat(o, math.prod(shape[1:]))[:filtered] for o in offsets]
        for result, values in zip(results, compute(blocks, shape, offsets)):
            result[planes, steps] = _map_view(values, parts[0].shape, sizes, spatial)
    return [r.reshape(lead + map_sides) for r in results]


def filter_plane(img: np.ndarray, taps, padding: str, spatial: int = 2) -> np.ndarray:
    """The window filter F over the last ``spatial`` axes, in float64.

    "same" pads with zeros (no renormalisation), "reflect" is half-sample
    symmetric, "valid" returns only the interior (each side shrinks by 2r).
    """
    return _by_chunks(lambda blocks, shape, _: (_filter_valid(blocks[0], taps, shape, spatial),), [np.asarray(img)],
                      taps, padding, 1, spatial)[0]


def filter_plane_adjoint(g: np.ndarray, taps, padding: str, shape: tuple, spatial: int = 2) -> np.ndarray:
    """F^T: the adjoint of :func:`filter_plane`, mapping a map-shaped array to ``shape``.

    For "valid" the map is embedded in a zero image of the image's shape first.
    The taps are flipped, which is the adjoint for zero padding with any taps
    and, for the symmetric taps used here, for "reflect" as well (the reflect
    filter matrix of a symmetric window is symmetric).
    """
    if padding == "valid":
        embedded = np.zeros(shape, dtype=np.float64)
        cropped(embedded, axis_radii(taps, spatial), spatial)[...] = g
        g = embedded
    flipped = [np.ascontiguousarray(w[::-1]) for w in axis_windows(taps, spatial)]
    return filter_plane(g, flipped, "reflect" if padding == "reflect" else "same", spatial)


def _check(x, taps, padding, spatial):
    """The few conditions the reference itself needs; the public API checks the rest."""
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    sizes = [len(w) for w in axis_windows(taps, spatial)]
    if any(k % 2 != 1 for k in sizes):
        raise ValueError(f"the window must have an odd number of taps on every axis, got {sizes}")
    if np.ndim(x) < spatial:
        raise ValueError(f"images need {NUMBER_WORDS[spatial]} spatial axes (the last {spatial}), "
                         f"got shape {np.shape(x)}")
    if padding == "valid" and any(n < k for n, k in zip(np.shape(x)[-spatial:], sizes)):
        least = f"{sizes[0]} pixels a side" if len(set(sizes)) == 1 else f"the window's {'x'.join(map(str, sizes))}"
        raise ValueError(f'padding="valid" needs images of at least {least}, got {np.shape(x)}')


def _images(x, y, taps, padding, spatial):
    """x and y checked, as arrays broadcast to one shape."""
    _check(x, taps, padding, spatial)
    return np.broadcast_arrays(np.asarray(x), np.asarray(y))


def _scaled(images, data_range, shifts=(0.0, 0.0)):
    """The images less their ``shifts`` as float64 values scaled by 1/L."""
    return [np.divide(np.subtract(image, shift, dtype=np.float64), data_range) for image, shift in zip(images, shifts)]


_SHIFT_SAMPLES = 4096  # pixels of an image whose median is its shift


def _shifts(images, spatial):
    """Each image's shift (data units, shape lead + (1,) * spatial): its median, NaNs left out (0 where none is
    finite). The moments of the images less their shifts give the variances without the cancellation of
    E[x^2] - mx^2, which loses digits in proportion to (mx / sx)^2 (constant 0.5 against 0.5 + 1e-7 with
    data_range 1e-6 gave 0.94 for 1); the median, unlike the centre pixel the kernels shift a tile by, is
    near most windows of an image even when some pixels are far off. It is the median of a grid of at most
    _SHIFT_SAMPLES pixels (a whole image's median took as long as the SSIM it serves)."""
    axes = tuple(range(-spatial, 0))
    per_axis = round(_SHIFT_SAMPLES ** (1 / spatial))
    grid = (Ellipsis,) + tuple(slice(None, None, -(-n // per_axis) or 1) for n in images[0].shape[-spatial:])
    shifts = []
    for image in images:
        shift = np.median(image[grid], axis=axes, keepdims=True).astype(np.float64)
        if not np.isfinite(shift).all():  # a NaN pixel
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an image of NaNs only
                shift = np.nanmedian(image[grid], axis=axes, keepdims=True).astype(np.float64)
        shifts.append(np.nan_to_num(shift, nan=0.0, posinf=0.0, neginf=0.0))
    return shifts


def _moments(xs, ys, taps, shape, cov, spatial, offsets=(0.0, 0.0), ms=None, W=None):
    """Filtered moments and the quantities of docs/spec.rst section 1, from flat blocks of ``shape`` of scaled
    images extended by r on every side (:func:`_filter_valid`) less their ``offsets`` (:func:`_by_chunks`): the
    means mx, my, the shifted means mx - kx, my - ky, then mx^2, my^2, mx my, the (co)variances, where sxx
    is not clamped.

    With the block ``ms`` of a mask and its filtered W = F(m) (zero nowhere
    that is read back): the moments of normalised convolution, F(m x) / W
    and so on (docs/spec.rst section 8); values where m = 0 are never read.
    """
    if ms is None:
        mxs, mys = (_filter_valid(a, taps, shape, spatial) for a in (xs, ys))
        exx, eyy, exy = (_filter_valid(a * b, taps, shape, spatial) for a, b in ((xs, xs), (ys, ys), (xs, ys)))
    else:
        inside = ms > 0
        wx, wy = (np.where(inside, ms * a, 0.0) for a in (xs, ys))
        wxx, wyy, wxy = (np.where(inside, a * b, 0.0) for a, b in ((wx, xs), (wy, ys), (wx, ys)))
        mxs, mys, exx, eyy, exy = (np.divide(_filter_valid(a, taps, shape, spatial), W, out=np.zeros(len(W)),
                                             where=W > 0) for a in (wx, wy, wxx, wyy, wxy))
    sxx = _covariance(exx, mxs * mxs, cov)
    syy = _covariance(eyy, mys * mys, cov)
    sxy = _covariance(exy, mxs * mys, cov)
    mx, my = mxs + offsets[0], mys + offsets[1]
    mxx, myy, mxy = mx * mx, my * my, mx * my
    # Clamp the variances at 0. A flat window has no covariance either
    # (Cauchy-Schwarz), so sxy is 0 where either variance is clamped; this keeps
    # S exactly 1 for an image compared with itself. The derivatives (below)
    # are those of the unclamped covariance: at a flat window of x, sxx changes
    # only to second order with x but sxy to first order, so dS/dExy must stay.
    # A clamped variance's own derivative is zero (and at a flat window its
    # first-order effect is zero anyway).
    # A NaN variance is not clamped: the NaN stays in the value and the partials, never a silent 0.
    sxx_free = True
    if not (sxx.min() > 0 and syy.min() > 0):  # a flat window, rounding or NaN; two minima decide the common case
        sxx_free, syy_free = ~(sxx <= 0), ~(syy <= 0)
        sxx = np.where(sxx_free, sxx, 0.0)
        syy = np.where(syy_free, syy, 0.0)
        sxy = np.where(sxx_free & syy_free, sxy, 0.0)
    return mx, my, mxs, mys, mxx, myy, mxy, sxx, syy, sxy, sxx_free


def _covariance(second, product, cov):
    """cov * (second - product), in place in ``second`` (a filtered moment used once)."""
    second -= product
    if cov != 1.0:
        second *= cov
    return second


def _affine(a, scale, shift):
    """scale * a + shift, in place in ``a``."""
    if scale != 1.0:
        a *= scale
    a += shift
    return a


def _bounded(bounds, limit) -> bool:
    """Whether every value of every array in ``bounds`` is at most ``limit`` (False for a NaN)."""
    return all(np.max(b, initial=-np.inf) <= limit for b in bounds)


def _map_and_partials(x, y, taps, *, K1, K2, padding, data_range, cov, want_partials, term="ssim", limit=None,
                      spatial=2, crop=0, normalized=None):
    """The map of ``term`` ("ssim": S, or "cs": the contrast-structure A2/B2), cropped by ``crop`` on every
    side, and, if asked, (the scaled x and y less their shifts (:func:`_shifts`), its partial derivatives
    with respect to the shifted images' mx, Exx and Exy (zero where a clamp is active)), computed chunk by
    chunk of the map (:func:`_by_chunks`).

    ``normalized``: the weights of :func:`mask_weights` for normalised
    convolution (docs/spec.rst section 8, population covariance only): the
    map is 0 where the centre's weight is 0, and the partials are divided
    by W = F(m) (the gradient multiplies by m_p, :func:`ssim_with_gradient`).

    ``limit``: the largest number of the compute dtype (float32's for the
    kernels' float32 arithmetic). Where the denominators of finite windows
    pass it, that arithmetic overflows: the map pixel and its partials are
    NaN there (docs/spec.rst section 1), so the gradient is NaN, never 0.
    """
    images = _images(x, y, taps, padding, spatial)
    if normalized is not None and cov != 1.0:
        raise ValueError("mask_mode='normalized' takes population covariance only; pass sample_covariance=False")
    masks = [] if normalized is None else [np.broadcast_to(normalized, images[0].shape)]
    # the shifts of normalised convolution come from the pixels it reads (weight > 0) only
    shifts = _shifts([np.where(masks[0] > 0, image, np.nan) for image in images] if masks else images, spatial)
    shifts += [np.zeros_like(shifts[0])] * len(masks)  # a mask is filtered as it is

    def chunk(blocks, shape, offsets):
        value, partials = _terms(*blocks[:2], taps, shape, offsets[:2], *blocks[2:], K1=K1, K2=K2, cov=cov,
                                 want_partials=want_partials, term=term, limit=limit, spatial=spatial)
        return (value, *partials) if want_partials else (value,)

    divisors = [data_range, data_range] + [1.0] * len(masks)
    maps = _by_chunks(chunk, [*images, *masks], taps, padding, 4 if want_partials else 1, spatial, crop, divisors,
                      shifts)
    return (maps[0], (*_scaled(images, data_range, shifts[:2]), tuple(maps[1:]))) if want_partials else (maps[0], None)


def _terms(xs, ys, taps, shape, offsets, ms=None, *, K1, K2, cov, want_partials, term, limit, spatial):
    """The map of ``term`` and, if asked, its three partials, from flat blocks of ``shape`` of scaled images
    extended by r less their ``offsets`` (:func:`_moments`), normalised by the mask block ``ms`` if given."""
    W = None if ms is None else _filter_valid(ms, taps, shape, spatial)
    mx, my, mxs, mys, mxx, myy, mxy, sxx, syy, sxy, sxx_free = _moments(xs, ys, taps, shape, cov, spatial, offsets,
                                                                         ms, W)
    C1, C2 = K1 * K1, K2 * K2
    # In place where a quantity is used once: 2 mxy + C1 is A1, mxx + myy + C1 is B1, and so on.
    A2 = _affine(sxy, 2.0, C2)
    B2 = _affine(np.add(sxx, syy, out=sxx), 1.0, C2)
    if term == "ssim":
        A1 = _affine(mxy, 2.0, C1)
        B1 = _affine(np.add(mxx, myy, out=mxx), 1.0, C1)
        D = B1 * B2
        raw = A1 * A2
        raw /= D
    else:
        raw = A2 / B2
    value = np.clip(raw, -1.0, 1.0, out=None if want_partials else raw)
    overflow = False
    bounds = (B2,) if term == "cs" else (B1, B2, D)
    if limit is not None and not _bounded(bounds, limit):  # rare: whole-chunk maxima decide the common case
        bounded = np.logical_and.reduce([b <= limit for b in bounds])
        overflow = np.isfinite(mx) & np.isfinite(my) & ~bounded
        value = np.where(overflow, np.nan, value)
    if not want_partials:
        return (value if ms is None else _centre_zeroed(value, ms, W)), None
    clamped = np.abs(raw) > 1.0  # not where raw is NaN: its partials stay NaN
    if term == "ssim":
        S = value
        # Partial derivatives of S at each window centre (docs/spec.rst section 4), with
        # the clamps' derivatives zeroed, in units of the scaled values.
        p_mu = 2.0 * (my * A2 - cov * mys * A1) / D - 2.0 * mx * S / B1 + np.where(sxx_free, 2.0 * cov * mxs * S / B2,
                                                                                  0.0)
        p_xx = np.where(sxx_free, -cov * S / B2, 0.0)
        p_xy = 2.0 * cov * A1 / D
    else:  # cs = A2 / B2: A2 depends on Exy - mx my, B2 on Exx - mx^2
        cs = value
        p_mu = -2.0 * cov * mys / B2 + np.where(sxx_free, 2.0 * cov * mxs * cs / B2, 0.0)
        p_xx = np.where(sxx_free, -cov * cs / B2, 0.0)
        p_xy = 2.0 * cov / B2
    partials = tuple(np.where(overflow, np.nan, np.where(clamped, 0.0, p)) for p in (p_mu, p_xx, p_xy))
    if ms is None:
        return value, partials
    return _centre_zeroed(value, ms, W), tuple(_centre_zeroed(p, ms, W, divided=True) for p in partials)


def _centre_zeroed(values, ms, W, divided=False):
    """``values`` (divided by W if ``divided``) where the weight of the window's centre in the mask block ``ms``
    is > 0, and 0 where it is 0 (normalised convolution). A window's centre lies half the block's shrinkage
    past its first entry (:func:`_filter_valid`)."""
    start = (len(ms) - len(W)) // 2
    inside = ms[start : start + len(W)] > 0
    return np.divide(values, W if divided else 1.0, out=np.zeros(len(W)), where=inside)


def ssim_map(x, y, taps, *, K1=0.01, K2=0.03, padding="same", data_range=1.0, cov=1.0, limit=None, spatial=2,
             crop=0, mask=None, mask_mode="mean"):
    """The SSIM map S over the last ``spatial`` axes (the image's shape, or the valid interior), less ``crop``
    pixels on every side.

    ``cov`` is the covariance factor c: 1, or NP/(NP-1) for sample covariance;
    ``limit`` as in :func:`_map_and_partials`. ``mask`` with
    ``mask_mode="normalized"``: the map of normalised convolution
    (docs/spec.rst section 8); with ``"mean"`` the map does not depend on it.
    """
    weights, normalized = _weights(x, y, mask, mask_mode, spatial)
    S, _ = _map_and_partials(
        x, y, taps, K1=K1, K2=K2, padding=padding, data_range=data_range, cov=cov,
        want_partials=False, limit=limit, spatial=spatial, crop=crop, normalized=weights if normalized else None,
    )
    return S


MASK_MODES = ("mean", "normalized")


def mask_weights(mask, shape, spatial=2) -> np.ndarray:
    """``mask`` checked, as float64 weights broadcast to the images' ``shape`` (docs/spec.rst section 8).

    The mask has the images' spatial shape (the last ``spatial`` axes) and
    leading axes that broadcast against theirs (none: one mask for every
    image and channel); its weights are real, finite and >= 0 (bool: True
    is 1). The result is a read-only view, of a C-ordered copy where the
    mask is not C-ordered float64 (its sums are then the same for any
    strides).
    """
    m = check_weight_values(np.asarray(mask))
    shape = tuple(shape)
    try:
        fits = m.ndim >= spatial and m.shape[-spatial:] == shape[-spatial:] and np.broadcast_shapes(m.shape,
                                                                                                     shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"mask has shape {m.shape} but the images have shape {shape}: a mask has the images' "
                         f"spatial shape {shape[-spatial:]}, and any leading axes of 1 or of the images' length")
    return np.broadcast_to(np.ascontiguousarray(m, dtype=np.float64), shape)  # C order: sums whatever the strides


def check_weight_dtype(m):
    """The array ``m`` if its dtype holds weights (bool, int or float), else the TypeError."""
    if m.dtype != bool and m.dtype.kind not in "iuf":
        raise TypeError(f"mask must hold real weights (bool, int or float), got dtype {m.dtype}")
    return m


def check_weight_values(m):
    """The array ``m`` if it holds weights (bool, or real numbers that are finite and >= 0), else the error."""
    check_weight_dtype(m)
    if m.dtype.kind == "f" and not np.isfinite(m).all():
        raise ValueError("mask holds NaN or infinite weights; weights must be finite numbers >= 0 "
                         "(numpy.nan_to_num(mask, nan=0.0, posinf=0.0) gives such pixels weight 0)")
    if m.dtype.kind in "if" and (m < 0).any():
        raise ValueError(f"mask holds negative weights (the smallest is {m.min()!r}); weights must be >= 0 "
                         "(numpy.clip(mask, 0, None) gives such pixels weight 0)")
    return m


def _weights(x, y, mask, mask_mode, spatial):
    """(the checked weights broadcast to the images' shape, or None; whether they normalise the windows)."""
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {', '.join(map(repr, MASK_MODES))}, got {mask_mode!r}")
    if mask is None:
        return None, False
    return mask_weights(mask, np.broadcast_shapes(np.shape(x), np.shape(y)), spatial), mask_mode == "normalized"


def map_weights(weights, padding, radius, crop=0, spatial=2):
    """The weights of the map pixels: the mask cropped like the map (by r for "valid"), and by ``crop`` (each an
    int, or one per spatial axis)."""
    radii, crops = per_axis(radius, spatial), per_axis(crop, spatial)
    return cropped(weights, [(r if padding == "valid" else 0) + c for r, c in zip(radii, crops)], spatial)


def weighted_mean(values, weights, axes):
    """(numpy.average(values, axes, weights=weights), the total weights), both with ``axes`` kept as length 1.

    A total weight of 0 is a ValueError naming the index of that result
    (over the axes that are not averaged).
    """
    total = weights.sum(axis=axes, keepdims=True)
    check_total_weights(np.squeeze(total, axis=axes))
    return (weights * values).sum(axis=axes, keepdims=True) / total, total


def check_total_weights(totals):
    """``totals`` (the total weight of each result), or the ValueError naming the first result of weight 0."""
    if not totals.all():
        index = tuple(int(i) for i in np.argwhere(np.asarray(totals) == 0)[0])
        where = f"the result at index {index}" if index else "the result"
        raise ValueError(f"mask gives {where} a total weight of 0: every map pixel averaged into it has weight 0 "
                         "(for padding 'valid' or 'reflect' the mask's border is cropped like the map); give "
                         "those pixels weight, or leave that image out")
    return totals


def mean_weights_crop(padding: str, win_size: int) -> int:
    """Border of the map left out of the mean along an axis whose window has ``win_size`` taps: (win_size-1)//2
    for "reflect", else 0."""
    return (win_size - 1) // 2 if padding == "reflect" else 0


def _normalise_axis(axis, ndim, spatial=2):
    """Axes of the mean as a sorted tuple; they must include the spatial axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    axes = tuple(sorted({int(a) % ndim for a in axes}))
    if not set(range(ndim - spatial, ndim)) <= set(axes):
        raise ValueError(
            f"axis={axis!r} must include {'both' if spatial == 2 else 'all'} spatial axes (the last "
            f"{NUMBER_WORDS[spatial]}, {tuple(range(ndim - spatial, ndim))}); SSIM is a mean over the image"
        )
    return axes


def ssim(x, y, taps, *, axis=None, crop=0, spatial=2, mask=None, mask_mode="mean", **kwargs):
    """Mean SSIM over ``axis`` (which includes the last ``spatial`` axes), in float64.

    ``crop`` leaves that many map pixels out of the mean on every side
    (skimage's (win_size-1)//2 for "reflect"; an int, or one per spatial axis). ``mask``: the mean weighted
    by it (``mask_mode="mean"``), or normalised convolution and that
    weighted mean (``"normalized"``), docs/spec.rst section 8. Other
    keywords as :func:`ssim_map`.
    """
    weights, _ = _weights(x, y, mask, mask_mode, spatial)
    S = ssim_map(x, y, taps, spatial=spatial, crop=crop, mask=weights, mask_mode=mask_mode,  # only the mean's pixels
                 **kwargs)
    axes = _normalise_axis(axis, S.ndim, spatial)
    if weights is None:
        return S.mean(axis=axes)
    counted = map_weights(weights, kwargs.get("padding", "same"), axis_radii(taps, spatial), crop, spatial)
    return np.squeeze(weighted_mean(S, counted, axes)[0], axis=axes)


def ssim_with_gradient(x, y, taps, *, axis=None, crop=0, K1=0.01, K2=0.03, padding="same",
                       data_range=1.0, cov=1.0, limit=None, spatial=2, mask=None, mask_mode="mean"):
    """(mean SSIM over ``axis``, d sum(mean) / dx), the exact gradient of docs/spec.rst section 4.

    The gradient is with respect to the first argument x and has x's shape.
    ``mask`` and ``mask_mode`` as in :func:`ssim` (the gradients of
    docs/spec.rst section 8).
    """
    x = np.asarray(x)
    weights, normalized = _weights(x, y, mask, mask_mode, spatial)
    S, (xs, ys, (p_mu, p_xx, p_xy)) = _map_and_partials(
        x, y, taps, K1=K1, K2=K2, padding=padding, data_range=data_range, cov=cov,
        want_partials=True, limit=limit, spatial=spatial, normalized=weights if normalized else None,
    )
    axes = _normalise_axis(axis, S.ndim, spatial)
    counted = cropped(S, crop, spatial)
    # g: weight of each map pixel in the returned means (0 where cropped away).
    g = np.zeros(S.shape)
    if weights is None:
        value = counted.mean(axis=axes)
        cropped(g, crop, spatial)[...] = 1.0 / np.prod([counted.shape[a] for a in axes])
    else:
        counted_weights = map_weights(weights, padding, axis_radii(taps, spatial), crop, spatial)
        mean, total = weighted_mean(counted, counted_weights, axes)
        value = np.squeeze(mean, axis=axes)
        cropped(g, crop, spatial)[...] = counted_weights / total
    grad = _gradient_from_partials(xs, ys, (p_mu, p_xx, p_xy), g, taps, padding, spatial) / data_range
    if normalized:  # d(m x)/dx = m: the partials came divided by W (docs/spec.rst section 8)
        grad = np.where(weights > 0, weights * grad, 0.0)
    # Leading axes that x broadcast over (y had them, x did not) sum back.
    extra = grad.ndim - x.ndim
    grad = grad.sum(axis=tuple(range(extra))) if extra else grad
    for a, n in enumerate(x.shape):
        if n == 1 and grad.shape[a] != 1:
            grad = grad.sum(axis=a, keepdims=True)
    return value, grad


def _gradient_from_partials(xs, ys, partials, g, taps, padding, spatial=2):
    """d/dx of sum(g * map) in scaled units: F^T(g Pmu) + 2 x F^T(g Pxx) + y F^T(g Pxy) (docs/spec.rst section 4)."""
    p_mu, p_xx, p_xy = partials
    blur = lambda p: filter_plane_adjoint(g * p, taps, padding, xs.shape, spatial)  # noqa: E731
    return blur(p_mu) + 2.0 * xs * blur(p_xx) + ys * blur(p_xy)


def skimage_gradient(x, y, taps, *, K1=0.01, K2=0.03, padding="reflect", data_range=1.0, cov=1.0, spatial=2):
    """scikit-image's ``gradient=True`` result, per image (docs/spec.rst section 5).

    Not the gradient of the returned mean: skimage's formula, of the
    uncropped map's mean over each image, with respect to the second image,
    (2/N) (F(A1/D) x + F(-S/B2) y + F((mx (A2 - A1) - my (B2 - B1) S) / D)),
    N the image's pixel count, the filter's adjoint standing for F.
    """
    images = _images(x, y, taps, padding, spatial)
    C1, C2 = K1 * K1, K2 * K2

    def chunk(blocks, shape, _):  # the three maps that skimage blurs
        mx, my, _, _, _, _, _, sxx, syy, sxy, _ = _moments(*blocks, taps, shape, cov, spatial)
        A1, A2 = 2.0 * mx * my + C1, 2.0 * sxy + C2
        B1, B2 = mx * mx + my * my + C1, sxx + syy + C2
        D = B1 * B2
        S = np.clip(A1 * A2 / D, -1.0, 1.0)
        return A1 / D, -S / B2, (mx * (A2 - A1) - my * (B2 - B1) * S) / D

    terms = _by_chunks(chunk, images, taps, padding, 3, spatial, divisor=data_range)
    xs, ys = _scaled(images, data_range)
    weight = 2.0 / np.prod(xs.shape[-spatial:])
    blur = lambda p: filter_plane_adjoint(weight * p, taps, padding, xs.shape, spatial)  # noqa: E731
    grad = blur(terms[0]) * xs + blur(terms[1]) * ys + blur(terms[2])
    return grad / data_range


# ---- MS-SSIM (docs/spec.rst section 6) ---------------------------------------------------------------

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_VARIANTS = ("pytorch_msssim", "tensorflow", "torchmetrics", "piq")
_GUARD = 1e-12  # the smallest mean a power's derivative divides by


def piq_lead(sides) -> int:
    """The samples piq repeats before every side (1 where any side is odd, else 0)."""
    return max(n % 2 for n in sides)


def downsampled_shape(shape, variant, spatial=2):
    """The image after one 2x2 (2x2x2) mean of ``variant``: ceil halving, floor for torchmetrics, and for piq
    floor halving of each side lengthened by :func:`piq_lead`."""
    sides = shape[len(shape) - spatial :]
    if variant == "piq":
        halved = tuple((n + piq_lead(sides)) // 2 for n in sides)
    else:
        halved = tuple(n // 2 if variant == "torchmetrics" else (n + 1) // 2 for n in sides)
    return tuple(shape[: len(shape) - spatial]) + halved


def downsample(image, variant, spatial=2):
    """One 2x2 mean over the last two axes (2x2x2 over three), as ``variant`` does it (docs/spec.rst section 6).

    pytorch_msssim pads an odd side with a zero on both sides and counts the
    zeros; tensorflow repeats the last row or column; torchmetrics drops it;
    piq, where any side is odd, repeats the first row and the first column
    (each side) and drops what is left over at the end.
    """
    if variant not in MS_SSIM_VARIANTS:
        raise ValueError(f"variant must be one of {MS_SSIM_VARIANTS}, got {variant!r}")
    odd = [n % 2 for n in image.shape[image.ndim - spatial :]]
    lead = [(0, 0)] * (image.ndim - spatial)
    if variant == "pytorch_msssim":
        padded = np.pad(image, lead + [(k, k) for k in odd])
    elif variant == "tensorflow":
        padded = np.pad(image, lead + [(0, k) for k in odd], mode="edge")
    elif variant == "piq":
        padded = np.pad(image, lead + [(max(odd), 0)] * spatial, mode="edge")
    else:
        padded = image
    out = downsampled_shape(image.shape, variant, spatial)[image.ndim - spatial :]
    padded = padded[(Ellipsis,) + tuple(slice(0, 2 * n) for n in out)]
    corners = itertools.product((0, 1), repeat=spatial)
    return sum(padded[(Ellipsis,) + tuple(slice(k, None, 2) for k in corner)] for corner in corners) / 2**spatial


def downsample_adjoint(g, variant, shape, spatial=2):
    """The adjoint of :func:`downsample`: each output's g / 2^spatial back to its sources (``shape``: the input's)."""
    spread = g / 2**spatial
    for axis in range(g.ndim - spatial, g.ndim):
        spread = np.repeat(spread, 2, axis=axis)
    lead = piq_lead(shape[len(shape) - spatial :])
    for axis in range(g.ndim - spatial, g.ndim):  # one spatial axis at a time, back to its source length
        n, have = shape[axis], spread.shape[axis]
        before = {"pytorch_msssim": n % 2, "piq": lead}.get(variant, 0)
        moved = np.moveaxis(spread, axis, -1)
        full = np.zeros(moved.shape[:-1] + (n + 2 * before,))
        if variant == "tensorflow" and n % 2:  # the repeated last sample folds back onto the last one
            full[..., :n] = moved[..., :n]
            full[..., n - 1] += moved[..., n]
        else:
            full[..., :have] = moved
        if variant == "piq" and before:  # piq's repeated first sample folds back onto the first one
            full[..., 1] += full[..., 0]
        spread = np.moveaxis(full[..., before : before + n], -1, axis)
    return spread


def _mirror_fold(n, margin):
    """The (n, n + 2 margin) matrix that sums each position of a whole-sample extension onto its pixel."""
    source = np.abs(np.arange(-margin, n + margin))
    source = np.where(source >= n, 2 * (n - 1) - source, source)
    fold = np.zeros((n, n + 2 * margin))
    fold[source, np.arange(n + 2 * margin)] = 1.0
    return fold


def mirror_extend(image, margin, spatial=2):
    """The image extended by ``margin`` (an int, or one per spatial axis) on every side of its last ``spatial``
    axes by whole-sample reflection (dcb|abcd|cba)."""
    margins = per_axis(margin, spatial)
    return np.pad(image, [(0, 0)] * (image.ndim - spatial) + [(m, m) for m in margins], mode="reflect")


def mirror_extend_adjoint(g, margin, shape, spatial=2):
    """The adjoint of :func:`mirror_extend`: each extended position's g added onto its pixel of ``shape``."""
    for axis, m in zip(range(g.ndim - spatial, g.ndim), per_axis(margin, spatial)):
        g = np.moveaxis(np.moveaxis(g, axis, -1) @ _mirror_fold(shape[axis], m).T, -1, axis)
    return g


def ms_ssim_min_size(win_size, scales, variant):
    """The smallest image side that keeps every scale at least win_size wide (valid padding)."""
    side = win_size
    for _ in range(scales - 1):
        side = 2 * side if variant == "torchmetrics" else 2 * side - 1
    return side


def ms_ssim_with_gradient(x, y, taps, *, weights=MS_SSIM_WEIGHTS, variant="pytorch_msssim", K1=0.01, K2=0.03,
                          data_range=1.0, axis=None, pool_axes=(), want_gradient=True, limit=None, spatial=2,
                          mask=None):
    """MS-SSIM (mean over ``axis``, which includes the plane) and d sum(value) / dx.

    Per image: prod_j relu(mean cs_j)^w_j * relu(mean S_M)^w_M over the scales
    of ``variant``, population covariance, the cs maps over the valid
    interior, S_M too except for torchmetrics, whose S_M is the full map with
    whole-sample reflection (torchmetrics >= 1.5). An image is one plane, or
    the planes along ``pool_axes`` (torchmetrics pools an image's channels
    into each mean). The per-image values are averaged over the other axes
    of ``axis``. Volumes (``spatial=3``) are pooled 2x2x2, as pytorch-msssim
    and torchmetrics do on 5-D tensors (torchmetrics' last scale reflected
    along all three axes). The gradient of a relu'd (zero) mean is zero, and a power's
    derivative divides by the mean only down to 1e-12, so finite inputs never
    give NaN or infinity.

    ``mask``: weights (:func:`mask_weights`) pooled like the images at every
    scale, weighting each scale's mean (``mask_mode="mean"`` of
    docs/spec.rst section 8; normalised convolution is not offered here).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x, y = np.broadcast_arrays(x, y)
    mask = None if mask is None else mask_weights(mask, x.shape, spatial)
    scales = len(weights)
    sizes = [len(w) for w in axis_windows(taps, spatial)]
    needed = [ms_ssim_min_size(k, scales, variant) for k in sizes]
    if any(n < k for n, k in zip(x.shape[-spatial:], needed)):
        window, least = ((f"{sizes[0]}-tap", f"the smaller side must be at least {needed[0]}") if len(set(sizes)) == 1
                         else ("x".join(map(str, sizes)), f"the sides must be at least {'x'.join(map(str, needed))}"))
        raise ValueError(f"images of {'x'.join(map(str, x.shape[-spatial:]))} are too small for {scales} scales of "
                         f"{variant!r} with a {window} window: {least}")
    xs, ys = [x], [y]
    for _ in range(scales - 1):
        xs.append(downsample(xs[-1], variant, spatial))
        ys.append(downsample(ys[-1], variant, spatial))
    # torchmetrics: the last scale's S over the full map, the image extended by whole-sample reflection
    margin = axis_radii(taps, spatial) if variant == "torchmetrics" else (0,) * spatial
    extended = [mirror_extend(a, margin, spatial) if any(margin) else a for a in (xs[-1], ys[-1])]
    kwargs = dict(K1=K1, K2=K2, padding="valid", data_range=data_range, cov=1.0, want_partials=want_gradient,
                  limit=limit, spatial=spatial)
    terms = [_map_and_partials(xs[j], ys[j], taps, term="cs", **kwargs) for j in range(scales - 1)]
    terms.append(_map_and_partials(*extended, taps, term="ssim", **kwargs))
    nd = x.ndim
    mean_axes = tuple(sorted({a % nd for a in pool_axes} | set(range(nd - spatial, nd))))
    if mask is None:
        pixel_weights = [None] * scales
        means = [t[0].mean(axis=mean_axes, keepdims=True) for t in terms]  # per image
    else:  # each map's weights: the pooled mask cropped like that scale's map (torchmetrics' last: the full map)
        pooled = [mask]
        for _ in range(scales - 1):
            pooled.append(downsample(pooled[-1], variant, spatial))
        radii = axis_radii(taps, spatial)
        pixel_weights = [cropped(w, [r - (m if j == scales - 1 else 0) for r, m in zip(radii, margin)], spatial)
                         for j, w in enumerate(pooled)]
        weighted = [weighted_mean(t[0], w, mean_axes) for t, w in zip(terms, pixel_weights)]
        means = [mean for mean, _ in weighted]
        pixel_weights = [w / total for w, (_, total) in zip(pixel_weights, weighted)]
    means = [np.maximum(mean, 0.0) for mean in means]
    per_image = np.prod([m**w for m, w in zip(means, weights)], axis=0)
    axes = _normalise_axis(axis, nd, spatial)
    if not set(mean_axes) <= set(axes):
        raise ValueError(f"axis={axis!r} must include the pooled axes {pool_axes}")
    value = per_image.mean(axis=axes)
    if not want_gradient:
        return value, None
    images_per_value = np.prod([per_image.shape[a] for a in axes], dtype=np.int64)
    grad = None
    for j in reversed(range(scales)):
        d_mean = np.where(means[j] == 0, 0.0, weights[j] * np.maximum(means[j], _GUARD) ** (weights[j] - 1))
        for k in range(scales):
            if k != j:
                d_mean = d_mean * means[k] ** weights[k]
        value_map, (x_scaled, y_scaled, partials) = terms[j]
        if pixel_weights[j] is None:
            averaged = np.prod([value_map.shape[a] for a in mean_axes], dtype=np.int64)
            g = np.broadcast_to(d_mean / (averaged * images_per_value), value_map.shape)
        else:  # the map pixels' shares of each image's weighted mean
            g = d_mean / images_per_value * pixel_weights[j]
        grad_j = _gradient_from_partials(x_scaled, y_scaled, partials, g, taps, "valid", spatial) / data_range
        if j == scales - 1 and any(margin):
            grad_j = mirror_extend_adjoint(grad_j, margin, xs[j].shape, spatial)
        grad = grad_j if grad is None else grad_j + downsample_adjoint(grad, variant, xs[j].shape, spatial)
    return value, grad
