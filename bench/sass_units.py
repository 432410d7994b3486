"""What each SASS opcode is (a category, the unit that runs it) and how many blocks an SM holds.

Used by bench/sass_whole.py (the whole-kernel count's categories and units), bench/sass.py
(occupancy) and bench/roofline.py (each unit's rate).
"""

from __future__ import annotations

import math

SHAPE = (1, 3, 1080, 1920)  # the shape the whole-kernel counts and the roofline name
CATEGORIES = ("FP32", "MUFU", "FP64/conv", "shared", "global", "int/addr", "uniform", "moves", "control")

_CONTROL = ("BRA", "BSSY", "BSYNC", "BAR", "EXIT", "CALL", "RET", "WARPSYNC", "NOP", "YIELD", "MEMBAR", "ERRBAR",
            "CGAERRBAR", "CCTL", "DEPBAR", "VOTE", "BMOV", "BPT", "KILL", "MATCH", "NANOSLEEP", "ELECT", "FENCE")
_MOVES = ("MOV", "MOV32I", "IMAD.MOV", "HFMA2.MMA", "S2R", "CS2R", "SHFL", "P2R", "R2P")
_FP64 = ("DADD", "DMUL", "DFMA", "DSETP", "DMNMX", "DSET", "F2F", "F2I", "I2F", "FRND", "I2FP", "F2IP")
_FP32 = ("FADD", "FMUL", "FFMA", "FMNMX", "FSET", "FSEL", "FCHK", "FSWZADD", "HADD2", "HMUL2", "HFMA2", "FMUL32I",
         "FADD32I", "FFMA32I", "HSETP2", "HMNMX2")


def category(opcode: str) -> str:
    """The category of one SASS opcode (see :data:`CATEGORIES`)."""
    if opcode.startswith(_MOVES):
        return "moves"
    if opcode.startswith("MUFU"):
        return "MUFU"
    if opcode.startswith(_FP64):
        return "FP64/conv"
    if opcode.startswith(_FP32):
        return "FP32"
    if opcode.startswith(("LDS", "STS", "ATOMS", "LDSM")):
        return "shared"
    if opcode.startswith(("LDG", "STG", "ATOMG", "RED", "LDC", "LD.", "ST.", "ATOM.", "LDL", "STL")) or opcode in (
            "LD", "ST", "ATOM"):
        return "global"
    if opcode.startswith(_CONTROL):
        return "control"
    if opcode.startswith(("U", "S2UR", "R2UR")):
        return "uniform"
    return "int/addr"


PIPES = ("fp32", "fp64", "conv", "mufu", "int", "shfl", "shared", "global", "issue")


def pipe(opcode: str) -> str:
    """The unit that executes one SASS opcode, for bench/roofline.py (see :data:`PIPES`): "issue" for what
    costs only its issue slot here (control, uniform datapath, moves)."""
    kind = category(opcode)
    if kind == "FP64/conv":
        return "fp64" if opcode.startswith("D") else "conv"
    if kind == "moves":
        return "shfl" if opcode.startswith("SHFL") else "issue"
    return {"FP32": "fp32", "MUFU": "mufu", "int/addr": "int", "shared": "shared",
            "global": "global"}.get(kind, "issue")


def wavefronts(opcode: str) -> int:
    """Cycles of the SM's shared memory (128 bytes a clock) that one warp's access takes, without conflicts."""
    return 4 if opcode.endswith(".128") else 2 if opcode.endswith(".64") else 1


# Per-SM limits (CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"): registers,
# threads, resident blocks, shared memory per SM and its per-block reservation, in bytes.
SM_LIMITS = {70: (65536, 2048, 32, 98304, 0), 75: (65536, 1024, 16, 65536, 0), 80: (65536, 2048, 32, 167936, 1024),
             86: (65536, 1536, 16, 102400, 1024), 89: (65536, 1536, 24, 102400, 1024),
             90: (65536, 2048, 32, 233472, 1024), 100: (65536, 2048, 32, 233472, 1024),
             120: (65536, 1536, 32, 102400, 1024)}


def occupancy(arch: int, registers: int, shared_bytes: int, threads: int = 256) -> tuple:
    """(resident blocks per SM, resident threads / the SM's most) for blocks of ``threads``."""
    regs, most_threads, most_blocks, smem, reserved = SM_LIMITS[arch]
    warps = threads // 32
    per_warp = math.ceil(registers * 32 / 256) * 256
    by_regs = regs // (per_warp * warps) if registers else most_blocks
    by_smem = smem // (math.ceil((shared_bytes + reserved) / 128) * 128) if shared_bytes else most_blocks
    blocks = min(most_blocks, by_regs, by_smem, most_threads // threads)
    return blocks, blocks * threads / most_threads
