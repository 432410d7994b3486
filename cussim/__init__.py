"""cussim: fused CUDA SSIM, DSSIM and MS-SSIM with exact gradients for GPU arrays.

The package imports without CuPy and without a GPU: kernels are compiled on
first use (NVRTC through CuPy on a GPU, or g++ for the CPU emulator), and the
float64 reference in ``cussim._reference`` needs only NumPy and SciPy.
"""

__version__ = "0.1.0.dev0"
