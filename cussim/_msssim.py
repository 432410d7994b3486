"""MS-SSIM (docs/spec.rst section 6) and its exact gradient: arguments in, one launch plan, outputs back.

Three named variants, each matching its original at every scale: how an odd
side is halved, and how the scales' means combine (see :func:`ms_ssim`). The
launch plan: the 2x2 downsamplings into the workspace (every scale of the
default five in one launch), one forward per scale
(contrast-structure maps, SSIM at the last, whose blocks then combine the
scales' means per image and finish the averaged values: for five scales, 6
launches for a value, 11 with the gradient); for the gradient, one backward
per scale from the coarsest, each adding the adjoint of the next scale's
downsampling, so the gradient flows back through every scale. Volumes
(``spatial_dims=3``) take the same plan with 2x2x2 means (pytorch-msssim's
convention on 5-D tensors) and the volume kernels.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass


from . import _arrays, _launch, _masks, _reference, _ssim
from ._ssim import Workspace, _gradient_buffer, _Layout, _prepare, _Problem

VARIANTS = _reference.MS_SSIM_VARIANTS
DEFAULT_WEIGHTS = _reference.MS_SSIM_WEIGHTS
MAX_SCALES = 16  # msssim_combine's kMaxScales


def _check_weights(weights) -> tuple:
    if weights is None:
        return DEFAULT_WEIGHTS
    try:
        values = tuple(weights)
    except TypeError:
        raise TypeError(f"weights must be a sequence of numbers (one per scale), got {weights!r}") from None
    if not 1 <= len(values) <= MAX_SCALES:
        raise ValueError(f"weights has {len(values)} entries; MS-SSIM takes 1 to {MAX_SCALES} scales, one weight "
                         "each")
    for w in values:
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite numbers >= 0, got {weights!r}")
    if not any(values):
        raise ValueError("weights are all 0; at least one scale must count")
    return tuple(float(w) for w in values)


def _check_variant(variant) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(map(repr, VARIANTS))}, got {variant!r}")
    return variant


@dataclass(frozen=True)
class _Pyramid:
    """The scales of one problem and where their arrays lie in the workspace.

    Scale 0 is the input; scale j+1 is scale j halved by the variant's 2x2
    (2x2x2) mean. torchmetrics' last scale is stored extended by the window radius
    (whole-sample reflection), its SSIM map the valid part of that.
    """

    layout: _Layout
    variant: str
    weights: tuple
    group: int  # planes per image (an image's channels, pooled by torchmetrics)
    # with a mask (mean mode): each scale's block sums those of a masked forward (the values', then the
    # weights'), each scale's total weight per image, and the mask's pyramid (a pooled mask per plane)
    masked: bool = False

    @property
    def scales(self) -> int:
        return len(self.weights)

    @property
    def margin(self) -> int:
        return self.layout.params.radius if self.variant == "torchmetrics" else 0

    @property
    def spatial(self) -> int:
        return self.layout.params.spatial

    @functools.cached_property
    def _sides(self) -> tuple:
        """The spatial sides of every scale, unextended (worked out once: a call asks dozens of times)."""
        sides = [self.layout.shape[-self.spatial :]]
        for _ in range(1, self.scales):
            sides.append(tuple(_reference.downsampled_shape(sides[-1], self.variant, self.spatial)))
        return tuple(sides)

    @functools.cached_property
    def _stored(self) -> tuple:
        m = self.margin
        return tuple(tuple(n + 2 * m for n in s) if j == self.scales - 1 else s for j, s in enumerate(self._sides))

    def side(self, j) -> tuple:
        """The spatial sides of scale j ((h, w), or (d, h, w)), unextended."""
        return self._sides[j]

    def stored(self, j) -> tuple:
        """The sides of scale j as the kernels see them (torchmetrics' last scale extended)."""
        return self._stored[j]

    def map_pixels(self, j) -> int:
        r = self.layout.params.radius
        return math.prod(n - 2 * r for n in self.stored(j))

    @functools.cached_property
    def _tiles(self) -> tuple:
        return tuple(self.layout.launcher.tiles(self.layout.params.map_shape(shape), self.layout.dtype)
                     for shape in self._stored)

    def tiles(self, j) -> int:
        return self._tiles[j]

    @property
    def planes(self) -> int:
        return self.layout.planes

    @property
    def images(self) -> int:
        return self.planes // self.group

    @functools.cached_property
    def level_starts(self) -> tuple:
        """Where the planes of scales 1.. start, one scale after another (in elements), and where they end."""
        starts = [0]
        for j in range(1, self.scales):
            starts.append(starts[-1] + self.planes * math.prod(self.stored(j)))
        return tuple(starts)

    @functools.cached_property
    def pyramid_launches(self) -> tuple:
        """Per launch of the pyramid: (input scale, scales it makes, margin of the last, where they start and
        end among the planes of scales 1..)."""
        starts, launches = self.level_starts, []
        for first in range(0, self.scales - 1, self.layout.launcher.PYRAMID_LEVELS):
            last = min(first + self.layout.launcher.PYRAMID_LEVELS, self.scales - 1)
            launches.append((first, last - first, self.margin if last == self.scales - 1 else 0, starts[first],
                             starts[last]))
        return tuple(launches)

    @functools.cached_property
    def scale_table(self) -> tuple:
        """Per scale: weight, map pixels per plane, tiles per plane, offset of its block sums (masked: the
        values' and then the weights', twice as many)."""
        table, offset = [], 0
        for j in range(self.scales):
            table.append((self.weights[j], self.map_pixels(j), self.tiles(j), offset))
            offset += self.planes * self.tiles(j) * (2 if self.masked else 1)
        return tuple(table)

    @property
    def image_shape(self) -> tuple:
        """The images' index shape in the kernels' layout (the batch axes, less torchmetrics' pooled channels):
        the shape of each scale's totals, as the float64 reference names their indices."""
        return self.layout.shape[: -self.spatial - (1 if self.group > 1 else 0)]

    @property
    def counters(self) -> int:
        """The combine's block counters, the workspace sums' last elements (kernels/msssim.cuh, combine_counter)."""
        return 1 + self.images

    def sizes(self, with_gradient: bool) -> tuple:
        """(float64 elements, compute-dtype elements) of the workspace."""
        return self._carving[with_gradient][1]

    @functools.cached_property
    def _carving(self) -> dict:
        """Per with_gradient: the views of the workspace, each (name, scale or None, buffer (0: float64,
        1: compute dtype), start, stop, shape or None for 1-D), and the buffers' sizes (worked out once)."""
        carvings = {}
        planes, scales = self.planes, self.scales
        for with_gradient in (False, True):
            views, cursor = [], [0, 0]

            def take(name, j, buffer, shape):  # the next part of a buffer; a view of it unless name is None
                size, start = math.prod(shape), cursor[buffer]
                if name is not None:
                    views.append((name, j, buffer, start, start + size, shape if len(shape) > 1 else None))
                cursor[buffer] += size
                return start

            copies = 2 if self.masked else 1  # masked: the weights' block sums after the values'
            sums = take("block_sums", None, 0, (copies * planes * sum(self._tiles),))
            for j, row in enumerate(self.scale_table):
                views.append(("scale_sums", j, 0, sums + row[3], sums + row[3] + copies * planes * row[2], None))
            if with_gradient:
                weights = take("plane_weights", None, 0, (scales, planes))
                views += [("scale_weights", j, 0, weights + j * planes, weights + (j + 1) * planes, None)
                          for j in range(scales)]
            if self.masked:  # just before the image values, where the masked combine writes them (combine_if_last)
                take("totals", None, 0, (scales, self.images))
            take("image_values", None, 0, (self.images + self.counters,))  # and the combine's counters, last
            # scales 1.. one after another (x, y, and masked the mask's): each scale's planes, each pyramid launch's
            for name in ("x", "y", "k") if self.masked else ("x", "y"):
                levels = take(None, None, 1, (self.level_starts[-1],))
                views += [(name, j, 1, levels + start, levels + start + planes * math.prod(self.stored(j)),
                           (planes, *self.stored(j))) for j, start in enumerate(self.level_starts[:-1], 1)]
                views += [(name + "_launches", k, 1, levels + first, levels + last, None)
                          for k, (_, _, _, first, last) in enumerate(self.pyramid_launches)]
            if with_gradient:
                for j in range(1, scales):
                    take("grad", j, 1, (planes, *self.stored(j)))
                for j in range(scales):
                    take("grad_maps", j, 1, (3 * planes * self.map_pixels(j),))
                if self.margin:  # the last scale's gradient folded back from its extension
                    take("folded", None, 1, (planes, *self.side(scales - 1)))
            carvings[with_gradient] = tuple(views), tuple(cursor)
        return carvings

    def views(self, sums, scratch, with_gradient: bool) -> dict:
        """The workspace carved into named views (no copies, no allocation): arrays, or lists per scale."""
        buffers = (sums, scratch)
        # per scale (or launch) from scale 1 (launch 0): none for one scale
        views = {name: [None] * self.scales for name in ("x", "y", "k", "x_launches", "y_launches", "k_launches",
                                                          "grad")}
        for name, j, buffer, start, stop, shape in self._carving[with_gradient][0]:
            view = buffers[buffer][start:stop]
            if shape is not None:
                view = view.reshape(shape)
            if j is None:
                views[name] = view
            else:
                views.setdefault(name, [None] * self.scales)[j] = view
        return views


def _pyramid(x, y, *, variant, weights, data_range, win_size, sigma, K1, K2, channel_axis, axis,
             spatial_dims=2, mask=None, mask_mode="mean") -> tuple:
    """The checked problem and its :class:`_Pyramid` (one per layout and options, from a cache)."""
    variant = _check_variant(variant)
    if mask_mode == "normalized":
        raise ValueError("mask_mode='normalized' is not offered for MS-SSIM; pass mask_mode='mean' (the mask, "
                         "pooled like the images, weights every scale's mean)")
    weights = _check_weights(weights)
    if variant == "piq" and spatial_dims != 2:
        raise ValueError("variant='piq' is for images (spatial_dims=2): piq's 5-D input is a complex image, not a "
                         "volume; volumes take 'pytorch_msssim', 'tensorflow' or 'torchmetrics'")
    sizes = win_size if isinstance(win_size, (tuple, list)) else [win_size]  # checked by _prepare
    sides = [_reference.ms_ssim_min_size(w if isinstance(w, numbers.Integral) else 0, len(weights), variant)
             for w in sizes]
    side = tuple(sides) if isinstance(win_size, (tuple, list)) else sides[0]
    reason = (f"MS-SSIM ({variant!r}, {len(weights)} scales, win_size={win_size}) needs "
              + (f"sides of at least {'x'.join(map(str, sides))}" if isinstance(side, tuple) else
                 f"a smaller side of at least {side}") + "; pass fewer weights (scales) or a smaller win_size")
    pooled = variant == "torchmetrics" and channel_axis is not None
    problem = _prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window="gaussian", K1=K1,
                       K2=K2, padding="valid", sample_covariance=False, channel_axis=channel_axis, axis=axis,
                       min_side=(side, reason), channels_pooled=pooled, spatial_dims=spatial_dims, mask=mask,
                       mask_mode=mask_mode)
    group = problem.x.shape[-3] if pooled else 1
    return problem, _cached_pyramid(problem.layout, variant, weights, group, problem.mask is not None)


