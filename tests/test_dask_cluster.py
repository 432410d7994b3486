"""The cussim command on a Dask cluster: the same output as one process, even when a worker dies mid-run."""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from cussim import _cli, _cluster, _pairs  # noqa: E402

PAIRS = 24


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """REF and TEST folders: grey and colour pairs, one in a subfolder, one missing, one of another size."""
    import imageio.v3 as iio

    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for i in range(PAIRS):
        shape = (120, 136, 3) if i % 3 else (100, 90)
        reference = (rng.random(shape) * 255).astype(np.uint8)
        test = np.clip(reference + rng.normal(0, 5 + i, shape), 0, 255).astype(np.uint8)
        name = f"sub/{i:03d}.png" if i % 5 == 0 else f"{i:03d}.png"
        for folder, image in (("ref", reference), ("test", test[:60] if i == 11 else test)):
            if folder == "test" and i == 7:
                continue
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(root / folder / name, image)
    return root / "ref", root / "test"


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def run(folders, tmp_path, name, *options):
    output = tmp_path / name
    code = _cli.main([str(folders[0]), str(folders[1]), "--output", str(output), *options])
    return code, output.read_text()


@pytest.fixture(scope="module")
def one_process(folders, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    return {kind: run(folders, tmp, kind, "--format", kind) for kind in ("csv", "json")}


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_scheduler_gives_the_output_of_one_process(folders, cluster, one_process, tmp_path, kind):
    code, text = run(folders, tmp_path, kind, "--format", kind, "--scheduler", cluster.scheduler_address)
    assert (code, text) == one_process[kind]
    assert code == 1 and text.count("\n") == PAIRS + 1  # a header (csv) or a summary (json), a row per pair


def test_workers_start_a_local_cluster(folders, one_process, tmp_path):
    assert run(folders, tmp_path, "csv", "--format", "csv", "--workers", "2") == one_process["csv"]


def test_strict_stops_where_one_process_stops(folders, cluster, tmp_path):
    alone = run(folders, tmp_path, "alone", "--format", "csv", "--strict")
    assert alone == run(folders, tmp_path, "cluster", "--format", "csv", "--strict", "--scheduler",
                        cluster.scheduler_address)
    assert alone[0] == 1 and alone[1].count("\n") < PAIRS


def test_a_worker_killed_mid_run_loses_no_pair_and_repeats_none(folders, cluster, one_process, tmp_path):
    output = tmp_path / "killed.csv"
    result = {}
    argv = [str(folders[0]), str(folders[1]), "--format", "csv", "--output", str(output), "--scheduler",
            cluster.scheduler_address]
    with distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        runner = threading.Thread(target=lambda: result.setdefault("code", _cli.main(argv)))
        runner.start()
        deadline = time.monotonic() + 60
        while (not output.exists() or output.read_text().count("\n") < 3) and time.monotonic() < deadline:
            time.sleep(0.002)
        rows_before = output.read_text().count("\n") - 1
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        runner.join(120)
        assert rows_before < PAIRS, "the run ended before the worker was killed"
        client.wait_for_workers(2, timeout=60)  # the nanny restarts it, for the tests after this one
    assert (result["code"], output.read_text()) == one_process["csv"]


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "is not a number of workers"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not allowed with argument"),
])
def test_usage_errors(folders, capsys, argv, message):
    assert _cli.main([str(folders[0]), str(folders[1]), *argv]) == 2
    assert message in capsys.readouterr().err


def test_unreachable_scheduler_is_a_usage_error(folders, capsys, monkeypatch):
    monkeypatch.setattr(_cluster, "CONNECT_TIMEOUT", "0.5s")
    assert _cli.main([str(folders[0]), str(folders[1]), "--scheduler", "tcp://127.0.0.1:1"]) == 2
    assert "--scheduler tcp://127.0.0.1:1: cannot reach it" in capsys.readouterr().err


def test_workers_that_are_not_a_number_are_a_usage_error(folders, capsys):
    assert _cli.main([str(folders[0]), str(folders[1]), "--workers", "two"]) == 2
    assert "'two' is not a number of workers (1 or more)" in capsys.readouterr().err


def test_missing_distributed_is_a_usage_error_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(_pairs.UsageError, match=r"--scheduler and --workers need Dask's distributed: pip install"):
        _cluster._distributed()


def test_a_chunk_whose_task_died_gives_one_error_row_per_pair():
    class DeadFuture:
        def result(self):
            raise RuntimeError("KilledWorker")

    chunk = [("a.png", "a.png"), ("b.png", "b.png")]
    assert _cluster._rows(DeadFuture(), chunk) == [
        (pair, None, "not compared: the workers computing it died (RuntimeError)") for pair in chunk]
