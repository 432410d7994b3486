"""cussim.torch: autograd functions, loss modules and fused_ssim, against gradcheck, a plain PyTorch SSIM and
torchmetrics (PyTorch's (N, C, H, W) layout)."""

import subprocess
import sys

import numpy as np
import pytest

import cussim

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cussim.torch")
F = torch.nn.functional


def plain_ssim(x, y, win_size=11, sigma=1.5, padding="same", K1=0.01, K2=0.03):
    """SSIM written in PyTorch: depthwise conv2d with the Gaussian window, population covariance, data range 1."""
    r = win_size // 2
    taps = torch.exp(-((torch.arange(win_size, dtype=torch.float64) - r) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(x.dtype)
    channels = x.shape[1]
    window = (taps[:, None] * taps[None, :]).expand(channels, 1, win_size, win_size)

    def blur(a):
        return F.conv2d(a, window, padding=r if padding == "same" else 0, groups=channels)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = K1**2, K2**2
    return ((2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))).mean()


def images(shape=(2, 3, 24, 28), dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator, dtype=dtype)
    y = (x + 0.2 * torch.randn(shape, generator=generator, dtype=dtype)).clamp(0, 1)
    return x, y


def gradients(function, x, y):
    x, y = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    value = function(x, y)
    value.backward()
    return value.detach(), x.grad, y.grad


def test_import_cussim_does_not_import_torch():
    code = "import sys, cussim; cussim.ssim; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("options", [{}, {"padding": "valid"}, {"padding": "reflect", "win_size": 7},
                                     {"window": "uniform", "win_size": 5, "sample_covariance": True},
                                     {"sigma": 0.8, "win_size": 5, "K2": 0.05, "data_range": 2.0},
                                     {"win_size": (7, 3), "sigma": (1.2, 0.6), "padding": "reflect"}])
@pytest.mark.parametrize("name", ["ssim", "dssim"])
def test_gradcheck_ssim_and_dssim(name, options):
    x, y = images((1, 2, 13, 15))
    function = getattr(ct, name)
    assert torch.autograd.gradcheck(lambda a, b: function(a, b, **options),
                                    (x.requires_grad_(), y.requires_grad_()))


@pytest.mark.parametrize("options", [{}, {"variant": "tensorflow"}, {"variant": "torchmetrics", "channel_axis": 1},
                                     {"weights": (0.5, 0.5), "win_size": 5},
                                     {"weights": (0.5, 0.5), "win_size": (5, 3), "sigma": (0.8, 0.5)}])
def test_gradcheck_ms_ssim(options):
    x, y = images((1, 2, 23, 24) if "weights" in options else (1, 2, 176, 177))
    # ms_ssim's value is a product of powers: check its gradient along a few random directions
    assert torch.autograd.gradcheck(lambda a, b: ct.ms_ssim(a, b, **options), (x.requires_grad_(), y.requires_grad_()),
                                    fast_mode=True)


@pytest.mark.parametrize("weight", [0.0, 0.2, 1.0])
def test_gradcheck_l1_dssim_loss(weight):
    x, y = images((1, 2, 13, 15))
    assert torch.autograd.gradcheck(lambda a, b: ct.l1_dssim_loss(a, b, weight=weight, win_size=5),
                                    (x.requires_grad_(), y.requires_grad_()))


def test_broadcast_reference_gets_its_gradient_summed():
    x, _ = images((2, 3, 13, 15))
    y = images((1, 1, 13, 15), seed=1)[0]
    assert torch.autograd.gradcheck(lambda a, b: ct.ssim(a, b, win_size=5), (x.requires_grad_(), y.requires_grad_()),
                                    fast_mode=True)
    _, _, grad_y = gradients(ct.ssim, x, y)
    assert grad_y.shape == y.shape


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_against_plain_pytorch(padding, dtype, tolerance):
    x, y = images(dtype=dtype)
    value, grad_x, grad_y = gradients(lambda a, b: ct.ssim(a, b, padding=padding), x, y)
    plain, plain_x, plain_y = gradients(lambda a, b: plain_ssim(a, b, padding=padding), x, y)
    assert value.dtype == dtype and float(value) == pytest.approx(float(plain), abs=tolerance)
    for ours, theirs in ((grad_x, plain_x), (grad_y, plain_y)):
        assert ours.dtype == dtype
        assert float((ours - theirs).norm() / theirs.norm()) < 100 * tolerance


