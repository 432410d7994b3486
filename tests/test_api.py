"""The public API on every backend: NumPy through the reference and the emulator, CuPy on a GPU."""

import numpy as np
import pytest

import cussim
from bench.gpu_smoke import images as _images
from cussim import _arrays, _ssim
from cussim import _reference as ref
from executors import Executor, device_allocations_refused


@pytest.fixture(params=["reference", "emulator", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request, monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator" if request.param == "emulator" else "reference")
    return Executor(request.param)


def _expected(x, y, *, win_size=11, sigma=1.5, window="gaussian", padding="same", sample=False, axes=None,
              data_range=None, K1=0.01, K2=0.03):
    """The reference's value and gradient for images whose plane is the last two axes."""
    data_range = data_range or {np.uint8: 255.0, np.uint16: 65535.0}.get(np.dtype(x.dtype).type, 1.0)
    n = win_size * win_size
    value, grad = ref.ssim_with_gradient(
        x, y, ref.window_taps(window, win_size, sigma), axis=axes, crop=ref.mean_weights_crop(padding, win_size),
        K1=K1, K2=K2, padding=padding, data_range=data_range, cov=n / (n - 1) if sample else 1.0,
    )
    return value, grad


def _close(got, expected, dtype):
    got = np.asarray(got, dtype=np.float64)
    if np.dtype(dtype) == np.float64:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    else:
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def _close_gradient(got, expected, dtype):
    got = np.asarray(got, dtype=np.float64)
    tolerance = {np.dtype(np.float64): 1e-9, np.dtype(np.float16): 1e-3}.get(np.dtype(dtype), 1e-4)
    assert np.linalg.norm(got - expected) <= tolerance * np.linalg.norm(expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.uint8, np.uint16],
                         ids=lambda d: np.dtype(d).name)
def test_values_and_dtypes(backend, dtype):
    x, y = _images((2, 3, 24, 28), dtype)
    value = cussim.ssim(backend.asarray(x), backend.asarray(y))
    expected, _ = _expected(x, y)
    compute = np.float64 if dtype == np.float64 else np.float32
    assert value.shape == () and value.dtype == compute
    _close(backend.asnumpy(value), expected, dtype)
    d = cussim.dssim(backend.asarray(x), backend.asarray(y))
    _close(backend.asnumpy(d), (1 - expected) / 2, dtype)


@pytest.mark.parametrize("padding", ["same", "valid", "reflect"])
@pytest.mark.parametrize("window", ["gaussian", "uniform"])
def test_options(backend, padding, window):
    x, y = _images((2, 30, 26))
    options = dict(win_size=7, sigma=1.2, window=window, padding=padding, sample_covariance=True, K1=0.02,
                   K2=0.05, data_range=2.0)
    value = cussim.ssim(backend.asarray(x), backend.asarray(y), **options)
    expected, _ = _expected(x, y, win_size=7, sigma=1.2, window=window, padding=padding, sample=True,
                            data_range=2.0, K1=0.02, K2=0.05)
    _close(backend.asnumpy(value), expected, np.float32)


@pytest.mark.parametrize("axis, kept", [(None, ()), ((1, 2, 3), (0,)), ((0, 2, 3), (1,)), ((-1, -2), (0, 1)),
                                        ((0, 1, 2, 3), ())])
def test_axis(backend, axis, kept):
    x, y = _images((4, 3, 20, 22))
    value = cussim.ssim(backend.asarray(x), backend.asarray(y), axis=axis)
    assert value.shape == tuple(x.shape[a] for a in kept)
    expected_map = ref.ssim_map(x, y, ref.window_taps("gaussian", 11, 1.5))
    _close(backend.asnumpy(value), expected_map.mean(axis=axis), np.float32)


def test_channels_last(backend):
    x, y = _images((2, 20, 24, 3))
    value = cussim.ssim(backend.asarray(x), backend.asarray(y), channel_axis=-1, axis=(1, 2, 3))
    expected, _ = _expected(np.moveaxis(x, -1, 1), np.moveaxis(y, -1, 1), axes=(1, 2, 3))
    _close(backend.asnumpy(value), expected, np.float32)
    full = cussim.ssim_map(backend.asarray(x), backend.asarray(y), channel_axis=-1)
    assert full.shape == x.shape
    expected_map = np.moveaxis(ref.ssim_map(np.moveaxis(x, -1, 0), np.moveaxis(y, -1, 0),
                                            ref.window_taps("gaussian", 11, 1.5)), 0, -1)
    assert np.linalg.norm(backend.asnumpy(full) - expected_map) <= 1e-4 * np.linalg.norm(expected_map)


def test_ssim_map_and_out(backend):
    x, y = _images((2, 25, 31))
    for padding in ("same", "valid", "reflect"):
        full = cussim.ssim_map(backend.asarray(x), backend.asarray(y), padding=padding, win_size=9)
        expected = ref.ssim_map(x, y, ref.window_taps("gaussian", 9, 1.5), padding=padding)
        assert full.shape == expected.shape and full.dtype == np.float32
        assert np.linalg.norm(backend.asnumpy(full) - expected) <= 1e-4 * np.linalg.norm(expected)
    out = backend.asarray(np.zeros((2, 31, 25), np.float32)).transpose(0, 2, 1)  # a strided out
    result = cussim.ssim_map(backend.asarray(x), backend.asarray(y), out=out)
    assert result is out
    expected = ref.ssim_map(x, y, ref.window_taps("gaussian", 11, 1.5))
    assert np.linalg.norm(backend.asnumpy(out) - expected) <= 1e-4 * np.linalg.norm(expected)


@pytest.mark.parametrize("padding", ["same", "valid", "reflect"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_gradients(backend, padding, dtype):
    x, y = _images((2, 3, 21, 19), dtype)
    value, grad = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), padding=padding,
                                            axis=(1, 2, 3))
    expected, expected_grad = _expected(x, y, padding=padding, axes=(1, 2, 3))
    assert value.shape == (2,) and grad.shape == x.shape and grad.dtype == dtype
    _close(backend.asnumpy(value), expected, dtype)
    _close_gradient(backend.asnumpy(grad), expected_grad, dtype)
    d_value, d_grad = cussim.dssim_with_gradient(backend.asarray(x), backend.asarray(y), padding=padding)
    expected, expected_grad = _expected(x, y, padding=padding)
    _close(backend.asnumpy(d_value), (1 - expected) / 2, dtype)
    _close_gradient(backend.asnumpy(d_grad), -expected_grad / 2, dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.uint8], ids=["float16", "uint8"])
