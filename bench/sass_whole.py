"""The whole kernel's thread instructions per pixel, by category, at a named shape (``python -m bench.sass``).

:func:`bench.sass.count` counts a kernel's march (its loop over planes, the
interior tiles' path). :func:`whole` adds what a block runs besides, from the
SASS's control-flow graph (basic blocks split at labels and after branches,
exits, returns):

- the prologue (the code before the march, once per block): its longest path
  from the entry to the march, a CALL counting one (the slow paths and 64-bit
  division past 32-bit operands are not followed; an upper bound: the
  shortest path is printed beside it);
- the border tiles' share: tiles whose halo leaves the map (13.2 % of the
  tiles at 1x3x1080x1920, R = 5, "same") load it in the march's tile-load
  loop, warp w rows w, w + 8, ... of the halo (:func:`border_fraction`);
- the arrival after the march: the shortest path to an exit through the
  atomic on the blocks' counter (the block sums' last-block test); the finish
  or combine that the last block runs counts its static instructions, each
  loop's body ceil(block sums / 256) times, once per launch;
- a 2-D forward's pixel loop counts the image's pixels, the rest the tiles'
  (the edge tiles' pixels outside the image issue as the others; ssim_forward's
  unrolled pixels count as tile pixels).

Instructions count per warp that issues them (thread instructions, idle
lanes included): code under ``if (tid < n)`` or ``if (tid == 0)`` counts for
the warps holding such threads only (:func:`warp_shares`), everywhere in the
kernel, the march (bench/sass_march.py) included.

A 2-D block computes planes / grid.y tile-planes (cussim._launch.plane_rows:
1.5 at 1x3x1080x1920), its prologue and arrival once. For the 3-D kernels the prologue and the arrival are amortised over a
block's depth chunk; their border tiles are not added. Every figure is a
count of the binary on a stated path; its time on a GPU is a prediction
(bench/roofline.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from bench.sass_units import CATEGORIES, PIPES, category, pipe, wavefronts

@dataclass
class Graph:
    """Basic blocks of one function: their first and last instruction index, successors, and whether they exit."""
    instructions: list
    starts: list = field(default_factory=list)
    ends: list = field(default_factory=list)
    successors: list = field(default_factory=list)
    exits: list = field(default_factory=list)
    shares: list = field(default_factory=list)  # per instruction: warp_shares

    def size(self, b: int) -> float:
        """The block's instructions, each weighted by the share of warps that issue it."""
        return sum(self.shares[self.starts[b]:self.ends[b] + 1])

    def address(self, b: int) -> int:
        return self.instructions[self.starts[b]][0]


def _conditional(index: int, function, operands: str) -> bool:
    return index in function.get("guards", {}) or "," in operands.split("`")[0]


def graph(function) -> Graph:
    """The control-flow graph of a :func:`bench.sass.parse` function."""
    instructions = function["instructions"]
    at = {address: i for i, (address, _, _) in enumerate(instructions)}
    leaders = {0} | {at[a] for a in function["labels"].values() if a in at}
    for i, (_, opcode, _) in enumerate(instructions):
        if opcode.startswith(("BRA", "EXIT", "RET", "BRX", "JMX")) and i + 1 < len(instructions):
            leaders.add(i + 1)
    g = Graph(instructions, shares=warp_shares(function))
    order = sorted(leaders)
    block_of = {}
    for k, start in enumerate(order):
        end = (order[k + 1] if k + 1 < len(order) else len(instructions)) - 1
        g.starts.append(start)
        g.ends.append(end)
        block_of[start] = k
    for k, end in enumerate(g.ends):
        _, opcode, operands = instructions[end]
        following = [k + 1] if k + 1 < len(order) else []
        target = re.search(r"\.L_x_\d+", operands)
        if opcode.startswith(("BRX", "JMX")):
            raise ValueError(f"an indirect branch at {instructions[end][0]:#x}: the count cannot follow it")
        if opcode.startswith("BRA") and target:
            to = [block_of[at[function["labels"][target.group()]]]]
            g.successors.append(to + following if _conditional(end, function, operands) else to)
            g.exits.append(False)
        elif opcode.startswith(("EXIT", "RET")):
            conditional = opcode.startswith("EXIT") and _conditional(end, function, operands)
            g.successors.append(following if conditional else [])
            g.exits.append(opcode.startswith("EXIT"))
        else:
            g.successors.append(following)
            g.exits.append(False)
    return g