def test_the_incoming_gradient_scales_both_gradients():
    x, y = images(dtype=torch.float32)
    _, grad_x, grad_y = gradients(lambda a, b: -3 * ct.ms_ssim(a, b, weights=(0.5, 0.5)), x, y)
    _, plain_x, plain_y = gradients(lambda a, b: ct.ms_ssim(a, b, weights=(0.5, 0.5)), x, y)
    torch.testing.assert_close(grad_x, -3 * plain_x)
    torch.testing.assert_close(grad_y, -3 * plain_y)


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed"])
def test_non_contiguous_inputs(layout):
    x, y = images((2, 3, 30, 34))
    if layout == "channels_last":
        x, y = x.to(memory_format=torch.channels_last), y.to(memory_format=torch.channels_last)
    elif layout == "sliced":
        x, y = x[:, :, ::2, 1::2], y[:, :, 1::2, ::2]
    else:
        x, y = x.transpose(2, 3), y.transpose(2, 3)
    assert not x.is_contiguous()
    value, grad_x, grad_y = gradients(ct.ssim, x, y)
    plain, plain_x, plain_y = gradients(plain_ssim, x.contiguous(), y.contiguous())
    assert float(value) == pytest.approx(float(plain), abs=1e-12)
    torch.testing.assert_close(grad_x, plain_x, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(grad_y, plain_y, rtol=1e-9, atol=1e-13)


def test_l1_dssim_loss_is_the_3dgs_loss():
    x, y = images()
    value, grad_x, grad_y = gradients(lambda a, b: ct.l1_dssim_loss(a, b, weight=0.3), x, y)
    plain, plain_x, plain_y = gradients(lambda a, b: 0.7 * F.l1_loss(a, b) + 0.3 * (1 - plain_ssim(a, b)), x, y)
    assert float(value) == pytest.approx(float(plain), abs=1e-12)
    torch.testing.assert_close(grad_x, plain_x, rtol=1e-9, atol=1e-13)
    torch.testing.assert_close(grad_y, plain_y, rtol=1e-9, atol=1e-13)


def test_ms_ssim_matches_cussim():
    x, y = images((1, 3, 180, 181))
    value, grad_x, _ = gradients(lambda a, b: ct.ms_ssim(a, b, variant="tensorflow"), x, y)
    expected, expected_grad = cussim.ms_ssim_with_gradient(x.numpy(), y.numpy(), variant="tensorflow")
    assert float(value) == pytest.approx(float(expected), abs=1e-14)
    np.testing.assert_allclose(grad_x.numpy(), expected_grad, rtol=1e-12, atol=1e-16)


def test_only_the_gradients_asked_for_are_computed(monkeypatch):
    calls = []
    evaluate = ct._functions._evaluate
    monkeypatch.setattr(ct._functions, "_evaluate", lambda *args: calls.append(args[-1]) or evaluate(*args))
    x, y = images()
    ct.ssim(x, y)
    ct.ssim(x.requires_grad_(), y)
    with torch.no_grad():
        ct.ssim(x, y.requires_grad_())
    ct.ssim(x.detach(), y)
    assert calls == [False, True, False, False, True]


def test_inputs_are_not_modified():
    x, y = images()
    before = x.clone(), y.clone()
    gradients(ct.l1_dssim_loss, x, y)
    gradients(ct.ms_ssim, *images((1, 3, 176, 176)))
    assert torch.equal(x, before[0]) and torch.equal(y, before[1])


def test_float16_and_bfloat16_compute_in_float32():
    x, y = images(dtype=torch.float32)
    reference = ct.ssim(x.half().float(), y.half().float())
    value, grad_x, _ = gradients(ct.ssim, x.half(), y.half())
    assert value.dtype == torch.float32 and grad_x.dtype == torch.float16
    assert float(value) == pytest.approx(float(reference), abs=1e-6)
    value, grad_x, _ = gradients(ct.dssim, x.bfloat16(), y.bfloat16())
    assert value.dtype == torch.float32 and grad_x.dtype == torch.bfloat16
    assert float(value) == pytest.approx(float(ct.dssim(x.bfloat16().float(), y.bfloat16().float())), abs=1e-6)


def test_autocast_half_inputs():
    x, y = images(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = ct.ssim(x.requires_grad_(), y)
    value.backward()
    assert value.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_the_emulator_runs_the_kernels_for_cpu_tensors(monkeypatch):
    x, y = images(dtype=torch.float32)
    reference = gradients(ct.l1_dssim_loss, x, y)
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    value, grad_x, grad_y = gradients(ct.l1_dssim_loss, x, y)
    assert float(value) == pytest.approx(float(reference[0]), abs=1e-6)
    torch.testing.assert_close(grad_x, reference[1], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(grad_y, reference[2], rtol=1e-4, atol=1e-8)


def test_torch_compile_graph_breaks_at_most():
    x, y = images()

    def loss(a, b):
        return 0.5 * ct.dssim(a * 1.0, b) + 0.5 * F.mse_loss(a, b)

    compiled = torch.compile(loss, backend="eager")
    value, grad_x, _ = gradients(compiled, x, y)
    expected, expected_x, _ = gradients(loss, x, y)
    assert float(value) == pytest.approx(float(expected), abs=1e-14)
    torch.testing.assert_close(grad_x, expected_x)


@pytest.mark.parametrize("module", [ct.SSIMLoss(), ct.DSSIMLoss(win_size=7), ct.L1DSSIMLoss(weight=0.5),
                                    ct.MSSSIMLoss(weights=(0.3, 0.3, 0.4))])
def test_the_loss_modules_drive_an_image_to_its_target(module):
    target, _ = images((1, 3, 48, 48), dtype=torch.float32, seed=3)
    image = torch.full_like(target, 0.5).requires_grad_()
    optimizer = torch.optim.Adam([image], lr=0.05)
    first = float(module(image, target).detach())
    for _ in range(60):
        optimizer.zero_grad()
        loss = module(image, target)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(module(image, target)) < 0.2 * first
        assert float(module(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_bad_arguments_are_named():
    x, y = images()
    with pytest.raises(TypeError, match="takes no 'workspace'"):
        ct.ms_ssim(x, y, workspace=None)
    with pytest.raises(ValueError, match=r"axis=\(0, 1\) must include both spatial axes"):
        ct.ssim(x, y, axis=(0, 1))
    with pytest.raises(ValueError, match="axis=7 is out of range"):
        ct.ssim(x, y, axis=(2, 3, 7))
    with pytest.raises(TypeError, match="takes no 'out'"):
        ct.dssim(x, y, out=torch.empty(()))
    with pytest.raises(TypeError, match="y must be a torch.Tensor"):
        ct.ssim(x, y.numpy())
    with pytest.raises(TypeError, match="y has dtype torch.float32 but x has torch.float64"):
        ct.ssim(x, y.float())
    with pytest.raises(ValueError, match="does not broadcast"):
        ct.ssim(x, y[..., :-1])
    with pytest.raises(ValueError, match="cussim.torch takes CPU or CUDA tensors"):
        ct.ssim(x.to("meta"), y.to("meta"))
    with pytest.raises(ValueError, match="weight must be a number from 0 to 1"):
        ct.l1_dssim_loss(x, y, weight=1.5)
    with pytest.raises(ValueError, match="padding must be one of"):
        ct.SSIMLoss(padding="zeros")(x, y)


# ---- values per image or channel (axis), and PyTorch's (N, C, H, W) layout ----

@pytest.mark.parametrize("name,axis", [("ssim", (1, 2, 3)), ("dssim", (2, 3)), ("l1_dssim_loss", (-1, -2)),
                                       ("ms_ssim", (1, 2, 3))])
def test_axis_gives_one_differentiable_value_per_kept_index(name, axis):
    shape = (2, 3, 23, 24) if name == "ms_ssim" else (2, 3, 13, 15)
    options = {"weights": (0.5, 0.5), "win_size": 5} if name == "ms_ssim" else {"win_size": 5}
    x, y = images(shape)
    function = getattr(ct, name)
    values = function(x, y, axis=axis, **options)
    expected = getattr(cussim, name)(x.numpy(), y.numpy(), axis=axis, channel_axis=1, **options)
    assert values.shape == expected.shape
    np.testing.assert_allclose(values.numpy(), expected, rtol=0, atol=1e-14)
    # gradcheck differentiates every value separately: each image's gradient must be scaled by its own
    # (fast mode: random projections of the Jacobian, which a wrong per-value scale changes too)
    assert torch.autograd.gradcheck(lambda a, b: function(a, b, axis=axis, **options),
                                    (x.requires_grad_(), y.requires_grad_()), fast_mode=True)


def test_axis_with_a_reference_broadcast_over_kept_axes():
    x, _ = images((2, 3, 13, 15))
    y = images((1, 1, 13, 15), seed=1)[0]
    assert ct.ssim(x, y, axis=(2, 3), win_size=5).shape == (2, 3)
    assert torch.autograd.gradcheck(lambda a, b: ct.ssim(a, b, axis=(2, 3), win_size=5),
                                    (x.requires_grad_(), y.requires_grad_()), fast_mode=True)


@pytest.fixture(scope="module")
def astronaut_pair():
    """The astronaut as a 1 x 3 x 200 x 233 tensor in [0, 1], and a noisy copy."""
    data = pytest.importorskip("skimage.data")
    x = torch.tensor(data.astronaut()[100:300, 150:383] / 255.0).permute(2, 0, 1)[None]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    return x.contiguous(), (x + 0.1 * noise).clamp(0, 1)


def test_4d_tensors_are_nchw_so_torchmetrics_ms_ssim_pools_channels(astronaut_pair):
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = astronaut_pair
    value, grad_x, grad_y = gradients(lambda a, b: ct.ms_ssim(a, b, variant="torchmetrics"), x, y)
    theirs = gradients(lambda a, b: tm.multiscale_structural_similarity_index_measure(a, b, data_range=1.0), x, y)
    assert float(value) == pytest.approx(float(theirs[0]), abs=1e-8)
    for ours, expected in ((grad_x, theirs[1]), (grad_y, theirs[2])):
        assert float((ours - expected).norm() / expected.norm()) < 1e-6
    # each channel an image of its own: a different number (what 4-D tensors gave before)
    separate = ct.ms_ssim(x, y, variant="torchmetrics", channel_axis=None)
    assert abs(float(separate) - float(value)) > 1e-6
    # one value per image, pooled the same way
    per_image = tm.multiscale_structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    torch.testing.assert_close(ct.ms_ssim(x, y, variant="torchmetrics", axis=(1, 2, 3)), per_image, rtol=0, atol=1e-8)


def test_the_layout_changes_nothing_for_the_other_metrics():
    x, y = images((2, 3, 24, 28))
    for name in ("ssim", "dssim", "l1_dssim_loss"):
        function = getattr(ct, name)
        assert float(function(x, y)) == float(function(x, y, channel_axis=None))
    assert float(ct.ms_ssim(*images((2, 3, 40, 44)), weights=(0.5, 0.5))) == pytest.approx(
        float(ct.ms_ssim(*images((2, 3, 40, 44)), weights=(0.5, 0.5), channel_axis=None)), abs=1e-15)
    # other shapes keep cussim's rule: the last two axes are the plane, the rest batch axes
    x3, y3 = x[0], y[0]
    assert float(ct.ms_ssim(x3, y3, variant="torchmetrics", weights=(0.5, 0.5), win_size=5)) == pytest.approx(
        float(cussim.ms_ssim(x3.numpy(), y3.numpy(), variant="torchmetrics", weights=(0.5, 0.5), win_size=5)),
        abs=1e-15)


def test_torchmetrics_ssim_is_valid_ssim_of_reflect_padded_images(astronaut_pair):
    """The one-line switch docs/switching.rst gives for torchmetrics' structural_similarity_index_measure."""
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = astronaut_pair

    def switched(a, b):
        return ct.ssim(F.pad(a, (5, 5, 5, 5), mode="reflect"), F.pad(b, (5, 5, 5, 5), mode="reflect"),
                       padding="valid")

    value, grad_x, grad_y = gradients(switched, x, y)
    theirs = gradients(lambda a, b: tm.structural_similarity_index_measure(a, b, data_range=1.0), x, y)
    assert float(value) == pytest.approx(float(theirs[0]), abs=1e-12)
    torch.testing.assert_close(grad_x, theirs[1], rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(grad_y, theirs[2], rtol=1e-8, atol=1e-14)


# ---- fused_ssim: fused-ssim's (and fussim's) conventions ----

@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("window_size", [7, 9, 11])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_fused_ssim_is_the_plain_ssim_with_the_gradient_to_img1(padding, window_size, dtype, tolerance):
    img1, img2 = images((2, 3, 30, 33), dtype=dtype)
    value, grad_1, grad_2 = gradients(lambda a, b: ct.fused_ssim(a, b, padding=padding, window_size=window_size),
                                      img1, img2)
    plain, plain_1, _ = gradients(lambda a, b: plain_ssim(a, b, win_size=window_size, padding=padding), img1, img2)
    assert value.dtype == dtype and float(value) == pytest.approx(float(plain), abs=tolerance)
    assert float((grad_1 - plain_1).norm() / plain_1.norm()) < 100 * tolerance
    assert grad_2 is None  # fused-ssim never differentiates the reference


def test_fused_ssim_defaults_and_positional_arguments():
    img1, img2 = images((1, 3, 24, 26))
    assert float(ct.fused_ssim(img1, img2)) == pytest.approx(float(plain_ssim(img1, img2)), abs=1e-12)
    assert float(ct.fused_ssim(img1, img2, "valid", True)) == pytest.approx(
        float(plain_ssim(img1, img2, padding="valid")), abs=1e-12)


def test_fused_ssim_train_false_keeps_no_gradient_state(monkeypatch):
    calls = []
    evaluate = ct._functions._evaluate
    monkeypatch.setattr(ct._functions, "_evaluate", lambda *args: calls.append(args[-1]) or evaluate(*args))
    img1, img2 = images()
    img1.requires_grad_()
    value = ct.fused_ssim(img1, img2, train=False)
    assert not value.requires_grad and value.grad_fn is None
    assert float(value) == pytest.approx(float(plain_ssim(img1.detach(), img2)), abs=1e-12)
    ct.fused_ssim(img1, img2)
    assert calls == [False, True]


def test_fused_ssim_bad_arguments_are_named():
    img1, img2 = images()
    with pytest.raises(ValueError, match="padding must be 'same' or 'valid'"):
        ct.fused_ssim(img1, img2, padding="reflect")
    for window_size in (8, 17, 1, True, 11.0):
        with pytest.raises(ValueError, match="window_size must be an odd int from 3 to 15"):
            ct.fused_ssim(img1, img2, window_size=window_size)
    with pytest.raises(TypeError, match="img2 must be a torch.Tensor"):
        ct.fused_ssim(img1, img2.numpy())
    with pytest.raises(TypeError, match="img1 must be a torch.Tensor"):
        ct.fused_ssim(img1.tolist(), img2)


# ---- on a GPU: the same through the kernels, PyTorch's stream, every device ----

def _cuda_images(device="cuda", dtype=torch.float32, shape=(2, 3, 64, 72)):
    x, y = images(shape, dtype=dtype)
    return x.to(device), y.to(device)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ssim", "dssim", "ms_ssim", "l1_dssim_loss"])
def test_gpu_matches_the_cpu_path(name):
    x, y = _cuda_images(shape=(1, 3, 176, 180))
    function = getattr(ct, name)
    value, grad_x, grad_y = gradients(function, x, y)
    expected = gradients(function, x.cpu().double(), y.cpu().double())
    assert value.device == x.device and float(value) == pytest.approx(float(expected[0]), abs=2e-5)
    for ours, theirs in ((grad_x, expected[1]), (grad_y, expected[2])):
        assert float((ours.cpu().double() - theirs).norm() / theirs.norm()) < 1e-4


@pytest.mark.gpu
def test_gpu_non_contiguous_and_channels_last():
    x, y = _cuda_images(shape=(2, 3, 66, 70))
    for a, b in ((x.to(memory_format=torch.channels_last), y), (x[..., 1::2], y[..., ::2])):
        value, grad_x, grad_y = gradients(ct.ssim, a, b)
        plain, plain_x, plain_y = gradients(plain_ssim, a.contiguous(), b.contiguous())
        assert float(value) == pytest.approx(float(plain), abs=2e-5)
        torch.testing.assert_close(grad_x, plain_x, rtol=1e-3, atol=1e-7)
        torch.testing.assert_close(grad_y, plain_y, rtol=1e-3, atol=1e-7)


@pytest.mark.gpu
def test_gpu_work_on_a_side_stream():
    x, y = _cuda_images(shape=(1, 3, 512, 512))
    expected = gradients(ct.l1_dssim_loss, x, y)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        a = (x * 1.0).requires_grad_()  # made on the side stream, used at once there
        value = ct.l1_dssim_loss(a, y)
        value.backward()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert float(value) == float(expected[0])
    assert torch.equal(a.grad, expected[1])


@pytest.mark.gpu
def test_gpu_every_device():
    for index in range(torch.cuda.device_count()):
        x, y = _cuda_images(device=f"cuda:{index}")
        value, grad_x, _ = gradients(ct.ssim, x, y)
        assert value.device == x.device and grad_x.device == x.device
        assert float(value) == pytest.approx(float(plain_ssim(x.cpu().double(), y.cpu().double())), abs=2e-5)


@pytest.mark.parametrize("scale", [1024.0, 65536.0, 2.0**24])
def test_float16_gradient_is_scaled_in_float32_and_rounded_once(scale):
    """GradScaler's loss scales: the float16 gradient equals the float32 one cast once, and stays finite."""
    x, y = images((1, 3, 32, 32), dtype=torch.float32)
    x16 = x.half().requires_grad_()
    (ct.ssim(x16, y.half()) * scale).backward()
    x32 = x.half().float().requires_grad_()
    (ct.ssim(x32, y.half().float()) * scale).backward()
    assert torch.isfinite(x16.grad).all()
    assert torch.equal(x16.grad, x32.grad.half())


@pytest.mark.parametrize("name, options", [("ssim", {"win_size": 3}), ("dssim", {"win_size": 3}),
                                           ("ms_ssim", {"win_size": 3, "weights": (0.5, 0.5)}),
                                           ("l1_dssim_loss", {"win_size": 3})])
def test_a_second_derivative_is_a_clear_error(name, options):
    """Double backward: a clear error at the second backward, never a silently wrong or missing gradient."""
    x, y = images((1, 1, 6, 6))
    function = getattr(ct, name)
    x.requires_grad_()
    with pytest.raises(RuntimeError, match=f"cussim.torch.{name} has no second derivative"):
        torch.autograd.gradgradcheck(lambda a, b: function(a, b, **options), (x, y.requires_grad_()))
    # A gradient penalty, with the metric's own term beside it (the penalty must not silently vanish).
    weight = torch.tensor(2.0, dtype=x.dtype)
    (gradient,) = torch.autograd.grad(function(x, y, **options) * weight, x, create_graph=True)
    with pytest.raises(RuntimeError, match="has no second derivative"):
        ((gradient**2).sum() + function(x, y, **options)).backward()
    # create_graph=True alone still gives the first derivative
    (first,) = torch.autograd.grad(function(x, y, **options), x)
    assert torch.equal(gradient, 2 * first)


@pytest.mark.parametrize("numpy_backend", ["reference", "emulator"])
def test_any_layout_on_every_path(numpy_backend, monkeypatch):
    """A permuted 5-D tensor (batch axes in three stride levels) differentiates on the kernel path too."""
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", numpy_backend)
    x, y = images((4, 3, 5, 16, 16))
    permuted = x.permute(2, 1, 0, 3, 4)
    ssim = lambda a, b: ct.ssim(a, b, win_size=3)  # noqa: E731
    value, grad_x, grad_y = gradients(ssim, permuted, y.permute(2, 1, 0, 3, 4))
    expected = gradients(ssim, permuted.contiguous(), y.permute(2, 1, 0, 3, 4).contiguous())
    assert float(value) == pytest.approx(float(expected[0]), abs=1e-12)
    torch.testing.assert_close(grad_x, expected[1], rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_y, expected[2], rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("numpy_backend", ["reference", "emulator"])
def test_a_non_finite_pixel_gives_nan_gradients_wherever_it_reaches(numpy_backend, dtype, bad, monkeypatch):
    """An optimiser never steps on a bogus gradient: NaN at every pixel within 2r of the bad one, in x and y."""
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", numpy_backend)
    x, y = images((1, 1, 32, 32), dtype=dtype)
    x[0, 0, 10, 10] = bad
    value, grad_x, grad_y = gradients(lambda a, b: ct.ssim(a, b, win_size=7), x, y)
    reach = torch.zeros(32, 32, dtype=torch.bool)
    reach[4:17, 4:17] = True
    assert torch.isnan(value)
    for grad in (grad_x, grad_y):
        assert torch.equal(torch.isnan(grad[0, 0]), reach)


# ---- ssim_map: the differentiable map ----

MAP_OPTIONS = [{}, {"padding": "valid"}, {"padding": "reflect", "win_size": 7},
               {"window": "uniform", "win_size": 5, "sample_covariance": True}]


@pytest.mark.parametrize("options", MAP_OPTIONS)
def test_gradcheck_ssim_map(options):
    """The backward takes any incoming gradient: gradcheck draws one per map pixel."""
    x, y = images((1, 2, 13, 15))
    assert torch.autograd.gradcheck(lambda a, b: ct.ssim_map(a, b, **options),
                                    (x.requires_grad_(), y.requires_grad_()))


@pytest.mark.parametrize("options", MAP_OPTIONS)
def test_ssim_map_on_the_kernels_is_the_reference(options, monkeypatch):
    """The kernels' backward of the map (partial maps times the incoming gradient) against the float64 path."""
    x, y = images((2, 2, 21, 19))
    def weighted(a, b):
        S = ct.ssim_map(a, b, **options)
        return (S * torch.linspace(-1, 2, S.shape[-1], dtype=S.dtype)).sum()

    expected = gradients(weighted, x, y)
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    for got, want in zip(gradients(weighted, x, y), expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_ssim_map_dtypes_and_a_broadcast_reference(dtype):
    """Half maps are computed in float32; gradients come back in the input's dtype, y's summed to its shape."""
    x, y = images((2, 3, 20, 24))
    weights = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    expected = gradients(lambda a, b: (ct.ssim_map(a, b) * weights).sum(), x, y[:1])
    value, grad_x, grad_y = gradients(lambda a, b: (ct.ssim_map(a, b) * weights.float()).sum(), x.to(dtype),
                                      y[:1].to(dtype))
    assert ct.ssim_map(x.to(dtype), y.to(dtype)).dtype == torch.float32
    assert grad_x.dtype == grad_y.dtype == dtype and grad_y.shape == (1, 3, 20, 24)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    assert float(value) == pytest.approx(float(expected[0]), rel=tolerance)
    for got, want in zip((grad_x, grad_y), expected[1:]):
        assert float((got.double() - want).norm() / want.norm()) < tolerance


def test_ssim_map_is_torchmetrics_full_image(astronaut_pair):
    """torchmetrics' return_full_image map: the valid map of reflect-padded images (as docs/switching.rst says
    for the mean), and its gradient under a per-pixel weighting."""
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = astronaut_pair
    weights = torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)

    def switched(a, b):
        pad = lambda t: F.pad(t, (5, 5, 5, 5), mode="reflect")  # noqa: E731
        return (ct.ssim_map(pad(a), pad(b), padding="valid") * weights).sum()

    def theirs(a, b):
        return (tm.structural_similarity_index_measure(a, b, data_range=1.0, return_full_image=True)[1]
                * weights).sum()

    ours, expected = gradients(switched, x, y), gradients(theirs, x, y)
    assert float(ours[0]) == pytest.approx(float(expected[0]), rel=1e-12)
    for got, want in zip(ours[1:], expected[1:]):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-13)


# ---- a window per axis, as torchmetrics' kernel_size and sigma sequences ----

def reflect_padded(radii):
    """A function padding the last len(radii) axes by their radii (first axis first) with whole-sample reflection,
    as torchmetrics extends an image."""
    widths = [w for r in reversed(radii) for w in (r, r)]
    return lambda t: F.pad(t, widths, mode="reflect")


@pytest.mark.parametrize("theirs, ours, radii", [
    (dict(sigma=(1.5, 0.8)), dict(win_size=(11, 7), sigma=(1.5, 0.8)), (5, 3)),
    (dict(gaussian_kernel=False, kernel_size=(7, 3)), dict(win_size=(7, 3), window="uniform"), (3, 1)),
], ids=["gaussian", "uniform"])
def test_a_window_per_axis_is_torchmetrics(astronaut_pair, theirs, ours, radii):
    """torchmetrics' anisotropic windows (the first value for H): the valid SSIM, map and gradients of the
    images padded by each axis' radius, as docs/switching.rst says."""
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = astronaut_pair
    pad = reflect_padded(radii)
    value, grad_x, grad_y = gradients(lambda a, b: ct.ssim(pad(a), pad(b), padding="valid", **ours), x, y)
    expected = gradients(lambda a, b: tm.structural_similarity_index_measure(a, b, data_range=1.0, **theirs), x, y)
    assert float(value) == pytest.approx(float(expected[0]), abs=1e-12)
    torch.testing.assert_close(grad_x, expected[1], rtol=1e-8, atol=1e-14)
    torch.testing.assert_close(grad_y, expected[2], rtol=1e-8, atol=1e-14)
    S = ct.ssim_map(pad(x), pad(y), padding="valid", **ours)
    full = tm.structural_similarity_index_measure(x, y, data_range=1.0, return_full_image=True, **theirs)[1]
    torch.testing.assert_close(S, full, rtol=0, atol=1e-12)


def test_a_window_per_axis_of_volumes_is_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = images((1, 2, 16, 19, 17), seed=3)
    sigma, win_size = (1.5, 0.8, 1.0), (11, 7, 9)  # the sizes torchmetrics gives these sigmas: 2 int(3.5 s + 0.5) + 1
    pad = reflect_padded((5, 3, 4))
    value, grad_x, _ = gradients(lambda a, b: ct.ssim(pad(a), pad(b), padding="valid", win_size=win_size, sigma=sigma,
                                                      spatial_dims=3), x, y)
    expected = gradients(lambda a, b: tm.structural_similarity_index_measure(a, b, data_range=1.0, sigma=sigma,
                                                                             kernel_size=win_size), x, y)
    assert float(value) == pytest.approx(float(expected[0]), abs=1e-12)
    torch.testing.assert_close(grad_x, expected[1], rtol=1e-8, atol=1e-14)


def test_ms_ssim_with_a_window_per_axis_is_torchmetrics(astronaut_pair):
    tm = pytest.importorskip("torchmetrics.functional.image")
    x, y = astronaut_pair
    weights = (0.25, 0.25, 0.5)  # torchmetrics holds its betas in float32: these it holds exactly
    value, grad_x, grad_y = gradients(lambda a, b: ct.ms_ssim(a, b, variant="torchmetrics", win_size=(11, 7),
                                                              sigma=(1.5, 0.8), weights=weights), x, y)
    theirs = gradients(lambda a, b: tm.multiscale_structural_similarity_index_measure(
        a, b, data_range=1.0, kernel_size=(11, 7), sigma=(1.5, 0.8), betas=weights), x, y)
    assert float(value) == pytest.approx(float(theirs[0]), abs=1e-12)
    for ours, expected in ((grad_x, theirs[1]), (grad_y, theirs[2])):
        assert float((ours - expected).norm() / expected.norm()) < 1e-10


def test_the_loss_modules_take_a_window_per_axis():
    x, y = images((1, 2, 20, 22))
    options = dict(win_size=(9, 5), sigma=(1.5, 0.7))
    for module, function in ((ct.SSIMLoss(**options), lambda a, b: 1 - ct.ssim(a, b, **options)),
                             (ct.DSSIMLoss(**options), lambda a, b: ct.dssim(a, b, **options)),
                             (ct.L1DSSIMLoss(weight=0.4, **options),
                              lambda a, b: ct.l1_dssim_loss(a, b, weight=0.4, **options))):
        assert float(module(x, y)) == float(function(x, y))
    assert repr(ct.SSIMLoss(**options)) == "SSIMLoss(win_size=(9, 5), sigma=(1.5, 0.7))"


def test_ssim_map_takes_no_outputs_and_no_second_derivative():
    x, y = images((1, 1, 12, 12))
    with pytest.raises(TypeError, match="ssim_map takes no 'out'"):
        ct.ssim_map(x, y, out=x)
    a = x.clone().requires_grad_()
    (first,) = torch.autograd.grad(ct.ssim_map(a, y, win_size=3).sum(), a, create_graph=True)
    with pytest.raises(RuntimeError, match="cussim.torch.ssim_map has no second derivative"):
        first.sum().backward()


def test_images_on_two_devices_are_refused():
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="x is on cpu and y on meta; put both on one device"):
        ct.ssim(x, torch.empty(x.shape, dtype=x.dtype, device="meta"))
