"""The public SSIM and DSSIM functions: arguments in, one launch plan, outputs back.

Inputs: CuPy arrays, objects with ``__cuda_array_interface__`` or
``__dlpack__`` (PyTorch CUDA tensors, zero-copy; results come back as CuPy
arrays), or NumPy arrays (computed by the float64 reference, or by the kernels
on the CPU emulator with ``CUSSIM_NUMPY_BACKEND=emulator``). The last two axes
are the image plane (or the last two other than ``channel_axis``), the last
three with ``spatial_dims=3`` (a D x H x W volume); every other axis is a
batch axis. The gradient is with respect to the FIRST argument x
(the rendered image); y is the reference and broadcasts to x's shape.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import _arrays, _launch, _launch3d, _masks, _reference
from ._params import SsimParams, check_compute_range, check_spatial_dims, ssim_params, warn_outside_unit_range

INTEGER_RANGES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


@dataclass(frozen=True)
class _Layout:
    """What a call's shapes, dtypes and options determine: made once per key by :func:`_checked_layout`
    (cached), so its derived values are computed once too."""

    params: SsimParams
    perm: tuple  # x_original.transpose(perm) is x
    kept: int  # how many leading axes stay in the result
    shape: tuple  # x's shape in the kernels' layout
    dtype: np.dtype  # x's

    @functools.cached_property
    def compute_dtype(self) -> np.dtype:
        return _launch.compute_dtype(self.dtype)

    @functools.cached_property
    def gradient_dtype(self) -> np.dtype:
        return _launch.gradient_dtype(self.dtype)

    @functools.cached_property
    def value_shape(self) -> tuple:
        return self.shape[: self.kept]

    @functools.cached_property
    def planes(self) -> int:
        """Images (planes, or volumes) in the batch."""
        return math.prod(self.shape[: -self.params.spatial])

    @functools.cached_property
    def counted_per_value(self) -> int:
        """Map pixels averaged into each value."""
        return math.prod(self.shape[self.kept : -self.params.spatial]) * math.prod(self.params.mean_shape(self.shape))

    @functools.cached_property
    def keeps_order(self) -> bool:
        """Whether the kernels' layout is the caller's axis order (no transposed views to make)."""
        return self.perm == tuple(range(len(self.perm)))

    @functools.cached_property
    def inverse_perm(self) -> tuple:
        return tuple(int(a) for a in np.argsort(self.perm))

    @functools.cached_property
    def original_shape(self) -> tuple:
        """x's shape as the caller passed it."""
        return tuple(self.shape[a] for a in self.inverse_perm)

    @property
    def launcher(self):
        """The launch plans of these images: _launch for planes, _launch3d for volumes."""
        return _launch3d if self.params.spatial == 3 else _launch

    @functools.cached_property
    def workspace_sizes(self) -> tuple:
        """(float64, compute-dtype) elements of SSIM's workspace: per-tile sums and the forward's block
        counter (one element, zero between launches), and the gradient's 3 maps."""
        map_shape = self.params.map_shape(self.shape)
        return self.planes * self.launcher.tiles(map_shape, self.dtype) + 1, 3 * math.prod(map_shape)

    @functools.cached_property
    def weighted_sums(self):
        """Where a masked mean's forward puts its sums, totals and plane scales (:class:`_launch.WeightedSums`)."""
        return self.launcher.weighted_sums(self.shape, self.dtype, self.params)

    @functools.cached_property
    def masked_workspace_sizes(self) -> tuple:
        """:attr:`workspace_sizes` for a masked mean: the block sums laid out as :attr:`weighted_sums`."""
        return self.weighted_sums.size, self.workspace_sizes[1]


@dataclass(frozen=True)
class _Problem:
    """Checked inputs in the kernels' layout: kept axes, averaged batch axes, then the plane."""

    x: object
    y: object
    layout: _Layout
    xp: object
    mask: object = None  # the weights in the kernels' layout (docs/spec.rst section 9), or None
    mask_mode: str = "mean"

    @property
    def params(self) -> SsimParams:
        return self.layout.params

    def original(self, array):
        """An array in the kernels' layout, viewed in the caller's axis order."""
        return array if self.layout.keeps_order else array.transpose(self.layout.inverse_perm)

    def permuted(self, array):
        """A caller-layout array viewed in the kernels' layout."""
        return array if self.layout.keeps_order else array.transpose(self.layout.perm)

    def device(self):
        return _arrays.on_device(self.x)

    @property
    def limit(self) -> float:
        """The largest number of the compute dtype: where the kernels' arithmetic overflows, the reference
        gives NaN too (docs/spec.rst section 1)."""
        return float(np.finfo(self.layout.compute_dtype).max)

    def check_apart(self, outputs: dict) -> None:
        """The outputs (name: array or None) apart from each other, themselves and x and y."""
        _arrays.check_apart(outputs, {"x": self.x, "y": self.y})


