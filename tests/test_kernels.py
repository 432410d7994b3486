"""The planes' kernels (kernels/ssim_forward.cu, ssim_backward.cu, msssim.cu) on every executor present, against
the float64 reference (docs/spec.rst section 7)."""

import numpy as np
import pytest

from cussim import _arrays, _kernels, _launch, _launch3d
from cussim._params import ssim_params
from cussim import _reference as ref
from executors import Executor

DTYPES = [np.float32, np.float64, np.float16, np.uint8, np.uint16]
RANGES = {np.float32: 1.0, np.float64: 1.0, np.float16: 1.0, np.uint8: 255.0, np.uint16: 65535.0}


def _images(shape, dtype, seed=0, noise=0.1, spatial=2):
    """A smooth image (volume, for ``spatial=3``) and a noisy copy, in dtype's range."""
    rng = np.random.default_rng(seed)
    ranges = (2, 3, 2)[-spatial:]
    *depth, rows, cols = np.meshgrid(*(np.linspace(0, s, n) for s, n in zip(ranges, shape[-spatial:])), indexing="ij")
    z = depth[0] if depth else 0
    clean = 0.5 + 0.4 * np.sin(rows + 2 * cols - z) * np.cos(3 * rows + z)
    clean = np.broadcast_to(clean, shape)
    noisy = np.clip(clean + noise * rng.standard_normal(shape), 0, 1)
    top = RANGES[dtype]
    if np.dtype(dtype).kind == "u":
        return (clean * top).round().astype(dtype), (noisy * top).round().astype(dtype)
    return clean.astype(dtype), noisy.astype(dtype)


def _params(x, window="gaussian", win_size=11, sigma=1.5, padding="same", sample_covariance=False, K=(0.01, 0.03)):
    return ssim_params(window=window, win_size=win_size, sigma=sigma, padding=padding, K1=K[0], K2=K[1],
                       sample_covariance=sample_covariance, data_range=RANGES[np.dtype(x.dtype).type])


def _ssim_map(x, y, params):
    """The map through ssim_forward alone (ssim3d_forward for volumes), into a new array of the compute dtype."""
    out = _arrays.array_module(x).empty(params.map_shape(x.shape), dtype=_launch.compute_dtype(x.dtype))
    (_launch3d if params.spatial == 3 else _launch).forward(x, y, params, map_out=out)
    return out


def _reference_kwargs(params):
    return dict(K1=params.K1, K2=params.K2, padding=params.padding, data_range=params.data_range, cov=params.cov,
                spatial=params.spatial)


def _check(executor, x, y, **options):
    """Runs ssim_forward on the executor and compares the map with the reference."""
    return _check_map(executor, x, y, _params(x, **options))


def _check_map(executor, x, y, params):
    """The map of ``params`` through the kernels on the executor, compared with the reference."""
    got = executor.asnumpy(_ssim_map(executor.asarray(x), executor.asarray(y), params))
    expected = ref.ssim_map(x, y, np.asarray(params.taps), **_reference_kwargs(params))
    assert got.dtype == _launch.compute_dtype(x.dtype)
    assert got.shape == expected.shape
    assert not np.isnan(got).any()
    if got.dtype == np.float64:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    else:
        assert np.linalg.norm(got - expected) <= 1e-4 * np.linalg.norm(expected)
        assert abs(got.mean(dtype=np.float64) - expected.mean()) < 1e-5
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_dtypes_and_paddings(executor, dtype, padding):
    x, y = _images((2, 37, 42), dtype)
    _check(executor, x, y, padding=padding)


@pytest.mark.parametrize("win_size", [3, 5, 7, 9, 11, 13, 15])
@pytest.mark.parametrize("window", ref.WINDOWS)
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_windows(executor, win_size, window, padding):
    x, y = _images((23, 30), np.float32, seed=win_size)
    _check(executor, x, y, window=window, win_size=win_size, sigma=0.4 + win_size / 7, padding=padding)


