"""Evidence figure (Figure 3 style): exact match against retention, one path per run through its checkpoints.

Each (arm, seed) run is a path from the base model (step 0) through its checkpoints in (KL to the base,
exact match) space; left English, right Python code. Seeds of an arm share a colour. A path further left at
the same height keeps more of the base model at equal accuracy.

    python -m paper_figs.evidence_tradeoff --results runs/evidence/results.json --out paper_figs/evidence
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

from ._cli import render
from .evidence_plots import DOMAINS, arm_colors, evidence_parser, read_evidence
from .style import TEXT_WIDTH_IN

__all__ = ["main", "plot_evidence_tradeoff"]


def plot_evidence_tradeoff(results, kind: str = "kl"):
    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH_IN, 2.6), sharey=True, constrained_layout=True)
    colors = arm_colors(list(results.seeds))
    styles = ("-", "--", ":", "-.")
    for ax, domain in zip(axes, DOMAINS):
        for run in results.runs:
            x = [c.retention(kind, domain) for c in run.checkpoints]
            y = [c.exact_match.estimate for c in run.checkpoints]
            index = results.seeds[run.arm].index(run.seed)
            ax.plot(
                x,
                y,
                styles[index % len(styles)],
                marker="o",
                ms=2.5,
                color=colors[run.arm],
                label=f"{run.arm} seed {run.seed}",
            )
        ax.set_xlabel(f"{'KL to base' if kind == 'kl' else 'perplexity'} ({domain}; lower keeps more)")
        ax.set_title(domain)
    axes[0].set_ylabel("exact match (held-out)")
    axes[1].legend(loc="best", fontsize="x-small")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = evidence_parser(__doc__, "python -m paper_figs.evidence_tradeoff")
    parser.add_argument("--kind", choices=("kl", "perplexity"), default="kl", help="retention metric (x axis)")
    args = parser.parse_args(argv)
    return render(
        lambda: plot_evidence_tradeoff(read_evidence(args.results), args.kind),
        args.out / f"evidence_tradeoff_{args.kind}",
    )


if __name__ == "__main__":
    raise SystemExit(main())
