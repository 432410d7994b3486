"""Masks on the volumes' kernels (kernels/ssim3d.cu with VOLUME_MASK and VOLUME_NORMALIZED) through the public
functions, on the emulator (CUSSIM_NUMPY_BACKEND=emulator) and on a GPU where there is one, against the float64
reference (docs/spec.rst sections 7 and 9). Tiny volumes: the emulator runs a 3-D kernel slowly."""

import numpy as np
import pytest

import cussim
from cussim import _launch3d
from test_masks_kernels import (GRADIENT_FUNCTIONS, MODES, _check, _check_ones_normalized_as_unmasked, _images, _mask,
                                _on_reference)


def _volumes(shape, dtype, seed=0):
    return _images(shape, dtype, seed)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", ["same", "valid", "reflect"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8], ids=["float32", "float64", "uint8"])
def test_masked_means_and_gradients_match_the_reference(on_kernels, monkeypatch, padding, dtype, mode):
    x, y = _volumes((2, 2, 6, 9, 10), dtype)
    mask = _mask((2, 1, 6, 9, 10))
    for axis in (None, (1, 2, 3, 4), (2, 3, 4)):
        _check(on_kernels, monkeypatch, cussim.ssim_with_gradient, x, y, mask, padding=padding, axis=axis,
               win_size=3, mask_mode=mode, spatial_dims=3)
    _check(on_kernels, monkeypatch, cussim.dssim, x, y, mask, padding=padding, win_size=3, mask_mode=mode,
           spatial_dims=3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("win_size", [5, 7])
def test_larger_windows_and_several_depth_chunks(on_kernels, monkeypatch, win_size, mode):
    """Blocks of several depth chunks each sum their own weights (a chunk of 3 planes: 3 of them here)."""
    monkeypatch.setattr(_launch3d, "DEPTH_CHUNK", 3)
    x, y = _volumes((2, 9, 8, 11), np.float32)
    _check(on_kernels, monkeypatch, cussim.dssim_with_gradient, x, y, _mask((9, 8, 11)), win_size=win_size,
           mask_mode=mode, spatial_dims=3, axis=(1, 2, 3))


@pytest.mark.parametrize("padding", ["same", "valid", "reflect"])
def test_the_normalised_map(on_kernels, monkeypatch, padding):
    """ssim_map with mask_mode="normalized": 0 where the weight is 0, whatever the volumes hold there."""
    x, y = _volumes((2, 6, 9, 10), np.float32)
    mask = _mask((2, 6, 9, 10))
    x[mask == 0] = np.nan  # never read
    got = on_kernels.asnumpy(cussim.ssim_map(on_kernels.asarray(x), on_kernels.asarray(y),
                                             mask=on_kernels.asarray(mask), mask_mode="normalized", padding=padding,
                                             win_size=3, spatial_dims=3))
    want = _on_reference(cussim.ssim_map, x, y, mask, monkeypatch, mask_mode="normalized", padding=padding,
                         win_size=3, spatial_dims=3)
    centres = mask[:, 1:-1, 1:-1, 1:-1] if padding == "valid" else mask  # map voxel (d, i, j) weighs (d + 1, ...)
    assert not np.isnan(got).any() and (got[centres == 0] == 0).all()
    assert np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want)


def test_normalized_ignores_what_lies_under_a_mask_of_zeros(on_kernels):
    """NaN under weight 0 changes nothing: the value and the gradient equal those of finite values there (and the
    gradient is 0 there)."""
    x, y = _volumes((2, 6, 9, 10), np.float32)
    mask = _mask((6, 9, 10))
    poisoned = x.copy()
    poisoned[:, mask == 0] = np.nan
    got = cussim.l1_dssim_loss_with_gradient(on_kernels.asarray(poisoned), on_kernels.asarray(y),
                                             mask=on_kernels.asarray(mask), mask_mode="normalized", win_size=3,
                                             spatial_dims=3)
    want = cussim.l1_dssim_loss_with_gradient(on_kernels.asarray(x), on_kernels.asarray(y),
                                              mask=on_kernels.asarray(mask), mask_mode="normalized", win_size=3,
                                              spatial_dims=3)
    np.testing.assert_array_equal(on_kernels.asnumpy(got[0]), on_kernels.asnumpy(want[0]))
    grad = on_kernels.asnumpy(got[1])
    np.testing.assert_array_equal(grad, on_kernels.asnumpy(want[1]))
    assert (grad[:, mask == 0] == 0).all()