def _normalise_axis(value, ndim, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not -ndim <= value < ndim:
        raise ValueError(f"{name}={value} is out of range for arrays with {ndim} dimensions")
    return int(value) % ndim


def _prepare(x, y, *, data_range, win_size, sigma, window, K1, K2, padding, sample_covariance, channel_axis,
             axis, reduce=True, min_side=None, channels_pooled=False, spatial_dims=2, check_values=True, mask=None,
             mask_mode="mean") -> _Problem:
    """Checks the arguments and views x and y in the kernels' layout.

    ``spatial_dims``: 2 (the image is the last two axes besides the
    channel axis) or 3 (a volume, the last three).

    ``min_side``: (side, reason), a minimum image side other than the
    window's (MS-SSIM). ``channels_pooled``: the channel axis must be averaged
    and becomes the innermost batch axis, so each image's channels are
    consecutive planes. ``check_values``: warn about float NumPy inputs outside
    [-1, 1] without a data_range (:func:`cussim._params.warn_outside_unit_range`).
    ``mask`` (or the masks of ``numpy.ma`` inputs) and ``mask_mode``: checked
    by :mod:`cussim._masks`, the weights viewed in the kernels' layout.

    Everything but the arrays themselves is checked by :func:`_checked_layout`,
    from a cache keyed by the shapes, dtypes and options (never by data): a
    repeated call converts the arrays, checks where they are and views them.
    """
    x, y, mask = _masks.unmasked(x, y, mask)
    mask_mode = _masks.check_mask_mode(mask_mode, sample_covariance)
    x = _arrays.as_array(x, "x")
    y = _arrays.as_array(y, "y")
    _arrays.check_same_place(x, y, "y", "x")
    if data_range is None and check_values:
        warn_outside_unit_range(x, y)
    arguments = (x.shape, y.shape, x.dtype, y.dtype, data_range, win_size, sigma, window, K1, K2, padding,
                 sample_covariance, channel_axis, axis, reduce, min_side, channels_pooled, spatial_dims,
                 # (1, 2), (True, 2) and (1.0, 2) are equal keys: the types keep a bad axis from a good one's plan
                 tuple(map(type, axis)) if isinstance(axis, (tuple, list)) else None)
    try:
        layout = _cached_layout(*arguments)
    except TypeError:  # an unhashable argument, checked without the cache (or a check's TypeError, raised again)
        layout = _checked_layout(*arguments)
    if mask is not None:
        mask = _masks.in_layout(mask, x, layout)
    if y.shape != x.shape:
        y = _arrays.array_module(x).broadcast_to(y, x.shape)
    if not layout.keeps_order:
        x, y = x.transpose(layout.perm), y.transpose(layout.perm)
    return _Problem(x=x, y=y, layout=layout, xp=_arrays.array_module(x), mask=mask, mask_mode=mask_mode)


def _checked_layout(x_shape, y_shape, x_dtype, y_dtype, data_range, win_size, sigma, window, K1, K2, padding,
                    sample_covariance, channel_axis, axis, reduce, min_side, channels_pooled, spatial_dims,
                    axis_types):
    """_prepare's checks of shapes, dtypes and options: their :class:`_Layout`, or the exception naming the fix.

    ``axis_types`` (the types of axis's members) is only part of the cache's key.
    """
    _arrays.check_dtype(x_dtype, "x")
    if y_dtype != x_dtype:
        raise TypeError(f"y has dtype {y_dtype} but x has {x_dtype}; convert one to the other's dtype")
    ndim = len(x_shape)
    spatial_dims = check_spatial_dims(spatial_dims)
    if ndim < spatial_dims + (channel_axis is not None):
        raise ValueError(f"x has shape {x_shape}; images need {_reference.NUMBER_WORDS[spatial_dims]} spatial axes"
                         + (" besides channel_axis" if channel_axis is not None else ""))
    try:
        broadcast = np.broadcast_shapes(y_shape, x_shape)
    except ValueError:
        broadcast = None
    if broadcast != x_shape:
        raise ValueError(f"y has shape {y_shape}, which does not broadcast to x's shape {x_shape}; "
                         "the images must have the same dimensions")
    channel = None if channel_axis is None else _normalise_axis(channel_axis, ndim, "channel_axis")
    spatial = [a for a in range(ndim) if a != channel][-spatial_dims:]
    if data_range is None:
        data_range = INTEGER_RANGES.get(x_dtype, 1.0)
    params = ssim_params(win_size=win_size, sigma=sigma, window=window, K1=K1, K2=K2, padding=padding,
                         sample_covariance=sample_covariance, data_range=data_range, spatial_dims=spatial_dims)
    check_compute_range(params, _launch.compute_dtype(x_dtype))
    sides = [x_shape[a] for a in spatial]
    kind = "images" if spatial_dims == 2 else "volumes"
    if min_side is not None and any(n < m for n, m in zip(sides, _reference.per_axis(min_side[0], spatial_dims))):
        raise ValueError(f"x's {kind} are {'x'.join(map(str, sides))}; {min_side[1]}")
    if any(n < w for n, w in zip(sides, params.win_sizes)):
        raise ValueError(f"x's {kind} are {'x'.join(map(str, sides))}, smaller than the "
                         f"{'x'.join(map(str, params.win_sizes))} window; "
                         "use a smaller win_size, or set channel_axis if an image axis holds channels")
    if not reduce or axis is None:
        averaged = set(range(ndim)) if reduce else set(spatial)
    else:
        if not isinstance(axis, (numbers.Integral, tuple, list)):
            raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")
        axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
        averaged = [_normalise_axis(a, ndim, "axis") for a in axes]
        if len(set(averaged)) != len(averaged):
            raise ValueError(f"axis={axis!r} repeats an axis")
        averaged = set(averaged)
        if not set(spatial) <= averaged:
            raise ValueError(f"axis={axis!r} must include {'both' if spatial_dims == 2 else 'all'} spatial axes "
                             f"{tuple(spatial)}: SSIM is a mean over the image (axis=None averages everything)")
    kept = [a for a in range(ndim) if a not in averaged]
    batch = [a for a in range(ndim) if a in averaged and a not in spatial]
    if channels_pooled and channel in batch:
        batch = [a for a in batch if a != channel] + [channel]
    elif channels_pooled and channel is not None:
        raise ValueError(f"axis={axis!r} keeps channel_axis={channel_axis}, but this metric averages an image's "
                         "channels together; include the channel axis in axis")
    perm = tuple(kept + batch + spatial)
    return _Layout(params, perm, len(kept), tuple(x_shape[a] for a in perm), x_dtype)


# A raise is never cached, so bad arguments raise on every call.
_cached_layout = functools.lru_cache(maxsize=256, typed=True)(_checked_layout)


class Workspace:
    """Scratch buffers of the in-place gradient functions.

    Made by :func:`make_workspace` (SSIM and DSSIM) or
    :func:`cussim.make_ms_ssim_workspace` (MS-SSIM) for one image shape and
    set of options; passing it (with ``out`` and ``grad``) makes those calls
    allocate nothing. ``block_sums`` holds float64 per-tile sums (and MS-SSIM's
    per-image values and weights), ``grad_maps`` the compute-dtype partial
    maps (and MS-SSIM's downsampled images and gradients). The last element
    of ``block_sums`` counts a kernel's finished blocks (SSIM's forward;
    MS-SSIM's combine counts in the last 1 + images); cussim sets them to zero
    at the workspace's first call and every launch leaves them there.
    ``mask``: for masked calls whose mask is not of the compute dtype (bool,
    uint8, ...), the mask's weights converted to it, rewritten each call
    (None where the kernels read the caller's mask as it lies).
    ``host_totals``: on the host, in pinned memory, where a masked call on a GPU
    reads its total weights back (made at the workspace's first such call; not
    in ``nbytes``, which counts the device's buffers).
    """

    def __init__(self, block_sums, grad_maps, mask=None):
        self.block_sums = block_sums
        self.grad_maps = grad_maps
        self.mask = mask
        self.host_totals = None
        # How many of block_sums' last elements are block counters at zero (see _launch.forward's
        # ``finish`` and _launch.Combine): cussim zeroes a call's counters where they differ, after the
        # call's checks (_workspace_buffers).
        self._zero_counters = 0

    @property
    def nbytes(self) -> int:
        return int(self.block_sums.nbytes + self.grad_maps.nbytes + (0 if self.mask is None else self.mask.nbytes))

    def __repr__(self):
        return f"Workspace({self.nbytes} bytes, {_arrays.where(self.grad_maps)})"



def make_workspace(x, *, win_size=11, padding="same", channel_axis=None, spatial_dims=2, mask=None) -> Workspace:
    """The workspace for gradients of images shaped like ``x`` (allocated once, reused every step).

    ``spatial_dims=3`` for volumes, as in the functions that take it.
    ``mask``: the mask of the calls (or any of its shape and dtype; its values
    are not read) for a workspace of masked calls, which keeps their weight
    sums too, and for a mask of another dtype than the compute dtype (bool,
    uint8, float64 for float32 images) its weights converted.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> x = np.zeros((2, 3, 64, 64), np.float32)
    >>> cussim.make_workspace(x).nbytes
    295112
    >>> cussim.make_workspace(x, mask=np.ones((64, 64), np.float32)).nbytes
    295400
    >>> cussim.make_workspace(x, mask=np.ones((64, 64), bool)).nbytes  # and the weights as float32
    311784
    """
    problem = _prepare(x, x, data_range=None, win_size=win_size, sigma=1.5, window="gaussian", K1=0.01, K2=0.03,
                       padding=padding, sample_covariance=False, channel_axis=channel_axis, axis=None,
                       spatial_dims=spatial_dims, check_values=False)
    if mask is not None:
        weights = _masks.in_layout(_arrays.as_array(mask, "mask"), problem.x, problem.layout, check_values=False)
        workspace = _allocate_workspace(problem, problem.layout.masked_workspace_sizes)
        if weights.dtype != problem.layout.compute_dtype:
            with problem.device():
                workspace.mask = _arrays.empty(problem.xp, weights.shape, problem.layout.compute_dtype)
        return workspace
    return _allocate_workspace(problem, problem.layout.workspace_sizes)


def _allocate_workspace(problem: _Problem, sizes) -> Workspace:
    """A workspace of ``sizes`` = (float64 elements, compute-dtype elements) on x's device."""
    sums, maps = sizes
    with problem.device():
        return Workspace(_arrays.empty(problem.xp, (sums,), np.float64),
                         _arrays.empty(problem.xp, (maps,), problem.layout.compute_dtype))

def _check_workspace(workspace, problem: _Problem, sizes, maker: str, options) -> Workspace:
    """The caller's workspace, checked: from ``maker``, of ``sizes``, on x's device (overlaps: in _compute).

    ``options()``: the maker's arguments for these images, for the error's fix (formatted only then)."""
    if not isinstance(workspace, Workspace):
        raise TypeError(f"workspace must come from cussim.{maker}, got {type(workspace).__name__}")
    sums, maps = sizes
    ctype = problem.layout.compute_dtype
    _arrays.check_same_place(problem.x, workspace.grad_maps, "workspace", "x")
    if workspace.block_sums.size != sums or workspace.grad_maps.size != maps or workspace.grad_maps.dtype != ctype:
        raise ValueError(f"workspace does not fit these images; make one with cussim.{maker}(x, {options()})")
    return workspace


def _value_buffer(problem: _Problem, out):
    """The caller's ``out`` checked (or a new one)."""
    dtype = problem.layout.compute_dtype
    if out is None:
        with problem.device():
            out = _arrays.empty(problem.xp, problem.layout.value_shape, dtype)
    else:
        out = _arrays.as_array(out, "out")
        _arrays.check_output(out, "out", shape=problem.layout.value_shape, dtype=dtype, like=problem.x)
    return out


def _flattens(values) -> bool:
    """Whether the values have a 1-D view of one stride, the layout that the finishing kernels write."""
    return values.ndim <= 1 or values.flags.c_contiguous


def _reference_values(problem: _Problem, a, b, l1, want_gradient):
    """The float64 reference on NumPy inputs: (values, gradient in the kernels' layout or None)."""
    p = problem.params
    axes = tuple(range(problem.layout.kept, problem.x.ndim))
    kwargs = dict(axis=axes, crop=p.crops, K1=p.K1, K2=p.K2, padding=p.padding, data_range=p.data_range,
                  cov=p.cov, limit=problem.limit, spatial=p.spatial, mask=problem.mask, mask_mode=problem.mask_mode)
    taps = p.windows
    l1_value = l1_grad = 0.0
    if l1:  # the fused L1 term, only where it is asked for (it costs a float64 copy of the images)
        difference = problem.x.astype(np.float64) - problem.y.astype(np.float64)
        if problem.mask is None:
            l1_value = l1 * np.abs(difference).mean(axis=axes)
            share = 1.0 / problem.layout.counted_per_value
        else:  # sum(m |x - y|) / sum(m) (docs/spec.rst section 9)
            weights = _reference.mask_weights(problem.mask, difference.shape, p.spatial)
            mean, total = _reference.weighted_mean(np.abs(difference), weights, axes)
            l1_value = l1 * np.squeeze(mean, axis=axes)
            share = weights / total
        l1_grad = l1 * share * np.sign(difference) if want_gradient else 0.0
    if want_gradient:
        value, grad = _reference.ssim_with_gradient(problem.x, problem.y, taps, **kwargs)
        return a + b * value + l1_value, b * grad + l1_grad
    return a + b * _reference.ssim(problem.x, problem.y, taps, **kwargs) + l1_value, None


def _use_kernels(problem: _Problem) -> bool:
    """Whether the kernels compute this problem (else the float64 reference): masked ones too (SSIM's means and
    normalised maps, MS-SSIM's means, of planes and volumes)."""
    kernels = problem.xp is not np or _arrays.numpy_backend() == "emulator"
    if kernels and not problem.params.one_window:
        raise ValueError(f"win_size and sigma give each spatial axis its own window here "
                         f"({'x'.join(map(str, problem.params.win_sizes))} taps), which the kernels do not compute "
                         "(they are built for one window radius on every axis): pass NumPy arrays or CPU tensors "
                         "(the float64 path, with CUSSIM_NUMPY_BACKEND unset or 'reference'), or one win_size and "
                         "one sigma for every axis")
    return kernels


class _addressable:
    """A context giving the output ``view`` for the kernels, or, where they cannot address its layout, a new
    C-order buffer (holding view's values if ``keep``) copied into it afterwards: any output layout works on
    every path. (A class, not a generator: it costs a call on every launch.)"""

    __slots__ = ("view", "target")

    def __init__(self, problem: _Problem, view, keep=False, fits=_launch.addressable):
        self.view = self.target = view
        if view is not None and not fits(view):
            self.target = _arrays.empty(problem.xp, view.shape, view.dtype)
            if keep:
                self.target[...] = view

    def __enter__(self):
        return self.target

    def __exit__(self, kind, value, traceback):
        if kind is None and self.target is not self.view:
            self.view[...] = self.target


def _compute(problem: _Problem, out, *, grad, workspace, accumulate, check_workspace, reference, launch):
    """The steps of every mean (SSIM's and MS-SSIM's): outputs checked, then the reference or the kernels.

    ``check_workspace(workspace)`` returns the caller's workspace checked;
    ``reference(want_gradient)`` gives (values, gradient in the kernels'
    layout or None) on NumPy inputs; ``launch(flat_out, grad_view,
    workspace)`` queues the kernels on x's device (workspace may be None),
    with the problem's mask if it has one.
    """
    out = _value_buffer(problem, out)
    want_gradient = grad is not None
    grad_view = problem.permuted(grad) if want_gradient else None
    if workspace is not None:
        workspace = check_workspace(workspace)
    problem.check_apart({"out": out, "grad": grad, "workspace.block_sums": getattr(workspace, "block_sums", None),
                         "workspace.grad_maps": getattr(workspace, "grad_maps", None)})
    with problem.device(), _addressable(problem, out, fits=_flattens) as values:
        flat_out = values.reshape(-1)
        if problem.layout.planes == 0:  # an empty batch: the mean of nothing, and no launch with a zero-sized grid
            flat_out[...] = np.nan
        elif not _use_kernels(problem):
            value, gradient = reference(want_gradient)
            flat_out[...] = np.reshape(value, -1)
            if want_gradient:
                grad_view[...] = gradient + grad_view if accumulate else gradient
        else:
            with _addressable(problem, grad_view, keep=accumulate) as target:
                launch(flat_out, target, workspace)
    return out


def _mean(problem: _Problem, out, a, b, *, l1=0.0, grad=None, workspace=None, accumulate=False, options=None):
    """Values a + b * mean SSIM (+ l1 * mean |x - y|, "same" padding only), and with ``grad`` their
    summed gradient written or added into grad."""

    def launch(flat_out, grad_view, workspace):
        if problem.mask is not None:
            return _masked_mean_launch(problem, flat_out, grad_view, workspace, a, b, l1, accumulate)
        want_gradient = grad_view is not None
        counted = problem.layout.counted_per_value
        block_sums, grad_maps = _workspace_buffers(problem, workspace, problem.layout.workspace_sizes, want_gradient)
        # With the L1 term the block sums hold b * S + l1 * |x - y| per pixel, so the finish scales by 1.
        launcher = problem.layout.launcher
        launcher.forward(problem.x, problem.y, problem.params, block_sums=block_sums, grad_maps=grad_maps,
                         weight=b / counted, sum_scale=b, l1=l1 * problem.params.data_range,
                         finish=(flat_out, counted, a, 1.0 if l1 else b))
        if want_gradient:
            launcher.backward(problem.x, problem.y, grad_maps, grad_view, problem.params, accumulate=accumulate,
                              l1=l1 / counted)

    sizes = problem.layout.workspace_sizes if problem.mask is None else problem.layout.masked_workspace_sizes
    return _compute(
        problem, out, grad=grad, workspace=workspace, accumulate=accumulate,
        check_workspace=lambda ws: _check_workspace(ws, problem, sizes, "make_workspace", options),
        reference=lambda want_gradient: _reference_values(problem, a, b, l1, want_gradient), launch=launch)


def _masked_mean_launch(problem: _Problem, flat_out, grad_view, workspace, a, b, l1, accumulate):
    """:func:`_mean`'s kernels for a mask (docs/spec.rst section 9; the normalised map and partial maps for
    mask_mode="normalized"): the forward sums m S
    (m (b S + l1 |x - y|) with the L1 term) and m, its last block writes a + b * sum(m S) / sum(m), each
    result's total weight and each plane's 1 / total; the backward scales each plane by that. Then the one
    host synchronisation of a masked call: the totals, read back to refuse a result of weight 0 (or a bad
    weight, which makes its total NaN) as the reference does."""
    layout = problem.layout
    want_gradient = grad_view is not None
    mask = _kernel_mask(problem, workspace)
    sums = layout.weighted_sums
    block_sums, grad_maps = _workspace_buffers(problem, workspace, layout.masked_workspace_sizes, want_gradient)
    launcher = layout.launcher
    launcher.forward(problem.x, problem.y, problem.params, block_sums=block_sums, grad_maps=grad_maps,
                     weight=b, sum_scale=b, l1=l1 * problem.params.data_range,
                     finish=(flat_out, layout.counted_per_value, a, 1.0 if l1 else b), mask=mask,
                     mask_mode=problem.mask_mode)
    if want_gradient:
        launcher.backward(problem.x, problem.y, grad_maps, grad_view, problem.params, accumulate=accumulate,
                          l1=l1, mask=mask, mask_mode=problem.mask_mode, plane_weights=sums.plane_scales(block_sums))
    _masks.check_kernel_totals(host_totals(sums.totals(block_sums, flat_out.size), workspace), layout.value_shape)


def host_totals(totals, workspace):
    """A masked call's total weights (float64, contiguous) on the host: with a workspace, into its pinned
    ``host_totals`` (made at its first use, or when too small), so that a warm in-place call allocates no host
    array either; else a new array (NumPy totals: themselves)."""
    if workspace is None or _arrays.is_numpy(totals):
        return _arrays.to_host(totals)
    if workspace.host_totals is None or workspace.host_totals.size < totals.size:
        workspace.host_totals = _arrays.pinned_empty(totals, (totals.size,), np.float64)
    return _arrays.to_host(totals, workspace.host_totals[: totals.size].reshape(totals.shape))


def _kernel_mask(problem: _Problem, workspace=None):
    """The problem's mask as the kernels read it: the compute dtype (a float32 mask for float32 images is
    read as it lies; another dtype is converted into ``workspace.mask`` where that has the mask's shape,
    else into a new array of the mask's own size)."""
    mask, dtype = problem.mask, problem.layout.compute_dtype
    if mask.dtype == dtype:
        return mask
    held = getattr(workspace, "mask", None)
    if held is None or held.shape != mask.shape:
        return mask.astype(dtype)
    held[...] = mask
    return held


def _workspace_buffers(problem: _Problem, workspace, sizes, want_maps: bool, counters=1):
    """(block sums, compute-dtype buffer or None) of a launch: the workspace's, its ``counters`` block counters
    (the sums' last elements) zeroed at its first use with as many, or new ones of ``sizes``, the counters
    zero."""
    if workspace is None:
        sums, maps = sizes
        return (_launch.block_sums(problem.xp, sums, counters),
                _arrays.empty(problem.xp, (maps,), problem.layout.compute_dtype) if want_maps else None)
    if workspace._zero_counters != counters:  # a launch leaves its own counters at zero, not another's
        _launch.zero_block_counters(workspace.block_sums, counters)
        workspace._zero_counters = counters
    return workspace.block_sums, workspace.grad_maps if want_maps else None


def _gradient_buffer(problem: _Problem, grad, accumulate):
    dtype = problem.layout.gradient_dtype
    if grad is None:
        if accumulate:
            raise ValueError("accumulate=True adds into grad: pass the grad array to add into")
        with problem.device():
            return _arrays.empty(problem.xp, problem.layout.original_shape, dtype)
    grad = _arrays.as_array(grad, "grad")
    _arrays.check_output(grad, "grad", shape=problem.layout.original_shape, dtype=dtype, like=problem.x)
    return grad


# The images' part of the parameter docs, shared with the MS-SSIM functions.
DOC_IMAGES = """
    Parameters
    ----------
    x, y : array
        Images with the plane in the last two axes (or the last two besides
        ``channel_axis``); y, the reference, broadcasts to x's shape. Dtypes:
        float16, float32, float64, uint8, uint16 (float64 computes in float64,
        the rest in float32).
"""
_DOC_PARAMETERS = DOC_IMAGES + """    data_range : float, optional
        Value range L of the images: the dtype's range for integers (255,
        65535); 1 for floats, the [0, 1] convention: pass it for floats in any
        other range (255 for [0, 255], 2 for [-1, 1]). Never guessed from the
        values.
    win_size : int or tuple of ints
        Odd window size, 3 to 15 (default 11); or one per spatial axis, the
        first spatial axis first (``(11, 7)``: 11 taps along H, 7 along W, as
        torchmetrics' ``kernel_size``).
    sigma : float or tuple of floats
        Standard deviation of the Gaussian window (default 1.5), or one per
        spatial axis. A window per axis (sizes or sigmas that differ) is
        computed on NumPy inputs (the float64 path) only; the kernels refuse
        it.
    window : {"gaussian", "uniform"}
    K1, K2 : float
        Constants of the formula (defaults 0.01, 0.03).
    padding : {"same", "valid", "reflect"}
        Zeros outside the image (map H x W, the default); only the interior
        ((H-2r) x (W-2r)); or skimage's half-sample reflection, with the mean
        over the map cropped by (win_size-1)//2 (each axis' own, per axis).
    sample_covariance : bool
        Covariance factor NP/(NP-1) (skimage's default) instead of 1, with NP
        the window's pixel count (win_size ** spatial_dims, or the product of
        the sizes per axis).
    channel_axis : int, optional
        An axis holding channels (e.g. -1 for H x W x C), handled by strides.
    spatial_dims : {2, 3}
        2 (the default): the image is the last two axes (besides
        ``channel_axis``); 3: a D x H x W volume, the last three, filtered by
        the window along each of them.
""" + """    mask : array, optional
        Pixel weights (docs/spec.rst section 9): bool, or real numbers >= 0,
        with the images' spatial shape; other axes broadcast against x's
        (``(N, 1, H, W)``: one mask per image). The masks of ``numpy.ma``
        inputs count too (a masked pixel weighs 0).
    mask_mode : {"mean", "normalized"}
        "mean" weights the mean of the unchanged map (``numpy.average``);
        "normalized" also keeps pixels of weight 0 out of every window
        (normalised convolution; the map is 0 there), population
        covariance only.
"""


def ssim(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03, padding="same",
         sample_covariance=False, channel_axis=None, axis=None, out=None, spatial_dims=2, mask=None,
         mask_mode="mean"):
    """Mean structural similarity of x against y.
    {parameters}    axis : int or tuple of ints, optional
        Axes to average, NumPy-style; they must include the spatial axes. None
        (the default) averages everything into a 0-d array; ``axis=(1, 2, 3)``
        gives one value per image of an N x C x H x W batch.
    out : array, optional
        Where to write the result (compute dtype, the result's shape).

    Returns
    -------
    array
        The mean SSIM, a 0-d array or one value per kept index; a CuPy array
        for GPU inputs, a NumPy array for NumPy inputs.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((2, 32, 32), dtype=np.float32)
    >>> y = np.clip(x + 0.1 * rng.standard_normal(x.shape, dtype=np.float32), 0, 1)
    >>> print(np.round(cussim.ssim(x, y, axis=(1, 2)), 4))
    [0.9506 0.9548]
    >>> print(np.round(cussim.ssim(x, y, axis=(1, 2), win_size=(11, 7), sigma=(1.5, 0.8)), 4))  # one per axis
    [0.9468 0.9514]
    """
    problem = _prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1, K2=K2,
                       padding=padding, sample_covariance=sample_covariance, channel_axis=channel_axis, axis=axis,
                       spatial_dims=spatial_dims, mask=mask, mask_mode=mask_mode)
    return _mean(problem, out, 0.0, 1.0)


