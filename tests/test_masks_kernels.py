"""Masks on the 2-D kernels (kernels/ssim_forward.cu and ssim_backward.cu with FORWARD_MASK and GRAD_MASK) through
the public functions, on the emulator (CUSSIM_NUMPY_BACKEND=emulator) and on a GPU where there is one, against the
float64 reference (docs/spec.rst sections 7 and 9)."""

import numpy as np
import pytest

import cussim

RANGES = {np.float32: 1.0, np.float64: 1.0, np.uint8: 255.0}


def _images(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    y = np.clip(x + 0.15 * rng.standard_normal(shape), 0, 1)
    if np.dtype(dtype).kind == "u":
        return (x * 255).round().astype(dtype), (y * 255).round().astype(dtype)
    return x.astype(dtype), y.astype(dtype)


def _mask(shape, seed=1, dtype=np.float32):
    """Weights: a quarter of the pixels 0, the others in (0, 2)."""
    rng = np.random.default_rng(seed)
    m = 2 * rng.random(shape)
    m[rng.random(shape) < 0.25] = 0
    return m.astype(dtype)


def _on_reference(function, x, y, mask, monkeypatch, **options):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "reference")
    try:
        return function(x, y, mask=mask, **options)
    finally:
        monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")


def _check_ones_normalized_as_unmasked(on_kernels, gx, gy, ones, **options):
    """With a mask of ones, normalized mode's value and gradient are the unmasked ones (``options``: "valid"
    padding, where no window is renormalised)."""
    value, grad = cussim.ssim_with_gradient(gx, gy, mask=ones, mask_mode="normalized", **options)
    plain_value, plain_grad = cussim.ssim_with_gradient(gx, gy, **options)
    np.testing.assert_allclose(on_kernels.asnumpy(value), on_kernels.asnumpy(plain_value), rtol=0, atol=1e-6)
    want = on_kernels.asnumpy(plain_grad)
    assert np.linalg.norm(on_kernels.asnumpy(grad) - want) <= 1e-5 * np.linalg.norm(want)


def _check(executor, monkeypatch, function, x, y, mask, **options):
    """``function`` with ``mask`` on the kernels against the reference: values (abs 1e-5; 1e-12 in float64) and
    gradients (relative L2 1e-4; 1e-10)."""
    got = function(executor.asarray(x), executor.asarray(y), mask=executor.asarray(mask), **options)
    want = _on_reference(function, x, y, mask, monkeypatch, **options)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    float64 = np.dtype(x.dtype) == np.float64
    np.testing.assert_allclose(executor.asnumpy(got[0]), want[0], rtol=0, atol=1e-12 if float64 else 1e-5)
    if len(got) > 1:
        grad = executor.asnumpy(got[1])
        assert grad.shape == x.shape and not np.isnan(grad).any()
        assert np.linalg.norm(grad - want[1]) <= (1e-10 if float64 else 1e-4) * np.linalg.norm(want[1])
    return got


GRADIENT_FUNCTIONS = [cussim.ssim_with_gradient, cussim.dssim_with_gradient]


