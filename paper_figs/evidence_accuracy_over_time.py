"""Evidence figure (Figure 7 style): held-out exact match at every checkpoint, per arm.

The mean over seeds, shaded: the union of the seeds' 95% bootstrap intervals (over test problems); dashed:
the base model.

    python -m paper_figs.evidence_accuracy_over_time --results runs/evidence/results.json
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

from ._cli import render
from .evidence_plots import draw_over_time, evidence_parser, read_evidence
from .style import TEXT_WIDTH_IN

__all__ = ["main", "plot_accuracy_over_time"]


def plot_accuracy_over_time(results):
    fig, ax = plt.subplots(figsize=(0.6 * TEXT_WIDTH_IN, 2.4), constrained_layout=True)
    draw_over_time(
        ax,
        results,
        lambda c: c.exact_match.estimate,
        band=lambda c: (c.exact_match.low, c.exact_match.high),
        ylabel="exact match (held-out)",
        base=results.base.exact_match.estimate if results.base else None,
    )
    ax.legend(loc="best", fontsize="x-small")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = evidence_parser(__doc__, "python -m paper_figs.evidence_accuracy_over_time").parse_args(argv)
    return render(lambda: plot_accuracy_over_time(read_evidence(args.results)), args.out / "evidence_accuracy")


if __name__ == "__main__":
    raise SystemExit(main())
