"""mask= and mask_mode= on the public NumPy API (docs/spec.rst section 9), numpy.ma inputs, and every error."""

import numpy as np
import pytest

import cussim
from cussim import _reference as ref

RNG = np.random.default_rng(30)
X = RNG.random((2, 3, 24, 26))
Y = np.clip(X + 0.2 * RNG.standard_normal(X.shape), 0, 1)
TAPS = ref.window_taps("gaussian", 11, 1.5)


def _weights(shape, seed=0):
    rng = np.random.default_rng(seed)
    return np.where(rng.random(shape) < 0.3, 0.0, rng.random(shape))


M = _weights((24, 26))


def _numeric(f, x, points, h=1e-6):
    out = []
    for index in points:
        step = np.zeros_like(x)
        step[index] = h
        out.append((f(x + step) - f(x - step)) / (2 * h))
    return np.array(out)


@pytest.mark.parametrize("padding", ["same", "valid", "reflect"])
def test_mean_mode_is_numpy_average_of_ssim_map(padding):
    crop = ref.mean_weights_crop(padding, 11)
    full = cussim.ssim_map(X, Y, padding=padding)
    weights = ref.map_weights(np.broadcast_to(M, X.shape), padding, 5, crop)
    expected = np.average(ref.cropped(full, crop), axis=(1, 2, 3), weights=weights)
    value = cussim.ssim(X, Y, padding=padding, mask=M, axis=(1, 2, 3))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(cussim.dssim(X, Y, padding=padding, mask=M, axis=(1, 2, 3)), (1 - expected) / 2,
                               rtol=1e-12)
    v, grad = cussim.dssim_with_gradient(X, Y, padding=padding, mask=M, axis=(1, 2, 3))
    np.testing.assert_allclose(v, (1 - expected) / 2, rtol=1e-12)
    _, ssim_grad = ref.ssim_with_gradient(X, Y, TAPS, axis=(1, 2, 3), crop=crop, padding=padding, mask=M)
    np.testing.assert_allclose(grad, -ssim_grad / 2, rtol=1e-12)