def test_gradient_dtypes(backend, dtype):
    x, y = _images((2, 18, 20), dtype)
    _, grad = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y))
    assert grad.dtype == (np.float16 if dtype == np.float16 else np.float32)
    _, expected_grad = _expected(x, y)
    _close_gradient(backend.asnumpy(grad), expected_grad, dtype)


def test_gradient_with_broadcast_reference_and_channels_last(backend):
    x, _ = _images((3, 20, 22, 3))
    _, y = _images((20, 22, 3), seed=5)
    value, grad = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), channel_axis=-1)
    expected, expected_grad = _expected(np.moveaxis(x, -1, 1), np.moveaxis(y, -1, 0))
    _close(backend.asnumpy(value), expected, np.float32)
    _close_gradient(backend.asnumpy(grad), np.moveaxis(expected_grad, 1, -1), np.float32)


def test_in_place_outputs_and_accumulate(backend):
    x, y = _images((2, 3, 20, 20))
    out = backend.asarray(np.zeros(2, np.float32))
    grad = backend.asarray(np.ones(x.shape, np.float32))
    ws = cussim.make_workspace(backend.asarray(x))
    value, g = cussim.dssim_with_gradient(backend.asarray(x), backend.asarray(y), axis=(1, 2, 3), out=out,
                                          grad=grad, workspace=ws, accumulate=True)
    assert value is out and g is grad
    expected, expected_grad = _expected(x, y, axes=(1, 2, 3))
    _close(backend.asnumpy(out), (1 - expected) / 2, np.float32)
    _close_gradient(backend.asnumpy(grad) - 1, -expected_grad / 2, np.float32)


def test_a_workspace_made_from_the_callers_memory_gives_the_same_values(backend):
    """Workspace(block_sums, grad_maps) from memory holding anything (here NaN and a huge block counter)
    computes what make_workspace's does, on every call; the counter the kernel keeps is back at zero after."""
    x, y = (backend.asarray(a) for a in _images((2, 3, 20, 20)))
    expected, expected_grad = (backend.asnumpy(a) for a in cussim.ssim_with_gradient(x, y, axis=(1, 2, 3)))
    made = cussim.make_workspace(x)
    garbage = np.full(made.block_sums.size, np.nan)
    garbage[-1] = np.frombuffer(np.uint64(2**32 - 7).tobytes(), np.float64)[0]
    workspace = cussim.Workspace(backend.asarray(garbage), backend.asarray(np.full(made.grad_maps.size, np.nan,
                                                                                   made.grad_maps.dtype)))
    for _ in range(2):
        value, grad = cussim.ssim_with_gradient(x, y, axis=(1, 2, 3), workspace=workspace)
        np.testing.assert_array_equal(backend.asnumpy(value), expected)
        np.testing.assert_array_equal(backend.asnumpy(grad), expected_grad)
    if backend.name != "reference":  # the reference path never touches the workspace
        assert backend.asnumpy(workspace.block_sums)[-1] == 0.0