def dssim(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03, padding="same",
          sample_covariance=False, channel_axis=None, axis=None, out=None, spatial_dims=2, mask=None,
          mask_mode="mean"):
    """Structural dissimilarity (1 - SSIM) / 2, with the arguments of :func:`ssim`.

    Half of 3DGS's SSIM loss term, which is 1 - SSIM: for 3DGS's loss use
    :func:`l1_dssim_loss`, or ``1 - ssim(x, y)``.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> x = np.linspace(0, 1, 400, dtype=np.float32).reshape(20, 20)
    >>> float(cussim.dssim(x, x)), round(float(cussim.dssim(x, 1 - x)), 4)
    (0.0, 0.5895)
    """
    problem = _prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1, K2=K2,
                       padding=padding, sample_covariance=sample_covariance, channel_axis=channel_axis, axis=axis,
                       spatial_dims=spatial_dims, mask=mask, mask_mode=mask_mode)
    return _mean(problem, out, 0.5, -0.5)


def ssim_map(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03, padding="same",
             sample_covariance=False, channel_axis=None, out=None, spatial_dims=2, mask=None, mask_mode="mean"):
    """The SSIM map: one value per window position, x's shape (the plane shrinks for "valid").
    {parameters}    out : array, optional
        Where to write the map (compute dtype, the map's shape, any strides).

    A mask changes the map only with ``mask_mode="normalized"`` (the map of
    normalised convolution, 0 where the weight is 0); with ``"mean"`` it
    would weigh only a mean, so ``ssim_map`` refuses it.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> x = np.linspace(0, 1, 24 * 30, dtype=np.float32).reshape(24, 30)
    >>> cussim.ssim_map(x, x, padding="valid").shape
    (14, 20)
    """
    problem = _prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1, K2=K2,
                       padding=padding, sample_covariance=sample_covariance, channel_axis=channel_axis, axis=None,
                       reduce=False, spatial_dims=spatial_dims, mask=mask, mask_mode=mask_mode)
    _masks.check_map_mask(problem.mask, problem.mask_mode)
    dtype = problem.layout.compute_dtype
    map_shape = problem.params.map_shape(problem.x.shape)
    original_shape = tuple(map_shape[i] for i in problem.layout.inverse_perm)
    if out is None:
        with problem.device():
            result = problem.original(_arrays.empty(problem.xp, map_shape, dtype))
    else:
        result = _arrays.as_array(out, "out")
        _arrays.check_output(result, "out", shape=original_shape, dtype=dtype, like=problem.x)
        problem.check_apart({"out": result})
    if problem.layout.planes == 0:
        return result
    if not _use_kernels(problem):
        p = problem.params
        S = _reference.ssim_map(problem.x, problem.y, p.windows, K1=p.K1, K2=p.K2, padding=p.padding,
                                data_range=p.data_range, cov=p.cov, limit=problem.limit, spatial=p.spatial,
                                mask=problem.mask, mask_mode=problem.mask_mode)
        problem.permuted(result)[...] = S
        return result
    with problem.device(), _addressable(problem, problem.permuted(result)) as target:
        masked = {} if problem.mask is None else dict(mask=_kernel_mask(problem), mask_mode=problem.mask_mode)
        problem.layout.launcher.forward(problem.x, problem.y, problem.params, map_out=target, **masked)
    return result


