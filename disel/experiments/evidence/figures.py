"""Draw every evidence figure (``paper_figs/evidence_*.py``) from one results file."""

from __future__ import annotations

from pathlib import Path

__all__ = ["draw_figures"]


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
