"""Masks in cussim.dask (docs/spec.rst section 9): equal to the in-memory results whatever the chunks."""

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import cussim  # noqa: E402
import cussim.dask as cd  # noqa: E402

RNG = np.random.default_rng(5)
X = RNG.random((2, 40, 46))
Y = np.clip(X + 0.2 * RNG.standard_normal(X.shape), 0, 1)
M = np.where(RNG.random((40, 46)) < 0.3, 0.0, RNG.random((40, 46)))


@pytest.mark.parametrize("padding", ["same", "valid", "reflect"])
@pytest.mark.parametrize("mask_mode", ["mean", "normalized"])
@pytest.mark.parametrize("dask_mask", [False, True], ids=["numpy-mask", "dask-mask"])
def test_masked_means_and_gradients_equal_in_memory(padding, mask_mode, dask_mask):
    dx, dy = da.from_array(X, chunks=(1, 15, 17)), da.from_array(Y, chunks=(2, 20, 23))
    mask = da.from_array(M, chunks=(13, 16)) if dask_mask else M
    kwargs = dict(win_size=7, padding=padding, mask_mode=mask_mode, axis=(1, 2))
    np.testing.assert_allclose(cd.ssim(dx, dy, mask=mask, **kwargs).compute(),
                               cussim.ssim(X, Y, mask=M, **kwargs), rtol=1e-12)
    value, grad = cd.dssim_with_gradient(dx, dy, mask=mask, **kwargs)
    expected, expected_grad = cussim.dssim_with_gradient(X, Y, mask=M, **kwargs)
    np.testing.assert_allclose(value.compute(), expected, rtol=1e-12)
    np.testing.assert_allclose(grad.compute(), expected_grad, rtol=1e-9, atol=1e-15)
    if mask_mode == "normalized":
        np.testing.assert_allclose(cd.ssim_map(dx, dy, mask=mask, win_size=7, padding=padding,
                                               mask_mode=mask_mode).compute(),
                                   cussim.ssim_map(X, Y, mask=M, win_size=7, padding=padding, mask_mode=mask_mode),
                                   rtol=1e-12, atol=1e-15)


def test_one_mask_per_image_and_errors():
    per_image = np.stack([M, M[::-1]])[:, None]  # (2, 1, 40, 46) for (2, 1, 40, 46) images
    x, y = X[:, None], Y[:, None]
    dx = da.from_array(x, chunks=(1, 1, 20, 20))
    value = cd.ssim(dx, y, mask=da.from_array(per_image, chunks=(1, 1, 11, 46)), axis=(1, 2, 3)).compute()
    np.testing.assert_allclose(value, cussim.ssim(x, y, mask=per_image, axis=(1, 2, 3)), rtol=1e-12)
    empty = per_image.copy()
    empty[1] = 0
    lazy = cd.ssim(dx, y, mask=empty, axis=(1, 2, 3))
    with pytest.raises(ValueError, match=r"the result at index \(1,\) a total weight of 0"):
        lazy.compute()
    with pytest.raises(ValueError, match=r"mask has shape \(40, 45\) but x has shape \(2, 1, 40, 46\)"):
        cd.ssim(dx, y, mask=np.ones((40, 45)))
    with pytest.raises(ValueError, match="ssim_map with mask_mode='mean' is the unmasked map"):
        cd.ssim_map(dx, y, mask=M)
    with pytest.raises(ValueError, match="negative weights"):
        cd.ssim(dx, y, mask=-np.ones((40, 46)))
    with pytest.raises(ValueError, match="negative weights"):
        cd.ssim(dx, y, mask=-da.ones((40, 46), chunks=20)).compute()


@pytest.mark.parametrize("variant", ["pytorch_msssim", "tensorflow", "torchmetrics"])
def test_ms_ssim_with_a_mask_equals_in_memory(variant):
    rng = np.random.default_rng(8)
    x = rng.random((2, 3, 61, 66))
    y = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1)
    m = np.where(rng.random((2, 1, 61, 66)) < 0.3, 0.0, rng.random((2, 1, 61, 66)))
    kwargs = dict(variant=variant, weights=(0.3, 0.3, 0.4), win_size=5, channel_axis=1, axis=(1, 2, 3))
    lazy = cd.ms_ssim(da.from_array(x, chunks=(1, 2, 25, 30)), da.from_array(y, chunks=(2, 3, 40, 33)),
                      mask=da.from_array(m, chunks=(1, 1, 30, 20)), **kwargs)
    np.testing.assert_allclose(lazy.compute(), cussim.ms_ssim(x, y, mask=m, **kwargs), rtol=1e-12)
    np.testing.assert_allclose(cd.ms_ssim(x, y, mask=m[:, :, :, :], **kwargs).compute(),
                               cussim.ms_ssim(x, y, mask=m, **kwargs), rtol=1e-12)
