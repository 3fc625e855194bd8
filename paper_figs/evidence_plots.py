"""Shared reading and drawing of the evidence experiment's figures (``evidence_*.py``; issue 9).

Every figure reads one ``results.json`` (:mod:`disel.experiments.study.results`, written by
``disel-study``). Arms are coloured in results order (LoRA first), seeds of an arm share the colour;
over-time figures draw the mean over seeds with a band (the per-checkpoint 95% bootstrap interval of exact
match; the min–max over seeds of a retention metric). Step 0 is the base model, shared by every run.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes

from disel.experiments.schemas import MalformedResultFileError, MissingResultFileError

from ._cli import results_figure_parser
from .plots import BASE_LINE
from .style import _FALLBACK

__all__ = ["DOMAINS", "arm_colors", "draw_over_time", "evidence_parser", "read_evidence", "read_typed"]

DOMAINS = ("english", "code")
DEFAULT_RESULTS = Path("runs") / "evidence" / "results.json"
DEFAULT_OUT = Path("paper_figs") / "evidence"


def evidence_parser(module_doc: str | None, prog: str) -> argparse.ArgumentParser:
    """The figure parser with ``--results`` (default runs/evidence/results.json) and ``--out`` paper_figs/evidence."""
    return results_figure_parser(
        module_doc, prog, results=DEFAULT_RESULTS, out=DEFAULT_OUT, what="results.json of disel-study"
    )


def read_evidence(path: Path):
    """The :class:`~disel.experiments.study.results.EvidenceResults` in ``path``, or a ResultFileError."""
    from disel.experiments.study.results import load_results

    return read_typed(path, load_results, "disel-study", "evidence results")


def read_typed(path: Path, load, made_by: str, what: str):
    """``load(path)``, or a ResultFileError naming ``path``: missing (``made_by`` writes it) or not a ``what`` file."""
    if not Path(path).is_file():
        raise MissingResultFileError(path, f"does not exist; run {made_by} to write it")
    try:
        return load(path)
    except (ValueError, KeyError, TypeError) as error:
        raise MalformedResultFileError(path, f"not a readable {what} file: {error}") from None


def arm_colors(arms: Sequence[str]) -> dict[str, str]:
    return {arm: _FALLBACK[(i + 2) % len(_FALLBACK)] if i else _FALLBACK[0] for i, arm in enumerate(arms)}


def _series(results, arm: str, value) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values (seeds, steps)) of ``value(checkpoint)`` over an arm's runs (runs share their steps)."""
    runs = results.runs_of(arm)
    steps = np.array([c.step for c in runs[0].checkpoints])
    return steps, np.array([[value(c) for c in run.checkpoints] for run in runs], dtype=float)


def draw_over_time(
    ax: Axes, results, value, *, band=None, ylabel: str, base: float | None = None, arms: Sequence[str] | None = None
) -> None:
    """Mean over seeds of ``value(checkpoint)`` per arm, with ``band(checkpoint) -> (low, high)`` (default:
    min–max over seeds) shaded; the base model's value dashed."""
    arms = list(results.seeds) if arms is None else list(arms)
    colors = arm_colors(list(results.seeds))
    for arm in arms:
        steps, values = _series(results, arm, value)
        ax.plot(
            steps,
            values.mean(axis=0),
            marker="o",
            ms=2.5,
            color=colors[arm],
            label=f"{arm} ({values.shape[0]} seed{'s' if values.shape[0] > 1 else ''})",
        )
        if band is not None:
            low = _series(results, arm, lambda c: band(c)[0])[1].min(axis=0)
            high = _series(results, arm, lambda c: band(c)[1])[1].max(axis=0)
        else:
            low, high = values.min(axis=0), values.max(axis=0)
        if np.any(high > low):
            ax.fill_between(steps, low, high, color=colors[arm], alpha=0.18, lw=0)
    if base is not None:
        ax.axhline(base, **BASE_LINE, label="base model")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
