"""The float64 reference against scikit-image and against finite differences (docs/spec.rst 4, 5, 7)."""

import numpy as np
import pytest
from scipy import ndimage
from skimage import data
from skimage.metrics import structural_similarity

from cussim import _reference as ref


def _pairs():
    rng = np.random.default_rng(7)
    camera = data.camera()
    astronaut = data.astronaut()
    noisy = np.clip(camera + rng.normal(0, 18, camera.shape), 0, 255).astype(np.uint8)
    blurred = ndimage.gaussian_filter(astronaut.astype(float), (2, 2, 0)).astype(np.uint8)
    moon = data.moon()
    shifted = np.roll(moon, 3, axis=1)
    coins = data.coins().astype(np.float64) / 255
    brighter = np.clip(coins * 1.2 + 0.05, 0, 1)
    return {
        "camera-noise": (camera, noisy, None, None),
        "astronaut-blur": (astronaut, blurred, -1, None),
        "moon-shift": (moon, shifted, None, None),
        "coins-float": (coins, brighter, None, 1.0),
    }


PAIRS = _pairs()


def _central_differences(f, x, h):
    """d f / dx by central differences, one element at a time."""
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += h
        minus[index] -= h
        numeric[index] = (f(plus) - f(minus)) / (2 * h)
    return numeric


