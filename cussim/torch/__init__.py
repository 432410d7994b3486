"""PyTorch autograd functions and loss modules over cussim's fused kernels.

``import cussim`` never imports PyTorch; ``import cussim.torch`` does (the
``torch`` extra). Each function returns the mean over the whole batch as a
0-d tensor (or, with ``axis``, one value per index of the axes it keeps) and
back-propagates to x, to y, or to both, computing a gradient only for the
inputs that require one (SSIM, MS-SSIM and the L1 term are symmetric in x
and y, so y's gradient is the same kernels with the roles exchanged; a y that
broadcasts gets its gradient summed back to its shape).

PyTorch's layout: a 4-D tensor is (N, C, H, W), so ``channel_axis`` defaults
to 1 there. SSIM, DSSIM and the L1 loss average channels like any batch axis,
so this changes nothing for them; ``ms_ssim(x, y, variant="torchmetrics")``
averages each image's channels into every scale's mean, as torchmetrics does
(``channel_axis=None`` treats each channel as an image of its own). A 5-D
tensor is (N, C, D, H, W), volumes, as in pytorch-msssim and fused-ssim:
``channel_axis=1`` and ``spatial_dims=3`` by default. Other shapes keep
cussim's rule: the last two axes are the image plane.

:func:`ssim_map` returns the SSIM map itself, differentiable for any
incoming gradient (a per-pixel weighting of the loss, torchmetrics'
``return_full_image``); its backward computes the gradient then.

Drop-ins for code written against other libraries (change the import, keep
the call): :func:`fused_ssim` (fused-ssim's and fussim's ``fused_ssim``),
:func:`fused_ssim3d` (fused-ssim's volumes) and
:mod:`cussim.torch.pytorch_msssim` (pytorch-msssim's ``ssim``, ``ms_ssim``,
``SSIM`` and ``MS_SSIM``).

- CUDA tensors: zero-copy through DLPack, on the tensors' device and
  PyTorch's current CUDA stream; the value and the gradient are computed
  together in the forward pass (cussim's fused forward, finish and backward
  kernels), and the backward only scales the gradient by the incoming one.
- CPU tensors: the same functions through cussim's CPU path (the float64
  reference, or the kernels on the emulator with
  ``CUSSIM_NUMPY_BACKEND=emulator``).
- dtypes: float32 and float64; float16 and bfloat16 are converted to
  float32 first, so the gradient is computed and scaled (e.g. by a
  GradScaler) in float32 and rounded to the input's dtype once. Any strides
  work (non-contiguous views, channels-last).
- First derivatives only: a second backward through these functions (a
  gradient penalty, ``gradgradcheck``) raises a RuntimeError.
- ``torch.compile``: the functions are excluded from tracing (a graph break).

Keyword options are those of the matching cussim function (``data_range``,
``win_size``, ``sigma``, ``window``, ``K1``, ``K2``, ``padding``,
``sample_covariance``, ``channel_axis``, ``axis``, ``mask``, ``mask_mode``;
MS-SSIM's ``variant`` and ``weights``), except the output buffers.
``win_size`` and ``sigma`` take one value for every axis or one per spatial
axis (``win_size=(11, 7), sigma=(1.5, 0.8)``, the first for H, as
torchmetrics' ``kernel_size`` and ``sigma``); a window per axis is computed
for CPU tensors (the float64 path) only, and refused on CUDA tensors.

Masks (docs/spec.rst section 9): ``mask`` is a tensor of weights on x's
device (bool or floating, broadcasting against x as in cussim). A mask that
requires grad gets its exact gradient in ``mask_mode="mean"``,
``g * (V_q - V) / sum(m)`` for the per-pixel value V_q of the mean V (the
SSIM map, DSSIM's (1 - S) / 2, the 3DGS loss's two terms together); with
``"normalized"``, and for MS-SSIM, such a mask is refused (detach it).

Examples
--------
>>> import torch, cussim.torch as ct
>>> target = torch.rand(1, 3, 32, 32, dtype=torch.float64)
>>> render = (target + 0.1 * torch.randn_like(target)).clamp(0, 1).requires_grad_()
>>> loss = ct.l1_dssim_loss(render, target, weight=0.2)
>>> loss.backward()
>>> render.grad.shape, bool(loss > 0)
(torch.Size([1, 3, 32, 32]), True)
"""

from . import pytorch_msssim
from ._functions import DSSIMLoss, L1DSSIMLoss, MSSSIMLoss, SSIMLoss, dssim, l1_dssim_loss, ms_ssim, ssim, ssim_map
from ._fused_ssim import fused_ssim, fused_ssim3d

__all__ = ["DSSIMLoss", "L1DSSIMLoss", "MSSSIMLoss", "SSIMLoss", "dssim", "fused_ssim", "fused_ssim3d", "l1_dssim_loss",
           "ms_ssim", "pytorch_msssim", "ssim", "ssim_map"]
