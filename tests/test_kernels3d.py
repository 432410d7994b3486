"""kernels/ssim3d.cu on every executor present, against the float64 reference (docs/spec.rst section 7)."""

import numpy as np
import pytest

from cussim import _emulator, _kernels, _launch, _launch3d
from cussim import _reference as ref
from cussim._params import ssim_params
from executors import Executor
from test_kernels import DTYPES, RANGES, _check_gradient, _check_map, _images, _value_and_gradient
from test_kernels import _ssim_map as ssim_map_through_kernels


def _volumes(shape, dtype, seed=0, noise=0.1):
    """A smooth volume (the last three axes: depth, rows, columns) and a noisy copy, in dtype's range."""
    return _images(shape, dtype, seed, noise, spatial=3)


def _params(x, window="gaussian", win_size=5, sigma=1.0, padding="same", sample_covariance=False, K=(0.01, 0.03)):
    return ssim_params(window=window, win_size=win_size, sigma=sigma, padding=padding, K1=K[0], K2=K[1],
                       sample_covariance=sample_covariance, data_range=RANGES[np.dtype(x.dtype).type], spatial_dims=3)


def _ssim_map(executor, x, y, params):
    return executor.asnumpy(ssim_map_through_kernels(executor.asarray(x), executor.asarray(y), params))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_dtypes_and_paddings(executor, dtype, padding):
    x, y = _volumes((2, 9, 19, 21), dtype)
    _check_map(executor, x, y, _params(x, padding=padding))


@pytest.mark.parametrize("win_size", [3, 5, 7, 9, 11, 13, 15])
@pytest.mark.parametrize("window", ref.WINDOWS)
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_windows(executor, win_size, window, padding):
    x, y = _volumes((win_size + 2, 18, win_size + 3), np.float32, seed=win_size)
    _check_map(executor, x, y, _params(x, window=window, win_size=win_size, sigma=0.4 + win_size / 7,
                                       padding=padding))


@pytest.mark.parametrize("shape", [(5, 5, 5), (6, 17, 5), (5, 5, 33), (40, 7, 6)])
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_sizes_including_the_window_size_and_several_depth_chunks(executor, shape, padding):
    x, y = _volumes(shape, np.float32, seed=sum(shape))
    _check_map(executor, x, y, _params(x, padding=padding))


@pytest.mark.parametrize("depth_chunk", [1, 3, 7])
def test_any_depth_chunk(executor, monkeypatch, depth_chunk):
    monkeypatch.setattr(_launch3d, "DEPTH_CHUNK", depth_chunk)
    x, y = _volumes((2, 11, 9, 10), np.float32, noise=0.2)
    for padding in ref.PADDINGS:
        _check_map(executor, x, y, _params(x, padding=padding))
        _check_gradient(executor, x, y, _params(x, padding=padding))


@pytest.mark.parametrize("sample", [False, True], ids=["population", "sample"])
def test_covariance_factor_and_constants(executor, sample):
    x, y = _volumes((2, 7, 12, 13), np.float64, noise=0.3)
    _check_map(executor, x, y, _params(x, sample_covariance=sample, padding="reflect", K=(0.02, 0.05)))


def test_views_need_no_copies(executor):
    base_x, base_y = _volumes((3, 2, 14, 20, 12), np.float32)
    # swapped volumes and batch, transposed rows and depth, strided rows, reversed columns
    view = lambda a: a.transpose(1, 0, 3, 2, 4)[:, 1:, :, ::2, ::-1]  # noqa: E731
    _check_map(executor, view(base_x), view(base_y), _params(base_x))
    _check_gradient(executor, view(base_x), view(base_y), _params(base_x, padding="valid"))


def test_zero_stride_reference_broadcasts(executor):
    x, _ = _volumes((3, 2, 7, 9, 11), np.float32, noise=0.2)
    _, y = _volumes((2, 7, 9, 11), np.float32, seed=9)
    got = _check_map(executor, x, y, _params(x))
    for i in range(3):
        np.testing.assert_array_equal(got[i], _ssim_map(executor, x[i], y, _params(x)))
    _check_gradient(executor, x, np.broadcast_to(y, x.shape), _params(x), per_image=True)


def test_batch_axes_that_do_not_merge_are_copied_once(executor):
    x, y = _volumes((3, 4, 2, 6, 7, 8), np.float32)
    _check_map(executor, x[:, ::2, ::-1], y[:, ::2, ::-1], _params(x))


def test_more_volumes_than_the_grid_holds(executor, monkeypatch):
    monkeypatch.setattr(_launch3d, "MAX_GRID_Y", 2)
    x, y = _volumes((5, 6, 7, 8), np.float32)
    _check_map(executor, x, y, _params(x))
    _check_gradient(executor, x, y, _params(x), per_image=True)


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_flat_volume_against_itself_is_exactly_one(executor, padding, dtype):
    level = {np.uint8: 97, np.uint16: 40000}.get(dtype, 0.3712)
    flat = np.full((2, 7, 9, 8), level, dtype=dtype)
    assert np.all(_ssim_map(executor, flat, flat, _params(flat, padding=padding)) == 1.0)