def _ssim_map_gradient(x, y, map_weights, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01,
                       K2=0.03, padding="same", sample_covariance=False, channel_axis=None, spatial_dims=2):
    """d sum(map_weights * ssim_map(x, y)) / dx, x's shape: the map's vector-Jacobian product (cussim.torch's
    ssim_map differentiates through it). ``map_weights``: the map's shape, any strides (a 0 stride too).

    The exact gradient of docs/spec.rst section 4 with every map pixel
    weighted by its own g (no crop): the float64 reference on NumPy inputs;
    on the kernels, the forward's partial maps (weight 1) times the weights,
    then the backward.
    """
    problem = _prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1, K2=K2,
                       padding=padding, sample_covariance=sample_covariance, channel_axis=channel_axis, axis=None,
                       reduce=False, spatial_dims=spatial_dims)
    params = dataclasses.replace(problem.params, crops=(0,) * problem.params.spatial)  # every map pixel has its weight
    map_shape = params.map_shape(problem.x.shape)
    weights = problem.permuted(_arrays.as_array(map_weights, "map_weights"))
    if weights.shape != map_shape:
        raise ValueError(f"map_weights has shape {weights.shape}; it must have the map's, {map_shape}")
    grad = _gradient_buffer(problem, None, False)
    if problem.layout.planes == 0:
        return grad
    grad_view = problem.permuted(grad)
    if not _use_kernels(problem):
        taps = params.windows
        _, (xs, ys, partials) = _reference._map_and_partials(
            problem.x, problem.y, taps, K1=params.K1, K2=params.K2, padding=params.padding,
            data_range=params.data_range, cov=params.cov, want_partials=True, limit=problem.limit,
            spatial=params.spatial)
        grad_view[...] = _reference._gradient_from_partials(xs, ys, partials, np.asarray(weights, np.float64), taps,
                                                            params.padding, params.spatial) / params.data_range
        return grad
    with problem.device(), _addressable(problem, grad_view) as target:
        grad_maps = _arrays.empty(problem.xp, (3,) + map_shape, problem.layout.compute_dtype)
        problem.layout.launcher.forward(problem.x, problem.y, params, grad_maps=grad_maps.reshape(-1), weight=1.0)
        grad_maps *= weights  # the weights of the map's pixels: one elementwise product
        problem.layout.launcher.backward(problem.x, problem.y, grad_maps.reshape(-1), target, params)
    return grad


