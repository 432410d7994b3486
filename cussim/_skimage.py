"""``cussim.structural_similarity``: scikit-image 0.26's function, on the GPU.

Same signature, defaults, validation order, messages and warnings as
``skimage.metrics.structural_similarity`` (docs/spec.rst section 5). CuPy (and
other GPU) arrays run cussim's kernels and give CuPy results; NumPy arrays
give NumPy results from the float64 reference (or the kernels on the
emulator, with ``CUSSIM_NUMPY_BACKEND=emulator``).
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _arrays, _launch, _launch3d, _reference
from ._params import SsimParams, check_one_window

TRUNCATE = 3.5  # skimage's Gaussian: radius int(3.5 * sigma + 0.5)
MAX_KERNEL_RADIUS = 7
_WIN_SIZE_MESSAGE = (
    "win_size exceeds image extent. Either ensure that your images are at least 7x7; or pass win_size "
    "explicitly in the function call, with an odd value less than or equal to the smaller side of your images. "
    "If your images are multichannel (with color channels), set channel_axis to the axis number corresponding "
    "to the channels."
)
_DATA_RANGE_MESSAGE = (
    "Since image dtype is floating point, you must specify the data_range parameter. Please read the "
    "documentation carefully (including the note). It is recommended that you always specify the data_range "
    "anyway."
)


def _float_type(dtype) -> np.dtype:
    """skimage's working dtype: float32 for float16 and float32 images, float64 for everything else."""
    return np.dtype(np.float32) if np.dtype(dtype) in (np.float16, np.float32) else np.dtype(np.float64)


def _data_range(im1, im2, data_range, stacklevel):
    if data_range is not None:
        return float(data_range)
    if np.issubdtype(im1.dtype, np.floating) or np.issubdtype(im2.dtype, np.floating):
        raise ValueError(_DATA_RANGE_MESSAGE)
    if im1.dtype != im2.dtype:
        warnings.warn("Inputs have mismatched dtypes. Setting data_range based on im1.dtype.",
                      stacklevel=stacklevel)
    if im1.dtype == np.bool_:
        value = 1.0
    else:
        info = np.iinfo(im1.dtype)
        value = float(info.max) - float(info.min)
    if np.issubdtype(im1.dtype, np.integer) and im1.dtype != np.uint8:
        warnings.warn(f"Setting data_range based on im1.dtype. data_range = {value:.0f}. Please specify "
                      "data_range explicitly to avoid mistakes.", stacklevel=stacklevel)
    return value