def _skimage_like(im1, im2, channel_axis, data_range, gaussian=False, win_size=None, sigma=1.5, sample=True):
    """The reference with skimage's conventions: (mean, uncropped map)."""
    if data_range is None:
        data_range = 255.0
    if gaussian:
        taps = ref.skimage_gaussian_taps(sigma)
        win_size = win_size or len(taps)
    else:
        win_size = win_size or 7
        taps = ref.uniform_taps(win_size)
    cov = win_size**2 / (win_size**2 - 1) if sample else 1.0
    a, b = (np.moveaxis(im, channel_axis, 0) if channel_axis is not None else im for im in (im1, im2))
    kwargs = dict(padding="reflect", data_range=data_range, cov=cov)
    value = ref.ssim(a, b, taps, crop=(win_size - 1) // 2, axis=(-2, -1), **kwargs)
    full = ref.ssim_map(a, b, taps, **kwargs)
    if channel_axis is not None:
        full = np.moveaxis(full, 0, channel_axis)
    return float(np.mean(value)), full


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("gaussian", [False, True], ids=["uniform7", "gaussian"])
def test_matches_skimage(pair, gaussian):
    im1, im2, channel_axis, data_range = PAIRS[pair]
    expected, expected_map = structural_similarity(
        im1, im2, channel_axis=channel_axis, data_range=data_range if data_range else 255,
        gaussian_weights=gaussian, full=True,
    )
    value, full = _skimage_like(im1, im2, channel_axis, data_range, gaussian)
    assert abs(value - expected) < 1e-10
    np.testing.assert_allclose(full, expected_map, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    "options",
    [
        dict(win_size=5), dict(win_size=11, sample=False), dict(gaussian=True, sigma=0.8),
        dict(gaussian=True, sigma=2.0, win_size=9), dict(gaussian=True, sample=False),
    ],
    ids=["uniform5", "uniform11-population", "gaussian-sigma0.8", "gaussian-sigma2-win9", "gaussian-population"],
)
def test_matches_skimage_parameters(options):
    im1, im2, _, _ = PAIRS["camera-noise"]
    gaussian = options.get("gaussian", False)
    kwargs = dict(gaussian_weights=gaussian, use_sample_covariance=options.get("sample", True),
                  sigma=options.get("sigma", 1.5), data_range=255, full=True)
    if "win_size" in options:
        kwargs["win_size"] = options["win_size"]
    expected, expected_map = structural_similarity(im1, im2, **kwargs)
    value, full = _skimage_like(im1, im2, None, 255.0, **options)
    assert abs(value - expected) < 1e-10
    np.testing.assert_allclose(full, expected_map, rtol=0, atol=1e-9)


def _skimage_test_camera():
    """skimage's own test images: the camera and a noisy copy (its test module's seed 5)."""
    cam = data.camera()
    noise = np.random.RandomState(5).randn(*cam.shape)
    return cam, np.clip(cam + 20.0 * noise, 0, 255).astype(cam.dtype)


def test_skimage_golden_values():
    cam, cam_noisy = _skimage_test_camera()
    # docs/spec.rst section 5: the IPOL imdiff value that skimage's tests pin (to 3 decimals),
    # with Gaussian weights and population covariance.
    ipol = ref.ssim(cam, cam_noisy, ref.skimage_gaussian_taps(1.5), padding="reflect", data_range=255.0, crop=5)
    assert abs(ipol - 0.357959091663361) < 1e-3
    assert abs(ipol - structural_similarity(cam, cam_noisy, gaussian_weights=True, use_sample_covariance=False,
                                            data_range=255)) < 1e-10
    # skimage 0.17's value with the default settings, which skimage pins to 7 decimals.
    legacy = ref.ssim(cam, cam_noisy, ref.uniform_taps(7), padding="reflect", data_range=255.0, cov=49 / 48, crop=3)
    assert abs(legacy - 0.3674518327910367) < 1e-7


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("window", ref.WINDOWS)
@pytest.mark.parametrize("cov", [1.0, 25 / 24], ids=["population", "sample"])
def test_gradient_matches_finite_differences(padding, window, cov):
    rng = np.random.default_rng(3)
    x = rng.random((2, 9, 12)) * 2.0
    y = rng.random((2, 9, 12)) * 2.0
    taps = ref.window_taps(window, 5, 1.1)
    kwargs = dict(padding=padding, data_range=2.0, cov=cov, crop=ref.mean_weights_crop(padding, 5))
    value, grad = ref.ssim_with_gradient(x, y, taps, axis=(1, 2), **kwargs)
    assert value.shape == (2,)
    numeric = _central_differences(lambda v: ref.ssim(v, y, taps, axis=(1, 2), **kwargs).sum(), x, 1e-6)
    assert np.abs(grad - numeric).max() / np.abs(numeric).max() < 1e-6


@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_adjoint_is_the_transpose(padding):
    """<F x, g> == <x, F^T g> for random x and g: the adjoint is exact, borders included."""
    rng = np.random.default_rng(11)
    taps = ref.window_taps("gaussian", 7, 1.5)
    x = rng.standard_normal((8, 11))
    fx = ref.filter_plane(x, taps, padding)
    g = rng.standard_normal(fx.shape)
    lhs = np.sum(fx * g)
    rhs = np.sum(x * ref.filter_plane_adjoint(g, taps, padding, x.shape))
    assert abs(lhs - rhs) < 1e-12 * max(1.0, abs(lhs))


def test_gradient_over_broadcast_reference_and_all_axes():
    rng = np.random.default_rng(4)
    x = rng.random((3, 10, 10))
    y = rng.random((10, 10))
    taps = ref.window_taps("gaussian", 5, 1.5)
    value, grad = ref.ssim_with_gradient(x, y, taps)
    assert np.ndim(value) == 0 and grad.shape == x.shape
    per_image = [ref.ssim_with_gradient(x[i], y, taps) for i in range(3)]
    assert np.isclose(value, np.mean([v for v, _ in per_image]), rtol=1e-14)
    np.testing.assert_allclose(grad, np.stack([g for _, g in per_image]) / 3, rtol=1e-12)


def test_gradient_of_an_image_broadcast_over_the_references_is_their_sum():
    rng = np.random.default_rng(5)
    x = rng.random((1, 10, 10))
    y = rng.random((3, 10, 10))
    taps = ref.window_taps("gaussian", 5, 1.5)
    value, grad = ref.ssim_with_gradient(x, y, taps)
    assert grad.shape == x.shape
    per_reference = [ref.ssim_with_gradient(x[0], y[i], taps) for i in range(3)]
    assert np.isclose(value, np.mean([v for v, _ in per_reference]), rtol=1e-14)
    np.testing.assert_allclose(grad[0], sum(g for _, g in per_reference) / 3, rtol=1e-12)


def test_chunks_cover_the_map_once_and_an_empty_map_has_none():
    for planes, first, rest in ((3, 40, 500), (1, 7, 30000), (5, 2, 3)):
        seen = np.zeros((planes, first), int)
        for images, rows in ref._chunks(planes, first, rest):
            seen[images, rows] += 1
        assert (seen == 1).all()
    assert list(ref._chunks(3, 0, 10)) == [] and list(ref._chunks(3, 10, 0)) == []


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("level", [0.0, 0.3712, 1.0, 255.0])
def test_flat_image_against_itself_is_exactly_one(padding, level):
    flat = np.full((2, 17, 19), level)
    taps = ref.window_taps("gaussian", 11, 1.5)
    S = ref.ssim_map(flat, flat, taps, padding=padding, data_range=255.0)
    assert np.all(S == 1.0)
    value, grad = ref.ssim_with_gradient(flat, flat, taps, padding=padding, data_range=255.0)
    assert value == 1.0 and np.all(np.isfinite(grad))


def test_bad_arguments_are_named():
    x = np.zeros((2, 8, 8))
    with pytest.raises(ValueError, match="must include both spatial axes"):
        ref.ssim(x, x, ref.uniform_taps(3), axis=(0, 2))
    with pytest.raises(ValueError, match="window must be one of"):
        ref.window_taps("box", 3, 1.0)
    with pytest.raises(ValueError, match="padding must be one of"):
        ref.ssim_map(x, x, ref.uniform_taps(3), padding="zeros")
    with pytest.raises(ValueError, match="odd number of taps"):
        ref.ssim_map(x, x, np.full(4, 0.25))
    with pytest.raises(ValueError, match="two spatial axes"):
        ref.ssim_map(x[0, 0], x[0, 0], ref.uniform_taps(3))
    with pytest.raises(ValueError, match="at least 11 pixels a side"):
        ref.ssim_map(x, x, ref.uniform_taps(11), padding="valid")


def test_nan_stays_local():
    rng = np.random.default_rng(2)
    x = rng.random((30, 30))
    y = x.copy()
    x[15, 15] = np.nan
    S = ref.ssim_map(x, y, ref.window_taps("gaussian", 5, 1.5))
    assert np.isnan(S[15, 15]) and np.isnan(S[13, 17])
    assert np.isfinite(S[:12]).all() and np.isfinite(S[:, :12]).all()


def _reach(shape, pixel, taps, padding):
    """Where the gradient of a mean depends on x[pixel]: the pixels whose windows share a map pixel with it."""
    indicator = np.zeros(shape)
    indicator[pixel] = 1.0
    touched = (ref.filter_plane(indicator, taps, padding) > 0).astype(float)
    return ref.filter_plane_adjoint(touched, taps, padding, shape) > 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("image", ["x", "y"])
def test_a_non_finite_pixel_gives_nan_gradient_wherever_it_reaches(bad, padding, image):
    """Never a silent 0: the clamps (variances at 0, S at [-1, 1]) leave NaN alone (it zeroed 35 partials)."""
    rng = np.random.default_rng(3)
    x = rng.random((32, 32))
    y = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1)
    (x if image == "x" else y)[5, 5] = bad
    taps = ref.window_taps("gaussian", 7, 1.5)
    with np.errstate(invalid="ignore"):
        value, grad = ref.ssim_with_gradient(x, y, taps, padding=padding)
    assert np.isnan(value)
    np.testing.assert_array_equal(np.isnan(grad), _reach(x.shape, (5, 5), taps, padding))


