"""MS-SSIM: the kernels (emulator, GPU) against the float64 reference, the reference against
pytorch-msssim, torchmetrics and TensorFlow, exact gradients, finiteness, and every bad argument."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage import data

import cussim
from cussim import _arrays, _launch
from cussim import _reference as ref
from executors import Executor, device_allocations_refused

GOLDEN = Path(__file__).resolve().parent / "golden"
sys.path.insert(0, str(GOLDEN))
import msssim_inputs  # noqa: E402


@pytest.fixture(params=["reference", "emulator", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request, monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator" if request.param == "emulator" else "reference")
    return Executor(request.param)


@pytest.fixture
def kernels(monkeypatch):
    """The kernels on the CPU emulator, for NumPy arrays."""
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    return Executor("emulator")


KERNEL_VARIANTS = tuple(_launch.MS_SSIM_VARIANT_CODES)  # "piq" is the reference's alone


def _variants(backend):
    """The variants that ``backend`` computes."""
    return ref.MS_SSIM_VARIANTS if backend.name == "reference" else KERNEL_VARIANTS


def _pair(shape, dtype=np.float32, seed=0, noise=0.2):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    y = np.clip(x + noise * rng.standard_normal(shape), 0, 1)
    if np.dtype(dtype).kind == "u":
        top = np.iinfo(dtype).max
        return (x * top).round().astype(dtype), (y * top).round().astype(dtype)
    return x.astype(dtype), y.astype(dtype)


def _expected(x, y, *, variant="pytorch_msssim", weights=ref.MS_SSIM_WEIGHTS, win_size=11, sigma=1.5, axis=None,
              pool_axes=(), data_range=1.0):
    """The reference on images whose plane is the last two axes (float64 of the given values)."""
    return ref.ms_ssim_with_gradient(np.asarray(x, np.float64), np.asarray(y, np.float64),
                                     ref.window_taps("gaussian", win_size, sigma), weights=weights, variant=variant,
                                     data_range=data_range, axis=axis, pool_axes=pool_axes)


def _check(value, grad, expected_value, expected_grad, dtype):
    """docs/spec.rst section 7: float64 to rounding, float32 to abs 1e-5 (value) and relative L2 1e-4 (gradient)."""
    value, grad = np.asarray(value, np.float64), np.asarray(grad, np.float64)
    assert np.isfinite(value).all() and np.isfinite(grad).all()
    value_tol, grad_tol = (1e-12, 1e-10) if np.dtype(dtype) == np.float64 else (1e-5, 1e-4)
    np.testing.assert_allclose(value, expected_value, rtol=0, atol=value_tol)
    assert np.linalg.norm(grad - expected_grad) <= grad_tol * np.linalg.norm(expected_grad)


# ---- the kernels against the reference ----------------------------------------------------------

SCALES = dict(weights=(0.3, 0.3, 0.4), win_size=5)  # 3 scales: sides from 17 (20 for torchmetrics)
SMALL = dict(SCALES, sigma=1.0)


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
def test_planned_launches_take_each_calls_images(kernels, variant):
    """A second call with other images of the same layout reuses every launch plan (pyramid, fold,
    forward, the last forward with the combine and its finish, backward) and still computes on its own images
    and buffers."""
    pooled = variant == "torchmetrics"
    options = dict(variant=variant, channel_axis=1, axis=(1, 2, 3), **SMALL)
    expected_options = dict(variant=variant, axis=(1, 2, 3), pool_axes=(1,) if pooled else (), **SMALL)
    for seed in (1, 2):
        x, y = _pair((2, 3, 37, 42), np.float32, seed=seed)
        value, grad = cussim.ms_ssim_with_gradient(x, y, **options)
        _check(value, grad, *_expected(x, y, **expected_options), np.float32)


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_match_the_reference_for_every_variant(backend, variant, dtype):
    x, y = _pair((2, 3, 37, 42), dtype, seed=1)  # odd and even sides at every scale
    pooled = variant == "torchmetrics"
    value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(y), variant=variant,
                                               channel_axis=1, axis=(1, 2, 3), **SMALL)
    expected = _expected(x, y, variant=variant, axis=(1, 2, 3), pool_axes=(1,) if pooled else (), **SMALL)
    _check(backend.asnumpy(value), backend.asnumpy(grad), *expected, dtype)
    assert backend.asnumpy(value).shape == (2,) and backend.asnumpy(grad).dtype == dtype


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
def test_default_weights_and_window_at_the_minimum_size(backend, variant):
    side = ref.ms_ssim_min_size(11, 5, variant)
    x, y = _pair((side, side + 9), np.float32, seed=2)
    value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(y), variant=variant)
    _check(backend.asnumpy(value), backend.asnumpy(grad), *_expected(x, y, variant=variant), np.float32)


def test_channels_last_strided_views_and_a_broadcast_reference(backend):
    x, y = _pair((2, 40, 44, 3), np.float64, seed=3)
    x_view = x[:, ::-1, 1:, :]  # negative and offset strides
    y_one = y[:1, ::-1, 1:, :]  # one reference for the batch
    value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x_view), backend.asarray(y_one),
                                               variant="torchmetrics", channel_axis=-1, axis=(1, 2, 3), **SMALL)
    move = lambda a: np.moveaxis(a, -1, 1)  # noqa: E731
    expected_value, expected_grad = _expected(move(x_view), move(np.broadcast_to(y_one, x_view.shape)),
                                              variant="torchmetrics", axis=(1, 2, 3), pool_axes=(1,), **SMALL)
    _check(backend.asnumpy(value), backend.asnumpy(grad), expected_value, np.moveaxis(expected_grad, 1, -1),
           np.float64)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_images_use_their_range(backend, dtype):
    x, y = _pair((2, 30, 33), dtype, seed=4)
    value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(y), variant="tensorflow",
                                               **SMALL)
    expected = _expected(x, y, variant="tensorflow", data_range=float(np.iinfo(dtype).max), **SMALL)
    assert backend.asnumpy(grad).dtype == np.float32
    _check(backend.asnumpy(value), backend.asnumpy(grad), *expected, np.float32)


def test_float16_matches_float32_of_the_rounded_inputs(kernels):
    x, y = _pair((2, 33, 30), np.float16, seed=5)
    v16, g16 = cussim.ms_ssim_with_gradient(x, y, **SMALL)
    v32, g32 = cussim.ms_ssim_with_gradient(x.astype(np.float32), y.astype(np.float32), **SMALL)
    assert g16.dtype == np.float16 and v16.dtype == np.float32
    assert abs(float(v16) - float(v32)) <= 1e-5
    assert np.linalg.norm(g16.astype(np.float32) - g32) <= 2e-3 * np.linalg.norm(g32)  # half's own rounding


def test_an_image_against_its_negative_is_finite(backend):
    x, _ = _pair((2, 40, 41), np.float32, seed=6)
    for variant in _variants(backend):
        value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(1 - x), variant=variant,
                                                   axis=(1, 2), **SMALL)
        value, grad = backend.asnumpy(value), backend.asnumpy(grad)
        assert np.isfinite(value).all() and np.isfinite(grad).all() and (value >= 0).all()


def test_identical_images_give_exactly_one(backend):
    x, _ = _pair((3, 36, 36), np.float32, seed=7)
    for variant in _variants(backend):
        value = backend.asnumpy(cussim.ms_ssim(backend.asarray(x), backend.asarray(x), variant=variant, **SMALL))
        assert float(value) == 1.0


def test_gradient_matches_finite_differences_through_the_api(monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "reference")
    x, y = _pair((2, 24, 21), np.float64, seed=8)
    kwargs = dict(variant="torchmetrics", weights=(0.6, 0.4), win_size=3, channel_axis=0)
    _, grad = cussim.ms_ssim_with_gradient(x, y, **kwargs)
    rng = np.random.default_rng(0)
    for _ in range(6):
        index = tuple(rng.integers(0, n) for n in x.shape)
        e = np.zeros_like(x)
        e[index] = 1e-6
        numeric = (cussim.ms_ssim(x + e, y, **kwargs) - cussim.ms_ssim(x - e, y, **kwargs)) / 2e-6
        assert abs(numeric - grad[index]) <= 1e-6 * np.abs(grad).max()


def test_accumulate_out_and_workspace_are_used_in_place(backend):
    x, y = _pair((2, 3, 36, 40), np.float32, seed=9)
    xd, yd = backend.asarray(x), backend.asarray(y)
    out = backend.asarray(np.zeros(2, np.float32))
    grad = backend.asarray(np.ones(x.shape, np.float32))
    ws = cussim.make_ms_ssim_workspace(xd, variant="tensorflow", channel_axis=1, **SCALES)
    value, g = cussim.ms_ssim_with_gradient(xd, yd, variant="tensorflow", channel_axis=1, axis=(1, 2, 3), out=out,
                                            grad=grad, workspace=ws, accumulate=True, **SMALL)
    assert value is out and g is grad
    expected_value, expected_grad = _expected(x, y, variant="tensorflow", axis=(1, 2, 3), **SMALL)
    _check(backend.asnumpy(out), backend.asnumpy(grad) - 1, expected_value, expected_grad, np.float32)


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
@pytest.mark.parametrize("image", ["x", "y"])
def test_a_nan_pixel_gives_nan_value_and_gradient(backend, variant, image):
    """Every scale holds the NaN, so the value and every pixel's gradient are NaN (no relu, guard or clamp
    turns it into a number)."""
    x, y = _pair((45, 47))
    (x if image == "x" else y)[11, 13] = np.nan
    with np.errstate(invalid="ignore"):
        value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(y), win_size=5,
                                                   weights=(0.3, 0.3, 0.4), variant=variant)
    assert np.isnan(backend.asnumpy(value)) and np.isnan(backend.asnumpy(grad)).all()


def test_a_nan_that_one_scale_drops_keeps_the_value_nan(backend):
    """torchmetrics drops an odd last row: its NaN reaches scale 0 alone, whose mean is NaN, while the
    finer-grained scales' relu'd means are 0 (an image against its negative). The product is NaN, never 0 (the
    kernels' combine returned 0 for a zero mean whatever the others)."""
    x, _ = _pair((41, 40))
    y = 1 - x
    x[40, 7] = np.nan
    with np.errstate(invalid="ignore"):
        value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(y), variant="torchmetrics",
                                                   weights=(0.5, 0.5), win_size=5)
    assert cussim.ms_ssim(x[:40], y[:40], variant="torchmetrics", weights=(0.5, 0.5), win_size=5) == 0.0
    assert np.isnan(backend.asnumpy(value)) and np.isnan(backend.asnumpy(grad)).all()


