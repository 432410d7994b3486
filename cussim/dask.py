"""SSIM, DSSIM and MS-SSIM on Dask arrays: images larger than one device's memory, lazily.

The ``dask`` extra (from a clone of cussim: ``pip install ".[dask]"``); ``import cussim`` never imports Dask, this
module does. Every function takes Dask arrays whose chunks are NumPy or CuPy
arrays (or plain arrays, which become one-chunk Dask arrays), with the
arguments of the in-memory function of the same name, and returns Dask arrays:
nothing is computed before ``.compute()``. The results equal the in-memory
ones (1e-12 in float64; the specification's float32 tolerances otherwise)
whatever the chunking.

Design. Every chunk is computed by cussim's own functions (the float64
reference for NumPy chunks, the CUDA kernels for CuPy chunks), on the chunk
plus a halo of the window radius r on each spatial axis (rows and columns;
depth too for volumes, ``spatial_dims=3``; each axis' own radius where
``win_size`` gives one per axis):

- The halo's boundary follows the padding: zeros for ``"same"``, half-sample
  reflection for ``"reflect"``'s map. A chunk's map is then the ``"valid"``
  map of the chunk and its halo. ``"valid"`` maps and every mean over a
  ``"valid"`` or ``"reflect"`` map count only the windows that lie inside the
  image (the reflect mean leaves out the border where reflection would be
  read), so each chunk computes the windows centred in its share of that
  interior, from its own pixels and its neighbours' halo.
- Memory: a computation holds about a row of chunks. Each halo is cut from
  its neighbour as a small copy, and one task per chunk joins the chunk with
  its halos and computes (not ``dask.array.overlap``, whose views and fused
  joins kept most of the image alive); tasks carry only the parameters and
  the chunk sizes.
- Means: each chunk's mean times its window count, summed in float64 over the
  chunks (one after another, in the chunks' order, so that Dask sweeps the
  image row by row) and divided by the total count.
- Gradients, two stages: each chunk gives the exact gradient of its own share
  of the mean with respect to the chunk and its halo (the partial maps and
  the adjoint blur run inside cussim, on the chunk); then each halo is added
  back into the neighbour it was read from (the adjoint of the halo
  exchange), so one array's halo crosses between chunks, not five.
- Spatial chunks narrower than the window are merged with a neighbour (so
  a chunk's halo is cut from its adjacent chunks alone: 8 in a plane, 26 in
  a volume); other axes keep their chunks.
- Masks (docs/spec.rst section 9): a Dask mask chunked like the images, or
  a NumPy mask broadcast to them, travels with x and y (halo included).
  Each chunk gives its weighted sum and its gradient unscaled; the total
  weight is a lazy sum of the mask over the counted pixels, which divides
  both (a zero total raises when computed, naming the result).
- MS-SSIM, every scale chunked: a scale is halved chunk by chunk once each
  variant's treatment of an odd side is applied to the whole array and the
  chunks are made even (aligned with the 2x2 pairs, 2x2x2 for volumes);
  each scale's mean is then a halo computation like SSIM's. The contrast-structure means come from the
  SSIM functions with the luminance term made exactly 1 (see ``_CS_K1``), the
  scales' per-image means combine as in :func:`cussim.ms_ssim`. Coarse scales
  have few pixels, so their chunks are merged up to the window's width.

Examples
--------
>>> import dask.array as da, numpy as np, cussim, cussim.dask
>>> rng = np.random.default_rng(0)
>>> x = rng.random((300, 400)); y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
>>> lazy = cussim.dask.ssim(da.from_array(x, chunks=(100, 150)), da.from_array(y, chunks=(128, 128)))
>>> bool(abs(lazy.compute() - cussim.ssim(x, y)) < 1e-12)
True
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from functools import partial

import numpy as np

try:
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph
    from dask.utils import funcname
except ImportError as exc:  # the extra is not installed
    raise ImportError('cussim.dask needs Dask: pip install "dask[array]" distributed, or cussim\'s dask extra from a '
                      'clone of cussim: pip install ".[dask]"') from exc

from . import _arrays, _launch, _masks, _msssim, _reference, _ssim
from ._params import SsimParams

__all__ = ["dssim", "dssim_with_gradient", "ms_ssim", "ssim", "ssim_map", "ssim_with_gradient"]


def _as_dask(value, name):
    if isinstance(value, da.Array):
        return value
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise TypeError(f"{name} must be a Dask array (or a NumPy or CuPy array), got {type(value).__name__}")
    return da.asarray(value)


def _stand_in(array):
    """A NumPy array of the array's shape and dtype that holds no data (for the in-memory checks)."""
    return np.broadcast_to(np.zeros((), array.dtype), array.shape)