@pytest.mark.parametrize("variant", ref.MS_SSIM_VARIANTS)
def test_a_nan_pixel_gives_an_all_nan_ms_ssim_gradient(variant):
    """Every scale's mean is NaN, so every pixel's gradient is (no relu or guard turns it into 0)."""
    rng = np.random.default_rng(4)
    x, y = rng.random((2, 40, 40))
    x[7, 9] = np.nan
    with np.errstate(invalid="ignore"):
        value, grad = ref.ms_ssim_with_gradient(x, y, ref.window_taps("gaussian", 5, 1.5), weights=(0.5, 0.5))
    assert np.isnan(value) and np.isnan(grad).all()


@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_gradient_at_flat_windows(padding):
    """Where x is exactly flat, sxx is clamped but sxy still moves to first order with x."""
    rng = np.random.default_rng(8)
    x = rng.random((14, 15))
    x[3:11, 4:12] = 0.0  # a black patch wider than the window
    x[0:6, 0:6] = 0.5
    y = rng.random((14, 15))
    taps = ref.window_taps("gaussian", 5, 1.5)
    kwargs = dict(padding=padding, crop=ref.mean_weights_crop(padding, 5))
    _, grad = ref.ssim_with_gradient(x, y, taps, **kwargs)
    numeric = _central_differences(lambda v: ref.ssim(v, y, taps, **kwargs), x, 1e-7)
    assert np.abs(grad - numeric).max() / np.abs(numeric).max() < 1e-6


