"""Masked MS-SSIM on the 2-D kernels (kernels/msssim.cu's pyramid pooling the mask, the scales' forwards with
FORWARD_MASK, the combine's weighted means) through the public functions, on the emulator
(CUSSIM_NUMPY_BACKEND=emulator) and on a GPU where there is one, against the float64 reference
(docs/spec.rst sections 6, 7 and 9)."""

import re

import numpy as np
import pytest

import cussim
from test_masks_kernels import _images, _mask, _on_reference

# three scales of win_size 3: sides of 9 and more for every variant; 23 x 26 halves to odd sides at each scale
OPTIONS = dict(win_size=3, weights=(0.3, 0.3, 0.4))


def _check(executor, monkeypatch, x, y, mask, **options):
    """ms_ssim_with_gradient and ms_ssim with ``mask`` on the kernels against the reference: values (abs 1e-5;
    1e-12 in float64) and gradients (relative L2 1e-4; 1e-10)."""
    float64 = np.dtype(x.dtype) == np.float64
    gx, gy, gm = (executor.asarray(a) for a in (x, y, mask))
    value, grad = cussim.ms_ssim_with_gradient(gx, gy, mask=gm, **options)
    want_value, want_grad = _on_reference(cussim.ms_ssim_with_gradient, x, y, mask, monkeypatch, **options)
    np.testing.assert_allclose(executor.asnumpy(value), want_value, rtol=0, atol=1e-12 if float64 else 1e-5)
    np.testing.assert_array_equal(executor.asnumpy(cussim.ms_ssim(gx, gy, mask=gm, **options)),
                                  executor.asnumpy(value))
    grad = executor.asnumpy(grad)
    assert grad.shape == x.shape and not np.isnan(grad).any()
    assert np.linalg.norm(grad - want_grad) <= (1e-10 if float64 else 1e-4) * np.linalg.norm(want_grad)
    return value, grad


VARIANTS = ["pytorch_msssim", "tensorflow", "torchmetrics"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8], ids=["float32", "float64", "uint8"])
def test_masked_ms_ssim_and_its_gradient_match_the_reference(on_kernels, monkeypatch, variant, dtype):
    x, y = _images((2, 3, 23, 26), dtype)
    mask = _mask((2, 1, 23, 26))
    for axis in (None, (1, 2, 3)):
        _check(on_kernels, monkeypatch, x, y, mask, variant=variant, axis=axis, **OPTIONS)


def test_torchmetrics_pools_an_images_channels_and_their_weights(on_kernels, monkeypatch):
    x, y = _images((2, 3, 24, 26), np.float32)
    _check(on_kernels, monkeypatch, x, y, _mask((2, 3, 24, 26)), variant="torchmetrics", channel_axis=1,
           axis=(1, 2, 3), **OPTIONS)


def test_more_scales_than_one_pyramid_launch(on_kernels, monkeypatch):
    """Six scales: the pyramid takes two launches (4 levels, then 1), the second pooling the first's last mask."""
    x, y = _images((1, 2, 66, 70), np.float32)
    _check(on_kernels, monkeypatch, x, y, _mask((66, 70)), win_size=3, weights=(0.2,) * 5 + (0.1,))


@pytest.mark.parametrize("shape", [(23, 26), (1, 3, 23, 26), (2, 3, 23, 26)],
                         ids=["every-plane", "per-channel", "per-plane"])
def test_masks_broadcast_over_leading_axes(on_kernels, monkeypatch, shape):
    x, y = _images((2, 3, 23, 26), np.float32)
    _check(on_kernels, monkeypatch, x, y, _mask(shape), axis=(1, 2, 3), **OPTIONS)


