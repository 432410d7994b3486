"""The peers ``python -m bench`` times next to cussim, each behind one small adapter.

A peer is a name, the convention its numbers follow (which cussim options
compute the same thing), the kind of arrays it takes, a value function, and
whether its value can be differentiated with respect to x. Each peer is
imported inside :func:`ssim_peers` / :func:`ms_ssim_peers`, so one that is
missing is a printed reason, not a failure.

Conventions (``CONVENTIONS`` holds cussim's options for each):

- ``same``: 11x11 Gaussian (sigma 1.5), zeros outside, the mean over the whole
  map (3DGS, fused-ssim, fussim);
- ``valid``: the same window over the interior only (pytorch-msssim,
  piq without its downsampling, kornia with ``padding="valid"``);
- ``skimage``: scikit-image's defaults (uniform 7x7, half-sample reflection,
  sample covariance, the cropped mean): skimage and cuCIM;
- ``mirror``: the 11x11 Gaussian over images extended by whole-sample
  reflection (dcb abcd cba), the mean over the whole H x W map: torchmetrics
  (1.9: it crops only its contrast-sensitivity map). cussim has no such
  padding: :func:`cussim_value` checks it as ``valid`` on images extended the
  same way, and the benchmark times it against cussim's ``same`` (the same
  work: one H x W map).

The value functions take the case's whole N x C x H x W batch (N x C x D x H x W
for the volume peers, ``VOLUME_PEERS``) and return the mean over it, as cussim's default ``axis=None`` does. skimage and cuCIM have
no batch form: they are called once per image, and the per-image values
averaged (every image has as many pixels, so that is the same mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

CONVENTIONS = {
    "same": {"padding": "same"},
    "valid": {"padding": "valid"},
    "skimage": {"window": "uniform", "win_size": 7, "padding": "reflect", "sample_covariance": True},
}
TIMED_AS = {"mirror": "same"}  # conventions cussim has no option for: the cussim case timed beside them
MIRROR_RADIUS = 5


def cussim_value(cussim, x, y, convention: str, spatial_dims: int = 2) -> float:
    """cussim's mean SSIM of the batch in ``convention`` (a key of CONVENTIONS, or "mirror"), of images
    (``spatial_dims=2``) or volumes (3)."""
    if convention == "mirror":
        from cussim._arrays import array_module

        pad = [(0, 0)] * (x.ndim - spatial_dims) + [(MIRROR_RADIUS, MIRROR_RADIUS)] * spatial_dims
        xp = array_module(x)
        return float(cussim.ssim(xp.pad(x, pad, mode="reflect"), xp.pad(y, pad, mode="reflect"), padding="valid",
                                 spatial_dims=spatial_dims))
    return float(cussim.ssim(x, y, spatial_dims=spatial_dims, **CONVENTIONS[convention]))


def check_pair(xp):
    """A 1x3x48x64 float32 pair (astronaut and a noisy copy) on which every two conventions differ by 2e-2."""
    import numpy as np
    from skimage import data, transform

    x = transform.resize(data.astronaut(), (48, 64), anti_aliasing=True).transpose(2, 0, 1)[None].astype(np.float32)
    y = np.clip(x + 0.1 * np.random.default_rng(7).standard_normal(x.shape, dtype=np.float32), 0, 1)
    return xp.asarray(x), xp.asarray(y)


def volume_check_pair(xp):
    """A 1x1x16x24x24 float32 pair (a smooth random volume and a noisy copy) on which every two conventions
    differ by 5e-2 at least."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(7)
    x = ndimage.gaussian_filter(rng.random((1, 1, 16, 24, 24)), (0, 0, 2, 2, 2))
    x = (x - x.min()) / np.ptp(x)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1)
    return xp.asarray(x.astype(np.float32)), xp.asarray(y.astype(np.float32))


def cussim_values(cussim, x, y, spatial_dims: int = 2) -> dict:
    """cussim's value in every convention: {convention: value}."""
    return {convention: cussim_value(cussim, x, y, convention, spatial_dims)
            for convention in [*CONVENTIONS, "mirror"]}


@dataclass(frozen=True)
class Peer:
    """One peer: ``value(x, y)`` on arrays of its ``framework`` ("torch", "cupy" or "numpy")."""

    name: str
    convention: str  # a key of CONVENTIONS, or an MS-SSIM variant of cussim
    framework: str
    value: Callable
    differentiable: bool  # its value can be back-propagated to x (torch peers)


def _per_image(structural_similarity):
    """skimage's function over a batch: the mean of its per-image values (channels on axis 0)."""

    def value(x, y):
        return sum(float(structural_similarity(a, b, data_range=1.0, channel_axis=0)) for a, b in zip(x, y)) / len(x)

    return value


def _fussim():
    import fussim

    return Peer("fussim", "same", "torch", lambda x, y: fussim.fused_ssim(x, y, padding="same"), True)


def _pytorch_msssim():
    import pytorch_msssim

    return Peer("pytorch-msssim", "valid", "torch", lambda x, y: pytorch_msssim.ssim(x, y, data_range=1.0), True)


def _torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    return Peer("torchmetrics", "mirror", "torch",
                lambda x, y: structural_similarity_index_measure(x, y, data_range=1.0), True)


def _kornia():
    import kornia

    return Peer("kornia", "valid", "torch", lambda x, y: kornia.metrics.ssim(x, y, 11, padding="valid").mean(), True)


def _piq():
    import piq

    return Peer("piq", "valid", "torch", lambda x, y: piq.ssim(x, y, data_range=1.0, downsample=False), True)