@pytest.mark.parametrize("variant", ref.MS_SSIM_VARIANTS)
def test_downsampling_adjoint_is_the_transpose(variant):
    rng = np.random.default_rng(9)
    for shape in ((2, 13, 15), (12, 10), (7, 8)):
        a = rng.standard_normal(shape)
        d = ref.downsample(a, variant)
        assert d.shape == ref.downsampled_shape(shape, variant)
        g = rng.standard_normal(d.shape)
        assert abs(np.sum(d * g) - np.sum(a * ref.downsample_adjoint(g, variant, a.shape))) < 1e-12


def test_mirror_extension_and_its_adjoint():
    a = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(ref.mirror_extend(a, 2)[2], [2, 1, 0, 1, 2, 3, 2, 1])  # dcb|abcd|cba
    g = np.random.default_rng(3).standard_normal((3, 7, 8))
    b = np.random.default_rng(4).standard_normal((3, 3, 4))
    assert np.sum(ref.mirror_extend(b, 2) * g) == pytest.approx(np.sum(b * ref.mirror_extend_adjoint(g, 2, b.shape)))


def test_downsampling_of_each_variant():
    a = np.arange(15.0).reshape(3, 5)
    # pytorch-msssim: one zero row/column on both sides of an odd side, zeros counted
    np.testing.assert_allclose(ref.downsample(a, "pytorch_msssim")[0], [0 / 4, (1 + 2) / 4, (3 + 4) / 4])
    # TensorFlow: the last row/column repeated at the end
    np.testing.assert_allclose(ref.downsample(a, "tensorflow")[-1], [(10 + 11) / 2, (12 + 13) / 2, 14])
    # torchmetrics: floor, the odd row/column dropped
    np.testing.assert_allclose(ref.downsample(a, "torchmetrics"), [[(0 + 1 + 5 + 6) / 4, (2 + 3 + 7 + 8) / 4]])
    with pytest.raises(ValueError, match="variant must be one of .*, got 'matlab'"):
        ref.downsample(a, "matlab")


