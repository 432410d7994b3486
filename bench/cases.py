"""The cases of ``python -m bench``: the shapes and dtypes, and per case cussim's rows in each convention a
peer uses followed by the peers' rows (SSIM, MS-SSIM, volumes, cussim.torch's losses and drop-ins); the whole
GPU run, and the CPU run where there is no GPU.
"""

from __future__ import annotations

import math

from bench import peers as peer_adapters
from bench.compare import VALUE_TOLERANCE, check_conventions, ours_row, peer_row, peer_rows, torch_peers_or_none
from bench.timing import OPERATIONS, ceilings, event_time, host_time, input_pairs, rotating

SHAPES = {"1x3x1080x1920": (1, 3, 1080, 1920), "5x1x1500x1500": (5, 1, 1500, 1500),
          "32x3x256x256": (32, 3, 256, 256), "1x3x2160x3840": (1, 3, 2160, 3840)}
CPU_SHAPES = {"1x3x256x256": (1, 3, 256, 256), "1x1x720x1280": (1, 1, 720, 1280)}
VOLUME_SHAPES = {"1x1x128x128x128": (1, 1, 128, 128, 128), "4x1x64x128x128": (4, 1, 64, 128, 128)}
CPU_VOLUME_SHAPES = {"1x1x48x64x64": (1, 1, 48, 64, 64)}
DTYPES = ("float32", "float16")
# --quick, bench/gpu.sh's case list (quick_run); REHEARSAL_SHAPES stand in for QUICK_SHAPES without a GPU.
QUICK_SHAPES = ("1x3x1080x1920", "5x1x1500x1500")
QUICK_PEERS = ("fussim", "pytorch-msssim", "torchmetrics", "kornia", "piq")  # fussim and the PyTorch peers
REHEARSAL_SHAPES = {"1x3x40x72": (1, 3, 40, 72), "5x1x30x30": (5, 1, 30, 30)}
SKIMAGE_MAX_PIXELS = 12_000_000  # skimage on the CPU takes seconds per call beyond this


def ssim_cases(cupy, cussim, label, shape, dtype, repeats, limits, cache_bytes, found, matches, torch_peers,
               spatial_dims=2) -> list:
    """SSIM rows of one shape and dtype: cussim in every convention a peer uses, then each peer.

    ``matches``: each peer's convention check (:func:`check_conventions`); the
    value difference on the case's own data is recorded beside it.
    ``spatial_dims=3``: N x C x D x H x W volumes (the metric "ssim3d").
    """
    pairs = input_pairs(cupy, shape, dtype, seed=0, cache_bytes=cache_bytes)
    pixels = math.prod(shape)
    out, grad = cupy.empty((), cupy.float32), cupy.empty(shape, dtype)
    x0, y0 = pairs[0]
    value_of = peer_adapters.cussim_values(cussim, x0, y0, spatial_dims)
    metric = "ssim3d" if spatial_dims == 3 else "ssim"
    timed_as = {p.convention: peer_adapters.TIMED_AS.get(p.convention, p.convention) for p in found}
    conventions = ["same"] + sorted(set(timed_as.values()) - {"same"})
    rows, ours = [], {}
    for convention in conventions:
        options = dict(peer_adapters.CONVENTIONS[convention], spatial_dims=spatial_dims)
        win_size = options.get("win_size", 11)
        workspace = cussim.make_workspace(x0, win_size=win_size, padding=options["padding"], spatial_dims=spatial_dims)
        calls = {
            "value": rotating(pairs, lambda x, y: cussim.ssim(x, y, out=out, **options)),
            "value+gradient": rotating(pairs, lambda x, y: cussim.ssim_with_gradient(
                x, y, out=out, grad=grad, workspace=workspace, **options)),
        }
        for operation, fn in calls.items():
            row = ours_row(metric, operation, convention, label, dtype, pixels, event_time(cupy, fn, repeats), limits,
                            win_size, work_case="ssim" + OPERATIONS[operation], spatial_dims=spatial_dims)
            ours[convention, operation] = row
            rows.append(row)
    for peer in found:
        if peer.framework == "numpy" and pixels > SKIMAGE_MAX_PIXELS:
            print(f"{peer.name}: {label} skipped (over {SKIMAGE_MAX_PIXELS} pixels on the CPU)")
            continue
        beside = {op: ours[timed_as[peer.convention], op] for op in OPERATIONS}
        rows += peer_rows(peer, beside, pairs, value_of[peer.convention], lambda _, same=matches[peer.name]: same,
                           cupy, torch_peers, repeats, f"{label} {dtype}")
    return rows


