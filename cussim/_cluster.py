"""The ``cussim`` command on a Dask cluster: ``--scheduler ADDRESS`` or ``--workers N``.

The pairs are cut into chunks and each chunk is one task: a worker reads,
compares and (with ``--map``) writes the heat maps of its chunk with the
same code as one process (:func:`cussim._pairs.run_pairs`, on the worker's own
device), and returns its rows. The client keeps a few chunks per worker
thread in flight and yields the rows in the pairs' order, each chunk's once,
so the output (rows, order, summary, exit code) is what one process prints.
A worker that dies mid-run loses only tasks, never rows: the scheduler
reruns its tasks elsewhere (a task is pure; rewriting a heat map writes the
same file). A chunk whose task killed workers more times than the scheduler
allows (``distributed.scheduler.allowed-failures``) is reported as failed
pairs, as an unreadable file would be.

``--workers N`` starts a local cluster for the run: dask-cuda's
``LocalCUDACluster`` (one worker per GPU) when dask-cuda is installed, GPUs
are present and ``--device`` is not ``cpu``; otherwise a ``LocalCluster`` of N
single-threaded worker processes. With ``--scheduler`` the workers must see
REF, TEST and ``--map`` at the same paths (a shared file system).
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections import deque

from . import _pairs

TASKS_PER_THREAD = 2  # chunks in flight per worker thread: one computing, one queued
CHUNKS_PER_THREAD = 4  # small folders are cut finer, so that every worker gets some
CONNECT_TIMEOUT = "10s"


def _worker_count(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (1 or more)")
    return workers


def add_options(parser):
    """--scheduler and --workers (one or the other) in their own group of the command's options."""
    group = parser.add_argument_group("cluster (pip install \"cussim[dask]\")").add_mutually_exclusive_group()
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="send the pairs to the workers of a running dask.distributed scheduler "
                       "(e.g. tcp://10.0.0.1:8786); they must see REF, TEST and --map at the same paths")
    group.add_argument("--workers", metavar="N", type=_worker_count,
                       help="start a local Dask cluster of N workers for this run (one per GPU with dask-cuda, "
                       "else N processes)")


def wanted(args) -> bool:
    """Whether the command line asks for a cluster."""
    return args.scheduler is not None or args.workers is not None


def _distributed():
    try:
        import distributed
    except ImportError:
        raise _pairs.UsageError('--scheduler and --workers need Dask\'s distributed: pip install "cussim[dask]"') \
            from None
    return distributed


def _local_cluster(distributed, workers: int, device: str):
    if device != "cpu":
        cupy, _ = _pairs._gpu()
        if cupy is not None:
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                pass
            else:
                gpus = cupy.cuda.runtime.getDeviceCount()
                if workers > gpus:
                    raise _pairs.UsageError(f"--workers {workers}: dask-cuda runs one worker per GPU and this machine "
                                            f"has {gpus}; use --workers {gpus} or --device cpu")
                return LocalCUDACluster(n_workers=workers, dashboard_address=None)
    return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)


@contextlib.contextmanager
def client(args):
    """A distributed Client for the command line's cluster (a local one is closed afterwards)."""
    distributed = _distributed()
    with contextlib.ExitStack() as stack:
        if args.scheduler:
            try:
                connected = distributed.Client(args.scheduler, timeout=CONNECT_TIMEOUT)
            except OSError as exc:
                raise _pairs.UsageError(f"--scheduler {args.scheduler}: cannot reach it ({exc})") from None
        else:
            cluster = stack.enter_context(_local_cluster(distributed, args.workers, args.device))
            connected = distributed.Client(cluster)
        yield stack.enter_context(connected)


def compute_chunk(pairs, device, options, map_folder):
    """A worker's task: the rows (pair, ssim, error) of some pairs, as one process computes them."""
    xp, _ = _pairs.select_device(device)
    return list(_pairs.run_pairs(pairs, xp, options, map_folder=map_folder))


def _rows(future, chunk):
    try:
        return future.result()
    except Exception as exc:  # the task died with its workers too often (distributed's KilledWorker)
        return [(pair, None, f"not compared: the workers computing it died ({type(exc).__name__})") for pair in chunk]


def run_pairs(args, pairs, options, *, map_folder=None):
    """Yields (pair, ssim, error) in the pairs' order, as :func:`cussim._pairs.run_pairs`, from a cluster."""
    with client(args) as dask_client:
        threads = max(1, sum(dask_client.nthreads().values()))
        size = max(1, min(_pairs.CHUNK, math.ceil(len(pairs) / (CHUNKS_PER_THREAD * threads))))
        chunks = deque(pairs[i : i + size] for i in range(0, len(pairs), size))
        in_flight = deque()

        def submit():
            chunk = chunks.popleft()
            future = dask_client.submit(compute_chunk, chunk, args.device, options, map_folder, pure=False)
            in_flight.append((future, chunk))

        try:
            while chunks and len(in_flight) < TASKS_PER_THREAD * threads:
                submit()
            while in_flight:
                future, chunk = in_flight.popleft()
                rows = _rows(future, chunk)
                if chunks:
                    submit()
                for pair, value, error in rows:
                    yield pair, value, error
                    if error is not None and args.strict:
                        return
        finally:
            for future, _ in in_flight:
                future.cancel()
