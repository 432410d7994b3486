"""The benchmark's volume cases (``spatial_dims=3``): their logic on the host, and the volume peers' conventions."""

import numpy as np
import pytest

import cussim
from bench import cases, compare, peers, timing
from test_bench import _HostCupy, _HostTorchPeers


def test_volume_work_counts_three_filter_passes():
    plane, volume = timing.work_per_pixel("ssim"), timing.work_per_pixel("ssim", spatial_dims=3)
    assert volume.flops - plane.flops == 5 * 2 * 11 and volume.bytes == plane.bytes


def test_the_volume_check_pair_tells_the_conventions_apart():
    values = sorted(peers.cussim_values(cussim, *peers.volume_check_pair(np), spatial_dims=3).values())
    assert min(b - a for a, b in zip(values, values[1:])) > 5e-2


@pytest.mark.parametrize("name", ["pytorch-msssim", "torchmetrics"])
def test_each_volume_peer_computes_cussims_convention(name):
    torch = pytest.importorskip("torch")
    found, reasons = peers.load(peers.VOLUME_PEERS, [name])
    if not found:
        pytest.skip(reasons[0])
    x, y = (a.astype(np.float64) for a in peers.volume_check_pair(np))
    theirs = float(found[0].value(torch.from_numpy(x), torch.from_numpy(y)))
    ours = peers.cussim_values(cussim, x, y, spatial_dims=3)
    assert compare.closest_convention(theirs, ours) == found[0].convention
    assert theirs == pytest.approx(ours[found[0].convention], abs=5e-6)  # pytorch-msssim: a float32 window


def test_volume_cases_logic_on_the_host():
    found, _ = peers.load(peers.VOLUME_PEERS)
    limits = {"copy_bytes_per_second": 1e12, "fma_per_second": 1e13}
    host, torch_peers = _HostCupy(), _HostTorchPeers()
    found, matches = compare.check_conventions(host, cussim, found, torch_peers, spatial_dims=3)
    rows = cases.ssim_cases(host, cussim, "1x1x12x16x18", (1, 1, 12, 16, 18), "float32", 1, limits, 0, found, matches,
                          torch_peers, spatial_dims=3)
    ours = {(r["metric"], r["convention"], r["operation"]) for r in rows if "peer" not in r}
    assert ours == {("ssim3d", c, op) for c in {"same"} | {peers.TIMED_AS.get(p.convention, p.convention)
                                                          for p in found} for op in ("value", "value+gradient")}
    assert all(r["same_computation"] for r in rows if "peer" in r)
    assert all(0 < r["fraction_of_floor"] for r in rows if "peer" not in r)


def test_the_cpu_run_times_a_volume():
    rows = [r for r in cases.cpu_run(cussim, 1) if r["metric"] == "ssim3d"]
    assert {r["shape"] for r in rows} == set(cases.CPU_VOLUME_SHAPES)
    assert any(r.get("peer") == "skimage-cpu" and r["same_computation"] for r in rows)