def _merged(sizes, minimum):
    """Chunk sizes along one axis with every chunk at least ``minimum`` (small ones join a neighbour)."""
    merged = []
    for size in sizes:
        if merged and merged[-1] < minimum:
            merged[-1] += size
        else:
            merged.append(size)
    if len(merged) > 1 and merged[-1] < minimum:
        last = merged.pop()
        merged[-1] += last
    return tuple(merged)


def _inputs(x, y):
    """x and y as Dask arrays with chunks of one kind, y broadcast to x's shape."""
    x, y = _as_dask(x, "x"), _as_dask(y, "y")
    if type(x._meta) is not type(y._meta):
        raise TypeError(f"x's chunks are {type(x._meta).__name__} arrays but y's are {type(y._meta).__name__}; "
                        "make both NumPy or both CuPy chunks (dask.array.Array.map_blocks(cupy.asarray))")
    return x, y


def _cut(block, *sides):
    """A copy of part of a block's image, one slice per spatial axis (a view would keep the whole block in
    memory)."""
    return block[(Ellipsis, *sides)].copy()


def _centre(around):
    """The block in the middle of nested 3 x 3 (x 3) pieces."""
    while isinstance(around, list):
        around = around[1]
    return around


def _joined(xp, around, spatial):
    """Nested pieces (3 per spatial axis, the outermost list along the first; None outside the image) as one
    array."""
    if not spatial:
        return around
    parts = [_joined(xp, part, spatial - 1) for part in around if part is not None]
    return xp.concatenate(parts, axis=-spatial)


def _call_extended(func, pad, mode, block_id, *pieces):
    """``func`` of each array's block extended by its halo: each array's 3 x 3 (x 3) pieces joined, and
    padded with ``mode`` on the sides where the image ends."""
    extended = []
    for around in pieces:
        xp = _arrays.array_module(_centre(around))
        joined = _joined(xp, around, len(pad))
        if any(any(side) for side in pad):
            joined = xp.pad(joined, [(0, 0)] * (joined.ndim - len(pad)) + pad, mode=mode)
        extended.append(joined)
    return func(*extended, block_id=block_id)


def _with_halo(func, arrays, radius, boundary, *, chunks, dtype, meta, spatial=2):
    """The Dask array whose block ``block_id`` is ``func(*extended, block_id=block_id)``.

    ``extended`` holds that block of each of ``arrays`` (same chunks) with a
    halo of ``radius`` (an int, or one per axis) on the last ``spatial`` axes: read from the neighbours inside
    the image, zeros (``boundary=0``) or half-sample reflection
    (``"reflect"``) outside it, as ``dask.array.overlap`` would give.

    Unlike ``dask.array.overlap`` and ``map_blocks``, each halo is cut from
    its neighbour as a small copy, and one task per block joins the block
    with those strips and runs ``func``. A chunk is then needed only by its
    own task and by a few small cuts, so Dask's ordering frees it soon after
    it is read, and a computation holds a few rows of chunks, not the image
    (overlap's views and the fused joins kept most of the image alive).
    """
    radii = _reference.per_axis(radius, spatial)
    name = f"halo-{funcname(func)}-{tokenize(func, [a.name for a in arrays], radii, boundary, chunks, spatial)}"
    grid = arrays[0].numblocks
    # per axis: the offsets of the neighbours read, and the part of the neighbour at each offset
    offsets = [(-1, 0, 1) if r else (0,) for r in radii]
    sides = [{-1: slice(-r, None), 0: slice(None), 1: slice(0, r)} for r in radii]
    mode = "symmetric" if boundary == "reflect" else "constant"
    dsk = {}

    def around(a, lead, index, shift=()):
        """The nested pieces of ``a`` around the block at spatial ``index`` (``shift`` so far)."""
        axis = len(shift)
        if axis == spatial:
            place = tuple(i + d for i, d in zip(index, shift))
            source = (a.name, *lead, *place)
            if not any(shift):
                return source
            key = (f"halo-cut-{'-'.join(map(str, radii))}-{a.name}", *lead, *place, *(-d for d in shift))
            dsk[key] = (_cut, source, *(side[d] for side, d in zip(sides, shift)))
            return key
        pieces = [None] * 3
        for d in offsets[axis]:
            if 0 <= index[axis] + d < grid[axis - spatial]:
                pieces[d + 1] = around(a, lead, index, (*shift, d))
        return pieces

    for block_id in np.ndindex(*grid):
        lead, index = block_id[:-spatial], block_id[-spatial:]
        pieces = [around(a, lead, index) for a in arrays]
        pad = [(r * (i == 0), r * (i == n - 1)) for r, i, n in zip(radii, index, grid[-spatial:])]
        dsk[(name, *block_id)] = (partial(_call_extended, func, pad, mode, block_id), *pieces)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=arrays)
    return da.Array(graph, name, chunks=chunks, dtype=dtype, meta=meta)