def _cucim():
    from cucim.skimage.metrics import structural_similarity

    return Peer("cuCIM", "skimage", "cupy", _per_image(structural_similarity), False)


def _skimage():
    from skimage.metrics import structural_similarity

    return Peer("skimage-cpu", "skimage", "numpy", _per_image(structural_similarity), False)


SSIM_PEERS = {"fussim": _fussim, "pytorch-msssim": _pytorch_msssim, "torchmetrics": _torchmetrics,
              "kornia": _kornia, "piq": _piq, "cuCIM": _cucim, "skimage": _skimage}


def _pytorch_msssim_ms():
    import pytorch_msssim

    return Peer("pytorch-msssim", "pytorch_msssim", "torch",
                lambda x, y: pytorch_msssim.ms_ssim(x, y, data_range=1.0), True)


def _torchmetrics_ms():
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    return Peer("torchmetrics", "torchmetrics", "torch",
                lambda x, y: multiscale_structural_similarity_index_measure(x, y, data_range=1.0, normalize="relu"),
                True)


def _pytorch_msssim_volumes():
    import pytorch_msssim

    return Peer("pytorch-msssim", "valid", "torch", lambda x, y: pytorch_msssim.ssim(x, y, data_range=1.0), True)


def _torchmetrics_volumes():
    from torchmetrics.functional.image import structural_similarity_index_measure

    return Peer("torchmetrics", "mirror", "torch",
                lambda x, y: structural_similarity_index_measure(x, y, data_range=1.0), True)


# SSIM of N x C x D x H x W volumes (fused-ssim's fused_ssim3d publishes nothing on the package registry and
# fussim has no volumes: no fused 3-D peer can be installed here).
VOLUME_PEERS = {"pytorch-msssim": _pytorch_msssim_volumes, "torchmetrics": _torchmetrics_volumes}


MS_SSIM_PEERS = {"pytorch-msssim": _pytorch_msssim_ms, "torchmetrics": _torchmetrics_ms}


def _fussim_losses():
    import fussim
    from torch.nn.functional import l1_loss

    return [Peer("fussim", "l1_dssim_loss same", "torch",
                 lambda r, t: 0.8 * l1_loss(r, t) + 0.2 * (1 - fussim.fused_ssim(r, t)), True),
            Peer("fussim", "SSIMLoss same", "torch", lambda x, y: 1 - fussim.fused_ssim(x, y), True)]


def _pytorch_msssim_losses():
    import pytorch_msssim
    from torch.nn.functional import l1_loss

    # pytorch-msssim has only "valid": its 3DGS loss is not quite cussim's (the ratio is flagged as differing)
    return [Peer("pytorch-msssim", "l1_dssim_loss valid", "torch",
                 lambda r, t: 0.8 * l1_loss(r, t) + 0.2 * (1 - pytorch_msssim.ssim(r, t, data_range=1.0)), True),
            Peer("pytorch-msssim", "SSIMLoss valid", "torch",
                 lambda x, y: 1 - pytorch_msssim.ssim(x, y, data_range=1.0), True)]


# Training losses in PyTorch, forward plus backward: each loader gives the peer's l1_dssim_loss and SSIMLoss,
# their conventions named "<loss> <padding>".
TORCH_LOSS_PEERS = {"fussim": _fussim_losses, "pytorch-msssim": _pytorch_msssim_losses}


def drop_ins() -> dict:
    """cussim.torch's drop-ins, each filed under the convention of the function it replaces: {convention: value}."""
    from cussim.torch import fused_ssim, pytorch_msssim

    return {"fused_ssim same": lambda x, y: fused_ssim(x, y),
            "fused_ssim valid": lambda x, y: fused_ssim(x, y, padding="valid"),
            "pytorch_msssim.ssim": lambda x, y: pytorch_msssim.ssim(x, y, data_range=1.0),
            "pytorch_msssim.ms_ssim": lambda x, y: pytorch_msssim.ms_ssim(x, y, data_range=1.0)}


def _fussim_originals():
    import fussim

    # fused-ssim publishes nothing on the package registry: fussim, its drop-in, stands for it
    return [Peer("fussim", "fused_ssim same", "torch", lambda x, y: fussim.fused_ssim(x, y), True),
            Peer("fussim", "fused_ssim valid", "torch", lambda x, y: fussim.fused_ssim(x, y, padding="valid"), True)]


def _pytorch_msssim_originals():
    import pytorch_msssim

    return [Peer("pytorch-msssim", "pytorch_msssim.ssim", "torch",
                 lambda x, y: pytorch_msssim.ssim(x, y, data_range=1.0), True),
            Peer("pytorch-msssim", "pytorch_msssim.ms_ssim", "torch",
                 lambda x, y: pytorch_msssim.ms_ssim(x, y, data_range=1.0), True)]


# The functions cussim.torch's drop-ins replace, called the same way (drop_ins() holds cussim's side).
DROP_IN_PEERS = {"fussim": _fussim_originals, "pytorch-msssim": _pytorch_msssim_originals}


def load(loaders: dict, names=None) -> tuple[list, list]:
    """([Peer], [reason each missing one was skipped]) for ``names`` (default: all) of ``loaders``.

    A loader returns one Peer, or a list of them (one per loss).
    """
    found, reasons = [], []
    for name in names or loaders:
        try:
            loaded = loaders[name]()
            found += loaded if isinstance(loaded, list) else [loaded]
        except Exception as exc:  # noqa: BLE001  (any import failure skips the peer)
            reasons.append(f"{name} skipped: {type(exc).__name__}: {exc}")
    return found, reasons