def test_the_same_call_twice_is_bitwise_equal(kernels):
    x, y = _pair((2, 40, 37), np.float32, seed=10)
    first = cussim.ms_ssim_with_gradient(x, y, variant="torchmetrics", **SMALL)
    second = cussim.ms_ssim_with_gradient(x, y, variant="torchmetrics", **SMALL)
    assert first[0].tobytes() == second[0].tobytes() and first[1].tobytes() == second[1].tobytes()


def _pyramid_levels(executor, x, y, variant, levels, margin, launch_levels):
    """Scales 1..levels of x and y (planes, h, w) by msssim_pyramid launches of ``launch_levels`` levels each."""
    from cussim import _launch

    sides, sizes = [x.shape[1:]], []
    for j in range(levels):
        sides.append(ref.downsampled_shape(sides[-1], variant))
        extension = 2 * margin if j == levels - 1 else 0
        sizes.append((x.shape[0], sides[-1][0] + extension, sides[-1][1] + extension))
    flat_x, flat_y = (executor.asarray(np.full(sum(map(np.prod, sizes)), np.nan, np.float32)) for _ in range(2))
    starts = np.cumsum([0] + [np.prod(s) for s in sizes])
    xs, ys = [executor.asarray(x)], [executor.asarray(y)]
    for j in range(levels):
        xs.append(flat_x[starts[j] : starts[j + 1]].reshape(sizes[j]))
        ys.append(flat_y[starts[j] : starts[j + 1]].reshape(sizes[j]))
    for first in range(0, levels, launch_levels):
        last = min(first + launch_levels, levels)
        _launch.pyramid(xs[first], ys[first], flat_x[starts[first] : starts[last]],
                        flat_y[starts[first] : starts[last]], variant, last - first,
                        margin=margin if last == levels else 0)
    return [executor.asnumpy(a) for a in xs[1:]], [executor.asnumpy(a) for a in ys[1:]]


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_pyramid_in_one_launch_is_bitwise_its_levels_one_at_a_time(executor, variant, dtype):
    """msssim_pyramid's levels (odd sides at every level, a strided view, torchmetrics' extended last level)
    from one launch are bitwise those of one 2x2 mean per launch, and those match the float64 means."""
    x, y = _pair((2, 78, 71, 3), dtype, seed=3)
    x, y = x[..., 1].transpose(0, 2, 1)[:, :, :77], y[..., 1].transpose(0, 2, 1)[:, :, :77]  # 2 x 71 x 77, strided
    margin = 2 if variant == "torchmetrics" else 0
    together = _pyramid_levels(executor, x, y, variant, 4, margin, launch_levels=4)
    apart = _pyramid_levels(executor, x, y, variant, 4, margin, launch_levels=1)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(together[0] + together[1], apart[0] + apart[1]))
    for source, levels in ((x, together[0]), (y, together[1])):
        expected = np.asarray(source, np.float64)
        for level in levels:
            expected = ref.downsample(expected, variant)
            shown = np.pad(expected, [(0, 0)] + [(margin, margin)] * 2, mode="reflect") if level is levels[-1] \
                else expected
            np.testing.assert_allclose(level, shown, rtol=1e-6, atol=1e-6 * (255 if dtype == np.uint8 else 1))


