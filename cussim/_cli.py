"""The ``cussim`` command (also ``python -m cussim``).

``cussim REF TEST`` compares two image files, or two folders whose images are
paired by relative path, and prints SSIM and DSSIM per pair and a summary.
Folders stream: images are decoded in a thread pool while the previous chunk
computes, pairs of one shape share a launch, and each row is printed as soon
as its chunk is done, so an interrupted run keeps what it printed.

``cussim demo`` compares scikit-image's bundled sample images with distorted
copies (noise, blur, quantisation), prints SSIM and DSSIM with the native
settings next to scikit-image's conventions and scikit-image's own value,
and with ``--map DIR`` writes each pair's SSIM map there as a PNG heat map.

Both run on the GPU when CuPy finds one (``--device auto``), else on the CPU
(the float64 reference), and say which. Exit codes: 0 all pairs compared,
1 some pairs failed (the others are still reported), 2 a usage error.

Nothing is written over an input: every output path (``--output``, each
heat map) is checked against the inputs before anything is written, heat
maps are named after their pair's relative path (extension included), and
an existing file from an earlier run is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from . import __version__, _cluster, _imagefiles
from ._imagefiles import ImageError
from ._pairs import Masks, UsageError, _numpy, on_device, run_pairs, select_device
from ._progress import progress_bar
from ._params import check_compute_range, ssim_params
from ._ssim import ssim, ssim_map

SAMPLE_IMAGES = ("camera", "astronaut", "coffee", "chelsea")
# skimage's defaults in the native API's terms (its structural_similarity, with data_range given).
SKIMAGE_CONVENTIONS = dict(window="uniform", win_size=7, padding="reflect", sample_covariance=True)
NATIVE_DEFAULTS = dict(window="gaussian", win_size=11, padding="same", sample_covariance=False)
WORST = 5


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # reported by main, exit code 2
        raise UsageError(message)


# ---- masks ---------------------------------------------------------------------------------

def masks_from(args):
    """The run's :class:`Masks`, or None without --mask and --mask-alpha (UsageError for a bad mask)."""
    if args.mask is None and not args.mask_alpha:
        if args.mask_mode is not None:
            raise UsageError("--mask-mode needs --mask FILE_OR_FOLDER or --mask-alpha")
        return None
    if args.mask is not None and args.mask_alpha:
        raise UsageError("--mask and --mask-alpha are two sources of one mask: pass one of them")
    if _cluster.wanted(args):
        raise UsageError("--mask and --mask-alpha run on this machine only: leave out --scheduler and --workers")
    source = None if args.mask is None else Path(args.mask)
    if source is not None and not source.exists():
        raise UsageError(f"--mask {args.mask!r} does not exist")
    if source is not None and source.is_dir() and not Path(args.ref).is_dir():
        raise UsageError(f"--mask {args.mask!r}: a folder of masks goes with folders of images, a mask file "
                         "with files or folders")
    try:
        return Masks(source, args.mask_alpha, args.mask_mode or "mean", args.volumes)
    except ImageError as exc:
        raise UsageError(str(exc)) from None



# ---- reports ---------------------------------------------------------------------------------