def _accumulate(total, block, kept):
    part = block.reshape(block.shape[:kept])
    return part if total is None else total + part


def _sum_in_order(sums, kept):
    """``sums`` summed over its axes after the first ``kept``, one block after another in C order.

    A chain, not ``sum``'s tree: Dask's ordering computes the blocks in the
    chain's order, so the stencil behind ``sums`` sweeps the image row by row
    (a tree made it take squares of chunks and the rings of neighbours around
    each, holding much of the image at once).
    """
    name = f"sum-in-order-{tokenize(sums.name, kept)}"
    grid = sums.numblocks
    dsk = {}
    for lead in np.ndindex(*grid[:kept]):
        total = None
        for step, rest in enumerate(np.ndindex(*grid[kept:])):
            key = (f"partial-{name}", *lead, step)
            dsk[key] = (_accumulate, total, (sums.name, *lead, *rest), kept)
            total = key
        dsk[(name, *lead)] = total
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[sums])
    return da.Array(graph, name, chunks=sums.chunks[:kept], dtype=sums.dtype,
                    meta=da.utils.meta_from_array(sums._meta, ndim=kept))


@dataclass(frozen=True)
class _Layout:
    """What each chunk's task needs: the parameters and the chunk sizes, never an array.

    It travels with every task (and is hashed for the task names), so it must
    stay small: the arrays the checks ran on are broadcast stand-ins, and a
    task that held one pickled it whole (a 20,000 x 20,000 float32 pair: 3.2
    GB, in every task).
    """

    params: SsimParams
    kept: int  # leading axes that stay in the result
    counted_per_value: int  # map pixels averaged into each value
    chunks: tuple  # x's chunks in the kernels' layout
    metric: dict  # the keyword arguments of cussim's functions for one chunk and its halo

    @property
    def ndim(self):
        return len(self.chunks)

    @property
    def averaged_axes(self):
        return tuple(range(self.kept, self.ndim))

    @property
    def spatial(self):
        return self.params.spatial

    def windows(self, block_id, margin):
        """(index of an extended chunk, pixels): the windows centred in the chunk, at least
        ``margin`` (an int, or one per spatial axis) from the image's border. Every chunk holds some: its
        sides are at least the window's on each axis (:func:`_merged`), 2r + 1, so r from the border leaves
        one or more."""
        index, pixels = [Ellipsis], 1
        margins = _reference.per_axis(margin, self.spatial)
        for axis, r, m in zip(range(-self.spatial, 0), self.params.radii, margins):
            chunks, number = self.chunks[axis], block_id[self.ndim + axis]
            start = sum(chunks[:number])
            low, high = max(start, m), min(start + chunks[number], sum(chunks) - m)
            index.append(slice(low - start, high - start + 2 * r))
            pixels *= high - low
        return tuple(index), pixels

    def counted_margin(self) -> tuple:
        """The border of the image whose windows the means leave out, per spatial axis ("valid" and "reflect":
        each axis' radius)."""
        return (0,) * self.spatial if self.params.padding == "same" else self.params.radii