def test_combine_finishes_bitwise_as_the_separate_finish_and_zeroes_its_counters(executor, monkeypatch):
    """The combine's last image writes each value as ssim_finish does from the images' values (2 values of
    3 images each), in a workspace made from the caller's NaN-filled memory, and leaves its counters (1 + 6,
    the workspace sums' last elements) at 0."""
    from cussim import _launch

    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    x, y = (executor.asarray(a) for a in _pair((2, 3, 37, 40), np.float32, seed=4))
    options = dict(channel_axis=1, axis=(1, 2, 3), **SMALL)
    made = cussim.make_ms_ssim_workspace(x, channel_axis=1, **SCALES)
    ws = cussim.Workspace(made.block_sums.copy(), made.grad_maps.copy())
    ws.block_sums.fill(np.nan)
    ws.grad_maps.fill(np.nan)
    for _ in range(2):  # the second call finds the counters the first left
        value, grad = cussim.ms_ssim_with_gradient(x, y, workspace=ws, **options)
        assert not executor.asnumpy(ws.block_sums[-7:]).any()
        separate = executor.asarray(np.empty(2, np.float32))
        _launch.finish(ws.block_sums[-13:-7], separate, per_output=3, count=3)
        assert executor.asnumpy(value).tobytes() == executor.asnumpy(separate).tobytes()
    fresh = cussim.ms_ssim_with_gradient(x, y, **options)
    assert executor.asnumpy(value).tobytes() == executor.asnumpy(fresh[0]).tobytes()
    assert executor.asnumpy(grad).tobytes() == executor.asnumpy(fresh[1]).tobytes()