MODES = ["mean", "normalized"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", ["same", "valid", "reflect"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8], ids=["float32", "float64", "uint8"])
def test_masked_means_and_gradients_match_the_reference(on_kernels, monkeypatch, padding, dtype, mode):
    x, y = _images((2, 3, 30, 37), dtype)
    mask = _mask((2, 1, 30, 37))
    for axis in (None, (1, 2, 3), (2, 3)):
        _check(on_kernels, monkeypatch, cussim.ssim_with_gradient, x, y, mask, padding=padding, axis=axis,
               win_size=7, mask_mode=mode)
    _check(on_kernels, monkeypatch, cussim.ssim, x, y, mask, padding=padding, win_size=7, mask_mode=mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("win_size", [3, 11, 15])
def test_every_radius(on_kernels, monkeypatch, win_size, mode):
    x, y = _images((2, 33, 40), np.float32)
    _check(on_kernels, monkeypatch, cussim.dssim_with_gradient, x, y, _mask((33, 40)), win_size=win_size,
           mask_mode=mode)


@pytest.mark.parametrize("padding", ["same", "valid", "reflect"])
def test_the_normalised_map(on_kernels, monkeypatch, padding):
    """ssim_map with mask_mode="normalized": 0 where the weight is 0, whatever the images hold there."""
    x, y = _images((2, 30, 37), np.float32)
    mask = _mask((2, 30, 37))
    x[mask == 0] = np.nan  # never read
    got = on_kernels.asnumpy(cussim.ssim_map(on_kernels.asarray(x), on_kernels.asarray(y),
                                             mask=on_kernels.asarray(mask), mask_mode="normalized", padding=padding,
                                             win_size=5))
    want = _on_reference(cussim.ssim_map, x, y, mask, monkeypatch, mask_mode="normalized", padding=padding,
                         win_size=5)
    assert not np.isnan(got).any()
    assert np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want)


def test_normalized_with_ones_and_valid_padding_is_unmasked(on_kernels):
    x, y = _images((2, 29, 33), np.float32)
    gx, gy = on_kernels.asarray(x), on_kernels.asarray(y)
    ones = on_kernels.asarray(np.ones((29, 33), np.float32))
    _check_ones_normalized_as_unmasked(on_kernels, gx, gy, ones, padding="valid")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_the_l1_dssim_loss_weights_both_terms(on_kernels, monkeypatch, accumulate, dtype, mode):
    x, y = _images((2, 3, 28, 31), dtype)
    mask = _mask((2, 3, 28, 31), dtype=np.float64)
    _check(on_kernels, monkeypatch, cussim.l1_dssim_loss, x, y, mask, axis=(1, 2, 3), mask_mode=mode)
    start = np.linspace(-1, 1, x.size).reshape(x.shape).astype(dtype)
    grad = on_kernels.asarray(start.copy())
    value, got = cussim.l1_dssim_loss_with_gradient(on_kernels.asarray(x), on_kernels.asarray(y),
                                                    mask=on_kernels.asarray(mask), grad=grad, accumulate=accumulate,
                                                    mask_mode=mode)
    want_value, want = _on_reference(cussim.l1_dssim_loss_with_gradient, x, y, mask, monkeypatch, mask_mode=mode)
    want = want + start if accumulate else want
    np.testing.assert_allclose(on_kernels.asnumpy(value), want_value, rtol=0, atol=1e-5)
    assert np.linalg.norm(on_kernels.asnumpy(got) - want) <= 1e-4 * np.linalg.norm(want)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(28, 30), (1, 3, 28, 30), (2, 1, 28, 30), (2, 3, 28, 30)],
                         ids=["every-plane", "per-channel", "per-image", "per-plane"])
def test_masks_broadcast_over_leading_axes(on_kernels, monkeypatch, shape, mode):
    x, y = _images((2, 3, 28, 30), np.float32)
    _check(on_kernels, monkeypatch, cussim.ssim_with_gradient, x, y, _mask(shape), axis=(1, 2, 3), win_size=5,
           mask_mode=mode)


@pytest.mark.parametrize("mode", MODES)
def test_bool_and_strided_masks_and_channels_last(on_kernels, monkeypatch, mode):
    x, y = _images((2, 26, 29, 3), np.float32)
    wide = _mask((2, 52, 29, 2))
    strided = wide[:, ::2, :, 1]  # rows every other, a column of channels: no unit stride
    assert not strided.flags.c_contiguous
    _check(on_kernels, monkeypatch, cussim.ssim_with_gradient, x, y, strided[..., None], channel_axis=-1,
           axis=(1, 2, 3), win_size=5, mask_mode=mode)
    _check(on_kernels, monkeypatch, cussim.ssim_with_gradient, x, y, strided[..., None] > 0.5, channel_axis=-1,
           win_size=5, mask_mode=mode)


