"""cussim.torch's autograd functions and loss modules (:mod:`cussim.torch` exports them; its
drop-ins, ``_fused_ssim`` and ``pytorch_msssim``, are written over them).
"""

from __future__ import annotations

import contextlib
import numbers

import numpy as np
import torch

import cussim
from cussim import _masks, _reference
from cussim._ssim import _ssim_map_gradient

# name: (value function, value-and-gradient function) of cussim
_METRICS = {
    "ssim": (cussim.ssim, cussim.ssim_with_gradient),
    "dssim": (cussim.dssim, cussim.dssim_with_gradient),
    "ms_ssim": (cussim.ms_ssim, cussim.ms_ssim_with_gradient),
    "l1_dssim_loss": (cussim.l1_dssim_loss, cussim.l1_dssim_loss_with_gradient),
}
_NOT_OPTIONS = ("out", "grad", "workspace", "accumulate")


def _disable_tracing(function):
    """Excluded from torch.compile's tracing (cussim's calls are opaque to it): a graph break, not an error."""
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(function) if disable else function


def _as_array(tensor):
    """A CuPy (CUDA) or NumPy (CPU) view of the tensor's data: no copy."""
    tensor = tensor.detach()
    if tensor.is_cuda:
        import cupy

        return cupy.from_dlpack(tensor)
    return tensor.numpy()


def _cuda_context(device):
    """CuPy on the tensor's device and PyTorch's current stream there."""
    import cupy

    stack = contextlib.ExitStack()
    stack.enter_context(cupy.cuda.Device(device.index))
    stack.enter_context(cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index))
    return stack