def _combine_apart(monkeypatch):
    """MS-SSIM's combine as a launch of its own after the last scale's forward (msssim_combine, as volumes
    take it), instead of folded into that forward."""
    from cussim import _launch

    forward = _launch.forward

    def forward_then_combine(*args, combine=None, **kwargs):
        forward(*args, **kwargs)
        if combine is not None:
            _launch.combine(combine)

    monkeypatch.setattr(_launch, "forward", forward_then_combine)


def _combined(executor, x, y, options, workspace_options):
    """ms_ssim, then ms_ssim_with_gradient twice in a caller workspace made from NaN-filled memory (the second
    finds the counters the first left): the values, the gradients and the workspace's float64 part."""
    made = cussim.make_ms_ssim_workspace(x, **workspace_options)
    ws = cussim.Workspace(executor.asarray(np.full(made.block_sums.shape, np.nan)),
                          executor.asarray(np.full(made.grad_maps.shape, np.nan, made.grad_maps.dtype)))
    results = [cussim.ms_ssim(x, y, **options)]
    for _ in range(2):
        results += cussim.ms_ssim_with_gradient(x, y, workspace=ws, **options)
    return [executor.asnumpy(a) for a in results] + [executor.asnumpy(ws.block_sums)]


@pytest.mark.parametrize("variant", KERNEL_VARIANTS)
def test_combine_folded_into_the_last_forward_is_bitwise_its_own_launch(executor, monkeypatch, variant):
    """The last scale's forward combining the scales (its last block of each image, then the last image's
    finish) gives the values, gradients, per-image values and plane weights of forwards plus msssim_combine,
    bit for bit: float32, uint8 and float64 images with odd sides, channels (pooled by torchmetrics: 3 planes
    per image), blocks that loop over planes (2 grid rows); every counter is 0 after each call. (CI reruns
    it in reverse and shuffled thread orders.)"""
    from cussim import _launch

    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    for dtype, shape, grid_rows in ((np.float32, (2, 3, 41, 37), _launch.MAX_GRID_Y), (np.uint8, (3, 2, 39, 43), 2),
                                    (np.float64, (1, 3, 37, 45), 2)):
        x, y = (executor.asarray(a) for a in _pair(shape, dtype, seed=5))
        options = dict(variant=variant, channel_axis=1, axis=(1, 2, 3), **SMALL)
        workspace_options = dict(variant=variant, channel_axis=1, **SCALES)
        counters = 1 + (shape[0] if variant == "torchmetrics" else shape[0] * shape[1])
        with monkeypatch.context() as patch:
            patch.setattr(_launch, "MAX_GRID_Y", grid_rows)
            folded = _combined(executor, x, y, options, workspace_options)
            _combine_apart(patch)
            apart = _combined(executor, x, y, options, workspace_options)
        for a, b in zip(folded, apart):
            assert a.tobytes() == b.tobytes()
        assert not folded[-1][-counters:].any()
        assert folded[0].tobytes() == folded[1].tobytes()  # ms_ssim's value is that of the gradient's call