@dataclass(frozen=True)
class _Chunked:
    """Checked inputs in the kernels' layout (kept axes, averaged batch axes, then the image), rechunked."""

    layout: _Layout
    perm: tuple  # x in the caller's layout, transposed by perm, is x here
    x: da.Array
    y: da.Array
    mask: da.Array = None  # the weights broadcast to x's shape, chunked like x, or None

    @classmethod
    def prepare(cls, x, y, *, window, sigma, sample_covariance, mask=None, mask_mode="mean", **kwargs):
        x, y = _inputs(x, y)
        # checked as cussim checks it: a NumPy mask's weights now, a Dask mask's shape now and weights per chunk
        checked = mask if mask is None or not isinstance(mask, da.Array) else _stand_in(mask)
        problem = _ssim._prepare(_stand_in(x), _stand_in(y), window=window, sigma=sigma,  # no data to check
                                 sample_covariance=sample_covariance, check_values=False, mask=checked,
                                 mask_mode=mask_mode, **kwargs)
        if mask is not None:
            mask = _as_dask(mask, "mask")
        y = da.broadcast_to(y, x.shape).transpose(problem.layout.perm)
        x = x.transpose(problem.layout.perm)
        p = problem.params
        chunks = x.chunks[: -p.spatial] + tuple(_merged(c, w) for c, w in zip(x.chunks[-p.spatial :], p.win_sizes))
        sigma = tuple(sigma) if isinstance(sigma, list) else sigma  # the metric is hashed for the task names
        metric = dict(data_range=p.data_range, win_size=p.win_sizes, sigma=sigma, window=window, K1=p.K1, K2=p.K2,
                      padding="valid", sample_covariance=sample_covariance, spatial_dims=p.spatial)
        if mask is not None:  # as cussim._masks.in_layout views it: x's axes, then the kernels' order
            metric["mask_mode"] = mask_mode
            aligned = tuple(problem.mask.shape[a] for a in problem.layout.inverse_perm)
            mask = da.broadcast_to(mask.reshape(aligned).transpose(problem.layout.perm), x.shape).rechunk(chunks)
        layout = _Layout(p, problem.layout.kept, problem.layout.counted_per_value, chunks, metric)
        return cls(layout, problem.layout.perm, x.rechunk(chunks), y.rechunk(chunks), mask)

    @property
    def arrays(self) -> list:
        """x, y and the mask if there is one: what every chunk's task reads with its halo."""
        return [self.x, self.y] + ([] if self.mask is None else [self.mask])

    def meta(self, dtype):
        return _arrays.array_module(self.x._meta).empty((0,) * self.x.ndim, dtype)

    def with_halo(self, func, boundary, chunks, dtype, meta):
        """:func:`_with_halo` of ``func`` over x and y, with the window radii as the halo."""
        return _with_halo(func, self.arrays, self.layout.params.radii, boundary, chunks=chunks, dtype=dtype,
                          meta=meta, spatial=self.layout.spatial)

    def extended_chunks(self):
        """x's chunks, each spatial one widened by the halo on both sides."""
        radii, spatial = self.layout.params.radii, self.layout.spatial
        return self.x.chunks[:-spatial] + tuple(tuple(n + 2 * r for n in c)
                                                for c, r in zip(self.x.chunks[-spatial:], radii))

    def value_chunks(self):
        """Chunks of per-chunk sums: the kept axes as x's, one entry per chunk on the averaged axes."""
        kept = self.layout.kept
        return self.x.chunks[:kept] + tuple((1,) * len(c) for c in self.x.chunks[kept:])

    def mean(self, sums, a, b):
        """a + b * mean, from per-chunk float64 sums, in the compute dtype (lazy)."""
        total = _sum_in_order(sums, self.layout.kept)
        return (a + b * total / self.weight()).astype(_launch.compute_dtype(self.x.dtype))

    def weight(self):
        """What divides the sums: the map pixels per value, or with a mask the lazy total weight of each value
        (float64, a ValueError at compute time naming a value of total weight 0)."""
        if self.mask is None:
            return self.layout.counted_per_value
        margin, spatial = self.layout.counted_margin(), self.layout.spatial
        counted = _reference.cropped(self.mask, margin, spatial).astype(np.float64)
        totals = counted.sum(axis=self.layout.averaged_axes)
        return totals.rechunk(-1).map_blocks(_reference.check_total_weights, dtype=np.float64)

    def per_value(self, weight):
        """``weight``, one per value (:meth:`weight` with a mask), broadcast against arrays in the kernels'
        layout."""
        return weight.reshape(weight.shape + (1,) * (self.layout.ndim - self.layout.kept))

    def original(self, array):
        """An array in the kernels' layout, in the caller's axis order."""
        return array.transpose(tuple(int(a) for a in np.argsort(self.perm)))


