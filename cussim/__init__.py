"""cussim: fused CUDA SSIM, DSSIM and MS-SSIM with exact gradients for GPU arrays.

>>> import numpy as np, cussim
>>> x = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
>>> float(cussim.ssim(x, x))
1.0

The package imports without CuPy and without a GPU: kernels are compiled on
first use (NVRTC through CuPy on a GPU, or g++ for the CPU emulator), and the
float64 reference in ``cussim._reference`` needs only NumPy and SciPy.
"""

from ._msssim import make_ms_ssim_workspace, ms_ssim, ms_ssim_with_gradient
from ._params import DataRangeWarning
from ._skimage import structural_similarity
from ._ssim import (Workspace, dssim, dssim_with_gradient, l1_dssim_loss, l1_dssim_loss_with_gradient, make_workspace,
                    ssim, ssim_map, ssim_with_gradient)

__version__ = "0.1.0.dev0"

__all__ = [
    "DataRangeWarning", "Workspace", "dssim", "dssim_with_gradient", "l1_dssim_loss", "l1_dssim_loss_with_gradient",
    "make_ms_ssim_workspace", "make_workspace", "ms_ssim",
    "ms_ssim_with_gradient", "ssim", "ssim_map", "ssim_with_gradient", "structural_similarity",
]
