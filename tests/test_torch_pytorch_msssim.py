"""cussim.torch.pytorch_msssim against pytorch-msssim 1.0 itself: values and gradients on real images, every
argument, the modules, and the errors where cussim refuses what pytorch-msssim would compute differently."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
original = pytest.importorskip("pytorch_msssim")
dropin = pytest.importorskip("cussim.torch.pytorch_msssim")
skimage_data = pytest.importorskip("skimage.data")

# pytorch-msssim builds its default window in float32 before casting: values agree to ~2e-6 then, and to
# rounding when both are handed the same float64 window
LOOSE, TIGHT = (5e-6, 1e-4), (1e-11, 1e-9)  # (absolute on values, relative L2 on gradients)


def window64(size=11, sigma=1.5):
    """A float64 Gaussian window as pytorch-msssim takes it for 3 channels: (3, 1, 1, size)."""
    offsets = torch.arange(size, dtype=torch.float64) - size // 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (taps / taps.sum()).expand(3, 1, 1, size)


@pytest.fixture(scope="module")
def photos():
    """Two real photographs as a 2 x 3 x 176 x 183 float64 batch in [0, 255] (odd width), and each one
    compressed to 16 grey levels per channel: the reference and the "rendered" images."""
    crops = [skimage_data.astronaut()[40:216, 120:303], skimage_data.coffee()[150:326, 200:383]]
    x = torch.tensor(np.stack([c.transpose(2, 0, 1) for c in crops]), dtype=torch.float64)
    return x, torch.round(x / 17) * 17


def both(function_pair, x, y, **kwargs):
    """[(value, grad X, grad Y)] of each function on the same X and Y, both differentiated."""
    results = []
    for function in function_pair:
        a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
        value = function(a, b, **kwargs)
        value.sum().backward()
        results.append((value.detach(), a.grad, b.grad))
    return results


def assert_same(ours, theirs, tolerance):
    value_tol, grad_tol = tolerance
    assert ours[0].shape == theirs[0].shape and ours[0].dtype == theirs[0].dtype
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=value_tol)
    for mine, expected in zip(ours[1:], theirs[1:]):
        assert float((mine - expected).norm() / expected.norm()) < grad_tol


SSIM_CASES = {
    "defaults": ({}, LOOSE),
    "win": ({"win": window64()}, TIGHT),
    "win_size_sigma_of_win": ({"win": window64(9, 2.0)}, TIGHT),
    "size_average": ({"win": window64(), "size_average": False}, TIGHT),
    "win_size_sigma": ({"win_size": 7, "win_sigma": 1.0}, LOOSE),
    "data_range": ({"win": window64(), "data_range": 100.0}, TIGHT),
    "K": ({"win": window64(), "K": (0.02, 0.05)}, TIGHT),
    "nonnegative_ssim": ({"win": window64(), "nonnegative_ssim": True, "size_average": False}, TIGHT),
    "positional": ((255, False, 7, 1.0, None, [0.01, 0.03], True), LOOSE),
}


@pytest.mark.parametrize("case", SSIM_CASES)
def test_ssim_matches_pytorch_msssim(photos, case):
    arguments, tolerance = SSIM_CASES[case]
    x, y = photos
    if case == "nonnegative_ssim":  # one image against its negative: SSIM < 0 in every channel, relu'd to 0
        y = torch.stack([y[0], 255 - x[1]])
    call = (lambda f: lambda a, b: f(a, b, *arguments)) if isinstance(arguments, tuple) else (lambda f: f)
    kwargs = {} if isinstance(arguments, tuple) else arguments
    ours, theirs = both((call(dropin.ssim), call(original.ssim)), x, y, **kwargs)
    assert_same(ours, theirs, tolerance)
    if case == "nonnegative_ssim":
        assert float(ours[0][1]) == 0 and float(ours[0][0]) > 0.5


@pytest.fixture(scope="module")
def volumes():
    """Two smooth random 2-channel volumes, (2, 2, 17, 20, 23) float64 in [0, 255], and noisy copies."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 17, 20, 23, dtype=torch.float64, generator=generator)
    x = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False) * 255
    noise = torch.randn(x.shape, dtype=torch.float64, generator=generator)
    return x, (x + 12 * noise).clamp(0, 255)


VOLUME_CASES = {
    "defaults": ({}, LOOSE),
    "win": ({"win": window64()[:2, None]}, TIGHT),  # (C, 1, 1, 1, size), the 3-D convolution's window
    "size_average-K-data_range": ({"win": window64(7, 1.0)[:2, None], "size_average": False, "K": (0.02, 0.05),
                                   "data_range": 300.0}, TIGHT),
    "win_size_sigma": ({"win_size": 5, "win_sigma": 0.8}, LOOSE),
}


