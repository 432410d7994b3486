"""cussim.torch on 5-D tensors (N, C, D, H, W): volumes, against gradcheck and a plain PyTorch 3-D SSIM."""

import pytest

import cussim

torch = pytest.importorskip("torch")
ct = pytest.importorskip("cussim.torch")
F = torch.nn.functional
from test_torch import gradients, images  # noqa: E402  (after the importorskip of torch)


def plain_ssim3d(x, y, win_size=11, sigma=1.5, K1=0.01, K2=0.03):
    """SSIM of volumes written in PyTorch: depthwise conv3d with the Gaussian window, zero padding."""
    r = win_size // 2
    taps = torch.exp(-((torch.arange(win_size, dtype=torch.float64) - r) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).to(x.dtype)
    channels = x.shape[1]
    window = (taps[:, None, None] * taps[None, :, None] * taps[None, None, :]).expand(channels, 1, *[win_size] * 3)

    def blur(a):
        return F.conv3d(a, window, padding=r, groups=channels)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = K1**2, K2**2
    return ((2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2))).mean()


@pytest.mark.parametrize("name", ["ssim", "dssim"])
@pytest.mark.parametrize("options", [{"win_size": 3}, {"win_size": 5, "padding": "reflect"},
                                     {"window": "uniform", "win_size": 3, "padding": "valid"}])
def test_gradcheck_on_volumes(name, options):
    x, y = images((1, 2, 5, 6, 7))
    function = getattr(ct, name)
    assert torch.autograd.gradcheck(lambda a, b: function(a, b, **options), (x.requires_grad_(), y.requires_grad_()))


def test_gradcheck_l1_dssim_loss_on_volumes():
    x, y = images((1, 1, 5, 6, 7))
    assert torch.autograd.gradcheck(lambda a, b: ct.l1_dssim_loss(a, b, weight=0.3, win_size=3),
                                    (x.requires_grad_(), y.requires_grad_()))


def test_volumes_match_a_plain_pytorch_ssim_with_both_gradients():
    x, y = images((2, 2, 12, 13, 14))
    ours = gradients(ct.ssim, x, y)
    theirs = gradients(plain_ssim3d, x, y)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=1e-10)
    for mine, expected in zip(ours[1:], theirs[1:]):
        assert float((mine - expected).norm() / expected.norm()) < 1e-9


def test_five_d_tensors_are_volumes_with_channels_on_axis_1():
    x, y = images((2, 3, 12, 12, 13))
    per_volume = ct.ssim(x, y, axis=(1, 2, 3, 4))
    native = cussim.ssim(x.numpy(), y.numpy(), spatial_dims=3, channel_axis=1, axis=(1, 2, 3, 4))
    torch.testing.assert_close(per_volume, torch.from_numpy(native), rtol=0, atol=1e-12)
    # spatial_dims=2 still reads a 5-D tensor as a batch of planes
    planes = ct.ssim(x, y, spatial_dims=2)
    assert abs(float(planes) - float(cussim.ssim(x.numpy(), y.numpy()))) < 1e-12


def test_loss_modules_and_float32(monkeypatch):
    monkeypatch.setenv("CUSSIM_NUMPY_BACKEND", "emulator")
    x, y = images((1, 2, 12, 12, 12), torch.float32)
    loss = ct.SSIMLoss()(x.requires_grad_(), y)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.shape == x.shape
    assert abs(loss.item() - (1 - float(plain_ssim3d(x.detach().double(), y.double())))) < 1e-5
    value, grad_x, grad_y = gradients(lambda a, b: ct.l1_dssim_loss(a, b, weight=0.2), x, y)
    expected = gradients(lambda a, b: 0.8 * (a - b).abs().mean() + 0.2 * (1 - plain_ssim3d(a, b)), x.double(),
                         y.double())
    assert abs(float(value) - float(expected[0])) < 1e-5
    for mine, theirs in zip((grad_x, grad_y), expected[1:]):
        assert float((mine.double() - theirs).norm() / theirs.norm()) < 1e-4


def test_gradcheck_ms_ssim_on_volumes():
    x, y = images((1, 2, 9, 10, 11))
    assert torch.autograd.gradcheck(lambda a, b: ct.ms_ssim(a, b, win_size=3, weights=(0.5, 0.5)),
                                    (x.requires_grad_(), y.requires_grad_()), fast_mode=True)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_fused_ssim3d_is_fused_ssims_volume_convention(padding):
    x, y = images((2, 1, 12, 13, 14))
    ours = gradients(lambda a, b: ct.fused_ssim3d(a, b, padding=padding), x, y)
    native, grad = cussim.ssim_with_gradient(x.numpy(), y.numpy(), padding=padding, spatial_dims=3)
    assert abs(float(ours[0]) - float(native)) < 1e-12 and ours[2] is None  # img2 is never differentiated
    torch.testing.assert_close(ours[1], torch.from_numpy(grad), rtol=0, atol=1e-12)
    if padding == "same":
        torch.testing.assert_close(ours[0], plain_ssim3d(x, y), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match=r"fused_ssim3d takes \(N, C, D, H, W\) volumes"):
        ct.fused_ssim3d(x[0], y[0])
