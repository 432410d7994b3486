"""cussim.dask against the in-memory functions: every padding, chunkings that split windows, laziness, errors."""

import doctest

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import cussim  # noqa: E402
import cussim.dask as cd  # noqa: E402

PADDINGS = ("same", "valid", "reflect")
# Chunks along the two image axes of a 45 x 52 plane (window 11, radius 5): one chunk; chunks that split
# windows; chunks narrower than the halo and the window (merged with a neighbour); uneven ones.
CHUNKINGS = [(-1, -1), (16, 20), (5, 7), ((3, 30, 12), (25, 1, 26)), (11, 52)]


def relative_l2(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def pair(shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    y = np.clip(x + 0.2 * rng.standard_normal(shape), 0, 1)
    return x.astype(dtype), y.astype(dtype)


def chunked(array, plane_chunks, lead=None):
    lead = tuple(lead or [-1] * (array.ndim - 2))
    return da.from_array(array, chunks=lead + tuple(plane_chunks))


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("chunks", CHUNKINGS, ids=str)
def test_float64_equals_in_memory(padding, chunks):
    x, y = pair((2, 45, 52))
    dx, dy = chunked(x, chunks), chunked(y, (15, 15))  # y is rechunked like x
    value, grad = dask.compute(*cd.ssim_with_gradient(dx, dy, padding=padding, axis=(1, 2)))
    expected_value, expected_grad = cussim.ssim_with_gradient(x, y, padding=padding, axis=(1, 2))
    np.testing.assert_allclose(value, expected_value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-12 * np.abs(expected_grad).max())
    assert grad.dtype == expected_grad.dtype and value.dtype == expected_value.dtype
    np.testing.assert_allclose(cd.ssim(dx, dy, padding=padding).compute(), cussim.ssim(x, y, padding=padding),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(cd.ssim_map(dx, dy, padding=padding).compute(),
                               cussim.ssim_map(x, y, padding=padding), rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding", PADDINGS)
def test_dssim_and_its_gradient(padding):
    x, y = pair((40, 36), seed=1)
    dx = da.from_array(x, chunks=(13, 17))
    value, grad = dask.compute(*cd.dssim_with_gradient(dx, y, padding=padding, win_size=7, window="uniform",
                                                       sample_covariance=True))
    expected = cussim.dssim_with_gradient(x, y, padding=padding, win_size=7, window="uniform",
                                          sample_covariance=True)
    np.testing.assert_allclose(value, expected[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, expected[1], rtol=0, atol=1e-12 * np.abs(expected[1]).max())
    np.testing.assert_allclose(cd.dssim(dx, y, padding=padding, win_size=7).compute(),
                               cussim.dssim(x, y, padding=padding, win_size=7), rtol=0, atol=1e-12)


def test_chunked_batch_channels_and_a_broadcast_reference():
    """Batch and channel axes chunked too, channels last, one reference for the whole batch."""
    x, _ = pair((3, 30, 34, 4), seed=2)
    _, y = pair((30, 34, 4), seed=3)
    dx = da.from_array(x, chunks=(2, 12, 15, 3))
    kwargs = dict(channel_axis=-1, axis=(1, 2, 3), padding="reflect", data_range=1.0)
    value, grad = dask.compute(*cd.ssim_with_gradient(dx, y, **kwargs))
    expected_value, expected_grad = cussim.ssim_with_gradient(x, y, **kwargs)
    np.testing.assert_allclose(value, expected_value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-12 * np.abs(expected_grad).max())
    keep_channels = dict(kwargs, axis=(0, 1, 2))
    np.testing.assert_allclose(cd.ssim(dx, y, **keep_channels).compute(), cussim.ssim(x, y, **keep_channels),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(cd.ssim_map(dx, y, channel_axis=-1).compute(), cussim.ssim_map(x, y, channel_axis=-1),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint8])
def test_lower_precision_within_the_specification(dtype):
    x, y = pair((50, 44), seed=4)
    if dtype == np.uint8:
        x, y = (np.round(a * 255).astype(np.uint8) for a in (x, y))
    else:
        x, y = x.astype(dtype), y.astype(dtype)
    dx, dy = da.from_array(x, chunks=(9, 20)), da.from_array(y, chunks=(25, 25))
    value, grad = dask.compute(*cd.ssim_with_gradient(dx, dy))
    expected_value, expected_grad = cussim.ssim_with_gradient(x, y)
    assert value.dtype == expected_value.dtype == np.float32
    assert grad.dtype == expected_grad.dtype
    assert abs(float(value) - float(expected_value)) < 1e-5
    if dtype != np.float16:  # float16 gradients of a mean over 2200 pixels are mostly below float16's resolution
        assert relative_l2(grad, expected_grad.astype(np.float64)) < 1e-4
    assert relative_l2(cd.ssim_map(dx, dy).compute(), cussim.ssim_map(x, y).astype(np.float64)) < 1e-4


def test_chunks_run_on_the_kernels(monkeypatch):
    """With the kernels computing each chunk (the CPU emulator here, CuPy on a GPU), float32 tolerances hold."""
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    x, y = pair((36, 40), np.float32, seed=5)
    reference_value, reference_grad = cussim.ssim_with_gradient(x.astype(np.float64), y.astype(np.float64))
    value, grad = dask.compute(*cd.ssim_with_gradient(da.from_array(x, chunks=(14, 21)), y))
    assert abs(float(value) - reference_value) < 1e-5
    assert relative_l2(grad, reference_grad) < 1e-4


@pytest.mark.parametrize("variant", ["pytorch_msssim", "tensorflow", "torchmetrics", "piq"])
def test_ms_ssim_equals_in_memory(variant):
    """Chunks that split windows at every scale, and odd sides at several scales."""
    x, y = pair((3, 2, 61, 70), seed=6)
    dx = da.from_array(x, chunks=(2, 1, 17, 30))
    for kwargs in (dict(), dict(channel_axis=1, axis=(1, 2, 3)), dict(axis=(0, 2, 3))):
        if variant == "torchmetrics" and kwargs.get("axis") == (0, 2, 3):
            continue  # this variant pools channels only when channel_axis says which axis holds them
        kwargs.update(variant=variant, win_size=7, weights=(0.2, 0.3, 0.5))
        lazy = cd.ms_ssim(dx, y, **kwargs)
        np.testing.assert_allclose(lazy.compute(), cussim.ms_ssim(x, y, **kwargs), rtol=0, atol=1e-12)


def test_ms_ssim_float32():
    x, y = pair((177, 163), np.float32, seed=8)
    lazy = cd.ms_ssim(da.from_array(x, chunks=(50, 64)), y, variant="tensorflow")
    assert lazy.dtype == np.float32
    assert abs(float(lazy.compute()) - float(cussim.ms_ssim(x, y, variant="tensorflow"))) < 1e-5


def test_halving_follows_each_variant():
    x = np.random.default_rng(9).random((2, 23, 30))
    for variant in ("pytorch_msssim", "tensorflow", "torchmetrics"):
        halved = cd._halved(da.from_array(x, chunks=(1, 7, 9)), variant)
        np.testing.assert_array_equal(halved.compute(), cussim._reference.downsample(x, variant))


# Chunks along the three axes of a 19 x 22 x 24 volume (window 5, radius 2): depth split too; chunks narrower than
# the window (merged with a neighbour); uneven ones.
@pytest.mark.parametrize("padding", PADDINGS)
def test_a_window_per_axis_takes_each_axis_radius_as_its_halo(padding):
    """win_size (11, 3): halos of 5 rows and 1 column; chunks narrower than either (merged per axis)."""
    x, y = pair((2, 45, 40), seed=2)
    dx = chunked(x, ((4, 20, 21), (2, 13, 25)))
    kwargs = dict(padding=padding, win_size=(11, 3), sigma=(1.5, 0.6))
    value, grad = dask.compute(*cd.ssim_with_gradient(dx, y, axis=(1, 2), **kwargs))
    expected_value, expected_grad = cussim.ssim_with_gradient(x, y, axis=(1, 2), **kwargs)
    np.testing.assert_allclose(value, expected_value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-12 * np.abs(expected_grad).max())
    np.testing.assert_allclose(cd.ssim_map(dx, y, **kwargs).compute(), cussim.ssim_map(x, y, **kwargs), rtol=0,
                               atol=1e-12)
    volume = dict(kwargs, win_size=(3, 7, 5), sigma=(0.6, 1.2, 1.0), spatial_dims=3)
    vx, vy = pair((11, 23, 20), seed=3)
    np.testing.assert_allclose(cd.ssim(da.from_array(vx, chunks=(4, 8, 9)), vy, **volume).compute(),
                               cussim.ssim(vx, vy, **volume), rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["pytorch_msssim", "torchmetrics"])
def test_ms_ssim_with_a_window_per_axis(variant):
    x, y = pair((2, 60, 33), seed=4)
    kwargs = dict(variant=variant, weights=(0.3, 0.3, 0.4), win_size=(9, 3), sigma=(1.2, 0.5))
    np.testing.assert_allclose(cd.ms_ssim(da.from_array(x, chunks=(1, 25, 12)), y, **kwargs).compute(),
                               cussim.ms_ssim(x, y, **kwargs), rtol=0, atol=1e-12)


VOLUME_CHUNKINGS = [(-1, -1, -1), (8, 9, 13), ((3, 12, 4), (2, 20), 5)]


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("chunks", VOLUME_CHUNKINGS, ids=str)
def test_volumes_equal_in_memory(padding, chunks):
    """spatial_dims=3: the halo on depth, rows and columns; the means, maps and gradients of the volume functions."""
    x, y = pair((2, 19, 22, 24), seed=10)
    dx, dy = chunked(x, chunks, lead=(-1,)), chunked(y, (7, 11, 12), lead=(1,))
    kwargs = dict(padding=padding, win_size=5, spatial_dims=3)
    value, grad = dask.compute(*cd.ssim_with_gradient(dx, dy, axis=(1, 2, 3), **kwargs))
    expected_value, expected_grad = cussim.ssim_with_gradient(x, y, axis=(1, 2, 3), **kwargs)
    np.testing.assert_allclose(value, expected_value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-12 * np.abs(expected_grad).max())
    value, grad = dask.compute(*cd.dssim_with_gradient(dx, dy, **kwargs))
    expected_value, expected_grad = cussim.dssim_with_gradient(x, y, **kwargs)
    np.testing.assert_allclose(value, expected_value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-12 * np.abs(expected_grad).max())
    np.testing.assert_allclose(cd.ssim(dx, dy, **kwargs).compute(), cussim.ssim(x, y, **kwargs), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cd.dssim(dx, dy, **kwargs).compute(), cussim.dssim(x, y, **kwargs), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cd.ssim_map(dx, dy, **kwargs).compute(), cussim.ssim_map(x, y, **kwargs), rtol=0,
                               atol=1e-12)


def test_volumes_with_channels_last_and_a_uniform_window():
    x, y = pair((14, 15, 16, 2), seed=11)
    dx = da.from_array(x, chunks=(6, 7, 16, 1))
    kwargs = dict(channel_axis=-1, spatial_dims=3, win_size=3, window="uniform", sample_covariance=True,
                  padding="reflect")
    value, grad = dask.compute(*cd.ssim_with_gradient(dx, y, axis=(0, 1, 2), **kwargs))
    expected_value, expected_grad = cussim.ssim_with_gradient(x, y, axis=(0, 1, 2), **kwargs)
    assert value.shape == (2,)
    np.testing.assert_allclose(value, expected_value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=1e-12 * np.abs(expected_grad).max())


def test_volume_chunks_run_on_the_kernels(monkeypatch):
    """The volume kernels (the CPU emulator here) compute each chunk within the float32 tolerances."""
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    x, y = pair((12, 14, 16), np.float32, seed=12)
    kwargs = dict(win_size=5, spatial_dims=3)
    reference_value, reference_grad = cussim.ssim_with_gradient(x.astype(np.float64), y.astype(np.float64), **kwargs)
    value, grad = dask.compute(*cd.ssim_with_gradient(da.from_array(x, chunks=(6, 7, 16)), y, **kwargs))
    assert value.dtype == np.float32
    assert abs(float(value) - reference_value) < 1e-5
    assert relative_l2(grad, reference_grad) < 1e-4


@pytest.mark.parametrize("variant", ["pytorch_msssim", "tensorflow", "torchmetrics"])
def test_volume_ms_ssim_equals_in_memory(variant):
    """2x2x2 halving chunk by chunk, odd sides at several scales, depth chunked."""
    x, y = pair((1, 2, 20, 21, 23), seed=13)
    dx = da.from_array(x, chunks=(1, 1, 7, 9, 10))
    for kwargs in (dict(), dict(channel_axis=1, axis=(1, 2, 3, 4))):
        kwargs.update(variant=variant, win_size=3, weights=(0.2, 0.3, 0.5), spatial_dims=3)
        np.testing.assert_allclose(cd.ms_ssim(dx, y, **kwargs).compute(), cussim.ms_ssim(x, y, **kwargs), rtol=0,
                                   atol=1e-12)


def test_volume_halving_follows_each_variant():
    x = np.random.default_rng(14).random((2, 9, 12, 11))
    for variant in ("pytorch_msssim", "tensorflow", "torchmetrics"):
        halved = cd._halved(da.from_array(x, chunks=(1, 4, 5, 3)), variant, spatial=3)
        np.testing.assert_array_equal(halved.compute(), cussim._reference.downsample(x, variant, spatial=3))


def test_nothing_is_computed_before_compute():
    calls = []

    def load(block, block_info=None):
        calls.append(block_info[None]["chunk-location"])
        return block

    x, y = pair((2, 40, 40), seed=7)
    dx = da.from_array(x, chunks=(1, 20, 20)).map_blocks(load, dtype=x.dtype)
    results = [cd.ssim(dx, y), cd.dssim(dx, y, padding="valid"), cd.ssim_map(dx, y, padding="reflect"),
               *cd.ssim_with_gradient(dx, y), *cd.dssim_with_gradient(dx, y), cd.ms_ssim(dx, y, weights=(0.5, 0.5))]
    assert calls == [] and all(isinstance(r, da.Array) for r in results)
    value, grad = dask.compute(*cd.ssim_with_gradient(dx, y))
    assert calls and grad.shape == x.shape


def test_a_chunk_grid_is_swept_row_by_row():
    """Means hold about a row of chunks, not the image: for a 6 x 6 grid of x and y chunks, each made by its own
    task, at most (6 + 3) chunks of each at once (Dask's overlap and a tree reduction held 48 to 66 of the 72).
    Maps and gradients are arrays whose consumer orders the blocks; under a sum they hold fewer too (were 47, 85)."""
    from bench.dask_cpu import held_grid

    rows = held_grid(n=6, side=48)
    assert len(rows) == 6
    for row in rows:
        bound = 44 if row["run"].endswith(".sum()") else 2 * (6 + 3)
        assert 0 < row["chunks_held"] <= bound, row


def test_tasks_carry_no_image():
    """Tasks hold parameters and chunk sizes, not the broadcast stand-ins the checks ran on: pickled (to hash a task,
    or to send it to a worker) those were whole images, 9.7 GB to build a 20,000 x 20,000 float32 graph."""
    cloudpickle = pytest.importorskip("cloudpickle")
    x = da.zeros((1200, 1500), chunks=500)
    v = da.zeros((100, 120, 150), chunks=50)
    for lazy in (cd.ssim(x, x), *cd.ssim_with_gradient(x, x), cd.ssim_map(x, x), cd.ms_ssim(x, x),
                 *cd.ssim_with_gradient(v, v, spatial_dims=3), cd.ms_ssim(v, v, spatial_dims=3, win_size=7)):
        assert max(len(cloudpickle.dumps(task)) for task in dict(lazy.__dask_graph__()).values()) < 20_000


def test_without_dask_the_import_names_the_extra(monkeypatch):
    import importlib
    import sys

    for name in ("dask", "dask.array"):
        monkeypatch.setitem(sys.modules, name, None)  # what `import dask.array` finds when Dask is not installed
    monkeypatch.delitem(sys.modules, "cussim.dask")
    with pytest.raises(ImportError, match=r'cussim.dask needs Dask: pip install "dask\[array\]" distributed, or '
                                          r'cussim\'s dask extra'):
        importlib.import_module("cussim.dask")


def test_bad_inputs_are_named():
    x, y = pair((30, 30))
    dx = da.from_array(x, chunks=10)
    with pytest.raises(ValueError, match="does not broadcast to x's shape"):
        cd.ssim(dx, da.from_array(y[:20], chunks=10))
    with pytest.raises(TypeError, match="x must be a Dask array"):
        cd.ssim([[0.0] * 30] * 30, dx)
    with pytest.raises(TypeError, match="y has dtype"):
        cd.ssim(dx, dx.astype(np.float32))
    with pytest.raises(TypeError, match="x has dtype int64"):
        cd.ssim(dx.astype(np.int64), dx.astype(np.int64))
    with pytest.raises(ValueError, match="padding must be one of"):
        cd.ssim_map(dx, dx, padding="wrap")
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        cd.ssim_with_gradient(dx[:8], dx[:8])
    with pytest.raises(ValueError, match="must include both spatial axes"):
        cd.dssim(dx, dx, axis=0)
    with pytest.raises(ValueError, match="needs a smaller side of at least"):
        cd.ms_ssim(dx, dx)
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        cd.ssim(dx, dx, spatial_dims=4)
    with pytest.raises(ValueError, match="volumes are 1x30x30, smaller than the 11x11x11 window"):
        cd.ssim_with_gradient(dx[None], dx[None], spatial_dims=3)
    with pytest.raises(TypeError, match="chunks are ndarray arrays but y's are"):
        cd.ssim(dx, da.from_array(np.ma.masked_array(y), chunks=10, asarray=False))


def test_merged_and_even_chunks():
    assert cd._even((7, 9, 6)) == (6, 10, 6)
    assert cd._even((1, 1, 3, 1)) == (2, 2, 2)
    assert cd._merged((3, 30, 12), 11) == (33, 12)
    assert cd._merged((25, 25, 10), 11) == (25, 35)
    assert cd._merged((5, 5, 5), 11) == (15,)


def test_docstring_examples():
    result = doctest.testmod(cd, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