def test_bool_and_strided_masks_and_channels_last(on_kernels, monkeypatch):
    x, y = _images((2, 23, 26, 3), np.float32)
    strided = _mask((2, 46, 26, 2))[:, ::2, :, 1]  # rows every other, a column of channels: no unit stride
    assert not strided.flags.c_contiguous
    _check(on_kernels, monkeypatch, x, y, strided[..., None], channel_axis=-1, axis=(1, 2, 3), **OPTIONS)
    _check(on_kernels, monkeypatch, x, y, strided[..., None] > 0.5, channel_axis=-1, variant="tensorflow", **OPTIONS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_mask_of_ones_gives_the_unmasked_numbers_bitwise(on_kernels, variant):
    """Ones pool to ones wherever a scale's map reads them (pytorch_msssim's padded zeros halve only the border
    pixels, which the valid maps crop away), and each weighted mean divides by the pixel count exactly."""
    x, y = _images((2, 3, 23, 26), np.float32)
    gx, gy = on_kernels.asarray(x), on_kernels.asarray(y)
    ones = on_kernels.asarray(np.ones((23, 26), np.float32))
    masked = cussim.ms_ssim_with_gradient(gx, gy, mask=ones, axis=(1, 2, 3), variant=variant, **OPTIONS)
    plain = cussim.ms_ssim_with_gradient(gx, gy, axis=(1, 2, 3), variant=variant, **OPTIONS)
    for got, want in zip(masked, plain):
        np.testing.assert_array_equal(on_kernels.asnumpy(got), on_kernels.asnumpy(want))


def test_the_callers_mask_is_never_modified(on_kernels):
    x, y = _images((2, 23, 26), np.float32)
    for mask in (_mask((2, 23, 26)), _mask((23, 26)) > 0.3, _mask((23, 26), dtype=np.float64)):
        before = mask.copy()
        given = on_kernels.asarray(mask)
        cussim.ms_ssim_with_gradient(on_kernels.asarray(x), on_kernels.asarray(y), mask=given, **OPTIONS)
        np.testing.assert_array_equal(on_kernels.asnumpy(given), before)


def test_an_image_of_zero_weight_names_its_index(on_kernels):
    x, y = _images((2, 3, 23, 26), np.float32)
    mask = _mask((2, 3, 23, 26))
    mask[1, 2] = 0
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, mask))
    with pytest.raises(ValueError, match=r"the result at index \(1, 2\) a total weight of 0"):
        cussim.ms_ssim_with_gradient(gx, gy, mask=gm, **OPTIONS)
    with pytest.raises(ValueError, match=r"the result at index \(1, 2\) a total weight of 0"):
        cussim.ms_ssim(gx, gy, mask=gm, axis=(1, 2, 3), **OPTIONS)


def test_a_coarse_scale_of_zero_weight_is_refused_too(on_kernels, monkeypatch):
    """Weight only in the border ring that scale 2's valid map crops: scale 1 counts it, scale 2 does not."""
    x, y = _images((23, 26), np.float32)
    mask = np.zeros((23, 26), np.float32)
    mask[1:3, 1:25] = 1
    with pytest.raises(ValueError, match="the result a total weight of 0") as refused:
        _on_reference(cussim.ms_ssim, x, y, mask, monkeypatch, **OPTIONS)
    with pytest.raises(ValueError, match=re.escape(str(refused.value))):
        cussim.ms_ssim(on_kernels.asarray(x), on_kernels.asarray(y), mask=on_kernels.asarray(mask), **OPTIONS)


def test_the_kernels_refuse_bad_weights_that_they_read():
    """A GPU mask's weights reach the kernels unchecked: a negative, NaN or infinite one makes its scale's total
    of that image NaN (infinite), which the host refuses naming the image. (NumPy masks are checked on the host
    first, so the launch plan is driven here with a NumPy mask directly.)"""
    from cussim import _masks, _msssim

    x, y = _images((3, 23, 26), np.float32)
    for bad in (-1.0, np.nan, np.inf):
        mask = np.ones((3, 23, 26), np.float32)
        mask[1, 10, 11] = bad
        problem, pyramid = _msssim._pyramid(x, y, variant="pytorch_msssim", data_range=None, sigma=1.5, K1=0.01,
                                            K2=0.03, channel_axis=None, axis=(1, 2), mask=np.ones_like(mask),
                                            **OPTIONS)
        sums, scratch = (np.zeros(n, dtype) for n, dtype in zip(pyramid.sizes(False), (np.float64, np.float32)))
        views = pyramid.views(sums, scratch, False)
        _msssim._launch_plan(problem, pyramid, np.empty(3, np.float32), views, mask=mask)
        totals = views["totals"]
        assert not np.isfinite(totals[:, 1]).all() and np.isfinite(totals[:, [0, 2]]).all()
        with pytest.raises(ValueError, match=r"negative, NaN or infinite weights \(the result at index \(1,\)\)"):
            _masks.check_kernel_totals(totals[0], pyramid.image_shape)


