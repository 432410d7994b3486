"""pytorch-msssim 1.0's ``ssim``, ``ms_ssim``, ``SSIM`` and ``MS_SSIM`` on cussim's kernels.

Change the import, keep the code::

    from pytorch_msssim import ssim, ms_ssim, SSIM, MS_SSIM               # before
    from cussim.torch.pytorch_msssim import ssim, ms_ssim, SSIM, MS_SSIM  # after

Same signatures, defaults (``data_range=255``, ``size_average=True``,
``win_size=11``, ``win_sigma=1.5``, ``K=(0.01, 0.03)``), values and gradients
(to X and to Y) as pytorch-msssim 1.0 on (N, C, H, W) tensors and
(N, C, D, H, W) volumes: a Gaussian window (along each spatial axis), valid
padding, one SSIM per image and channel, then
``nonnegative_ssim``'s relu, then the mean over everything
(``size_average=True``) or over the channels (one value per image). MS-SSIM
is cussim's ``"pytorch_msssim"`` variant (an odd side halved with a zero on
both sides, relu on every scale's mean; 2x2x2 means for volumes). Trailing axes of size 1 after the
first two are dropped first, as pytorch-msssim does. Results have the
images' dtype, as pytorch-msssim's (float16 and bfloat16 images are computed
in float32 and the results rounded once).

Where it differs, it says so with an exception rather than computing
something else:

- An image smaller than the window: ValueError (pytorch-msssim skips the blur
  along that axis, with a warning).
- ``win`` must be a Gaussian window, one for every channel, as pytorch-msssim's
  own ``_fspecial_gauss_1d`` makes (cussim computes its taps in float64 from
  the size and sigma it reads off ``win``); any other window is a ValueError.
- ``win_size`` from 3 to 15 (the kernels' radii).

And where pytorch-msssim refuses with an ``assert``, cussim computes: MS-SSIM
of any image large enough for the scales it is given (pytorch-msssim asks for
a side above 16 * (win_size - 1) whatever the number of ``weights``).
``channel`` is checked and otherwise unused: cussim needs no per-channel window.

An extension that pytorch-msssim lacks: ``ssim`` and ``ms_ssim`` take
keyword-only ``mask=`` and ``mask_mode=`` (docs/spec.rst section 9), weighting
each image's and channel's mean; the mask broadcasts against X as it is
passed (after the trailing size-1 axes are dropped), e.g. (N, 1, H, W) for
one mask per image. Code that passes neither computes what pytorch-msssim
computes.

Examples
--------
>>> import torch
>>> from cussim.torch.pytorch_msssim import ssim, MS_SSIM
>>> X = torch.rand(2, 3, 176, 176, dtype=torch.float64) * 255
>>> Y = (X + 20 * torch.randn_like(X)).clamp(0, 255)
>>> ssim(X, Y, size_average=False).shape
torch.Size([2])
>>> loss = 1 - MS_SSIM(data_range=255, channel=3)(X.requires_grad_(), Y)
>>> loss.backward()
>>> X.grad.shape
torch.Size([2, 3, 176, 176])
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .. import _reference
from .._params import check_one_window, check_spatial_dims, ssim_params
from ._functions import ms_ssim as _ms_ssim
from ._functions import ssim as _ssim

__all__ = ["MS_SSIM", "SSIM", "ms_ssim", "ssim"]

_TAPS_RTOL = 1e-6  # a float32 Gaussian (pytorch-msssim's) against cussim's float64 one: 1.4e-7 at most


def _images(X, Y):
    """X and Y as pytorch-msssim reads them: same shape, trailing size-1 axes dropped, (N, C, H, W) or
    (N, C, D, H, W)."""
    for name, image in (("X", X), ("Y", Y)):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if X.shape != Y.shape:
        raise ValueError(f"Input images should have the same dimensions, but got {tuple(X.shape)} and "
                         f"{tuple(Y.shape)}: X and Y must have one shape (pytorch-msssim does not broadcast)")
    for axis in range(X.ndim - 1, 1, -1):
        X, Y = X.squeeze(axis), Y.squeeze(axis)
    if X.ndim not in (4, 5):
        raise ValueError(f"Input images should be 4-d or 5-d tensors, but got {tuple(X.shape)}: X and Y must be "
                         "(N, C, H, W) or (N, C, D, H, W)")
    return X, Y


def _constants(K):
    try:
        K1, K2 = K
    except (TypeError, ValueError):
        raise ValueError(f"K must be a pair (K1, K2), e.g. (0.01, 0.03), got {K!r}") from None
    return {"K1": K1, "K2": K2}


def _check_one_window(win_size, win_sigma):
    check_one_window("cussim.torch.pytorch_msssim", "for a window per axis, cussim.torch.ssim or ms_ssim take "
                     "win_size=(11, 7), sigma=(1.5, 0.8)", win_size=win_size, win_sigma=win_sigma)


def _window(win, win_size, win_sigma):
    """cussim's window arguments: win_size and sigma, read off ``win`` when it is given."""
    _check_one_window(win_size, win_sigma)
    if win is None:
        return {"win_size": win_size, "sigma": win_sigma}
    if not isinstance(win, torch.Tensor) or win.ndim == 0:
        raise TypeError(f"win must be a tensor of 1-D window taps (pytorch_msssim's _fspecial_gauss_1d), got {win!r}")
    rows = win.detach().to("cpu", torch.float64).reshape(-1, win.shape[-1]).numpy()
    taps = rows[0]
    size = taps.size
    if size % 2 == 0:
        raise ValueError(f"Window size should be odd: win has {size} taps")
    if not (rows == taps).all():
        raise ValueError("win holds different windows for different channels; cussim applies one window to all")
    if size > 1 and (taps > 0).all():
        offsets = (np.arange(size) - size // 2) ** 2
        slope = np.polyfit(offsets, np.log(taps), 1)[0]  # log of a Gaussian: -offset**2 / (2 sigma**2)
        if slope < 0:
            sigma = float(np.sqrt(-0.5 / slope))
            if np.allclose(taps, _reference.window_taps("gaussian", size, sigma), rtol=_TAPS_RTOL, atol=0):
                return {"win_size": size, "sigma": sigma}
    raise ValueError(f"win must be a normalised Gaussian window, as pytorch_msssim's _fspecial_gauss_1d(size, sigma) "
                     f"makes; cussim builds its window from win_size and win_sigma: pass those instead (win: {taps})")


def _weights(weights):
    return weights.tolist() if isinstance(weights, torch.Tensor) else weights


def _reduced(per_channel, size_average, dtype):
    """(N, C) values to pytorch-msssim's result: their mean, or one mean per image, in the images' ``dtype``
    (float16 and bfloat16 images are computed in float32)."""
    return (per_channel.mean() if size_average else per_channel.mean(1)).to(dtype)


def ssim(X, Y, data_range=255, size_average=True, win_size=11, win_sigma=1.5, win=None, K=(0.01, 0.03),
         nonnegative_ssim=False, *, mask=None, mask_mode="mean"):
    """SSIM as ``pytorch_msssim.ssim``: the mean, or one value per image with ``size_average=False``.

    Parameters
    ----------
    X, Y : torch.Tensor
        (N, C, H, W) images of one shape and dtype; both are differentiable.
    data_range : float
        The images' value range (255 by default; 1.0 for images in [0, 1]).
    size_average : bool
        True: a 0-d mean over everything; False: one value per image (N,).
    win_size, win_sigma : int, float
        The Gaussian window's side (odd, 3 to 15) and standard deviation.
    win : torch.Tensor, optional
        A Gaussian window as ``pytorch_msssim``'s ``_fspecial_gauss_1d``
        makes (any shape whose last axis holds the taps); sets win_size and
        win_sigma.
    K : (float, float)
        K1 and K2 of the formula.
    nonnegative_ssim : bool
        Relu on each image's and channel's SSIM before the averages.
    mask, mask_mode : torch.Tensor, str, optional
        cussim's extension: pixel weights for each image's and channel's
        mean, as :func:`cussim.torch.ssim` takes them (not in pytorch-msssim).

    Returns
    -------
    torch.Tensor
        0-d, or (N,) with ``size_average=False``.

    Examples
    --------
    >>> import torch
    >>> from cussim.torch.pytorch_msssim import ssim   # was: from pytorch_msssim import ssim
    >>> X = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    >>> float(ssim(X, X, data_range=1.0)), ssim(X, 1 - X, data_range=1.0, size_average=False).shape
    (1.0, torch.Size([4]))
    """
    X, Y = _images(X, Y)
    per_channel = _ssim(X, Y, data_range=data_range, padding="valid", axis=tuple(range(2, X.ndim)), **_constants(K),
                        **_window(win, win_size, win_sigma), mask=mask, mask_mode=mask_mode)
    if nonnegative_ssim:
        per_channel = torch.relu(per_channel)
    return _reduced(per_channel, size_average, X.dtype)


def ms_ssim(X, Y, data_range=255, size_average=True, win_size=11, win_sigma=1.5, win=None, weights=None,
            K=(0.01, 0.03), *, mask=None, mask_mode="mean"):
    """MS-SSIM as ``pytorch_msssim.ms_ssim``: the mean, or one value per image with ``size_average=False``.

    Parameters as :func:`ssim`, and

    weights : sequence of float, optional
        One exponent per scale, 1 to 16 of them (a list or a tensor); default
        (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).
    mask, mask_mode : torch.Tensor, str, optional
        cussim's extension (not in pytorch-msssim): weights pooled like the
        images at every scale, as :func:`cussim.ms_ssim` takes them.

    Examples
    --------
    >>> import torch
    >>> from cussim.torch.pytorch_msssim import ms_ssim   # was: from pytorch_msssim import ms_ssim
    >>> X = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    >>> round(float(ms_ssim(X, X, data_range=1.0, weights=[0.5, 0.5])), 12)
    1.0
    """
    X, Y = _images(X, Y)
    per_channel = _ms_ssim(X, Y, variant="pytorch_msssim", weights=_weights(weights), data_range=data_range,
                           axis=tuple(range(2, X.ndim)), **_constants(K), **_window(win, win_size, win_sigma),
                           mask=mask, mask_mode=mask_mode)
    return _reduced(per_channel, size_average, X.dtype)


class _Module(torch.nn.Module):
    """The modules' shared arguments, checked when the module is made (pytorch-msssim checks them at the call)."""

    def __init__(self, data_range, size_average, win_size, win_sigma, channel, spatial_dims, K):
        super().__init__()
        if isinstance(channel, bool) or not isinstance(channel, numbers.Integral) or channel < 1:
            raise ValueError(f"channel must be a positive int (the images' channels), got {channel!r}")
        check_spatial_dims(spatial_dims)
        _check_one_window(win_size, win_sigma)
        ssim_params(win_size=win_size, sigma=win_sigma, data_range=data_range, **_constants(K))
        self.data_range, self.size_average, self.K = data_range, size_average, K
        self.win_size, self.win_sigma, self.channel, self.spatial_dims = win_size, win_sigma, channel, spatial_dims

    def _options(self):
        return dict(data_range=self.data_range, size_average=self.size_average, win_size=self.win_size,
                    win_sigma=self.win_sigma, K=self.K)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options().items())


