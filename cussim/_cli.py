"""The ``cussim`` command.

``cussim demo`` compares scikit-image's bundled sample images with distorted
copies (noise, blur, quantisation) and prints SSIM and DSSIM for each pair,
with the native API's settings (Gaussian 11x11, sigma 1.5, zero padding) and
with scikit-image's conventions next to scikit-image's own value. It runs on
the GPU when CuPy finds one, else on the CPU, and says which.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ._ssim import ssim

SAMPLE_IMAGES = ("camera", "astronaut", "coffee", "chelsea")
# skimage's defaults in the native API's terms (its structural_similarity, with data_range given).
SKIMAGE_CONVENTIONS = dict(window="uniform", win_size=7, padding="reflect", sample_covariance=True)


def _distortions(image: np.ndarray, rng: np.random.Generator):
    """(name, distorted uint8 copy) pairs for one uint8 image."""
    from scipy import ndimage

    spatial = (1.5, 1.5, 0)[: image.ndim]
    as_float = image.astype(np.float64)
    noisy = lambda sigma: np.clip(as_float + rng.normal(0, sigma, image.shape), 0, 255)  # noqa: E731
    return [
        ("identical", image),
        ("noise sigma=10", noisy(10).round().astype(np.uint8)),
        ("noise sigma=25", noisy(25).round().astype(np.uint8)),
        ("blur sigma=1.5", ndimage.gaussian_filter(as_float, spatial).round().astype(np.uint8)),
        ("quantised to 8 levels", (image // 32 * 32 + 16).astype(np.uint8)),
    ]


def _device():
    """(array module, a line saying what computes): CuPy on a GPU when there is one, else NumPy."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
            return cupy, f"GPU 0 ({name}), cussim's CUDA kernels in float32"
    except Exception:  # no CuPy, no driver or no device: the CPU path
        pass
    return np, "CPU, cussim's float64 NumPy reference (no GPU found; with one, `pip install cussim[cuda12]`)"


def _ssim_pair(xp, reference, test, channel_axis, **options) -> float:
    return float(ssim(xp.asarray(test), xp.asarray(reference), data_range=255, channel_axis=channel_axis,
                      **options))


def demo(args) -> int:
    from skimage import data
    from skimage.metrics import structural_similarity

    xp, computed_by = _device()
    rng = np.random.default_rng(args.seed)
    print("cussim demo: scikit-image sample images against distorted copies")
    print(f"computed by: {computed_by}")
    header = (f"{'image':<10} {'size':<12} {'distortion':<22} {'SSIM':>8} {'DSSIM':>8} "
              f"{'SSIM skimage-conv.':>19} {'skimage':>9}")
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for name in args.images:
        image = getattr(data, name)()
        size = "x".join(map(str, image.shape))
        channel_axis = -1 if image.ndim == 3 else None
        for label, distorted in _distortions(image, rng):
            value = _ssim_pair(xp, image, distorted, channel_axis)
            compat = _ssim_pair(xp, image, distorted, channel_axis, **SKIMAGE_CONVENTIONS)
            theirs = structural_similarity(image, distorted, channel_axis=channel_axis, data_range=255)
            print(f"{name:<10} {size:<12} {label:<22} {value:>8.5f} {(1 - value) / 2:>8.5f} {compat:>19.10f} "
                  f"{theirs:>9.6f}")
    print(f"{len(args.images) * 5} pairs in {time.perf_counter() - start:.2f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cussim", description="SSIM, DSSIM and MS-SSIM on GPU arrays.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="SSIM of scikit-image's sample images against distorted copies")
    demo_parser.add_argument("--images", nargs="+", choices=SAMPLE_IMAGES, default=list(SAMPLE_IMAGES),
                             help="sample images to use (default: all)")
    demo_parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    demo_parser.set_defaults(run=demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