class Report:
    """Rows as they come, in one of three formats, and the summary at the end."""

    def __init__(self, kind: str, stream, device_line: str, mask: str = None):
        self.kind, self.stream, self.mask = kind, stream, mask  # mask: how the pairs were masked, or None
        self.values, self.failed = [], []
        self.csv = csv.writer(stream, lineterminator="\n") if kind == "csv" else None
        if kind == "table":
            print(f"computed by: {device_line}", file=stream)
            if mask is not None:
                print(f"mask: {mask}", file=stream)
            print(f"{'pair':<40} {'SSIM':>10} {'DSSIM':>10}", file=stream)
        elif kind == "csv":
            self.csv.writerow(["pair", "ssim", "dssim", "error"] + (["mask"] if mask is not None else []))

    def row(self, pair, value, error):
        if error is None:
            self.values.append((value, pair.name))
        else:
            self.failed.append(pair.name)
        if self.kind == "table":
            text = f"{value:>10.6f} {(1 - value) / 2:>10.6f}" if error is None else f"  error: {error}"
            print(f"{pair.name:<40} {text}", file=self.stream)
        elif self.kind == "csv":
            self.csv.writerow([pair.name, "" if error else repr(value), "" if error else repr((1 - value) / 2),
                               error or ""] + ([self.mask] if self.mask is not None else []))
        else:
            record = {"pair": pair.name, "ssim": value, "dssim": None if error else (1 - value) / 2}
            if error:
                record["error"] = error
            if self.mask is not None:
                record["mask"] = self.mask
            print(json.dumps(record, allow_nan=False), file=self.stream)
        self.stream.flush()

    def summary(self) -> dict:
        values = [v for v, _ in self.values]
        worst = sorted(self.values)[:WORST]
        return {
            "pairs": len(values) + len(self.failed), "compared": len(values), "failed": len(self.failed),
            "mean_ssim": float(np.mean(values)) if values else None,
            "min_ssim": float(min(values)) if values else None,
            "worst": [{"pair": name, "ssim": value} for value, name in worst],
        }

    def finish(self, elapsed: float):
        s = self.summary()
        if self.kind == "json":
            print(json.dumps({"summary": s}, allow_nan=False), file=self.stream)
            return
        lines = [f"{s['compared']} of {s['pairs']} pairs compared in {elapsed:.2f} s"
                 + (f", {s['failed']} failed" if s["failed"] else "")]
        if s["compared"]:
            lines.append(f"mean SSIM {s['mean_ssim']:.6f}, min SSIM {s['min_ssim']:.6f}")
            lines.append("worst: " + ", ".join(f"{w['pair']} ({w['ssim']:.4f})" for w in s["worst"]))
        target = self.stream if self.kind == "table" else sys.stderr
        print("\n".join(lines), file=target)


# ---- outputs ----------------------------------------------------------------------------------

def _identities(path: Path) -> tuple[list, bool]:
    """(the keys under which a path is the same file as another: its resolved path, and its inode if it exists;
    whether it exists)."""
    keys = [os.path.realpath(path)]
    try:
        status = os.stat(path)
    except OSError:
        return keys, False
    return keys + [(status.st_dev, status.st_ino)], True


def check_outputs(outputs, inputs, overwrite: bool) -> None:
    """Refuses (UsageError), before anything is written, an output that is an input or would replace one (the
    same path, a link to it, a hard link), two outputs at one path, and an existing file unless ``overwrite``.

    ``outputs`` are (option, path) pairs, ``inputs`` paths.
    """
    known = {}
    for path in inputs:
        known.update(dict.fromkeys(_identities(path)[0], ("input", path)))
    for option, path in outputs:
        keys, exists = _identities(path)
        for key in keys:
            if key in known and known[key][0] == "input":
                raise UsageError(f"{option} {path} would replace the input {known[key][1]}: cussim never writes "
                                 "over an input; choose another path")
            if key in known:
                raise UsageError(f"{option} {path} and {known[key][0]} {known[key][1]} are one file: "
                                 "choose another path")
        if exists and not overwrite:
            raise UsageError(f"{option} {path} exists (from an earlier run?): pass --overwrite to replace it, or "
                             "choose another path")
        known.update(dict.fromkeys(keys, (option, path)))


def open_output(path):
    """The results' stream: standard output, or the file ``path`` (its folder created, parents too)."""
    if path is None:
        return sys.stdout
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", newline="")
    except OSError as exc:
        raise UsageError(f"--output {exc.filename}: {exc.strerror}") from None