@pytest.mark.parametrize("weight", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_fused_l1_dssim_loss(backend, dtype, weight):
    """(1 - w) * mean|x - y| + w * (1 - SSIM) per kept index, broadcast y, data range 2, in place with accumulate."""
    x, _ = _images((2, 3, 21, 19), dtype)
    _, y = _images((3, 21, 19), dtype, seed=3)
    x, y = 2 * x, 2 * y
    ys = np.broadcast_to(y, x.shape)
    ssim_value, ssim_grad = _expected(x, ys, axes=(1, 2, 3), data_range=2.0)
    difference = x.astype(np.float64) - ys
    expected = (1 - weight) * np.abs(difference).mean(axis=(1, 2, 3)) + weight * (1 - ssim_value)
    expected_grad = (1 - weight) * np.sign(difference) / difference[0].size - weight * ssim_grad
    value = cussim.l1_dssim_loss(backend.asarray(x), backend.asarray(y), weight=weight, axis=(1, 2, 3),
                                 data_range=2.0)
    _close(backend.asnumpy(value), expected, dtype)
    out, grad = backend.asarray(np.zeros(2, dtype)), backend.asarray(np.ones(x.shape, dtype))
    workspace = cussim.make_workspace(backend.asarray(x))
    result = cussim.l1_dssim_loss_with_gradient(backend.asarray(x), backend.asarray(y), weight=weight, axis=(1, 2, 3),
                                                data_range=2.0, out=out, grad=grad, workspace=workspace,
                                                accumulate=True)
    assert result[0] is out and result[1] is grad
    _close(backend.asnumpy(out), expected, dtype)
    _close_gradient(backend.asnumpy(grad) - 1, expected_grad, dtype)


def test_fused_l1_dssim_loss_weight_is_checked():
    x, y = _images((2, 16, 16))
    for weight in (-0.1, 1.5, float("nan"), True, "0.2"):
        with pytest.raises(ValueError, match="weight must be a number from 0 to 1"):
            cussim.l1_dssim_loss(x, y, weight=weight)
    with pytest.raises(TypeError, match="padding"):
        cussim.l1_dssim_loss(x, y, padding="valid")  # zero padding only: the L1 term covers every pixel


@pytest.mark.parametrize("name", ["reference", "emulator"])
def test_in_place_path_allocates_nothing(name, monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", name)
    x, y = _images((2, 3, 20, 20))
    out, grad = np.zeros((), np.float32), np.zeros(x.shape, np.float32)
    ws = cussim.make_workspace(x)
    cussim.dssim_with_gradient(x, y, out=out, grad=grad, workspace=ws)  # warm-up: compiles, caches the window
    before = _arrays.allocations
    for _ in range(3):
        cussim.dssim_with_gradient(x, y, out=out, grad=grad, workspace=ws)
    assert _arrays.allocations == before


@pytest.mark.gpu
def test_in_place_path_allocates_nothing_on_the_gpu():
    import cupy

    x, y = (cupy.asarray(a) for a in _images((2, 3, 64, 64)))
    out, grad = cupy.zeros((), cupy.float32), cupy.zeros(x.shape, cupy.float32)
    ws = cussim.make_workspace(x)
    cussim.dssim_with_gradient(x, y, out=out, grad=grad, workspace=ws)
    with device_allocations_refused():
        cussim.dssim_with_gradient(x, y, out=out, grad=grad, workspace=ws)
        cussim.dssim_with_gradient(x, y, out=out, grad=grad, workspace=ws, accumulate=True)


def test_inputs_are_never_modified(backend):
    x, y = _images((2, 20, 20))
    x_device, y_device = backend.asarray(x), backend.asarray(y)
    cussim.ssim_with_gradient(x_device, y_device)
    cussim.ssim_map(x_device, y_device)
    assert np.array_equal(backend.asnumpy(x_device), x) and np.array_equal(backend.asnumpy(y_device), y)


def test_same_call_twice_is_bitwise_equal(backend):
    x, y = _images((3, 33, 29))
    first = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), axis=(1, 2))
    second = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), axis=(1, 2))
    assert all(np.array_equal(backend.asnumpy(a), backend.asnumpy(b)) for a, b in zip(first, second))


def test_identical_images(backend):
    flat = np.full((2, 16, 16), 0.37, np.float32)
    x, _ = _images((2, 16, 16))
    for image in (flat, x):
        value, grad = cussim.ssim_with_gradient(backend.asarray(image), backend.asarray(image.copy()))
        assert float(value) == 1.0
        assert np.isfinite(backend.asnumpy(grad)).all()


