"""python -m bench's drop-in cases (cussim.torch's fused_ssim and pytorch_msssim beside the functions they
replace), their logic run on the host: CuPy and CUDA events replaced by NumPy and the host clock."""

import pytest
from test_bench import _HostCupy, _HostTorchPeers

from bench import cases, peers

pytest.importorskip("torch")


def test_drop_in_cases_on_the_host():
    found, reasons = peers.load(peers.DROP_IN_PEERS, ["pytorch-msssim"])
    if not found:
        pytest.skip(reasons[0])
    found.append(peers.Peer("wrong", "fused_ssim valid", "torch", lambda x, y: 0.5 + 0 * x.mean(), True))
    limits = {"copy_bytes_per_second": 1e12, "fma_per_second": 1e13}
    rows = cases.drop_in_cases(_HostCupy(), "1x3x176x180", (1, 3, 176, 180), 1, limits, 0, found, _HostTorchPeers())
    ours = {(r["convention"], r["operation"]) for r in rows if "peer" not in r}
    assert ours == {(c, op) for c in peers.drop_ins() for op in ("value", "value+gradient")}
    assert all(r["fraction_of_floor"] > 0 for r in rows if "peer" not in r)
    versus = {(r["peer"], r["convention"], r["operation"]): r for r in rows if "peer" in r}
    for function in ("pytorch_msssim.ssim", "pytorch_msssim.ms_ssim"):
        for operation in ("value", "value+gradient"):
            row = versus["pytorch-msssim", function, operation]
            assert row["same_computation"] and row["value_difference"] < 1e-5 and row["cussim_convention"] == function
    assert not versus["wrong", "fused_ssim valid", "value"]["same_computation"]


def test_each_drop_in_peer_is_filed_under_a_drop_in():
    found, _ = peers.load(peers.DROP_IN_PEERS)
    assert {p.convention for p in found} <= set(peers.drop_ins())
