"""cussim.structural_similarity against scikit-image's own function (docs/spec.rst section 5 and 7)."""

import warnings

import numpy as np
import pytest
from scipy import ndimage
from skimage import data
from skimage.metrics import structural_similarity as skimage_ssim

from cussim import structural_similarity
from executors import Executor


@pytest.fixture(params=["reference", "emulator", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request, monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator" if request.param == "emulator" else "reference")
    return Executor(request.param)


def _pairs():
    rng = np.random.default_rng(3)
    camera = data.camera()
    astronaut = data.astronaut()[::2, ::2]
    moon = data.moon()[100:300, 150:400]
    floats = rng.random((48, 60), dtype=np.float32)
    return {
        "camera-noise": (camera, np.clip(camera + rng.normal(0, 25, camera.shape), 0, 255).astype(np.uint8), {}),
        "astronaut-blur-rgb": (astronaut, ndimage.gaussian_filter(astronaut, (1.5, 1.5, 0)),
                               {"channel_axis": -1}),
        "astronaut-channels-first": (np.moveaxis(astronaut, -1, 0),
                                     np.moveaxis(np.clip(astronaut + 30, 0, 255), -1, 0), {"channel_axis": 0}),
        "moon-uint16": (moon.astype(np.uint16) * 200, np.roll(moon, 2, axis=0).astype(np.uint16) * 200,
                        {"data_range": 65535}),
        "random-float32": (floats, np.clip(floats + 0.1 * rng.standard_normal(floats.shape, dtype=np.float32), 0, 1),
                           {"data_range": 1.0}),
    }


PAIRS = _pairs()
OPTIONS = {
    "default": {},
    "gaussian": {"gaussian_weights": True},
    "gaussian-sigma1.2-population": {"gaussian_weights": True, "sigma": 1.2, "use_sample_covariance": False},
    "win3": {"win_size": 3},
    "win11-K": {"win_size": 11, "K1": 0.02, "K2": 0.05},
}


def _compare(backend, got, expected, working_dtype):
    """float64 work (skimage's for integer and float64 images) at 1e-10 / 1e-9; float32 work at docs/spec.rst's."""
    got = backend.asnumpy(got)
    if np.dtype(working_dtype) == np.float64:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 if np.ndim(expected) else 1e-10)
    elif np.ndim(expected):
        assert np.linalg.norm(got - expected) <= 1e-4 * np.linalg.norm(expected)
    else:
        assert abs(float(got) - float(expected)) < 1e-5


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_matches_skimage(backend, pair, option):
    im1, im2, extra = PAIRS[pair]
    kwargs = {**extra, **OPTIONS[option]}
    if "data_range" not in kwargs and im1.dtype != np.uint8:
        kwargs["data_range"] = 255
    expected = skimage_ssim(im1, im2, gradient=True, full=True, **kwargs)
    got = structural_similarity(backend.asarray(im1), backend.asarray(im2), gradient=True, full=True, **kwargs)
    assert len(got) == 3
    working = expected[2].dtype
    assert got[1].dtype == working and got[2].dtype == working
    assert got[1].shape == im1.shape and got[2].shape == im1.shape
    for g, e in zip(got, expected):
        _compare(backend, g, e, working)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.uint8, np.int16, np.uint16])
def test_dtypes_and_return_types(backend, dtype):
    rng = np.random.default_rng(0)
    x = (rng.random((40, 44)) * 200).astype(dtype)
    y = (rng.random((40, 44)) * 200).astype(dtype)
    kwargs = {"data_range": 255} if dtype in (np.float16, np.float32, np.float64, np.int16, np.uint16) else {}
    expected = skimage_ssim(x, y, **kwargs)
    got = structural_similarity(backend.asarray(x), backend.asarray(y), **kwargs)
    if backend.name != "cupy":
        assert type(got) is type(expected)
    _compare(backend, got, expected, np.float32 if dtype in (np.float16, np.float32) else np.float64)


def test_golden_values():
    cam = data.camera()
    noisy = np.clip(cam + 20.0 * np.random.RandomState(5).randn(*cam.shape), 0, 255).astype(np.uint8)
    ipol = structural_similarity(cam, noisy, gaussian_weights=True, use_sample_covariance=False, data_range=255)
    assert abs(ipol - 0.357959091663361) < 1e-3  # the IPOL imdiff value skimage pins to 3 decimals
    assert abs(structural_similarity(cam, noisy) - 0.3674518327910367) < 1e-10  # skimage 0.17's value


def _volumes():
    rng = np.random.default_rng(1)
    smooth = ndimage.gaussian_filter(rng.random((13, 15, 17)), 2)
    smooth = (smooth - smooth.min()) / np.ptp(smooth)
    noisy = np.clip(smooth + 0.1 * rng.standard_normal(smooth.shape), 0, 1)
    return {
        "float64": (smooth, noisy, {"data_range": 1}),
        "uint8-channels-last": (np.stack([smooth, noisy[::-1]], -1).__mul__(255).astype(np.uint8),
                                np.stack([noisy, smooth], -1).__mul__(255).astype(np.uint8), {"channel_axis": -1}),
        "float32": (smooth.astype(np.float32), noisy.astype(np.float32), {"data_range": 1}),
    }


VOLUMES = _volumes()


