"""Launch plans: from checked arrays and parameters to one kernel launch.

The layer between the public API and kernels/*.cu: it picks the kernel's
template arguments, expresses every array as element strides (no copies for
any strided view, 0 strides for a broadcast reference), sizes the grid, and
launches on the array's executor (CuPy on its device, or the emulator for
NumPy arrays). It does no per-pixel arithmetic. A launch's plan (kernel,
grid, every scalar argument) is kept per layout, dtype, parameters and device,
so a repeated call only fills in its data pointers.

Examples
--------
>>> import numpy as np
>>> from cussim import _launch
>>> from cussim._params import ssim_params
>>> x = np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)
>>> s = np.empty((24, 24), np.float32)
>>> _launch.forward(x, x, ssim_params(win_size=7), map_out=s)
>>> float(s.min()), float(s.max())
(1.0, 1.0)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import _arrays, _kernels, _reference

TILE = 16
MAX_GRID_Y = 65535
MAX_PLANE_PIXELS = 2**31 - 1  # msssim_pyramid addresses a plane in 32-bit arithmetic
# A 2-D forward or backward launches at least this many blocks (about 2 waves of an H100's 528 resident
# 256-thread blocks) before its blocks take several planes each (plane_rows)
MIN_BLOCKS = 1024
PYRAMID_LEVELS = max(_kernels.PYRAMID_LEVELS)  # 2x2 means per launch of MS-SSIM's pyramid
PADDING_CODES = {"same": 0, "valid": 1, "reflect": 2}
GRADIENT_FORMULAS = {"exact": 1, "skimage": 2}
TERMS = {"ssim": 0, "cs": 1}
MS_SSIM_VARIANT_CODES = {"pytorch_msssim": 0, "tensorflow": 1, "torchmetrics": 2}
MS_SSIM_GUARD = 1e-12  # the smallest mean a power's derivative divides by (as the reference)
GRADIENT_DTYPES = {np.dtype(np.float16): np.dtype(np.float16), np.dtype(np.float64): np.dtype(np.float64)}
ELEMENT_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.float16): "__half",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.uint16): "unsigned short",
}


def compute_dtype(dtype) -> np.dtype:
    """float64 for float64 inputs, float32 for everything else (docs/spec.rst section 1)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def gradient_dtype(dtype) -> np.dtype:
    """The gradient's dtype: x's own for floating inputs, float32 for integer images."""
    return GRADIENT_DTYPES.get(np.dtype(dtype), np.dtype(np.float32))


