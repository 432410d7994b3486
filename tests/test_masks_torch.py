"""Masks in cussim.torch (docs/spec.rst section 9): values and gradients to x, y and the mask (mean mode)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cussim  # noqa: E402
import cussim.torch as ct  # noqa: E402
from cussim.torch import pytorch_msssim  # noqa: E402


def _images(shape=(2, 3, 20, 22), seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, dtype=torch.float64, generator=generator)
    return x, (x + 0.2 * torch.randn(shape, dtype=torch.float64, generator=generator)).clamp(0, 1)


def _mask(shape, seed=1, low=0.0):
    """Weights in [low, 1); with low=0 about a quarter are exactly 0."""
    generator = torch.Generator().manual_seed(seed)
    m = low + (1 - low) * torch.rand(shape, dtype=torch.float64, generator=generator)
    return m if low else torch.where(m < 0.25, 0.0, m)


@pytest.mark.parametrize("name", ["ssim", "dssim", "l1_dssim_loss"])
@pytest.mark.parametrize("mask_mode", ["mean", "normalized"])
def test_values_and_image_gradients_are_cussims(name, mask_mode):
    x, y = _images()
    m = _mask((2, 1, 20, 22))
    render = x.clone().requires_grad_()
    value = getattr(ct, name)(render, y, mask=m, mask_mode=mask_mode, win_size=7)
    value.backward()
    gradient_fn = getattr(cussim, f"{name}_with_gradient")
    expected, grad = gradient_fn(x.numpy(), y.numpy(), mask=m.numpy(), mask_mode=mask_mode, win_size=7,
                                 channel_axis=1)
    assert np.isclose(float(value.detach()), float(expected), rtol=1e-14)
    np.testing.assert_allclose(render.grad.numpy(), grad, rtol=1e-12)


@pytest.mark.parametrize("name, options", [
    ("ssim", {}), ("dssim", dict(padding="valid")), ("ssim", dict(padding="reflect", axis=(1, 2, 3))),
    ("l1_dssim_loss", dict(weight=0.3)), ("dssim", dict(axis=(2, 3), mask_mode="mean")),
])
@pytest.mark.parametrize("mask_shape", [(11, 12), (2, 1, 11, 12)])
def test_gradients_to_images_and_mask_match_finite_differences(name, options, mask_shape):
    x, y = _images((2, 1, 11, 12))
    x.requires_grad_()
    y.requires_grad_()
    m = _mask(mask_shape, low=0.2).requires_grad_()  # weights stay positive under gradcheck's steps
    function = getattr(ct, name)
    assert torch.autograd.gradcheck(lambda a, b, w: function(a, b, mask=w, win_size=5, **options), (x, y, m),
                                    eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("padding", ["valid", "reflect"])
def test_the_mask_gradient_crops_each_axis_by_its_own_radius(padding):
    x, y = _images((1, 1, 9, 10))
    m = _mask((9, 10), low=0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, w: ct.ssim(a, b, mask=w, win_size=(5, 3), sigma=(1.2, 0.6),
                                                            padding=padding),
                                    (x.requires_grad_(), y.requires_grad_(), m), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_the_mask_gradient_is_the_spec_formula():
    x, y = _images((1, 1, 18, 18))
    m = _mask((18, 18), low=0.1).requires_grad_()
    value = ct.ssim(x, y, mask=m)
    value.backward()
    S = torch.as_tensor(cussim.ssim_map(x.numpy(), y.numpy()))[0, 0]
    expected = (S - value.detach()) / m.detach().sum()
    torch.testing.assert_close(m.grad, expected, rtol=1e-12, atol=1e-15)


def test_a_grad_requiring_mask_is_refused_where_it_has_no_gradient():
    x, y = _images()
    m = _mask((20, 22)).requires_grad_()
    with pytest.raises(ValueError, match=r"mask_mode='normalized' has no gradient .* pass mask.detach\(\)"):
        ct.ssim(x, y, mask=m, mask_mode="normalized")
    big_x, big_y = _images((1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"ms_ssim has no gradient with respect to the mask: pass mask.detach\(\)"):
        ct.ms_ssim(big_x, big_y, mask=_mask((64, 64)).requires_grad_(), weights=(0.5, 0.5), win_size=7)
    assert torch.isfinite(ct.ssim(x, y, mask=m.detach(), mask_mode="normalized"))
    with torch.no_grad():
        assert torch.isfinite(ct.ssim(x, y, mask=m, mask_mode="normalized"))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        ct.ssim(x, y, mask=m.detach().numpy())


def test_modules_take_a_mask_per_call():
    x, y = _images()
    m = _mask((20, 22))
    assert float(ct.SSIMLoss(win_size=7)(x, y, m)) == float(1 - ct.ssim(x, y, mask=m, win_size=7))
    assert float(ct.DSSIMLoss(mask_mode="normalized")(x, y, mask=m)) == float(
        ct.dssim(x, y, mask=m, mask_mode="normalized"))
    assert float(ct.L1DSSIMLoss(weight=0.4)(x, y, m)) == float(ct.l1_dssim_loss(x, y, weight=0.4, mask=m))
    big_x, big_y = _images((1, 2, 64, 64))
    loss = ct.MSSSIMLoss(weights=(0.5, 0.5), win_size=7)
    assert float(loss(big_x, big_y, _mask((64, 64)))) == pytest.approx(
        1 - float(cussim.ms_ssim(big_x.numpy(), big_y.numpy(), mask=_mask((64, 64)).numpy(), weights=(0.5, 0.5),
                                 win_size=7, channel_axis=1)), abs=1e-12)


def test_half_precision_images_and_masks():
    x, y = _images()
    m = _mask((20, 22)) > 0
    render = x.to(torch.float16).requires_grad_()
    loss = ct.l1_dssim_loss(render, y.to(torch.float16), mask=m)
    loss.backward()
    assert loss.dtype == torch.float32 and render.grad.dtype == torch.float16
    expected = cussim.l1_dssim_loss(x.to(torch.float16).float().numpy(), y.to(torch.float16).float().numpy(),
                                    mask=m.numpy(), channel_axis=1)
    assert abs(float(loss.detach()) - float(expected)) < 1e-6
    weights = _mask((20, 22)).to(torch.bfloat16)
    assert torch.isfinite(ct.ssim(x.float(), y.float(), mask=weights))


def test_pytorch_msssim_functions_take_a_mask_as_an_extension():
    X, Y = _images((2, 3, 64, 64))
    m = _mask((2, 1, 64, 64))
    per_image = pytorch_msssim.ssim(X, Y, data_range=1.0, size_average=False, mask=m)
    expected = cussim.ssim(X.numpy(), Y.numpy(), padding="valid", mask=m.numpy(), axis=(2, 3)).mean(axis=1)
    np.testing.assert_allclose(per_image.numpy(), expected, rtol=1e-13)
    assert float(pytorch_msssim.ssim(X, Y, data_range=1.0)) == float(
        pytorch_msssim.ssim(X, Y, data_range=1.0, mask=torch.ones(64, 64)))
    value = pytorch_msssim.ms_ssim(X, Y, data_range=1.0, weights=[0.5, 0.5], win_size=7, mask=m)
    expected = cussim.ms_ssim(X.numpy(), Y.numpy(), weights=(0.5, 0.5), win_size=7, mask=m.numpy(), axis=(2, 3))
    assert float(value) == pytest.approx(float(expected.mean()), rel=1e-13)


def test_a_mask_on_another_device_and_a_mask_for_ssim_map_are_refused():
    x, y = _images()
    with pytest.raises(ValueError, match="mask is on meta and x on cpu; put them on one device"):
        ct.ssim(x, y, mask=torch.ones((20, 22), dtype=x.dtype, device="meta"))
    with pytest.raises(ValueError, match=r"ssim_map takes no mask yet: weight the map it returns, or use "
                                         r"cussim.ssim_map\(x, y, mask=..., mask_mode='normalized'\)"):
        ct.ssim_map(x, y, mask=_mask((20, 22)))
