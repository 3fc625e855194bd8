"""Evidence figure (Figure 6 style): retention at every checkpoint, per arm, English (left) and code (right).

The mean over seeds of KL to the base model (``--kind kl``) or perplexity, the min–max over seeds shaded;
dashed: the base model (perplexity only; its KL is 0).

    python -m paper_figs.evidence_retention_over_time --results runs/evidence/results.json
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

from ._cli import render
from .evidence_plots import DOMAINS, draw_over_time, evidence_parser, read_evidence
from .style import TEXT_WIDTH_IN

__all__ = ["main", "plot_retention_over_time"]


def plot_retention_over_time(results, kind: str = "kl"):
    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH_IN, 2.4), constrained_layout=True)
    for ax, domain in zip(axes, DOMAINS):
        base = results.base.perplexity[domain] if kind == "perplexity" and results.base else None
        draw_over_time(
            ax,
            results,
            lambda c, d=domain: c.retention(kind, d),
            base=base,
            ylabel=f"{'KL to base' if kind == 'kl' else 'perplexity'} ({domain})",
        )
        ax.set_title(domain)
    axes[1].legend(loc="best", fontsize="x-small")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = evidence_parser(__doc__, "python -m paper_figs.evidence_retention_over_time")
    parser.add_argument("--kind", choices=("kl", "perplexity"), default="kl")
    args = parser.parse_args(argv)
    return render(
        lambda: plot_retention_over_time(read_evidence(args.results), args.kind),
        args.out / f"evidence_retention_{args.kind}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