def test_nan_gives_nan_nothing_worse(backend):
    x, y = _images((2, 30, 30))
    x[0, 15, 15] = np.nan
    value = cussim.ssim(backend.asarray(x), backend.asarray(y), axis=(1, 2))
    assert np.isnan(backend.asnumpy(value)[0]) and np.isfinite(backend.asnumpy(value)[1])


def test_dlpack_objects_are_accepted():
    class DLPackOnly:  # what a PyTorch CPU tensor offers
        def __init__(self, array):
            self._array = array

        def __dlpack__(self, **kwargs):
            return self._array.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self._array.__dlpack_device__()

    x, y = _images((20, 20))
    assert float(cussim.ssim(DLPackOnly(x), DLPackOnly(y))) == pytest.approx(float(cussim.ssim(x, y)))


# ---- every bad input: a clear exception naming the argument -------------------------------

X, Y = _images((2, 20, 20))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: cussim.ssim(X, Y[:, :19]), ValueError, "does not broadcast to x's shape"),
        (lambda: cussim.ssim(X.astype(np.int32), Y.astype(np.int32)), TypeError, "x has dtype int32"),
        (lambda: cussim.ssim(X, Y.astype(np.float64)), TypeError, "y has dtype float64 but x has float32"),
        (lambda: cussim.ssim(X, Y, win_size=8), ValueError, "win_size must be odd"),
        (lambda: cussim.ssim(X, Y, win_size=1), ValueError, "win_size must be from 3 to 15, got 1; use 3$"),
        (lambda: cussim.ssim(X, Y, win_size=0), ValueError, "win_size must be odd, got 0; use 3$"),
        (lambda: cussim.ssim(X, Y, win_size=2), ValueError, "win_size must be odd, got 2; use 3$"),
        (lambda: cussim.ssim(X, Y, win_size=-4), ValueError, "win_size must be odd, got -4; use 3$"),
        (lambda: cussim.ssim(X, Y, win_size=16), ValueError, "win_size must be odd, got 16; use 15$"),
        (lambda: cussim.ssim(X, Y, win_size=6), ValueError, "win_size must be odd, got 6; use 5 or 7$"),
        (lambda: cussim.ssim(X, Y, win_size=17), ValueError, "win_size must be from 3 to 15"),
        (lambda: cussim.ssim(X, Y, win_size=7.0), TypeError, "win_size must be an odd int"),
        (lambda: cussim.ssim(X[:, :9, :9], Y[:, :9, :9]), ValueError, "9x9, smaller than the 11x11 window"),
        (lambda: cussim.ssim(X, Y, K1=-0.1), ValueError, "K1 must be a finite number >= 0"),
        (lambda: cussim.ssim(X, Y, K2=-0.1), ValueError, "K2 must be a finite number >= 0"),
        (lambda: cussim.ssim(X, Y, sigma=-1.0), ValueError, "sigma must be a positive finite number"),
        (lambda: cussim.ssim(X, Y, data_range=0), ValueError, "data_range must be a positive finite number"),
        (lambda: cussim.ssim(X, Y, data_range=np.inf), ValueError, "data_range must be a positive finite"),
        (lambda: cussim.ssim(X, Y, padding="zeros"), ValueError, "padding must be one of"),
        (lambda: cussim.ssim(X, Y, window="box"), ValueError, "window must be one of"),
        (lambda: cussim.ssim(X, Y, axis=(0, 1)), ValueError, "must include both spatial axes"),
        (lambda: cussim.ssim(X, Y, axis=3), ValueError, "axis=3 is out of range"),
        (lambda: cussim.ssim(X, Y, axis=(1, 1, 2)), ValueError, "repeats an axis"),
        (lambda: cussim.ssim(X, Y, K1=1e200), ValueError, r"K1=1e\+200, K2=0.03: .* overflow float32 arithmetic"),
        (lambda: cussim.ssim(X, Y, K1=1e20), ValueError, "overflow float32 arithmetic"),
        (lambda: cussim.ms_ssim(X, Y, K2=1e20), ValueError, "overflow float32 arithmetic"),
        (lambda: cussim.ssim(X.astype(np.float64), Y.astype(np.float64), K1=1e200), ValueError,
         "overflow float64 arithmetic"),
        (lambda: cussim.ssim(X, Y, data_range=1e-39), ValueError, "data_range=1e-39 is too small for float32"),
        (lambda: cussim.ssim(X, Y, axis=2.0), TypeError, "axis must be an int or a tuple of ints, got 2.0"),
        (lambda: cussim.ssim(X, Y, axis=(1.0, 2)), TypeError, r"axis must be an int, got 1.0"),
        (lambda: cussim.ssim(X, Y, mask=np.ma.masked_less(Y, 0.5)), TypeError, r"mask is a masked array"),
        (lambda: cussim.ssim(X, Y, channel_axis=5), ValueError, "channel_axis=5 is out of range"),
        (lambda: cussim.ssim(X[0, 0], Y[0, 0]), ValueError, "two spatial axes"),
        (lambda: cussim.ssim([[1.0]], Y), TypeError, "x must be a CuPy or NumPy array"),
        (lambda: cussim.ssim(X, Y, out=np.zeros(2, np.float32)), ValueError, r"out has shape \(2,\); it must be \(\)"),
        (lambda: cussim.ssim(X, Y, out=np.zeros((), np.float64)), TypeError, "out has dtype float64; it must be"),
        (lambda: cussim.ssim_map(X, Y, out=X), ValueError, "out overlaps x"),
        (lambda: cussim.ssim_with_gradient(X, Y, grad=np.zeros((2, 20, 21), np.float32)), ValueError,
         "grad has shape"),
        (lambda: cussim.ssim_with_gradient(X, Y, grad=np.zeros(X.shape, np.float64)), TypeError,
         "grad has dtype float64; it must be float32"),
        (lambda: cussim.ssim_with_gradient(X, Y, grad=Y), ValueError, "grad overlaps y"),
        (lambda: cussim.ssim_with_gradient(X, Y, accumulate=True), ValueError, "pass the grad array"),
        (lambda: cussim.ssim_with_gradient(X, Y, workspace=np.zeros(4)), TypeError,
         "workspace must come from cussim.make_workspace"),
        (lambda: cussim.ssim_with_gradient(X, Y, workspace=cussim.make_workspace(X[:1])), ValueError,
         "workspace does not fit these images"),
    ],
)
def test_errors(backend, call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_large_constants_within_range_agree_on_every_path(backend):
    """K1 = 1e15 fits float32 arithmetic: a number, the same on every path (no NaN, no OverflowError)."""
    x, y = _images((2, 20, 20))
    value = backend.asnumpy(cussim.ssim(backend.asarray(x), backend.asarray(y), K1=1e15))
    expected, _ = _expected(x, y, K1=1e15)
    _close(value, expected, np.float32)


OVERFLOWING = pytest.mark.parametrize("scale, data_range", [(3e19, 1.0), (1.0, 1e-30), (1e10, 1.0)],
                                      ids=["values-3e19", "data_range-1e-30", "values-1e10"])


@OVERFLOWING
def test_statistics_beyond_float32_are_nan_on_every_path(backend, scale, data_range):
    """float32 images whose scaled statistics overflow float32: NaN on every path (the float64 reference
    included), where the kernels' arithmetic overflows; a number on none."""
    x, y = (backend.asarray(a * np.float32(scale)) for a in _images((2, 40, 40)))
    assert np.isnan(float(cussim.ssim(x, y, data_range=data_range)))
    assert np.isnan(backend.asnumpy(cussim.ssim_map(x, y, data_range=data_range))).mean() > 0.9


@OVERFLOWING
def test_statistics_beyond_float32_never_give_a_zero_gradient(backend, scale, data_range):
    """Nor a silently zero gradient, nor an MS-SSIM whose relu turned the NaN means into 0."""
    x, y = (backend.asarray(a * np.float32(scale)) for a in _images((2, 40, 40)))
    value, grad = cussim.ssim_with_gradient(x, y, data_range=data_range)
    assert np.isnan(float(value)) and np.isnan(backend.asnumpy(grad)).mean() > 0.9
    values, grad = cussim.ms_ssim_with_gradient(x, y, data_range=data_range, weights=(0.5, 0.5), win_size=5,
                                                axis=(1, 2))
    values, grad = backend.asnumpy(values), backend.asnumpy(grad)
    assert np.isnan(values).any() and np.isnan(grad[np.isnan(values)]).all()


def test_read_only_output_is_refused():
    out = np.zeros((), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        cussim.ssim(X, Y, out=out)


@pytest.mark.parametrize("function", [cussim.ssim, cussim.ssim_with_gradient, cussim.ms_ssim])
def test_a_strided_value_out_works(backend, function):
    """A transposed or sliced 2-D ``out`` (no 1-D view of one stride) is written through a C-order buffer."""
    x, y = _images((3, 2, 24, 24))
    kwargs = dict(axis=(2, 3), win_size=3, **({"weights": (0.5, 0.5)} if function is cussim.ms_ssim else {}))
    value = lambda result: result[0] if isinstance(result, tuple) else result  # noqa: E731
    expected = backend.asnumpy(value(function(backend.asarray(x), backend.asarray(y), **kwargs)))
    for out in (backend.asarray(np.zeros((2, 3), np.float32)).T,
                backend.asarray(np.zeros((6, 4), np.float32))[::2, ::2]):
        assert value(function(backend.asarray(x), backend.asarray(y), out=out, **kwargs)) is out
        np.testing.assert_array_equal(backend.asnumpy(out), expected)


@pytest.mark.gpu
def test_numpy_mixed_with_cupy_and_devices():
    import cupy

    with pytest.raises(TypeError, match="y is in host memory"):
        cussim.ssim(cupy.asarray(X), Y)
    if cupy.cuda.runtime.getDeviceCount() > 1:
        with cupy.cuda.Device(1):
            y1 = cupy.asarray(Y)
        with pytest.raises(ValueError, match="move them to one device"):
            cussim.ssim(cupy.asarray(X), y1)


def test_numpy_backend_setting(monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "gpu")
    with pytest.raises(ValueError, match="CUSSIM_NUMPY_BACKEND='gpu'"):
        cussim.ssim(X, Y)


def test_more_planes_than_a_grid_dimension_holds(monkeypatch):
    """Past CUDA's 65535 limit of grid.y and grid.z: the launches for 70000 planes stay inside the grid limits
    (checked as the emulator checks them, without running 70000 blocks), and the kernels loop over the planes
    past their grid (end to end on the emulator with the limit lowered to 4: value and gradient)."""
    from cussim import _kernels, _launch
    from cussim._emulator import _module

    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    x, y = _images((11, 9, 9))
    with monkeypatch.context() as lowered:
        lowered.setattr(_launch, "MAX_GRID_Y", 4)
        value, grad = cussim.ssim_with_gradient(x, y, win_size=3)
    expected_value, expected_grad = _expected(x, y, win_size=3)
    _close(value, expected_value, np.float32)
    _close_gradient(grad, expected_grad, np.float32)

    grids = []
    monkeypatch.setattr(_kernels, "get_kernel", lambda family, name, like: lambda grid, *_, **__: grids.append(grid))
    planes = np.zeros((70000, 3, 3), np.float32)
    cussim.ssim_with_gradient(planes, planes, win_size=3)
    assert len(grids) >= 2
    for grid in grids:
        _module._dims("grid", grid, _module.MAX_GRID)  # raises LaunchConfigError past a limit
    # 70000 one-tile planes: 1024 blocks (_launch.MIN_BLOCKS), each looping over 68 or 69 planes
    assert max(grid[1] for grid in grids if len(grid) > 1) == _launch.plane_rows(1, 70000) == 1024
    grids.clear()
    monkeypatch.setattr(_launch, "MIN_BLOCKS", 10**6)  # a block per plane, as far as the grid holds
    cussim.ssim_with_gradient(planes, planes, win_size=3)
    for grid in grids:
        _module._dims("grid", grid, _module.MAX_GRID)
    assert max(grid[1] for grid in grids if len(grid) > 1) == _module.MAX_GRID[1]


def _module(backend):
    if backend.name != "cupy":
        return np
    import cupy

    return cupy


@pytest.mark.parametrize("accumulate", [False, True])
def test_any_layout_works_on_every_path(backend, accumulate):
    """Inputs and outputs whose batch axes need three stride levels: the kernels get C-order buffers in their
    place (copied back for outputs), so every path gives the contiguous arrays' results."""
    xp = _module(backend)
    x, y = (backend.asarray(a) for a in _images((4, 3, 2, 12, 12), np.float64))
    x, y = x.transpose(2, 1, 0, 3, 4), y.transpose(2, 1, 0, 3, 4)[:, ::-1]
    grad, ssim_map = (xp.ones((4, 3, 2, 12, 12)).transpose(2, 1, 0, 3, 4)[:, ::-1] for _ in range(2))
    value, grad = cussim.ssim_with_gradient(x, y, grad=grad, accumulate=accumulate)
    cussim.ssim_map(x, y, out=ssim_map)
    x, y = (np.ascontiguousarray(backend.asnumpy(a)) for a in (x, y))
    expected_value, expected_grad = _expected(x, y)
    _close(backend.asnumpy(value), expected_value, np.float64)
    _close_gradient(backend.asnumpy(grad) - accumulate, expected_grad, np.float64)
    np.testing.assert_allclose(backend.asnumpy(ssim_map), cussim.ssim_map(x, y), rtol=0, atol=1e-12)


def test_strides_that_are_not_whole_elements(backend):
    """NumPy allows byte strides that split elements: inputs are copied for the kernels, outputs computed
    into a C-order buffer, so every path gives the contiguous arrays' results."""
    if backend.name == "cupy":
        pytest.skip("CuPy arrays have whole-element strides")
    x, y = _images((20, 20))

    def unaligned(values):
        array = np.ndarray(values.shape, values.dtype, np.zeros(values.size * 6 + 8, np.uint8), 0, (120, 6))
        array[...] = values
        return array

    value, grad = cussim.ssim_with_gradient(unaligned(x), unaligned(y), grad=unaligned(np.zeros_like(x)))
    expected_value, expected_grad = _expected(x, y)
    _close(value, expected_value, np.float32)
    _close_gradient(grad, expected_grad, np.float32)


@pytest.mark.parametrize("name", ["ssim", "ms_ssim"])
def test_outputs_sharing_memory_are_refused(backend, name):
    """out inside grad, a workspace overlapping grad or x, an output that overlaps itself: clear errors on
    every path."""
    xp = _module(backend)
    shape = (2, 1, 48, 48) if name == "ms_ssim" else (2, 3, 20, 20)
    options = dict(weights=(0.5, 0.5), win_size=5) if name == "ms_ssim" else {}
    x, y = (backend.asarray(a) for a in _images(shape, np.float64))
    function = getattr(cussim, f"{name}_with_gradient")
    grad = xp.empty(shape)
    with pytest.raises(ValueError, match="out overlaps grad; outputs must not share memory with each other"):
        function(x, y, out=grad.reshape(-1)[:1].reshape(()), grad=grad, **options)
    overlapping = xp.lib.stride_tricks.as_strided(xp.zeros(shape[-1] * shape[-2]), shape, (0, 0, 8 * shape[-1], 8))
    with pytest.raises(ValueError, match=r"grad has elements that share memory \(strides \(0, 0,"):
        function(x, y, grad=overlapping, **options)
    make = cussim.make_ms_ssim_workspace if name == "ms_ssim" else cussim.make_workspace
    made = make(x, **options)
    memory = xp.empty(made.grad_maps.size + x.size)
    workspace = cussim.Workspace(made.block_sums, memory[: made.grad_maps.size])
    with pytest.raises(ValueError, match="grad overlaps workspace.grad_maps"):
        function(x, y, grad=memory[made.grad_maps.size - 1 : -1].reshape(shape), workspace=workspace, **options)
    with pytest.raises(ValueError, match="workspace.block_sums overlaps x"):
        function(x, y, workspace=cussim.Workspace(x.reshape(-1)[: made.block_sums.size], made.grad_maps), **options)
    with pytest.raises(ValueError, match="out has elements that share memory"):
        cussim.ssim_map(x, y, out=overlapping)


def test_overlaps_follow_the_bytes(backend):
    """A reversed view overlaps what it views; neighbouring slices of one buffer do not (the host's bounds test)."""
    xp = _module(backend)
    x, y = (backend.asarray(a) for a in _images((2, 3, 20, 20), np.float64))
    with pytest.raises(ValueError, match="grad overlaps x; outputs must not share memory with the inputs"):
        cussim.ssim_with_gradient(x, y, grad=x[..., ::-1])
    memory = xp.empty(x.size + 1)
    value, grad = cussim.ssim_with_gradient(x, y, out=memory[:1].reshape(()), grad=memory[1:].reshape(x.shape))
    assert float(value) == float(memory[0]) and float(value) < 1


def test_metric_arguments_are_checked_on_every_call():
    """Checked parameters come from a cache, a bad value raises each time, an unhashable one is checked too."""
    from cussim._params import ssim_params

    assert ssim_params(win_size=7, window="uniform") is ssim_params(win_size=7, window="uniform")
    assert ssim_params(data_range=255).data_range == ssim_params(data_range=255.0).data_range == 255.0
    x = np.zeros((16, 16), np.float32)
    for _ in range(2):
        with pytest.raises(ValueError, match="win_size must be odd, got 8; use 7 or 9"):
            cussim.ssim(x, x, win_size=8)
    with pytest.raises(ValueError, match=r"win_size=\[7\] has 1 value, but the images have 2 spatial axes"):
        cussim.ssim(x, x, win_size=[7])
    assert cussim.ssim(x, x, win_size=[7, 5]) == 1.0  # a list: one size per axis, checked without the cache
    with pytest.raises(ValueError, match="data_range must be a positive finite number"):
        cussim.ssim(x, x, data_range=np.array([2.0]))


def test_parameters_hash_once_and_travel_without_their_hash():
    """A launch plan's key hashes the parameters on every call: the hash is worked out once, equal to a
    fresh object's, and a pickled copy (to another process, where strings hash otherwise) computes its own."""
    import os
    import pickle
    import subprocess
    import sys

    from cussim._params import _checked_params, ssim_params

    params = ssim_params(win_size=7, padding="valid")
    fresh = _checked_params(7, 1.5, "gaussian", 0.01, 0.03, "valid", False, 1.0, 2)
    assert params is not fresh and params == fresh and hash(params) == hash(fresh)
    assert "_hash" in vars(params) and "_hash" not in vars(pickle.loads(pickle.dumps(params)))
    script = ("import pickle, sys; p = pickle.loads(sys.stdin.buffer.read()); "
              "from cussim._params import ssim_params; q = ssim_params(win_size=7, padding='valid'); "
              "print(p == q and hash(p) == hash(q) and len({p: 0, q: 1}) == 1)")
    run = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(params), capture_output=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}, check=True)
    assert run.stdout.strip() == b"True"


