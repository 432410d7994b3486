"""A window per spatial axis (``win_size`` and ``sigma`` as one value per axis, as torchmetrics takes them): the
float64 path against SciPy's separable filters and finite differences, a scalar's numbers unchanged, every
error naming the axis, and the kernels' refusal. torchmetrics itself is compared in tests/test_torch.py."""

import numpy as np
import pytest
from scipy import ndimage

import cussim
from cussim import _reference

PADDINGS = ("same", "valid", "reflect")
SCIPY_MODES = {"same": "constant", "reflect": "reflect"}  # scipy's "reflect" is half-sample symmetric


def pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    return x, np.clip(x + 0.2 * rng.standard_normal(shape), 0, 1)


def scipy_ssim_map(x, y, windows, padding):
    """SSIM's map (population covariance, data range 1) from scipy.ndimage.correlate1d, one window per trailing
    axis; "valid" as "same" cropped by each axis' radius."""
    spatial = len(windows)

    def blur(a):
        for axis, taps in zip(range(a.ndim - spatial, a.ndim), windows):
            a = ndimage.correlate1d(a, taps, axis=axis, mode=SCIPY_MODES.get(padding, "constant"))
        return a

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    S = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    radii = [(len(t) - 1) // 2 for t in windows]
    return _reference.cropped(S, radii, spatial) if padding == "valid" else S


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("shape, win_size, sigma", [((2, 30, 26), (11, 5), (1.5, 0.7)),
                                                    ((17, 14, 19), (3, 7, 5), (0.6, 1.2, 0.9))], ids=["2d", "3d"])
def test_map_and_mean_are_scipys_separable_filter(padding, shape, win_size, sigma):
    x, y = pair(shape)
    spatial = len(win_size)
    windows = [_reference.gaussian_taps((w - 1) // 2, s) for w, s in zip(win_size, sigma)]
    kwargs = dict(win_size=win_size, sigma=sigma, padding=padding, spatial_dims=spatial)
    expected = scipy_ssim_map(x, y, windows, padding)
    S = cussim.ssim_map(x, y, **kwargs)
    np.testing.assert_allclose(S, expected, rtol=0, atol=1e-12)
    crops = [(w - 1) // 2 if padding == "reflect" else 0 for w in win_size]  # "reflect" leaves each axis' r out
    assert float(cussim.ssim(x, y, **kwargs)) == pytest.approx(_reference.cropped(expected, crops, spatial).mean(),
                                                              abs=1e-12)


def test_a_uniform_window_per_axis_with_sample_covariance():
    x, y = pair((24, 21), seed=1)
    value = cussim.ssim(x, y, win_size=(7, 3), window="uniform", sample_covariance=True, padding="valid")
    mx, my = (ndimage.uniform_filter(a, (7, 3)) for a in (x, y))
    c = 21 / 20  # NP / (NP - 1), NP = 7 * 3 pixels in the window
    sxx, syy, sxy = (c * (ndimage.uniform_filter(a * b, (7, 3)) - ma * mb)
                     for a, b, ma, mb in ((x, x, mx, mx), (y, y, my, my), (x, y, mx, my)))
    S = (2 * mx * my + 1e-4) * (2 * sxy + 9e-4) / ((mx**2 + my**2 + 1e-4) * (sxx + syy + 9e-4))
    assert float(value) == pytest.approx(S[3:-3, 1:-1].mean(), abs=1e-12)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_one_value_per_axis_that_agree_are_the_scalar_bit_for_bit(padding, window):
    x, y = pair((2, 7, 20, 23), seed=2)
    for spatial, sizes, sigmas in ((2, [7, 7], (0.9, 0.9)), (3, (5, 5, 5), [1.5] * 3)):
        scalar = dict(win_size=sizes[0], sigma=sigmas[0], window=window, padding=padding, spatial_dims=spatial)
        per_axis = dict(scalar, win_size=sizes, sigma=sigmas)
        for function in (cussim.ssim_with_gradient, cussim.dssim_with_gradient):
            for got, want in zip(function(x, y, **per_axis), function(x, y, **scalar)):
                np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(cussim.ssim_map(x, y, **per_axis), cussim.ssim_map(x, y, **scalar))


def central_differences(f, x, points, h=1e-6):
    """(f(x + h e_p) - f(x - h e_p)) / 2h at each index of ``points``."""
    numeric = []
    for p in points:
        e = np.zeros_like(x)
        e[p] = h
        numeric.append((float(f(x + e)) - float(f(x - e))) / (2 * h))
    return np.array(numeric)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("options", [dict(win_size=(9, 3), sigma=(1.5, 0.5)),
                                     dict(win_size=(5, 7), window="uniform", sample_covariance=True),
                                     dict(win_size=(3, 5, 7), sigma=(0.5, 1.0, 1.5), spatial_dims=3)],
                         ids=["gaussian", "uniform", "volume"])
def test_exact_gradient_against_finite_differences(padding, options):
    spatial = options.get("spatial_dims", 2)
    x, y = pair((11, 12, 13) if spatial == 3 else (2, 16, 18), seed=3)
    kwargs = dict(options, padding=padding)
    value, grad = cussim.ssim_with_gradient(x, y, **kwargs)
    rng = np.random.default_rng(4)
    points = [tuple(int(rng.integers(n)) for n in x.shape) for _ in range(6)] + [(0,) * x.ndim,
                                                                               tuple(n - 1 for n in x.shape)]
    numeric = central_differences(lambda a: cussim.ssim(a, y, **kwargs), x, points)
    exact = np.array([grad[p] for p in points])
    np.testing.assert_allclose(exact, numeric, rtol=1e-6, atol=1e-9)
    dssim_value, dssim_grad = cussim.dssim_with_gradient(x, y, **kwargs)
    assert float(dssim_value) == pytest.approx((1 - float(value)) / 2, abs=1e-15)
    np.testing.assert_allclose(dssim_grad, -grad / 2, rtol=1e-13, atol=1e-17)


def test_l1_dssim_loss_with_a_window_per_axis():
    x, y = pair((3, 20, 22), seed=5)
    kwargs = dict(win_size=(11, 5), sigma=(1.5, 0.8))
    loss, grad = cussim.l1_dssim_loss_with_gradient(x, y, weight=0.3, **kwargs)
    expected = 0.7 * np.abs(x - y).mean() + 0.3 * (1 - cussim.ssim(x, y, **kwargs))
    assert float(cussim.l1_dssim_loss(x, y, weight=0.3, **kwargs)) == pytest.approx(float(expected), abs=1e-14)
    assert float(loss) == pytest.approx(float(expected), abs=1e-14)
    points = [(0, 3, 4), (1, 10, 21), (2, 19, 0)]
    numeric = central_differences(lambda a: cussim.l1_dssim_loss(a, y, weight=0.3, **kwargs), x, points)
    np.testing.assert_allclose([grad[p] for p in points], numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("mask_mode", ["mean", "normalized"])
def test_masks_with_a_window_per_axis(mask_mode):
    x, y = pair((18, 20), seed=6)
    mask = np.random.default_rng(7).random((18, 20)) > 0.3
    kwargs = dict(win_size=(3, 7), sigma=(0.6, 1.2), padding="reflect", mask=mask, mask_mode=mask_mode)
    value, grad = cussim.ssim_with_gradient(x, y, **kwargs)
    points = [(1, 1), (9, 10), (17, 2), (4, 19)]
    numeric = central_differences(lambda a: cussim.ssim(a, y, **kwargs), x, points)
    np.testing.assert_allclose([grad[p] for p in points], numeric, rtol=1e-6, atol=1e-9)
    if mask_mode == "mean":  # the mask's weights over the map cropped by each axis' radius
        S = cussim.ssim_map(x, y, win_size=(3, 7), sigma=(0.6, 1.2), padding="reflect")
        assert float(value) == pytest.approx(np.average(S[1:-1, 3:-3], weights=mask[1:-1, 3:-3]), abs=1e-14)


@pytest.mark.parametrize("variant", ["pytorch_msssim", "tensorflow", "torchmetrics", "piq"])
def test_ms_ssim_takes_the_window_of_each_axis_at_every_scale(variant):
    x, y = pair((2, 44, 23), seed=8)
    kwargs = dict(variant=variant, weights=(0.4, 0.6), win_size=(7, 3), sigma=(1.0, 0.5))
    value, grad = cussim.ms_ssim_with_gradient(x, y, **kwargs)
    assert float(cussim.ms_ssim(x, y, **kwargs)) == float(value)
    points = [(0, 0, 0), (0, 21, 11), (1, 43, 22), (1, 5, 17)]
    numeric = central_differences(lambda a: cussim.ms_ssim(a, y, **kwargs), x, points)
    np.testing.assert_allclose([grad[p] for p in points], numeric, rtol=1e-6, atol=1e-9)
    # one value per axis that agree: the scalar's numbers
    same = dict(kwargs, win_size=(5, 5), sigma=(0.8, 0.8))
    assert float(cussim.ms_ssim(x, y, **same)) == float(cussim.ms_ssim(x, y, **dict(same, win_size=5, sigma=0.8)))


def test_the_window_must_fit_each_axis():
    x, y = pair((20, 8))
    assert cussim.ssim(x, y, win_size=(9, 7)).shape == ()
    with pytest.raises(ValueError, match="x's images are 20x8, smaller than the 7x9 window"):
        cussim.ssim(x, y, win_size=(7, 9))
    with pytest.raises(ValueError, match=r"MS-SSIM .* needs sides of at least 25x13"):
        cussim.ms_ssim(x, y, win_size=(13, 7), weights=(0.5, 0.5))
    assert cussim.ms_ssim(np.tile(x, (2, 2)), np.tile(y, (2, 2)), win_size=(13, 7), weights=(0.5, 0.5)).shape == ()


@pytest.mark.parametrize("options, error, message", [
    (dict(win_size=(11, 7, 7)), ValueError, r"win_size=\(11, 7, 7\) has 3 values, but the images have 2 spatial axes"
                                            r".*win_size=\(11, 7\)"),
    (dict(win_size=(11, 7), spatial_dims=3), ValueError, "has 2 values, but the images have 3 spatial axes"),
    (dict(sigma=[1.5]), ValueError, r"sigma=\[1.5\] has 1 value, but the images have 2 spatial axes"),
    (dict(sigma=(1.5, 0.8, 1.0), window="uniform"), ValueError, "sigma=.* has 3 values"),
    (dict(win_size=(11, 8)), ValueError, r"win_size\[1\] \(spatial axis 1\) must be odd, got 8; use 7 or 9"),
    (dict(win_size=(17, 7)), ValueError, r"win_size\[0\] \(spatial axis 0\) must be from 3 to 15, got 17; use 15"),
    (dict(win_size=(11, 7.0)), TypeError, r"win_size\[1\] \(spatial axis 1\) must be an odd int"),
    (dict(sigma=(1.5, 0)), ValueError, r"sigma\[1\] \(spatial axis 1\) must be a positive finite number, got 0"),
    (dict(sigma=(-1.0, 1.5)), ValueError, r"sigma\[0\] \(spatial axis 0\) must be a positive finite number"),
])
def test_bad_values_per_axis_are_named(options, error, message):
    x, y = pair((20, 20, 20))
    with pytest.raises(error, match=message):
        cussim.ssim(x, y, **options)


@pytest.mark.parametrize("call", [
    lambda x, y: cussim.ssim(x, y, win_size=(11, 7)),
    lambda x, y: cussim.ssim_with_gradient(x, y, sigma=(1.5, 0.8)),
    lambda x, y: cussim.ssim_map(x, y, win_size=(5, 3), padding="valid"),
    lambda x, y: cussim.ms_ssim(x, y, win_size=(5, 3), weights=(0.5, 0.5)),
], ids=["ssim", "ssim_with_gradient", "ssim_map", "ms_ssim"])
def test_the_kernels_refuse_a_window_per_axis(monkeypatch, call):
    """The kernels are built for one window radius: on their path (here the emulator's) a window per axis is a
    ValueError naming the arguments and the float64 path, raised before any kernel is built."""
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    x, y = (a.astype(np.float32) for a in pair((24, 24)))
    with pytest.raises(ValueError, match=r"win_size and sigma give each spatial axis its own window here "
                                         r"\(\d+x\d+ taps\).*pass NumPy arrays or CPU tensors \(the float64 path"):
        call(x, y)


def test_parameters_say_when_the_axes_differ():
    from cussim._params import ssim_params

    p = ssim_params(win_size=(11, 11), sigma=(1.5, 0.8), padding="reflect")
    assert p.win_sizes == (11, 11) and p.crops == (5, 5) and not p.one_window
    with pytest.raises(ValueError, match=r"taps: these parameters give each spatial axis its own window \(11x11"):
        p.taps
    with pytest.raises(ValueError, match="radius: .* a window per axis is computed by the float64 path"):
        cussim.make_ms_ssim_workspace(np.zeros((200, 200)), win_size=(11, 7))
    q = ssim_params(win_size=(7, 7), sigma=[1.5, 1.5])
    assert q == ssim_params(win_size=7) and q.one_window and q.taps == ssim_params(win_size=7).taps
    assert ssim_params(win_size=(3, 5), sample_covariance=True).cov == 15 / 14


def test_the_skimage_drop_in_takes_one_window_as_skimage_does():
    x, y = pair((30, 30))
    for options in (dict(win_size=(7, 5)), dict(gaussian_weights=True, sigma=(1.5, 0.8))):
        with pytest.raises(TypeError, match="structural_similarity takes one .* for every axis, as the original does"):
            cussim.structural_similarity(x, y, data_range=1.0, **options)
    # what the message points to: scikit-image's uniform window and conventions, here with one size on both axes
    native = cussim.ssim(x, y, win_size=(7, 7), window="uniform", padding="reflect", sample_covariance=True)
    assert float(native) == pytest.approx(cussim.structural_similarity(x, y, data_range=1.0), abs=1e-14)


def test_the_reference_takes_one_window_or_one_per_axis():
    taps = _reference.window_taps("gaussian", 5, 1.0)
    wide = _reference.window_taps("gaussian", 7, 1.0)
    same = _reference.axis_windows(taps, 3)
    assert len(same) == 3 and all(np.array_equal(w, taps) for w in same)
    assert [len(w) for w in _reference.axis_windows([taps, wide], 2)] == [5, 7]
    with pytest.raises(ValueError, match="taps holds 2 windows; images with 3 spatial axes take one window"):
        _reference.axis_windows([taps, wide], 3)