# Its scales are worked out once per layout and options, not once per call.
_cached_pyramid = functools.lru_cache(maxsize=256)(_Pyramid)


def make_ms_ssim_workspace(x, *, variant="pytorch_msssim", weights=None, win_size=11, channel_axis=None,
                           spatial_dims=2, mask=None) -> Workspace:
    """The workspace of :func:`ms_ssim_with_gradient` for images shaped like ``x`` (allocated once).

    ``spatial_dims=3`` for volumes, as in the functions that take it.
    ``mask``: the mask of the calls (or any of its shape and dtype; its values
    are not read) for a workspace of masked calls, which holds the mask's
    pyramid and the scales' weight sums too, and for a mask of another dtype
    than the compute dtype its weights converted.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> x = np.zeros((3, 180, 200), np.float32)
    >>> ws = cussim.make_ms_ssim_workspace(x)
    >>> ws.nbytes > x.nbytes
    True
    >>> cussim.make_ms_ssim_workspace(x, mask=np.ones((180, 200), bool)).nbytes > ws.nbytes
    True
    """
    problem, pyramid = _pyramid(x, x, variant=variant, weights=weights, data_range=None, win_size=win_size, sigma=1.5,
                       K1=0.01, K2=0.03, channel_axis=channel_axis, axis=None, spatial_dims=spatial_dims)
    if mask is None:
        return _ssim._allocate_workspace(problem, pyramid.sizes(with_gradient=True))
    weights = _masks.in_layout(_arrays.as_array(mask, "mask"), problem.x, problem.layout, check_values=False)
    masked = _cached_pyramid(pyramid.layout, pyramid.variant, pyramid.weights, pyramid.group, True)
    workspace = _ssim._allocate_workspace(problem, masked.sizes(with_gradient=True))
    if weights.dtype != problem.layout.compute_dtype:
        with problem.device():
            workspace.mask = _arrays.empty(problem.xp, weights.shape, problem.layout.compute_dtype)
    return workspace


