"""cussim's GPU path (devices, streams, RawModule launches, DLPack, allocation) on the strict CuPy stand-in.

Each test puts the inputs on GPU 1 while GPU 0 is current and runs inside a
stream of the caller's, then checks what a GPU needs: the results equal the
NumPy path's (the same kernels on the emulator), every launch and allocation
on the inputs' device and the caller's stream, no host synchronisation, and
nothing allocated by an in-place call once warm.
"""

import inspect

import numpy as np
import pytest
from executors import device_allocations_refused

import cussim
from bench import cupy_standin
from bench.cupy_standin import record
from cussim import _arrays

GPU = 1  # the inputs' device; device 0 stays current outside the calls


@pytest.fixture
def emulator(monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")


def _images(shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random(shape)
    y = np.clip(x + 0.2 * rng.standard_normal(shape), 0, 1)
    if np.dtype(dtype) == np.uint8:
        return (x * 255).round().astype(dtype), (y * 255).round().astype(dtype)
    return x.astype(dtype), y.astype(dtype)


def _on_gpu(cupy, *arrays):
    with cupy.cuda.Device(GPU):
        return [cupy.asarray(a, blocking=True) for a in arrays]


def _host(value):
    return value.get() if isinstance(value, cupy_standin.ndarray) else np.asarray(value)


def _check_placement(stream):
    """Every launch and allocation since the record was cleared ran on GPU 1 and ``stream``; nothing synchronised
    but the copies of constants (window taps) to the device, once per device and value."""
    assert record.launches, "nothing was launched"
    for event in record.launches + record.allocations + record.of("op") + record.of("memset"):
        assert (event.device, event.stream) == (GPU, stream.ptr), event
    assert {e.name for e in record.syncs} <= {"asarray(blocking=True)"}, record.syncs


def _run(cupy, call):
    """``call()`` on GPU 1's stream of the caller, the record cleared before; returns its result and the stream."""
    with cupy.cuda.Device(GPU):
        stream = cupy.cuda.Stream(non_blocking=True)
    record.clear()
    with cupy.cuda.Device(GPU), stream:
        result = call()
    _check_placement(stream)
    return result, stream


def test_standin_is_checked_against_cupy():
    """The check that fixture runs finds a parameter CuPy lacks (a stand-in that only seemed strict would not)."""
    cupy = pytest.importorskip("cupy")
    assert cupy_standin.check_against(cupy) == []

    class Looser(cupy_standin.RawModule):
        def __init__(self, code=None, *, path=None, options=(), backend="nvrtc", translate_cucomplex=False,
                     enable_cooperative_groups=False, name_expressions=None, jitify=None, arch=None):
            pass

        def launch_everything(self):
            pass

    problems = []
    cupy_standin._compare("cupy.RawModule", cupy.RawModule, Looser, problems)
    assert any("arch=None" in p for p in problems) and any("launch_everything" in p for p in problems)
    assert "name_expressions" in cupy_standin.real_signature(cupy.RawModule).parameters


@pytest.mark.parametrize("metric", ["ssim_with_gradient", "dssim_with_gradient", "l1_dssim_loss_with_gradient"])
def test_values_and_gradients_equal_the_numpy_path(standin_cupy, emulator, metric):
    x, y = _images((2, 20, 24))
    function = getattr(cussim, metric)
    expected_value, expected_grad = function(x, y, win_size=7)
    gx, gy = _on_gpu(standin_cupy, x, y)
    (value, grad), _ = _run(standin_cupy, lambda: function(gx, gy, win_size=7))
    assert value.device.id == GPU and grad.device.id == GPU
    np.testing.assert_array_equal(_host(value), expected_value)
    np.testing.assert_array_equal(_host(grad), expected_grad)


def test_map_value_and_strided_inputs(standin_cupy, emulator):
    x, y = _images((3, 18, 20), np.uint8)
    gx, gy = _on_gpu(standin_cupy, x, y)
    expected_map = cussim.ssim_map(x[:, ::-1], y[0], win_size=5, padding="valid")
    got, _ = _run(standin_cupy, lambda: cussim.ssim_map(gx[:, ::-1], gy[0], win_size=5, padding="valid"))
    np.testing.assert_array_equal(_host(got), expected_map)
    values, _ = _run(standin_cupy, lambda: cussim.dssim(gx, gy, axis=(1, 2), win_size=5))
    np.testing.assert_array_equal(_host(values), cussim.dssim(x, y, axis=(1, 2), win_size=5))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_window_per_axis_is_refused_before_any_launch(standin_cupy, spatial_dims):
    """The kernels are built for one radius: GPU arrays with a window per axis get the ValueError naming the
    float64 path, and nothing is launched."""
    gx, gy = _on_gpu(standin_cupy, *_images((9, 10, 11)))
    record.clear()
    with pytest.raises(ValueError, match=r"win_size and sigma give each spatial axis its own window here.*CPU "
                                         r"tensors \(the float64 path"):
        cussim.ssim_with_gradient(gx, gy, win_size=(3, 5, 3)[:spatial_dims], spatial_dims=spatial_dims)
    assert not record.launches


def test_volumes(standin_cupy, emulator):
    x, y = _images((1, 9, 10, 11), np.float64)
    gx, gy = _on_gpu(standin_cupy, x, y)
    (value, grad), _ = _run(standin_cupy, lambda: cussim.ssim_with_gradient(gx, gy, win_size=3, spatial_dims=3))
    expected_value, expected_grad = cussim.ssim_with_gradient(x, y, win_size=3, spatial_dims=3)
    np.testing.assert_array_equal(_host(value), expected_value)
    np.testing.assert_array_equal(_host(grad), expected_grad)


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 3, 20, 22)), (3, (1, 2, 8, 9, 10))])
def test_ms_ssim(standin_cupy, emulator, spatial_dims, shape):
    x, y = _images(shape)
    options = dict(weights=(0.4, 0.6), win_size=3, channel_axis=1, spatial_dims=spatial_dims)
    gx, gy = _on_gpu(standin_cupy, x, y)
    (value, grad), _ = _run(standin_cupy, lambda: cussim.ms_ssim_with_gradient(gx, gy, **options))
    expected_value, expected_grad = cussim.ms_ssim_with_gradient(x, y, **options)
    np.testing.assert_array_equal(_host(value), expected_value)
    np.testing.assert_array_equal(_host(grad), expected_grad)
    variant = "torchmetrics" if spatial_dims == 2 else "tensorflow"
    value, _ = _run(standin_cupy, lambda: cussim.ms_ssim(gx, gy, variant=variant, **options))
    np.testing.assert_array_equal(_host(value), cussim.ms_ssim(x, y, variant=variant, **options))