def test_normalized_with_ones_and_valid_padding_is_unmasked(on_kernels):
    x, y = _volumes((2, 7, 9, 10), np.float32)
    gx, gy = on_kernels.asarray(x), on_kernels.asarray(y)
    ones = on_kernels.asarray(np.ones((7, 9, 10), np.float32))
    options = dict(padding="valid", win_size=3, spatial_dims=3)
    _check_ones_normalized_as_unmasked(on_kernels, gx, gy, ones, **options)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_the_l1_dssim_loss_weights_both_terms(on_kernels, monkeypatch, accumulate, dtype, mode):
    x, y = _volumes((2, 2, 5, 8, 9), dtype)
    mask = _mask((2, 2, 5, 8, 9), dtype=np.float64)
    options = dict(win_size=3, spatial_dims=3, mask_mode=mode)
    _check(on_kernels, monkeypatch, cussim.l1_dssim_loss, x, y, mask, axis=(1, 2, 3, 4), **options)
    start = np.linspace(-1, 1, x.size).reshape(x.shape).astype(dtype)
    grad = on_kernels.asarray(start.copy())
    value, got = cussim.l1_dssim_loss_with_gradient(on_kernels.asarray(x), on_kernels.asarray(y),
                                                    mask=on_kernels.asarray(mask), grad=grad, accumulate=accumulate,
                                                    **options)
    want_value, want = _on_reference(cussim.l1_dssim_loss_with_gradient, x, y, mask, monkeypatch, **options)
    want = want + start if accumulate else want
    float64 = dtype == np.float64
    np.testing.assert_allclose(on_kernels.asnumpy(value), want_value, rtol=0, atol=1e-12 if float64 else 1e-5)
    assert np.linalg.norm(on_kernels.asnumpy(got) - want) <= (1e-10 if float64 else 1e-4) * np.linalg.norm(want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(5, 8, 9), (1, 2, 5, 8, 9), (2, 1, 5, 8, 9), (2, 2, 5, 8, 9)],
                         ids=["every-volume", "per-channel", "per-image", "per-volume"])
def test_masks_broadcast_over_leading_axes(on_kernels, monkeypatch, shape, mode):
    x, y = _volumes((2, 2, 5, 8, 9), np.float32)
    _check(on_kernels, monkeypatch, cussim.ssim_with_gradient, x, y, _mask(shape), axis=(1, 2, 3, 4), win_size=3,
           mask_mode=mode, spatial_dims=3)


@pytest.mark.parametrize("mode", MODES)
def test_bool_and_strided_masks_and_channels_last(on_kernels, monkeypatch, mode):
    x, y = _volumes((2, 5, 8, 9, 3), np.float32)
    wide = _mask((2, 10, 8, 9, 2))
    strided = wide[:, ::2, :, :, 1]  # planes every other, a column of channels: no unit stride
    assert not strided.flags.c_contiguous
    options = dict(channel_axis=-1, win_size=3, mask_mode=mode, spatial_dims=3)
    _check(on_kernels, monkeypatch, cussim.ssim_with_gradient, x, y, strided[..., None], axis=(1, 2, 3, 4),
           **options)
    _check(on_kernels, monkeypatch, cussim.ssim_with_gradient, x, y, strided[..., None] > 0.5, **options)


