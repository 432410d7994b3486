"""Peers beside cussim in ``python -m bench``: each peer's value checked against cussim's in its convention,
then timed in its own framework and with its own clock, and the rows that put the two side by side.
"""

from __future__ import annotations

from bench import peers as peer_adapters
from bench.timing import OPERATIONS, event_time, floor_seconds, host_time, rotating, torch_event_time, work_per_pixel

# A peer's value must be this close to cussim's in its convention, and closer to it than to any other convention
# (PyTorch's float32 convolutions may run in TF32, near 1e-3 relative).
VALUE_TOLERANCE = {"float32": 1e-3}


def closest_convention(theirs: float, ours: dict) -> str:
    """Which of cussim's values (by convention) a peer's value is nearest."""
    return min(ours, key=lambda convention: abs(ours[convention] - theirs))


def ours_row(metric, operation, convention, label, dtype, pixels, seconds, limits=None, win_size=11,
              work_case=None, spatial_dims=2):
    """A cussim timing, with its floor given ``limits``; ``work_case``: the case of work_per_pixel
    (default: the metric's, with the operation's)."""
    row = {"metric": metric, "operation": operation, "convention": convention, "shape": label, "dtype": dtype,
           "ms": seconds * 1e3, "gpx_per_s": pixels / seconds / 1e9}
    if limits:
        work = work_per_pixel(work_case or metric + OPERATIONS[operation], win_size, 2 if dtype == "float16" else 4,
                              spatial_dims)
        floor = floor_seconds(work, pixels, limits["fma_per_second"], limits["copy_bytes_per_second"])
        row.update(floor_ms=floor * 1e3, fraction_of_floor=floor / seconds)
    return row


def peer_row(ours: dict, peer, seconds, difference, same):
    """A peer's timing beside cussim's row ``ours`` (cussim in ``cussim_convention``)."""
    return {**{k: ours[k] for k in ("metric", "operation", "shape", "dtype", "ms")}, "peer": peer.name,
            "convention": peer.convention, "cussim_convention": ours["convention"], "peer_ms": seconds * 1e3,
            "speedup": seconds * 1e3 / ours["ms"], "value_difference": difference, "same_computation": same}


class TorchPeers:
    """Runs torch peers on CuPy arrays (zero-copy through DLPack) and times them with CUDA events."""

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("PyTorch sees no CUDA device")
        self.torch = torch

    def value(self, peer, x, y) -> float:
        with self.torch.no_grad():
            return float(peer.value(self.torch.from_dlpack(x), self.torch.from_dlpack(y)))

    def timed_call(self, peer, operation, pairs):
        """A no-argument call of the peer's operation, rotating over the pairs."""
        torch = self.torch
        if operation == "value":
            tensors = [(torch.from_dlpack(x), torch.from_dlpack(y)) for x, y in pairs]

            def call(x, y):
                with torch.no_grad():
                    peer.value(x, y)
        else:
            tensors = [(torch.from_dlpack(x).detach().requires_grad_(True), torch.from_dlpack(y)) for x, y in pairs]

            def call(x, y):
                x.grad = None
                peer.value(x, y).backward()

        return rotating(tensors, call)

    def time(self, fn, repeats: int) -> float:
        return torch_event_time(self.torch, fn, repeats)


def _on_host(array):
    """A NumPy copy of a CuPy array (a NumPy array as it is)."""
    return array.get() if hasattr(array, "get") else array


def _peer_value(peer, x, y, torch_peers) -> float:
    """The peer's value of one pair of CuPy arrays, in its own framework."""
    if peer.framework == "torch":
        return torch_peers.value(peer, x, y)
    if peer.framework == "numpy":
        return float(peer.value(_on_host(x), _on_host(y)))
    return float(peer.value(x, y))


def _time_peer(peer, operation, pairs, cupy, torch_peers, repeats) -> float:
    """Seconds of one peer operation on the case's pairs, in its own framework and with its clock."""
    if peer.framework == "torch":
        return torch_peers.time(torch_peers.timed_call(peer, operation, pairs), repeats)
    if peer.framework == "numpy":
        host = [(_on_host(x), _on_host(y)) for x, y in pairs[:1]]
        return host_time(rotating(host, peer.value), max(1, min(repeats, 3)))
    return event_time(cupy, rotating(pairs, peer.value), repeats)


def peer_rows(peer, ours: dict, pairs, expected: float, same, cupy, torch_peers, repeats, where: str) -> list:
    """A peer's rows beside cussim's ``ours`` ({operation: row}).

    Its value on the first pair is compared with ``expected`` once;
    ``same(difference)`` says whether the two compute the same thing. Then
    each operation is timed (the gradient only where the peer has one). A
    failure is printed and skips the peer, or that operation.
    """
    try:
        difference = abs(_peer_value(peer, *pairs[0], torch_peers) - expected)
    except Exception as exc:  # noqa: BLE001  (a peer that fails on a case is reported, not fatal)
        print(f"{peer.name} {where} skipped: {type(exc).__name__}: {exc}")
        return []
    rows = []
    for operation, row in ours.items():
        if operation != "value" and not peer.differentiable:
            continue
        try:
            seconds = _time_peer(peer, operation, pairs, cupy, torch_peers, repeats)
        except Exception as exc:  # noqa: BLE001
            print(f"{peer.name} {operation} {where} skipped: {type(exc).__name__}: {exc}")
            continue
        rows.append(peer_row(row, peer, seconds, difference, same(difference)))
    return rows


def check_conventions(cupy, cussim, found, torch_peers, spatial_dims=2) -> tuple[list, dict]:
    """Runs each SSIM peer on a pair whose conventions differ by 2e-2 or more (peers.check_pair, or
    peers.volume_check_pair for the volume peers, ``spatial_dims=3``).

    Returns the peers that ran and {name: whether its value is cussim's in the
    peer's convention, to VALUE_TOLERANCE["float32"], and nearer it than any
    other}. A peer that fails here is skipped with the reason printed.
    """
    x, y = (peer_adapters.volume_check_pair if spatial_dims == 3 else peer_adapters.check_pair)(cupy)
    ours = peer_adapters.cussim_values(cussim, x, y, spatial_dims)
    ran, matches = [], {}
    for peer in found:
        try:
            theirs = _peer_value(peer, x, y, torch_peers)
        except Exception as exc:  # noqa: BLE001  (a peer that cannot run is reported, not fatal)
            print(f"{peer.name} skipped: it failed on the convention check: {type(exc).__name__}: {exc}")
            continue
        ran.append(peer)
        matches[peer.name] = (abs(theirs - ours[peer.convention]) <= VALUE_TOLERANCE["float32"]
                              and closest_convention(theirs, ours) == peer.convention)
        verdict = "matches" if matches[peer.name] else "does NOT match; its ratios do not compare the same computation:"
        print(f"{peer.name}: {theirs:.6f}, {verdict} cussim's {peer.convention!r} {ours[peer.convention]:.6f}")
    return ran, matches