def ms_ssim_cases(cupy, cussim, label, shape, repeats, limits, cache_bytes, found, torch_peers) -> list:
    """MS-SSIM rows of one shape (float32): cussim's default variant, then each peer against its variant."""
    pairs = input_pairs(cupy, shape, "float32", seed=1, cache_bytes=cache_bytes)
    pixels = math.prod(shape)
    out, grad = cupy.empty((), cupy.float32), cupy.empty(shape, cupy.float32)
    x0, y0 = pairs[0]
    rows = []
    for variant in ["pytorch_msssim"] + sorted({p.convention for p in found} - {"pytorch_msssim"}):
        workspace = cussim.make_ms_ssim_workspace(x0, variant=variant, channel_axis=1)
        calls = {
            "value": rotating(pairs, lambda x, y: cussim.ms_ssim(x, y, variant=variant, channel_axis=1, out=out)),
            "value+gradient": rotating(pairs, lambda x, y: cussim.ms_ssim_with_gradient(
                x, y, variant=variant, channel_axis=1, out=out, grad=grad, workspace=workspace)),
        }
        ours = {op: ours_row("ms_ssim", op, variant, label, "float32", pixels, event_time(cupy, fn, repeats), limits)
                for op, fn in calls.items()}
        rows += ours.values()
        mine = float(cussim.ms_ssim(x0, y0, variant=variant, channel_axis=1))
        for peer in (p for p in found if p.convention == variant):
            rows += peer_rows(peer, ours, pairs, mine, lambda d: d <= VALUE_TOLERANCE["float32"], cupy, torch_peers,
                               repeats, f"ms_ssim {label}")
    return rows


def masked_cases(cupy, cussim, label, shape, repeats, limits, cache_bytes, unmasked_ms_ssim=True) -> list:
    """Masked rows of one shape (float32), to time beside the unmasked ones on the same pairs (ssim_cases' seed):
    SSIM with a mask (metric "ssim mask=mean", "ssim mask=normalized"; "same" padding) and MS-SSIM with one
    ("ms_ssim mask=mean"; pytorch_msssim's variant, and the unmasked MS-SSIM beside it unless
    ``unmasked_ms_ssim`` is False), the value and the value with its gradient, in place: out, grad and a
    masked workspace. The mask: one per image (1 x 1 x H x W), a quarter of its pixels 0, the others 1. A
    masked call synchronises once (its totals), which its time holds. On images too small for MS-SSIM's five
    scales (a rehearsal's), two scales of win_size 7."""
    pairs = input_pairs(cupy, shape, "float32", seed=0, cache_bytes=cache_bytes)
    pixels = math.prod(shape)
    out, grad = cupy.empty((), cupy.float32), cupy.empty(shape, cupy.float32)
    x0, _ = pairs[0]
    mask = (cupy.random.default_rng(4).random((1, 1, *shape[-2:]), dtype=cupy.float32) > 0.25).astype(cupy.float32)
    rows = []
    for mode in ("mean", "normalized"):
        workspace = cussim.make_workspace(x0, mask=mask)
        calls = {
            "value": rotating(pairs, lambda x, y: cussim.ssim(x, y, mask=mask, mask_mode=mode, out=out)),
            "value+gradient": rotating(pairs, lambda x, y: cussim.ssim_with_gradient(
                x, y, mask=mask, mask_mode=mode, out=out, grad=grad, workspace=workspace)),
        }
        rows += [ours_row(f"ssim mask={mode}", op, "same", label, "float32", pixels, event_time(cupy, fn, repeats),
                          limits, work_case="ssim" + OPERATIONS[op]) for op, fn in calls.items()]
    small = min(shape[-2:]) < 161
    options = dict(weights=(0.5, 0.5), win_size=7) if small else {}
    for masked in (None, mask) if unmasked_ms_ssim else (mask,):
        workspace = cussim.make_ms_ssim_workspace(x0, mask=masked, **options)
        calls = {
            "value": rotating(pairs, lambda x, y: cussim.ms_ssim(x, y, mask=masked, out=out, **options)),
            "value+gradient": rotating(pairs, lambda x, y: cussim.ms_ssim_with_gradient(
                x, y, mask=masked, out=out, grad=grad, workspace=workspace, **options)),
        }
        metric = "ms_ssim" if masked is None else "ms_ssim mask=mean"
        convention = "pytorch_msssim" + (", 2 scales, win_size 7" if small else "")
        rows += [ours_row(metric, op, convention, label, "float32", pixels, event_time(cupy, fn, repeats), limits,
                          options.get("win_size", 11), work_case="ms_ssim" + OPERATIONS[op])
                 for op, fn in calls.items()]
    return rows