def test_a_mask_of_ones_gives_the_unmasked_numbers_bitwise(on_kernels):
    x, y = _volumes((2, 2, 5, 8, 9), np.float32)
    gx, gy = on_kernels.asarray(x), on_kernels.asarray(y)
    ones = on_kernels.asarray(np.ones((5, 8, 9), np.float32))
    for function in GRADIENT_FUNCTIONS + [cussim.l1_dssim_loss_with_gradient]:
        masked = function(gx, gy, mask=ones, axis=(1, 2, 3, 4), win_size=3, spatial_dims=3)
        plain = function(gx, gy, axis=(1, 2, 3, 4), win_size=3, spatial_dims=3)
        np.testing.assert_array_equal(on_kernels.asnumpy(masked[0]), on_kernels.asnumpy(plain[0]))
        # the gradient's scale moves from the forward (1 / n) to the backward (1 / sum(m)): float32 rounding
        got, want = on_kernels.asnumpy(masked[1]), on_kernels.asnumpy(plain[1])
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)


def test_the_callers_mask_is_never_modified(on_kernels):
    x, y = _volumes((2, 5, 8, 9), np.float32)
    for mask in (_mask((2, 5, 8, 9)), _mask((5, 8, 9)) > 0.3, _mask((5, 8, 9), dtype=np.float64)):
        before = mask.copy()
        given = on_kernels.asarray(mask)
        for mode in MODES:
            cussim.l1_dssim_loss_with_gradient(on_kernels.asarray(x), on_kernels.asarray(y), mask=given, win_size=3,
                                               spatial_dims=3, mask_mode=mode)
        np.testing.assert_array_equal(on_kernels.asnumpy(given), before)


def test_a_result_of_zero_weight_names_its_index(on_kernels):
    x, y = _volumes((2, 2, 5, 8, 9), np.float32)
    mask = _mask((2, 2, 5, 8, 9))
    mask[1, 0] = 0
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, mask))
    options = dict(win_size=3, spatial_dims=3, axis=(2, 3, 4))
    with pytest.raises(ValueError, match=r"the result at index \(1, 0\) a total weight of 0"):
        cussim.ssim_with_gradient(gx, gy, mask=gm, **options)
    with pytest.raises(ValueError, match=r"the result at index \(1, 0\)"):
        cussim.l1_dssim_loss(gx, gy, mask=gm, mask_mode="normalized", **options)
    assert np.isfinite(on_kernels.asnumpy(cussim.ssim(gx, gy, mask=gm, win_size=3, spatial_dims=3,
                                                      axis=(1, 2, 3, 4)))).all()


@pytest.mark.parametrize("mode", MODES)
def test_the_kernels_refuse_bad_weights_that_they_read(mode):
    """Weights reach the kernels unchecked from a GPU array: a negative, NaN or infinite one makes its result's
    total NaN (infinite for an infinite one), which the host refuses naming the result."""
    from cussim import _launch, _masks
    from cussim._params import ssim_params

    x, y = _volumes((3, 5, 8, 9), np.float32)
    params = ssim_params(win_size=3, spatial_dims=3)
    for bad in (-1.0, np.nan, np.inf):
        mask = np.ones((3, 5, 8, 9), np.float32)
        mask[1, 2, 3, 4] = bad
        sums = _launch3d.weighted_sums(x.shape, x.dtype, params)
        block_sums, out = _launch.block_sums(np, sums.size), np.empty(3, np.float32)
        _launch3d.forward(x, y, params, block_sums=block_sums, finish=(out, 1, 0.0, 1.0), mask=mask, mask_mode=mode)
        totals = sums.totals(block_sums, 3)
        assert not np.isfinite(totals[1]) and (totals[[0, 2]] == 5 * 8 * 9).all()
        np.testing.assert_array_equal(sums.plane_scales(block_sums)[[0, 2]], 1 / (5 * 8 * 9))
        with pytest.raises(ValueError, match=r"negative, NaN or infinite weights \(the result at index \(1,\)\)"):
            _masks.check_kernel_totals(totals, (3,))


