"""Launch plans for volumes: kernels/ssim3d.cu's forward and backward, as :mod:`cussim._launch` for planes.

The same arguments and outputs as ``_launch.forward`` and ``_launch.backward``,
for arrays whose last three axes are a D x H x W volume (the batch axes before
them merged into two stride levels, as for planes); ``_launch.finish`` turns
the block sums into means. Each block owns a 16 x 16 tile of rows and columns
and a chunk of :data:`DEPTH_CHUNK` planes along depth.

Examples
--------
>>> import numpy as np
>>> from cussim import _launch3d
>>> from cussim._params import ssim_params
>>> x = np.linspace(0, 1, 9 * 12 * 12, dtype=np.float32).reshape(9, 12, 12)
>>> s = np.empty(x.shape, np.float32)
>>> _launch3d.forward(x, x, ssim_params(win_size=5, spatial_dims=3), map_out=s)
>>> float(s.min()), float(s.max())
(1.0, 1.0)
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import _arrays, _kernels, _launch
from ._launch import (ELEMENT_TYPES, GRADIENT_FORMULAS, MAX_GRID_Y, MS_SSIM_VARIANT_CODES, PADDING_CODES, TERMS,
                      TILE, WeightedSums, _element_strides, _null, _taps, compute_dtype, plane_layouts)

DEPTH_CHUNK = 16  # output planes per block: the 2R halo planes are read once per chunk
MAX_PLANE_VOXELS = 2**31 - 1  # ssim3d_backward addresses a plane of the partial maps in 32-bit arithmetic


def tiles(shape, dtype=None) -> int:
    """Blocks per volume of ``shape`` (its last three axes): 16 x 16 tiles (whatever ``dtype``) times depth
    chunks."""
    return -(-shape[-2] // TILE) * -(-shape[-1] // TILE) * -(-shape[-3] // DEPTH_CHUNK)


def _volume_layouts(inputs, outputs):
    """(volumes, inner count, stride arguments per array, inputs): the planes' layouts plus each depth stride."""
    (outer, inner), layouts, inputs = plane_layouts(inputs, outputs, spatial=3)
    strides = []
    for layout, array in zip(layouts, [*inputs, *outputs.values()]):
        o, i, row, col = layout.args()
        strides.append((o, i, np.int64(_element_strides(array)[-3]), row, col))
    return outer * inner, inner, strides, inputs


def _none_strides():
    return tuple(np.int64(0) for _ in range(5))


def _with_mask(xp, x, y, mask, outputs):
    """:func:`_volume_layouts` of x, y (broadcast to x) and the mask (broadcast too) if there is one: (volumes,
    inner count, stride arguments of x, y, ``outputs`` and the mask (zeros without one), laid-out x and y, the
    mask as laid out (None without one))."""
    inputs = [x, xp.broadcast_to(y, x.shape)]
    if mask is not None:
        inputs.append(xp.broadcast_to(mask, x.shape))
    volumes, inner, strides, arrays = _volume_layouts(inputs, outputs)
    if mask is None:
        return volumes, inner, strides + [_none_strides()], arrays[:2], None
    return volumes, inner, [*strides[:2], *strides[3:], strides[2]], arrays[:2], arrays[2]


def _kernel_name(kernel, x, params, mask, mask_mode) -> str:
    """The name expression of ssim3d_forward or ssim3d_backward for x."""
    return _kernels.volume_name(kernel, ELEMENT_TYPES[np.dtype(x.dtype)], params.radius,
                                None if mask is None else mask_mode)


# The forward's window planes kept in registers when the rest is in its shared-memory ring, by architecture
# (kernels/ssim3d.cu, kForwardRegisterPlanes: the two must agree, tests/test_bench_host.py ties them); 0: no ring,
# the window in registers. The launch asks by the architecture the kernel was compiled for (kernel_arch).
FORWARD_RING_MAX_RADIUS = 5
# float64's normalized forward at R = 7 (kernels/ssim3d.cu, kWideRingPlanes): that many of its 15 window planes in
# the ring on every architecture, whose registers would not hold the whole window
WIDE_RING_RADIUS = 7