@pytest.mark.parametrize("mask_mode", ["mean", "normalized"])
def test_a_mask_of_ones_is_no_mask(mask_mode):
    ones = np.ones((24, 26), bool)
    kwargs = dict(padding="valid", axis=(2, 3))
    np.testing.assert_allclose(cussim.ssim(X, Y, mask=ones, mask_mode=mask_mode, **kwargs),
                               cussim.ssim(X, Y, **kwargs), rtol=1e-12)
    v, g = cussim.ssim_with_gradient(X, Y, mask=ones, mask_mode=mask_mode, **kwargs)
    v0, g0 = cussim.ssim_with_gradient(X, Y, **kwargs)
    np.testing.assert_allclose(v, v0, rtol=1e-12)
    np.testing.assert_allclose(g, g0, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(cussim.l1_dssim_loss(X, Y, mask=ones, mask_mode=mask_mode),
                               cussim.l1_dssim_loss(X, Y) if mask_mode == "mean" else
                               cussim.l1_dssim_loss(X, Y, mask=ones, mask_mode=mask_mode), rtol=1e-12)


def test_normalized_mode_is_the_reference_and_its_map():
    S = cussim.ssim_map(X, Y, mask=M, mask_mode="normalized")
    np.testing.assert_array_equal(S, ref.ssim_map(X, Y, TAPS, mask=M, mask_mode="normalized"))
    assert (S[..., M == 0] == 0).all()
    value = cussim.ssim(X, Y, mask=M, mask_mode="normalized")
    assert np.isclose(value, np.average(S, weights=np.broadcast_to(M, S.shape)), rtol=1e-12)
    v, grad = cussim.ssim_with_gradient(X, Y, mask=M, mask_mode="normalized")
    assert v == value and (grad[..., M == 0] == 0).all()


def test_l1_term_is_the_weighted_mean():
    m = _weights((2, 1, 24, 26), seed=2)  # one mask per image
    loss = cussim.l1_dssim_loss(X, Y, weight=0.3, mask=m, axis=(1, 2, 3))
    l1 = np.average(np.abs(X - Y), axis=(1, 2, 3), weights=np.broadcast_to(m, X.shape))
    expected = 0.7 * l1 + 0.3 * (1 - cussim.ssim(X, Y, mask=m, axis=(1, 2, 3)))
    np.testing.assert_allclose(loss, expected, rtol=1e-12)
    value, grad = cussim.l1_dssim_loss_with_gradient(X, Y, weight=0.3, mask=m, axis=(1, 2, 3))
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    points = [(0, 1, 5, 7), (1, 2, 12, 3), (1, 0, 23, 25)]
    numeric = _numeric(lambda v: cussim.l1_dssim_loss(v, Y, weight=0.3, mask=m, axis=(1, 2, 3)).sum(), X, points)
    np.testing.assert_allclose([grad[p] for p in points], numeric, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("mask_mode", ["mean", "normalized"])
def test_gradient_matches_finite_differences(mask_mode):
    x, y = X[0, :2, :14, :15], Y[0, :2, :14, :15]
    m = _weights((14, 15), seed=3)
    kwargs = dict(win_size=5, padding="reflect", mask=m, mask_mode=mask_mode)
    _, grad = cussim.ssim_with_gradient(x, y, **kwargs)
    numeric = _numeric(lambda v: cussim.ssim(v, y, **kwargs), x, list(np.ndindex(x.shape)))
    assert np.abs(grad.ravel() - numeric).max() / np.abs(numeric).max() < 1e-6


def test_channel_axis_takes_a_mask_of_the_plane():
    hwc, ref_hwc = np.moveaxis(X[0], 0, -1), np.moveaxis(Y[0], 0, -1)
    planar = cussim.ssim(X[0], Y[0], mask=M)
    assert np.isclose(cussim.ssim(hwc, ref_hwc, channel_axis=-1, mask=M), planar, rtol=1e-13)
    assert np.isclose(cussim.ssim(hwc, ref_hwc, channel_axis=-1, mask=M[:, :, None]), planar, rtol=1e-13)
    per_channel = _weights((24, 26, 3), seed=4)
    value, grad = cussim.ssim_with_gradient(hwc, ref_hwc, channel_axis=-1, mask=per_channel)
    v, g = cussim.ssim_with_gradient(X[0], Y[0], mask=np.moveaxis(per_channel, -1, 0))
    assert np.isclose(value, v, rtol=1e-13)
    np.testing.assert_allclose(grad, np.moveaxis(g, 0, -1), rtol=1e-12)


def test_volumes_take_masks():
    x, y = X[0], Y[0, :, :, :]  # 3 x 24 x 26 volumes of depth 3 need a window of 3
    m = _weights(x.shape, seed=5)
    for mode in ("mean", "normalized"):
        value = cussim.ssim(x, y, win_size=3, spatial_dims=3, mask=m, mask_mode=mode)
        expected = ref.ssim(x, y, ref.window_taps("gaussian", 3, 1.5), spatial=3, mask=m, mask_mode=mode)
        assert np.isclose(value, expected, rtol=1e-13)


@pytest.mark.parametrize("variant", ["pytorch_msssim", "tensorflow", "torchmetrics"])
def test_ms_ssim_takes_a_mean_mode_mask(variant):
    rng = np.random.default_rng(6)
    x = rng.random((2, 40, 44))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    m = _weights((40, 44), seed=7)
    kwargs = dict(variant=variant, weights=(0.3, 0.3, 0.4), win_size=5, axis=(1, 2))
    np.testing.assert_allclose(cussim.ms_ssim(x, y, mask=np.ones((40, 44)), **kwargs), cussim.ms_ssim(x, y, **kwargs),
                               rtol=1e-12)
    value, grad = cussim.ms_ssim_with_gradient(x, y, mask=m, **kwargs)
    expected = ref.ms_ssim_with_gradient(x, y, ref.window_taps("gaussian", 5, 1.5), weights=(0.3, 0.3, 0.4),
                                         variant=variant, axis=(1, 2), mask=m, want_gradient=False)[0]
    np.testing.assert_allclose(value, expected, rtol=1e-13)
    points = [(0, 3, 4), (1, 20, 30), (0, 39, 43)]
    numeric = _numeric(lambda v: cussim.ms_ssim(v, y, mask=m, **kwargs).sum(), x, points)
    np.testing.assert_allclose([grad[p] for p in points], numeric, rtol=1e-6, atol=1e-10)
    with pytest.raises(ValueError, match="mask_mode='normalized' is not offered for MS-SSIM"):
        cussim.ms_ssim(x, y, mask=m, mask_mode="normalized", **kwargs)


def test_masked_arrays_give_their_masks_as_weights():
    x = np.ma.masked_greater(X[0], 0.9)
    y = np.ma.masked_less(Y[0], 0.05)
    keep = ~(x.mask | y.mask)
    assert np.isclose(cussim.ssim(x, Y[0]), cussim.ssim(X[0], Y[0], mask=~x.mask), rtol=1e-14)
    assert np.isclose(cussim.ssim(X[0], y), cussim.ssim(X[0], Y[0], mask=~y.mask), rtol=1e-14)
    assert np.isclose(cussim.ssim(x, y), cussim.ssim(X[0], Y[0], mask=keep), rtol=1e-14)
    assert np.isclose(cussim.ssim(x, y, mask=M), cussim.ssim(X[0], Y[0], mask=keep * M), rtol=1e-14)
    value, grad = cussim.dssim_with_gradient(x, y, mask_mode="normalized")
    v, g = cussim.dssim_with_gradient(X[0], Y[0], mask=keep, mask_mode="normalized")
    assert value == v and isinstance(grad, np.ndarray) and not isinstance(grad, np.ma.MaskedArray)
    np.testing.assert_array_equal(grad, g)
    with pytest.raises(ValueError, match="negative weights"):
        cussim.ssim(x, y, mask=-M)


def test_masks_of_any_strides_are_read_not_modified():
    base = _weights((26, 48), seed=8)
    strided = base[:, ::2].T  # 24 x 26, neither C- nor F-ordered
    before = strided.copy()
    value, grad = cussim.ssim_with_gradient(X, Y, mask=strided)
    v, g = cussim.ssim_with_gradient(X, Y, mask=np.ascontiguousarray(strided))
    assert value == v
    np.testing.assert_array_equal(grad, g)
    np.testing.assert_array_equal(strided, before)
    assert cussim.ssim(X, Y, mask=strided > 0) == cussim.ssim(X, Y, mask=(strided > 0).astype(np.uint8))


@pytest.mark.parametrize("call, error, match", [
    (lambda: cussim.ssim(X, Y, mask=np.ones((24, 25))), ValueError,
     r"mask has shape \(24, 25\) but x has shape \(2, 3, 24, 26\)"),
    (lambda: cussim.ssim(X, Y, mask=np.ones((3, 3, 24, 26))), ValueError,
     r"mask has shape \(3, 3, 24, 26\) but x has shape \(2, 3, 24, 26\)"),
    (lambda: cussim.ssim(X, Y, mask=np.ones((1, 24, 26, 1))), ValueError, r"mask has shape \(1, 24, 26, 1\)"),
    (lambda: cussim.ssim(X, Y, mask=np.ones((1, 26))), ValueError, "the images' spatial shape"),
    (lambda: cussim.ssim(X, Y, mask=-np.ones((24, 26))), ValueError, "negative weights"),
    (lambda: cussim.ssim(X, Y, mask=np.full((24, 26), np.nan)), ValueError, "NaN or infinite weights"),
    (lambda: cussim.ssim_with_gradient(X, Y, mask=np.full((24, 26), np.inf)), ValueError, "NaN or infinite"),
    (lambda: cussim.ssim(X, Y, mask=np.ones((24, 26), complex)), TypeError, "mask must hold real weights"),
    (lambda: cussim.ssim(X, Y, mask=[[1.0]]), TypeError, "mask must be a CuPy or NumPy array"),
    (lambda: cussim.ssim(X, Y, mask=M, mask_mode="weighted"), ValueError, "mask_mode must be one of"),
    (lambda: cussim.ssim(X, Y, mask=M, mask_mode="normalized", sample_covariance=True), ValueError,
     "population covariance only; pass sample_covariance=False"),
    (lambda: cussim.ssim_map(X, Y, mask=M), ValueError, "ssim_map with mask_mode='mean' is the unmasked map"),
    (lambda: cussim.ssim(X, Y, mask=np.zeros((24, 26))), ValueError, "gives the result a total weight of 0"),
])
def test_bad_masks_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_zero_total_weight_names_the_result():
    m = np.ones((2, 3, 24, 26))
    m[1, 2] = 0.0
    with pytest.raises(ValueError, match=r"the result at index \(1, 2\) a total weight of 0"):
        cussim.ssim_with_gradient(X, Y, mask=m, axis=(2, 3))
    with pytest.raises(ValueError, match=r"the result at index \(1, 2\)"):
        cussim.l1_dssim_loss(X, Y, mask=m, axis=(2, 3))
    assert np.isfinite(cussim.ssim(X, Y, mask=m, axis=(1, 2, 3))).all()