_COMPARE = {"LT": lambda t, n: t < n, "LE": lambda t, n: t <= n, "GT": lambda t, n: t > n,
            "GE": lambda t, n: t >= n, "EQ": lambda t, n: t == n, "NE": lambda t, n: t != n}


def _immediate(text: str):
    text = text.strip()
    return 0 if text == "RZ" else int(text, 16) if re.fullmatch(r"-?0x[0-9a-f]+", text) else None


def warp_shares(function) -> list:
    """Per instruction, the share of a block's 8 warps that issue it: 1 but in the body of a forward branch
    that skips the threads failing a test of the thread index against a constant (``if (tid < n)``,
    ``if (tid == 0)``), found by following tid = threadIdx.y * 16 + threadIdx.x in straight order."""
    instructions, labels = function["instructions"], function["labels"]
    at = {address: i for i, (address, _, _) in enumerate(instructions)}
    shares = [1.0] * len(instructions)
    tags, tests = {}, {}  # register -> "x", "y", "tid"; predicate -> (comparison, constant)
    for i, (address, opcode, operands) in enumerate(instructions):
        fields = [f.strip() for f in operands.split(",")]
        written = fields[0] if fields and fields[0] else None
        tag = None
        if opcode == "S2R" and fields[1] in ("SR_TID.X", "SR_TID.Y"):
            tag = fields[1][-1].lower()
        elif opcode == "LEA" and len(fields) == 4 and [tags.get(f) for f in fields[1:3]] == ["y", "x"] \
                and fields[3] == "0x4":
            tag = "tid"
        test = None
        if opcode.startswith("ISETP.") and len(fields) == 5 and tags.get(fields[2]) == "tid" and fields[4] == "PT" \
                and i not in function.get("guards", {}) and _immediate(fields[3]) is not None:
            test = (opcode.split(".")[1], _immediate(fields[3]))
        for f in fields[:2]:
            tests.pop(f, None)
        tags.pop(written, None)
        if tag:
            tags[written] = tag
        if test:
            tests[written] = test
        target = re.search(r"\.L_x_\d+", operands)
        guard = function.get("guards", {}).get(i)
        if opcode.startswith("BRA") and target and guard and guard.lstrip("@!") in tests:
            compare, n = tests[guard.lstrip("@!")]
            negated = guard.startswith("@!")
            skipped = [(_COMPARE[compare](t, n) != negated) for t in range(256)]
            warps = sum(not all(skipped[w * 32:(w + 1) * 32]) for w in range(8))
            for j in range(i + 1, at.get(labels[target.group()], i + 1)):
                shares[j] = min(shares[j], warps / 8)
    return shares


def _block_at(g: Graph, address: int) -> int:
    """The block holding the instruction at ``address``."""
    return next(b for b in range(len(g.starts)) if g.address(b) <= address <= g.instructions[g.ends[b]][0])


def longest_path(g: Graph, entry: int, stop: int, shortest: bool = False) -> list:
    """The blocks of the longest (``shortest``) path in instructions from ``entry`` to the block ``stop``
    (excluded), over forward edges of blocks before it (a back edge is not followed: a loop's body counts once)."""
    better = (lambda new, old: new < old) if shortest else (lambda new, old: new > old)
    best = {entry: (g.size(entry), [entry])}
    for b in range(entry, stop):
        if b not in best:
            continue
        for s in g.successors[b]:
            if b < s < stop and (s not in best or better(best[b][0] + g.size(s), best[s][0])):
                best[s] = (best[b][0] + g.size(s), best[b][1] + [s])
    into = [best[b] for b in best if stop in g.successors[b]]
    return (min if shortest else max)(into, default=(0, []))[1]


def shortest_exit(g: Graph, entry: int, through=None) -> list:
    """The blocks of the shortest path from ``entry`` to an exit over forward edges, through a block holding an
    opcode starting with ``through`` when given (None if there is none)."""
    def holds(b):
        return through is None or any(op.startswith(through) for _, op, _ in g.instructions[g.starts[b]:g.ends[b] + 1])
    best = {(entry, holds(entry)): (g.size(entry), [entry])}
    for b in range(entry, len(g.starts)):
        for passed in (False, True):
            if (b, passed) not in best:
                continue
            for s in g.successors[b]:
                key = (s, passed or holds(s))
                cost = best[(b, passed)][0] + g.size(s)
                if s > b and (key not in best or cost < best[key][0]):
                    best[key] = (cost, best[(b, passed)][1] + [s])
    ends = [best[k] for k in best if k[1] and g.exits[k[0]]]
    return min(ends, default=(0, None))[1]