def test_repeated_calls_reuse_a_layout_only_where_it_fits(backend):
    """A call's checks and layout come from a cache keyed by shapes, dtypes and options: new arrays of one
    layout get their own results, and a changed layout or option never gets a stale one."""
    from cussim import _ssim

    calls = [  # (x, y, keywords), each call's images new
        (*_images((2, 3, 20, 24), seed=1), {}),
        (*_images((2, 3, 20, 24), seed=2), {}),  # same layout, other arrays
        (*_images((2, 3, 24, 20), seed=3), {}),  # other shape
        (*_images((2, 3, 20, 24), np.float64, seed=4), {}),  # other dtype
        (*_images((2, 3, 20, 24), seed=5), {"axis": (1, 2, 3)}),
        (*_images((2, 20, 24, 3), seed=6), {"channel_axis": -1, "axis": (1, 2, 3)}),
        (*_images((2, 3, 20, 24), seed=7), {"win_size": 7, "padding": "valid", "data_range": 2.0}),
    ]
    x, y, _ = calls[0]
    calls.append((np.moveaxis(_images((3, 20, 2, 24), seed=8)[0], 2, 0), y, {}))  # other strides: the same shape
    for x, y, keywords in calls:
        keywords = {"win_size": 5, **keywords}
        value, grad = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), **keywords)
        _ssim._cached_layout.cache_clear()
        fresh_value, fresh_grad = cussim.ssim_with_gradient(backend.asarray(x), backend.asarray(y), **keywords)
        np.testing.assert_array_equal(backend.asnumpy(value), backend.asnumpy(fresh_value))
        np.testing.assert_array_equal(backend.asnumpy(grad), backend.asnumpy(fresh_grad))
        assert grad.shape == x.shape
    expected, _ = _expected(x, y, win_size=5)
    _close(backend.asnumpy(value), expected, np.float32)