@pytest.mark.parametrize("shape", [(11, 11), (12, 11), (11, 16), (16, 16), (17, 33), (40, 13)])
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_sizes_including_the_window_size(executor, shape, padding):
    x, y = _images(shape, np.float32, seed=sum(shape))
    _check(executor, x, y, padding=padding)


@pytest.mark.parametrize("sample", [False, True], ids=["population", "sample"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_covariance_factor_and_constants(executor, sample, dtype):
    x, y = _images((3, 20, 26), dtype, noise=0.3)
    _check(executor, x, y, sample_covariance=sample, padding="reflect", K=(0.02, 0.05))


def test_views_need_no_copies(executor):
    base_x, base_y = _images((4, 3, 40, 50), np.float32)
    # transposed planes, strided rows, reversed columns, a sliced batch
    x = base_x.transpose(1, 0, 3, 2)[:, 1:, ::2, ::-1]
    y = base_y.transpose(1, 0, 3, 2)[:, 1:, ::2, ::-1]
    _check(executor, x, y)


def test_zero_stride_reference_broadcasts(executor):
    x, _ = _images((5, 3, 24, 24), np.float32, noise=0.2)
    _, y = _images((3, 24, 24), np.float32, seed=9)
    got = _check(executor, x, y)
    for i in range(5):
        single = _ssim_map(executor.asarray(x[i]), executor.asarray(y), _params(x))
        np.testing.assert_array_equal(got[i], executor.asnumpy(single))


def test_channels_last_through_strides(executor):
    x, y = _images((18, 21, 3), np.uint8)
    xv, yv = np.moveaxis(x, -1, 0), np.moveaxis(y, -1, 0)  # (3, 18, 21) views, no copy
    _check(executor, xv, yv)


def test_batch_axes_that_do_not_merge_are_copied_once(executor):
    x, y = _images((3, 4, 5, 12, 14), np.float32)
    x = x[:, ::2, ::-1]  # three leading levels that no pair of strides can merge
    _check(executor, x, y[:, ::2, ::-1])


def test_more_planes_than_the_grid_holds(executor, monkeypatch):
    # The kernel loops over planes past gridDim.y; a small grid limit exercises that loop.
    monkeypatch.setattr(_launch, "MAX_GRID_Y", 3)
    x, y = _images((10, 13, 13), np.float32)
    _check(executor, x, y)


def test_planes_past_the_grid_in_two_stride_levels(executor, monkeypatch):
    """The forward walks (outer, inner) plane indices by additions: the inner index carries into the outer."""
    monkeypatch.setattr(_launch, "MAX_GRID_Y", 3)
    x, y = _images((4, 10, 13, 13), np.float32)
    x, y = x[:, :5], y[:, :5]  # axes 0 and 1 do not merge: 4 x 5 planes in two levels, 3 blocks deep
    _check(executor, x, y)


def test_launch_plans_past_their_limit_are_dropped_and_made_again(executor, monkeypatch):
    monkeypatch.setattr(_launch, "MAX_PLANS", 2)
    _launch._PLANS.clear()
    for rows in (13, 14, 15, 13):
        x, y = _images((2, rows, 13), np.float32)
        _check(executor, x, y)
        assert 0 < len(_launch._PLANS) <= 2
    _launch._PLANS.clear()


def test_an_output_whose_batch_axes_need_three_stride_levels_is_refused():
    x, y = _images((2, 3, 4, 9, 9), np.float32)
    out = np.zeros((4, 6, 8, 9, 9), np.float32)[::2, ::2, ::2]  # no two batch axes merge
    with pytest.raises(ValueError, match="out: the batch axes of this layout cannot be addressed with two stride "
                                         "levels; pass a C-contiguous array"):
        _launch.plane_layouts([x, y], {"out": out})
    assert _launch.plane_layouts([x, y], {"out": np.zeros_like(x)})[0] == [1, 24]  # C order: one level


def test_blocks_taking_several_planes_give_the_bits_of_a_block_per_plane(executor, monkeypatch):
    """plane_rows: with MIN_BLOCKS at 1 each block of the forward and the backward computes every plane of its
    tile; the map, the value and the gradient are bitwise those of one block per plane."""
    x, y = _images((2, 3, 70, 37), np.float32, noise=0.2)
    params = _params(x)
    one_per_plane = _value_and_gradient(executor, x, y, params, False), _check_map(executor, x, y, params)
    monkeypatch.setattr(_launch, "MIN_BLOCKS", 1)
    assert _launch.plane_rows(_launch.tiles(x.shape, x.dtype), 6) == 1
    every_plane = _value_and_gradient(executor, x, y, params, False), _check_map(executor, x, y, params)
    for got, expected in zip((*every_plane[0], every_plane[1]), (*one_per_plane[0], one_per_plane[1])):
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_flat_image_against_itself_is_exactly_one(executor, padding, dtype):
    level = {np.uint8: 97, np.uint16: 40000}.get(dtype, 0.3712)
    flat = np.full((2, 19, 23), level, dtype=dtype)
    got = executor.asnumpy(_ssim_map(executor.asarray(flat), executor.asarray(flat),
                                            _params(flat, padding=padding)))
    assert np.all(got == 1.0)


def test_same_call_twice_is_bitwise_equal(executor):
    x, y = _images((2, 33, 35), np.float32, noise=0.25)
    params = _params(x, padding="reflect")
    run = lambda: executor.asnumpy(_ssim_map(executor.asarray(x), executor.asarray(y), params))  # noqa: E731
    assert np.array_equal(run(), run())


def test_nan_stays_in_its_windows(executor):
    x, y = _images((30, 30), np.float32)
    x[15, 15] = np.nan
    got = executor.asnumpy(_ssim_map(executor.asarray(x), executor.asarray(y), _params(x, win_size=5)))
    assert np.isnan(got[13:18, 13:18]).all()
    assert np.isfinite(got[:13]).all() and np.isfinite(got[:, :13]).all()


@pytest.mark.parametrize("order", ["reverse", "shuffle"])
def test_thread_orders_agree(order, monkeypatch):
    x, y = _images((2, 21, 29), np.float32)
    params = _params(x, win_size=7, padding="reflect")
    run = lambda: _ssim_map(x, y, params)  # noqa: E731
    forward = run()
    monkeypatch.setenv("CUSSIM_EMULATOR_ORDER", order)
    assert np.array_equal(run(), forward)


def test_no_access_past_the_end_of_any_array(monkeypatch):
    monkeypatch.setenv("CUSSIM_EMULATOR_GUARD", "1")
    emulator = Executor("emulator")
    for padding in ref.PADDINGS:
        x, y = _images((2, 17, 21), np.float16)
        _check(emulator, x, y, padding=padding, win_size=15)
        _check_gradient(emulator, x, y, _params(x, padding=padding, win_size=15), grad_rtol=1e-3)


def test_kernel_source_is_found():
    for family, files in _kernels.SOURCES.items():
        assert all((_kernels.kernel_dir() / name).is_file() for name in files)
        assert all(f'#line 1 "{name}"' in _kernels.kernel_source(family) for name in files)
    with pytest.raises(KeyError, match="unknown kernel family"):
        _kernels.kernel_source("nope")
    with pytest.raises(KeyError, match="not a specialisation"):
        _kernels.get_kernel("ssim", "ssim_forward<int, 5>", np.zeros(1))


# ---- means and exact gradients: ssim_forward's block sums and partial maps, ssim_finish, ssim_backward ----

def _value_and_gradient(executor, x, y, params, per_image=False, accumulate_into=None):
    """Mean SSIM (over everything, or per leading index) and d sum(means)/dx through the kernels (those of
    volumes, kernels/ssim3d.cu, for params.spatial == 3)."""
    launcher = _launch3d if params.spatial == 3 else _launch
    xp_x, xp_y = executor.asarray(x), executor.asarray(y)
    planes = int(np.prod(x.shape[: -params.spatial], dtype=np.int64))
    map_shape = params.map_shape(x.shape)
    ctype = _launch.compute_dtype(x.dtype)
    counted = int(np.prod(params.mean_shape(x.shape)))
    outputs = x.shape[0] if per_image else 1
    per_output_count = counted * planes // outputs
    block_sums = executor.asarray(np.full(planes * launcher.tiles(map_shape, x.dtype), np.nan))
    grad_maps = executor.asarray(np.full(3 * int(np.prod(map_shape)), np.nan, ctype))
    launcher.forward(xp_x, xp_y, params, block_sums=block_sums, grad_maps=grad_maps, weight=1.0 / per_output_count)
    values = executor.asarray(np.full(outputs, np.nan, ctype))
    _launch.finish(block_sums, values, per_output=block_sums.size // outputs, count=per_output_count)
    if accumulate_into is None:
        grad = executor.asarray(np.full(x.shape, np.nan, _launch.gradient_dtype(x.dtype)))
    else:
        grad = executor.asarray(accumulate_into)
    launcher.backward(xp_x, xp_y, grad_maps, grad, params, accumulate=accumulate_into is not None)
    return executor.asnumpy(values), executor.asnumpy(grad)


def _check_gradient(executor, x, y, params, per_image=False, grad_rtol=1e-4):
    value, grad = _value_and_gradient(executor, x, y, params, per_image)
    axis = tuple(range(1, x.ndim)) if per_image else None
    expected_value, expected_grad = ref.ssim_with_gradient(x, y, np.asarray(params.taps), axis=axis,
                                                           crop=params.crop, **_reference_kwargs(params))
    assert grad.dtype == _launch.gradient_dtype(x.dtype) and grad.shape == x.shape
    assert not np.isnan(grad).any()
    if value.dtype == np.float64:
        np.testing.assert_allclose(value, expected_value, rtol=0, atol=1e-12)
        assert np.linalg.norm(grad - expected_grad) <= 1e-10 * np.linalg.norm(expected_grad)
    else:
        np.testing.assert_allclose(value, expected_value, rtol=0, atol=1e-5)
        assert np.linalg.norm(grad - expected_grad) <= grad_rtol * np.linalg.norm(expected_grad)
    return value, grad


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("window", ref.WINDOWS)
@pytest.mark.parametrize("sample", [False, True], ids=["population", "sample"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_mean_and_gradient(executor, padding, window, sample, dtype):
    x, y = _images((2, 27, 35), dtype, noise=0.2)
    _check_gradient(executor, x, y, _params(x, window=window, win_size=7, padding=padding,
                                            sample_covariance=sample))


@pytest.mark.parametrize("win_size", [3, 5, 9, 13, 15])
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_gradient_for_every_radius(executor, win_size, padding):
    x, y = _images((19, 24), np.float32, seed=win_size, noise=0.15)
    _check_gradient(executor, x, y, _params(x, win_size=win_size, sigma=win_size / 5, padding=padding))


@pytest.mark.parametrize("dtype", [np.float16, np.uint8, np.uint16], ids=lambda d: np.dtype(d).name)
def test_gradient_of_other_dtypes(executor, dtype):
    x, y = _images((2, 20, 22), dtype, noise=0.2)
    # float16 gradients are stored in half precision: about 3 decimal digits
    _check_gradient(executor, x, y, _params(x), grad_rtol=1e-3 if dtype == np.float16 else 1e-4)


def test_per_image_means_and_broadcast_reference(executor):
    x, _ = _images((4, 3, 21, 26), np.float32, noise=0.25)
    _, y = _images((3, 21, 26), np.float32, seed=3)
    value, _ = _check_gradient(executor, x, y, _params(x, padding="reflect"), per_image=True)
    assert value.shape == (4,)


def test_gradient_through_views(executor):
    base_x, base_y = _images((3, 30, 44), np.float32, noise=0.2)
    x, y = base_x[:, ::-1, 1::2].transpose(0, 2, 1), base_y[:, ::-1, 1::2].transpose(0, 2, 1)
    _check_gradient(executor, x, y, _params(x, win_size=5, padding="valid"))


def test_gradient_accumulates(executor):
    x, y = _images((2, 18, 20), np.float32, noise=0.2)
    params = _params(x)
    _, plain = _value_and_gradient(executor, x, y, params)
    start = np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape)
    _, summed = _value_and_gradient(executor, x, y, params, accumulate_into=start.copy())
    np.testing.assert_allclose(summed, start + plain, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
def test_backward_tails_add_the_l1_term_and_accumulate(executor, accumulate, dtype):
    """Each tail of ssim_backward (a template argument: adding into grad, the fused L1 term) as its own
    specialisation: l1 sign(x - y), 0 where x == y, plus what grad held when accumulating."""
    x, y = _images((2, 70, 21), dtype, noise=0.2)
    y[:, :5] = x[:, :5]  # x == y there: no L1 term
    params = _params(x, padding="reflect")
    ctype = _launch.compute_dtype(dtype)
    grad_maps = executor.asarray(np.full(3 * int(np.prod(params.map_shape(x.shape))), np.nan, ctype))
    xp_x, xp_y = executor.asarray(x), executor.asarray(y)
    _launch.forward(xp_x, xp_y, params, grad_maps=grad_maps, weight=1e-3)
    start = np.linspace(-1, 1, x.size).reshape(x.shape).astype(_launch.gradient_dtype(dtype))

    def backward(l1, accumulate):
        grad = executor.asarray(start.copy() if accumulate else np.full(x.shape, np.nan, start.dtype))
        _launch.backward(xp_x, xp_y, grad_maps, grad, params, accumulate=accumulate, l1=l1)
        return executor.asnumpy(grad).astype(np.float64)

    plain = backward(0.0, False)
    expected = plain + 0.25 * np.sign(x.astype(np.float64) - y) + (start if accumulate else 0)
    np.testing.assert_allclose(backward(0.25, accumulate), expected, rtol=1e-6, atol=1e-6)


def test_msssim_backward_has_no_l1_term():
    x, y = _images((1, 20, 20), np.float32)
    params = _params(x)
    maps = np.zeros(3 * x.size, np.float32)
    with pytest.raises(ValueError, match="l1: MS-SSIM's backward has no L1 term"):
        _launch.backward(x, y, maps, np.empty_like(x), params, plane_weights=np.ones(1), variant="pytorch_msssim",
                         l1=0.5)


def test_gradient_of_identical_images_is_zero_and_finite(executor):
    flat = np.full((2, 17, 17), 0.25, np.float32)
    x, _ = _images((2, 17, 17), np.float32)
    for image in (flat, x):
        value, grad = _value_and_gradient(executor, image, image.copy(), _params(image))
        assert value[0] == 1.0
        assert np.all(np.isfinite(grad)) and np.abs(grad).max() < 1e-6


def test_means_are_bitwise_reproducible(executor):
    x, y = _images((3, 40, 37), np.float32, noise=0.3)
    params = _params(x, padding="reflect")
    first = _value_and_gradient(executor, x, y, params, per_image=True)
    second = _value_and_gradient(executor, x, y, params, per_image=True)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_nan_input_gives_nan_mean_and_local_nan_gradient(executor):
    x, y = _images((40, 40), np.float32)
    x[20, 20] = np.nan
    value, grad = _value_and_gradient(executor, x, y, _params(x, win_size=5))
    assert np.isnan(value[0])
    assert np.isfinite(grad[:10]).all() and np.isfinite(grad[:, :10]).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("image", ["x", "y"])
def test_a_non_finite_pixel_gives_nan_gradient_wherever_it_reaches(executor, image, dtype, padding, bad):
    """The clamps leave NaN alone: S == S_raw and sxx > 0 were False for NaN, so the partials of its windows
    were 0 and the gradient NaN at the pixel alone; now NaN at the 9 x 9 pixels within 2r, as on the float64 path."""
    x, y = _images((40, 40), dtype)
    (x if image == "x" else y)[20, 21] = bad
    params = _params(x, win_size=5, padding=padding)
    value, grad = _value_and_gradient(executor, x, y, params)
    with np.errstate(invalid="ignore"):
        _, expected = ref.ssim_with_gradient(x, y, np.asarray(params.taps), crop=params.crop,
                                             **_reference_kwargs(params))
    assert np.isnan(value[0])
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(expected))
    assert np.isnan(grad).sum() == 9 * 9


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gradient_with_flat_patches(executor, padding, dtype):
    """Black and constant patches (flat windows of x) against a textured y: dS/dExy must survive the clamp."""
    x, _ = _images((2, 30, 33), dtype)
    _, y = _images((2, 30, 33), dtype, seed=4, noise=0.3)
    x[:, 5:20, 6:24] = 0
    x[:, 22:, :12] = 0.5
    _check_gradient(executor, x, y, _params(x, win_size=7, padding=padding))


BRIGHT_FLAT = [(level, spread, padding) for level, spread in [(0.95, 1e-3), (0.99, 1e-4)] for padding in ref.PADDINGS]


@pytest.mark.parametrize("level, spread, padding", BRIGHT_FLAT)
@pytest.mark.parametrize("size", [40, 128])
def test_gradient_of_bright_flat_images_keeps_its_digits(executor, level, spread, padding, size):
    """The backward combines partials of shifted moments: unshifted, they cancelled (1.7e-4 and 2.3e-3 errors).

    "same" at 0.99 +- 1e-4 (9e-4 at 40 x 40, 3e-4 at 128 x 128): zero padding puts a step of 0.99 into the
    border windows, where sxx + syy - 2 sxy = var(x - y) ~ 1e-8 came from moments ~0.2; rounded above
    1, S was clamped and its partials zeroed. The kernels carry E[(x - y)^2] instead of E[xy].
    """
    rng = np.random.default_rng(5)
    x, y = (level + spread * rng.uniform(-1, 1, (2, 2, size, size))).astype(np.float32)
    _check_gradient(executor, x, y, _params(x, padding=padding))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.uint8], ids=lambda d: np.dtype(d).name)
def test_gradient_of_a_flat_image_against_itself_is_exactly_zero(executor, dtype):
    """Tiny C2 made the partials ~1e12 and their unshifted sum inf in float16 (4.2e6 in float32)."""
    flat = np.full((3, 3), 255, dtype)
    params = ssim_params(win_size=3, K2=1e-6, padding="valid", data_range=1.0)
    value, grad = _value_and_gradient(executor, flat, flat.copy(), params)
    assert value[0] == 1.0
    assert np.all(grad == 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("image", ["x", "y"])
def test_non_finite_tile_centre_stays_in_its_windows(executor, bad, padding, image):
    """A NaN or infinity at the pixel a tile is shifted by affects the same pixels as on the float64 path."""
    x, y = _images((2, 40, 40), np.float32)
    params = _params(x, win_size=5, padding=padding)
    centre = 8 + (params.radius if padding == "valid" else 0)  # the centre of the first tile, and of another
    (x if image == "x" else y)[:, [centre, centre + 16], [centre, centre + 16]] = bad
    got = executor.asnumpy(_ssim_map(executor.asarray(x), executor.asarray(y), params))
    with np.errstate(invalid="ignore"):
        expected = ref.ssim_map(x, y, np.asarray(params.taps), **_reference_kwargs(params))
        _, expected_grad = ref.ssim_with_gradient(x, y, np.asarray(params.taps), crop=params.crop,
                                                  **_reference_kwargs(params))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    assert np.isnan(got).sum() == 2 * 2 * 5 * 5
    _, grad = _value_and_gradient(executor, x, y, params)
    finite = np.isfinite(expected_grad)
    np.testing.assert_array_equal(np.isfinite(grad), finite)
    assert np.linalg.norm(grad[finite] - expected_grad[finite]) <= 1e-4 * np.linalg.norm(expected_grad[finite])


# the heights past 64 span several of the backward's tiles (16 x 64 in float arithmetic), whose halos reach
# back over more forward tiles where they reflect past the image's end
@pytest.mark.parametrize("shape", [(2, 9, 13), (33, 47), (2, 50, 36), (2, 131, 21), (67, 40)])
@pytest.mark.parametrize("win_size", [3, 15])
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_gradient_where_every_tile_has_its_own_shift(executor, shape, win_size, padding):
    """A ramp gives each forward tile a different shift: the backward must find each map pixel's."""
    if padding != "same" and min(shape[-2:]) < win_size:
        pytest.skip("no map pixel is averaged")
    x, y = _images(shape, np.float32, seed=win_size, noise=0.2)
    ramp = np.add.outer(np.linspace(0, 3, shape[-2]), np.linspace(0, 2, shape[-1])).astype(np.float32)
    params = ssim_params(win_size=win_size, sigma=win_size / 5, padding=padding, data_range=6.0)
    _check_gradient(executor, x + ramp, y + ramp, params)


def test_repeated_launches_use_each_calls_arrays(executor):
    """Launch plans are reused for equal layouts: each call must still read and write its own arrays."""
    rng = np.random.default_rng(0)
    for seed in (1, 2, 3):
        x, y = _images((3, 20, 22), np.float32, seed=seed, noise=0.1 * seed)
        _check_gradient(executor, x, y, _params(x, padding="reflect"))
        # three batch levels that no strides merge: copied on every call, so never planned with the copy
        x, y = rng.random((2, 5, 4, 5, 12, 14), dtype=np.float32)
        _check(executor, x[::2, :, ::-1], y[::2, :, ::-1])


@pytest.mark.parametrize("shape, spatial, outputs", [((1, 1, 37, 45), 2, 1), ((3, 2, 40, 33), 2, 3),
                                                     ((2, 3, 70, 20), 2, 2), ((2, 1, 20, 21, 22), 3, 2)])
def test_finish_folded_into_the_forward_is_bitwise_the_separate_finish(executor, shape, spatial, outputs):
    """The forward's last block writes the same values, bit for bit, as ssim_finish after the forward
    (the 2-launch path it replaces), and leaves the block counter at zero, so the next call agrees."""
    x, y = _images(shape, np.float32, spatial=spatial)
    params = ssim_params(win_size=7, spatial_dims=spatial)
    launcher = _launch3d if spatial == 3 else _launch
    planes = int(np.prod(shape[:-spatial]))
    counted = int(np.prod(params.mean_shape(shape))) * planes // outputs
    sums = planes * launcher.tiles(params.map_shape(shape), x.dtype)
    xp_x, xp_y = executor.asarray(x), executor.asarray(y)
    block_sums = executor.asarray(np.concatenate([np.full(sums, np.nan), [0.0]]))
    separate = executor.asarray(np.full(outputs, np.nan, np.float32))
    launcher.forward(xp_x, xp_y, params, block_sums=block_sums[:sums])
    _launch.finish(block_sums[:sums], separate, per_output=sums // outputs, count=counted, a=0.25, b=0.5)
    for _ in range(2):
        folded = executor.asarray(np.full(outputs, np.nan, np.float32))
        launcher.forward(xp_x, xp_y, params, block_sums=block_sums, finish=(folded, counted, 0.25, 0.5))
        np.testing.assert_array_equal(executor.asnumpy(folded), executor.asnumpy(separate))
        assert executor.asnumpy(block_sums)[-1] == 0.0
