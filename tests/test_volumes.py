"""Volumes through the native API (``spatial_dims=3``) on every backend, and the reference against
scikit-image's N-D structural_similarity and against finite differences (docs/spec.rst sections 4, 5, 7)."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity as skimage_ssim

import cussim
from cussim import _arrays
from cussim import _reference as ref
from executors import device_allocations_refused
from test_api import _close, _close_gradient, _images, backend  # noqa: F401  (backend: the fixture, NumPy paths and CuPy)


def _expected(x, y, *, win_size=11, sigma=1.5, window="gaussian", padding="same", sample=False, axes=None,
              data_range=None):
    """The reference's value and gradient for volumes in the last three axes."""
    data_range = data_range or {np.uint8: 255.0, np.uint16: 65535.0}.get(np.dtype(x.dtype).type, 1.0)
    n = win_size**3
    return ref.ssim_with_gradient(
        x, y, ref.window_taps(window, win_size, sigma), axis=axes, crop=ref.mean_weights_crop(padding, win_size),
        padding=padding, data_range=data_range, cov=n / (n - 1) if sample else 1.0, spatial=3,
    )


# ---- the reference against scikit-image and finite differences ----

@pytest.mark.parametrize("gaussian", [False, True], ids=["uniform", "gaussian"])
@pytest.mark.parametrize("sample", [False, True], ids=["population", "sample"])
def test_reference_matches_skimage_on_volumes(gaussian, sample):
    x, y = _images((13, 16, 15), np.float64, seed=1)
    win_size = 11 if gaussian else 7
    taps = ref.skimage_gaussian_taps(1.5) if gaussian else ref.uniform_taps(7)
    kwargs = dict(padding="reflect", cov=win_size**3 / (win_size**3 - 1) if sample else 1.0, spatial=3)
    expected, expected_map = skimage_ssim(x, y, data_range=1, gaussian_weights=gaussian, full=True,
                                          use_sample_covariance=sample)
    assert abs(ref.ssim(x, y, taps, crop=(win_size - 1) // 2, **kwargs) - expected) < 1e-10
    np.testing.assert_allclose(ref.ssim_map(x, y, taps, **kwargs), expected_map, rtol=0, atol=1e-9)


def test_native_api_gives_skimage_numbers_with_its_options():
    x, y = _images((12, 14, 13), np.float64, seed=2)
    got = cussim.ssim(x, y, window="uniform", win_size=7, padding="reflect", sample_covariance=True, spatial_dims=3)
    assert abs(got - skimage_ssim(x, y, data_range=1)) < 1e-10


@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_exact_gradient_against_central_differences(padding):
    x, y = _images((6, 7, 8), np.float64, seed=3)
    value, grad = cussim.ssim_with_gradient(x, y, win_size=3, sigma=0.8, padding=padding, spatial_dims=3)
    h = 1e-6
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[index] = h
        numeric[index] = (cussim.ssim(x + e, y, win_size=3, sigma=0.8, padding=padding, spatial_dims=3)
                          - cussim.ssim(x - e, y, win_size=3, sigma=0.8, padding=padding, spatial_dims=3)) / (2 * h)
    assert np.linalg.norm(grad - numeric) <= 1e-6 * np.linalg.norm(numeric)


# ---- the native API on every backend ----

@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.uint8, np.uint16],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_values_and_gradients(backend, dtype, padding):
    x, y = _images((2, 12, 13, 14), dtype)
    value, grad = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), padding=padding, spatial_dims=3)
    expected, expected_grad = _expected(x, y, padding=padding)
    _close(backend.asnumpy(value), expected, dtype)
    _close_gradient(backend.asnumpy(grad), expected_grad, dtype)
    assert abs(float(backend.asnumpy(cussim.ssim(backend.asarray(x), backend.asarray(y), padding=padding,
                                                 spatial_dims=3))) - expected) < 1e-5


