"""The march's thread instructions per pixel (voxel): :func:`count`, used by ``python -m bench.sass``.

How the count is made. A block of 16 x 16 threads filters a tile per plane
in the body of its march: the loop of the SASS (found by its backward
branch) that holds the strided loops, found by descending from the
outermost loop while a loop holds just one loop that itself holds loops.
For the 2-D kernels that is the outermost loop, over planes; for the 3-D
ones, the loop over depth inside the loop over volumes. Inside the march:

- every loop that ends in a backward branch is a strided loop of the source
  (``for (k = tid; k < n; k += 256)``, or its per-warp form below: the halo
  tile's loads, the horizontal pass), or the 2-D forward's loop over its
  pixels. A strided loop runs n / 256 source iterations per plane on
  average; its SASS body may hold several source iterations (the compiler
  unrolls), counted by its shared-memory stores against the stores one
  source iteration makes (a vector store counts as the elements it writes:
  the 2-D forward's horizontal pass writes (mx, md, Exx, Eyy) of an
  output with one 16-byte store). So it costs (body instructions / source
  iterations in the body) x n / 256, n counting single outputs. Where there
  are several versions of one loop (the compiler's, for reflection and for
  zero padding; a fast path for tiles whose halo lies inside the image,
  about 87 % of the tiles at 1080 x 1920), the table shows the cheapest: the
  common path, that of an interior tile. The 2-D kernels' interior tiles
  load their halo in unrolled straight code, so their tile-load loops, the
  border tiles' version, are not counted.
- everything else in the march (the vertical pass, the formula, the stores,
  the block sum, fully unrolled loops) is counted once per plane, for the
  warps that issue it: code under ``if (tid < n)`` (thread 0's per-plane
  work, the horizontal pass's rows past a multiple of 64) counts for the
  warps holding such threads (bench.sass_whole.warp_shares). That is an
  upper bound: it includes other code that a call skips by a branch (the
  set-up of the border tiles' loads; for the 3-D kernels, the gradient's
  partials of a value-only call). The 2-D forward takes its options as a template
  argument: the table shows its value kernel (FORWARD_VALUE) and that of a
  value with the exact gradient (FORWARD_EXACT).

The 2-D kernels (``ssim_forward``, ``ssim_backward``) compute a tile of 16
columns by 16 k rows, k rows per thread (k = 4 in float arithmetic, 1 in
double: kernels/tile.cuh, ``Tile``), and their strided loops are per warp:
the tile load gives each warp every 8th halo row (16 k + 2R rows), the
horizontal pass each warp four columns of 32 consecutive rows below the
last multiple of 64 and the rows left, one (row, four columns) pair per
thread t < 4 n (kernels/tile.cuh, ``horizontal_pass``). Both are unrolled:
straight code, counted once per k pixels, the rows left for the warps that
hold threads t < 4 n (two of eight at R = 5). A horizontal pass that the
compiler keeps as a loop of the strided form r = lane + 32 (w / 4) + 64 i
(the kernels' before this rule) counts the mean of the two warp sets'
ceil((16 k + 2R) / 64) and ceil((16 k + 2R - 32) / 64) iterations (what each
warp issues, idle lanes included), divided by k per pixel; a source
iteration of it stores 4 columns of 3 maps (backward) or of 5 moments
(forward). A forward's pixel loop (the one loop of its march that stores
nothing to shared memory) runs k iterations per thread, one per pixel: its
body counts once per pixel. ssim_forward unrolls its k pixels (straight
code, counted per tile pixel: an upper bound at the map's last tile row).

The 2.5-D scheme of the 3-D kernels (kernels/ssim3d.cu) marches a tile along
depth over a chunk of c output planes (``cussim._launch3d.DEPTH_CHUNK``,
16): the march runs c + 2R times, once per input plane, and each of its
passes filters a plane (the strided loops, the vertical pass, the push into
the rolling window), but only c of them complete an output plane (the depth
taps, the formula, the stores). That output code is the forward branch of
the march's straight code that skips the most instructions and no loop (the
source's ``if (d >= first && ...)``). So per voxel a 3-D kernel costs
(strided loops + straight code outside the output region) x (c + 2R) / c +
the output region, (16 + 10) / 16 = 1.625 planes per output plane at R = 5;
a 2-D kernel has no output region and one plane per output plane. Output
code the compiler hoists above that branch counts per plane, so the figure
stays an upper bound.

Predicated instructions count as issued (a GPU issues them). A CALL counts
as one instruction: the subroutines it reaches (the slow paths of a float
division, 64-bit division past 32-bit operands) run rarely or never. Code
before the march (once per block, or per volume) is not counted. The counts
are exact properties of the binary; what they cost in time on a GPU is a
prediction.

"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bench.sass_whole import warp_shares

TILE = 16
THREADS = TILE * TILE


@dataclass(frozen=True)
class Loop:
    kind: str
    body: int  # SASS instructions between the loop's head and its backward branch
    per_iteration: float  # SASS instructions per source iteration
    per_pixel: float  # per pixel of each plane the march filters
    indices: tuple = field(default=(), compare=False, repr=False)  # its instructions' indices


@dataclass(frozen=True)
class KernelCount:
    name: str
    total: int  # static instructions of the whole kernel
    # march instructions outside the strided loops and the output region (once per thread and plane), each
    # weighted by the share of the block's warps that issue it (bench.sass_whole.warp_shares)
    straight: float
    loops: tuple
    output: float = 0  # the 3-D kernels' output region (once per voxel), weighted likewise
    planes: float = 1.0  # planes the march filters per output plane: (c + 2R) / c for volumes
    pixels: int = 1  # output pixels per thread and plane
    # {instruction index: executions per thread and output plane} of what per_pixel counts
    weights: dict = field(default_factory=dict, compare=False, repr=False)
    border: tuple = None  # the border tiles' tile-load loop: (first, last index, source iterations per body)
    march: tuple = (0, -1)  # its first and last address

    @property
    def per_pixel(self) -> float:
        return (self.straight / self.pixels + sum(loop.per_pixel for loop in self.loops)) * self.planes + self.output


def backward_branches(function):
    """The loops: (head, branch address) of every backward branch but a branch to itself (the trap after EXIT)."""
    loops = {}
    for address, opcode, operands in function["instructions"]:
        target = re.search(r"\.L_x_\d+", operands)
        if opcode.startswith("BRA") and target:
            head = function["labels"][target.group()]
            if head < address:
                loops[head] = max(loops.get(head, address), address)
    return sorted(loops.items())


def _children(loop, loops):
    """The loops directly inside ``loop`` (a (head, end) pair of ``loops``)."""
    inside = [(h, e) for h, e in loops if loop[0] <= h and e <= loop[1] and (h, e) != loop]
    return [(h, e) for h, e in inside if not any(h2 <= h and e <= e2 and (h2, e2) != (h, e) for h2, e2 in inside)]


def _march(loops):
    """The loop holding the strided loops: from the outermost, down while a loop holds one loop holding loops."""
    march = max(loops, key=lambda loop: loop[1] - loop[0])
    while len(children := _children(march, loops)) == 1 and _children(children[0], loops):
        march = children[0]
    return march


def _output_region(function, march, inner):
    """(first, last) address of the instructions that the march's longest forward branch over no loop skips."""
    best = (0, -1)
    for address, opcode, operands in function["instructions"]:
        target = re.search(r"\.L_x_\d+", operands)
        if not (opcode.startswith("BRA") and target and march[0] < address < march[1]):
            continue
        head = function["labels"][target.group()]
        if address < head <= march[1] and not any(address < h < head for h, _ in inner):
            if head - address > best[1] - best[0]:
                best = (address + 1, head - 1)
    return best


