"""Masked MS-SSIM on the kernels (the pyramid pooling the mask: kernels/msssim.cu's for images,
kernels/ssim3d.cu's msssim3d_downsample for volumes; the scales' forwards with FORWARD_MASK or VOLUME_MASK; the
combine's weighted means, folded into the last forward or msssim_combine) through the public functions, on the
emulator (CUSSIM_NUMPY_BACKEND=emulator) and on a GPU where there is one, against the float64 reference
(docs/spec.rst sections 6, 7 and 9). Tests taking ``dims`` run on images (2) and on volumes (3)."""

import re

import numpy as np
import pytest

import cussim
from test_masks_kernels import _images, _mask, _on_reference

# three scales of win_size 3: sides of 9 and more for every variant; 23 x 26 halves to odd sides at each scale
OPTIONS = dict(win_size=3, weights=(0.3, 0.3, 0.4))
# the spatial sides (odd ones halved at each scale) and the options of images and of volumes
SIDES = {2: (23, 26), 3: (11, 12, 13)}
DIMS_OPTIONS = {2: OPTIONS, 3: dict(OPTIONS, spatial_dims=3)}
DIMS = pytest.mark.parametrize("dims", [2, 3], ids=["images", "volumes"])


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
VOLUME_VARIANTS = ["pytorch_msssim", "tensorflow"]  # the kernels' volumes: no torchmetrics (its reflected scale)
DIMS_VARIANTS = [(2, v) for v in VARIANTS] + [(3, v) for v in VOLUME_VARIANTS]


@pytest.mark.parametrize("dims, variant", DIMS_VARIANTS, ids=[f"{d}d-{v}" for d, v in DIMS_VARIANTS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8], ids=["float32", "float64", "uint8"])
def test_masked_ms_ssim_and_its_gradient_match_the_reference(on_kernels, monkeypatch, dims, variant, dtype):
    x, y = _images((2, 3, *SIDES[dims]), dtype)
    mask = _mask((2, 1, *SIDES[dims]))
    for axis in (None, tuple(range(1, 2 + dims))):
        _check(on_kernels, monkeypatch, x, y, mask, variant=variant, axis=axis, **DIMS_OPTIONS[dims])


def test_torchmetrics_pools_an_images_channels_and_their_weights(on_kernels, monkeypatch):
    x, y = _images((2, 3, 24, 26), np.float32)
    _check(on_kernels, monkeypatch, x, y, _mask((2, 3, 24, 26)), variant="torchmetrics", channel_axis=1,
           axis=(1, 2, 3), **OPTIONS)


def test_more_scales_than_one_pyramid_launch(on_kernels, monkeypatch):
    """Six scales: the pyramid takes two launches (4 levels, then 1), the second pooling the first's last mask."""
    x, y = _images((1, 2, 66, 70), np.float32)
    _check(on_kernels, monkeypatch, x, y, _mask((66, 70)), win_size=3, weights=(0.2,) * 5 + (0.1,))


@DIMS
@pytest.mark.parametrize("batch", [(), (1, 3), (2, 3)], ids=["every-plane", "per-channel", "per-plane"])
def test_masks_broadcast_over_leading_axes(on_kernels, monkeypatch, dims, batch):
    x, y = _images((2, 3, *SIDES[dims]), np.float32)
    _check(on_kernels, monkeypatch, x, y, _mask((*batch, *SIDES[dims])), axis=tuple(range(1, 2 + dims)),
           **DIMS_OPTIONS[dims])


@DIMS
def test_bool_and_strided_masks_and_channels_last(on_kernels, monkeypatch, dims):
    first, *rest = SIDES[dims]
    x, y = _images((2, *SIDES[dims], 3), np.float32)
    strided = _mask((2, 2 * first, *rest, 2))[:, ::2, ..., 1]  # every other first side, a column of channels
    assert not strided.flags.c_contiguous
    axis = tuple(range(1, 2 + dims))
    _check(on_kernels, monkeypatch, x, y, strided[..., None], channel_axis=-1, axis=axis, **DIMS_OPTIONS[dims])
    _check(on_kernels, monkeypatch, x, y, strided[..., None] > 0.5, channel_axis=-1, variant="tensorflow",
           **DIMS_OPTIONS[dims])


