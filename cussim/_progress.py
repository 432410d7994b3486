"""The progress bar of the ``cussim`` command and of ``cussim precompile``: tqdm's, on stderr."""

from __future__ import annotations

import sys


def progress_bar(total: int, unit: str = "pair", desc: str | None = None, quiet: bool = False):
    """tqdm's progress bar on stderr (``desc``, count, rate, time left), off when ``quiet`` or unless stderr is a
    terminal.

    Write anything else inside ``bar.external_write_mode(file=stream)``: the bar is cleared first and
    drawn again after, so no line starts inside it. It clears itself when closed.
    """
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=quiet or total < 2 or not sys.stderr.isatty())
