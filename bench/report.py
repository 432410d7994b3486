"""Reports of ``python -m bench``: where results go, the Markdown table and the files (JSON, Markdown and,
with matplotlib, the plot of bench/plot.py).
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "local-results"  # ignored by git; bench/results holds committed runs


def markdown(machine: str, limits: dict | None, rows: list, note: str = "") -> str:
    """The results as Markdown: cussim's cases (with their floors on a GPU), then the peers' ratios."""
    lines = [f"# cussim on {machine}", ""]
    if note:
        lines += [note, ""]
    if limits:
        lines += [f"Ceilings measured in the same run: copy {limits['copy_bytes_per_second'] / 1e9:.0f} GB/s, "
                  f"FMA {limits['fma_per_second'] / 1e12:.1f} T/s.", ""]
    lines += ["| metric | operation | convention | shape | dtype | ms | Gpx/s | fraction of floor |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "peer" not in r:
            floor = f"{r['fraction_of_floor']:.2f}" if "fraction_of_floor" in r else "-"
            lines.append(f"| {r['metric']} | {r['operation']} | {r['convention']} | {r['shape']} | {r['dtype']} | "
                         f"{r['ms']:.3f} | {r['gpx_per_s']:.3g} | {floor} |")
    against = [r for r in rows if "peer" in r]
    if against:
        lines += ["", "Speed-up: the peer's time over cussim's on the same inputs, cussim in the peer's convention "
                  "(for torchmetrics' whole-sample reflection, which cussim lacks, cussim's \"same\": the same work). "
                  "Value difference: |peer - cussim| on the case's first pair; \"differs\" marks a peer whose value "
                  "failed the convention check, so its ratio does not compare the same computation.", "",
                  "| metric | operation | shape | dtype | peer (convention) | peer ms | cussim ms | speed-up "
                  "| value difference |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in against:
            marker = "" if r["same_computation"] else " (differs)"
            lines.append(f"| {r['metric']} | {r['operation']} | {r['shape']} | {r['dtype']} | "
                         f"{r['peer']} ({r['convention']}) | "
                         f"{r['peer_ms']:.3f} | {r['ms']:.3f} | {r['speedup']:.1f}x | "
                         f"{r['value_difference']:.1e}{marker} |")
    return "\n".join(lines) + "\n"


def write_results(folder: Path, machine: str, record: dict, text: str, rows: list) -> Path:
    """Writes <folder>/<machine>/<date>.json, .md and (with matplotlib) .png; returns the stem."""
    stem = folder / re.sub(r"[^A-Za-z0-9]+", "-", machine).strip("-").lower() / datetime.date.today().isoformat()
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    stem.with_suffix(".md").write_text(text)
    try:
        from bench import plot

        plot.plot(rows, stem.with_suffix(".png"), f"cussim on {machine}")
    except ImportError as exc:
        print(f"no plot: {exc}")
    return stem