def torch_loss_cases(cupy, label, shape, repeats, limits, cache_bytes, found, torch_peers) -> list:
    """cussim.torch's l1_dssim_loss (weight 0.2) and SSIMLoss, forward plus backward, against the same
    losses built on fussim and pytorch-msssim; all timed with PyTorch's CUDA events."""
    import cussim.torch as ct

    pairs = input_pairs(cupy, shape, "float32", seed=2, cache_bytes=cache_bytes)
    x0, y0 = pairs[0]
    ours = {"l1_dssim_loss same": lambda r, t: ct.l1_dssim_loss(r, t, weight=0.2),
            "SSIMLoss same": ct.SSIMLoss(), "SSIMLoss valid": ct.SSIMLoss(padding="valid")}
    rows, timed, values = [], {}, {}
    for convention, loss in ours.items():
        mine = peer_adapters.Peer("cussim.torch", convention, "torch", loss, True)
        seconds = torch_peers.time(torch_peers.timed_call(mine, "value+gradient", pairs), repeats)
        timed[convention] = ours_row("torch " + convention.split()[0], "value+gradient", convention, label,
                                      "float32", math.prod(shape), seconds, limits, work_case="ssim_with_gradient")
        values[convention] = torch_peers.value(mine, x0, y0)
        rows.append(timed[convention])
    for peer in found:
        # beside cussim in the peer's convention where cussim.torch has it, else beside its "same"
        beside = peer.convention if peer.convention in ours else peer.convention.split()[0] + " same"
        rows += peer_rows(peer, {"value+gradient": timed[beside]}, pairs, values[beside],
                           lambda d, same=beside == peer.convention: same and d <= VALUE_TOLERANCE["float32"],
                           cupy, torch_peers, repeats, peer.convention)
    return rows


def drop_in_cases(cupy, label, shape, repeats, limits, cache_bytes, found, torch_peers) -> list:
    """cussim.torch's drop-ins (peers.drop_ins) beside the functions they replace, called the same way on the
    same tensors: the value, and the value with its gradient to x; all timed with PyTorch's CUDA events."""
    pairs = input_pairs(cupy, shape, "float32", seed=3, cache_bytes=cache_bytes)
    rows = []
    for convention, value in peer_adapters.drop_ins().items():
        mine = peer_adapters.Peer("cussim.torch", convention, "torch", value, True)
        work = "ms_ssim" if convention.endswith("ms_ssim") else "ssim"
        ours = {op: ours_row(convention, op, convention, label, "float32", math.prod(shape),
                              torch_peers.time(torch_peers.timed_call(mine, op, pairs), repeats), limits,
                              work_case=work + suffix)
                for op, suffix in OPERATIONS.items()}
        rows += ours.values()
        expected = torch_peers.value(mine, *pairs[0])
        for peer in (p for p in found if p.convention == convention):
            rows += peer_rows(peer, ours, pairs, expected, lambda d: d <= VALUE_TOLERANCE["float32"], cupy,
                               torch_peers, repeats, convention)
    return rows


def gpu_run(cupy, cussim, repeats: int) -> tuple[dict, list]:
    limits = ceilings(cupy, repeats)
    cache_bytes = cupy.cuda.Device().attributes["L2CacheSize"]
    torch_peers = torch_peers_or_none()
    found, reasons = peer_adapters.load(peer_adapters.SSIM_PEERS)
    found_ms, reasons_ms = peer_adapters.load(peer_adapters.MS_SSIM_PEERS)
    for reason in reasons + reasons_ms:
        print(reason)
    found_losses, reasons_losses = peer_adapters.load(peer_adapters.TORCH_LOSS_PEERS)
    for reason in reasons_losses:
        print(reason)
    found_drop_ins, reasons_drop_ins = peer_adapters.load(peer_adapters.DROP_IN_PEERS)
    for reason in reasons_drop_ins:
        print(reason)
    found_volumes, reasons_volumes = peer_adapters.load(peer_adapters.VOLUME_PEERS)
    for reason in reasons_volumes:
        print(reason)
    if torch_peers is None:
        found, found_ms, found_losses, found_volumes = [p for p in found if p.framework != "torch"], [], [], []
    found, matches = check_conventions(cupy, cussim, found, torch_peers)
    found_volumes, volume_matches = check_conventions(cupy, cussim, found_volumes, torch_peers, spatial_dims=3)
    rows = []
    if torch_peers is not None:
        label = "1x3x1080x1920"
        rows += torch_loss_cases(cupy, label, SHAPES[label], repeats, limits, cache_bytes, found_losses, torch_peers)
        rows += drop_in_cases(cupy, label, SHAPES[label], repeats, limits, cache_bytes, found_drop_ins, torch_peers)
    for label, shape in SHAPES.items():
        for dtype in DTYPES:
            rows += ssim_cases(cupy, cussim, label, shape, dtype, repeats, limits, cache_bytes, found, matches,
                               torch_peers)
        rows += ms_ssim_cases(cupy, cussim, label, shape, repeats, limits, cache_bytes, found_ms, torch_peers)
        if label == "1x3x1080x1920":  # masked beside the unmasked rows above
            rows += masked_cases(cupy, cussim, label, shape, repeats, limits, cache_bytes, unmasked_ms_ssim=False)
    for label, shape in VOLUME_SHAPES.items():
        rows += ssim_cases(cupy, cussim, label, shape, "float32", repeats, limits, cache_bytes, found_volumes,
                           volume_matches, torch_peers, spatial_dims=3)
    return limits, rows