def test_in_place_masked_calls_with_a_masked_workspace(on_kernels, monkeypatch):
    x, y = _volumes((2, 2, 5, 8, 9), np.float32)
    mask = _mask((2, 1, 5, 8, 9))
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, mask))
    out, grad = on_kernels.asarray(np.empty(2, np.float32)), on_kernels.asarray(np.empty(x.shape, np.float32))
    options = dict(win_size=3, spatial_dims=3)
    workspace = cussim.make_workspace(gx, mask=gm, **options)
    for _ in range(2):
        value, g = cussim.dssim_with_gradient(gx, gy, mask=gm, axis=(1, 2, 3, 4), out=out, grad=grad,
                                              workspace=workspace, **options)
        assert value is out and g is grad
    want_value, want_grad = _on_reference(cussim.dssim_with_gradient, x, y, mask, monkeypatch, axis=(1, 2, 3, 4),
                                          **options)
    np.testing.assert_allclose(on_kernels.asnumpy(out), want_value, rtol=0, atol=1e-5)
    assert np.linalg.norm(on_kernels.asnumpy(grad) - want_grad) <= 1e-4 * np.linalg.norm(want_grad)
    with pytest.raises(ValueError, match=r"make one with cussim.make_workspace\(x, .*spatial_dims=3, mask=mask\)"):
        cussim.dssim_with_gradient(gx, gy, mask=gm, workspace=cussim.make_workspace(gx, **options), **options)


@pytest.mark.parametrize("dtype", [np.float32, bool], ids=["float32-mask", "bool-mask"])
@pytest.mark.parametrize("mode", MODES)
def test_in_place_masked_calls_allocate_nothing_and_synchronise_once(standin_cupy, monkeypatch, mode, dtype):
    """On the strict CuPy stand-in (bench/cupy_standin.py): with out, grad and a masked workspace, a warm masked
    call on volumes allocates nothing and synchronises once, to read its results' total weights (a bool mask's
    weights are converted into the workspace)."""
    from bench.cupy_standin import record
    from cussim import _arrays
    from executors import device_allocations_refused

    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    cupy = standin_cupy
    x, y = _volumes((2, 5, 8, 9), np.float32)
    mask = _mask((5, 8, 9)) > 0 if dtype is bool else _mask((5, 8, 9))
    gx, gy, gm = (cupy.asarray(a, blocking=True) for a in (x, y, mask))
    out, grad = cupy.empty((), np.float32), cupy.empty(x.shape, np.float32)
    options = dict(win_size=3, spatial_dims=3)
    workspace = cussim.make_workspace(gx, mask=gm, **options)

    def call():
        return cussim.l1_dssim_loss_with_gradient(gx, gy, mask=gm, out=out, grad=grad, workspace=workspace,
                                                  mask_mode=mode, **options)

    call()  # warm: kernels compiled, constants made
    before = _arrays.allocations
    with device_allocations_refused():
        record.clear()
        call()
        assert not record.allocations
        assert [e.name for e in record.syncs] == ["ndarray.get"]
    assert _arrays.allocations == before
    want_value, want_grad = _on_reference(cussim.l1_dssim_loss_with_gradient, x, y, mask, monkeypatch,
                                          mask_mode=mode, **options)
    np.testing.assert_allclose(out.get(), want_value, rtol=0, atol=1e-5)
    assert np.linalg.norm(grad.get() - want_grad) <= 1e-4 * np.linalg.norm(want_grad)


@pytest.mark.parametrize("mode", MODES)
def test_float64_volumes_at_win_size_15_take_a_mask_on_the_kernels(on_kernels, monkeypatch, mode):
    """The largest window in float64: the mean mode's forward holds its window in registers, the normalized
    one three of its planes in its ring (kernels/ssim3d.cu, kWideRingPlanes; _launch3d.wide_ring_planes)."""
    x, y = _volumes((15, 16, 17), np.float64)
    _check(on_kernels, monkeypatch, cussim.ssim_with_gradient, x, y, _mask((15, 16, 17)), win_size=15,
           mask_mode=mode, spatial_dims=3)


def test_a_masked_backward_needs_the_forwards_plane_scales():
    """The launcher refuses a mask without plane_weights (the kernel would read its 1 / total from nothing)."""
    from cussim._params import ssim_params

    x, y = _volumes((2, 5, 8, 9), np.float32)
    with pytest.raises(ValueError, match="mask: a masked backward needs plane_weights"):
        _launch3d.backward(x, y, np.zeros(3 * x.size, np.float32), np.empty_like(x),
                           ssim_params(win_size=3, spatial_dims=3), mask=np.ones_like(x))
