"""The metric's parameters, checked once and carried down as one small value.

The public functions turn their keyword arguments into an :class:`SsimParams`
(:func:`ssim_params` names the argument and the fix for every bad value); the
launch plans and kernels below never parse options again.

Examples
--------
>>> from cussim._params import ssim_params
>>> p = ssim_params(win_size=7, window="uniform", padding="reflect", data_range=255)
>>> p.radius, p.crop, round(p.taps[0], 6), p.map_shape((2, 20, 30))
(3, 3, 0.142857, (2, 20, 30))
>>> q = ssim_params(win_size=(11, 7), sigma=(1.5, 0.8), padding="valid")
>>> q.win_sizes, q.radii, q.one_window, q.map_shape((2, 20, 30))
((11, 7), (5, 3), False, (2, 10, 24))
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from . import _reference

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
PADDINGS = _reference.PADDINGS
WINDOWS = _reference.WINDOWS
MIN_WIN_SIZE = 3
MAX_WIN_SIZE = 15  # the kernels are compiled for radii 1 to 7
SPATIAL_DIMS = (2, 3)


# Values beyond this, with no data_range, are not in the [0, 1] (or [-1, 1]) the default range of 1 means: an image
# in 0..255 goes far past it, a render that overshoots [0, 1] a little during training does not.
UNIT_RANGE_LIMIT = 2.0


class DataRangeWarning(UserWarning):
    """A float image's values lie far outside [0, 1] (beyond -2 or 2) and no ``data_range`` was given: the
    default range of 1 is then wrong (an image in 0..255 needs ``data_range=255``)."""


def _caller_stacklevel() -> int:
    """warnings.warn's stacklevel for the first frame outside cussim and PyTorch (whose autograd runs
    cussim.torch's functions): the user's call."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (frame.f_code.co_filename.startswith(PACKAGE_DIR)
                                 or frame.f_globals.get("__name__", "").partition(".")[0] == "torch"):
        frame, level = frame.f_back, level + 1
    return level


def warn_outside_unit_range(x, y) -> None:
    """A :class:`DataRangeWarning`, once per call site (Python's default filter), for float NumPy inputs with
    values beyond +-UNIT_RANGE_LIMIT; the caller gave no data_range.

    Only NumPy arrays are looked at (a min and a max each): on a GPU the check would copy to the host and wait
    for the device at every call of a training loop, so GPU arrays are taken as they are. The message holds no
    values, so that the default filter shows it once per calling line.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn_outside_unit_range(np.full((8, 8), 200.0), np.zeros((8, 8)))
    >>> caught[0].category.__name__, "data_range=255" in str(caught[0].message)
    ('DataRangeWarning', True)
    """
    for name, array in (("x", x), ("y", y)):
        if isinstance(array, np.ndarray) and array.dtype.kind == "f" and array.size:
            if array.min() < -UNIT_RANGE_LIMIT or array.max() > UNIT_RANGE_LIMIT:
                warnings.warn(f"{name} has values far outside [0, 1] (beyond -2 or 2) and no data_range was given, "
                              "so the range is 1 (float images in [0, 1]): pass data_range=255 for images in "
                              "0..255, or the range of the values", DataRangeWarning, stacklevel=_caller_stacklevel())
                return


