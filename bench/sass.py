"""Thread instructions per pixel (voxel) in the kernels' SASS, counted without a GPU.

``python -m bench.sass`` compiles the kernels (kernels/*.cu after kernels/*.cuh) with
NVRTC to cubins (as the compile check does), disassembles them with NVIDIA's
``nvdisasm`` (the nvidia-cuda-nvdisasm wheel, or a CUDA toolkit on PATH) and
prints, per kernel, the instructions one thread issues per map pixel of the
2-D kernels and per map voxel of the 3-D ones: first those of the march, the
loop over planes of an interior tile (bench/sass_march.py says how), then the
whole kernel's at a named shape (1x3x1080x1920), per part and per category,
with ptxas's registers and shared memory and the occupancy they allow
(bench/sass_whole.py says how); then MS-SSIM's pyramid, which is not a march
of tiles: its static instructions, its calls of the 64-bit division, its
registers and occupancy. The counts are exact properties of the binary on the
stated paths; what they cost in time on a GPU is a prediction
(bench/roofline.py).
"""

from __future__ import annotations

import argparse
import glob
import math
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile

from bench import sass_march, sass_units, sass_whole
from bench.sass_march import TILE, KernelCount, count
from cussim import _kernels, _launch, _launch3d, _nvrtc
from cussim._launch3d import DEPTH_CHUNK

_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_SECTION = re.compile(r"^\s*\.text\.(\S+):\s*$")


def nvdisasm() -> str:
    """The nvdisasm executable: from the nvidia-cuda-nvdisasm wheel, else on PATH."""
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(glob.glob(os.path.join(root, "*", "bin", "nvdisasm"))):
            return path
    found = shutil.which("nvdisasm")
    if found is None:
        raise SystemExit("nvdisasm not found: `pip install nvidia-cuda-nvdisasm` (or put a CUDA toolkit on PATH)")
    return found


def disassemble(names, arch: int, family: str = "ssim") -> dict:
    """:func:`parse` of the SASS of ``names`` (name expressions) of kernels/{family}.cu for ``sm_{arch}``."""
    cubin, lowered = _nvrtc.compile_cubin(_kernels.kernel_source(family), _kernels.RUN_TIME_OPTIONS, tuple(names),
                                          arch, f"{family}.cu")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{family}.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        done = subprocess.run([nvdisasm(), "-c", path], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"nvdisasm cannot disassemble sm_{arch} ({done.stderr.strip()}); choose another --arch, "
                         "or an nvdisasm that knows it")
    return parse(done.stdout, lowered)


def parse(text: str, lowered: dict) -> dict:
    """nvdisasm's text as {name expression: {"instructions": [(address, opcode, operands)], "labels": ...}}
    for the functions in ``lowered`` ({mangled name: name expression})."""
    functions, current = {}, None
    for line in text.splitlines():
        section = _SECTION.match(line)
        if section:
            current = lowered.get(section.group(1))
            if current is not None:
                functions[current] = {"instructions": [], "labels": {}, "pending": [], "guards": {}}
            continue
        if current is None:
            continue
        function = functions[current]
        label = _LABEL.match(line)
        if label:
            function["pending"].append(label.group(1))
            continue
        match = _INSTRUCTION.search(line)
        if match:
            address = int(match.group(1), 16)
            for name in function["pending"]:
                function["labels"][name] = address
            function["pending"] = []
            if match.group(2):
                function["guards"][len(function["instructions"])] = match.group(2).strip()
            function["instructions"].append((address, match.group(3), match.group(4)))
    return functions


def kernel_names(dtype: str, radius: int) -> dict:
    """{family: name expressions} of the counted kernels: the 2-D forward of a value and of a value with the
    exact gradient, the same two with a mask (mask_mode="mean": FORWARD_MASK; "normalized": and
    FORWARD_NORMALIZED), the backward and its masked tails (GRAD_WRITE_MASK, GRAD_WRITE_NORMALIZED), MS-SSIM's
    contrast-structure forward (FORWARD_CS, every scale but the last) of a value and with the exact gradient,
    without and with a mask; the 3-D forward and backward, and the same with a mask (VOLUME_MASK, and
    VOLUME_NORMALIZED)."""
    names = {}
    names["ssim"] = [*(_kernels.forward_name(dtype, radius, formula, "ssim", False, False, mask_mode=mode)
                       for mode in (None, "mean", "normalized") for formula in (None, "exact")),
                     *(_kernels.backward_name(dtype, radius, tail)
                       for tail in (0, _kernels.MASK_TAIL, _kernels.MASK_TAIL + _kernels.NORMALIZED_TAIL)),
                     *(_kernels.forward_name(dtype, radius, formula, "cs", False, False, mask_mode=mode)
                       for mode in (None, "mean") for formula in (None, "exact"))]
    names["ssim3d"] = [_kernels.volume_name(kernel, dtype, radius, mode) for mode in (None, "mean", "normalized")
                       for kernel in ("forward", "backward")]
    return names