def _with_gradient(a, b, x, y, *, l1=0.0, out, grad, workspace, accumulate, **kwargs):
    problem = _prepare(x, y, **kwargs)
    grad = _gradient_buffer(problem, grad, accumulate)

    def options():  # make_workspace's arguments for these images, formatted only for a workspace's error
        given = ", ".join(f"{k}={kwargs[k]!r}" for k in ("win_size", "padding", "channel_axis", "spatial_dims"))
        return given if problem.mask is None else given + ", mask=mask"

    value = _mean(problem, out, a, b, l1=l1, grad=grad, workspace=workspace, accumulate=accumulate, options=options)
    return value, grad


def ssim_with_gradient(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03,
                       padding="same", sample_covariance=False, channel_axis=None, axis=None, out=None, grad=None,
                       workspace=None, accumulate=False, spatial_dims=2, mask=None, mask_mode="mean"):
    """Mean SSIM and its exact gradient with respect to x: ``(value, d sum(value) / dx)``.
    {parameters}    axis, out : as in :func:`ssim`.
    grad : array, optional
        Where to write the gradient (x's shape; x's dtype for floats, float32
        for integer images).
    workspace : Workspace, optional
        From :func:`make_workspace`; with ``out`` and ``grad`` too, the call
        allocates nothing.
    accumulate : bool
        Add into ``grad`` instead of overwriting it (sums of losses).

    Examples
    --------
    >>> import numpy as np, cussim
    >>> rng = np.random.default_rng(1)
    >>> x = rng.random((16, 16)); y = rng.random((16, 16))
    >>> value, grad = cussim.ssim_with_gradient(x, y, win_size=5)
    >>> h = 1e-6; e = np.zeros_like(x); e[7, 9] = h
    >>> numeric = (cussim.ssim(x + e, y, win_size=5) - cussim.ssim(x - e, y, win_size=5)) / (2 * h)
    >>> bool(abs(numeric - grad[7, 9]) < 1e-8)
    True
    """
    return _with_gradient(0.0, 1.0, x, y, out=out, grad=grad, workspace=workspace, accumulate=accumulate,
                          data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1, K2=K2,
                          padding=padding, sample_covariance=sample_covariance, channel_axis=channel_axis,
                          axis=axis, spatial_dims=spatial_dims, mask=mask, mask_mode=mask_mode)