def test_ms_ssim_means_over_the_pooled_axes_or_refuses_the_axis():
    """torchmetrics pools an image's channels into each mean: the channel axis must be among those averaged."""
    rng = np.random.default_rng(6)
    x = rng.random((2, 3, 40, 40))
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    taps = ref.window_taps("gaussian", 5, 1.5)
    kwargs = dict(weights=(0.5, 0.5), pool_axes=(1,), want_gradient=False)
    per_image = [ref.ms_ssim_with_gradient(x[i], y[i], taps, pool_axes=(0,), weights=(0.5, 0.5),
                                           want_gradient=False)[0] for i in range(2)]
    assert np.isclose(ref.ms_ssim_with_gradient(x, y, taps, **kwargs)[0], np.mean(per_image), rtol=1e-14)
    with pytest.raises(ValueError, match=r"axis=\(0, 2, 3\) must include the pooled axes \(1,\)"):
        ref.ms_ssim_with_gradient(x, y, taps, axis=(0, 2, 3), **kwargs)


@pytest.mark.parametrize("variant", ref.MS_SSIM_VARIANTS)
@pytest.mark.parametrize("scales, pool_axes", [(2, ()), (3, ()), (3, (0,))])
def test_ms_ssim_gradient_matches_finite_differences(variant, scales, pool_axes):
    rng = np.random.default_rng(scales)
    taps = ref.window_taps("gaussian", 3, 1.0)
    weights = ref.MS_SSIM_WEIGHTS[:scales]
    side = ref.ms_ssim_min_size(3, scales, variant)
    x = rng.random((2, side + 1, side + 2))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    kwargs = dict(weights=weights, variant=variant, pool_axes=pool_axes)
    _, grad = ref.ms_ssim_with_gradient(x, y, taps, **kwargs)
    numeric = _central_differences(
        lambda v: ref.ms_ssim_with_gradient(v, y, taps, want_gradient=False, **kwargs)[0], x, 1e-6)
    assert np.abs(grad - numeric).max() / np.abs(numeric).max() < 1e-6


def test_ms_ssim_gradient_is_zero_where_a_relu_mean_is_zero():
    """A negative cs mean makes the product 0 for every small change: the gradient is exactly 0."""
    rng = np.random.default_rng(4)
    taps = ref.window_taps("gaussian", 3, 1.0)
    x = rng.random((7, 9))
    y = 1.0 - x  # anti-correlated: cs < 0 at the first scale
    value, grad = ref.ms_ssim_with_gradient(x, y, taps, weights=(0.5, 0.5))
    assert value == 0.0 and not grad.any()


@pytest.mark.parametrize("variant", ref.MS_SSIM_VARIANTS)
def test_ms_ssim_of_an_image_against_its_negative_is_finite(variant):
    x = np.random.default_rng(1).random((3, 180, 190))
    value, grad = ref.ms_ssim_with_gradient(x, 1.0 - x, ref.window_taps("gaussian", 11, 1.5), variant=variant)
    assert np.isfinite(value) and np.isfinite(grad).all()
    same, _ = ref.ms_ssim_with_gradient(x, x, ref.window_taps("gaussian", 11, 1.5), variant=variant)
    assert same == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("variant, side", [("pytorch_msssim", 161), ("tensorflow", 161), ("torchmetrics", 176)])
def test_ms_ssim_minimum_size(variant, side):
    taps = ref.window_taps("gaussian", 11, 1.5)
    assert ref.ms_ssim_min_size(11, 5, variant) == side
    ok = np.zeros((side, side + 3))
    ref.ms_ssim_with_gradient(ok, ok, taps, variant=variant, want_gradient=False)
    with pytest.raises(ValueError, match=f"too small for 5 scales.*at least {side}"):
        ref.ms_ssim_with_gradient(ok[:-1], ok[:-1], taps, variant=variant)


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("taps", [ref.window_taps("gaussian", 11, 1.5), ref.uniform_taps(7), ref.uniform_taps(11),
                                  np.array([0.1, 0.5, 0.4]), ref.gaussian_taps(2, 0.0)],
                         ids=["gaussian11", "box7", "box11", "asymmetric3", "identity5"])
