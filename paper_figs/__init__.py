"""The paper's figures: one ``figN_*.py`` module per figure, all drawn with :mod:`paper_figs.style`.

Each figure module has a ``main(argv=None)`` that reads its result files through the library
(:mod:`disel.experiments.schemas`; Figure 1 computes its numbers with :mod:`toy`) and writes
``<out>/<name>.png`` and ``.pdf``. ``python -m paper_figs.run_all`` regenerates all of them; see
``paper_figs/README.md`` for each figure's command and inputs.
"""

from __future__ import annotations

import pkgutil

__all__ = ["figure_modules"]


def figure_modules() -> list[str]:
    """Names of the figure modules (``paper_figs.fig*``), in file-name order."""
    return sorted(f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__) if info.name.startswith("fig"))
