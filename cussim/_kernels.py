"""Loads kernels/*.cu (after kernels/*.cuh): one module per specialisation, compiled when first launched.

One function, :func:`get_kernel`, gives the kernel for the array at hand. Each
specialisation (a name expression such as ``ssim_backward<float, 5>``) is a
module of its own, compiled the first time it is asked for, so a call
compiles only the kernels it launches: a first float32 ``ssim`` compiles two,
not all of them. CuPy arrays get a ``RawModule`` compiled by NVRTC for their
device (memoised per device; CuPy 14.2 and later read it back from their on-disk cache
under a key that holds the source, the options and the name expression, so a
later process loads it instead of compiling); NumPy arrays get the
emulator's build of the same source, options and name expression (cached by
content hash). Every kernel in kernels/*.cu is a template, so each module
holds only the kernel it names (NVRTC compiles a non-template kernel into
every module of its file). The specialisations each family can request are
listed here, so the compile check and ``cussim precompile`` can build every one.

Examples
--------
>>> from cussim import _kernels
>>> "ssim_forward<float, 5, cussim::FORWARD_VALUE>" in _kernels.specialisations("ssim")
True
>>> "__global__" in _kernels.kernel_source("ssim")
True
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

_PACKAGE = Path(__file__).resolve().parent
# Installed wheel: cussim/kernels/. Source checkout or editable install: ../kernels/.
KERNEL_DIRS = (_PACKAGE / "kernels", _PACKAGE.parent / "kernels")

# C++17 (the kernels use `if constexpr`), named although NVRTC 12 defaults to it:
# CuPy 13 adds --std=c++11 to a RawModule's options that name no standard.
# The same tuple goes to CuPy and to the emulator.
COMPILE_OPTIONS = ("--std=c++17",)
# What CuPy adds to every NVRTC compilation of a RawModule (cupy.cuda.compiler; tests/test_compile.py checks
# them against CuPy's own assembly): the compile check and `python -m bench.sass` compile with these too, as
# the code that runs on a GPU (-ftz=true changes registers and spills).
RUN_TIME_OPTIONS = COMPILE_OPTIONS + ("-ftz=true", "--device-as-default-execution-space")
# Architectures the compile check always covers (NVRTC 12 knows sm_70 to sm_121).
BASE_ARCHS = (70, 80, 90)

# Template arguments of each kernel family, in C++ spelling.
ELEMENT_TYPES = ("float", "double", "__half", "unsigned char", "unsigned short")
RADII = tuple(range(1, 8))  # window sizes 3 to 15
PYRAMID_LEVELS = (1, 2, 3, 4)  # 2x2 means per msssim_pyramid launch (5 scales: one launch)


# The option sets of ssim_forward (kernels/ssim_forward.cu, ForwardOption) that the library launches, as
# (gradient formula or None, term, whether it writes the map, whether it adds the fused L1 term, whether it
# combines MS-SSIM's scales, and optionally the mask mode, "mean" or "normalized"): values (ssim, dssim, and the map-less skimage drop-in), the map (ssim_map,
# skimage's full=True), the exact gradient, MS-SSIM's contrast-structure scales, scikit-image's gradient, the
# L1 + DSSIM loss, MS-SSIM's last scale with the combine, for a value and for the gradient, the masked means, and
# masked MS-SSIM's scales (mean mode: contrast-structure, and the last with the combine, value and gradient).
FORWARD_OPTIONS = ((None, "ssim", False, False, False), (None, "ssim", True, False, False),
                   ("exact", "ssim", False, False, False), (None, "cs", False, False, False),
                   ("exact", "cs", False, False, False), ("skimage", "ssim", False, False, False),
                   ("skimage", "ssim", True, False, False), (None, "ssim", False, True, False),
                   ("exact", "ssim", False, True, False), (None, "ssim", False, False, True),
                   ("exact", "ssim", False, False, True),
                   # masked means (FORWARD_MASK, and FORWARD_NORMALIZED): SSIM's and the L1 + DSSIM loss's,
                   # value and gradient; the normalised map
                   *((formula, "ssim", False, l1, False, mode) for mode in ("mean", "normalized")
                     for l1 in (False, True) for formula in (None, "exact")),
                   (None, "ssim", True, False, False, "normalized"),
                   *((formula, term, False, False, term == "ssim", "mean") for term in ("cs", "ssim")
                     for formula in (None, "exact")))
COMMON_FORWARD_OPTIONS = FORWARD_OPTIONS[0], FORWARD_OPTIONS[2]


def forward_options(formula, term, with_map, with_l1, with_combine=False, mask_mode=None) -> str:
    """ssim_forward's third template argument in C++, e.g. ``cussim::FORWARD_CS | cussim::FORWARD_EXACT``.

    Examples
    --------
    >>> forward_options(None, "ssim", False, False)
    'cussim::FORWARD_VALUE'
    >>> forward_options("skimage", "ssim", True, False)
    'cussim::FORWARD_SKIMAGE | cussim::FORWARD_MAP'
    >>> forward_options("exact", "ssim", False, False, True)
    'cussim::FORWARD_EXACT | cussim::FORWARD_COMBINE'
    >>> forward_options(None, "ssim", False, True, mask_mode="mean")
    'cussim::FORWARD_L1 | cussim::FORWARD_MASK'
    >>> forward_options(None, "ssim", True, False, mask_mode="normalized")
    'cussim::FORWARD_MAP | cussim::FORWARD_MASK | cussim::FORWARD_NORMALIZED'
    """
    flags = [name for name, on in (("CS", term == "cs"), (str(formula).upper(), formula is not None),
                                   ("MAP", with_map), ("L1", with_l1), ("COMBINE", with_combine),
                                   ("MASK", mask_mode is not None), ("NORMALIZED", mask_mode == "normalized"))
             if on]
    return " | ".join(f"cussim::FORWARD_{flag}" for flag in flags) or "cussim::FORWARD_VALUE"


def forward_name(element: str, radius: int, formula, term, with_map, with_l1, with_combine=False,
                 mask_mode=None) -> str:
    """The name expression of ssim_forward for C++ element type ``element`` and these options."""
    options = forward_options(formula, term, with_map, with_l1, with_combine, mask_mode)
    return f"ssim_forward<{element}, {radius}, {options}>"


def without_options(name: str) -> str:
    """``name`` without an options argument: ``ssim_forward<float, 5>`` for each ssim_forward<float, 5, ...>.

    Examples
    --------
    >>> without_options("ssim_forward<float, 5, cussim::FORWARD_CS | cussim::FORWARD_EXACT>")
    'ssim_forward<float, 5>'
    """
    return re.sub(r", cussim::[^<>]*>$", ">", name)


# ssim_backward's last template argument (kernels/ssim_backward.cu, GradientTail), by its value: add into grad
# (bit 1), the fused L1 term (bit 2), or MS-SSIM's terms (4); the first, writing without any, is the default and
# its names leave it out
BACKWARD_TAILS = ("GRAD_WRITE", "GRAD_ADD", "GRAD_WRITE_L1", "GRAD_ADD_L1", "GRAD_MSSSIM")
MSSSIM_TAIL = BACKWARD_TAILS.index("GRAD_MSSSIM")
# GRAD_MASK: added to the first four tails, a masked mean's gradient (per-plane 1 / total weight, the L1 term
# weighted by the mask); GRAD_NORMALIZED too for normalised convolution's (times m_p)
MASK_TAIL = 8
NORMALIZED_TAIL = 16
MASKED_TAILS = tuple(flags + tail for flags in (MASK_TAIL, MASK_TAIL + NORMALIZED_TAIL) for tail in range(MSSSIM_TAIL))


def backward_name(element: str, radius: int, tail: int = 0) -> str:
    """The name expression of ssim_backward for an element type, a radius and a tail (an index of BACKWARD_TAILS,
    plus MASK_TAIL for a masked mean's, and NORMALIZED_TAIL for normalised convolution's).

    >>> backward_name("float", 5), backward_name("float", 5, 3), backward_name("float", 5, MASK_TAIL + 2)
    ('ssim_backward<float, 5>', 'ssim_backward<float, 5, cussim::GRAD_ADD_L1>', \
'ssim_backward<float, 5, cussim::GRAD_WRITE_L1_MASK>')
    """
    if not tail:
        return f"ssim_backward<{element}, {radius}>"
    flags = "_NORMALIZED" if tail & NORMALIZED_TAIL else "_MASK" if tail & MASK_TAIL else ""
    name = BACKWARD_TAILS[tail & ~(MASK_TAIL | NORMALIZED_TAIL)] + flags
    return f"ssim_backward<{element}, {radius}, cussim::{name}>"


def _ssim_specialisations(every_option_radii=RADII):
    """The family's names; ssim_forward's with every option set only at ``every_option_radii``, and with the
    two commonest (a value; a value and the exact gradient) at every radius."""
    names = [forward_name(element, radius, *options) for element in ELEMENT_TYPES for radius in RADII
             for options in FORWARD_OPTIONS if radius in every_option_radii or options in COMMON_FORWARD_OPTIONS]
    names += [f"ssim_backward<{element}, {radius}>" for element in ELEMENT_TYPES for radius in RADII]
    # the backward's other tails: adding into grad (accumulate=True), the fused L1 term, both, MS-SSIM's terms
    names += [backward_name(element, radius, tail) for tail in (*range(1, len(BACKWARD_TAILS)), *MASKED_TAILS)
              for element in ELEMENT_TYPES for radius in RADII]
    names += [f"msssim_pyramid<{element}, {levels}{masked}>" for masked in ("", ", true") for element in ELEMENT_TYPES
              for levels in PYRAMID_LEVELS]
    names += [f"msssim_combine<{name}{masked}>" for masked in ("", ", true") for name in ("float", "double")]
    return tuple(names) + ("ssim_finish<float>", "ssim_finish<double>", "msssim_fold<float>", "msssim_fold<double>")


# The mask argument of ssim3d_forward and ssim3d_backward (kernels/ssim3d.cu, VolumeMask) by mask mode: a masked
# mean's, normalised convolution's; unmasked names leave it out
VOLUME_MASKS = {"mean": "cussim::VOLUME_MASK", "normalized": "cussim::VOLUME_MASK | cussim::VOLUME_NORMALIZED"}


def volume_name(kernel: str, element: str, radius: int, mask_mode=None) -> str:
    """The name expression of ssim3d_forward or ssim3d_backward (``kernel``) for an element type, a radius and a
    mask mode (None: unmasked).

    >>> volume_name("forward", "float", 5), volume_name("backward", "double", 3, "normalized")
    ('ssim3d_forward<float, 5>', 'ssim3d_backward<double, 3, cussim::VOLUME_MASK | cussim::VOLUME_NORMALIZED>')
    """
    mask = "" if mask_mode is None else f", {VOLUME_MASKS[mask_mode]}"
    return f"ssim3d_{kernel}<{element}, {radius}{mask}>"


def _ssim3d_specialisations():
    names = [volume_name(kernel, element, radius, mode) for mode in (None, *VOLUME_MASKS)
             for kernel in ("forward", "backward") for element in ELEMENT_TYPES for radius in RADII]
    # the pyramid of volumes: MS-SSIM's 2x2x2 means, with a mask pooled as a third volume too
    names += [f"msssim3d_downsample<{element}{masked}>" for masked in ("", ", true") for element in ELEMENT_TYPES]
    return tuple(names) + ("ssim3d_weighted_finish<float>", "ssim3d_weighted_finish<double>")


FAMILIES = {"ssim": _ssim_specialisations(), "ssim3d": _ssim3d_specialisations()}
# What the compile check builds for every architecture: every specialisation but the rarer option sets of
# ssim_forward, which it builds at the default radius and the largest (where registers run out first); each
# option set's code is the same template at every radius. Seven option sets at every radius made the check
# four times slower.
COMPILE_CHECKED = {**FAMILIES, "ssim": _ssim_specialisations(every_option_radii=(5, max(RADII)))}
# The headers every family builds on, in order: the per-pixel maths, the tiles and their passes, MS-SSIM's
# 2x2 mean and combine. No file includes another (NVRTC and CuPy's cache would not see an included file).
HEADERS = ("pixel.cuh", "tile.cuh", "msssim.cuh")
# A family's source is the headers, then its kernel files: the planes' forward, backward and MS-SSIM
# kernels; the volumes'. #line directives keep the compilers' messages pointing at each file.
SOURCES = {"ssim": (*HEADERS, "ssim_forward.cu", "ssim_backward.cu", "msssim.cu"),
           "ssim3d": (*HEADERS, "ssim3d.cu")}


def kernel_dir() -> Path:
    """The folder holding the .cu and .cuh files, wherever cussim is installed."""
    for folder in KERNEL_DIRS:
        if all((folder / name).is_file() for name in SOURCES["ssim"]):
            return folder
    raise FileNotFoundError(f"cussim's kernels/*.cu not found in {', '.join(map(str, KERNEL_DIRS))}")


@functools.lru_cache(maxsize=None)
def kernel_source(family: str) -> str:
    """The source text of ``family``: its files (:data:`SOURCES`) in order, each after a ``#line`` directive."""
    if family not in FAMILIES:
        raise KeyError(f"unknown kernel family {family!r}; known: {', '.join(FAMILIES)}")
    return "".join(f'#line 1 "{name}"\n' + (kernel_dir() / name).read_text() + "\n" for name in SOURCES[family])