def _reference_values(problem: _Problem, pyramid: _Pyramid, want_gradient):
    """The float64 reference on NumPy inputs: (values, gradient in the kernels' layout or None)."""
    p = problem.params
    ndim = problem.x.ndim
    return _reference.ms_ssim_with_gradient(
        problem.x, problem.y, p.windows, weights=pyramid.weights, variant=pyramid.variant, K1=p.K1,
        K2=p.K2, data_range=p.data_range, axis=tuple(range(problem.layout.kept, ndim)),
        pool_axes=(ndim - p.spatial - 1,) if pyramid.group > 1 else (), want_gradient=want_gradient,
        limit=problem.limit, spatial=p.spatial, mask=problem.mask)


def _launch_plan(problem: _Problem, pyramid: _Pyramid, flat_out, views, grad_view=None, accumulate=False, mask=None):
    """Every launch of one MS-SSIM value (and gradient), in order, on the inputs' device.

    ``mask`` (the compute dtype, for a masked pyramid): pooled with the images (each launch of the pyramid
    takes it as a third image or volume), each scale's forward weighted by its pooled mask (FORWARD_MASK;
    volumes: VOLUME_MASK), the combine's means weighted (their totals in views["totals"]; volumes: the masked
    msssim_combine); the backward is the unmasked one, its partial maps and plane weights carrying the weights.
    """
    variant, scales, margin = pyramid.variant, pyramid.scales, pyramid.margin
    params, launcher = problem.params, problem.layout.launcher
    want_gradient = grad_view is not None
    xs, ys = [problem.x] + views["x"][1:], [problem.y] + views["y"][1:]
    ks = [mask] + views["k"][1:]
    for (first, levels, extension, _, _), x_out, y_out, k_out in zip(
            pyramid.pyramid_launches, views["x_launches"], views["y_launches"], views["k_launches"]):
        launcher.pyramid(xs[first], ys[first], x_out, y_out, variant, levels, margin=extension,
                         **({} if mask is None else {"mask": ks[first], "mask_out": k_out}))
    combine = _launch.Combine(views["block_sums"], pyramid.scale_table, views["image_values"],
                              views["plane_weights"] if want_gradient else None, flat_out, pyramid.planes,
                              pyramid.group, 1.0 / (pyramid.images // max(1, flat_out.size)))
    for j in range(scales):  # the last scale's forward combines the scales (for volumes: a launch of its own)
        last = j == scales - 1
        launcher.forward(xs[j], ys[j], params, block_sums=views["scale_sums"][j], weight=1.0,
                        grad_maps=views["grad_maps"][j] if want_gradient else None,
                        term="ssim" if last else "cs", combine=combine if last else None,
                        **({} if mask is None else {"mask": ks[j]}))
    if not want_gradient:
        return
    grads = [grad_view] + views["grad"][1:]
    for j in reversed(range(scales)):
        coarse = grads[j + 1] if j + 1 < scales else None
        if margin and j + 1 == scales - 1:  # torchmetrics: the extension's adjoint first
            _launch.fold(coarse, views["folded"], margin=margin)
            coarse = views["folded"]
        launcher.backward(xs[j], ys[j], views["grad_maps"][j], grads[j], params,
                         accumulate=accumulate if j == 0 else False, plane_weights=views["scale_weights"][j],
                         coarse=coarse, variant=variant)


def _check_kernels_compute(pyramid: _Pyramid) -> None:
    """Refuses what only the float64 reference computes: piq's halving, and torchmetrics' reflected last scale
    where it is not a halved one (one scale), or of volumes."""
    if pyramid.variant == "piq":
        raise ValueError("variant='piq' is computed for NumPy inputs (the float64 reference) only: the kernels do "
                         "not halve a side as piq does. On the GPU, take 'pytorch_msssim', 'tensorflow' or "
                         "'torchmetrics', which differ from piq where a scale has an odd side")
    if pyramid.variant != "torchmetrics":
        return
    if pyramid.spatial == 3:
        raise ValueError("variant='torchmetrics' on volumes (spatial_dims=3) is computed for NumPy inputs (the "
                         "float64 reference) only: the volume kernels do not extend a scale by reflection. On the "
                         "GPU, volumes take 'pytorch_msssim' (pytorch-msssim's 5-D convention) or 'tensorflow'")
    if pyramid.scales == 1:
        raise ValueError("variant='torchmetrics' with one scale (weights of length 1) is computed for NumPy "
                         "inputs (the float64 reference) only: the kernels extend only a halved scale by "
                         "reflection. On the GPU, pass two or more weights, or for weights=(1.0,) take "
                         "cussim.ssim of the images extended by win_size // 2 with whole-sample reflection, "
                         "padding='valid'")


def _compute(problem: _Problem, pyramid: _Pyramid, out, *, grad=None, workspace=None, accumulate=False, options=None):

    def launch(flat_out, grad_view, workspace):
        _check_kernels_compute(pyramid)
        want_gradient = grad_view is not None
        sums, scratch = _ssim._workspace_buffers(problem, workspace, pyramid.sizes(want_gradient), True,
                                                 pyramid.counters)
        views = pyramid.views(sums, scratch, want_gradient)
        mask = None if problem.mask is None else _ssim._kernel_mask(problem, workspace)
        _launch_plan(problem, pyramid, flat_out, views, grad_view, accumulate, mask)
        if mask is not None:  # the one synchronisation of a masked call: each scale's totals, as the reference
            totals = _ssim.host_totals(views["totals"], workspace)
            for scale_totals in totals:
                _masks.check_kernel_totals(scale_totals, pyramid.image_shape)

    return _ssim._compute(
        problem, out, grad=grad, workspace=workspace, accumulate=accumulate,
        check_workspace=lambda ws: _ssim._check_workspace(ws, problem, pyramid.sizes(with_gradient=True),
                                                          "make_ms_ssim_workspace", options),
        reference=lambda want_gradient: _reference_values(problem, pyramid, want_gradient), launch=launch)


_DOC_PARAMETERS = _ssim.DOC_IMAGES + """    variant : {"pytorch_msssim", "tensorflow", "torchmetrics", "piq"}
        Whose MS-SSIM (docs/spec.rst section 6). "pytorch_msssim" (pytorch-msssim
        1.0) halves an odd side with a zero on both sides, counted in the
        mean; "tensorflow" (tf.image.ssim_multiscale) repeats the last row or
        column; "torchmetrics" (normalize="relu", torchmetrics >= 1.5) drops
        it, takes the last scale's SSIM over the full image extended by
        whole-sample reflection, and averages an image's channels (with
        ``channel_axis``) into each scale's mean before the product; "piq"
        (piq 0.8's multi_scale_ssim), where any side of a scale is odd, repeats
        its first row and first column and drops what is left over (NumPy
        inputs only). The others average the per-channel products.
    weights : sequence of float, optional
        One exponent per scale, 1 to 16 of them, finite and >= 0 (one: the
        variant's SSIM at scale 1 to that power); default the
        five published ones (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).
    data_range : float, optional
        Value range L of the images, as in :func:`cussim.ssim`: the dtype's
        range for integers, 1 for floats (pass it for other ranges).
    win_size : int or tuple of ints
        Odd Gaussian window size, 3 to 15 (default 11), or one per spatial
        axis (the same window at every scale); every scale must be at least
        this wide (the error says the minimum image side).
    sigma : float or tuple of floats
        The Gaussian's standard deviation (1.5), or one per spatial axis. A
        window per axis is computed on NumPy inputs (the float64 path) only.
    K1, K2 : float
        The formula's constants.
    channel_axis : int, optional
        An axis holding channels (e.g. -1 for H x W x C, 1 for N x C x H x W).
    spatial_dims : {2, 3}
        3: D x H x W volumes in the last three axes, halved by 2x2x2 means
        (pytorch-msssim's convention on 5-D tensors); "pytorch_msssim" and
        "tensorflow" variants.
    axis : int or tuple of ints, optional
        Axes to average, NumPy-style; they must include the spatial axes (and,
        for "torchmetrics" with ``channel_axis``, the channel axis). None
        averages everything.
    out : array, optional
        Where to write the result (compute dtype, the result's shape).
    mask : array, optional
        Pixel weights as in :func:`cussim.ssim` (docs/spec.rst section 9),
        pooled like the images at every scale (the variant's 2x2 mean, 2x2x2
        for volumes, and padding); each scale's mean is weighted by them.
    mask_mode : {"mean"}
        Only "mean": normalised convolution is not offered for MS-SSIM.
"""


def ms_ssim(x, y, *, variant="pytorch_msssim", weights=None, data_range=None, win_size=11, sigma=1.5, K1=0.01,
            K2=0.03, channel_axis=None, axis=None, out=None, spatial_dims=2, mask=None, mask_mode="mean"):
    """Multi-scale structural similarity of x against y.
    {parameters}
    Returns
    -------
    array
        The mean MS-SSIM, a 0-d array or one value per kept index. Negative
        means are taken as 0 (the relu of every variant), so finite inputs
        never give NaN.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((2, 176, 176))
    >>> y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    >>> print(np.round(cussim.ms_ssim(x, y, axis=(1, 2)), 4))
    [0.954  0.9518]
    >>> float(cussim.ms_ssim(x, x, variant="torchmetrics"))
    1.0
    """
    problem, pyramid = _pyramid(x, y, variant=variant, weights=weights, data_range=data_range, win_size=win_size,
                       sigma=sigma, K1=K1, K2=K2, channel_axis=channel_axis, axis=axis, spatial_dims=spatial_dims,
                       mask=mask, mask_mode=mask_mode)
    return _compute(problem, pyramid, out)


def ms_ssim_with_gradient(x, y, *, variant="pytorch_msssim", weights=None, data_range=None, win_size=11, sigma=1.5,
                          K1=0.01, K2=0.03, channel_axis=None, axis=None, out=None, grad=None, workspace=None,
                          accumulate=False, spatial_dims=2, mask=None, mask_mode="mean"):
    """MS-SSIM and its exact gradient with respect to x: ``(value, d sum(value) / dx)``.
    {parameters}    grad : array, optional
        Where to write the gradient (x's shape; x's dtype for floats, float32
        for integer images).
    workspace : Workspace, optional
        From :func:`make_ms_ssim_workspace` (with ``mask=mask`` for masked
        calls); with ``out`` and ``grad`` too, the call allocates nothing.
    accumulate : bool
        Add into ``grad`` instead of overwriting it.

    The gradient is 0 through a mean that the relu zeroed, and a power's
    derivative divides by a mean no smaller than 1e-12: finite inputs give a
    finite gradient, even for an image against its negative.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> rng = np.random.default_rng(1)
    >>> x = rng.random((161, 161)); y = rng.random((161, 161))
    >>> value, grad = cussim.ms_ssim_with_gradient(x, y, weights=(0.5, 0.5), win_size=7)
    >>> h = 1e-6; e = np.zeros_like(x); e[80, 90] = h
    >>> f = lambda v: cussim.ms_ssim(v, y, weights=(0.5, 0.5), win_size=7)
    >>> bool(abs((f(x + e) - f(x - e)) / (2 * h) - grad[80, 90]) < 1e-8)
    True
    """
    problem, pyramid = _pyramid(x, y, variant=variant, weights=weights, data_range=data_range, win_size=win_size,
                       sigma=sigma, K1=K1, K2=K2, channel_axis=channel_axis, axis=axis, spatial_dims=spatial_dims,
                       mask=mask, mask_mode=mask_mode)
    grad = _gradient_buffer(problem, grad, accumulate)

    def options():  # make_ms_ssim_workspace's arguments for these images, formatted only for a workspace's error
        return ", ".join(f"{name}={value!r}" for name, value in (
            ("variant", variant), ("weights", weights), ("win_size", win_size), ("channel_axis", channel_axis),
            ("spatial_dims", spatial_dims))) + (", mask=mask" if mask is not None else "")

    value = _compute(problem, pyramid, out, grad=grad, workspace=workspace, accumulate=accumulate, options=options)
    return value, grad


for _function in (ms_ssim, ms_ssim_with_gradient):
    _function.__doc__ = _function.__doc__.replace("{parameters}", _DOC_PARAMETERS)