@pytest.mark.parametrize("padding", ref.PADDINGS)
def test_a_nan_voxel_gives_nan_gradient_wherever_it_reaches(backend, padding):
    """NaN at the 9 x 9 x 9 voxels within 2r of a NaN voxel, never 0 (the kernels' clamps made 0 of it)."""
    x, y = _images((16, 17, 18), np.float32)
    x[8, 8, 9] = np.nan
    with np.errstate(invalid="ignore"):
        value, grad = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), win_size=5, padding=padding,
                                                spatial_dims=3)
    reach = np.zeros(x.shape, bool)
    reach[4:13, 4:13, 5:14] = True
    assert np.isnan(backend.asnumpy(value))
    np.testing.assert_array_equal(np.isnan(backend.asnumpy(grad)), reach)


@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_options_axis_and_map(backend, window):
    x, y = _images((2, 3, 9, 10, 11))
    kwargs = dict(window=window, win_size=5, sample_covariance=True, padding="reflect", spatial_dims=3)
    value = cussim.ssim(backend.asarray(x), backend.asarray(y), axis=(1, 2, 3, 4), **kwargs)
    expected, _ = _expected(x, y, window=window, win_size=5, sample=True, padding="reflect", axes=(1, 2, 3, 4))
    assert value.shape == (2,)
    _close(backend.asnumpy(value), expected, np.float32)
    m = cussim.ssim_map(backend.asarray(x), backend.asarray(y), **{**kwargs, "padding": "valid"})
    n = 5**3
    expected_map = ref.ssim_map(x, y, ref.window_taps(window, 5, 1.5), padding="valid", cov=n / (n - 1), spatial=3)
    assert m.shape == (2, 3, 5, 6, 7)
    assert np.linalg.norm(backend.asnumpy(m) - expected_map) <= 1e-4 * np.linalg.norm(expected_map)


def test_channels_last_and_broadcast_reference(backend):
    x, _ = _images((2, 9, 10, 11, 3))
    _, y = _images((9, 10, 11, 3), seed=5)
    value, grad = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), channel_axis=-1, win_size=7,
                                            spatial_dims=3)
    expected, expected_grad = _expected(np.moveaxis(x, -1, 1), np.moveaxis(np.broadcast_to(y, x.shape), -1, 1),
                                        win_size=7)
    _close(backend.asnumpy(value), expected, np.float32)
    _close_gradient(backend.asnumpy(grad), np.moveaxis(expected_grad, 1, -1), np.float32)


def test_strided_views(backend):
    bx, by = _images((3, 14, 20, 12))
    x, y = bx.transpose(0, 2, 1, 3)[:, ::2, :, ::-1], by.transpose(0, 2, 1, 3)[:, ::2, :, ::-1]
    value, grad = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), win_size=5, padding="valid",
                                            spatial_dims=3)
    expected, expected_grad = _expected(x, y, win_size=5, padding="valid")
    _close(backend.asnumpy(value), expected, np.float32)
    _close_gradient(backend.asnumpy(grad), expected_grad, np.float32)


def test_in_place_outputs_workspace_and_accumulate(backend):
    x, y = _images((2, 9, 10, 11))
    out = backend.asarray(np.zeros(2, np.float32))
    grad = backend.asarray(np.ones(x.shape, np.float32))
    ws = cussim.make_workspace(backend.asarray(x), win_size=7, spatial_dims=3)
    value, g = cussim.dssim_with_gradient(backend.asarray(x), backend.asarray(y), win_size=7, axis=(1, 2, 3),
                                          out=out, grad=grad, workspace=ws, accumulate=True, spatial_dims=3)
    assert value is out and g is grad
    expected, expected_grad = _expected(x, y, win_size=7, axes=(1, 2, 3))
    _close(backend.asnumpy(out), (1 - expected) / 2, np.float32)
    _close_gradient(backend.asnumpy(grad) - 1, -expected_grad / 2, np.float32)