@pytest.mark.parametrize("case", VOLUME_CASES)
def test_ssim_of_volumes_matches_pytorch_msssim(volumes, case):
    arguments, tolerance = VOLUME_CASES[case]
    ours, theirs = both((dropin.ssim, original.ssim), *volumes, **arguments)
    assert_same(ours, theirs, tolerance)
    module_ours, module_theirs = both((dropin.SSIM(channel=2, spatial_dims=3), original.SSIM(channel=2,
                                                                                           spatial_dims=3)), *volumes)
    assert_same(module_ours, module_theirs, LOOSE)


@pytest.mark.parametrize("weights", [None, [0.3, 0.3, 0.4]])
def test_ms_ssim_of_volumes_matches_pytorch_msssim(weights):
    """pytorch-msssim asks for a side above 16 (win_size - 1) whatever the weights: 33 for a 3-tap window."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(2, 2, 33, 34, 35, dtype=torch.float64, generator=generator) * 255
    y = (x + 20 * torch.randn(x.shape, dtype=torch.float64, generator=generator)).clamp(0, 255)
    window = window64(3, 1.5)[:2, None]
    ours, theirs = both((dropin.ms_ssim, original.ms_ssim), x, y, win=window, win_size=3, weights=weights,
                        size_average=False)
    assert_same(ours, theirs, TIGHT)
    modules = (dropin.MS_SSIM(channel=2, spatial_dims=3, win_size=3), original.MS_SSIM(channel=2, spatial_dims=3,
                                                                                       win_size=3))
    assert_same(*both(modules, x, y), LOOSE)


MS_SSIM_CASES = {
    "defaults": ({}, LOOSE),
    "win": ({"win": window64()}, TIGHT),
    "size_average": ({"win": window64(), "size_average": False}, TIGHT),
    "win_size_sigma": ({"win_size": 9, "win_sigma": 2.0}, LOOSE),
    "data_range": ({"win": window64(), "data_range": 1000.0}, TIGHT),
    "K": ({"win": window64(), "K": [0.03, 0.1]}, TIGHT),
    "weights": ({"win": window64(), "weights": [0.2, 0.3, 0.5]}, TIGHT),
    "weights_tensor": ({"win": window64(), "weights": torch.tensor([0.1, 0.2, 0.3, 0.4])}, TIGHT),
    "positional": ((255, False, 11, 1.5, None, [0.5, 0.5], (0.01, 0.03)), LOOSE),
}


@pytest.mark.parametrize("case", MS_SSIM_CASES)
def test_ms_ssim_matches_pytorch_msssim(photos, case):
    arguments, tolerance = MS_SSIM_CASES[case]
    x, y = photos
    call = (lambda f: lambda a, b: f(a, b, *arguments)) if isinstance(arguments, tuple) else (lambda f: f)
    kwargs = {} if isinstance(arguments, tuple) else arguments
    ours, theirs = both((call(dropin.ms_ssim), call(original.ms_ssim)), x, y, **kwargs)
    assert_same(ours, theirs, tolerance)


MODULE_CASES = [
    ("SSIM", {}),
    ("SSIM", {"data_range": 255.0, "size_average": False, "win_size": 9, "win_sigma": 1.2, "channel": 3,
              "spatial_dims": 2, "K": (0.015, 0.04), "nonnegative_ssim": True}),
    ("MS_SSIM", {}),
    ("MS_SSIM", {"data_range": 300, "size_average": False, "win_size": 7, "win_sigma": 1.0, "channel": 3,
                 "spatial_dims": 2, "weights": [0.25, 0.25, 0.5], "K": (0.01, 0.05)}),
]


@pytest.mark.parametrize("name,kwargs", MODULE_CASES)
def test_modules_match_pytorch_msssim(photos, name, kwargs):
    x, y = photos
    ours_module, their_module = getattr(dropin, name)(**kwargs), getattr(original, name)(**kwargs)
    ours, theirs = both((ours_module, their_module), x, y)
    assert_same(ours, theirs, LOOSE)
    assert isinstance(ours_module, torch.nn.Module) and name in repr(ours_module)


def test_float32_images(photos):
    x, y = (t.float() for t in photos)
    ours = dropin.ms_ssim(x, y)
    assert ours.dtype == torch.float32
    assert float(ours) == pytest.approx(float(original.ms_ssim(*photos)), abs=1e-5)
    assert float(dropin.ssim(x, y)) == pytest.approx(float(original.ssim(*photos)), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_results_have_the_inputs_dtype_as_in_pytorch_msssim(photos, dtype):
    """float16 and bfloat16 compute in float32 and come back rounded to the inputs' dtype, as the original's do;
    the gradient too."""
    x, y = (t.to(dtype) for t in photos)
    calls = [lambda a, b: dropin.ssim(a, b), lambda a, b: dropin.ssim(a, b, size_average=False),
             lambda a, b: dropin.ms_ssim(a, b), dropin.SSIM(), dropin.MS_SSIM(size_average=False)]
    for call in calls:
        a = x.clone().requires_grad_()
        value = call(a, y)
        value.sum().backward()
        assert value.dtype == a.grad.dtype == dtype
    assert float(dropin.ssim(x, y)) == pytest.approx(float(original.ssim(x.double(), y.double())), abs=1e-2)


def test_trailing_axes_of_size_one_are_dropped_as_pytorch_msssim_does(photos):
    x, y = photos[0][:1, :, :64, :70], photos[1][:1, :, :64, :70]
    for shape in ((1, 3, 64, 70, 1), (1, 3, 1, 64, 70)):
        a, b = x.reshape(shape), y.reshape(shape)
        torch.testing.assert_close(dropin.ssim(a, b), original.ssim(a, b), rtol=0, atol=5e-6)


def test_importable_both_ways():
    code = ("import cussim.torch.pytorch_msssim as a; from cussim.torch import pytorch_msssim as b; "
            "import cussim.torch as ct; print(a is b is ct.pytorch_msssim, callable(ct.fused_ssim))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout == "True True\n"


def test_what_cussim_refuses_is_named(photos):
    x, y = photos
    with pytest.raises(ValueError, match=r"should have the same dimensions.*must have one shape"):
        dropin.ssim(x, y[:1])
    with pytest.raises(ValueError, match=r"volumes are 2x176x183; MS-SSIM .* needs a smaller side of at least 161"):
        dropin.ms_ssim(x[:, :, None].expand(2, 3, 2, 176, 183), y[:, :, None].expand(2, 3, 2, 176, 183))
    with pytest.raises(ValueError, match=r"should be 4-d or 5-d tensors, but got \(3, 176, 183\)"):
        dropin.ssim(x[0], y[0])
    with pytest.raises(TypeError, match="Y must be a torch.Tensor"):
        dropin.ssim(x, y.numpy())
    with pytest.raises(ValueError, match="win_size must be odd, got 10"):
        dropin.ssim(x, y, win_size=10)
    with pytest.raises(ValueError, match="Window size should be odd: win has 10 taps"):
        dropin.ssim(x, y, win=torch.ones(1, 1, 10) / 10)
    for not_taps in (window64().numpy(), torch.tensor(1.0)):
        with pytest.raises(TypeError, match="win must be a tensor of 1-D window taps"):
            dropin.ssim(x, y, win=not_taps)
    triangle = torch.tensor([1.0, 2, 3, 4, 5, 6, 5, 4, 3, 2, 1]) / 36
    with pytest.raises(ValueError, match="win must be a normalised Gaussian window"):
        dropin.ssim(x, y, win=triangle.expand(3, 1, 1, 11))
    with pytest.raises(ValueError, match="win must be a normalised Gaussian window"):
        dropin.ms_ssim(x, y, win=2 * window64())
    with pytest.raises(ValueError, match="different windows for different channels"):
        dropin.ssim(x, y, win=torch.cat([window64()[:2], window64(11, 2.0)[:1]]))
    with pytest.raises(ValueError, match=r"K must be a pair \(K1, K2\)"):
        dropin.ssim(x, y, K=0.01)
    with pytest.raises(ValueError, match="smaller than the 11x11 window"):
        dropin.ssim(x[..., :8], y[..., :8])
    with pytest.raises(ValueError, match="needs a smaller side of at least"):
        dropin.ms_ssim(x[..., :100], y[..., :100])
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        dropin.MS_SSIM(spatial_dims=1)
    with pytest.raises(ValueError, match="channel must be a positive int"):
        dropin.SSIM(channel=0)
    with pytest.raises(ValueError, match="win_size must be from 3 to 15, got 17"):
        dropin.MS_SSIM(win_size=17)
    # pytorch-msssim builds one 1-D window (a sequence fails there): one per axis is cussim.torch.ssim's
    per_axis = "takes one win_(size|sigma) for every axis, as the original does.*cussim.torch.ssim"
    with pytest.raises(TypeError, match=per_axis):
        dropin.ssim(x, y, win_size=(11, 7))
    with pytest.raises(TypeError, match=per_axis):
        dropin.ms_ssim(x, y, win_sigma=[1.5, 0.8])
    with pytest.raises(TypeError, match=per_axis):
        dropin.SSIM(win_size=(11, 7))
    with pytest.raises(ValueError, match="data_range must be a positive finite number"):
        dropin.SSIM(data_range=0)