def test_in_place_steady_state_allocates_and_synchronises_nothing(standin_cupy, emulator):
    cupy = standin_cupy
    x, y = _images((2, 16, 18))
    gx, gy = _on_gpu(cupy, x, y)
    with cupy.cuda.Device(GPU):
        out, grad = cupy.empty((), np.float32), cupy.empty(x.shape, np.float32)
        workspace = cussim.make_workspace(gx, win_size=5)
        ms_workspace = cussim.make_ms_ssim_workspace(gx, win_size=3, weights=(0.5, 0.5))
    calls = [lambda: cussim.dssim_with_gradient(gx, gy, win_size=5, out=out, grad=grad, workspace=workspace),
             lambda: cussim.dssim_with_gradient(gx, gy, win_size=5, out=out, grad=grad, workspace=workspace,
                                                accumulate=True),
             lambda: cussim.ms_ssim_with_gradient(gx, gy, win_size=3, weights=(0.5, 0.5), out=out, grad=grad,
                                                  workspace=ms_workspace)]
    for call in calls:
        _run(cupy, call)  # warm: kernels compiled, constants and plans made
    before = _arrays.allocations
    with device_allocations_refused():
        for call in calls:
            _run(cupy, call)
            assert not record.allocations and not record.syncs
    assert _arrays.allocations == before
    np.testing.assert_array_equal(_host(out), cussim.ms_ssim(x, y, win_size=3, weights=(0.5, 0.5)))