def _chunk_share(layout: _Layout, xe, ye, me=None, *, block_id, gradient_scale=None):
    """One chunk's float64 sum of the windows the mean counts (weighted by the extended mask ``me`` if
    given), and with ``gradient_scale`` b the gradient of b times its share of the mean, over the extended
    chunk (else None); with a mask, the gradient of b times its weighted sum (the total weight divides
    later)."""
    xp = _arrays.array_module(xe)
    kept = layout.kept
    sum_shape = xe.shape[:kept] + (1,) * (layout.ndim - kept)
    with_gradient = gradient_scale is not None
    grad = xp.zeros(xe.shape, _launch.gradient_dtype(xe.dtype)) if with_gradient else None
    index, pixels = layout.windows(block_id, layout.counted_margin())
    args = (xe[index], ye[index])
    options = dict(layout.metric, axis=layout.averaged_axes)
    if me is None:
        count = pixels * math.prod(xe.shape[kept : -layout.spatial])  # windows averaged into each value here
        scale = gradient_scale * count / layout.counted_per_value if with_gradient else None
    else:  # the chunk's total weight per value; a value of none here takes ones (and counts 0)
        m = _reference.check_weight_values(me[index])
        count = _reference.cropped(m, layout.params.radii, layout.spatial).sum(
            axis=layout.averaged_axes, keepdims=True, dtype=np.float64)
        options["mask"] = xp.where(count > 0, m, 1)
        scale = gradient_scale * count if with_gradient else None
    if with_gradient:
        mean, share = _ssim.ssim_with_gradient(*args, **options)
        grad[index] = share * scale
    else:
        mean = _ssim.ssim(*args, **options)
    return mean.astype(np.float64).reshape(sum_shape) * count, grad


def _chunk_sum(layout: _Layout, *extended, block_id):
    return _chunk_share(layout, *extended, block_id=block_id)[0]


def _chunk_map(layout: _Layout, margin, xe, ye, me=None, *, block_id):
    index, _ = layout.windows(block_id, margin)
    mask = {} if me is None else dict(mask=me[index])
    return _ssim.ssim_map(xe[index], ye[index], **layout.metric, **mask)


def _along(axis, start, stop):
    """The index of ``start:stop`` along ``axis`` (negative) and everything on the other axes."""
    return (Ellipsis, slice(start, stop)) + (slice(None),) * (-axis - 1)


def _fold_halos(extended, radius, spatial, block_id=None):
    """The adjoint of the halo exchange: a chunk's gradient plus what its neighbours' halos hold of it.

    ``extended`` is the chunk's gradient over chunk + halo (2r on each side
    of each of the last ``spatial`` axes: its own halo r, then the
    neighbour's halo r that reached into it; r an int, or one per axis);
    every chunk is folded alike, whatever its ``block_id``, one axis after
    another.
    """
    out = extended
    for axis, r in zip(range(-spatial, 0), _reference.per_axis(radius, spatial)):
        n = out.shape[axis] - 4 * r
        folded = out[_along(axis, 2 * r, 2 * r + n)].copy()
        folded[_along(axis, None, r)] += out[_along(axis, None, r)]
        folded[_along(axis, n - r, None)] += out[_along(axis, n + 3 * r, None)]
        out = folded
    return out


def _mean(chunked: _Chunked, a, b):
    sums = chunked.with_halo(partial(_chunk_sum, chunked.layout), 0, chunked.value_chunks(), np.float64,
                             chunked.meta(np.float64))
    return chunked.mean(sums, a, b)


def _mean_with_gradient(chunked: _Chunked, a, b):
    shares = chunked.with_halo(partial(_chunk_share, chunked.layout, gradient_scale=b), 0, chunked.extended_chunks(),
                               object, np.empty((0,) * chunked.x.ndim, object))
    sums = shares.map_blocks(operator.itemgetter(0), chunks=chunked.value_chunks(), dtype=np.float64,
                             meta=chunked.meta(np.float64))
    gdtype = _launch.gradient_dtype(chunked.x.dtype)
    grads = shares.map_blocks(operator.itemgetter(1), dtype=gdtype, meta=chunked.meta(gdtype))
    # Each chunk's extended gradient, extended again by the neighbours' halos, folded back onto the chunk.
    radii, spatial = chunked.layout.params.radii, chunked.layout.spatial
    grad = _with_halo(partial(_fold_halos, radius=radii, spatial=spatial), [grads], radii, 0, chunks=chunked.x.chunks,
                      dtype=gdtype, meta=chunked.meta(gdtype), spatial=spatial)
    if chunked.mask is not None:  # the chunks' gradients are of weighted sums: divided by the total weight
        grad = (grad / chunked.per_value(chunked.weight())).astype(gdtype)
    return chunked.mean(sums, a, b), chunked.original(grad)


def _map(chunked: _Chunked):
    padding = chunked.layout.params.padding
    spatial = chunked.layout.spatial
    margin = chunked.layout.params.radii if padding == "valid" else (0,) * spatial
    chunks = list(chunked.x.chunks)
    if any(margin):  # the valid map: each chunk's share of the interior
        for axis, m in zip(range(-spatial, 0), margin):
            ends = np.cumsum(chunks[axis])
            starts = ends - chunks[axis]
            chunks[axis] = tuple(int(v) for v in np.minimum(ends, ends[-1] - m) - np.maximum(starts, m))
    dtype = _launch.compute_dtype(chunked.x.dtype)
    maps = chunked.with_halo(partial(_chunk_map, chunked.layout, margin), "reflect" if padding == "reflect" else 0,
                             tuple(chunks), dtype, chunked.meta(dtype))
    return chunked.original(maps)


