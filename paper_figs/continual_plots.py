"""Shared pieces of the continual-study figures (issue 18): the parser, reading ``results.json``, and the value
written in each cell of a heat map."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ._cli import results_figure_parser

__all__ = ["DEFAULT_OUT", "DEFAULT_RESULTS", "annotate_cells", "continual_parser", "read_results"]

DEFAULT_RESULTS = Path("paper_figs") / "continual" / "runs" / "results.json"
DEFAULT_OUT = Path("paper_figs") / "continual"


def continual_parser(module_doc: str | None, prog: str) -> argparse.ArgumentParser:
    """The figure parser with ``--results`` (a continual study's results.json) and ``--out`` paper_figs/continual."""
    return results_figure_parser(
        module_doc, prog, results=DEFAULT_RESULTS, out=DEFAULT_OUT, what="results.json of the continual study"
    )


def read_results(path: Path) -> dict:
    from disel.experiments.study.continual_results import read_continual_results

    return read_continual_results(path)


def annotate_cells(ax, image, values: np.ndarray) -> None:
    """Each finite cell's value (two decimals) on ``image``'s heat map, black on light colours and white on dark
    ones, so every number stays legible whatever the colour map."""
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            red, green, blue, _ = image.cmap(image.norm(value))
            light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # perceived brightness (ITU-R 601 weights)
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="xx-small", color="k" if light else "w")