def test_checks_of_a_cached_layout_run_on_every_call(backend):
    """Every check still raises on a repeated call: arguments, outputs and overlaps alike. (1, 2) and
    (True, 2) are equal keys, so a bad axis must not find the plan of a good one."""
    x, y = (backend.asarray(a) for a in _images((4, 16, 16)))
    grad = backend.asarray(np.empty((4, 16, 16), np.float32))
    read_only = np.empty((), np.float32)
    read_only.flags.writeable = False
    cussim.ssim(x, y, axis=(0, 1, 2))
    cussim.ssim_with_gradient(x, y, grad=grad)
    for _ in range(2):
        for axis, error in [((False, 1, 2), "axis must be an int"), ((0.0, 1, 2), "axis must be an int")]:
            with pytest.raises(TypeError, match=error):
                cussim.ssim(x, y, axis=axis)
        with pytest.raises(TypeError, match="y has dtype float64 but x has float32"):
            cussim.ssim(x, backend.asarray(_images((4, 16, 16), np.float64)[1]))
        with pytest.raises(ValueError, match="data_range must be a positive finite number"):
            cussim.ssim(x, y, data_range=float("nan"))
        with pytest.raises(ValueError, match="does not broadcast to x's shape"):
            cussim.ssim(x, y[..., :-1])
        with pytest.raises(ValueError, match="grad overlaps x"):
            cussim.ssim_with_gradient(x, y, grad=x)
        with pytest.raises(ValueError, match="grad has shape"):
            cussim.ssim_with_gradient(x, y, grad=grad[1:])
        if backend.name != "cupy":
            with pytest.raises(ValueError, match="out is read-only"):
                cussim.ssim(x, y, out=read_only)


def test_empty_batches(backend):
    x = backend.asarray(np.zeros((0, 3, 16, 16), np.float32))
    assert np.isnan(float(cussim.ssim(x, x)))
    assert cussim.ssim(x, x, axis=(1, 2, 3)).shape == (0,)
    assert cussim.ssim_map(x, x).shape == (0, 3, 16, 16)
    value, grad = cussim.dssim_with_gradient(x, x)
    assert np.isnan(float(value)) and grad.shape == x.shape


def test_ssim_map_gradient_checks_the_weights_shape_and_takes_an_empty_batch():
    x = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match=r"map_weights has shape \(15, 16\); it must have the map's, \(16, 16\)"):
        _ssim._ssim_map_gradient(x, x, np.zeros((15, 16), np.float32), data_range=1.0)
    empty = np.zeros((0, 16, 16), np.float32)
    grad = _ssim._ssim_map_gradient(empty, empty, empty, data_range=1.0)
    assert (grad.shape, grad.dtype) == ((0, 16, 16), np.float32)
