"""Masks in the float64 reference (docs/spec.rst section 8): against numpy.average, against an independent SciPy
implementation of normalised convolution, and against finite differences."""

import numpy as np
import pytest
from scipy import ndimage

from cussim import _reference as ref

TAPS = {"gaussian": ref.window_taps("gaussian", 5, 1.1), "uniform": ref.window_taps("uniform", 5, 1.5)}


def _images(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    return x, np.clip(x + 0.3 * rng.standard_normal(shape), 0, 1)


def _mask(shape, seed=1):
    """Weights in [0, 2] with about a third of them exactly 0."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(shape) < 0.35, 0.0, 2.0 * rng.random(shape))


def _numeric_gradient(f, x, h=1e-6):
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = h
        numeric[index] = (f(x + step) - f(x - step)) / (2 * h)
    return numeric


def _scipy_normalized(x, y, m, taps, padding, K1=0.01, K2=0.03):
    """Section 8's normalised convolution written directly with scipy.ndimage on one plane: (map, mean)."""
    window = np.outer(taps, taps)
    r = len(taps) // 2

    def F(a):
        if padding == "valid":
            return ndimage.correlate(a, window, mode="constant")[r:-r, r:-r]
        return ndimage.correlate(a, window, mode="constant" if padding == "same" else "reflect", cval=0.0)

    W = F(m)
    mx, my, exx, eyy, exy = (F(m * a) / W for a in (x, y, x * x, y * y, x * y))
    sxx, syy, sxy = exx - mx**2, eyy - my**2, exy - mx * my
    C1, C2 = K1**2, K2**2
    S = (2 * mx * my + C1) * (2 * sxy + C2) / ((mx**2 + my**2 + C1) * (sxx + syy + C2))
    centre = m[r:-r, r:-r] if padding == "valid" else m
    S = np.where(centre > 0, S, 0.0)
    counted = ref.cropped(centre, ref.mean_weights_crop(padding, len(taps)))
    return S, np.average(ref.cropped(S, ref.mean_weights_crop(padding, len(taps))), weights=counted)


def _kwargs(padding):
    return dict(padding=padding, crop=ref.mean_weights_crop(padding, 5))


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("mask_mode", ref.MASK_MODES)
def test_a_mask_of_ones_is_no_mask(padding, mask_mode):
    x, y = _images((2, 12, 14))
    taps = TAPS["gaussian"]
    value, grad = ref.ssim_with_gradient(x, y, taps, axis=(1, 2), **_kwargs(padding))
    masked, masked_grad = ref.ssim_with_gradient(x, y, taps, axis=(1, 2), mask=np.ones((12, 14), bool),
                                                 mask_mode=mask_mode, **_kwargs(padding))
    if mask_mode == "normalized" and padding == "same":  # renormalised windows at the border, by design
        assert not np.allclose(masked, value, rtol=1e-6)
        np.testing.assert_allclose(ref.ssim_map(x, y, taps, mask=np.ones((12, 14)), mask_mode=mask_mode)[:, 2:-2, 2:-2],
                                   ref.ssim_map(x, y, taps)[:, 2:-2, 2:-2], rtol=1e-12)
        return
    np.testing.assert_allclose(masked, value, rtol=1e-12)
    np.testing.assert_allclose(masked_grad, grad, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ref.ssim(x, y, taps, mask=np.ones((12, 14)), mask_mode=mask_mode, **_kwargs(padding)),
                               ref.ssim(x, y, taps, **_kwargs(padding)), rtol=1e-12)


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("mask_shape, axis", [((3, 2, 12, 13), None), ((12, 13), (1, 2, 3)),
                                              ((3, 1, 12, 13), (1, 2, 3)), ((2, 12, 13), (2, 3))])
def test_mean_mode_is_numpy_average_of_the_map(padding, mask_shape, axis):
    """One mask per plane, one for everything, one per image, one per channel: numpy.average of the map."""
    x, y = _images((3, 2, 12, 13))
    m = _mask(mask_shape)
    taps = TAPS["uniform"]
    kwargs = _kwargs(padding)
    value = ref.ssim(x, y, taps, axis=axis, mask=m, **kwargs)
    full = ref.ssim_map(x, y, taps, padding=padding)
    weights = ref.map_weights(np.broadcast_to(m, x.shape), padding, 2, kwargs["crop"])
    axes = tuple(range(4)) if axis is None else axis
    expected = np.average(ref.cropped(full, kwargs["crop"]), axis=axes, weights=weights)
    np.testing.assert_allclose(value, expected, rtol=1e-13)
    assert ref.ssim_with_gradient(x, y, taps, axis=axis, mask=m, **kwargs)[0].shape == np.shape(expected)


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("window", sorted(TAPS))
@pytest.mark.parametrize("boolean", [False, True], ids=["float", "bool"])
def test_normalized_mode_is_scipys_normalised_convolution(padding, window, boolean):
    x, y = _images((2, 13, 16), seed=3)
    m = _mask((2, 13, 16), seed=4)
    m = m > 0 if boolean else m
    taps = TAPS[window]
    S = ref.ssim_map(x, y, taps, padding=padding, mask=m, mask_mode="normalized")
    value = ref.ssim(x, y, taps, axis=(1, 2), mask=m, mask_mode="normalized", **_kwargs(padding))
    for plane in range(2):
        expected_map, expected_mean = _scipy_normalized(x[plane], y[plane], m[plane].astype(float), taps, padding)
        np.testing.assert_allclose(S[plane], expected_map, rtol=1e-11, atol=1e-13)
        assert abs(value[plane] - expected_mean) < 1e-12


def test_normalized_mode_never_reads_masked_values():
    x, y = _images((12, 12))
    m = _mask((12, 12))
    taps = TAPS["gaussian"]
    spoiled = np.where(m > 0, x, np.nan)
    value = ref.ssim(x, y, taps, mask=m, mask_mode="normalized")
    assert ref.ssim(spoiled, y, taps, mask=m, mask_mode="normalized") == value
    _, grad = ref.ssim_with_gradient(spoiled, y, taps, mask=m, mask_mode="normalized")
    assert np.isfinite(grad).all() and (grad[m == 0] == 0).all()


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("mask_mode", ref.MASK_MODES)
@pytest.mark.parametrize("window", sorted(TAPS))
def test_masked_gradients_match_finite_differences(padding, mask_mode, window):
    x, y = _images((2, 2, 9, 11), seed=5)
    x, y = 2.0 * x, 2.0 * y
    m = _mask((2, 1, 9, 11), seed=6)  # one mask per image of two channels
    taps = TAPS[window]
    kwargs = dict(axis=(1, 2, 3), mask=m, mask_mode=mask_mode, data_range=2.0, **_kwargs(padding))
    value, grad = ref.ssim_with_gradient(x, y, taps, **kwargs)
    assert value.shape == (2,)
    numeric = _numeric_gradient(lambda v: ref.ssim(v, y, taps, **kwargs).sum(), x)
    assert np.abs(grad - numeric).max() / np.abs(numeric).max() < 1e-6


@pytest.mark.parametrize("mask_mode", ref.MASK_MODES)
def test_volumes_take_masks(mask_mode):
    x, y = _images((7, 8, 9), seed=7)
    m = _mask((7, 8, 9), seed=8)
    taps = ref.window_taps("gaussian", 3, 1.0)
    kwargs = dict(spatial=3, mask=m, mask_mode=mask_mode)
    value, grad = ref.ssim_with_gradient(x, y, taps, **kwargs)
    if mask_mode == "mean":
        assert np.isclose(value, np.average(ref.ssim_map(x, y, taps, spatial=3), weights=m), rtol=1e-13)
    numeric = _numeric_gradient(lambda v: ref.ssim(v, y, taps, **kwargs), x)
    assert np.abs(grad - numeric).max() / np.abs(numeric).max() < 1e-6


@pytest.mark.parametrize("variant", ref.MS_SSIM_VARIANTS)
def test_ms_ssim_mask(variant):
    rng = np.random.default_rng(9)
    taps = ref.window_taps("gaussian", 3, 1.0)
    weights = ref.MS_SSIM_WEIGHTS[:3]
    side = ref.ms_ssim_min_size(3, 3, variant)
    x = rng.random((2, side + 1, side + 2))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    kwargs = dict(weights=weights, variant=variant, axis=(1, 2))
    value, grad = ref.ms_ssim_with_gradient(x, y, taps, **kwargs)
    ones, ones_grad = ref.ms_ssim_with_gradient(x, y, taps, mask=np.ones(x.shape[1:]), **kwargs)
    np.testing.assert_allclose(ones, value, rtol=1e-12)
    np.testing.assert_allclose(ones_grad, grad, rtol=1e-9, atol=1e-15)
    m = _mask(x.shape[1:])
    masked, masked_grad = ref.ms_ssim_with_gradient(x, y, taps, mask=m, **kwargs)
    assert not np.allclose(masked, value)
    numeric = _numeric_gradient(
        lambda v: ref.ms_ssim_with_gradient(v, y, taps, mask=m, want_gradient=False, **kwargs)[0].sum(), x)
    assert np.abs(masked_grad - numeric).max() / np.abs(numeric).max() < 1e-6


def test_masks_of_any_strides_and_dtypes_are_read_not_modified():
    x, y = _images((2, 10, 12))
    taps = TAPS["gaussian"]
    base = _mask((12, 20))
    strided = base[:, ::2].T[::-1]  # a reversed, transposed, strided view
    before = strided.copy()
    for mode in ref.MASK_MODES:
        assert ref.ssim(x, y, taps, mask=strided, mask_mode=mode) == ref.ssim(
            x, y, taps, mask=np.ascontiguousarray(strided), mask_mode=mode)
        binary = strided > 0
        assert ref.ssim(x, y, taps, mask=binary, mask_mode=mode) == ref.ssim(
            x, y, taps, mask=binary.astype(np.float32), mask_mode=mode)
    np.testing.assert_array_equal(strided, before)


def test_bad_masks_are_named():
    x, y = _images((2, 10, 12))
    taps = TAPS["gaussian"]
    with pytest.raises(ValueError, match=r"mask has shape \(10, 11\) but the images have shape \(2, 10, 12\)"):
        ref.ssim(x, y, taps, mask=np.ones((10, 11)))
    with pytest.raises(ValueError, match=r"mask has shape \(3, 10, 12\) but the images have shape \(2, 10, 12\)"):
        ref.ssim(x, y, taps, mask=np.ones((3, 10, 12)))
    with pytest.raises(ValueError, match=r"mask has shape \(1, 2, 10, 12\)"):
        ref.ssim(x, y, taps, mask=np.ones((1, 2, 10, 12)))
    for bad, words in ((-0.5, "negative weights"), (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")):
        m = np.ones((10, 12))
        m[3, 4] = bad
        with pytest.raises(ValueError, match=words):
            ref.ssim(x, y, taps, mask=m)
    with pytest.raises(TypeError, match="mask must hold real weights"):
        ref.ssim(x, y, taps, mask=np.ones((10, 12), complex))
    with pytest.raises(ValueError, match="mask_mode must be one of 'mean', 'normalized'"):
        ref.ssim(x, y, taps, mask=np.ones((10, 12)), mask_mode="weighted")
    with pytest.raises(ValueError, match="population covariance only; pass sample_covariance=False"):
        ref.ssim(x, y, taps, mask=np.ones((10, 12)), mask_mode="normalized", cov=25 / 24)


def test_a_zero_total_weight_names_the_result():
    x, y = _images((3, 2, 10, 12))
    taps = TAPS["gaussian"]
    m = np.ones((3, 2, 10, 12))
    m[2, 1] = 0.0
    for mode in ref.MASK_MODES:
        with pytest.raises(ValueError, match=r"the result at index \(2, 1\) a total weight of 0"):
            ref.ssim(x, y, taps, axis=(2, 3), mask=m, mask_mode=mode)
        with pytest.raises(ValueError, match=r"the result at index \(2, 1\)"):
            ref.ssim_with_gradient(x, y, taps, axis=(2, 3), mask=m, mask_mode=mode)
    assert np.isfinite(ref.ssim(x, y, taps, mask=m))  # the other images carry weight
    border = np.zeros((10, 12))
    border[0] = 1.0  # only pixels that "valid" crops away
    with pytest.raises(ValueError, match="gives the result a total weight of 0"):
        ref.ssim(x, y, taps, padding="valid", mask=border)