def ssim(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03, padding="same",
         sample_covariance=False, channel_axis=None, axis=None, spatial_dims=2, mask=None, mask_mode="mean"):
    """Mean SSIM of x against y, lazily: :func:`cussim.ssim` on Dask arrays.

    Parameters
    ----------
    x, y : dask.array.Array
        Images (NumPy or CuPy chunks; NumPy and CuPy arrays are taken as one
        chunk), the plane in the last two axes (or the last two besides
        ``channel_axis``), a volume in the last three with
        ``spatial_dims=3``; y broadcasts to x's shape. Any axis may be
        chunked, depth too.
    data_range, win_size, sigma, window, K1, K2, padding, sample_covariance, channel_axis, axis, spatial_dims
        As in :func:`cussim.ssim`.
    mask, mask_mode
        As in :func:`cussim.ssim`: a Dask mask (chunked like x or not: it is
        rechunked to x's chunks), or a NumPy array, broadcast to x.

    Returns
    -------
    dask.array.Array
        The mean SSIM (0-d, or one value per kept index), in the compute
        dtype; ``.compute()`` gives what :func:`cussim.ssim` gives.

    Examples
    --------
    >>> import dask.array as da, numpy as np, cussim.dask
    >>> image = np.linspace(0, 1, 64 * 90).reshape(64, 90)
    >>> x = da.from_array(image, chunks=32)
    >>> lazy = cussim.dask.ssim(x, x ** 2, padding="reflect")
    >>> round(float(lazy.compute()), 6), round(float(cussim.ssim(image, image ** 2, padding="reflect")), 6)
    (0.687882, 0.687882)

    Volumes, chunked along depth too:

    >>> volume = np.linspace(0, 1, 20 * 24 * 28).reshape(20, 24, 28)
    >>> lazy = cussim.dask.ssim(da.from_array(volume, chunks=(8, 12, 14)), volume ** 2, win_size=7, spatial_dims=3)
    >>> bool(abs(lazy.compute() - cussim.ssim(volume, volume ** 2, win_size=7, spatial_dims=3)) < 1e-12)
    True
    """
    chunked = _Chunked.prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1,
                               K2=K2, padding=padding, sample_covariance=sample_covariance,
                               channel_axis=channel_axis, axis=axis, spatial_dims=spatial_dims, mask=mask,
                               mask_mode=mask_mode)
    return _mean(chunked, 0.0, 1.0)


def dssim(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03, padding="same",
          sample_covariance=False, channel_axis=None, axis=None, spatial_dims=2, mask=None, mask_mode="mean"):
    """(1 - SSIM) / 2, lazily, with the arguments of :func:`ssim`.

    Examples
    --------
    >>> import dask.array as da, numpy as np, cussim.dask
    >>> x = da.from_array(np.linspace(0, 1, 40 * 40).reshape(40, 40), chunks=20)
    >>> float(cussim.dask.dssim(x, x).compute()), round(float(cussim.dask.dssim(x, x ** 2).compute()), 6)
    (0.0, 0.174219)
    """
    chunked = _Chunked.prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1,
                               K2=K2, padding=padding, sample_covariance=sample_covariance,
                               channel_axis=channel_axis, axis=axis, spatial_dims=spatial_dims, mask=mask,
                               mask_mode=mask_mode)
    return _mean(chunked, 0.5, -0.5)


def ssim_map(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03,
             padding="same", sample_covariance=False, channel_axis=None, spatial_dims=2, mask=None,
             mask_mode="mean"):
    """The SSIM map, lazily, chunked like x: :func:`cussim.ssim_map` on Dask arrays.

    Arguments as in :func:`ssim` (no ``axis``). With ``padding="valid"`` the
    plane shrinks by the window radius on every side, and so do the chunks on
    the border (chunks narrower than the window join a neighbour first).

    Examples
    --------
    >>> import dask.array as da, numpy as np, cussim.dask
    >>> x = da.from_array(np.linspace(0, 1, 60 * 50).reshape(60, 50), chunks=25)
    >>> cussim.dask.ssim_map(x, x, padding="valid").chunks
    ((20, 30), (20, 20))
    """
    chunked = _Chunked.prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1,
                               K2=K2, padding=padding, sample_covariance=sample_covariance,
                               channel_axis=channel_axis, axis=None, reduce=False, spatial_dims=spatial_dims,
                               mask=mask, mask_mode=mask_mode)
    _masks.check_map_mask(chunked.mask, mask_mode)
    return _map(chunked)


