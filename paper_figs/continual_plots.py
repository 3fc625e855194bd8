"""Shared pieces of the continual-study figures (issue 18): the parser and reading ``results.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._cli import results_figure_parser

__all__ = ["DEFAULT_OUT", "DEFAULT_RESULTS", "continual_parser", "read_results"]

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