def tiles(shape, dtype) -> int:
    """Blocks of ssim_forward (over a map of ``shape``) or ssim_backward (over an image) for elements of
    ``dtype``: tiles of 16 columns by 16 k rows covering the last two axes of ``shape``, k the rows each
    thread computes (kernels/tile.cuh, ``Tile``): 4 in float32 arithmetic (64 rows), 1 in float64."""
    rows = TILE * (1 if compute_dtype(dtype) == np.float64 else 4)
    return -(-shape[-2] // rows) * -(-shape[-1] // TILE)


def plane_rows(tiles_per_plane: int, planes: int) -> int:
    """The grid's y of a 2-D forward or backward: its blocks loop over planes (p = blockIdx.y, + gridDim.y,
    ...), so each block pays its set-up (the tile's place, the halo's sources, the plane index) once for
    planes / rows planes. As few rows as keep :data:`MIN_BLOCKS` blocks in flight, at most one per plane.

    >>> plane_rows(2040, 3), plane_rows(510, 24), plane_rows(4, 3)
    (1, 3, 3)
    """
    return max(1, min(planes, MAX_GRID_Y, -(-MIN_BLOCKS // tiles_per_plane)))


@dataclass(frozen=True)
class PlaneLayout:
    """Element strides of one array: (outer, inner) over planes, then row and column."""

    outer: int
    inner: int
    row: int
    col: int

    def args(self):
        return tuple(np.int64(s) for s in (self.outer, self.inner, self.row, self.col))


def _element_strides(array) -> tuple:
    return tuple(s // array.itemsize for s in array.strides)


def _merge_leading(shape, stride_sets):
    """Merges the leading (batch) axes of several arrays of one shape into at most two levels.

    Adjacent axes merge where every array's strides allow it. Returns
    (counts, strides per array) with exactly two levels, or None when more than
    two levels remain.
    """
    counts, strides = [], [[] for _ in stride_sets]
    for axis, n in enumerate(shape):
        if n == 1:
            continue
        if counts and all(s[-1] == st[axis] * n for s, st in zip(strides, stride_sets)):
            counts[-1] *= n
            for s, st in zip(strides, stride_sets):
                s[-1] = st[axis]
            continue
        counts.append(n)
        for s, st in zip(strides, stride_sets):
            s.append(st[axis])
    if len(counts) > 2:
        return None
    while len(counts) < 2:
        counts.insert(0, 1)
        for s in strides:
            s.insert(0, 0)
    return counts, strides


def _whole_elements(array) -> bool:
    """Whether every stride is a whole number of elements (NumPy allows byte strides that are not)."""
    return all(s % array.itemsize == 0 for s in array.strides)


def addressable(array) -> bool:
    """Whether the kernels can write this output as it lies: element strides, batch axes in two levels."""
    return _addressable_layout(tuple(array.shape), tuple(array.strides), array.itemsize)


@functools.lru_cache(maxsize=256)
def _addressable_layout(shape, strides, itemsize) -> bool:
    if any(s % itemsize for s in strides):
        return False
    return _merge_leading(shape[:-2], [tuple(s // itemsize for s in strides[:-2])]) is not None


def plane_layouts(inputs, outputs=None, *, spatial=2):
    """(outer count, inner count), a PlaneLayout per array, and the inputs, for arrays of one batch shape.

    The batch is every axis but the last ``spatial`` (2; 3 for volumes, whose
    depth stride the caller reads from the arrays returned).

    ``outputs`` maps names to arrays written in place. Inputs whose batch axes
    cannot be expressed in two stride levels (together with the others) are
    copied to C order first, the only copy a launch makes; outputs must be
    :func:`addressable` (the public functions give the kernels a C-order
    buffer in place of one that is not).
    """
    outputs = outputs or {}
    inputs = [a if _whole_elements(a) else _contiguous_copy(a) for a in inputs]
    arrays = [*inputs, *outputs.values()]
    lead = inputs[0].shape[:-spatial]
    merged = _merge_leading(lead, [_element_strides(a)[:-spatial] for a in arrays])
    if merged is None:
        arrays = [_contiguous_copy(a) for a in inputs] + list(outputs.values())
        merged = _merge_leading(lead, [_element_strides(a)[:-spatial] for a in arrays])
    if merged is None:
        raise ValueError(
            f"{' or '.join(outputs)}: the batch axes of this layout cannot be addressed with two stride levels; "
            "pass a C-contiguous array"
        )
    counts, strides = merged
    layouts = [PlaneLayout(s[0], s[1], *_element_strides(a)[-2:]) for s, a in zip(strides, arrays)]
    return counts, layouts, arrays[: len(inputs)]


def _contiguous_copy(array):
    copy = _arrays.empty(_arrays.array_module(array), array.shape, array.dtype)
    copy[...] = array
    return copy


@functools.lru_cache(maxsize=64)
def _device_constants(module_name: str, device_id: int, values: tuple, dtype: np.dtype):
    """Small constant arrays (windows, scale tables) on the device, made once per device and value.

    The copy from the host is synchronous (once per array): a later launch on any stream reads it complete.
    """
    if module_name == "numpy":
        return np.asarray(values, dtype=dtype)
    import cupy

    with cupy.cuda.Device(device_id):
        return cupy.asarray(values, dtype=dtype, blocking=True)


def _constants(like, values, dtype):
    return _device_constants(_arrays.array_module(like).__name__, _arrays.device_of(like), tuple(values),
                             np.dtype(dtype))


def _taps(x, params, dtype):
    return _constants(x, params.taps, dtype)


def _null(xp):
    """A null pointer argument: None for the emulator, a 64-bit zero for CuPy."""
    return None if xp is np else np.uint64(0)


class _Plan(NamedTuple):
    """Everything of one launch that depends only on its key: the data pointers go into ``slots``."""

    kernel: object
    grid: tuple
    block: tuple
    args: tuple  # None at the slots
    slots: tuple  # (position in args, index in the call's pointers)


_PLANS: dict = {}
MAX_PLANS = 1024


def _signature(array):
    """What a launch plan depends on of an array: its kind, shape, strides, dtype and device (not its data)."""
    if array is None:
        return None
    device = -1 if isinstance(array, np.ndarray) else array.device.id
    return type(array), array.shape, array.strides, array.dtype, device


def _launch_planned(key, build, pointers):
    """Launches with the plan of ``key`` (made by ``build`` on first use), its slots filled from ``pointers``.

    ``build()`` returns (kernel, grid, block, args, slots, reusable): the
    launch of this call, where args[position] is pointers[index] for each
    (position, index) in slots. A launch is not reusable where a layout made a
    copy (the copy is an argument of this call alone). Repeated calls with the
    same shapes, strides, dtypes and parameters then skip the layout work, the
    kernel lookup and the conversion of every scalar argument.
    """
    key = (key, MAX_GRID_Y, MIN_BLOCKS, _kernels.get_kernel, _kernels.emulated_kernel)  # what tests and bench/host.py replace
    plan = _PLANS.get(key)
    if plan is None:
        kernel, grid, block, args, slots, reusable = build()
        kernel(grid, block, args)
        if reusable:
            if len(_PLANS) >= MAX_PLANS:
                _PLANS.clear()
            template = list(args)
            for position, _ in slots:
                template[position] = None  # the plan keeps no array alive
            _PLANS[key] = _Plan(kernel, grid, block, tuple(template), tuple(slots))
        return
    args = list(plan.args)
    for position, index in plan.slots:
        args[position] = pointers[index]
    plan.kernel(plan.grid, plan.block, tuple(args))


def _data_pointer(array):
    return array.ctypes.data if _arrays.is_numpy(array) else array.data.ptr


def _slots(args, arrays):
    """(position, index) of each of ``arrays`` (not None) among ``args``, by identity."""
    return [(position, index) for index, array in enumerate(arrays) if array is not None
            for position, arg in enumerate(args) if arg is array]


class Combine(NamedTuple):
    """MS-SSIM's combine of the scales' means (:func:`combine`), for its launch or the last scale's forward.

    block_sums: float64, every scale's block sums, at scale_table's offsets;
    scale_table: per scale (weight, map pixels, tiles, offset into block_sums);
    image_values: float64, planes // group values, then the combine's
    counters (1 + planes // group: zero before, and after, each launch);
    plane_weights: float64, scales x planes, the backward's per-plane weights
    times ``share`` (d output / d image), or None for a value; out: 1-D
    (possibly strided) float32 or float64, one entry per output value, each
    the mean of its images' values.
    """

    block_sums: object
    scale_table: tuple
    image_values: object
    plane_weights: object
    out: object
    planes: int
    group: int
    share: float

    @property
    def options(self) -> tuple:
        """What a launch plan depends on beyond the arrays' layouts (the forward's key holds those of x and
        out, which fix the others')."""
        return self.scale_table, self.group, self.share, self.plane_weights is None

    @property
    def finish(self) -> tuple:
        """The values' finish, as :func:`forward`'s ``finish``: each output the mean of its images' values."""
        return self.out, self.planes // self.group // max(1, self.out.size), 0.0, 1.0


def combine_args(combine, null):
    """The arguments msssim_combine and ssim_forward take for ``combine`` (a :class:`Combine`), or for none:
    the scale table to the plane weights."""
    if combine is None:
        return null, np.int32(0), np.int64(1), np.float64(0.0), np.float64(MS_SSIM_GUARD), null, null
    table = _constants(combine.block_sums, np.ravel(combine.scale_table), np.float64)
    return (table, np.int32(len(combine.scale_table)), np.int64(combine.group), np.float64(combine.share),
            np.float64(MS_SSIM_GUARD), combine.image_values,
            null if combine.plane_weights is None else combine.plane_weights)


def forward(x, y, params, *, map_out=None, block_sums=None, grad_maps=None, weight=0.0, formula="exact",
            term="ssim", sum_scale=1.0, l1=0.0, finish=None, combine=None, mask=None, mask_mode="mean"):
    """Launches ssim_forward: SSIM (or MS-SSIM's ``term="cs"``) of x against y (y broadcasts to x).

    map_out: the map (compute dtype, shape params.map_shape(x.shape), any strides);
    block_sums: float64, one per plane and tile of the map, the sums of the map
    pixels the mean counts; grad_maps: compute dtype, 3 x planes x map pixels,
    contiguous, the partial maps of ``formula`` ("exact", or "skimage" for
    scikit-image's gradient) weighted by ``weight`` (where the mean counts, for
    "exact"; everywhere, for "skimage"). With ``l1`` not 0, each counted
    pixel adds ``sum_scale * S + l1 * |x - y|`` (in units of the data range)
    to block_sums instead of S: the fused L1 + SSIM loss.

    ``finish`` = (out, count, a, b) folds :func:`finish` into this launch: the
    last block writes out[i] = a + b * (sum of output i's block sums) / count,
    bitwise as ssim_finish does. block_sums then holds one more element, the
    blocks' counter: zero when allocated, and zero again after each launch.

    ``combine`` (a :class:`Combine`; MS-SSIM's last scale, whose block sums
    are ``block_sums``, a part of combine's) folds :func:`combine` into this
    launch instead: the last block of each image combines it, bitwise as
    msssim_combine does, and the last image's finishes the values.

    ``mask`` (compute dtype, broadcasting to x; with ``finish``, or with
    ``map_out`` alone in normalized mode): the weights of a masked mean
    (docs/spec.rst section 9, ``mask_mode="mean"``): block_sums is laid out
    as :func:`weighted_sums` says, each pixel's share of the sums and of the
    partial maps is m times what it would be, and the finish writes
    a + b * sum(m S) / sum(m). ``mask_mode="normalized"``: normalised
    convolution's map (0 where m is 0) and partial maps (divided by
    W = F(m)) too.
    """
    image_values = plane_weights = None
    if combine is not None:
        finish, image_values, plane_weights = combine.finish, combine.image_values, combine.plane_weights
    out = None if finish is None else finish[0]
    pointers = (x, y, map_out, block_sums, grad_maps, out, image_values, plane_weights, mask)
    key = ("forward", _signature(x), _signature(y), _signature(map_out), block_sums is None, grad_maps is None,
           params, weight, formula, term, sum_scale, l1, _signature(out), finish and finish[1:],
           combine and combine.options, _signature(mask), mask_mode)
    _launch_planned(key, lambda: _forward_launch(pointers, params, weight, formula, term, sum_scale, l1, finish,
                                                 combine, mask_mode), pointers)


class WeightedSums(NamedTuple):
    """Where a masked forward's block sums (kernels/tile.cuh, ``WeightedSums``) put what: the values' and the
    weights' block sums (``sums`` each), each result's total weight (``planes`` slots, one per result used),
    each plane's 1 / total (the masked backward's ``plane_weights``), then the block counter."""

    sums: int
    planes: int

    @property
    def size(self) -> int:
        return 2 * self.sums + 2 * self.planes + 1

    def totals(self, block_sums, outputs):
        """The ``outputs`` results' total weights (float64), a view of ``block_sums``."""
        return block_sums[2 * self.sums : 2 * self.sums + outputs]

    def plane_scales(self, block_sums):
        """Each plane's 1 / its result's total weight (float64), a view of ``block_sums``."""
        return block_sums[2 * self.sums + self.planes : 2 * self.sums + 2 * self.planes]


def weighted_sums(shape, dtype, params) -> WeightedSums:
    """The :class:`WeightedSums` of a masked forward over images of ``shape`` (the kernels' layout) and ``dtype``."""
    planes = math.prod(shape[:-2])
    return WeightedSums(planes * tiles(params.map_shape(shape), dtype), planes)


def block_sums(xp, size, counters=1):
    """``size`` float64 elements for a forward that finishes: the block sums, then ``counters`` block counters
    (zero)."""
    sums = _arrays.empty(xp, (size,), np.float64)
    zero_block_counters(sums, counters)
    return sums


def zero_block_counters(block_sums, counters=1):
    """Sets the kernels' block counters, block_sums' last ``counters`` elements, to zero (on a GPU, a memset,
    no kernel)."""
    if _arrays.is_numpy(block_sums):
        block_sums[-counters:] = 0
    else:
        block_sums[-counters:].data.memset_async(0, counters * block_sums.itemsize)


def finish_args(finish, null):
    """The forward kernels' trailing arguments for ``finish`` (see :func:`forward`), or for no finish."""
    if finish is None:
        return null, np.int64(0), np.int64(0), np.float64(1.0), np.float64(0.0), np.float64(1.0)
    out, count, a, b = finish
    return (out, np.int64(out.strides[0] // out.itemsize if out.ndim else 0), np.int64(out.size), np.float64(count),
            np.float64(a), np.float64(b))


def _with_mask(xp, x_in, y_in, mask, outputs):
    """plane_layouts of x and y (y broadcast to x), and of the mask (broadcast too) if there is one: (counts,
    layouts of x, y, the mask (PlaneLayout of zeros without one) and ``outputs``, laid-out x and y, and the
    mask as laid out (None without one))."""
    inputs = [x_in, xp.broadcast_to(y_in, x_in.shape)]
    if mask is not None:
        inputs.append(xp.broadcast_to(mask, x_in.shape))
    counts, layouts, arrays = plane_layouts(inputs, outputs)
    if mask is None:
        return counts, [*layouts[:2], PlaneLayout(0, 0, 0, 0), *layouts[2:]], arrays[:2], None
    return counts, layouts, arrays[:2], arrays[2]


def _forward_launch(pointers, params, weight, formula, term, sum_scale, l1, finish, combine, mask_mode):
    x_in, y_in, map_out, block_sums, grad_maps = pointers[:5]
    mask_in = pointers[8]
    xp = _arrays.array_module(x_in)
    ctype = compute_dtype(x_in.dtype)
    outputs = {"out": map_out} if map_out is not None else {}
    (outer, inner), layouts, (x, y), mask = _with_mask(xp, x_in, y_in, mask_in, outputs)
    lm = layouts[3] if map_out is not None else PlaneLayout(0, 0, 0, 0)
    planes = outer * inner
    height, width = x.shape[-2:]
    name = _kernels.forward_name(ELEMENT_TYPES[np.dtype(x.dtype)], params.radius,
                                 None if grad_maps is None else formula, term, map_out is not None, l1 != 0,
                                 combine is not None, None if mask is None else mask_mode)
    kernel = _kernels.get_kernel("ssim", name, x)
    c = ctype.type
    null = _null(xp)
    args = (x, *layouts[0].args(), y, *layouts[1].args(), null if map_out is None else map_out, *lm.args(),
            null if block_sums is None else block_sums, null if grad_maps is None else grad_maps,
            np.int64(planes), np.int64(inner), np.int32(height), np.int32(width),
            np.int32(PADDING_CODES[params.padding]), np.int32(params.crop), _taps(x, params, ctype),
            c(1.0 / params.data_range), c(params.K1**2), c(params.K2**2), c(params.cov), c(weight),
            np.float64(sum_scale), np.float64(l1), *finish_args(finish, null),
            *combine_args(combine, null), null if mask is None else mask, *layouts[2].args())
    blocks = tiles(params.map_shape(x.shape), x.dtype)
    grid = (blocks, plane_rows(blocks, planes))
    return _planned_launch(kernel, grid, (TILE, TILE), args, (x, y, mask), pointers, (0, 1, 8))


def _planned_launch(kernel, grid, block, args, laid_out, pointers, positions=None):
    """build()'s result for :func:`_launch_planned`: the inputs as laid out (a view or a copy; None for an
    absent one) take the caller's inputs' slots (pointers[positions[i]] for laid_out[i]; the first ones by
    default), and the plan is reusable where no input was copied."""
    positions = range(len(laid_out)) if positions is None else positions
    arrays = list(pointers)
    for index, array in zip(positions, laid_out):
        arrays[index] = array
    slots = _slots(args, arrays)
    reusable = all(a is None or _data_pointer(a) == _data_pointer(pointers[i]) for a, i in zip(laid_out, positions))
    return kernel, grid, block, args, slots, reusable


def backward(x, y, grad_maps, grad, params, *, accumulate=False, plane_weights=None, coarse=None, variant=None,
             l1=0.0, mask=None, mask_mode="mean"):
    """Launches ssim_backward: writes (or adds) d/dx into ``grad`` from forward's partial maps.

    ``l1``: adds ``l1 * sign(x - y)``, the gradient of the fused L1 term.

    ``mask`` (compute dtype, broadcasting to x): a masked mean's gradient, after a masked :func:`forward`:
    ``plane_weights`` is then that forward's :meth:`WeightedSums.plane_scales` (each plane's gradient times
    1 / its total weight), and the L1 term is ``l1 * m * sign(x - y)``; ``mask_mode="normalized"``: the
    gradient of normalised convolution, all of it times m (0 where m is 0).

    MS-SSIM's extras: ``plane_weights`` (float64, one per plane) scale each
    plane's gradient; ``coarse`` (compute dtype, contiguous planes of the next
    scale; only with ``plane_weights``) adds the adjoint of ``variant``'s 2x2 mean.
    """
    pointers = (x, y, grad_maps, grad, plane_weights, coarse, mask)
    key = ("backward", _signature(x), _signature(y), _signature(grad), plane_weights is None, coarse is None, params,
           accumulate, variant, l1, _signature(mask), mask_mode)
    _launch_planned(key, lambda: _backward_launch(pointers, params, accumulate, variant, l1, mask_mode), pointers)


def _backward_launch(pointers, params, accumulate, variant, l1, mask_mode):
    x_in, y_in, grad_maps, grad, plane_weights, coarse, mask_in = pointers
    xp = _arrays.array_module(x_in)
    ctype = compute_dtype(x_in.dtype)
    (outer, inner), (lx, ly, lk, lg), (x, y), mask = _with_mask(xp, x_in, y_in, mask_in, {"grad": grad})
    planes = outer * inner
    height, width = x.shape[-2:]
    if mask is not None:  # a masked mean's: the tails above, with the per-plane scales and the mask
        if plane_weights is None:
            raise ValueError("mask: a masked backward needs plane_weights, the masked forward's plane scales")
        tail = _kernels.MASK_TAIL + int(bool(accumulate)) + 2 * int(l1 != 0)
        tail += _kernels.NORMALIZED_TAIL if mask_mode == "normalized" else 0
    elif plane_weights is None:  # adding into grad and the L1 term are a template argument (a tail)
        tail = int(bool(accumulate)) + 2 * int(l1 != 0)
    elif l1:
        raise ValueError("l1: MS-SSIM's backward has no L1 term; pass l1=0.0 with plane_weights")
    else:  # MS-SSIM's terms (plane weights, the coarse scale's adjoint): a tail of their own
        tail = _kernels.MSSSIM_TAIL
    name = _kernels.backward_name(ELEMENT_TYPES[np.dtype(x.dtype)], params.radius, tail)
    kernel = _kernels.get_kernel("ssim", name, x)
    args = (x, *lx.args(), y, *ly.args(), grad_maps, grad, *lg.args(), np.int64(planes), np.int64(inner),
            np.int32(height), np.int32(width), np.int32(PADDING_CODES[params.padding]), _taps(x, params, ctype),
            ctype.type(1.0 / params.data_range), ctype.type(l1), _null(xp) if plane_weights is None else plane_weights,
            _null(xp) if coarse is None else coarse, np.int32(MS_SSIM_VARIANT_CODES.get(variant, 0)),
            np.int32(bool(accumulate)), _null(xp) if mask is None else mask, *lk.args())
    blocks = tiles(x.shape, x.dtype)
    grid = (blocks, plane_rows(blocks, planes))
    return _planned_launch(kernel, grid, (TILE, TILE), args, (x, y, mask), pointers, (0, 1, 6))


def finish(block_sums, out, *, per_output, count, a=0.0, b=1.0):
    """Launches ssim_finish: out[i] = a + b * sum(block_sums[i*per_output : (i+1)*per_output]) / count.

    ``out`` is a 1-D (possibly strided) float32 or float64 array, one entry per output value.
    """
    pointers = (block_sums, out)
    key = ("finish", _signature(block_sums), _signature(out), per_output, count, a, b)
    _launch_planned(key, lambda: _finish_launch(pointers, per_output, count, a, b), pointers)


def _finish_launch(pointers, per_output, count, a, b):
    block_sums, out = pointers
    name = "float" if out.dtype == np.float32 else "double"
    kernel = _kernels.get_kernel("ssim", f"ssim_finish<{name}>", block_sums)
    out, stride, outputs, count, a, b = finish_args((out, count, a, b), None)
    args = (block_sums, np.int64(per_output), outputs, count, a, b, out, stride)
    return kernel, (min(outputs, 2**31 - 1),), (256,), args, _slots(args, pointers), True


def pyramid(x, y, x_out, y_out, variant, levels, *, margin=0, mask=None, mask_out=None):
    """Launches msssim_pyramid: ``levels`` (1 to 4) successive 2x2 means of ``variant`` of x and y (y
    broadcasts to x), in one launch.

    x_out, y_out: contiguous, compute dtype, the levels one after another,
    each (planes, h', w') with h', w' the sides of the level before halved;
    the last plus 2 ``margin`` (a whole-sample reflected border).
    ``mask`` (compute dtype, broadcasting to x): pooled the same way into
    ``mask_out``, laid out as x_out (MS-SSIM with a mask).
    """
    pointers = (x, y, x_out, y_out, mask, mask_out)
    key = ("pyramid", _signature(x), _signature(y), _signature(x_out), variant, levels, margin, _signature(mask))
    _launch_planned(key, lambda: _pyramid_launch(pointers, variant, levels, margin), pointers)


def _pyramid_roots(sides, variant, levels) -> int:
    """Pixels per plane that msssim_pyramid computes a subtree from: all of the last level, and those of
    the others that the next level drops."""
    halved = [tuple(sides)]
    for _ in range(levels):
        halved.append(_reference.downsampled_shape(halved[-1], variant))
    roots = halved[-1][0] * halved[-1][1]
    for (h, w), (h2, w2) in zip(halved[1:-1], halved[2:]):
        roots += h * w - min(h, 2 * h2) * min(w, 2 * w2)
    return roots


def _pyramid_launch(pointers, variant, levels, margin):
    x_in, y_in, x_out, y_out, mask_in, mask_out = pointers
    xp = _arrays.array_module(x_in)
    (outer, inner), (lx, ly, lk), (x, y), mask = _with_mask(xp, x_in, y_in, mask_in, {})
    height, width = x.shape[-2:]
    masked = "" if mask is None else ", true"
    kernel = _kernels.get_kernel("ssim", f"msssim_pyramid<{ELEMENT_TYPES[np.dtype(x.dtype)]}, {levels}{masked}>", x)
    null = _null(xp)
    args = (x, *lx.args(), y, *ly.args(), x_out, y_out, np.int64(outer * inner), np.int64(inner), np.int32(height),
            np.int32(width), np.int32(MS_SSIM_VARIANT_CODES[variant]), np.int32(margin),
            null if mask is None else mask, *lk.args(), null if mask_out is None else mask_out)
    if height * width > MAX_PLANE_PIXELS:
        raise ValueError(f"x: MS-SSIM takes planes of at most {MAX_PLANE_PIXELS} pixels (rows x columns), got "
                         f"{height} x {width}; split the images along their rows or columns")
    roots = _pyramid_roots((height, width), variant, levels)  # per plane: blockIdx.x; the planes: blockIdx.y
    grid = (min(-(-roots // 256), 2**20), min(outer * inner, MAX_GRID_Y))
    return _planned_launch(kernel, grid, (256,), args, (x, y, mask), pointers, (0, 1, 4))


def fold(extended, out, *, margin):
    """Launches msssim_fold: the adjoint of a whole-sample extension by ``margin``.

    extended: contiguous (planes, h + 2 margin, w + 2 margin); out: contiguous (planes, h, w).
    """
    pointers = (extended, out)
    key = ("fold", _signature(extended), _signature(out), margin)
    _launch_planned(key, lambda: _fold_launch(pointers, margin), pointers)


def _fold_launch(pointers, margin):
    extended, out = pointers
    name = "float" if out.dtype == np.float32 else "double"
    kernel = _kernels.get_kernel("ssim", f"msssim_fold<{name}>", out)
    planes, height, width = out.shape
    args = (extended, out, np.int64(planes), np.int32(height), np.int32(width), np.int32(margin))
    return kernel, (min(-(-out.size // 256), 2**20),), (256,), args, _slots(args, pointers), True


def combine(job: Combine, *, masked=False):
    """Launches msssim_combine: per image of ``job.group`` planes, the relu'd product of the scales' means,
    and each value of ``job.out`` the mean of its images' (one launch; see :class:`Combine`).

    ``masked``: each scale's block sums are a masked forward's (the values', then the weights'), each mean
    weighted by them; the scales' totals (scales x images) are written just before ``job.image_values``,
    where cussim._msssim carves them."""
    pointers = (job.block_sums, job.image_values, job.plane_weights, job.out)
    key = ("combine", _signature(job.block_sums), _signature(job.image_values), _signature(job.out), job.planes,
           job.options, masked)
    _launch_planned(key, lambda: _combine_launch(pointers, job, masked), pointers)


def _combine_launch(pointers, job, masked):
    name = "float" if job.out.dtype == np.float32 else "double"
    kernel = _kernels.get_kernel("ssim", f"msssim_combine<{name}{', true' if masked else ''}>", job.block_sums)
    null = _null(_arrays.array_module(job.block_sums))
    args = (job.block_sums, np.int64(job.planes), *combine_args(job, null), *finish_args(job.finish, None))
    return kernel, (min(job.planes // job.group, 2**31 - 1),), (256,), args, _slots(args, pointers), True