def make_map_folder(folder: Path) -> None:
    """``--map``'s folder, created (parents too) once every output has been checked."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--map {exc.filename}: {exc.strerror}") from None


# ---- commands ---------------------------------------------------------------------------------

def metric_options(args) -> dict:
    options = dict(SKIMAGE_CONVENTIONS if args.skimage else NATIVE_DEFAULTS)
    for name in ("window", "win_size", "padding", "sigma", "K1", "K2", "data_range"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.sample_covariance:
        options["sample_covariance"] = True
    if args.volumes:
        options["spatial_dims"] = 3
    return options


def compare(args) -> int:
    xp, device_line = select_device(args.device)
    options = metric_options(args)
    try:
        check_compute_range(ssim_params(**{"data_range": 1.0, **options}), np.float32)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    if args.volumes and args.map:
        raise UsageError("--map draws 2-D heat maps; it does not take --volumes")
    try:
        pairs = _imagefiles.find_pairs(Path(args.ref), Path(args.test), volumes=args.volumes)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UsageError(str(exc)) from None
    if not pairs:
        kind = "volumes" if args.volumes else "images"
        raise UsageError(f"no {kind[:-1]} pairs: neither {args.ref!r} nor {args.test!r} holds {kind} "
                         f"({', '.join(_imagefiles.suffixes(args.volumes))})")
    map_folder = Path(args.map) if args.map else None
    masks = masks_from(args)
    if masks is not None:
        if masks.mode == "normalized" and options.get("sample_covariance"):
            raise UsageError("--mask-mode normalized takes population covariance only: leave out "
                             "--sample-covariance (--skimage sets it)")
        options["mask_mode"] = masks.mode
    outputs = [("--output", Path(args.output))] if args.output else []
    if map_folder is not None:
        outputs += [("--map", _imagefiles.heat_map_path(map_folder, pair.name)) for pair in pairs]
    inputs = [path for pair in pairs for path in (pair.reference, pair.test)]
    if masks is not None and not masks.alpha:  # the mask files are inputs too
        inputs += [masks.source] if masks.one is not None else [masks.source / pair.name for pair in pairs]
    check_outputs(outputs, inputs, args.overwrite)
    if map_folder is not None:
        make_map_folder(map_folder)
    stream = open_output(args.output)
    try:
        report = Report(args.format, stream, device_line, None if masks is None else masks.description)
        start = time.perf_counter()
        rows = (_cluster.run_pairs(args, pairs, options, map_folder=map_folder) if _cluster.wanted(args)
                else run_pairs(pairs, xp, options, map_folder=map_folder, strict=args.strict, masks=masks))
        with progress_bar(len(pairs)) as bar:
            for pair, value, error in rows:
                with bar.external_write_mode(file=stream):
                    report.row(pair, value, error)
                bar.update()
        report.finish(time.perf_counter() - start)
    finally:
        if args.output:
            stream.close()
    return 1 if report.failed else 0


DISTORTIONS = ("identical", "noise sigma=10", "noise sigma=25", "blur sigma=1.5", "quantised to 8 levels")


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _distortions(image: np.ndarray, rng: np.random.Generator):
    """(name, distorted uint8 copy) pairs for one uint8 image, the names of DISTORTIONS."""
    from scipy import ndimage

    spatial = (1.5, 1.5, 0)[: image.ndim]
    as_float = image.astype(np.float64)
    noisy = lambda sigma: np.clip(as_float + rng.normal(0, sigma, image.shape), 0, 255)  # noqa: E731
    return list(zip(DISTORTIONS, [
        image,
        noisy(10).round().astype(np.uint8),
        noisy(25).round().astype(np.uint8),
        ndimage.gaussian_filter(as_float, spatial).round().astype(np.uint8),
        (image // 32 * 32 + 16).astype(np.uint8),
    ]))


def demo(args) -> int:
    from skimage import data
    from skimage.metrics import structural_similarity

    xp, device_line = select_device(args.device)
    rng = np.random.default_rng(args.seed)
    maps = Path(args.map) if args.map else None
    if maps is not None:
        check_outputs([("--map", _imagefiles.heat_map_path(maps, f"{name}-{_slug(label)}"))
                       for name in args.images for label in DISTORTIONS], [], args.overwrite)
        make_map_folder(maps)
    print("cussim demo: scikit-image sample images against distorted copies")
    print(f"computed by: {device_line}")
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
            (x, y), options = on_device(xp, [distorted, image], dict(channel_axis=channel_axis))
            value = float(ssim(x, y, **options))
            compat = float(ssim(x, y, **options, **SKIMAGE_CONVENTIONS))
            theirs = structural_similarity(image, distorted, channel_axis=channel_axis, data_range=255)
            if maps is not None:
                _imagefiles.write_heat_map(_numpy(ssim_map(x, y, **options)), value, maps,
                                           f"{name}-{_slug(label)}", f"{name}, {label}, against the original")
            print(f"{name:<10} {size:<12} {label:<22} {value:>8.5f} {(1 - value) / 2:>8.5f} {compat:>19.10f} "
                  f"{theirs:>9.6f}")
    elapsed = f"{len(args.images) * 5} pairs in {time.perf_counter() - start:.2f} s"
    print(f"{elapsed}; SSIM maps in {maps}/" if maps else f"{elapsed} (--map DIR writes the SSIM maps)")
    return 0


def _device_option(parser):
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                        help="where to compute: gpu (CuPy's first GPU), cpu (the float64 NumPy reference), or "
                             "auto, the default: the GPU when CuPy finds one, else the CPU")


HEAT_MAP_HELP = ("write each pair's SSIM map to DIR as a PNG heat map, DIR/<pair>.ssim.png (<pair> the relative "
                 "path, extension kept: cam.png.ssim.png): the map (channels averaged) from dark blue (SSIM 0 or "
                 "less) to bright yellow (1), a labelled colour bar beside it, the pair's names and mean SSIM above "
                 "it (default: no maps)")
OVERWRITE_HELP = ("replace output files left by an earlier run (default: refuse them); an input is never replaced, "
                  "with or without it")
COMPARE_EPILOG = """\
Folders are paired by relative path; an image under only one of them is
reported as a failed pair. Exit codes: 0 every pair compared, 1 some pairs
failed (the others are still reported), 2 a usage error. No output is ever
written over an input; an output file from an earlier run is replaced only
with --overwrite.

