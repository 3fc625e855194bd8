"""Draw the evidence figures (``paper_figs/evidence_*.py``) from their results files.

The drawing lives in ``paper_figs``, which reads the results through :mod:`.results`; the experiment modules
reach the drawing only through this module (no import cycle: nothing in ``paper_figs`` imports it)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["draw_compression_figure", "draw_figures"]


def draw_figures(results: str | Path, out: str | Path) -> None:
    """Run each figure script on ``results``, writing into ``out``; RuntimeError if one fails."""
    from paper_figs import (
        evidence_accuracy_over_time,
        evidence_gates,
        evidence_retention_over_time,
        evidence_tradeoff,
    )

    args = ["--results", str(results), "--out", str(out)]
    calls = [
        (evidence_tradeoff, ["--kind", "kl"]),
        (evidence_tradeoff, ["--kind", "perplexity"]),
        (evidence_retention_over_time, ["--kind", "kl"]),
        (evidence_retention_over_time, ["--kind", "perplexity"]),
        (evidence_accuracy_over_time, []),
    ]
    if evidence_gates.has_gates(evidence_gates.read_evidence(Path(results))):
        calls.append((evidence_gates, []))
    for script, extra in calls:
        if script.main([*args, *extra]) != 0:
            raise RuntimeError(f"{script.__name__} could not draw from {results}")


def draw_compression_figure(results: str | Path, out: str | Path) -> None:
    """Draw ``paper_figs/evidence_compression.py`` from the compression study's results file into ``out``."""
    from paper_figs import evidence_compression

    if evidence_compression.main(["--results", str(results), "--out", str(out)]) != 0:
        raise RuntimeError(f"paper_figs.evidence_compression could not draw from {results}")