def wide_ring_planes(arch) -> int:
    """Window planes of float64's normalized forward at R = 7 in its ring on sm_``arch`` (None: the emulator's
    build, as sm_90)."""
    return 5 if arch in (70, 72) else 3


def forward_register_planes(arch) -> int:
    """Window planes that ssim3d_forward keeps in registers beside its ring on sm_``arch`` (None: the emulator's
    build, as sm_90), 0 where the whole window stays in registers."""
    if arch is None or 90 <= arch < 120:
        return 1
    return 2 if arch == 80 else 0


def forward_shared_bytes(dtype, radius: int, mask_mode=None, arch=None) -> int:
    """Dynamic shared memory of ssim3d_forward for x of ``dtype``: its window's ring (kernels/ssim3d.cu,
    Window3d), 2R + 1 planes less those in registers, of 5 values (6 with ``mask_mode`` "normalized") per
    thread of 256, in float arithmetic up to R = 5 where the architecture has a ring; in double arithmetic,
    normalized at R = 7, :func:`wide_ring_planes` planes of 6; 0 elsewhere.

    >>> forward_shared_bytes(np.float32, 5), forward_shared_bytes(np.float32, 5, "normalized", 80)
    (51200, 55296)
    >>> forward_shared_bytes(np.float64, 5), forward_shared_bytes(np.float32, 6)
    (0, 0)
    >>> forward_shared_bytes(np.uint8, 5, None, 86), forward_shared_bytes(np.uint8, 5, None, 100)
    (0, 51200)
    >>> forward_shared_bytes(np.float64, 7, "normalized", 86), forward_shared_bytes(np.float64, 7, "mean", 86)
    (36864, 0)
    """
    ctype = compute_dtype(np.dtype(dtype))
    if ctype == np.float64 and mask_mode == "normalized" and radius == WIDE_RING_RADIUS:
        return wide_ring_planes(arch) * 6 * TILE * TILE * 8
    planes = forward_register_planes(arch)
    if not planes or ctype != np.float32 or radius > FORWARD_RING_MAX_RADIUS:
        return 0
    values = 6 if mask_mode == "normalized" else 5
    return (2 * radius + 1 - planes) * values * TILE * TILE * 4


def kernel_arch(kernel):
    """The architecture ``kernel``'s code was compiled for, as ``__CUDA_ARCH__ / 10`` (90 for sm_90): CuPy's
    ``ptx_version``, the virtual architecture NVRTC compiled for, which can be older than the device's (a
    device newer than NVRTC runs code for an older one); None for the emulator's kernels (built as sm_90's)."""
    return getattr(kernel, "ptx_version", None)


@functools.lru_cache(maxsize=None)
def _opt_in(kernel, shared: int) -> None:
    """Lets ``kernel`` take ``shared`` bytes of dynamic shared memory (past 48 KiB, a GPU's launch needs it
    asked for), once per kernel and size."""
    if shared > kernel.max_dynamic_shared_size_bytes:
        kernel.max_dynamic_shared_size_bytes = shared


def weighted_sums(shape, dtype, params) -> WeightedSums:
    """The :class:`cussim._launch.WeightedSums` of a masked forward over volumes of ``shape`` (the kernels'
    layout): volumes x :func:`tiles` of the map of each kind, a plane slot per volume."""
    volumes = math.prod(shape[:-3])
    return WeightedSums(volumes * tiles(params.map_shape(shape)), volumes)


