"""Shared reading and colours of the learning–forgetting frontier figures (``frontier*.py``; issue 17).

Every figure reads one frontier results file (:mod:`disel.experiments.study.frontier_results`). Methods keep
the paper's colours where they have one (LoRA blue, DISeL vermilion, full fine-tuning grey); others, such as
intruder-reduced LoRA, take the next fallback colours in results order.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ._cli import results_figure_parser
from .evidence_plots import read_typed
from .style import _FALLBACK, METHOD_COLORS

__all__ = ["DEFAULT_OUT", "DEFAULT_RESULTS", "frontier_parser", "method_colors", "read_frontier"]

DEFAULT_RESULTS = Path("paper_figs") / "frontier" / "frontier.json"
DEFAULT_OUT = Path("paper_figs") / "frontier"
METHOD_NAMES = {"lora": "LoRA", "disel": "DISeL", "full": "Full FT", "lora_intruder": "LoRA, intruders reduced"}


def frontier_parser(module_doc: str | None, prog: str) -> argparse.ArgumentParser:
    """The figure parser with ``--results`` (default paper_figs/frontier/frontier.json, where the study's recipe
    writes it) and ``--out`` paper_figs/frontier."""
    return results_figure_parser(
        module_doc, prog, results=DEFAULT_RESULTS, out=DEFAULT_OUT, what="the frontier study's frontier.json"
    )


def read_frontier(path: Path):
    """The :class:`~disel.experiments.study.frontier_results.FrontierResults` in ``path``, or a ResultFileError."""
    from disel.experiments.study.frontier_results import load_frontier_results

    return read_typed(path, load_frontier_results, "the frontier study", "frontier results")


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """A colour per method: the paper's where it has one, else the unused fallback colours in order."""
    spare = iter(c for c in _FALLBACK[2:] if c not in METHOD_COLORS.values())
    return {method: METHOD_COLORS.get(method) or next(spare) for method in methods}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)
