"""Continual study (issue 18): the accuracy matrix of every arm, averaged over task orders by task name.

Cell (i, j): accuracy on task j after the phase that learned task i (rows and columns in the recipe's task list;
blank: not scored). A multitask arm has only its final row.

    python -m paper_figs.continual_matrices --results paper_figs/continual/runs/results.json
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from ._cli import render
from .continual_plots import annotate_cells, continual_parser, read_results
from .style import TEXT_WIDTH_IN

__all__ = ["by_task_name", "main", "plot_matrices"]


def by_task_name(entry: dict, tasks: list[str]) -> np.ndarray:
    """(T, T) mean over runs of R, re-indexed so row i is "after learning tasks[i]" and column j is tasks[j]
    (NaN: never scored). A multitask run's one row ("after every task") is its last row."""
    total, count = np.zeros((len(tasks), len(tasks))), np.zeros((len(tasks), len(tasks)))
    for run in entry["runs"]:
        order = [tasks.index(t) for t in run["tasks"]]
        for i, row in enumerate(run["R"]):
            for j, value in enumerate(row):
                if value is not None:
                    total[order[i], order[j]] += value
                    count[order[i], order[j]] += 1
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_matrices(results: dict):
    tasks, arms = results["tasks"], list(results["arms"])
    columns = min(4, len(arms))
    rows = -(-len(arms) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(TEXT_WIDTH_IN, 1.5 * rows + 0.4), squeeze=False)
    image = None
    for k, (ax, arm) in enumerate(zip(axes.flat, arms)):
        entry = results["arms"][arm]
        matrix = by_task_name(entry, tasks)
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        annotate_cells(ax, image, matrix)
        ax.set_title(arm, fontsize="small")
        ax.set_xticks(range(len(tasks)), tasks, rotation=90, fontsize="xx-small")
        # row names on the first column only: the panels sit close, and a later panel's names would overlap
        named = k % columns == 0 and entry["phases"] != "multitask"
        ax.set_yticks(range(len(tasks)), tasks if named else [""] * len(tasks), fontsize="xx-small")
    for ax in list(axes.flat)[len(arms) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy (after row task, on column task)")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    args = continual_parser(__doc__, "python -m paper_figs.continual_matrices").parse_args(argv)
    return render(lambda: plot_matrices(read_results(args.results)), args.out / "continual_matrices")


if __name__ == "__main__":
    raise SystemExit(main())