@pytest.mark.parametrize("shape", [(2, 3, 40, 70), (13, 11), (1, 5, 300), (4, 16, 5), (3, 4)])
def test_filter_plane_is_scipys_correlation(padding, taps, shape):
    """The sliced sums equal SciPy's correlate1d along both axes (the former implementation), on every padding,
    for boxes summed by doubling, symmetric and asymmetric windows, images narrower than the window."""
    if padding == "valid" and min(shape[-2:]) < len(taps):
        pytest.skip("no valid interior")
    x = np.random.default_rng(5).standard_normal(shape)
    mode = "reflect" if padding == "reflect" else "constant"
    expected = ndimage.correlate1d(ndimage.correlate1d(x, taps, axis=-2, mode=mode), taps, axis=-1, mode=mode)
    if padding == "valid":
        r = len(taps) // 2
        expected = expected[..., r : shape[-2] - r, r : shape[-1] - r]
    assert np.abs(ref.filter_plane(x, taps, padding) - expected).max() < 1e-14


@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_results_do_not_depend_on_the_chunks(padding, monkeypatch):
    """The map, partials and gradient assembled from many small chunks (several planes, rows and a halo each)
    are bitwise those of one chunk: each chunk reads exactly its halo."""
    rng = np.random.default_rng(6)
    x, y = rng.random((2, 3, 37, 29)), rng.random((2, 3, 37, 29))
    x[0, 0, :12], y[0, 0, :12] = 0.0, 0.0  # flat windows: some chunks clamp variances, others have none to clamp
    taps = ref.window_taps("gaussian", 7, 1.5)
    kwargs = dict(padding=padding, cov=49 / 48, crop=ref.mean_weights_crop(padding, 7), limit=3.4e38)
    monkeypatch.setattr(ref, "_CHUNK_PIXELS", 1 << 20)
    whole = ref.ssim_with_gradient(x, y, taps, **kwargs), ref.ssim_map(x, y, taps, padding=padding)
    monkeypatch.setattr(ref, "_CHUNK_PIXELS", 40)  # 8-row chunks of one plane
    chunked = ref.ssim_with_gradient(x, y, taps, **kwargs), ref.ssim_map(x, y, taps, padding=padding)
    assert [list(ref._chunks(6, 37, 29))[i] for i in (0, 1, 5)] == [
        (slice(0, 1), slice(0, 8)), (slice(0, 1), slice(8, 16)), (slice(1, 2), slice(0, 8))]
    for a, b in zip((*whole[0], whole[1]), (*chunked[0], chunked[1])):
        np.testing.assert_array_equal(a, b)


def test_overflow_beyond_the_limit_is_nan_in_one_chunk_only():
    """A window whose denominator passes ``limit`` gives NaN there and only there, even when the rest of its chunk
    is bounded (the whole-chunk maxima only pick the common case)."""
    x = np.full((1, 30, 30), 0.5)
    y = x.copy()
    x[0, 15, 15] = 1e20
    S = ref.ssim_map(x, y, ref.window_taps("gaussian", 5, 1.5), limit=float(np.finfo(np.float32).max))
    assert np.isnan(S[0, 13:18, 13:18]).all() and np.isnan(S).sum() == 25
    assert (S[0, :10] == 1.0).all()


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("taps", [ref.window_taps("gaussian", 7, 1.5), ref.uniform_taps(7)], ids=["gaussian7", "box7"])
def test_filter_volume_is_scipys_correlation(padding, taps, monkeypatch):
    """Volumes (spatial=3): the sliced sums along all three axes equal SciPy's correlate1d, in chunks of 16
    slices of one volume."""
    monkeypatch.setattr(ref, "_CHUNK_PIXELS", 64)
    x = np.random.default_rng(8).standard_normal((2, 26, 9, 11))
    mode = "reflect" if padding == "reflect" else "constant"
    expected = x
    for axis in (-3, -2, -1):
        expected = ndimage.correlate1d(expected, taps, axis=axis, mode=mode)
    if padding == "valid":
        expected = ref.cropped(expected, 3, 3)
    assert np.abs(ref.filter_plane(x, taps, padding, 3) - expected).max() < 1e-14


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("crop", [0, 2, 3, 5])
def test_a_cropped_mean_computes_only_its_pixels(padding, crop):
    """The mean over a map cropped by less than, as much as and more than the window's radius (3) is the mean of
    the cropped full map, on every padding (the cropped map reads the padding only where it must)."""
    rng = np.random.default_rng(9)
    x, y = rng.random((2, 21, 26)), rng.random((2, 21, 26))
    taps = ref.uniform_taps(7)
    full = ref.ssim_map(x, y, taps, padding=padding, cov=49 / 48)
    np.testing.assert_array_equal(ref.ssim_map(x, y, taps, padding=padding, cov=49 / 48, crop=crop),
                                  ref.cropped(full, crop))
    expected = ref.cropped(full, crop).mean(axis=(-2, -1))
    np.testing.assert_allclose(ref.ssim(x, y, taps, padding=padding, cov=49 / 48, crop=crop, axis=(-2, -1)), expected,
                               rtol=0, atol=1e-15)