def quick_run(cupy, cussim, repeats: int, shapes: dict, rehearse: bool = False) -> tuple[dict, list]:
    """The quick case list: the ceilings, then SSIM float32 at ``shapes``, the value and the value with its
    gradient, against QUICK_PEERS that import, each peer's value checked first, and at the first shape the masked
    cases beside the unmasked ones (:func:`masked_cases`). ``rehearse``: on
    bench/cupy_standin.py with PyTorch on the CPU and a 1 MiB copy (the code runs, its times mean nothing)."""
    limits = ceilings(cupy, repeats, copy_bytes=2**20 if rehearse else 256 * 2**20)
    torch_peers = torch_peers_or_none(on_cpu=rehearse)
    found, reasons = peer_adapters.load(peer_adapters.SSIM_PEERS, QUICK_PEERS)
    for reason in reasons:
        print(reason)
    if torch_peers is None:
        found = [p for p in found if p.framework != "torch"]
    found, matches = check_conventions(cupy, cussim, found, torch_peers)
    cache_bytes = cupy.cuda.Device().attributes["L2CacheSize"]
    rows = []
    for label, shape in shapes.items():
        rows += ssim_cases(cupy, cussim, label, shape, "float32", repeats, limits, cache_bytes, found, matches,
                           torch_peers)
    label, shape = next(iter(shapes.items()))
    rows += masked_cases(cupy, cussim, label, shape, repeats, limits, cache_bytes)
    return limits, rows


def cpu_run(cussim, repeats: int) -> list:
    """cussim's NumPy path (the backend CUSSIM_NUMPY_BACKEND picks) against skimage, on small images and a small
    volume."""
    import numpy as np

    found, reasons = peer_adapters.load(peer_adapters.SSIM_PEERS, ["skimage"])
    for reason in reasons:
        print(reason)
    rows = []
    for spatial_dims, shapes in ((2, CPU_SHAPES), (3, CPU_VOLUME_SHAPES)):
        _, matches = check_conventions(np, cussim, found, None, spatial_dims)
        rows += _cpu_cases(cussim, shapes, found, matches, repeats, spatial_dims)
    return rows


def _cpu_cases(cussim, shapes, found, matches, repeats, spatial_dims) -> list:
    import numpy as np

    rows = []
    for label, shape in shapes.items():
        pairs = input_pairs(np, shape, "float32", seed=0)
        pixels = math.prod(shape)
        value_of = peer_adapters.cussim_values(cussim, *pairs[0], spatial_dims)
        metric = "ssim3d" if spatial_dims == 3 else "ssim"
        for convention in ("same", "skimage"):
            options = dict(peer_adapters.CONVENTIONS[convention], spatial_dims=spatial_dims)
            calls = {"value": lambda x, y: cussim.ssim(x, y, **options),
                     "value+gradient": lambda x, y: cussim.ssim_with_gradient(x, y, **options)}
            ours = {op: ours_row(metric, op, convention, label, "float32", pixels,
                                  host_time(rotating(pairs, call), repeats)) for op, call in calls.items()}
            rows += ours.values()
            for peer in (p for p in found if p.convention == convention):
                seconds = host_time(rotating(pairs, peer.value), repeats)
                difference = abs(peer.value(*pairs[0]) - value_of[convention])
                rows.append(peer_row(ours["value"], peer, seconds, difference, matches[peer.name]))
    return rows

