"""The GPU-free speed measures: host overhead with recorded launches, and the SASS instruction count's method."""

import os

import pytest

import cussim
from bench import host, sass
from cussim import _kernels


def test_host_overhead_counts_launches_and_restores_the_kernels():
    backend = os.environ.get("CUSSIM_NUMPY_BACKEND")
    loader = _kernels.emulated_kernel
    rows = host.run(cussim, repeats=2, shape=(1, 3, 192, 192))
    assert [r["launches"] for r in rows] == [2, 3, 16]  # value; value + gradient; MS-SSIM (5 scales) + gradient
    assert all(r["host_us"] > 0 for r in rows)
    assert _kernels.emulated_kernel is loader and os.environ.get("CUSSIM_NUMPY_BACKEND") == backend
    assert "| launches |" in host.markdown(rows, "this machine")


SASS = """
	.text._Zfwd:
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_1:
        /*0010*/                   IADD3 R1, R0, 0x1, RZ ;
.L_x_2:
        /*0020*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0030*/                   STS [R3], R2 ;
        /*0040*/                   STS [R3+0x4], R2 ;
        /*0050*/               @P0 BRA `(.L_x_2) ;
.L_x_3:
        /*0060*/                   LDS R5, [R3] ;
        /*0070*/                   FFMA R5, R5, R5, R5 ;
        /*0080*/                   STS [R6], R5 ;
        /*0090*/                   STS [R6+0x4], R5 ;
        /*00a0*/                   STS [R6+0x8], R5 ;
        /*00b0*/                   STS [R6+0xc], R5 ;
        /*00c0*/                   STS [R6+0x10], R5 ;
        /*00d0*/               @P1 BRA `(.L_x_3) ;
        /*00e0*/                   FADD R7, R5, R5 ;
        /*00f0*/               @P2 BRA `(.L_x_1) ;
        /*0100*/                   EXIT ;
.L_x_4:
        /*0110*/                   BRA `(.L_x_4);
"""


def test_sass_count_weights_each_loop_by_its_iterations_per_pixel(monkeypatch, tmp_path):
    function = sass.parse(SASS, {"_Zfwd": "ssim_forward<float, 5>"})["ssim_forward<float, 5>"]
    c = sass.count("ssim_forward<float, 5>", function, halo_side=26)
    loads, horizontal = c.loops
    # tile load: 4 instructions, 2 stores = 1 source iteration (x and y), 26 * 26 / 256 per pixel
    assert (loads.kind, loads.body, loads.per_iteration) == ("tile load", 4, 4)
    assert loads.per_pixel == pytest.approx(4 * 676 / 256)
    # horizontal pass: 8 instructions, 5 stores = 1 source iteration, 26 * 16 / 256 per pixel
    assert (horizontal.kind, horizontal.body) == ("horizontal pass", 8)
    assert horizontal.per_pixel == pytest.approx(8 * 416 / 256)
    assert c.straight == 3  # IADD3, FADD, the plane loop's branch; the self-branch after EXIT is no loop
    assert c.per_pixel == pytest.approx(3 + 4 * 676 / 256 + 8 * 416 / 256)