@pytest.mark.parametrize("dims, variant", DIMS_VARIANTS, ids=[f"{d}d-{v}" for d, v in DIMS_VARIANTS])
def test_a_mask_of_ones_gives_the_unmasked_numbers_bitwise(on_kernels, dims, variant):
    """Ones pool to ones wherever a scale's map reads them (pytorch_msssim's padded zeros halve only the border
    pixels, which the valid maps crop away), and each weighted mean divides by the pixel count exactly."""
    x, y = _images((2, 3, *SIDES[dims]), np.float32)
    gx, gy = on_kernels.asarray(x), on_kernels.asarray(y)
    ones = on_kernels.asarray(np.ones(SIDES[dims], np.float32))
    axis = tuple(range(1, 2 + dims))
    masked = cussim.ms_ssim_with_gradient(gx, gy, mask=ones, axis=axis, variant=variant, **DIMS_OPTIONS[dims])
    plain = cussim.ms_ssim_with_gradient(gx, gy, axis=axis, variant=variant, **DIMS_OPTIONS[dims])
    for got, want in zip(masked, plain):
        np.testing.assert_array_equal(on_kernels.asnumpy(got), on_kernels.asnumpy(want))


@DIMS
def test_the_callers_mask_is_never_modified(on_kernels, dims):
    sides = SIDES[dims]
    x, y = _images((2, *sides), np.float32)
    for mask in (_mask((2, *sides)), _mask(sides) > 0.3, _mask(sides, dtype=np.float64)):
        before = mask.copy()
        given = on_kernels.asarray(mask)
        cussim.ms_ssim_with_gradient(on_kernels.asarray(x), on_kernels.asarray(y), mask=given, **DIMS_OPTIONS[dims])
        np.testing.assert_array_equal(on_kernels.asnumpy(given), before)


@DIMS
def test_an_image_of_zero_weight_names_its_index(on_kernels, dims):
    x, y = _images((2, 3, *SIDES[dims]), np.float32)
    mask = _mask((2, 3, *SIDES[dims]))
    mask[1, 2] = 0
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, mask))
    with pytest.raises(ValueError, match=r"the result at index \(1, 2\) a total weight of 0"):
        cussim.ms_ssim_with_gradient(gx, gy, mask=gm, **DIMS_OPTIONS[dims])
    with pytest.raises(ValueError, match=r"the result at index \(1, 2\) a total weight of 0"):
        cussim.ms_ssim(gx, gy, mask=gm, axis=tuple(range(1, 2 + dims)), **DIMS_OPTIONS[dims])


@DIMS
def test_a_coarse_scale_of_zero_weight_is_refused_too(on_kernels, monkeypatch, dims):
    """Weight only in the border ring that scale 2's valid map crops: scale 1 counts it, scale 2 does not."""
    x, y = _images(SIDES[dims], np.float32)
    mask = np.zeros(SIDES[dims], np.float32)
    mask[(slice(1, 3), *(slice(1, n - 1) for n in SIDES[dims][1:]))] = 1
    with pytest.raises(ValueError, match="the result a total weight of 0") as refused:
        _on_reference(cussim.ms_ssim, x, y, mask, monkeypatch, **DIMS_OPTIONS[dims])
    with pytest.raises(ValueError, match=re.escape(str(refused.value))):
        cussim.ms_ssim(on_kernels.asarray(x), on_kernels.asarray(y), mask=on_kernels.asarray(mask),
                       **DIMS_OPTIONS[dims])


@DIMS
def test_the_kernels_refuse_bad_weights_that_they_read(dims):
    """A GPU mask's weights reach the kernels unchecked: a negative, NaN or infinite one makes its scale's total
    of that image NaN (infinite), which the host refuses naming the image. (NumPy masks are checked on the host
    first, so the launch plan is driven here with a NumPy mask directly.)"""
    from cussim import _masks, _msssim

    x, y = _images((3, *SIDES[dims]), np.float32)
    for bad in (-1.0, np.nan, np.inf):
        mask = np.ones((3, *SIDES[dims]), np.float32)
        mask[1, 5, 6, *(7,) * (dims - 2)] = bad
        problem, pyramid = _msssim._pyramid(x, y, variant="pytorch_msssim", data_range=None, sigma=1.5, K1=0.01,
                                            K2=0.03, channel_axis=None, axis=tuple(range(1, 1 + dims)),
                                            mask=np.ones_like(mask), **DIMS_OPTIONS[dims])
        sums, scratch = (np.zeros(n, dtype) for n, dtype in zip(pyramid.sizes(False), (np.float64, np.float32)))
        views = pyramid.views(sums, scratch, False)
        _msssim._launch_plan(problem, pyramid, np.empty(3, np.float32), views, mask=mask)
        totals = views["totals"]
        assert not np.isfinite(totals[:, 1]).all() and np.isfinite(totals[:, [0, 2]]).all()
        with pytest.raises(ValueError, match=r"negative, NaN or infinite weights \(the result at index \(1,\)\)"):
            _masks.check_kernel_totals(totals[0], pyramid.image_shape)


@DIMS
def test_normalized_mode_is_refused(on_kernels, dims):
    x, y = _images((2, *SIDES[dims]), np.float32)
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, _mask(SIDES[dims])))
    with pytest.raises(ValueError, match="mask_mode='normalized' is not offered for MS-SSIM; pass mask_mode='mean'"):
        cussim.ms_ssim(gx, gy, mask=gm, mask_mode="normalized", **DIMS_OPTIONS[dims])