def forward(x, y, params, *, map_out=None, block_sums=None, grad_maps=None, weight=0.0, formula="exact",
            term="ssim", sum_scale=1.0, l1=0.0, finish=None, combine=None, mask=None, mask_mode="mean"):
    """Launches ssim3d_forward: as :func:`cussim._launch.forward`, over volumes.

    block_sums: float64, volumes x :func:`tiles` of the map; grad_maps:
    compute dtype, 3 x volumes x map voxels, contiguous. ``finish`` runs
    ssim_finish as a second launch (block_sums' last element, the counter of
    the 2-D forward, stays unused); ``combine``, msssim_combine.

    ``mask`` and ``mask_mode``: as :func:`cussim._launch.forward`'s (block_sums
    laid out as :func:`weighted_sums` says); the finish is then
    ssim3d_weighted_finish, a second launch too. With ``combine`` (MS-SSIM's
    last scale, mean mode): the masked msssim_combine, which weights every
    scale's mean by its pooled mask.
    """
    xp = _arrays.array_module(x)
    ctype = compute_dtype(x.dtype)
    outputs = {"out": map_out} if map_out is not None else {}
    volumes, inner, strides, (x, y), mask = _with_mask(xp, x, y, mask, outputs)
    depth, height, width = x.shape[-3:]
    map_shape = params.map_shape(x.shape)
    kernel = _kernels.get_kernel("ssim3d", _kernel_name("forward", x, params, mask, mask_mode), x)
    c = ctype.type
    null = _null(xp)
    blocks = tiles(map_shape)
    # the ring as the kernel's own build has it (kForwardRegisterPlanes by __CUDA_ARCH__), not the device's
    shared = forward_shared_bytes(x.dtype, params.radius, None if mask is None else mask_mode, kernel_arch(kernel))
    _opt_in(kernel, shared)
    kernel(
        (blocks, min(volumes, MAX_GRID_Y)), (TILE, TILE),
        (x, *strides[0], y, *strides[1], null if map_out is None else map_out,
         *(strides[2] if map_out is not None else _none_strides()),
         null if block_sums is None else block_sums, null if grad_maps is None else grad_maps,
         np.int64(volumes), np.int64(inner), np.int32(depth), np.int32(height), np.int32(width),
         np.int32(DEPTH_CHUNK), np.int32(PADDING_CODES[params.padding]), np.int32(params.crop),
         np.int32(TERMS[term]), np.int32(GRADIENT_FORMULAS[formula]), _taps(x, params, ctype),
         c(1.0 / params.data_range), c(params.K1**2), c(params.K2**2), c(params.cov), c(weight),
         np.float64(sum_scale), np.float64(l1), null if mask is None else mask, *strides[-1]),
        shared_mem=shared,
    )
    if finish is not None and mask is not None:  # the weighted finish: means, totals, per-volume scales
        out, _, a, b = finish
        _weighted_finish(block_sums, WeightedSums(volumes * blocks, volumes), out, a, b)
    elif finish is not None:  # a second launch: folded into ssim3d_forward, the finish made it spill
        out, count, a, b = finish
        sums = block_sums[:-1]
        _launch.finish(sums, out, per_output=sums.size // max(1, out.size), count=count, a=a, b=b)
    if combine is not None:  # a second launch too: ssim3d_forward has no FORWARD_COMBINE
        _launch.combine(combine, masked=mask is not None)


def _weighted_finish(block_sums, sums: WeightedSums, out, a, b):
    """Launches ssim3d_weighted_finish: out[i] = a + b * sum(m S) / sum(m) of output i's block sums, with the
    totals and per-volume scales where ``sums`` says (one block per output)."""
    name = "float" if out.dtype == np.float32 else "double"
    kernel = _kernels.get_kernel("ssim3d", f"ssim3d_weighted_finish<{name}>", block_sums)
    out, stride, outputs, _, a, b = _launch.finish_args((out, 1.0, a, b), None)
    kernel((min(int(outputs), 2**31 - 1),), (256,),
           (block_sums, np.int64(sums.sums), outputs, np.int64(sums.planes), a, b, out, stride))


def backward(x, y, grad_maps, grad, params, *, accumulate=False, plane_weights=None, coarse=None, variant=None,
             l1=0.0, mask=None, mask_mode="mean"):
    """Launches ssim3d_backward: as :func:`cussim._launch.backward`, over volumes.

    MS-SSIM's extras: ``plane_weights`` (float64, one per volume) scale each
    volume's gradient; ``coarse`` (compute dtype, contiguous volumes of the
    next scale) adds the adjoint of ``variant``'s 2x2x2 mean.

    ``mask`` and ``mask_mode``: a masked mean's gradient, as
    :func:`cussim._launch.backward`'s (``plane_weights`` the masked forward's
    plane scales; no ``coarse``).
    """
    xp = _arrays.array_module(x)
    ctype = compute_dtype(x.dtype)
    volumes, inner, (sx, sy, sg, sk), (x, y), mask = _with_mask(xp, x, y, mask, {"grad": grad})
    depth, height, width = x.shape[-3:]
    if height * width > MAX_PLANE_VOXELS:
        raise ValueError(f"x: the gradient of volumes takes planes of at most {MAX_PLANE_VOXELS} voxels (rows x "
                         f"columns), got {height} x {width}; split the volume along its rows or columns")
    if mask is not None and (plane_weights is None or coarse is not None):
        raise ValueError("mask: a masked backward needs plane_weights, the masked forward's plane scales, and no "
                         "coarse scale")
    kernel = _kernels.get_kernel("ssim3d", _kernel_name("backward", x, params, mask, mask_mode), x)
    null = _null(xp)
    kernel(
        (tiles(x.shape), min(volumes, MAX_GRID_Y)), (TILE, TILE),
        (x, *sx, y, *sy, grad_maps, grad, *sg, np.int64(volumes), np.int64(inner), np.int32(depth),
         np.int32(height), np.int32(width), np.int32(DEPTH_CHUNK), np.int32(PADDING_CODES[params.padding]),
         _taps(x, params, ctype), ctype.type(1.0 / params.data_range),
         null if plane_weights is None else plane_weights, null if coarse is None else coarse,
         np.int32(MS_SSIM_VARIANT_CODES.get(variant, 0)), ctype.type(l1), np.int32(bool(accumulate)),
         null if mask is None else mask, *sk),
    )


PYRAMID_LEVELS = 1  # 2x2x2 means per launch of MS-SSIM's pyramid


def pyramid(x, y, x_out, y_out, variant, levels, *, margin=0, mask=None, mask_out=None):
    """MS-SSIM's pyramid for volumes: one level per launch (``levels`` 1, ``margin`` 0), :func:`downsample`."""
    downsample(x, y, x_out, y_out, variant, mask=mask, mask_out=mask_out)


def downsample(x, y, x_out, y_out, variant, *, mask=None, mask_out=None):
    """Launches msssim3d_downsample: one 2x2x2 mean of ``variant`` of x and y (y broadcasts to x).

    x_out, y_out: contiguous, compute dtype, (volumes, d', h', w'), the
    downsampled sides. ``mask`` (compute dtype, broadcasting to x): pooled the
    same way into ``mask_out``, laid out as x_out (MS-SSIM with a mask).
    """
    xp = _arrays.array_module(x)
    volumes, inner, (sx, sy, sk), (x, y), mask = _with_mask(xp, x, y, mask, {})
    depth, height, width = x.shape[-3:]
    masked = "" if mask is None else ", true"
    kernel = _kernels.get_kernel("ssim3d", f"msssim3d_downsample<{ELEMENT_TYPES[np.dtype(x.dtype)]}{masked}>", x)
    null = _null(xp)
    kernel(
        (min(-(-x_out.size // 256), 2**20),), (256,),
        (x, *sx, y, *sy, x_out, y_out, np.int64(volumes), np.int64(inner), np.int32(depth), np.int32(height),
         np.int32(width), np.int32(MS_SSIM_VARIANT_CODES[variant]), null if mask is None else mask, *sk,
         null if mask_out is None else mask_out),
    )