def ssim_with_gradient(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03,
                       padding="same", sample_covariance=False, channel_axis=None, axis=None, spatial_dims=2,
                       mask=None, mask_mode="mean"):
    """Mean SSIM and its exact gradient with respect to x, lazily: ``(value, d sum(value) / dx)``.

    Arguments as in :func:`ssim`. The gradient is a Dask array chunked like
    x, in :func:`cussim.ssim_with_gradient`'s dtype; computing both together
    (``dask.compute(value, grad)``) runs each chunk once.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, cussim, cussim.dask
    >>> rng = np.random.default_rng(1)
    >>> x = rng.random((50, 70)); y = rng.random((50, 70))
    >>> lazy = cussim.dask.ssim_with_gradient(da.from_array(x, chunks=20), y, padding="reflect")
    >>> value, grad = dask.compute(*lazy)
    >>> expected = cussim.ssim_with_gradient(x, y, padding="reflect")[1]
    >>> bool(np.abs(grad - expected).max() < 1e-15), grad.shape
    (True, (50, 70))
    """
    chunked = _Chunked.prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1,
                               K2=K2, padding=padding, sample_covariance=sample_covariance,
                               channel_axis=channel_axis, axis=axis, spatial_dims=spatial_dims, mask=mask,
                               mask_mode=mask_mode)
    return _mean_with_gradient(chunked, 0.0, 1.0)


def dssim_with_gradient(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03,
                        padding="same", sample_covariance=False, channel_axis=None, axis=None, spatial_dims=2,
                        mask=None, mask_mode="mean"):
    """DSSIM = (1 - SSIM) / 2 and its exact gradient with respect to x, lazily, as :func:`ssim_with_gradient`.

    Examples
    --------
    >>> import dask, dask.array as da, numpy as np, cussim, cussim.dask
    >>> x = np.random.default_rng(2).random((3, 40, 40)).astype(np.float32)
    >>> value, grad = dask.compute(*cussim.dask.dssim_with_gradient(da.from_array(x, chunks=(1, 16, 40)), 1 - x))
    >>> value.dtype, grad.dtype, bool(abs(value - cussim.dssim(x, 1 - x)) < 1e-6)
    (dtype('float32'), dtype('float32'), True)
    """
    chunked = _Chunked.prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1,
                               K2=K2, padding=padding, sample_covariance=sample_covariance,
                               channel_axis=channel_axis, axis=axis, spatial_dims=spatial_dims, mask=mask,
                               mask_mode=mask_mode)
    return _mean_with_gradient(chunked, 0.5, -0.5)


def _even(sizes):
    """Chunk sizes along an even-sided axis, each even (an odd chunk hands its last pixel to the next)."""
    even, carry = [], 0
    for size in sizes:
        size += carry
        carry = size % 2
        if size - carry:
            even.append(size - carry)
    return tuple(even)