@pytest.mark.parametrize("name", ["reference", "emulator"])
def test_in_place_path_allocates_nothing(name, monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", name)
    x, y = _pair((2, 36, 36), np.float32)
    out, grad = np.zeros((), np.float32), np.zeros(x.shape, np.float32)
    ws = cussim.make_ms_ssim_workspace(x, **SCALES)
    cussim.ms_ssim_with_gradient(x, y, out=out, grad=grad, workspace=ws, **SMALL)  # warm-up: compiles, caches
    before = _arrays.allocations
    for _ in range(2):
        cussim.ms_ssim_with_gradient(x, y, out=out, grad=grad, workspace=ws, **SMALL)
    assert _arrays.allocations == before


@pytest.mark.gpu
def test_in_place_path_allocates_nothing_on_the_gpu():
    import cupy

    x, y = (cupy.asarray(a) for a in _pair((2, 3, 180, 180)))
    out, grad = cupy.zeros((), cupy.float32), cupy.zeros(x.shape, cupy.float32)
    ws = cussim.make_ms_ssim_workspace(x)
    cussim.ms_ssim_with_gradient(x, y, out=out, grad=grad, workspace=ws)
    with device_allocations_refused():
        cussim.ms_ssim_with_gradient(x, y, out=out, grad=grad, workspace=ws, accumulate=True)


@pytest.mark.parametrize("variant", ["pytorch_msssim", "tensorflow"])
def test_one_scale_is_the_valid_ssim_to_its_power(backend, variant):
    """weights of length 1 (torchmetrics and pytorch-msssim accept them): relu(mean valid SSIM) ** w per image,
    and its gradient (a ValueError before)."""
    x, y = _pair((3, 30, 31), np.float64)
    value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(y), weights=(0.7,), win_size=7,
                                               variant=variant, axis=(1, 2))
    ssim, ssim_grad = cussim.ssim_with_gradient(x, y, win_size=7, padding="valid", axis=(1, 2))
    np.testing.assert_allclose(backend.asnumpy(value), ssim**0.7, rtol=1e-13)
    np.testing.assert_allclose(backend.asnumpy(grad), 0.7 * ssim[:, None, None] ** -0.3 * ssim_grad, rtol=1e-9,
                               atol=1e-15)


def test_one_scale_of_torchmetrics_is_torchmetrics():
    """torchmetrics' betas of length 1: the SSIM of the reflected image, channels pooled, to the power."""
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = _pair((2, 3, 40, 41), np.float64)
    a, b = torch.tensor(x, requires_grad=True), torch.tensor(y)
    theirs = tm.multiscale_structural_similarity_index_measure(a, b, data_range=1.0, betas=(0.7,), normalize="relu",
                                                               reduction="none")
    theirs.sum().backward()
    value, grad = cussim.ms_ssim_with_gradient(x, y, weights=(0.7,), variant="torchmetrics", channel_axis=1,
                                               axis=(1, 2, 3))
    # 2e-9 apart here; 1e-8 as tests/test_torch.py's comparison of five scales with torchmetrics
    np.testing.assert_allclose(value, theirs.detach().numpy(), rtol=0, atol=1e-8)
    assert np.linalg.norm(grad - a.grad.numpy()) < 1e-6 * np.linalg.norm(grad)