def test_structural_similarity_casts_on_the_images_device(standin_cupy, emulator):
    """uint8 images on GPU 1 (GPU 0 current): skimage's float64 working copies are made on GPU 1."""
    x, y = _images((20, 22, 3), np.uint8)
    gx, gy = _on_gpu(standin_cupy, x, y)
    record.clear()
    mssim, grad, S = cussim.structural_similarity(gx, gy, channel_axis=-1, gradient=True, full=True)
    assert {e.device for e in record.launches + record.allocations} == {GPU}
    expected = cussim.structural_similarity(x, y, channel_axis=-1, gradient=True, full=True)
    for got, want in zip((mssim, grad, S), expected):
        np.testing.assert_array_equal(_host(got), want)


def test_empty_batch_fills_nan_on_the_inputs_device(standin_cupy):
    gx, = _on_gpu(standin_cupy, np.zeros((0, 3, 12, 12), np.float32))
    value, _ = _run_without_launches(standin_cupy, lambda: cussim.ssim(gx, gx, axis=(1, 2, 3)))
    assert value.shape == (0,)
    values, _ = _run_without_launches(standin_cupy, lambda: cussim.ssim(gx, gx))
    assert np.isnan(_host(values))


def _run_without_launches(cupy, call):
    record.clear()
    with cupy.cuda.Device(0):
        result = call()
    assert {e.device for e in record.events if e.kind != "sync"} <= {GPU}
    return result, None


def test_constants_are_ready_on_every_later_stream(standin_cupy, emulator):
    """The window taps copied once per device are complete before a call on another stream reads them."""
    x, y = _images((1, 16, 16))
    gx, gy = _on_gpu(standin_cupy, x, y)
    first, _ = _run(standin_cupy, lambda: cussim.ssim(gx, gy, win_size=9))
    second, _ = _run(standin_cupy, lambda: cussim.ssim(gx, gy, win_size=9))  # another new stream
    np.testing.assert_array_equal(_host(first), _host(second))


class FakeCudaTensor:
    """What cussim sees of a PyTorch CUDA tensor: ``__cuda_array_interface__`` (version 2, no stream, and a
    RuntimeError for one that requires grad, as PyTorch's), and ``__dlpack__`` whose stream handshake
    orders the consumer's stream after PyTorch's current one (``torch_stream``), where it was written."""

    def __init__(self, cupy, host, torch_stream, requires_grad=False):
        with cupy.cuda.Device(GPU):
            self.array = cupy.asarray(host, blocking=True)
        self.array._mem.ready = {torch_stream}  # written by PyTorch's stream, not yet ordered with any other
        self.requires_grad = requires_grad
        self.handshakes = []

    def _refuse_grad(self):
        if self.requires_grad:
            raise RuntimeError("Can't export tensors that require gradient, use tensor.detach()")

    @property
    def __cuda_array_interface__(self):
        self._refuse_grad()
        interface = dict(self.array.__cuda_array_interface__, version=2)
        del interface["stream"]
        return interface

    def __dlpack_device__(self):
        return (2, GPU)

    def __dlpack__(self, stream=None):
        self._refuse_grad()
        self.handshakes.append(stream)
        self.array._mem.ready.add(stream)
        return self.array.__dlpack__()


def test_tensors_of_another_framework_are_read_after_its_stream_wrote_them(standin_cupy, emulator):
    x, y = _images((1, 16, 16))
    torch_stream = 0xDEAD0
    tx, ty = (FakeCudaTensor(standin_cupy, a, torch_stream) for a in (x, y))
    value, stream = _run(standin_cupy, lambda: cussim.ssim(tx, ty, win_size=5))
    assert tx.handshakes == [stream.ptr] and ty.handshakes == [stream.ptr]
    np.testing.assert_array_equal(_host(value), cussim.ssim(x, y, win_size=5))


