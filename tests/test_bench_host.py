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
    assert [r["launches"] for r in rows] == [1, 2, 11]  # value; value + gradient; MS-SSIM (5 scales) + gradient
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


def test_sass_count_takes_a_vector_store_for_the_elements_it_writes():
    """The 2-D forward's horizontal pass stores two outputs of mx and md with one STS.128: 4 of its 5 + 5."""
    vectors = SASS.replace("STS [R6], R5 ;", "STS.128 [R6], R4 ;").replace("STS [R6+0x4], R5 ;", "STS.64 [R8], R4 ;")
    vectors = vectors.replace("STS [R6+0x8], R5 ;", "STS.128 [R9], R4 ;")
    function = sass.parse(vectors, {"_Zfwd": "ssim_forward<float, 5>"})["ssim_forward<float, 5>"]
    horizontal = sass.count("ssim_forward<float, 5>", function, halo_side=26).loops[1]
    assert horizontal.body == 8 and horizontal.per_iteration == pytest.approx(8 * 5 / (4 + 2 + 4 + 1 + 1))
    assert [sass._stored(op, 8) for op in ("STS.128", "STS.64", "STS")] == [2, 1, 1]


def test_sass_count_of_the_backward_divides_by_its_rows_per_thread():
    """ssim_backward<float, R>: 4 output rows per thread, warp-strided loops (bench/sass.py's docstring)."""
    function = sass.parse(SASS, {"_Zfwd": "ssim_backward<float, 5>"})["ssim_backward<float, 5>"]
    c = sass.count("ssim_backward<float, 5>", function, halo_side=26)
    loads, horizontal = c.loops
    # tile load: 2 stores of 3 per source iteration; each warp loads every 8th of 64 + 10 halo rows
    assert loads.per_iteration == pytest.approx(4 * 3 / 2)
    assert loads.per_pixel == pytest.approx(loads.per_iteration * 74 / 8 / 4)
    # horizontal pass: 5 stores of 12; warps 0-3 take rows 0-31 and 64-73 (2 iterations), warps 4-7 rows 32-63
    assert horizontal.per_iteration == pytest.approx(8 * 12 / 5)
    assert horizontal.per_pixel == pytest.approx(horizontal.per_iteration * 1.5 / 4)
    assert (c.straight, c.pixels) == (3, 4)
    assert c.per_pixel == pytest.approx(3 / 4 + loads.per_pixel + horizontal.per_pixel)


SASS3D = """
	.text._Zfwd3d:
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_1:
        /*0010*/                   IADD3 R1, R0, 0x1, RZ ;
.L_x_2:
        /*0020*/               @P3 BRA `(.L_x_4) ;
.L_x_3:
        /*0030*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0040*/                   STS [R3], R2 ;
        /*0050*/                   STS [R3+0x4], R2 ;
        /*0060*/                   STS [R3+0x8], R2 ;
        /*0070*/                   STS [R3+0xc], R2 ;
        /*0080*/               @P0 BRA `(.L_x_3) ;
.L_x_4:
        /*0090*/                   LDS R5, [R3] ;
        /*00a0*/                   STS [R6], R5 ;
        /*00b0*/                   STS [R6+0x4], R5 ;
        /*00c0*/                   STS [R6+0x8], R5 ;
        /*00d0*/                   STS [R6+0xc], R5 ;
        /*00e0*/                   STS [R6+0x10], R5 ;
        /*00f0*/               @P1 BRA `(.L_x_4) ;
        /*0100*/               @P4 BRA `(.L_x_6) ;
        /*0110*/                   MOV R8, R5 ;
.L_x_6:
        /*0120*/               @P5 BRA `(.L_x_5) ;
        /*0130*/                   FFMA R7, R5, R5, R5 ;
        /*0140*/                   FADD R7, R7, R5 ;
        /*0150*/                   STG.E desc[UR4][R4.64], R7 ;
.L_x_5:
        /*0160*/               @P2 BRA `(.L_x_2) ;
        /*0170*/               @P6 BRA `(.L_x_1) ;
        /*0180*/                   EXIT ;
.L_x_7:
        /*0190*/                   BRA `(.L_x_7);
"""


def test_sass_count_of_a_march_along_depth_counts_planes_per_output_plane_and_the_output_once():
    function = sass.parse(SASS3D, {"_Zfwd3d": "ssim3d_forward<float, 5>"})["ssim3d_forward<float, 5>"]
    c = sass.count("ssim3d_forward<float, 5>", function, halo_side=26, chunk=16)
    loads, horizontal = c.loops
    # the march is the depth loop (.L_x_2), not the volume loop around it; the tile load unrolled twice
    assert (loads.kind, loads.body, loads.per_iteration) == ("tile load", 6, 3)
    assert loads.per_pixel == pytest.approx(3 * 676 / 256)
    assert (horizontal.kind, horizontal.body) == ("horizontal pass", 7)
    assert horizontal.per_pixel == pytest.approx(7 * 416 / 256)
    # output region: FFMA, FADD, STG (the branch over the loads skips a loop, the one over MOV is shorter)
    assert c.output == 3
    assert c.straight == 5  # the branch over the loads, the two forward branches, MOV, the march's branch
    assert c.planes == pytest.approx(26 / 16)  # 16 output planes need 16 + 2R input planes
    assert c.per_pixel == pytest.approx((5 + 3 * 676 / 256 + 7 * 416 / 256) * 26 / 16 + 3)
    # without a chunk (a 2-D count) the march's straight code is all counted once per pixel
    flat = sass.count("ssim3d_forward<float, 5>", function, halo_side=26)
    assert (flat.straight, flat.output, flat.planes) == (8, 0, 1.0)


def test_sass_names_an_architecture_nvdisasm_cannot_read(monkeypatch, tmp_path):
    script = tmp_path / "nvdisasm"
    script.write_text('#!/bin/sh\necho \'nvdisasm fatal   : CUDA architecture "SM70" is deprecated\' >&2\nexit 1\n')
    script.chmod(0o755)
    monkeypatch.setattr(sass, "nvdisasm", lambda: str(script))
    monkeypatch.setattr(sass._nvrtc, "compile_cubin", lambda *args: (b"", {}))
    with pytest.raises(SystemExit, match=r"cannot disassemble sm_70 \(.*deprecated\); choose another --arch"):
        sass.main(["--arch", "70"])


def test_sass_refuses_a_radius_or_dtype_the_library_lacks(capsys):
    for argv, named in ((["--radius", "9"], "--radius: invalid choice: 9"), (["--dtype", "half"], "--dtype")):
        with pytest.raises(SystemExit):
            sass.main(argv)
        assert named in capsys.readouterr().err