def test_a_mask_of_ones_gives_the_unmasked_numbers_bitwise(on_kernels):
    x, y = _images((2, 3, 29, 33), np.float32)
    gx, gy = on_kernels.asarray(x), on_kernels.asarray(y)
    ones = on_kernels.asarray(np.ones((29, 33), np.float32))
    for function in GRADIENT_FUNCTIONS + [cussim.l1_dssim_loss_with_gradient]:
        masked = function(gx, gy, mask=ones, axis=(1, 2, 3))
        plain = function(gx, gy, axis=(1, 2, 3))
        np.testing.assert_array_equal(on_kernels.asnumpy(masked[0]), on_kernels.asnumpy(plain[0]))
        # the gradient's scale moves from the forward (1 / n) to the backward (1 / sum(m)): float32 rounding
        got, want = on_kernels.asnumpy(masked[1]), on_kernels.asnumpy(plain[1])
        assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want)


def test_the_callers_mask_is_never_modified(on_kernels):
    x, y = _images((2, 24, 26), np.float32)
    for mask in (_mask((2, 24, 26)), _mask((24, 26)) > 0.3, _mask((24, 26), dtype=np.float64)):
        before = mask.copy()
        given = on_kernels.asarray(mask)
        cussim.l1_dssim_loss_with_gradient(on_kernels.asarray(x), on_kernels.asarray(y), mask=given)
        np.testing.assert_array_equal(on_kernels.asnumpy(given), before)


def test_a_result_of_zero_weight_names_its_index(on_kernels):
    x, y = _images((2, 3, 24, 26), np.float32)
    mask = _mask((2, 3, 24, 26))
    mask[1, 2] = 0
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, mask))
    with pytest.raises(ValueError, match=r"the result at index \(1, 2\) a total weight of 0"):
        cussim.ssim_with_gradient(gx, gy, mask=gm, axis=(2, 3))
    with pytest.raises(ValueError, match=r"the result at index \(1, 2\)"):
        cussim.l1_dssim_loss(gx, gy, mask=gm, axis=(2, 3))
    assert np.isfinite(on_kernels.asnumpy(cussim.ssim(gx, gy, mask=gm, axis=(1, 2, 3)))).all()


def test_the_kernels_refuse_bad_weights_that_they_read(on_kernels):
    """Weights reach the kernels unchecked from a GPU array: a negative, NaN or infinite one makes its result's
    total NaN (infinite for an infinite one), which the host refuses naming the result (NumPy masks are checked on the host first)."""
    from cussim import _launch, _masks
    from cussim._params import ssim_params

    x, y = _images((3, 24, 26), np.float32)
    params = ssim_params(win_size=5)
    for bad in (-1.0, np.nan, np.inf):
        mask = np.ones((3, 24, 26), np.float32)
        mask[1, 10, 11] = bad
        sums = _launch.weighted_sums(x.shape, x.dtype, params)
        block_sums, out = _launch.block_sums(np, sums.size), np.empty(3, np.float32)
        _launch.forward(x, y, params, block_sums=block_sums, finish=(out, 1, 0.0, 1.0), mask=mask)
        totals = sums.totals(block_sums, 3)
        assert not np.isfinite(totals[1]) and (totals[[0, 2]] == 24 * 26).all()
        with pytest.raises(ValueError, match=r"negative, NaN or infinite weights \(the result at index \(1,\)\)"):
            _masks.check_kernel_totals(totals, (3,))


def test_in_place_masked_calls_with_a_masked_workspace(on_kernels, monkeypatch):
    x, y = _images((2, 3, 24, 26), np.float32)
    mask = _mask((2, 1, 24, 26))
    gx, gy, gm = (on_kernels.asarray(a) for a in (x, y, mask))
    out, grad = on_kernels.asarray(np.empty(2, np.float32)), on_kernels.asarray(np.empty(x.shape, np.float32))
    workspace = cussim.make_workspace(gx, win_size=5, mask=gm)
    for _ in range(2):  # the counter is back at zero after each call
        value, g = cussim.dssim_with_gradient(gx, gy, mask=gm, win_size=5, axis=(1, 2, 3), out=out, grad=grad,
                                              workspace=workspace)
        assert value is out and g is grad
    want_value, want_grad = _on_reference(cussim.dssim_with_gradient, x, y, mask, monkeypatch, win_size=5,
                                       axis=(1, 2, 3))
    np.testing.assert_allclose(on_kernels.asnumpy(out), want_value, rtol=0, atol=1e-5)
    assert np.linalg.norm(on_kernels.asnumpy(grad) - want_grad) <= 1e-4 * np.linalg.norm(want_grad)
    with pytest.raises(ValueError, match=r"make one with cussim.make_workspace\(x, .*mask=mask\)"):
        cussim.dssim_with_gradient(gx, gy, mask=gm, win_size=5, workspace=cussim.make_workspace(gx, win_size=5))


