"""The benchmark's own logic (its timings need a GPU and are not tests)."""

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cussim
from bench import cases, compare, peers, report, timing

ROOT = Path(__file__).resolve().parents[1]


def test_work_counts_and_floor():
    forward, gradient = timing.work_per_pixel("ssim"), timing.work_per_pixel("ssim_with_gradient")
    assert forward.bytes == 8 and gradient.bytes > forward.bytes and gradient.flops > forward.flops
    assert timing.work_per_pixel("ssim", itemsize=2).bytes == 4
    assert timing.work_per_pixel("ssim", win_size=7).flops < forward.flops
    # compute-bound and memory-bound sides of the floor
    assert timing.floor_seconds(timing.Work(200, 8), 10**6, fma_per_second=1e12, bytes_per_second=1e15) == 1e-4
    assert timing.floor_seconds(timing.Work(2, 8), 10**6, fma_per_second=1e15, bytes_per_second=1e9) == 8e-3
    ms, ms_gradient = timing.work_per_pixel("ms_ssim"), timing.work_per_pixel("ms_ssim_with_gradient")
    assert forward.flops < ms.flops < 1.4 * forward.flops and gradient.bytes < ms_gradient.bytes
    with pytest.raises(ValueError, match="unknown case"):
        timing.work_per_pixel("msssim")


def test_input_pairs_overflow_the_cache_and_rotate():
    pairs = timing.input_pairs(np, (2, 8, 8), "float16", seed=0, cache_bytes=2 * 2 * 128 * 2)  # one pair: 512 bytes
    assert len(pairs) == 6  # 3x the cache
    assert all(x.dtype == np.float16 and 0 <= y.min() and y.max() <= 1 and x.any() for x, y in pairs)
    assert len(timing.input_pairs(np, (2, 8, 8), "float32", seed=0)) == 1
    assert len(timing.input_pairs(np, (2, 8, 8), "float32", seed=0, cache_bytes=10**9)) == 8
    seen = []
    call = timing.rotating(pairs[:2], lambda x, y: seen.append(x is pairs[0][0]))
    for _ in range(3):
        call()
    assert seen == [True, False, True]


def test_closest_convention():
    assert compare.closest_convention(0.52, {"same": 0.5, "valid": 0.6}) == "same"


def test_markdown_names_the_machine_and_every_ratio():
    limits = {"copy_bytes_per_second": 3e12, "fma_per_second": 3e13}
    ours = compare.ours_row("ssim", "value", "same", "1x3x1080x1920", "float32", 3 * 1080 * 1920, 2e-4, limits)
    assert ours["fraction_of_floor"] == pytest.approx(ours["floor_ms"] / 0.2)
    peer = peers.Peer("fussim", "same", "torch", None, True)
    versus = compare.peer_row(ours, peer, 6e-4, 2e-8, True)
    text = report.markdown("Some GPU", limits, [ours, versus])
    assert text.startswith("# cussim on Some GPU")
    assert "| ssim | value | same | 1x3x1080x1920 | float32 | 0.200 |" in text
    assert "| ssim | value | 1x3x1080x1920 | float32 | fussim (same) | 0.600 | 0.200 | 3.0x | 2.0e-08 |" in text
    differs = report.markdown("CPU", None, [ours, compare.peer_row(ours, peer, 6e-4, 0.1, False)])
    assert "0.200 | 3.0x | 1.0e-01 (differs) |" in differs and "Ceilings" not in differs


