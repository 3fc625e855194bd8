"""Continual study (issue 18): average accuracy, backward transfer and forgetting of every arm with their 95%
bootstrap intervals (test examples and task orders resampled), the per-order values as dots.

    python -m paper_figs.continual_measures --results paper_figs/continual/runs/results.json
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt

from ._cli import render
from .continual_plots import continual_parser, read_results
from .style import TEXT_WIDTH_IN

__all__ = ["MEASURES", "main", "plot_measures"]

MEASURES = ("AA", "BWT", "forgetting")


def plot_measures(results: dict):
    arms = list(results["arms"])
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(TEXT_WIDTH_IN, 2.4), constrained_layout=True, sharey=True)
    for ax, measure in zip(axes, MEASURES):
        for y, arm in enumerate(arms):
            value = results["arms"][arm][measure]
            if value["value"] is None:
                continue
            low, high = value["low"], value["high"]
            xerr = None if low is None else [[value["value"] - low], [high - value["value"]]]
            ax.errorbar(value["value"], y, xerr=xerr, fmt="o", ms=4, capsize=2, color="C0")
            ax.plot(value["per_order"], [y] * len(value["per_order"]), ".", color="0.5", ms=3)
        ax.set_title(measure, fontsize="small")
        if measure != "AA":
            ax.axvline(0, color="0.7", lw=0.8)
    axes[0].set_yticks(range(len(arms)), arms, fontsize="x-small")
    axes[0].invert_yaxis()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = continual_parser(__doc__, "python -m paper_figs.continual_measures").parse_args(argv)
    return render(lambda: plot_measures(read_results(args.results)), args.out / "continual_measures")


if __name__ == "__main__":
    raise SystemExit(main())