examples:
  cussim reference.png rendered.png
  cussim refs/ renders/ --format csv --output results.csv
  cussim refs/ renders/ --skimage --map maps/
  cussim reference.tif reconstruction.tif --volumes

other commands:
  cussim demo        SSIM of scikit-image's sample images against distorted copies
                     (cussim demo --help)
  cussim precompile  compile the kernels ahead of time, for the GPUs present or
                     the CPU emulator (cussim precompile --help)
"""


def compare_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cussim", description=textwrap.fill(
                         "SSIM and DSSIM = (1 - SSIM) / 2 of image files or folders (TEST against REF); "
                         "`cussim demo` runs on scikit-image's sample images.", 78),
                     epilog=COMPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", metavar="REF", help="reference image, or folder of reference images")
    parser.add_argument("test", metavar="TEST", help="test image, or folder with images at the same relative paths")
    metric = parser.add_argument_group("metric", textwrap.fill(
        "Defaults are the native API's (3DGS's and fused-ssim's conventions); --skimage switches to "
        "scikit-image's, and the options given with it override it.", 76, initial_indent="  ",
        subsequent_indent="  "))
    metric.add_argument("--skimage", action="store_true",
                        help="scikit-image's conventions: --window uniform --win-size 7 --padding reflect "
                             "--sample-covariance (the numbers of skimage.metrics.structural_similarity)")
    metric.add_argument("--window", choices=("gaussian", "uniform"),
                        help="window shape: gaussian (default) or uniform (default with --skimage)")
    metric.add_argument("--win-size", dest="win_size", type=int, metavar="N",
                        help="window side in pixels, odd, 3 to 15 (default 11; 7 with --skimage)")
    metric.add_argument("--sigma", type=float,
                        help="standard deviation of the Gaussian window in pixels (default 1.5)")
    metric.add_argument("--padding", choices=("same", "valid", "reflect"),
                        help="borders: same (default) zeros outside, every pixel averaged; valid only windows "
                             "inside the image; reflect (default with --skimage) mirrored borders, the mean "
                             "over the map cropped by (N-1)//2")
    metric.add_argument("--k1", dest="K1", type=float, metavar="K1",
                        help="constant of the luminance term, C1 = (K1 * data range)^2 (default 0.01)")
    metric.add_argument("--k2", dest="K2", type=float, metavar="K2",
                        help="constant of the contrast term, C2 = (K2 * data range)^2 (default 0.03)")
    metric.add_argument("--sample-covariance", action="store_true",
                        help="covariance factor N^2/(N^2-1) (sample covariance, on with --skimage) instead of 1")
    metric.add_argument("--volumes", action="store_true",
                        help="compare 3-D stacks: every page of a multi-page TIFF, or a .npy array, is a D x H x W "
                             "(x 3 for colour) volume, the window applied along depth too")
    metric.add_argument("--data-range", type=float, metavar="L",
                        help="value range of the pixels (default: 255 for 8-bit, 65535 for 16-bit; float images "
                             "need it)")
    mask = parser.add_argument_group("mask", textwrap.fill(
        "Weights in [0, 1] per pixel (docs/spec.rst section 9): only the weighted pixels count.", 76,
        initial_indent="  ", subsequent_indent="  "))
    mask.add_argument("--mask", metavar="FILE_OR_FOLDER",
                      help="a grey mask image for every pair, or a folder of them at the pairs' relative paths; "
                           "pixel values scaled to 0..1 (255 or 65535 is 1) are the weights (default: no mask)")
    mask.add_argument("--mask-alpha", action="store_true",
                      help="the reference image's alpha channel as the weights")
    mask.add_argument("--mask-mode", choices=("mean", "normalized"),
                      help="mean (default): the mean of the map weighted; normalized: masked-out pixels also "
                           "kept out of every window (their map is 0, grey in --map's heat maps either way)")
    output = parser.add_argument_group("output")
    output.add_argument("--format", choices=("table", "csv", "json"), default="table",
                        help="table (default), csv, or json (one object per line, then a summary object)")
    output.add_argument("--output", metavar="FILE",
                        help="write the results to FILE, its folder created if missing (default: standard output)")
    output.add_argument("--map", metavar="DIR", help=HEAT_MAP_HELP)
    output.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    output.add_argument("--strict", action="store_true", help="stop at the first pair that fails")
    _cluster.add_options(parser)
    _device_option(parser)
    parser.add_argument("--version", action="version", version=f"cussim {__version__}",
                        help="print cussim's version and exit")
    parser.set_defaults(run=compare)
    return parser


def demo_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cussim demo", description="SSIM of scikit-image's sample images against distorted "
                     "copies (noise, blur, quantisation), with the native settings, with scikit-image's "
                     "conventions, and scikit-image's own value.")
    parser.add_argument("--images", nargs="+", choices=SAMPLE_IMAGES, default=list(SAMPLE_IMAGES),
                        help="sample images to use (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--map", metavar="DIR", help=HEAT_MAP_HELP)
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _device_option(parser)
    parser.set_defaults(run=demo)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["precompile"]:
            from ._precompile import main as precompile

            return precompile(argv[1:])
        parser = demo_parser() if argv[:1] == ["demo"] else compare_parser()
        try:
            args = parser.parse_args(argv[1:] if argv[:1] == ["demo"] else argv)
            return args.run(args)
        except UsageError as exc:
            print(f"{parser.format_usage().rstrip()}\ncussim: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print("cussim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`cussim ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141  # 128 + SIGPIPE, as a shell reports a pipeline cut short