@dataclass(frozen=True)
class SsimParams:
    """Everything the kernels need to know about the metric, already checked.

    windows: the 1-D window of each spatial axis, first axis first (each a
    tuple of float64 taps, odd length, symmetric); crops: the map border left
    out of the mean along each spatial axis ("reflect" leaves out
    (win_size-1)//2, as skimage); cov: the covariance factor c (1, or
    NP/(NP-1) for sample covariance); spatial: how many trailing axes the
    image has (2, a plane; 3, a volume).

    ``taps``, ``radius``, ``win_size`` and ``crop`` are the one value of every
    axis, for what computes with one window (the kernels); they raise a
    ValueError where the axes' windows differ (:attr:`one_window` is False).
    Each is worked out once (the kernels' launches read them at every call).
    """

    windows: tuple
    K1: float
    K2: float
    data_range: float
    padding: str
    cov: float
    crops: tuple
    spatial: int = 2

    @functools.cached_property
    def one_window(self) -> bool:
        """Whether every spatial axis has the same window."""
        return len(set(self.windows)) == 1

    def _shared(self, values, name):
        """The value that every axis shares, or the ValueError saying that the axes' windows differ."""
        if not self.one_window:
            raise ValueError(f"{name}: these parameters give each spatial axis its own window "
                             f"({'x'.join(map(str, self.win_sizes))} taps), and this computation (the kernels, "
                             "their launch plans and workspaces) takes one window for every axis; a window per axis "
                             "is computed by the float64 path (NumPy arrays or CPU tensors, with no MS-SSIM "
                             "workspace), else pass one win_size and one sigma")
        return values[0]

    @functools.cached_property
    def taps(self) -> tuple:
        return self._shared(self.windows, "taps")

    @functools.cached_property
    def radius(self) -> int:
        return self._shared(self.radii, "radius")

    @functools.cached_property
    def crop(self) -> int:
        return self._shared(self.crops, "crop")

    @functools.cached_property
    def radii(self) -> tuple:
        return tuple((len(w) - 1) // 2 for w in self.windows)

    @property
    def win_sizes(self) -> tuple:
        return tuple(len(w) for w in self.windows)

    @functools.cached_property
    def _hash(self) -> int:
        return hash(tuple(getattr(self, field.name) for field in dataclasses.fields(self)))

    def __hash__(self):  # worked out once: every launch plan's key holds the parameters
        return self._hash

    def __getstate__(self):  # without the cached hash: a string's hash differs from process to process
        return {name: value for name, value in self.__dict__.items() if name != "_hash"}

    @functools.cached_property
    def win_size(self) -> int:
        return self._shared(self.win_sizes, "win_size")

    def map_shape(self, shape) -> tuple:
        """Shape of the SSIM map for images of ``shape`` (the spatial axes shrink for "valid")."""
        valid = self.padding == "valid"
        return tuple(shape[: -self.spatial]) + tuple(n - 2 * r * valid for n, r in zip(shape[-self.spatial :],
                                                                                      self.radii))

    def mean_shape(self, shape) -> tuple:
        """The part of the map that the mean averages: its spatial sides after the crop."""
        return tuple(n - 2 * c for n, c in zip(self.map_shape(shape)[-self.spatial :], self.crops))


def _positive_finite(name, value, fix):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}; {fix}")
    return float(value)


def check_spatial_dims(spatial_dims) -> int:
    """``spatial_dims`` as an int, 2 (images) or 3 (volumes), or a ValueError naming it."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}")
    return int(spatial_dims)


def ssim_params(*, win_size=11, sigma=1.5, window="gaussian", K1=0.01, K2=0.03, padding="same",
                sample_covariance=False, data_range=1.0, spatial_dims=2) -> SsimParams:
    """Checks the native API's metric arguments and returns their :class:`SsimParams`.

    Arguments seen before (by value and type) return their checked result
    from a cache: a training loop's call does not check and build its window
    again. Bad values raise every time (a raise is never cached); unhashable
    ones are checked without the cache.
    """
    arguments = (win_size, sigma, window, K1, K2, padding, sample_covariance, data_range, spatial_dims)
    try:
        hash(arguments)
    except TypeError:
        return _checked_params(*arguments)
    return _cached_params(*arguments)


def per_axis_values(name, value, spatial_dims, example) -> tuple:
    """``value`` as one entry per spatial axis with the name of each for messages: [(name, entry), ...].

    A tuple or list gives one value per spatial axis (the first spatial axis
    first, as torchmetrics takes kernel_size and sigma); anything else is the
    value of every axis. A sequence of another length is a ValueError naming
    ``name`` and an ``example`` of the right one.
    """
    if not isinstance(value, (tuple, list)):
        return [(name, value)] * spatial_dims
    if len(value) != spatial_dims:
        raise ValueError(f"{name}={value!r} has {len(value)} value{'s' * (len(value) != 1)}, but the images have "
                         f"{spatial_dims} spatial axes: give one value for every axis, or one per spatial axis (e.g. "
                         f"{name}={example[:spatial_dims]})")
    return [(f"{name}[{i}] (spatial axis {i})", v) for i, v in enumerate(value)]


def check_one_window(function, fix, **values) -> None:
    """A TypeError for a tuple or list among ``values`` (argument name: value): ``function``, a drop-in, takes one
    value for every axis, as the library it stands in for does (a sequence fails there); ``fix`` says what takes
    one per axis."""
    for name, value in values.items():
        if isinstance(value, (tuple, list)):
            raise TypeError(f"{function} takes one {name} for every axis, as the original does, got {value!r}; {fix}")


def _checked_win_size(name, win_size) -> int:
    """One axis' window size, an odd int from MIN_WIN_SIZE to MAX_WIN_SIZE, or the error naming ``name``."""
    if isinstance(win_size, bool) or not isinstance(win_size, numbers.Integral):
        raise TypeError(f"{name} must be an odd int from {MIN_WIN_SIZE} to {MAX_WIN_SIZE} (or one per spatial "
                        f"axis), got {win_size!r}")
    if win_size % 2 == 0:
        raise ValueError(f"{name} must be odd, got {win_size}; use {_allowed_near(win_size)}")
    if not MIN_WIN_SIZE <= win_size <= MAX_WIN_SIZE:
        raise ValueError(f"{name} must be from {MIN_WIN_SIZE} to {MAX_WIN_SIZE}, got {win_size}; "
                         f"use {_allowed_near(win_size)}")
    return int(win_size)