def test_a_tensor_that_requires_grad_is_refused_with_the_fix(standin_cupy):
    x, _ = _images((1, 16, 16))
    tensor = FakeCudaTensor(standin_cupy, x, 0xDEAD0, requires_grad=True)
    with pytest.raises(TypeError, match=r"x requires grad.*x\.detach\(\).*cussim\.torch"):
        cussim.ssim(tensor, tensor)


def test_torch_cuda_helpers_use_the_tensors_device_and_pytorchs_stream(standin_cupy, monkeypatch):
    torch = pytest.importorskip("torch")
    from cussim.torch import _functions as ct

    torch_stream = 0xBEEF0
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: type("S", (), {"cuda_stream": torch_stream}))
    x, _ = _images((1, 16, 16))
    tensor = FakeCudaTensor(standin_cupy, x, torch_stream)
    tensor.is_cuda, tensor.detach = True, lambda: tensor
    with ct._cuda_context(torch.device("cuda", GPU)):
        cupy = standin_cupy
        assert cupy.cuda.Device().id == GPU and cupy.cuda.get_current_stream().ptr == torch_stream
        array = ct._as_array(tensor)
    assert tensor.handshakes == [torch_stream] and array.device.id == GPU


def test_mixed_places_are_refused(standin_cupy):
    x, _ = _images((1, 16, 16))
    gx, = _on_gpu(standin_cupy, x)
    with standin_cupy.cuda.Device(0):
        g0 = standin_cupy.asarray(x, blocking=True)
    with pytest.raises(ValueError, match="move them to one device"):
        cussim.ssim(gx, g0)
    with pytest.raises(TypeError, match="y is in host memory"):
        cussim.ssim(gx, x)


def test_precompile_compiles_for_every_gpu(standin_cupy, capsys, monkeypatch):
    from cussim import _precompile

    monkeypatch.delenv("CUPY_CACHE_IN_MEMORY", raising=False)
    record.clear()
    assert _precompile.main(["ssim_finish<float>", "--jobs", "1"]) == 0
    assert [e.device for e in record.of("compile")] == [0, 1]
    assert "GPU 1 (Stand-in GPU 1, sm_90): 1 specialisations" in capsys.readouterr().out


@pytest.mark.parametrize("version, keeps", [("13.6.0", False), ("14.0.1", False), ("14.1.1", False),
                                            ("14.2.0", True), ("15.0.0", True)])
def test_precompile_gates_on_the_first_cupy_that_reads_name_expression_modules_back(standin_cupy, monkeypatch,
                                                                                   version, keeps):
    from cussim import _precompile

    monkeypatch.setattr(standin_cupy, "__version__", version)
    monkeypatch.delenv("CUPY_CACHE_IN_MEMORY", raising=False)
    cupy, devices = _precompile.gpu_devices()
    assert (cupy is not None) == keeps
    if not keeps:
        assert f"CuPy {version}" in devices and "14.2" in devices


def test_cli_device_gpu(standin_cupy, capsys, tmp_path, emulator):
    from cussim import _cli

    x, y = _images((24, 24), np.uint8)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", x)
    iio.imwrite(tmp_path / "b.png", y)
    pair = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    record.clear()
    assert _cli.main([*pair, "--device", "gpu"]) == 0
    on_gpu = capsys.readouterr().out.splitlines()
    assert {e.device for e in record.launches} == {0}
    assert {e.name for e in record.syncs} <= {"ndarray.get", "asarray(blocking=True)"}  # results to the host, taps once
    assert _cli.main([*pair, "--device", "cpu"]) == 0
    on_cpu = capsys.readouterr().out.splitlines()
    assert "GPU 0 (Stand-in GPU 0" in on_gpu[0]
    rows = [[line for line in out if "SSIM" in line and not line.startswith("computed by")] for out in (on_gpu, on_cpu)]
    assert rows[0] == rows[1]