class SSIM(_Module):
    """``pytorch_msssim.SSIM``: :func:`ssim` as a module, with its arguments and ``channel``, ``spatial_dims``.

    Examples
    --------
    >>> import torch
    >>> from cussim.torch.pytorch_msssim import SSIM   # was: from pytorch_msssim import SSIM
    >>> module = SSIM(data_range=1.0, size_average=False, channel=1)
    >>> X = torch.rand(2, 1, 24, 24, dtype=torch.float64)
    >>> module(X, X)
    tensor([1., 1.], dtype=torch.float64)
    """

    def __init__(self, data_range=255, size_average=True, win_size=11, win_sigma=1.5, channel=3, spatial_dims=2,
                 K=(0.01, 0.03), nonnegative_ssim=False):
        super().__init__(data_range, size_average, win_size, win_sigma, channel, spatial_dims, K)
        self.nonnegative_ssim = nonnegative_ssim

    def _options(self):
        return dict(super()._options(), nonnegative_ssim=self.nonnegative_ssim)

    def forward(self, X, Y):
        return ssim(X, Y, **self._options())


class MS_SSIM(_Module):
    """``pytorch_msssim.MS_SSIM``: :func:`ms_ssim` as a module, with its arguments and ``channel``, ``spatial_dims``.

    Examples
    --------
    >>> import torch
    >>> from cussim.torch.pytorch_msssim import MS_SSIM   # was: from pytorch_msssim import MS_SSIM
    >>> module = MS_SSIM(data_range=1.0, weights=[0.2, 0.8], win_size=7)
    >>> X = torch.rand(1, 3, 40, 40, dtype=torch.float64)
    >>> round(float(module(X, X)), 12)
    1.0
    """

    def __init__(self, data_range=255, size_average=True, win_size=11, win_sigma=1.5, channel=3, spatial_dims=2,
                 weights=None, K=(0.01, 0.03)):
        super().__init__(data_range, size_average, win_size, win_sigma, channel, spatial_dims, K)
        self.weights = weights

    def _options(self):
        return dict(super()._options(), weights=self.weights)

    def forward(self, X, Y):
        return ms_ssim(X, Y, **self._options())
