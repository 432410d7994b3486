"""Launch plans: from checked arrays and parameters to one kernel launch.

The layer between the public API and kernels/*.cu: it picks the kernel's
template arguments, expresses every array as element strides (no copies for
any strided view, 0 strides for a broadcast reference), sizes the grid, and
launches on the array's executor (CuPy on its device, or the emulator for
NumPy arrays). It does no per-pixel arithmetic.

Example
-------
>>> import numpy as np
>>> from cussim import _launch, _reference
>>> x = np.linspace(0, 1, 24 * 24, dtype=np.float32).reshape(24, 24)
>>> taps = _reference.window_taps("gaussian", 7, 1.5)
>>> s = _launch.ssim_map(x, x, taps=taps, K1=0.01, K2=0.03, padding="same", data_range=1.0, cov=1.0)
>>> s.shape, float(s.min()), float(s.max())
((24, 24), 1.0, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _kernels

TILE = 16
MAX_GRID_Y = 65535
PADDING_CODES = {"same": 0, "valid": 1, "reflect": 2}
ELEMENT_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.float64): "double",
    np.dtype(np.float16): "__half",
    np.dtype(np.uint8): "unsigned char",
    np.dtype(np.uint16): "unsigned short",
}


def array_module(array):
    """NumPy for NumPy arrays, CuPy for CuPy arrays."""
    if isinstance(array, np.ndarray):
        return np
    import cupy

    return cupy


def compute_dtype(dtype) -> np.dtype:
    """float64 for float64 inputs, float32 for everything else (spec.md section 1)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


@dataclass(frozen=True)
class PlaneLayout:
    """Element strides of one array: (outer, inner) over planes, then row and column."""

    outer: int
    inner: int
    row: int
    col: int

    def args(self):
        return tuple(np.int64(s) for s in (self.outer, self.inner, self.row, self.col))


def _element_strides(array) -> tuple:
    return tuple(s // array.itemsize for s in array.strides)


def _merge_leading(shape, stride_sets):
    """Merges the leading (batch) axes of several arrays of one shape into at most two levels.

    Adjacent axes merge where every array's strides allow it. Returns
    (counts, strides per array) with exactly two levels, or None when more than
    two levels remain.
    """
    counts, strides = [], [[] for _ in stride_sets]
    for axis, n in enumerate(shape):
        if n == 1:
            continue
        if counts and all(s[-1] == st[axis] * n for s, st in zip(strides, stride_sets)):
            counts[-1] *= n
            for s, st in zip(strides, stride_sets):
                s[-1] = st[axis]
            continue
        counts.append(n)
        for s, st in zip(strides, stride_sets):
            s.append(st[axis])
    if len(counts) > 2:
        return None
    while len(counts) < 2:
        counts.insert(0, 1)
        for s in strides:
            s.insert(0, 0)
    return counts, strides


def plane_layouts(inputs, output):
    """(outer count, inner count), a PlaneLayout per array, and the inputs, for arrays of one shape.

    Inputs whose batch axes cannot be expressed in two stride levels (together
    with the others) are copied to C order first, the only copy a launch makes.
    """
    arrays = [*inputs, output]
    lead = output.shape[:-2]
    merged = _merge_leading(lead, [_element_strides(a)[:-2] for a in arrays])
    if merged is None:
        xp = array_module(output)
        arrays = [xp.ascontiguousarray(a) for a in inputs] + [output]
        merged = _merge_leading(lead, [_element_strides(a)[:-2] for a in arrays])
    if merged is None:
        raise ValueError(
            f"the output's batch axes (strides {output.strides[:-2]}) cannot be addressed with two stride levels; "
            "pass a C-contiguous output"
        )
    counts, strides = merged
    layouts = [PlaneLayout(s[0], s[1], *_element_strides(a)[-2:]) for s, a in zip(strides, arrays)]
    return counts, layouts, arrays[:-1]


def ssim_map(x, y, *, taps, K1, K2, padding, data_range, cov, out=None):
    """The SSIM map of x against y (last two axes the plane; y broadcasts to x).

    ``taps`` is the 1-D window (odd length, radius 1 to 7). Returns ``out``,
    or a new array of the compute dtype with shape x.shape[:-2] + map shape.
    """
    xp = array_module(x)
    element = ELEMENT_TYPES[np.dtype(x.dtype)]
    ctype = compute_dtype(x.dtype)
    radius = (len(taps) - 1) // 2
    y = xp.broadcast_to(y, x.shape)
    height, width = x.shape[-2:]
    offset = radius if padding == "valid" else 0
    map_shape = x.shape[:-2] + (height - 2 * offset, width - 2 * offset)
    if out is None:
        out = xp.empty(map_shape, dtype=ctype)
    (outer, inner), (lx, ly, lm), (x, y) = plane_layouts([x, y], out)
    planes = outer * inner
    tiles = -(-map_shape[-2] // TILE) * -(-map_shape[-1] // TILE)
    kernel = _kernels.get_kernel("ssim", f"ssim_map<{element}, {radius}>", x)
    c = ctype.type
    kernel(
        (tiles, min(planes, MAX_GRID_Y)), (TILE, TILE),
        (x, *lx.args(), y, *ly.args(), out, *lm.args(), np.int64(planes), np.int64(inner), np.int32(height),
         np.int32(width), np.int32(PADDING_CODES[padding]), xp.asarray(taps, dtype=ctype), c(1.0 / data_range),
         c(K1 * K1), c(K2 * K2), c(cov)),
    )
    return out