def test_normalized_mode_and_masked_volumes_are_refused(on_kernels):
    x, y = _images((2, 23, 26), np.float32)
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, _mask((23, 26))))
    with pytest.raises(ValueError, match="mask_mode='normalized' is not offered for MS-SSIM; pass mask_mode='mean'"):
        cussim.ms_ssim(gx, gy, mask=gm, mask_mode="normalized", **OPTIONS)
    vx, vy = _images((2, 24, 24, 24), np.float32)
    with pytest.raises(NotImplementedError, match="not for MS-SSIM of volumes: pass NumPy arrays"):
        cussim.ms_ssim(on_kernels.asarray(vx), on_kernels.asarray(vy), mask=on_kernels.asarray(_mask((24, 24, 24))),
                       spatial_dims=3, win_size=3, weights=(0.5, 0.5))


def test_in_place_masked_calls_with_a_masked_workspace(on_kernels, monkeypatch):
    x, y = _images((2, 3, 23, 26), np.float32)
    mask = _mask((2, 1, 23, 26)) > 0.5
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, mask))
    out, grad = on_kernels.asarray(np.empty(2, np.float32)), on_kernels.asarray(np.empty(x.shape, np.float32))
    workspace = cussim.make_ms_ssim_workspace(gx, mask=gm, **OPTIONS)
    assert workspace.mask is not None  # the bool weights converted there
    for _ in range(2):  # the counters are back at zero after each call
        value, g = cussim.ms_ssim_with_gradient(gx, gy, mask=gm, axis=(1, 2, 3), out=out, grad=grad,
                                                workspace=workspace, **OPTIONS)
        assert value is out and g is grad
    want_value, want_grad = _on_reference(cussim.ms_ssim_with_gradient, x, y, mask, monkeypatch, axis=(1, 2, 3),
                                          **OPTIONS)
    np.testing.assert_allclose(on_kernels.asnumpy(out), want_value, rtol=0, atol=1e-5)
    assert np.linalg.norm(on_kernels.asnumpy(grad) - want_grad) <= 1e-4 * np.linalg.norm(want_grad)
    with pytest.raises(ValueError, match=r"make one with cussim.make_ms_ssim_workspace\(x, .*mask=mask"):
        cussim.ms_ssim_with_gradient(gx, gy, mask=gm, workspace=cussim.make_ms_ssim_workspace(gx, **OPTIONS),
                                     **OPTIONS)


def test_in_place_masked_calls_allocate_nothing_and_synchronise_once(standin_cupy, monkeypatch):
    """On the strict CuPy stand-in (bench/cupy_standin.py): with out, grad and a masked workspace, a warm masked
    MS-SSIM call allocates nothing and synchronises once, to read the scales' total weights, into the workspace's
    pinned host buffer (made at the first call)."""
    from bench.cupy_standin import record
    from cussim import _arrays
    from executors import device_allocations_refused

    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    cupy = standin_cupy
    x, y = _images((2, 23, 26), np.float32)
    mask = _mask((23, 26)) > 0
    gx, gy, gm = (cupy.asarray(a, blocking=True) for a in (x, y, mask))
    out, grad = cupy.empty((), np.float32), cupy.empty(x.shape, np.float32)
    workspace = cussim.make_ms_ssim_workspace(gx, mask=gm, **OPTIONS)

    def call():
        return cussim.ms_ssim_with_gradient(gx, gy, mask=gm, out=out, grad=grad, workspace=workspace, **OPTIONS)

    call()  # warm: kernels compiled, constants and plans made
    before = _arrays.allocations
    with device_allocations_refused():
        record.clear()
        call()
        assert not record.allocations and not record.of("pinned")
        assert [e.name for e in record.syncs] == ["ndarray.get"]
    assert _arrays.allocations == before
    held = workspace.host_totals  # scales x images: 3 scales, 2 images, each with the weight of its mask
    assert held.shape == (6,) and (held[:2] == mask[1:-1, 1:-1].sum()).all() and (held[2:] > 0).all()
    want_value, want_grad = _on_reference(cussim.ms_ssim_with_gradient, x, y, mask, monkeypatch, **OPTIONS)
    np.testing.assert_allclose(out.get(), want_value, rtol=0, atol=1e-5)
    assert np.linalg.norm(grad.get() - want_grad) <= 1e-4 * np.linalg.norm(want_grad)