def structural_similarity(im1, im2, *, win_size=None, gradient=False, data_range=None, channel_axis=None,
                          gaussian_weights=False, full=False, **kwargs):
    """Mean structural similarity, exactly as ``skimage.metrics.structural_similarity`` computes it.

    A drop-in: replace ``from skimage.metrics import structural_similarity``
    with ``from cussim import structural_similarity``. Parameters, defaults
    (uniform 7x7 window, sample covariance, reflected borders, the mean over
    the map cropped by (win_size-1)//2), errors and warnings are skimage's;
    keyword arguments K1, K2, sigma and use_sample_covariance as there.

    Where it differs from cussim's native API: the defaults above (the native
    API uses a Gaussian 11x11 window, population covariance and zero padding);
    ``gradient=True`` returns skimage's formula, the gradient of the UNcropped
    map's mean with respect to im2 (the second image), which is not the
    gradient of the value returned (``cussim.ssim_with_gradient`` gives that,
    with respect to the first image); ``full=True`` returns the uncropped map.
    Images are 2-D or 3-D volumes (with channel_axis, plus channels); NumPy
    arrays of other dimensions are passed to scikit-image itself, GPU arrays of
    other dimensions are refused. data_range must be positive.

    Returns
    -------
    mssim : float, or a 0-d CuPy array for GPU inputs
    grad : array, when ``gradient`` is True
    S : array, when ``full`` is True

    Examples
    --------
    >>> import numpy as np
    >>> from skimage import data
    >>> from cussim import structural_similarity
    >>> cam = data.camera()
    >>> noisy = np.clip(cam + np.random.RandomState(5).randn(*cam.shape) * 20, 0, 255).astype(np.uint8)
    >>> round(float(structural_similarity(cam, noisy)), 10)
    0.3674518328
    """
    im1 = _arrays.as_array(im1, "im1")
    im2 = _arrays.as_array(im2, "im2")
    if im1.shape != im2.shape:
        raise ValueError("Input images must have the same dimensions.")
    _arrays.check_same_place(im1, im2, "im2", "im1")
    float_type = _float_type(im1.dtype)
    spatial_shape = list(im1.shape)
    if channel_axis is not None:
        channel_axis = channel_axis % im1.ndim
        del spatial_shape[channel_axis]
    K1 = kwargs.pop("K1", 0.01)
    K2 = kwargs.pop("K2", 0.03)
    sigma = kwargs.pop("sigma", 1.5)
    check_one_window("structural_similarity", "for a window per axis, cussim.ssim(im1, im2, win_size=(7, 5), "
                     "window='uniform', padding='reflect', sample_covariance=True, data_range=...) computes "
                     "scikit-image's uniform-window SSIM with a size per axis", win_size=win_size, sigma=sigma)
    if K1 < 0:
        raise ValueError("K1 must be positive")
    if K2 < 0:
        raise ValueError("K2 must be positive")
    if sigma < 0:
        raise ValueError("sigma must be positive")
    use_sample_covariance = kwargs.pop("use_sample_covariance", True)
    if win_size is None:
        win_size = 2 * int(TRUNCATE * sigma + 0.5) + 1 if gaussian_weights else 7
    if np.any((np.asarray(spatial_shape) - win_size) < 0):
        raise ValueError(_WIN_SIZE_MESSAGE)
    if not (win_size % 2 == 1):
        raise ValueError("Window size must be odd.")
    if win_size < 1 or (win_size == 1 and use_sample_covariance):  # scikit-image divides by zero, or reads garbage
        raise ValueError(f"win_size must be an odd size from 3 to the images' smaller side "
                         f"({min(spatial_shape)}; 1 only with use_sample_covariance=False), got {win_size}; "
                         "use 7 (the default)")
    data_range = _data_range(im1, im2, data_range, stacklevel=3)
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    spatial = len(spatial_shape)
    if spatial not in (2, 3):
        return _other_dimensions(im1, im2, win_size=win_size, gradient=gradient, data_range=data_range,
                       channel_axis=channel_axis, gaussian_weights=gaussian_weights, full=full, K1=K1, K2=K2,
                       sigma=sigma, use_sample_covariance=use_sample_covariance)
    taps = _reference.gaussian_taps(int(TRUNCATE * sigma + 0.5), sigma) if gaussian_weights else \
        _reference.uniform_taps(win_size)
    np_ = win_size**spatial
    params = SsimParams(windows=(tuple(float(t) for t in taps),) * spatial, K1=float(K1), K2=float(K2),
                        data_range=data_range, padding="reflect", cov=np_ / (np_ - 1) if use_sample_covariance else 1.0,
                        crops=((win_size - 1) // 2,) * spatial, spatial=spatial)
    # Channels become a leading (batch) axis: a view, no copy.
    x, y = _as_planes(im1, channel_axis), _as_planes(im2, channel_axis)
    kernels_fit = 1 <= params.radius <= MAX_KERNEL_RADIUS
    if _arrays.is_numpy(x) and (_arrays.numpy_backend() == "reference" or not kernels_fit):
        mssim, grad, S = _reference_results(x, y, params, gradient, full)
    else:
        mssim, grad, S = _kernel_results(x, y, params, gradient, full)
    if channel_axis is not None and _arrays.is_numpy(x):
        mssim = float_type.type(mssim)  # skimage averages per-channel float_type means
    results = [mssim]
    if gradient:
        results.append(_restore(grad.astype(float_type, copy=False), channel_axis))
    if full:
        results.append(_restore(S.astype(float_type, copy=False), channel_axis))
    return tuple(results) if len(results) > 1 else mssim


def _as_planes(image, channel_axis):
    xp = _arrays.array_module(image)
    return xp.moveaxis(image, channel_axis, 0) if channel_axis is not None else image


def _restore(planes, channel_axis):
    xp = _arrays.array_module(planes)
    return xp.moveaxis(planes, 0, channel_axis) if channel_axis is not None else planes


def _reference_results(x, y, params, gradient, full):
    taps = np.asarray(params.taps)
    kwargs = dict(K1=params.K1, K2=params.K2, padding="reflect", data_range=params.data_range, cov=params.cov,
                  spatial=params.spatial)
    S = _reference.ssim_map(x, y, taps, crop=0 if full else params.crop, **kwargs)  # the whole map if asked for
    # the mean of the same C-order array either way, so that full=True changes no bit of it
    counted = np.ascontiguousarray(_reference.cropped(S, params.crop if full else 0, params.spatial))
    mssim = np.float64(counted.mean(dtype=np.float64))
    grad = _reference.skimage_gradient(x, y, taps, **kwargs) if gradient else None
    return mssim, grad, S


def _kernel_results(x, y, params, gradient, full):
    if params.radius > MAX_KERNEL_RADIUS or params.radius < 1:
        raise ValueError(
            f"the GPU kernels take windows of 3 to 15 taps; this one has {params.win_size} "
            "(Gaussian weights: sigma from 0.43 to 1.85; uniform: win_size up to 15). Pass NumPy arrays for "
            "other windows"
        )
    xp = _arrays.array_module(x)
    working = _float_type(x.dtype)
    launcher = _launch3d if params.spatial == 3 else _launch
    planes = int(np.prod(x.shape[: -params.spatial], dtype=np.int64))
    map_shape = params.map_shape(x.shape)
    ctype = _launch.compute_dtype(working)
    with _arrays.on_device(x):
        if x.dtype != working or y.dtype != working:  # skimage's working dtype: float64 for integer images
            x, y = x.astype(working), y.astype(working)
        block_sums = _arrays.empty(xp, (planes * launcher.tiles(map_shape, x.dtype),), np.float64)
        S = _arrays.empty(xp, map_shape, ctype) if full else None
        grad_maps = _arrays.empty(xp, (3 * int(np.prod(map_shape)),), ctype) if gradient else None
        launcher.forward(x, y, params, map_out=S, block_sums=block_sums, grad_maps=grad_maps,
                         weight=2.0 / np.prod(map_shape[-params.spatial :]), formula="skimage")
        mssim = _arrays.empty(xp, (), np.float64)
        counted = planes * int(np.prod(params.mean_shape(x.shape)))
        _launch.finish(block_sums, mssim.reshape(-1), per_output=block_sums.size, count=counted)
        grad = None
        if gradient:
            grad = _arrays.empty(xp, x.shape, _launch.gradient_dtype(x.dtype))
            launcher.backward(x, y, grad_maps, grad, params)
    return (np.float64(mssim) if xp is np else mssim), grad, S


def _other_dimensions(im1, im2, **kwargs):
    """Images of other than two or three spatial dimensions: scikit-image itself for NumPy, an error for GPU arrays."""
    if not _arrays.is_numpy(im1):
        ndim = im1.ndim - (kwargs["channel_axis"] is not None)
        raise ValueError(f"cussim's kernels compute 2-D images and 3-D volumes; these have {ndim} spatial "
                         "dimensions (pass NumPy arrays for scikit-image's N-D computation)")
    from skimage.metrics import structural_similarity as skimage_ssim

    return skimage_ssim(im1, im2, **kwargs)