@pytest.mark.parametrize("volume", sorted(VOLUMES))
@pytest.mark.parametrize("option", ["default", "gaussian", "gaussian-sigma1.2-population", "win3"])
def test_volumes_match_skimage(backend, volume, option):
    im1, im2, extra = VOLUMES[volume]
    kwargs = {**extra, **OPTIONS[option]}
    expected = skimage_ssim(im1, im2, gradient=True, full=True, **kwargs)
    got = structural_similarity(backend.asarray(im1), backend.asarray(im2), gradient=True, full=True, **kwargs)
    working = expected[2].dtype
    assert got[1].shape == im1.shape and got[2].shape == im1.shape and got[2].dtype == working
    for g, e in zip(got, expected):
        _compare(backend, g, e, working)


def test_four_spatial_dimensions_are_passed_to_skimage():
    rng = np.random.default_rng(1)
    x, y = rng.random((7, 7, 8, 9)), rng.random((7, 7, 8, 9))
    assert structural_similarity(x, y, data_range=1) == skimage_ssim(x, y, data_range=1)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: structural_similarity(np.zeros((9, 9)), np.zeros((8, 8)), data_range=1, K1=-1),
         "Input images must have the same dimensions"),
        (lambda: structural_similarity(np.zeros((9, 9)), np.zeros((9, 9)), data_range=1, K1=-0.1),
         "K1 must be positive"),
        (lambda: structural_similarity(np.zeros((9, 9)), np.zeros((9, 9)), data_range=1, K2=-0.1),
         "K2 must be positive"),
        (lambda: structural_similarity(np.zeros((9, 9)), np.zeros((9, 9)), data_range=1, sigma=-1.0),
         "sigma must be positive"),
        (lambda: structural_similarity(np.zeros((9, 9)), np.zeros((9, 9)), data_range=1, win_size=10),
         "win_size exceeds image extent"),
        (lambda: structural_similarity(np.zeros((9, 9)), np.zeros((9, 9)), data_range=1, win_size=4),
         "Window size must be odd"),
        (lambda: structural_similarity(np.zeros((5, 5)), np.zeros((5, 5)), data_range=1),
         "win_size exceeds image extent"),
        # where scikit-image divides by zero (ZeroDivisionError) or reads a negative window
        *[(lambda w=w: structural_similarity(np.zeros((9, 9)), np.zeros((9, 9)), data_range=1, win_size=w),
           rf"win_size must be an odd size from 3 to the images' smaller side \(9; 1 only with "
           rf"use_sample_covariance=False\), got {w}; use 7 \(the default\)") for w in (1, -1, -3)],
        (lambda: structural_similarity(np.zeros((9, 9)), np.zeros((9, 9))), "you must specify the data_range"),
        (lambda: structural_similarity(np.zeros((9, 9)), np.zeros((9, 9)), data_range=0), "data_range must be"),
    ],
)
def test_errors_in_skimage_order(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_errors_match_skimage_messages():
    for kwargs in ({"K1": -0.1}, {"win_size": 4}, {"win_size": 11}, {}):
        x = np.zeros((9, 9))
        with pytest.raises(ValueError) as theirs:
            skimage_ssim(x, x, **kwargs)
        with pytest.raises(ValueError) as ours:
            structural_similarity(x, x, **kwargs)
        assert str(ours.value) == str(theirs.value)


def test_warnings():
    x8 = np.zeros((9, 9), np.uint8)
    with pytest.warns(UserWarning, match="Inputs have mismatched dtypes"):
        structural_similarity(x8, x8.astype(np.uint16))
    with pytest.warns(UserWarning, match="Setting data_range based on im1.dtype. data_range = 65535"):
        structural_similarity(np.zeros((9, 9), np.int16), np.zeros((9, 9), np.int16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        structural_similarity(x8, x8)  # uint8: no warning


@pytest.mark.parametrize("options", [{}, {"gaussian_weights": True}, {"channel_axis": -1}])
def test_full_changes_no_bit_of_the_mean(backend, options):
    """As scikit-image's own suite asserts: the mean with ``full=True`` is the mean without (the reference
    took one from a cropped view of the whole map, the other from a directly cropped map: 84 of 200 differed)."""
    rng = np.random.default_rng(11)
    for _ in range(12):
        shape = tuple(rng.integers(40, 260, 2)) + ((3,) if "channel_axis" in options else ())
        x, y = (backend.asarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(2))
        assert structural_similarity(x, y, full=True, **options)[0] == structural_similarity(x, y, **options)


def test_identical_images_give_exactly_one(backend):
    x = data.camera()[:64, :64]
    assert float(structural_similarity(backend.asarray(x), backend.asarray(x))) == 1.0


def test_gpu_kernels_need_a_window_they_were_compiled_for(monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    x = np.random.default_rng(0).random((40, 40))
    # NumPy inputs fall back to the reference for windows the kernels lack ...
    expected = skimage_ssim(x, x[::-1], data_range=1, win_size=21)
    assert abs(structural_similarity(x, x[::-1], data_range=1, win_size=21) - expected) < 1e-10


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_tiny_gaussians(backend, sigma):
    """sigma 0 is the identity filter; a radius-0 window has no kernel and uses the reference on NumPy."""
    if backend.name == "cupy":
        pytest.skip("the GPU kernels need a radius from 1 to 7")
    x = np.random.default_rng(0).random((20, 20))
    kwargs = dict(data_range=1, gaussian_weights=True, sigma=sigma, use_sample_covariance=False)
    assert abs(structural_similarity(x, x[::-1].copy(), **kwargs) - skimage_ssim(x, x[::-1].copy(), **kwargs)) < 1e-10


def test_bool_images_take_data_range_1_as_skimage_does(backend):
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 16)) > 0.5, rng.random((16, 16)) > 0.5
    _compare(backend, structural_similarity(backend.asarray(x), backend.asarray(y)), skimage_ssim(x, y), np.float64)
