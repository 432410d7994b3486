"""fused-ssim's ``fused_ssim`` (and fussim's, with its ``window_size``) on cussim's kernels."""

from __future__ import annotations

import numbers

import torch

from .._params import MAX_WIN_SIZE, MIN_WIN_SIZE
from ._functions import ssim

PADDINGS = ("same", "valid")


def fused_ssim(img1, img2, padding="same", train=True, window_size=11):
    """Mean SSIM of img1 against img2 with fused-ssim's conventions; the gradient goes to img1 only.

    A drop-in for ``from fused_ssim import fused_ssim`` (and fussim's): an
    11x11 Gaussian window of sigma 1.5 (fussim's ``window_size`` 7 and 9 too,
    and any odd size from 3 to 15), C1 = 0.01**2 and C2 = 0.03**2 (images in
    [0, 1]), population covariance, and the mean over the whole batch.

    Parameters
    ----------
    img1 : torch.Tensor
        The rendered images, (N, C, H, W) as fused-ssim takes them (any shape
        cussim.torch takes works); the only input that gets a gradient.
    img2 : torch.Tensor
        The reference images, img1's shape and dtype; never differentiated
        (fused-ssim's convention), even when it requires a gradient.
    padding : {"same", "valid"}
        "same": zeros outside the image, the mean over every pixel; "valid":
        the mean over the pixels whose window lies inside the image.
    train : bool
        False computes the value alone and returns a tensor without gradient
        history (fused-ssim's inference mode); True (the default) records the
        gradient when img1 requires one and gradients are enabled.
    window_size : int
        The window's side (fussim's argument; fused-ssim's is 11).

    Returns
    -------
    torch.Tensor
        0-d: the mean SSIM (float32 for float16, bfloat16 and float32 images,
        float64 for float64 ones).

    Examples
    --------
    >>> import torch
    >>> from cussim.torch import fused_ssim        # was: from fused_ssim import fused_ssim
    >>> gt = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    >>> render = gt.flip(-1).requires_grad_()
    >>> loss = 1 - fused_ssim(render, gt, padding="valid")
    >>> loss.backward()
    >>> render.grad.shape, bool(loss > 0)
    (torch.Size([1, 3, 32, 32]), True)
    >>> fused_ssim(render, gt, train=False).requires_grad
    False
    """
    for name, image in (("img1", img1), ("img2", img2)):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be 'same' or 'valid' (fused-ssim's two), got {padding!r}")
    if (isinstance(window_size, bool) or not isinstance(window_size, numbers.Integral) or window_size % 2 == 0
            or not MIN_WIN_SIZE <= window_size <= MAX_WIN_SIZE):
        raise ValueError(f"window_size must be an odd int from {MIN_WIN_SIZE} to {MAX_WIN_SIZE} (fussim's are 7, "
                         f"9 and 11), got {window_size!r}")
    options = dict(data_range=1.0, win_size=int(window_size), sigma=1.5, K1=0.01, K2=0.03, padding=padding)
    with torch.set_grad_enabled(bool(train) and torch.is_grad_enabled()):
        return ssim(img1, img2.detach(), **options)


def fused_ssim3d(img1, img2, padding="same", train=True):
    """fused-ssim's ``fused_ssim3d``: :func:`fused_ssim` of (N, C, D, H, W) volumes.

    The window is the 11-tap Gaussian along depth, rows and columns (11 x 11
    x 11); "valid" averages the voxels whose window lies inside the volume.
    The gradient goes to img1 only; ``train`` as in :func:`fused_ssim`.

    Examples
    --------
    >>> import torch
    >>> from cussim.torch import fused_ssim3d        # was: from fused_ssim import fused_ssim3d
    >>> gt = torch.rand(1, 1, 12, 14, 16, dtype=torch.float64)
    >>> render = gt.flip(-1).requires_grad_()
    >>> (1 - fused_ssim3d(render, gt)).backward()
    >>> render.grad.shape
    torch.Size([1, 1, 12, 14, 16])
    """
    if isinstance(img1, torch.Tensor) and img1.ndim != 5:
        raise ValueError(f"img1 has shape {tuple(img1.shape)}; fused_ssim3d takes (N, C, D, H, W) volumes "
                         "(fused_ssim takes images)")
    return fused_ssim(img1, img2, padding=padding, train=train)