def _halved(a, variant, spatial=2):
    """One 2x2 mean of ``variant`` over the last two axes (2x2x2 over three), chunk by chunk.

    The variant's treatment of an odd side comes first, on the whole array
    (pytorch_msssim: a zero before it, tensorflow: the last row or column
    repeated, torchmetrics: the last one dropped, piq: see
    :func:`cussim._reference.downsample`); then every chunk is even
    and aligned with the pairs, and each is halved on its own.
    """
    sides = a.shape[-spatial:]
    lead = [(0, 0)] * (a.ndim - spatial)
    if variant == "pytorch_msssim":
        a = da.pad(a, lead + [(n % 2, 0) for n in sides], mode="constant")
    elif variant == "tensorflow":
        a = da.pad(a, lead + [(0, n % 2) for n in sides], mode="edge")
    elif variant == "piq":  # the first sample repeated on every side where any is odd, what is left over dropped
        first = _reference.piq_lead(sides)
        a = da.pad(a, lead + [(first, 0)] * spatial, mode="edge")
        a = a[(Ellipsis, *(slice(0, n + first - (n + first) % 2) for n in sides))]
    else:
        a = a[(Ellipsis, *(slice(0, n - n % 2) for n in sides))]
    a = a.rechunk(a.chunks[:-spatial] + tuple(_even(c) for c in a.chunks[-spatial:]))
    chunks = a.chunks[:-spatial] + tuple(tuple(n // 2 for n in c) for c in a.chunks[-spatial:])
    # On even sides every variant's 2x2 mean is the same; torchmetrics' needs no padding.
    return a.map_blocks(_reference.downsample, "torchmetrics", spatial, chunks=chunks, dtype=a.dtype)


# Contrast-structure means through the SSIM functions: with C1 = K1^2 = 1e20, A1 = 2 mx my + C1 and
# B1 = mx^2 + my^2 + C1 both round to C1 exactly (in float32 and float64, for means within 60 data
# ranges), so S = A1 A2 / (B1 B2) is cs = A2 / B2 up to the rounding of two products.
_CS_K1 = 1e10


def ms_ssim(x, y, *, variant="pytorch_msssim", weights=None, data_range=None, win_size=11, sigma=1.5, K1=0.01,
            K2=0.03, channel_axis=None, axis=None, spatial_dims=2, mask=None, mask_mode="mean"):
    """MS-SSIM, lazily, every scale chunked: :func:`cussim.ms_ssim` on Dask arrays.

    Arguments as in :func:`cussim.ms_ssim`. Each scale is halved chunk by
    chunk and its mean (contrast-structure, or SSIM at the last scale) is
    computed like :func:`ssim`'s, from chunks and their halos; the scales'
    means combine per image as in :func:`cussim.ms_ssim`. A mask (as in
    :func:`ssim`) is halved with the images and weights every scale's mean.

    Examples
    --------
    >>> import dask.array as da, numpy as np, cussim, cussim.dask
    >>> rng = np.random.default_rng(3)
    >>> x = rng.random((2, 3, 176, 180)); y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    >>> lazy = cussim.dask.ms_ssim(da.from_array(x, chunks=(1, 2, 60, 70)), y, channel_axis=1, axis=(1, 2, 3))
    >>> lazy.chunks, bool(np.abs(lazy.compute() - cussim.ms_ssim(x, y, channel_axis=1, axis=(1, 2, 3))).max() < 1e-12)
    (((1, 1),), True)
    """
    x, y = _inputs(x, y)
    checked = mask if mask is None or not isinstance(mask, da.Array) else _stand_in(mask)  # as _Chunked.prepare
    problem, pyramid = _msssim._pyramid(_stand_in(x), _stand_in(y), variant=variant, weights=weights,
                                        data_range=data_range, win_size=win_size, sigma=sigma, K1=K1, K2=K2,
                                        channel_axis=channel_axis, axis=axis, spatial_dims=spatial_dims,
                                        mask=checked, mask_mode=mask_mode)
    dtype = _launch.compute_dtype(x.dtype)
    y = da.broadcast_to(y, x.shape).transpose(problem.layout.perm)
    scales = [x.transpose(problem.layout.perm), y]  # x, y and the mask, at each scale
    if mask is not None:
        aligned = tuple(problem.mask.shape[a] for a in problem.layout.inverse_perm)
        scales.append(da.broadcast_to(_as_dask(mask, "mask").reshape(aligned).transpose(problem.layout.perm),
                                      x.shape).astype(np.float64))
    radii, spatial = problem.params.radii, pyramid.spatial
    image = tuple(range(x.ndim - spatial, x.ndim))
    # with a mask, an image's channels pooled into one weighted mean (torchmetrics); else one mean per plane
    pooled = image if mask is None or pyramid.group == 1 else (x.ndim - spatial - 1, *image)
    means = []
    for j in range(pyramid.scales):
        if j:
            scales = [_halved(a.astype(dtype if k < 2 else np.float64), variant, spatial) for k, a in enumerate(scales)]
        last = j == pyramid.scales - 1
        images = scales
        if last and variant == "torchmetrics":  # the last scale's SSIM over the image extended by reflection
            images = [da.pad(a, [(0, 0)] * (a.ndim - spatial) + [(r, r) for r in radii], mode="reflect")
                      for a in images]
        chunked = _Chunked.prepare(*images[:2], window="gaussian", sigma=sigma, sample_covariance=False,
                                   data_range=problem.params.data_range, win_size=win_size,
                                   K1=K1 if last else _CS_K1, K2=K2, padding="valid", channel_axis=None, axis=pooled,
                                   spatial_dims=spatial, mask=images[2] if mask is not None else None)
        image_means = _mean(chunked, 0.0, 1.0).astype(np.float64)  # one per plane (volume), or image
        means.append(image_means.mean(axis=-1) if pyramid.group > 1 and pooled == image else image_means)
    per_image = math.prod(da.maximum(m, 0.0) ** w for m, w in zip(means, pyramid.weights))
    return per_image.mean(axis=tuple(range(problem.layout.kept, per_image.ndim))).astype(dtype)