def test_signatures_of_the_standin_record_what_they_refuse(standin_cupy):
    """The stand-in's own strictness: a NumPy array or a Python int as a kernel's pointer, an array of another
    device, an allocation inside a capture."""
    from cussim import _kernels

    kernel = _kernels.get_kernel("ssim", "msssim_fold<float>", _on_gpu(standin_cupy, np.zeros(1, np.float32))[0])
    args = (np.zeros(4, np.float32), np.uint64(0), np.int64(1), np.int32(1), np.int32(1), np.int32(0))
    with standin_cupy.cuda.Device(GPU), pytest.raises(cupy_standin.StandInError, match="NumPy array"):
        kernel((1,), (32,), args)
    with standin_cupy.cuda.Device(GPU), pytest.raises(cupy_standin.StandInError, match="pointer"):
        kernel((1,), (32,), (1, *args[1:]))
    stream = standin_cupy.cuda.Stream()
    with stream:
        stream.begin_capture()
        with pytest.raises(cupy_standin.StandInError, match="inside a stream capture"):
            standin_cupy.empty(3, np.float32)
        stream.end_capture()
    assert "grid" in inspect.signature(cupy_standin.RawKernel.__call__).parameters


def test_dask_arrays_of_gpu_chunks(standin_cupy, emulator):
    """cussim.dask on chunks that are GPU arrays: the chunks' halos joined and padded on the GPU, the same
    values and gradient as NumPy chunks."""
    import dask.array as da

    import cussim.dask as cd

    x, y = _images((2, 36, 40))
    chunked = [da.from_array(a, chunks=(1, 18, 20)) for a in (x, y)]
    on_gpu = [c.map_blocks(standin_cupy.asarray, dtype=np.float32) for c in chunked]
    record.clear()
    value, grad = cd.ssim_with_gradient(*on_gpu, win_size=5, padding="reflect")
    value, grad = da.compute(value, grad, scheduler="synchronous")
    assert record.launches and {e.device for e in record.launches} == {0}
    expected_value, expected_grad = da.compute(*cd.ssim_with_gradient(*chunked, win_size=5, padding="reflect"))
    np.testing.assert_array_equal(_host(value), expected_value)
    np.testing.assert_array_equal(_host(grad), expected_grad)
    ms = cd.ms_ssim(*on_gpu, weights=(0.5, 0.5), win_size=3).compute(scheduler="synchronous")
    np.testing.assert_array_equal(_host(ms), cd.ms_ssim(*chunked, weights=(0.5, 0.5), win_size=3).compute())


def test_precompile_says_why_not(standin_cupy, monkeypatch):
    from cussim import _precompile

    monkeypatch.setenv("CUPY_CACHE_IN_MEMORY", "1")
    assert _precompile.gpu_devices() == (None, "CUPY_CACHE_IN_MEMORY is set: CuPy keeps nothing on disk; unset it "
                                               "to precompile")
    monkeypatch.setattr(standin_cupy.cuda.runtime, "getDeviceCount", lambda: 0)
    assert _precompile.gpu_devices() == (None, "no GPU: CuPy sees no CUDA device")


def test_gpu_arrays_without_cupy_name_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)
    interface = type("CudaArray", (), {"__cuda_array_interface__": {}})()
    needs = r"GPU arrays need CuPy for the CUDA version you have: pip install cupy-cuda12x.*\.\[cuda12\]"
    with pytest.raises(ImportError, match=needs):
        cussim.ssim(interface, interface)


def test_other_dlpack_devices_and_objects_are_refused(standin_cupy):
    rocm = type("RocmTensor", (), {"__dlpack__": lambda self, stream=None: None,
                                   "__dlpack_device__": lambda self: (10, 0)})()
    with pytest.raises(TypeError, match="x lives on DLPack device type 10"):
        cussim.ssim(rocm, rocm)
    from cussim import _kernels

    with pytest.raises(TypeError, match="expected a NumPy or CuPy array, got list"):
        _kernels.get_kernel("ssim", "ssim_finish<float>", [1.0])


def test_structural_similarity_of_gpu_arrays_in_other_dimensions_is_refused(standin_cupy):
    gx, = _on_gpu(standin_cupy, np.zeros((8, 8, 8, 8), np.float32))
    with pytest.raises(ValueError, match="these have 4 spatial dimensions"):
        cussim.structural_similarity(gx, gx, data_range=1.0)