@pytest.mark.parametrize("at", [6, 8], ids=["inside", "shift-voxel"])  # 8: the voxel the brick shifts by
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_stays_in_its_windows(executor, at, bad):
    x, y = _volumes((12, 12, 12), np.float32)
    x[at, at, at] = bad
    got = _ssim_map(executor, x, y, _params(x))
    held = slice(at - 2, at + 3)  # the windows of win_size 5 that hold the voxel
    assert np.isnan(got[held, held, held]).all()
    inside = np.zeros(got.shape, bool)
    inside[held, held, held] = True
    assert np.isfinite(got[~inside]).all()


@pytest.mark.parametrize("padding", ref.PADDINGS)
@pytest.mark.parametrize("window", ref.WINDOWS)
@pytest.mark.parametrize("sample", [False, True], ids=["population", "sample"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_mean_and_gradient(executor, padding, window, sample, dtype):
    x, y = _volumes((2, 8, 11, 13), dtype, noise=0.2)
    _check_gradient(executor, x, y, _params(x, window=window, padding=padding, sample_covariance=sample))


@pytest.mark.parametrize("win_size", [3, 7, 9, 11, 13, 15])
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_gradient_for_every_radius(executor, win_size, padding):
    x, y = _volumes((win_size + 1, win_size + 2, 17), np.float32, seed=win_size, noise=0.15)
    _check_gradient(executor, x, y, _params(x, win_size=win_size, sigma=win_size / 5, padding=padding))


@pytest.mark.parametrize("dtype", [np.float16, np.uint8, np.uint16], ids=lambda d: np.dtype(d).name)
def test_gradient_of_other_dtypes(executor, dtype):
    x, y = _volumes((2, 7, 10, 9), dtype, noise=0.2)
    # float16 gradients are stored in half precision: about 3 decimal digits
    _check_gradient(executor, x, y, _params(x), grad_rtol=1e-3 if dtype == np.float16 else 1e-4)


def test_gradient_accumulates(executor):
    x, y = _volumes((2, 6, 8, 9), np.float32, noise=0.2)
    _, plain = _value_and_gradient(executor, x, y, _params(x))
    start = np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape)
    _, summed = _value_and_gradient(executor, x, y, _params(x), accumulate_into=start.copy())
    np.testing.assert_allclose(summed, start + plain, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_gradient_with_flat_patches(executor, padding):
    """Constant blocks of x against a textured y: dS/dExy must survive the clamp."""
    x, _ = _volumes((9, 12, 13), np.float32)
    _, y = _volumes((9, 12, 13), np.float32, seed=4, noise=0.3)
    x[2:7, 1:9, 3:11] = 0
    _check_gradient(executor, x, y, _params(x, padding=padding))


def test_identical_volumes_give_one_and_a_zero_gradient(executor):
    x, _ = _volumes((2, 7, 9, 9), np.float32)
    value, grad = _value_and_gradient(executor, x, x.copy(), _params(x))
    assert value[0] == 1.0 and np.all(np.isfinite(grad)) and np.abs(grad).max() < 1e-6


def test_means_are_bitwise_reproducible(executor):
    x, y = _volumes((2, 20, 11, 12), np.float32, noise=0.3)
    first = _value_and_gradient(executor, x, y, _params(x, padding="reflect"), per_image=True)
    second = _value_and_gradient(executor, x, y, _params(x, padding="reflect"), per_image=True)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("order", ["reverse", "shuffle"])
def test_thread_orders_agree(order, monkeypatch):
    emulator = Executor("emulator")
    x, y = _volumes((2, 9, 13, 11), np.float32)
    params = _params(x, padding="reflect", sample_covariance=True)
    forward = _value_and_gradient(emulator, x, y, params, per_image=True)
    monkeypatch.setenv("CUSSIM_EMULATOR_ORDER", order)
    assert all(np.array_equal(a, b) for a, b in zip(_value_and_gradient(emulator, x, y, params, per_image=True),
                                                     forward))


def test_no_access_past_the_end_of_any_array(monkeypatch):
    monkeypatch.setenv("CUSSIM_EMULATOR_GUARD", "1")
    emulator = Executor("emulator")
    for padding in ref.PADDINGS:
        x, y = _volumes((2, 15, 16, 17), np.float16)
        params = _params(x, padding=padding, win_size=15, sigma=2.0)
        _check_map(emulator, x, y, params)
        _check_gradient(emulator, x, y, params, grad_rtol=1e-3)
    for variant in ("pytorch_msssim", "tensorflow"):
        test_downsampling_of_volumes(emulator, variant, np.float16)
        test_backward_adds_the_adjoint_of_the_2x2x2_mean(emulator, variant)


@pytest.mark.parametrize("mask_mode", [None, "mean", "normalized"])
def test_the_forward_takes_its_ring_in_forward_shared_bytes(monkeypatch, mask_mode):
    """ssim3d_forward keeps its window's older planes in dynamic shared memory (float arithmetic, R <= 5; the
    emulator's build as sm_90's: one plane in registers, ten in the ring at R = 5): a launch with a slot less
    reads past the buffer (the emulator ends it at a guard page)."""
    x, y = _volumes((1, 17, 16, 17), np.float32)
    params = _params(x, win_size=11, sigma=1.5)
    mask = None if mask_mode is None else np.ones(x.shape, np.float32)
    values = 6 if mask_mode == "normalized" else 5
    full = _launch3d.forward_shared_bytes(x.dtype, 5, mask_mode)
    assert full == 10 * values * 256 * 4 > 48 * 1024 * (mask_mode == "normalized")
    out = np.empty(params.map_shape(x.shape), np.float32)
    _launch3d.forward(x, y, params, map_out=out, mask=mask, mask_mode=mask_mode or "mean")
    assert np.isfinite(out).all()
    monkeypatch.setattr(_launch3d, "forward_shared_bytes", lambda *args: full - values * 256 * 4)
    with pytest.raises(_emulator.KernelFault, match="dynamic shared memory"):
        _launch3d.forward(x, y, params, map_out=out, mask=mask, mask_mode=mask_mode or "mean")


class _CompiledFor:
    """The emulator's kernel as CuPy's build for sm_``arch`` would report itself (``ptx_version``)."""

    def __init__(self, kernel, arch):
        self.kernel, self.ptx_version = kernel, arch

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def __setattr__(self, name, value):
        if name == "max_dynamic_shared_size_bytes":
            setattr(self.kernel, name, value)
        else:
            super().__setattr__(name, value)

    def __call__(self, *args, **kwargs):
        return self.kernel(*args, **kwargs)


@pytest.mark.parametrize("arch, ring", [(90, True), (100, True), (86, False), (120, False)])
def test_the_forward_sizes_its_ring_by_the_kernels_architecture(monkeypatch, arch, ring):
    """The ring's size follows the architecture the kernel was compiled for (its ptx_version), not the
    device's: the emulator's build has sm_90's ring, so a kernel that says it was built for an architecture
    without one gets no dynamic shared memory and reads past it."""
    x, y = _volumes((1, 17, 16, 17), np.float32)
    params = _params(x, win_size=11, sigma=1.5)
    out = np.empty(params.map_shape(x.shape), np.float32)
    get_kernel = _kernels.get_kernel
    monkeypatch.setattr(_kernels, "get_kernel", lambda *args: _CompiledFor(get_kernel(*args), arch))
    if ring:
        _launch3d.forward(x, y, params, map_out=out)
        assert np.isfinite(out).all()
    else:
        with pytest.raises(_emulator.KernelFault, match="dynamic shared memory"):
            _launch3d.forward(x, y, params, map_out=out)


@pytest.mark.parametrize("variant", ["pytorch_msssim", "tensorflow"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_downsampling_of_volumes(executor, variant, dtype):
    x, y = _volumes((2, 7, 10, 9), dtype)
    view_x, view_y = x[:, :, ::-1], y[:, :, ::-1]  # strided, reversed rows: no copies needed
    shape = ref.downsampled_shape(x.shape, variant, 3)
    ctype = _launch.compute_dtype(x.dtype)
    x_out = executor.asarray(np.full(shape, np.nan, ctype))
    y_out = executor.asarray(np.full(shape, np.nan, ctype))
    _launch3d.downsample(executor.asarray(view_x), executor.asarray(view_y), x_out, y_out, variant)
    for got, source in ((x_out, view_x), (y_out, view_y)):
        expected = ref.downsample(source.astype(np.float64), variant, 3)
        np.testing.assert_allclose(executor.asnumpy(got), expected, rtol=1e-6 if ctype == np.float32 else 1e-14)


@pytest.mark.parametrize("variant", ["pytorch_msssim", "tensorflow"])
def test_backward_adds_the_adjoint_of_the_2x2x2_mean(executor, variant):
    """With zero partial maps, the backward writes the adjoint of the downsampling of the coarse gradient."""
    x, y = _volumes((2, 7, 10, 9), np.float64)
    params = _params(x, win_size=3)
    coarse = np.random.default_rng(0).standard_normal(ref.downsampled_shape(x.shape, variant, 3))
    grad = executor.asarray(np.full(x.shape, np.nan))
    zeros = executor.asarray(np.zeros(3 * x.size))
    _launch3d.backward(executor.asarray(x), executor.asarray(y), zeros, grad, params, coarse=executor.asarray(coarse),
                       variant=variant)
    np.testing.assert_allclose(executor.asnumpy(grad), ref.downsample_adjoint(coarse, variant, x.shape, 3),
                               rtol=0, atol=1e-15)


def test_planes_past_32_bit_offsets_are_refused_by_name():
    """ssim3d_backward offsets a partial map's plane in 32-bit arithmetic: a plane of 2^31 voxels is refused
    before any launch (broadcast views: nothing allocated)."""
    x = np.broadcast_to(np.float32(0), (3, 46341, 46341))
    with pytest.raises(ValueError, match=r"x: the gradient of volumes takes planes of at most 2147483647 voxels"):
        _launch3d.backward(x, x, np.zeros(3, np.float32), x, ssim_params(win_size=3, data_range=1, spatial_dims=3))
