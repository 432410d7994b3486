"""The benchmark's figure: cussim's speed-up over each peer, and its fraction of the floor.

One panel per operation (value; value with gradient): a group of bars per
case (metric, shape, dtype), one bar per peer, on a log axis with 1 (as fast)
marked. On a GPU run a last panel shows each cussim case's fraction of its
floor against the targets (0.5 for the value, 0.33 with the gradient). Needs
matplotlib (the ``bench`` extra); :func:`plot` raises ImportError without it.
"""

from __future__ import annotations

from pathlib import Path


def _case(row) -> str:
    return f"{row['metric']} {row['shape']} {row['dtype']}"


def plot(rows: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    against = [r for r in rows if "peer" in r]
    floors = [r for r in rows if "fraction_of_floor" in r]
    operations = [op for op in ("value", "value+gradient") if any(r["operation"] == op for r in against)]
    panels = len(operations) + bool(floors)
    if panels == 0:
        return
    figure, axes = plt.subplots(panels, 1, figsize=(14, 4.5 * panels), squeeze=False)
    axes = list(axes[:, 0])
    peers = sorted({r["peer"] for r in against})
    for ax, operation in zip(axes, operations):
        chosen = [r for r in against if r["operation"] == operation]
        cases = list(dict.fromkeys(_case(r) for r in chosen))
        width = 0.8 / max(1, len(peers))
        for k, peer in enumerate(peers):
            found = {_case(r): r["speedup"] for r in chosen if r["peer"] == peer}
            positions = [i + k * width for i, case in enumerate(cases) if case in found]
            ax.bar(positions, [found[c] for c in cases if c in found], width, label=peer)
        ax.axhline(1, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_ylabel("speed-up (peer time / cussim time)")
        ax.set_title(f"{operation}: cussim against each peer, same inputs and convention")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], cases, rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=8, ncol=4)
    if floors:
        ax = axes[-1]
        labels = [f"{r['operation']} {r['convention']} {_case(r)}" for r in floors]
        ax.bar(range(len(floors)), [r["fraction_of_floor"] for r in floors],
               color=["tab:blue" if r["operation"] == "value" else "tab:orange" for r in floors])
        for target, operation in ((0.5, "value"), (0.33, "value+gradient")):
            ax.axhline(target, linestyle="--", linewidth=0.8, label=f"target for {operation}: {target}")
        ax.set_ylabel("fraction of the floor")
        ax.set_title("cussim: floor time / measured time")
        ax.set_xticks(range(len(floors)), labels, rotation=60, ha="right", fontsize=6)
        ax.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