def _context(tensor):
    """Where cussim computes on the tensor: CuPy on its device and stream (CUDA), nothing to enter (CPU)."""
    return _cuda_context(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _computable(tensor, name):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype in (torch.float16, torch.bfloat16):  # the gradient in float32, rounded once by autograd
        return tensor.float()
    return tensor


def _value_dtype(tensor):
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _value_shapes(x, axis):
    """(x's shape with the averaged axes as 1, the same without them): the values' shapes for ``axis``.

    For ``axis=None``, both are (): one 0-d value. cussim checks ``axis`` itself.
    """
    if axis is None:
        return (), ()
    axes = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    averaged = {int(a) % x.ndim for a in axes if isinstance(a, numbers.Integral)}
    kept = tuple(1 if a in averaged else n for a, n in enumerate(x.shape))
    return kept, tuple(n for a, n in enumerate(x.shape) if a not in averaged)


def _evaluate(metric, x, y, mask, options, want_gradient):
    """(values, d sum(values) / d x or None) from cussim, on x's device; the values keep averaged axes as 1."""
    value_fn, gradient_fn = _METRICS[metric]
    kept_shape, value_shape = _value_shapes(x, options.get("axis"))
    out = torch.empty(kept_shape, dtype=_value_dtype(x), device=x.device)
    grad = torch.empty_like(x, memory_format=torch.preserve_format) if want_gradient else None
    if mask is not None:
        options = dict(options, mask=_as_array(mask))
    with _context(x):
        if want_gradient:
            gradient_fn(_as_array(x), _as_array(y), out=_as_array(out.view(value_shape)), grad=_as_array(grad),
                        **options)
        else:
            value_fn(_as_array(x), _as_array(y), out=_as_array(out.view(value_shape)), **options)
    return out, grad


_MAP_OPTIONS = ("data_range", "win_size", "sigma", "window", "K1", "K2", "padding", "sample_covariance",
                "channel_axis", "spatial_dims")


def _spatial_axes(x, options):
    channel = options.get("channel_axis")
    channel = None if channel is None else channel % x.ndim
    return [a for a in range(x.ndim) if a != channel][-options.get("spatial_dims", 2):]


def _aligned(mask, x, spatial):
    """The mask viewed with x's number of axes, as cussim reads it."""
    return mask.view(_masks.aligned_shape(mask.shape, x.shape, spatial))


def _mask_gradient(metric, x, y, mask, value, options):
    """d value / d mask in mask_mode="mean" (docs/spec.rst section 9) per unit upstream gradient, in x's
    shape: (V_q - V) / sum(m) at each map pixel q that the mean counts, V_q the per-pixel value of V
    (``value``, the averaged axes kept as 1); 0 for pixels the map or the mean crops away."""
    map_options = {k: v for k, v in options.items() if k in _MAP_OPTIONS}
    if metric == "l1_dssim_loss":
        map_options["padding"] = "same"
    with _cuda_context(x.device) if x.is_cuda else contextlib.nullcontext():
        S = torch.as_tensor(cussim.ssim_map(_as_array(x), _as_array(y), **map_options), device=x.device)
    S = S.to(value.dtype)
    if metric == "ssim":
        per_pixel = S
    elif metric == "dssim":
        per_pixel = (1 - S) / 2
    else:  # the 3DGS loss: its SSIM term and its L1 term (in the images' units), as cussim weights them
        share = float(options.get("weight", 0.2))
        per_pixel = share * (1 - S) + (1 - share) * (x - y).abs().to(value.dtype)
    spatial = _spatial_axes(x, options)
    padding = map_options.get("padding", "same")
    sizes = _reference.per_axis(options.get("win_size", 11), len(spatial))
    # "valid" crops the map, "reflect" the mean, by each axis' radius
    borders = dict(zip(spatial, (0 if padding == "same" else (w - 1) // 2 for w in sizes)))
    counted = tuple(slice(borders[a], n - borders[a]) if a in borders else slice(None) for a, n in enumerate(x.shape))
    in_map = counted if padding != "valid" else tuple(slice(None) for _ in x.shape)
    weights = _aligned(mask, x, spatial).expand(x.shape)[counted].to(value.dtype)
    axis = options.get("axis")
    averaged = tuple(range(x.ndim)) if axis is None else tuple(
        a % x.ndim for a in (axis if isinstance(axis, (tuple, list)) else (axis,)))
    total = weights.sum(dim=averaged, keepdim=True)
    unit = torch.zeros(x.shape, dtype=value.dtype, device=x.device)
    unit[counted] = (per_pixel[in_map] - value.reshape(value.shape if value.ndim else (1,) * x.ndim)) / total
    return unit


class _Metric(torch.autograd.Function):
    """One cussim metric as an autograd Function: both gradients computed in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, x, y, mask, metric, options, recording):
        # ``recording``: grad mode was on at the call (forward itself runs with it off)
        want_x, want_y = recording and ctx.needs_input_grad[0], recording and ctx.needs_input_grad[1]
        value, grad_x = _evaluate(metric, x, y, mask, options, want_x)
        grad_y = grad_mask = None
        if want_y:  # the roles exchanged: y in x's shape first, its gradient summed back to y's shape
            _, grad_y = _evaluate(metric, y.expand(x.shape), x, mask, options, True)
            grad_y = grad_y.sum_to_size(y.shape) if y.shape != x.shape else grad_y
        if recording and ctx.needs_input_grad[2]:  # per unit upstream gradient, in x's shape
            grad_mask = _mask_gradient(metric, x, y, mask, value, options)
        ctx.save_for_backward(grad_x, grad_y, grad_mask)
        ctx.metric, ctx.inputs = metric, (x, y)  # for _NoSecondDerivative only (no in-place check on them)
        ctx.mask_shape = None if mask is None else (tuple(_aligned(mask, x, _spatial_axes(x, options)).shape),
                                                    mask.shape)
        return value

    @staticmethod
    def backward(ctx, grad_output):
        grad_x, grad_y, grad_mask = ctx.saved_tensors
        grads = [None if g is None else g * grad_output.to(g.dtype) for g in (grad_x, grad_y)]
        if grad_mask is not None:  # each result's upstream gradient over its pixels, summed to the mask's shape
            aligned, shape = ctx.mask_shape
            grads.append((grad_mask * grad_output.to(grad_mask.dtype)).sum_to_size(aligned).view(shape))
        else:
            grads.append(None)
        if torch.is_grad_enabled():  # create_graph=True: a second backward must fail, never be silently wrong
            grads = [None if g is None else _NoSecondDerivative.apply(g, *ctx.inputs, ctx.metric) for g in grads]
        return (*grads, None, None, None)


class _NoSecondDerivative(torch.autograd.Function):
    """A first derivative passed through unchanged, tied to x and y so that differentiating it raises."""

    @staticmethod
    def forward(ctx, gradient, x, y, metric):
        ctx.metric = metric
        return gradient.view_as(gradient)

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise RuntimeError(f"cussim.torch.{ctx.metric} has no second derivative: differentiating its gradient "
                           "(create_graph=True then a second backward, e.g. a gradient penalty) is not supported")


def _checked(x, y, options):
    """x and y as cussim computes them (float16 and bfloat16 as float32), on one device, and the options with
    PyTorch's layout defaults."""
    x, y = _computable(x, "x"), _computable(y, "y")
    options = dict(options)
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"x is on {x.device}; cussim.torch takes CPU or CUDA tensors (move them with .cuda())")
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} and y on {y.device}; put both on one device")
    if y.dtype != x.dtype:
        raise TypeError(f"y has dtype {y.dtype} but x has {x.dtype}; convert one to the other's dtype")
    if x.ndim in (4, 5):  # PyTorch's (N, C, H, W) and (N, C, D, H, W)
        options.setdefault("channel_axis", 1)
    if x.ndim == 5:
        options.setdefault("spatial_dims", 3)
    return x, y, options


def _apply(metric, x, y, options):
    for name in _NOT_OPTIONS:
        if name in options:
            raise TypeError(f"cussim.torch.{metric} takes no {name!r}: it returns its values as a new tensor "
                            f"(cussim.{metric} on CuPy or NumPy arrays takes {name})")
    options = dict(options)
    mask = options.pop("mask", None)
    x, y, options = _checked(x, y, options)
    mask = _checked_mask(metric, mask, x, options)
    if options.get("axis") is None:
        return _Metric.apply(x, y, mask, metric, options, torch.is_grad_enabled())
    # one value per kept index: the incoming gradient scales each image's gradient, so a y that broadcasts
    # is expanded here and autograd sums its gradient after the scaling (cussim names a y that cannot)
    with contextlib.suppress(RuntimeError):
        y = y.expand(x.shape)
    _, value_shape = _value_shapes(x, options["axis"])
    return _Metric.apply(x, y, mask, metric, options, torch.is_grad_enabled()).view(value_shape)


def _checked_mask(metric, mask, x, options):
    """The mask tensor as cussim takes it (float16 and bfloat16 as float32), or the error naming the fix."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.device != x.device:
        raise ValueError(f"mask is on {mask.device} and x on {x.device}; put them on one device")
    if mask.requires_grad and torch.is_grad_enabled():
        if options.get("mask_mode", "mean") == "normalized":
            raise ValueError("mask requires grad, but mask_mode='normalized' has no gradient with respect to the "
                             "mask: pass mask.detach() (or mask_mode='mean')")
        if metric == "ms_ssim":
            raise ValueError("mask requires grad, but ms_ssim has no gradient with respect to the mask: pass "
                             "mask.detach()")
    return mask.float() if mask.dtype in (torch.float16, torch.bfloat16) else mask


@_disable_tracing
def ssim(x, y, **options):
    """Mean SSIM of x against y, differentiable in x and y (options as :func:`cussim.ssim`).

    >>> import torch, cussim.torch as ct
    >>> x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    >>> float(ct.ssim(x, x))
    1.0
    """
    return _apply("ssim", x, y, options)


@_disable_tracing
def dssim(x, y, **options):
    """Mean DSSIM, (1 - SSIM) / 2, differentiable in x and y (options as :func:`cussim.dssim`).

    Half of 3DGS's SSIM loss term 1 - SSIM: use ``1 - ssim(x, y)`` or
    :func:`l1_dssim_loss` for 3DGS's loss.

    >>> import torch, cussim.torch as ct
    >>> x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    >>> float(ct.dssim(x, x))
    0.0
    """
    return _apply("dssim", x, y, options)


@_disable_tracing
def ms_ssim(x, y, **options):
    """Mean MS-SSIM, differentiable in x and y (options as :func:`cussim.ms_ssim`, e.g. ``variant``).

    >>> import torch, cussim.torch as ct
    >>> x = torch.rand(1, 3, 180, 180, dtype=torch.float64)
    >>> round(float(ct.ms_ssim(x, x)), 12)
    1.0
    """
    return _apply("ms_ssim", x, y, options)


class _Map(torch.autograd.Function):
    """The SSIM map as an autograd Function: the map in forward; in backward, the map's vector-Jacobian product
    with the incoming gradient (one weight per map pixel), for x and for y (the map is symmetric in them; y has
    x's shape here)."""

    @staticmethod
    def forward(ctx, x, y, options):
        with _context(x):
            values = cussim.ssim_map(_as_array(x), _as_array(y), **options)
        ctx.save_for_backward(x, y)
        ctx.options = options
        return _as_tensor(values)

    @staticmethod
    def backward(ctx, grad_output):
        x, y = ctx.saved_tensors
        grads = [None, None]
        for k, (a, b) in enumerate(((x, y), (y, x))):
            if ctx.needs_input_grad[k]:
                with _context(a):
                    grads[k] = _as_tensor(_ssim_map_gradient(_as_array(a), _as_array(b), _as_array(grad_output),
                                                             **ctx.options))
        if torch.is_grad_enabled():  # create_graph=True: a second backward must fail, never be silently wrong
            grads = [None if g is None else _NoSecondDerivative.apply(g, x, y, "ssim_map") for g in grads]
        return (*grads, None)


def _as_tensor(array):
    """A tensor viewing cussim's result (NumPy or CuPy): no copy."""
    return torch.from_numpy(array) if isinstance(array, np.ndarray) else torch.from_dlpack(array)


@_disable_tracing
def ssim_map(x, y, **options):
    """The SSIM map, differentiable in x and y (options as :func:`cussim.ssim_map`): torchmetrics'
    ``return_full_image``, or a per-pixel weighting of the loss.

    The backward takes any incoming gradient (one weight per map pixel) and
    gives the exact gradient of the weighted map on every padding (for
    "reflect", the whole map: no border is cropped). float16 and bfloat16
    maps are computed in float32, as the other functions.

    >>> import torch, cussim.torch as ct
    >>> x = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    >>> S = ct.ssim_map(x, x.detach() * 0.9, padding="valid", win_size=7)
    >>> (S * torch.linspace(0, 1, 10)).sum().backward()
    >>> S.shape, x.grad.shape
    (torch.Size([1, 3, 10, 10]), torch.Size([1, 3, 16, 16]))
    """
    for name in ("out", "axis") + _NOT_OPTIONS:
        if name in options:
            raise TypeError(f"cussim.torch.ssim_map takes no {name!r}: it returns the map as a new tensor")
    if options.get("mask") is not None:
        raise ValueError("cussim.torch.ssim_map takes no mask yet: weight the map it returns, or use "
                         "cussim.ssim_map(x, y, mask=..., mask_mode='normalized') on arrays")
    x, y, options = _checked(x, y, options)
    return _Map.apply(x, y.expand(x.shape) if y.shape != x.shape else y, options)


@_disable_tracing
def l1_dssim_loss(render, target, weight=0.2, **options):
    """``(1 - weight) * mean|render - target| + weight * (1 - SSIM)``, the 3DGS loss, fused.

    One forward launch computes both terms and their gradient (zero padding;
    options as :func:`cussim.l1_dssim_loss`).

    >>> import torch, cussim.torch as ct
    >>> a = torch.zeros(1, 1, 16, 16, dtype=torch.float64); b = a + 0.5
    >>> round(float(ct.l1_dssim_loss(a, b, weight=0.0)), 6)
    0.5
    """
    return _apply("l1_dssim_loss", render, target, dict(options, weight=weight))


class _Loss(torch.nn.Module):
    """A loss module: the options at construction (``mask_mode`` among them), a ``mask`` per call."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class SSIMLoss(_Loss):
    """``1 - SSIM(x, y)`` as a module; options as :func:`ssim`.

    >>> import torch, cussim.torch as ct
    >>> loss = ct.SSIMLoss(win_size=7)
    >>> x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    >>> loss, float(loss(x, x))
    (SSIMLoss(win_size=7), 0.0)
    """

    def forward(self, x, y, mask=None):
        return 1 - ssim(x, y, mask=mask, **self.options)


class DSSIMLoss(_Loss):
    """DSSIM, ``(1 - SSIM(x, y)) / 2``, as a module; options as :func:`dssim`.

    Half of 3DGS's SSIM loss term: :class:`SSIMLoss` is ``1 - SSIM``.
    """

    def forward(self, x, y, mask=None):
        return dssim(x, y, mask=mask, **self.options)


class MSSSIMLoss(_Loss):
    """``1 - MS-SSIM(x, y)`` as a module; options as :func:`ms_ssim`."""

    def forward(self, x, y, mask=None):
        return 1 - ms_ssim(x, y, mask=mask, **self.options)


class L1DSSIMLoss(_Loss):
    """:func:`l1_dssim_loss` as a module (``weight`` and the SSIM options)."""

    def forward(self, render, target, mask=None):
        return l1_dssim_loss(render, target, mask=mask, **self.options)