def test_one_scale_of_torchmetrics_on_the_kernels_is_refused_with_the_way_round(kernels):
    x, y = _pair((40, 40))
    with pytest.raises(ValueError, match="variant='torchmetrics' with one scale .* is computed for NumPy inputs"):
        cussim.ms_ssim(x, y, weights=(1.0,), variant="torchmetrics")


def test_an_empty_batch_gives_nan(backend):
    x = backend.asarray(np.zeros((0, 40, 40), np.float32))
    assert np.isnan(backend.asnumpy(cussim.ms_ssim(x, x, **SMALL)))


# ---- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(variant="matlab"), ValueError, "variant must be one of 'pytorch_msssim', 'tensorflow', 'torchmetrics'"),
    (dict(weights=()), ValueError, "weights has 0 entries; MS-SSIM takes 1 to 16 scales"),
    (dict(weights=(0.1,) * 17), ValueError, "weights has 17 entries"),
    (dict(weights=(0.5, -0.5)), ValueError, "weights must be finite numbers >= 0"),
    (dict(weights=(0.5, float("nan"))), ValueError, "weights must be finite numbers >= 0"),
    (dict(weights=(0.0, 0.0)), ValueError, "weights are all 0"),
    (dict(weights=0.5), TypeError, "weights must be a sequence of numbers"),
    (dict(win_size=12), ValueError, "win_size must be odd"),
    (dict(sigma=0), ValueError, "sigma must be a positive finite number"),
])
def test_bad_arguments_are_named(kwargs, error, match):
    x = np.zeros((200, 200), np.float32)
    with pytest.raises(error, match=match):
        cussim.ms_ssim(x, x, **kwargs)


@pytest.mark.parametrize("variant, side", [("pytorch_msssim", 161), ("tensorflow", 161), ("torchmetrics", 176)])
def test_too_small_images_name_the_minimum_side(variant, side):
    ok = np.zeros((side, side + 5), np.float32)
    cussim.ms_ssim(ok, ok, variant=variant)
    small = np.zeros((side - 1, 300), np.float32)
    with pytest.raises(ValueError, match=f"x's images are {side - 1}x300; .*needs a smaller side of at least {side}"):
        cussim.ms_ssim(small, small, variant=variant)
    with pytest.raises(ValueError, match="at least 41"):
        cussim.ms_ssim(small[:40, :40], small[:40, :40], weights=(0.3, 0.3, 0.4))


def test_torchmetrics_must_average_the_channels_it_pools():
    x = np.zeros((2, 3, 180, 180), np.float32)
    with pytest.raises(ValueError, match="keeps channel_axis=1.*include the channel axis in axis"):
        cussim.ms_ssim(x, x, variant="torchmetrics", channel_axis=1, axis=(2, 3))
    assert cussim.ms_ssim(x, x, variant="pytorch_msssim", channel_axis=1, axis=(2, 3)).shape == (2, 3)


def test_a_workspace_for_other_images_is_refused():
    x = np.zeros((2, 40, 40), np.float32)
    ws = cussim.make_ms_ssim_workspace(x, **SCALES)
    with pytest.raises(ValueError, match=r"workspace does not fit these images; make one with "
                                         r"cussim.make_ms_ssim_workspace\(x, variant='torchmetrics'"):
        cussim.ms_ssim_with_gradient(x, x, variant="torchmetrics", workspace=ws, **SMALL)
    with pytest.raises(TypeError, match="workspace must come from cussim.make_ms_ssim_workspace"):
        cussim.ms_ssim_with_gradient(x, x, workspace=object(), **SMALL)


# ---- against the originals -------------------------------------------------------------------------


def _peer_cases():
    astronaut = data.astronaut()[60:300, 100:331] / 255.0  # 240 x 231, odd width
    camera = data.camera()[:300, :257] / 255.0
    rng = np.random.default_rng(11)
    random = rng.random((2, 3, 181, 197))
    return {
        "astronaut_jpeg_like": (np.moveaxis(astronaut, -1, 0)[None],
                                np.moveaxis(np.round(astronaut * 31) / 31, -1, 0)[None]),
        "camera_shifted": (camera[None, None], np.roll(camera, (2, 1), axis=(0, 1))[None, None] * 0.8 + 0.1),
        "random": (random, np.clip(random + 0.3 * rng.standard_normal(random.shape), 0, 1)),
    }