@pytest.mark.parametrize("weight", [0.0, 0.2, 1.0])
def test_fused_l1_dssim_loss(backend, weight):
    x, y = _images((2, 8, 9, 10), np.float64)
    ssim_value, ssim_grad = _expected(x, y, win_size=5)
    expected = (1 - weight) * np.abs(x - y).mean() + weight * (1 - ssim_value)
    expected_grad = (1 - weight) * np.sign(x - y) / x.size - weight * ssim_grad
    value, grad = cussim.l1_dssim_loss_with_gradient(backend.asarray(x), backend.asarray(y), weight=weight,
                                                     win_size=5, spatial_dims=3)
    _close(backend.asnumpy(value), expected, np.float64)
    _close_gradient(backend.asnumpy(grad), expected_grad, np.float64)
    single = cussim.l1_dssim_loss(backend.asarray(x), backend.asarray(y), weight=weight, win_size=5, spatial_dims=3)
    _close(backend.asnumpy(single), expected, np.float64)


def test_identical_volumes_and_a_flat_one(backend):
    x, _ = _images((7, 8, 9))
    for volume in (x, np.full_like(x, 0.3)):
        value, grad = cussim.ssim_with_gradient(backend.asarray(volume), backend.asarray(volume.copy()), win_size=5,
                                                spatial_dims=3)
        assert float(backend.asnumpy(value)) == 1.0 and np.abs(backend.asnumpy(grad)).max() < 1e-6


@pytest.mark.parametrize("name", ["reference", "emulator"])
def test_in_place_path_allocates_nothing(name, monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", name)
    x, y = _images((2, 7, 8, 9))
    out, grad = np.zeros((), np.float32), np.zeros(x.shape, np.float32)
    ws = cussim.make_workspace(x, win_size=5, spatial_dims=3)
    kwargs = dict(win_size=5, out=out, grad=grad, workspace=ws, spatial_dims=3)
    cussim.dssim_with_gradient(x, y, **kwargs)  # warm-up: compiles, caches the window
    before = _arrays.allocations
    for _ in range(3):
        cussim.dssim_with_gradient(x, y, **kwargs)
    assert _arrays.allocations == before


@pytest.mark.gpu
def test_in_place_path_allocates_nothing_on_the_gpu():
    import cupy

    x, y = (cupy.asarray(a) for a in _images((2, 16, 32, 32)))
    out, grad = cupy.zeros((), cupy.float32), cupy.zeros(x.shape, cupy.float32)
    ws = cussim.make_workspace(x, spatial_dims=3)
    kwargs = dict(out=out, grad=grad, workspace=ws, spatial_dims=3)
    cussim.dssim_with_gradient(x, y, **kwargs)
    with device_allocations_refused():
        cussim.dssim_with_gradient(x, y, **kwargs)
        cussim.dssim_with_gradient(x, y, accumulate=True, **kwargs)


X, Y = _images((2, 9, 12, 12))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: cussim.ssim(X, Y, spatial_dims=4), ValueError, "spatial_dims must be 2 .images. or 3 .volumes."),
        (lambda: cussim.ssim(X, Y, spatial_dims=True), ValueError, "spatial_dims must be 2"),
        (lambda: cussim.ssim(X, Y, spatial_dims=3), ValueError,
         "volumes are 9x12x12, smaller than the 11x11x11 window"),
        (lambda: cussim.ssim(X[0, 0], Y[0, 0], spatial_dims=3), ValueError, "three spatial axes"),
        (lambda: cussim.ssim(X, Y, win_size=5, axis=(0, 2, 3), spatial_dims=3), ValueError,
         "must include all spatial axes"),
        (lambda: cussim.ssim_with_gradient(X, Y, win_size=5, spatial_dims=3, workspace=cussim.make_workspace(X)),
         ValueError, "make_workspace.*spatial_dims=3"),
        (lambda: cussim.ssim_with_gradient(X, Y, win_size=5, spatial_dims=3, grad=np.zeros((9, 12, 12), np.float32)),
         ValueError, "grad has shape"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_inputs_are_never_modified(backend):
    x, y = _images((2, 7, 8, 9))
    x0, y0 = x.copy(), y.copy()
    cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), win_size=5, spatial_dims=3)
    assert np.array_equal(x, x0) and np.array_equal(y, y0)


# ---- MS-SSIM of volumes ----