def _two_pass_ssim(x, y, taps, data_range, K1=0.01, K2=0.03):
    """Mean SSIM over the valid interior, each window's variances from its deviations from its mean, in long
    double: no E[x^2] - mx^2 cancellation at all."""
    k = len(taps)
    w = np.outer(taps, taps).astype(np.longdouble)
    X, Y = (np.lib.stride_tricks.sliding_window_view(np.asarray(a, np.longdouble) / data_range, (k, k))
            for a in (x, y))
    mx, my = (X * w).sum((-1, -2)), (Y * w).sum((-1, -2))
    dx, dy = X - mx[..., None, None], Y - my[..., None, None]
    sxx, syy, sxy = ((a * b * w).sum((-1, -2)) for a, b in ((dx, dx), (dy, dy), (dx, dy)))
    C1, C2 = K1**2, K2**2
    return ((2 * mx * my + C1) * (2 * sxy + C2) / ((mx * mx + my * my + C1) * (sxx + syy + C2))).mean()


def test_far_outside_the_data_range_the_reference_keeps_its_digits():
    """Images 5e5 data ranges from 0: the moments around each image's median lose nothing to E[x^2] - mx^2
    (0.61108 for 0.61088, gradient 7e-4 off, before)."""
    rng = np.random.default_rng(1)
    L = 1e-6
    x = 0.5 + L * rng.random((16, 16))
    y = x + 0.3 * L * rng.standard_normal(x.shape)
    taps = ref.window_taps("gaussian", 7, 1.5)
    value, grad = ref.ssim_with_gradient(x, y, taps, padding="valid", data_range=L)
    assert abs(value - float(_two_pass_ssim(x, y, taps, L))) < 1e-12
    h = np.longdouble(1e-4 * L)
    numeric = np.zeros(x.shape)
    for index in np.ndindex(x.shape):
        plus, minus = x.astype(np.longdouble), x.astype(np.longdouble)
        plus[index] += h
        minus[index] -= h
        numeric[index] = (_two_pass_ssim(plus, y, taps, L) - _two_pass_ssim(minus, y, taps, L)) / (2 * h)
    assert np.linalg.norm(grad - numeric) <= 1e-7 * np.linalg.norm(numeric)


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_images_far_outside_the_data_range(padding, dtype):
    """0.5 against 0.5 + 1e-7 with data_range 1e-6 is 1 to 1e-13 (0.94 to 0.96 before)."""
    x, y = np.full((32, 32), 0.5, dtype), np.full((32, 32), 0.5 + 1e-7, dtype)
    value, grad = ref.ssim_with_gradient(x, y, ref.window_taps("gaussian", 7, 1.5), padding=padding, data_range=1e-6)
    assert abs(value - 1.0) < 1e-13 and np.abs(grad).max() < 1e-8