def specialisations(family: str) -> tuple:
    """Every name expression of ``family`` that the library can request."""
    return FAMILIES[family]


def compile_check_archs(supported) -> list[int]:
    """sm_70, sm_80, sm_90 and every newer architecture the installed NVRTC knows."""
    return sorted(a for a in supported if a in BASE_ARCHS or a > max(BASE_ARCHS))


def compile_check_jobs(supported) -> list[dict]:
    """The compile check, as :func:`cussim._nvrtc.compile_report` arguments: one program per family and
    architecture holding its :data:`COMPILE_CHECKED` specialisations, with the run-time options."""
    return [
        dict(source=kernel_source(family), options=RUN_TIME_OPTIONS, name_expressions=COMPILE_CHECKED[family],
             arch=arch, filename=f"{family}.cu")
        for family in FAMILIES for arch in compile_check_archs(supported)
    ]


def check_specialisation(family: str, name: str) -> None:
    """Raises KeyError unless ``name`` is a specialisation of ``family``."""
    if name not in specialisations(family):
        raise KeyError(f"{name!r} is not a specialisation of the {family!r} kernels")


@functools.lru_cache(maxsize=None)
def emulated_kernel(family: str, name: str):
    """The emulator's build of the one specialisation ``name`` (built on first use, cached by content hash)."""
    from . import _emulator

    module = _emulator.RawModule(
        code=kernel_source(family), options=COMPILE_OPTIONS, name_expressions=(name,), filename=f"{family}.cu"
    )
    return module.get_function(name)


@functools.lru_cache(maxsize=None)
def cupy_kernel(family: str, name: str, device_id: int):
    """CuPy's build of the one specialisation ``name`` for GPU ``device_id`` (compiled on first use)."""
    import cupy

    module = cupy.RawModule(code=kernel_source(family), options=COMPILE_OPTIONS, name_expressions=(name,))
    with cupy.cuda.Device(device_id):
        module.compile()
        return module.get_function(name)


def get_kernel(family: str, name: str, like):
    """The kernel ``name`` of ``family`` for arrays like ``like``.

    NumPy arrays run on the emulator; CuPy arrays on their device. The result
    is called as ``kernel(grid, block, args, shared_mem=...)`` either way.
    """
    check_specialisation(family, name)
    if isinstance(like, np.ndarray):
        return emulated_kernel(family, name)
    device = getattr(like, "device", None)
    if device is None or not hasattr(device, "id"):
        raise TypeError(f"expected a NumPy or CuPy array, got {type(like).__name__}")
    return cupy_kernel(family, name, device.id)
