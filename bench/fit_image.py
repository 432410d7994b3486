"""Fits an image to a target with Adam and each of cussim.torch's losses, printing steps per second.

``python -m bench.fit_image [--device cuda|cpu] [--size N] [--steps N]``
starts from a flat grey image and drives it towards scikit-image's astronaut
(resized to size x size) with each loss in turn: ``SSIMLoss``, ``DSSIMLoss``,
``MSSSIMLoss`` and ``L1DSSIMLoss`` (the 3DGS loss, weight 0.2). For each it
prints the steps per second (whole optimiser steps: forward, backward and
Adam's update, timed after a few warm-up steps) and where the fit ended:
the loss, and the SSIM and PSNR of the image against the target. A progress
bar counts the steps on a terminal.

The defaults suit the device: 512 x 512 and 300 steps on a GPU; 176 x 176
(MS-SSIM's smallest comfortable size) and 30 steps on the CPU, about ten
seconds in all. Needs PyTorch: ``pip install ".[torch]"`` in the clone.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def target_image(size: int, device: str):
    import torch
    from skimage import data, transform

    image = transform.resize(data.astronaut(), (size, size), anti_aliasing=True)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)).to(device)


DEFAULTS = {"cuda": {"size": 512, "steps": 300}, "cpu": {"size": 176, "steps": 30}}  # per device type
NEEDS_TORCH = 'python -m bench.fit_image needs PyTorch: pip install ".[torch]" (the torch extra, in the clone)'


def fit(loss, target, steps: int, warmup: int = 5, progress=None) -> dict:
    """Adam from a flat grey start; returns steps per second and the final loss, SSIM and PSNR.

    ``progress``, if given, is called after each step (warm-up included).
    """
    import torch

    import cussim.torch as ct

    image = torch.full_like(target, 0.5).requires_grad_()
    optimizer = torch.optim.Adam([image], lr=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        value = loss(image, target)
        value.backward()
        optimizer.step()
        if progress is not None:
            progress()
        return value

    for _ in range(warmup):
        step()
    if target.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        value = step()
    if target.is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        fitted = image.clamp(0, 1)
        mse = float(((fitted - target) ** 2).mean())
        return {"steps_per_second": steps / seconds, "loss": float(value), "ssim": float(ct.ssim(fitted, target)),
                "psnr": 10 * np.log10(1 / mse) if mse > 0 else float("inf")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fit_image", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    parser.add_argument("--size", type=int, default=None, help="side of the square image (default: 512 on cuda, "
                        "176 on cpu; at least 161 for MS-SSIM)")
    parser.add_argument("--steps", type=int, default=None, help="timed Adam steps per loss (default: 300 on cuda, "
                        "30 on cpu)")
    args = parser.parse_args(argv)
    try:
        import torch

        import cussim.torch as ct
    except ImportError as exc:
        print(f"{NEEDS_TORCH} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 2
    from cussim._progress import progress_bar

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = DEFAULTS["cuda" if torch.device(device).type == "cuda" else "cpu"]
    size, steps = args.size or defaults["size"], args.steps or defaults["steps"]
    target = target_image(size, device)
    losses = {"SSIMLoss": ct.SSIMLoss(), "DSSIMLoss": ct.DSSIMLoss(), "MSSSIMLoss": ct.MSSSIMLoss(),
              "L1DSSIMLoss(weight=0.2)": ct.L1DSSIMLoss(weight=0.2)}
    print(f"fitting 1x3x{size}x{size} on {device}, {steps} Adam steps per loss")
    print(f"{'loss':<24} {'steps/s':>9} {'final loss':>11} {'SSIM':>7} {'PSNR dB':>8}", flush=True)
    warmup = 5
    for name, loss in losses.items():
        with progress_bar(warmup + steps, unit="step", desc=name) as bar:
            r = fit(loss, target, steps, warmup, progress=bar.update)
        print(f"{name:<24} {r['steps_per_second']:9.1f} {r['loss']:11.5f} {r['ssim']:7.4f} {r['psnr']:8.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