def test_structural_similarity_of_gpu_arrays_with_a_window_the_kernels_lack_is_refused(standin_cupy):
    gx, gy = _on_gpu(standin_cupy, *_images((32, 32)))
    with pytest.raises(ValueError, match="the GPU kernels take windows of 3 to 15 taps; this one has 17"):
        cussim.structural_similarity(gx, gy, data_range=1.0, win_size=17)
    with pytest.raises(ValueError, match=r"3 to 15 taps; this one has 19 \(Gaussian weights: sigma from 0.43"):
        cussim.structural_similarity(gx, gy, data_range=1.0, gaussian_weights=True, sigma=2.5)


def test_a_gpu_mask_with_numpy_masked_arrays_is_refused(standin_cupy):
    x, y = _images((16, 16))
    gm, = _on_gpu(standin_cupy, np.ones((16, 16), np.float32))
    with pytest.raises(TypeError, match="mask is a GPU array but x or y is a numpy.ma masked array"):
        cussim.ssim(np.ma.masked_greater(x, 0.9), y, mask=gm)


def test_workspace_says_where_it_lives(standin_cupy):
    gx, = _on_gpu(standin_cupy, np.zeros((1, 16, 16), np.float32))
    assert repr(cussim.make_workspace(gx, win_size=5)).endswith("bytes, GPU 1)")


def test_command_line_cluster_takes_dask_cuda_where_a_gpu_is(standin_cupy, monkeypatch):
    """--workers with GPUs and dask-cuda: one dask-cuda worker per GPU, and no more workers than GPUs."""
    import sys
    import types

    from cussim import _cli, _cluster

    made = []
    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(
        LocalCUDACluster=lambda **kwargs: made.append(kwargs) or "cluster"))
    assert _cluster._local_cluster(None, 2, "auto") == "cluster" and made == [dict(n_workers=2, dashboard_address=None)]
    with pytest.raises(_cli.UsageError, match="--workers 3: dask-cuda runs one worker per GPU and this machine has 2"):
        _cluster._local_cluster(None, 3, "gpu")


def test_no_gpu_to_compute_on(standin_cupy, monkeypatch):
    """CuPy present but no device (or no CuPy at all): the command line computes on the CPU, precompile says
    why it compiles nothing, and a local cluster is Dask's CPU one even where dask-cuda is missing."""
    import sys
    import types

    from cussim import _cluster, _pairs, _precompile

    cpu_cluster = types.SimpleNamespace(LocalCluster=lambda **kwargs: ("cpu", kwargs))
    monkeypatch.setitem(sys.modules, "dask_cuda", None)
    assert _cluster._local_cluster(cpu_cluster, 1, "auto")[0] == "cpu"
    monkeypatch.setattr(standin_cupy.cuda.runtime, "getDeviceCount", lambda: 0)
    assert _pairs._gpu() == (None, "no CUDA device")
    monkeypatch.setitem(sys.modules, "cupy", None)
    cupy, why = _precompile.gpu_devices()
    assert cupy is None and why.startswith("no GPU: CuPy cannot reach one (ModuleNotFoundError")


def test_outputs_overlapping_inputs_are_refused_on_the_gpu(standin_cupy, emulator):
    """The overlap check of GPU arrays (byte extents from data.ptr and strides, negative ones included)."""
    x, y = _images((1, 16, 16))
    gx, gy = _on_gpu(standin_cupy, x, y)
    with standin_cupy.cuda.Device(GPU):
        out = standin_cupy.empty((1, 16, 16), np.float32)
    flipped = gx[:, ::-1]
    with pytest.raises(ValueError, match="out overlaps x"):
        cussim.ssim_map(flipped, gy, win_size=5, out=gx[:, :, ::-1])
    cussim.ssim_map(flipped, gy, win_size=5, out=out[:, ::-1])  # apart: computed
    np.testing.assert_array_equal(_host(out)[:, ::-1], cussim.ssim_map(x[:, ::-1], y, win_size=5))