def _stored(opcode: str, element_bytes: int) -> int:
    """Elements of ``element_bytes`` that one shared-memory store writes (a 16-byte STS.128 writes 4 floats)."""
    width = 16 if opcode.endswith(".128") else 8 if opcode.endswith(".64") else 4
    return max(width // element_bytes, 1)


def _classify(opcodes, stores_per_iteration):
    """The source loop a SASS loop is, from what it does: stores nothing to shared memory (the 2-D forward's
    pixels, one per iteration; a masked one loads its weights from global memory), loads from global memory
    into shared (the tile load), or filters shared rows into shared rows (the horizontal pass); None for a
    loop that stores without loading (the 3-D backward's halo of a map plane outside the map, zeros: not the
    interior path, not counted)."""
    if not any(op.startswith("STS") for op in opcodes) and "pixels" in stores_per_iteration:
        return "pixels", stores_per_iteration["pixels"]
    if any(op.startswith("LDG") for op in opcodes):
        return "tile load", stores_per_iteration["tile load"]
    if not any(op.startswith("LDS") for op in opcodes):  # stores zeros: the halo of a plane outside the volume
        return None, 0
    return "horizontal pass", stores_per_iteration["horizontal pass"]


def _geometry(name: str, halo_side: int):
    """(output pixels per thread, {loop kind: source iterations per thread and plane}, {kind: shared stores per
    source iteration}) of a kernel (see the module's docstring)."""
    forward = "_forward<" in name
    if name.startswith(("ssim_backward<", "ssim_forward<")):
        rows = 1 if "<double," in name else 4
        halo_rows = TILE * rows + halo_side - TILE
        # horizontal: warps 0-3 take rows lane, lane + 64, ..., warps 4-7 rows 32 + lane, 96 + lane, ...
        horizontal = (-(-halo_rows // 64) + -(-(halo_rows - 32) // 64)) / 2
        # the forward loads x and y and filters five moments, 4 columns per source iteration; the backward
        # three partial maps
        # an interior tile's load is unrolled (straight code): the tile-load loops are the border tiles'
        return rows, {"tile load": 0, "horizontal pass": horizontal, "pixels": rows}, \
            {"tile load": 2 if forward else 3, "horizontal pass": 20 if forward else 12, "pixels": 1}
    # the 3-D forward stores x and y (tile) and five moments (rows; normalized: x, y, m and six); the 3-D
    # backward three partial maps in each
    quantities = (6 if "VOLUME_NORMALIZED" in name else 5) if forward else 3
    return 1, {"tile load": halo_side * halo_side / THREADS, "horizontal pass": halo_side * TILE / THREADS}, \
        {"tile load": 2 if forward else 3, "horizontal pass": quantities}


def warp_iterations(items: int) -> float:
    """Iterations of ``for (k = tid; k < items; k += 256)`` that a warp of a 256-thread block issues, on
    average over its 8 warps: warp w issues iteration i where thread 32 w + 256 i has an item (idle lanes
    included)."""
    return sum(sum(1 for i in range(-(-items // THREADS)) if 32 * w + THREADS * i < items)
               for w in range(THREADS // 32)) / (THREADS // 32)


def _volume_passes(passes, halo_side: int, quantities: int):
    """The 3-D kernels' horizontal passes (kernels/ssim3d.cu, filter_tile): every loop counts, each a group of
    the quantities over the halo rows' outputs, one or two neighbouring ones an item (kernels/ssim3d.cu, filter_tile's Columns), one item a body (their
    stores add up to the quantities times the columns): {loop: iterations a warp issues per plane}."""
    stored = sum(sts for _, _, sts in passes)
    columns = stored // quantities  # filter_tile's Columns: 2 where the forward's window is in its ring, else 1
    if stored % quantities or columns not in (1, 2):
        raise ValueError(f"horizontal passes storing {stored} values a body, not {quantities} quantities of one or "
                         "two columns (a body of several items, or a pass in two versions?); the count cannot "
                         "follow them")
    iterations = warp_iterations(halo_side * TILE // columns)
    return [(Loop("horizontal pass", len(body), len(body), len(body) * iterations, tuple(body)), body, iterations)
            for _, body, _ in passes]


def count(name: str, function, halo_side: int, chunk: int = 0) -> KernelCount:
    """Instructions per pixel of one kernel, per voxel for a 3-D one that marches over ``chunk`` output planes
    (see the module's docstring for the method)."""
    instructions = function["instructions"]
    loops = backward_branches(function)
    march = _march(loops)
    inner = _children(march, loops)
    pixels, planes_per_pixel_iterations, stores = _geometry(name, halo_side)
    cheapest, border, passes = {}, None, []
    for head, end in inner:
        body = [i for i, (address, _, _) in enumerate(instructions) if head <= address <= end]
        opcodes = [instructions[i][1] for i in body]
        kind, per_store = _classify(opcodes, stores)
        if kind is None:
            continue
        sts = sum(_stored(op, 8 if "<double," in name else 4) for op in opcodes if op.startswith("STS"))
        if chunk and kind == "horizontal pass":
            passes.append((head, body, sts))
            continue
        per_iteration = len(body) * per_store / max(sts, 1)
        loop = Loop(kind, len(body), per_iteration, per_iteration * planes_per_pixel_iterations[kind] / pixels,
                    tuple(body))
        if kind not in cheapest or loop.per_pixel < cheapest[kind][0].per_pixel:
            cheapest[kind] = loop, body, per_store / max(sts, 1)
        if kind == "tile load" and (border is None or len(body) > border[1] - border[0] + 1):
            border = (body[0], body[-1], max(sts, 1) / per_store)
    first, last = _output_region(function, march, inner) if chunk else (0, -1)
    straight = [i for i, (address, _, _) in enumerate(instructions)
                if march[0] <= address <= march[1] and not any(h <= address <= e for h, e in inner)]
    output = [i for i in straight if first <= instructions[i][0] <= last]
    planes = (chunk + halo_side - TILE) / chunk if chunk else 1.0
    shares = warp_shares(function)  # code under if (tid < n) counts for the warps that run it
    weights = {i: planes * shares[i] for i in straight}
    weights.update({i: shares[i] for i in output})
    for loop, body, per_instruction in cheapest.values():
        weights.update({i: per_instruction * planes_per_pixel_iterations[loop.kind] * planes for i in body})
    counted = [c[0] for c in cheapest.values()]
    if passes:
        for loop, body, iterations in _volume_passes(passes, halo_side, stores["horizontal pass"]):
            weights.update({i: iterations * planes for i in body})
            counted.append(loop)
    outside = sum(shares[i] for i in straight) - sum(shares[i] for i in output)
    return KernelCount(name, len(instructions), outside, tuple(counted),
                       sum(shares[i] for i in output), planes, pixels, weights, border if not chunk else None, march)