def dssim_with_gradient(x, y, *, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03,
                        padding="same", sample_covariance=False, channel_axis=None, axis=None, out=None, grad=None,
                        workspace=None, accumulate=False, spatial_dims=2, mask=None, mask_mode="mean"):
    """DSSIM = (1 - SSIM) / 2 and its exact gradient with respect to x, as :func:`ssim_with_gradient`.

    The training-loop form: with preallocated ``out``, ``grad`` and
    ``workspace`` nothing is allocated per step. DSSIM is half of 3DGS's SSIM
    term 1 - SSIM (and so is its gradient): 3DGS's loss is
    :func:`l1_dssim_loss_with_gradient`.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> x = np.random.default_rng(2).random((3, 32, 32)).astype(np.float32)
    >>> y = np.clip(x + 0.05, 0, 1)
    >>> out, grad = np.empty((), np.float32), np.empty_like(x)
    >>> ws = cussim.make_workspace(x)
    >>> value, g = cussim.dssim_with_gradient(x, y, out=out, grad=grad, workspace=ws)
    >>> value is out and g is grad, round(float(out), 4)
    (True, 0.0026)
    """
    return _with_gradient(0.5, -0.5, x, y, out=out, grad=grad, workspace=workspace, accumulate=accumulate,
                          data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1, K2=K2,
                          padding=padding, sample_covariance=sample_covariance, channel_axis=channel_axis,
                          axis=axis, spatial_dims=spatial_dims, mask=mask, mask_mode=mask_mode)