def _whole(c: KernelCount, function, radius: int, shape, chunk: int) -> sass_whole.Whole:
    """:func:`bench.sass_whole.whole` of a counted kernel at ``shape`` (2-D) or over a depth chunk (3-D)."""
    loops = sass_march.backward_branches(function)
    if chunk:  # a block marches one chunk: its prologue and arrival once per chunk output planes
        geometry = dict(pixels=chunk, coverage=1.0, border=0.0, blocks=1 << 20, sums=1, march=c.march, loops=loops)
        return sass_whole.whole(c.name, function, {i: w * chunk for i, w in c.weights.items()}, None, geometry)
    tile_rows = TILE * c.pixels
    halo_rows = tile_rows + 2 * radius
    tiles = -(-shape[-2] // tile_rows) * -(-shape[-1] // TILE)
    planes = math.prod(shape[:-2])
    pixel_loop = {i for loop in c.loops if loop.kind == "pixels" for i in loop.indices}
    geometry = dict(pixels=c.pixels, coverage=tiles * tile_rows * TILE / (shape[-1] * shape[-2]),
                    border=sass_whole.border_fraction(shape, radius, tile_rows), pixel_loop=pixel_loop,
                    border_iterations=sum(-(-(halo_rows - w) // 8) for w in range(8)) / 8,
                    border_per_body=c.border[2] if c.border else 1, blocks=tiles * _launch.plane_rows(tiles, planes),
                    sums=tiles * planes, planes_per_block=planes / _launch.plane_rows(tiles, planes),
                    march=c.march, loops=loops)
    return sass_whole.whole(c.name, function, c.weights, c.border[:2] if c.border else None, geometry)


def measure(arch: int = 90, dtype: str = "float", radius: int = 5, shape=sass_units.SHAPE) -> list:
    """(march count, whole-kernel count, ptxas's resources) of each counted kernel (:func:`kernel_names`)."""
    rows = []
    for family, names in kernel_names(dtype, radius).items():
        chunk = DEPTH_CHUNK if family == "ssim3d" else 0
        functions = disassemble(names, arch, family)
        report = _nvrtc.compile_report(_kernels.kernel_source(family), _kernels.RUN_TIME_OPTIONS, tuple(names), arch,
                                       f"{family}.cu")
        resources = {k.name: k for k in report.kernels}
        for name in names:
            c = count(name, functions[name], TILE + 2 * radius, chunk)
            rows.append((c, _whole(c, functions[name], radius, shape, chunk), resources[name]))
    return rows


def shared_bytes(name: str, arch: int, resources) -> int:
    """A kernel's shared memory per block: ptxas's static bytes, and ssim3d_forward's dynamic ring
    (cussim._launch3d.forward_shared_bytes)."""
    if not name.startswith("ssim3d_forward<"):
        return resources.shared_bytes
    element, radius = name[len("ssim3d_forward<"):].split(", ")[:2]
    dtype = next(d for d, c in _launch.ELEMENT_TYPES.items() if c == element)
    mode = "normalized" if "VOLUME_NORMALIZED" in name else "mean" if "VOLUME_MASK" in name else None
    return resources.shared_bytes + _launch3d.forward_shared_bytes(dtype, int(radius.rstrip(">")), mode, arch)


_DIVISION_64 = re.compile(r"__cuda_sm20_(div|rem)_[su]64")


def pyramid_rows(arch: int = 90, dtype: str = "float") -> list:
    """(name, static instructions, calls of the 64-bit division and remainder subroutines, ptxas's resources) of
    MS-SSIM's kernels that are not a march of tiles, so not counted per pixel: the pyramid of images
    (msssim_pyramid at each level count) and of volumes (msssim3d_downsample), each without and with a mask
    (pooled as a third image or volume), and the combine of volumes' scales (msssim_combine, of the compute
    type, without and with a mask)."""
    output = "double" if dtype == "double" else "float"
    names = {"ssim": tuple(f"msssim_pyramid<{dtype}, {levels}{masked}>" for masked in ("", ", true")
                           for levels in _kernels.PYRAMID_LEVELS) +
             tuple(f"msssim_combine<{output}{masked}>" for masked in ("", ", true")),
             "ssim3d": tuple(f"msssim3d_downsample<{dtype}{masked}>" for masked in ("", ", true"))}
    rows = []
    for family, family_names in names.items():
        functions = disassemble(family_names, arch, family)
        report = _nvrtc.compile_report(_kernels.kernel_source(family), _kernels.RUN_TIME_OPTIONS, family_names, arch,
                                       f"{family}.cu")
        resources = {k.name: k for k in report.kernels}
        rows += [(name, len(functions[name]["instructions"]),
                  sum(op.startswith("CALL") and bool(_DIVISION_64.search(operands))
                      for _, op, operands in functions[name]["instructions"]), resources[name])
                 for name in family_names]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sass", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="SM architecture (default 90)")
    parser.add_argument("--dtype", default="float", choices=_kernels.ELEMENT_TYPES,
                        help="element type, in C++ (default float)")
    parser.add_argument("--radius", type=int, default=5, choices=_kernels.RADII,
                        help="window radius R, win_size = 2R + 1 (default 5)")
    args = parser.parse_args(argv)
    rows = measure(args.arch, args.dtype, args.radius)
    shape = "x".join(map(str, sass_units.SHAPE))
    print(f"sm_{args.arch}, NVRTC {'.'.join(map(str, _nvrtc.version()))}: thread instructions per pixel "
          f"(voxel for ssim3d, depth chunk {DEPTH_CHUNK}; python -m bench.sass; method in bench/sass.py)")
    width = max(len(c.name) for c, _, _ in rows)
    print(f"\nthe march (interior tiles)\n{'kernel':<{width}} {'per pixel':>9} {'straight':>9} {'pixels':>6} "
          f"{'output':>7} {'planes':>7} {'loop (body, per iteration, per pixel)':>40} {'static':>7}")
    for c, _, _ in rows:
        loops = "; ".join(f"{loop.kind} {loop.body}, {loop.per_iteration:.0f}, {loop.per_pixel:.0f}"
                          for loop in c.loops)
        print(f"{c.name:<{width}} {c.per_pixel:>9.0f} {c.straight:>9.0f} {c.pixels:>6} {c.output:>7.0f} {c.planes:>7.3f} "
              f"{loops:>40} {c.total:>7}")
    parts = ("march", "border tiles", "prologue", "arrival", "finish")
    print("(prologue: its longest path; its shortest in brackets: the divergent ifs of tid < n skipped)")
    print(f"\nthe whole kernel at {shape} (method in bench/sass_whole.py), per part\n{'kernel':<{width}} "
          f"{'whole':>6} " + " ".join(f"{p:>12}" for p in parts[:3]) + "        " + " ".join(f"{p:>12}" for p in parts[3:]) + f" {'regs':>5} {'smem':>6} {'spill':>5} "
          f"{'blocks/SM':>9} {'occupancy':>9}")
    for _, w, k in rows:
        smem = shared_bytes(w.name, args.arch, k)
        blocks, fraction = sass_units.occupancy(args.arch, k.registers, smem)
        print(f"{w.name:<{width}} {w.per_pixel:>6.0f} " + " ".join(f"{w.parts.get(p, 0):>12.1f}" for p in parts[:3]) +
              f" ({w.prologue_shortest:>4.0f}) " + " ".join(f"{w.parts.get(p, 0):>12.1f}" for p in parts[3:]) +
              f" {k.registers:>5} {smem:>6} {k.spill_stores + k.spill_loads:>5} {blocks:>9} "
              f"{fraction:>9.0%}")
    print(f"\nthe whole kernel at {shape}, per category\n{'kernel':<{width}} " +
          " ".join(f"{x:>9}" for x in sass_units.CATEGORIES))
    for _, w, _ in rows:
        print(f"{w.name:<{width}} " + " ".join(f"{w.categories[x]:>9.1f}" for x in sass_units.CATEGORIES))
    print(f"\nMS-SSIM's pyramids and combine (not a march of tiles: static instructions, calls of the 64-bit "
          f"division)\n"
          f"{'kernel':<{width}} {'static':>6} {'div64':>5} {'regs':>5} {'spill':>5} {'blocks/SM':>9} {'occupancy':>9}")
    for name, static, divisions, k in pyramid_rows(args.arch, args.dtype):
        blocks, fraction = sass_units.occupancy(args.arch, k.registers, k.shared_bytes)
        print(f"{name:<{width}} {static:>6} {divisions:>5} {k.registers:>5} {k.spill_stores + k.spill_loads:>5} "
              f"{blocks:>9} {fraction:>9.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
