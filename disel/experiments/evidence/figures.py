"""Draw every evidence figure (``paper_figs/fig_evidence_*.py``) from one results file."""

from __future__ import annotations

from pathlib import Path

__all__ = ["draw_figures"]


def draw_figures(results: str | Path, out: str | Path) -> None:
    """Run each figure script on ``results``, writing into ``out``; RuntimeError if one fails."""
    from paper_figs import (
        fig_evidence_accuracy_over_time,
        fig_evidence_gates,
        fig_evidence_retention_over_time,
        fig_evidence_tradeoff,
    )

    args = ["--results", str(results), "--out", str(out)]
    calls = [(fig_evidence_tradeoff, ["--kind", "kl"]), (fig_evidence_tradeoff, ["--kind", "perplexity"]),
             (fig_evidence_retention_over_time, ["--kind", "kl"]),
             (fig_evidence_retention_over_time, ["--kind", "perplexity"]),
             (fig_evidence_accuracy_over_time, [])]
    if fig_evidence_gates.has_gates(fig_evidence_gates.read_evidence(Path(results))):
        calls.append((fig_evidence_gates, []))
    for script, extra in calls:
        if script.main([*args, *extra]) != 0:
            raise RuntimeError(f"{script.__name__} could not draw from {results}")
