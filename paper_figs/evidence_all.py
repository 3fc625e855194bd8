"""Every evidence figure of a ``disel-study`` results file: the tradeoff paths and the retention curves (KL and
perplexity), exact match over training, and the gate means when an arm is DISeL.

    python -m paper_figs.run_all --evidence runs/evidence/results.json --out paper_figs/evidence --only evidence
"""

from __future__ import annotations

from collections.abc import Sequence

from . import evidence_accuracy_over_time, evidence_gates, evidence_retention_over_time, evidence_tradeoff
from .evidence_plots import evidence_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run each figure script on ``--results``; the first non-zero exit status ends it (the script said why)."""
    args = evidence_parser(__doc__, "python -m paper_figs.evidence_all").parse_args(argv)
    common = ["--results", str(args.results), "--out", str(args.out)]
    calls = [
        (evidence_tradeoff, ["--kind", "kl"]),
        (evidence_tradeoff, ["--kind", "perplexity"]),
        (evidence_retention_over_time, ["--kind", "kl"]),
        (evidence_retention_over_time, ["--kind", "perplexity"]),
        (evidence_accuracy_over_time, []),
    ]
    if args.results.is_file() and evidence_gates.has_gates(evidence_gates.read_evidence(args.results)):
        calls.append((evidence_gates, []))
    for script, extra in calls:
        status = script.main([*common, *extra])
        if status:
            return status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