def test_masks_of_a_bad_shape_or_dtype_are_refused_before_any_launch(on_kernels):
    x, y = _images((2, 24, 26), np.float32)
    gx, gy = on_kernels.asarray(x), on_kernels.asarray(y)
    with pytest.raises(ValueError, match=r"mask has shape \(24, 25\)"):
        cussim.ssim(gx, gy, mask=on_kernels.asarray(np.ones((24, 25))))
    with pytest.raises(TypeError, match="mask must hold real weights"):
        cussim.ssim(gx, gy, mask=on_kernels.asarray(np.ones((24, 26), np.complex64)))


@pytest.mark.parametrize("dtype", [np.float32, bool], ids=["float32-mask", "bool-mask"])
@pytest.mark.parametrize("mode", MODES)
def test_in_place_masked_calls_allocate_nothing_and_synchronise_once(standin_cupy, monkeypatch, mode, dtype):
    """On the strict CuPy stand-in (bench/cupy_standin.py): with out, grad and a masked workspace, a warm masked
    call allocates nothing and synchronises once, to read its results' total weights (a bool mask's weights are
    converted into the workspace)."""
    from bench.cupy_standin import record
    from cussim import _arrays
    from executors import device_allocations_refused

    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    cupy = standin_cupy
    x, y = _images((2, 16, 18), np.float32)
    mask = _mask((2, 16, 18)) > 0 if dtype is bool else _mask((2, 16, 18))
    gx, gy, gm = (cupy.asarray(a, blocking=True) for a in (x, y, mask))
    out, grad = cupy.empty((), np.float32), cupy.empty(x.shape, np.float32)
    workspace = cussim.make_workspace(gx, win_size=5, mask=gm)

    def call():
        return cussim.dssim_with_gradient(gx, gy, mask=gm, win_size=5, out=out, grad=grad, workspace=workspace,
                                          mask_mode=mode)

    call()  # warm: kernels compiled, constants and plans made
    before = _arrays.allocations
    with device_allocations_refused():
        record.clear()
        call()
        assert not record.allocations and not record.of("pinned")  # the totals into workspace.host_totals
        assert [e.name for e in record.syncs] == ["ndarray.get"]
    assert _arrays.allocations == before
    assert workspace.host_totals.shape == (1,)
    assert workspace.host_totals[0] == pytest.approx(mask.astype(np.float64).sum(), rel=1e-12)
    want_value, want_grad = _on_reference(cussim.dssim_with_gradient, x, y, mask, monkeypatch, win_size=5,
                                          mask_mode=mode)
    np.testing.assert_allclose(out.get(), want_value, rtol=0, atol=1e-5)
    assert np.linalg.norm(grad.get() - want_grad) <= 1e-4 * np.linalg.norm(want_grad)


def test_a_masked_backward_needs_the_forwards_plane_scales():
    """The launcher refuses a mask without plane_weights (the kernel would read its 1 / total from nothing)."""
    from cussim import _launch
    from cussim._params import ssim_params

    x, y = _images((2, 20, 20), np.float32)
    with pytest.raises(ValueError, match="mask: a masked backward needs plane_weights"):
        _launch.backward(x, y, np.zeros(3 * x.size, np.float32), np.empty_like(x), ssim_params(win_size=5),
                         mask=np.ones_like(x))