def _allowed_near(win_size) -> str:
    """The allowed window sizes (odd, MIN_WIN_SIZE to MAX_WIN_SIZE) next to a refused one, as a suggestion."""
    near = [w for w in (win_size - 1, win_size + 1) if MIN_WIN_SIZE <= w <= MAX_WIN_SIZE and w % 2]
    return " or ".join(map(str, near or [min(max(win_size, MIN_WIN_SIZE), MAX_WIN_SIZE)]))


def _checked_params(win_size, sigma, window, K1, K2, padding, sample_covariance, data_range,
                    spatial_dims) -> SsimParams:
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {', '.join(map(repr, WINDOWS))}, got {window!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {', '.join(map(repr, PADDINGS))}, got {padding!r}")
    spatial_dims = check_spatial_dims(spatial_dims)
    sizes = [_checked_win_size(name, w) for name, w in per_axis_values("win_size", win_size, spatial_dims,
                                                                         (11, 7, 7))]
    sigmas = per_axis_values("sigma", sigma, spatial_dims, (1.5, 0.8, 0.8))
    if window == "gaussian":
        sigmas = [(name, _positive_finite(name, s, "it is the Gaussian window's standard deviation in pixels "
                                                   "(e.g. 1.5)")) for name, s in sigmas]
    for name, value in (("K1", K1), ("K2", K2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r} (defaults: K1=0.01, K2=0.03)")
    data_range = _positive_finite(
        "data_range", data_range, "it is the value range of the images (1 for [0, 1] floats, 255 for uint8)"
    )
    np_ = math.prod(sizes)
    return SsimParams(
        windows=tuple(tuple(float(t) for t in _reference.window_taps(window, w, s if window == "gaussian" else 0.0))
                      for w, (_, s) in zip(sizes, sigmas)),
        K1=float(K1),
        K2=float(K2),
        data_range=data_range,
        padding=padding,
        cov=np_ / (np_ - 1) if sample_covariance else 1.0,
        crops=tuple(_reference.mean_weights_crop(padding, w) for w in sizes),
        spatial=spatial_dims,
    )


_cached_params = functools.lru_cache(maxsize=256, typed=True)(_checked_params)


def check_compute_range(params: SsimParams, dtype) -> None:
    """Refuses constants that overflow arithmetic in ``dtype`` (the compute dtype), on every path alike.

    The kernels compute on values scaled by 1/L, with C1 = K1^2 and C2 = K2^2;
    for images inside their data range the largest quantity is the
    denominator (mx^2 + my^2 + C1)(sxx + syy + C2) <= 4 (1 + C1)(1 + C2).
    Both it and 1/L must be finite in ``dtype``.
    """
    dtype = np.dtype(dtype)
    largest = float(np.finfo(dtype).max)
    c1, c2 = params.K1 * params.K1, params.K2 * params.K2
    if not 4.0 * (1.0 + c1) * (1.0 + c2) <= largest:
        raise ValueError(f"K1={params.K1!r}, K2={params.K2!r}: SSIM's constants C1 = K1^2 and C2 = K2^2 overflow "
                         f"{dtype.name} arithmetic (4 (1 + C1)(1 + C2) must stay below {largest:.3g}); use "
                         "constants near the defaults K1=0.01, K2=0.03")
    if not 1.0 / params.data_range <= largest:
        raise ValueError(f"data_range={params.data_range!r} is too small for {dtype.name} arithmetic (1 / "
                         f"data_range must stay below {largest:.3g}); it is the value range of the images")
