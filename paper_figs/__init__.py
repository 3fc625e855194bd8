"""The paper's figures: one ``figN_*.py`` module per figure, all drawn with :mod:`paper_figs.style`.

Each figure module has a ``main(argv=None)`` that computes (or reads) its numbers through the library
and writes ``paper_figs/out/<name>.png`` and ``.pdf``. :func:`run_all` runs every one of them.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

__all__ = ["figure_modules", "run_all"]


def figure_modules() -> list[str]:
    """Names of the figure modules (``paper_figs.fig*``), in file-name order."""
    return sorted(
        f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__) if info.name.startswith("fig")
    )


def run_all(argv: Sequence[str] = ()) -> int:
    """Call every figure module's ``main(argv)``; returns the first non-zero exit status, else 0."""
    status = 0
    for name in figure_modules():
        code = importlib.import_module(name).main(list(argv))
        status = status or (code or 0)
    return status