def reachable(g: Graph, entry: int) -> set:
    seen, todo = set(), [entry]
    while todo:
        b = todo.pop()
        if b not in seen:
            seen.add(b)
            todo += g.successors[b]
    return seen


def border_fraction(shape, radius: int, tile_rows: int, tile_cols: int = 16) -> float:
    """The share of a 2-D kernel's tiles whose halo leaves the map ("same" padding: the map is the image)."""
    height, width = shape[-2:]
    def inside(extent, step, halo):
        return sum(1 for t in range(0, extent, step) if t - radius >= 0 and t - radius + halo <= extent)
    rows, cols = math.ceil(height / tile_rows), math.ceil(width / tile_cols)
    interior = inside(height, tile_rows, tile_rows + 2 * radius) * inside(width, tile_cols, tile_cols + 2 * radius)
    return 1 - interior / (rows * cols)


@dataclass(frozen=True)
class Whole:
    """A kernel's whole-kernel count: thread instructions per pixel in each part and category."""
    name: str
    parts: dict  # part -> instructions per pixel
    categories: dict  # category -> instructions per pixel
    prologue_shortest: float = 0.0  # the prologue's shortest path, per pixel (its longest is in parts)
    pipes: dict = field(default_factory=dict)  # unit -> instructions per pixel, shared: its 128-byte cycles

    @property
    def per_pixel(self) -> float:
        return sum(self.parts.values())


def whole(name: str, function, march_weights: dict, border_loop: tuple, geometry: dict) -> Whole:
    """The whole-kernel count of one kernel (the module's docstring).

    march_weights: {instruction index: executions per thread and plane} of the march (bench.sass);
    border_loop: (first, last) instruction index of the border tiles' tile-load loop, or None, with
    geometry["border_iterations"] its source iterations per thread and geometry["border_per_body"] its
    source iterations per SASS body; geometry: threads' "pixels" per plane (k, or the chunk for volumes),
    "planes_per_block" (planes / grid.y),
    "coverage" (tile pixels per image pixel), "border" (the border tiles' share), "pixel_loop" (indices
    counted per image pixel), "blocks", "sums" (block sums the finish reads per block)."""
    g = graph(function)
    instructions = function["instructions"]
    weights = {}  # per thread and block
    def add(indices, w, part):
        for i in indices:
            weights.setdefault(part, {})
            weights[part][i] = weights[part].get(i, 0.0) + w
    coverage, planes = geometry["coverage"], geometry.get("planes_per_block", 1.0)
    pixel_loop = geometry.get("pixel_loop", set())
    for i, w in march_weights.items():
        add([i], planes * (w / coverage if i in pixel_loop else w), "march")
    if border_loop is not None:
        add(range(border_loop[0], border_loop[1] + 1),
            planes * geometry["border"] * geometry["border_iterations"] / geometry["border_per_body"], "border tiles")
    head, end = geometry["march"]
    march_entry, march_exit = _block_at(g, head), _block_at(g, end) + 1
    def indices(blocks):
        return [i for b in blocks for i in range(g.starts[b], g.ends[b] + 1)]
    add(indices(longest_path(g, 0, march_entry)), 1.0, "prologue")
    scale = coverage / (geometry["pixels"] * planes)
    fewest = sum(g.size(b) for b in longest_path(g, 0, march_entry, shortest=True)) * scale
    arrival = shortest_exit(g, march_exit, ("ATOM", "RED")) or shortest_exit(g, march_exit) or []
    add(indices(arrival), 1.0, "arrival")
    last = reachable(g, march_exit) - set(arrival)
    loops = geometry["loops"]
    trips = math.ceil(geometry["sums"] / 256)
    for i in indices(sorted(last)):
        in_loop = any(h <= instructions[i][0] <= e for h, e in loops)
        add([i], (trips if in_loop else 1) / geometry["blocks"], "finish")
    # the march's weights (bench.sass_march.count) hold their warp shares already
    weights = {part: {i: x * (1 if part == "march" else g.shares[i]) for i, x in w.items()}
               for part, w in weights.items()}
    parts = {part: sum(w.values()) * scale for part, w in weights.items()}
    categories, pipes = dict.fromkeys(CATEGORIES, 0.0), dict.fromkeys(PIPES, 0.0)
    for w in weights.values():
        for i, x in w.items():
            categories[category(instructions[i][1])] += x * scale
            unit = pipe(instructions[i][1])
            pipes[unit] += x * scale * (wavefronts(instructions[i][1]) if unit == "shared" else 1)
    return Whole(name, parts, categories, fewest, pipes)