@pytest.mark.parametrize("case", ["astronaut_jpeg_like", "camera_shifted", "random"])
def test_pytorch_msssim_variant_matches_pytorch_msssim(case, monkeypatch):
    torch = pytest.importorskip("torch")
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "reference")
    x, y = _peer_cases()[case]
    tx = torch.tensor(x, requires_grad=True)
    value = pytorch_msssim.ms_ssim(tx, torch.tensor(y), data_range=1.0, size_average=False)
    value.sum().backward()
    ours, grad = cussim.ms_ssim_with_gradient(x, y, variant="pytorch_msssim", channel_axis=1, axis=(1, 2, 3))
    # pytorch-msssim builds its window in float32 before casting: agreement to ~1e-6
    np.testing.assert_allclose(ours, value.detach().numpy(), rtol=0, atol=5e-6)
    assert np.linalg.norm(grad - tx.grad.numpy()) <= 1e-4 * np.linalg.norm(tx.grad.numpy())


@pytest.mark.parametrize("case", ["astronaut_jpeg_like", "camera_shifted", "random"])
def test_torchmetrics_variant_matches_torchmetrics(case, monkeypatch):
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.image")
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "reference")
    x, y = _peer_cases()[case]
    tx = torch.tensor(x, requires_grad=True)
    value = tm.multiscale_structural_similarity_index_measure(tx, torch.tensor(y), data_range=1.0,
                                                              normalize="relu", reduction="none")
    value.sum().backward()
    ours, grad = cussim.ms_ssim_with_gradient(x, y, variant="torchmetrics", channel_axis=1, axis=(1, 2, 3))
    np.testing.assert_allclose(ours, value.detach().numpy(), rtol=0, atol=1e-8)
    assert np.linalg.norm(grad - tx.grad.numpy()) <= 1e-6 * np.linalg.norm(tx.grad.numpy())


def test_peers_in_float32_against_the_kernels(kernels):
    torch = pytest.importorskip("torch")
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    x, y = (a.astype(np.float32) for a in _peer_cases()["camera_shifted"])
    tx = torch.tensor(x, requires_grad=True)
    value = pytorch_msssim.ms_ssim(tx, torch.tensor(y), data_range=1.0)
    value.backward()
    ours, grad = cussim.ms_ssim_with_gradient(x, y)
    assert abs(float(ours) - value.item()) <= 1e-5
    assert np.linalg.norm(grad - tx.grad.numpy()) <= 1e-3 * np.linalg.norm(tx.grad.numpy())


@pytest.mark.parametrize("case", msssim_inputs.CASES, ids=[c["name"] for c in msssim_inputs.CASES])
def test_tensorflow_variant_matches_tensorflow_golden_values(case, monkeypatch):
    """tf.image.ssim_multiscale's values (float32 inside TensorFlow), from tests/golden/make_tensorflow_msssim.py."""
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "reference")
    golden = {r["name"]: r["values"] for r in json.loads((GOLDEN / "tensorflow_msssim.json").read_text())["results"]}
    x, y = msssim_inputs.images(case)
    value = cussim.ms_ssim(x, y, variant="tensorflow", weights=case["weights"], win_size=case["win_size"],
                           sigma=case["sigma"], data_range=case["data_range"], channel_axis=-1, axis=(1, 2, 3))
    # TensorFlow's float32 arithmetic: 2e-5 on the quantised camera's flat sky, 1e-6 elsewhere
    np.testing.assert_allclose(value, golden[case["name"]], rtol=0, atol=3e-5)


def test_repeated_calls_reuse_scales_only_where_they_fit(backend):
    """The scales of a layout come from a cache: new arrays of one layout, another shape, variant or weights,
    each give what a call with the caches emptied gives."""
    from cussim import _msssim, _ssim

    calls = [
        (_pair((2, 48, 52), seed=1), {}),
        (_pair((2, 48, 52), seed=2), {}),
        (_pair((2, 52, 48), seed=3), {}),
        (_pair((2, 52, 48), seed=4), {"variant": "torchmetrics"}),
        (_pair((2, 52, 48), seed=5), {"weights": (0.5, 0.5)}),
    ]
    for (x, y), keywords in calls:
        keywords = {"win_size": 5, "weights": (0.3, 0.3, 0.4), **keywords}
        value, grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(y), **keywords)
        _ssim._cached_layout.cache_clear()
        _msssim._cached_pyramid.cache_clear()
        fresh_value, fresh_grad = cussim.ms_ssim_with_gradient(backend.asarray(x), backend.asarray(y), **keywords)
        np.testing.assert_array_equal(backend.asnumpy(value), backend.asnumpy(fresh_value))
        np.testing.assert_array_equal(backend.asnumpy(grad), backend.asnumpy(fresh_grad))