MS_OPTIONS = dict(win_size=3, weights=(0.3, 0.3, 0.4), spatial_dims=3)


@pytest.mark.parametrize("variant", ["pytorch_msssim", "tensorflow"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_ms_ssim_of_volumes(backend, variant, dtype):
    x, y = _images((2, 11, 12, 13), dtype)
    value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(y), variant=variant,
                                               axis=(1, 2, 3), **MS_OPTIONS)
    expected, expected_grad = ref.ms_ssim_with_gradient(x, y, ref.window_taps("gaussian", 3, 1.5), variant=variant,
                                                        weights=MS_OPTIONS["weights"], axis=(1, 2, 3), spatial=3)
    _close(backend.asnumpy(value), expected, dtype)
    _close_gradient(backend.asnumpy(grad), expected_grad, dtype)


def test_ms_ssim_gradient_against_central_differences():
    x, y = _images((9, 10, 11), np.float64, seed=4)
    _, grad = cussim.ms_ssim_with_gradient(x, y, **MS_OPTIONS)
    h, rng = 1e-6, np.random.default_rng(0)
    for index in map(tuple, rng.integers(0, x.shape, size=(12, 3))):
        e = np.zeros_like(x)
        e[index] = h
        numeric = (cussim.ms_ssim(x + e, y, **MS_OPTIONS) - cussim.ms_ssim(x - e, y, **MS_OPTIONS)) / (2 * h)
        assert abs(numeric - grad[index]) <= 1e-6 * np.abs(grad).max()


@pytest.mark.parametrize("name", ["reference", "emulator"])
def test_ms_ssim_in_place_path_allocates_nothing(name, monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", name)
    x, y = _images((2, 9, 10, 11))
    out, grad = np.zeros((), np.float32), np.ones(x.shape, np.float32)
    ws = cussim.make_ms_ssim_workspace(x, win_size=3, weights=MS_OPTIONS["weights"], spatial_dims=3)
    kwargs = dict(MS_OPTIONS, out=out, grad=grad, workspace=ws, accumulate=True)
    cussim.ms_ssim_with_gradient(x, y, **kwargs)
    before = _arrays.allocations
    cussim.ms_ssim_with_gradient(x, y, **kwargs)
    assert _arrays.allocations == before
    _, plain = cussim.ms_ssim_with_gradient(x, y, **MS_OPTIONS)
    np.testing.assert_allclose(grad, 1 + 2 * plain, rtol=1e-5, atol=1e-7)


def test_torchmetrics_ms_ssim_of_volumes_is_torchmetrics():
    """torchmetrics' 5-D MS-SSIM: floor halving by avg_pool3d, the last scale reflected along all three axes,
    channels pooled (a ValueError before)."""
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = _images((2, 2, 24, 26, 28), np.float64)
    a = torch.tensor(x, requires_grad=True)
    theirs = tm.multiscale_structural_similarity_index_measure(a, torch.tensor(y), data_range=1.0, betas=(0.5, 0.5),
                                                               kernel_size=5, sigma=0.7, normalize="relu",
                                                               reduction="none")
    theirs.sum().backward()
    value, grad = cussim.ms_ssim_with_gradient(x, y, weights=(0.5, 0.5), win_size=5, sigma=0.7, variant="torchmetrics",
                                               channel_axis=1, spatial_dims=3, axis=(1, 2, 3, 4))
    np.testing.assert_allclose(value, theirs.detach().numpy(), rtol=0, atol=1e-12)
    assert np.linalg.norm(grad - a.grad.numpy()) <= 1e-10 * np.linalg.norm(grad)


def test_ms_ssim_volume_errors(monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    with pytest.raises(ValueError, match="variant='torchmetrics' on volumes .* is computed for NumPy inputs"):
        cussim.ms_ssim(*_images((12, 13, 14)), variant="torchmetrics", **MS_OPTIONS)
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "reference")
    x, y = _images((9, 10, 11))
    with pytest.raises(ValueError, match="volumes are 9x10x11; MS-SSIM .* needs a smaller side of at least 161"):
        cussim.ms_ssim(x, y, spatial_dims=3)