def test_without_a_gpu_it_runs_the_cpu_cases(tmp_path):
    import conftest

    if conftest.gpu_available():
        pytest.skip("there is a GPU here: the benchmark would time it")
    result = subprocess.run([sys.executable, "-m", "bench", "--repeats", "1", "--output", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert "No CUDA GPU here" in result.stdout and "the GPU cases were not run" in result.stdout
    assert "cussim's NumPy path, computed by cussim's NumPy reference, against skimage" in result.stdout
    (record,) = tmp_path.glob("*/*.json")
    rows = json.loads(record.read_text())["cases"]
    versus = [r for r in rows if r.get("peer") == "skimage-cpu"]
    assert {r["shape"] for r in versus} == set(cases.CPU_SHAPES) | set(cases.CPU_VOLUME_SHAPES)
    assert all(r["same_computation"] for r in versus)
    assert {(r["operation"], r["convention"]) for r in rows if "peer" not in r} == {
        (op, c) for op in ("value", "value+gradient") for c in ("same", "skimage")}
    assert record.with_suffix(".md").read_text().startswith("# cussim on ")


def test_the_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import plot

    ours = compare.ours_row("ssim", "value+gradient", "same", "32x3x256x256", "float16", 32 * 3 * 256 * 256, 1e-3,
                         {"copy_bytes_per_second": 3e12, "fma_per_second": 3e13})
    rows = [ours, compare.peer_row(ours, peers.Peer("piq", "valid", "torch", None, True), 5e-3, 1e-6, True)]
    plot.plot(rows, tmp_path / "p.png", "title")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def _peer_or_skip(loaders, name):
    found, reasons = peers.load(loaders, [name])
    if not found:
        pytest.skip(reasons[0])
    return found[0]


@pytest.mark.parametrize("name", ["pytorch-msssim", "torchmetrics", "kornia", "piq"])
def test_each_ssim_peer_computes_cussims_convention(name):
    """On the CPU, in float64: the convention a peer is filed under is the one its numbers follow."""
    torch = pytest.importorskip("torch")
    peer = _peer_or_skip(peers.SSIM_PEERS, name)
    x, y = (a.astype(np.float64) for a in peers.check_pair(np))
    theirs = float(peer.value(torch.from_numpy(x), torch.from_numpy(y)))
    ours = peers.cussim_values(cussim, x, y)
    assert compare.closest_convention(theirs, ours) == peer.convention
    assert theirs == pytest.approx(ours[peer.convention], abs=1e-6)


def test_skimage_peer_averages_per_image_values():
    (peer,), _ = peers.load(peers.SSIM_PEERS, ["skimage"])
    x, y = timing.input_pairs(np, (3, 2, 30, 30), "float64", seed=4)[0]
    assert peer.value(x, y) == pytest.approx(float(cussim.ssim(x, y, **peers.CONVENTIONS["skimage"])), abs=1e-12)


@pytest.mark.parametrize("name", ["pytorch-msssim", "torchmetrics"])
def test_each_ms_ssim_peer_computes_its_variant(name):
    torch = pytest.importorskip("torch")
    peer = _peer_or_skip(peers.MS_SSIM_PEERS, name)
    x, y = timing.input_pairs(np, (1, 3, 176, 180), "float64", seed=5)[0]
    mine = float(cussim.ms_ssim(x, y, variant=peer.convention, channel_axis=1))
    assert float(peer.value(torch.from_numpy(x), torch.from_numpy(y))) == pytest.approx(mine, abs=1e-5)


def test_a_missing_peer_is_a_reason():
    found, reasons = peers.load({"nothing": lambda: __import__("no_such_peer_module")})
    assert found == [] and reasons[0].startswith("nothing skipped: ModuleNotFoundError")


class _HostCupy:
    """Enough of CuPy, on NumPy and the host clock, to run the GPU cases' logic on the CPU."""

    def __init__(self):
        import time
        import types

        self._np = np

        class Event:
            def record(self):
                self.at = time.perf_counter()

            def synchronize(self):
                pass

        self.cuda = types.SimpleNamespace(Event=Event, get_elapsed_time=lambda a, b: (b.at - a.at) * 1e3)
        self.asnumpy = np.asarray

    def __getattr__(self, name):
        return getattr(self._np, name)


@pytest.fixture
def host_timing(monkeypatch):
    """Each timed call runs once, without warm-up: the host-run cases check the cases' logic, not their times."""
    for module in (compare, cases):  # each imports both clocks from bench.timing
        for name in ("event_time", "host_time"):
            monkeypatch.setattr(module, name, functools.partial(getattr(timing, name), warmup=0))


class _HostTorchPeers(compare.TorchPeers):
    def __init__(self):
        self.torch, self.on_cpu = pytest.importorskip("torch"), False  # NumPy arrays: DLPack, on the CPU

    def time(self, fn, repeats):
        return timing.host_time(fn, repeats)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_cases_logic_on_the_host(dtype, capsys, host_timing):
    """ssim_cases and ms_ssim_cases end to end, CuPy and CUDA events replaced by NumPy and the host clock."""
    found, _ = peers.load(peers.SSIM_PEERS, ["pytorch-msssim", "torchmetrics", "kornia", "skimage"])
    found.append(peers.Peer("wrong", "valid", "torch", lambda x, y: 0.5 + 0 * x.mean(), True))
    limits = {"copy_bytes_per_second": 1e12, "fma_per_second": 1e13}
    host, torch_peers = _HostCupy(), _HostTorchPeers()
    found, matches = compare.check_conventions(host, cussim, found, torch_peers)
    assert not matches["wrong"] and all(matches[p.name] for p in found if p.name != "wrong")
    rows = cases.ssim_cases(host, cussim, "2x3x40x48", (2, 3, 40, 48), dtype, 1, limits, 0, found, matches,
                          torch_peers)
    ours = {(r["convention"], r["operation"]) for r in rows if "peer" not in r}
    assert ours == {(c, op) for c in ("same", "valid", "skimage") for op in ("value", "value+gradient")}
    versus = {(r["peer"], r["operation"]): r for r in rows if "peer" in r}
    assert versus["skimage-cpu", "value"]["same_computation"] and ("skimage-cpu", "value+gradient") not in versus
    assert versus["pytorch-msssim", "value+gradient"]["same_computation"]
    assert versus["pytorch-msssim", "value+gradient"]["cussim_convention"] == "valid"
    if ("torchmetrics", "value") in versus:  # mirror padding: checked as such, timed beside cussim's "same"
        assert versus["torchmetrics", "value"]["same_computation"]
        assert versus["torchmetrics", "value"]["cussim_convention"] == "same"
    assert not versus["wrong", "value"]["same_computation"]
    assert "does NOT match; its ratios do not compare the same computation" in capsys.readouterr().out
    ms_found, _ = peers.load(peers.MS_SSIM_PEERS)
    rows = cases.ms_ssim_cases(host, cussim, "1x3x176x176", (1, 3, 176, 176), 1, limits, 0, ms_found, torch_peers)
    assert all(r["same_computation"] for r in rows if "peer" in r)
    assert {r["convention"] for r in rows if "peer" not in r} >= {"pytorch_msssim"}


def test_the_check_pair_tells_the_conventions_apart():
    values = sorted(peers.cussim_values(cussim, *peers.check_pair(np)).values())
    assert min(b - a for a, b in zip(values, values[1:])) > 2e-2


def test_torch_loss_cases_on_the_host(host_timing):
    found, reasons = peers.load(peers.TORCH_LOSS_PEERS, ["pytorch-msssim"])
    if not found:
        pytest.skip(reasons[0])
    limits = {"copy_bytes_per_second": 1e12, "fma_per_second": 1e13}
    rows = cases.torch_loss_cases(_HostCupy(), "1x3x40x48", (1, 3, 40, 48), 1, limits, 0, found, _HostTorchPeers())
    assert {r["convention"] for r in rows if "peer" not in r} == {"l1_dssim_loss same", "SSIMLoss same",
                                                                   "SSIMLoss valid"}
    versus = {r["convention"]: r for r in rows if "peer" in r}
    assert versus["SSIMLoss valid"]["same_computation"] and versus["SSIMLoss valid"]["value_difference"] < 1e-6
    assert versus["l1_dssim_loss valid"]["cussim_convention"] == "l1_dssim_loss same"
    assert not versus["l1_dssim_loss valid"]["same_computation"]


def test_the_fitting_example_runs_with_cpu_defaults_and_a_progress_bar(capsys, monkeypatch):
    pytest.importorskip("torch")
    from bench import fit_image

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert fit_image.main(["--device", "cpu", "--steps", "2"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0] == "fitting 1x3x176x176 on cpu, 2 Adam steps per loss"  # the CPU's size
    assert [line.split()[0] for line in lines[2:]] == ["SSIMLoss", "DSSIMLoss", "MSSSIMLoss", "L1DSSIMLoss(weight=0.2)"]
    bars = captured.err.split("\r")
    for name in ("SSIMLoss", "L1DSSIMLoss(weight=0.2)"):
        assert any(bar.startswith(f"{name}: ") and "/7 [" in bar and "step/s]" in bar for bar in bars)
    assert fit_image.DEFAULTS["cpu"]["steps"] * 4 < 200 < fit_image.DEFAULTS["cuda"]["steps"]


def test_the_fitting_example_names_the_extra_without_pytorch(capsys, monkeypatch):
    from bench import fit_image

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    assert fit_image.main(["--device", "cpu"]) == 2
    assert 'pip install ".[torch]" (the torch extra, in the clone)' in capsys.readouterr().err


def test_results_go_to_a_folder_git_ignores_unless_told(tmp_path):
    """``python -m bench`` and ``python -m bench.folders`` leave the tracked tree clean by default."""
    from bench import folders

    assert folders.RESULTS == report.RESULTS and not report.RESULTS.is_relative_to(ROOT / "bench" / "results")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(report.RESULTS / "some-gpu" / "2026-01-01.json")],
                             cwd=ROOT)
    assert ignored.returncode == 0