# ---- the "piq" variant: piq 0.8's multi_scale_ssim, written here in PyTorch from its source ----

def _piq_ms_ssim(x, y, weights, win_size=11, sigma=1.5, K=(0.01, 0.03)):
    """piq.multi_scale_ssim's per-image values (data range 1, weights as given): where a scale's height or width
    is odd, one replicated row above and column to the left, then avg_pool2d; valid Gaussian SSIM and cs of
    unclamped variances, relu, the product of powers per channel, the channels' mean."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    offsets = torch.arange(win_size, dtype=x.dtype) - (win_size - 1) / 2
    g = torch.exp(-(offsets[None] ** 2 + offsets[:, None] ** 2) / (2 * sigma**2))
    kernel = (g / g.sum()).expand(x.shape[1], 1, win_size, win_size)
    c1, c2 = K[0] ** 2, K[1] ** 2
    values = []
    for level in range(len(weights)):
        if level:
            pad = max(x.shape[2] % 2, x.shape[3] % 2)
            x, y = (F.avg_pool2d(F.pad(a, [pad, 0, pad, 0], mode="replicate"), 2) for a in (x, y))
        blur = lambda a: F.conv2d(a, kernel, groups=x.shape[1])  # noqa: E731
        mx, my = blur(x), blur(y)
        cs = (2 * (blur(x * y) - mx * my) + c2) / (blur(x * x) - mx**2 + blur(y * y) - my**2 + c2)
        ssim = (2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs
        values.append((ssim if level == len(weights) - 1 else cs).mean(dim=(-1, -2)))
    stacked = torch.relu(torch.stack(values))
    return torch.prod(stacked ** torch.tensor(weights, dtype=x.dtype).view(-1, 1, 1), dim=0).mean(1)


@pytest.mark.parametrize("shape", [(2, 3, 168, 176), (1, 2, 165, 171), (1, 1, 170, 163)])
def test_piq_variant_is_piqs_ms_ssim(shape):
    """piq halves an odd side unlike the other three (4e-4 to 5e-3 apart on random 168 x 176 pairs, where 21 x 22 is
    halved at the fourth scale): values and the gradient to X against piq's algorithm in PyTorch."""
    torch = pytest.importorskip("torch")
    x, y = _pair(shape, np.float64)
    a = torch.tensor(x, requires_grad=True)
    theirs = _piq_ms_ssim(a, torch.tensor(y), ref.MS_SSIM_WEIGHTS)
    theirs.sum().backward()
    value, grad = cussim.ms_ssim_with_gradient(x, y, variant="piq", axis=(1, 2, 3))
    np.testing.assert_allclose(value, theirs.detach().numpy(), rtol=0, atol=1e-12)
    assert np.linalg.norm(grad - a.grad.numpy()) <= 1e-9 * np.linalg.norm(grad)
    others = [cussim.ms_ssim(x, y, variant=v, axis=(1, 2, 3)) for v in ("pytorch_msssim", "tensorflow")]
    assert min(np.abs(o - value).max() for o in others) > 1e-5


def test_piq_variant_on_the_kernels_and_on_volumes_is_refused(kernels):
    x, y = _pair((170, 163))
    with pytest.raises(ValueError, match="variant='piq' is computed for NumPy inputs .* only"):
        cussim.ms_ssim(x, y, variant="piq")
    with pytest.raises(ValueError, match="variant='piq' is for images"):
        cussim.ms_ssim(*_pair((20, 20, 20)), variant="piq", spatial_dims=3, win_size=3, weights=(0.5, 0.5))


def test_pyramid_refuses_planes_past_32_bit_offsets_by_name():
    """msssim_pyramid offsets a plane in 32-bit arithmetic: a plane of 2^31 pixels is refused before any launch
    (a broadcast view: nothing allocated)."""
    x = np.broadcast_to(np.float32(0), (1, 46341, 46341))
    out = np.zeros(1, np.float32)
    with pytest.raises(ValueError, match=r"x: MS-SSIM takes planes of at most 2147483647 pixels"):
        _launch.pyramid(x, x, out, out, "pytorch_msssim", 1)