def _ssim_share(weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight <= 1:
        raise ValueError(f"weight must be a number from 0 to 1 (the share of 1 - SSIM in the loss), got {weight!r}")
    return float(weight)


def l1_dssim_loss(x, y, *, weight=0.2, data_range=None, win_size=11, sigma=1.5, window="gaussian", K1=0.01,
                  K2=0.03, sample_covariance=False, channel_axis=None, axis=None, out=None, spatial_dims=2, mask=None,
                  mask_mode="mean"):
    """The 3D Gaussian Splatting loss ``(1 - weight) * mean|x - y| + weight * (1 - SSIM)``, fused.

    One forward pass computes both terms (zero padding, ``"same"``, as 3DGS).
    The L1 term is in the images' own units (3DGS images are in [0, 1]);
    with a ``mask`` it is ``sum(m |x - y|) / sum(m)``, the weights of the
    SSIM term's mean. Other arguments as in :func:`ssim`.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> x = np.random.default_rng(3).random((3, 32, 32))
    >>> y = np.clip(x + 0.1, 0, 1)
    >>> l1 = np.abs(x - y).mean()
    >>> bool(np.isclose(cussim.l1_dssim_loss(x, y, weight=0.2), 0.8 * l1 + 0.2 * (1 - cussim.ssim(x, y))))
    True
    """
    share = _ssim_share(weight)
    problem = _prepare(x, y, data_range=data_range, win_size=win_size, sigma=sigma, window=window, K1=K1, K2=K2,
                       padding="same", sample_covariance=sample_covariance, channel_axis=channel_axis, axis=axis,
                       spatial_dims=spatial_dims, mask=mask, mask_mode=mask_mode)
    return _mean(problem, out, share, -share, l1=1.0 - share)


def l1_dssim_loss_with_gradient(x, y, *, weight=0.2, data_range=None, win_size=11, sigma=1.5, window="gaussian",
                                K1=0.01, K2=0.03, sample_covariance=False, channel_axis=None, axis=None, out=None,
                                grad=None, workspace=None, accumulate=False, spatial_dims=2, mask=None,
                                mask_mode="mean"):
    """:func:`l1_dssim_loss` and its exact gradient with respect to x, in one forward and one backward pass.

    ``out``, ``grad``, ``workspace`` (from :func:`make_workspace`) and
    ``accumulate`` as in :func:`ssim_with_gradient`. The L1 term's gradient
    is ``(1 - weight) * sign(x - y) / n`` (0 where x == y), with a mask
    ``(1 - weight) * m * sign(x - y) / sum(m)``.

    Examples
    --------
    >>> import numpy as np, cussim
    >>> x = np.random.default_rng(4).random((2, 24, 24)); y = x[::-1].copy()
    >>> value, grad = cussim.l1_dssim_loss_with_gradient(x, y)
    >>> h = 1e-6; e = np.zeros_like(x); e[1, 5, 7] = h
    >>> numeric = (cussim.l1_dssim_loss(x + e, y) - cussim.l1_dssim_loss(x - e, y)) / (2 * h)
    >>> bool(abs(numeric - grad[1, 5, 7]) < 1e-8)
    True
    """
    share = _ssim_share(weight)
    return _with_gradient(share, -share, x, y, l1=1.0 - share, out=out, grad=grad, workspace=workspace,
                          accumulate=accumulate, data_range=data_range, win_size=win_size, sigma=sigma,
                          window=window, K1=K1, K2=K2, padding="same", sample_covariance=sample_covariance,
                          channel_axis=channel_axis, axis=axis, spatial_dims=spatial_dims, mask=mask,
                          mask_mode=mask_mode)


for _function in (ssim, ssim_map, ssim_with_gradient):
    _function.__doc__ = _function.__doc__.replace("{parameters}", _DOC_PARAMETERS)
