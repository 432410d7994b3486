"""kernels/ssim.cu on every executor present, against the float64 reference (spec.md section 7)."""

import numpy as np
import pytest

from cussim import _kernels, _launch
from cussim import _reference as ref
from executors import Executor

DTYPES = [np.float32, np.float64, np.float16, np.uint8, np.uint16]
RANGES = {np.float32: 1.0, np.float64: 1.0, np.float16: 1.0, np.uint8: 255.0, np.uint16: 65535.0}


def _images(shape, dtype, seed=0, noise=0.1):
    """A smooth image and a noisy copy, in dtype's range."""
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.linspace(0, 3, shape[-2]), np.linspace(0, 2, shape[-1]), indexing="ij")
    clean = 0.5 + 0.4 * np.sin(rows + 2 * cols) * np.cos(3 * rows)
    clean = np.broadcast_to(clean, shape)
    noisy = np.clip(clean + noise * rng.standard_normal(shape), 0, 1)
    top = RANGES[dtype]
    if np.dtype(dtype).kind == "u":
        return (clean * top).round().astype(dtype), (noisy * top).round().astype(dtype)
    return clean.astype(dtype), noisy.astype(dtype)


def _check(executor, x, y, *, window="gaussian", win_size=11, sigma=1.5, padding="same", cov=1.0, K=(0.01, 0.03)):
    """Runs ssim_map on the executor and compares map and mean with the reference."""
    data_range = RANGES[np.dtype(x.dtype).type]
    taps = ref.window_taps(window, win_size, sigma)
    out = _launch.ssim_map(executor.asarray(x), executor.asarray(y), taps=taps, K1=K[0], K2=K[1],
                           padding=padding, data_range=data_range, cov=cov)
    got = executor.asnumpy(out)
    expected = ref.ssim_map(x, y, taps, K1=K[0], K2=K[1], padding=padding, data_range=data_range, cov=cov)
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


@pytest.mark.parametrize("cov", [1.0, 121 / 120], ids=["population", "sample"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_covariance_factor_and_constants(executor, cov, dtype):
    x, y = _images((3, 20, 26), dtype, noise=0.3)
    _check(executor, x, y, cov=cov, padding="reflect", K=(0.02, 0.05))


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
        np.testing.assert_array_equal(got[i], executor.asnumpy(_launch.ssim_map(
            executor.asarray(x[i]), executor.asarray(y), taps=ref.window_taps("gaussian", 11, 1.5), K1=0.01,
            K2=0.03, padding="same", data_range=1.0, cov=1.0)))


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


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_flat_image_against_itself_is_exactly_one(executor, padding, dtype):
    level = {np.uint8: 97, np.uint16: 40000}.get(dtype, 0.3712)
    flat = np.full((2, 19, 23), level, dtype=dtype)
    got = executor.asnumpy(_launch.ssim_map(
        executor.asarray(flat), executor.asarray(flat), taps=ref.window_taps("gaussian", 11, 1.5), K1=0.01,
        K2=0.03, padding=padding, data_range=RANGES[dtype], cov=1.0))
    assert np.all(got == 1.0)


def test_same_call_twice_is_bitwise_equal(executor):
    x, y = _images((2, 33, 35), np.float32, noise=0.25)
    run = lambda: executor.asnumpy(_launch.ssim_map(  # noqa: E731
        executor.asarray(x), executor.asarray(y), taps=ref.window_taps("gaussian", 11, 1.5), K1=0.01, K2=0.03,
        padding="reflect", data_range=1.0, cov=1.0))
    assert np.array_equal(run(), run())


def test_nan_stays_in_its_windows(executor):
    x, y = _images((30, 30), np.float32)
    x[15, 15] = np.nan
    got = executor.asnumpy(_launch.ssim_map(executor.asarray(x), executor.asarray(y),
                                            taps=ref.window_taps("gaussian", 5, 1.5), K1=0.01, K2=0.03,
                                            padding="same", data_range=1.0, cov=1.0))
    assert np.isnan(got[13:18, 13:18]).all()
    assert np.isfinite(got[:13]).all() and np.isfinite(got[:, :13]).all()


@pytest.mark.parametrize("order", ["reverse", "shuffle"])
def test_thread_orders_agree(order, monkeypatch):
    x, y = _images((2, 21, 29), np.float32)
    taps = ref.window_taps("gaussian", 7, 1.5)
    run = lambda: _launch.ssim_map(x, y, taps=taps, K1=0.01, K2=0.03, padding="reflect",  # noqa: E731
                                   data_range=1.0, cov=1.0)
    forward = run()
    monkeypatch.setenv("CUSSIM_EMULATOR_ORDER", order)
    assert np.array_equal(run(), forward)


def test_no_access_past_the_end_of_any_array(monkeypatch):
    monkeypatch.setenv("CUSSIM_EMULATOR_GUARD", "1")
    for padding in ref.PADDINGS:
        x, y = _images((2, 17, 21), np.float16)
        _check(Executor("emulator"), x, y, padding=padding, win_size=15)


def test_kernel_source_is_found():
    assert (_kernels.kernel_dir() / "ssim.cu").is_file()
    with pytest.raises(KeyError, match="unknown kernel family"):
        _kernels.kernel_source("nope")
    with pytest.raises(KeyError, match="not a specialisation"):
        _kernels.get_kernel("ssim", "ssim_map<int, 5>", np.zeros(1))
