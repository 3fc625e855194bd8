"""Continual study (issue 18): mean gate of each DISeL branch (row: the task it learned) on each task's inputs
(column), averaged over task orders. A branch per task works as hoped when the diagonal is bright and the rest
dark; a one-branch DISeL arm has one row.

    python -m paper_figs.continual_gates --results paper_figs/continual/runs/results.json
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ._cli import render
from .continual_plots import annotate_cells, continual_parser, read_results
from .style import TEXT_WIDTH_IN

__all__ = ["gate_arms", "main", "plot_gates"]


def gate_arms(results: dict) -> list[str]:
    """The arms with a gate table (DISeL arms)."""
    return [arm for arm, entry in results["arms"].items() if entry.get("gates")]


def plot_gates(results: dict):
    arms = gate_arms(results)
    fig, axes = plt.subplots(1, max(1, len(arms)), figsize=(TEXT_WIDTH_IN, 2.2), squeeze=False, constrained_layout=True)
    for ax, arm in zip(axes.flat, arms):
        table = results["arms"][arm]["gates"]
        mean = np.array(table["mean"])
        image = ax.imshow(mean, vmin=0, vmax=max(0.05, float(mean.max())), cmap="magma", aspect="auto")
        annotate_cells(ax, image, mean)
        ax.set_title(arm, fontsize="small")
        ax.set_xticks(range(len(table["tasks"])), table["tasks"], rotation=90, fontsize="xx-small")
        ax.set_yticks(range(len(table["branches"])), table["branches"], fontsize="xx-small")
        ax.set_xlabel("inputs of task", fontsize="x-small")
        fig.colorbar(image, ax=ax, shrink=0.8)
    axes.flat[0].set_ylabel("branch of task", fontsize="x-small")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = continual_parser(__doc__, "python -m paper_figs.continual_gates").parse_args(argv)
    return render(lambda: plot_gates(read_results(args.results)), args.out / "continual_gates")


if __name__ == "__main__":
    raise SystemExit(main())