def test_volumes_of_several_depth_chunks(on_kernels, monkeypatch):
    """Each scale's blocks of several depth chunks sum their own weights (chunks of 3 planes: 4, 2 and 1 of them
    at the three scales)."""
    from cussim import _launch3d

    monkeypatch.setattr(_launch3d, "DEPTH_CHUNK", 3)
    x, y = _images((2, 13, 12, 11), np.float32)
    _check(on_kernels, monkeypatch, x, y, _mask((2, 13, 12, 11)), axis=(1, 2, 3), **DIMS_OPTIONS[3])


def test_float64_volumes_at_win_size_15_on_the_kernels(on_kernels, monkeypatch):
    """The largest window in float64 takes a mask on the kernels, as in SSIM (one scale: 15 voxels a side)."""
    x, y = _images((15, 15, 16), np.float64)
    _check(on_kernels, monkeypatch, x, y, _mask((15, 15, 16)), win_size=15, weights=(1.0,), spatial_dims=3)


@DIMS
def test_in_place_masked_calls_with_a_masked_workspace(on_kernels, monkeypatch, dims):
    options, axis = DIMS_OPTIONS[dims], tuple(range(1, 2 + dims))
    x, y = _images((2, 3, *SIDES[dims]), np.float32)
    mask = _mask((2, 1, *SIDES[dims])) > 0.5
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, mask))
    out, grad = on_kernels.asarray(np.empty(2, np.float32)), on_kernels.asarray(np.empty(x.shape, np.float32))
    workspace = cussim.make_ms_ssim_workspace(gx, mask=gm, **options)
    assert workspace.mask is not None  # the bool weights converted there
    for _ in range(2):  # the counters are back at zero after each call
        value, g = cussim.ms_ssim_with_gradient(gx, gy, mask=gm, axis=axis, out=out, grad=grad, workspace=workspace,
                                                **options)
        assert value is out and g is grad
    want_value, want_grad = _on_reference(cussim.ms_ssim_with_gradient, x, y, mask, monkeypatch, axis=axis,
                                          **options)
    np.testing.assert_allclose(on_kernels.asnumpy(out), want_value, rtol=0, atol=1e-5)
    assert np.linalg.norm(on_kernels.asnumpy(grad) - want_grad) <= 1e-4 * np.linalg.norm(want_grad)
    with pytest.raises(ValueError, match=r"make one with cussim.make_ms_ssim_workspace\(x, .*mask=mask"):
        cussim.ms_ssim_with_gradient(gx, gy, mask=gm, workspace=cussim.make_ms_ssim_workspace(gx, **options),
                                     **options)


@DIMS
def test_in_place_masked_calls_allocate_nothing_and_synchronise_once(standin_cupy, monkeypatch, dims):
    """On the strict CuPy stand-in (bench/cupy_standin.py): with out, grad and a masked workspace, a warm masked
    MS-SSIM call allocates nothing and synchronises once, to read the scales' total weights, into the workspace's
    pinned host buffer (made at the first call)."""
    from bench.cupy_standin import record
    from cussim import _arrays
    from executors import device_allocations_refused

    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    cupy = standin_cupy
    options = DIMS_OPTIONS[dims]
    x, y = _images((2, *SIDES[dims]), np.float32)
    mask = _mask(SIDES[dims]) > 0
    gx, gy, gm = (cupy.asarray(a, blocking=True) for a in (x, y, mask))
    out, grad = cupy.empty((), np.float32), cupy.empty(x.shape, np.float32)
    workspace = cussim.make_ms_ssim_workspace(gx, mask=gm, **options)

    def call():
        return cussim.ms_ssim_with_gradient(gx, gy, mask=gm, out=out, grad=grad, workspace=workspace, **options)

    call()  # warm: kernels compiled, constants and plans made
    before = _arrays.allocations
    with device_allocations_refused():
        record.clear()
        call()
        assert not record.allocations and not record.of("pinned")
        assert [e.name for e in record.syncs] == ["ndarray.get"]
    assert _arrays.allocations == before
    held = workspace.host_totals  # scales x images: 3 scales, 2 images, each with the weight of its mask
    assert held.shape == (6,) and (held[:2] == mask[(slice(1, -1),) * dims].sum()).all() and (held[2:] > 0).all()
    want_value, want_grad = _on_reference(cussim.ms_ssim_with_gradient, x, y, mask, monkeypatch, **options)
    np.testing.assert_allclose(out.get(), want_value, rtol=0, atol=1e-5)
    assert np.linalg.norm(grad.get() - want_grad) <= 1e-4 * np.linalg.norm(want_grad)
